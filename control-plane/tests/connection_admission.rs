//! Connection admission on the public port over real sockets: per-app `allowed_origins`
//! (close 4009 after the upgrade, which pusher-js treats as "refused, do not reconnect"),
//! per-address caps on concurrent and new connections for WebSocket and HTTP alike,
//! process-wide caps on handshakes in flight and connections, and the client address behind
//! trusted proxies (`X-Forwarded-For`, PROXY protocol v1), handshakes in flight per address,
//! each refusal counted by reason.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;
use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

fn toml(extra: &str) -> &'static str {
    Box::leak(format!("{extra}\n{TWO_APPS}").into_boxed_str())
}

/// With the API on its own listener, so scraping /metrics is not itself subject to the
/// public port's caps under test.
fn server(extra: &str, workers: usize) -> Server {
    Server::with(Options {
        toml: toml(extra),
        workers,
        separate_api_listener: true,
        ..Options::default()
    })
}

/// The API on the public port (for what depends on the client address there).
fn public_api_server(extra: &str) -> Server {
    Server::with(Options {
        toml: toml(extra),
        ..Options::default()
    })
}

fn metric(s: &Server, name_and_labels: &str) -> u64 {
    let text = http(s.api_addr, "GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in /metrics"))
}

fn refused(s: &Server, reason: &str) -> u64 {
    metric(
        s,
        &format!("ringcast_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// What the server said first on a WebSocket opened with this Origin, and the close code if
/// it closed.
fn ws_with_origin(addr: SocketAddr, key: &str, origin: Option<&str>) -> (Value, Option<u16>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!("ws://{addr}/app/{key}?protocol=7&client=rust&version=1.0")
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    let (mut ws, _) = tungstenite::client(req, stream).expect("the upgrade is always accepted");
    let first: Value = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    };
    if first["event"] == "pusher:connection_established" {
        return (first, None);
    }
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (first, Some(u16::from(f.code))),
            Ok(Message::Close(None)) => return (first, None),
            Ok(_) => continue,
            Err(_) => return (first, None),
        }
    }
}

#[test]
fn origins_outside_allowed_origins_are_closed_with_4009() {
    let apps = r#"
[[apps]]
id = "o"
key = "o-key"
secret = "o-secret"
allowed_origins = ["*.example.com", "https://exact.test"]
"#;
    let s = Server::with(Options {
        toml: Box::leak(apps.to_string().into_boxed_str()),
        ..Options::default()
    });
    for ok in [
        Some("https://a.example.com"),
        Some("http://b.c.example.com:8080"),
        Some("https://exact.test"),
        None,
    ] {
        let (first, _) = ws_with_origin(s.addr, "o-key", ok);
        assert_eq!(first["event"], "pusher:connection_established", "{ok:?}");
    }
    for bad in [
        "https://example.com",
        "https://evil.test",
        "http://exact.test",
        "https://a.example.com.evil.test",
    ] {
        let (first, code) = ws_with_origin(s.addr, "o-key", Some(bad));
        assert_eq!(first["event"], "pusher:error", "{bad}");
        assert_eq!(first["data"]["code"], 4009, "{first}");
        assert_eq!(code, Some(4009), "{bad}");
    }
    assert_eq!(refused(&s, "origin_not_allowed"), 4);
}

