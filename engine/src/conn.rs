//! One client connection: HTTP upgrade, then a reader (the connection's main task). The reader
//! decodes frames and acts on Pusher messages; everything the connection must send is appended
//! to its outbound queue as shared `Bytes`. A plaintext connection's queue is drained by its
//! core's flush pass (crate::flush: one nonblocking `sendmsg` per dirty connection per pass),
//! and by the io_uring writer (`write_loop`) only while the socket is full; a TLS connection
//! keeps a writer task of its own.
//!
//! Slow consumers are policy: the outbound queue is capped by a byte budget and every batched
//! write by a deadline; past either the connection is closed with 4100 and the reason counted.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use ringcast_protocol::client_addr::{client_from_forwarded_for, parse_proxy_header};
use ringcast_protocol::{
    close, jwt, limits, pusher, ws, ChannelKind, ChannelName, ClientMessage, Dialect, FrameDecoder,
    Message, Role, SocketId,
};
use std::time::Instant;

use crate::admission::{
    origin_allowed, Admission, ConnPermits, HandshakePermit, IpPermit, Refusal,
};
use crate::core::Core;
use crate::metrics::CloseReason;
use crate::msg::{AppIdx, ChanKey, MemberInfo, Msg};
use crate::shared::App;
use crate::tls::{ClientStream, ConnReader, ConnWriter, Received};

/// What a `Conn` may take (checked by a unit test; 280 bytes in the debug test profile): an
/// idle connection's bytes are mostly this struct and its task (tests/idle_memory.rs).
#[cfg(test)]
const CONN_BYTES_BUDGET: usize = 300;
/// Largest number of frames handed to one `writev` (Linux IOV_MAX is 1024).
pub(crate) const MAX_IOV: usize = 1024;
/// Read buffer size for the handshake's request head (an established connection reads into
/// the core's scratch, crate::read_scratch).
const SMALL_READ: usize = 256;

pub(crate) enum SubState {
    /// Sent to the owner, not yet acknowledged. `silent`: the server subscribed on the client's
    /// behalf (sign-in) and no `subscription_succeeded` is owed unless the client asks.
    Pending {
        gen: u32,
        silent: bool,
    },
    Active,
}

pub(crate) struct Sub {
    pub state: SubState,
    /// Presence channels: the user id this connection joined as.
    pub presence_user: Option<Arc<str>>,
}

pub(crate) struct ConnState {
    pub subs: crate::maps::ConnMap<ChannelName, Sub>,
    /// Signed-in user (pusher:signin).
    pub user: Option<Arc<str>>,
    gen: u32,
    client_events: TokenBucket,
    control: TokenBucket,
    /// `pusher:ping` messages and WebSocket pings (`pings_per_minute`, ping_budget.rs).
    pings: crate::ping_budget::PingBudget,
    /// Signed in by a `?token=` without the `write` permission: no client events.
    read_only: bool,
    /// Signed in by a `?token=` without the `read` permission: no subscriptions.
    no_read: bool,
    /// Signed in by a `?token=` without the `presence` permission: no presence channels.
    no_presence: bool,
}

impl ConnState {
    pub(crate) fn new(client_events_per_sec: u32, control_per_sec: u32) -> ConnState {
        ConnState {
            subs: crate::maps::ConnMap::default(),
            user: None,
            gen: 0,
            client_events: TokenBucket::new(client_events_per_sec),
            control: TokenBucket::new(control_per_sec),
            pings: Default::default(),
            read_only: false,
            no_read: false,
            no_presence: false,
        }
    }
}

impl ConnState {
    /// Takes a token of the connection's client-event budget (user-socket messages too).
    pub(crate) fn allow_client_message(&mut self) -> bool {
        self.client_events.take()
    }
}

pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
    pub(crate) why: CloseReason,
    /// The close frame is already in `frames` (the rest of a close frame a flush pass wrote
    /// in part): the writer must not send it again.
    pub(crate) framed: bool,
}

/// A connection's queued frames: one frame (the common case: one event per pass) is held
/// inline, so pushing it allocates nothing and an emptied queue, reset to `Frames::new()`,
/// holds no heap.
pub(crate) type Frames = smallvec::SmallVec<[Bytes; 1]>;

#[derive(Default)]
pub(crate) struct Outbound {
    pub(crate) frames: Frames,
    pub(crate) bytes: usize,
    /// Boxed: a connection closes once, and an open one should not carry the close's fields.
    pub(crate) closing: Option<Box<Closing>>,
    /// The close frame went out (or the socket died): nothing more is queued.
    pub(crate) done: bool,
}

pub(crate) struct Conn {
    /// The connection's id on its core is `socket_id.lo` ([`Conn::id`]); its text form is
    /// rendered when needed (auth signatures, activity records), not kept.
    pub socket_id: SocketId,
    pub app: AppIdx,
    /// The app key this connection connected with (revoking it closes the connection).
    pub key: Box<str>,
    /// An alrt user socket (`/ws`): plain JSON, not the Pusher protocol.
    pub user_socket: bool,
    /// An SSE stream (`GET /apps/{id}/stream`, sse.rs): `text/event-stream`, not WebSocket.
    pub sse: bool,
    budget: usize,
    pub(crate) out: RefCell<Outbound>,
    writer_waker: Cell<Option<Waker>>,
    /// Who writes the queue now: the flush pass (idle or queued) or a writer task.
    pub(crate) wstate: Cell<crate::flush::WState>,
    /// The socket's writing half, or the writer task holding it (crate::flush).
    pub(crate) writer: Cell<crate::flush::Writer>,
    /// When the writer's current `writev` started (None when idle): the core's sweep enforces
    /// the write deadline on it.
    pub write_started: Cell<Option<Instant>>,
    /// Last time the client sent anything, and when we pinged it (liveness, see the sweep).
    pub last_read: Cell<Stamp>,
    pub ping_sent: Cell<Option<Stamp>>,
    pub state: RefCell<ConnState>,
    pub(crate) fd: RawFd,
    /// Why the connection ended, recorded once for metrics.
    end_reason: Cell<Option<CloseReason>>,
}

impl Conn {
    /// The connection's id on its core (unique per core; the socket id's part after the dot).
    #[inline]
    pub fn id(&self) -> u64 {
        self.socket_id.lo
    }

    /// Queues a frame (a reference-count bump, not a copy). Over the byte budget the connection
    /// is closed as a slow consumer and its queue dropped.
    #[inline]
    pub fn push(self: &Rc<Self>, frame: Bytes) {
        let mut out = self.out.borrow_mut();
        if out.closing.is_some() || out.done {
            return;
        }
        out.bytes += frame.len();
        if out.bytes > self.budget {
            out.frames.clear();
            out.bytes = 0;
            out.closing = Some(Box::new(Closing {
                code: close::SLOW_CONSUMER,
                reason: "Slow consumer: outbound buffer limit exceeded".into(),
                why: CloseReason::SlowConsumerBudget,
                framed: false,
            }));
            drop(out);
            self.set_end_reason(CloseReason::SlowConsumerBudget);
            if self.write_started.get().is_some() {
                // The writer is stuck on a full socket: the client is not reading, so a close
                // frame would never arrive. Cut the connection now instead of waiting out the
                // write deadline while memory stays pinned.
                self.shutdown_socket();
            }
            self.notify();
            return;
        } else {
            if out.frames.len() == 1 && !out.frames.spilled() {
                // A second frame before the pass: under load several more follow, so the
                // queue goes from inline straight to room for 8 (one allocation, not 3).
                out.frames.reserve(7);
            }
            out.frames.push(frame);
        }
        drop(out);
        self.notify();
    }

    /// Asks the writer to flush what is queued, then send a close frame and end the connection.
    pub fn close(self: &Rc<Self>, code: u16, reason: &str, why: CloseReason) {
        let mut out = self.out.borrow_mut();
        if out.closing.is_some() || out.done {
            return;
        }
        out.closing = Some(Box::new(Closing {
            code,
            reason: reason.into(),
            why,
            framed: false,
        }));
        drop(out);
        self.notify();
    }

    /// Output is due: the flush pass's connections are put on the core's dirty list once (no
    /// wake-up per connection); a connection a writer task holds wakes that task.
    #[inline]
    pub(crate) fn notify(self: &Rc<Self>) {
        match self.wstate.get() {
            crate::flush::WState::Idle => {
                self.wstate.set(crate::flush::WState::Queued);
                crate::flush::mark(self.clone());
            }
            crate::flush::WState::Queued => {}
            crate::flush::WState::Task => self.wake_writer(),
        }
    }

