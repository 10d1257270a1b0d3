//! REST publishing that copes with every legal HTTP/1.1 server behaviour.
//!
//! Each REST publisher `j` owns a *pool*: a queue of requests that are due (open-loop schedule:
//! event `k` is due at its intended time whatever happened before), a list of requests waiting
//! for a `Retry-After`, and one or more connections (*lanes*). A lane writes up to `depth`
//! requests before it waits for answers: `depth = --rest-inflight` when the server answers
//! pipelined requests, else 1, and then the pool runs up to `--rest-inflight` lanes in
//! parallel, one request each (what a browser's connection pool does).
//!
//! - **Pipelining** is probed once per publisher during setup with two pipelined, read-only
//!   `GET /apps/{id}/channels` requests (nothing is published): both answered on a connection
//!   that stays open means pipelining is on (`--rest-pipelining auto`, the default). A server
//!   that later ends a connection with pipelined requests unanswered turns it off for the pool.
//! - **`Connection: close`** (or HTTP/1.0, or a body delimited by the end of the connection):
//!   the lane stops writing on that connection, reads what is answered, and reconnects; every
//!   request that was written but not answered goes back to the front of the queue and is sent
//!   again (counted as `resent`). Such a request was never processed: a server that closes
//!   after a response processes nothing after it.
//! - **Chunked** responses, interim `1xx` responses, trailers: parsed ([`crate::http`]).
//! - **429**: the request is retried after `Retry-After` seconds (1 s when absent or an
//!   HTTP-date), counted as `throttled`; other non-2xx answers are final (`rejected`, by status).
//! - **Slow answers**: nothing times out below `--rest-timeout` (default 10 s) per answer; past
//!   it the connection is abandoned and its unanswered requests are sent again (`timeouts`,
//!   `resent`: they may arrive twice, which the loss tracker then shows as duplicates).
//!
//! A request sent late is late, never dropped: its lateness shows up as delivery latency
//! (measured from the intended time) and as *publish lag*, split by cause: lag while every lane
//! was busy waiting for the server (or reconnecting, or in a `Retry-After`) is the server's,
//! other lag is the generator's. Only at the phase deadline are requests given up, each counted
//! with its reason (not sent / sent and unanswered).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use serde::{Deserialize, Serialize};

use super::fanout::Local;
use crate::clock::now_ns;
use crate::gen;
use crate::http;
use crate::net;
use crate::payload;
use crate::wsframe::FrameReader;

/// Whether REST requests may be pipelined on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pipelining {
    /// Probe the server during setup (and turn pipelining off if it ends a connection with
    /// pipelined requests unanswered).
    Auto,
    On,
    Off,
}

/// REST publishing figures of one phase (summed over publishers, threads and processes).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RestReport {
    /// 2xx answers.
    pub ok: u64,
    /// 429 answers (each request retried after `Retry-After`).
    pub throttled: u64,
    /// Other non-2xx answers (final), by status.
    pub rejected: u64,
    pub rejected_statuses: BTreeMap<u16, u64>,
    /// Requests written again after their connection ended without answering them.
    pub resent: u64,
    /// Connections opened during the phase.
    pub connections: u64,
    /// Connections the server ended (`Connection: close` or end of stream).
    pub closed_by_server: u64,
    pub connect_errors: u64,
    /// Connections abandoned because an answer took longer than `--rest-timeout`.
    pub timeouts: u64,
    /// Connections that answered at least one request of the phase.
    pub connections_answering: u64,
    /// Answered requests per answering connection, and the most on one connection.
    pub requests_per_connection: f64,
    pub max_requests_per_connection: u64,
    /// Requests never sent before the phase deadline (reason: see `unsent_blocked_by_server`).
    pub unsent_at_deadline: u64,
    /// Of those, how many were due while every lane was waiting for the server.
    pub unsent_blocked_by_server: u64,
    /// Requests sent but not answered by the phase deadline.
    pub unanswered_at_deadline: u64,
    /// How the pools ran: pipelining on/off per publisher and why.
    pub modes: Vec<String>,
}

