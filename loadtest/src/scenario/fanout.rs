//! The fan-out scenario: S subscribers over C channels, events published open-loop at R/s with
//! P-byte payloads (client events or signed REST triggers). A [`Session`] connects everything
//! once and then runs any number of phases (one for `fanout`, one per rate for `sweep`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRentExt, Splitable};
use serde::Serialize;

use crate::clock::now_ns;
use crate::gen::{self, lock, Ctl, Gate, GenConfig, PhaseSpec};
use crate::latency::{Latency, LatencySummary};
use crate::loss::{events_for_channel, expected_deliveries, LossReport, SeqTracker};
use crate::net::{self, Target};
use crate::payload::{self, StampFinder};
use crate::procfs;
use crate::wsframe::{self, Frame, FrameReader};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Client events (`client-*`) on private channels, auth signed locally.
    Client,
    /// Signed REST `POST /apps/{id}/events` on keep-alive connections (pipelined).
    Rest,
}

/// Everything a fan-out session needs.
#[derive(Clone, Debug)]
pub struct FanoutPlan {
    pub target: Target,
    pub subscribers: usize,
    pub channels: usize,
    /// Channel names are `{prefix}{index}`.
    pub channel_prefix: String,
    pub payload: usize,
    pub mode: PublishMode,
    /// Publishing connections (client mode: WebSocket connections; REST mode: HTTP connections).
    pub publishers: usize,
    /// REST mode: most requests in flight per connection.
    pub rest_inflight: usize,
    pub read_buf: usize,
    /// Connections set up at once per generator thread.
    pub setup_concurrency: usize,
    pub setup_timeout: Duration,
    pub gen: GenConfig,
}

impl FanoutPlan {
    pub fn channel(&self, c: usize) -> String {
        format!("{}{c}", self.channel_prefix)
    }

