//! The floor: a minimal WebSocket fan-out server with no Pusher logic beyond what the harness
//! needs to talk to it. It accepts, upgrades, answers `pusher:subscribe` with a pre-encoded
//! acknowledgement, and relays every client event (or REST trigger) as one pre-encoded frame to
//! every subscriber of its channel. The frame is encoded once and shared by every subscriber
//! (`Bytes`, never copied); each socket gets one `writev` per pass carrying every frame queued
//! for it, straight from those shared buffers (like the engine's writer).
//! No auth, no owner cores, no limits, no JSON parsing on the event path. Measured with the
//! same client in the same run, it tells how close a real server gets to this machine's limit.
//!
//! Thread-per-core like Ringcast: one monoio runtime per worker on a SO_REUSEPORT listener; an
//! event reaching worker w is delivered to w's subscribers in place and handed to every other
//! worker through a lock-free queue (one `Bytes`, reference-counted, never copied).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use ringcast_protocol::{ws, Dialect, FrameDecoder, Message, Role, SocketId};

pub struct FloorConfig {
    pub listen: SocketAddr,
    pub workers: usize,
    pub cpus: Option<Vec<usize>>,
    /// The server exits by itself after this long.
    pub max_secs: u64,
}

struct Inbox {
    q: SegQueue<(Arc<str>, Bytes, u64)>,
    waker: AtomicWaker,
}

struct Hub {
    inboxes: Vec<Inbox>,
}

struct FConn {
    id: u64,
    out: RefCell<Vec<Bytes>>,
    waker: Cell<Option<Waker>>,
    dead: Cell<bool>,
}

impl FConn {
    fn push(&self, f: Bytes) {
        if self.dead.get() {
            return;
        }
        self.out.borrow_mut().push(f);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

struct Worker {
    idx: usize,
    hub: Arc<Hub>,
    subs: RefCell<HashMap<Arc<str>, Vec<Rc<FConn>>>>,
    next_id: Cell<u64>,
}

impl Worker {
    fn deliver(&self, ch: &str, frame: &Bytes, except: u64) {
        if let Some(list) = self.subs.borrow().get(ch) {
            for c in list {
                if c.id != except {
                    c.push(frame.clone());
                }
            }
        }
    }

    fn broadcast(&self, ch: &str, frame: Bytes, except: u64) {
        self.deliver(ch, &frame, except);
        let ch: Arc<str> = ch.into();
        for (w, inbox) in self.hub.inboxes.iter().enumerate() {
            if w != self.idx {
                inbox.q.push((ch.clone(), frame.clone(), except));
                inbox.waker.wake();
            }
        }
    }
}

/// Frames per `writev` (the kernel's `IOV_MAX` is 1024).
const MAX_IOV: usize = 1024;

/// The frames one `writev` carries, as the shared `Bytes` themselves plus their iovecs; both
/// vectors are reused, so a steady-state write allocates and copies nothing.
#[derive(Default)]
struct IovBatch {
    frames: Vec<Bytes>,
    iov: Vec<libc::iovec>,
    /// First iovec not yet fully written.
    start: usize,
}

impl IovBatch {
    /// Builds the iovecs of `frames`; returns the bytes to write.
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
                // SAFETY: n < iov_len, so the new base stays inside the same `Bytes` buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }
}

// SAFETY: `iov[start..]` points into the `Bytes` held in `frames`, which the batch owns; the
// runtime owns the batch for the whole write and neither vector is touched meanwhile, and
// `Bytes` storage never moves, so every pointer stays valid and the count matches.
unsafe impl monoio::buf::IoVecBuf for IovBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.start..].as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov.len() - self.start
    }
}

