//! Engine behaviour over loopback with a real WebSocket client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use ringcast_engine::Publish;
use ringcast_protocol::{ChannelName, SocketId};
use serde_json::json;

fn publish(
    server: &Server,
    channel: &str,
    event: &str,
    data: &str,
) -> Vec<ringcast_engine::ChannelCounts> {
    let h = server.handle();
    block_on(h.publish(Publish {
        app: 0,
        channels: vec![ChannelName::parse(channel).unwrap()],
        event: event.into(),
        data: data.into(),
        except: None,
    }))
    .expect("publish")
}

fn publish_except(server: &Server, channel: &str, event: &str, except: SocketId) {
    let h = server.handle();
    block_on(h.publish(Publish {
        app: 0,
        channels: vec![ChannelName::parse(channel).unwrap()],
        event: event.into(),
        data: "{}".into(),
        except: Some(except),
    }))
    .expect("publish");
}

/// REST `socket_id` exclusion matches the whole socket id: a socket id that shares only one
/// half with a subscriber's (the connection id after the dot) must not exclude it.
#[test]
fn rest_socket_id_exclusion_matches_the_whole_socket_id() {
    for workers in [1, 2] {
        let s = Server::start(workers, "");
        let mut clients: Vec<Client> = (0..4).map(|_| s.connect()).collect();
        for c in clients.iter_mut() {
            c.subscribe("excl");
        }
        let me = SocketId::parse(&clients[0].socket_id).expect("socket id parses");
        // Same connection id, other random half: nobody is excluded.
        publish_except(
            &s,
            "excl",
            "half",
            SocketId::new(me.hi.wrapping_add(1), me.lo),
        );
        // Same random half, other connection id: nobody is excluded.
        publish_except(&s, "excl", "other-half", SocketId::new(me.hi, me.lo + 1));
        // The whole id: only clients[0] is excluded.
        publish_except(&s, "excl", "whole", me);
        for (i, c) in clients.iter_mut().enumerate() {
            assert_eq!(c.recv()["event"], "half", "client {i}");
            assert_eq!(c.recv()["event"], "other-half", "client {i}");
            if i != 0 {
                assert_eq!(c.recv()["event"], "whole", "client {i}");
            }
            c.assert_nothing_pending();
        }
    }
}