    fn event_name(&self) -> &'static str {
        match self.mode {
            PublishMode::Client => "client-lt",
            PublishMode::Rest => "lt",
        }
    }

    /// Channels publisher `j` sends to: those `c` with some `k ≡ j (mod publishers)` and
    /// `k ≡ c (mod channels)`.
    pub fn publisher_channels(&self, j: usize) -> Vec<usize> {
        let g = gcd(self.publishers.max(1), self.channels.max(1));
        (0..self.channels).filter(|c| c % g == j % g).collect()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One thread's results for one phase.
#[derive(Debug)]
pub struct ThreadResult {
    pub phase: u32,
    pub lat: Latency,
    pub loss: LossReport,
    pub stale: u64,
    pub misrouted: u64,
    pub pub_sent: u64,
    pub pub_skipped: u64,
    pub pub_rejected: u64,
    pub rest_ok: u64,
    pub rest_err: u64,
    pub closed: u64,
}

#[derive(Default)]
struct Stats {
    phase: u32,
    events: u64,
    lat: Latency,
    trackers: Vec<SeqTracker>,
    stale: u64,
    misrouted: u64,
    pub_sent: u64,
    pub_skipped: u64,
    pub_rejected: u64,
    rest_ok: u64,
    rest_err: u64,
    closed: u64,
    /// Running total over all phases (progress line).
    total_delivered: u64,
    total_published: u64,
}

struct Local {
    idx: usize,
    plan: Arc<FanoutPlan>,
    ctl: Arc<Ctl>,
    stats: RefCell<Stats>,
    finder: StampFinder,
    spec: Cell<PhaseSpec>,
    setup_done: Cell<usize>,
    setup_total: usize,
    /// Channel index of each local receiver.
    chan_of: Vec<usize>,
    gate: Gate,
    sockets: Rc<gen::Sockets>,
}

impl Local {
    fn threads(&self) -> usize {
        self.plan.gen.threads
    }

    fn begin(&self, spec: PhaseSpec) {
        let mut st = self.stats.borrow_mut();
        let (td, tp) = (st.total_delivered, st.total_published);
        *st = Stats {
            phase: spec.phase,
            events: spec.events,
            trackers: vec![SeqTracker::new(); self.chan_of.len()],
            total_delivered: td,
            total_published: tp,
            ..Default::default()
        };
        drop(st);
        self.spec.set(spec);
    }

    fn result(&self) -> ThreadResult {
        let st = self.stats.borrow();
        let c = self.plan.channels as u64;
        let mut loss = LossReport::default();
        for (li, t) in st.trackers.iter().enumerate() {
            loss.add(&t.check(events_for_channel(st.events, c, self.chan_of[li] as u64)));
        }
        ThreadResult {
            phase: st.phase,
            lat: st.lat.clone(),
            loss,
            stale: st.stale,
            misrouted: st.misrouted,
            pub_sent: st.pub_sent,
            pub_skipped: st.pub_skipped,
            pub_rejected: st.pub_rejected,
            rest_ok: st.rest_ok,
            rest_err: st.rest_err,
            closed: st.closed,
        }
    }

    fn setup_finished(&self) {
        self.setup_done.set(self.setup_done.get() + 1);
    }
}

async fn thread_main(
    idx: usize,
    plan: Arc<FanoutPlan>,
    ctl: Arc<Ctl>,
    tx: mpsc::Sender<ThreadResult>,
) {
    let t = plan.gen.threads;
    let chan_of: Vec<usize> = (idx..plan.subscribers)
        .step_by(t)
        .map(|i| i % plan.channels)
        .collect();
    let pubs = (idx..plan.publishers).step_by(t).count();
    let l = Rc::new(Local {
        idx,
        setup_total: chan_of.len() + pubs,
        chan_of,
        gate: Gate::new(plan.setup_concurrency),
        plan: plan.clone(),
        ctl: ctl.clone(),
        stats: RefCell::new(Stats::default()),
        finder: StampFinder::new(),
        spec: Cell::new(PhaseSpec::default()),
        setup_done: Cell::new(0),
        sockets: Rc::new(gen::Sockets::default()),
    });
    for li in 0..l.chan_of.len() {
        monoio::spawn(receiver(l.clone(), li));
    }
    for j in (idx..plan.publishers).step_by(t) {
        match plan.mode {
            PublishMode::Client => monoio::spawn(client_publisher(l.clone(), j)),
            PublishMode::Rest => monoio::spawn(rest_publisher(l.clone(), j)),
        };
    }
    control(l, tx).await;
}

/// The thread's main future: setup reporting, phase switches, result collection.
async fn control(l: Rc<Local>, tx: mpsc::Sender<ThreadResult>) {
    let ctl = l.ctl.clone();
    let mut reported = false;
    let mut seen_gen = 0;
    let mut collected = 0;
    let mut last_live = Instant::now();
    loop {
        if ctl.stop.load(Relaxed) {
            l.sockets.close_all(Duration::from_secs(3)).await;
            break;
        }
        if !reported && l.setup_done.get() >= l.setup_total {
            reported = true;
            ctl.ready.fetch_add(1, Relaxed);
        }
        let g = ctl.phase_gen.load(Relaxed);
        if g != seen_gen {
            seen_gen = g;
            l.begin(ctl.current_spec());
        }
        let c = ctl.collect.load(Relaxed);
        if c != 0 && c != collected && l.stats.borrow().phase == c {
            collected = c;
            let _ = tx.send(l.result());
        }
        if last_live.elapsed() >= Duration::from_millis(500) {
            last_live = Instant::now();
            let st = l.stats.borrow();
            *lock(&ctl.live[l.idx]) = st.lat.clone();
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn open(
    l: &Local,
    i: usize,
) -> anyhow::Result<(
    monoio::net::TcpStream,
    FrameReader,
    String,
    gen::SocketGuard,
)> {
    let t = &l.plan.target;
    let mut s = net::connect(t.source_for(i), t.ws_addr).await?;
    let guard = l.sockets.register(std::os::fd::AsRawFd::as_raw_fd(&s));
    let mut rd = FrameReader::new(l.plan.read_buf);
    let est = net::pusher_connect(&mut s, t, &mut rd, i as u64 + 1, l.plan.setup_timeout).await?;
    Ok((s, rd, est.socket_id, guard))
}

async fn receiver(l: Rc<Local>, li: usize) {
    let i = l.idx + li * l.threads();
    let c = l.chan_of[li];
    let channel = l.plan.channel(c);
    let setup = async {
        if !l.gate.acquire(l.plan.setup_timeout).await {
            anyhow::bail!("subscriber {i}: timed out waiting for a connection slot");
        }
        let r = async {
            let (mut s, mut rd, sid, guard) = open(&l, i).await?;
            let sub = net::subscribe_all(
                &mut s,
                &mut rd,
                &l.plan.target,
                &sid,
                std::slice::from_ref(&channel),
                i as u32,
            );
            match monoio::time::timeout(l.plan.setup_timeout, sub).await {
                Ok(r) => r?,
                Err(_) => anyhow::bail!("subscribe timed out"),
            }
            Ok((s, rd, guard))
        }
        .await;
        l.gate.release();
        r
    };
    let r = setup.await;
    l.setup_finished();
    let (mut s, mut rd, _guard) = match r {
        Ok(x) => x,
        Err(e) => {
            l.ctl.error(format!("subscriber {i} ({channel}): {e:#}"));
            return;
        }
    };
    l.ctl.counters[l.idx].connected.fetch_add(1, Relaxed);
    let channels = l.plan.channels as u64;
    let ping = memchr::memmem::Finder::new(b"\"pusher:ping\"");
    loop {
        match net::read_some(&mut s, &mut rd).await {
            Ok(true) => {}
            _ => {
                l.stats.borrow_mut().closed += 1;
                if !l.ctl.stop.load(Relaxed) {
                    l.ctl
                        .error(format!("subscriber {i}: connection closed by the server"));
                }
                return;
            }
        }
        let now = now_ns();
        let mut pusher_pong = false;
        let mut ws_pong: Option<Vec<u8>> = None;
        let mut closed = false;
        let stop = {
            let mut guard = l.stats.borrow_mut();
            let st = &mut *guard;
            let res = rd.drain(|f| {
                match f {
                    Frame::Text(t) => {
                        if let Some(stamp) = l.finder.find(t) {
                            if stamp.phase != st.phase {
                                st.stale += 1;
                            } else if stamp.k % channels != c as u64 {
                                st.misrouted += 1;
                            } else {
                                st.trackers[li].record(stamp.k / channels);
                                st.lat.record(now, stamp.intended_ns);
                            }
                            st.total_delivered += 1;
                        } else if ping.find(t).is_some() {
                            pusher_pong = true;
                        }
                    }
                    Frame::Ping(p) => ws_pong = Some(p.to_vec()),
                    Frame::Close(_) => closed = true,
                    _ => {}
                }
                !closed
            });
            l.ctl.counters[l.idx]
                .delivered
                .store(st.total_delivered, Relaxed);
            if res.is_err() || closed {
                st.closed += 1;
                l.ctl.error(format!(
                    "subscriber {i}: server closed or sent a bad frame ({res:?})"
                ));
                true
            } else {
                false
            }
        };
        if stop {
            return;
        }
        if pusher_pong || ws_pong.is_some() {
            let mut out = Vec::new();
            if pusher_pong {
                wsframe::client_text(br#"{"event":"pusher:pong","data":{}}"#, i as u32, &mut out);
            }
            if let Some(p) = ws_pong {
                ringcast_protocol::encode_client_frame_into(
                    ringcast_protocol::ws::OpCode::Pong,
                    &p,
                    [9, 8, 7, 6],
                    &mut out,
                );
            }
            let (r, _) = s.write_all(out).await;
            if r.is_err() {
                return;
            }
        }
    }
}

/// Remaining events of publisher `j` from `k` on (step `n`) below `events`.
fn remaining(k: u64, events: u64, n: u64) -> u64 {
    if k >= events {
        0
    } else {
        (events - k).div_ceil(n)
    }
}

/// Most events coalesced into one write.
const MAX_BATCH: usize = 256;

async fn client_publisher(l: Rc<Local>, j: usize) {
    let plan = l.plan.clone();
    let channels: Vec<String> = plan
        .publisher_channels(j)
        .into_iter()
        .map(|c| plan.channel(c))
        .collect();
    let id = plan.subscribers + j;
    let setup = async {
        let (mut s, mut rd, sid, guard) = open(&l, id).await?;
        let sub = net::subscribe_all(&mut s, &mut rd, &plan.target, &sid, &channels, id as u32);
        match monoio::time::timeout(plan.setup_timeout, sub).await {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("subscribe timed out"),
        }
        Ok((s, rd, guard))
    };
    let r = setup.await;
    l.setup_finished();
    let (s, mut rd, guard) = match r {
        Ok(x) => x,
        Err(e) => {
            l.ctl.error(format!("publisher {j}: {e:#}"));
            return;
        }
    };
    let (mut rh, mut wh) = s.into_split();
    // Reader: other publishers' events arrive here (client events go to every subscriber but
    // the sender); count rejections (`pusher:error`, e.g. a client-event rate limit).
    let lr = l.clone();
    monoio::spawn(async move {
        let _guard = guard;
        let err = memchr::memmem::Finder::new(b"\"pusher:error\"");
        loop {
            match net::read_some(&mut rh, &mut rd).await {
                Ok(true) => {}
                _ => return,
            }
            let mut n = 0;
            let mut closed = false;
            let _ = rd.drain(|f| {
                match f {
                    Frame::Text(t) if err.find(t).is_some() => n += 1,
                    Frame::Close(_) => closed = true,
                    _ => {}
                }
                true
            });
            if n > 0 {
                lr.stats.borrow_mut().pub_rejected += n;
                lr.ctl.counters[lr.idx].errors.fetch_add(n, Relaxed);
            }
            if closed {
                return;
            }
        }
    });
    let np = plan.publishers as u64;
    let nc = plan.channels as u64;
    let chan_names: Vec<String> = (0..plan.channels).map(|c| plan.channel(c)).collect();
    let event = plan.event_name();
    let mut done_phase = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut body = Vec::with_capacity(plan.payload + 256);
    let mut seq = 0u32;
    loop {
        if l.ctl.stop.load(Relaxed) {
            return;
        }
        let spec = l.spec.get();
        if spec.phase == 0 || spec.phase == done_phase {
            monoio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        done_phase = spec.phase;
        let mut k = j as u64;
        while k < spec.events {
            if l.ctl.stop.load(Relaxed) || l.spec.get().phase != spec.phase {
                break;
            }
            let now = now_ns();
            if now > spec.deadline_ns {
                break;
            }
            let due = spec.intended_ns(k);
            if due > now {
                gen::sleep_until_ns(due).await;
                continue;
            }
            buf.clear();
            let mut n = 0u64;
            while k < spec.events && n < MAX_BATCH as u64 {
                let due = spec.intended_ns(k);
                if due > now {
                    break;
                }
                body.clear();
                body.extend_from_slice(b"{\"event\":\"");
                body.extend_from_slice(event.as_bytes());
                body.extend_from_slice(b"\",\"channel\":\"");
                body.extend_from_slice(chan_names[(k % nc) as usize].as_bytes());
                body.extend_from_slice(b"\",\"data\":\"");
                payload::encode(spec.phase, k, due, plan.payload, &mut body);
                body.extend_from_slice(b"\"}");
                seq = seq.wrapping_add(1);
                wsframe::client_text(&body, seq, &mut buf);
                k += np;
                n += 1;
            }
            let (res, b) = wh.write_all(buf).await;
            buf = b;
            if res.is_err() {
                l.ctl.error(format!("publisher {j}: write failed: {res:?}"));
                break;
            }
            let mut st = l.stats.borrow_mut();
            st.pub_sent += n;
            st.total_published += n;
            l.ctl.counters[l.idx]
                .published
                .store(st.total_published, Relaxed);
        }
        let skipped = remaining(k, spec.events, np);
        l.stats.borrow_mut().pub_skipped += skipped;
    }
}

async fn rest_publisher(l: Rc<Local>, j: usize) {
    let plan = l.plan.clone();
    let t = &plan.target;
    let src = t.source_for(plan.subscribers + j);
    let r = monoio::time::timeout(plan.setup_timeout, net::connect(src, t.api_addr)).await;
    l.setup_finished();
    let s = match r {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            l.ctl.error(format!("REST connection {j}: {e}"));
            return;
        }
        Err(_) => {
            l.ctl
                .error(format!("REST connection {j}: connect timed out"));
            return;
        }
    };
    let guard = l.sockets.register(std::os::fd::AsRawFd::as_raw_fd(&s));
    let (mut rh, mut wh) = s.into_split();
    let acked = Rc::new(Cell::new(0u64));
    let broken = Rc::new(Cell::new(false));
    let (lr, ack2, broken2) = (l.clone(), acked.clone(), broken.clone());
    monoio::spawn(async move {
        let _guard = guard;
        let mut rd = FrameReader::new(16 * 1024);
        loop {
            match net::read_some(&mut rh, &mut rd).await {
                Ok(true) => {}
                _ => {
                    broken2.set(true);
                    return;
                }
            }
            let mut data = rd.take_buf();
            let mut used = 0;
            let mut ok = 0;
            let mut bad = 0;
            loop {
                match crate::http::parse_response(&data[used..]) {
                    Ok(Some((code, n))) => {
                        used += n;
                        if (200..300).contains(&code) {
                            ok += 1;
                        } else {
                            bad += 1;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        lr.ctl.error(format!("REST: {e}"));
                        broken2.set(true);
                        return;
                    }
                }
            }
            data.drain(..used);
            rd.give_back(data);
            ack2.set(ack2.get() + ok + bad);
            let mut st = lr.stats.borrow_mut();
            st.rest_ok += ok;
            st.rest_err += bad;
            if bad > 0 {
                lr.ctl.counters[lr.idx].errors.fetch_add(bad, Relaxed);
            }
        }
    });
    let np = plan.publishers as u64;
    let nc = plan.channels as u64;
    let chan_names: Vec<String> = (0..plan.channels).map(|c| plan.channel(c)).collect();
    let event = plan.event_name();
    let inflight = plan.rest_inflight.max(1) as u64;
    let mut sent = 0u64;
    let mut done_phase = 0;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut body = Vec::with_capacity(plan.payload + 256);
    let mut data = Vec::with_capacity(plan.payload + 64);
    loop {
        if l.ctl.stop.load(Relaxed) || broken.get() {
            if broken.get() && !l.ctl.stop.load(Relaxed) {
                l.ctl
                    .error(format!("REST connection {j}: closed by the server"));
            }
            return;
        }
        let spec = l.spec.get();
        if spec.phase == 0 || spec.phase == done_phase {
            monoio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        done_phase = spec.phase;
        let mut k = j as u64;
        while k < spec.events {
            if l.ctl.stop.load(Relaxed) || broken.get() || l.spec.get().phase != spec.phase {
                break;
            }
            let now = now_ns();
            if now > spec.deadline_ns {
                break;
            }
            let due = spec.intended_ns(k);
            if due > now {
                gen::sleep_until_ns(due).await;
                continue;
            }
            let room = inflight.saturating_sub(sent - acked.get());
            if room == 0 {
                monoio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            buf.clear();
            let mut n = 0u64;
            let ts = crate::clock::unix_secs();
            while k < spec.events && n < room.min(MAX_BATCH as u64) {
                let due = spec.intended_ns(k);
                if due > now {
                    break;
                }
                data.clear();
                payload::encode(spec.phase, k, due, plan.payload, &mut data);
                body.clear();
                crate::http::trigger_body(event, &chan_names[(k % nc) as usize], &data, &mut body);
                crate::http::trigger_request(t, &body, ts, &mut buf);
                k += np;
                n += 1;
            }
            let (res, b) = wh.write_all(buf).await;
            buf = b;
            if res.is_err() {
                l.ctl
                    .error(format!("REST connection {j}: write failed: {res:?}"));
                broken.set(true);
                break;
            }
            sent += n;
            let mut st = l.stats.borrow_mut();
            st.pub_sent += n;
            st.total_published += n;
            l.ctl.counters[l.idx]
                .published
                .store(st.total_published, Relaxed);
        }
        let skipped = remaining(k, spec.events, np);
        l.stats.borrow_mut().pub_skipped += skipped;
    }
}

/// The outcome of one phase.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PhaseResult {
    pub server: String,
    pub mode: PublishMode,
    pub subscribers: usize,
    pub channels: usize,
    pub payload: usize,
    /// Events per second scheduled.
    pub rate: f64,
    pub duration_s: f64,
    pub events: u64,
    pub published: u64,
    /// Events the publisher could not send before the phase deadline.
    pub publish_skipped: u64,
    /// `pusher:error` answers to publishers (client mode) and non-2xx REST answers.
    pub publish_rejected: u64,
    pub rest_ok: u64,
    pub loss: LossReport,
    /// Deliveries of an earlier phase that arrived late.
    pub stale: u64,
    pub misrouted: u64,
    pub connections_closed: u64,
    /// Delivered (distinct, expected) per second of the schedule.
    pub deliveries_per_sec: f64,
    pub latency: LatencySummary,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub gen_cpu_s: f64,
    /// Busiest generator thread's CPU use as a fraction of one core.
    pub gen_thread_max_util: f64,
    pub gen_saturated: bool,
    /// Server + generator CPU over the machine's capacity.
    pub machine_util: Option<f64>,
    /// The whole machine's busy fraction during the phase (/proc/stat: includes softirq work
    /// deferred to ksoftirqd and anything else running, e.g. other tenants' builds).
    pub machine_busy: Option<f64>,
    pub load_avg_before: String,
    /// No loss, no duplicates, generator not saturated.
    pub valid: bool,
}

/// A connected fan-out setup that can run phases.
pub struct Session {
    pub plan: Arc<FanoutPlan>,
    ctl: Arc<Ctl>,
    threads: Vec<std::thread::JoinHandle<()>>,
    rx: mpsc::Receiver<ThreadResult>,
    next_phase: u32,
    pub server_pid: Option<u32>,
    pub label: String,
    pub quiet: bool,
}

impl Session {
    /// Connects and subscribes everything; fails if any connection fails.
    pub fn start(
        plan: FanoutPlan,
        server_pid: Option<u32>,
        label: &str,
        quiet: bool,
    ) -> anyhow::Result<Session> {
        anyhow::ensure!(
            plan.channels > 0 && plan.subscribers > 0,
            "need at least one channel and one subscriber"
        );
        anyhow::ensure!(plan.publishers > 0, "need at least one publisher");
        let plan = Arc::new(plan);
        let ctl = Ctl::new(plan.gen.threads);
        let (tx, rx) = mpsc::channel();
        let (p2, c2) = (plan.clone(), ctl.clone());
        let threads = gen::spawn(&plan.gen, ctl.clone(), move |i| {
            thread_main(i, p2.clone(), c2.clone(), tx.clone())
        })?;
        let s = Session {
            plan,
            ctl,
            threads,
            rx,
            next_phase: 1,
            server_pid,
            label: label.to_string(),
            quiet,
        };
        let total = s.plan.subscribers + s.plan.publishers;
        // Bounded: generous per connection, capped.
        let limit = s.plan.setup_timeout
            + Duration::from_millis((total as u64).saturating_mul(5).min(600_000));
        let t0 = Instant::now();
        let mut last = Instant::now();
        while s.ctl.ready.load(Relaxed) < s.plan.gen.threads {
            if t0.elapsed() > limit {
                anyhow::bail!("[{}] setup did not finish within {limit:?}", s.label);
            }
            if s.ctl.error_count.load(Relaxed) > 0
                && !s.quiet
                && last.elapsed() > Duration::from_secs(1)
            {
                eprintln!(
                    "[{}] setup errors so far: {}",
                    s.label,
                    s.ctl.error_count.load(Relaxed)
                );
            }
            if !s.quiet && last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                eprintln!(
                    "[{}] connecting: {}/{} subscribers up",
                    s.label,
                    s.ctl.total(|c| &c.connected),
                    s.plan.subscribers
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let errs = s.ctl.error_count.load(Relaxed);
        if errs > 0 {
            anyhow::bail!(
                "[{}] {errs} connection(s) failed during setup; first: {:?}",
                s.label,
                s.ctl.first_errors().first()
            );
        }
        if !s.quiet {
            eprintln!(
                "[{}] setup complete in {:.1}s ({} connections)",
                s.label,
                t0.elapsed().as_secs_f64(),
                total
            );
        }
        Ok(s)
    }

    pub fn errors(&self) -> Vec<String> {
        self.ctl.first_errors()
    }

    /// Runs one phase at `rate` events/s for `duration`, waiting up to `drain` for stragglers.
    pub fn run_phase(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
    ) -> anyhow::Result<PhaseResult> {
        anyhow::ensure!(rate > 0.0, "rate must be positive");
        let plan = self.plan.clone();
        let phase = self.next_phase;
        self.next_phase += 1;
        let events = ((rate * duration.as_secs_f64()).round() as u64).max(1);
        let expected = expected_deliveries(events, plan.channels as u64, plan.subscribers as u64);
        let lead = Duration::from_millis(300);
        let t0_ns = now_ns() + lead.as_nanos() as u64;
        let end_ns = t0_ns + duration.as_nanos() as u64;
        let deadline_ns = end_ns + drain.as_nanos() as u64;
        let load_before = procfs::loadavg();
        let delivered0 = self.ctl.total(|c| &c.delivered);
        let srv0 = self.server_pid.and_then(procfs::process_cpu);
        let gen0 = self.ctl.thread_cpu();
        let mach0 = procfs::machine_cpu();
        let wall0 = Instant::now();
        self.ctl.start_phase(PhaseSpec {
            phase,
            rate,
            events,
            t0_ns,
            deadline_ns,
        });
        let mut last_print = Instant::now();
        let mut last_delivered = delivered0;
        loop {
            let now = now_ns();
            let delivered = self.ctl.total(|c| &c.delivered) - delivered0;
            if now >= end_ns && (delivered >= expected || now >= deadline_ns) {
                break;
            }
            if !self.quiet && last_print.elapsed() >= Duration::from_secs(1) {
                let dt = last_print.elapsed().as_secs_f64();
                last_print = Instant::now();
                let p99 = self.ctl.live_latency().quantile_ms(0.99);
                let total = self.ctl.total(|c| &c.delivered);
                eprintln!(
                    "[{} phase {phase}] t={:.1}s rate={rate}/s published={} delivered={}/{} ({:.0}/s) p99={p99:.2}ms errors={}",
                    self.label,
                    now.saturating_sub(t0_ns) as f64 / 1e9,
                    self.ctl.total(|c| &c.published),
                    delivered,
                    expected,
                    (total - last_delivered) as f64 / dt,
                    self.ctl.total(|c| &c.errors),
                );
                last_delivered = total;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let wall = wall0.elapsed().as_secs_f64();
        let srv1 = self.server_pid.and_then(procfs::process_cpu);
        let gen1 = self.ctl.thread_cpu();
        let mach1 = procfs::machine_cpu();
        self.ctl.collect.store(phase, Relaxed);
        let mut lat = Latency::new();
        let mut loss = LossReport::default();
        let mut r = PhaseResult {
            server: self.label.clone(),
            mode: plan.mode,
            subscribers: plan.subscribers,
            channels: plan.channels,
            payload: plan.payload,
            rate,
            duration_s: duration.as_secs_f64(),
            events,
            published: 0,
            publish_skipped: 0,
            publish_rejected: 0,
            rest_ok: 0,
            loss: LossReport::default(),
            stale: 0,
            misrouted: 0,
            connections_closed: 0,
            deliveries_per_sec: 0.0,
            latency: LatencySummary::default(),
            server_cpu_s: None,
            server_cpu_us_per_delivery: None,
            gen_cpu_s: 0.0,
            gen_thread_max_util: 0.0,
            gen_saturated: false,
            machine_util: None,
            machine_busy: procfs::busy_between(mach0, mach1),
            load_avg_before: load_before,
            valid: false,
        };
        for _ in 0..plan.gen.threads {
            let tr = match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(t) => t,
                Err(_) => anyhow::bail!("a generator thread did not report phase {phase}"),
            };
            if tr.phase != phase {
                anyhow::bail!(
                    "a generator thread reported phase {} instead of {phase}",
                    tr.phase
                );
            }
            lat.merge(&tr.lat);
            loss.add(&tr.loss);
            r.published += tr.pub_sent;
            r.publish_skipped += tr.pub_skipped;
            r.publish_rejected += tr.pub_rejected + tr.rest_err;
            r.rest_ok += tr.rest_ok;
            r.stale += tr.stale;
            r.misrouted += tr.misrouted;
            r.connections_closed += tr.closed;
        }
        // Every expected delivery is accounted for by the trackers.
        debug_assert_eq!(loss.expected, expected);
        r.loss = loss;
        r.latency = lat.summary();
        r.deliveries_per_sec = loss.delivered as f64 / duration.as_secs_f64();
        if let (Some(a), Some(b)) = (srv0, srv1) {
            let s = b - a;
            r.server_cpu_s = Some(s);
            if loss.delivered > 0 {
                r.server_cpu_us_per_delivery = Some(s * 1e6 / loss.delivered as f64);
            }
        }
        let utils: Vec<f64> = gen1
            .iter()
            .zip(gen0.iter().chain(std::iter::repeat(&0.0)))
            .map(|(b, a)| (b - a) / wall)
            .collect();
        r.gen_cpu_s = gen1.iter().sum::<f64>() - gen0.iter().sum::<f64>();
        r.gen_thread_max_util = utils.iter().cloned().fold(0.0, f64::max);
        r.gen_saturated = r.gen_thread_max_util >= SATURATION;
        r.machine_util = r
            .server_cpu_s
            .map(|s| (s + r.gen_cpu_s) / (wall * procfs::cpus() as f64));
        r.valid = r.loss.is_exact()
            && r.stale == 0
            && r.misrouted == 0
            && !r.gen_saturated
            && r.publish_rejected == 0;
        if r.gen_saturated && !self.quiet {
            eprintln!(
                "[{}] WARNING: generator saturated (busiest thread {:.0}% of a core): this phase is not valid",
                self.label,
                r.gen_thread_max_util * 100.0
            );
        }
        Ok(r)
    }

    /// Stops the generator threads.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.ctl.stop.store(true, Relaxed);
        gen::join(std::mem::take(&mut self.threads), Duration::from_secs(10));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// A generator thread busier than this fraction of a core was the bottleneck.
pub const SATURATION: f64 = 0.90;
