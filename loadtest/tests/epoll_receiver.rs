//! The epoll receive path: `EpollSet` against real loopback sockets on 127.0.0.1 (a frame cut
//! at every byte of a wire, many frames and a frame larger than a read, bytes handed over from
//! the handshake reader, pings answered, close/EOF/bad frames ending the connection), and the
//! whole `fanout` scenario against an in-process Ringcast with `--receive epoll` and
//! `--receive tasks`, which must count the same, and against a tiny Pusher server that sends
//! events before the first phase (counted stale on both paths; the task path used to panic).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use ringcast_loadtest::epoll_receiver::{EpollSet, Got};
use ringcast_loadtest::wsframe::Frame;
use ringcast_protocol::ws::{close_frame, encode_frame_into, OpCode};

/// A connected pair: the server's end and the client's descriptor (for the set).
fn pair() -> (TcpStream, OwnedFd) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    (s, OwnedFd::from(c))
}

fn show(g: &Got<'_>) -> String {
    match g {
        Got::Frame(Frame::Text(t)) => format!("T:{}", String::from_utf8_lossy(t)),
        Got::Frame(Frame::Binary(b)) => format!("B:{}", b.len()),
        Got::Frame(Frame::Ping(p)) => format!("P:{}", p.len()),
        Got::Frame(Frame::Pong) => "pong".into(),
        Got::Frame(Frame::Close(c)) => format!("C:{c:?}"),
        Got::Eof => "eof".into(),
        Got::ReadError(e) => format!("read error {e}"),
        Got::BadFrame(e) => format!("bad {e}"),
        Got::SendError(e) => format!("send error {e}"),
    }
}

/// Bytes the kernel holds unread on `fd`.
fn unread(fd: RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to `n`.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

/// Polls until the set has read everything `fd` holds (at least one ready report first).
fn drain_all(set: &mut EpollSet<()>, fd: RawFd, got: &mut Vec<String>) {
    let mut seen_ready = false;
    for _ in 0..400 {
        let p = set
            .poll(50, &mut |_, g| {
                let keep = !matches!(g, Got::Frame(Frame::Close(_)));
                got.push(show(&g));
                keep
            })
            .expect("poll");
        seen_ready |= p.ready > 0;
        if seen_ready && (set.is_empty() || unread(fd) == 0) {
            return;
        }
    }
    panic!("the set did not read everything within the bound");
}

/// A wire of a few frames of every kind, and what a reader must make of it (pings are
/// answered, not handed on).
fn wire() -> (Vec<u8>, Vec<String>) {
    let mut w = Vec::new();
    encode_frame_into(OpCode::Text, b"hello", &mut w);
    encode_frame_into(OpCode::Ping, b"pp", &mut w);
    let big = "x".repeat(300);
    encode_frame_into(OpCode::Text, big.as_bytes(), &mut w);
    // Fragmented: "ab" + ping + "cd".
    encode_frame_into(OpCode::Text, b"ab", &mut w);
    let last = w.len() - 4;
    w[last] &= 0x7f; // clear FIN of the first fragment
    encode_frame_into(OpCode::Ping, b"", &mut w);
    encode_frame_into(OpCode::Continuation, b"cd", &mut w);
    encode_frame_into(OpCode::Binary, b"\x01\x02\x03", &mut w);
    let expect = vec![
        "T:hello".to_string(),
        format!("T:{big}"),
        "T:abcd".into(),
        "B:3".into(),
    ];
    (w, expect)
}

/// Reads `n` pongs (masked client frames) from the server's end; returns their payloads.
fn read_pongs(s: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
    let mut dec = ringcast_protocol::FrameDecoder::new(ringcast_protocol::Role::Server, 1 << 16);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        while let Some(m) = dec.poll_message().expect("valid client frames") {
            match m {
                ringcast_protocol::Message::Pong(p) => out.push(p.to_vec()),
                other => panic!("expected a pong, got {other:?}"),
            }
        }
        if out.len() >= n {
            return out;
        }
        let k = s.read(&mut buf).expect("read pongs");
        assert!(k > 0, "EOF before {n} pongs");
        dec.handle_bytes(&buf[..k]);
    }
    panic!("fewer than {n} pongs");
}

