//! The write side of plaintext connections: one flush pass per core instead of one writer task
//! per connection.
//!
//! `Conn::push` / `Conn::close` put a connection on its core's dirty list once
//! ([`mark`]; `WState::Idle` -> `Queued`), with no wake-up per connection. The core's
//! [`flush_loop`] task runs passes: a pass takes the whole dirty list and, for each connection,
//! [`flush_direct`] makes one nonblocking write (`MSG_DONTWAIT | MSG_NOSIGNAL`) of every due
//! frame and, once every frame is in, the close frame: a single frame is sent as it is, several
//! as the pass's [`Run`] (one contiguous copy shared by every connection with the same frames
//! due), a close frame or more than [`RUN_MAX_BYTES`] as an iovec of the shared `Bytes`.
//!
//! Every [`PASS_SLICE`] of writing, a pass lets the core's other tasks run
//! (`core::yield_now`): events read meanwhile join the queues of the connections it has not
//! reached yet, and nothing else on the core waits for a whole pass.
//!
//! - Complete: done; the queue's vector is released, so an idle connection holds no queue heap.
//! - Partial write or `EAGAIN`: the written prefix is dropped (a partly written frame is cut
//!   with `Bytes::advance`, a reference, not a copy) and the connection goes to the slow path
//!   ([`start_slow_path`]): a task runs the io_uring writer (`conn::write_loop`) until the queue
//!   is empty, then hands the writing half back and the connection returns to the pass model.
//!   While it runs, the slow-consumer policy applies exactly as before: the byte budget
//!   (`Conn::push`, 4100 `slow_consumer_budget`), the write deadline (`write_started`, enforced
//!   by the core's sweep, `slow_consumer_deadline`).
//! - Close: the close frame goes last in the same write as the frames before it
//!   (close-after-flush), or, if the socket is full, after them on the slow path; then the
//!   socket is shut down, which ends the reader, which runs [`finish`].
//!
//! TLS connections keep a writer task for their whole life (they encrypt per connection).
//!
//! **The coalescing window** ([`coalescing_window`]): a pass runs at once after a quiet period
//! (no added latency for a lightly loaded core); only while passes back up does the next pass
//! first wait `flush_window_us`, so that more events share one write per socket.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use monoio::task::JoinHandle;

use crate::conn::{write_loop, Conn, Frames, MAX_IOV};
use crate::core::Core;
use crate::metrics::CloseReason;
use crate::tls::ConnWriter;

/// Who writes a connection's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WState {
    /// The flush pass's, nothing due.
    Idle,
    /// The flush pass's, on the core's dirty list.
    Queued,
    /// A writer task's (TLS, the slow path, the connection's end; before `attach`): `push`
    /// wakes it.
    Task,
}

/// Where a connection's writing half is.
pub(crate) enum Writer {
    /// Not attached yet, or the connection is over.
    None,
    /// With the connection (the flush pass writes through the fd).
    Here(ConnWriter),
    /// Held by a writer task (TLS, slow path), which puts it back when it is done.
    Away(JoinHandle<()>),
}

/// A core's dirty list: the connections with output due (held, so a pass reaches each one
/// without a map lookup). One per worker thread (a core is one thread), so `Conn::push`
/// reaches it without a pointer in every connection.
struct FlushQueue {
    dirty: RefCell<Vec<Rc<Conn>>>,
    /// The flush loop, parked on an empty list.
    waker: Cell<Option<Waker>>,
}

thread_local! {
    static QUEUE: FlushQueue = const {
        FlushQueue {
            dirty: RefCell::new(Vec::new()),
            waker: Cell::new(None),
        }
    };
}