    /// What ends the stream on the wire: a WebSocket close frame, or an SSE stream's
    /// `event: close`.
    pub(crate) fn close_bytes(&self, code: u16, reason: &str) -> Bytes {
        if self.sse {
            crate::sse::close_bytes(code, reason)
        } else {
            ws::close_frame(code, reason)
        }
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        let out = self.out.borrow();
        out.closing.is_some() || out.done
    }

    pub(crate) fn set_end_reason(&self, r: CloseReason) {
        if self.end_reason.get().is_none() {
            self.end_reason.set(Some(r));
        }
    }

    /// Why the connection ended, if it has (tests).
    #[cfg(test)]
    pub(crate) fn end_reason(&self) -> Option<CloseReason> {
        self.end_reason.get()
    }

    /// Wakes a pending read so the reader notices the end of the connection.
    pub(crate) fn shutdown_socket(&self) {
        // SAFETY: `fd` is the connection's socket, owned by the read/write halves that are alive
        // for as long as this `Conn`'s tasks run; shutdown(2) does not close or invalidate it.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }
}

impl Conn {
    /// An SSE stream's connection (sse.rs): same queue, budget, writer and sweep as a
    /// WebSocket's; it never reads client messages.
    pub(crate) fn new_sse(core: &Core, app: AppIdx, key: Box<str>, fd: RawFd) -> Conn {
        let id = core.next_conn_id();
        let socket_id = SocketId::new(core.random() % 10_000_000_000, id);
        Conn {
            socket_id,
            app,
            key,
            user_socket: false,
            sse: true,
            budget: core.shared.config.outbound_budget_bytes,
            out: RefCell::new(Outbound::default()),
            writer_waker: Cell::new(None),
            wstate: Cell::new(crate::flush::WState::Task),
            writer: Cell::new(crate::flush::Writer::None),
            write_started: Cell::new(None),
            last_read: Cell::new(Stamp::of(core.shared.now())),
            ping_sent: Cell::new(None),
            state: RefCell::new(ConnState::new(1, 1)),
            fd,
            end_reason: Cell::new(None),
        }
    }

    /// A connection without a socket (its writer never runs): for the bench hook, which
    /// measures `Core::deliver` + `Conn::push` themselves. The writer counts as parked.
    pub(crate) fn detached(socket_id: SocketId, app: AppIdx, budget: usize) -> Conn {
        Conn {
            socket_id,
            app,
            key: "".into(),
            user_socket: false,
            sse: false,
            budget,
            out: RefCell::new(Outbound::default()),
            writer_waker: Cell::new(Some(Waker::noop().clone())),
            wstate: Cell::new(crate::flush::WState::Task),
            writer: Cell::new(crate::flush::Writer::None),
            write_started: Cell::new(None),
            last_read: Cell::new(Stamp::of(Instant::now())),
            ping_sent: Cell::new(None),
            state: RefCell::new(ConnState::new(1, 1)),
            fd: -1,
            end_reason: Cell::new(None),
        }
    }

    /// The frames queued and not yet written (tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> Vec<Bytes> {
        self.out.borrow().frames.to_vec()
    }

    /// What the writer does after a write, without a socket: releases the queued frames
    /// (keeping the queue's capacity) and parks again. Returns how many there were.
    pub(crate) fn drain_detached(&self) -> usize {
        let mut out = self.out.borrow_mut();
        let n = out.frames.len();
        out.frames.clear();
        out.bytes = 0;
        drop(out);
        self.writer_waker.set(Some(Waker::noop().clone()));
        n
    }
}

/// A token bucket in 16 bytes: tokens in thousandths, refilled by the milliseconds elapsed on a
/// process-wide monotonic clock. The clock is a `u32` of milliseconds (it wraps after ~49
/// days): an interval is a wrapping difference, so a bucket untouched for a multiple of ~49
/// days may refill less than full once, never more.
struct TokenBucket {
    milli_tokens: u64,
    rate: u32,
    last_ms: u32,
}