/// Binds, prints `floor: listening on ADDR (workers=N)` and serves until `max_secs` pass.
pub fn serve(cfg: FloorConfig) -> anyhow::Result<()> {
    let workers = cfg.workers.max(1);
    let first = reuseport(cfg.listen)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(reuseport(addr)?);
    }
    let hub = Arc::new(Hub {
        inboxes: (0..workers)
            .map(|_| Inbox {
                q: SegQueue::new(),
                waker: AtomicWaker::new(),
            })
            .collect(),
    });
    let mut threads = Vec::new();
    for (idx, l) in listeners.into_iter().enumerate() {
        let hub = hub.clone();
        let pin = cfg.cpus.as_ref().map(|c| c[idx % c.len()]);
        threads.push(
            std::thread::Builder::new()
                .name(format!("floor-{idx}"))
                .spawn(move || {
                    if let Some(c) = pin {
                        core_affinity::set_for_current(core_affinity::CoreId { id: c });
                    }
                    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                        .with_entries(8192)
                        .enable_timer()
                        .build();
                    match rt {
                        Ok(mut rt) => rt.block_on(worker_main(idx, hub, l)),
                        Err(e) => eprintln!("floor worker {idx}: {e}"),
                    }
                })?,
        );
    }
    println!("floor: listening on {addr} (workers={workers})");
    use std::io::Write;
    std::io::stdout().flush().ok();
    std::thread::sleep(Duration::from_secs(cfg.max_secs));
    eprintln!("floor: --max-secs reached, exiting");
    std::process::exit(0);
}

fn reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

