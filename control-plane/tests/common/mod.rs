//! Test support: an in-process engine with the control plane on an ephemeral loopback port, a
//! blocking HTTP/1.1 client, Pusher request signing, and a blocking WebSocket client
//! (tungstenite). Every wait is bounded.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast_control_plane::{ApiConfig, ApiServer, ControlPlane};
use ringcast_engine::{Engine, EngineHandle, HttpService, RawConfig, RunningEngine};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

pub const APP_ID: &str = "app-id";
pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";
/// Upper bound for any single wait in tests (not a performance threshold).
pub const WAIT: Duration = Duration::from_secs(10);

/// Two apps: the default one (rotated secrets, server-side auth for `private-server-*` and
/// `presence-server-*`) and a second one with a small event limit.
pub const TWO_APPS: &str = r#"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
secrets = ["old-secret"]
client_events = true
server_auth_channels = ["private-server-*", "presence-server-*"]

[[apps]]
id = "small"
key = "small-key"
secret = "small-secret"
max_event_bytes = 100

[[apps]]
id = "off"
key = "off-key"
secret = "off-secret"
enabled = false
"#;

pub struct Server {
    pub running: Option<RunningEngine>,
    /// WebSocket (public) address.
    pub addr: SocketAddr,
    /// Where the HTTP API answers (== addr unless started with a separate API listener).
    pub api_addr: SocketAddr,
    pub api_server: Option<ApiServer>,
    pub control_plane: ControlPlane,
}

pub struct Options {
    pub workers: usize,
    pub toml: &'static str,
    pub api: ApiConfig,
    pub separate_api_listener: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 2,
            toml: TWO_APPS,
            api: ApiConfig::default(),
            separate_api_listener: false,
        }
    }
}

impl Server {
    pub fn start() -> Server {
        Server::with(Options::default())
    }

    pub fn with(o: Options) -> Server {
        let mut raw = RawConfig::from_toml(o.toml).expect("test config parses");
        raw.listen = Some("127.0.0.1:0".into());
        raw.workers = Some(o.workers);
        let config = raw.resolve(o.workers).expect("test config resolves");
        let engine = Engine::bind(config, None).expect("bind");
        let addr = engine.local_addr();
        let cp = ControlPlane::new(engine.handle(), o.api);
        let (http, api_server): (Arc<dyn HttpService>, _) = if o.separate_api_listener {
            let api = ApiServer::start("127.0.0.1:0".parse().unwrap(), &cp, 1).expect("api");
            (cp.health_only(), Some(api))
        } else {
            (Arc::new(cp.clone()), None)
        };
        let running = engine.start(Some(http)).expect("start");
        let api_addr = api_server.as_ref().map(|a| a.local_addr()).unwrap_or(addr);
        Server {
            running: Some(running),
            addr,
            api_addr,
            api_server,
            control_plane: cp,
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.running.as_ref().expect("running").handle()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr, KEY)
    }

    /// A signed request to the API (default app credentials).
    pub fn signed(&self, method: &str, path: &str, params: &[(&str, &str)], body: &str) -> Resp {
        self.signed_as(KEY, SECRET, method, path, params, body)
    }

    pub fn signed_as(
        &self,
        key: &str,
        secret: &str,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
        body: &str,
    ) -> Resp {
        let q = sign(key, secret, method, path, params, body.as_bytes(), now());
        http(
            self.api_addr,
            method,
            &format!("{path}?{q}"),
            &[],
            body.as_bytes(),
        )
    }

    /// A Bearer request to the API.
    pub fn bearer(&self, secret: &str, method: &str, path_and_query: &str, body: &str) -> Resp {
        http(
            self.api_addr,
            method,
            path_and_query,
            &[("Authorization", &format!("Bearer {secret}"))],
            body.as_bytes(),
        )
    }

