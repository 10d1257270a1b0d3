//! Every Pusher HTTP API endpoint over loopback against an in-process engine, with real
//! WebSocket subscribers checking what is delivered.

mod common;

use common::*;
use serde_json::{json, Value};

fn ev(name: &str, channels: &[&str], data: &str) -> String {
    json!({"name": name, "channels": channels, "data": data}).to_string()
}

#[test]
fn trigger_delivers_the_data_string_verbatim_and_answers_empty_object() {
    let s = Server::start();
    let mut c = s.connect();
    c.subscribe("my-channel");
    let r = s.signed(
        "POST",
        "/apps/app-id/events",
        &[],
        &ev("my-event", &["my-channel"], "{\"some\":\"data\"}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let m = c.recv_event("my-event");
    assert_eq!(
        m,
        json!({"event": "my-event", "channel": "my-channel", "data": "{\"some\":\"data\"}"})
    );
    c.assert_nothing_pending();
}

#[test]
fn trigger_single_channel_field_and_non_string_data() {
    let s = Server::start();
    let mut c = s.connect();
    c.subscribe("ch");
    let body = json!({"name": "e", "channel": "ch", "data": {"a": 1}}).to_string();
    assert_eq!(
        s.signed("POST", "/apps/app-id/events", &[], &body).status,
        200
    );
    assert_eq!(c.recv_event("e")["data"], "{\"a\":1}");
}

#[test]
fn trigger_to_several_channels_reaches_each_once_and_reports_info() {
    let s = Server::start();
    let mut a1 = s.connect();
    let mut a2 = s.connect();
    let mut b = s.connect();
    for (c, u) in [(&mut a1, "ua"), (&mut a2, "ua"), (&mut b, "ub")] {
        c.subscribe_presence("presence-room", u);
    }
    a1.subscribe("pub");
    b.subscribe("pub");
    let body = json!({"name": "multi", "channels": ["presence-room", "pub", "empty"],
        "data": "x", "info": "user_count,subscription_count"})
    .to_string();
    let r = s.signed("POST", "/apps/app-id/events", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"channels": {
            "presence-room": {"user_count": 2, "subscription_count": 3},
            "pub": {"subscription_count": 2},
            "empty": {"subscription_count": 0},
        }})
    );
    for c in [&mut a1, &mut b] {
        let mut got = [c.recv_event("multi"), c.recv_event("multi")];
        got.sort_by_key(|m| m["channel"].as_str().unwrap().to_owned());
        assert_eq!(got[0]["channel"], "presence-room");
        assert_eq!(got[1]["channel"], "pub");
        c.assert_nothing_pending();
    }
    assert_eq!(a2.recv_event("multi")["channel"], "presence-room");
    a2.assert_nothing_pending();
}

#[test]
fn duplicate_channels_are_published_once() {
    let s = Server::start();
    let mut c = s.connect();
    c.subscribe("dup");
    let r = s.signed(
        "POST",
        "/apps/app-id/events",
        &[],
        &ev("e", &["dup", "dup"], "1"),
    );
    assert_eq!(r.status, 200);
    c.recv_event("e");
    c.assert_nothing_pending();
}

#[test]
fn socket_id_excludes_only_that_connection() {
    let s = Server::start();
    let mut a = s.connect();
    let mut b = s.connect();
    a.subscribe("x");
    b.subscribe("x");
    let body =
        json!({"name": "e", "channels": ["x"], "data": "d", "socket_id": a.socket_id}).to_string();
    assert_eq!(
        s.signed("POST", "/apps/app-id/events", &[], &body).status,
        200
    );
    assert_eq!(b.recv_event("e")["data"], "d");
    a.assert_nothing_pending();
}