#[test]
fn frames_cut_at_every_byte_are_taken_whole_and_pings_answered() {
    let (w, expect) = wire();
    let (mut server, client) = pair();
    let fd = client.as_raw_fd();
    let mut set: EpollSet<()> = EpollSet::new().expect("epoll");
    assert!(set
        .add(client, 7, (), &[], None, 0, &mut |_, _| true)
        .expect("add"));
    let mut got = Vec::new();
    for cut in 1..w.len() {
        server.write_all(&w[..cut]).expect("write");
        drain_all(&mut set, fd, &mut got);
        server.write_all(&w[cut..]).expect("write");
        drain_all(&mut set, fd, &mut got);
    }
    let cuts = w.len() - 1;
    assert_eq!(got.len(), expect.len() * cuts);
    for (i, chunk) in got.chunks(expect.len()).enumerate() {
        assert_eq!(chunk, &expect[..], "cut {}", i + 1);
    }
    // Two pings per wire, each answered with its payload.
    let pongs = read_pongs(&mut server, 2 * cuts);
    for p in pongs.chunks(2) {
        assert_eq!(p, [b"pp".to_vec(), Vec::new()]);
    }
    assert_eq!(set.len(), 1);
}

#[test]
fn many_frames_per_read_and_a_frame_larger_than_a_read() {
    let (server, client) = pair();
    let fd = client.as_raw_fd();
    let mut w = Vec::new();
    for i in 0..1000 {
        encode_frame_into(OpCode::Text, format!("a{i}").as_bytes(), &mut w);
    }
    let huge = vec![b'y'; 200_000];
    encode_frame_into(OpCode::Text, &huge, &mut w);
    for i in 0..1000 {
        encode_frame_into(OpCode::Text, format!("b{i}").as_bytes(), &mut w);
    }
    // More than the socket buffers may take at once: written from another thread.
    let writer = std::thread::spawn(move || {
        let mut server = server;
        server.write_all(&w).expect("write");
        server
    });
    let mut set: EpollSet<()> = EpollSet::new().expect("epoll");
    set.add(client, 0, (), &[], None, 0, &mut |_, _| true)
        .expect("add");
    let mut got: Vec<String> = Vec::new();
    let mut polls = 0;
    for _ in 0..2000 {
        let p = set
            .poll(50, &mut |_, g| {
                got.push(match g {
                    Got::Frame(Frame::Text(t)) if t.len() > 100 => format!("big {}", t.len()),
                    g => show(&g),
                });
                true
            })
            .expect("poll");
        polls += usize::from(p.ready > 0);
        if got.len() >= 2001 && unread(fd) == 0 {
            break;
        }
    }
    let _server = writer.join().expect("writer");
    assert_eq!(got.len(), 2001);
    assert_eq!(got[0], "T:a0");
    assert_eq!(got[999], "T:a999");
    assert_eq!(got[1000], "big 200000");
    assert_eq!(got[2000], "T:b999");
    // Many frames per read: far fewer ready reports than frames.
    assert!(polls < 1000, "{polls} ready reports for 2001 frames");
}

#[test]
fn bytes_buffered_before_the_hand_over_are_taken_first() {
    let (mut server, client) = pair();
    let fd = client.as_raw_fd();
    let mut w = Vec::new();
    encode_frame_into(OpCode::Text, b"one", &mut w);
    encode_frame_into(OpCode::Text, b"two", &mut w);
    encode_frame_into(OpCode::Text, b"three", &mut w);
    // The handshake reader had "one" and half of "two".
    let cut = 5 + 3;
    let mut set: EpollSet<()> = EpollSet::new().expect("epoll");
    let mut got = Vec::new();
    let added = set
        .add(client, 3, (), &w[..cut], None, 0, &mut |ctx, g| {
            assert_eq!(ctx.key, 3);
            got.push(show(&g));
            true
        })
        .expect("add");
    assert!(added);
    assert_eq!(got, ["T:one"]);
    server.write_all(&w[cut..]).expect("write");
    drain_all(&mut set, fd, &mut got);
    assert_eq!(got, ["T:one", "T:two", "T:three"]);
}

