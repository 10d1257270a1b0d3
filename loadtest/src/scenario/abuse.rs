//! The abusers of `ringcast-loadtest abuse`: one async task per abusive connection, on one
//! monoio thread of their own, each bounded in count (`AbusePlan`) and in time (the phase
//! deadline). Every abuser records what it saw from the server (HTTP status, WebSocket close
//! code, `pusher:error`, a connection closed or reset before an answer) in an [`Outcomes`]
//! tally; the command front end (main.rs) runs them beside an honest fan-out and sets the tallies
//! beside the server's own `/metrics` counters.
//!
//! Abusers connect from their own loopback source addresses (`AbusePlan::sources`, by default
//! 127.0.0.64 and up) so that a server configured with `loadtest/abuse.toml` applies its
//! per-address limits to them and not to the honest clients (127.0.0.1-4, exempt there).
//!
//! Against a `wss://` target the abusers speak TLS like the honest clients (`--tls-ca`): every
//! attack that completes a request head or a WebSocket handshake does it inside a TLS session
//! (slow-loris dribbles its head after the TLS handshake); half-open connections stay raw TCP,
//! which on a TLS port is a connection that never sends its ClientHello. The abuser thread can
//! be pinned to CPUs of its own (`AbusePlan::cpus`, `--attack-cpus`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde::Serialize;

use crate::clock::unix_secs;
use crate::net::{self, Target};
use crate::tls::Stream;
use crate::wsframe::{self, Frame, FrameReader};

/// Every attack the harness knows, in the order they run one after another.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Request heads sent one header line a second, never finished.
    SlowLoris,
    /// TCP connections that never send a byte (no request head).
    HalfOpen,
    /// Established Pusher connections that then never send anything (and never answer pings).
    Idle,
    /// Subscribers of the honest channels that never read (slow consumers).
    SlowConsumer,
    /// Subscribe/unsubscribe messages as fast as `flood_rate` allows.
    SubscribeFlood,
    /// A frame header announcing a 1 GiB message.
    Oversized,
    /// A text message sent as endless 1 KiB continuation frames.
    Fragmented,
    /// WebSocket pings and `pusher:ping`s as fast as `flood_rate` allows.
    PingFlood,
    /// Wrongly signed `POST /apps/{id}/events` on the HTTP API, one per connection.
    BadSignature,
    /// `pusher:subscribe` to private channels with a wrong auth signature.
    BadAuth,
    /// Text frames that are not JSON, not Pusher messages, or unknown events.
    MalformedJson,
    /// Connect, complete the Pusher handshake, close, again.
    Churn,
}

impl Attack {
    pub const ALL: [Attack; 12] = [
        Attack::SlowLoris,
        Attack::HalfOpen,
        Attack::Idle,
        Attack::SlowConsumer,
        Attack::SubscribeFlood,
        Attack::Oversized,
        Attack::Fragmented,
        Attack::PingFlood,
        Attack::BadSignature,
        Attack::BadAuth,
        Attack::MalformedJson,
        Attack::Churn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::SlowLoris => "slow-loris",
            Attack::HalfOpen => "half-open",
            Attack::Idle => "idle",
            Attack::SlowConsumer => "slow-consumer",
            Attack::SubscribeFlood => "subscribe-flood",
            Attack::Oversized => "oversized",
            Attack::Fragmented => "fragmented",
            Attack::PingFlood => "ping-flood",
            Attack::BadSignature => "bad-signature",
            Attack::BadAuth => "bad-auth",
            Attack::MalformedJson => "malformed-json",
            Attack::Churn => "churn",
        }
    }
}

