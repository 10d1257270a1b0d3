//! Deterministic per-event counts of the engine's fan-out path, for before/after comparisons
//! on a busy machine where latency figures are noise (docs/benchmarks.md, "#9 performance
//! work"). Prints allocations per event (counting global allocator, whole process) for:
//!
//! - `in_memory/N`: `Core::deliver` + `Conn::push` to N socket-less subscribers on one core;
//! - `e2e/N`: an in-process engine with 2 workers, N real loopback subscribers spread over both
//!   cores, one REST-style publish per event through `EngineHandle::publish` (owner core ->
//!   in-place delivery + one `Deliver` over the mesh to the other core -> writev per socket).
//!
//! `cargo run -p ringcast-benches --example hotpath_counts -- [EVENTS] [SUBSCRIBERS] [mem]`
//! Instruction counts per event: run the `mem` form (in-memory part only: valgrind cannot run
//! io_uring) under `valgrind --tool=callgrind` with two EVENTS values and divide the difference
//! by the difference in events.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use ringcast_benches::client::Sub;
use ringcast_benches::{allocations, CountingAlloc};
use ringcast_engine::bench_support::LocalFanout;
use ringcast_engine::{Engine, Publish, RawConfig};
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

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let data = "x".repeat(100);

    let frame = pusher::event_frame("my-event", "my-channel", &data, None);
    let local = LocalFanout::new(n, 1 << 30);
    local.deliver(&frame, None);
    local.drain_all();
    let a0 = allocations();
    for _ in 0..events {
        local.deliver(&frame, None);
        local.drain_all();
    }
    println!(
        "in_memory/{n}: {:.3} allocations per event",
        (allocations() - a0) as f64 / events as f64
    );
    if args.next().as_deref() == Some("mem") {
        // Valgrind cannot run io_uring: `mem` stops before the engine starts.
        return;
    }

    let raw =
        RawConfig::from_toml("listen = \"127.0.0.1:0\"\nworkers = 2\nshutdown_grace_ms = 200\n")
            .expect("config parses");
    let e = Engine::bind(raw.resolve(2).expect("config resolves"), None)
        .expect("bind")
        .start(None)
        .expect("start");
    let h = e.handle();
    let waker: Waker = Arc::new(ThreadWaker(std::thread::current())).into();
    let mut subs: Vec<Sub> = (0..n)
        .map(|_| Sub::connect(e.local_addr(), "app-key").expect("connect"))
        .collect();
    let per_core = |c: u64| subs.iter().filter(|s| s.core(2) == Some(c)).count();
    let (on0, on1) = (per_core(0), per_core(1));
    let ch = ChannelName::parse("hotpath").expect("valid");
    for s in &mut subs {
        s.subscribe(ch.as_str()).expect("subscribe");
    }
    let publish = |subs: &mut Vec<Sub>| {
        let r = block_on(
            &waker,
            h.publish(Publish {
                app: 0,
                channels: vec![ch.clone()],
                event: "my-event".into(),
                data: data.clone(),
                except: None,
            }),
        );
        assert!(r.is_ok(), "publish failed: {r:?}");
        for s in subs.iter_mut() {
            s.recv_frames(1).expect("frame");
        }
    };
    // Warm up queues and buffers.
    for _ in 0..20 {
        publish(&mut subs);
    }
    let a0 = allocations();
    for _ in 0..events {
        publish(&mut subs);
    }
    println!(
        "e2e/{n} (core 0: {on0}, core 1: {on1}, owner core {}): {:.3} allocations per event (whole process)",
        h.owner_core(0, &ch),
        (allocations() - a0) as f64 / events as f64
    );
    drop(subs);
    e.shutdown_and_join();
}