impl RestReport {
    pub fn add(&mut self, o: &RestReport) {
        self.ok += o.ok;
        self.throttled += o.throttled;
        self.rejected += o.rejected;
        for (s, n) in &o.rejected_statuses {
            *self.rejected_statuses.entry(*s).or_default() += n;
        }
        self.resent += o.resent;
        self.connections += o.connections;
        self.closed_by_server += o.closed_by_server;
        self.connect_errors += o.connect_errors;
        self.timeouts += o.timeouts;
        self.connections_answering += o.connections_answering;
        self.max_requests_per_connection = self
            .max_requests_per_connection
            .max(o.max_requests_per_connection);
        self.finish();
        self.unsent_at_deadline += o.unsent_at_deadline;
        self.unsent_blocked_by_server += o.unsent_blocked_by_server;
        self.unanswered_at_deadline += o.unanswered_at_deadline;
        for m in &o.modes {
            if !self.modes.contains(m) {
                self.modes.push(m.clone());
            }
        }
    }

    pub fn answered(&self) -> u64 {
        self.ok + self.throttled + self.rejected
    }

    /// Derives `requests_per_connection`.
    fn finish(&mut self) {
        self.requests_per_connection = if self.connections_answering > 0 {
            self.answered() as f64 / self.connections_answering as f64
        } else {
            0.0
        };
    }
}

/// One request of the schedule: event `k`, not to be sent before `not_before` (a
/// `Retry-After`), `retried` after a 429 or a lost connection, `held` when it became due
/// while no lane was free (the server held it back).
#[derive(Clone, Copy, Debug)]
struct Pending {
    k: u64,
    phase: u32,
    not_before: u64,
    retried: bool,
    held: bool,
}

/// The per-publisher pool (see the module docs).
pub(crate) struct Pool {
    j: usize,
    /// The phase being published and the next event of the schedule not yet queued.
    phase: Cell<u32>,
    next_k: Cell<u64>,
    ready: RefCell<VecDeque<Pending>>,
    delayed: RefCell<Vec<Pending>>,
    /// Requests written per connection before waiting for answers.
    depth: Cell<usize>,
    lanes_wanted: Cell<usize>,
    lanes_live: Cell<usize>,
    /// Written and not yet answered, all lanes.
    outstanding: Cell<u64>,
    /// Lanes connected, with room, waiting for work: a request that becomes due while none
    /// is waiting is held back by the server (all lanes awaiting answers or reconnecting).
    idle: Cell<usize>,
    mode: RefCell<String>,
    /// Per-phase counters (reset when a phase begins).
    report: RefCell<RestReport>,
}

impl Pool {
    /// The figures of `phase` so far, with what is still unsent or unanswered (at the
    /// deadline: given up, with the reason).
    pub(crate) fn phase_report(&self, phase: u32, events: u64, publishers: u64) -> RestReport {
        let mut r = self.report.borrow().clone();
        if self.phase.get() != phase {
            // This publisher never started the phase (e.g. setup failed): all of it is unsent.
            r.unsent_at_deadline = super::fanout::remaining(self.j as u64, events, publishers);
            r.unsent_blocked_by_server = r.unsent_at_deadline;
        } else {
            let queued = (self.ready.borrow().len() + self.delayed.borrow().len()) as u64;
            r.unsent_at_deadline =
                super::fanout::remaining(self.next_k.get(), events, publishers) + queued;
            let server_bound = self.outstanding.get() > 0
                || !self.delayed.borrow().is_empty()
                || self.ready.borrow().front().is_some_and(|p| p.held);
            r.unsent_blocked_by_server = if server_bound {
                r.unsent_at_deadline
            } else {
                0
            };
            r.unanswered_at_deadline = self.outstanding.get();
        }
        r.modes = vec![format!("publisher {}: {}", self.j, self.mode.borrow())];
        r.finish();
        r
    }

    fn take_ready(&self, n: usize, out: &mut Vec<Pending>) {
        let mut ready = self.ready.borrow_mut();
        while out.len() < n {
            match ready.pop_front() {
                Some(p) => out.push(p),
                None => break,
            }
        }
    }

    /// Moves delayed requests whose `Retry-After` has passed to the ready queue.
    fn release_delayed(&self, now: u64) {
        let mut d = self.delayed.borrow_mut();
        if d.is_empty() {
            return;
        }
        let mut ready = self.ready.borrow_mut();
        d.retain(|p| {
            if p.not_before <= now {
                ready.push_back(*p);
                false
            } else {
                true
            }
        });
    }