/// What the abusers do, and how much of it.
#[derive(Clone, Debug)]
pub struct AbusePlan {
    /// The server (WebSocket endpoint, API address, app key and secret). The secret signs the
    /// slow consumers' subscriptions (they are authorized clients that stop reading); no other
    /// abuser uses it.
    pub target: Target,
    /// Source addresses of the abusers (round-robin by connection number).
    pub sources: Vec<Ipv4Addr>,
    /// Abusive connections (or request loops) per attack at once.
    pub connections: usize,
    /// Connections of the half-open and idle attacks (opened over the first half of the
    /// phase, so the per-address rate limit is met by pacing, not by refusals).
    pub idle_connections: usize,
    /// Messages (or requests) per second per flooding connection.
    pub flood_rate: f64,
    /// Channels the slow consumers subscribe to (the honest fan-out's).
    pub honest_channels: Vec<String>,
    /// Longest wait for one connect or handshake.
    pub timeout: Duration,
    /// CPUs the abuser thread may run on (None: not pinned).
    pub cpus: Option<Vec<usize>>,
}

impl AbusePlan {
    /// The source addresses of one attack: with at least one address per attack, each attack
    /// gets its own share (so the per-address limits one attack meets, alone or all together,
    /// are its own and not left over from another); with fewer, all attacks share them.
    pub fn sources_of(&self, a: Attack) -> Vec<Ipv4Addr> {
        let n = Attack::ALL.len();
        let per = self.sources.len() / n;
        if per == 0 {
            return self.sources.clone();
        }
        let i = Attack::ALL.iter().position(|x| *x == a).unwrap_or(0);
        self.sources[i * per..(i + 1) * per].to_vec()
    }
}

/// The loopback source addresses 127.0.0.`first` .. (`count` of them).
pub fn loopback_sources(first: u8, count: u8) -> Vec<Ipv4Addr> {
    (0..count)
        .filter_map(|k| first.checked_add(k))
        .filter(|&d| d > 0)
        .map(|d| Ipv4Addr::new(127, 0, 0, d))
        .collect()
}

/// How many times the harness saw each outcome (by a short description).
pub type Outcomes = BTreeMap<String, u64>;

/// One attack's result in one phase.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct AttackResult {
    pub attack: String,
    /// Connections (or HTTP requests) the attack opened.
    pub attempts: u64,
    /// What the harness saw, by outcome.
    pub outcomes: Outcomes,
}

/// The server counters that count an outcome the harness saw as a refusal, or None when the
/// outcome is not a refusal (a pong, a connection still open at the end...).
pub fn counted_by(outcome: &str) -> Option<&'static [&'static str]> {
    const PROTOCOL: &[&str] = &[
        "ringcast_connections_closed_total{reason=\"protocol_error\"}",
        "ringcast_protocol_errors_total",
    ];
    // On a TLS port a connection that never finishes its TLS handshake (half-open) is closed
    // at the handshake timeout without a 408 and counted there.
    const ACCEPT: &[&str] = &[
        "ringcast_connections_refused_total",
        "ringcast_connections_closed_total{reason=\"bad_handshake\"}",
        "ringcast_tls_handshakes_total{listener=\"public\",result=\"timeout\"}",
    ];
    const HEAD: &[&str] = &[
        "ringcast_connections_closed_total{reason=\"bad_handshake\"}",
        "ringcast_http_refused_total",
    ];
    if outcome.starts_with("close 1002")
        || outcome.starts_with("close 1007")
        || outcome.starts_with("close 1009")
    {
        return Some(PROTOCOL);
    }
    if outcome.starts_with("close 4100") {
        return Some(&["ringcast_slow_consumer_closes_total"]);
    }
    if outcome.starts_with("close 4301") {
        return Some(&["ringcast_connections_closed_total{reason=\"ping_rate_limit\"}"]);
    }
    if outcome.starts_with("close 4201") {
        return Some(&["ringcast_connections_closed_total{reason=\"pong_timeout\"}"]);
    }
    if outcome.starts_with("close 4009") {
        return Some(&["ringcast_connections_refused_total{reason=\"origin_not_allowed\"}"]);
    }
    if outcome.starts_with("http 401")
        || outcome.starts_with("http 403")
        || outcome.starts_with("http 404")
        || outcome.starts_with("http 503")
    {
        return Some(&[
            "ringcast_http_refused_total",
            "ringcast_rest_requests_total",
        ]);
    }
    if outcome.starts_with("http 4") {
        return Some(HEAD);
    }
    if outcome.starts_with("refused:") {
        return Some(ACCEPT);
    }
    if outcome.starts_with("pusher:error") {
        if outcome.contains("Too many") {
            return Some(&["ringcast_control_messages_rate_limited_total"]);
        }
        if outcome.contains("Invalid message") || outcome.contains("Unsupported") {
            return Some(&["ringcast_protocol_errors_total"]);
        }
        return Some(&[
            "ringcast_auth_failures_total",
            "ringcast_protocol_errors_total",
        ]);
    }
    if outcome.starts_with("pusher:subscription_error") {
        return Some(&["ringcast_auth_failures_total"]);
    }
    None
}

