//! Mesh overflow policy, end to end: no subscriber silently misses an event. A subscriber core
//! that cannot keep up makes the owner push back on publishers (503 `Overloaded`), and a
//! subscriber whose core could not take an event is closed with 4100 after a gap-free prefix.

mod common;

use common::*;
use ringcast_engine::{EngineError, Publish};
use ringcast_protocol::ChannelName;

const RING: usize = 16;
const LIMIT: usize = 8;

fn publish_queued(s: &Server, ch: &ChannelName, i: usize) -> Result<(), EngineError> {
    s.handle().publish_queued(Publish {
        app: 0,
        channels: vec![ch.clone()],
        event: "ev".into(),
        data: i.to_string(),
        except: None,
    })
}

/// A client on core `core` of 2.
fn client_on(s: &Server, core: u64) -> Client {
    for _ in 0..64 {
        let c = s.connect();
        if c.core(2) == core {
            return c;
        }
    }
    panic!("no connection landed on core {core}");
}

#[test]
fn a_stalled_subscriber_core_gets_pushback_then_4100_never_a_silent_gap() {
    let s = Server::start(
        2,
        &format!("mesh_queue_capacity = {RING}\nmesh_overflow_limit = {LIMIT}\n"),
    );
    let h = s.handle();
    // A channel owned by core 0; one subscriber there (delivered in place), one on core 1
    // (delivered over the 0 -> 1 ring).
    let ch = (0..1000)
        .filter_map(|i| ChannelName::parse(&format!("ovf-{i}")).ok())
        .find(|n| h.owner_core(0, n) == 0)
        .expect("a channel owned by core 0");
    let mut local = client_on(&s, 0);
    let mut remote = client_on(&s, 1);
    local.subscribe(ch.as_str());
    remote.subscribe(ch.as_str());

    // Core 1 stops draining; core 0 is held too, so that many publishes are admitted before
    // it fans any out (as under a burst).
    let n = 100;
    let stall1 = h.stall_core(1).expect("core 1 stalls");
    let stall0 = h.stall_core(0).expect("core 0 stalls");
    for i in 0..n {
        publish_queued(&s, &ch, i).expect("admitted while nothing is congested");
    }
    drop(stall0);
    // Core 0 fans the burst out: RING deliveries fit the ring, LIMIT wait in the overflow,
    // the rest cannot be taken by core 1. Core 0 is now congested: publishers are pushed back.
    for i in 0..n {
        let m = local.recv_event("ev");
        assert_eq!(
            m["data"],
            i.to_string(),
            "the owner's own subscriber gets everything"
        );
    }
    // (Core 0 publishes its congestion at the end of the pass that fanned the burst out,
    // before its subscriber's writer ran, so the flag is up by now.)
    assert_eq!(
        publish_queued(&s, &ch, usize::MAX),
        Err(EngineError::Overloaded),
        "a publish was admitted while the owner's mesh is congested"
    );
    s.wait_metrics("the refused delivery", |m| m.mesh_dropped > 0);

    // Core 1 resumes: its subscriber gets a gap-free prefix, then 4100.
    drop(stall1);
    let mut got = 0;
    loop {
        match remote.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let m: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(m["event"], "ev", "{m}");
                assert_eq!(m["data"], got.to_string(), "events arrive in order, no gap");
                got += 1;
            }
            Ok(tungstenite::Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 4100);
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("expected 4100, got {e}"),
        }
    }
    assert_eq!(
        got,
        RING + LIMIT,
        "the prefix is what fit the ring and the overflow"
    );
    // Once the overflow drains the owner admits publishes again, and the in-place subscriber
    // still gets them.
    let until = std::time::Instant::now() + WAIT;
    while publish_queued(&s, &ch, 7).is_err() {
        assert!(std::time::Instant::now() < until, "push-back never ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(local.recv_event("ev")["data"], "7");
    // The close reason is counted when the connection's tasks end, after its close frame was
    // written: wait for it (bounded).
    s.wait_metrics("the 4100 close counted as slow_consumer_mesh", |m| {
        m.closed
            .iter()
            .any(|(r, n)| *r == "slow_consumer_mesh" && *n == 1)
    });
}
