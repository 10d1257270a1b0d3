//! Admission control over real sockets: a request whose key, timestamp or signature is missing
//! or wrong is answered from its head alone, before the client has sent a byte of its body
//! (the memory attack of issue 12: hundreds of unsigned 1 MB POSTs); the process-wide body
//! budget refuses past its limit and releases on completion; `/metrics` and `/stats` on the
//! public port only for `[api] metrics_allow`.

mod common;

use common::*;
use ringcast_control_plane::ApiConfig;
use serde_json::json;

fn metric(s: &Server, name_and_labels: &str) -> u64 {
    let text = http(s.api_addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in /metrics"))
}

/// Sends only the head of a POST announcing `len` body bytes.
fn head_only(c: &mut HttpConn, target: &str, len: usize) {
    c.send_raw(
        format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n")
            .as_bytes(),
    );
}

#[test]
fn unsigned_bodies_are_refused_before_a_byte_of_them_is_sent() {
    let s = Server::start();
    let body = json!({"name": "e", "channels": ["c"], "data": "x"}).to_string();
    let good = sign(
        KEY,
        SECRET,
        "POST",
        "/apps/app-id/events",
        &[],
        body.as_bytes(),
        now(),
    );
    let cases: Vec<(String, u16, &str)> = vec![
        // The attack: no signature at all.
        ("/apps/app-id/events".into(), 401, "unauthenticated"),
        (
            "/apps/app-id/events?auth_key=app-key".into(),
            401,
            "missing_auth_param",
        ),
        (
            format!(
                "/apps/app-id/events?{}",
                good.replace("auth_key=app-key", "auth_key=nope")
            ),
            401,
            "unknown_auth_key",
        ),
        (
            format!(
                "/apps/app-id/events?{}",
                sign(
                    KEY,
                    SECRET,
                    "POST",
                    "/apps/app-id/events",
                    &[],
                    body.as_bytes(),
                    now() - 3600
                )
            ),
            401,
            "timestamp_expired",
        ),
        (
            format!(
                "/apps/app-id/events?{}",
                sign(
                    KEY,
                    "wrong",
                    "POST",
                    "/apps/app-id/events",
                    &[],
                    body.as_bytes(),
                    now()
                )
            ),
            401,
            "invalid_signature",
        ),
        (
            format!(
                "/apps/app-id/events?{}",
                sign(KEY, SECRET, "POST", "/apps/app-id/events", &[], b"", now())
            ),
            401,
            "body_md5_missing",
        ),
        ("/apps/nope/events".into(), 404, "unknown_app"),
        ("/apps/off/events".into(), 401, "unauthenticated"),
    ];
    // Many at once, each holding its connection open with the body unsent.
    let mut conns = Vec::new();
    for _ in 0..20 {
        for (target, _, _) in &cases {
            let mut c = HttpConn::open(s.api_addr);
            head_only(&mut c, target, 1_000_000);
            conns.push(c);
        }
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let (_, status, code) = &cases[i % cases.len()];
        // The answer arrives although not one body byte was sent: the body was never needed.
        let r = c.read_response();
        r.expect_error(*status, code);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            c.closed_by_server(),
            "the connection is closed after a refusal"
        );
    }
    let refused = metric(
        &s,
        "ringcast_http_refused_total{reason=\"unauthenticated_before_body\"}",
    );
    assert_eq!(refused, 20 * 7);
    assert_eq!(
        metric(
            &s,
            "ringcast_http_refused_total{reason=\"not_found_before_body\"}"
        ),
        20
    );
    assert_eq!(metric(&s, "ringcast_http_body_bytes_in_flight"), 0);
}

