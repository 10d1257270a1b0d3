//! The fan-out scenario: S subscribers over C channels, events published open-loop at R/s with
//! P-byte payloads (client events or signed REST triggers). A [`Session`] connects everything
//! once and then runs any number of phases (one for `fanout`, one per rate for `sweep`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use monoio::io::AsyncWriteRentExt;
use serde::Serialize;

use crate::clock::now_ns;
use crate::epoll_receiver::{self, EpollSet, Got};
use crate::gen::{self, lock, Ctl, Gate, GenConfig, PhaseSpec};
use crate::latency::{Latency, LatencySummary};
use crate::loss::{events_for_channel, expected_deliveries, LossReport, SeqTracker};
use crate::net::{self, Target};
use crate::payload::{self, StampFinder};
use crate::procfs;
use crate::receive::{on_text, take_frames, PingFinder, Tally};
use crate::wsframe::{self, Frame, FrameReader};

use super::rest::{self, Pipelining, RestReport};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Client events (`client-*`) on private channels, auth signed locally.
    Client,
    /// Signed REST `POST /apps/{id}/events` on keep-alive connections (pipelined).
    Rest,
}

/// How subscriber sockets are read.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ReceiveMode {
    /// One epoll instance per generator thread for every plaintext subscriber socket
    /// ([`crate::epoll_receiver`]); TLS subscribers keep their tasks.
    #[default]
    Epoll,
    /// One monoio task per subscriber connection (reads through the runtime).
    Tasks,
}

/// Everything a fan-out session needs.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
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
    /// REST mode: most requests in flight per publisher (on one pipelined connection, or
    /// over that many connections when the server does not pipeline).
    pub rest_inflight: usize,
    pub rest_pipelining: Pipelining,
    /// REST mode: longest wait for one answer before the connection is abandoned.
    pub rest_timeout: Duration,
    /// This process's share when the connections run in several processes (`--procs`).
    pub part: Part,
    /// Publish lag (p99) the generator may have before a phase counts as its fault.
    pub max_publish_lag_ms: f64,
    pub read_buf: usize,
    /// How subscriber sockets are read (older plans, e.g. from a `--procs` parent of an
    /// earlier build, mean the default).
    #[serde(default)]
    pub receive: ReceiveMode,
    /// Connections set up at once per generator thread.
    pub setup_concurrency: usize,
    pub setup_timeout: Duration,
    pub gen: GenConfig,
    /// Publishers run on a generator thread of their own (index `gen.threads`, after the
    /// subscriber threads), which reads no subscriber: a thread that also reads thousands of
    /// sockets starts its publishers late once the cores are busy (older plans: false, the
    /// publishers share the subscriber threads).
    #[serde(default)]
    pub publisher_thread: bool,
    /// The nice value the publisher thread asks for (0: unchanged); best effort, see
    /// [`raise_priority`].
    #[serde(default)]
    pub publisher_nice: i32,
}

/// Process `index` of `count` (`--procs`): it runs subscriber `i` if `i % count == index` and
/// publisher `j` if `j % count == index`. Within the process, generator thread `t` of `T` runs
/// those with `(i / count) % T == t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Part {
    pub index: usize,
    pub count: usize,
}

impl Default for Part {
    fn default() -> Self {
        Part { index: 0, count: 1 }
    }
}

impl Part {
    /// The numbers below `n` this process's thread `t` of `threads` runs.
    pub fn mine(self, n: usize, t: usize, threads: usize) -> impl Iterator<Item = usize> {
        let count = self.count.max(1);
        (self.index..n)
            .step_by(count)
            .filter(move |i| (i / count) % threads.max(1) == t)
    }

    /// How many of the numbers below `n` this process runs.
    pub fn share(self, n: usize) -> usize {
        (self.index..n).step_by(self.count.max(1)).count()
    }
}

/// Which generator thread of this process runs which connection: `threads` subscriber threads
/// (spread by [`Part::mine`]) and, with `publisher_thread`, one more thread (index `threads`)
/// that runs every publisher of the process and no subscriber.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub part: Part,
    pub threads: usize,
    pub publisher_thread: bool,
}

impl Placement {
    /// Is thread `t` the publishers' own thread?
    pub fn is_publisher_thread(self, t: usize) -> bool {
        self.publisher_thread && t == self.threads
    }

    /// Subscribers (of `n`) run by thread `t`: none on the publisher thread.
    pub fn subscribers(self, n: usize, t: usize) -> impl Iterator<Item = usize> {
        let n = if self.is_publisher_thread(t) { 0 } else { n };
        self.part.mine(n, t, self.threads)
    }

    /// Publishers (of `n`) run by thread `t`: all of this process's on the publisher thread if
    /// there is one (none elsewhere), else spread like the subscribers.
    pub fn publishers(self, n: usize, t: usize) -> impl Iterator<Item = usize> {
        let (n, t, threads) = match (self.publisher_thread, self.is_publisher_thread(t)) {
            (false, _) => (n, t, self.threads),
            (true, true) => (n, 0, 1),
            (true, false) => (0, 0, 1),
        };
        self.part.mine(n, t, threads)
    }
}

