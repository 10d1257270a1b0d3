//! Native TLS (rustls with the `ring` provider): the listener's hot-swappable server config, the
//! bounded handshake, and the stream types every connection reads and writes through.
//!
//! The seam is a stream enum ([`ClientStream`], and its halves [`ConnReader`] /
//! [`ConnWriter`]): `Plain` is monoio's `TcpStream` exactly as before (a match on a two-variant
//! enum, no `Box<dyn>` and no extra buffer on the plaintext path); `Tls` drives a rustls
//! `ServerConnection` with owned-buffer io_uring reads and writes of the ciphertext. The fan-out
//! stays encode-once: the writer hands each shared frame (`Bytes`) to the connection's rustls
//! session, which encrypts it into that connection's records; the frame is never re-serialised.
//!
//! Certificates are re-read on SIGHUP ([`TlsAcceptor::reload`]): the new `ServerConfig` is
//! swapped in (an `ArcSwap`), so new handshakes use it while established sessions keep theirs.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};
use serde::Deserialize;

/// Ciphertext read size during the handshake (a ClientHello fits; bigger flights take more
/// reads, rustls bounds the message it buffers).
const HANDSHAKE_READ: usize = 4096;
/// Smallest ciphertext read of an established connection (idle connections keep this one).
const MIN_CIPHER_READ: usize = 512;
/// Largest ciphertext read (one full TLS record plus its overhead).
const MAX_CIPHER_READ: usize = 16 * 1024 + 512;
/// A connection's ciphertext write buffer is given back past this size once flushed.
const KEEP_WRITE_BUF: usize = 16 * 1024;

/// `[tls]` / `[api.tls]`: the certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain (leaf first), PEM.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key: PathBuf,
}

