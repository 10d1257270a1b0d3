//! `ringcast-loadtest soak`: a fan-out at a fixed rate for a long time, run as back-to-back
//! phases of one sample interval each (so every interval has its own loss check and p99), with
//! connection churn and presence joins/leaves beside it on a thread of their own. After each
//! interval the server's RSS, open files and CPU per delivery are sampled; the report checks
//! that they stay flat (RSS within a tolerance after the warm-up, open files back to the
//! baseline at the end) and that nothing was lost.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use serde::Serialize;

use super::abuse_run::{files_slack, Goal};
use super::fanout::Session;
use crate::net::{self, Target};
use crate::serverwatch::{self, ProcSample};
use crate::wsframe::{self, FrameReader};

pub struct SoakRun {
    pub target: Target,
    pub duration: Duration,
    pub rate: f64,
    pub sample: Duration,
    pub warmup: Duration,
    pub drain: Duration,
    pub churn_rate: f64,
    pub presence_rate: f64,
    pub presence_channels: usize,
    pub presence_hold: Duration,
    pub rss_tolerance: f64,
    pub timeout: Duration,
    pub quiet: bool,
}

/// One sample interval.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SoakSample {
    /// Seconds from the start of the soak to the end of the interval.
    pub t_s: f64,
    pub rss_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub p99_ms: f64,
    pub delivered: u64,
    pub expected: u64,
    pub exact: bool,
}

