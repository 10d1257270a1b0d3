//! The plaintext subscriber receive path (`--receive epoll`, the default): one epoll instance
//! per generator thread watches every subscriber socket of the thread, the way the minimal C
//! client of `../shared/bench/fanfloor` does. Per ready socket, `recv` takes up to
//! [`READ_CHUNK`] bytes into one buffer per thread; the WebSocket frames in it (server frames
//! are unmasked) are parsed in place and handed to a handler as borrowed [`Frame`]s. A frame
//! that straddles two reads is carried over in a small buffer of its connection, allocated only
//! when that happens (and kept for the next time, unless a large frame made it large). Nothing
//! is allocated per frame (proven by `tests/no_alloc.rs`).
//!
//! The set is level-triggered: a socket that still holds data after a bounded number of reads
//! is reported again by the next `epoll_wait`, so one busy socket cannot starve the others.
//! The generator thread's monoio runtime waits for the epoll descriptor to become readable
//! ([`EpollSet::readiness`]) and then calls [`EpollSet::poll`] with a zero timeout, so the
//! publishers and the control task keep running on the same thread.
//!
//! What a frame means (deliveries, pings, closes) is the handler's business: the fan-out
//! scenario's handler counts exactly what the per-connection task path counts
//! (`receive::on_text`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::wsframe::{dispatch, header_len, parse_header, Frame, FrameError};

/// Most bytes one `recv` takes from one socket.
pub const READ_CHUNK: usize = 64 * 1024;
/// Most ready sockets one `epoll_wait` returns.
pub const MAX_EVENTS: usize = 512;
/// Most `recv` calls on one socket per readiness report (level-triggered: the rest waits for
/// the next `epoll_wait`).
pub const READS_PER_WAKE: usize = 8;
/// A carry buffer grown beyond this (by a large frame) is freed once the frame is complete.
const CARRY_KEEP: usize = 4096;
/// The epoll key of the wake-up eventfd.
const WAKE_KEY: u64 = u64::MAX;

/// What a connection produced.
#[derive(Debug)]
pub enum Got<'a> {
    /// A complete message (fragmented messages are reassembled). WebSocket pings are
    /// answered by the set itself (a masked pong echoing the payload) and not handed on.
    Frame(Frame<'a>),
    /// The server closed the connection (end of stream).
    Eof,
    /// `recv` failed (e.g. a reset).
    ReadError(io::Error),
    /// The server broke the WebSocket protocol.
    BadFrame(FrameError),
    /// A pong could not be written (the connection is closed: a partial frame may be out).
    SendError(io::Error),
}

/// The connection a [`Got`] belongs to, for the handler.
pub struct Ctx {
    /// The key the connection was added with.
    pub key: usize,
    /// Clock reading ([`crate::clock`]) taken once per `epoll_wait` (or per [`EpollSet::add`]).
    pub now: u64,
    fd: RawFd,
}

impl Ctx {
    /// Writes `bytes` (e.g. a pong) to the connection without blocking. An error means the
    /// bytes were not (or not all) written: the connection should be closed.
    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut off = 0;
        for _ in 0..64 {
            if off == bytes.len() {
                return Ok(());
            }
            // SAFETY: `fd` is the open socket of a connection the set owns while the handler
            // runs; the pointer and length name the initialised bytes of `bytes[off..]`.
            let r = unsafe {
                libc::send(
                    self.fd,
                    bytes[off..].as_ptr().cast(),
                    bytes.len() - off,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            off += r as usize;
        }
        if off == bytes.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "socket send buffer full",
            ))
        }
    }
}

struct Conn<T> {
    fd: OwnedFd,
    key: usize,
    /// The start of a frame that straddled two reads (empty otherwise).
    carry: Vec<u8>,
    /// A fragmented message being reassembled.
    frag: Option<(u8, Vec<u8>)>,
    /// Whatever the owner keeps with the connection (dropped when it closes).
    _extra: T,
}

impl<T> Conn<T> {
    /// What a handler is told about this connection at clock reading `now`.
    fn ctx(&self, now: u64) -> Ctx {
        Ctx {
            key: self.key,
            now,
            fd: self.fd.as_raw_fd(),
        }
    }
}

/// What one [`EpollSet::poll`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Ready connections served.
    pub ready: usize,
    /// [`EpollSet::wake`] was called since the last poll.
    pub woken: bool,
}