    fn set_mode(&self, depth: usize, lanes: usize, why: String) {
        self.depth.set(depth.max(1));
        self.lanes_wanted.set(lanes.max(1));
        *self.mode.borrow_mut() = why;
    }
}

/// One connection's requests in flight, shared by its writer and reader.
struct Conn {
    sent: RefCell<VecDeque<Pending>>,
    /// Oldest unanswered request's write time (for `--rest-timeout`).
    since: Cell<u64>,
    /// The server said it will close: write nothing more.
    closing: Cell<bool>,
    /// The reader has ended (end of stream, error or shutdown).
    ended: Cell<bool>,
    /// We shut the socket down ourselves (timeout or stop): not the server's doing.
    shut_by_us: Cell<bool>,
    answered: Cell<u64>,
    /// The last phase in which this connection answered (counts it once per phase).
    counted_phase: Cell<u32>,
}

/// Entry point of REST publisher `j` (one task per publisher on its generator thread).
pub(crate) async fn publisher(l: Rc<Local>, j: usize) {
    let plan = l.plan.clone();
    let inflight = plan.rest_inflight.max(1);
    let pool = Rc::new(Pool {
        j,
        phase: Cell::new(0),
        next_k: Cell::new(0),
        ready: RefCell::new(VecDeque::new()),
        delayed: RefCell::new(Vec::new()),
        depth: Cell::new(inflight),
        lanes_wanted: Cell::new(1),
        lanes_live: Cell::new(0),
        outstanding: Cell::new(0),
        idle: Cell::new(0),
        mode: RefCell::new(String::new()),
        report: RefCell::new(RestReport::default()),
    });
    l.pools.borrow_mut().push(pool.clone());
    // Setup: probe the server (or take the configured mode).
    let probe = match plan.rest_pipelining {
        Pipelining::On => Ok((true, "pipelining on (--rest-pipelining on)".to_string())),
        Pipelining::Off => Ok((false, "pipelining off (--rest-pipelining off)".to_string())),
        Pipelining::Auto => probe_pipelining(&l, j).await,
    };
    l.setup_finished();
    match probe {
        Ok((true, why)) => pool.set_mode(
            inflight,
            1,
            format!("{why}: 1 connection, up to {inflight} requests in flight"),
        ),
        Ok((false, why)) => pool.set_mode(
            1,
            inflight,
            format!("{why}: up to {inflight} connections, 1 request each"),
        ),
        Err(e) => {
            l.ctl.error(format!("REST publisher {j}: {e:#}"));
            return;
        }
    }
    let np = plan.publishers as u64;
    let mut done_phase = 0;
    let mut lane_no = 0usize;
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
        pool.ready.borrow_mut().clear();
        pool.delayed.borrow_mut().clear();
        *pool.report.borrow_mut() = RestReport::default();
        pool.next_k.set(j as u64);
        pool.phase.set(spec.phase);
        let mut k = j as u64;
        loop {
            if l.ctl.stop.load(Relaxed) || l.spec.get().phase != spec.phase {
                break;
            }
            let now = now_ns();
            if now > spec.deadline_ns {
                break;
            }
            // Queue every request that is due (open loop).
            while k < spec.events && spec.intended_ns(k) <= now {
                pool.ready.borrow_mut().push_back(Pending {
                    k,
                    phase: spec.phase,
                    not_before: 0,
                    retried: false,
                    held: pool.idle.get() == 0,
                });
                k += np;
            }
            pool.next_k.set(k);
            pool.release_delayed(now);
            while pool.lanes_live.get() < pool.lanes_wanted.get() {
                pool.lanes_live.set(pool.lanes_live.get() + 1);
                monoio::spawn(lane(l.clone(), pool.clone(), lane_no));
                lane_no += 1;
            }
            let idle = pool.ready.borrow().is_empty()
                && pool.delayed.borrow().is_empty()
                && pool.outstanding.get() == 0;
            if k >= spec.events && idle {
                break;
            }
            let next = if k < spec.events {
                spec.intended_ns(k)
            } else {
                u64::MAX
            };
            if next > now + 1_000_000 || !pool.ready.borrow().is_empty() {
                monoio::time::sleep(Duration::from_millis(1)).await;
            } else {
                gen::sleep_until_ns(next).await;
            }
        }
        // The deadline or the end of the schedule. What is left is accounted for by
        // `phase_report` (read when the phase is collected), each with its reason.
    }
}