/// Runs `attacks` at once on a thread of their own until `end`; the handle gives their results.
pub fn spawn(
    plan: Arc<AbusePlan>,
    attacks: Vec<Attack>,
    end: Instant,
) -> std::io::Result<std::thread::JoinHandle<Vec<AttackResult>>> {
    std::thread::Builder::new()
        .name("abusers".into())
        .spawn(move || {
            if let Some(cpus) = &plan.cpus {
                if let Err(e) = crate::procfs::pin_current_thread(cpus) {
                    return vec![AttackResult {
                        attack: "runtime".into(),
                        attempts: 0,
                        outcomes: [(format!("cannot pin the abusers to CPUs {cpus:?}: {e}"), 1)]
                            .into(),
                    }];
                }
            }
            let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(4096)
                .enable_timer()
                .build();
            let mut rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    return vec![AttackResult {
                        attack: "runtime".into(),
                        attempts: 0,
                        outcomes: [(format!("cannot build the runtime: {e}"), 1)].into(),
                    }]
                }
            };
            rt.block_on(run_all(plan, attacks, end))
        })
}

async fn run_all(plan: Arc<AbusePlan>, attacks: Vec<Attack>, end: Instant) -> Vec<AttackResult> {
    let mut cxs = Vec::new();
    for a in attacks {
        let cx = Rc::new(Cx {
            plan: plan.clone(),
            attack: a,
            end,
            outcomes: RefCell::new(Outcomes::new()),
            attempts: std::cell::Cell::new(0),
            sources: plan.sources_of(a),
        });
        let n = match a {
            Attack::HalfOpen | Attack::Idle => plan.idle_connections,
            _ => plan.connections,
        };
        let mut hs = Vec::new();
        for w in 0..n {
            hs.push(monoio::spawn(worker(cx.clone(), w, n)));
        }
        cxs.push((cx, hs));
    }
    // Every worker ends by itself at the deadline (every wait in it is bounded by it); the
    // grace covers the bounded drains after it.
    let grace = plan.timeout + Duration::from_secs(5);
    let mut out = Vec::new();
    for (cx, hs) in cxs {
        for h in hs {
            let left = (end + grace).saturating_duration_since(Instant::now());
            if monoio::time::timeout(left, h).await.is_err() {
                cx.saw("worker still running after the deadline (abandoned)");
            }
        }
        out.push(AttackResult {
            attack: cx.attack.name().to_string(),
            attempts: cx.attempts.get(),
            outcomes: cx.outcomes.borrow().clone(),
        });
    }
    out
}

struct Cx {
    plan: Arc<AbusePlan>,
    attack: Attack,
    end: Instant,
    outcomes: RefCell<Outcomes>,
    attempts: std::cell::Cell<u64>,
    sources: Vec<Ipv4Addr>,
}

impl Cx {
    fn saw(&self, what: impl Into<String>) {
        *self.outcomes.borrow_mut().entry(what.into()).or_default() += 1;
    }

    fn left(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    fn over(&self) -> bool {
        Instant::now() >= self.end
    }

    /// The pause between two messages of a flooding connection.
    fn flood_gap(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.plan.flood_rate.max(0.1))
    }

