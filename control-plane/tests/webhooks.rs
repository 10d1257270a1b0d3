//! Webhooks end to end: a real engine, real WebSocket clients causing events, and a loopback
//! HTTP receiver that checks every request's headers and signature.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcast_control_plane::webhook::{DeliveryStatus, Webhooks};
use ringcast_engine::{Engine, RawConfig, RunningEngine};
use serde_json::{json, Value};
use tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
struct Req {
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A loopback webhook receiver. `fail_first` requests get a 500.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Req>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::serve(l, fail_first)
    }

    fn serve(l: TcpListener, fail_first: usize) -> Receiver {
        let addr = l.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Req>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for s in l.incoming().take(500) {
                let Ok(s) = s else { continue };
                s.set_read_timeout(Some(WAIT)).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (k, v) = l.split_once(':').unwrap();
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .unwrap()
                    .1
                    .parse()
                    .unwrap();
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                n += 1;
                let status = if n <= fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                g.lock().unwrap().push(Req {
                    headers,
                    body: String::from_utf8(body).unwrap(),
                });
                let mut s = s;
                let _ = s.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Receiver { addr, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Waits until `n` requests arrived; returns them all.
    fn wait_for(&self, n: usize) -> Vec<Req> {
        let until = Instant::now() + WAIT;
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < until,
                "only {} of {n} webhook requests arrived: {got:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// All events received so far, in order.
    fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.json()["events"].as_array().unwrap().clone())
            .collect()
    }

    fn wait_events(&self, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let until = Instant::now() + WAIT;
        loop {
            let e = self.events();
            if pred(&e) {
                return e;
            }
            assert!(
                Instant::now() < until,
                "webhook events never matched: {e:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct Setup {
    running: Option<RunningEngine>,
    hooks: Arc<Webhooks>,
    addr: SocketAddr,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown_and_join();
        }
        self.hooks.shutdown();
    }
}

fn start(app_extra: &str, hooks_toml: &str) -> Setup {
    let toml = format!(
        "[[apps]]\nid='app-id'\nkey='app-key'\nsecret='app-secret'\nclient_events=true\n{app_extra}\n{hooks_toml}"
    );
    let mut raw = RawConfig::from_toml(&toml).unwrap();
    raw.listen = Some("127.0.0.1:0".into());
    raw.workers = Some(2);
    let config = raw.resolve(2).unwrap();
    let hooks = Webhooks::start(&config.apps);
    let engine = Engine::bind(config, Some(hooks.observer())).unwrap();
    let addr = engine.local_addr();
    let running = engine.start(None).unwrap();
    Setup {
        running: Some(running),
        hooks,
        addr,
    }
}

struct Client {
    ws: tungstenite::WebSocket<TcpStream>,
    socket_id: String,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}/app/app-key?protocol=7").as_str(), s).unwrap();
        let first: Value = match ws.read().unwrap() {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            m => panic!("{m:?}"),
        };
        let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
        Client {
            ws,
            socket_id: data["socket_id"].as_str().unwrap().into(),
        }
    }
    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }
    fn recv_event(&mut self, name: &str) -> Value {
        for _ in 0..100 {
            if let Message::Text(t) = self.ws.read().unwrap() {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["event"] == name {
                    return v;
                }
            }
        }
        panic!("no {name}");
    }
    fn subscribe(&mut self, ch: &str, channel_data: Option<&str>) {
        let auth = if ch.starts_with("private-") || ch.starts_with("presence-") {
            ringcast_protocol::channel_auth(
                "app-key",
                "app-secret",
                &self.socket_id,
                ch,
                channel_data,
            )
        } else {
            String::new()
        };
        let mut d = json!({"channel": ch, "auth": auth});
        if let Some(cd) = channel_data {
            d["channel_data"] = json!(cd);
        }
        self.send(json!({"event": "pusher:subscribe", "data": d}));
        self.recv_event("pusher_internal:subscription_succeeded");
    }
    fn unsubscribe(&mut self, ch: &str) {
        self.send(json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}));
    }
    fn close(mut self) {
        let _ = self.ws.close(None);
        for _ in 0..100 {
            if self.ws.read().is_err() {
                break;
            }
        }
    }
}