/// How long the pipelining probe waits for its second answer (after connecting).
pub fn probe_limit(plan: &super::fanout::FanoutPlan) -> Duration {
    if plan.mode == super::fanout::PublishMode::Rest && plan.rest_pipelining == Pipelining::Auto {
        plan.setup_timeout.min(Duration::from_secs(5))
    } else {
        Duration::ZERO
    }
}

/// Sends two pipelined read-only requests on a fresh connection: Ok((pipelining works, why)).
async fn probe_pipelining(l: &Local, j: usize) -> anyhow::Result<(bool, String)> {
    let plan = &l.plan;
    let t = &plan.target;
    let limit = probe_limit(plan);
    let src = t.source_for(plan.subscribers + j, t.api_addr);
    let mut s = match monoio::time::timeout(plan.setup_timeout, t.connect_api(src)).await {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("connecting to {} timed out", t.api_addr),
    };
    let mut req = Vec::new();
    let ts = crate::clock::unix_secs();
    http::probe_request(t, ts, &mut req);
    http::probe_request(t, ts, &mut req);
    let (res, _) = s.write_all(req).await;
    res?;
    let mut rd = FrameReader::new(4096);
    let mut answers: Vec<http::Response> = Vec::new();
    let mut eof = false;
    let read = async {
        loop {
            let mut buf = rd.take_buf();
            let mut used = 0;
            while let Some(r) =
                http::parse_response(&buf[used..], eof).map_err(anyhow::Error::msg)?
            {
                used += r.len;
                if !r.interim {
                    answers.push(r);
                }
                if r.close || answers.len() == 2 {
                    break;
                }
            }
            buf.drain(..used);
            rd.give_back(buf);
            if answers.len() == 2 || answers.last().is_some_and(|r| r.close) || eof {
                return anyhow::Ok(());
            }
            eof = !net::read_some(&mut s, &mut rd).await?;
        }
    };
    let timed_out = monoio::time::timeout(limit, read).await.is_err();
    if let Some(a) = answers.first() {
        if !(200..300).contains(&a.status) {
            // Not fatal: the probe only learns how the server frames answers. A wrong secret
            // shows up as rejected publishes.
            l.ctl.note(format!(
                "REST publisher {j}: the probe GET /apps/{}/channels was answered {}",
                t.app_id, a.status
            ));
        }
    }
    Ok(match answers.as_slice() {
        [a, b] if !a.close && !b.close => (true, "the server answered 2 pipelined requests".into()),
        [a, _] if !a.close => (
            true,
            "the server answered 2 pipelined requests and then closed".into(),
        ),
        [a, ..] if a.close => (
            false,
            "the server closes the connection after each response".into(),
        ),
        [_] if timed_out => (
            false,
            format!("the server did not answer a pipelined request within {limit:?}"),
        ),
        [_] => (
            false,
            "the server ended the connection with a pipelined request unanswered".into(),
        ),
        _ if timed_out => anyhow::bail!(
            "the server did not answer GET /apps/{}/channels within {limit:?}",
            t.app_id
        ),
        _ => anyhow::bail!("the server closed the connection without answering"),
    })
}