    async fn pause(&self, d: Duration) {
        monoio::time::sleep(d.min(self.left())).await;
    }

    /// A TCP connection to `dst` from this worker's source address.
    async fn tcp(&self, w: usize, dst: SocketAddr) -> Option<TcpStream> {
        self.attempts.set(self.attempts.get() + 1);
        let limit = self
            .plan
            .timeout
            .min(self.left())
            .max(Duration::from_millis(1));
        let src = (!self.sources.is_empty()).then(|| self.sources[w % self.sources.len()]);
        match monoio::time::timeout(limit, net::connect(src, dst)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                // Not a refusal the server counts: the kernel's (a full listen backlog) or the
                // harness's (out of ports or files).
                self.saw(format!("connect failed ({})", io_kind(&e)));
                None
            }
            Err(_) => {
                self.saw("connect timed out");
                None
            }
        }
    }

    /// [`Self::tcp`], then a TLS handshake with `host` when `tls` (bounded like the connect);
    /// a failed handshake is recorded as an outcome.
    async fn stream(&self, w: usize, dst: SocketAddr, tls: bool, host: &str) -> Option<Stream> {
        let tcp = self.tcp(w, dst).await?;
        if !tls {
            return Some(Stream::Plain(tcp));
        }
        let limit = self
            .plan
            .timeout
            .min(self.left())
            .max(Duration::from_millis(1));
        let ca = self.plan.target.tls_ca.as_deref();
        match monoio::time::timeout(limit, crate::tls::connect(tcp, host, ca)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                self.saw(format!("refused: TLS handshake failed ({})", io_kind(&e)));
                None
            }
            Err(_) => {
                self.saw("TLS handshake timed out");
                None
            }
        }
    }

    /// A WebSocket connection with `pusher:connection_established` read, or None (the outcome
    /// recorded).
    async fn ws(&self, w: usize) -> Option<(Stream, FrameReader)> {
        self.ws_id(w).await.map(|(s, rd, _)| (s, rd))
    }

    /// [`Self::ws`] and the socket id the server gave.
    async fn ws_id(&self, w: usize) -> Option<(Stream, FrameReader, String)> {
        let t = &self.plan.target;
        let ep = t.ws_for(w);
        let mut s = self.stream(w, ep.addr, ep.tls, &ep.host).await?;
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            t.ws_path(ep),
            ep.host
        );
        let (r, _) = s.write_all(req.into_bytes()).await;
        if let Err(e) = r {
            self.saw(format!(
                "refused: write failed before an answer ({})",
                io_kind(&e)
            ));
            return None;
        }
        let mut rd = FrameReader::new(4096);
        match read_status(&mut s, &mut rd, self.plan.timeout.min(self.left())).await {
            Head::Status(101) => {}
            other => {
                self.saw(other.describe());
                return None;
            }
        }
        let limit = self
            .plan
            .timeout
            .min(self.left())
            .max(Duration::from_millis(1));
        let est = monoio::time::timeout(
            limit,
            net::wait_for(&mut s, &mut rd, |ev, data| match ev {
                "pusher:connection_established" => Some(Ok(net::data_object(data)
                    .get("socket_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string())),
                "pusher:error" => Some(Err(anyhow::anyhow!("{}", error_label(ev, data)))),
                _ => None,
            }),
        )
        .await;
        match est {
            Ok(Ok(id)) => Some((s, rd, id)),
            Ok(Err(e)) => {
                self.saw(format!("{e}"));
                None
            }
            Err(_) => {
                self.saw("no connection_established");
                None
            }
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::EPIPE) => "broken pipe".into(),
        Some(libc::EADDRNOTAVAIL) => "address not available".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "harness out of files".into(),
        _ => format!("{:?}", e.kind()),
    }
}

/// `pusher:error 4301 Too many ...` from an event and its data; the message is cut at its
/// first ':' (the rest names positions and values) so that outcomes group.
fn error_label(ev: &str, data: &serde_json::Value) -> String {
    let d = net::data_object(data);
    let d = if d.is_null() { data.clone() } else { d };
    let code = d
        .get("code")
        .and_then(|c| c.as_u64())
        .map(|c| c.to_string())
        .or_else(|| {
            d.get("status")
                .and_then(|c| c.as_u64())
                .map(|c| c.to_string())
        })
        .unwrap_or_else(|| "-".into());
    let msg = d
        .get("message")
        .or_else(|| d.get("error"))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let msg: String = msg
        .split(':')
        .next()
        .unwrap_or("")
        .chars()
        .take(48)
        .collect();
    format!("{ev} {code} {msg}").trim_end().to_string()
}

/// What came back for a request head.
enum Head {
    Status(u16),
    /// Closed (EOF) before any byte of an answer.
    Eof,
    /// Reset before an answer.
    Reset,
    Timeout,
    Garbage,
}

impl Head {
    fn describe(&self) -> String {
        match self {
            Head::Status(c) => format!("http {c}"),
            Head::Eof => "refused: closed before an answer".into(),
            Head::Reset => "refused: reset before an answer".into(),
            Head::Timeout => "no answer before the deadline".into(),
            Head::Garbage => "unparsable answer".into(),
        }
    }
}

/// Reads an HTTP response head (bounded by `limit`); the bytes after it stay in `rd`.
async fn read_status<R: AsyncReadRent>(s: &mut R, rd: &mut FrameReader, limit: Duration) -> Head {
    let until = Instant::now() + limit;
    loop {
        let buf = rd.take_buf();
        if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let code = std::str::from_utf8(&buf[..end])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1))
                .and_then(|c| c.parse::<u16>().ok());
            let mut rest = buf;
            rest.drain(..end + 4);
            rd.give_back(rest);
            return code.map_or(Head::Garbage, Head::Status);
        }
        let had = !buf.is_empty();
        if buf.len() > 16 * 1024 {
            rd.give_back(buf);
            return Head::Garbage;
        }
        rd.give_back(buf);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Head::Timeout;
        }
        match monoio::time::timeout(left, net::read_some(s, rd)).await {
            Err(_) => return Head::Timeout,
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return if had { Head::Garbage } else { Head::Eof },
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => return Head::Reset,
            Ok(Err(_)) => return Head::Eof,
        }
    }
}