#[test]
fn a_signed_head_is_admitted_and_body_md5_is_still_checked_on_the_body() {
    let s = Server::start();
    let mut w = s.connect();
    w.subscribe("adm");
    let body = json!({"name": "e", "channels": ["adm"], "data": "ok"}).to_string();
    let q = sign(
        KEY,
        SECRET,
        "POST",
        "/apps/app-id/events",
        &[],
        body.as_bytes(),
        now(),
    );
    let target = format!("/apps/app-id/events?{q}");
    // Head first, body after the server had the head (Expect: 100-continue proves admission
    // happened before the body).
    let mut c = HttpConn::open(s.api_addr);
    c.send_raw(
        format!("POST {target} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len())
            .as_bytes(),
    );
    assert_eq!(c.read_response().status, 100);
    c.send_raw(body.as_bytes());
    assert_eq!(c.read_response().status, 200);
    assert_eq!(w.recv_event("e")["data"], "ok");
    // Same signed head, another body of the same length: admitted, then 401 on body_md5.
    let other = body.replace("ok", "no");
    let mut c = HttpConn::open(s.api_addr);
    head_only(&mut c, &target, other.len());
    c.send_raw(other.as_bytes());
    c.read_response().expect_error(401, "body_md5_mismatch");
}

#[test]
fn an_unsigned_expect_continue_gets_401_instead_of_100() {
    let s = Server::start();
    let mut c = HttpConn::open(s.api_addr);
    c.send_raw(b"POST /apps/app-id/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 500000\r\n\r\n");
    c.read_response().expect_error(401, "unauthenticated");
}

#[test]
fn the_body_budget_refuses_past_its_limit_and_releases_on_completion() {
    let s = Server::with(Options {
        api: ApiConfig {
            max_body_bytes: 1024,
            max_body_bytes_in_flight: 1500,
            ..ApiConfig::default()
        },
        ..Options::default()
    });
    let signed_head = |body: &str| {
        let q = sign(
            KEY,
            SECRET,
            "POST",
            "/apps/app-id/events",
            &[],
            body.as_bytes(),
            now(),
        );
        format!("/apps/app-id/events?{q}")
    };
    let body =
        |fill: usize| json!({"name": "e", "channels": ["b"], "data": "x".repeat(fill)}).to_string();
    let a = body(900);
    let mut ca = HttpConn::open(s.api_addr);
    head_only(&mut ca, &signed_head(&a), a.len());
    s.eventually("A's body reserved", || {
        metric(&s, "ringcast_http_body_bytes_in_flight") == a.len() as u64
    });
    // B would take the total past 1500: refused from its head, 503 with Retry-After.
    let b = body(800);
    let mut cb = HttpConn::open(s.api_addr);
    head_only(&mut cb, &signed_head(&b), b.len());
    let r = cb.read_response();
    r.expect_error(503, "body_budget_exhausted");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        metric(&s, "ringcast_http_refused_total{reason=\"body_budget\"}"),
        1
    );
    // A completes; its reservation is released and B goes through.
    ca.send_raw(a.as_bytes());
    assert_eq!(ca.read_response().status, 200);
    s.eventually("A's reservation released", || {
        metric(&s, "ringcast_http_body_bytes_in_flight") == 0
    });
    let mut cb = HttpConn::open(s.api_addr);
    head_only(&mut cb, &signed_head(&b), b.len());
    cb.send_raw(b.as_bytes());
    assert_eq!(cb.read_response().status, 200);
    // A client that dies mid-body gives its reservation back too.
    let mut cc = HttpConn::open(s.api_addr);
    head_only(&mut cc, &signed_head(&a), a.len());
    s.eventually("C's body reserved", || {
        metric(&s, "ringcast_http_body_bytes_in_flight") == a.len() as u64
    });
    drop(cc);
    s.eventually("C's reservation released", || {
        metric(&s, "ringcast_http_body_bytes_in_flight") == 0
    });
}

#[test]
fn metrics_and_stats_on_the_public_port_only_for_the_allow_list() {
    // Default: loopback allowed.
    let s = Server::start();
    assert_eq!(http(s.addr, "GET", "/metrics", &[], b"").status, 200);
    // An allow-list without loopback: refused on the public port, counted.
    let s = Server::with(Options {
        api: ApiConfig {
            metrics_allow: vec!["10.0.0.0/8".parse().unwrap()],
            ..ApiConfig::default()
        },
        ..Options::default()
    });
    http(s.addr, "GET", "/metrics", &[], b"").expect_error(403, "forbidden");
    http(s.addr, "GET", "/stats", &[], b"").expect_error(403, "forbidden");
    assert_eq!(http(s.addr, "GET", "/health", &[], b"").status, 200);
    // The same config with the API on its own listener: served there.
    let s2 = Server::with(Options {
        api: ApiConfig {
            metrics_allow: Vec::new(),
            ..ApiConfig::default()
        },
        separate_api_listener: true,
        ..Options::default()
    });
    let m = http(s2.api_addr, "GET", "/metrics", &[], b"");
    assert_eq!(m.status, 200);
    assert!(m.text().contains("ringcast_http_refused_total"));
    assert_eq!(http(s2.api_addr, "GET", "/stats", &[], b"").status, 200);
}