#[test]
fn connection_established_has_string_data_socket_id_and_timeout() {
    let s = Server::start(1, "");
    let c = s.connect();
    let re = |id: &str| {
        let mut parts = id.split('.');
        let ok = |p: Option<&str>| {
            p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
    };
    assert!(re(&c.socket_id), "socket id {}", c.socket_id);
    assert_eq!(c.established["activity_timeout"], 120);
}

#[test]
fn unknown_app_key_is_closed_with_4001_after_upgrade() {
    let s = Server::start(1, "");
    let (ws, first) = Client::open(s.addr, "/app/nope?protocol=7");
    let first = first.expect("pusher:error before close");
    assert_eq!(first["event"], "pusher:error");
    assert_eq!(first["data"]["code"], 4001);
    let mut c = Client {
        ws,
        socket_id: String::new(),
        established: json!({}),
    };
    assert_eq!(c.recv_close(), Some(4001));
}

#[test]
fn protocol_version_checks() {
    let s = Server::start(1, "");
    for (path, code) in [
        ("/app/app-key?protocol=3", 4007),
        ("/app/app-key", 4008),
        ("/app/app-key?protocol=x", 4006),
        ("/nope/app-key?protocol=7", 4005),
    ] {
        let (ws, first) = Client::open(s.addr, path);
        assert_eq!(
            first.as_ref().map(|f| f["data"]["code"].clone()),
            Some(json!(code)),
            "{path}"
        );
        let mut c = Client {
            ws,
            socket_id: String::new(),
            established: json!({}),
        };
        assert_eq!(c.recv_close(), Some(code), "{path}");
    }
    // Protocol 4..=7 accepted.
    let (_, first) = Client::open(s.addr, "/app/app-key?protocol=4");
    assert_eq!(first.unwrap()["event"], "pusher:connection_established");
}

#[test]
fn public_subscribe_succeeds_with_string_data_and_receives_events() {
    let s = Server::start(1, "");
    let mut c = s.connect();
    let ok = c.subscribe("my-channel");
    assert_eq!(ok["channel"], "my-channel");
    assert_eq!(ok["data"], "{}");
    let counts = publish(&s, "my-channel", "my-event", "{\"a\":1}");
    assert_eq!(counts[0].subscription_count, 1);
    let m = c.recv_event("my-event");
    assert_eq!(
        m,
        json!({"event": "my-event", "channel": "my-channel", "data": "{\"a\":1}"})
    );
}

#[test]
fn private_subscription_requires_a_valid_signature_and_failure_does_not_close() {
    let s = Server::start(1, "");
    let mut c = s.connect();
    c.send(json!({"event": "pusher:subscribe", "data": {"auth": "app-key:deadbeef", "channel": "private-x"}}));
    let err = c.recv();
    assert_eq!(err["event"], "pusher:error");
    assert!(err["data"]["code"].is_null());
    assert!(
        err["data"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid signature"),
        "{err}"
    );
    let sub_err = c.recv();
    assert_eq!(sub_err["event"], "pusher:subscription_error");
    assert_eq!(sub_err["channel"], "private-x");
    // No auth at all.
    c.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-x"}}));
    assert_eq!(c.recv()["event"], "pusher:error");
    // Still connected and served; a valid signature works.
    let ok = c.subscribe_private("private-x");
    assert_eq!(ok["data"], "{}");
    // Signature with channel_data appended (Node SDK form) is accepted for private channels too.
    let cd = "{\"user_id\":\"1\"}";
    let auth = ringcast_protocol::channel_auth(KEY, SECRET, &c.socket_id, "private-y", Some(cd));
    c.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": "private-y", "channel_data": cd}}));
    assert_eq!(
        c.recv_event("pusher_internal:subscription_succeeded")["channel"],
        "private-y"
    );
}

#[test]
fn invalid_channel_names_are_refused_without_closing() {
    let s = Server::start(1, "");
    let mut c = s.connect();
    for bad in ["", "has space", &"x".repeat(201), "#reserved"] {
        c.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": bad}}));
        assert_eq!(c.recv()["event"], "pusher:error", "{bad:?}");
        assert_eq!(c.recv()["event"], "pusher:subscription_error");
    }
    assert_eq!(
        c.subscribe(&"y".repeat(200))["event"],
        "pusher_internal:subscription_succeeded"
    );
}

#[test]
fn cross_core_routing_delivers_to_subscribers_on_every_core() {
    let s = Server::start(2, "");
    // Open connections until both cores hold at least two (bounded).
    let mut by_core: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        let c = s.connect();
        let k = c.core(2) as usize;
        if by_core[k].len() < 2 {
            by_core[k].push(c);
        }
        if by_core.iter().all(|v| v.len() == 2) {
            break;
        }
    }
    assert!(
        by_core.iter().all(|v| v.len() == 2),
        "kernel spread connections over both cores"
    );
    let [mut a, mut b] = by_core;
    // Several channels so that both cores own some.
    let channels: Vec<String> = (0..8).map(|i| format!("private-room-{i}")).collect();
    for ch in &channels {
        for c in a.iter_mut().chain(b.iter_mut()) {
            c.subscribe_private(ch);
        }
    }
    for ch in &channels {
        let counts = publish(&s, ch, "server-event", "hello");
        assert_eq!(counts[0].subscription_count, 4, "{ch}");
        for c in a.iter_mut().chain(b.iter_mut()) {
            assert_eq!(c.recv_event("server-event")["channel"], ch.as_str());
        }
        // Client event from core 0 reaches the other three, never the sender.
        a[0].send(json!({"event": "client-typing", "channel": ch, "data": {"from": "a0"}}));
        for c in a[1..].iter_mut().chain(b.iter_mut()) {
            let m = c.recv_event("client-typing");
            assert_eq!(m["data"], json!({"from": "a0"}));
            assert!(m.get("user_id").is_none());
        }
        a[0].assert_nothing_pending();
        // And from core 1.
        b[1].send(json!({"event": "client-typing", "channel": ch, "data": "text"}));
        for c in a.iter_mut().chain(b[..1].iter_mut()) {
            assert_eq!(c.recv_event("client-typing")["data"], "text");
        }
        b[1].assert_nothing_pending();
    }
    let info = block_on(
        s.handle()
            .channel(0, ChannelName::parse("private-room-3").unwrap()),
    )
    .unwrap();
    assert!(info.occupied);
    assert_eq!(info.subscription_count, 4);
    let list = block_on(s.handle().channels(0, Some("private-room-"))).unwrap();
    assert_eq!(list.len(), 8);
    assert!(list.iter().all(|c| c.subscription_count == 4));
}

#[test]
fn presence_members_are_refcounted_per_user_across_connections_and_cores() {
    let s = Server::start(2, "");
    let ch = "presence-room";
    let mut u2 = s.connect();
    let ok = u2.subscribe_presence(ch, "2");
    let p = data_of(&ok);
    assert_eq!(p["presence"]["count"], 1);
    assert_eq!(p["presence"]["ids"], json!(["2"]));
    assert_eq!(p["presence"]["hash"]["2"], json!({"name": "user 2"}));

    let mut u1a = s.connect();
    let ok = u1a.subscribe_presence(ch, "1");
    let p = data_of(&ok);
    assert_eq!(
        p["presence"]["count"], 2,
        "members include the subscriber itself"
    );
    let added = u2.recv_event("pusher_internal:member_added");
    assert_eq!(
        data_of(&added),
        json!({"user_id": "1", "user_info": {"name": "user 1"}})
    );
    u1a.assert_nothing_pending(); // no member_added about itself

    // A second connection of user 1: no member_added to anyone.
    let mut u1b = s.connect();
    let ok = u1b.subscribe_presence(ch, "1");
    assert_eq!(data_of(&ok)["presence"]["count"], 2);
    u2.assert_nothing_pending();
    u1a.assert_nothing_pending();

    let users = block_on(
        s.handle()
            .presence_users(0, ChannelName::parse(ch).unwrap()),
    )
    .unwrap();
    let mut ids: Vec<_> = users.iter().map(|u| u.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["1", "2"]);
    let info = block_on(s.handle().channel(0, ChannelName::parse(ch).unwrap())).unwrap();
    assert_eq!((info.subscription_count, info.user_count), (3, Some(2)));

    // Client events on presence carry the sender's user_id.
    u1a.send(json!({"event": "client-wave", "channel": ch, "data": {}}));
    assert_eq!(u2.recv_event("client-wave")["user_id"], "1");

    // First connection of user 1 leaves: user 1 is still present.
    u1a.close();
    s.wait_metrics("u1a gone", |m| m.connections_current == 2);
    u2.assert_nothing_pending();
    // Last connection leaves: member_removed exactly once.
    u1b.send(json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}));
    let removed = u2.recv_event("pusher_internal:member_removed");
    assert_eq!(data_of(&removed), json!({"user_id": "1"}));
    u2.assert_nothing_pending();
    let info = block_on(s.handle().channel(0, ChannelName::parse(ch).unwrap())).unwrap();
    assert_eq!((info.subscription_count, info.user_count), (1, Some(1)));
}

