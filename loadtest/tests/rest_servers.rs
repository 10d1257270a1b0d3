//! REST publishing against servers that use every legal HTTP/1.1 liberty. Each test puts a
//! small stand-in HTTP server (real sockets, 127.0.0.1, an ephemeral port) in front of an
//! in-process Ringcast: the stand-in forwards every trigger to Ringcast's real HTTP API and
//! answers the harness in its own way (closing after every response, refusing pipelining,
//! chunked answers, 429 + Retry-After, slow answers, ignoring pipelined requests). The
//! subscribers connect to Ringcast directly, so every event is checked end to end: delivered
//! exactly once, none skipped, and the REST figures say what the server did.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_exact, engine_with, run, tmp};
use ringcast_loadtest::http::parse_response;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Quirk {
    /// `Connection: close` on every response, then close.
    CloseAfterEach,
    /// Waits up to 200 ms for another request behind the current one (pipelined): if one
    /// comes, answers the current one with `Connection: close` and closes, leaving the other
    /// unanswered; else answers normally and keeps the connection.
    RefusesPipelining,
    /// Chunked responses, written a few bytes at a time.
    Chunked,
    /// Every third new request is answered 429 with `Retry-After: 1`.
    TooMany,
    /// Each answer takes 50 ms.
    Slow,
    /// Answers the first request of each read and discards the rest of what was read.
    DropsPipelined,
}

#[derive(Default)]
struct Seen {
    connections: u64,
    forwarded: u64,
    /// Body -> when it was answered 429.
    throttled_at: HashMap<Vec<u8>, Instant>,
    /// Shortest time between a 429 and the retry of the same request.
    min_retry_gap: Option<Duration>,
    retries_seen: u64,
}

struct StandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

/// Length of the first complete request in `buf` (head + Content-Length body).
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf).expect("the harness sends valid requests") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let clen = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .unwrap_or(0usize);
    (buf.len() >= head + clen).then_some(head + clen)
}