/// Why a certificate/key pair was not accepted (at start: the server does not start; on
/// SIGHUP: logged, the old pair stays).
#[derive(Debug)]
pub enum TlsError {
    Read { path: PathBuf, error: io::Error },
    NoCertificate { path: PathBuf },
    BadPem { path: PathBuf, error: String },
    NoKey { path: PathBuf },
    Rejected(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            TlsError::NoCertificate { path } => {
                write!(f, "{}: no PEM CERTIFICATE block", path.display())
            }
            TlsError::BadPem { path, error } => write!(f, "{}: bad PEM: {error}", path.display()),
            TlsError::NoKey { path } => write!(
                f,
                "{}: no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                path.display()
            ),
            TlsError::Rejected(e) => write!(f, "certificate and key rejected: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

impl TlsFiles {
    /// Reads and checks both files and builds the server config: TLS 1.3 and 1.2, ALPN
    /// `http/1.1`, no client certificates, the `ring` provider. The key must match the leaf.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_pem = read_file(&self.cert)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadPem {
                path: self.cert.clone(),
                error: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key_pem = read_file(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: self.key.clone(),
            },
            e => TlsError::BadPem {
                path: self.key.clone(),
                error: e.to_string(),
            },
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rejected(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rejected(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Handshake outcomes of one listener, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Handshakes completed.
    pub completed: AtomicU64,
    /// Not complete within `handshake_timeout` (closed).
    pub timeout: AtomicU64,
    /// A record rustls refused, or a fatal alert from the client (bad certificate, unknown CA,
    /// no shared version or cipher...).
    pub bad_record: AtomicU64,
    /// Plain HTTP (or other plaintext) sent to the TLS port: closed without an answer.
    pub plaintext: AtomicU64,
    /// The client closed the connection or it failed mid-handshake.
    pub aborted: AtomicU64,
    /// Certificate reloads applied, and rejected (the old certificate stayed).
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// How a TLS handshake failed (each counted in [`TlsCounters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    BadRecord,
    Plaintext,
    Aborted,
}

struct AcceptorInner {
    config: ArcSwap<ServerConfig>,
    counters: TlsCounters,
}

/// A listener's TLS side: its current server config (swapped on reload) and its counters.
/// Cheap to clone; shared by every core of the listener.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: Arc<AcceptorInner>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads the pair (see [`TlsFiles::load`]).
    pub fn load(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor {
            inner: Arc::new(AcceptorInner {
                config: ArcSwap::new(files.load()?),
                counters: TlsCounters::default(),
            }),
        })
    }

    /// Re-reads the pair; on success new handshakes use it (established connections keep their
    /// session), on failure the old config stays and the reason is returned.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        match files.load() {
            Ok(c) => {
                self.inner.config.store(c);
                self.inner.counters.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.inner
                    .counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    pub fn counters(&self) -> &TlsCounters {
        &self.inner.counters
    }

    fn count(&self, f: HandshakeFailure) -> HandshakeFailure {
        let c = &self.inner.counters;
        match f {
            HandshakeFailure::Timeout => &c.timeout,
            HandshakeFailure::BadRecord => &c.bad_record,
            HandshakeFailure::Plaintext => &c.plaintext,
            HandshakeFailure::Aborted => &c.aborted,
        }
        .fetch_add(1, Ordering::Relaxed);
        f
    }

    /// Runs the server side of a handshake on an accepted socket, bounded by `timeout`. Its
    /// memory is bounded by rustls (one handshake message at a time) and one read buffer. A
    /// first byte that is an ASCII letter is plaintext (an HTTP method): closed at once,
    /// without an answer. On failure the socket is dropped (closed) and the reason counted.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<ClientStream, HandshakeFailure> {
        self.accept_with(tcp, Vec::new(), timeout).await
    }

    /// [`TlsAcceptor::accept`] on a socket whose first bytes were already read (`initial`:
    /// what followed a trusted proxy's PROXY header, the start of the ClientHello).
    pub async fn accept_with(
        &self,
        tcp: TcpStream,
        initial: Vec<u8>,
        timeout: Duration,
    ) -> Result<ClientStream, HandshakeFailure> {
        let deadline = monoio::time::Instant::now() + timeout;
        match monoio::time::timeout_at(deadline, self.handshake(tcp, initial)).await {
            Ok(Ok(s)) => {
                self.inner
                    .counters
                    .completed
                    .fetch_add(1, Ordering::Relaxed);
                Ok(ClientStream::Tls(Box::new(s)))
            }
            Ok(Err(f)) => Err(self.count(f)),
            Err(_) => Err(self.count(HandshakeFailure::Timeout)),
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        initial: Vec<u8>,
    ) -> Result<TlsStream, HandshakeFailure> {
        let session = ServerConnection::new(self.inner.config.load_full())
            .map_err(|_| HandshakeFailure::BadRecord)?;
        let mut s = TlsStream {
            tcp,
            tls: TlsState {
                session: Rc::new(RefCell::new(session)),
                pending: Vec::new(),
                rbuf: Vec::with_capacity(HANDSHAKE_READ),
                wbuf: Vec::new(),
            },
        };
        let mut first = true;
        let mut initial = Some(initial).filter(|i| !i.is_empty());
        loop {
            flush(&s.tls.session, &mut s.tcp, &mut s.tls.wbuf)
                .await
                .map_err(|_| HandshakeFailure::Aborted)?;
            if !s.tls.session.borrow().is_handshaking() {
                return Ok(s);
            }
            let n = if let Some(bytes) = initial.take() {
                s.tls.rbuf = bytes;
                s.tls.rbuf.len()
            } else {
                let buf = std::mem::take(&mut s.tls.rbuf);
                let (res, buf) = s.tcp.read(buf).await;
                s.tls.rbuf = buf;
                match res {
                    Ok(0) | Err(_) => return Err(HandshakeFailure::Aborted),
                    Ok(n) => n,
                }
            };
            if first && s.tls.rbuf[0].is_ascii_alphabetic() {
                return Err(HandshakeFailure::Plaintext);
            }
            first = false;
            let data = std::mem::take(&mut s.tls.rbuf);
            let fed = feed(&s.tls.session, &data[..n], &mut s.tls.pending);
            s.tls.rbuf = data;
            s.tls.rbuf.clear();
            if fed.is_err() {
                // Tell the client why (rustls queued the alert), briefly; then close.
                let _ = flush(&s.tls.session, &mut s.tcp, &mut s.tls.wbuf).await;
                return Err(HandshakeFailure::BadRecord);
            }
        }
    }

    /// The swapped-in config (tests: the certificate new handshakes get).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner.config.load_full()
    }
}

/// Feeds ciphertext to the session and processes it. What the session cannot take yet (its
/// plaintext buffer is full until the reader drains it) is appended to `pending`.
fn feed(
    session: &RefCell<ServerConnection>,
    mut data: &[u8],
    pending: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let mut s = session.borrow_mut();
    while !data.is_empty() {
        match s.read_tls(&mut data) {
            Ok(_) => {
                s.process_new_packets()?;
            }
            Err(_) => {
                // The received-plaintext buffer is full: keep the rest for later. If there is
                // nothing to drain, the peer is misbehaving.
                if s.process_new_packets()?.plaintext_bytes_to_read() == 0 {
                    return Err(rustls::Error::General("TLS input not accepted".into()));
                }
                pending.extend_from_slice(data);
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Writes whatever the session has queued (records, alerts) to the socket.
async fn flush<W: AsyncWriteRent>(
    session: &RefCell<ServerConnection>,
    w: &mut W,
    wbuf: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        {
            let mut s = session.borrow_mut();
            if !s.wants_write() {
                break;
            }
            wbuf.clear();
            s.write_tls(wbuf)?;
        }
        let (r, b) = w.write_all(std::mem::take(wbuf)).await;
        *wbuf = b;
        r?;
    }
    if wbuf.capacity() > KEEP_WRITE_BUF {
        *wbuf = Vec::new();
    }
    Ok(())
}

/// A TLS connection's buffers beside its session.
pub(crate) struct TlsState {
    session: Rc<RefCell<ServerConnection>>,
    /// Ciphertext received but not yet accepted by the session.
    pending: Vec<u8>,
    /// Ciphertext read buffer.
    rbuf: Vec<u8>,
    /// Ciphertext write buffer.
    wbuf: Vec<u8>,
}

impl TlsState {
    /// Reads plaintext into `out`, reading and decrypting ciphertext from `r` as needed. 0 is
    /// the end of the stream (close_notify, or the TCP end).
    async fn read_plain<R: AsyncReadRent>(
        &mut self,
        r: &mut R,
        out: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            match self.session.borrow_mut().reader().read(out) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if !self.pending.is_empty() {
                let data = std::mem::take(&mut self.pending);
                feed(&self.session, &data, &mut self.pending).map_err(io::Error::other)?;
                continue;
            }
            let want = out.len().clamp(MIN_CIPHER_READ, MAX_CIPHER_READ);
            let mut buf = std::mem::take(&mut self.rbuf);
            if buf.capacity() != want {
                buf = Vec::with_capacity(want);
            }
            buf.clear();
            let (res, buf) = r.read(buf).await;
            self.rbuf = buf;
            match res? {
                0 => return Ok(0),
                n => {
                    let data = std::mem::take(&mut self.rbuf);
                    let fed = feed(&self.session, &data[..n], &mut self.pending);
                    self.rbuf = data;
                    fed.map_err(io::Error::other)?;
                }
            }
        }
    }

    /// Encrypts all of `data` into records and writes them to `w`.
    async fn write_plain<W: AsyncWriteRent>(&mut self, w: &mut W, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.session.borrow_mut().writer().write(rest)?;
            rest = &rest[n..];
            if !rest.is_empty() {
                if n == 0 && !self.session.borrow().wants_write() {
                    // Nothing accepted and nothing to send: the session cannot take data.
                    return Err(io::ErrorKind::WriteZero.into());
                }
                // The session's send buffer is full: put it on the wire first.
                flush(&self.session, w, &mut self.wbuf).await?;
            }
        }
        Ok(())
    }

    async fn shutdown<W: AsyncWriteRent>(&mut self, w: &mut W) -> io::Result<()> {
        self.session.borrow_mut().send_close_notify();
        flush(&self.session, w, &mut self.wbuf).await?;
        w.shutdown().await
    }
}

/// `recv(2)` with `MSG_DONTWAIT` into `buf`: the byte count (0 at the end of the stream), or
/// `WouldBlock` (also for an interrupted call: the caller waits for readiness again).
fn recv_nonblocking(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, exclusively borrowed region of `buf.len()` bytes for the
    // duration of the call; `fd` is the connection's open socket.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    Err(e)
}

impl TlsState {
    /// Feeds received ciphertext to the session and hands all the plaintext it yields to
    /// `sink` (read out through `plain`), alternating while the session's plaintext buffer
    /// fills up. `End` once the peer's close_notify is in.
    fn absorb(
        &mut self,
        data: &[u8],
        plain: &mut [u8],
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<Received> {
        let mut rest = data;
        loop {
            {
                let mut s = self.session.borrow_mut();
                while !rest.is_empty() {
                    match s.read_tls(&mut rest) {
                        Ok(_) => {
                            s.process_new_packets().map_err(io::Error::other)?;
                        }
                        Err(_) => {
                            // The received-plaintext buffer is full: drain it below, then
                            // feed the rest. With nothing to drain the peer is misbehaving.
                            let st = s.process_new_packets().map_err(io::Error::other)?;
                            if st.plaintext_bytes_to_read() == 0 {
                                return Err(io::Error::other("TLS input not accepted"));
                            }
                            break;
                        }
                    }
                }
            }
            loop {
                let r = self.session.borrow_mut().reader().read(plain);
                match r {
                    Ok(0) => return Ok(Received::End),
                    Ok(n) => sink(&plain[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Received::End),
                    Err(e) => return Err(e),
                }
            }
            if rest.is_empty() {
                return Ok(Received::Data);
            }
        }
    }
}

/// An established server-side TLS connection over TCP.
pub struct TlsStream {
    tcp: TcpStream,
    tls: TlsState,
}

impl TlsStream {
    /// The negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.tls
            .session
            .borrow()
            .alpn_protocol()
            .map(|p| p.to_vec())
    }
}

/// A connection's byte stream: plaintext TCP, or TLS over it. Reads and writes plaintext.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl From<TcpStream> for ClientStream {
    fn from(s: TcpStream) -> ClientStream {
        ClientStream::Plain(s)
    }
}

impl ClientStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(t) => &t.tcp,
        }
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The underlying socket (for shutdown(2) from another task).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.tcp().as_raw_fd()
    }

    /// Splits into the connection's reader and writer (the TLS session shared between them;
    /// neither holds a borrow of it across an await).
    pub(crate) fn into_split(self) -> (ConnReader, ConnWriter) {
        match self {
            ClientStream::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnReader::Plain(r), ConnWriter::Plain(w))
            }
            ClientStream::Tls(t) => {
                let TlsStream { tcp, tls } = *t;
                let (r, w) = tcp.into_split();
                let session = tls.session.clone();
                // The reader receives into the core's scratch (crate::read_scratch): the
                // handshake's read and write buffers are not kept.
                let tls = TlsState {
                    session: tls.session,
                    pending: tls.pending,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                };
                (
                    ConnReader::Tls(Box::new((r, tls))),
                    ConnWriter::Tls(Box::new((
                        w,
                        TlsState {
                            session,
                            pending: Vec::new(),
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                        },
                    ))),
                )
            }
        }
    }
}