impl FanoutPlan {
    pub fn channel(&self, c: usize) -> String {
        format!("{}{c}", self.channel_prefix)
    }

    /// Generator threads of this process: the subscriber threads, and the publisher thread if
    /// the plan has one.
    pub fn threads(&self) -> usize {
        self.gen.threads + usize::from(self.has_publisher_thread())
    }

    /// Does this process run a publisher thread? Only if the plan asks for one and the
    /// process has publishers (a `--procs` worker may have none).
    pub fn has_publisher_thread(&self) -> bool {
        self.publisher_thread && self.part.share(self.publishers) > 0
    }

    /// Is thread `t` the publishers' own thread?
    pub fn is_publisher_thread(&self, t: usize) -> bool {
        self.placement().is_publisher_thread(t)
    }

    /// Which thread of this process runs which connection.
    pub fn placement(&self) -> Placement {
        Placement {
            part: self.part,
            threads: self.gen.threads,
            publisher_thread: self.has_publisher_thread(),
        }
    }

    /// Global subscriber numbers run by generator thread `t` of this process.
    pub fn my_subscribers(&self, t: usize) -> impl Iterator<Item = usize> {
        self.placement().subscribers(self.subscribers, t)
    }

    /// Global publisher numbers run by generator thread `t` of this process.
    pub fn my_publishers(&self, t: usize) -> impl Iterator<Item = usize> {
        self.placement().publishers(self.publishers, t)
    }

    pub(crate) fn event_name(&self) -> &'static str {
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
    pub lag_gen: Latency,
    pub lag_server: Latency,
    pub rest: Option<RestReport>,
}

#[derive(Default)]
pub(crate) struct Stats {
    phase: u32,
    events: u64,
    lat: Latency,
    trackers: Vec<SeqTracker>,
    stale: u64,
    misrouted: u64,
    pub(crate) pub_sent: u64,
    pub(crate) pub_skipped: u64,
    pub(crate) pub_rejected: u64,
    pub(crate) rest_ok: u64,
    pub(crate) rest_err: u64,
    closed: u64,
    /// Publish lag (send time - intended time) while nothing held the publisher back: the
    /// generator's lateness.
    pub(crate) lag_gen: Latency,
    /// Publish lag while the server held the publisher back (all REST lanes awaiting answers,
    /// reconnecting or in a Retry-After; a client-event write that blocked on the socket).
    pub(crate) lag_server: Latency,
    /// Running total over all phases (progress line).
    pub(crate) total_delivered: u64,
    pub(crate) total_published: u64,
}

pub(crate) struct Local {
    pub(crate) idx: usize,
    pub(crate) plan: Arc<FanoutPlan>,
    pub(crate) ctl: Arc<Ctl>,
    pub(crate) stats: RefCell<Stats>,
    finder: StampFinder,
    pub(crate) spec: Cell<PhaseSpec>,
    setup_done: Cell<usize>,
    setup_total: usize,
    /// Global subscriber number and channel index of each local receiver.
    subs: Vec<(usize, usize)>,
    gate: Gate,
    pub(crate) sockets: Rc<gen::Sockets>,
    /// The REST publishers' pools on this thread.
    pub(crate) pools: RefCell<Vec<Rc<rest::Pool>>>,
    /// The thread's epoll receiver (`--receive epoll`): plaintext subscribers are handed to it
    /// once subscribed. Each connection keeps its socket registration (for the stop).
    epoll: Option<RefCell<EpollSet<gen::SocketGuard>>>,
    ping: PingFinder,
    /// Scratch for pongs written by the epoll receiver.
    pong: RefCell<Vec<u8>>,
}

impl Local {
    /// The statistics before the first phase: deliveries that arrive then (e.g. events left
    /// on a channel by an earlier run) carry another phase's stamp and are counted as `stale`,
    /// and [`Self::begin`] hands that count to the first phase.
    fn stats_before_phases(subs: usize) -> Stats {
        Stats {
            trackers: vec![SeqTracker::new(); subs],
            ..Default::default()
        }
    }

    fn begin(&self, spec: PhaseSpec) {
        let mut st = self.stats.borrow_mut();
        let (td, tp) = (st.total_delivered, st.total_published);
        // Stale deliveries that arrived before the first phase are reported with it.
        let early = if st.phase == 0 { st.stale } else { 0 };
        *st = Stats {
            phase: spec.phase,
            events: spec.events,
            trackers: vec![SeqTracker::new(); self.subs.len()],
            stale: early,
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
            loss.add(&t.check(events_for_channel(st.events, c, self.subs[li].1 as u64)));
        }
        let pools = self.pools.borrow();
        let rest = (self.plan.mode == PublishMode::Rest).then(|| {
            let mut r = RestReport::default();
            for p in pools.iter() {
                r.add(&p.phase_report(st.phase, st.events, self.plan.publishers as u64));
            }
            r
        });
        let skipped = rest
            .as_ref()
            .map_or(st.pub_skipped, |r| r.unsent_at_deadline);
        ThreadResult {
            phase: st.phase,
            lat: st.lat.clone(),
            loss,
            stale: st.stale,
            misrouted: st.misrouted,
            pub_sent: st.pub_sent,
            pub_skipped: skipped,
            pub_rejected: st.pub_rejected,
            rest_ok: st.rest_ok,
            rest_err: st.rest_err,
            closed: st.closed,
            lag_gen: st.lag_gen.clone(),
            lag_server: st.lag_server.clone(),
            rest,
        }
    }

