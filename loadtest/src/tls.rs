//! TLS for the load generator (`wss://` and `https://` targets): a rustls client session driven
//! by owned-buffer monoio reads and writes, behind a stream enum so plaintext connections pay
//! nothing. Trust: the system's roots plus `--tls-ca` (a PEM file, e.g. a test CA).

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();

/// The process's client config (built once): system roots plus the `ca` file.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if let Some(ca) = ca {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                let mut n = 0;
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
                    n += 1;
                }
                if n == 0 {
                    return Err(format!("{}: no PEM certificate", ca.display()));
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(cfg))
        })
        .clone()
}

/// A TLS session and its buffers (opaque).
pub struct TlsState {
    session: Rc<RefCell<ClientConnection>>,
    pending: Vec<u8>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Plaintext scratch (initialised once, reused): reads land here and are copied into the
    /// caller's uninitialised buffer, which is never zeroed.
    plain: Vec<u8>,
}

/// Largest plaintext read at once (a TLS record holds at most 16 KiB).
const MAX_PLAIN: usize = 64 * 1024;

fn feed(
    session: &RefCell<ClientConnection>,
    mut data: &[u8],
    pending: &mut Vec<u8>,
) -> io::Result<()> {
    let mut s = session.borrow_mut();
    while !data.is_empty() {
        match s.read_tls(&mut data) {
            Ok(_) => {
                s.process_new_packets().map_err(io::Error::other)?;
            }
            Err(e) => {
                let st = s.process_new_packets().map_err(io::Error::other)?;
                if st.plaintext_bytes_to_read() == 0 {
                    return Err(e);
                }
                pending.extend_from_slice(data);
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn flush<W: AsyncWriteRent>(
    session: &RefCell<ClientConnection>,
    w: &mut W,
    wbuf: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        {
            let mut s = session.borrow_mut();
            if !s.wants_write() {
                return Ok(());
            }
            wbuf.clear();
            s.write_tls(wbuf)?;
        }
        let (r, b) = w.write_all(std::mem::take(wbuf)).await;
        *wbuf = b;
        r?;
    }
}

impl TlsState {
    fn new(session: Rc<RefCell<ClientConnection>>) -> TlsState {
        TlsState {
            session,
            pending: Vec::new(),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            plain: Vec::new(),
        }
    }

    /// Reads up to `want` plaintext bytes into the scratch buffer (grown, and so zeroed, only
    /// when a larger read than ever before is asked for). The bytes are `self.plain[..n]`.
    async fn read_scratch<R: AsyncReadRent>(
        &mut self,
        r: &mut R,
        want: usize,
    ) -> io::Result<usize> {
        let want = want.min(MAX_PLAIN);
        let mut scratch = std::mem::take(&mut self.plain);
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let res = self.read_plain(r, &mut scratch[..want]).await;
        self.plain = scratch;
        res
    }

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
                feed(&self.session, &data, &mut self.pending)?;
                continue;
            }
            let want = out.len().clamp(4096, 17 * 1024);
            let mut buf = std::mem::take(&mut self.rbuf);
            if buf.capacity() < want {
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
                    fed?;
                }
            }
        }
    }

    async fn write_plain<W: AsyncWriteRent>(&mut self, w: &mut W, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.session.borrow_mut().writer().write(rest)?;
            rest = &rest[n..];
            if !rest.is_empty() {
                if n == 0 && !self.session.borrow().wants_write() {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                flush(&self.session, w, &mut self.wbuf).await?;
            }
        }
        flush(&self.session, w, &mut self.wbuf).await
    }
}

/// The name a certificate must carry for `host` (`host[:port]`, `[v6]:port`).
pub fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let name = host
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(name.to_string())
        .map_err(|e| io::Error::other(format!("TLS server name {name:?}: {e}")))
}

/// Runs the client side of a handshake with `host` (its certificate's name or IP address).
pub async fn connect(tcp: TcpStream, host: &str, ca: Option<&Path>) -> io::Result<Stream> {
    let config = client_config(ca).map_err(io::Error::other)?;
    let name = server_name(host)?;
    let session = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut tcp = tcp;
    let mut tls = TlsState::new(Rc::new(RefCell::new(session)));
    tls.rbuf = Vec::with_capacity(16 * 1024);
    loop {
        flush(&tls.session, &mut tcp, &mut tls.wbuf).await?;
        if !tls.session.borrow().is_handshaking() {
            break;
        }
        let buf = std::mem::take(&mut tls.rbuf);
        let (res, buf) = tcp.read(buf).await;
        tls.rbuf = buf;
        let n = res?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the TLS handshake",
            ));
        }
        let data = std::mem::take(&mut tls.rbuf);
        let fed = feed(&tls.session, &data[..n], &mut tls.pending);
        tls.rbuf = data;
        tls.rbuf.clear();
        if let Err(e) = fed {
            let _ = flush(&tls.session, &mut tcp, &mut tls.wbuf).await;
            return Err(e);
        }
    }
    Ok(Stream::Tls(Box::new((tcp, tls))))
}

/// A connection to the server under test: plaintext or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<(TcpStream, TlsState)>),
}

/// The reading half of a split [`Stream`].
pub enum ReadHalf {
    Plain(TcpOwnedReadHalf),
    Tls(Box<(TcpOwnedReadHalf, TlsState)>),
}

/// The writing half of a split [`Stream`].
pub enum WriteHalf {
    Plain(TcpOwnedWriteHalf),
    Tls(Box<(TcpOwnedWriteHalf, TlsState)>),
}

