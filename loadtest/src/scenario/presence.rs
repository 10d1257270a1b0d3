//! The presence scenario: join/leave churn on presence channels, auth signed locally.
//!
//! Per channel, `residents` members join first and stay for the whole run; `churners`
//! connections then join and leave on a fixed open-loop schedule: join number `g` (channel
//! `g % channels`) is intended at `t0 + g / rate` with user id `j{g}` and leaves `hold` later,
//! but never before the server answered the join (a leave sent while the join is pending
//! cancels it, and the server then owes no `subscription_succeeded`).
//! Every resident must see `member_added` and `member_removed` for every join of its channel
//! exactly once; latency is measured from the intended join/leave time, which the user id
//! encodes, so no clock has to travel in the message.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use serde::Serialize;

use crate::clock::now_ns;
use crate::gen::{self, Ctl, GenConfig, PhaseSpec};
use crate::latency::{Latency, LatencySummary};
use crate::net::{self, Target};
use crate::wsframe::{self, Frame, FrameReader};

#[derive(Clone, Debug)]
pub struct PresencePlan {
    pub target: Target,
    pub channels: usize,
    pub residents: usize,
    pub churners: usize,
    /// Joins per second over all channels.
    pub rate: f64,
    pub duration: Duration,
    /// How long a churner stays joined.
    pub hold: Duration,
    pub timeout: Duration,
    pub gen: GenConfig,
}