    pub(crate) fn setup_finished(&self) {
        self.setup_done.set(self.setup_done.get() + 1);
    }
}

async fn thread_main(
    idx: usize,
    plan: Arc<FanoutPlan>,
    ctl: Arc<Ctl>,
    tx: mpsc::Sender<ThreadResult>,
) {
    if plan.is_publisher_thread(idx) && plan.publisher_nice != 0 {
        match raise_priority(plan.publisher_nice) {
            Ok(()) => ctl.note(format!(
                "publishers on a thread of their own at nice {}",
                plan.publisher_nice
            )),
            Err(e) => ctl.note(format!(
                "publishers on a thread of their own; nice {} refused ({e}), left at the default priority",
                plan.publisher_nice
            )),
        }
    }
    let subs: Vec<(usize, usize)> = plan
        .my_subscribers(idx)
        .map(|i| (i, i % plan.channels))
        .collect();
    let pubs: Vec<usize> = plan.my_publishers(idx).collect();
    let epoll = match plan.receive {
        ReceiveMode::Epoll if !subs.is_empty() => match EpollSet::new() {
            Ok(set) => Some(RefCell::new(set)),
            Err(e) => {
                ctl.note(format!(
                    "epoll unavailable ({e}): subscribers are read by tasks instead"
                ));
                None
            }
        },
        _ => None,
    };
    let l = Rc::new(Local {
        idx,
        setup_total: subs.len() + pubs.len(),
        stats: RefCell::new(Local::stats_before_phases(subs.len())),
        subs,
        gate: Gate::new(plan.setup_concurrency),
        plan: plan.clone(),
        ctl: ctl.clone(),
        finder: StampFinder::new(),
        spec: Cell::new(PhaseSpec::default()),
        setup_done: Cell::new(0),
        sockets: Rc::new(gen::Sockets::default()),
        pools: RefCell::new(Vec::new()),
        epoll,
        ping: PingFinder::default(),
        pong: RefCell::new(Vec::new()),
    });
    if l.epoll.is_some() {
        monoio::spawn(epoll_receive(l.clone()));
    }
    for li in 0..l.subs.len() {
        monoio::spawn(receiver(l.clone(), li));
    }
    for j in pubs {
        match plan.mode {
            PublishMode::Client => monoio::spawn(client_publisher(l.clone(), j)),
            PublishMode::Rest => monoio::spawn(rest::publisher(l.clone(), j)),
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
            if let Some(ep) = &l.epoll {
                ep.borrow().wake();
            }
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
) -> anyhow::Result<(crate::tls::Stream, FrameReader, String, gen::SocketGuard)> {
    let t = &l.plan.target;
    let mut s = t.connect_ws(i).await?;
    let guard = l.sockets.register(std::os::fd::AsRawFd::as_raw_fd(&s));
    let mut rd = FrameReader::new(l.plan.read_buf);
    let est = net::pusher_connect(
        &mut s,
        t,
        t.ws_for(i),
        &mut rd,
        i as u64 + 1,
        l.plan.setup_timeout,
    )
    .await?;
    Ok((s, rd, est.socket_id, guard))
}

async fn receiver(l: Rc<Local>, li: usize) {
    let (i, c) = l.subs[li];
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
    if let (Some(ep), crate::tls::Stream::Plain(tcp)) = (&l.epoll, &s) {
        hand_over(&l, ep, li, std::os::fd::AsRawFd::as_raw_fd(tcp), rd);
        // The epoll receiver reads a duplicate of the socket from now on.
        return;
    }
    let channels = l.plan.channels as u64;
    let ping = &l.ping;
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
        let (stop, pusher_pong, ws_pong) = {
            let mut guard = l.stats.borrow_mut();
            let st = &mut *guard;
            let mut t = Tally {
                phase: st.phase,
                channels,
                channel: c as u64,
                tracker: &mut st.trackers[li],
                lat: &mut st.lat,
                stale: &mut st.stale,
                misrouted: &mut st.misrouted,
                delivered: &mut st.total_delivered,
            };
            let res = take_frames(&mut rd, &l.finder, ping, now, &mut t);
            l.ctl.counters[l.idx]
                .delivered
                .store(st.total_delivered, Relaxed);
            match res {
                Ok(ctl) if !ctl.closed => (false, ctl.pusher_ping, ctl.ws_ping),
                other => {
                    st.closed += 1;
                    l.ctl.error(format!(
                        "subscriber {i}: server closed or sent a bad frame ({other:?})"
                    ));
                    (true, false, None)
                }
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

/// Gives subscriber `li`'s socket (`fd`, subscribed) and what its reader had buffered to the
/// thread's epoll receiver. The receiver owns a duplicate descriptor (registered for the stop
/// in place of the task's); the caller drops its stream.
fn hand_over(
    l: &Local,
    ep: &RefCell<EpollSet<gen::SocketGuard>>,
    li: usize,
    fd: std::os::fd::RawFd,
    rd: FrameReader,
) {
    let i = l.subs[li].0;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no pointers; a non-negative result is a new
    // descriptor of the same socket that we own.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    let mut st = l.stats.borrow_mut();
    if dup < 0 {
        st.closed += 1;
        l.ctl.error(format!(
            "subscriber {i}: cannot hand the socket to epoll: {}",
            std::io::Error::last_os_error()
        ));
        return;
    }
    // SAFETY: `dup` is open and owned by nobody else.
    let dup = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
    let guard = l.sockets.register(std::os::fd::AsRawFd::as_raw_fd(&dup));
    let (initial, frag) = rd.into_parts();
    let added = ep
        .borrow_mut()
        .add(dup, li, guard, &initial, frag, now_ns(), &mut |ctx, got| {
            on_epoll(l, &mut st, ctx, got)
        });
    l.ctl.counters[l.idx]
        .delivered
        .store(st.total_delivered, Relaxed);
    if let Err(e) = added {
        st.closed += 1;
        l.ctl.error(format!(
            "subscriber {i}: cannot watch the socket with epoll: {e}"
        ));
    }
}

/// The epoll receiver's handler: counts exactly what the task path counts (the same
/// `on_text`; a close frame, a bad frame or the end of the stream closes the connection and is
/// counted in `closed` with an error) and answers `pusher:ping` at once (WebSocket pings are
/// answered by the set).
fn on_epoll(l: &Local, st: &mut Stats, ctx: &epoll_receiver::Ctx, got: Got<'_>) -> bool {
    let li = ctx.key;
    let (i, c) = l.subs[li];
    let pong = |st: &mut Stats, frame: &[u8]| match ctx.send(frame) {
        Ok(()) => true,
        Err(e) => {
            st.closed += 1;
            l.ctl.error(format!(
                "subscriber {i}: could not answer a ping ({e}); closed"
            ));
            false
        }
    };
    match got {
        Got::Frame(Frame::Text(text)) => {
            let mut t = Tally {
                phase: st.phase,
                channels: l.plan.channels as u64,
                channel: c as u64,
                tracker: &mut st.trackers[li],
                lat: &mut st.lat,
                stale: &mut st.stale,
                misrouted: &mut st.misrouted,
                delivered: &mut st.total_delivered,
            };
            if on_text(text, &l.finder, &l.ping, ctx.now, &mut t) {
                let mut out = l.pong.borrow_mut();
                out.clear();
                wsframe::client_text(PUSHER_PONG, i as u32, &mut out);
                return pong(st, &out);
            }
            true
        }
        Got::Frame(Frame::Close(code)) => {
            st.closed += 1;
            l.ctl.error(format!(
                "subscriber {i}: server closed or sent a bad frame (close {code:?})"
            ));
            false
        }
        Got::Frame(_) => true,
        Got::SendError(e) => {
            st.closed += 1;
            l.ctl.error(format!(
                "subscriber {i}: could not answer a ping ({e}); closed"
            ));
            false
        }
        Got::BadFrame(e) => {
            st.closed += 1;
            l.ctl.error(format!(
                "subscriber {i}: server closed or sent a bad frame ({e})"
            ));
            false
        }
        Got::Eof | Got::ReadError(_) => {
            st.closed += 1;
            if !l.ctl.stop.load(Relaxed) {
                l.ctl
                    .error(format!("subscriber {i}: connection closed by the server"));
            }
            false
        }
    }
}

const PUSHER_PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// The thread's epoll receive loop: waits (in the runtime) until some subscriber socket is
/// ready, then serves every ready one; ends at the stop, closing them all.
async fn epoll_receive(l: Rc<Local>) {
    let Some(ep) = &l.epoll else {
        return;
    };
    let ready = match ep.borrow().readiness() {
        Ok(r) => r,
        Err(e) => {
            l.ctl.error(format!(
                "thread {}: cannot wait for the epoll descriptor: {e}",
                l.idx
            ));
            return;
        }
    };
    loop {
        if l.ctl.stop.load(Relaxed) {
            break;
        }
        let polled = {
            let mut guard = l.stats.borrow_mut();
            let st = &mut *guard;
            let r = ep
                .borrow_mut()
                .poll(0, &mut |ctx, got| on_epoll(&l, st, ctx, got));
            l.ctl.counters[l.idx]
                .delivered
                .store(st.total_delivered, Relaxed);
            r
        };
        if let Err(e) = polled {
            l.ctl
                .error(format!("thread {}: epoll_wait failed: {e}", l.idx));
            break;
        }
        // Ready at once if sockets are still ready: the other tasks get their turn first.
        if let Err(e) = ready.readable(false).await {
            l.ctl
                .error(format!("thread {}: waiting for epoll failed: {e}", l.idx));
            break;
        }
    }
    // Closing every connection ends their registrations, so the stop need not wait. Before
    // the stop (epoll failed) each one closed is counted as a closed connection.
    let mut set = ep.borrow_mut();
    if !l.ctl.stop.load(Relaxed) {
        l.stats.borrow_mut().closed += set.len() as u64;
    }
    set.clear();
}

/// Remaining events of publisher `j` from `k` on (step `n`) below `events`.
pub(crate) fn remaining(k: u64, events: u64, n: u64) -> u64 {
    if k >= events {
        0
    } else {
        (events - k).div_ceil(n)
    }
}

/// Most events coalesced into one write.
pub(crate) const MAX_BATCH: usize = 256;

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
    // The last write blocked (the server was not reading): the lag that follows is its doing.
    let mut write_blocked = false;
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
                {
                    let mut st = l.stats.borrow_mut();
                    if write_blocked {
                        st.lag_server.record(now, due);
                    } else {
                        st.lag_gen.record(now, due);
                    }
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
            let w0 = now_ns();
            let (res, b) = wh.write_all(buf).await;
            buf = b;
            if res.is_err() {
                l.ctl.error(format!("publisher {j}: write failed: {res:?}"));
                break;
            }
            write_blocked = now_ns() - w0 > 1_000_000;
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
    /// No failure of the server or of the generator (the two lists below are empty).
    pub valid: bool,
    /// REST publishing: answers, retries, reconnects, requests per connection (REST mode).
    #[serde(default)]
    pub rest: Option<RestReport>,
    /// Publish lag (send time - intended time) while nothing held the publishers back: how far
    /// the generator itself fell behind its schedule.
    #[serde(default)]
    pub publish_lag: LatencySummary,
    /// Publish lag while the server held the publishers back (REST: every request slot awaiting
    /// an answer, reconnecting, Retry-After; client events: a write blocked on the socket).
    #[serde(default)]
    pub publish_wait_server: LatencySummary,
    /// Generator CPU per distinct delivery, beside `server_cpu_us_per_delivery`.
    #[serde(default)]
    pub gen_cpu_us_per_delivery: Option<f64>,
    /// How the machine was shared: CPUs of the generator threads and of the server's threads.
    #[serde(default)]
    pub machine_sharing: String,
    /// What the server did wrong in this phase, each with its figures (empty: nothing).
    #[serde(default)]
    pub server_failures: Vec<String>,
    /// Why the generator's figures cannot be trusted in this phase (empty: they can).
    #[serde(default)]
    pub generator_failures: Vec<String>,
    /// Processes the connections ran in (`--procs`).
    #[serde(default = "one")]
    pub procs: usize,
    /// Publish lag (p99, the generator's own) above which the phase is the generator's fault.
    #[serde(default = "behind_ms")]
    pub max_publish_lag_ms: f64,
    /// The generator's notes on this phase (e.g. where the publishers ran, at what priority).
    #[serde(default)]
    pub notes: Vec<String>,
}

fn one() -> usize {
    1
}

fn behind_ms() -> f64 {
    BEHIND_MS
}

/// One process's figures for one phase, mergeable exactly: counts add up, histograms travel
/// as their buckets. The generator threads of one process are merged into one `Partial`; with
/// `--procs` every child process sends its `Partial` to the parent as one JSON line.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Partial {
    pub phase: u32,
    pub lat: Vec<(u64, u64)>,
    pub lag_gen: Vec<(u64, u64)>,
    pub lag_server: Vec<(u64, u64)>,
    pub loss: LossReport,
    pub published: u64,
    pub skipped: u64,
    pub rejected: u64,
    pub rest_ok: u64,
    pub stale: u64,
    pub misrouted: u64,
    pub closed: u64,
    pub rest: Option<RestReport>,
    pub gen_cpu_s: f64,
    pub gen_thread_max_util: f64,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// Live counters of a process (progress lines; sent by `--procs` children twice a second).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct Progress {
    pub connected: u64,
    pub delivered: u64,
    pub published: u64,
    pub errors: u64,
}

/// The generator threads of this process, connected and subscribed.
pub struct LocalGen {
    pub plan: Arc<FanoutPlan>,
    ctl: Arc<Ctl>,
    threads: Vec<std::thread::JoinHandle<()>>,
    rx: mpsc::Receiver<ThreadResult>,
}

impl LocalGen {
    /// Starts the threads and waits (bounded) until every connection of this process is set
    /// up; `progress` is called about once a second meanwhile.
    pub fn start(plan: FanoutPlan, mut progress: impl FnMut(Progress)) -> anyhow::Result<LocalGen> {
        let plan = Arc::new(plan);
        let ctl = Ctl::new(plan.threads());
        let (tx, rx) = mpsc::channel();
        let (p2, c2) = (plan.clone(), ctl.clone());
        // The publisher thread, if any, is the last one (pinned like the others: `--cpus`
        // entry `threads % len`).
        let gen_cfg = GenConfig {
            threads: plan.threads(),
            cpus: plan.gen.cpus.clone(),
        };
        let threads = gen::spawn(&gen_cfg, ctl.clone(), move |i| {
            thread_main(i, p2.clone(), c2.clone(), tx.clone())
        })?;
        let g = LocalGen {
            plan,
            ctl,
            threads,
            rx,
        };
        let total = g.plan.part.share(g.plan.subscribers) + g.plan.part.share(g.plan.publishers);
        // Bounded: generous per connection, capped, plus the REST pipelining probe.
        let limit = g.plan.setup_timeout
            + rest::probe_limit(&g.plan)
            + Duration::from_millis((total as u64).saturating_mul(5).min(600_000));
        let t0 = Instant::now();
        let mut last = Instant::now();
        while g.ctl.ready.load(Relaxed) < g.plan.threads() {
            if t0.elapsed() > limit {
                anyhow::bail!("setup did not finish within {limit:?}");
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(g.progress());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let errs = g.ctl.error_count.load(Relaxed);
        if errs > 0 {
            anyhow::bail!(
                "{errs} connection(s) failed during setup; first: {:?}",
                g.ctl.first_errors().first()
            );
        }
        Ok(g)
    }

    pub fn progress(&self) -> Progress {
        Progress {
            connected: self.ctl.total(|c| &c.connected),
            delivered: self.ctl.total(|c| &c.delivered),
            published: self.ctl.total(|c| &c.published),
            errors: self.ctl.total(|c| &c.errors),
        }
    }

    pub fn notes(&self) -> Vec<String> {
        lock(&self.ctl.notes).clone()
    }

    /// Deliveries this process's subscribers expect in a phase of `events` events.
    pub fn expected(&self, events: u64) -> u64 {
        let p = &self.plan;
        (p.part.index..p.subscribers)
            .step_by(p.part.count.max(1))
            .map(|i| events_for_channel(events, p.channels as u64, (i % p.channels) as u64))
            .sum()
    }

    /// Runs one phase on this process's connections: returns when every expected delivery
    /// arrived after the schedule ended, or at the deadline.
    pub fn run_phase(
        &self,
        spec: PhaseSpec,
        end_ns: u64,
        mut progress: impl FnMut(Progress),
    ) -> anyhow::Result<Partial> {
        let phase = spec.phase;
        let expected = self.expected(spec.events);
        let delivered0 = self.ctl.total(|c| &c.delivered);
        let gen0 = self.ctl.thread_cpu();
        let wall0 = Instant::now();
        self.ctl.start_phase(spec);
        let mut last = Instant::now();
        loop {
            let now = now_ns();
            let delivered = self.ctl.total(|c| &c.delivered) - delivered0;
            let complete = delivered >= expected && self.ctl.total(|c| &c.unanswered) == 0;
            if now >= end_ns && (complete || now >= spec.deadline_ns) {
                break;
            }
            if last.elapsed() >= Duration::from_millis(500) {
                last = Instant::now();
                progress(self.progress());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let wall = wall0.elapsed().as_secs_f64();
        let gen1 = self.ctl.thread_cpu();
        self.ctl.collect.store(phase, Relaxed);
        let mut lat = Latency::new();
        let mut lag_gen = Latency::new();
        let mut lag_server = Latency::new();
        let mut p = Partial {
            phase,
            ..Default::default()
        };
        for _ in 0..self.plan.threads() {
            let tr = match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(t) => t,
                Err(_) => anyhow::bail!("a generator thread did not report phase {phase}"),
            };
            anyhow::ensure!(
                tr.phase == phase,
                "a generator thread reported phase {} instead of {phase}",
                tr.phase
            );
            lat.merge(&tr.lat);
            lag_gen.merge(&tr.lag_gen);
            lag_server.merge(&tr.lag_server);
            p.loss.add(&tr.loss);
            p.published += tr.pub_sent;
            p.skipped += tr.pub_skipped;
            p.rejected += tr.pub_rejected + tr.rest_err;
            p.rest_ok += tr.rest_ok;
            p.stale += tr.stale;
            p.misrouted += tr.misrouted;
            p.closed += tr.closed;
            if let Some(r) = &tr.rest {
                p.rest.get_or_insert_with(RestReport::default).add(r);
            }
        }
        p.lat = lat.buckets();
        p.lag_gen = lag_gen.buckets();
        p.lag_server = lag_server.buckets();
        p.gen_cpu_s = gen1.iter().sum::<f64>() - gen0.iter().sum::<f64>();
        p.gen_thread_max_util = gen1
            .iter()
            .zip(gen0.iter().chain(std::iter::repeat(&0.0)))
            .map(|(b, a)| (b - a) / wall)
            .fold(0.0, f64::max);
        p.errors = self.ctl.first_errors();
        p.notes = self.notes();
        Ok(p)
    }

    pub fn stop(&mut self) {
        self.ctl.stop.store(true, Relaxed);
        gen::join(std::mem::take(&mut self.threads), Duration::from_secs(10));
    }
}

impl Drop for LocalGen {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

enum Backend {
    Local(LocalGen),
    Procs(crate::procs::Children),
}

/// A connected fan-out setup that can run phases: the generator threads of this process, or
/// (`--procs N`) N child processes that each run a share of the connections.
pub struct Session {
    pub plan: Arc<FanoutPlan>,
    backend: Backend,
    next_phase: u32,
    pub server_pid: Option<u32>,
    pub label: String,
    pub quiet: bool,
    /// Errors seen during the run (first ones).
    errors: Vec<String>,
}

impl Session {
    /// Connects and subscribes everything (in `procs` processes when more than 1); fails if
    /// any connection fails.
    pub fn start(
        plan: FanoutPlan,
        procs: usize,
        server_pid: Option<u32>,
        label: &str,
        quiet: bool,
    ) -> anyhow::Result<Session> {
        anyhow::ensure!(
            plan.channels > 0 && plan.subscribers > 0,
            "need at least one channel and one subscriber"
        );
        anyhow::ensure!(plan.publishers > 0, "need at least one publisher");
        let t0 = Instant::now();
        let total = plan.subscribers + plan.publishers;
        let show = |p: Progress| {
            if !quiet {
                eprintln!(
                    "[{label}] connecting: {}/{} connections up, {} errors",
                    p.connected, total, p.errors
                );
            }
        };
        let backend = if procs > 1 {
            Backend::Procs(
                crate::procs::Children::start(&plan, procs, show)
                    .with_context(|| format!("[{label}] setup in {procs} processes"))?,
            )
        } else {
            Backend::Local(
                LocalGen::start(plan.clone(), show).with_context(|| format!("[{label}]"))?,
            )
        };
        if !quiet {
            eprintln!(
                "[{label}] setup complete in {:.1}s ({total} connections{})",
                t0.elapsed().as_secs_f64(),
                if procs > 1 {
                    format!(" in {procs} processes")
                } else {
                    String::new()
                }
            );
        }
        Ok(Session {
            plan: Arc::new(plan),
            backend,
            next_phase: 1,
            server_pid,
            label: label.to_string(),
            quiet,
            errors: Vec::new(),
        })
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.clone()
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
        let sharing = procfs::sharing(plan.gen.cpus.as_deref(), self.server_pid);
        let srv0 = self.server_pid.and_then(procfs::process_cpu);
        let mach0 = procfs::machine_cpu();
        let spec = PhaseSpec {
            phase,
            rate,
            events,
            t0_ns,
            deadline_ns,
        };
        let (label, quiet) = (self.label.clone(), self.quiet);
        let mut last_delivered = None;
        let mut last_at = Instant::now();
        let show = |p: Progress| {
            if quiet {
                return;
            }
            let dt = last_at.elapsed().as_secs_f64();
            if dt < 0.9 {
                return;
            }
            last_at = Instant::now();
            let d0 = *last_delivered.get_or_insert(p.delivered);
            eprintln!(
                "[{label} phase {phase}] t={:.1}s rate={rate}/s published={} delivered={} ({:.0}/s) errors={}",
                now_ns().saturating_sub(t0_ns) as f64 / 1e9,
                p.published,
                p.delivered,
                p.delivered.saturating_sub(d0) as f64 / dt,
                p.errors,
            );
            last_delivered = Some(p.delivered);
        };
        let part = match &mut self.backend {
            Backend::Local(g) => g.run_phase(spec, end_ns, show)?,
            Backend::Procs(c) => c.run_phase(spec, end_ns, show)?,
        };
        let srv1 = self.server_pid.and_then(procfs::process_cpu);
        let mach1 = procfs::machine_cpu();
        for e in &part.errors {
            if self.errors.len() < 20 && !self.errors.contains(e) {
                self.errors.push(e.clone());
            }
        }
        let lat = Latency::from_buckets(&part.lat);
        let mut r = PhaseResult {
            server: self.label.clone(),
            mode: plan.mode,
            subscribers: plan.subscribers,
            channels: plan.channels,
            payload: plan.payload,
            rate,
            duration_s: duration.as_secs_f64(),
            events,
            published: part.published,
            publish_skipped: part.skipped,
            publish_rejected: part.rejected,
            rest_ok: part.rest_ok,
            loss: part.loss,
            stale: part.stale,
            misrouted: part.misrouted,
            connections_closed: part.closed,
            deliveries_per_sec: part.loss.delivered as f64 / duration.as_secs_f64(),
            latency: lat.summary(),
            server_cpu_s: None,
            server_cpu_us_per_delivery: None,
            gen_cpu_s: part.gen_cpu_s,
            gen_thread_max_util: part.gen_thread_max_util,
            gen_saturated: part.gen_thread_max_util >= SATURATION,
            machine_util: None,
            machine_busy: procfs::busy_between(mach0, mach1),
            load_avg_before: load_before,
            valid: false,
            rest: part.rest.clone(),
            publish_lag: Latency::from_buckets(&part.lag_gen).summary(),
            publish_wait_server: Latency::from_buckets(&part.lag_server).summary(),
            notes: part.notes.clone(),
            gen_cpu_us_per_delivery: (part.loss.delivered > 0)
                .then(|| part.gen_cpu_s * 1e6 / part.loss.delivered as f64),
            machine_sharing: sharing,
            server_failures: Vec::new(),
            generator_failures: Vec::new(),
            max_publish_lag_ms: plan.max_publish_lag_ms,
            procs: match &self.backend {
                Backend::Local(_) => 1,
                Backend::Procs(c) => c.len(),
            },
        };
        // Every expected delivery is accounted for by the trackers.
        debug_assert_eq!(r.loss.expected, expected);
        let wall = (now_ns().saturating_sub(t0_ns) as f64 / 1e9).max(duration.as_secs_f64());
        if let (Some(a), Some(b)) = (srv0, srv1) {
            let s = b - a;
            r.server_cpu_s = Some(s);
            if r.loss.delivered > 0 {
                r.server_cpu_us_per_delivery = Some(s * 1e6 / r.loss.delivered as f64);
            }
        }
        r.machine_util = r
            .server_cpu_s
            .map(|s| (s + r.gen_cpu_s) / (wall * procfs::cpus() as f64));
        crate::report::classify(&mut r);
        if !self.quiet {
            for f in &r.generator_failures {
                eprintln!("[{}] GENERATOR: {f}", self.label);
            }
            for n in &part.notes {
                eprintln!("[{}] note: {n}", self.label);
            }
        }
        Ok(r)
    }

    /// Stops the generator threads (or child processes).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        match &mut self.backend {
            Backend::Local(g) => g.stop(),
            Backend::Procs(c) => c.stop(),
        }
    }
}

/// Asks for nice value `nice` for the calling thread (Linux: a thread's own priority).
/// Raising it (a negative value) needs `CAP_SYS_NICE` or a matching `RLIMIT_NICE`; the caller
/// reports a refusal and goes on.
pub fn raise_priority(nice: i32) -> std::io::Result<()> {
    let tid = crate::procfs::gettid();
    // SAFETY: setpriority(2) reads its three integer arguments only.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A generator thread busier than this fraction of a core was the bottleneck.
pub const SATURATION: f64 = 0.90;

/// Default of `--max-publish-lag-ms`: publishers more than this far behind their schedule
/// (p99, while the server was not holding them back) make a phase's latency figures the
/// generator's, not the server's.
pub const BEHIND_MS: f64 = 10.0;

#[cfg(test)]
mod placement_tests {
    use super::{Part, Placement};

    /// `f(t)` for every thread `t` below `threads`.
    fn per_thread(threads: usize, f: impl Fn(usize) -> Vec<usize>) -> Vec<Vec<usize>> {
        (0..threads).map(f).collect()
    }

    #[test]
    fn the_publisher_thread_runs_every_publisher_and_no_subscriber() {
        let p = Placement {
            part: Part::default(),
            threads: 2,
            publisher_thread: true,
        };
        let subs = per_thread(3, |t| p.subscribers(10, t).collect());
        let pubs = per_thread(3, |t| p.publishers(3, t).collect());
        assert_eq!(subs, vec![vec![0, 2, 4, 6, 8], vec![1, 3, 5, 7, 9], vec![]]);
        assert_eq!(pubs, vec![vec![], vec![], vec![0, 1, 2]]);
    }

    #[test]
    fn without_it_publishers_share_the_subscriber_threads_as_before() {
        let p = Placement {
            part: Part::default(),
            threads: 2,
            publisher_thread: false,
        };
        let subs = per_thread(2, |t| p.subscribers(4, t).collect());
        let pubs = per_thread(2, |t| p.publishers(3, t).collect());
        assert_eq!(subs, vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(pubs, vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn in_several_processes_each_publisher_thread_runs_its_process_share() {
        let p = |index| Placement {
            part: Part { index, count: 2 },
            threads: 1,
            publisher_thread: true,
        };
        assert_eq!(p(0).publishers(5, 1).collect::<Vec<_>>(), vec![0, 2, 4]);
        assert_eq!(p(1).publishers(5, 1).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(p(1).subscribers(5, 0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(p(1).subscribers(5, 1).count(), 0);
        assert_eq!(p(0).publishers(5, 0).count(), 0);
    }
}
