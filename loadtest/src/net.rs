//! Connecting: source-address spreading (bind before connect), the WebSocket upgrade, the
//! Pusher handshake, and the URL/target description shared by every scenario.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::tls::Stream;

use crate::wsframe::{Frame, FrameReader};

/// One WebSocket endpoint (`--ws-url`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WsEndpoint {
    /// WebSocket server address.
    pub addr: SocketAddr,
    /// `Host` header value for the WebSocket server.
    pub host: String,
    /// Path prefix before `/app/{key}` (usually empty).
    pub path_prefix: String,
    /// `wss://`: TLS.
    #[serde(default)]
    pub tls: bool,
}

impl WsEndpoint {
    pub fn parse(url: &str) -> anyhow::Result<WsEndpoint> {
        let tls = is_tls_url(url);
        let (addr, host, path_prefix) = parse_url(url, if tls { 443 } else { 80 })?;
        Ok(WsEndpoint {
            addr,
            host,
            path_prefix,
            tls,
        })
    }

    pub fn at(addr: SocketAddr) -> WsEndpoint {
        WsEndpoint {
            addr,
            host: addr.to_string(),
            path_prefix: String::new(),
            tls: false,
        }
    }
}

/// Where and as whom to connect.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Target {
    /// WebSocket endpoints (never empty): connection `i` goes to `ws[i % ws.len()]`, so the
    /// subscribers of a scenario are spread round-robin over several nodes of a cluster.
    pub ws: Vec<WsEndpoint>,
    /// REST API address and host header.
    pub api_addr: SocketAddr,
    pub api_host: String,
    pub api_path_prefix: String,
    /// `https://` API URL: TLS.
    #[serde(default)]
    pub api_tls: bool,
    /// A PEM file of extra CA certificates to trust for TLS targets (beside the system's).
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// Number of loopback source addresses to spread connections over (127.0.0.1, .2, ...).
    /// Ignored (always the default route) when the server is not on loopback.
    pub source_addrs: u8,
}

/// `wss://` or `https://`.
pub fn is_tls_url(url: &str) -> bool {
    let u = url.trim_start().to_ascii_lowercase();
    u.starts_with("wss://") || u.starts_with("https://")
}

/// Splits `scheme://host:port/path` into (socket address, host header, path prefix).
pub fn parse_url(url: &str, default_port: u16) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
        None => (rest, String::new()),
    };
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("cannot resolve {with_port}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| anyhow::anyhow!("{with_port}: no IPv4 address"))?;
    Ok((addr, hostport.to_string(), path))
}

impl Target {
    /// The endpoint of connection `i` (round-robin over `--ws-url`s).
    pub fn ws_for(&self, i: usize) -> &WsEndpoint {
        &self.ws[i % self.ws.len()]
    }

    /// Source address for a connection from connection number `i` to `dst`.
    pub fn source_for(&self, i: usize, dst: SocketAddr) -> Option<Ipv4Addr> {
        match dst {
            SocketAddr::V4(a) if a.ip().is_loopback() && self.source_addrs > 1 => Some(
                Ipv4Addr::new(127, 0, 0, 1 + (i % self.source_addrs as usize) as u8),
            ),
            _ => None,
        }
    }

    /// Opens connection number `i` to its WebSocket endpoint (TCP, then TLS for `wss://`).
    pub async fn connect_ws(&self, i: usize) -> io::Result<Stream> {
        let ep = self.ws_for(i);
        let tcp = connect(self.source_for(i, ep.addr), ep.addr).await?;
        if ep.tls {
            crate::tls::connect(tcp, &ep.host, self.tls_ca.as_deref()).await
        } else {
            Ok(Stream::Plain(tcp))
        }
    }

    /// Opens an API connection from `src` (TCP, then TLS for an `https://` API URL).
    pub async fn connect_api(&self, src: Option<Ipv4Addr>) -> io::Result<Stream> {
        let tcp = connect(src, self.api_addr).await?;
        if self.api_tls {
            crate::tls::connect(tcp, &self.api_host, self.tls_ca.as_deref()).await
        } else {
            Ok(Stream::Plain(tcp))
        }
    }

    /// Request path for the Pusher WebSocket endpoint.
    pub fn ws_path(&self, ep: &WsEndpoint) -> String {
        format!(
            "{}/app/{}?protocol=7&client=ringcast-loadtest&version=0.1.0&flash=false",
            ep.path_prefix, self.key
        )
    }
}