/// Sends `req` to Ringcast and returns (status, body) of its answer.
fn forward(up: &mut Option<TcpStream>, target: SocketAddr, req: &[u8]) -> (u16, Vec<u8>) {
    for _ in 0..2 {
        let s = up.get_or_insert_with(|| TcpStream::connect(target).expect("upstream"));
        if s.write_all(req).is_err() {
            *up = None;
            continue;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = parse_response(&buf, false).expect("Ringcast answers HTTP") {
                let head_end = memchr::memmem::find(&buf, b"\r\n\r\n").unwrap() + 4;
                return (r.status, buf[head_end..r.len].to_vec());
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        *up = None;
    }
    panic!("Ringcast did not answer a forwarded request");
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        429 => "Too Many Requests",
        _ => "Other",
    }
}

fn serve(mut c: TcpStream, quirk: Quirk, target: SocketAddr, seen: Arc<Mutex<Seen>>) {
    seen.lock().unwrap().connections += 1;
    let mut up: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // One complete request (reading more only when needed).
        let len = loop {
            if let Some(n) = request_len(&buf) {
                break n;
            }
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let req: Vec<u8> = buf.drain(..len).collect();
        let body_at = memchr::memmem::find(&req, b"\r\n\r\n").unwrap() + 4;
        let body = req[body_at..].to_vec();
        if quirk == Quirk::TooMany && !body.is_empty() {
            let mut s = seen.lock().unwrap();
            if let Some(at) = s.throttled_at.remove(&body) {
                let gap = at.elapsed();
                s.retries_seen += 1;
                s.min_retry_gap = Some(s.min_retry_gap.map_or(gap, |g| g.min(gap)));
            } else if s.forwarded % 3 == 2 {
                s.forwarded += 1;
                s.throttled_at.insert(body, Instant::now());
                drop(s);
                let _ = c.write_all(
                    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
                );
                continue;
            }
        }
        let (status, answer) = forward(&mut up, target, &req);
        seen.lock().unwrap().forwarded += 1;
        let head = |extra: &str| {
            format!(
                "HTTP/1.1 {status} {}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                reason(status),
                answer.len()
            )
        };
        match quirk {
            Quirk::CloseAfterEach => {
                let _ = c.write_all(&[head("Connection: close\r\n").as_bytes(), &answer].concat());
                return;
            }
            Quirk::RefusesPipelining => {
                // Anything that arrives behind this request before its answer was pipelined.
                if buf.is_empty() {
                    c.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    if let Ok(n) = c.read(&mut chunk) {
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    c.set_read_timeout(None).unwrap();
                }
                if !buf.is_empty() {
                    let _ =
                        c.write_all(&[head("Connection: close\r\n").as_bytes(), &answer].concat());
                    return;
                }
                let _ = c.write_all(&[head("").as_bytes(), &answer].concat());
            }
            Quirk::Chunked => {
                let mut out = format!(
                    "HTTP/1.1 {status} {}\r\nTransfer-Encoding: chunked\r\n\r\n",
                    reason(status)
                )
                .into_bytes();
                for part in answer.chunks(2) {
                    out.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
                    out.extend_from_slice(part);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                // In pieces, so the harness sees partial answers.
                for piece in out.chunks(7) {
                    if c.write_all(piece).is_err() {
                        return;
                    }
                    let _ = c.flush();
                }
            }
            Quirk::Slow => {
                std::thread::sleep(Duration::from_millis(50));
                let _ = c.write_all(&[head("").as_bytes(), &answer].concat());
            }
            Quirk::TooMany => {
                let _ = c.write_all(&[head("").as_bytes(), &answer].concat());
            }
            Quirk::DropsPipelined => {
                let _ = c.write_all(&[head("").as_bytes(), &answer].concat());
                buf.clear();
            }
        }
    }
}

fn stand_in(quirk: Quirk, target: SocketAddr) -> StandIn {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    // Lives until the test process ends (blocked in accept).
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let seen = s2.clone();
            std::thread::spawn(move || serve(c, quirk, target, seen));
        }
    });
    StandIn { addr, seen }
}

/// Publishes 100 REST events (2 publishers, 10 subscribers on 2 channels) through a stand-in
/// with `quirk`, and returns the result after checking every delivery arrived exactly once.
fn publish_through(quirk: Quirk, extra: &[&str]) -> (serde_json::Value, Arc<Mutex<Seen>>) {
    let e = engine_with(true);
    let si = stand_in(quirk, e.local_addr());
    let dir = tmp(&format!("rest-{quirk:?}"));
    let ws = format!("ws://{}", e.local_addr());
    let api = format!("http://{}", si.addr);
    let mut args = vec![
        "fanout",
        "--ws-url",
        &ws,
        "--api-url",
        &api,
        "--publish",
        "rest",
        "--publishers",
        "2",
        "--rest-inflight",
        "4",
        "--subscribers",
        "10",
        "--channels",
        "2",
        "--rate",
        "100",
        "--duration",
        "1",
        "--drain",
        "20",
        "--label",
        "stand-in",
    ];
    args.extend_from_slice(extra);
    let v = run(&args, &dir.join("out.json"), Duration::from_secs(120));
    let r = v["results"][0].clone();
    assert_exact(&r);
    assert_eq!(r["publish_skipped"].as_u64(), Some(0), "{r}");
    assert_eq!(r["rest"]["ok"].as_u64(), Some(100), "{r}");
    assert_eq!(r["rest"]["unsent_at_deadline"].as_u64(), Some(0), "{r}");
    assert_eq!(r["rest"]["unanswered_at_deadline"].as_u64(), Some(0), "{r}");
    e.shutdown_and_join();
    (r, si.seen)
}

fn modes(r: &serde_json::Value) -> String {
    r["rest"]["modes"].to_string()
}