    /// Polls `f` (bounded) until it holds.
    pub fn eventually(&self, what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(a) = self.api_server.take() {
            a.shutdown();
        }
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The signed query string (without `?`).
pub fn sign(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    ts: u64,
) -> String {
    let extra: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ringcast_protocol::sign_rest(key, secret, method, path, &extra, body, ts)
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status and the JSON error code; returns the message.
    pub fn expect_error(&self, status: u16, code: &str) -> String {
        let v = self.json();
        assert_eq!(
            (self.status, v["code"].as_str()),
            (status, Some(code)),
            "body {v}"
        );
        v["error"].as_str().expect("error text").to_owned()
    }
}

/// One blocking HTTP/1.1 connection (keep-alive).
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The response being read answers a HEAD request: no body follows.
    head_only: bool,
}

impl HttpConn {
    pub fn open(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        HttpConn {
            stream,
            buf: Vec::new(),
            head_only: false,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
        self.head_only = method == "HEAD";
        let r = self.read_response();
        self.head_only = false;
        r
    }

    /// Reads one response (Content-Length framed). Panics on EOF before a full response.
    pub fn read_response(&mut self) -> Resp {
        self.try_read_response().expect("a complete response")
    }

    /// One response, or None on EOF/reset before any byte of it.
    pub fn try_read_response(&mut self) -> Option<Resp> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap();
                let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let len: usize = if self.head_only {
                    0
                } else {
                    headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0)
                };
                if status == 100 {
                    self.buf.drain(..end + 4);
                    return Some(Resp {
                        status,
                        headers,
                        body: Vec::new(),
                    });
                }
                while self.buf.len() < end + 4 + len {
                    if !self.fill() {
                        panic!("EOF inside a response body");
                    }
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Some(Resp {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill() {
                assert!(self.buf.is_empty(), "EOF inside a response head");
                return None;
            }
        }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionReset
                    || e.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                false
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// True once the server has closed the connection (EOF within WAIT).
    pub fn closed_by_server(&mut self) -> bool {
        self.try_read_response().is_none()
    }
}

/// One request on a fresh connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    HttpConn::open(addr).request(method, target, headers, body)
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub socket_id: String,
}

impl Client {
    /// Connects and reads `pusher:connection_established`.
    pub fn connect(addr: SocketAddr, key: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let url = format!("ws://{addr}/app/{key}?protocol=7&client=rust&version=1.0");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
        let mut c = Client {
            ws,
            socket_id: String::new(),
        };
        let first = c.recv();
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
        c.socket_id = data["socket_id"].as_str().unwrap().to_string();
        c
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    /// Next text message as JSON (skips WebSocket control frames). Panics after WAIT.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).expect("server sends JSON")
                }
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("unexpected message {other:?}"),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Next message whose event is `event`, skipping at most 100 others.
    pub fn recv_event(&mut self, event: &str) -> Value {
        for _ in 0..100 {
            let m = self.recv();
            if m["event"] == event {
                return m;
            }
        }
        panic!("no {event} within 100 messages");
    }

    /// Sends pusher:ping and asserts the very next message is pusher:pong: nothing else was
    /// queued for this client.
    pub fn assert_nothing_pending(&mut self) {
        self.send(json!({"event": "pusher:ping", "data": {}}));
        let m = self.recv();
        assert_eq!(m["event"], "pusher:pong", "expected nothing, got {m}");
    }

    pub fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}));
        self.recv_event("pusher_internal:subscription_succeeded")
    }

    pub fn subscribe_with(&mut self, channel: &str, auth: &str, channel_data: Option<&str>) {
        let mut data = json!({"auth": auth, "channel": channel});
        if let Some(cd) = channel_data {
            data["channel_data"] = cd.into();
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}));
    }

    pub fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = ringcast_protocol::channel_auth(KEY, SECRET, &self.socket_id, channel, None);
        self.subscribe_with(channel, &auth, None);
        self.recv_event("pusher_internal:subscription_succeeded")
    }

    pub fn subscribe_presence(&mut self, channel: &str, user_id: &str) -> Value {
        let cd = json!({"user_id": user_id, "user_info": {"name": format!("user {user_id}")}})
            .to_string();
        let auth =
            ringcast_protocol::channel_auth(KEY, SECRET, &self.socket_id, channel, Some(&cd));
        self.subscribe_with(channel, &auth, Some(&cd));
        self.recv_event("pusher_internal:subscription_succeeded")
    }

    /// pusher:signin as `user_id`; returns the signin_success message.
    pub fn signin(&mut self, user_id: &str) -> Value {
        let user_data = json!({"id": user_id, "user_info": {"n": 1}}).to_string();
        let auth = ringcast_protocol::signin_auth(KEY, SECRET, &self.socket_id, &user_data);
        self.send(
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        );
        self.recv_event("pusher:signin_success")
    }

    /// Reads until the server closes; returns the close code.
    pub fn recv_close(&mut self) -> Option<u16> {
        for _ in 0..10_000 {
            match self.ws.read() {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => return None,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
        panic!("no close frame");
    }
}
