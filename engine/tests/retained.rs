//! Cache channels, subscription counts and event history (the owner core's retained state).

mod common;

use common::*;
use ringcast_engine::{HistoryQuery, Publish};
use ringcast_protocol::ChannelName;
use serde_json::json;

fn publish(server: &Server, channel: &str, event: &str, data: &str) {
    block_on(server.handle().publish(Publish {
        app: 0,
        channels: vec![ChannelName::parse(channel).unwrap()],
        event: event.into(),
        data: data.into(),
        except: None,
    }))
    .expect("publish");
}

const APP: &str = "[[apps]]\nid='app-id'\nkey='app-key'\nsecret='app-secret'\nclient_events=true\n";

#[test]
fn cache_channel_replays_the_last_event_or_reports_a_miss() {
    let s = Server::start(2, "");
    let mut a = s.connect();
    a.subscribe("cache-prices");
    let miss = a.recv();
    assert_eq!(miss["event"], "pusher:cache_miss");
    assert_eq!(miss["channel"], "cache-prices");
    // Published with nobody else subscribed: still cached.
    publish(&s, "cache-prices", "tick", "1");
    publish(&s, "cache-prices", "tick", "2");
    assert_eq!(a.recv_event("tick")["data"], "1");
    assert_eq!(a.recv_event("tick")["data"], "2");
    for _ in 0..3 {
        let mut b = s.connect();
        b.subscribe("cache-prices");
        assert_eq!(
            b.recv(),
            json!({"event": "tick", "channel": "cache-prices", "data": "2"}),
            "replay right after subscription_succeeded"
        );
        b.assert_nothing_pending();
    }
    let cached = block_on(
        s.handle()
            .channel_cache(0, ChannelName::parse("cache-prices").unwrap()),
    )
    .unwrap()
    .unwrap();
    assert_eq!((cached.event.as_str(), cached.data), ("tick", json!("2")));
    assert!(cached.ttl_secs > 1700 && cached.ttl_secs <= 1800);
    // Private cache channels replay client events too.
    let mut p = s.connect();
    p.subscribe_private("private-cache-x");
    assert_eq!(p.recv()["event"], "pusher:cache_miss");
    p.send(json!({"event": "client-note", "channel": "private-cache-x", "data": {"n": 1}}));
    p.assert_nothing_pending();
    let mut q = s.connect();
    q.subscribe_private("private-cache-x");
    let replay = q.recv();
    assert_eq!(replay["event"], "client-note");
    assert_eq!(replay["data"], json!({"n": 1}));
    // Non-cache channels never send cache_miss.
    let mut n = s.connect();
    n.subscribe("plain");
    n.assert_nothing_pending();
}

#[test]
fn cache_entries_expire_after_the_ttl() {
    let s = Server::start(1, &format!("{APP}cache_ttl_secs=1"));
    publish(&s, "cache-short", "e", "x");
    let mut a = s.connect();
    a.subscribe("cache-short");
    assert_eq!(a.recv()["event"], "e");
    // The engine's clock moves, not the test's: no sleep.
    s.handle()
        .advance_clock(std::time::Duration::from_millis(1100));
    let mut b = s.connect();
    b.subscribe("cache-short");
    assert_eq!(b.recv()["event"], "pusher:cache_miss");
}

#[test]
fn subscription_count_is_broadcast_on_every_change_when_enabled() {
    let s = Server::start(2, &format!("{APP}subscription_count=true"));
    let count = |m: &serde_json::Value| data_of(m)["subscription_count"].as_u64().unwrap();
    let mut a = s.connect();
    a.subscribe("room");
    assert_eq!(
        count(&a.recv_event("pusher_internal:subscription_count")),
        1
    );
    let mut b = s.connect();
    b.subscribe("room");
    assert_eq!(
        count(&a.recv_event("pusher_internal:subscription_count")),
        2
    );
    assert_eq!(
        count(&b.recv_event("pusher_internal:subscription_count")),
        2
    );
    b.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "room"}}));
    assert_eq!(
        count(&a.recv_event("pusher_internal:subscription_count")),
        1
    );
    // Presence channels never get it.
    let mut p = s.connect();
    p.subscribe_presence("presence-r", "1");
    p.assert_nothing_pending();
    // Off by default.
    let s2 = Server::start(1, "");
    let mut c = s2.connect();
    c.subscribe("room");
    c.assert_nothing_pending();
}

#[test]
fn subscription_count_is_throttled_above_100_subscribers() {
    let s = Server::start(2, &format!("{APP}subscription_count=true"));
    let mut watcher = s.connect();
    watcher.subscribe("big");
    let mut others = Vec::new();
    for _ in 0..101 {
        let mut c = s.connect();
        c.subscribe("big");
        others.push(c);
    }
    // Up to 100 subscribers every change is sent: 1..=100 arrive in order.
    for want in 1..=100u64 {
        let m = watcher.recv_event("pusher_internal:subscription_count");
        assert_eq!(data_of(&m)["subscription_count"], want);
    }
    // 101 and 102 change within the throttle window: one later message with the final count.
    let m = watcher.recv_event("pusher_internal:subscription_count");
    assert_eq!(data_of(&m)["subscription_count"], 102);
    watcher.assert_nothing_pending();
}

#[test]
fn history_keeps_recent_events_per_channel_and_per_app() {
    let s = Server::start(2, &format!("{APP}history_size=3"));
    for i in 0..5 {
        publish(&s, "h-a", "ev", &i.to_string());
    }
    // History is ordered by wall-clock milliseconds: make h-b strictly newer (the engine's
    // clock moves, no sleep).
    s.handle()
        .advance_clock(std::time::Duration::from_millis(5));
    publish(&s, "h-b", "other", "x");
    let h = s.handle();
    let evs = block_on(h.channel_history(0, ChannelName::parse("h-a").unwrap(), 50)).unwrap();
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![5, 4, 3],
        "newest first, 3 kept"
    );
    assert_eq!(evs[0].data, json!("4"));
    let (all, more) = block_on(h.history(
        0,
        HistoryQuery {
            limit: 10,
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(all.len(), 4);
    assert!(!more);
    assert_eq!(
        all[0].channel, "h-b",
        "the app-wide log is newest first across cores"
    );
    let (page, more) = block_on(h.history(
        0,
        HistoryQuery {
            limit: 2,
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!((page.len(), more), (2, true));
    let (only, _) = block_on(h.history(
        0,
        HistoryQuery {
            event: Some("other".into()),
            limit: 10,
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(only.len(), 1);
    s.wait_metrics("history memory reported", |m| m.history_bytes > 0);
    // History off by default.
    let s2 = Server::start(1, "");
    publish(&s2, "h-a", "ev", "1");
    assert!(block_on(
        s2.handle()
            .channel_history(0, ChannelName::parse("h-a").unwrap(), 50)
    )
    .unwrap()
    .is_empty());
}
