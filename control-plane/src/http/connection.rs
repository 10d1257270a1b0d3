//! The per-connection loop: read, parse, answer, repeat while keep-alive holds. Every wait has
//! a deadline: the keep-alive idle wait (silent close), the head (408), the body (408), the
//! handler (503) and each write (close).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Instant;
use ringcast_engine::ClientStream;

use super::body_budget::BodyPermit;
use super::request::{Limits, Progress, Request, RequestHead, RequestReader};
use super::response::Response;
use crate::error::ApiError;

/// Bytes asked for per read.
const READ_CHUNK: usize = 16 * 1024;

/// Deadlines of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (408 past it).
    pub head: Duration,
    /// From the end of the head to the end of the body (408 past it).
    pub body: Duration,
    /// Keep-alive: silence allowed between requests before the connection is closed.
    pub idle: Duration,
    /// Longest time a handler may take (503 past it).
    pub handler: Duration,
    /// Longest time one response write may take (the connection is dropped past it).
    pub write: Duration,
}

/// Longest time a refused request's unread body is discarded before the socket is closed.
const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded that way (read into the one read buffer, never kept).
const LINGER_BYTES: usize = 1 << 20;

/// Answers requests; implemented by the API.
pub trait Handler {
    /// Admission control: decides on a request from its head alone, before its body is read.
    /// Called once for every request whose body did not arrive with its head. `Err` is
    /// answered at once and the connection closed without reading the body; `Ok` carries what
    /// the request holds until it is answered (a reservation in the body budget).
    fn admit(&self, head: &RequestHead) -> Result<Option<BodyPermit>, Response>;
    /// Answers one complete request.
    fn handle(&self, req: &Request) -> impl Future<Output = Response>;
    /// Observes a response the HTTP layer produced itself (parse errors, timeouts, panics).
    fn observe_http_error(&self, status: u16);
    /// Whether this request belongs to the engine rather than the API (an SSE stream on a
    /// kept-alive connection of the public port): `serve` then hands the connection back.
    fn hands_back(&self, _req: &Request) -> bool {
        false
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Body,
}

/// Serves one connection until the client closes, a limit is hit or keep-alive ends.
/// `initial` is what was already read from the socket. Returns the connection, with the
/// request's head as bytes, when the handler says a request belongs to the engine.
pub async fn serve<H: Handler>(
    handler: &H,
    mut stream: ClientStream,
    initial: Vec<u8>,
    limits: Limits,
    timeouts: Timeouts,
) -> Option<(ClientStream, Vec<u8>)> {
    let _ = stream.set_nodelay(true);
    let mut reader = RequestReader::new(limits, initial);
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut phase = Phase::Idle;
    let mut deadline = Instant::now() + timeouts.idle;
    // Admission of the request being read: decided (and its permit held) until it is answered.
    let mut admitted = false;
    let mut _permit: Option<BodyPermit> = None;
    loop {
        let next = match reader.poll() {
            Ok(p) => p,
            Err(e) => {
                handler.observe_http_error(e.status);
                let bytes = e.to_response().to_bytes(false, false);
                let _ = write(&mut stream, bytes, timeouts.write).await;
                return None;
            }
        };
        let now_phase = match next {
            Progress::Request(req) if handler.hands_back(&req) => {
                return Some((stream, head_bytes(&req)));
            }
            Progress::Request(req) => {
                let head_only = req.method == "HEAD";
                let resp = match monoio::time::timeout(
                    timeouts.handler,
                    CatchUnwind(Box::pin(handler.handle(&req))),
                )
                .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(())) => {
                        tracing::error!(path = %req.path, "control plane handler panicked");
                        handler.observe_http_error(500);
                        ApiError::new(500, "internal", "internal error").to_response()
                    }
                    Err(_) => {
                        handler.observe_http_error(503);
                        ApiError::new(503, "timeout", "the request took too long, retry later")
                            .to_response()
                    }
                };
                let keep = req.keep_alive && !resp.close;
                if !write(&mut stream, resp.to_bytes(keep, head_only), timeouts.write).await
                    || !keep
                {
                    return None;
                }
                phase = Phase::Idle;
                deadline = Instant::now() + timeouts.idle;
                admitted = false;
                _permit = None;
                continue;
            }
            Progress::Idle => Phase::Idle,
            Progress::Head => Phase::Head,
            Progress::Body { send_continue } => {
                if !admitted {
                    admitted = true;
                    // Invariant: `Body` means a head is pending.
                    let head = reader.pending_head().expect("a head is pending");
                    match handler.admit(head) {
                        Ok(p) => _permit = p,
                        Err(resp) => {
                            if write(&mut stream, resp.to_bytes(false, false), timeouts.write).await
                            {
                                linger_close(stream, rbuf).await;
                            }
                            return None;
                        }
                    }
                }
                if send_continue
                    && !write(
                        &mut stream,
                        b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                        timeouts.write,
                    )
                    .await
                {
                    return None;
                }
                Phase::Body
            }
        };
        if now_phase != phase {
            phase = now_phase;
            deadline = Instant::now()
                + match phase {
                    Phase::Idle => timeouts.idle,
                    Phase::Head => timeouts.head,
                    Phase::Body => timeouts.body,
                };
        }
        let (res, buf) = match monoio::time::timeout_at(deadline, stream.read(rbuf)).await {
            Ok(r) => r,
            Err(_) => {
                if phase != Phase::Idle {
                    handler.observe_http_error(408);
                    let what = if phase == Phase::Head { "head" } else { "body" };
                    let e = ApiError::new(
                        408,
                        "request_timeout",
                        format!("the request {what} did not arrive in time"),
                    );
                    let _ = write(
                        &mut stream,
                        e.to_response().to_bytes(false, false),
                        timeouts.write,
                    )
                    .await;
                }
                return None;
            }
        };
        rbuf = buf;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(n) => reader.feed(&rbuf[..n]),
        }
    }
}

/// A parsed request's head as HTTP/1.1 bytes (for the engine to parse again).
fn head_bytes(req: &Request) -> Vec<u8> {
    let mut out = format!("{} {}", req.method, req.path);
    if !req.query.is_empty() {
        out.push('?');
        out.push_str(&req.query);
    }
    out.push_str(" HTTP/1.1\r\n");
    for (k, v) in &req.headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Closes a connection whose client may still be sending a body nobody will read: half-close,
/// then discard what arrives (into the one buffer, never kept) until the client closes, for
/// at most [`LINGER`] and [`LINGER_BYTES`]. Closing at once with unread bytes in the socket
/// would make the kernel reset the connection, and the client could lose the answer.
async fn linger_close(mut stream: ClientStream, mut rbuf: Vec<u8>) {
    let _ = stream.shutdown().await;
    let until = Instant::now() + LINGER;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        rbuf.clear();
        let (res, b) = match monoio::time::timeout_at(until, stream.read(rbuf)).await {
            Ok(r) => r,
            Err(_) => return,
        };
        rbuf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// Writes all of `bytes` within `limit`; false if the connection is unusable.
async fn write(stream: &mut ClientStream, bytes: Vec<u8>, limit: Duration) -> bool {
    matches!(
        monoio::time::timeout(limit, stream.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}

/// Turns a panic while polling the handler into `Err(())`, so a bug answers 500 instead of
/// unwinding through (and killing) an engine core.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