/// Reads until the server closes, or the deadline; records every `pusher:error`,
/// `subscription_error` and pong on the way and returns how it ended.
async fn watch<R: AsyncReadRent>(cx: &Cx, r: &mut R, rd: &mut FrameReader) -> String {
    loop {
        let mut end = None;
        let drained = rd.drain(|f| {
            match f {
                Frame::Text(t) => {
                    if let Some((ev, data)) = net::event_of(t) {
                        match ev.as_str() {
                            "pusher:error" | "pusher:subscription_error" => {
                                cx.saw(error_label(&ev, &data))
                            }
                            "pusher:pong" => cx.saw("pusher:pong (answered)"),
                            _ => {}
                        }
                    }
                }
                Frame::Pong => cx.saw("ws pong (answered)"),
                Frame::Close(c) => {
                    end = Some(match c {
                        Some(c) => format!("close {c}"),
                        None => "close (no code)".into(),
                    })
                }
                _ => {}
            }
            end.is_none()
        });
        if let Err(e) = drained {
            return format!("bad frame from the server ({e})");
        }
        if let Some(e) = end {
            return e;
        }
        let left = cx.left();
        if left.is_zero() {
            return "still open at the end".into();
        }
        match monoio::time::timeout(left, net::read_some(r, rd)).await {
            Err(_) => return "still open at the end".into(),
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return "closed without a close frame".into(),
            Ok(Err(e)) => return format!("read failed ({})", io_kind(&e)),
        }
    }
}