/// Reads plaintext from a TLS session into an owned monoio buffer.
async fn tls_read_into<R: AsyncReadRent, T: IoBufMut>(
    tls: &mut TlsState,
    r: &mut R,
    mut buf: T,
) -> BufResult<usize, T> {
    let total = buf.bytes_total();
    let ptr = buf.write_ptr();
    // SAFETY: `ptr` points to `total` writable bytes owned by `buf`, which we hold (and do not
    // touch otherwise) until the slice's last use below; zeroing first makes them initialised.
    let out = unsafe {
        std::ptr::write_bytes(ptr, 0, total);
        std::slice::from_raw_parts_mut(ptr, total)
    };
    let res = tls.read_plain(r, out).await;
    if let Ok(n) = res {
        // SAFETY: `read_plain` wrote `n <= total` bytes at the start of the buffer.
        unsafe { buf.set_init(n) };
    }
    (res, buf)
}

/// The plaintext slice of an owned monoio buffer.
fn io_slice<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: an `IoBuf` guarantees `bytes_init()` initialised bytes at `read_ptr()` for as long
    // as it is borrowed.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// The iovecs of a vectored buffer as slices.
fn iovec_slices<T: IoVecBuf>(buf: &T) -> impl Iterator<Item = &[u8]> {
    // SAFETY: an `IoVecBuf` guarantees `read_iovec_len()` valid iovecs at `read_iovec_ptr()`,
    // each naming initialised memory, for as long as it is borrowed.
    let iovs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    iovs.iter().map(|v| {
        // SAFETY: see above; each iovec names `iov_len` readable bytes.
        unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) }
    })
}

