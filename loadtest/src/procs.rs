//! `--procs N`: the connections of a fan-out run spread over N child processes (a process may
//! hold only so many file descriptors: 20,000 on the development machine).
//!
//! The parent starts N copies of its own binary as `ringcast-loadtest worker`, sends each the
//! plan with its share ([`Part`]: process `p` runs subscriber `i` and publisher `j` when
//! `i % N == p`, `j % N == p`), and then drives them with one JSON line per command on their
//! stdin; each answers with JSON lines on its stdout (stderr is passed through):
//!
//! ```text
//! parent -> child  {"plan": FanoutPlan}  {"phase": {"spec": .., "end_ns": ..}}  "stop"
//! child -> parent  "ready" | {"failed": ".."}   {"progress": {..}}   {"partial": Partial}
//! ```
//!
//! Every process stamps and reads the same machine clock (`CLOCK_MONOTONIC`, [`crate::clock`]),
//! so a delivery published in one process and received in another is measured correctly. The
//! parent merges the children's [`Partial`]s exactly: counts add up, and latency histograms
//! travel as their buckets.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clock::now_ns;
use crate::gen::PhaseSpec;
use crate::latency::Latency;
use crate::scenario::connect::{ConnectPart, ConnectPlan, LocalConnect};
use crate::scenario::fanout::{FanoutPlan, LocalGen, Part, Partial, Progress};
use crate::scenario::rest::RestReport;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToChild {
    Plan(Box<FanoutPlan>),
    Phase {
        spec: PhaseSpec,
        end_ns: u64,
    },
    /// The `connect` scenario: open and hold this share of the connections.
    Connect(Box<ConnectPlan>),
    /// `connect`: report the figures (the connections stay open until `Stop`).
    Collect,
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromChild {
    Ready,
    Failed(String),
    Progress(Progress),
    Partial(Box<Partial>),
    ConnectPart(Box<ConnectPart>),
}

impl Partial {
    /// Adds another process's figures of the same phase.
    pub fn merge(&mut self, o: &Partial) {
        let merge_hist = |a: &mut Vec<(u64, u64)>, b: &[(u64, u64)]| {
            let mut h = Latency::from_buckets(a);
            h.merge(&Latency::from_buckets(b));
            *a = h.buckets();
        };
        merge_hist(&mut self.lat, &o.lat);
        merge_hist(&mut self.lag_gen, &o.lag_gen);
        merge_hist(&mut self.lag_server, &o.lag_server);
        self.loss.add(&o.loss);
        self.published += o.published;
        self.skipped += o.skipped;
        self.rejected += o.rejected;
        self.rest_ok += o.rest_ok;
        self.stale += o.stale;
        self.misrouted += o.misrouted;
        self.closed += o.closed;
        if let Some(r) = &o.rest {
            self.rest.get_or_insert_with(RestReport::default).add(r);
        }
        self.gen_cpu_s += o.gen_cpu_s;
        self.gen_thread_max_util = self.gen_thread_max_util.max(o.gen_thread_max_util);
        for (mine, theirs) in [(&mut self.errors, &o.errors), (&mut self.notes, &o.notes)] {
            for e in theirs {
                if mine.len() < 20 && !mine.contains(e) {
                    mine.push(e.clone());
                }
            }
        }
    }
}

struct Kid {
    child: Child,
    stdin: ChildStdin,
}

/// The child processes of a session.
pub struct Children {
    kids: Vec<Kid>,
    rx: mpsc::Receiver<(usize, FromChild)>,
    progress: Vec<Progress>,
}

fn send(stdin: &mut ChildStdin, m: &ToChild) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(m)?;
    line.push(b'\n');
    stdin.write_all(&line)?;
    stdin.flush()?;
    Ok(())
}

impl Children {
    /// Starts `n` workers, each with its share of `plan`, and waits (bounded) until all of them
    /// have set up their connections.
    pub fn start(
        plan: &FanoutPlan,
        n: usize,
        show: impl FnMut(Progress),
    ) -> anyhow::Result<Children> {
        let total = (plan.subscribers + plan.publishers) as u64;
        let limit = plan.setup_timeout
            + crate::scenario::rest::probe_limit(plan)
            + Duration::from_millis(total.saturating_mul(5).min(600_000))
            + Duration::from_secs(10);
        let mut c = Children::spawn(n, |index| {
            let mut p = plan.clone();
            p.part = Part { index, count: n };
            ToChild::Plan(Box::new(p))
        })?;
        c.wait_ready(limit, show)?;
        Ok(c)
    }

