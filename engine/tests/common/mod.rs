//! Test support: an in-process Ringcast on an ephemeral loopback port and a blocking
//! WebSocket client (tungstenite). Every wait is bounded.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringcast_engine::{Engine, EngineHandle, RawConfig, RunningEngine};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";
/// Upper bound for any single wait in tests (not a performance threshold).
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Server {
    pub running: Option<RunningEngine>,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a server with `workers` cores and extra TOML (top-level keys / [[apps]]).
    pub fn start(workers: usize, toml: &str) -> Server {
        let mut raw = RawConfig::from_toml(toml).expect("test config parses");
        raw.listen = Some("127.0.0.1:0".into());
        raw.workers = Some(workers);
        let config = raw.resolve(workers).expect("test config resolves");
        let engine = Engine::bind(config, None).expect("bind");
        let addr = engine.local_addr();
        let running = engine.start(None).expect("start");
        Server {
            running: Some(running),
            addr,
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.running.as_ref().expect("running").handle()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr, KEY)
    }

    /// Waits (bounded) until `f` holds on the engine metrics.
    pub fn wait_metrics(&self, what: &str, f: impl Fn(&ringcast_engine::MetricsSnapshot) -> bool) {
        let h = self.handle();
        let until = Instant::now() + WAIT;
        loop {
            let m = h.metrics();
            if f(&m) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}: {m:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
    }
}

/// Runs an async engine-handle call to completion on a throwaway thread-local executor.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("rt");
    rt.block_on(f)
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub socket_id: String,
    pub established: Value,
}

impl Client {
    /// Connects and reads `pusher:connection_established`.
    pub fn connect(addr: SocketAddr, key: &str) -> Client {
        let (ws, first) = Self::open(
            addr,
            &format!("/app/{key}?protocol=7&client=rust&version=1.0"),
        );
        let first = first.expect("a first message");
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value =
            serde_json::from_str(first["data"].as_str().expect("data is a JSON string")).unwrap();
        let socket_id = data["socket_id"].as_str().unwrap().to_string();
        Client {
            ws,
            socket_id,
            established: data,
        }
    }

    /// Opens a WebSocket on `path` and returns the first text message if any.
    pub fn open(addr: SocketAddr, path: &str) -> (WebSocket<TcpStream>, Option<Value>) {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let url = format!("ws://{addr}{path}");
        let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
        let first = match ws.read() {
            Ok(Message::Text(t)) => Some(serde_json::from_str(t.as_str()).unwrap()),
            _ => None,
        };
        (ws, first)
    }

    /// The core this connection lives on (`socket id lo % workers`).
    pub fn core(&self, workers: u64) -> u64 {
        self.socket_id
            .split('.')
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            % workers
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
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                    continue
                }
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

    /// Sends pusher:ping and asserts the very next message is pusher:pong: proves that nothing
    /// else was queued for this client before the ping was answered.
    pub fn assert_nothing_pending(&mut self) {
        self.send(json!({"event": "pusher:ping", "data": {}}));
        let m = self.recv();
        assert_eq!(
            m["event"], "pusher:pong",
            "expected nothing before the pong, got {m}"
        );
    }

    pub fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}));
        self.recv_event("pusher_internal:subscription_succeeded")
    }

    pub fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = ringcast_protocol::channel_auth(KEY, SECRET, &self.socket_id, channel, None);
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": channel}}));
        self.recv_event("pusher_internal:subscription_succeeded")
    }

    pub fn subscribe_presence(&mut self, channel: &str, user_id: &str) -> Value {
        let cd = json!({"user_id": user_id, "user_info": {"name": format!("user {user_id}")}})
            .to_string();
        let auth =
            ringcast_protocol::channel_auth(KEY, SECRET, &self.socket_id, channel, Some(&cd));
        self.send(json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": channel, "channel_data": cd}}));
        self.recv_event("pusher_internal:subscription_succeeded")
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

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        for _ in 0..100 {
            if self.ws.read().is_err() {
                break;
            }
        }
    }
}

/// Parses a JSON-string `data` field.
pub fn data_of(m: &Value) -> Value {
    serde_json::from_str(m["data"].as_str().expect("data is a JSON string")).expect("data parses")
}
