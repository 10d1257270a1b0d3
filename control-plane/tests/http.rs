//! The HTTP/1.1 layer over real sockets: keep-alive, pipelining, byte-by-byte requests, size
//! limits, deadlines against slow clients, `Expect: 100-continue`, and concurrency.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringcast_control_plane::ApiConfig;
use serde_json::json;

fn fast_timeouts() -> Options {
    Options {
        api: ApiConfig {
            head_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(500),
            ..ApiConfig::default()
        },
        ..Options::default()
    }
}

fn signed_target(method: &str, path: &str, body: &[u8]) -> String {
    format!(
        "{path}?{}",
        sign(KEY, SECRET, method, path, &[], body, now())
    )
}

#[test]
fn keep_alive_serves_many_requests_including_errors_on_one_connection() {
    let s = Server::start();
    let mut c = HttpConn::open(s.api_addr);
    for i in 0..5 {
        let r = c.request("GET", "/health", &[], b"");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        let r = c.request("GET", "/apps/app-id/channels", &[], b"");
        assert_eq!(r.status, 401, "an auth error keeps the connection");
        let body = json!({"name": "e", "channels": ["k"], "data": "x"}).to_string();
        let t = signed_target("POST", "/apps/app-id/events", body.as_bytes());
        let r = c.request(
            "POST",
            &t,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start();
    let mut c = HttpConn::open(s.api_addr);
    let mut wire = Vec::new();
    wire.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    wire.extend_from_slice(b"GET /nope HTTP/1.1\r\n\r\n");
    wire.extend_from_slice(b"GET /stats HTTP/1.1\r\n\r\n");
    c.send_raw(&wire);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.read_response().status, 404);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.json()["connections"].is_u64());
}

#[test]
fn a_request_sent_one_byte_at_a_time_is_served() {
    let s = Server::start();
    let mut w = s.connect();
    w.subscribe("bytes");
    let body = json!({"name": "e", "channels": ["bytes"], "data": "slow"}).to_string();
    let t = signed_target("POST", "/apps/app-id/events", body.as_bytes());
    let wire = format!(
        "POST {t} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = HttpConn::open(s.api_addr);
    c.stream.set_nodelay(true).unwrap();
    // The first request on the public port is read by the engine, the second by the
    // control plane: split both.
    for _ in 0..2 {
        for b in wire.as_bytes() {
            c.send_raw(&[*b]);
        }
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(w.recv_event("e")["data"], "slow");
    }
}

#[test]
fn connection_close_and_http10_are_honoured() {
    let s = Server::start();
    let mut c = HttpConn::open(s.api_addr);
    let r = c.request("GET", "/health", &[("Connection", "close")], b"");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());

    let mut c = HttpConn::open(s.api_addr);
    c.send_raw(b"GET /health HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("close"));
    assert!(c.closed_by_server());

    let mut c = HttpConn::open(s.api_addr);
    c.send_raw(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response().header("connection"), Some("keep-alive"));
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn oversize_head_is_431() {
    let s = Server::start();
    for first in [true, false] {
        let mut c = HttpConn::open(s.api_addr);
        if !first {
            // Second request on the connection: parsed by the control plane.
            assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
        }
        let big = "a".repeat(9 * 1024);
        c.send_raw(format!("GET /health HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 431, "first={first}: {}", r.text());
        assert!(c.closed_by_server());
    }
}

#[test]
fn chunked_bodies_are_411_and_garbage_is_400() {
    let s = Server::start();
    let mut c = HttpConn::open(s.api_addr);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    c.send_raw(b"POST /apps/app-id/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    let r = c.read_response();
    r.expect_error(411, "length_required");
    assert!(c.closed_by_server());

    let mut c = HttpConn::open(s.api_addr);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    c.send_raw(b"THIS IS NOT HTTP\r\n\r\n");
    let r = c.read_response();
    r.expect_error(400, "malformed_request");
    assert!(c.closed_by_server());
}

#[test]
fn slow_head_and_slow_body_get_408() {
    let s = Server::with(fast_timeouts());
    // Slow head (second request of a keep-alive connection).
    let mut c = HttpConn::open(s.api_addr);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    let t0 = Instant::now();
    c.send_raw(b"GET /health HTTP/1.1\r\nX-Slow: ");
    let r = c.read_response();
    r.expect_error(408, "request_timeout");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(c.closed_by_server());

    // Slow body (signed: an unsigned one is refused from its head, see tests/admission.rs).
    let mut c = HttpConn::open(s.api_addr);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    let body = [b'x'; 50];
    let t = signed_target("POST", "/apps/app-id/events", &body);
    c.send_raw(format!("POST {t} HTTP/1.1\r\nContent-Length: 50\r\n\r\n{{\"na").as_bytes());
    let r = c.read_response();
    let msg = r.expect_error(408, "request_timeout");
    assert!(msg.contains("body"), "{msg}");
    assert!(c.closed_by_server());
}

#[test]
fn slow_clients_on_a_separate_api_listener_get_408_on_the_first_request_too() {
    let s = Server::with(Options {
        separate_api_listener: true,
        ..fast_timeouts()
    });
    let mut c = HttpConn::open(s.api_addr);
    c.send_raw(b"GET /hea");
    c.read_response().expect_error(408, "request_timeout");
    assert!(c.closed_by_server());
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let s = Server::with(fast_timeouts());
    let mut c = HttpConn::open(s.api_addr);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    let t0 = Instant::now();
    assert!(c.closed_by_server(), "idle connection closed silently");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn expect_100_continue_is_answered() {
    let s = Server::start();
    let mut c = HttpConn::open(s.api_addr);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    let body = json!({"name": "e", "channels": ["c"], "data": "x"}).to_string();
    let t = signed_target("POST", "/apps/app-id/events", body.as_bytes());
    c.send_raw(
        format!(
            "POST {t} HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 100);
    c.send_raw(body.as_bytes());
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn concurrent_clients_all_get_answers() {
    let s = Server::start();
    let addr = s.api_addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = HttpConn::open(addr);
                for i in 0..25 {
                    let body =
                        json!({"name": "e", "channels": [format!("cc-{t}")], "data": i.to_string()})
                            .to_string();
                    let target = signed_target("POST", "/apps/app-id/events", body.as_bytes());
                    let r = c.request("POST", &target, &[], body.as_bytes());
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let published = s
        .control_plane
        .api()
        .rest_metrics()
        .count(ringcast_control_plane::Endpoint::Events, 200);
    assert_eq!(published, 200);
}
