//! The connect scenario: open N connections (at a fixed rate, open loop, or as fast as the
//! concurrency limit allows), measure setup latency (TCP connect + upgrade +
//! `connection_established`), then hold them idle and measure the server's memory per
//! connection (RSS from /proc/PID/status) and, separately, the kernel's TCP memory.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::clock::now_ns;
use crate::gen::{self, Ctl, Gate, GenConfig};
use crate::latency::{Latency, LatencySummary};
use crate::net::{self, Target};
use crate::procfs::{self, SockStat};
use crate::scenario::fanout::Part;
use crate::wsframe::FrameReader;

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ConnectPlan {
    pub target: Target,
    pub connections: usize,
    /// Connections per second (open loop); 0 = as fast as `concurrency` allows.
    pub rate: f64,
    /// Handshakes in flight at once (over all threads).
    pub concurrency: usize,
    /// How long to hold the connections idle after the memory reading.
    pub hold: Duration,
    pub timeout: Duration,
    pub gen: GenConfig,
    /// This process's share with `--procs` (connection `g` runs in process `g % count`).
    #[serde(default)]
    pub part: Part,
    /// Intended start of connection 0 with `--rate` (machine clock, [`crate::clock`]).
    #[serde(default)]
    pub t0_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectResult {
    pub server: String,
    pub connections: usize,
    pub established: u64,
    pub failed: u64,
    pub rate_target: f64,
    /// Established connections per second of the setup phase.
    pub rate_achieved: f64,
    pub setup_s: f64,
    /// Setup latency (from the intended start with `--rate`, from the attempt start otherwise).
    pub latency: LatencySummary,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    pub server_rss_per_conn: Option<f64>,
    pub sockstat_before: Option<SockStat>,
    pub sockstat_after: Option<SockStat>,
    /// Kernel TCP buffer memory per connection pair (both ends live on this machine).
    pub kernel_tcp_mem_per_conn: Option<f64>,
    /// Kernel slab memory for TCP socket objects per connection pair (/proc/slabinfo).
    pub kernel_tcp_slab_per_conn: Option<f64>,
    pub client_rss_per_conn: Option<f64>,
    pub still_open_after_hold: u64,
    pub errors: Vec<String>,
    pub load_avg_before: String,
    /// Processes the connections ran in (`--procs`).
    pub procs: usize,
}

struct TResult {
    lat: Latency,
    established: u64,
    failed: u64,
    open_after_hold: u64,
}

/// One process's connect figures (merged exactly by the parent with `--procs`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ConnectPart {
    pub lat: Vec<(u64, u64)>,
    pub established: u64,
    pub failed: u64,
    pub open_after_hold: u64,
    pub errors: Vec<String>,
}