impl AsyncReadRent for ClientStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.read(buf).await,
            ClientStream::Tls(t) => {
                let TlsStream { tcp, tls } = &mut **t;
                let r = tls_read_into(tls, tcp, buf).await;
                // Records the input caused (alerts, key-update replies) go out now.
                if let Err(e) = flush(&tls.session, tcp, &mut tls.wbuf).await {
                    return (Err(e), r.1);
                }
                r
            }
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.readv(buf).await,
            ClientStream::Tls(t) => {
                // Into the first iovec only (a short read, as readv allows).
                let first = if buf.write_iovec_len() == 0 {
                    None
                } else {
                    // SAFETY: `write_iovec_len() > 0` valid iovecs at `write_iovec_ptr()`.
                    Some(unsafe { *buf.write_iovec_ptr() })
                };
                let Some(iov) = first else {
                    return (Ok(0), buf);
                };
                let TlsStream { tcp, tls } = &mut **t;
                // SAFETY: the iovec names `iov_len` writable bytes owned by `buf`, which we hold
                // until the slice's last use; zeroing first makes them initialised.
                let out = unsafe {
                    std::ptr::write_bytes(iov.iov_base as *mut u8, 0, iov.iov_len);
                    std::slice::from_raw_parts_mut(iov.iov_base as *mut u8, iov.iov_len)
                };
                let res = tls.read_plain(tcp, out).await;
                if let Ok(n) = res {
                    // SAFETY: `n` bytes were written at the start of the first iovec.
                    unsafe { buf.set_init(n) };
                }
                (res, buf)
            }
        }
    }
}

