//! Proof that fan-out neither re-serializes nor copies an event per subscriber: the bytes the
//! whole process allocates while one 4 KiB event reaches 200 subscribers stay far below one
//! payload per subscriber. (A per-subscriber encode or copy would allocate >= 200 x 4 KiB.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use common::*;
use ringcast_engine::Publish;
use ringcast_protocol::ChannelName;

struct Counting;
static BYTES: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as u64, Relaxed);
        COUNT.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        BYTES.fetch_add(n as u64, Relaxed);
        COUNT.fetch_add(1, Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn one_event_to_200_subscribers_is_encoded_once_and_never_copied() {
    const SUBS: u64 = 200;
    const PAYLOAD: usize = 4096;
    let s = Server::start(2, "");
    let mut clients: Vec<Client> = (0..SUBS).map(|_| s.connect()).collect();
    for c in clients.iter_mut() {
        c.subscribe("wide");
    }
    let h = s.handle();
    // Warm-up: each connection's two reusable write vectors get their capacity once; after
    // that, steady-state deliveries allocate nothing per subscriber.
    for i in 0..2 {
        let p = Publish {
            app: 0,
            channels: vec![ChannelName::parse("wide").unwrap()],
            event: format!("warm{i}"),
            data: "w".into(),
            except: None,
        };
        block_on(h.publish(p)).unwrap();
        for c in clients.iter_mut() {
            c.recv_event(&format!("warm{i}"));
        }
    }
    let data = "x".repeat(PAYLOAD);
    let p = Publish {
        app: 0,
        channels: vec![ChannelName::parse("wide").unwrap()],
        event: "big".into(),
        data,
        except: None,
    };
    let before = h.metrics();
    // Measure from the publish until every subscriber's frame has been written to its socket.
    // The clients do not read meanwhile, so only the server allocates.
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("rt");
    let (b0, c0) = (BYTES.load(Relaxed), COUNT.load(Relaxed));
    let counts = rt.block_on(h.publish(p)).unwrap();
    let mut spins = 0;
    loop {
        let m = h.metrics();
        if m.deliveries - before.deliveries == SUBS && m.messages_out - before.messages_out >= SUBS
        {
            break;
        }
        spins += 1;
        assert!(spins < 100_000, "fan-out did not complete");
        std::thread::yield_now();
    }
    let (b1, c1) = (BYTES.load(Relaxed), COUNT.load(Relaxed));
    assert_eq!(counts[0].subscription_count, SUBS);
    let bytes = b1 - b0;
    let allocs = c1 - c0;
    eprintln!("fan-out of one {PAYLOAD} B event to {SUBS} subscribers: {bytes} bytes in {allocs} allocations");
    assert!(
        bytes < (SUBS * PAYLOAD as u64) / 20,
        "allocated {bytes} bytes: the payload was copied or re-encoded per subscriber"
    );
    assert!(
        allocs < SUBS / 4,
        "{allocs} allocations for {SUBS} deliveries: something allocates per subscriber"
    );
    // Every subscriber got the full event.
    for c in clients.iter_mut() {
        let m = c.recv_event("big");
        assert_eq!(m["data"].as_str().unwrap().len(), PAYLOAD);
    }
}
