//! `ringcast-loadtest abuse`: an honest fan-out alone (the quiet baseline), then beside each
//! attack of [`super::abuse`] one after another, then beside all of them at once, on one
//! connected [`Session`]. Per phase: the honest p99 and loss beside the quiet run's, the
//! server's peak RSS and open files (`/proc/PID`), what the abusers saw and what the server's
//! `/metrics` counted; then the goals as PASS/FAIL lines. The report's `sharing`
//! section says how the machine was shared: the CPUs of the server, the abusers
//! (`--attack-cpus`) and the honest clients (`--honest-cpus`), which of them overlap, and the
//! load average.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::abuse::{self, AbusePlan, Attack, AttackResult};
use super::fanout::{PhaseResult, Session};
use crate::net::Target;
use crate::serverwatch::{self, Counters, ProcSample, Sampler};

/// The counters a phase's report shows (what the server counted), by prefix.
pub const WATCHED: [&str; 11] = [
    "ringcast_connections_refused_total",
    "ringcast_tls_handshakes_total",
    "ringcast_http_refused_total",
    "ringcast_connections_closed_total",
    "ringcast_slow_consumer_closes_total",
    "ringcast_auth_failures_total",
    "ringcast_protocol_errors_total",
    "ringcast_control_messages_rate_limited_total",
    "ringcast_client_events_rate_limited_total",
    "ringcast_rest_requests_total",
    "ringcast_connections_opened_total",
];

/// How the run goes.
pub struct AbuseRun {
    pub plan: AbusePlan,
    pub attacks: Vec<Attack>,
    /// Also all attacks at once after the one-by-one phases.
    pub together: bool,
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    /// Goal: honest p99 at most this many times the quiet run's.
    pub max_p99_ratio: f64,
    /// Goal: the server's peak RSS.
    pub max_rss_bytes: u64,
    /// Goal: the server's peak open files (None: not checked, only the return to baseline).
    pub max_open_files: Option<u64>,
    /// CPUs the honest clients' generator threads are pinned to (None: not pinned).
    pub honest_cpus: Option<Vec<usize>>,
    pub quiet: bool,
}

/// How the machine was shared during the run.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Sharing {
    /// Online CPUs.
    pub cpus: usize,
    /// CPUs the server's threads may run on (`/proc/PID`), when its pid is known.
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs the abuser thread was pinned to (None: not pinned).
    pub attack_cpus: Option<Vec<usize>>,
    /// CPUs the honest generator threads were pinned to (None: not pinned).
    pub honest_cpus: Option<Vec<usize>>,
    /// Load average (1, 5, 15 min) at the start: other tenants of the machine.
    pub load_avg_before: String,
    /// The same in words, with the overlaps.
    pub summary: String,
}