impl AsyncWriteRent for ClientStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.write(buf).await,
            ClientStream::Tls(t) => {
                let TlsStream { tcp, tls } = &mut **t;
                let n = buf.bytes_init();
                let res = tls.write_plain(tcp, io_slice(&buf)).await;
                let res = match res {
                    Ok(()) => flush(&tls.session, tcp, &mut tls.wbuf).await.map(|_| n),
                    Err(e) => Err(e),
                };
                (res, buf)
            }
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ClientStream::Plain(s) => s.writev(buf).await,
            ClientStream::Tls(t) => {
                let TlsStream { tcp, tls } = &mut **t;
                let res = async {
                    let mut n = 0;
                    for part in iovec_slices(&buf) {
                        tls.write_plain(tcp, part).await?;
                        n += part.len();
                    }
                    flush(&tls.session, tcp, &mut tls.wbuf).await.map(|_| n)
                }
                .await;
                (res, buf)
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush().await,
            ClientStream::Tls(t) => {
                let TlsStream { tcp, tls } = &mut **t;
                flush(&tls.session, tcp, &mut tls.wbuf).await
            }
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.shutdown().await,
            ClientStream::Tls(t) => {
                let TlsStream { tcp, tls } = &mut **t;
                tls.shutdown(tcp).await
            }
        }
    }
}

/// The reading half of an established connection.
pub(crate) enum ConnReader {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(Box<(OwnedReadHalf<TcpStream>, TlsState)>),
}

/// What one nonblocking receive found ([`ConnReader::recv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// Bytes arrived (for TLS possibly no plaintext yet: a partial record).
    Data,
    /// The end of the stream: the TCP end, or a TLS close_notify.
    End,
}