#[test]
fn batch_events_in_order_with_index_aligned_info() {
    let s = Server::start();
    let mut c = s.connect();
    c.subscribe("b1");
    c.subscribe_presence("presence-b2", "u1");
    let plain = json!({"batch": [
        {"name": "e", "channel": "b1", "data": "1"},
        {"name": "e", "channel": "presence-b2", "data": "2"},
        {"name": "e", "channel": "b1", "data": "3"},
    ]})
    .to_string();
    let r = s.signed("POST", "/apps/app-id/batch_events", &[], &plain);
    assert_eq!((r.status, r.text()), (200, "{}".to_string()));
    let got: Vec<(String, String)> = (0..3)
        .map(|_| {
            let m = c.recv_event("e");
            (
                m["channel"].as_str().unwrap().to_owned(),
                m["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let b1: Vec<&str> = got
        .iter()
        .filter(|(ch, _)| ch == "b1")
        .map(|(_, d)| d.as_str())
        .collect();
    assert_eq!(b1, ["1", "3"]);
    c.assert_nothing_pending();

    let with_info = json!({"batch": [
        {"name": "i", "channel": "b1", "data": "1", "info": "subscription_count"},
        {"name": "i", "channel": "b1", "data": "2"},
        {"name": "i", "channel": "presence-b2", "data": "3", "info": "user_count,subscription_count"},
    ]})
    .to_string();
    let r = s.signed("POST", "/apps/app-id/batch_events", &[], &with_info);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"batch": [
            {"subscription_count": 1},
            {},
            {"user_count": 1, "subscription_count": 1},
        ]})
    );
}

#[test]
fn get_channels_lists_occupied_channels_with_attributes() {
    let s = Server::start();
    let mut a = s.connect();
    let mut b = s.connect();
    a.subscribe_presence("presence-lobby", "u1");
    b.subscribe_presence("presence-lobby", "u2");
    a.subscribe("news");
    b.subscribe("news");
    b.subscribe("other");

    let r = s.signed("GET", "/apps/app-id/channels", &[], "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"channels": {"news": {}, "other": {}, "presence-lobby": {}}})
    );

    let r = s.signed(
        "GET",
        "/apps/app-id/channels",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        "",
    );
    assert_eq!(
        r.json(),
        json!({"channels": {"presence-lobby": {"user_count": 2}}})
    );

    let r = s.signed(
        "GET",
        "/apps/app-id/channels",
        &[("filter_by_prefix", "n"), ("info", "subscription_count")],
        "",
    );
    assert_eq!(
        r.json(),
        json!({"channels": {"news": {"subscription_count": 2}}})
    );

    // user_count needs the presence- prefix filter.
    let r = s.signed(
        "GET",
        "/apps/app-id/channels",
        &[("info", "user_count")],
        "",
    );
    r.expect_error(400, "bad_request");
    let r = s.signed(
        "GET",
        "/apps/app-id/channels",
        &[("filter_by_prefix", "news"), ("info", "user_count")],
        "",
    );
    r.expect_error(400, "bad_request");

    // A channel nobody is subscribed to any more disappears.
    drop(b);
    s.eventually("the other channel to be vacated", || {
        let r = s.signed("GET", "/apps/app-id/channels", &[], "");
        r.json()["channels"].get("other").is_none()
    });
}

#[test]
fn get_channel_reports_occupied_and_counts() {
    let s = Server::start();
    let r = s.signed("GET", "/apps/app-id/channels/nobody", &[], "");
    assert_eq!((r.status, r.json()), (200, json!({"occupied": false})));
    let r = s.signed(
        "GET",
        "/apps/app-id/channels/nobody",
        &[("info", "subscription_count")],
        "",
    );
    assert_eq!(
        r.json(),
        json!({"occupied": false, "subscription_count": 0})
    );

    let mut a = s.connect();
    let mut b = s.connect();
    a.subscribe_presence("presence-p", "u1");
    b.subscribe_presence("presence-p", "u1");
    let r = s.signed(
        "GET",
        "/apps/app-id/channels/presence-p",
        &[("info", "user_count,subscription_count")],
        "",
    );
    assert_eq!(
        r.json(),
        json!({"occupied": true, "user_count": 1, "subscription_count": 2})
    );
    let r = s.signed("GET", "/apps/app-id/channels/presence-p", &[], "");
    assert_eq!(r.json(), json!({"occupied": true}));

    a.subscribe("pub");
    let r = s.signed(
        "GET",
        "/apps/app-id/channels/pub",
        &[("info", "user_count")],
        "",
    );
    r.expect_error(400, "bad_request");
    let r = s.signed("GET", "/apps/app-id/channels/bad%20name", &[], "");
    r.expect_error(400, "invalid_channel");
}

#[test]
fn get_channel_info_cache_reports_the_last_event() {
    let s = Server::start();
    let r = s.signed(
        "POST",
        "/apps/app-id/events",
        &[],
        &ev("ev", &["cache-prices"], "{\"p\":1}"),
    );
    assert_eq!(r.status, 200);
    let r = s.signed(
        "GET",
        "/apps/app-id/channels/cache-prices",
        &[("info", "cache")],
        "",
    );
    let v = r.json();
    assert_eq!(v["occupied"], false);
    assert_eq!(v["cache"]["data"], "{\"p\":1}", "{v}");
    assert!(v["cache"]["ttl"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn get_users_lists_presence_members_only() {
    let s = Server::start();
    let mut a = s.connect();
    let mut b = s.connect();
    let mut a2 = s.connect();
    a.subscribe_presence("presence-u", "alice");
    a2.subscribe_presence("presence-u", "alice");
    b.subscribe_presence("presence-u", "bob");
    let r = s.signed("GET", "/apps/app-id/channels/presence-u/users", &[], "");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut ids: Vec<String> = r.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert_eq!(u.as_object().unwrap().len(), 1, "only id: {u}");
            u["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
    let r = s.signed("GET", "/apps/app-id/channels/public/users", &[], "");
    r.expect_error(400, "bad_request");
    let r = s.signed("GET", "/apps/app-id/channels/presence-empty/users", &[], "");
    assert_eq!(r.json(), json!({"users": []}));
}

#[test]
fn send_to_user_reaches_every_signed_in_connection_of_that_user() {
    let s = Server::start();
    let mut u1 = s.connect();
    let mut u1b = s.connect();
    let mut u2 = s.connect();
    u1.signin("42");
    u1b.signin("42");
    u2.signin("43");
    let r = s.signed(
        "POST",
        "/apps/app-id/events",
        &[],
        &ev("private-note", &["#server-to-user-42"], "{\"hi\":1}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for c in [&mut u1, &mut u1b] {
        let m = c.recv_event("private-note");
        assert_eq!(m["channel"], "#server-to-user-42");
        assert_eq!(m["data"], "{\"hi\":1}");
    }
    u2.assert_nothing_pending();
}

#[test]
fn terminate_connections_closes_only_that_users_connections_with_4009() {
    let s = Server::start();
    let mut a = s.connect();
    let mut a2 = s.connect();
    let mut b = s.connect();
    let mut anon = s.connect();
    a.signin("victim");
    a2.signin("victim");
    b.signin("bystander");
    let r = s.signed(
        "POST",
        "/apps/app-id/users/victim/terminate_connections",
        &[],
        "{}",
    );
    assert_eq!((r.status, r.text()), (200, "{}".to_string()));
    assert_eq!(a.recv_close(), Some(4009));
    assert_eq!(a2.recv_close(), Some(4009));
    b.assert_nothing_pending();
    anon.assert_nothing_pending();
    s.eventually("terminated metric", || {
        s.handle().metrics().closed_by("terminated") == 2
    });
}

#[test]
fn terminate_connections_python_path_resolves_the_app_from_auth_key() {
    let s = Server::start();
    let mut a = s.connect();
    a.signin("py-user");
    let r = s.signed("POST", "/users/py-user/terminate_connections", &[], "{}");
    assert_eq!((r.status, r.text()), (200, "{}".to_string()));
    assert_eq!(a.recv_close(), Some(4009));
    // Signed by another app's key: that app's users are targeted, not ours.
    let mut c = s.connect();
    c.signin("shared-id");
    let r = s.signed_as(
        "small-key",
        "small-secret",
        "POST",
        "/users/shared-id/terminate_connections",
        &[],
        "{}",
    );
    assert_eq!(r.status, 200);
    c.assert_nothing_pending();
    // Unsigned, or Bearer (no app in the path): 401.
    let r = http(
        s.api_addr,
        "POST",
        "/users/x/terminate_connections",
        &[],
        b"{}",
    );
    r.expect_error(401, "missing_auth_param");
    let r = s.bearer(SECRET, "POST", "/users/x/terminate_connections", "{}");
    r.expect_error(401, "signature_required");
    // Disabled app.
    let r = s.signed_as(
        "off-key",
        "off-secret",
        "POST",
        "/users/x/terminate_connections",
        &[],
        "{}",
    );
    r.expect_error(403, "app_disabled");
}

#[test]
fn rotated_secrets_both_sign() {
    let s = Server::start();
    for secret in [SECRET, "old-secret"] {
        let r = s.signed_as(KEY, secret, "GET", "/apps/app-id/channels", &[], "");
        assert_eq!(r.status, 200, "{secret}: {}", r.text());
        let r = s.bearer(secret, "GET", "/apps/app-id/channels", "");
        assert_eq!(r.status, 200, "{secret}: {}", r.text());
    }
}

#[test]
fn python_style_get_with_body_md5_of_empty_body_is_accepted() {
    let s = Server::start();
    let path = "/apps/app-id/channels";
    let q = sign(
        KEY,
        SECRET,
        "GET",
        path,
        &[("body_md5", "d41d8cd98f00b204e9800998ecf8427e")],
        b"",
        now(),
    );
    let r = http(s.api_addr, "GET", &format!("{path}?{q}"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---- seed dialect ----

#[test]
fn seed_events_and_batch_with_bearer() {
    let s = Server::start();
    let mut c = s.connect();
    c.subscribe("seed-ch");
    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/events",
        &json!({"channel": "seed-ch", "event": "hello", "data": {"x": 1}}).to_string(),
    );
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    let m = c.recv_event("hello");
    assert_eq!(m["data"], "{\"x\":1}");

    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/events",
        &json!({"channel": "seed-ch", "event": "skip-me", "data": "s", "socket_id": c.socket_id})
            .to_string(),
    );
    assert_eq!(r.status, 200);
    c.assert_nothing_pending();

    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/events/batch",
        &json!({"batch": [
            {"channel": "seed-ch", "event": "b", "data": "1"},
            {"channel": "seed-ch", "event": "b", "data": "2"},
        ]})
        .to_string(),
    );
    assert_eq!((r.status, r.json()), (200, json!({"ok": true, "count": 2})));
    assert_eq!(c.recv_event("b")["data"], "1");
    assert_eq!(c.recv_event("b")["data"], "2");
}

#[test]
fn seed_channel_shapes_with_bearer_and_pusher_shapes_when_signed() {
    let s = Server::start();
    let mut a = s.connect();
    let mut b = s.connect();
    a.subscribe_presence("presence-s", "u1");
    b.subscribe_presence("presence-s", "u2");
    a.subscribe("plain");

    let r = s.bearer(SECRET, "GET", "/apps/app-id/channels", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut list = r.json()["channels"].as_array().unwrap().clone();
    list.sort_by_key(|v| v["name"].as_str().unwrap().to_owned());
    assert_eq!(
        list,
        vec![
            json!({"name": "plain", "type": "public", "subscriber_count": 1, "occupied": true, "app_id": "app-id"}),
            json!({"name": "presence-s", "type": "presence", "subscriber_count": 2, "occupied": true,
                   "app_id": "app-id", "user_count": 2}),
        ]
    );
    let r = s.bearer(
        SECRET,
        "GET",
        "/apps/app-id/channels?filter_by_prefix=presence-",
        "",
    );
    assert_eq!(r.json()["channels"].as_array().unwrap().len(), 1);

    let r = s.bearer(SECRET, "GET", "/apps/app-id/channels/plain", "");
    assert_eq!(
        r.json(),
        json!({"name": "plain", "type": "public", "subscriber_count": 1, "occupied": true, "app_id": "app-id"})
    );
    let r = s.bearer(SECRET, "GET", "/apps/app-id/channels/private-none", "");
    assert_eq!(
        r.json(),
        json!({"name": "private-none", "type": "private", "subscriber_count": 0, "occupied": false, "app_id": "app-id"})
    );

    let r = s.bearer(SECRET, "GET", "/apps/app-id/channels/presence-s/users", "");
    let mut users = r.json()["users"].as_array().unwrap().clone();
    users.sort_by_key(|v| v["id"].as_str().unwrap().to_owned());
    assert_eq!(
        users,
        vec![
            json!({"id": "u1", "user_info": {"name": "user u1"}}),
            json!({"id": "u2", "user_info": {"name": "user u2"}}),
        ]
    );

    // Same paths, Pusher-signed: Pusher shapes.
    let r = s.signed("GET", "/apps/app-id/channels/plain", &[], "");
    assert_eq!(r.json(), json!({"occupied": true}));
}

#[test]
fn seed_terminate_with_bearer() {
    let s = Server::start();
    let mut a = s.connect();
    a.signin("t");
    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/users/t/terminate_connections",
        "{}",
    );
    assert_eq!(r.json(), json!({"ok": true, "connections": 1}));
    assert_eq!(a.recv_close(), Some(4009));
}

#[test]
fn server_side_auth_signs_allowed_patterns_and_the_signature_subscribes() {
    let s = Server::start();
    let mut c = s.connect();
    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/auth",
        &json!({"socket_id": c.socket_id, "channel_name": "private-server-1"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let auth = r.json()["auth"].as_str().unwrap().to_owned();
    assert!(auth.starts_with("app-key:"));
    c.subscribe_with("private-server-1", &auth, None);
    assert_eq!(
        c.recv_event("pusher_internal:subscription_succeeded")["channel"],
        "private-server-1"
    );

    // Presence: channel_data echoed, and it subscribes.
    let cd = "{\"user_id\":\"7\",\"user_info\":{\"n\":\"x\"}}";
    let body =
        json!({"socket_id": c.socket_id, "channel_name": "presence-server-r", "channel_data": cd});
    let r = s.signed("POST", "/apps/app-id/auth", &[], &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["channel_data"], cd);
    c.subscribe_with("presence-server-r", v["auth"].as_str().unwrap(), Some(cd));
    let ok = c.recv_event("pusher_internal:subscription_succeeded");
    assert_eq!(ok["channel"], "presence-server-r");

    // Form-encoded body (as pusher-js posts to an auth endpoint).
    let form = format!("socket_id={}&channel_name=private-server-2", c.socket_id);
    let r = http(
        s.api_addr,
        "POST",
        "/apps/app-id/auth",
        &[
            ("Authorization", &format!("Bearer {SECRET}")),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Not matching a pattern: 403.
    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/auth",
        &json!({"socket_id": c.socket_id, "channel_name": "private-secret"}).to_string(),
    );
    r.expect_error(403, "server_auth_forbidden");
}

#[test]
fn server_side_auth_is_off_by_default() {
    let s = Server::start();
    let r = s.bearer(
        "small-secret",
        "POST",
        "/apps/small/auth",
        &json!({"socket_id": "1.2", "channel_name": "private-a"}).to_string(),
    );
    let msg = r.expect_error(403, "server_auth_disabled");
    assert!(msg.contains("server_auth_channels"), "{msg}");
}

// ---- operator endpoints ----

/// A core that has stopped makes `/health` answer 503 and name it (the engine's panic policy
/// aborts the process instead; a test hook turns the abort off to observe the stopped core).
#[test]
fn health_reports_a_stopped_core() {
    let s = Server::start();
    let h = s.handle();
    h.set_abort_on_panic(false);
    h.inject_panic(1).expect("queued");
    let until = std::time::Instant::now() + WAIT;
    while h.stopped_cores().is_empty() {
        assert!(std::time::Instant::now() < until, "core 1 never stopped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let r = http(s.api_addr, "GET", "/health", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (503, json!({"ok": false, "stopped_cores": [1]}))
    );
}

#[test]
fn health_stats_and_metrics() {
    let s = Server::start();
    let r = http(s.api_addr, "GET", "/health", &[], b"");
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    let r = http(s.api_addr, "HEAD", "/health", &[], b"");
    assert_eq!(r.status, 200);

    let mut c = s.connect();
    c.subscribe("stat-ch");
    let r = http(s.api_addr, "GET", "/stats", &[], b"");
    let v = r.json();
    assert_eq!(v["connections"], 1, "{v}");
    assert_eq!(v["channels"], 1, "{v}");
    let apps = v["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 3);
    assert_eq!(apps[0], json!({"app_id": "app-id", "connections": 1}));

    // Make some REST traffic, then scrape.
    assert_eq!(
        s.signed(
            "POST",
            "/apps/app-id/events",
            &[],
            &ev("m", &["stat-ch"], "x")
        )
        .status,
        200
    );
    c.recv_event("m");
    http(s.api_addr, "GET", "/apps/app-id/channels", &[], b"");
    let r = http(s.api_addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    let sample = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .rsplit_once(' ')
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    assert_eq!(sample("ringcast_connections"), 1);
    assert_eq!(sample("ringcast_channels"), 1);
    assert!(sample("ringcast_deliveries_total") >= 1);
    assert_eq!(
        sample("ringcast_rest_requests_total{endpoint=\"events\",status=\"200\"}"),
        1
    );
    assert_eq!(
        sample("ringcast_rest_requests_total{endpoint=\"channels\",status=\"401\"}"),
        1
    );
    assert_eq!(
        sample("ringcast_rest_requests_total{endpoint=\"health\",status=\"200\"}"),
        2
    );
    assert_eq!(sample("ringcast_app_connections{app=\"app-id\"}"), 1);
    assert!(sample("ringcast_rest_app_requests_total{app=\"app-id\"}") >= 2);
    assert!(text.contains("ringcast_connections_closed_total{reason=\"terminated\"} 0"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<u64>().is_ok(), "bad sample line {line:?}");
    }
}

#[test]
fn separate_api_listener_and_health_only_public_port() {
    let s = Server::with(Options {
        separate_api_listener: true,
        ..Options::default()
    });
    assert_ne!(s.addr, s.api_addr);
    let mut c = s.connect();
    c.subscribe("sep");
    // The API port serves everything.
    let r = s.signed("POST", "/apps/app-id/events", &[], &ev("e", &["sep"], "d"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.recv_event("e")["data"], "d");
    assert_eq!(http(s.api_addr, "GET", "/metrics", &[], b"").status, 200);
    // The public port: /health, and 404 for the API with an explanation.
    let r = http(s.addr, "GET", "/health", &[], b"");
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
    let q = sign(KEY, SECRET, "GET", "/apps/app-id/channels", &[], b"", now());
    let r = http(
        s.addr,
        "GET",
        &format!("/apps/app-id/channels?{q}"),
        &[],
        b"",
    );
    let msg = r.expect_error(404, "not_found");
    assert!(msg.contains("api_listen"), "{msg}");
    http(s.addr, "GET", "/stats", &[], b"").expect_error(404, "not_found");
}

#[test]
fn payload_shapes_parse_as_json_everywhere() {
    // Every success body is JSON (the Python SDK json.loads every 200).
    let s = Server::start();
    for (m, p, body) in [
        ("GET", "/apps/app-id/channels", ""),
        ("GET", "/apps/app-id/channels/x", ""),
        ("GET", "/apps/app-id/channels/presence-x/users", ""),
        ("POST", "/apps/app-id/users/u/terminate_connections", "{}"),
        ("POST", "/apps/app-id/batch_events", "{\"batch\":[]}"),
    ] {
        let r = s.signed(m, p, &[], body);
        assert_eq!(r.status, 200, "{m} {p}: {}", r.text());
        let _: Value = r.json();
    }
}