async fn thread_main(
    idx: usize,
    plan: Arc<ConnectPlan>,
    ctl: Arc<Ctl>,
    tx: mpsc::Sender<TResult>,
    t0_ns: u64,
) {
    let t = plan.gen.threads;
    let gate = Rc::new(Gate::new(plan.concurrency.div_ceil(t)));
    let held: Rc<RefCell<Vec<crate::tls::Stream>>> = Rc::new(RefCell::new(Vec::new()));
    let lat = Rc::new(RefCell::new(Latency::new()));
    let done = Rc::new(std::cell::Cell::new((0u64, 0u64)));
    let sockets = Rc::new(gen::Sockets::default());
    let mine: Vec<usize> = plan.part.mine(plan.connections, idx, t).collect();
    let n_mine = mine.len() as u64;
    {
        let (plan, ctl, gate, held, lat, done, sockets) = (
            plan.clone(),
            ctl.clone(),
            gate.clone(),
            held.clone(),
            lat.clone(),
            done.clone(),
            sockets.clone(),
        );
        monoio::spawn(async move {
            for g in mine {
                if ctl.stop.load(Relaxed) {
                    return;
                }
                let intended = if plan.rate > 0.0 {
                    let due = t0_ns + (g as f64 * 1e9 / plan.rate) as u64;
                    gen::sleep_until_ns(due).await;
                    Some(due)
                } else {
                    None
                };
                if !gate.acquire(plan.timeout).await {
                    let (e, f) = done.get();
                    done.set((e, f + 1));
                    ctl.error(format!("connection {g}: no slot within {:?}", plan.timeout));
                    continue;
                }
                let (plan, ctl, gate, held, lat, done, sockets) = (
                    plan.clone(),
                    ctl.clone(),
                    gate.clone(),
                    held.clone(),
                    lat.clone(),
                    done.clone(),
                    sockets.clone(),
                );
                monoio::spawn(async move {
                    let start = intended.unwrap_or_else(now_ns);
                    let r = async {
                        let mut s = plan.target.connect_ws(g).await?;
                        let _guard = sockets.register(std::os::fd::AsRawFd::as_raw_fd(&s));
                        let mut rd = FrameReader::new(1024);
                        net::pusher_connect(
                            &mut s,
                            &plan.target,
                            plan.target.ws_for(g),
                            &mut rd,
                            g as u64 + 7,
                            plan.timeout,
                        )
                        .await?;
                        anyhow::Ok(s)
                    };
                    let r = monoio::time::timeout(plan.timeout, r).await;
                    gate.release();
                    let (e, f) = done.get();
                    match r {
                        Ok(Ok(s)) => {
                            lat.borrow_mut().record(now_ns(), start);
                            held.borrow_mut().push(s);
                            done.set((e + 1, f));
                            ctl.counters[idx].connected.fetch_add(1, Relaxed);
                        }
                        Ok(Err(err)) => {
                            done.set((e, f + 1));
                            ctl.error(format!("connection {g}: {err:#}"));
                        }
                        Err(_) => {
                            done.set((e, f + 1));
                            ctl.error(format!("connection {g}: timed out"));
                        }
                    }
                });
            }
        });
    }
    let mut reported = false;
    let mut sent = false;
    loop {
        if ctl.stop.load(Relaxed) {
            held.borrow_mut().clear();
            sockets.close_all(Duration::from_secs(3)).await;
            return;
        }
        let (e, f) = done.get();
        if !reported && e + f >= n_mine {
            reported = true;
            ctl.ready.fetch_add(1, Relaxed);
        }
        if !sent && ctl.collect.load(Relaxed) == 1 {
            sent = true;
            // Count connections the server did not close during the hold: a zero-length
            // non-blocking peek distinguishes open (EAGAIN) from closed (0).
            let open = held
                .borrow()
                .iter()
                .filter(|s| {
                    let mut b = [0u8; 1];
                    // SAFETY: recv into a 1-byte stack buffer on a valid fd.
                    let n = unsafe {
                        libc::recv(
                            std::os::fd::AsRawFd::as_raw_fd(*s),
                            b.as_mut_ptr() as *mut libc::c_void,
                            1,
                            libc::MSG_PEEK | libc::MSG_DONTWAIT,
                        )
                    };
                    n != 0
                })
                .count() as u64;
            let _ = tx.send(TResult {
                lat: lat.borrow().clone(),
                established: e,
                failed: f,
                open_after_hold: open,
            });
            // Wait for stop; the streams close when this thread's runtime ends.
        }
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// This process's connect threads.
pub struct LocalConnect {
    plan: Arc<ConnectPlan>,
    ctl: Arc<Ctl>,
    threads: Vec<std::thread::JoinHandle<()>>,
    rx: mpsc::Receiver<TResult>,
}

impl LocalConnect {
    /// Starts the threads and waits (bounded) until every connection of this process was tried.
    pub fn start(
        plan: ConnectPlan,
        mut progress: impl FnMut(u64, u64),
    ) -> anyhow::Result<LocalConnect> {
        let plan = Arc::new(plan);
        let ctl = Ctl::new(plan.gen.threads);
        let (tx, rx) = mpsc::channel();
        let (p2, c2) = (plan.clone(), ctl.clone());
        let t0_ns = plan.t0_ns;
        let threads = gen::spawn(&plan.gen, ctl.clone(), move |i| {
            thread_main(i, p2.clone(), c2.clone(), tx.clone(), t0_ns)
        })?;
        let mut g = LocalConnect {
            plan,
            ctl,
            threads,
            rx,
        };
        let share = g.plan.part.share(g.plan.connections) as u64;
        let expected_setup = if g.plan.rate > 0.0 {
            g.plan.connections as f64 / g.plan.rate
        } else {
            0.0
        };
        let limit = Duration::from_secs_f64(expected_setup)
            + g.plan.timeout * 2
            + Duration::from_secs(share / 500 + 10);
        let wall0 = Instant::now();
        let mut last = Instant::now();
        while g.ctl.ready.load(Relaxed) < g.plan.gen.threads {
            if wall0.elapsed() > limit {
                g.stop();
                anyhow::bail!("connect phase did not finish within {limit:?}");
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                progress(
                    g.ctl.total(|c| &c.connected),
                    g.ctl.error_count.load(Relaxed),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(g)
    }

    /// The figures so far (connections still open counted now).
    pub fn collect(&mut self) -> anyhow::Result<ConnectPart> {
        self.ctl.collect.store(1, Relaxed);
        let mut lat = Latency::new();
        let mut p = ConnectPart::default();
        for _ in 0..self.plan.gen.threads {
            match self.rx.recv_timeout(Duration::from_secs(10)) {
                Ok(r) => {
                    lat.merge(&r.lat);
                    p.established += r.established;
                    p.failed += r.failed;
                    p.open_after_hold += r.open_after_hold;
                }
                Err(_) => anyhow::bail!("a generator thread did not report"),
            }
        }
        p.lat = lat.buckets();
        p.errors = self.ctl.first_errors();
        Ok(p)
    }

    pub fn stop(&mut self) {
        self.ctl.stop.store(true, Relaxed);
        gen::join(std::mem::take(&mut self.threads), Duration::from_secs(10));
    }
}

impl Drop for LocalConnect {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Opens the connections (in `procs` processes when more than 1), holds them, and measures.
pub fn run(
    mut plan: ConnectPlan,
    procs: usize,
    server_pid: Option<u32>,
    label: &str,
    quiet: bool,
) -> anyhow::Result<ConnectResult> {
    let load = procfs::loadavg();
    let rss0 = server_pid.and_then(procfs::rss);
    let ss0 = SockStat::read();
    let slab0 = procfs::tcp_slab_bytes();
    let self0 = procfs::self_rss();
    plan.t0_ns = now_ns() + 100_000_000;
    let wall0 = Instant::now();
    let show = |est: u64, errs: u64| {
        if !quiet {
            eprintln!(
                "[{label} connect] {:.1}s established {est} errors {errs}",
                wall0.elapsed().as_secs_f64()
            );
        }
    };
    enum Gen {
        Local(LocalConnect),
        Procs(crate::procs::Children),
    }
    let (hold, connections, rate) = (plan.hold, plan.connections, plan.rate);
    let mut g = if procs > 1 {
        Gen::Procs(crate::procs::Children::start_connect(&plan, procs, show)?)
    } else {
        Gen::Local(LocalConnect::start(plan, show).with_context(|| format!("[{label}]"))?)
    };
    let setup_s = wall0.elapsed().as_secs_f64();
    // Let the server finish its per-connection work (and allocator caches settle).
    std::thread::sleep(Duration::from_secs(2));
    let rss1 = server_pid.and_then(procfs::rss);
    let ss1 = SockStat::read();
    let slab1 = procfs::tcp_slab_bytes();
    let self1 = procfs::self_rss();
    if !quiet {
        eprintln!("[{label} connect] holding the connections idle for {hold:?}");
    }
    std::thread::sleep(hold);
    let part = match &mut g {
        Gen::Local(l) => l.collect()?,
        Gen::Procs(c) => c.collect_connect()?,
    };
    match &mut g {
        Gen::Local(l) => l.stop(),
        Gen::Procs(c) => c.stop(),
    }
    let est = part.established;
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if est > 0 => Some((b as f64 - a as f64) / est as f64),
        _ => None,
    };
    Ok(ConnectResult {
        server: label.to_string(),
        connections,
        established: est,
        failed: part.failed,
        rate_target: rate,
        rate_achieved: est as f64 / setup_s.max(1e-9),
        setup_s,
        latency: Latency::from_buckets(&part.lat).summary(),
        server_rss_before: rss0,
        server_rss_after: rss1,
        server_rss_per_conn: per(rss0, rss1),
        sockstat_before: ss0,
        sockstat_after: ss1,
        kernel_tcp_mem_per_conn: per(ss0.map(|s| s.mem_bytes()), ss1.map(|s| s.mem_bytes())),
        kernel_tcp_slab_per_conn: per(slab0, slab1),
        // With --procs the connections' client side lives in the children.
        client_rss_per_conn: if procs > 1 { None } else { per(self0, self1) },
        still_open_after_hold: part.open_after_hold,
        errors: part.errors,
        load_avg_before: load,
        procs: procs.max(1),
    })
}

pub fn table(rows: &[ConnectResult]) -> String {
    use crate::report::{fmt_bytes, fmt_rate};
    let mut s = format!(
        "{:<10} {:>7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>13} {:>13} {:>9}\n",
        "server",
        "conns",
        "estab",
        "failed",
        "conn/s",
        "p50ms",
        "p99ms",
        "p99.9ms",
        "maxms",
        "srv-RSS/conn",
        "kern-mem/conn",
        "kern-slab/cn",
        "open-after"
    );
    for r in rows {
        let f = |v: Option<f64>| v.map(fmt_bytes).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<10} {:>7} {:>7} {:>6} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>13} {:>13} {:>13} {:>9}\n",
            r.server.chars().take(10).collect::<String>(),
            r.connections,
            r.established,
            r.failed,
            fmt_rate(r.rate_achieved),
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.latency.max_ms,
            f(r.server_rss_per_conn),
            f(r.kernel_tcp_mem_per_conn),
            f(r.kernel_tcp_slab_per_conn),
            r.still_open_after_hold
        ));
    }
    s
}