/// What the churners did.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize)]
pub struct ChurnCounts {
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub joins_ok: u64,
    pub joins_failed: u64,
    /// Ticks skipped because too many churners were still in flight.
    pub skipped: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SoakReport {
    pub server_pid: Option<u32>,
    pub rate: f64,
    pub subscribers: usize,
    pub baseline: Option<ProcSample>,
    /// Open files once the soak and its churn stopped (waited for, bounded).
    pub open_files_end: Option<u64>,
    pub samples: Vec<SoakSample>,
    pub churn: ChurnCounts,
    pub goals: Vec<Goal>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    conn_ok: AtomicU64,
    conn_failed: AtomicU64,
    joins_ok: AtomicU64,
    joins_failed: AtomicU64,
    skipped: AtomicU64,
    in_flight: AtomicU64,
}

/// Most churners in flight at once (a tick beyond it is skipped and counted).
const MAX_IN_FLIGHT: u64 = 256;

/// Runs the soak on a connected `session`.
pub fn run(r: &SoakRun, session: &mut Session, pid: Option<u32>) -> anyhow::Result<SoakReport> {
    let baseline = pid.and_then(ProcSample::read);
    let shared = Arc::new(Shared::default());
    let churn = spawn_churn(r, shared.clone())?;
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut result = Ok(());
    // Bounded: one interval per iteration until the duration is spent.
    while t0.elapsed() < r.duration {
        let left = r.duration.saturating_sub(t0.elapsed());
        let d = r.sample.min(left).max(Duration::from_millis(100));
        let p = match session.run_phase(r.rate, d, r.drain) {
            Ok(p) => p,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let now = pid.and_then(ProcSample::read);
        let s = SoakSample {
            t_s: t0.elapsed().as_secs_f64(),
            rss_bytes: now.map(|x| x.rss_bytes),
            open_files: now.map(|x| x.open_files),
            server_cpu_us_per_delivery: p.server_cpu_us_per_delivery,
            p99_ms: p.latency.p99_ms,
            delivered: p.loss.delivered,
            expected: p.loss.expected,
            exact: p.loss.is_exact() && p.connections_closed == 0,
        };
        if !r.quiet {
            eprintln!(
                "[soak] t={:.0}s RSS {} MiB, {} files, {} us CPU/delivery, p99 {:.2} ms, {}/{} delivered",
                s.t_s,
                s.rss_bytes.map(|b| format!("{:.1}", b as f64 / 1048576.0)).unwrap_or_else(|| "-".into()),
                s.open_files.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
                s.server_cpu_us_per_delivery.map(|b| format!("{b:.2}")).unwrap_or_else(|| "-".into()),
                s.p99_ms,
                s.delivered,
                s.expected
            );
        }
        samples.push(s);
    }
    shared.stop.store(true, Relaxed);
    let _ = churn.join();
    result?;
    let open_files_end = match (pid, baseline) {
        (Some(p), Some(b)) => {
            let max = b.open_files + files_slack(b.open_files);
            let until = Instant::now() + Duration::from_secs(15);
            loop {
                let n = serverwatch::open_files(p);
                if n.is_none_or(|n| n <= max) || Instant::now() >= until {
                    break n;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        _ => None,
    };
    let churn = ChurnCounts {
        connections_ok: shared.conn_ok.load(Relaxed),
        connections_failed: shared.conn_failed.load(Relaxed),
        joins_ok: shared.joins_ok.load(Relaxed),
        joins_failed: shared.joins_failed.load(Relaxed),
        skipped: shared.skipped.load(Relaxed),
    };
    let mut rep = SoakReport {
        server_pid: pid,
        rate: r.rate,
        subscribers: session.plan.subscribers,
        baseline,
        open_files_end,
        samples,
        churn,
        goals: Vec::new(),
    };
    rep.goals = goals(&rep, r.warmup.as_secs_f64(), r.rss_tolerance);
    Ok(rep)
}

/// The flatness checks.
pub fn goals(rep: &SoakReport, warmup_s: f64, tol: f64) -> Vec<Goal> {
    let mut g = Vec::new();
    let after: Vec<u64> = rep
        .samples
        .iter()
        .filter(|s| s.t_s >= warmup_s)
        .filter_map(|s| s.rss_bytes)
        .collect();
    let (pass, detail) = match after.first() {
        None => (false, "no RSS sample after the warm-up".to_string()),
        Some(&first) => {
            let hi = after.iter().copied().max().unwrap_or(first);
            let lo = after.iter().copied().min().unwrap_or(first);
            let up = (hi as f64 - first as f64) / first.max(1) as f64;
            let down = (first as f64 - lo as f64) / first.max(1) as f64;
            (
                up <= tol && down <= tol,
                format!(
                    "{} samples after {warmup_s:.0} s: first {:.1} MiB, min {:.1}, max {:.1} ({:+.1}% / {:+.1}%)",
                    after.len(),
                    first as f64 / 1048576.0,
                    lo as f64 / 1048576.0,
                    hi as f64 / 1048576.0,
                    -down * 100.0,
                    up * 100.0
                ),
            )
        }
    };
    g.push(Goal {
        goal: format!("RSS within {:.0}% after the warm-up", tol * 100.0),
        pass,
        detail,
    });
    let (pass, detail) = match (rep.baseline, rep.open_files_end) {
        (Some(b), Some(e)) => (
            e <= b.open_files + files_slack(b.open_files),
            format!(
                "baseline {}, at the end {e} (slack {})",
                b.open_files,
                files_slack(b.open_files)
            ),
        ),
        _ => (false, "not measured (no server pid)".into()),
    };
    g.push(Goal {
        goal: "open files back to the baseline at the end".into(),
        pass,
        detail,
    });
    let lossy: Vec<String> = rep
        .samples
        .iter()
        .filter(|s| !s.exact)
        .map(|s| format!("t={:.0}s: {}/{}", s.t_s, s.delivered, s.expected))
        .collect();
    g.push(Goal {
        goal: "no loss".into(),
        pass: lossy.is_empty() && !rep.samples.is_empty(),
        detail: if rep.samples.is_empty() {
            "no samples".into()
        } else if lossy.is_empty() {
            format!(
                "{} intervals, {} deliveries, all exact",
                rep.samples.len(),
                rep.samples.iter().map(|s| s.delivered).sum::<u64>()
            )
        } else {
            lossy.join("; ")
        },
    });
    g
}

fn spawn_churn(r: &SoakRun, shared: Arc<Shared>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let target = r.target.clone();
    let (churn_rate, presence_rate) = (r.churn_rate, r.presence_rate);
    let (channels, hold, timeout) = (r.presence_channels.max(1), r.presence_hold, r.timeout);
    Ok(std::thread::Builder::new()
        .name("soak-churn".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else {
                shared.conn_failed.fetch_add(1, Relaxed);
                return;
            };
            rt.block_on(async move {
                let target = Rc::new(target);
                let mut hs = Vec::new();
                if churn_rate > 0.0 {
                    hs.push(monoio::spawn(ticker(
                        shared.clone(),
                        churn_rate,
                        target.clone(),
                        move |sh, t, k| churn_once(sh, t, k, timeout),
                    )));
                }
                if presence_rate > 0.0 {
                    hs.push(monoio::spawn(ticker(
                        shared.clone(),
                        presence_rate,
                        target.clone(),
                        move |sh, t, k| join_once(sh, t, k, channels, hold, timeout),
                    )));
                }
                for h in hs {
                    h.await;
                }
                // Let the churners in flight finish (bounded by their own timeouts).
                let until = Instant::now() + timeout + hold + Duration::from_secs(1);
                while shared.in_flight.load(Relaxed) > 0 && Instant::now() < until {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        })?)
}

/// Spawns `f(k)` `rate` times a second until stopped.
async fn ticker<F, Fut>(shared: Arc<Shared>, rate: f64, target: Rc<Target>, f: F)
where
    F: Fn(Arc<Shared>, Rc<Target>, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let gap = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now();
    let mut k = 0u64;
    while !shared.stop.load(Relaxed) {
        let due = t0 + gap.mul_f64(k as f64);
        let now = Instant::now();
        if due > now {
            monoio::time::sleep((due - now).min(Duration::from_millis(100))).await;
            continue;
        }
        if shared.in_flight.load(Relaxed) >= MAX_IN_FLIGHT {
            shared.skipped.fetch_add(1, Relaxed);
        } else {
            shared.in_flight.fetch_add(1, Relaxed);
            let fut = f(shared.clone(), target.clone(), k);
            let sh = shared.clone();
            monoio::spawn(async move {
                fut.await;
                sh.in_flight.fetch_sub(1, Relaxed);
            });
        }
        k += 1;
    }
}

/// Connection numbers of churners start here (their source addresses rotate like the honest
/// clients', which the abuse config exempts from the per-address limits).
const CHURN_BASE: usize = 1 << 20;

async fn close(mut s: crate::tls::Stream) {
    let mut out = Vec::new();
    wsframe::client_close(&mut out);
    let _ = s.write_all(out).await;
}

async fn churn_once(shared: Arc<Shared>, t: Rc<Target>, k: u64, timeout: Duration) {
    let i = CHURN_BASE + k as usize;
    let r = async {
        let mut s = t.connect_ws(i).await?;
        let mut rd = FrameReader::new(4096);
        net::pusher_connect(&mut s, &t, t.ws_for(i), &mut rd, k, timeout).await?;
        anyhow::Ok(s)
    };
    match monoio::time::timeout(timeout, r).await {
        Ok(Ok(s)) => {
            shared.conn_ok.fetch_add(1, Relaxed);
            close(s).await;
        }
        _ => {
            shared.conn_failed.fetch_add(1, Relaxed);
        }
    }
}

async fn join_once(
    shared: Arc<Shared>,
    t: Rc<Target>,
    k: u64,
    channels: usize,
    hold: Duration,
    timeout: Duration,
) {
    let i = CHURN_BASE + (1 << 19) + k as usize;
    let channel = format!("presence-soak-{}", k % channels as u64);
    let r = async {
        let mut s = t.connect_ws(i).await?;
        let mut rd = FrameReader::new(4096);
        let est = net::pusher_connect(&mut s, &t, t.ws_for(i), &mut rd, k, timeout).await?;
        let cd = serde_json::json!({"user_id": format!("soak-{k}"), "user_info": {}}).to_string();
        let auth = net::auth_for(&t, &est.socket_id, &channel, Some(&cd));
        let mut out = Vec::new();
        wsframe::client_text(
            net::subscribe_msg(&channel, auth.as_deref(), Some(&cd)).as_bytes(),
            k as u32,
            &mut out,
        );
        let (res, _) = s.write_all(out).await;
        res?;
        net::wait_for(&mut s, &mut rd, |ev, data| match ev {
            "pusher_internal:subscription_succeeded" => Some(Ok(())),
            "pusher:error" | "pusher:subscription_error" => {
                Some(Err(anyhow::anyhow!("{ev} {data}")))
            }
            _ => None,
        })
        .await?;
        anyhow::Ok(s)
    };
    match monoio::time::timeout(timeout, r).await {
        Ok(Ok(s)) => {
            shared.joins_ok.fetch_add(1, Relaxed);
            monoio::time::sleep(hold).await;
            close(s).await;
        }
        _ => {
            shared.joins_failed.fetch_add(1, Relaxed);
        }
    }
}

/// One row per sample.
pub fn csv(rep: &SoakReport) -> String {
    let mut s = String::from(
        "t_s,rss_bytes,open_files,server_cpu_us_per_delivery,p99_ms,delivered,expected,exact\n",
    );
    let opt = |v: Option<String>| v.unwrap_or_default();
    for x in &rep.samples {
        let _ = writeln!(
            s,
            "{:.1},{},{},{},{:.3},{},{},{}",
            x.t_s,
            opt(x.rss_bytes.map(|v| v.to_string())),
            opt(x.open_files.map(|v| v.to_string())),
            opt(x.server_cpu_us_per_delivery.map(|v| format!("{v:.3}"))),
            x.p99_ms,
            x.delivered,
            x.expected,
            x.exact
        );
    }
    s
}

/// The report as text: the samples' ranges, the churn counts, the checks.
pub fn text(rep: &SoakReport) -> String {
    let mut s = format!(
        "soak: {} subscribers at {} events/s, {} samples\n",
        rep.subscribers,
        rep.rate,
        rep.samples.len()
    );
    let c = rep.churn;
    let _ = writeln!(
        s,
        "churn: {} connections ({} failed), {} presence joins ({} failed), {} ticks skipped",
        c.connections_ok, c.connections_failed, c.joins_ok, c.joins_failed, c.skipped
    );
    for g in &rep.goals {
        let _ = writeln!(
            s,
            "{} {}: {}",
            if g.pass { "PASS" } else { "FAIL" },
            g.goal,
            g.detail
        );
    }
    s
}

/// Three stacked panels over time: RSS (MiB), open files, server CPU per delivery (us).
pub fn svg(rep: &SoakReport) -> String {
    type Pick = fn(&SoakSample) -> Option<f64>;
    let panels: [(&str, Pick); 3] = [
        ("server RSS (MiB)", |s| {
            s.rss_bytes.map(|b| b as f64 / 1048576.0)
        }),
        ("server open files", |s| s.open_files.map(|b| b as f64)),
        ("server CPU per delivery (us)", |s| {
            s.server_cpu_us_per_delivery
        }),
    ];
    let (w, ph, ml, mr, top, gap) = (900.0, 170.0, 80.0, 30.0, 50.0, 60.0);
    let h = top + 3.0 * (ph + gap);
    let pw = w - ml - mr;
    let tmax = rep
        .samples
        .iter()
        .map(|s| s.t_s)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="24" font-size="15">soak: {} subscribers, {} events/s, one sample per interval</text>"##,
        rep.subscribers, rep.rate
    );
    for (pi, (title, pick)) in panels.iter().enumerate() {
        let y0 = top + pi as f64 * (ph + gap);
        let pts: Vec<(f64, f64)> = rep
            .samples
            .iter()
            .filter_map(|x| pick(x).map(|v| (x.t_s, v)))
            .collect();
        let vmax = pts.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.15;
        let _ = writeln!(
            s,
            r##"<text x="{ml}" y="{:.0}" font-size="13">{title}</text><rect x="{ml}" y="{y0:.0}" width="{pw:.0}" height="{ph:.0}" fill="none" stroke="#999"/>"##,
            y0 - 6.0
        );
        for i in 0..=4 {
            let v = vmax / 4.0 * i as f64;
            let y = y0 + ph - v / vmax * ph;
            let _ = writeln!(
                s,
                r##"<line x1="{ml}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.0}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
                ml + pw,
                ml - 4.0,
                y + 4.0
            );
        }
        let poly: Vec<String> = pts
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", ml + t / tmax * pw, y0 + ph - v / vmax * ph))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            poly.join(" ")
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.0}" y="{:.0}" text-anchor="end">{tmax:.0} s</text>"##,
            ml + pw,
            y0 + ph + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss: u64, exact: bool) -> SoakSample {
        SoakSample {
            t_s: t,
            rss_bytes: Some(rss),
            open_files: Some(10),
            server_cpu_us_per_delivery: Some(1.0),
            p99_ms: 1.0,
            delivered: 10,
            expected: 10,
            exact,
        }
    }

    fn report(samples: Vec<SoakSample>, end_files: u64) -> SoakReport {
        SoakReport {
            server_pid: Some(1),
            rate: 1.0,
            subscribers: 1,
            baseline: Some(ProcSample {
                rss_bytes: 1,
                open_files: 100,
            }),
            open_files_end: Some(end_files),
            samples,
            churn: ChurnCounts::default(),
            goals: Vec::new(),
        }
    }

    #[test]
    fn flat_rss_after_warmup_passes_and_growth_fails() {
        let flat = report(
            vec![
                sample(10.0, 500, true),
                sample(20.0, 100, true),
                sample(30.0, 105, true),
            ],
            100,
        );
        let g = goals(&flat, 15.0, 0.10);
        assert!(g.iter().all(|g| g.pass), "{g:?}");
        let growing = report(vec![sample(20.0, 100, true), sample(30.0, 120, true)], 100);
        assert!(!goals(&growing, 15.0, 0.10)[0].pass);
    }

    #[test]
    fn leaked_files_and_loss_fail() {
        let g = goals(&report(vec![sample(1.0, 100, false)], 500), 0.0, 0.1);
        assert!(g[0].pass);
        assert!(!g[1].pass, "files");
        assert!(!g[2].pass, "loss");
        let svg = svg(&report(vec![sample(1.0, 100, true)], 100));
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    }
}