    /// The `connect` scenario in `n` workers: returns once every worker tried its share.
    pub fn start_connect(
        plan: &ConnectPlan,
        n: usize,
        mut show: impl FnMut(u64, u64),
    ) -> anyhow::Result<Children> {
        let setup = if plan.rate > 0.0 {
            plan.connections as f64 / plan.rate
        } else {
            0.0
        };
        let limit = Duration::from_secs_f64(setup)
            + plan.timeout * 2
            + Duration::from_secs(plan.connections as u64 / 500 + 20);
        let mut c = Children::spawn(n, |index| {
            let mut p = plan.clone();
            p.part = Part { index, count: n };
            ToChild::Connect(Box::new(p))
        })?;
        c.wait_ready(limit, |p| show(p.connected, p.errors))?;
        Ok(c)
    }

    fn spawn(n: usize, first: impl Fn(usize) -> ToChild) -> anyhow::Result<Children> {
        let exe = std::env::current_exe()?;
        let (tx, rx) = mpsc::channel();
        let mut c = Children {
            kids: Vec::new(),
            rx,
            progress: vec![Progress::default(); n],
        };
        for index in 0..n {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = serde_json::from_str(&line).unwrap_or_else(|e| {
                        FromChild::Failed(format!("bad line from worker: {e}"))
                    });
                    if tx.send((index, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((index, FromChild::Failed(format!("worker {index} exited"))));
            });
            send(&mut stdin, &first(index))?;
            c.kids.push(Kid { child, stdin });
        }
        Ok(c)
    }

    fn wait_ready(
        &mut self,
        limit: Duration,
        mut show: impl FnMut(Progress),
    ) -> anyhow::Result<()> {
        let n = self.kids.len();
        let t0 = Instant::now();
        let mut ready = vec![false; n];
        let mut last = Instant::now();
        while !ready.iter().all(|r| *r) {
            let left = limit.saturating_sub(t0.elapsed());
            if left.is_zero() {
                self.stop();
                anyhow::bail!("the workers' setup did not finish within {limit:?}");
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((i, FromChild::Ready)) => ready[i] = true,
                Ok((i, FromChild::Failed(e))) => {
                    self.stop();
                    anyhow::bail!("worker {i}: {e}");
                }
                Ok((i, FromChild::Progress(p))) => self.progress[i] = p,
                Ok((i, _)) => anyhow::bail!("worker {i}: a result before it was ready"),
                Err(_) => {}
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                show(self.total());
            }
        }
        Ok(())
    }