fn names(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_event_type_is_delivered_signed_with_exact_headers() {
    let rx = Receiver::start(0);
    let s = start(
        "subscription_count=true",
        &format!("[[apps.webhooks]]\nurl='{}'", rx.url()),
    );
    let mut a = Client::connect(s.addr);
    let mut b = Client::connect(s.addr);
    a.subscribe("presence-room", Some(r#"{"user_id":"u1","user_info":{}}"#));
    b.subscribe("presence-room", Some(r#"{"user_id":"u2"}"#));
    // Second connection of u1: no second member_added.
    let mut a2 = Client::connect(s.addr);
    a2.subscribe("presence-room", Some(r#"{"user_id":"u1"}"#));
    a.send(json!({"event": "client-hi", "channel": "presence-room", "data": {"x": 1}}));
    b.subscribe("cache-c", None);
    b.subscribe("counted", None);
    a2.close();
    a.close();
    let evs = rx.wait_events(|e| names(e).iter().filter(|n| *n == "member_removed").count() == 1);
    let n = names(&evs);
    for want in [
        "channel_occupied",
        "member_added",
        "client_event",
        "cache_miss",
        "subscription_count",
        "member_removed",
    ] {
        assert!(n.contains(&want.to_string()), "{want} missing from {n:?}");
    }
    let added: Vec<_> = evs.iter().filter(|e| e["name"] == "member_added").collect();
    assert_eq!(added.len(), 2, "once per user: {added:?}");
    let removed: Vec<_> = evs
        .iter()
        .filter(|e| e["name"] == "member_removed")
        .collect();
    assert_eq!(removed[0]["user_id"], "u1");
    let ce = evs.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(ce["channel"], "presence-room");
    assert_eq!(ce["event"], "client-hi");
    assert_eq!(ce["data"], r#"{"x":1}"#);
    assert_eq!(ce["user_id"], "u1");
    assert!(ce["socket_id"].as_str().unwrap().contains('.'));
    let sc = evs
        .iter()
        .find(|e| e["name"] == "subscription_count")
        .unwrap();
    assert_eq!(sc["subscription_count"], 1);
    b.close();
    rx.wait_events(|e| names(e).contains(&"channel_vacated".to_string()));
    for r in rx.got.lock().unwrap().iter() {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-pusher-key"), Some("app-key"));
        let sig = ringcast_protocol::webhook_signature("app-secret", r.body.as_bytes());
        assert_eq!(r.header("x-pusher-signature"), Some(sig.as_str()));
        assert_eq!(r.header("x-ringcast-attempt"), Some("1"));
        assert!(r.header("x-ringcast-delivery").is_some());
        let t = r.json()["time_ms"].as_u64().unwrap();
        assert!(t > 1_600_000_000_000);
    }
    // The receiver may have seen one channel's `channel_vacated` while another's is still on
    // its way: wait (bounded) until every delivery in the log has settled, then require all
    // of them delivered.
    let until = Instant::now() + WAIT;
    let log = loop {
        let log = s.hooks.deliveries("app-id").unwrap();
        if log.iter().all(|d| d.status != DeliveryStatus::Pending) || Instant::now() >= until {
            break log;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        log.iter().all(|d| d.status == DeliveryStatus::Delivered),
        "{log:?}"
    );
}

#[test]
fn failed_attempts_are_retried_with_the_same_delivery_id() {
    let rx = Receiver::start(2);
    let s = start(
        "",
        &format!(
            "[[apps.webhooks]]\nurl='{}'\nevent_types=['channel_occupied']",
            rx.url()
        ),
    );
    let mut a = Client::connect(s.addr);
    a.subscribe("retry-me", None);
    let reqs = rx.wait_for(3); // 1 s and 5 s backoff
    let ids: Vec<_> = reqs
        .iter()
        .map(|r| r.header("x-ringcast-delivery").unwrap().to_string())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let attempts: Vec<_> = reqs
        .iter()
        .map(|r| r.header("x-ringcast-attempt").unwrap().to_string())
        .collect();
    assert_eq!(attempts, vec!["1", "2", "3"]);
    let until = Instant::now() + WAIT;
    loop {
        let log = s.hooks.deliveries("app-id").unwrap();
        if log[0].status == DeliveryStatus::Delivered {
            assert_eq!(log[0].attempts, 3);
            assert_eq!(log[0].last_error.as_deref(), Some("HTTP 500"));
            break;
        }
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        s.hooks
            .stats()
            .failed_attempts
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn a_receiver_down_past_the_budget_leaves_a_failed_delivery_that_redeliver_sends() {
    // Reserve a port, keep it closed (connection refused) until redelivery.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let s = start(
        "webhook_retry_budget_secs=1",
        &format!("[[apps.webhooks]]\nurl='http://{addr}/hook'\nevent_types=['channel_occupied']"),
    );
    let mut a = Client::connect(s.addr);
    a.subscribe("lonely", None);
    let until = Instant::now() + WAIT;
    let failed = loop {
        let log = s.hooks.deliveries("app-id").unwrap();
        if let Some(d) = log.iter().find(|d| d.status == DeliveryStatus::Failed) {
            break d.clone();
        }
        assert!(Instant::now() < until, "{log:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(failed.events[0]["name"], "channel_occupied");
    assert!(failed.last_error.is_some());
    assert_eq!(
        s.hooks
            .stats()
            .exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The receiver comes back; redeliver sends the same delivery.
    let rx = Receiver::serve(TcpListener::bind(addr).unwrap(), 0);
    s.hooks.redeliver("app-id", &failed.id).unwrap();
    let reqs = rx.wait_for(1);
    assert_eq!(
        reqs[0].header("x-ringcast-delivery"),
        Some(failed.id.as_str())
    );
    assert_eq!(
        reqs[0].header("x-ringcast-attempt"),
        Some((failed.attempts + 1).to_string().as_str())
    );
    assert_eq!(reqs[0].json()["events"][0]["channel"], "lonely");
    assert!(s.hooks.redeliver("app-id", "nope").is_err());
}

#[test]
fn filters_batching_and_debounce() {
    let all = Receiver::start(0);
    let filtered = Receiver::start(0);
    let batched = Receiver::start(0);
    let debounced = Receiver::start(0);
    let s = start(
        "",
        &format!(
            "[[apps.webhooks]]\nurl='{}'\n[[apps.webhooks]]\nurl='{}'\nevent_types=['channel_occupied']\nchannel_prefix='keep-'\n\
             [[apps.webhooks]]\nurl='{}'\nbatch=true\n[[apps.webhooks]]\nurl='{}'\ndebounce=true",
            all.url(),
            filtered.url(),
            batched.url(),
            debounced.url()
        ),
    );
    let mut a = Client::connect(s.addr);
    a.subscribe("keep-1", None);
    a.subscribe("drop-1", None);
    // Flap: leave and come straight back.
    a.unsubscribe("keep-1");
    a.subscribe("keep-1", None);
    let evs = all.wait_events(|e| e.len() >= 4);
    assert_eq!(
        names(&evs),
        vec![
            "channel_occupied",
            "channel_occupied",
            "channel_vacated",
            "channel_occupied"
        ]
    );
    let f = filtered.wait_events(|e| e.len() >= 2);
    assert!(f
        .iter()
        .all(|e| e["name"] == "channel_occupied"
            && e["channel"].as_str().unwrap().starts_with("keep-")));
    // Batched: fewer requests than events.
    batched.wait_events(|e| e.len() >= 4);
    assert!(batched.got.lock().unwrap().len() < 4, "events were batched");
    // Debounced: the vacate/occupy flap never reaches the app; the final vacate does, ~3 s later.
    let d = debounced.wait_events(|e| e.len() >= 2);
    assert_eq!(names(&d), vec!["channel_occupied", "channel_occupied"]);
    a.close();
    let d = debounced.wait_events(|e| e.len() >= 4);
    assert_eq!(names(&d)[2..], ["channel_vacated", "channel_vacated"]);
    assert_eq!(
        s.hooks
            .stats()
            .debounced
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