#[test]
fn a_close_frame_eof_and_a_bad_frame_end_their_connections() {
    let mut set: EpollSet<()> = EpollSet::new().expect("epoll");
    let (mut a, ca) = pair();
    let (b, cb) = pair();
    let (mut c, cc) = pair();
    for (k, fd) in [(0, ca), (1, cb), (2, cc)] {
        set.add(fd, k, (), &[], None, 0, &mut |_, _| true)
            .expect("add");
    }
    assert_eq!(set.len(), 3);
    let mut got: Vec<(usize, String)> = Vec::new();
    let mut poll_until = |set: &mut EpollSet<()>, left: usize| {
        for _ in 0..400 {
            set.poll(50, &mut |ctx, g| {
                got.push((ctx.key, show(&g)));
                // The handler closes on a close frame, as the fan-out's does.
                !matches!(g, Got::Frame(Frame::Close(_)))
            })
            .expect("poll");
            if set.len() == left {
                return;
            }
        }
        panic!("still {} connections, expected {left}", set.len());
    };
    a.write_all(&close_frame(1000, "bye")).expect("write");
    poll_until(&mut set, 2);
    // The set closed its end: the server sees EOF.
    let mut buf = [0u8; 16];
    assert_eq!(a.read(&mut buf).expect("read"), 0);
    drop(b);
    poll_until(&mut set, 1);
    // A masked frame is not a server frame.
    let mut masked = Vec::new();
    ringcast_protocol::encode_client_frame_into(OpCode::Text, b"x", [1, 2, 3, 4], &mut masked);
    c.write_all(&masked).expect("write");
    poll_until(&mut set, 0);
    got.sort();
    assert_eq!(
        got,
        [
            (0, "C:Some(1000)".to_string()),
            (1, "eof".into()),
            (2, "bad websocket: masked server frame".into()),
        ]
    );
}

#[test]
fn wake_makes_a_waiting_poll_return() {
    let mut set: EpollSet<()> = EpollSet::new().expect("epoll");
    set.wake();
    let p = set.poll(10_000, &mut |_, _| true).expect("poll");
    assert!(p.woken);
    assert_eq!(p.ready, 0);
    // Consumed: the next poll times out.
    let p = set.poll(0, &mut |_, _| true).expect("poll");
    assert!(!p.woken);
}