    /// `connect`: every worker's figures, merged (the connections stay open).
    pub fn collect_connect(&mut self) -> anyhow::Result<ConnectPart> {
        for k in &mut self.kids {
            send(&mut k.stdin, &ToChild::Collect)?;
        }
        let until = Instant::now() + Duration::from_secs(60);
        let mut got: Vec<Option<ConnectPart>> = vec![None; self.kids.len()];
        while got.iter().any(Option::is_none) {
            anyhow::ensure!(Instant::now() < until, "a worker did not report");
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok((i, FromChild::ConnectPart(p))) => got[i] = Some(*p),
                Ok((i, FromChild::Failed(e))) => anyhow::bail!("worker {i}: {e}"),
                Ok(_) | Err(_) => {}
            }
        }
        let mut lat = Latency::new();
        let mut all = ConnectPart::default();
        for p in got.into_iter().flatten() {
            lat.merge(&Latency::from_buckets(&p.lat));
            all.established += p.established;
            all.failed += p.failed;
            all.open_after_hold += p.open_after_hold;
            for e in p.errors {
                if all.errors.len() < 20 {
                    all.errors.push(e);
                }
            }
        }
        all.lat = lat.buckets();
        Ok(all)
    }

    pub fn len(&self) -> usize {
        self.kids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kids.is_empty()
    }

    fn total(&self) -> Progress {
        self.progress
            .iter()
            .fold(Progress::default(), |a, p| Progress {
                connected: a.connected + p.connected,
                delivered: a.delivered + p.delivered,
                published: a.published + p.published,
                errors: a.errors + p.errors,
            })
    }

    /// Runs one phase in every worker and merges their figures.
    pub fn run_phase(
        &mut self,
        spec: PhaseSpec,
        end_ns: u64,
        mut show: impl FnMut(Progress),
    ) -> anyhow::Result<Partial> {
        for k in &mut self.kids {
            send(&mut k.stdin, &ToChild::Phase { spec, end_ns })?;
        }
        // Bounded: the workers stop at the deadline, then report.
        let until = spec.deadline_ns + 30_000_000_000;
        let mut got: Vec<Option<Partial>> = vec![None; self.kids.len()];
        while got.iter().any(Option::is_none) {
            anyhow::ensure!(
                now_ns() < until,
                "a worker did not report phase {}",
                spec.phase
            );
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok((i, FromChild::Partial(p))) => {
                    anyhow::ensure!(
                        p.phase == spec.phase,
                        "worker {i} reported phase {}",
                        p.phase
                    );
                    got[i] = Some(*p);
                }
                Ok((i, FromChild::Progress(p))) => {
                    self.progress[i] = p;
                    show(self.total());
                }
                Ok((i, FromChild::Failed(e))) => anyhow::bail!("worker {i}: {e}"),
                Ok((i, FromChild::Ready | FromChild::ConnectPart(_))) => {
                    anyhow::bail!("worker {i}: unexpected answer to a phase")
                }
                Err(_) => {}
            }
        }
        let mut all = Partial {
            phase: spec.phase,
            ..Default::default()
        };
        for p in got.into_iter().flatten() {
            all.merge(&p);
        }
        Ok(all)
    }

    /// Asks every worker to stop (bounded wait), then kills what is left.
    pub fn stop(&mut self) {
        for k in &mut self.kids {
            let _ = send(&mut k.stdin, &ToChild::Stop);
        }
        let until = Instant::now() + Duration::from_secs(15);
        for k in &mut self.kids {
            loop {
                match k.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = k.child.kill();
                        let _ = k.child.wait();
                        break;
                    }
                }
            }
        }
        self.kids.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if !self.kids.is_empty() {
            self.stop();
        }
    }
}

/// The `worker` subcommand: a child of `--procs`, driven over stdin/stdout.
pub fn worker_main() -> anyhow::Result<()> {
    let out = std::sync::Mutex::new(std::io::stdout());
    let say = |m: &FromChild| {
        if let Ok(mut line) = serde_json::to_vec(m) {
            line.push(b'\n');
            let mut o = crate::gen::lock(&out);
            let _ = o.write_all(&line);
            let _ = o.flush();
        }
    };
    let mut lines = std::io::stdin().lock().lines();
    let plan = match lines.next() {
        Some(Ok(l)) => match serde_json::from_str::<ToChild>(&l)? {
            ToChild::Plan(p) => *p,
            ToChild::Connect(p) => return connect_worker(*p, lines, say),
            other => anyhow::bail!("expected a plan, got {other:?}"),
        },
        _ => return Ok(()),
    };
    let mut g = match LocalGen::start(plan, |p| say(&FromChild::Progress(p))) {
        Ok(g) => g,
        Err(e) => {
            say(&FromChild::Failed(format!("{e:#}")));
            return Ok(());
        }
    };
    say(&FromChild::Ready);
    for line in lines {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToChild>(&line)? {
            ToChild::Phase { spec, end_ns } => {
                match g.run_phase(spec, end_ns, |p| say(&FromChild::Progress(p))) {
                    Ok(p) => say(&FromChild::Partial(Box::new(p))),
                    Err(e) => say(&FromChild::Failed(format!("{e:#}"))),
                }
            }
            ToChild::Stop => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    g.stop();
    Ok(())
}

/// A `connect` worker: opens its share, reports when asked, holds until told to stop.
fn connect_worker(
    plan: ConnectPlan,
    lines: impl Iterator<Item = std::io::Result<String>>,
    say: impl Fn(&FromChild),
) -> anyhow::Result<()> {
    let mut g = match LocalConnect::start(plan, |connected, errors| {
        say(&FromChild::Progress(Progress {
            connected,
            errors,
            ..Default::default()
        }))
    }) {
        Ok(g) => g,
        Err(e) => {
            say(&FromChild::Failed(format!("{e:#}")));
            return Ok(());
        }
    };
    say(&FromChild::Ready);
    for line in lines {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToChild>(&line)? {
            ToChild::Collect => match g.collect() {
                Ok(p) => say(&FromChild::ConnectPart(Box::new(p))),
                Err(e) => say(&FromChild::Failed(format!("{e:#}"))),
            },
            ToChild::Stop => break,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    g.stop();
    Ok(())
}