/// Opens a TCP connection from `src` (port chosen at connect time, so the kernel can reuse a
/// port for different destinations: IP_BIND_ADDRESS_NO_PORT) to `dst`.
pub async fn connect(src: Option<Ipv4Addr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let Some(src) = src else {
        let s = TcpStream::connect_addr(dst).await?;
        s.set_nodelay(true)?;
        return Ok(s);
    };
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    // SAFETY: setsockopt with a valid fd and a pointer to an int that lives across the call.
    unsafe {
        let one: libc::c_int = 1;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = sock.into();
    let stream = TcpStream::from_std(std_stream)?;
    stream.writable(false).await?;
    // SO_ERROR tells whether the non-blocking connect succeeded.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `err`, which lives across the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(stream)
}

/// Reads once into the reader's buffer. Ok(false) on EOF.
pub async fn read_some<R: AsyncReadRent>(s: &mut R, r: &mut FrameReader) -> io::Result<bool> {
    use monoio::buf::IoBufMut;
    let buf = r.take_buf();
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
    r.give_back(slice.into_inner());
    Ok(res? > 0)
}

/// Sends the upgrade request and reads the 101 response; bytes after the head stay in `r`.
pub async fn upgrade<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    host: &str,
    path: &str,
    r: &mut FrameReader,
    seed: u64,
) -> anyhow::Result<()> {
    // Any 16 bytes, base64-encoded, is a valid key; vary it per connection.
    let key = base64_16(seed);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (res, _) = s.write_all(req.into_bytes()).await;
    res?;
    for _ in 0..64 {
        if !read_some(s, r).await? {
            anyhow::bail!("connection closed during the upgrade");
        }
        let mut head = Vec::new();
        // Find the end of the head in what is buffered.
        let consumed = {
            let data = r.take_buf();
            let found = memchr::memmem::find(&data, b"\r\n\r\n");
            let out = match found {
                Some(end) => {
                    head.extend_from_slice(&data[..end + 4]);
                    let mut rest = data;
                    rest.drain(..end + 4);
                    r.give_back(rest);
                    true
                }
                None => {
                    if data.len() > 16 * 1024 {
                        anyhow::bail!("upgrade response head too large");
                    }
                    r.give_back(data);
                    false
                }
            };
            out
        };
        if consumed {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            resp.parse(&head)?;
            if resp.code != Some(101) {
                anyhow::bail!(
                    "upgrade refused: HTTP {} {}",
                    resp.code.unwrap_or(0),
                    resp.reason.unwrap_or("")
                );
            }
            return Ok(());
        }
    }
    anyhow::bail!("upgrade response head never completed")
}

fn base64_16(seed: u64) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..].copy_from_slice(&seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    let mut out = String::with_capacity(24);
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, v)| acc | (u32::from(*v) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a Pusher server said in `pusher:connection_established`.
#[derive(Debug, Clone)]
pub struct Established {
    pub socket_id: String,
    pub activity_timeout: u64,
}

/// The event name and the raw `data` of a Pusher message (non hot path).
pub fn event_of(text: &[u8]) -> Option<(String, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    let ev = v.get("event")?.as_str()?.to_string();
    let data = v.get("data").cloned().unwrap_or(serde_json::Value::Null);
    Some((ev, data))
}

/// `data` may be a JSON string holding JSON (Pusher double encoding) or an object.
pub fn data_object(data: &serde_json::Value) -> serde_json::Value {
    match data {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap_or(serde_json::Value::Null),
        other => other.clone(),
    }
}

/// Upgrades and waits for `pusher:connection_established` (or fails on `pusher:error`/close).
pub async fn pusher_connect<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    t: &Target,
    ep: &WsEndpoint,
    r: &mut FrameReader,
    seed: u64,
    timeout: Duration,
) -> anyhow::Result<Established> {
    let fut = async {
        upgrade(s, &ep.host, &t.ws_path(ep), r, seed).await?;
        wait_for(s, r, |ev, data| match ev {
            "pusher:connection_established" => {
                let d = data_object(data);
                let socket_id = d
                    .get("socket_id")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                match socket_id {
                    Some(socket_id) => Some(Ok(Established {
                        socket_id,
                        activity_timeout: d
                            .get("activity_timeout")
                            .and_then(|v| v.as_u64())
                            .unwrap_or(120),
                    })),
                    None => Some(Err(anyhow::anyhow!(
                        "connection_established without socket_id"
                    ))),
                }
            }
            "pusher:error" => Some(Err(anyhow::anyhow!("pusher:error {}", data))),
            _ => None,
        })
        .await
    };
    match monoio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("handshake timed out after {timeout:?}"),
    }
}