async fn worker_main(idx: usize, hub: Arc<Hub>, l: std::net::TcpListener) {
    let w = Rc::new(Worker {
        idx,
        hub,
        subs: RefCell::new(HashMap::new()),
        next_id: Cell::new(1),
    });
    let wd = w.clone();
    monoio::spawn(async move {
        loop {
            let w2 = wd.clone();
            std::future::poll_fn(move |cx| {
                let inbox = &w2.hub.inboxes[w2.idx];
                inbox.waker.register(cx.waker());
                if inbox.q.is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let inbox = &wd.hub.inboxes[wd.idx];
            let mut n = 0;
            while let Some((ch, frame, except)) = inbox.q.pop() {
                wd.deliver(&ch, &frame, except);
                n += 1;
                if n >= 4096 {
                    break;
                }
            }
            if n >= 4096 {
                monoio::time::sleep(Duration::ZERO).await;
            }
        }
    });
    let listener = match monoio::net::TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("floor worker {idx}: {e}");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                monoio::spawn(conn(w.clone(), s));
            }
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn conn(w: Rc<Worker>, mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut head = Vec::new();
    let mut buf = vec![0u8; 0];
    let req = loop {
        buf.clear();
        buf.reserve(4096);
        let (r, b) = s.read(buf).await;
        buf = b;
        match r {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
        match ws::parse_request_head(&head, 64 * 1024) {
            Ok(Some(h)) => break h,
            Ok(None) => continue,
            Err(_) => return,
        }
    };
    let rest = head.split_off(req.head_len.min(head.len()));
    match req.websocket_key {
        Some(key) => websocket(w, s, &key, rest).await,
        None => http(w, s, head, rest).await,
    }
}

async fn websocket(w: Rc<Worker>, mut s: TcpStream, key: &str, rest: Vec<u8>) {
    let id = w.next_id.get();
    w.next_id.set(id + 1);
    let conn_id = id * 64 + w.idx as u64;
    if s.write_all(ws::accept_response(key)).await.0.is_err() {
        return;
    }
    let c = Rc::new(FConn {
        id: conn_id,
        out: RefCell::new(Vec::new()),
        waker: Cell::new(None),
        dead: Cell::new(false),
    });
    c.push(ringcast_protocol::connection_established_frame(
        Dialect::Pusher,
        &SocketId::new(w.idx as u64 + 1, conn_id),
        120,
    ));
    let (mut rh, mut wh) = s.into_split();
    let cw = c.clone();
    let writer = monoio::spawn(async move {
        // One `writev` per pass carrying every frame due, straight from the shared `Bytes`
        // (no copy per subscriber); more writes only when the kernel takes part of it.
        let mut batch = IovBatch::default();
        loop {
            let c2 = cw.clone();
            std::future::poll_fn(move |cx| {
                if c2.dead.get() || !c2.out.borrow().is_empty() {
                    Poll::Ready(())
                } else {
                    c2.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            if cw.dead.get() {
                return;
            }
            {
                let mut out = cw.out.borrow_mut();
                let take = out.len().min(MAX_IOV);
                if take == out.len() {
                    std::mem::swap(&mut *out, &mut batch.frames);
                } else {
                    batch.frames.extend(out.drain(..take));
                }
            }
            let mut left = batch.prepare();
            while left > 0 {
                let (r, b) = wh.writev(batch).await;
                batch = b;
                match r {
                    Ok(n) if n > 0 => {
                        left -= n;
                        batch.advance(n);
                    }
                    _ => {
                        cw.dead.set(true);
                        return;
                    }
                }
            }
            batch.frames.clear();
        }
    });
    let mut dec = FrameDecoder::new(Role::Server, 1 << 20);
    dec.handle_bytes(&rest);
    let sub = memchr::memmem::Finder::new(b"\"pusher:subscribe\"");
    let ping = memchr::memmem::Finder::new(b"\"pusher:ping\"");
    let chan = memchr::memmem::Finder::new(b"\"channel\":\"");
    let mut subscribed: Vec<Arc<str>> = Vec::new();
    let mut rbuf = Vec::with_capacity(4096);
    'outer: loop {
        loop {
            match dec.poll_message() {
                Ok(Some(Message::Text(t))) => {
                    if t.starts_with(b"{\"event\":\"client-") {
                        if let Some(ch) = channel_of(&chan, &t) {
                            let frame = ws::text_frame(&t);
                            w.broadcast(ch, frame, conn_id);
                        }
                    } else if sub.find(&t).is_some() {
                        let v: serde_json::Value = serde_json::from_slice(&t).unwrap_or_default();
                        let d = crate::net::data_object(
                            v.get("data").unwrap_or(&serde_json::Value::Null),
                        );
                        if let Some(ch) = d.get("channel").and_then(|c| c.as_str()) {
                            let ch: Arc<str> = ch.into();
                            w.subs
                                .borrow_mut()
                                .entry(ch.clone())
                                .or_default()
                                .push(c.clone());
                            c.push(ringcast_protocol::subscription_succeeded_frame(
                                Dialect::Pusher,
                                &ch,
                                None,
                            ));
                            subscribed.push(ch);
                        }
                    } else if ping.find(&t).is_some() {
                        c.push(ringcast_protocol::pusher::pong_frame(Dialect::Pusher));
                    }
                }
                Ok(Some(Message::Ping(p))) => c.push(ws::pong_frame(&p)),
                Ok(Some(Message::Close(_, _))) | Err(_) => break 'outer,
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        rbuf.clear();
        let (r, b) = rh.read(rbuf).await;
        rbuf = b;
        match r {
            Ok(n) if n > 0 => dec.handle_bytes(&rbuf[..n]),
            _ => break,
        }
    }
    {
        let mut subs = w.subs.borrow_mut();
        for ch in subscribed {
            if let Some(list) = subs.get_mut(&ch) {
                list.retain(|x| x.id != conn_id);
                if list.is_empty() {
                    subs.remove(&ch);
                }
            }
        }
    }
    c.dead.set(true);
    if let Some(wk) = c.waker.take() {
        wk.wake();
    }
    let _ = writer.await;
}

fn channel_of<'a>(f: &memchr::memmem::Finder<'_>, t: &'a [u8]) -> Option<&'a str> {
    let at = f.find(t)? + 11;
    let end = memchr::memchr(b'"', &t[at..])?;
    std::str::from_utf8(&t[at..at + end]).ok()
}

/// Minimal keep-alive REST: `POST .../events` with `{name, channels|channel, data}`; no auth.
async fn http(w: Rc<Worker>, mut s: TcpStream, head: Vec<u8>, rest: Vec<u8>) {
    let mut buf = head;
    buf.extend_from_slice(&rest);
    let mut rbuf = Vec::with_capacity(16 * 1024);
    loop {
        // Serve every complete request buffered.
        let mut out = Vec::new();
        loop {
            let req = match ws::parse_request_head(&buf, 64 * 1024) {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => return,
            };
            let clen: usize = req
                .headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < req.head_len + clen {
                break;
            }
            let body = &buf[req.head_len..req.head_len + clen];
            let status = if req.method == "POST" && req.path.ends_with("/events") {
                match serde_json::from_slice::<serde_json::Value>(body) {
                    Ok(v) => {
                        let name = v.get("name").and_then(|x| x.as_str()).unwrap_or("");
                        let data = v.get("data").and_then(|x| x.as_str()).unwrap_or("");
                        let mut chans: Vec<&str> = v
                            .get("channels")
                            .and_then(|x| x.as_array())
                            .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                            .unwrap_or_default();
                        if let Some(c) = v.get("channel").and_then(|x| x.as_str()) {
                            chans.push(c);
                        }
                        for ch in chans {
                            w.broadcast(
                                ch,
                                ringcast_protocol::event_frame(name, ch, data, None),
                                0,
                            );
                        }
                        200
                    }
                    Err(_) => 400,
                }
            } else if req.path == "/health" {
                200
            } else {
                404
            };
            let body = if status == 200 {
                "{}"
            } else {
                "{\"error\":\"floor\"}"
            };
            out.extend_from_slice(
                format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                    .as_bytes(),
            );
            buf.drain(..req.head_len + clen);
        }
        if !out.is_empty() && s.write_all(out).await.0.is_err() {
            return;
        }
        rbuf.clear();
        let (r, b) = s.read(rbuf).await;
        rbuf = b;
        match r {
            Ok(n) if n > 0 => buf.extend_from_slice(&rbuf[..n]),
            _ => return,
        }
    }
}

/// A floor server running as a child process of this binary (killed on drop).
pub struct FloorChild {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl FloorChild {
    /// Starts `<this exe> floor --listen 127.0.0.1:0 --workers N [--cpus ..] --max-secs S`.
    pub fn spawn(workers: usize, cpus: Option<&str>, max_secs: u64) -> anyhow::Result<FloorChild> {
        use std::io::BufRead;
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args([
            "floor",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &workers.to_string(),
            "--max-secs",
            &max_secs.to_string(),
        ]);
        if let Some(c) = cpus {
            cmd.args(["--cpus", c]);
        }
        cmd.stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            anyhow::bail!("floor: no stdout");
        };
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(out);
        // The child prints its address at once; bounded by its own start-up.
        reader.read_line(&mut line)?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .ok_or_else(|| anyhow::anyhow!("floor did not print its address: {line:?}"));
        match addr {
            Ok(addr) => Ok(FloorChild { child, addr }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(b: &IovBatch) -> Vec<u8> {
        let mut v = Vec::new();
        for io in &b.iov[b.start..] {
            // SAFETY: each iovec points into a `Bytes` the batch still holds.
            v.extend_from_slice(unsafe {
                std::slice::from_raw_parts(io.iov_base as *const u8, io.iov_len)
            });
        }
        v
    }

    #[test]
    fn a_batch_shares_the_frames_and_survives_partial_writes() {
        let shared = Bytes::from_static(b"hello");
        let mut b = IovBatch {
            frames: vec![shared.clone(), Bytes::from_static(b"-"), shared.clone()],
            ..IovBatch::default()
        };
        assert_eq!(b.prepare(), 11);
        // The iovec points at the shared frame itself: nothing was copied.
        assert_eq!(b.iov[0].iov_base as *const u8, shared.as_ptr());
        b.advance(3);
        assert_eq!(pending(&b), b"lo-hello");
        b.advance(3);
        assert_eq!(pending(&b), b"hello");
        b.advance(5);
        assert_eq!(b.start, 3);
        assert!(pending(&b).is_empty());
    }
}
