//! The receive paths allocate nothing per frame: a counting global allocator (counting only
//! the calling thread's allocations) watches `receive::take_frames` take 20,000 event frames,
//! exactly as a Ringcast server frames them, in reads of 100 frames; and watches the epoll
//! receiver (`epoll_receiver::EpollSet::poll`) take 20,000 such frames from a loopback socket
//! in reads cut anywhere (most frames straddle two reads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringcast_loadtest::latency::Latency;
use ringcast_loadtest::loss::SeqTracker;
use ringcast_loadtest::payload::{self, StampFinder};
use ringcast_loadtest::receive::{take_frames, PingFinder, Tally};
use ringcast_loadtest::wsframe::{Frame, FrameReader};

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

/// `n` event frames, exactly as a Ringcast server frames them (k = 0..n, phase 1).
fn event_wire(n: u64) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut data = Vec::with_capacity(256);
    for k in 0..n {
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
    wire
}

#[test]
fn the_epoll_receiver_allocates_nothing_per_frame() {
    use ringcast_loadtest::epoll_receiver::{EpollSet, Got};
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};

    const FRAMES: u64 = 20_000;
    // Cut anywhere: most reads end inside a frame, whose start is carried to the next read.
    const CHUNK: usize = 9_999;
    let wire = event_wire(FRAMES);
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = std::net::TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (mut server, _) = l.accept().expect("accept");
    let fd = client.as_raw_fd();
    let unread = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to `n`.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
        n
    };
    let finder = StampFinder::new();
    let ping = PingFinder::default();
    let mut tracker = SeqTracker::new();
    let mut lat = Latency::new();
    let (mut stale, mut misrouted, mut delivered) = (0, 0, 0);
    let mut other = 0u64;
    let mut set: EpollSet<()> = EpollSet::new().expect("epoll");
    set.add(OwnedFd::from(client), 0, (), &[], None, 0, &mut |_, _| true)
        .expect("add");
    let mut during = 0;
    let mut measured = 0;
    for (i, chunk) in wire.chunks(CHUNK).enumerate() {
        server.write_all(chunk).expect("write");
        let mut seen = false;
        for _ in 0..400 {
            let before = allocs();
            let p = set
                .poll(50, &mut |ctx, got| {
                    match got {
                        Got::Frame(Frame::Text(text)) => {
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
                            let _ = ringcast_loadtest::receive::on_text(
                                text, &finder, &ping, ctx.now, &mut t,
                            );
                        }
                        _ => other += 1,
                    }
                    true
                })
                .expect("poll");
            // The first chunk is the warm-up: the carry buffer is allocated at the first
            // straddling frame and kept.
            if i > 0 {
                during += allocs() - before;
                measured += 1;
            }
            seen |= p.ready > 0;
            if seen && unread() == 0 {
                break;
            }
        }
    }
    assert_eq!(other, 0);
    assert_eq!(delivered, FRAMES);
    assert_eq!(lat.count(), FRAMES);
    assert!(tracker.check(FRAMES).is_exact());
    assert!(measured >= wire.len() / CHUNK - 1);
    assert_eq!(
        during, 0,
        "{during} allocations while the epoll receiver took {FRAMES} frames (should be 0)"
    );
}