impl Sharing {
    pub fn new(
        attack: Option<&[usize]>,
        honest: Option<&[usize]>,
        server_pid: Option<u32>,
    ) -> Sharing {
        use std::collections::BTreeSet;
        let server: Option<BTreeSet<usize>> =
            server_pid.and_then(|p| crate::procfs::process_cpus(&p.to_string()));
        let set = |c: Option<&[usize]>| c.map(|c| c.iter().copied().collect::<BTreeSet<_>>());
        let (a, h) = (set(attack), set(honest));
        let list = |s: &BTreeSet<usize>| {
            s.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let side = |name: &str, s: &Option<BTreeSet<usize>>, what: &str| match s {
            Some(s) => format!("{name} on CPU {}", list(s)),
            None => format!("{name} {what}"),
        };
        let overlap = |x: &str,
                       a: &Option<BTreeSet<usize>>,
                       y: &str,
                       b: &Option<BTreeSet<usize>>| match (a, b) {
            (Some(a), Some(b)) if a.is_disjoint(b) => format!("{x} and {y}: separate cores"),
            (Some(a), Some(b)) => format!(
                "{x} and {y}: SHARED CPU {}",
                list(&a.intersection(b).copied().collect())
            ),
            _ => format!("{x} and {y}: may share cores (not both pinned)"),
        };
        let load = crate::procfs::loadavg();
        let summary = format!(
            "{} CPUs; {}; {}; {}; {}; {}; {}; load average {load}",
            crate::procfs::cpus(),
            side("server", &server, "CPUs unknown (no --server-pid)"),
            side("attackers", &a, "unpinned"),
            side("honest clients", &h, "unpinned"),
            overlap("server", &server, "attackers", &a),
            overlap("server", &server, "honest clients", &h),
            overlap("attackers", &a, "honest clients", &h),
        );
        Sharing {
            cpus: crate::procfs::cpus(),
            server_cpus: server.map(|s| s.into_iter().collect()),
            attack_cpus: attack.map(<[usize]>::to_vec),
            honest_cpus: honest.map(<[usize]>::to_vec),
            load_avg_before: load,
            summary,
        }
    }
}

/// One phase of the run.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AbusePhase {
    pub name: String,
    pub honest: PhaseResult,
    /// Honest p99 over the quiet run's p99.
    pub p99_ratio: Option<f64>,
    pub peak: Option<ProcSample>,
    /// Open files of the server once the phase's abusers are gone (waited for, bounded).
    pub open_files_after: Option<u64>,
    pub attacks: Vec<AttackResult>,
    /// Server counters that moved during the phase (`/metrics`), by `name{labels}`.
    pub server_counted: Counters,
    /// Every refusal the abusers saw beside the server counters that count it.
    pub refusals: Vec<Refusal>,
}