/// The sockets of one generator thread, watched by one epoll instance.
pub struct EpollSet<T> {
    ep: OwnedFd,
    wake: OwnedFd,
    conns: Vec<Option<Conn<T>>>,
    free: Vec<usize>,
    live: usize,
    buf: Box<[u8]>,
    events: Vec<libc::epoll_event>,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl<T> EpollSet<T> {
    pub fn new() -> io::Result<EpollSet<T>> {
        // SAFETY: epoll_create1 and eventfd take no pointers; a non-negative result is a new
        // descriptor nobody else owns.
        let ep = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        // SAFETY: as above.
        let wake = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let set = EpollSet {
            ep,
            wake,
            conns: Vec::new(),
            free: Vec::new(),
            live: 0,
            // Zeroed once per thread; every read writes before it is read.
            buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
        };
        set.ctl(libc::EPOLL_CTL_ADD, set.wake.as_raw_fd(), WAKE_KEY)?;
        Ok(set)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: `ev` lives on our stack for the call; both descriptors are open.
        cvt(unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    /// Connections being watched.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Watches `fd` (a connected socket past the WebSocket handshake) as `key`. `initial`
    /// holds bytes already read from it (and `frag` a fragmented message in progress): their
    /// complete frames go to `on` now, with `ctx.now == now`. Returns Ok(false) if the handler
    /// ended the connection already (it was closed and not added).
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        fd: OwnedFd,
        key: usize,
        extra: T,
        initial: &[u8],
        frag: Option<(u8, Vec<u8>)>,
        now: u64,
        on: &mut impl FnMut(&Ctx, Got<'_>) -> bool,
    ) -> io::Result<bool> {
        let mut c = Conn {
            fd,
            key,
            carry: initial.to_vec(),
            frag,
            _extra: extra,
        };
        if !feed(&mut c, &[], now, on) {
            return Ok(false);
        }
        let slot = self.free.pop().unwrap_or(self.conns.len());
        self.ctl(libc::EPOLL_CTL_ADD, c.fd.as_raw_fd(), slot as u64)?;
        if slot == self.conns.len() {
            self.conns.push(Some(c));
        } else {
            self.conns[slot] = Some(c);
        }
        self.live += 1;
        Ok(true)
    }

    fn remove(&mut self, slot: usize) {
        if let Some(c) = self.conns[slot].take() {
            // Removed explicitly: the registration would outlive our descriptor if another
            // descriptor of the same socket were still open somewhere.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, c.fd.as_raw_fd(), slot as u64);
            self.free.push(slot);
            self.live -= 1;
        }
    }

    /// Closes every connection (their `extra` is dropped).
    pub fn clear(&mut self) {
        for slot in 0..self.conns.len() {
            self.remove(slot);
        }
    }

    /// Makes the next [`Self::poll`] (and the readiness of the epoll descriptor) return at once
    /// with `woken` set, e.g. to notice a stop.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one` to our eventfd.
        unsafe {
            libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// A monoio handle that becomes readable when some watched connection is ready (or after
    /// [`Self::wake`]): await `readable(false)` on it, then [`Self::poll`] with timeout 0.
    ///
    /// monoio has no readiness API for an arbitrary descriptor, so a duplicate of the epoll
    /// descriptor is wrapped as a `UnixStream` whose only use is `readable()`: a poll for
    /// POLLIN (an io_uring PollAdd, or the legacy driver's readiness plus `poll(2)`), which is
    /// valid on an epoll descriptor. No stream operation is ever called on it.
    pub fn readiness(&self) -> io::Result<monoio::net::UnixStream> {
        // SAFETY: dup takes no pointers; the result is a new descriptor we own.
        let fd = cvt(unsafe { libc::fcntl(self.ep.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: `fd` is open and owned by nobody else; the wrapper closes it when dropped.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        monoio::net::UnixStream::from_std(std)
    }

    /// Waits at most `timeout_ms` (0: not at all) for ready connections, reads each (up to
    /// [`READS_PER_WAKE`] reads of [`READ_CHUNK`]) and hands every complete frame to `on`.
    /// `on` returns false to close the connection; after `Eof`, `ReadError`, `BadFrame` and
    /// `SendError` the connection is closed whatever it returns.
    pub fn poll(
        &mut self,
        timeout_ms: i32,
        on: &mut impl FnMut(&Ctx, Got<'_>) -> bool,
    ) -> io::Result<Polled> {
        // SAFETY: `events` holds MAX_EVENTS writable entries the kernel fills.
        let n = unsafe {
            libc::epoll_wait(
                self.ep.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Polled::default());
            }
            return Err(e);
        }
        let now = crate::clock::now_ns();
        let mut out = Polled::default();
        for j in 0..n as usize {
            let key = self.events[j].u64;
            if key == WAKE_KEY {
                let mut v: u64 = 0;
                // SAFETY: reads 8 bytes into `v` from our eventfd (resets its counter).
                unsafe {
                    libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
                }
                out.woken = true;
                continue;
            }
            let slot = key as usize;
            let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            out.ready += 1;
            if !service(c, &mut self.buf, now, on) {
                self.remove(slot);
            }
        }
        Ok(out)
    }
}

impl<T> Drop for EpollSet<T> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Reads a ready connection. False: it ended.
fn service<T>(
    c: &mut Conn<T>,
    buf: &mut [u8],
    now: u64,
    on: &mut impl FnMut(&Ctx, Got<'_>) -> bool,
) -> bool {
    let ctx = c.ctx(now);
    for _ in 0..READS_PER_WAKE {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which we borrow mutably.
        let r = unsafe {
            libc::recv(
                c.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r == 0 {
            on(&ctx, Got::Eof);
            return false;
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return true,
                io::ErrorKind::Interrupted => continue,
                _ => {
                    on(&ctx, Got::ReadError(e));
                    return false;
                }
            }
        }
        let n = r as usize;
        if !feed(c, &buf[..n], now, on) {
            return false;
        }
        if n < buf.len() {
            // The socket is (very likely) empty: epoll says so if not.
            return true;
        }
    }
    true
}

/// A pong answering `ping`: header, mask and masked payload (control payloads are at most
/// 125 bytes), built on the stack.
fn pong(ping: &[u8], out: &mut [u8; 131]) -> Result<usize, FrameError> {
    if ping.len() > 125 {
        return Err(FrameError("ping payload longer than 125 bytes"));
    }
    const MASK: [u8; 4] = [9, 8, 7, 6];
    out[0] = 0x8A;
    out[1] = 0x80 | ping.len() as u8;
    out[2..6].copy_from_slice(&MASK);
    for (i, b) in ping.iter().enumerate() {
        out[6 + i] = b ^ MASK[i % 4];
    }
    Ok(6 + ping.len())
}

/// Hands one message to the handler; answers a ping itself. False: the connection ends.
#[inline]
fn deliver(ctx: &Ctx, f: Frame<'_>, on: &mut impl FnMut(&Ctx, Got<'_>) -> bool) -> bool {
    match f {
        Frame::Ping(p) => {
            let mut out = [0u8; 131];
            match pong(p, &mut out) {
                Ok(n) => match ctx.send(&out[..n]) {
                    Ok(()) => true,
                    Err(e) => {
                        on(ctx, Got::SendError(e));
                        false
                    }
                },
                Err(e) => {
                    on(ctx, Got::BadFrame(e));
                    false
                }
            }
        }
        f => on(ctx, Got::Frame(f)),
    }
}

/// Takes the frames of `data` (just read), after completing the carried one. False: the
/// connection ended (bad frame, or the handler said so).
fn feed<T>(
    c: &mut Conn<T>,
    data: &[u8],
    now: u64,
    on: &mut impl FnMut(&Ctx, Got<'_>) -> bool,
) -> bool {
    let ctx = c.ctx(now);
    let mut off = 0;
    if !c.carry.is_empty() {
        // The carried bytes: a frame that straddled reads (or, right after `add`, whatever
        // the handshake's reader had buffered). Complete it from `data`, frame by frame.
        let mut used = 0;
        loop {
            let rest = &c.carry[used..];
            if rest.is_empty() {
                break;
            }
            let h = match parse_header(rest) {
                Ok(h) => h,
                Err(e) => {
                    on(&ctx, Got::BadFrame(e));
                    return false;
                }
            };
            match h {
                Some(h) if rest.len() >= h.total() => {
                    let payload = &c.carry[used + h.hdr..used + h.total()];
                    match dispatch(&mut c.frag, h, payload, &mut |f| deliver(&ctx, f, on)) {
                        Ok(true) => used += h.total(),
                        Ok(false) => return false,
                        Err(e) => {
                            on(&ctx, Got::BadFrame(e));
                            return false;
                        }
                    }
                }
                _ => {
                    let want = h.map_or_else(|| header_len(rest), |h| h.total());
                    let take = (want - rest.len()).min(data.len() - off);
                    if take == 0 {
                        break;
                    }
                    c.carry.extend_from_slice(&data[off..off + take]);
                    off += take;
                }
            }
        }
        if used == c.carry.len() {
            c.carry.clear();
            if c.carry.capacity() > CARRY_KEEP {
                c.carry = Vec::new();
            }
        } else {
            // `data` is used up and a frame is still incomplete.
            c.carry.drain(..used);
            return true;
        }
    }
    // In place, in the read buffer.
    let mut b = &data[off..];
    loop {
        match parse_header(b) {
            Err(e) => {
                on(&ctx, Got::BadFrame(e));
                return false;
            }
            Ok(Some(h)) if b.len() >= h.total() => {
                let payload = &b[h.hdr..h.total()];
                match dispatch(&mut c.frag, h, payload, &mut |f| deliver(&ctx, f, on)) {
                    Ok(true) => b = &b[h.total()..],
                    Ok(false) => return false,
                    Err(e) => {
                        on(&ctx, Got::BadFrame(e));
                        return false;
                    }
                }
            }
            Ok(h) => {
                if !b.is_empty() {
                    // Straddles this read and the next: carried over (room for all of it).
                    c.carry
                        .reserve(h.map_or_else(|| header_len(b), |h| h.total()).max(b.len()));
                    c.carry.extend_from_slice(b);
                }
                return true;
            }
        }
    }
}