#[test]
fn a_server_that_closes_after_every_response_gets_one_request_per_connection() {
    let (r, seen) = publish_through(Quirk::CloseAfterEach, &[]);
    let rest = &r["rest"];
    assert!(
        modes(&r).contains("closes the connection after each response"),
        "{r}"
    );
    assert_eq!(rest["max_requests_per_connection"].as_u64(), Some(1), "{r}");
    assert_eq!(rest["requests_per_connection"].as_f64(), Some(1.0), "{r}");
    assert!(rest["connections"].as_u64().unwrap() >= 100, "{r}");
    assert!(rest["closed_by_server"].as_u64().unwrap() >= 100, "{r}");
    // 100 triggers + the two publishers' probes, each forwarded once.
    assert_eq!(seen.lock().unwrap().forwarded, 102);
}

#[test]
fn a_server_that_refuses_pipelining_is_used_one_request_at_a_time() {
    let (r, seen) = publish_through(Quirk::RefusesPipelining, &[]);
    assert!(modes(&r).contains("1 request each"), "{r}");
    // Without pipelining nothing is left unanswered, so nothing is sent twice.
    assert_eq!(r["rest"]["resent"].as_u64(), Some(0), "{r}");
    assert_eq!(seen.lock().unwrap().forwarded, 102);
}

#[test]
fn pipelining_forced_on_against_a_refusing_server_resends_what_was_left_unanswered() {
    let (r, _) = publish_through(Quirk::RefusesPipelining, &["--rest-pipelining", "on"]);
    let rest = &r["rest"];
    assert!(modes(&r).contains("--rest-pipelining on"), "{r}");
    assert!(rest["closed_by_server"].as_u64().unwrap() > 0, "{r}");
    assert!(rest["resent"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn chunked_answers_on_a_pipelined_connection() {
    let (r, _) = publish_through(Quirk::Chunked, &[]);
    let rest = &r["rest"];
    assert!(
        modes(&r).contains("the server answered 2 pipelined requests"),
        "{r}"
    );
    assert!(
        rest["max_requests_per_connection"].as_u64().unwrap() > 1,
        "{r}"
    );
    assert_eq!(rest["closed_by_server"].as_u64(), Some(0), "{r}");
}

#[test]
fn throttled_requests_are_retried_after_retry_after() {
    let (r, seen) = publish_through(Quirk::TooMany, &[]);
    let rest = &r["rest"];
    let throttled = rest["throttled"].as_u64().unwrap();
    assert!(throttled > 0, "{r}");
    let s = seen.lock().unwrap();
    // Every 429 was followed by exactly one retry, never before Retry-After.
    assert_eq!(s.retries_seen, throttled, "{r}");
    assert!(s.throttled_at.is_empty());
    assert!(
        s.min_retry_gap.unwrap() >= Duration::from_secs(1),
        "{:?}",
        s.min_retry_gap
    );
    let failures = r["server_failures"].to_string();
    assert!(failures.contains("429"), "{r}");
    assert_eq!(r["valid"], false, "{r}");
}

#[test]
fn slow_answers_are_waited_for_and_show_as_the_servers_lag() {
    let (r, _) = publish_through(Quirk::Slow, &[]);
    let rest = &r["rest"];
    assert_eq!(rest["timeouts"].as_u64(), Some(0), "{r}");
    // 50 ms per answer, one connection of 4 pipelined requests per publisher, 50 requests per
    // publisher in one second: the publishers wait for the server, and that wait (not the
    // generator) gets the blame.
    assert!(
        r["publish_wait_server"]["count"].as_u64().unwrap() > 0,
        "{r}"
    );
}

#[test]
fn a_server_that_ignores_pipelined_requests_is_probed_and_not_pipelined() {
    let (r, _) = publish_through(Quirk::DropsPipelined, &[]);
    assert!(
        modes(&r).contains("did not answer a pipelined request"),
        "{r}"
    );
    assert_eq!(r["rest"]["resent"].as_u64(), Some(0), "{r}");
}