/// The process-wide origin of the compact clocks ([`Stamp`], token buckets): the first time
/// either is asked for, before any engine clock reading is converted.
fn clock_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`clock_epoch`] (the token buckets' clock).
fn bucket_clock_ms() -> u32 {
    clock_epoch().elapsed().as_millis() as u32
}

/// A point on the engine's clock in 4 bytes (a connection keeps two: when the client last
/// sent something and when it was pinged): milliseconds since [`clock_epoch`], wrapping.
/// Intervals are wrapping differences, exact while shorter than ~24 days; the intervals that
/// matter (activity timeout, pong timeout, SSE heartbeat) are minutes, and a connection's
/// last-read time is renewed or the connection closed within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp(std::num::NonZeroU32);

impl Stamp {
    /// The stamp of `t` (an engine clock reading, `Shared::now`). 0 is nudged to 1 ms so
    /// that `Option<Stamp>` stays 4 bytes.
    pub(crate) fn of(t: Instant) -> Stamp {
        let ms = t.saturating_duration_since(clock_epoch()).as_millis() as u32;
        Stamp(std::num::NonZeroU32::new(ms).unwrap_or(std::num::NonZeroU32::MIN))
    }

    /// Time from `self` to `now` (zero if `now` is not later).
    pub(crate) fn until(self, now: Stamp) -> Duration {
        let d = now.0.get().wrapping_sub(self.0.get());
        // A difference in the upper half is `now` before `self` (a reading taken earlier).
        Duration::from_millis(if d > u32::MAX / 2 { 0 } else { u64::from(d) })
    }
}

impl TokenBucket {
    fn new(per_sec: u32) -> TokenBucket {
        TokenBucket {
            milli_tokens: u64::from(per_sec) * 1000,
            rate: per_sec,
            last_ms: bucket_clock_ms(),
        }
    }
    fn take(&mut self) -> bool {
        self.take_at(bucket_clock_ms())
    }
    fn take_at(&mut self, now_ms: u32) -> bool {
        let dt = u64::from(now_ms.wrapping_sub(self.last_ms));
        self.last_ms = now_ms;
        let cap = u64::from(self.rate) * 1000;
        self.milli_tokens = (self.milli_tokens + dt * u64::from(self.rate)).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// The frames a writer hands to one `writev`: owned `Bytes` plus their iovecs. Both vectors
/// are reused across writes, so a steady-state write allocates nothing.
#[derive(Default)]
struct FrameBatch {
    frames: Frames,
    iov: Vec<libc::iovec>,
    /// First iovec not yet fully written.
    start: usize,
}

impl FrameBatch {
    fn prepare(&mut self) -> usize {
        self.iov.clear();
        self.start = 0;
        let mut total = 0;
        for f in &self.frames {
            self.iov.push(libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            });
            total += f.len();
        }
        total
    }

    /// Skips `n` written bytes (a partial write).
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.start < self.iov.len() {
            let v = &mut self.iov[self.start];
            if n >= v.iov_len {
                n -= v.iov_len;
                self.start += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the same Bytes buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.iov.clear();
        self.start = 0;
    }
}

// SAFETY: `iov[start..]` points into the `Bytes` held in `frames`, which the batch owns; the
// runtime owns the batch for the whole write, neither vector is touched meanwhile, and `Bytes`
// storage never moves, so every pointer stays valid and the count matches.
unsafe impl monoio::buf::IoVecBuf for FrameBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

/// Writes the whole batch: plaintext with as many `writev` calls as partial writes require,
/// TLS by encrypting each shared frame into the connection's session (crate::tls).
async fn write_batch(
    w: &mut ConnWriter,
    batch: FrameBatch,
    total: usize,
) -> (std::io::Result<()>, FrameBatch) {
    w.write_frames(batch, total, FrameBatch::advance).await
}

/// Entry point for an accepted socket.
pub(crate) async fn handle(core: Rc<Core>, stream: TcpStream) {
    // Admission (crate::admission): process-wide caps first, then, for a client that is not
    // behind a trusted proxy, its per-address limits, all before a byte is read. A refused
    // socket is simply closed. The permits are held for the connection's lifetime (the
    // handshake permit until the request head is in).
    let shared = core.shared.clone();
    let adm = &shared.admission;
    let (conn_permit, mut handshake_permit) = match adm.accept() {
        Ok(p) => p,
        Err(r) => {
            adm.refuse(r);
            return;
        }
    };
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let proxied = peer.is_some_and(|p| adm.is_trusted_proxy(p));
    let mut ip_permit = None;
    if let (Some(p), false) = (peer, proxied) {
        match adm.admit_ip(p).and_then(|permit| {
            adm.admit_handshake_ip(&mut handshake_permit, p)
                .map(|_| permit)
        }) {
            Ok(permit) => ip_permit = permit,
            Err(r) => {
                adm.refuse(r);
                return;
            }
        }
    }
    // A TLS listener: the TLS handshake first, bounded by the handshake timeout (its state in
    // a boxed future, freed once done; a failure is counted by reason and closes the socket).
    // A trusted proxy speaking the PROXY protocol sends its header before the TLS handshake.
    let mut proxy_header: Option<Option<std::net::IpAddr>> = None;
    let stream = match shared.tls.get() {
        None => ClientStream::Plain(stream),
        Some(acceptor) => {
            let mut tcp = stream;
            let mut initial = Vec::new();
            if proxied && adm.config.proxy_protocol {
                let limit = shared.config.handshake_timeout;
                match Box::pin(read_proxy_header(&mut tcp, limit)).await {
                    Ok((source, rest)) => {
                        if let Some(Err(r)) =
                            source.map(|c| adm.admit_handshake_ip(&mut handshake_permit, c))
                        {
                            adm.refuse(r);
                            return;
                        }
                        proxy_header = Some(source);
                        initial = rest;
                    }
                    Err(Some(r)) => {
                        adm.refuse(r);
                        return;
                    }
                    Err(None) => {
                        core.metrics().closed(CloseReason::BadHandshake);
                        return;
                    }
                }
            }
            let limit = shared.config.handshake_timeout;
            match Box::pin(acceptor.accept_with(tcp, initial, limit)).await {
                Ok(s) => s,
                Err(_) => return,
            }
        }
    };
    // The handshake's state (read buffers, the parsed request head) lives in its own boxed
    // future and is freed before the connection's long-lived loop starts: an idle
    // connection keeps only what `run` needs.
    let accepted = Box::pin(handshake(
        core.clone(),
        stream,
        Peer {
            addr: peer,
            proxied,
            proxy_header,
        },
        adm,
        handshake_permit,
        &mut ip_permit,
    ))
    .await;
    match accepted {
        Some(Accepted::WebSocket(app, key, stream, leftover, token)) => {
            // The connection's long-lived task holds only what its loop needs: everything
            // above (the handshake's state, this task) is freed once it is spawned.
            let permits = ConnPermits::new(shared.clone(), conn_permit, ip_permit);
            let (conn, reader, pending) = establish(&core, app, key, stream, leftover, token);
            let task = run(core, conn, reader, pending, permits);
            crate::bench_support::note_conn_future(std::mem::size_of_val(&task));
            monoio::spawn(task);
        }
        Some(Accepted::Sse(req, stream)) => crate::sse::run(core, req, stream).await,
        None => {}
    }
}

/// A request head that became a long-lived connection of this core.
enum Accepted {
    /// A WebSocket: its app, the key it connected with, the stream, bytes already read past
    /// the head, the verified `?token=` claims.
    WebSocket(AppIdx, Box<str>, ClientStream, Vec<u8>, Option<jwt::Claims>),
    /// An SSE stream (`GET /apps/{id}/stream`), admitted.
    Sse(crate::sse::SseRequest, ClientStream),
}

/// The TCP peer of a connection and whether it is a trusted proxy.
#[derive(Clone, Copy)]
struct Peer {
    addr: Option<std::net::IpAddr>,
    proxied: bool,
    /// On a TLS port the PROXY header is read before the TLS handshake: `Some(source)` then.
    proxy_header: Option<Option<std::net::IpAddr>>,
}

/// Reads a trusted proxy's PROXY v1/v2 header off the raw socket (a TLS port: it precedes the
/// ClientHello), bounded by `limit` and by the header's own size limits. `Ok((source, the
/// bytes after the header))`; `Err(Some(_))` for a bad header, `Err(None)` for a timeout or
/// a closed socket.
async fn read_proxy_header(
    tcp: &mut TcpStream,
    limit: Duration,
) -> Result<(Option<std::net::IpAddr>, Vec<u8>), Option<Refusal>> {
    let deadline = monoio::time::Instant::now() + limit;
    let mut buf: Vec<u8> = Vec::new();
    let mut rbuf = Vec::with_capacity(SMALL_READ);
    loop {
        let (res, b) = match monoio::time::timeout_at(deadline, tcp.read(rbuf)).await {
            Ok(x) => x,
            Err(_) => return Err(None),
        };
        rbuf = b;
        match res {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => buf.extend_from_slice(&rbuf[..n]),
        }
        rbuf.clear();
        match parse_proxy_header(&buf) {
            Ok(None) => continue,
            Ok(Some(h)) => {
                buf.drain(..h.len);
                return Ok((h.source.map(|a| a.ip()), buf));
            }
            Err(_) => return Err(Some(Refusal::ProxyHeader)),
        }
    }
}

/// Reads and answers the HTTP request head. Returns the accepted WebSocket connection (its
/// app, the key it connected with, the stream, bytes already read past the head, the verified
/// `?token=` claims), or `None` when the request was answered otherwise (plain HTTP, refused,
/// failed). For a connection from a trusted proxy the client address comes from the PROXY
/// header or `X-Forwarded-For`, and its per-address permit is taken here (into `ip_permit`).
async fn handshake<'a>(
    core: Rc<Core>,
    mut stream: ClientStream,
    peer: Peer,
    adm: &'a Admission,
    mut handshake_permit: HandshakePermit<'a>,
    ip_permit: &mut Option<IpPermit<'a>>,
) -> Option<Accepted> {
    let _ = stream.set_nodelay(true);
    let shared = core.shared.clone();
    let cfg = &shared.config;
    // 1. Request head, bounded in size and time.
    let deadline = monoio::time::Instant::now() + cfg.handshake_timeout;
    let mut head_buf: Vec<u8> = Vec::new();
    let mut rbuf = Vec::with_capacity(SMALL_READ);
    // A trusted proxy speaking the PROXY protocol names the client in a header of its own.
    let mut proxy_source: Option<std::net::IpAddr> = peer.proxy_header.flatten();
    let mut want_proxy_header =
        peer.proxied && adm.config.proxy_protocol && peer.proxy_header.is_none();
    let head = loop {
        let r = monoio::time::timeout_at(deadline, stream.read(rbuf)).await;
        let (res, b) = match r {
            Ok(x) => x,
            Err(_) => {
                core.metrics().closed(CloseReason::BadHandshake);
                let _ = stream
                    .write_all(http_response(408, "request head timeout"))
                    .await;
                return None;
            }
        };
        rbuf = b;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(n) => head_buf.extend_from_slice(&rbuf[..n]),
        }
        if want_proxy_header {
            match parse_proxy_header(&head_buf) {
                Ok(None) => continue,
                Ok(Some(h)) => {
                    proxy_source = h.source.map(|a| a.ip());
                    if let Some(Err(r)) =
                        proxy_source.map(|c| adm.admit_handshake_ip(&mut handshake_permit, c))
                    {
                        adm.refuse(r);
                        return None;
                    }
                    head_buf.drain(..h.len);
                    want_proxy_header = false;
                    if head_buf.is_empty() {
                        continue;
                    }
                }
                Err(_) => {
                    adm.refuse(Refusal::ProxyHeader);
                    return None;
                }
            }
        }
        match ws::parse_request_head(&head_buf, limits::MAX_REQUEST_HEAD_BYTES) {
            Ok(Some(h)) => break h,
            Ok(None) => continue,
            Err(e) => {
                core.metrics().closed(CloseReason::BadHandshake);
                let status = match e {
                    ws::HandshakeError::TooLarge => 431,
                    ws::HandshakeError::Malformed(_) => 400,
                };
                let _ = stream
                    .write_all(http_response(status, &e.to_string()))
                    .await;
                return None;
            }
        }
    };

    drop(handshake_permit);
    // The client address: behind a trusted proxy, from its PROXY header or X-Forwarded-For;
    // its per-address limits apply now (a direct client's applied at accept).
    let client = match peer.addr {
        Some(p) if peer.proxied => {
            let c = proxy_source.unwrap_or_else(|| {
                client_from_forwarded_for(
                    p,
                    head.headers
                        .iter()
                        .filter(|(n, _)| n == "x-forwarded-for")
                        .map(|(_, v)| v.as_str()),
                    &adm.config.trusted_proxies,
                )
            });
            match adm.admit_ip(c) {
                Ok(permit) => *ip_permit = permit,
                Err(r) => {
                    adm.refuse(r);
                    return None;
                }
            }
            Some(c)
        }
        other => other,
    };

    // 2. Not a WebSocket upgrade: an SSE stream is a subscriber of this core, like a
    //    WebSocket (sse.rs); anything else is plain HTTP (health, REST API).
    if head.websocket_key.is_none() && crate::sse::is_stream_request(&head) {
        return match crate::sse::admit(&core, &head, client) {
            Ok(req) => Some(Accepted::Sse(req, stream)),
            Err(refusal) => {
                refuse_stream(&core, &mut stream, refusal).await;
                None
            }
        };
    }
    let Some(ws_key) = head.websocket_key.clone() else {
        if let Some(svc) = core.shared_http() {
            // A later request on the kept-alive connection may be an SSE stream: handed back.
            let (mut stream, head_bytes) = svc.serve(stream, head_buf, client).await?;
            let later = ws::parse_request_head(&head_bytes, limits::MAX_REQUEST_HEAD_BYTES);
            let Ok(Some(later)) = later else { return None };
            if !crate::sse::is_stream_request(&later) {
                return None;
            }
            return match crate::sse::admit(&core, &later, client) {
                Ok(req) => Some(Accepted::Sse(req, stream)),
                Err(refusal) => {
                    refuse_stream(&core, &mut stream, refusal).await;
                    None
                }
            };
        } else {
            let resp = if head.method == "GET" && head.path == "/health" {
                health_response(&core)
            } else {
                http_json(404, "{\"error\":\"not found\",\"code\":\"not_found\"}")
            };
            let _ = stream.write_all(resp).await;
        }
        return None;
    };

    // 3. Upgrade, then accept or reject with a Pusher close code (never refuse the upgrade:
    //    pusher-js only stops retrying on a close code it receives).
    if stream
        .write_all(ws::accept_response(&ws_key))
        .await
        .0
        .is_err()
    {
        return None;
    }
    let leftover = head_buf.split_off(head.head_len.min(head_buf.len()));
    // `GET /ws?token=<jwt>`: the alrt user socket (plain JSON for one user; user_socket.rs).
    let user_socket = head.path.trim_end_matches('/') == "/ws";
    let user_claims = if user_socket {
        match crate::user_socket::verify_token(&core.shared, &head.query) {
            Ok(c) => Some(c),
            Err(e) => {
                core.metrics().auth_failures.inc();
                core.metrics().closed(CloseReason::Refused);
                let frame = ws::close_frame(crate::user_socket::CLOSE_INVALID_TOKEN, &e);
                let _ =
                    monoio::time::timeout(Duration::from_secs(2), stream.write_all(frame)).await;
                let _ = stream.shutdown().await;
                return None;
            }
        }
    } else {
        None
    };
    let params = match user_claims.as_ref() {
        Some((key, _)) => Ok(ws::ConnectParams {
            app_key: key.to_string(),
            protocol: 7,
            client: None,
            version: None,
        }),
        None => ws::parse_connect(&head.path, &head.query),
    };
    let params = match params {
        Ok(p) => p,
        Err(code) => {
            reject(
                &core,
                &mut stream,
                Dialect::Pusher,
                code,
                close::reason(code),
                CloseReason::Refused,
            )
            .await;
            return None;
        }
    };
    // The apps table is read once, without a lock; the guard is dropped before any await. A
    // management change stores its new table before it broadcasts the closes, and nothing
    // awaits between this lookup and the connection's registration on the core, so a
    // connection is either refused here or closed by that broadcast.
    let found = core.shared.apps().by_key(&params.app_key).map(|a| {
        (
            a.idx,
            a.config.dialect,
            a.config.enabled,
            a.config.max_connections,
            a.connections.clone(),
            a.config.allowed_origins.clone(),
        )
    });
    let Some((app_idx, dialect, enabled, max_connections, connections, allowed_origins)) = found
    else {
        let msg = format!("App key {} does not exist.", params.app_key);
        reject(
            &core,
            &mut stream,
            Dialect::Pusher,
            close::APP_NOT_FOUND,
            &msg,
            CloseReason::Refused,
        )
        .await;
        return None;
    };
    if !origin_allowed(&allowed_origins, head.header("origin")) {
        adm.refuse(Refusal::Origin);
        let msg = format!(
            "Origin {:?} is not allowed to connect to this app",
            head.header("origin").unwrap_or_default()
        );
        reject(
            &core,
            &mut stream,
            dialect,
            close::UNAUTHORIZED,
            &msg,
            CloseReason::Refused,
        )
        .await;
        return None;
    }
    if !enabled {
        reject(
            &core,
            &mut stream,
            dialect,
            close::APP_DISABLED,
            "App is disabled",
            CloseReason::Refused,
        )
        .await;
        return None;
    }
    if core.shutting_down.get() {
        reject(
            &core,
            &mut stream,
            dialect,
            close::RECONNECT,
            "Server shutting down",
            CloseReason::Shutdown,
        )
        .await;
        return None;
    }
    // `?token=<jwt>` (a LatteStream access token): the connection is signed in from the start.
    let token = match user_claims {
        Some((_, claims)) => Ok(Some(claims)),
        None => verify_connect_token(&core.shared.apps().app(app_idx).config, &head.query),
    };
    let token = match token {
        Ok(t) => t,
        Err(e) => {
            core.metrics().auth_failures.inc();
            let msg = format!("Connection unauthorized: {e}");
            reject(
                &core,
                &mut stream,
                dialect,
                close::UNAUTHORIZED,
                &msg,
                CloseReason::Refused,
            )
            .await;
            return None;
        }
    };
    let n = connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if max_connections > 0 && n >= max_connections {
        connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        reject(
            &core,
            &mut stream,
            dialect,
            close::OVER_QUOTA,
            "Application is over connection quota",
            CloseReason::OverQuota,
        )
        .await;
        return None;
    }
    Some(Accepted::WebSocket(
        app_idx,
        params.app_key.as_str().into(),
        stream,
        leftover,
        token,
    ))
}

/// The `?token=` of a connect request, verified: signed with one of the app's secrets, issued
/// for this app as an access token, not expired. `Ok(None)` without a token.
fn verify_connect_token(
    app: &crate::config::AppConfig,
    query: &str,
) -> Result<Option<jwt::Claims>, String> {
    let Some((_, token)) = ws::parse_query(query)
        .into_iter()
        .find(|(k, _)| k == "token")
    else {
        return Ok(None);
    };
    let now = crate::core::unix_now_secs();
    let claims = jwt::Jwt::parse(&token)
        .and_then(|t| t.verify(&app.secrets, now))
        .map_err(|e| e.to_string())?;
    if claims.app != app.id || claims.scope != "access" {
        return Err("the token was not issued for this app".into());
    }
    if ChannelName::parse(&format!("#server-to-user-{}", claims.sub)).is_err() {
        return Err("the token's user id is not valid".into());
    }
    Ok(Some(claims))
}

/// Answers a refused SSE stream request (4xx/503 JSON) and closes.
async fn refuse_stream(core: &Core, stream: &mut ClientStream, refusal: crate::sse::Refusal) {
    core.metrics().closed(CloseReason::Refused);
    let _ =
        monoio::time::timeout(Duration::from_secs(2), stream.write_all(refusal.response())).await;
    let _ = stream.shutdown().await;
}

async fn reject(
    core: &Core,
    stream: &mut ClientStream,
    d: Dialect,
    code: u16,
    msg: &str,
    why: CloseReason,
) {
    core.metrics().closed(why);
    let mut out = pusher::error_frame(d, Some(code), msg).to_vec();
    out.extend_from_slice(&ws::close_frame(code, msg));
    let _ = monoio::time::timeout(Duration::from_secs(2), stream.write_all(out)).await;
    let _ = stream.shutdown().await;
}

/// The upgraded connection, set up synchronously: registered on the core, the writer spawned,
/// `connection_established` queued, a `?token=` signed in, and the bytes read past the request
/// head decoded. Returns what the connection's task needs: the connection, its reader, the
/// writer task, and the decoder when those bytes ended mid-frame.
fn establish(
    core: &Rc<Core>,
    app_idx: AppIdx,
    key: Box<str>,
    stream: ClientStream,
    leftover: Vec<u8>,
    token: Option<jwt::Claims>,
) -> (Rc<Conn>, ConnReader, Option<Box<FrameDecoder>>) {
    let shared = core.shared.clone();
    let cfg = &shared.config;
    let (dialect, client_events_per_sec) = {
        let apps = shared.apps();
        let a = &apps.app(app_idx).config;
        (a.dialect, a.client_events_per_sec)
    };
    let id = core.next_conn_id();
    let socket_id = SocketId::new(core.random() % 10_000_000_000, id);
    let fd = stream.as_raw_fd();
    let conn = Rc::new(Conn {
        socket_id,
        app: app_idx,
        key,
        user_socket: token.as_ref().is_some_and(|c| c.scope == "user"),
        sse: false,
        budget: cfg.outbound_budget_bytes,
        out: RefCell::new(Outbound::default()),
        writer_waker: Cell::new(None),
        wstate: Cell::new(crate::flush::WState::Task),
        writer: Cell::new(crate::flush::Writer::None),
        write_started: Cell::new(None),
        last_read: Cell::new(Stamp::of(core.shared.now())),
        ping_sent: Cell::new(None),
        state: RefCell::new(ConnState::new(
            client_events_per_sec,
            cfg.control_messages_per_sec,
        )),
        fd,
        end_reason: Cell::new(None),
    });
    core.conns.borrow_mut().insert(id, conn.clone());
    let m = core.metrics();
    m.connections_opened.inc();
    m.connections_current.inc();

    let (reader, writer) = stream.into_split();
    crate::flush::attach(core, &conn, writer);
    if !conn.user_socket {
        conn.push(pusher::connection_established_frame(
            dialect,
            &socket_id,
            cfg.activity_timeout_secs,
        ));
    }
    core.record_activity(
        app_idx,
        crate::activity::ActivityKind::Connect,
        None,
        Some(conn.socket_id),
        token.as_ref().map(|c| c.sub.as_str()),
        None,
    );
    if let Some(claims) = token {
        let apps = shared.apps();
        if conn.user_socket {
            crate::user_socket::start(core, &conn, apps.app(app_idx), claims);
        } else {
            token_signin(core, &conn, apps.app(app_idx), claims);
        }
    }
    let mut pending = None;
    if !leftover.is_empty() {
        decode_into(&mut pending, cfg.max_message_bytes, &leftover);
    }
    (conn, reader, pending)
}

/// Feeds `bytes` to the connection's decoder: the boxed one when a frame is mid-way, else a
/// new one on the stack, boxed only if the bytes end mid-frame (or leave messages to handle).
fn decode_into(pending: &mut Option<Box<FrameDecoder>>, max_message: usize, bytes: &[u8]) {
    match pending {
        Some(d) => d.handle_bytes(bytes),
        None => {
            let mut d = FrameDecoder::new(Role::Server, max_message);
            d.handle_bytes(bytes);
            if !d.is_idle() {
                *pending = Some(Box::new(d));
            }
        }
    }
}

/// How a connection's read step ended.
enum Step {
    /// Go on reading.
    Continue,
    /// The connection ends (the reason is recorded).
    End,
}

/// Handles every message the decoder holds, against the current apps table (a lock-free load
/// per read, dropped before the next await: changed limits apply to the next message), and
/// drops the decoder once it is idle so an idle connection keeps none.
fn handle_decoded(core: &Core, conn: &Rc<Conn>, pending: &mut Option<Box<FrameDecoder>>) -> Step {
    let Some(decoder) = pending.as_mut() else {
        return Step::Continue;
    };
    let apps = core.shared.apps();
    let app = apps.app(conn.app);
    loop {
        match decoder.poll_message() {
            Ok(Some(msg)) => {
                if !on_frame(core, conn, app, msg) {
                    return Step::End;
                }
            }
            Ok(None) => break,
            Err(e) => {
                core.metrics().protocol_errors.inc();
                conn.set_end_reason(CloseReason::ProtocolError);
                conn.close(e.close_code(), &e.to_string(), CloseReason::ProtocolError);
                return Step::End;
            }
        }
    }
    if decoder.is_idle() {
        *pending = None;
    }
    Step::Continue
}

/// One read: a nonblocking receive into the core's scratch (crate::read_scratch), every
/// complete frame decoded and handled straight from it; an incomplete frame's bytes stay in
/// the connection's boxed decoder.
fn read_step(
    core: &Core,
    conn: &Rc<Conn>,
    reader: &mut ConnReader,
    pending: &mut Option<Box<FrameDecoder>>,
    first: bool,
) -> Step {
    let max_message = core.shared.config.max_message_bytes;
    let mut got = false;
    let res = crate::read_scratch::with(|scratch| {
        let sink = |b: &[u8]| {
            got = true;
            decode_into(pending, max_message, b);
        };
        if first {
            reader.drain_buffered(scratch, sink)
        } else {
            reader.recv(scratch, sink)
        }
    });
    if got {
        conn.last_read.set(Stamp::of(core.shared.now()));
        conn.ping_sent.set(None);
    }
    let ended = match res {
        Ok(Received::Data) => false,
        Ok(Received::End) => {
            conn.set_end_reason(CloseReason::ClientClosed);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => {
            conn.set_end_reason(CloseReason::IoError);
            true
        }
    };
    if reader.wants_flush() {
        conn.wake_writer();
    }
    // Messages that arrived before the end are still handled (a close frame is answered).
    match handle_decoded(core, conn, pending) {
        Step::End => Step::End,
        Step::Continue if ended => Step::End,
        Step::Continue => Step::Continue,
    }
}

/// The established connection's task: waits for readability holding no buffer, reads, and
/// cleans up when the connection ends. Its state is what the loop needs and nothing else
/// (checked by the future-size test, tests/idle_memory.rs).
async fn run(
    core: Rc<Core>,
    conn: Rc<Conn>,
    mut reader: ConnReader,
    mut pending: Option<Box<FrameDecoder>>,
    permits: ConnPermits,
) {
    // Bytes read with the request head, and what a TLS session already holds.
    let mut step = match handle_decoded(&core, &conn, &mut pending) {
        Step::End => Step::End,
        Step::Continue => read_step(&core, &conn, &mut reader, &mut pending, true),
    };
    while let Step::Continue = step {
        core.flush();
        if conn.is_closing() {
            break;
        }
        // No timer per read: the core's once-a-second sweep (`Core::sweep_connections`) pings
        // silent connections and closes those that do not answer (a connection that went
        // silent mid-frame too).
        if reader.readable().await.is_err() {
            conn.set_end_reason(CloseReason::IoError);
            break;
        }
        step = read_step(&core, &conn, &mut reader, &mut pending, false);
    }
    drop(pending);
    // Let the writer send what is queued (and the close frame); it has its own deadlines.
    if !conn.is_closing() {
        conn.close(close::NORMAL, "", CloseReason::ClientClosed);
    }
    crate::flush::finish(&core, &conn).await;
    cleanup(&core, &conn);
    drop(permits);
}

/// Handles one decoded WebSocket message. Returns false when the connection must end.
fn on_frame(core: &Core, conn: &Rc<Conn>, app: &App, msg: Message) -> bool {
    core.metrics().messages_in.inc();
    app.counters.messages_in.add(core.idx, 1);
    let d = app.config.dialect;
    if conn.user_socket {
        if let Message::Text(text) = &msg {
            crate::user_socket::on_text(core, conn, app, &text[..]);
            return true;
        }
    }
    match msg {
        Message::Text(text) => {
            // One JSON reading, borrowing from the frame: the message is not copied.
            match pusher::parse_client_message(d, &text) {
                Ok(m) => on_message(core, conn, app, m),
                Err(e) => {
                    core.metrics().protocol_errors.inc();
                    conn.push(pusher::error_frame(
                        d,
                        None,
                        &format!("Invalid message format: {e}"),
                    ));
                }
            }
            // A message that closed the connection (a ping over budget) ends the reading.
            !conn.is_closing()
        }
        Message::Binary(_) => {
            conn.push(pusher::error_frame(
                d,
                None,
                "Binary frames are not supported",
            ));
            true
        }
        Message::Ping(p) => {
            if !ping_allowed(core, conn) {
                return false;
            }
            conn.push(ws::pong_frame(&p));
            true
        }
        Message::Pong(_) => true,
        Message::Close(code, _) => {
            conn.set_end_reason(CloseReason::ClientClosed);
            let echo = match code {
                Some(c) if (1000..=4999).contains(&c) && c != 1005 && c != 1006 => c,
                _ => close::NORMAL,
            };
            conn.close(echo, "", CloseReason::ClientClosed);
            false
        }
    }
}

/// Spends one ping of the connection's `pings_per_minute` budget; over it the connection is
/// closed with 4301 and counted as `ping_rate_limit` (ping_budget.rs), and false returned.
fn ping_allowed(core: &Core, conn: &Rc<Conn>) -> bool {
    let now = crate::ping_budget::clock_us(core.shared.now());
    let per_minute = core.shared.config.pings_per_minute;
    if conn.state.borrow_mut().pings.allow(now, per_minute) {
        return true;
    }
    conn.set_end_reason(CloseReason::PingRateLimit);
    conn.close(
        crate::ping_budget::CLOSE_CODE,
        crate::ping_budget::CLOSE_REASON,
        CloseReason::PingRateLimit,
    );
    false
}

fn on_message(core: &Core, conn: &Rc<Conn>, app: &App, m: ClientMessage) {
    let d = app.config.dialect;
    match m {
        ClientMessage::Ping if !ping_allowed(core, conn) => {}
        ClientMessage::Ping => conn.push(pusher::pong_frame(d)),
        ClientMessage::Pong => {}
        ClientMessage::Subscribe {
            channel,
            auth,
            channel_data,
        } => {
            if !conn.state.borrow_mut().control.take() {
                core.metrics().control_rate_limited.inc();
                conn.push(pusher::error_frame(
                    d,
                    None,
                    "Too many subscription requests, slow down",
                ));
                return;
            }
            subscribe(
                core,
                conn,
                app,
                &channel,
                auth.as_deref(),
                channel_data.as_deref(),
            );
        }
        ClientMessage::Unsubscribe { channel } => {
            if let Ok(name) = ChannelName::parse(&channel) {
                unsubscribe(core, conn, app, name);
            }
        }
        ClientMessage::Signin { auth, user_data } => {
            if !conn.state.borrow_mut().control.take() {
                core.metrics().control_rate_limited.inc();
                conn.push(pusher::error_frame(d, None, "Too many requests, slow down"));
                return;
            }
            signin(core, conn, app, &auth, &user_data);
        }
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            client_event(core, conn, app, &event, &channel, data.as_deref());
        }
        ClientMessage::Unknown { event } => {
            // "Malformed or unknown client messages" (ringcast_protocol_errors_total).
            core.metrics().protocol_errors.inc();
            conn.push(pusher::error_frame(
                d,
                None,
                &format!("Unsupported event: {event}"),
            ));
        }
    }
}

fn sub_error(
    core: &Core,
    conn: &Rc<Conn>,
    d: Dialect,
    channel: &str,
    kind: &str,
    msg: &str,
    status: u16,
) {
    core.metrics().auth_failures.inc();
    conn.push(pusher::error_frame(d, None, msg));
    conn.push(pusher::subscription_error_frame(
        d, channel, kind, msg, status,
    ));
}

fn subscribe(
    core: &Core,
    conn: &Rc<Conn>,
    app: &App,
    channel: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
) {
    let d = app.config.dialect;
    let name = match ChannelName::parse(channel) {
        Ok(n) => n,
        Err(e) => {
            let msg = format!("Invalid channel name {channel:?}: {e}");
            sub_error(core, conn, d, channel, "InvalidChannel", &msg, 400);
            return;
        }
    };
    let kind = name.kind();
    let (signed_in, no_read, no_presence) = {
        let st = conn.state.borrow();
        (st.user.clone(), st.no_read, st.no_presence)
    };
    // LatteStream token permissions (a connection signed in by `?token=`): `read` to
    // subscribe at all, `presence` to join presence channels (docs/api.md).
    if no_read {
        let msg = "Subscription refused - the connection's token lacks the read permission";
        sub_error(core, conn, d, channel, "AuthError", msg, 403);
        return;
    }
    if no_presence && kind == ChannelKind::Presence {
        let msg = "Subscription refused - the connection's token lacks the presence permission";
        sub_error(core, conn, d, channel, "AuthError", msg, 403);
        return;
    }
    let mut member = None;
    match kind {
        ChannelKind::Public => {}
        ChannelKind::ServerToUser => {
            if signed_in.as_deref() != name.server_to_user_id() {
                let msg =
                    "Subscribing to a #server-to-user- channel requires signing in as that user";
                sub_error(core, conn, d, channel, "AuthError", msg, 403);
                return;
            }
        }
        ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence => {
            if let Err(e) = ringcast_protocol::verify_channel_auth(
                &conn.key,
                app.config.secrets_for(&conn.key).unwrap_or_default(),
                &conn.socket_id.to_string(),
                &name,
                channel_data,
                auth,
            ) {
                let msg = e.pusher_message(auth);
                sub_error(core, conn, d, channel, "AuthError", &msg, 401);
                return;
            }
            if kind == ChannelKind::Presence {
                member = match channel_data {
                    Some(cd) => match ringcast_protocol::parse_channel_data(
                        cd,
                        app.config.max_user_info_bytes,
                    ) {
                        Ok(m) => Some(MemberInfo {
                            user_id: m.user_id.into(),
                            info_json: m.user_info_json.into(),
                        }),
                        Err(e) => {
                            sub_error(core, conn, d, channel, "InvalidChannelData", &e, 400);
                            return;
                        }
                    },
                    None => match signed_in {
                        // A signed-in user may join presence without channel_data: identity is
                        // the signed-in user.
                        Some(ref u) => Some(MemberInfo {
                            user_id: u.clone(),
                            info_json: "null".into(),
                        }),
                        None => {
                            let msg = "Presence channel subscription requires channel_data";
                            sub_error(core, conn, d, channel, "InvalidChannelData", msg, 400);
                            return;
                        }
                    },
                };
                if let Some(m) = &member {
                    if m.user_id.len() > limits::MAX_USER_ID_LEN {
                        sub_error(
                            core,
                            conn,
                            d,
                            channel,
                            "InvalidChannelData",
                            "user_id is too long",
                            400,
                        );
                        return;
                    }
                }
            }
        }
    }
    let mut st = conn.state.borrow_mut();
    if let Some(sub) = st.subs.get_mut(&name) {
        // Re-subscribe is idempotent.
        match &mut sub.state {
            SubState::Pending { silent, .. } => *silent = false,
            SubState::Active => {
                if kind != ChannelKind::Presence {
                    drop(st);
                    conn.push(pusher::subscription_succeeded_frame(d, name.as_str(), None));
                }
            }
        }
        return;
    }
    if st.subs.len() >= core.shared.config.max_subscriptions_per_connection {
        drop(st);
        sub_error(
            core,
            conn,
            d,
            channel,
            "LimitReached",
            "Too many subscriptions on this connection",
            400,
        );
        return;
    }
    let owner = core.shared.owner_of(&ChanKey {
        app: app.idx,
        name: name.clone(),
    });
    if !core.admits(owner) {
        drop(st);
        // Push-back keeps subscription bookkeeping bounded while the mesh is congested.
        sub_error(
            core,
            conn,
            d,
            channel,
            "ServerOverloaded",
            "Server overloaded, retry the subscription later",
            503,
        );
        return;
    }
    start_subscription(core, conn, &mut st, app.idx, name, member, false, None);
}

#[allow(clippy::too_many_arguments)] // one call shape for every kind of subscriber
pub(crate) fn start_subscription(
    core: &Core,
    conn: &Conn,
    st: &mut ConnState,
    app: AppIdx,
    name: ChannelName,
    member: Option<MemberInfo>,
    silent: bool,
    resume: Option<crate::msg::Resume>,
) {
    st.gen = st.gen.wrapping_add(1);
    let gen = st.gen;
    st.subs.insert(
        name.clone(),
        Sub {
            state: SubState::Pending { gen, silent },
            presence_user: member.as_ref().map(|m| m.user_id.clone()),
        },
    );
    let key = ChanKey { app, name };
    core.to_owner(
        &key.clone(),
        Msg::Subscribe {
            key,
            socket: conn.socket_id,
            gen,
            from: core.idx as u16,
            member,
            resume,
        },
    );
}

fn unsubscribe(core: &Core, conn: &Conn, app: &App, name: ChannelName) {
    let Some(sub) = conn.state.borrow_mut().subs.remove(&name) else {
        return;
    };
    let key = ChanKey { app: app.idx, name };
    if matches!(sub.state, SubState::Active) {
        core.remove_local_sub(&key, conn.id());
    }
    let user = sub
        .presence_user
        .clone()
        .or_else(|| conn.state.borrow().user.clone());
    core.record_activity(
        app.idx,
        crate::activity::ActivityKind::Unsubscribe,
        Some(key.name.as_str()),
        Some(conn.socket_id),
        user.as_deref(),
        None,
    );
    core.to_owner(
        &key.clone(),
        Msg::Unsubscribe {
            key,
            conn: conn.id(),
            from: core.idx as u16,
            user_id: sub.presence_user,
        },
    );
}

fn signin(core: &Core, conn: &Rc<Conn>, app: &App, auth: &str, user_data: &str) {
    let d = app.config.dialect;
    if let Err(e) = ringcast_protocol::verify_signin(
        &conn.key,
        app.config.secrets_for(&conn.key).unwrap_or_default(),
        &conn.socket_id.to_string(),
        user_data,
        auth,
    ) {
        core.metrics().auth_failures.inc();
        conn.push(pusher::error_frame(d, None, &e.pusher_message(Some(auth))));
        return;
    }
    let user = match ringcast_protocol::parse_user_data(user_data) {
        Ok(u) => u,
        Err(e) => {
            conn.push(pusher::error_frame(
                d,
                None,
                &format!("Invalid user_data: {e}"),
            ));
            return;
        }
    };
    let user_id: Arc<str> = user.id.as_str().into();
    let mut st = conn.state.borrow_mut();
    if let Some(existing) = &st.user {
        if **existing != *user_id {
            drop(st);
            conn.push(pusher::error_frame(
                d,
                None,
                "Already signed in as a different user",
            ));
            return;
        }
        drop(st);
        conn.push(pusher::signin_success_frame(d, user_data));
        return;
    }
    let Ok(name) = ChannelName::parse(&format!("#server-to-user-{}", user.id)) else {
        drop(st);
        conn.push(pusher::error_frame(d, None, "Invalid user id for sign-in"));
        return;
    };
    if !st.subs.contains_key(&name)
        && !core.admits(core.shared.owner_of(&ChanKey {
            app: app.idx,
            name: name.clone(),
        }))
    {
        drop(st);
        conn.push(pusher::error_frame(
            d,
            None,
            "Sign-in refused - server overloaded, retry later",
        ));
        return;
    }
    st.user = Some(user_id.clone());
    core.add_user(app.idx, user_id, conn.id());
    // Subscribe on the user's behalf so #server-to-user- events reach every signed-in
    // connection, whatever the client library does next.
    if !st.subs.contains_key(&name) {
        start_subscription(core, conn, &mut st, app.idx, name, None, true, None);
    }
    drop(st);
    conn.push(pusher::signin_success_frame(d, user_data));
    if user.watchlist.len() > limits::MAX_WATCHLIST {
        conn.push(pusher::error_frame(
            d,
            Some(close::WATCHLIST_LIMIT),
            "Watchlist limit exceeded: only the first 100 user ids are watched",
        ));
    }
}

/// Signs a connection in from its verified `?token=`, exactly as a `pusher:signin` would:
/// the user's `#server-to-user-` channel is joined silently and `pusher:signin_success` sent.
pub(crate) fn token_signin(core: &Core, conn: &Rc<Conn>, app: &App, claims: jwt::Claims) {
    let Ok(name) = ChannelName::parse(&format!("#server-to-user-{}", claims.sub)) else {
        return; // verify_connect_token checked it
    };
    let user_id: Arc<str> = claims.sub.as_str().into();
    let mut st = conn.state.borrow_mut();
    st.read_only = !claims.allows("write");
    st.no_read = !claims.allows("read");
    st.no_presence = !claims.allows("presence");
    st.user = Some(user_id.clone());
    core.add_user(app.idx, user_id, conn.id());
    start_subscription(core, conn, &mut st, app.idx, name, None, true, None);
    drop(st);
    let user_data = serde_json::json!({ "id": claims.sub }).to_string();
    conn.push(pusher::signin_success_frame(app.config.dialect, &user_data));
}

fn client_event(
    core: &Core,
    conn: &Rc<Conn>,
    app: &App,
    event: &str,
    channel: &str,
    data: Option<&str>,
) {
    let d = app.config.dialect;
    if !app.config.client_events {
        conn.push(pusher::error_frame(d, None, "To send client events, you must enable this feature in the Settings page of your dashboard."));
        return;
    }
    let Ok(name) = ChannelName::parse(channel) else {
        conn.push(pusher::error_frame(
            d,
            None,
            "Client event rejected - invalid channel name",
        ));
        return;
    };
    if !matches!(
        name.kind(),
        ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
    ) {
        conn.push(pusher::error_frame(
            d,
            None,
            "Client event rejected - only supported on private and presence channels",
        ));
        return;
    }
    if event.len() > limits::MAX_EVENT_NAME_LEN {
        conn.push(pusher::error_frame(
            d,
            None,
            "Client event rejected - event name too long",
        ));
        return;
    }
    if data.map_or(0, str::len) > app.config.max_event_bytes {
        conn.push(pusher::error_frame(
            d,
            None,
            "Client event rejected - data too large",
        ));
        return;
    }
    let mut st = conn.state.borrow_mut();
    if st.read_only {
        drop(st);
        conn.push(pusher::error_frame(
            d,
            None,
            "Client event rejected - the connection's token lacks the write permission",
        ));
        return;
    }
    let user_id = match st.subs.get(&name) {
        Some(Sub {
            state: SubState::Active,
            presence_user,
        }) => presence_user.clone(),
        _ => {
            drop(st);
            conn.push(pusher::error_frame(
                d,
                None,
                "Client event rejected - not subscribed to the channel",
            ));
            return;
        }
    };
    if !st.client_events.take() {
        drop(st);
        core.metrics().client_events_rate_limited.inc();
        conn.push(pusher::error_frame(
            d,
            Some(close::CLIENT_EVENT_RATE),
            "Client event rate limit reached",
        ));
        return;
    }
    let actor = user_id.clone().or_else(|| st.user.clone());
    drop(st);
    let key = ChanKey { app: app.idx, name };
    if !admit_client_event(core, conn, d, &key) {
        return;
    }
    let name = key.name;
    core.metrics().client_events.inc();
    core.record_activity(
        app.idx,
        crate::activity::ActivityKind::ClientEvent,
        Some(name.as_str()),
        Some(conn.socket_id),
        actor.as_deref(),
        Some(event),
    );
    let frame = pusher::client_event_frame(event, name.as_str(), data, user_id.as_deref());
    if let Some(obs) = &core.shared.observer {
        obs.client_event(
            &app.config,
            &name,
            event,
            data,
            &conn.socket_id,
            user_id.as_deref(),
        );
    }
    let key = ChanKey { app: app.idx, name };
    core.to_owner(
        &key.clone(),
        Msg::Publish {
            key,
            frame,
            except: Some(conn.socket_id),
        },
    );
}

/// Push-back on a client event: refused (and told) while the mesh toward its owner is
/// congested, so nothing has to be dropped further on.
fn admit_client_event(core: &Core, conn: &Rc<Conn>, d: Dialect, key: &ChanKey) -> bool {
    if core.admits(core.shared.owner_of(key)) {
        return true;
    }
    conn.push(pusher::error_frame(
        d,
        None,
        "Client event rejected - server overloaded, retry later",
    ));
    false
}

/// The io_uring writer: one vectored write per wake-up, bounded by the write deadline. A TLS
/// connection's writer task runs it for the connection's life; a flush pass's slow path
/// (crate::flush) runs it with `until_idle` until the queue is empty, and then gets the writing
/// half back (`Some`); the connection's end (crate::flush::finish) runs it to send what is
/// left and the close frame. `None`: the connection is over.
pub(crate) async fn write_loop(
    core: Rc<Core>,
    conn: Rc<Conn>,
    mut w: ConnWriter,
    until_idle: bool,
) -> Option<ConnWriter> {
    let mut batch = FrameBatch::default();
    loop {
        let c = conn.clone();
        let tls_pending = &w;
        let due = std::future::poll_fn(move |cx| {
            let out = c.out.borrow();
            if !out.frames.is_empty()
                || out.closing.is_some()
                || out.done
                || tls_pending.wants_flush()
            {
                Poll::Ready(true)
            } else if until_idle {
                Poll::Ready(false)
            } else {
                c.writer_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        if !due {
            return Some(w);
        }
        let closing = {
            let mut out = conn.out.borrow_mut();
            if out.done {
                break;
            }
            let take = out.frames.len().min(MAX_IOV);
            if take == out.frames.len() {
                std::mem::swap(&mut out.frames, &mut batch.frames);
            } else {
                batch.frames.extend(out.frames.drain(..take));
            }
            if out.frames.is_empty() {
                out.closing
                    .as_ref()
                    .map(|c| (c.code, c.reason.clone(), c.why, c.framed))
            } else {
                None
            }
        };
        if !batch.frames.is_empty() {
            let bytes = batch.prepare();
            let frames = batch.frames.len() as u64;
            conn.write_started.set(Some(core.shared.now()));
            // No timer per write: the core's sweep shuts the socket down when a write outlives
            // the deadline (recording the reason first), which fails this write.
            let res = write_batch(&mut w, batch, bytes).await;
            conn.write_started.set(None);
            match res {
                (Err(_), _) => {
                    conn.set_end_reason(CloseReason::IoError);
                    break;
                }
                (Ok(()), b) => {
                    batch = b;
                    batch.clear();
                    let m = core.metrics();
                    m.messages_out.add(frames);
                    m.bytes_out.add(bytes as u64);
                    let mut out = conn.out.borrow_mut();
                    out.bytes = out.bytes.saturating_sub(bytes);
                }
            }
        }
        // TLS records the reader's input caused (alerts, key-update replies).
        if w.wants_flush() && w.flush().await.is_err() {
            conn.set_end_reason(CloseReason::IoError);
            break;
        }
        if let Some((code, reason, why, framed)) = closing {
            conn.set_end_reason(why);
            if !framed {
                // Boxed: the close path runs once, so its state should not widen every
                // connection's writer task.
                let _ = Box::pin(monoio::time::timeout(
                    Duration::from_secs(1),
                    w.write_all(conn.close_bytes(code, &reason)),
                ))
                .await;
            }
            break;
        }
    }
    conn.out.borrow_mut().done = true;
    let _ = Box::pin(monoio::time::timeout(Duration::from_secs(1), w.shutdown())).await;
    conn.shutdown_socket();
    None
}

/// Undoes everything the connection holds: subscriptions (local and at the owners), sign-in,
/// quota, counters.
pub(crate) fn cleanup(core: &Core, conn: &Conn) {
    // A flush pass may still hold the connection on its dirty list: it writes only
    // connections in the pass model, and this one no longer is.
    conn.wstate.set(crate::flush::WState::Task);
    let st = std::mem::replace(&mut *conn.state.borrow_mut(), ConnState::new(1, 1));
    for (name, sub) in st.subs {
        let key = ChanKey {
            app: conn.app,
            name,
        };
        if matches!(sub.state, SubState::Active) {
            core.remove_local_sub(&key, conn.id());
        }
        core.to_owner(
            &key.clone(),
            Msg::Unsubscribe {
                key,
                conn: conn.id(),
                from: core.idx as u16,
                user_id: sub.presence_user,
            },
        );
    }
    core.record_activity(
        conn.app,
        crate::activity::ActivityKind::Disconnect,
        None,
        Some(conn.socket_id),
        st.user.as_deref(),
        None,
    );
    if let Some(u) = st.user {
        core.remove_user(conn.app, u, conn.id());
    }
    core.conns.borrow_mut().remove(&conn.id());
    core.app_connections_dec(conn.app);
    let m = core.metrics();
    m.connections_current
        .set(m.connections_current.get().saturating_sub(1));
    m.closed(conn.end_reason.get().unwrap_or(CloseReason::ClientClosed));
    core.flush();
}

/// The engine's own `/health` (no control plane installed): 503 while shutting down or when a
/// core has stopped.
fn health_response(core: &Core) -> Vec<u8> {
    let stopped = core.shared.stopped_cores();
    if core
        .shared
        .shutdown
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        http_json(503, "{\"ok\":false,\"shutting_down\":true}")
    } else if !stopped.is_empty() {
        let body = serde_json::json!({"ok": false, "stopped_cores": stopped}).to_string();
        http_json(503, &body)
    } else {
        http_json(200, "{\"ok\":true}")
    }
}

fn http_response(status: u16, msg: &str) -> Vec<u8> {
    let body = format!(
        "{{\"error\":{},\"code\":\"{}\"}}",
        serde_json::Value::from(msg),
        status
    );
    http_json(status, &body)
}

fn http_json(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::buf::IoVecBuf;

    fn batch(frames: &[&'static [u8]]) -> (FrameBatch, usize) {
        let mut b = FrameBatch {
            frames: frames.iter().map(|f| Bytes::from_static(f)).collect(),
            ..FrameBatch::default()
        };
        let total = b.prepare();
        (b, total)
    }

    /// The bytes the next `writev` would send, concatenated.
    fn pending(b: &FrameBatch) -> Vec<u8> {
        let n = b.read_iovec_len();
        let mut out = Vec::new();
        for i in 0..n {
            let v = &b.iov[b.start + i];
            // iov[i] describes (the unwritten tail of) frames[i].
            let frame = &b.frames[b.start + i];
            let off = v.iov_base as usize - frame.as_ptr() as usize;
            assert!(off + v.iov_len == frame.len(), "a tail of its frame");
            out.extend_from_slice(&frame[off..]);
        }
        assert_eq!(n, b.iov.len() - b.start);
        out
    }

    #[test]
    fn token_bucket_is_compact_and_refills_by_elapsed_time() {
        assert!(std::mem::size_of::<TokenBucket>() <= 16);
        let mut b = TokenBucket {
            milli_tokens: 2000,
            rate: 2,
            last_ms: 1000,
        };
        assert!(b.take_at(1000) && b.take_at(1000), "starts full: 2 tokens");
        assert!(!b.take_at(1000), "empty");
        assert!(!b.take_at(1400), "0.8 of a token after 400 ms");
        assert!(b.take_at(1500), "a whole token after 500 ms");
        assert!(b.take_at(u32::MAX), "refills to the cap after a long pause");
        assert!(b.take_at(u32::MAX));
        assert!(!b.take_at(u32::MAX), "never more than the cap");
        assert!(b.take_at(999), "the clock wraps: 1,000 ms later");
        let mut none = TokenBucket::new(0);
        assert!(!none.take(), "a zero rate allows nothing");
    }

    #[test]
    fn stamps_measure_intervals_in_four_bytes() {
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 4);
        let t0 = Instant::now() + Duration::from_secs(5);
        let a = Stamp::of(t0);
        let b = Stamp::of(t0 + Duration::from_millis(120_250));
        assert_eq!(a.until(b), Duration::from_millis(120_250));
        assert_eq!(b.until(a), Duration::ZERO, "not later: zero");
        assert_eq!(a.until(a), Duration::ZERO);
        // Across the u32 wrap (~49.7 days after the epoch): still the right interval.
        let near = Stamp(std::num::NonZeroU32::new(u32::MAX - 10).unwrap());
        let past = Stamp(std::num::NonZeroU32::new(20).unwrap());
        assert_eq!(near.until(past), Duration::from_millis(31));
    }

    #[test]
    fn conn_is_compact() {
        // An idle connection's share of the core: the struct itself (behind its `Rc`). Its
        // fields are the queue, the state and the timestamps; no copy of another field.
        let size = std::mem::size_of::<Conn>();
        assert!(size <= CONN_BYTES_BUDGET, "Conn is {size} bytes");
    }

    #[test]
    fn advance_skips_written_bytes_at_every_split() {
        let frames: [&'static [u8]; 3] = [b"abc", b"de", b"fghij"];
        let all = b"abcdefghij";
        for first in 0..=all.len() {
            for second in 0..=all.len() - first {
                let (mut b, total) = batch(&frames);
                assert_eq!(total, all.len());
                assert_eq!(pending(&b), all);
                b.advance(first);
                assert_eq!(pending(&b), &all[first..], "after {first}");
                b.advance(second);
                assert_eq!(
                    pending(&b),
                    &all[first + second..],
                    "after {first} + {second}"
                );
            }
        }
    }

    #[test]
    fn advance_past_the_end_leaves_nothing_and_clear_resets() {
        let (mut b, total) = batch(&[b"xy", b"z"]);
        b.advance(total);
        assert_eq!(b.read_iovec_len(), 0);
        b.advance(5);
        assert_eq!(b.read_iovec_len(), 0);
        b.clear();
        assert!(b.frames.is_empty() && b.iov.is_empty() && b.start == 0);
        // Reused for the next write: prepare starts from the first frame again.
        b.frames.push(Bytes::from_static(b"next"));
        assert_eq!(b.prepare(), 4);
        assert_eq!(pending(&b), b"next");
    }
}