#[test]
fn presence_requires_channel_data_and_enforces_member_limit() {
    let s = Server::start(1, "[[apps]]\nid='app-id'\nkey='app-key'\nsecret='app-secret'\nmax_presence_members=2\nclient_events=true");
    let mut a = s.connect();
    let auth = ringcast_protocol::channel_auth(KEY, SECRET, &a.socket_id, "presence-x", None);
    a.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": "presence-x"}}));
    assert_eq!(a.recv()["event"], "pusher:error");
    a.subscribe_presence("presence-x", "1");
    let mut b = s.connect();
    b.subscribe_presence("presence-x", "2");
    assert_eq!(
        data_of(&a.recv_event("pusher_internal:member_added"))["user_id"],
        "2"
    );
    let mut c = s.connect();
    let cd = json!({"user_id": "3"}).to_string();
    let auth = ringcast_protocol::channel_auth(KEY, SECRET, &c.socket_id, "presence-x", Some(&cd));
    c.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": "presence-x", "channel_data": cd}}));
    let e = c.recv_event("pusher:subscription_error");
    assert_eq!(e["data"]["type"], "LimitReached");
    // The refused subscriber left no trace: still two members, a's view unchanged.
    a.assert_nothing_pending();
    let info = block_on(
        s.handle()
            .channel(0, ChannelName::parse("presence-x").unwrap()),
    )
    .unwrap();
    assert_eq!((info.subscription_count, info.user_count), (2, Some(2)));
    c.close();
    s.wait_metrics("c gone", |m| m.connections_current == 2);
    let info = block_on(
        s.handle()
            .channel(0, ChannelName::parse("presence-x").unwrap()),
    )
    .unwrap();
    assert_eq!((info.subscription_count, info.user_count), (2, Some(2)));
}