/// A kind of refusal the abusers saw and whether the server counted it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Refusal {
    pub attack: String,
    pub outcome: String,
    pub seen_by_harness: u64,
    pub counters: Vec<String>,
    pub counted_by_server: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Goal {
    pub goal: String,
    pub pass: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct AbuseReport {
    pub server_pid: Option<u32>,
    /// How the machine was shared (CPUs of the server, abusers and honest clients).
    pub sharing: Sharing,
    pub baseline: Option<ProcSample>,
    pub phases: Vec<AbusePhase>,
    pub goals: Vec<Goal>,
}

fn scrape(t: &Target) -> Counters {
    serverwatch::fetch_metrics(
        t.api_addr,
        &t.api_host,
        &t.api_path_prefix,
        t.api_tls.then_some(t.tls_ca.as_deref()),
        Duration::from_secs(10),
    )
    .unwrap_or_default()
}

/// Waits (at most `limit`) until the server holds at most `max` files; returns the last count.
fn settle_files(pid: u32, max: u64, limit: Duration) -> Option<u64> {
    let until = Instant::now() + limit;
    loop {
        let n = serverwatch::open_files(pid)?;
        if n <= max || Instant::now() >= until {
            return Some(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Slack over the quiet baseline that still counts as "back to baseline".
pub fn files_slack(baseline: u64) -> u64 {
    16 + baseline / 100
}

/// Runs every phase on `session` (connected already).
pub fn run(
    r: &AbuseRun,
    session: &mut Session,
    sampler: Option<&Sampler>,
) -> anyhow::Result<AbuseReport> {
    let t = r.plan.target.clone();
    let plan = Arc::new(r.plan.clone());
    let mut phases = Vec::new();
    let mut schedule: Vec<(String, Vec<Attack>)> = vec![("quiet".into(), Vec::new())];
    for a in &r.attacks {
        schedule.push((a.name().into(), vec![*a]));
    }
    if r.together && r.attacks.len() > 1 {
        schedule.push(("all-together".into(), r.attacks.clone()));
    }
    let pid = sampler.map(|s| s.pid);
    let sharing = Sharing::new(r.plan.cpus.as_deref(), r.honest_cpus.as_deref(), pid);
    if !r.quiet {
        eprintln!("[abuse] sharing: {}", sharing.summary);
    }
    let mut baseline: Option<ProcSample> = None;
    let mut quiet_p99 = None;
    for (name, attacks) in schedule {
        if !r.quiet {
            eprintln!("[abuse] phase {name}");
        }
        let before = scrape(&t);
        if let Some(s) = sampler {
            s.take_peak();
        }
        // The abusers end with the honest schedule (which starts 300 ms from now).
        let end = Instant::now() + Duration::from_millis(300) + r.duration;
        let handle = if attacks.is_empty() {
            None
        } else {
            Some(abuse::spawn(plan.clone(), attacks.clone(), end)?)
        };
        let honest = session.run_phase(r.rate, r.duration, r.drain);
        let results = match handle {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the abuser thread panicked"))?,
            None => Vec::new(),
        };
        let honest = honest?;
        let peak = sampler.map(|s| s.take_peak());
        let open_files_after = match (pid, baseline) {
            (Some(p), Some(b)) => settle_files(
                p,
                b.open_files + files_slack(b.open_files),
                Duration::from_secs(15),
            ),
            (Some(p), None) => serverwatch::open_files(p),
            _ => None,
        };
        let after = scrape(&t);
        let server_counted = serverwatch::delta(&before, &after, &WATCHED);
        if name == "quiet" {
            quiet_p99 = Some(honest.latency.p99_ms);
            baseline = pid.and_then(ProcSample::read);
        }
        let p99_ratio = quiet_p99
            .filter(|q| *q > 0.0)
            .map(|q| honest.latency.p99_ms / q);
        let mut refusals = Vec::new();
        for a in &results {
            for (outcome, n) in &a.outcomes {
                if let Some(counters) = abuse::counted_by(outcome) {
                    let counted = counters
                        .iter()
                        .map(|c| serverwatch::sum_prefix(&server_counted, c))
                        .sum();
                    refusals.push(Refusal {
                        attack: a.attack.clone(),
                        outcome: outcome.clone(),
                        seen_by_harness: *n,
                        counters: counters.iter().map(|c| c.to_string()).collect(),
                        counted_by_server: counted,
                    });
                }
            }
        }
        let p = AbusePhase {
            name,
            honest,
            p99_ratio,
            peak,
            open_files_after,
            attacks: results,
            server_counted,
            refusals,
        };
        if !r.quiet {
            eprint!("{}", phase_text(&p));
        }
        phases.push(p);
    }
    let goals = goals(r, &phases, baseline);
    Ok(AbuseReport {
        server_pid: pid,
        sharing,
        baseline,
        phases,
        goals,
    })
}

fn goals(r: &AbuseRun, phases: &[AbusePhase], baseline: Option<ProcSample>) -> Vec<Goal> {
    let mut g = Vec::new();
    let lossy: Vec<String> = phases
        .iter()
        .filter(|p| !p.honest.loss.is_exact() || p.honest.connections_closed > 0)
        .map(|p| {
            format!(
                "{}: {} of {} delivered, {} honest connections closed",
                p.name,
                p.honest.loss.delivered,
                p.honest.loss.expected,
                p.honest.connections_closed
            )
        })
        .collect();
    g.push(Goal {
        goal: "no loss for honest clients".into(),
        pass: lossy.is_empty(),
        detail: if lossy.is_empty() {
            "every phase delivered exactly what was expected".into()
        } else {
            lossy.join("; ")
        },
    });
    let slow: Vec<String> = phases
        .iter()
        .filter(|p| p.name != "quiet")
        .filter(|p| p.p99_ratio.is_none_or(|x| x > r.max_p99_ratio))
        .map(|p| format!("{}: {}", p.name, fmt_ratio(p.p99_ratio)))
        .collect();
    g.push(Goal {
        goal: format!("honest p99 within {}x of the quiet run", r.max_p99_ratio),
        pass: slow.is_empty(),
        detail: if slow.is_empty() {
            format!(
                "worst {}",
                fmt_ratio(
                    phases
                        .iter()
                        .filter(|p| p.name != "quiet")
                        .filter_map(|p| p.p99_ratio)
                        .reduce(f64::max)
                )
            )
        } else {
            slow.join("; ")
        },
    });
    let peak_rss = phases
        .iter()
        .filter_map(|p| p.peak)
        .map(|p| p.rss_bytes)
        .max();
    g.push(Goal {
        goal: format!("server RSS at most {} MiB", r.max_rss_bytes >> 20),
        pass: peak_rss.is_some_and(|x| x <= r.max_rss_bytes),
        detail: match peak_rss {
            Some(x) => format!("peak {:.1} MiB", x as f64 / 1048576.0),
            None => "not measured (no server pid)".into(),
        },
    });
    let peak_files = phases
        .iter()
        .filter_map(|p| p.peak)
        .map(|p| p.open_files)
        .max();
    let last_after = phases.last().and_then(|p| p.open_files_after);
    let files_ok = match (peak_files, last_after, baseline) {
        (Some(peak), Some(after), Some(b)) => {
            r.max_open_files.is_none_or(|m| peak <= m)
                && after <= b.open_files + files_slack(b.open_files)
        }
        _ => false,
    };
    g.push(Goal {
        goal: format!(
            "server open files bounded{} and back to the baseline after the abuse",
            r.max_open_files
                .map(|m| format!(" (at most {m})"))
                .unwrap_or_default()
        ),
        pass: files_ok,
        detail: match (peak_files, last_after, baseline) {
            (Some(p), Some(a), Some(b)) => format!(
                "baseline {}, peak {p}, after the last phase {a} (slack {})",
                b.open_files,
                files_slack(b.open_files)
            ),
            _ => "not measured (no server pid)".into(),
        },
    });
    let uncounted: Vec<String> = phases
        .iter()
        .flat_map(|p| {
            p.refusals
                .iter()
                .filter(|x| x.counted_by_server <= 0.0)
                .map(move |x| {
                    format!(
                        "{}/{}: \"{}\" seen {}x, none of {:?} moved",
                        p.name, x.attack, x.outcome, x.seen_by_harness, x.counters
                    )
                })
        })
        .collect();
    let kinds: usize = phases.iter().map(|p| p.refusals.len()).sum();
    g.push(Goal {
        goal: "every rejected abuser counted by reason in /metrics".into(),
        pass: uncounted.is_empty() && kinds > 0,
        detail: if kinds == 0 {
            "no abuser was refused".into()
        } else if uncounted.is_empty() {
            format!("{kinds} kinds of refusal seen, each counted by the server")
        } else {
            uncounted.join("; ")
        },
    });
    g
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into())
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

/// One phase as text: the honest row, the abusers' outcomes, the server's counters.
pub fn phase_text(p: &AbusePhase) -> String {
    let h = &p.honest;
    let mut s = format!(
        "{:<16} honest p99 {:>8.2} ms ({:>6} of quiet)  delivered {}/{}  closed {}  peak RSS {} MiB  peak files {}  files after {}\n",
        p.name,
        h.latency.p99_ms,
        fmt_ratio(p.p99_ratio),
        h.loss.delivered,
        h.loss.expected,
        h.connections_closed,
        p.peak.map(|x| mib(x.rss_bytes)).unwrap_or_else(|| "-".into()),
        p.peak.map(|x| x.open_files.to_string()).unwrap_or_else(|| "-".into()),
        p.open_files_after.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
    );
    for a in &p.attacks {
        s.push_str(&format!(
            "    [{}] {} connections/requests:",
            a.attack, a.attempts
        ));
        for (o, n) in &a.outcomes {
            s.push_str(&format!(" {o} x{n};"));
        }
        s.push('\n');
    }
    if !p.server_counted.is_empty() {
        s.push_str("    server counted:");
        for (k, v) in &p.server_counted {
            s.push_str(&format!(" {k} +{v};"));
        }
        s.push('\n');
    }
    s
}

/// The whole report as text (phases, then the goals).
pub fn text(rep: &AbuseReport) -> String {
    let mut s = format!("sharing: {}\n", rep.sharing.summary);
    if let Some(b) = rep.baseline {
        s.push_str(&format!(
            "server pid {}: after the quiet run {} MiB RSS, {} open files\n",
            rep.server_pid.unwrap_or(0),
            mib(b.rss_bytes),
            b.open_files
        ));
    }
    for p in &rep.phases {
        s.push_str(&phase_text(p));
    }
    for g in &rep.goals {
        s.push_str(&format!(
            "{} {}: {}\n",
            if g.pass { "PASS" } else { "FAIL" },
            g.goal,
            g.detail
        ));
    }
    s
}
