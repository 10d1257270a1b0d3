//! Every refusal: authentication failures, unknown apps, limits, malformed input, wrong
//! methods. Each answers the right status with a JSON `{"error", "code"}` body, and nothing is
//! delivered.

mod common;

use common::*;
use serde_json::json;

fn ev(channels: &[&str], data: &str) -> String {
    json!({"name": "neg", "channels": channels, "data": data}).to_string()
}

/// A subscriber on `ch` that must receive nothing.
fn watcher(s: &Server, ch: &str) -> Client {
    let mut c = s.connect();
    c.subscribe(ch);
    c
}

#[test]
fn unsigned_request_is_401() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    let r = http(
        s.api_addr,
        "POST",
        "/apps/app-id/events",
        &[],
        ev(&["n"], "x").as_bytes(),
    );
    r.expect_error(401, "unauthenticated");
    let r = http(s.api_addr, "GET", "/apps/app-id/channels", &[], b"");
    r.expect_error(401, "unauthenticated");
    w.assert_nothing_pending();
}

#[test]
fn wrong_signature_is_401() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    let r = s.signed_as(
        KEY,
        "not-the-secret",
        "POST",
        "/apps/app-id/events",
        &[],
        &ev(&["n"], "x"),
    );
    r.expect_error(401, "invalid_signature");
    // Tampered parameter after signing.
    let path = "/apps/app-id/channels";
    let q = sign(
        KEY,
        SECRET,
        "GET",
        path,
        &[("filter_by_prefix", "a")],
        b"",
        now(),
    );
    let q = q.replace("filter_by_prefix=a", "filter_by_prefix=b");
    http(s.api_addr, "GET", &format!("{path}?{q}"), &[], b"")
        .expect_error(401, "invalid_signature");
    // Signed for another path.
    let q = sign(
        KEY,
        SECRET,
        "GET",
        "/apps/app-id/channels/a",
        &[],
        b"",
        now(),
    );
    http(s.api_addr, "GET", &format!("{path}?{q}"), &[], b"")
        .expect_error(401, "invalid_signature");
    w.assert_nothing_pending();
}

#[test]
fn expired_or_future_timestamp_is_401() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    let body = ev(&["n"], "x");
    for ts in [now() - 700, now() + 700] {
        let q = sign(
            KEY,
            SECRET,
            "POST",
            "/apps/app-id/events",
            &[],
            body.as_bytes(),
            ts,
        );
        let r = http(
            s.api_addr,
            "POST",
            &format!("/apps/app-id/events?{q}"),
            &[],
            body.as_bytes(),
        );
        let msg = r.expect_error(401, "timestamp_expired");
        assert!(msg.contains("not within 600s"), "{msg}");
    }
    // Within the window: fine.
    let q = sign(
        KEY,
        SECRET,
        "POST",
        "/apps/app-id/events",
        &[],
        body.as_bytes(),
        now() - 500,
    );
    let r = http(
        s.api_addr,
        "POST",
        &format!("/apps/app-id/events?{q}"),
        &[],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    w.recv_event("neg");
    w.assert_nothing_pending();
}

#[test]
fn wrong_or_missing_body_md5_is_401() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    let signed_body = ev(&["n"], "x");
    let sent_body = ev(&["n"], "y");
    let q = sign(
        KEY,
        SECRET,
        "POST",
        "/apps/app-id/events",
        &[],
        signed_body.as_bytes(),
        now(),
    );
    let r = http(
        s.api_addr,
        "POST",
        &format!("/apps/app-id/events?{q}"),
        &[],
        sent_body.as_bytes(),
    );
    r.expect_error(401, "body_md5_mismatch");
    // Signed as an empty body, sent with one: body_md5 missing.
    let q = sign(KEY, SECRET, "POST", "/apps/app-id/events", &[], b"", now());
    let r = http(
        s.api_addr,
        "POST",
        &format!("/apps/app-id/events?{q}"),
        &[],
        sent_body.as_bytes(),
    );
    r.expect_error(401, "body_md5_missing");
    // A GET with a wrong body_md5 is refused too.
    let path = "/apps/app-id/channels";
    let q = sign(
        KEY,
        SECRET,
        "GET",
        path,
        &[("body_md5", "00000000000000000000000000000000")],
        b"",
        now(),
    );
    http(s.api_addr, "GET", &format!("{path}?{q}"), &[], b"")
        .expect_error(401, "body_md5_mismatch");
    w.assert_nothing_pending();
}

#[test]
fn unknown_app_is_404_and_foreign_key_is_401() {
    let s = Server::start();
    let r = s.signed("POST", "/apps/nope/events", &[], &ev(&["n"], "x"));
    r.expect_error(404, "unknown_app");
    let r = s.bearer(SECRET, "GET", "/apps/nope/channels", "");
    r.expect_error(404, "unknown_app");
    // The key of app "small" cannot act on app "app-id".
    let r = s.signed_as(
        "small-key",
        "small-secret",
        "GET",
        "/apps/app-id/channels",
        &[],
        "",
    );
    r.expect_error(401, "unknown_auth_key");
    // An unknown key.
    let r = s.signed_as("who", "what", "GET", "/apps/app-id/channels", &[], "");
    r.expect_error(401, "unknown_auth_key");
}

#[test]
fn disabled_app_is_403() {
    let s = Server::start();
    let r = s.signed_as(
        "off-key",
        "off-secret",
        "GET",
        "/apps/off/channels",
        &[],
        "",
    );
    r.expect_error(403, "app_disabled");
}