#[test]
fn client_event_rules() {
    let s = Server::start(2, "");
    let mut a = s.connect();
    let mut b = s.connect();
    a.subscribe("public-chan");
    b.subscribe("public-chan");
    a.send(json!({"event": "client-x", "channel": "public-chan", "data": {}}));
    let e = a.recv();
    assert_eq!(e["event"], "pusher:error");
    assert!(e["data"]["message"]
        .as_str()
        .unwrap()
        .contains("only supported on private and presence"));
    b.assert_nothing_pending();
    // Not subscribed.
    a.send(json!({"event": "client-x", "channel": "private-nope", "data": {}}));
    assert!(a.recv()["data"]["message"]
        .as_str()
        .unwrap()
        .contains("not subscribed"));
    // Rate limit: 10/s by default; a burst of 30 gets 4301 errors, never a close.
    a.subscribe_private("private-r");
    b.subscribe_private("private-r");
    for i in 0..30 {
        a.send(json!({"event": "client-burst", "channel": "private-r", "data": {"i": i}}));
    }
    let mut limited = 0;
    for _ in 0..30 {
        let m = a.recv();
        if m["event"] == "pusher:error" && m["data"]["code"] == 4301 {
            limited += 1;
        }
        if limited > 0 && limited + 10 >= 30 {
            break;
        }
    }
    assert!(limited >= 1, "burst above the limit got 4301");
    a.assert_nothing_pending();
    let mut got = 0;
    for _ in 0..(30 - limited) {
        assert_eq!(b.recv()["event"], "client-burst");
        got += 1;
    }
    assert_eq!(
        got + limited,
        30,
        "every event was either delivered or refused with 4301"
    );
    b.assert_nothing_pending();
}

#[test]
fn client_events_disabled_per_app() {
    let s = Server::start(
        1,
        "[[apps]]\nid='app-id'\nkey='app-key'\nsecret='app-secret'",
    );
    let mut a = s.connect();
    a.subscribe_private("private-r");
    a.send(json!({"event": "client-x", "channel": "private-r", "data": {}}));
    assert!(a.recv()["data"]["message"]
        .as_str()
        .unwrap()
        .contains("enable this feature"));
}