impl PresencePlan {
    fn channel(&self, c: usize) -> String {
        format!("presence-lt-{c}")
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PresenceResult {
    pub server: String,
    pub channels: usize,
    pub residents: usize,
    pub churners: usize,
    pub rate: f64,
    pub joins: u64,
    pub joins_sent: u64,
    pub joins_acked: u64,
    pub join_errors: u64,
    /// Acks whose member snapshot did not contain all residents.
    pub snapshot_short: u64,
    pub added_expected: u64,
    pub added_seen: u64,
    pub added_missing: u64,
    pub added_duplicates: u64,
    pub removed_expected: u64,
    pub removed_seen: u64,
    pub removed_missing: u64,
    pub removed_duplicates: u64,
    pub unexpected: u64,
    pub member_added_latency: LatencySummary,
    pub member_removed_latency: LatencySummary,
    pub correct: bool,
    pub errors: Vec<String>,
    pub load_avg_before: String,
}

/// A resident's channel, and join id -> (member_added, member_removed) counts.
type ResidentSeen = (usize, HashMap<u64, (u32, u32)>);

#[derive(Default)]
struct TResult {
    added: Latency,
    removed: Latency,
    r: PresenceResult,
}

struct Local {
    plan: Arc<PresencePlan>,
    ctl: Arc<Ctl>,
    idx: usize,
    spec: Cell<PhaseSpec>,
    setup_done: Cell<usize>,
    added: RefCell<Latency>,
    removed: RefCell<Latency>,
    /// Per local resident: channel, and join id -> (added, removed) counts.
    seen: RefCell<Vec<ResidentSeen>>,
    unexpected: Cell<u64>,
    sent: Cell<u64>,
    acked: Cell<u64>,
    errors: Cell<u64>,
    short: Cell<u64>,
    events: Cell<u64>,
    sockets: Rc<gen::Sockets>,
}

fn join_id(data: &serde_json::Value) -> Option<u64> {
    let d = net::data_object(data);
    let id = d.get("user_id")?;
    let s = id.as_str()?;
    s.strip_prefix('j')?.parse().ok()
}

async fn resident(l: Rc<Local>, slot: usize, r: usize) {
    let p = &l.plan;
    let c = r % p.channels;
    let ch = p.channel(c);
    let setup = async {
        let mut s = p.target.connect_ws(r).await?;
        let guard = l.sockets.register(std::os::fd::AsRawFd::as_raw_fd(&s));
        let mut rd = FrameReader::new(4096);
        let est = net::pusher_connect(
            &mut s,
            &p.target,
            p.target.ws_for(r),
            &mut rd,
            r as u64 + 11,
            p.timeout,
        )
        .await?;
        let cd = format!("{{\"user_id\":\"r{r}\",\"user_info\":{{\"resident\":true}}}}");
        let auth = net::auth_for(&p.target, &est.socket_id, &ch, Some(&cd));
        let mut out = Vec::new();
        wsframe::client_text(
            net::subscribe_msg(&ch, auth.as_deref(), Some(&cd)).as_bytes(),
            r as u32,
            &mut out,
        );
        s.write_all(out).await.0?;
        let fut = net::wait_for(&mut s, &mut rd, |ev, data| match ev {
            "pusher_internal:subscription_succeeded" => Some(Ok(())),
            "pusher:error" | "pusher:subscription_error" => {
                Some(Err(anyhow::anyhow!("{ev} {data}")))
            }
            _ => None,
        });
        match monoio::time::timeout(p.timeout, fut).await {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("presence subscribe timed out"),
        }
        anyhow::Ok((s, rd, guard))
    };
    let res = setup.await;
    l.setup_done.set(l.setup_done.get() + 1);
    let (mut s, mut rd, _guard) = match res {
        Ok(x) => x,
        Err(e) => {
            l.ctl.error(format!("resident {r}: {e:#}"));
            return;
        }
    };
    l.ctl.counters[l.idx].connected.fetch_add(1, Relaxed);
    loop {
        if !matches!(net::read_some(&mut s, &mut rd).await, Ok(true)) {
            if !l.ctl.stop.load(Relaxed) {
                l.ctl.error(format!("resident {r}: connection closed"));
            }
            return;
        }
        let now = now_ns();
        let spec = l.spec.get();
        let mut pong = false;
        let _ = rd.drain(|f| {
            if let Frame::Text(t) = f {
                if let Some((ev, data)) = net::event_of(t) {
                    let added = ev.ends_with("member_added");
                    let removed = ev.ends_with("member_removed");
                    if ev == "pusher:ping" {
                        pong = true;
                    }
                    if added || removed {
                        match join_id(&data) {
                            Some(g)
                                if spec.phase != 0
                                    && g < spec.events
                                    && g % l.plan.channels as u64 == c as u64 =>
                            {
                                let intended = spec.intended_ns(g);
                                let mut seen = l.seen.borrow_mut();
                                let e = seen[slot].1.entry(g).or_insert((0, 0));
                                if added {
                                    e.0 += 1;
                                    l.added.borrow_mut().record(now, intended);
                                } else {
                                    e.1 += 1;
                                    l.removed
                                        .borrow_mut()
                                        .record(now, intended + l.plan.hold.as_nanos() as u64);
                                }
                                l.events.set(l.events.get() + 1);
                            }
                            Some(_) => l.unexpected.set(l.unexpected.get() + 1),
                            None => {}
                        }
                    }
                }
            }
            true
        });
        l.ctl.counters[l.idx]
            .delivered
            .store(l.events.get(), Relaxed);
        if pong {
            let mut out = Vec::new();
            wsframe::client_text(br#"{"event":"pusher:pong","data":{}}"#, 5, &mut out);
            if s.write_all(out).await.0.is_err() {
                return;
            }
        }
    }
}

async fn churner(l: Rc<Local>, m: usize) {
    let p = l.plan.clone();
    let (nc, nm) = (p.channels as u64, p.churners as u64);
    let c = m % p.channels;
    let ch = p.channel(c);
    let id = p.channels * p.residents + m;
    let setup = async {
        let mut s = p.target.connect_ws(id).await?;
        let guard = l.sockets.register(std::os::fd::AsRawFd::as_raw_fd(&s));
        let mut rd = FrameReader::new(4096);
        let est = net::pusher_connect(
            &mut s,
            &p.target,
            p.target.ws_for(id),
            &mut rd,
            id as u64 + 13,
            p.timeout,
        )
        .await?;
        anyhow::Ok((s, rd, est.socket_id, guard))
    };
    let res = setup.await;
    l.setup_done.set(l.setup_done.get() + 1);
    let (s, mut rd, sid, guard) = match res {
        Ok(x) => x,
        Err(e) => {
            l.ctl.error(format!("churner {m}: {e:#}"));
            return;
        }
    };
    let (mut rh, mut wh) = s.into_split();
    let lr = l.clone();
    let residents = p.residents as u64;
    // This churner's answered joins (subscription_succeeded or an error): a leave is sent only
    // once its join was answered. A leave sent while the join is still pending cancels it on
    // the server, which then owes (and sends) no subscription_succeeded: under load that made
    // `joins_acked` fall short although the server was right.
    let answered = Rc::new(Cell::new(0u64));
    let answered_r = answered.clone();
    monoio::spawn(async move {
        let _guard = guard;
        loop {
            if !matches!(net::read_some(&mut rh, &mut rd).await, Ok(true)) {
                return;
            }
            let _ = rd.drain(|f| {
                if let Frame::Text(t) = f {
                    if let Some((ev, data)) = net::event_of(t) {
                        if ev == "pusher_internal:subscription_succeeded" {
                            answered_r.set(answered_r.get() + 1);
                            lr.acked.set(lr.acked.get() + 1);
                            let d = net::data_object(&data);
                            let count = d
                                .pointer("/presence/count")
                                .and_then(|v| v.as_u64())
                                .unwrap_or(0);
                            if count < residents + 1 {
                                lr.short.set(lr.short.get() + 1);
                            }
                        } else if ev == "pusher:error" || ev == "pusher:subscription_error" {
                            answered_r.set(answered_r.get() + 1);
                            lr.errors.set(lr.errors.get() + 1);
                            lr.ctl.error(format!("churner: {ev} {data}"));
                        }
                    }
                }
                true
            });
        }
    });
    // Wait for the phase, then run the schedule: joins g = c + nc * (m/nc + nm * it).
    let spec = loop {
        if l.ctl.stop.load(Relaxed) {
            return;
        }
        let s = l.spec.get();
        if s.phase != 0 {
            break s;
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    };
    let first = c as u64 + nc * (m / p.channels) as u64;
    let step = nc * nm;
    let hold = p.hold.as_nanos() as u64;
    let mut g = first;
    let mut seq = 0u32;
    let mut my_joins = 0u64;
    while g < spec.events {
        if l.ctl.stop.load(Relaxed) || now_ns() > spec.deadline_ns {
            break;
        }
        let join_at = spec.intended_ns(g);
        gen::sleep_until_ns(join_at).await;
        let cd = format!("{{\"user_id\":\"j{g}\",\"user_info\":{{\"n\":{g}}}}}");
        let auth = net::auth_for(&p.target, &sid, &ch, Some(&cd));
        let mut out = Vec::new();
        seq = seq.wrapping_add(1);
        wsframe::client_text(
            net::subscribe_msg(&ch, auth.as_deref(), Some(&cd)).as_bytes(),
            seq,
            &mut out,
        );
        if wh.write_all(out).await.0.is_err() {
            l.ctl.error(format!("churner {m}: write failed"));
            return;
        }
        l.sent.set(l.sent.get() + 1);
        // The leave is due `hold` after the intended join, but never before the join was
        // answered (bounded by the per-operation timeout).
        my_joins += 1;
        let want = my_joins;
        if !wait_until(|| answered.get() >= want, p.timeout).await {
            l.ctl.error(format!(
                "churner {m}: join j{g} not answered within {:?}",
                p.timeout
            ));
        }
        gen::sleep_until_ns(join_at + hold).await;
        let mut out = Vec::new();
        seq = seq.wrapping_add(1);
        wsframe::client_text(net::unsubscribe_msg(&ch).as_bytes(), seq, &mut out);
        if wh.write_all(out).await.0.is_err() {
            l.ctl.error(format!("churner {m}: write failed"));
            return;
        }
        g += step;
    }
    // Keep the connection open until the run stops.
    while !l.ctl.stop.load(Relaxed) {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` (every millisecond, on this thread's runtime) until it holds or `limit`
/// passes; whether it held.
async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while !done() {
        if Instant::now() >= until {
            return false;
        }
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

async fn thread_main(
    idx: usize,
    plan: Arc<PresencePlan>,
    ctl: Arc<Ctl>,
    tx: mpsc::Sender<TResult>,
) {
    let t = plan.gen.threads;
    let my_res: Vec<usize> = (idx..plan.channels * plan.residents).step_by(t).collect();
    let my_churn: Vec<usize> = (idx..plan.channels * plan.churners).step_by(t).collect();
    let l = Rc::new(Local {
        plan: plan.clone(),
        ctl: ctl.clone(),
        idx,
        spec: Cell::new(PhaseSpec::default()),
        setup_done: Cell::new(0),
        added: RefCell::new(Latency::new()),
        removed: RefCell::new(Latency::new()),
        seen: RefCell::new(
            my_res
                .iter()
                .map(|r| (r % plan.channels, HashMap::new()))
                .collect(),
        ),
        unexpected: Cell::new(0),
        sent: Cell::new(0),
        acked: Cell::new(0),
        errors: Cell::new(0),
        short: Cell::new(0),
        events: Cell::new(0),
        sockets: Rc::new(gen::Sockets::default()),
    });
    let total = my_res.len() + my_churn.len();
    for (slot, r) in my_res.iter().enumerate() {
        monoio::spawn(resident(l.clone(), slot, *r));
    }
    // Churners connect once this thread's residents are in (their joins must be seen).
    while l.setup_done.get() < my_res.len() && !ctl.stop.load(Relaxed) {
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
    for m in my_churn {
        monoio::spawn(churner(l.clone(), m));
    }
    let mut reported = false;
    let mut sent = false;
    let mut seen_gen = 0;
    loop {
        if ctl.stop.load(Relaxed) {
            l.sockets.close_all(Duration::from_secs(3)).await;
            return;
        }
        if !reported && l.setup_done.get() >= total {
            reported = true;
            ctl.ready.fetch_add(1, Relaxed);
        }
        let g = ctl.phase_gen.load(Relaxed);
        if g != seen_gen {
            seen_gen = g;
            l.spec.set(ctl.current_spec());
        }
        if !sent && ctl.collect.load(Relaxed) == 1 {
            sent = true;
            let spec = l.spec.get();
            let mut r = PresenceResult::default();
            for (c, seen) in l.seen.borrow().iter() {
                let mut g = *c as u64;
                while g < spec.events {
                    let (a, d) = seen.get(&g).copied().unwrap_or((0, 0));
                    r.added_expected += 1;
                    r.removed_expected += 1;
                    r.added_seen += u64::from(a.min(1));
                    r.removed_seen += u64::from(d.min(1));
                    r.added_missing += u64::from(a == 0);
                    r.removed_missing += u64::from(d == 0);
                    r.added_duplicates += u64::from(a.saturating_sub(1));
                    r.removed_duplicates += u64::from(d.saturating_sub(1));
                    g += plan.channels as u64;
                }
            }
            r.unexpected = l.unexpected.get();
            r.joins_sent = l.sent.get();
            r.joins_acked = l.acked.get();
            r.join_errors = l.errors.get();
            r.snapshot_short = l.short.get();
            let _ = tx.send(TResult {
                added: l.added.borrow().clone(),
                removed: l.removed.borrow().clone(),
                r,
            });
        }
        monoio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn run(plan: PresencePlan, label: &str, quiet: bool) -> anyhow::Result<PresenceResult> {
    anyhow::ensure!(
        plan.channels > 0 && plan.residents > 0 && plan.churners > 0 && plan.rate > 0.0,
        "channels, residents, churners and rate must be positive"
    );
    let period = plan.channels as f64 * plan.churners as f64 / plan.rate;
    anyhow::ensure!(
        plan.hold.as_secs_f64() < period * 0.8,
        "--hold-ms must be below 80% of a churner's period ({:.0} ms = channels*churners/rate); raise --churners or lower --rate",
        period * 1000.0
    );
    let plan = Arc::new(plan);
    let ctl = Ctl::new(plan.gen.threads);
    let (tx, rx) = mpsc::channel();
    let load = procfs_load();
    let (p2, c2) = (plan.clone(), ctl.clone());
    let threads = gen::spawn(&plan.gen, ctl.clone(), move |i| {
        thread_main(i, p2.clone(), c2.clone(), tx.clone())
    })?;
    let stop = |threads| {
        ctl.stop.store(true, Relaxed);
        gen::join(threads, Duration::from_secs(10));
    };
    let t_setup = Instant::now();
    let limit = plan.timeout * 2 + Duration::from_secs(10);
    while ctl.ready.load(Relaxed) < plan.gen.threads {
        if t_setup.elapsed() > limit {
            stop(threads);
            anyhow::bail!("[{label}] presence setup did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if ctl.error_count.load(Relaxed) > 0 {
        let e = ctl.first_errors();
        stop(threads);
        anyhow::bail!("[{label}] presence setup failed: {:?}", e.first());
    }
    let events = ((plan.rate * plan.duration.as_secs_f64()).round() as u64).max(1);
    let t0_ns = now_ns() + 200_000_000;
    let end_ns = t0_ns + plan.duration.as_nanos() as u64 + plan.hold.as_nanos() as u64;
    // How long past the schedule's end the run waits for the last member events (and a late
    // churner may still send its joins): the per-operation timeout, not a fixed few seconds,
    // so a loaded machine is waited for. A run that sees everything ends as soon as it has.
    let drain = plan.timeout.max(Duration::from_secs(3));
    ctl.start_phase(PhaseSpec {
        phase: 1,
        rate: plan.rate,
        events,
        t0_ns,
        deadline_ns: end_ns + drain.as_nanos() as u64,
    });
    let expected_events = 2 * events * plan.residents as u64;
    let mut last = Instant::now();
    loop {
        let now = now_ns();
        let got = ctl.total(|c| &c.delivered);
        if now >= end_ns && (got >= expected_events || now >= end_ns + drain.as_nanos() as u64) {
            break;
        }
        if !quiet && last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            eprintln!(
                "[{label} presence] t={:.1}s member events {got}/{expected_events}",
                now.saturating_sub(t0_ns) as f64 / 1e9
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Late duplicates would show up right after: a short grace.
    std::thread::sleep(Duration::from_millis(300));
    ctl.collect.store(1, Relaxed);
    let mut out = PresenceResult {
        server: label.to_string(),
        channels: plan.channels,
        residents: plan.residents,
        churners: plan.churners,
        rate: plan.rate,
        joins: events,
        load_avg_before: load,
        ..Default::default()
    };
    let mut added = Latency::new();
    let mut removed = Latency::new();
    for _ in 0..plan.gen.threads {
        let Ok(t) = rx.recv_timeout(Duration::from_secs(10)) else {
            stop(threads);
            anyhow::bail!("a generator thread did not report");
        };
        added.merge(&t.added);
        removed.merge(&t.removed);
        let r = t.r;
        out.joins_sent += r.joins_sent;
        out.joins_acked += r.joins_acked;
        out.join_errors += r.join_errors;
        out.snapshot_short += r.snapshot_short;
        out.added_expected += r.added_expected;
        out.added_seen += r.added_seen;
        out.added_missing += r.added_missing;
        out.added_duplicates += r.added_duplicates;
        out.removed_expected += r.removed_expected;
        out.removed_seen += r.removed_seen;
        out.removed_missing += r.removed_missing;
        out.removed_duplicates += r.removed_duplicates;
        out.unexpected += r.unexpected;
    }
    out.errors = ctl.first_errors();
    stop(threads);
    out.member_added_latency = added.summary();
    out.member_removed_latency = removed.summary();
    out.correct = out.joins_sent == events
        && out.joins_acked == events
        && out.join_errors == 0
        && out.snapshot_short == 0
        && out.added_missing == 0
        && out.removed_missing == 0
        && out.added_duplicates == 0
        && out.removed_duplicates == 0
        && out.unexpected == 0;
    Ok(out)
}

fn procfs_load() -> String {
    crate::procfs::loadavg()
}

pub fn table(r: &PresenceResult) -> String {
    format!(
        "server {} | channels {} residents {} churners {} | joins {} sent {} acked {} errors {} short-snapshots {}\n\
         member_added   seen {}/{} missing {} dups {} | p50 {:.2} ms p99 {:.2} ms max {:.2} ms\n\
         member_removed seen {}/{} missing {} dups {} | p50 {:.2} ms p99 {:.2} ms max {:.2} ms\n\
         unexpected {} | correct: {}\n",
        r.server, r.channels, r.residents, r.churners, r.joins, r.joins_sent, r.joins_acked, r.join_errors, r.snapshot_short,
        r.added_seen, r.added_expected, r.added_missing, r.added_duplicates,
        r.member_added_latency.p50_ms, r.member_added_latency.p99_ms, r.member_added_latency.max_ms,
        r.removed_seen, r.removed_expected, r.removed_missing, r.removed_duplicates,
        r.member_removed_latency.p50_ms, r.member_removed_latency.p99_ms, r.member_removed_latency.max_ms,
        r.unexpected, if r.correct { "yes" } else { "NO" }
    )
}
