//! The read path (conn.rs `read_step`): a connection waits for readability holding no buffer,
//! receives into the core's 64 KiB scratch and decodes from it; only a frame still incomplete
//! at the end of a receive stays with the connection. These tests drive a raw WebSocket client
//! (plaintext and TLS) with byte-exact writes and check that every frame is decoded whatever
//! the receive boundaries: a frame split at every byte, many frames in one receive, a frame
//! bigger than the scratch, frames sent with the request head, and that a connection gone
//! silent mid-frame is pinged and closed by the usual liveness timeouts.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{block_on, Server, WAIT};
use ringcast_protocol::ws::{encode_client_frame_into, OpCode};
use ringcast_protocol::{FrameDecoder, Message, Role};
use serde_json::Value;

const MASK: [u8; 4] = [0x1f, 0x2e, 0x3d, 0x4c];
const UPGRADE: &str = "GET /app/app-key?protocol=7&client=raw&version=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A WebSocket client writing exactly the bytes it is given.
struct Raw {
    s: Box<dyn Stream>,
    dec: FrameDecoder,
}

fn text(payload: &str) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame_into(OpCode::Text, payload.as_bytes(), MASK, &mut v);
    v
}

fn ping() -> Vec<u8> {
    text(r#"{"event":"pusher:ping","data":{}}"#)
}

impl Raw {
    /// Sends the upgrade request followed by `extra` in one write, reads the 101 head and
    /// `pusher:connection_established`.
    fn open(mut s: Box<dyn Stream>, extra: &[u8]) -> Raw {
        let mut first = UPGRADE.as_bytes().to_vec();
        first.extend_from_slice(extra);
        s.write_all(&first).unwrap();
        s.flush().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 4096, "a 101 head");
            assert_eq!(s.read(&mut b).unwrap(), 1, "closed during the upgrade");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        let mut c = Raw {
            s,
            dec: FrameDecoder::new(Role::Client, 1 << 20),
        };
        assert_eq!(c.event(), "pusher:connection_established");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
        self.s.flush().unwrap();
    }

    /// The next message (bounded by the socket's read timeout).
    fn next(&mut self) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.dec.poll_message().expect("server frames decode") {
                return m;
            }
            let n = self.s.read(&mut buf).expect("read within the timeout");
            assert!(n > 0, "the server closed the connection");
            self.dec.handle_bytes(&buf[..n]);
        }
    }

    /// The next text message's `event`.
    fn event(&mut self) -> String {
        match self.next() {
            Message::Text(t) => {
                let v: Value = serde_json::from_slice(&t).expect("JSON");
                v["event"].as_str().expect("an event").to_string()
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    fn expect_pongs(&mut self, n: usize) {
        for i in 0..n {
            assert_eq!(self.event(), "pusher:pong", "pong {i} of {n}");
        }
    }
}

fn plain(addr: SocketAddr) -> Box<dyn Stream> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    Box::new(s)
}

/// A test CA and a certificate for 127.0.0.1 signed by it, made with the openssl CLI.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(name: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("ringcast-read-path-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let st = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("the openssl CLI");
            assert!(st.success(), "openssl {args:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Read Path Test CA",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "0x1234",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ]);
        Certs { dir }
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn server_toml(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            self.path("cert.pem"),
            self.path("key.pem")
        )
    }

    fn client(&self, addr: SocketAddr) -> Box<dyn Stream> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(Path::new(&self.path("ca.pem"))).unwrap();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        Box::new(rustls::StreamOwned::new(conn, tcp))
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A frame split at every byte: one write carries a whole ping and the first `i` bytes of
/// the next frame; once the first ping is answered the server has received those bytes, and
/// the rest of the frame goes in a second write. Both must be answered, for every `i`.
fn split_at_every_byte(c: &mut Raw) {
    let second = text(r#"{"event":"pusher:ping","data":{"split":"at every byte boundary"}}"#);
    for i in 1..second.len() {
        let mut first = ping();
        first.extend_from_slice(&second[..i]);
        c.send(&first);
        c.expect_pongs(1);
        c.send(&second[i..]);
        c.expect_pongs(1);
    }
}

/// 500 frames in one write (one receive, or a few): every one answered, in order.
fn many_frames_in_one_receive(c: &mut Raw) {
    let mut burst = Vec::new();
    for _ in 0..500 {
        burst.extend_from_slice(&ping());
    }
    c.send(&burst);
    c.expect_pongs(500);
}

/// A 200 KiB frame (three times the scratch), followed by a ping in the same write.
fn frame_bigger_than_the_scratch(c: &mut Raw) {
    let big = format!(
        r#"{{"event":"pusher:ping","data":{{"pad":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let mut bytes = text(&big);
    bytes.extend_from_slice(&ping());
    c.send(&bytes);
    c.expect_pongs(2);
}

/// Large messages, and pings unlimited: pings are the probe here (hundreds per connection,
/// far past the default `pings_per_minute` budget, which engine/tests/engine.rs tests).
const BIG: &str = "max_message_bytes = 1048576\npings_per_minute = 0\n";

#[test]
fn plaintext_frames_decode_across_every_receive_boundary() {
    let s = Server::start(1, BIG);
    let mut c = Raw::open(plain(s.addr), &[]);
    split_at_every_byte(&mut c);
    many_frames_in_one_receive(&mut c);
    frame_bigger_than_the_scratch(&mut c);
    // The decoder state went away with each completed frame: the connection still works.
    c.send(&ping());
    c.expect_pongs(1);
}

#[test]
fn tls_frames_decode_across_every_receive_boundary() {
    let certs = Certs::make("frames");
    let s = Server::start(1, &format!("{BIG}{}", certs.server_toml()));
    let mut c = Raw::open(certs.client(s.addr), &[]);
    split_at_every_byte(&mut c);
    many_frames_in_one_receive(&mut c);
    frame_bigger_than_the_scratch(&mut c);
    c.send(&ping());
    c.expect_pongs(1);
}

/// Frames written together with the request head: read with the head (plaintext), or left in
/// the TLS session by the handshake's reads; both must be handled without waiting for more.
#[test]
fn frames_sent_with_the_request_head_are_handled() {
    let mut extra = Vec::new();
    for _ in 0..20 {
        extra.extend_from_slice(&ping());
    }
    let s = Server::start(1, "");
    let mut c = Raw::open(plain(s.addr), &extra);
    c.expect_pongs(20);

    let certs = Certs::make("head");
    let t = Server::start(1, &certs.server_toml());
    let mut c = Raw::open(certs.client(t.addr), &extra);
    c.expect_pongs(20);
}

/// A client that goes silent halfway through a frame holds the connection's decoder (the only
/// per-connection read state); the liveness sweep still pings it and closes it with 4201.
#[test]
fn a_connection_silent_mid_frame_is_pinged_then_closed() {
    let s = Server::start(1, "");
    let h = s.handle();
    let mut c = Raw::open(plain(s.addr), &[]);
    let second = ping();
    let mut first = ping();
    first.extend_from_slice(&second[..second.len() / 2]);
    c.send(&first);
    c.expect_pongs(1); // the half frame is in, and counted as activity now
    h.advance_clock(Duration::from_secs(120));
    block_on(h.tick_now()).unwrap();
    assert_eq!(c.event(), "pusher:ping");
    h.advance_clock(Duration::from_secs(30));
    block_on(h.tick_now()).unwrap();
    match c.next() {
        Message::Close(code, _) => assert_eq!(code, Some(4201)),
        other => panic!("expected the close frame, got {other:?}"),
    }
    s.wait_metrics("pong timeout counted", |m| m.closed_by("pong_timeout") == 1);
}

/// A client that hangs up mid-frame ends its connection cleanly (counted, removed).
#[test]
fn a_client_gone_mid_frame_is_cleaned_up() {
    let s = Server::start(1, "");
    let mut c = Raw::open(plain(s.addr), &[]);
    let mut first = ping();
    first.extend_from_slice(&ping()[..5]);
    c.send(&first);
    c.expect_pongs(1);
    drop(c);
    s.wait_metrics("the connection is gone", |m| {
        m.connections_current == 0 && m.closed_by("client_closed") == 1
    });
}