impl Stream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(b) => &b.0,
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(b) => {
                let (tcp, tls) = *b;
                let (r, w) = tcp.into_split();
                let w_state = TlsState::new(tls.session.clone());
                (
                    ReadHalf::Tls(Box::new((r, tls))),
                    WriteHalf::Tls(Box::new((w, w_state))),
                )
            }
        }
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp().as_raw_fd()
    }
}

async fn read_into<R: AsyncReadRent, T: IoBufMut>(
    tls: &mut TlsState,
    r: &mut R,
    mut buf: T,
) -> BufResult<usize, T> {
    let total = buf.bytes_total();
    if total == 0 {
        return (Ok(0), buf);
    }
    let res = tls.read_scratch(r, total).await;
    if let Ok(n) = res {
        // SAFETY: `write_ptr()` names `total >= n` writable bytes owned by `buf`; the scratch
        // holds `n` initialised bytes and is a different allocation. After the copy the first
        // `n` bytes are initialised.
        unsafe {
            std::ptr::copy_nonoverlapping(tls.plain.as_ptr(), buf.write_ptr(), n);
            buf.set_init(n);
        }
    }
    (res, buf)
}

async fn readv_into<R: AsyncReadRent, T: IoVecBufMut>(
    tls: &mut TlsState,
    r: &mut R,
    mut buf: T,
) -> BufResult<usize, T> {
    if buf.write_iovec_len() == 0 {
        return (Ok(0), buf);
    }
    // SAFETY: `write_iovec_len() > 0` valid iovecs at `write_iovec_ptr()`.
    let want = unsafe { (*buf.write_iovec_ptr()).iov_len };
    let res = tls.read_scratch(r, want).await;
    if let Ok(n) = res {
        // SAFETY: the first iovec names `want >= n` writable bytes owned by `buf` (read again
        // after the await); the scratch holds `n` initialised bytes in another allocation.
        unsafe {
            let iov = *buf.write_iovec_ptr();
            std::ptr::copy_nonoverlapping(tls.plain.as_ptr(), iov.iov_base as *mut u8, n);
            buf.set_init(n);
        }
    }
    (res, buf)
}

fn io_slice<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: an `IoBuf` guarantees `bytes_init()` initialised bytes at `read_ptr()`.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

async fn writev_from<W: AsyncWriteRent, T: IoVecBuf>(
    tls: &mut TlsState,
    w: &mut W,
    buf: T,
) -> BufResult<usize, T> {
    let res = async {
        // SAFETY: an `IoVecBuf` guarantees `read_iovec_len()` valid iovecs at
        // `read_iovec_ptr()`, each naming initialised memory, while it is borrowed.
        let iovs =
            unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let mut n = 0;
        for v in iovs {
            // SAFETY: see above.
            let part = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            tls.write_plain(w, part).await?;
            n += part.len();
        }
        Ok(n)
    }
    .await;
    (res, buf)
}

async fn shutdown_tls<W: AsyncWriteRent>(tls: &mut TlsState, w: &mut W) -> io::Result<()> {
    tls.session.borrow_mut().send_close_notify();
    flush(&tls.session, w, &mut tls.wbuf).await?;
    w.shutdown().await
}

impl AsyncReadRent for Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(b) => {
                let (tcp, tls) = &mut **b;
                read_into(tls, tcp, buf).await
            }
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.readv(buf).await,
            Stream::Tls(b) => {
                let (tcp, tls) = &mut **b;
                readv_into(tls, tcp, buf).await
            }
        }
    }
}

impl AsyncReadRent for ReadHalf {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ReadHalf::Plain(s) => s.read(buf).await,
            ReadHalf::Tls(b) => {
                let (r, tls) = &mut **b;
                read_into(tls, r, buf).await
            }
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            ReadHalf::Plain(s) => s.readv(buf).await,
            ReadHalf::Tls(b) => {
                let (r, tls) = &mut **b;
                readv_into(tls, r, buf).await
            }
        }
    }
}

impl AsyncWriteRent for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write(buf).await,
            Stream::Tls(b) => {
                let (tcp, tls) = &mut **b;
                let n = buf.bytes_init();
                let res = tls.write_plain(tcp, io_slice(&buf)).await.map(|_| n);
                (res, buf)
            }
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.writev(buf).await,
            Stream::Tls(b) => {
                let (tcp, tls) = &mut **b;
                writev_from(tls, tcp, buf).await
            }
        }
    }
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Tls(b) => {
                let (tcp, tls) = &mut **b;
                flush(&tls.session, tcp, &mut tls.wbuf).await
            }
        }
    }
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(b) => {
                let (tcp, tls) = &mut **b;
                shutdown_tls(tls, tcp).await
            }
        }
    }
}

impl AsyncWriteRent for WriteHalf {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            WriteHalf::Plain(s) => s.write(buf).await,
            WriteHalf::Tls(b) => {
                let (w, tls) = &mut **b;
                let n = buf.bytes_init();
                let res = tls.write_plain(w, io_slice(&buf)).await.map(|_| n);
                (res, buf)
            }
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            WriteHalf::Plain(s) => s.writev(buf).await,
            WriteHalf::Tls(b) => {
                let (w, tls) = &mut **b;
                writev_from(tls, w, buf).await
            }
        }
    }
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.flush().await,
            WriteHalf::Tls(b) => {
                let (w, tls) = &mut **b;
                flush(&tls.session, w, &mut tls.wbuf).await
            }
        }
    }
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WriteHalf::Plain(s) => s.shutdown().await,
            WriteHalf::Tls(b) => {
                let (w, tls) = &mut **b;
                shutdown_tls(tls, w).await
            }
        }
    }
}