/// Puts a connection on its core's dirty list (once: the caller moved it `Idle` -> `Queued`).
/// Wakes the flush loop only when the list was empty: one wake-up per pass.
pub(crate) fn mark(conn: Rc<Conn>) {
    QUEUE.with(|q| {
        let mut d = q.dirty.borrow_mut();
        d.push(conn);
        if d.len() == 1 {
            drop(d);
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
    });
}

/// The wait before a pass.
///
/// - `min`: `flush_window_us` (zero disables the window);
/// - `ratio_pct`: `flush_window_ratio_pct`;
/// - `last_pass`: how long the previous pass took;
/// - `quiet`: from the end of the previous pass until this pass's work woke the flush loop.
///
/// The rule: passes are *backing up* when the previous pass took at least `min` and the core
/// then stayed quiet for less time than that pass took (it spends more than half its time
/// flushing). Only then does the next pass wait: `ratio_pct` percent of the previous pass,
/// at least `min`, at most [`WINDOW_MAX`]; otherwise it runs at once. So a core that is idle
/// between events never delays them, and a saturated one trades a fixed share of latency for
/// proportionally more frames per write: at the default 25%, a pass over 5,000 sockets that
/// took 60 ms is followed by a 15 ms wait, so each socket's next write carries the frames of
/// 75 ms instead of 60 ms, and the CPU that the writes no longer need goes to the core's other work (or
/// the machine's other threads).
pub(crate) fn coalescing_window(
    min: Duration,
    ratio_pct: u32,
    last_pass: Duration,
    quiet: Duration,
) -> Duration {
    if min.is_zero() || last_pass < min || quiet >= last_pass {
        return Duration::ZERO;
    }
    (last_pass * ratio_pct / 100).clamp(min, WINDOW_MAX.max(min))
}

/// The longest coalescing window (`defaults::FLUSH_WINDOW_US_MAX`).
pub(crate) const WINDOW_MAX: Duration =
    Duration::from_micros(crate::config::defaults::FLUSH_WINDOW_US_MAX);

/// Hands a new connection's writing half to the write side: plaintext to the flush pass (the
/// half stays with the connection), TLS to a writer task of its own. Output queued before
/// (an SSE response head) is flushed.
pub(crate) fn attach(core: &Rc<Core>, conn: &Rc<Conn>, w: ConnWriter) {
    if w.is_tls() {
        conn.wstate.set(WState::Task);
        let task = monoio::spawn(writer_task(core.clone(), conn.clone(), w));
        conn.writer.set(Writer::Away(task));
        return;
    }
    conn.writer.set(Writer::Here(w));
    conn.wstate.set(WState::Idle);
    let due = {
        let out = conn.out.borrow();
        !out.frames.is_empty() || out.closing.is_some()
    };
    if due {
        conn.notify();
    }
}

/// A TLS connection's writer, for the connection's life.
async fn writer_task(core: Rc<Core>, conn: Rc<Conn>, w: ConnWriter) {
    let _ = write_loop(core, conn, w, false).await;
}

/// The connection's end (its reader has stopped and asked for the close): takes the writing
/// half back from any writer task, then sends what is left and the close frame with the
/// io_uring writer (deadlines as ever), and returns when the socket is done.
pub(crate) async fn finish(core: &Rc<Core>, conn: &Rc<Conn>) {
    loop {
        let slot = conn.writer.replace(Writer::None);
        match slot {
            // It returns the half (queue drained) or ends the connection itself.
            Writer::Away(task) => task.await,
            Writer::Here(w) => {
                conn.wstate.set(WState::Task);
                // Boxed: the writer's state lives only while the connection ends, instead of
                // widening every connection's task by it for the connection's life.
                let _ = Box::pin(write_loop(core.clone(), conn.clone(), w, false)).await;
                return;
            }
            Writer::None => return,
        }
    }
}

/// The core's flush task: waits for a dirty connection, applies the coalescing window, runs a
/// pass.
pub(crate) async fn flush_loop(core: Rc<Core>) {
    let min = core.shared.config.flush_window;
    let ratio = core.shared.config.flush_window_ratio_pct;
    let mut pass = Pass::default();
    let mut last_pass = Duration::ZERO;
    let mut last_end = core.shared.now();
    loop {
        std::future::poll_fn(|cx| {
            QUEUE.with(|q| {
                if q.dirty.borrow().is_empty() {
                    q.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
        })
        .await;
        let woke = core.shared.now();
        let quiet = woke.saturating_duration_since(last_end);
        let window = coalescing_window(min, ratio, last_pass, quiet);
        if !window.is_zero() {
            core.metrics().flush_windowed_passes.inc();
            monoio::time::sleep(window).await;
        }
        let start: Instant = core.shared.now();
        pass.run(&core).await;
        let end = core.shared.now();
        last_pass = end.saturating_duration_since(start);
        last_end = end;
    }
}

/// A pass's scratch, reused: the dirty connections taken from the list, and the write being
/// made; and how long it writes before letting other tasks run.
struct Pass {
    conns: Vec<Rc<Conn>>,
    scratch: Scratch,
    slice: Duration,
}

impl Default for Pass {
    fn default() -> Self {
        Pass {
            conns: Vec::new(),
            scratch: Scratch::default(),
            slice: PASS_SLICE,
        }
    }
}

impl Pass {
    async fn run(&mut self, core: &Rc<Core>) {
        QUEUE.with(|q| std::mem::swap(&mut *q.dirty.borrow_mut(), &mut self.conns));
        core.metrics().flush_passes.inc();
        let n = self.conns.len();
        let mut slice_start = core.shared.now();
        for i in 0..n {
            if i > 0 && i % SLICE_CHECK_EVERY == 0 {
                let now = core.shared.now();
                if now.saturating_duration_since(slice_start) >= self.slice {
                    // A pass over 10,000 sockets takes tens of milliseconds: it lets the
                    // core's other tasks run every slice. Events read meanwhile join the
                    // queues of the connections this pass has not reached yet (so those get
                    // them in this pass, not the next), and handshakes, pings and REST
                    // replies on this core do not wait for the whole pass.
                    core.metrics().flush_yields.inc();
                    crate::core::yield_now().await;
                    slice_start = core.shared.now();
                }
            }
            // While this connection's write is in the kernel, the next ones' state comes
            // into the cache (at 10,000 connections a pass otherwise waits on memory for
            // every one of them).
            if let Some(c) = self.conns.get(i + 2) {
                prefetch(Rc::as_ptr(c).cast());
            }
            if let Some(c) = self.conns.get(i + 1) {
                if let Ok(out) = c.out.try_borrow() {
                    prefetch(out.frames.as_ptr().cast());
                }
            }
            let conn = &self.conns[i];
            // A writer task may have taken it since it was marked (slow path, the end).
            if conn.wstate.get() != WState::Queued {
                continue;
            }
            conn.wstate.set(WState::Idle);
            flush_direct(core, conn, &mut self.scratch);
        }
        self.conns.clear();
        // The run's frames are not kept alive past the pass.
        self.scratch.run.clear();
    }
}

/// How long a pass writes before it lets the core's other tasks run ([`Pass::run`]).
pub(crate) const PASS_SLICE: Duration = Duration::from_millis(1);

/// A pass reads the clock once per this many connections.
const SLICE_CHECK_EVERY: usize = 32;

/// A hint to bring `p`'s cache line in; no effect on what the program computes.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing the program can observe, whatever
    // the address; SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Largest run ([`Run`]) built, in bytes; bigger writes go out as one iovec entry per frame.
pub(crate) const RUN_MAX_BYTES: usize = 64 * 1024;

/// The frames of the write being made as one contiguous buffer, kept for the next
/// connection: on a hot channel every subscriber on a core has the same frames due in a pass,
/// so the copy is made once per pass and each write is one buffer, as in the C floor (one
/// iovec entry, no per-frame walk in the kernel's copy).
///
/// A connection's frames match the run when they are the same `Bytes` (same address and
/// length): the run holds clones of them, so neither can be freed and reused while it is
/// kept, and equal address and length is then equal content.
#[derive(Default)]
pub(crate) struct Run {
    frames: Vec<Bytes>,
    buf: Vec<u8>,
}

impl Run {
    fn matches(&self, frames: &[Bytes]) -> bool {
        self.frames.len() == frames.len()
            && self
                .frames
                .iter()
                .zip(frames)
                .all(|(a, b)| a.as_ptr() == b.as_ptr() && a.len() == b.len())
    }

    /// The run for `frames` (`total` bytes), built unless it already is.
    fn of(&mut self, frames: &[Bytes], total: usize) -> &[u8] {
        if !self.matches(frames) {
            self.frames.clear();
            self.frames.extend(frames.iter().cloned());
            self.buf.clear();
            self.buf.reserve(total);
            for f in frames {
                self.buf.extend_from_slice(f);
            }
        }
        &self.buf
    }

    pub(crate) fn clear(&mut self) {
        self.frames.clear();
    }
}

/// What a write is made with: the iovec (emptied after every write, so no pointer outlives
/// its frame) and the pass's run.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) iov: Vec<libc::iovec>,
    pub(crate) run: Run,
}

/// What one direct write did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Nothing was due (or the connection is over).
    Nothing,
    /// Every frame taken went out; `more`: the queue held more than one write's worth.
    Complete {
        frames: usize,
        bytes: usize,
        more: bool,
    },
    /// The frames and the close frame went out: the connection is done.
    Closed { frames: usize, bytes: usize },
    /// The socket took a prefix (possibly nothing: `EAGAIN`); the rest stays queued in order.
    Partial { frames: usize, bytes: usize },
    /// The write failed: the connection is done (`io_error`).
    Failed,
}

/// One write of everything due on `conn`, through `send` ([`send_iov`] in the
/// engine; a fake in the tests). Updates the queue, the byte count and the close state; the
/// caller acts on the result (metrics, slow path, socket shutdown).
pub(crate) fn write_due(
    conn: &Conn,
    scratch: &mut Scratch,
    send: impl FnOnce(&[libc::iovec]) -> io::Result<usize>,
) -> Direct {
    let Scratch { iov, run } = scratch;
    let mut out = conn.out.borrow_mut();
    if out.done {
        return Direct::Nothing;
    }
    // One iovec is kept for the close frame.
    let take = out.frames.len().min(MAX_IOV - 1);
    let closing_now = take == out.frames.len() && out.closing.is_some();
    let close = match &out.closing {
        Some(c) if closing_now && !c.framed => Some(conn.close_bytes(c.code, &c.reason)),
        _ => None,
    };
    if take == 0 && !closing_now {
        return Direct::Nothing;
    }
    iov.clear();
    let mut frame_bytes = 0;
    for f in out.frames[..take].iter().chain(close.as_ref()) {
        frame_bytes += f.len();
    }
    if take >= 2 && close.is_none() && frame_bytes <= RUN_MAX_BYTES {
        // Several frames: one contiguous buffer, shared with the next connections.
        let buf = run.of(&out.frames[..take], frame_bytes);
        iov.push(libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        });
    } else {
        for f in out.frames[..take].iter().chain(close.as_ref()) {
            iov.push(libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            });
        }
    }
    let total = frame_bytes;
    let frame_bytes = frame_bytes - close.as_ref().map_or(0, Bytes::len);
    let res = if total == 0 { Ok(0) } else { send(iov) };
    iov.clear();
    let written = match res {
        Ok(n) => n,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            0
        }
        Err(_) => {
            out.done = true;
            out.frames = Frames::new();
            out.bytes = 0;
            drop(out);
            conn.set_end_reason(CloseReason::IoError);
            return Direct::Failed;
        }
    };
    if written >= total {
        out.frames.drain(..take);
        out.bytes = out.bytes.saturating_sub(frame_bytes);
        if closing_now {
            let why = out
                .closing
                .as_ref()
                .map_or(CloseReason::ClientClosed, |c| c.why);
            out.done = true;
            out.frames = Frames::new();
            drop(out);
            conn.set_end_reason(why);
            return Direct::Closed {
                frames: take,
                bytes: frame_bytes,
            };
        }
        let more = !out.frames.is_empty();
        if !more {
            // An idle connection holds no queue vector.
            out.frames = Frames::new();
        }
        return Direct::Complete {
            frames: take,
            bytes: frame_bytes,
            more,
        };
    }
    // Partial (or nothing): drop what went out, keep the rest in order.
    let mut left = written;
    let mut whole = 0;
    while whole < take && left >= out.frames[whole].len() {
        left -= out.frames[whole].len();
        whole += 1;
    }
    let mut bytes = written;
    if whole < take {
        if left > 0 {
            out.frames[whole].advance(left);
        }
    } else if let Some(mut c) = close {
        // Every frame went out and part of the close frame: its rest is queued as a frame,
        // and the writer must not send the close frame again.
        if left > 0 {
            c.advance(left);
            bytes -= left;
            out.frames.push(c);
            if let Some(cl) = out.closing.as_mut() {
                cl.framed = true;
            }
        }
    }
    out.frames.drain(..whole);
    out.bytes = out.bytes.saturating_sub(bytes);
    Direct::Partial {
        frames: whole,
        bytes,
    }
}