/// Writes until the deadline (`next` gives the next bytes, None = stop) while a reader task
/// watches the answers; records how the connection ended.
async fn flood(
    cx: Rc<Cx>,
    s: Stream,
    rd: FrameReader,
    mut next: impl FnMut(u64) -> Option<Vec<u8>>,
) {
    let (mut r, mut wr) = s.into_split();
    let cx2 = cx.clone();
    let done = Rc::new(std::cell::Cell::new(false));
    let done2 = done.clone();
    let reader = monoio::spawn(async move {
        let mut rd = rd;
        let end = watch(&cx2, &mut r, &mut rd).await;
        done2.set(true);
        end
    });
    let gap = cx.flood_gap();
    let mut k = 0u64;
    let mut write_err = None;
    while !cx.over() && !done.get() {
        let Some(bytes) = next(k) else { break };
        k += 1;
        let (res, _) = wr.write_all(bytes).await;
        if let Err(e) = res {
            write_err = Some(io_kind(&e));
            break;
        }
        cx.pause(gap).await;
    }
    let limit = cx.left() + Duration::from_secs(2);
    match monoio::time::timeout(limit, reader).await {
        Ok(end) => cx.saw(end),
        Err(_) => cx.saw("still open at the end"),
    }
    if let Some(e) = write_err {
        cx.saw(format!("write failed ({e})"));
    }
}

fn masked(op: ringcast_protocol::ws::OpCode, payload: &[u8], k: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    let m = (k as u32).wrapping_mul(0x9E37_79B9) | 1;
    ringcast_protocol::encode_client_frame_into(op, payload, m.to_le_bytes(), &mut out);
    out
}

fn text(payload: &[u8], k: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    wsframe::client_text(payload, k as u32, &mut out);
    out
}

