//! Test support: real brokers (redis-server, nats-server) on ephemeral loopback ports, and
//! in-process Ringcast nodes wired exactly as the binary wires them (engine + cluster link +
//! bridge). Every wait is bounded; nothing sleeps to synchronize.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast_cluster::{Bridge, ClusterConfig, ClusterOverrides};
use ringcast_engine::{ClusterLink, Engine, EngineHandle, RawConfig, RunningEngine};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const KEY: &str = "app-key";
pub const SECRET: &str = "app-secret";
pub const APP_ID: &str = "app-id";
/// Upper bound for any single wait in tests (not a performance threshold).
pub const WAIT: Duration = Duration::from_secs(20);

/// A free loopback port (bound, then released for the broker to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (bounded) until `f` holds.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A broker program from PATH, or from /usr/sbin where Debian puts nats-server (a non-login
/// PATH may lack it).
fn program(name: &str) -> String {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !on_path {
        for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"] {
            let p = format!("{dir}/{name}");
            if std::path::Path::new(&p).is_file() {
                return p;
            }
        }
    }
    name.to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

/// A broker process on an ephemeral port; killed on drop.
pub struct Broker {
    pub kind: Kind,
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start(kind: Kind) -> Broker {
        let mut b = Broker {
            kind,
            port: free_port(),
            child: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = match self.kind {
            Kind::Redis => Command::new(program("redis-server"))
                .args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs (scripts/test.sh installs it)"),
            Kind::Nats => Command::new(program("nats-server"))
                .args(["-a", "127.0.0.1", "-p", &port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server runs (scripts/test.sh installs it)"),
        };
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        eventually("the broker to accept connections", || {
            TcpStream::connect(addr).is_ok()
        });
    }

    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again on the same port (Redis comes back empty).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Ringcast node of a cluster, in process.
pub struct Node {
    pub id: String,
    running: Option<RunningEngine>,
    bridge: Option<Bridge>,
    pub addr: SocketAddr,
    pub link: Arc<ClusterLink>,
    pub up: Arc<AtomicBool>,
}

pub const APP_TOML: &str = r#"
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
client_events = true
client_events_per_sec = 1000
subscription_count = true
"#;

impl Node {
    /// Starts a node with 2 cores and waits until its broker connection is up.
    pub fn start(id: &str, url: &str, lease_ms: u64) -> Node {
        Node::start_with(id, url, lease_ms, "ringcast", APP_TOML)
    }

    pub fn start_with(id: &str, url: &str, lease_ms: u64, prefix: &str, toml: &str) -> Node {
        Node::start_observed(id, url, lease_ms, prefix, toml, None)
    }

    pub fn start_observed(
        id: &str,
        url: &str,
        lease_ms: u64,
        prefix: &str,
        toml: &str,
        observer: Option<Arc<dyn ringcast_engine::EngineObserver>>,
    ) -> Node {
        Node::start_inner(id, url, lease_ms, prefix, toml, observer, None)
    }

    /// A node whose bridge carries a management plane (`mgmt`).
    pub fn start_managed(
        id: &str,
        url: &str,
        lease_ms: u64,
        mgmt: ringcast_cluster::MgmtPort,
    ) -> Node {
        Node::start_inner(id, url, lease_ms, "ringcast", APP_TOML, None, Some(mgmt))
    }

    fn start_inner(
        id: &str,
        url: &str,
        lease_ms: u64,
        prefix: &str,
        toml: &str,
        observer: Option<Arc<dyn ringcast_engine::EngineObserver>>,
        mgmt: Option<ringcast_cluster::MgmtPort>,
    ) -> Node {
        let mut raw = RawConfig::from_toml(toml).expect("test config parses");
        raw.listen = Some("127.0.0.1:0".into());
        raw.workers = Some(2);
        let table: toml::Table =
            toml::from_str(&format!("url = \"{url}\"\nprefix = \"{prefix}\"")).unwrap();
        let cfg = ClusterConfig::resolve(
            Some(table),
            &ClusterOverrides {
                node_id: Some(id.into()),
                lease_ms: Some(lease_ms),
                ..Default::default()
            },
        )
        .expect("cluster config")
        .expect("clustered");
        let config = raw.resolve(2).expect("test config resolves");
        let engine = Engine::bind(config, observer).expect("bind");
        let link = ringcast_cluster::link_for(&cfg, 2);
        engine.attach_cluster(link.clone());
        let addr = engine.local_addr();
        let running = engine.start(None).expect("start");
        let up = Arc::new(AtomicBool::new(false));
        let flag = up.clone();
        let bridge = Bridge::start(
            cfg,
            running.handle(),
            link.clone(),
            mgmt,
            Box::new(move || flag.store(true, Ordering::SeqCst)),
        )
        .expect("bridge");
        eventually(&format!("node {id} to reach the broker"), || {
            up.load(Ordering::SeqCst)
        });
        Node {
            id: id.into(),
            running: Some(running),
            bridge: Some(bridge),
            addr,
            link,
            up,
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.running.as_ref().expect("running").handle()
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr, KEY)
    }

    /// Graceful stop (SIGTERM path): clients closed with 4200, then Bye.
    pub fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
        if let Some(b) = self.bridge.take() {
            b.stop();
        }
    }

    /// Cluster-wide subscription count of a channel as this node answers it.
    pub fn count(&self, channel: &str) -> u64 {
        let name = ringcast_protocol::ChannelName::parse(channel).unwrap();
        block_on(self.handle().channel(0, name))
            .map(|s| s.subscription_count)
            .unwrap_or(0)
    }

    /// Members of a presence channel as this node answers (sorted user ids).
    pub fn users(&self, channel: &str) -> Vec<String> {
        let name = ringcast_protocol::ChannelName::parse(channel).unwrap();
        let mut v: Vec<String> = block_on(self.handle().presence_users(0, name))
            .unwrap_or_default()
            .into_iter()
            .map(|u| u.id)
            .collect();
        v.sort();
        v
    }

    pub fn publish(&self, channel: &str, event: &str, data: &str) {
        let p = ringcast_engine::Publish {
            app: 0,
            channels: vec![ringcast_protocol::ChannelName::parse(channel).unwrap()],
            event: event.into(),
            data: data.into(),
            except: None,
        };
        block_on(self.handle().publish(p)).expect("publish");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
        if let Some(b) = self.bridge.take() {
            b.stop();
        }
    }
}

/// Runs an async engine-handle call to completion on a throwaway executor.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut rt =
        ringcast_engine::monoio::RuntimeBuilder::<ringcast_engine::monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("rt");
    rt.block_on(f)
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub socket_id: String,
}

impl Client {
    pub fn connect(addr: SocketAddr, key: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let url = format!("ws://{addr}/app/{key}?protocol=7&client=rust&version=1.0");
        let (mut ws, _) = tungstenite::client(url.as_str(), stream).expect("upgrade");
        let first: Value = match ws.read() {
            Ok(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("no connection_established: {other:?}"),
        };
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data = data_of(&first);
        let socket_id = data["socket_id"].as_str().unwrap().to_string();
        Client { ws, socket_id }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

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

    /// Next message that is not a subscription count.
    pub fn recv_not_count(&mut self) -> Value {
        for _ in 0..100 {
            let m = self.recv();
            if m["event"] != "pusher_internal:subscription_count" {
                return m;
            }
        }
        panic!("only subscription counts");
    }

    /// pusher:ping answered by pusher:pong with nothing but counts before it: nothing else
    /// was queued for this client.
    pub fn assert_nothing_pending(&mut self) {
        self.send(json!({"event": "pusher:ping", "data": {}}));
        let m = self.recv_not_count();
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

    pub fn unsubscribe(&mut self, channel: &str) {
        self.send(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}));
    }

    pub fn signin(&mut self, user_id: &str) {
        let user_data = json!({"id": user_id}).to_string();
        let auth = ringcast_protocol::signin_auth(KEY, SECRET, &self.socket_id, &user_data);
        self.send(
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        );
        self.recv_event("pusher:signin_success");
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

/// Records lifecycle hooks (what the webhooks would send), tagged with the node.
pub struct Recorder {
    pub node: String,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ringcast_engine::EngineObserver for Recorder {
    fn channel_occupied(
        &self,
        _: &ringcast_engine::AppConfig,
        ch: &ringcast_protocol::ChannelName,
    ) {
        self.push(format!("occupied {ch}"));
    }
    fn channel_vacated(&self, _: &ringcast_engine::AppConfig, ch: &ringcast_protocol::ChannelName) {
        self.push(format!("vacated {ch}"));
    }
    fn member_added(
        &self,
        _: &ringcast_engine::AppConfig,
        ch: &ringcast_protocol::ChannelName,
        u: &str,
    ) {
        self.push(format!("member_added {ch} {u}"));
    }
    fn member_removed(
        &self,
        _: &ringcast_engine::AppConfig,
        ch: &ringcast_protocol::ChannelName,
        u: &str,
    ) {
        self.push(format!("member_removed {ch} {u}"));
    }
}

impl Recorder {
    fn push(&self, what: String) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {what}", self.node));
    }
}