/// One connection slot of a pool: connects, writes, reconnects, until its number is no longer
/// wanted or the run stops.
async fn lane(l: Rc<Local>, pool: Rc<Pool>, lane_no: usize) {
    let plan = l.plan.clone();
    let t = &plan.target;
    let mut taken: Vec<Pending> = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut body = Vec::with_capacity(plan.payload + 256);
    let mut data = Vec::with_capacity(plan.payload + 64);
    let chan_names: Vec<String> = (0..plan.channels).map(|c| plan.channel(c)).collect();
    let nc = plan.channels as u64;
    let timeout_ns = plan.rest_timeout.as_nanos() as u64;
    let mut backoff_ms = 1u64;
    'conns: loop {
        if l.ctl.stop.load(Relaxed) || lane_no >= pool.lanes_wanted.get() {
            break;
        }
        // Connect only when there is something to send (a server that closes after each
        // response would otherwise see idle connections come and go).
        if pool.ready.borrow().is_empty() {
            monoio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let src = t.source_for(
            plan.subscribers + pool.j + lane_no * plan.publishers,
            t.api_addr,
        );
        let s = match monoio::time::timeout(plan.setup_timeout, t.connect_api(src)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => {
                pool.report.borrow_mut().connect_errors += 1;
                monoio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(500);
                continue;
            }
        };
        backoff_ms = 1;
        pool.report.borrow_mut().connections += 1;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let guard = l.sockets.register(fd);
        let conn = Rc::new(Conn {
            sent: RefCell::new(VecDeque::new()),
            since: Cell::new(0),
            closing: Cell::new(false),
            ended: Cell::new(false),
            shut_by_us: Cell::new(false),
            answered: Cell::new(0),
            counted_phase: Cell::new(0),
        });
        let (rh, mut wh) = s.into_split();
        monoio::spawn(reader(l.clone(), pool.clone(), conn.clone(), rh));
        let mut abandoned = false;
        loop {
            if l.ctl.stop.load(Relaxed) || conn.closing.get() || conn.ended.get() {
                break;
            }
            let now = now_ns();
            let in_flight = conn.sent.borrow().len();
            if in_flight > 0 && now.saturating_sub(conn.since.get()) > timeout_ns {
                pool.report.borrow_mut().timeouts += 1;
                abandoned = true;
                break;
            }
            let room = pool.depth.get().saturating_sub(in_flight);
            if room == 0 {
                monoio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            taken.clear();
            pool.take_ready(room.min(super::fanout::MAX_BATCH), &mut taken);
            if taken.is_empty() {
                pool.idle.set(pool.idle.get() + 1);
                monoio::time::sleep(Duration::from_millis(1)).await;
                pool.idle.set(pool.idle.get() - 1);
                continue;
            }
            let spec = l.spec.get();
            buf.clear();
            let ts = crate::clock::unix_secs();
            let mut n = 0u64;
            for p in &taken {
                if p.phase != spec.phase {
                    continue;
                }
                let due = spec.intended_ns(p.k);
                data.clear();
                payload::encode(spec.phase, p.k, due, plan.payload, &mut data);
                body.clear();
                http::trigger_body(
                    plan.event_name(),
                    &chan_names[(p.k % nc) as usize],
                    &data,
                    &mut body,
                );
                http::trigger_request(t, &body, ts, &mut buf);
                let mut st = l.stats.borrow_mut();
                if p.held || p.retried {
                    st.lag_server.record(now, due);
                } else {
                    st.lag_gen.record(now, due);
                }
                if !p.retried {
                    st.pub_sent += 1;
                    st.total_published += 1;
                }
                drop(st);
                if conn.sent.borrow().is_empty() {
                    conn.since.set(now);
                }
                conn.sent.borrow_mut().push_back(*p);
                n += 1;
            }
            if n == 0 {
                continue;
            }
            pool.outstanding.set(pool.outstanding.get() + n);
            l.ctl.counters[l.idx].unanswered.fetch_add(n, Relaxed);
            {
                let st = l.stats.borrow();
                l.ctl.counters[l.idx]
                    .published
                    .store(st.total_published, Relaxed);
            }
            let (res, b) = wh.write_all(buf).await;
            buf = b;
            if res.is_err() {
                // The reader sees the end of the stream; what was not answered is re-queued.
                break;
            }
        }
        // Stop reading (abandoned or stopping), or wait for the reader to see the end.
        if abandoned || l.ctl.stop.load(Relaxed) {
            conn.shut_by_us.set(true);
            // SAFETY: shutdown(2) on the socket we still own (`wh` is alive); it ends the
            // reader's pending read without closing or freeing the descriptor.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        let until = now_ns() + timeout_ns;
        while !conn.ended.get() {
            if now_ns() > until && !conn.shut_by_us.replace(true) {
                // SAFETY: as above.
                unsafe {
                    libc::shutdown(fd, libc::SHUT_RDWR);
                }
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(wh);
        drop(guard);
        // Unanswered requests go back to the front of the queue, in order.
        let left: Vec<Pending> = conn.sent.borrow_mut().drain(..).collect();
        let n_left = left.len() as u64;
        pool.outstanding.set(pool.outstanding.get() - n_left);
        l.ctl.counters[l.idx].unanswered.fetch_sub(n_left, Relaxed);
        let phase = l.spec.get().phase;
        let mut requeued = 0;
        {
            let mut ready = pool.ready.borrow_mut();
            for p in left.into_iter().rev() {
                if p.phase == phase {
                    ready.push_front(Pending { retried: true, ..p });
                    requeued += 1;
                }
            }
        }
        pool.report.borrow_mut().resent += requeued;
        if l.ctl.stop.load(Relaxed) {
            break 'conns;
        }
        if (n_left > 1 || n_left > 0 && conn.answered.get() > 0)
            && pool.depth.get() > 1
            && plan.rest_pipelining == Pipelining::Auto
        {
            // Pipelined requests were left unanswered: this server does not pipeline.
            {
                let inflight = plan.rest_inflight.max(1);
                pool.set_mode(
                    1,
                    inflight,
                    format!(
                        "pipelining turned off: the server ended a connection with {n_left} pipelined requests unanswered; up to {inflight} connections, 1 request each"
                    ),
                );
            }
        }
    }
    pool.lanes_live.set(pool.lanes_live.get() - 1);
}

/// Reads the answers of one connection, in order, until the end of the stream.
async fn reader(l: Rc<Local>, pool: Rc<Pool>, conn: Rc<Conn>, mut rh: crate::tls::ReadHalf) {
    let mut rd = FrameReader::new(16 * 1024);
    let mut eof = false;
    loop {
        let mut data = rd.take_buf();
        let mut used = 0;
        let mut bad = None;
        loop {
            match http::parse_response(&data[used..], eof) {
                Ok(Some(r)) => {
                    used += r.len;
                    if r.interim {
                        continue;
                    }
                    if !answer(&l, &pool, &conn, r) {
                        bad = Some("an answer to a request that was not sent".to_string());
                        break;
                    }
                    if r.close {
                        conn.closing.set(true);
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        data.drain(..used);
        rd.give_back(data);
        if let Some(e) = bad {
            l.ctl.error(format!("REST publisher {}: {e}", pool.j));
            break;
        }
        if eof || conn.closing.get() && rd.buffered() == 0 && conn.sent.borrow().is_empty() {
            break;
        }
        match net::read_some(&mut rh, &mut rd).await {
            Ok(true) => {}
            _ => {
                if eof {
                    break;
                }
                eof = true;
            }
        }
    }
    if (conn.closing.get() || eof) && !conn.shut_by_us.get() {
        pool.report.borrow_mut().closed_by_server += 1;
    }
    conn.ended.set(true);
}

/// Accounts one final answer. False if no request was waiting for it.
fn answer(l: &Local, pool: &Pool, conn: &Conn, r: http::Response) -> bool {
    let Some(p) = conn.sent.borrow_mut().pop_front() else {
        return false;
    };
    let now = now_ns();
    conn.since.set(now);
    conn.answered.set(conn.answered.get() + 1);
    pool.outstanding.set(pool.outstanding.get() - 1);
    l.ctl.counters[l.idx].unanswered.fetch_sub(1, Relaxed);
    let phase = l.spec.get().phase;
    let mut rep = pool.report.borrow_mut();
    if conn.counted_phase.replace(phase) != phase {
        rep.connections_answering += 1;
    }
    rep.max_requests_per_connection = rep.max_requests_per_connection.max(conn.answered.get());
    if (200..300).contains(&r.status) {
        rep.ok += 1;
        l.stats.borrow_mut().rest_ok += 1;
    } else if r.status == 429 {
        rep.throttled += 1;
        let wait = r.retry_after_s.unwrap_or(1).min(3600) * 1_000_000_000;
        if p.phase == phase {
            pool.delayed.borrow_mut().push(Pending {
                not_before: now + wait,
                retried: true,
                ..p
            });
        }
    } else {
        rep.rejected += 1;
        *rep.rejected_statuses.entry(r.status).or_default() += 1;
        l.stats.borrow_mut().rest_err += 1;
        l.ctl.counters[l.idx].errors.fetch_add(1, Relaxed);
    }
    true
}