impl ConnReader {
    /// Reads into `buf` (its spare capacity). An SSE stream's reader, which only waits for the
    /// client to hang up; WebSocket connections use [`readable`](Self::readable) and
    /// [`recv`](Self::recv).
    #[inline]
    pub async fn read(&mut self, buf: Vec<u8>) -> BufResult<usize, Vec<u8>> {
        match self {
            ConnReader::Plain(r) => r.read(buf).await,
            ConnReader::Tls(b) => {
                let (r, tls) = &mut **b;
                tls_read_into(tls, r, buf).await
            }
        }
    }

    fn tcp(&self) -> &TcpStream {
        let half = match self {
            ConnReader::Plain(r) => r,
            ConnReader::Tls(b) => &b.0,
        };
        // SAFETY: monoio's split halves share the stream through `Rc<UnsafeCell<TcpStream>>`
        // on this one thread (tasks are `!Send`). Only the socket's fd is read through this
        // reference (its number, and a clone of its `SharedFd` for a poll op); the writer half
        // never replaces the stream or its fd, so nothing it mutates is observed here.
        unsafe { &*half.0.get() }
    }

    /// Waits until the socket is readable: an io_uring POLL_ADD (a readiness poll on the
    /// legacy driver), which holds no buffer while the connection is idle. Then
    /// [`recv`](Self::recv).
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp().readable(false).await
    }

    /// One nonblocking receive into `scratch` (the core's buffer, crate::read_scratch),
    /// handing every plaintext byte to `sink` before returning. TLS: the ciphertext goes into
    /// the first half of `scratch` and the session's plaintext is read out through the second.
    /// `Err(WouldBlock)` when there was nothing to read after all.
    pub fn recv(&mut self, scratch: &mut [u8], sink: impl FnMut(&[u8])) -> io::Result<Received> {
        use std::os::fd::AsRawFd;
        let fd = self.tcp().as_raw_fd();
        match self {
            ConnReader::Plain(_) => match recv_nonblocking(fd, scratch)? {
                0 => Ok(Received::End),
                n => {
                    let mut sink = sink;
                    sink(&scratch[..n]);
                    Ok(Received::Data)
                }
            },
            ConnReader::Tls(b) => {
                let tls = &mut b.1;
                let (cipher, plain) = scratch.split_at_mut(scratch.len() / 2);
                match recv_nonblocking(fd, cipher)? {
                    0 => Ok(Received::End),
                    n => tls.absorb(&cipher[..n], plain, sink),
                }
            }
        }
    }

    /// Hands to `sink` what the TLS session already holds from the handshake's reads
    /// (ciphertext it did not take yet, plaintext past the request head), so that nothing
    /// waits for a readiness that will not come. Plaintext: nothing.
    pub fn drain_buffered(
        &mut self,
        scratch: &mut [u8],
        sink: impl FnMut(&[u8]),
    ) -> io::Result<Received> {
        match self {
            ConnReader::Plain(_) => Ok(Received::Data),
            ConnReader::Tls(b) => {
                let tls = &mut b.1;
                let pending = std::mem::take(&mut tls.pending);
                tls.absorb(&pending, scratch, sink)
            }
        }
    }

    /// TLS: the session has records to send that the input caused (alerts, key-update
    /// replies); the writer sends them.
    #[inline]
    pub fn wants_flush(&self) -> bool {
        match self {
            ConnReader::Plain(_) => false,
            ConnReader::Tls(b) => b.1.session.borrow().wants_write(),
        }
    }
}

/// The writing half of an established connection.
pub(crate) enum ConnWriter {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(Box<(OwnedWriteHalf<TcpStream>, TlsState)>),
}

