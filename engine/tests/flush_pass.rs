//! The flush pass (engine/src/flush.rs) on real loopback sockets: many subscribers get every
//! event in order, a subscriber that stops reading is cut off as a slow consumer while the
//! others get everything, and shutdown still delivers 4200 after what was queued.
mod common;

use std::net::TcpStream;

use common::*;
use ringcast_engine::Publish;
use ringcast_protocol::ChannelName;
use serde_json::Value;
use tungstenite::Message;

fn publish_seq(s: &Server, channel: &str, from: usize, to: usize, pad: &str) {
    let h = s.handle();
    block_on(async {
        for i in from..to {
            h.publish(Publish {
                app: 0,
                channels: vec![ChannelName::parse(channel).unwrap()],
                event: "seq".into(),
                data: format!("{i} {pad}"),
                except: None,
            })
            .await
            .expect("publish");
        }
    });
}

/// The sequence number of a `seq` event.
fn seq_of(m: &Value) -> usize {
    assert_eq!(m["event"], "seq", "{m}");
    let d = m["data"].as_str().expect("data is a string");
    d.split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("a sequence number")
}

#[test]
fn many_subscribers_receive_every_event_in_order() {
    const SUBS: usize = 40;
    const EVENTS: usize = 300;
    for toml in [
        "flush_window_us = 0",
        "flush_window_us = 1000\nflush_window_ratio_pct = 0",
        "flush_window_us = 1000\nflush_window_ratio_pct = 100",
    ] {
        let s = Server::start(2, toml);
        let mut clients: Vec<Client> = (0..SUBS).map(|_| s.connect()).collect();
        for c in clients.iter_mut() {
            c.subscribe("wide");
        }
        publish_seq(&s, "wide", 0, EVENTS, "");
        for c in clients.iter_mut() {
            for i in 0..EVENTS {
                assert_eq!(seq_of(&c.recv()), i, "{toml}: out of order or missing");
            }
            c.assert_nothing_pending();
        }
        let m = s.handle().metrics();
        assert!(m.flush_passes > 0 && m.flush_writes > 0, "{m:?}");
        assert!(m.flush_frames > 0, "the passes wrote the frames: {m:?}");
        assert_eq!(m.closed_by("slow_consumer_budget"), 0);
    }
}

/// A WebSocket client with a small receive buffer, so that it fills quickly when it stops
/// reading.
fn small_buffer_client(s: &Server) -> (tungstenite::WebSocket<TcpStream>, Value) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).expect("connect");
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let url = format!(
        "ws://{}/app/{KEY}?protocol=7&client=rust&version=1.0",
        s.addr
    );
    let (ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    let mut c = Client {
        ws,
        socket_id: String::new(),
        established: Value::Null,
    };
    let first = c.recv();
    assert_eq!(first["event"], "pusher:connection_established");
    let ack = c.subscribe("firehose");
    (c.ws, ack)
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_off_and_the_others_get_everything() {
    const FAST: usize = 3;
    const MAX_EVENTS: usize = 3000;
    let s = Server::start(2, "outbound_budget_bytes = 524288");
    let (mut slow, _) = small_buffer_client(&s);
    // The fast subscribers read on their own threads, checking the order, until `end`.
    let readers: Vec<_> = (0..FAST)
        .map(|_| {
            let mut c = s.connect();
            c.subscribe("firehose");
            std::thread::spawn(move || {
                let mut next = 0;
                loop {
                    let m = c.recv();
                    if m["event"] == "end" {
                        return next;
                    }
                    assert_eq!(seq_of(&m), next, "a fast subscriber missed or reordered");
                    next += 1;
                }
            })
        })
        .collect();
    // The budget holds 64 of these: far more than the bursts a core drains between two passes,
    // so only the subscriber that stops reading can reach it.
    let pad = "x".repeat(8 * 1024);
    let mut published = 0;
    while published < MAX_EVENTS {
        publish_seq(&s, "firehose", published, published + 10, &pad);
        published += 10;
        if s.handle().metrics().closed_by("slow_consumer_budget") == 1 {
            break;
        }
    }
    s.wait_metrics("the slow subscriber cut off", |m| {
        m.closed_by("slow_consumer_budget") == 1
    });
    let m = s.handle().metrics();
    assert!(
        m.flush_slow_paths >= 1,
        "a full socket went to the slow path: {m:?}"
    );
    let h = s.handle();
    block_on(h.publish(Publish {
        app: 0,
        channels: vec![ChannelName::parse("firehose").unwrap()],
        event: "end".into(),
        data: "{}".into(),
        except: None,
    }))
    .expect("publish");
    for r in readers {
        assert_eq!(
            r.join().unwrap(),
            published,
            "every event reached every fast subscriber"
        );
    }
    // The slow subscriber got a gap-free prefix, then its connection ended.
    let mut next = 0;
    for _ in 0..=MAX_EVENTS {
        match slow.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(seq_of(&v), next, "the slow subscriber's prefix has a gap");
                next += 1;
            }
            Ok(Message::Close(f)) => {
                if let Some(f) = f {
                    assert_eq!(u16::from(f.code), 4100);
                }
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        next < published,
        "the slow subscriber did not get everything"
    );
}

#[test]
fn shutdown_flushes_queued_events_then_4200() {
    const SUBS: usize = 20;
    const EVENTS: usize = 50;
    let mut s = Server::start(2, "");
    let mut clients: Vec<Client> = (0..SUBS).map(|_| s.connect()).collect();
    for c in clients.iter_mut() {
        c.subscribe("news");
    }
    publish_seq(&s, "news", 0, EVENTS, "");
    // Every event is queued to (or written for) every subscriber before the shutdown starts.
    s.wait_metrics("every delivery queued", |m| {
        m.deliveries >= (SUBS * EVENTS) as u64
    });
    let running = s.running.take().unwrap();
    let t = std::thread::spawn(move || running.shutdown_and_join());
    for c in clients.iter_mut() {
        // Every event published before the shutdown, in order, then the close.
        for i in 0..EVENTS {
            assert_eq!(seq_of(&c.recv()), i);
        }
        assert_eq!(c.recv_close(), Some(4200));
    }
    t.join().unwrap();
}
