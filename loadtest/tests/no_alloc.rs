//! The receive path allocates nothing per frame: a counting global allocator (counting only
//! the calling thread's allocations) watches `receive::take_frames` take 20,000 event frames,
//! exactly as a Ringcast server frames them, in reads of 100 frames.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringcast_loadtest::latency::Latency;
use ringcast_loadtest::loss::SeqTracker;
use ringcast_loadtest::payload::{self, StampFinder};
use ringcast_loadtest::receive::{take_frames, PingFinder, Tally};
use ringcast_loadtest::wsframe::FrameReader;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a
// const-initialized thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn taking_event_frames_allocates_nothing_per_frame() {
    const PER_READ: u64 = 100;
    const READS: u64 = 200;
    let finder = StampFinder::new();
    let ping = PingFinder::default();
    let mut rd = FrameReader::new(64 * 1024);
    let mut tracker = SeqTracker::new();
    let mut lat = Latency::new();
    let (mut stale, mut misrouted, mut delivered) = (0, 0, 0);
    let mut during = 0;
    let mut wire = Vec::with_capacity(64 * 1024);
    let mut data = Vec::with_capacity(256);
    for read in 0..READS {
        // One read's worth of frames (built outside the measured section).
        wire.clear();
        for i in 0..PER_READ {
            let k = read * PER_READ + i;
            data.clear();
            payload::encode(1, k, 1_000 + k, 100, &mut data);
            let text =
                ringcast_protocol::event("lt", "lt-0", std::str::from_utf8(&data).unwrap(), None);
            ringcast_protocol::ws::encode_frame_into(
                ringcast_protocol::ws::OpCode::Text,
                text.as_bytes(),
                &mut wire,
            );
        }
        rd.extend(&wire);
        let before = allocs();
        let mut t = Tally {
            phase: 1,
            channels: 1,
            channel: 0,
            tracker: &mut tracker,
            lat: &mut lat,
            stale: &mut stale,
            misrouted: &mut misrouted,
            delivered: &mut delivered,
        };
        let c = take_frames(&mut rd, &finder, &ping, 5_000_000, &mut t).expect("valid frames");
        during += allocs() - before;
        assert!(!c.closed && !c.pusher_ping && c.ws_ping.is_none());
    }
    let n = PER_READ * READS;
    assert_eq!(delivered, n);
    assert_eq!(lat.count(), n);
    assert!(tracker.check(n).is_exact());
    assert_eq!(
        during, 0,
        "{during} allocations while taking {n} frames (should be 0)"
    );
    // The counter does see allocations (the test would notice one per frame).
    let before = allocs();
    let v: Vec<u8> = Vec::with_capacity(16);
    drop(v);
    assert_eq!(allocs() - before, 1);
}