#[test]
fn bearer_with_a_wrong_secret_is_401() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    let body = json!({"channel": "n", "event": "e", "data": "x"}).to_string();
    for secret in ["wrong", "small-secret", "", "app-secretx"] {
        let r = s.bearer(secret, "POST", "/apps/app-id/events", &body);
        assert_eq!(r.status, 401, "{secret:?}: {}", r.text());
    }
    s.bearer("wrong", "GET", "/apps/app-id/channels", "")
        .expect_error(401, "invalid_bearer");
    w.assert_nothing_pending();
}

#[test]
fn oversize_event_data_is_413_per_app_limit() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    // Default app: 10 KB.
    let r = s.signed(
        "POST",
        "/apps/app-id/events",
        &[],
        &ev(&["n"], &"x".repeat(10 * 1024 + 1)),
    );
    let msg = r.expect_error(413, "event_too_large");
    assert!(msg.contains("10240"), "{msg}");
    // App "small": 100 bytes (configurable per app).
    let r = s.signed_as(
        "small-key",
        "small-secret",
        "POST",
        "/apps/small/events",
        &[],
        &ev(&["n"], &"x".repeat(101)),
    );
    r.expect_error(413, "event_too_large");
    let r = s.signed_as(
        "small-key",
        "small-secret",
        "POST",
        "/apps/small/events",
        &[],
        &ev(&["n"], &"x".repeat(100)),
    );
    assert_eq!(r.status, 200);
    // In a batch.
    let batch = json!({"batch": [
        {"name": "e", "channel": "n", "data": "ok"},
        {"name": "e", "channel": "n", "data": "x".repeat(10 * 1024 + 1)},
    ]})
    .to_string();
    let r = s.signed("POST", "/apps/app-id/batch_events", &[], &batch);
    let msg = r.expect_error(413, "event_too_large");
    assert!(msg.starts_with("batch item 1"), "{msg}");
    w.assert_nothing_pending();
}

#[test]
fn oversize_body_is_413_and_closes() {
    let s = Server::with(Options {
        api: ringcast_control_plane::ApiConfig {
            max_body_bytes: 4096,
            ..Default::default()
        },
        ..Options::default()
    });
    let mut c = HttpConn::open(s.api_addr);
    c.send_raw(b"POST /apps/app-id/events HTTP/1.1\r\nContent-Length: 4097\r\n\r\n");
    let r = c.read_response();
    r.expect_error(413, "payload_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());
}

#[test]
fn too_many_channels_or_batch_items_is_400() {
    let s = Server::start();
    let mut w = watcher(&s, "c0");
    let names: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = s.signed("POST", "/apps/app-id/events", &[], &ev(&refs, "x"));
    r.expect_error(400, "too_many_channels");
    // 100 is fine.
    let r = s.signed("POST", "/apps/app-id/events", &[], &ev(&refs[..100], "x"));
    assert_eq!(r.status, 200);
    w.recv_event("neg");

    let item = json!({"name": "e", "channel": "c0", "data": "x"});
    let r = s.signed(
        "POST",
        "/apps/app-id/batch_events",
        &[],
        &json!({ "batch": vec![item.clone(); 11] }).to_string(),
    );
    let msg = r.expect_error(400, "too_many_events");
    assert!(msg.contains("at most 10"), "{msg}");
    let r = s.bearer(
        SECRET,
        "POST",
        "/apps/app-id/events/batch",
        &json!({ "batch": vec![item.clone(); 11] }).to_string(),
    );
    r.expect_error(400, "too_many_events");
    w.assert_nothing_pending();
}

#[test]
fn malformed_json_and_bad_fields_are_400() {
    let s = Server::start();
    let mut w = watcher(&s, "n");
    for body in [
        "{",
        "[]",
        "not json",
        "{\"name\":\"e\",\"channels\":[\"n\"],\"data\":\"x\"",
    ] {
        let r = s.signed("POST", "/apps/app-id/events", &[], body);
        r.expect_error(400, "malformed_json");
    }
    for (body, code) in [
        (json!({"channels": ["n"], "data": "x"}), "bad_request"),
        (
            json!({"name": "e", "channels": ["bad name"], "data": "x"}),
            "invalid_channel",
        ),
        (
            json!({"name": "e", "channels": ["n"], "data": "x", "socket_id": "abc"}),
            "invalid_socket_id",
        ),
        (json!({"name": "e", "channels": ["n"]}), "bad_request"),
        (
            json!({"name": "e", "channels": [], "data": "x"}),
            "bad_request",
        ),
        (
            json!({"name": "x".repeat(201), "channels": ["n"], "data": "x"}),
            "bad_request",
        ),
    ] {
        let r = s.signed("POST", "/apps/app-id/events", &[], &body.to_string());
        r.expect_error(400, code);
    }
    let r = s.signed("POST", "/apps/app-id/batch_events", &[], "{\"batch\": 1}");
    r.expect_error(400, "bad_request");
    let r = s.signed("POST", "/apps/app-id/batch_events", &[], "{\"batch\": [1]}");
    r.expect_error(400, "bad_request");
    let r = s.signed("POST", "/apps/app-id/auth", &[], "nope");
    r.expect_error(400, "malformed_json");
    let r = s.signed("GET", "/apps/app-id/channels", &[("info", "bogus")], "");
    r.expect_error(400, "bad_request");
    w.assert_nothing_pending();
}

#[test]
fn wrong_method_is_405_and_unknown_path_is_404() {
    let s = Server::start();
    let r = http(s.api_addr, "GET", "/apps/app-id/events", &[], b"");
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = http(s.api_addr, "DELETE", "/apps/app-id/channels", &[], b"");
    r.expect_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    http(s.api_addr, "GET", "/nope", &[], b"").expect_error(404, "not_found");
    http(s.api_addr, "GET", "/apps/app-id/what", &[], b"").expect_error(404, "not_found");
}