fn fanout_json(url: &str, receive: &str) -> serde_json::Value {
    let dir = common::tmp(&format!("epoll-{receive}"));
    common::run(
        &[
            "fanout",
            "--ws-url",
            url,
            "--subscribers",
            "40",
            "--channels",
            "2",
            "--rate",
            "40",
            "--duration",
            "1",
            "--publishers",
            "2",
            "--drain",
            "3",
            "--max-publish-lag-ms",
            "1000",
            "--receive",
            receive,
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    )
}

#[test]
fn fanout_counts_the_same_with_epoll_and_with_tasks() {
    let e = common::engine();
    let url = format!("ws://{}", e.local_addr());
    let a = fanout_json(&url, "epoll");
    let b = fanout_json(&url, "tasks");
    let (ra, rb) = (&a["results"][0], &b["results"][0]);
    common::assert_exact(ra);
    common::assert_exact(rb);
    // 40 events over 2 channels, 20 subscribers each.
    assert_eq!(ra["loss"]["expected"].as_u64(), Some(40 * 20));
    assert_eq!(ra["loss"], rb["loss"]);
    for r in [ra, rb] {
        assert_eq!(r["connections_closed"].as_u64(), Some(0), "{r}");
        assert_eq!(r["misrouted"].as_u64(), Some(0), "{r}");
        // The generator's CPU per delivery is measured on both paths.
        assert!(r["gen_cpu_us_per_delivery"].as_f64().is_some(), "{r}");
    }
    e.shutdown_and_join();
}

/// One connection of a tiny Pusher server: upgrade, `connection_established`, and for every
/// `pusher:subscribe` the success followed, in the same write, by an event stamped with phase
/// 99, then a second such event in a write of its own. Nothing else is answered or relayed.
fn serve_early_events(mut s: TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(e) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break e + 4;
        }
        assert!(head.len() < 16 * 1024, "request head too large");
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    };
    let mut hello = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n".to_vec();
    encode_frame_into(
        OpCode::Text,
        br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.1\",\"activity_timeout\":120}"}"#,
        &mut hello,
    );
    s.write_all(&hello).expect("write");
    let mut dec = ringcast_protocol::FrameDecoder::new(ringcast_protocol::Role::Server, 1 << 20);
    dec.handle_bytes(&head[end..]);
    for _ in 0..100_000 {
        while let Ok(Some(m)) = dec.poll_message() {
            let ringcast_protocol::Message::Text(t) = m else {
                continue;
            };
            let v: serde_json::Value = match serde_json::from_slice(&t) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["event"] != "pusher:subscribe" {
                continue;
            }
            let ch = v["data"]["channel"].as_str().unwrap_or("").to_string();
            let mut data = Vec::new();
            ringcast_loadtest::payload::encode(99, 0, 1, 100, &mut data);
            let ev = ringcast_protocol::event(
                "client-lt",
                &ch,
                std::str::from_utf8(&data).expect("ascii"),
                None,
            );
            let mut out = Vec::new();
            encode_frame_into(
                OpCode::Text,
                format!(
                    r#"{{"event":"pusher_internal:subscription_succeeded","channel":"{ch}","data":"{{}}"}}"#
                )
                .as_bytes(),
                &mut out,
            );
            encode_frame_into(OpCode::Text, ev.as_bytes(), &mut out);
            if s.write_all(&out).is_err() {
                return;
            }
            out.clear();
            encode_frame_into(OpCode::Text, ev.as_bytes(), &mut out);
            if s.write_all(&out).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.handle_bytes(&chunk[..n]),
        }
    }
}

#[test]
fn events_before_the_first_phase_are_counted_stale_on_both_paths() {
    for receive in ["epoll", "tasks"] {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("ws://{}", l.local_addr().expect("addr"));
        // One subscriber and one publisher.
        let server = std::thread::spawn(move || {
            let conns: Vec<_> = (0..2)
                .map(|_| {
                    let (s, _) = l.accept().expect("accept");
                    std::thread::spawn(move || serve_early_events(s))
                })
                .collect();
            for c in conns {
                c.join().expect("connection thread");
            }
        });
        let dir = common::tmp(&format!("early-{receive}"));
        let v = common::run(
            &[
                "fanout",
                "--ws-url",
                &url,
                "--subscribers",
                "1",
                "--publishers",
                "1",
                "--rate",
                "10",
                "--duration",
                "0.3",
                "--drain",
                "0.3",
                "--max-publish-lag-ms",
                "1000",
                "--receive",
                receive,
            ],
            &dir.join("out.json"),
            Duration::from_secs(60),
        );
        let r = &v["results"][0];
        // Both early events (one buffered with the subscription's success, one read after
        // it) are stale: counted with the first phase, not lost and not a panic.
        assert_eq!(r["stale"].as_u64(), Some(2), "{receive}: {r}");
        assert_eq!(r["loss"]["delivered"].as_u64(), Some(0), "{receive}: {r}");
        assert_eq!(r["connections_closed"].as_u64(), Some(0), "{receive}: {r}");
        server.join().expect("server");
    }
}