/// Reads messages until `f` returns Some (answering pings on the way). Bounded by the caller's
/// timeout.
pub async fn wait_for<T, S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    r: &mut FrameReader,
    mut f: impl FnMut(&str, &serde_json::Value) -> Option<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    loop {
        let mut out: Option<anyhow::Result<T>> = None;
        let mut closed = None;
        r.drain(|fr| {
            match fr {
                Frame::Text(t) => {
                    if let Some((ev, data)) = event_of(t) {
                        out = f(&ev, &data);
                    }
                }
                Frame::Close(c) => closed = Some(c),
                _ => {}
            }
            out.is_none() && closed.is_none()
        })?;
        if let Some(o) = out {
            return o;
        }
        if let Some(c) = closed {
            anyhow::bail!("server closed the connection ({c:?})");
        }
        if !read_some(s, r).await? {
            anyhow::bail!("connection closed by the server");
        }
    }
}

/// The JSON text of a `pusher:subscribe`.
pub fn subscribe_msg(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> String {
    let mut d = serde_json::Map::new();
    d.insert("auth".into(), auth.unwrap_or("").into());
    if let Some(cd) = channel_data {
        d.insert("channel_data".into(), cd.into());
    }
    d.insert("channel".into(), channel.into());
    serde_json::json!({"event": "pusher:subscribe", "data": d}).to_string()
}

pub fn unsubscribe_msg(channel: &str) -> String {
    serde_json::json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}).to_string()
}

/// Auth for a channel: private/presence channels get a locally signed `key:hex`.
pub fn auth_for(
    t: &Target,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> Option<String> {
    if channel.starts_with("private-") || channel.starts_with("presence-") {
        Some(ringcast_protocol::channel_auth(
            &t.key,
            &t.secret,
            socket_id,
            channel,
            channel_data,
        ))
    } else {
        None
    }
}

/// Subscribes to every channel in `channels` and waits for each `subscription_succeeded`.
pub async fn subscribe_all<S: AsyncReadRent + AsyncWriteRent>(
    s: &mut S,
    r: &mut FrameReader,
    t: &Target,
    socket_id: &str,
    channels: &[String],
    seed: u32,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let auth = auth_for(t, socket_id, ch, None);
        crate::wsframe::client_text(
            subscribe_msg(ch, auth.as_deref(), None).as_bytes(),
            seed.wrapping_add(i as u32),
            &mut out,
        );
    }
    let (res, _) = s.write_all(out).await;
    res?;
    let mut pending: std::collections::HashSet<&str> =
        channels.iter().map(String::as_str).collect();
    while !pending.is_empty() {
        let mut failed = None;
        wait_for(s, r, |ev, data| {
            if ev == "pusher_internal:subscription_succeeded"
                || ev == "pusher:subscription_succeeded"
            {
                return Some(Ok(()));
            }
            if ev == "pusher:error" || ev == "pusher:subscription_error" {
                failed = Some(format!("{ev} {data}"));
                return Some(Ok(()));
            }
            None
        })
        .await?;
        if let Some(e) = failed {
            anyhow::bail!("subscription failed: {e}");
        }
        // The channel of the ack is not needed: count acks.
        let first = pending.iter().next().copied();
        if let Some(f) = first {
            pending.remove(f);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let (a, h, p) = parse_url("ws://127.0.0.1:6001", 80).unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:6001");
        assert_eq!(h, "127.0.0.1:6001");
        assert_eq!(p, "");
        let (a, _, p) = parse_url("http://127.0.0.1/pusher/", 80).unwrap();
        assert_eq!(a.port(), 80);
        assert_eq!(p, "/pusher");
    }

    #[test]
    fn websocket_keys_are_24_chars_base64() {
        let k = base64_16(12345);
        assert_eq!(k.len(), 24);
        assert!(k.ends_with("=="));
    }
}