async fn worker(cx: Rc<Cx>, w: usize, n: usize) {
    let plan = cx.plan.clone();
    match cx.attack {
        Attack::SlowLoris => {
            while !cx.over() {
                slow_loris(&cx, w).await;
            }
        }
        Attack::HalfOpen | Attack::Idle => {
            // Spread the opening over the first half of the phase.
            let spread = cx.left() / 2;
            cx.pause(spread.mul_f64(w as f64 / n.max(1) as f64)).await;
            if cx.over() {
                return;
            }
            if cx.attack == Attack::HalfOpen {
                let Some(mut s) = cx.tcp(w, plan.target.ws_for(w).addr).await else {
                    return;
                };
                let mut rd = FrameReader::new(512);
                let h = read_status(&mut s, &mut rd, cx.left()).await;
                cx.saw(match h {
                    Head::Timeout => "still open at the end".into(),
                    other => other.describe(),
                });
            } else if let Some((mut s, mut rd)) = cx.ws(w).await {
                let end = watch(&cx, &mut s, &mut rd).await;
                cx.saw(end);
            }
        }
        Attack::SlowConsumer => {
            let Some((mut s, mut rd, sid)) = cx.ws_id(w).await else {
                return;
            };
            set_rcvbuf(s.tcp(), 4096);
            let chans = &plan.honest_channels;
            let ch = [chans[w % chans.len().max(1)].clone()];
            let sub = net::subscribe_all(&mut s, &mut rd, &plan.target, &sid, &ch, w as u32);
            match monoio::time::timeout(plan.timeout.min(cx.left()), sub).await {
                Ok(Ok(())) => cx.saw("subscribed, then stopped reading"),
                Ok(Err(e)) => {
                    cx.saw(format!("subscribe failed ({e})"));
                    return;
                }
                Err(_) => {
                    cx.saw("subscribe timed out");
                    return;
                }
            }
            // Never read until the deadline; then read what the server left (bounded) to
            // see whether it closed the connection.
            cx.pause(cx.left()).await;
            let mut r2 = FrameReader::new(64 * 1024);
            let until = Instant::now() + Duration::from_secs(2);
            let mut end = "still open at the end".to_string();
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                match monoio::time::timeout(left, net::read_some(&mut s, &mut r2)).await {
                    Ok(Ok(true)) => {
                        let mut closed = None;
                        let _ = r2.drain(|f| {
                            if let Frame::Close(c) = f {
                                closed = Some(c);
                            }
                            closed.is_none()
                        });
                        if let Some(c) = closed {
                            end = format!("close {}", c.unwrap_or(0));
                            break;
                        }
                    }
                    Ok(Ok(false)) => {
                        end = "closed without a close frame".into();
                        break;
                    }
                    Ok(Err(e)) => {
                        end = format!("read failed ({})", io_kind(&e));
                        break;
                    }
                    Err(_) => break,
                }
            }
            cx.saw(end);
        }
        Attack::SubscribeFlood => {
            let Some((s, rd)) = cx.ws(w).await else {
                return;
            };
            flood(cx.clone(), s, rd, move |k| {
                let ch = format!("abuse-flood-{w}-{}", (k / 2) % 50);
                let m = if k % 2 == 0 {
                    net::subscribe_msg(&ch, None, None)
                } else {
                    net::unsubscribe_msg(&ch)
                };
                Some(text(m.as_bytes(), k))
            })
            .await;
        }
        Attack::Oversized => {
            while !cx.over() {
                let Some((s, rd)) = cx.ws(w).await else {
                    cx.pause(Duration::from_millis(50)).await;
                    continue;
                };
                flood(cx.clone(), s, rd, |k| {
                    (k == 0).then(|| {
                        // FIN + text, masked, 64-bit length 1 GiB, mask, 16 payload bytes.
                        let mut f = vec![0x81, 0xFF];
                        f.extend_from_slice(&(1u64 << 30).to_be_bytes());
                        f.extend_from_slice(&[1, 2, 3, 4]);
                        f.extend_from_slice(&[0x55; 16]);
                        f
                    })
                })
                .await;
            }
        }
        Attack::Fragmented => {
            while !cx.over() {
                let Some((s, rd)) = cx.ws(w).await else {
                    cx.pause(Duration::from_millis(50)).await;
                    continue;
                };
                let chunk = vec![b'a'; 1024];
                flood(cx.clone(), s, rd, move |k| {
                    use ringcast_protocol::ws::OpCode;
                    // A text frame without FIN, then continuation frames without FIN.
                    let op = if k == 0 {
                        OpCode::Text
                    } else {
                        OpCode::Continuation
                    };
                    let mut f = masked(op, &chunk, k);
                    f[0] &= 0x7F;
                    Some(f)
                })
                .await;
            }
        }
        Attack::PingFlood => {
            let Some((s, rd)) = cx.ws(w).await else {
                return;
            };
            flood(cx.clone(), s, rd, |k| {
                Some(if k % 2 == 0 {
                    masked(ringcast_protocol::ws::OpCode::Ping, b"abuse", k)
                } else {
                    text(br#"{"event":"pusher:ping","data":{}}"#, k)
                })
            })
            .await;
        }
        Attack::BadSignature => {
            while !cx.over() {
                bad_signature(&cx, w).await;
                cx.pause(cx.flood_gap()).await;
            }
        }
        Attack::BadAuth => {
            let Some((s, rd)) = cx.ws(w).await else {
                return;
            };
            let key = plan.target.key.clone();
            flood(cx.clone(), s, rd, move |k| {
                let ch = format!("private-abuse-{w}-{k}");
                let auth = format!("{key}:{}", "0".repeat(64));
                Some(text(
                    net::subscribe_msg(&ch, Some(&auth), None).as_bytes(),
                    k,
                ))
            })
            .await;
        }
        Attack::MalformedJson => {
            const BAD: [&[u8]; 5] = [
                b"{not json",
                b"[1,2,3]",
                br#"{"event":42,"data":{}}"#,
                br#"{"event":"pusher:subscribe","data":"{\"channel\":"}"#,
                br#"{"event":"abuse:unknown","data":{}}"#,
            ];
            while !cx.over() {
                let Some((s, rd)) = cx.ws(w).await else {
                    cx.pause(Duration::from_millis(50)).await;
                    continue;
                };
                flood(cx.clone(), s, rd, |k| {
                    // Every 200th message is invalid UTF-8 (the server closes with 1007).
                    if k % 200 == 199 {
                        Some(text(b"\xff\xfe{\"event\":1}", k))
                    } else {
                        Some(text(BAD[k as usize % BAD.len()], k))
                    }
                })
                .await;
            }
        }
        Attack::Churn => {
            while !cx.over() {
                if let Some((mut s, _rd)) = cx.ws(w).await {
                    cx.saw("established, then closed by the abuser");
                    let mut out = Vec::new();
                    wsframe::client_close(&mut out);
                    let _ = s.write_all(out).await;
                } else {
                    cx.pause(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// One slow-loris connection: a request head that never ends, one header line a second.
async fn slow_loris(cx: &Cx, w: usize) {
    let t = &cx.plan.target;
    let ep = t.ws_for(w);
    let Some(s) = cx.stream(w, ep.addr, ep.tls, &ep.host).await else {
        cx.pause(Duration::from_millis(50)).await;
        return;
    };
    let (mut r, mut wr) = s.into_split();
    let first = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", t.ws_path(ep), ep.host);
    let reader = monoio::spawn({
        let limit = cx.left();
        async move {
            let mut rd = FrameReader::new(1024);
            read_status(&mut r, &mut rd, limit).await
        }
    });
    let mut bytes = first.into_bytes();
    let mut k = 0u32;
    let mut write_failed = false;
    // Bounded: one line a second until the deadline.
    while !cx.over() {
        let (res, _) = wr.write_all(bytes).await;
        if res.is_err() {
            write_failed = true;
            break;
        }
        k += 1;
        bytes = format!("X-Slow-{k}: a\r\n").into_bytes();
        cx.pause(Duration::from_secs(1)).await;
    }
    let h = match monoio::time::timeout(Duration::from_secs(3), reader).await {
        Ok(h) => h,
        Err(_) => Head::Timeout,
    };
    cx.saw(match h {
        Head::Timeout if !write_failed => "still open at the end".into(),
        Head::Eof if k > 1 => "refused: closed during the head (head timeout)".into(),
        other => other.describe(),
    });
}

/// One wrongly signed `POST /apps/{id}/events` on a new connection.
async fn bad_signature(cx: &Cx, w: usize) {
    let t = &cx.plan.target;
    let Some(mut s) = cx.stream(w, t.api_addr, t.api_tls, &t.api_host).await else {
        return;
    };
    // Like the issue's attack: a head announcing a 1 MB body, then only its first KiB (the
    // server must answer from the head, without waiting for or buffering the body).
    const ANNOUNCED: usize = 1_000_000;
    let body = [b'x'; 1024];
    let path = format!("{}/apps/{}/events", t.api_path_prefix, t.app_id);
    let req = format!(
        "POST {path}?auth_key={}&auth_timestamp={}&auth_version=1.0&body_md5={}&auth_signature={} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        t.key,
        unix_secs(),
        "0".repeat(32),
        "f".repeat(64),
        t.api_host,
        ANNOUNCED
    );
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    let (res, _) = s.write_all(bytes).await;
    if let Err(e) = res {
        cx.saw(format!(
            "refused: write failed before an answer ({})",
            io_kind(&e)
        ));
        return;
    }
    let mut rd = FrameReader::new(2048);
    let h = read_status(&mut s, &mut rd, cx.plan.timeout.min(cx.left())).await;
    cx.saw(h.describe());
}

/// Shrinks the socket's receive buffer (so the server's queue fills sooner).
fn set_rcvbuf(s: &TcpStream, bytes: libc::c_int) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(s);
    // SAFETY: setsockopt on a descriptor we own, with a pointer to an int that lives across the
    // call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