/// True when the server closes a fresh connection without answering anything.
fn closed_without_a_word(addr: SocketAddr, send: &[u8]) -> bool {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    let _ = t.write_all(send);
    let mut b = [0u8; 64];
    matches!(t.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn per_address_concurrency_applies_to_websocket_and_http() {
    let s = server(
        "[admission]\nmax_connections_per_ip = 3\nnew_connections_per_ip_per_sec = 0\nlimit_exempt = []",
        2,
    );
    let a = s.connect();
    let _b = s.connect();
    let mut h = HttpConn::open(s.addr);
    assert_eq!(
        h.request("GET", "/health", &[], b"").status,
        200,
        "keep-alive HTTP counts too"
    );
    // A fourth connection from 127.0.0.1 is closed at accept, WebSocket or HTTP.
    assert!(closed_without_a_word(
        s.addr,
        b"GET /health HTTP/1.1\r\n\r\n"
    ));
    assert!(refused(&s, "max_connections_per_ip") >= 1);
    // One closes; a new one gets in (its permit is released when its task ends).
    drop(a);
    let until = std::time::Instant::now() + WAIT;
    loop {
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.set_read_timeout(Some(WAIT)).unwrap();
        t.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = t.read_to_end(&mut out);
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the slot was never released"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn per_address_rate_refuses_a_connection_flood() {
    let s = server(
        "[admission]\nnew_connections_per_ip_per_sec = 2\nlimit_exempt = []",
        1,
    );
    let mut seen_refusal = false;
    for _ in 0..200 {
        if closed_without_a_word(s.addr, b"GET /health HTTP/1.1\r\n\r\n") {
            seen_refusal = true;
            break;
        }
    }
    assert!(
        seen_refusal,
        "200 connections at once from one address were all accepted"
    );
    // /metrics from loopback: this request itself may be refused by the rate too, so poll.
    let until = std::time::Instant::now() + WAIT;
    loop {
        let mut t = TcpStream::connect(s.api_addr).unwrap();
        t.set_read_timeout(Some(WAIT)).unwrap();
        let _ = t.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        let mut out = Vec::new();
        let _ = t.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        if let Some(n) = text.lines().find_map(|l| {
            l.strip_prefix(
                "ringcast_connections_refused_total{reason=\"new_connections_per_ip_per_sec\"} ",
            )
        }) {
            assert!(n.trim().parse::<u64>().unwrap() >= 1);
            break;
        }
        assert!(std::time::Instant::now() < until);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn handshakes_in_flight_are_capped_process_wide() {
    let s = server("[admission]\nmax_handshakes_in_flight = 2", 1);
    // Two sockets that never send their head hold both handshake slots.
    let idle1 = TcpStream::connect(s.addr).unwrap();
    let _idle2 = TcpStream::connect(s.addr).unwrap();
    s.eventually("two handshakes in flight", || {
        metric(&s, "ringcast_handshakes_in_flight") == 2
    });
    assert!(closed_without_a_word(
        s.addr,
        b"GET /health HTTP/1.1\r\n\r\n"
    ));
    assert_eq!(refused(&s, "max_handshakes_in_flight"), 1);
    // One of them finishes its head: a slot frees.
    let mut idle1 = idle1;
    idle1.set_read_timeout(Some(WAIT)).unwrap();
    idle1
        .write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = idle1.read_to_end(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 200"));
    s.eventually("a slot freed", || {
        metric(&s, "ringcast_handshakes_in_flight") == 1
    });
}

#[test]
fn open_connections_are_capped_process_wide() {
    let s = server("[admission]\nmax_connections = 2", 1);
    let _a = s.connect();
    let _b = s.connect();
    assert!(closed_without_a_word(
        s.addr,
        b"GET /health HTTP/1.1\r\n\r\n"
    ));
    // The API listener is separate from the public port's cap only with --api-listen; here
    // the scrape itself would be refused, so read the counter through the handle.
    let refusals = s.handle().admission_refusals();
    assert!(refusals.contains(&("max_connections", 1)), "{refusals:?}");
}

#[test]
fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    // 127.0.0.1 is a trusted proxy: the client is the address it forwards for.
    let s = public_api_server(
        "[admission]\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_ip = 1\nlimit_exempt = []",
    );
    let mut c1 = HttpConn::open(s.addr);
    let r = c1.request("GET", "/health", &[("X-Forwarded-For", "1.2.3.4")], b"");
    assert_eq!(r.status, 200);
    // Same forwarded client while c1 is open: over its per-address cap.
    assert!(closed_without_a_word(
        s.addr,
        b"GET /health HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    ));
    // Another forwarded client is fine.
    let mut c2 = HttpConn::open(s.addr);
    assert_eq!(
        c2.request("GET", "/health", &[("X-Forwarded-For", "5.6.7.8")], b"")
            .status,
        200
    );
    // /metrics: the forwarded client 9.9.9.9 is not in metrics_allow (loopback).
    http(
        s.addr,
        "GET",
        "/metrics",
        &[("X-Forwarded-For", "9.9.9.9")],
        b"",
    )
    .expect_error(403, "forbidden");

    // Without trusted proxies the header is ignored: the client is the loopback peer.
    let plain = Server::start();
    assert_eq!(
        http(
            plain.addr,
            "GET",
            "/metrics",
            &[("X-Forwarded-For", "9.9.9.9")],
            b""
        )
        .status,
        200
    );
}

#[test]
fn proxy_protocol_names_the_client_and_is_required_from_trusted_proxies() {
    let s =
        public_api_server("[admission]\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true");
    let ask = |proxy: &[u8]| {
        let mut t = TcpStream::connect(s.addr).unwrap();
        t.set_read_timeout(Some(WAIT)).unwrap();
        let mut wire = proxy.to_vec();
        wire.extend_from_slice(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
        t.write_all(&wire).unwrap();
        let mut out = Vec::new();
        let _ = t.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(ask(b"PROXY TCP4 9.9.9.9 10.0.0.1 4000 6001\r\n").starts_with("HTTP/1.1 403"));
    assert!(ask(b"PROXY TCP4 127.0.0.1 10.0.0.1 4000 6001\r\n").starts_with("HTTP/1.1 200"));
    // v2, LOCAL: the proxy's own health check; the peer address stands.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert!(ask(&v2).starts_with("HTTP/1.1 200"));
    // No header from a trusted proxy: refused, counted.
    assert_eq!(ask(b""), "");
    let refusals = s.handle().admission_refusals();
    assert!(refusals.contains(&("bad_proxy_header", 1)), "{refusals:?}");
}

/// A TCP connection to `to` from the loopback address `from` (Linux accepts any 127.0.0.0/8
/// source on the loopback interface).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    let t: TcpStream = sock.into();
    t.set_read_timeout(Some(WAIT)).unwrap();
    t
}

/// A full WebSocket connection from `from`: upgrade, then `connection_established`.
fn websocket_from(from: &str, to: SocketAddr) -> Value {
    let stream = connect_from(from, to);
    let url = format!("ws://{to}/app/{KEY}?protocol=7&client=rust&version=1.0");
    let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// One address holding stalled handshakes (slow-loris) cannot take more than
/// `max_handshakes_in_flight_per_ip` of the process-wide handshake slots: its extra
/// connections are refused at accept and counted, while another address still connects.
#[test]
fn handshakes_in_flight_are_capped_per_address() {
    let s = server(
        "[admission]\nmax_handshakes_in_flight = 100\nmax_handshakes_in_flight_per_ip = 3\n\
         new_connections_per_ip_per_sec = 0\nlimit_exempt = []",
        1,
    );
    // Three connections from 127.0.0.1 that never send their request head.
    let stalled: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", s.addr)).collect();
    s.eventually("three handshakes in flight", || {
        metric(&s, "ringcast_handshakes_in_flight") == 3
    });
    // The fourth and fifth from the same address: closed without a word, counted.
    for _ in 0..2 {
        let mut t = connect_from("127.0.0.1", s.addr);
        let _ = t.write_all(b"GET /health HTTP/1.1\r\n\r\n");
        let mut b = [0u8; 64];
        assert!(matches!(t.read(&mut b), Ok(0) | Err(_)), "refused");
    }
    assert_eq!(refused(&s, "max_handshakes_in_flight_per_ip"), 2);
    // Another address is not held back: a WebSocket connects, and its own stalled
    // handshakes are its own.
    let first = websocket_from("127.0.0.2", s.addr);
    assert_eq!(first["event"], "pusher:connection_established", "{first}");
    let _others: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.2", s.addr)).collect();
    s.eventually("six handshakes in flight", || {
        metric(&s, "ringcast_handshakes_in_flight") == 6
    });
    // One of 127.0.0.1's heads arrives: its slot is given back and the address connects.
    let mut done = stalled.into_iter().next().unwrap();
    done.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = done.read_to_end(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 200"));
    let first = websocket_from("127.0.0.1", s.addr);
    assert_eq!(first["event"], "pusher:connection_established", "{first}");
    assert_eq!(refused(&s, "max_handshakes_in_flight_per_ip"), 2);
}

/// Behind a trusted proxy the proxy itself is not one address holding every handshake: its
/// connections count against the clients its PROXY headers name, from the header on.
#[test]
fn handshakes_per_address_behind_a_trusted_proxy_count_the_named_client() {
    let s = server(
        "[admission]\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true\n\
         max_handshakes_in_flight_per_ip = 2\nnew_connections_per_ip_per_sec = 0\nlimit_exempt = []",
        1,
    );
    // The proxy's own connections before any header: not counted per address (four > 2).
    let _pending: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.1", s.addr)).collect();
    s.eventually("four handshakes in flight", || {
        metric(&s, "ringcast_handshakes_in_flight") == 4
    });
    // Three connections naming 9.9.9.9 with no request head after the header: one is refused.
    let _named: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut t = connect_from("127.0.0.1", s.addr);
            t.write_all(b"PROXY TCP4 9.9.9.9 10.0.0.1 4000 6001\r\n")
                .unwrap();
            t
        })
        .collect();
    s.eventually("one of 9.9.9.9's handshakes refused", || {
        refused(&s, "max_handshakes_in_flight_per_ip") == 1
    });
    // Another client through the same proxy is served.
    let mut t = connect_from("127.0.0.1", s.addr);
    t.write_all(
        b"PROXY TCP4 8.8.8.8 10.0.0.1 4000 6001\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(refused(&s, "max_handshakes_in_flight_per_ip"), 1);
}