#[test]
fn pings_are_answered() {
    let s = Server::start(1, "");
    let mut c = s.connect();
    c.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(c.recv(), json!({"event": "pusher:pong", "data": {}}));
    c.ws.send(tungstenite::Message::Ping(b"hi".to_vec().into()))
        .unwrap();
    match c.ws.read().unwrap() {
        tungstenite::Message::Pong(p) => assert_eq!(&p[..], b"hi"),
        other => panic!("expected pong, got {other:?}"),
    }
}

/// Pings `c` up to `n` times, alternating WebSocket pings and pusher:ping when `mixed`, each
/// once the previous one was answered (so the server has read all that was sent when it
/// closes, and the close frame is not lost to a reset). Returns the pongs received and the
/// close frame's code and reason, if the server closed.
fn ping_until_closed(c: &mut Client, n: usize, mixed: bool) -> (usize, Option<(u16, String)>) {
    for i in 0..n {
        if mixed && i % 2 == 0 {
            c.ws.send(tungstenite::Message::Ping(b"x".to_vec().into()))
                .unwrap();
        } else {
            c.send(json!({"event": "pusher:ping", "data": {}}));
        }
        match c.ws.read().unwrap() {
            tungstenite::Message::Pong(p) => assert_eq!(&p[..], b"x"),
            tungstenite::Message::Text(t) => {
                let m: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(m["event"], "pusher:pong", "{m}");
            }
            tungstenite::Message::Close(f) => {
                return (i, f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (n, None)
}

/// A ping flood (pusher:ping or WebSocket pings) is closed with 4301 and counted; a bystander
/// on the same server keeps being served.
#[test]
fn ping_floods_are_closed_with_4301_and_counted() {
    let s = Server::start(2, "pings_per_minute = 10");
    let mut bystander = s.connect();
    bystander.subscribe("news");
    for mixed in [false, true] {
        let mut flood = s.connect();
        let (pongs, close) = ping_until_closed(&mut flood, 200, mixed);
        // The burst (ten) is answered, then the connection is closed: far fewer than 200.
        assert!((10..200).contains(&pongs), "{pongs} pongs");
        assert_eq!(close, Some((4301, "Ping rate limit exceeded".to_string())));
    }
    // WebSocket ping frames alone.
    let mut ws_flood = s.connect();
    let mut closed = None;
    for i in 0..200 {
        ws_flood
            .ws
            .send(tungstenite::Message::Ping(b"x".to_vec().into()))
            .unwrap();
        match ws_flood.ws.read().unwrap() {
            tungstenite::Message::Pong(_) => {}
            tungstenite::Message::Close(f) => {
                closed = Some((i, f.map(|f| u16::from(f.code))));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (pongs, code) = closed.expect("a WebSocket ping flood is closed");
    assert!(pongs >= 10, "{pongs}");
    assert_eq!(code, Some(4301));
    s.wait_metrics("the three floods counted", |m| {
        m.closed_by("ping_rate_limit") == 3
    });
    publish(&s, "news", "update", "{\"n\":1}");
    assert_eq!(bystander.recv_event("update")["data"], "{\"n\":1}");
    bystander.assert_nothing_pending();
    assert_eq!(s.handle().metrics().closed_by("ping_rate_limit"), 3);
}

/// pusher:ping messages and WebSocket ping frames spend one budget: ten of each at ten a
/// minute is over it (separate budgets would answer all twenty).
#[test]
fn pusher_and_websocket_pings_share_one_budget() {
    let s = Server::start(1, "pings_per_minute = 10");
    let mut c = s.connect();
    let (pongs, close) = ping_until_closed(&mut c, 20, true);
    assert!(pongs < 20, "{pongs} pongs");
    assert_eq!(close.map(|c| c.0), Some(4301));
}

/// A client pinging at the allowed rate is never closed: a whole burst, then one ping per
/// interval for 100 intervals on the engine's clock (moved forward, nothing sleeps).
#[test]
fn pinging_at_the_allowed_rate_is_never_closed() {
    let s = Server::start(1, "pings_per_minute = 60");
    let h = s.handle();
    let mut c = s.connect();
    for _ in 0..60 {
        c.send(json!({"event": "pusher:ping", "data": {}}));
    }
    for _ in 0..60 {
        assert_eq!(c.recv()["event"], "pusher:pong");
    }
    for i in 0..100 {
        h.advance_clock(std::time::Duration::from_secs(1));
        if i % 2 == 0 {
            c.send(json!({"event": "pusher:ping", "data": {}}));
            assert_eq!(c.recv()["event"], "pusher:pong", "ping {i}");
        } else {
            c.ws.send(tungstenite::Message::Ping(b"r".to_vec().into()))
                .unwrap();
            match c.ws.read().unwrap() {
                tungstenite::Message::Pong(p) => assert_eq!(&p[..], b"r"),
                other => panic!("expected pong to ping {i}, got {other:?}"),
            }
        }
    }
    c.subscribe("still-here");
    assert_eq!(h.metrics().closed_by("ping_rate_limit"), 0);
}

#[test]
fn silent_client_is_pinged_then_closed_with_4201() {
    let s = Server::start(1, "activity_timeout = 1\npong_timeout = 1");
    let mut c = s.connect();
    assert_eq!(c.established["activity_timeout"], 1);
    let ping = c.recv();
    assert_eq!(ping["event"], "pusher:ping");
    // Do not answer: closed with 4201.
    assert_eq!(c.recv_close(), Some(4201));
    s.wait_metrics("pong timeout counted", |m| m.closed_by("pong_timeout") == 1);
}

/// The same with the default timeouts (120 s, then 30 s) on the engine's injectable clock:
/// nothing sleeps, and nothing happens before each deadline.
#[test]
fn liveness_runs_on_the_engines_clock() {
    let s = Server::start(2, "");
    let h = s.handle();
    let mut c = s.connect();
    assert_eq!(c.established["activity_timeout"], 120);
    h.advance_clock(std::time::Duration::from_secs(119));
    block_on(h.tick_now()).unwrap();
    c.assert_nothing_pending();
    // The ping answered above was client activity; 120 s of silence from now on.
    h.advance_clock(std::time::Duration::from_secs(120));
    block_on(h.tick_now()).unwrap();
    assert_eq!(c.recv()["event"], "pusher:ping");
    h.advance_clock(std::time::Duration::from_secs(29));
    block_on(h.tick_now()).unwrap();
    assert_eq!(s.handle().metrics().closed_by("pong_timeout"), 0);
    h.advance_clock(std::time::Duration::from_secs(1));
    block_on(h.tick_now()).unwrap();
    assert_eq!(c.recv_close(), Some(4201));
    s.wait_metrics("pong timeout counted", |m| m.closed_by("pong_timeout") == 1);
}

#[test]
fn answering_the_ping_keeps_the_connection() {
    let s = Server::start(1, "activity_timeout = 1\npong_timeout = 1");
    let mut c = s.connect();
    for _ in 0..2 {
        assert_eq!(c.recv()["event"], "pusher:ping");
        c.send(json!({"event": "pusher:pong", "data": {}}));
    }
    c.assert_nothing_pending();
    assert_eq!(s.handle().metrics().closed_by("pong_timeout"), 0);
}

#[test]
fn bad_input_gets_errors_and_the_server_keeps_serving() {
    let s = Server::start(2, "max_message_bytes = 4096");
    let mut bystander = s.connect();
    bystander.subscribe("news");
    let mut c = s.connect();
    for junk in [
        "not json",
        "{\"event\":",
        "[]",
        "{\"data\":{}}",
        "{\"event\":\"pusher:subscribe\"}",
        "{\"event\":\"pusher:bogus\",\"data\":{}}",
    ] {
        c.ws.send(tungstenite::Message::text(junk)).unwrap();
        let e = c.recv();
        assert_eq!(e["event"], "pusher:error", "{junk}");
    }
    c.ws.send(tungstenite::Message::Binary(vec![1, 2, 3].into()))
        .unwrap();
    assert_eq!(c.recv()["event"], "pusher:error");
    c.assert_nothing_pending();
    // Oversized message: closed with 1009.
    c.ws.send(tungstenite::Message::text("x".repeat(5000)))
        .unwrap();
    assert_eq!(c.recv_close(), Some(1009));
    // Unmasked client frame on a raw socket: closed with 1002.
    let mut raw = TcpStream::connect(s.addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(b"GET /app/app-key?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    raw.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let mut all = Vec::new();
    let _ = raw.read_to_end(&mut all);
    let close_at = all
        .windows(2)
        .rposition(|w| w[0] == 0x88)
        .expect("close frame");
    let code = u16::from_be_bytes([all[close_at + 2], all[close_at + 3]]);
    assert_eq!(code, 1002);
    // Garbage instead of HTTP: 400, no crash.
    let mut g = TcpStream::connect(s.addr).unwrap();
    g.set_read_timeout(Some(WAIT)).unwrap();
    g.write_all(b"\x00\x01\x02 garbage\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = g.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // The bystander is still served.
    publish(&s, "news", "still-here", "1");
    assert_eq!(bystander.recv_event("still-here")["data"], "1");
}

#[test]
fn rate_limited_subscribes_and_unknown_events_are_counted() {
    // Found by `ringcast-loadtest abuse`: both were answered with pusher:error but counted
    // nowhere, so /metrics could not show the abuse.
    let s = Server::start(1, "control_messages_per_sec = 2");
    let mut c = s.connect();
    let before = s.handle().metrics();
    c.send(json!({"event": "abuse:unknown", "data": {}}));
    assert_eq!(c.recv()["event"], "pusher:error");
    s.wait_metrics("the unknown event counted as a protocol error", |m| {
        m.protocol_errors == before.protocol_errors + 1
    });
    // Two a second: a burst of ten is refused in part (and counted) however slow the machine.
    for i in 0..10 {
        c.send(
            json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": format!("f{i}")}}),
        );
    }
    s.wait_metrics("the refused subscribe counted", |m| {
        m.control_rate_limited > before.control_rate_limited
    });
}

#[test]
fn subscribe_flood_is_refused_not_fatal() {
    let s = Server::start(
        1,
        "max_subscriptions_per_connection = 5\ncontrol_messages_per_sec = 1000",
    );
    let mut c = s.connect();
    for i in 0..5 {
        c.subscribe(&format!("c{i}"));
    }
    c.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": "c5"}}));
    assert_eq!(c.recv()["event"], "pusher:error");
    assert_eq!(c.recv()["data"]["type"], "LimitReached");
    c.assert_nothing_pending();
}

#[test]
fn connection_quota_closes_with_4004() {
    let s = Server::start(
        1,
        "[[apps]]\nid='app-id'\nkey='app-key'\nsecret='app-secret'\nmax_connections=2",
    );
    let _a = s.connect();
    let _b = s.connect();
    let (ws, first) = Client::open(s.addr, "/app/app-key?protocol=7");
    assert_eq!(first.unwrap()["data"]["code"], 4004);
    let mut c = Client {
        ws,
        socket_id: String::new(),
        established: json!({}),
    };
    assert_eq!(c.recv_close(), Some(4004));
}

#[test]
fn slow_consumer_is_cut_off_and_others_keep_receiving() {
    let s = Server::start(2, "outbound_budget_bytes = 262144");
    let mut fast = s.connect();
    fast.subscribe("firehose");
    let mut slow = s.connect();
    slow.subscribe("firehose");
    // `slow` stops reading. Publish far more than kernel buffers plus the budget can hold.
    let data = "x".repeat(8 * 1024);
    let mut delivered_to_fast = 0;
    for i in 0..3000 {
        publish(&s, "firehose", "bulk", &data);
        // Keep the fast reader drained so only `slow` falls behind.
        if i % 4 == 3 {
            for _ in 0..4 {
                assert_eq!(fast.recv_event("bulk")["event"], "bulk");
                delivered_to_fast += 1;
            }
        }
        if s.handle().metrics().closed_by("slow_consumer_budget") == 1 {
            break;
        }
    }
    s.wait_metrics("slow consumer cut off", |m| {
        m.closed_by("slow_consumer_budget") == 1
    });
    // The slow client sees queued data, then the 4100 close (if its socket still accepts it).
    drop(slow);
    // The fast client kept receiving everything, in order, and still does.
    publish(&s, "firehose", "after", "1");
    for _ in 0..10_000 {
        let m = fast.recv();
        if m["event"] == "after" {
            break;
        }
        assert_eq!(m["event"], "bulk");
        delivered_to_fast += 1;
    }
    assert!(delivered_to_fast > 0);
    let info = block_on(
        s.handle()
            .channel(0, ChannelName::parse("firehose").unwrap()),
    )
    .unwrap();
    assert_eq!(
        info.subscription_count, 1,
        "the slow consumer was unsubscribed"
    );
}

#[test]
fn shutdown_closes_clients_with_4200() {
    let mut s = Server::start(2, "");
    let mut clients: Vec<Client> = (0..4).map(|_| s.connect()).collect();
    let running = s.running.take().unwrap();
    let t = std::thread::spawn(move || running.shutdown_and_join());
    for c in clients.iter_mut() {
        assert_eq!(c.recv_close(), Some(4200));
    }
    t.join().unwrap();
    assert!(
        TcpStream::connect(s.addr).is_err(),
        "listener closed after shutdown"
    );
}

#[test]
fn health_is_served_on_the_public_port() {
    let s = Server::start(1, "");
    let mut h = TcpStream::connect(s.addr).unwrap();
    h.set_read_timeout(Some(WAIT)).unwrap();
    h.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = h.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn a_write_stuck_past_the_deadline_drops_the_connection() {
    // A huge budget so only the deadline can trigger.
    let s = Server::start(
        1,
        "outbound_budget_bytes = 268435456\nwrite_deadline_ms = 300",
    );
    let mut stuck = s.connect();
    stuck.subscribe("jam");
    let mut watcher = s.connect();
    watcher.subscribe("jam");
    let data = "y".repeat(64 * 1024);
    // `stuck` never reads: once the kernel buffers are full its write cannot finish.
    for i in 0..2000 {
        publish(&s, "jam", "blob", &data);
        if i % 8 == 7 {
            for _ in 0..8 {
                watcher.recv_event("blob");
            }
        }
        if s.handle().metrics().closed_by("slow_consumer_deadline") == 1 {
            break;
        }
    }
    s.wait_metrics("write deadline enforced", |m| {
        m.closed_by("slow_consumer_deadline") == 1
    });
    assert_eq!(s.handle().metrics().closed_by("slow_consumer_budget"), 0);
    drop(stuck);
    s.wait_metrics("stuck connection cleaned up", |m| {
        m.connections_current == 1
    });
}

/// One JSON reading with one rule: a message repeating a field the server reads is refused
/// (`pusher:error`), whichever occurrence a different parser would have taken.
#[test]
fn a_message_with_a_duplicate_event_field_is_refused_not_half_read() {
    let s = Server::start(1, "");
    let mut c = s.connect();
    c.ws
        .send(tungstenite::Message::text(
            r#"{"event":"pusher:subscribe","data":{"channel":"dup"},"event":"client-x","channel":"private-x"}"#,
        ))
        .unwrap();
    let m = c.recv();
    assert_eq!(m["event"], "pusher:error", "{m}");
    assert!(
        m["data"]["message"]
            .as_str()
            .unwrap()
            .contains("Duplicate field 'event'"),
        "{m}"
    );
    // Nothing was subscribed, and the connection is still served.
    c.assert_nothing_pending();
    assert_eq!(publish(&s, "dup", "ev", "{}")[0].subscription_count, 0);
}