/// One nonblocking `send` of `iov` on `fd`: `send(2)` for one buffer (the common case: a run
/// or a single frame; the kernel then copies no iovec array in), `sendmsg(2)` for several.
fn send_iov(fd: std::os::fd::RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    if let [one] = iov {
        // SAFETY: the pointer and length come from a live `Bytes` or the pass's run buffer,
        // held by the caller for the duration of this call; send only reads them.
        let n = unsafe {
            libc::send(
                fd,
                one.iov_base,
                one.iov_len,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        return if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data); the iovec pointer and
    // count come from a live slice whose entries point into `Bytes` the caller's queue holds
    // for the duration of this call, and sendmsg only reads them.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One pass's write for one connection, and what follows from it.
pub(crate) fn flush_direct(core: &Rc<Core>, conn: &Rc<Conn>, scratch: &mut Scratch) {
    let fd = conn.fd;
    let r = write_due(conn, scratch, |v| send_iov(fd, v));
    let m = core.metrics();
    let (frames, bytes) = match r {
        Direct::Nothing => return,
        Direct::Complete { frames, bytes, .. }
        | Direct::Closed { frames, bytes }
        | Direct::Partial { frames, bytes } => (frames as u64, bytes as u64),
        Direct::Failed => (0, 0),
    };
    m.flush_writes.inc();
    m.flush_frames.add(frames);
    m.messages_out.add(frames);
    m.bytes_out.add(bytes);
    match r {
        // More than one write's worth: the rest goes in the next pass.
        Direct::Complete { more: true, .. } => conn.notify(),
        // Wakes the reader, which ends the connection (`finish`, `cleanup`).
        Direct::Closed { .. } | Direct::Failed => conn.shutdown_socket(),
        Direct::Partial { .. } => start_slow_path(core, conn),
        _ => {}
    }
}

/// The socket is full: a task takes the writing half and runs the io_uring writer until the
/// queue is empty (or the connection ends), then gives it back to the pass model.
pub(crate) fn start_slow_path(core: &Rc<Core>, conn: &Rc<Conn>) {
    let w = match conn.writer.replace(Writer::None) {
        Writer::Here(w) => w,
        other => {
            // Already with a task (cannot happen for a connection in the pass model).
            conn.writer.set(other);
            return;
        }
    };
    conn.wstate.set(WState::Task);
    core.metrics().flush_slow_paths.inc();
    let task = monoio::spawn(slow_path(core.clone(), conn.clone(), w));
    conn.writer.set(Writer::Away(task));
}

async fn slow_path(core: Rc<Core>, conn: Rc<Conn>, w: ConnWriter) {
    if let Some(w) = write_loop(core, conn.clone(), w, true).await {
        // Drained: back to the pass model, without the writer's vectors.
        conn.writer.set(Writer::Here(w));
        conn.out.borrow_mut().frames = Frames::new();
        conn.wstate.set(WState::Idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::{close, ws, SocketId};

    /// A socket-less connection in the pass model.
    fn conn() -> Rc<Conn> {
        let c = Conn::detached(SocketId::new(1, 1), 0, 1 << 20);
        c.wstate.set(WState::Idle);
        Rc::new(c)
    }

    fn frame(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// The bytes an iovec points at.
    fn gather(iov: &[libc::iovec]) -> Vec<u8> {
        iov.iter()
            .flat_map(|v| {
                // SAFETY: the iovecs point into `Bytes` the queue holds during the send call.
                unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
            })
            .copied()
            .collect()
    }

    fn queued_bytes(c: &Conn) -> Vec<u8> {
        c.out
            .borrow()
            .frames
            .iter()
            .flat_map(|f| f.to_vec())
            .collect()
    }

    #[test]
    fn push_marks_a_connection_dirty_once() {
        let c = conn();
        c.push(frame("a"));
        assert_eq!(c.wstate.get(), WState::Queued);
        c.push(frame("b"));
        let ids: Vec<u64> =
            QUEUE.with(|q| q.dirty.borrow_mut().drain(..).map(|c| c.id()).collect());
        assert_eq!(ids, vec![1], "one entry for two frames");
    }

    #[test]
    fn a_pass_writes_every_due_frame_in_one_write_and_releases_the_queue() {
        let c = conn();
        for f in ["one", "two", "three"] {
            c.push(frame(f));
        }
        let mut iov = Scratch::default();
        let mut calls = 0;
        let r = write_due(&c, &mut iov, |v| {
            calls += 1;
            assert_eq!(v.len(), 1, "one contiguous buffer");
            assert_eq!(gather(v), b"onetwothree");
            Ok(11)
        });
        assert_eq!(calls, 1);
        assert_eq!(
            r,
            Direct::Complete {
                frames: 3,
                bytes: 11,
                more: false
            }
        );
        let out = c.out.borrow();
        assert!(out.frames.is_empty());
        assert!(
            !out.frames.spilled(),
            "an idle connection holds no queue heap"
        );
        assert_eq!(out.bytes, 0);
        assert!(iov.iov.is_empty(), "no pointer outlives the write");
    }

    #[test]
    fn connections_with_the_same_frames_share_one_buffer_built_once() {
        let (a, b, other) = (conn(), conn(), conn());
        let f1 = frame("event-1;");
        let f2 = frame("event-2;");
        for c in [&a, &b] {
            c.push(f1.clone());
            c.push(f2.clone());
        }
        // Same bytes, but other `Bytes`: not the run, its own.
        other.push(frame("event-1;"));
        other.push(frame("event-X;"));
        let mut s = Scratch::default();
        let mut bases = Vec::new();
        for c in [&a, &b, &other] {
            let r = write_due(c, &mut s, |v| {
                assert_eq!(v.len(), 1);
                bases.push((v[0].iov_base as usize, gather(v)));
                Ok(v[0].iov_len)
            });
            assert!(matches!(r, Direct::Complete { frames: 2, .. }), "{r:?}");
        }
        assert_eq!(bases[0].1, b"event-1;event-2;");
        assert_eq!(
            bases[0], bases[1],
            "the second write reuses the first one's buffer"
        );
        assert_eq!(bases[2].1, b"event-1;event-X;", "different frames: rebuilt");
        // A partial write of the shared buffer keeps the rest in order, as with frames.
        for c in [&a, &b] {
            c.push(f1.clone());
            c.push(f2.clone());
        }
        let r = write_due(&a, &mut s, |_| Ok(10));
        assert_eq!(
            r,
            Direct::Partial {
                frames: 1,
                bytes: 10
            }
        );
        assert_eq!(queued_bytes(&a), b"ent-2;");
        let r = write_due(&b, &mut s, |v| {
            assert_eq!(gather(v), b"event-1;event-2;");
            Ok(16)
        });
        assert!(matches!(r, Direct::Complete { frames: 2, .. }), "{r:?}");
        // The pass lets go of the frames at its end: nothing but this test holds them then.
        let r = write_due(&a, &mut s, |v| Ok(v.iter().map(|v| v.iov_len).sum()));
        assert!(matches!(r, Direct::Complete { frames: 1, .. }), "{r:?}");
        QUEUE.with(|q| q.dirty.borrow_mut().clear());
        drop((a, b, other));
        assert!(!f1.is_unique(), "the run holds the frame during the pass");
        s.run.clear();
        assert!(
            f1.is_unique() && f2.is_unique(),
            "the run released its frames"
        );
    }

    #[test]
    fn a_partial_write_keeps_the_rest_in_order() {
        let c = conn();
        for f in ["alpha", "beta", "gamma"] {
            c.push(frame(f));
        }
        let mut iov = Scratch::default();
        // 5 + 2: "alpha" and "be" went out.
        let r = write_due(&c, &mut iov, |_| Ok(7));
        assert_eq!(
            r,
            Direct::Partial {
                frames: 1,
                bytes: 7
            }
        );
        assert_eq!(queued_bytes(&c), b"tagamma");
        assert_eq!(c.out.borrow().bytes, 7);
        // EAGAIN: nothing went out, nothing is lost.
        let r = write_due(&c, &mut iov, |_| {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        });
        assert_eq!(
            r,
            Direct::Partial {
                frames: 0,
                bytes: 0
            }
        );
        assert_eq!(queued_bytes(&c), b"tagamma");
        // The rest goes out in one write, from where it stopped.
        let r = write_due(&c, &mut iov, |v| {
            assert_eq!(gather(v), b"tagamma");
            Ok(7)
        });
        assert!(matches!(r, Direct::Complete { frames: 2, .. }), "{r:?}");
    }

    #[test]
    fn close_goes_out_after_every_queued_frame_in_the_same_write() {
        let c = conn();
        c.push(frame("last-event"));
        c.close(close::RECONNECT, "bye", CloseReason::Shutdown);
        // Nothing is queued after the close.
        c.push(frame("too-late"));
        let mut iov = Scratch::default();
        let expect = [
            &b"last-event"[..],
            &ws::close_frame(close::RECONNECT, "bye"),
        ]
        .concat();
        let r = write_due(&c, &mut iov, |v| {
            assert_eq!(v.len(), 2);
            assert_eq!(gather(v), expect);
            Ok(expect.len())
        });
        assert_eq!(
            r,
            Direct::Closed {
                frames: 1,
                bytes: 10
            }
        );
        assert!(c.out.borrow().done);
        assert_eq!(c.end_reason(), Some(CloseReason::Shutdown));
        assert_eq!(
            write_due(&c, &mut iov, |_| panic!("no write")),
            Direct::Nothing
        );
    }

    #[test]
    fn a_close_frame_written_in_part_is_finished_not_resent() {
        let c = conn();
        c.push(frame("ab"));
        c.close(
            close::SLOW_CONSUMER,
            "slow",
            CloseReason::SlowConsumerDeadline,
        );
        let cf = ws::close_frame(close::SLOW_CONSUMER, "slow");
        let mut iov = Scratch::default();
        let r = write_due(&c, &mut iov, |_| Ok(3));
        assert_eq!(
            r,
            Direct::Partial {
                frames: 1,
                bytes: 2
            }
        );
        assert_eq!(queued_bytes(&c), &cf[1..]);
        assert!(c.out.borrow().closing.as_ref().unwrap().framed);
        // The next write sends only the rest of the close frame, then the connection is done.
        let r = write_due(&c, &mut iov, |v| {
            assert_eq!(gather(v), &cf[1..]);
            Ok(cf.len() - 1)
        });
        assert!(matches!(r, Direct::Closed { .. }), "{r:?}");
        assert!(c.out.borrow().done);
    }

    #[test]
    fn a_failed_write_ends_the_connection_as_an_io_error() {
        let c = conn();
        c.push(frame("x"));
        let mut iov = Scratch::default();
        let r = write_due(&c, &mut iov, |_| {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        });
        assert_eq!(r, Direct::Failed);
        assert!(c.out.borrow().done);
        assert_eq!(c.end_reason(), Some(CloseReason::IoError));
    }

    #[test]
    fn more_than_one_writes_worth_is_left_for_the_next_pass() {
        let c = conn();
        for _ in 0..MAX_IOV + 10 {
            c.push(frame("f"));
        }
        let mut iov = Scratch::default();
        let r = write_due(&c, &mut iov, |v| Ok(v.iter().map(|v| v.iov_len).sum()));
        assert_eq!(
            r,
            Direct::Complete {
                frames: MAX_IOV - 1,
                bytes: MAX_IOV - 1,
                more: true
            }
        );
        assert_eq!(c.out.borrow().frames.len(), 11);
    }

    #[test]
    fn the_window_is_zero_when_idle_and_applies_only_while_passes_back_up() {
        let ms = Duration::from_millis;
        let min = ms(1);
        for ratio in [0, 50] {
            // Idle core: a short pass, or a long quiet period after a long one.
            assert_eq!(
                coalescing_window(min, ratio, Duration::ZERO, ms(0)),
                Duration::ZERO
            );
            assert_eq!(coalescing_window(min, ratio, ms(4), ms(6)), Duration::ZERO);
            assert_eq!(
                coalescing_window(min, ratio, Duration::from_micros(900), ms(0)),
                Duration::ZERO
            );
            // Disabled.
            assert_eq!(
                coalescing_window(Duration::ZERO, ratio, ms(40), Duration::ZERO),
                Duration::ZERO
            );
        }
        // Backing up (the pass took at least the window and the quiet was shorter than it),
        // fixed window only.
        assert_eq!(coalescing_window(min, 0, ms(4), ms(1)), min);
        assert_eq!(coalescing_window(min, 0, ms(40), Duration::ZERO), min);
    }

    #[test]
    fn while_passes_back_up_the_window_is_a_share_of_the_last_pass_within_its_bounds() {
        let ms = Duration::from_millis;
        let min = ms(1);
        // Half of a 60 ms pass; a quarter of a 40 ms pass.
        assert_eq!(coalescing_window(min, 50, ms(60), ms(2)), ms(30));
        assert_eq!(coalescing_window(min, 25, ms(40), Duration::ZERO), ms(10));
        // Never shorter than `flush_window_us`: half of a 1.5 ms pass is below it.
        assert_eq!(
            coalescing_window(min, 50, Duration::from_micros(1500), Duration::ZERO),
            min
        );
        assert_eq!(coalescing_window(ms(20), 50, ms(30), ms(1)), ms(20));
        // Never longer than the cap, however long the pass.
        assert_eq!(
            coalescing_window(min, 100, Duration::from_secs(5), Duration::ZERO),
            WINDOW_MAX
        );
        assert_eq!(WINDOW_MAX, ms(100));
        // A quiet core still never waits, however long its last pass.
        assert_eq!(coalescing_window(min, 50, ms(60), ms(61)), Duration::ZERO);
    }

    /// A real core (one, no peers) for the socket test below.
    fn test_core() -> Rc<Core> {
        use crate::config::{defaults, RawConfig};
        use crate::mesh::{self, MeshShared};
        use crate::shared::{Placement, Shared};
        use std::sync::Arc;
        let config = RawConfig::default().resolve(1).expect("defaults resolve");
        let mesh_shared = Arc::new(MeshShared::new(1, defaults::INJECT_QUEUE_CAPACITY));
        let (tx, rx) = mesh::build(1, 16, 16, mesh_shared.clone())
            .pop()
            .expect("one core's mesh ends");
        let shared = Arc::new(Shared::new(
            config,
            mesh_shared,
            None,
            Placement::with_key([1, 2, 3, 4]),
        ));
        Rc::new(Core::new(0, shared, tx, rx, 1))
    }

    #[test]
    fn a_long_pass_lets_other_tasks_run_and_their_events_join_the_rest_of_the_pass() {
        use std::os::fd::AsRawFd;
        const CONNS: usize = 200;
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let core = test_core();
            let mut peers = Vec::new();
            let mut conns = Vec::new();
            for _ in 0..CONNS {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
                ours.set_nonblocking(true).unwrap();
                let conn = Rc::new(Conn::new_sse(&core, 0, "k".into(), ours.as_raw_fd()));
                conn.wstate.set(WState::Idle);
                core.conns.borrow_mut().insert(conn.id(), conn.clone());
                conns.push(conn);
                peers.push((ours, theirs));
            }
            for c in &conns {
                c.push(Bytes::from_static(b"a"));
            }
            // A zero slice: the pass lets other tasks run every SLICE_CHECK_EVERY writes.
            let pass_core = core.clone();
            let pass = monoio::spawn(async move {
                let mut pass = Pass {
                    slice: Duration::ZERO,
                    ..Pass::default()
                };
                pass.run(&pass_core).await;
            });
            // Spawned after the pass: it runs only when the pass lets it. It publishes "b".
            let probe_core = core.clone();
            let probe_conns = conns.clone();
            let probe = monoio::spawn(async move {
                let written = probe_core.metrics().flush_writes.get();
                for c in &probe_conns {
                    c.push(Bytes::from_static(b"b"));
                }
                written
            });
            pass.await;
            let written_before_probe = probe.await;
            assert_eq!(
                written_before_probe, SLICE_CHECK_EVERY as u64,
                "the probe ran after the pass's first slice, not after the whole pass"
            );
            // Connections the pass had not reached took "b" in the same write as "a"; the
            // ones it had written are due again, for the next pass.
            let m = core.metrics();
            assert_eq!(m.flush_writes.get(), CONNS as u64);
            assert_eq!(m.flush_frames.get(), (2 * CONNS - SLICE_CHECK_EVERY) as u64);
            assert!(m.flush_yields.get() >= 1);
            let due: Vec<u64> = QUEUE.with(|q| q.dirty.borrow().iter().map(|c| c.id()).collect());
            let first: Vec<u64> = conns[..SLICE_CHECK_EVERY].iter().map(|c| c.id()).collect();
            assert_eq!(due, first);
            Pass::default().run(&core).await;
            assert_eq!(
                m.flush_frames.get(),
                2 * CONNS as u64,
                "every frame went out once"
            );
            for (_, theirs) in &mut peers {
                use std::io::Read;
                let mut got = [0u8; 2];
                theirs.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ab", "in order, once each");
            }
        });
    }

    #[test]
    fn a_full_socket_goes_to_the_slow_path_and_comes_back_with_order_kept() {
        use std::io::Read;
        const FRAMES: usize = 200;
        const SIZE: usize = 1024;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        client.set_recv_buffer_size(4096).unwrap();
        client
            .connect(&listener.local_addr().unwrap().into())
            .unwrap();
        let mut client: std::net::TcpStream = client.into();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(4096)
            .unwrap();
        server.set_nonblocking(true).unwrap();
        // Frame i is SIZE bytes of the byte i % 251.
        let frames: Vec<Bytes> = (0..FRAMES)
            .map(|i| Bytes::from(vec![(i % 251) as u8; SIZE]))
            .collect();
        let expect: Vec<u8> = frames
            .iter()
            .flat_map(|f| f.to_vec())
            .chain(b"after".iter().copied())
            .collect();
        let total = expect.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            client.read_exact(&mut got).expect("every byte arrives");
            got
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let core = test_core();
            let stream = monoio::net::TcpStream::from_std(server).unwrap();
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let conn = Rc::new(Conn::new_sse(&core, 0, "k".into(), fd));
            core.conns.borrow_mut().insert(conn.id(), conn.clone());
            let (_reader, writer) = crate::tls::ClientStream::Plain(stream).into_split();
            attach(&core, &conn, writer);
            assert_eq!(conn.wstate.get(), WState::Idle);
            for f in &frames {
                conn.push(f.clone());
            }
            let mut pass = Pass::default();
            pass.run(&core).await;
            // 200 KiB do not fit a 4 KiB socket: the pass wrote a prefix and handed over.
            assert_eq!(conn.wstate.get(), WState::Task);
            assert_eq!(core.metrics().flush_slow_paths.get(), 1);
            assert!(core.metrics().flush_frames.get() < FRAMES as u64);
            // The io_uring writer drains the rest as the client reads, then gives the
            // connection back to the pass model with no queue heap.
            for _ in 0..10_000 {
                if conn.wstate.get() == WState::Idle {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert_eq!(conn.wstate.get(), WState::Idle, "the slow path ended");
            match conn.writer.replace(Writer::None) {
                Writer::Here(w) => conn.writer.set(Writer::Here(w)),
                _ => panic!("the writing half is back with the connection"),
            }
            assert!(!conn.out.borrow().frames.spilled());
            assert_eq!(conn.out.borrow().bytes, 0);
            // Back in the pass model: the next frame goes out in a pass, after the others.
            conn.push(Bytes::from_static(b"after"));
            assert_eq!(conn.wstate.get(), WState::Queued);
            pass.run(&core).await;
            assert_eq!(conn.wstate.get(), WState::Idle);
        });
        assert!(
            reader.join().unwrap() == expect,
            "bytes out of order or lost"
        );
    }
}