impl ConnWriter {
    /// TLS: the connection must encrypt what it sends, so it keeps a writer task of its own.
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnWriter::Tls(_))
    }

    /// Writes a whole vectored batch of `total` bytes. Plaintext: `writev` until done. TLS:
    /// each frame is encrypted into the session's records (no re-serialisation), flushed as
    /// the session's send buffer fills and at the end.
    pub async fn write_frames<T: IoVecBuf>(
        &mut self,
        mut batch: T,
        total: usize,
        advance: impl Fn(&mut T, usize),
    ) -> BufResult<(), T> {
        match self {
            ConnWriter::Plain(w) => {
                let mut written = 0;
                while written < total {
                    let (res, b) = w.writev(batch).await;
                    batch = b;
                    match res {
                        Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), batch),
                        Ok(n) => {
                            written += n;
                            advance(&mut batch, n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return (Err(e), batch),
                    }
                }
                (Ok(()), batch)
            }
            ConnWriter::Tls(b) => {
                let (w, tls) = &mut **b;
                let res = async {
                    for part in iovec_slices(&batch) {
                        tls.write_plain(w, part).await?;
                    }
                    flush(&tls.session, w, &mut tls.wbuf).await
                }
                .await;
                (res, batch)
            }
        }
    }

    /// Writes one frame.
    pub async fn write_all(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            ConnWriter::Plain(w) => w.write_all(data).await.0.map(|_| ()),
            ConnWriter::Tls(b) => {
                let (w, tls) = &mut **b;
                tls.write_plain(w, &data).await?;
                flush(&tls.session, w, &mut tls.wbuf).await
            }
        }
    }

    /// TLS: records queued by the reader are waiting.
    #[inline]
    pub fn wants_flush(&self) -> bool {
        match self {
            ConnWriter::Plain(_) => false,
            ConnWriter::Tls(b) => b.1.session.borrow().wants_write(),
        }
    }

    /// TLS: sends what the session has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        match self {
            ConnWriter::Plain(_) => Ok(()),
            ConnWriter::Tls(b) => {
                let (w, tls) = &mut **b;
                flush(&tls.session, w, &mut tls.wbuf).await
            }
        }
    }

    /// Ends the stream (TLS: close_notify first).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            ConnWriter::Plain(w) => w.shutdown().await,
            ConnWriter::Tls(b) => {
                let (w, tls) = &mut **b;
                tls.shutdown(w).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<TlsFiles, String> {
        toml::from_str::<TlsFiles>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_table_requires_cert_and_key_and_nothing_else() {
        assert_eq!(
            parse("cert = \"a.pem\"\nkey = \"b.pem\"\n").unwrap(),
            TlsFiles {
                cert: "a.pem".into(),
                key: "b.pem".into()
            }
        );
        assert!(parse("cert = \"a.pem\"\n").unwrap_err().contains("key"));
        assert!(parse("key = \"b.pem\"\n").unwrap_err().contains("cert"));
        assert!(parse("cert = \"a\"\nkey = \"b\"\nciphers = \"x\"\n")
            .unwrap_err()
            .contains("ciphers"));
        assert!(parse("cert = 1\nkey = \"b\"\n").is_err());
    }

    fn tmp(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringcast-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn load_errors_name_the_file_and_the_reason() {
        let missing = TlsFiles {
            cert: "/nonexistent/ringcast-cert.pem".into(),
            key: "/nonexistent/ringcast-key.pem".into(),
        };
        let e = missing.load().unwrap_err().to_string();
        assert!(
            e.contains("cannot read /nonexistent/ringcast-cert.pem"),
            "{e}"
        );

        let empty = tmp("empty.pem", "not a pem file\n");
        let e = TlsFiles {
            cert: empty.clone(),
            key: empty.clone(),
        }
        .load()
        .unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");

        let bad = tmp(
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        );
        let e = TlsFiles {
            cert: bad,
            key: empty.clone(),
        }
        .load()
        .unwrap_err();
        assert!(matches!(e, TlsError::BadPem { .. }), "{e}");

        // A syntactically valid (base64) certificate block, then a key file without a key.
        let cert = tmp(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = TlsFiles {
            cert: cert.clone(),
            key: empty,
        }
        .load()
        .unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");

        // A key rustls cannot use (garbage DER) is rejected with rustls' reason.
        let key = tmp(
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let e = TlsFiles { cert, key }.load().unwrap_err();
        assert!(matches!(e, TlsError::Rejected(_)), "{e}");
    }
}
