//! Engine paths: a publish crossing the SPSC mesh to another core, and fan-out of one event to
//! 1, 100 and 10,000 subscribers (ns per delivery in user space; allocations per event from a
//! counting global allocator).
//!
//! - `fanout_in_memory/{1,100,10000}`: the engine's own per-core delivery loop
//!   (`Core::deliver` and `Conn::push`, through the hidden `bench_support::LocalFanout` hook:
//!   socket-less connections with parked writers on a real `Core`).
//! - `publish_roundtrip/no_subscribers`: `EngineHandle::publish` into the owner core's injection
//!   queue and back (the reply is sent after the owner fanned out).
//! - `mesh_hop/{owner_is_subscriber_core,owner_is_other_core}`: in-process engine with 2 workers,
//!   one subscriber on core 1; the event goes to a channel owned by core 1 (delivered in place)
//!   or by core 0 (one `Deliver` over the SPSC mesh 0 -> 1). Both include the loopback socket
//!   write/read; their difference is the mesh hop.
//! - `e2e_fanout/100`: publish -> 100 real loopback subscribers all received it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_benches::client::Sub;
use ringcast_benches::{allocations, CountingAlloc};
use ringcast_engine::bench_support::LocalFanout;
use ringcast_engine::{Engine, EngineHandle, Publish, RawConfig, RunningEngine};
use ringcast_protocol::{pusher, ChannelName};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct ThreadWaker(std::thread::Thread);
impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(waker: &Waker, f: F) -> F::Output {
    let mut cx = Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

fn payload() -> String {
    "x".repeat(100)
}

fn fanout_in_memory(c: &mut Criterion) {
    let frame = pusher::event_frame("my-event", "my-channel", &payload(), None);
    let mut g = c.benchmark_group("fanout_in_memory");
    for n in [1usize, 100, 10_000] {
        let ch = LocalFanout::new(n, 1 << 30);
        // Warm the queues' capacity, then count allocations over many events.
        ch.deliver(&frame, None);
        ch.drain_all();
        let events = 1000u64;
        let a0 = allocations();
        for _ in 0..events {
            ch.deliver(&frame, None);
            ch.drain_all();
        }
        let per_event = (allocations() - a0) as f64 / events as f64;
        println!("fanout_in_memory/{n}: {per_event:.3} allocations per event (steady state)");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut t = Duration::ZERO;
                for _ in 0..iters {
                    let s = Instant::now();
                    std::hint::black_box(ch.deliver(&frame, None));
                    t += s.elapsed();
                    ch.drain_all();
                }
                t
            })
        });
    }
    g.finish();
}

fn engine() -> RunningEngine {
    let raw =
        RawConfig::from_toml("listen = \"127.0.0.1:0\"\nworkers = 2\nshutdown_grace_ms = 200\n")
            .expect("config parses");
    Engine::bind(raw.resolve(2).expect("config resolves"), None)
        .expect("bind")
        .start(None)
        .expect("start")
}

fn publish(h: &EngineHandle, waker: &Waker, channel: &ChannelName, data: &str) {
    let r = block_on(
        waker,
        h.publish(Publish {
            app: 0,
            channels: vec![channel.clone()],
            event: "my-event".into(),
            data: data.into(),
            except: None,
        }),
    );
    assert!(r.is_ok(), "publish failed: {r:?}");
}

/// A subscriber on core `core` (connects until the engine puts one there).
fn sub_on_core(addr: SocketAddr, core: u64) -> Sub {
    for _ in 0..64 {
        let s = Sub::connect(addr, "app-key").expect("connect");
        if s.core(2) == Some(core) {
            return s;
        }
    }
    panic!("no connection landed on core {core}");
}

/// A channel of app 0 owned by `core` (the engine's own placement decides, keyed per process).
fn channel_owned_by(h: &EngineHandle, core: u64, tag: &str) -> ChannelName {
    (0..1000)
        .filter_map(|i| ChannelName::parse(&format!("bench-{tag}-{i}")).ok())
        .find(|n| h.owner_core(0, n) as u64 == core)
        .expect("some channel hashes to each core")
}

fn engine_paths(c: &mut Criterion) {
    let e = engine();
    let h = e.handle();
    let addr = e.local_addr();
    let waker: Waker = Arc::new(ThreadWaker(std::thread::current())).into();
    let data = payload();

    let mut g = c.benchmark_group("publish_roundtrip");
    let empty = ChannelName::parse("bench-nobody").expect("valid");
    g.bench_function("no_subscribers", |b| {
        b.iter(|| publish(&h, &waker, &empty, &data))
    });
    g.finish();

    let mut sub = sub_on_core(addr, 1);
    let local = channel_owned_by(&h, 1, "local");
    let remote = channel_owned_by(&h, 0, "remote");
    sub.subscribe(local.as_str()).expect("subscribe");
    sub.subscribe(remote.as_str()).expect("subscribe");
    let mut g = c.benchmark_group("mesh_hop");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    for (name, ch) in [
        ("owner_is_subscriber_core", &local),
        ("owner_is_other_core", &remote),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                publish(&h, &waker, ch, &data);
                sub.recv_frames(1).expect("frame");
            })
        });
    }
    g.finish();
    drop(sub);

    let n = 100;
    let mut subs: Vec<Sub> = (0..n)
        .map(|_| Sub::connect(addr, "app-key").expect("connect"))
        .collect();
    let ch = ChannelName::parse("bench-fanout").expect("valid");
    for s in &mut subs {
        s.subscribe(ch.as_str()).expect("subscribe");
    }
    let events = 200u64;
    let a0 = allocations();
    for _ in 0..events {
        publish(&h, &waker, &ch, &data);
        for s in &mut subs {
            s.recv_frames(1).expect("frame");
        }
    }
    println!(
        "e2e_fanout/{n}: {:.2} allocations per event (whole process: publish encode + engine + reader buffers)",
        (allocations() - a0) as f64 / events as f64
    );
    let mut g = c.benchmark_group("e2e_fanout");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| {
            publish(&h, &waker, &ch, &data);
            for s in &mut subs {
                s.recv_frames(1).expect("frame");
            }
        })
    });
    g.finish();
    drop(subs);
    e.shutdown_and_join();
}

criterion_group!(benches, fanout_in_memory, engine_paths);
criterion_main!(benches);
