//! Human and machine output: the summary table, JSON files, sweep CSV, the knee, and a
//! hand-written SVG chart of p99 latency and throughput against the offered rate.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::fanout::PhaseResult;

pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub fn fmt_bytes(v: f64) -> String {
    if v.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0 / 1024.0)
    } else if v.abs() >= 1024.0 {
        format!("{:.2} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

/// The fan-out summary table.
pub fn phase_table(rows: &[PhaseResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>6} {:>5} {:>5} {:>8} {:>9} {:>21} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>6} {:>5}",
        "server", "subs", "chans", "bytes", "ev/s", "deliv/s", "delivered/expected", "missing", "dups", "p50ms", "p90ms", "p99ms", "p99.9ms", "maxms", "srv-us/dv", "gen-us/dv", "gen%", "mach%", "valid"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<10} {:>6} {:>5} {:>5} {:>8} {:>9} {:>21} {:>7} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>9} {:>7.0} {:>6} {:>5}",
            truncate(&r.server, 10),
            r.subscribers,
            r.channels,
            r.payload,
            fmt_rate(r.rate),
            fmt_rate(r.deliveries_per_sec),
            format!("{}/{}", r.loss.delivered, r.loss.expected),
            r.loss.missing,
            r.loss.duplicates,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.latency.max_ms,
            r.server_cpu_us_per_delivery.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
            r.gen_cpu_us_per_delivery.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into()),
            r.gen_thread_max_util * 100.0,
            r.machine_busy.map(|v| format!("{:.0}", v * 100.0)).unwrap_or_else(|| "-".into()),
            if r.valid { "yes" } else { "NO" }
        );
    }
    for r in rows {
        let tag = format!("[{} {} subs @ {} ev/s]", r.server, r.subscribers, r.rate);
        for f in &r.server_failures {
            let _ = writeln!(s, "{tag} SERVER: {f}");
        }
        for f in &r.generator_failures {
            let _ = writeln!(s, "{tag} GENERATOR: {f}");
        }
        if let Some(rest) = &r.rest {
            let _ = writeln!(
                s,
                "{tag} REST: {} ok, {} throttled (429), {} rejected, {} resent, {} connections opened ({} closed by the server), {:.1} requests per connection (max {})",
                rest.ok,
                rest.throttled,
                rest.rejected,
                rest.resent,
                rest.connections,
                rest.closed_by_server,
                rest.requests_per_connection,
                rest.max_requests_per_connection
            );
            for m in &rest.modes {
                let _ = writeln!(s, "{tag} REST {m}");
            }
        }
    }
    if let Some(r) = rows.first() {
        if !r.machine_sharing.is_empty() {
            let _ = writeln!(s, "machine: {}", r.machine_sharing);
        }
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Splits what went wrong in a phase by whose fault it is, each with its figures, and sets
/// `valid` (nothing went wrong). The server's: loss, duplicates, deliveries nobody asked for,
/// closed subscriber connections, rejected or throttled publishes, late deliveries of an
/// earlier phase, requests it did not take by the deadline. The generator's: a saturated
/// thread, publishers behind their schedule while nothing held them back, requests it did not
/// send by the deadline although the server was not holding it back.
pub fn classify(r: &mut PhaseResult) {
    let mut srv = Vec::new();
    let mut gen = Vec::new();
    let l = &r.loss;
    if l.missing > 0 {
        srv.push(format!(
            "loss: {} of {} deliveries never arrived",
            l.missing, l.expected
        ));
    }
    if l.duplicates > 0 {
        srv.push(format!(
            "duplicates: {} deliveries arrived twice",
            l.duplicates
        ));
    }
    if l.unexpected > 0 || r.misrouted > 0 {
        srv.push(format!(
            "misdelivery: {} deliveries outside the schedule, {} on the wrong channel",
            l.unexpected, r.misrouted
        ));
    }
    if r.connections_closed > 0 {
        srv.push(format!(
            "disconnects: the server closed {} subscriber connection(s)",
            r.connections_closed
        ));
    }
    if r.stale > 0 {
        srv.push(format!(
            "late: {} deliveries of an earlier phase arrived during this one",
            r.stale
        ));
    }
    match &r.rest {
        Some(rest) => {
            if rest.rejected > 0 {
                srv.push(format!(
                    "rejected publishes: {} REST requests answered {:?}",
                    rest.rejected, rest.rejected_statuses
                ));
            }
            if rest.throttled > 0 {
                srv.push(format!(
                    "throttled: {} REST requests answered 429 (each retried after Retry-After)",
                    rest.throttled
                ));
            }
            if rest.timeouts > 0 {
                srv.push(format!(
                    "slow answers: {} connection(s) abandoned after an answer took longer than --rest-timeout",
                    rest.timeouts
                ));
            }
            if rest.unanswered_at_deadline > 0 {
                srv.push(format!(
                    "unanswered: {} REST requests had no answer at the phase deadline",
                    rest.unanswered_at_deadline
                ));
            }
            let by_server = rest.unsent_blocked_by_server.min(rest.unsent_at_deadline);
            if by_server > 0 {
                srv.push(format!(
                    "not taken: {by_server} REST requests were never sent by the deadline because every request slot was waiting for the server (answers, reconnects, Retry-After)"
                ));
            }
            let by_gen = rest.unsent_at_deadline - by_server;
            if by_gen > 0 {
                gen.push(format!(
                    "behind schedule: {by_gen} REST requests were not sent by the deadline while the server was not holding them back"
                ));
            }
        }
        None => {
            if r.publish_rejected > 0 {
                srv.push(format!(
                    "rejected publishes: {} client events answered with pusher:error",
                    r.publish_rejected
                ));
            }
            if r.publish_skipped > 0 {
                gen.push(format!(
                    "behind schedule: {} client events were not sent by the deadline",
                    r.publish_skipped
                ));
            }
        }
    }
    if r.gen_saturated {
        gen.push(format!(
            "saturated: the busiest generator thread used {:.0}% of a core (limit {:.0}%)",
            r.gen_thread_max_util * 100.0,
            crate::scenario::fanout::SATURATION * 100.0
        ));
    }
    if r.publish_lag.p99_ms > r.max_publish_lag_ms {
        gen.push(format!(
            "behind schedule: publishers sent p99 {:.1} ms after the intended time while the server was not holding them back (limit {} ms, --max-publish-lag-ms)",
            r.publish_lag.p99_ms, r.max_publish_lag_ms
        ));
    }
    r.valid = srv.is_empty() && gen.is_empty();
    r.server_failures = srv;
    r.generator_failures = gen;
}

/// Writes `v` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &std::path::Path, v: &T) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// The knee of one series: the highest rate whose p99 stays within `budget_ms` with no loss
/// (and a valid run). None if even the lowest rate fails.
pub fn knee(rows: &[&PhaseResult], budget_ms: f64) -> Option<PhaseResult> {
    rows.iter()
        .filter(|r| r.latency.p99_ms <= budget_ms && r.loss.is_exact() && r.valid)
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
        .map(|r| (*r).clone())
}

pub fn csv(rows: &[PhaseResult]) -> String {
    let mut s = String::from(
        "server,mode,subscribers,channels,payload,rate,events,expected,delivered,missing,duplicates,deliveries_per_sec,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,server_cpu_s,server_cpu_us_per_delivery,gen_thread_max_util,gen_saturated,machine_busy,valid,load_avg_before\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{:?},{},{},{},{},{},{},{},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{:.3},{},{},{},{}",
            r.server,
            r.mode,
            r.subscribers,
            r.channels,
            r.payload,
            r.rate,
            r.events,
            r.loss.expected,
            r.loss.delivered,
            r.loss.missing,
            r.loss.duplicates,
            r.deliveries_per_sec,
            r.latency.p50_ms,
            r.latency.p90_ms,
            r.latency.p99_ms,
            r.latency.p999_ms,
            r.latency.max_ms,
            r.server_cpu_s.map(|v| format!("{v:.3}")).unwrap_or_default(),
            r.server_cpu_us_per_delivery.map(|v| format!("{v:.4}")).unwrap_or_default(),
            r.gen_thread_max_util,
            r.gen_saturated,
            r.machine_busy.map(|v| format!("{v:.3}")).unwrap_or_default(),
            r.valid,
            r.load_avg_before.replace(' ', "/"),
        );
    }
    s
}

/// A two-panel SVG: p99 latency (log scale, with the budget line) and achieved deliveries/s,
/// both against the offered deliveries/s, one line per (server, subscribers) series.
pub fn svg(rows: &[PhaseResult], budget_ms: f64, title: &str) -> String {
    let mut series: Vec<(String, Vec<&PhaseResult>)> = Vec::new();
    for r in rows {
        let name = format!("{} ({} subs)", r.server, r.subscribers);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(r),
            None => series.push((name, vec![r])),
        }
    }
    let offered = |r: &PhaseResult| r.loss.expected as f64 / r.duration_s.max(1e-9);
    let xmax = rows.iter().map(offered).fold(1.0, f64::max) * 1.05;
    let ymax_tp = rows
        .iter()
        .map(|r| r.deliveries_per_sec)
        .fold(1.0, f64::max)
        .max(xmax / 1.05)
        * 1.05;
    let lat_min = 0.1f64;
    let lat_max = rows
        .iter()
        .map(|r| r.latency.p99_ms)
        .fold(budget_ms * 2.0, f64::max)
        .max(1.0);
    let (w, h, ml, mr, mt, panel, gap) = (900.0, 700.0, 80.0, 220.0, 40.0, 270.0, 60.0);
    let pw = w - ml - mr;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let x = |v: f64| ml + v / xmax * pw;
    let y_lat = |v: f64| {
        let v = v.clamp(lat_min, lat_max);
        mt + panel - (v / lat_min).log10() / (lat_max / lat_min).log10() * panel
    };
    let top2 = mt + panel + gap;
    let y_tp = |v: f64| top2 + panel - v / ymax_tp * panel;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="20" font-size="15">{}</text>"##,
        xml(title)
    );
    for (top, label) in [
        (mt, "p99 latency (ms, log)"),
        (top2, "delivered per second"),
    ] {
        let _ = writeln!(
            s,
            r##"<rect x="{ml}" y="{top}" width="{pw}" height="{panel}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" transform="rotate(-90 10,{})" >{label}</text>"##,
            top + panel / 2.0 + 60.0,
            top + panel / 2.0 + 60.0
        );
    }
    // Axes ticks.
    for i in 0..=5 {
        let v = xmax / 5.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(v),
            top2 + panel + 16.0,
            fmt_rate(v)
        );
        let tv = ymax_tp / 5.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml - 4.0,
            y_tp(tv) + 4.0,
            fmt_rate(tv)
        );
    }
    let mut d = lat_min;
    while d <= lat_max * 1.0001 {
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml + pw,
            y_lat(d),
            y_lat(d),
            ml - 4.0,
            y_lat(d) + 4.0,
            d
        );
        d *= 10.0;
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered deliveries per second (events/s x subscribers per channel)</text>"##,
        ml + pw / 2.0,
        h - 10.0
    );
    let yb = y_lat(budget_ms);
    let _ = writeln!(
        s,
        r##"<line x1="{ml}" x2="{:.1}" y1="{yb:.1}" y2="{yb:.1}" stroke="#000" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}">p99 budget {budget_ms} ms</text>"##,
        ml + pw,
        ml + 6.0,
        yb - 5.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{ml}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#bbb" stroke-dasharray="2,3"/>"##,
        x(xmax / 1.05),
        y_tp(0.0),
        y_tp(xmax / 1.05)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let lat: Vec<String> = pts
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(offered(r)), y_lat(r.latency.p99_ms)))
            .collect();
        let tp: Vec<String> = pts
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(offered(r)), y_tp(r.deliveries_per_sec)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"##,
            lat.join(" ")
        );
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"##,
            tp.join(" ")
        );
        for r in pts {
            let mark = if r.valid && r.loss.is_exact() {
                ""
            } else {
                r#" stroke="black""#
            };
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"{mark}/>"##,
                x(offered(r)),
                y_lat(r.latency.p99_ms)
            );
        }
        let ly = mt + 30.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{c}"/><text x="{:.1}" y="{:.1}">{}</text>"##,
            ml + pw + 10.0,
            ly + 20.0,
            ml + pw + 24.0,
            ly + 29.0,
            xml(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Metrics shown side by side for each scenario: (label, JSON pointer inside one result).
fn metrics_for(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "connect" => &[
            ("connections", "/connections"),
            ("established", "/established"),
            ("failed", "/failed"),
            ("conn/s", "/rate_achieved"),
            ("setup p50 ms", "/latency/p50_ms"),
            ("setup p99 ms", "/latency/p99_ms"),
            ("setup max ms", "/latency/max_ms"),
            ("server RSS/conn B", "/server_rss_per_conn"),
            ("kernel TCP mem/conn B", "/kernel_tcp_mem_per_conn"),
            ("kernel TCP slab/conn B", "/kernel_tcp_slab_per_conn"),
            ("open after hold", "/still_open_after_hold"),
        ],
        "presence" => &[
            ("joins", "/joins"),
            ("joins acked", "/joins_acked"),
            ("member_added seen", "/added_seen"),
            ("member_added expected", "/added_expected"),
            ("member_added dups", "/added_duplicates"),
            ("member_removed seen", "/removed_seen"),
            ("member_removed dups", "/removed_duplicates"),
            ("added p50 ms", "/member_added_latency/p50_ms"),
            ("added p99 ms", "/member_added_latency/p99_ms"),
            ("removed p99 ms", "/member_removed_latency/p99_ms"),
            ("correct", "/correct"),
        ],
        _ => &[
            ("subscribers", "/subscribers"),
            ("channels", "/channels"),
            ("payload B", "/payload"),
            ("events/s", "/rate"),
            ("expected", "/loss/expected"),
            ("delivered", "/loss/delivered"),
            ("missing", "/loss/missing"),
            ("duplicates", "/loss/duplicates"),
            ("deliveries/s", "/deliveries_per_sec"),
            ("p50 ms", "/latency/p50_ms"),
            ("p90 ms", "/latency/p90_ms"),
            ("p99 ms", "/latency/p99_ms"),
            ("p99.9 ms", "/latency/p999_ms"),
            ("max ms", "/latency/max_ms"),
            ("server CPU s", "/server_cpu_s"),
            ("server CPU us/delivery", "/server_cpu_us_per_delivery"),
            ("generator busiest thread", "/gen_thread_max_util"),
            ("machine busy", "/machine_busy"),
            ("publish rejected", "/publish_rejected"),
            ("valid", "/valid"),
        ],
    }
}

fn cell(v: Option<&serde_json::Value>) -> String {
    match v {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(f)) if f.abs() >= 1000.0 => format!("{f:.0}"),
            (None, Some(f)) => format!("{f:.3}"),
            _ => n.to_string(),
        },
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A metrics-by-server table of every result in `docs` (files written with `--json`).
pub fn side_by_side(docs: &[serde_json::Value]) -> String {
    let mut cols: Vec<(String, &serde_json::Value)> = Vec::new();
    let mut scenario = "fanout".to_string();
    for d in docs {
        if let Some(sc) = d.get("scenario").and_then(|v| v.as_str()) {
            scenario = sc.to_string();
        }
        for r in d
            .get("results")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let mut name = r
                .get("server")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string();
            if let Some(rate) = r.get("rate").and_then(|v| v.as_f64()) {
                if scenario == "sweep" {
                    name = format!("{name}@{rate}");
                }
            }
            cols.push((name, r));
        }
    }
    let metrics = metrics_for(&scenario);
    let w0 = metrics
        .iter()
        .map(|(l, _)| l.len())
        .max()
        .unwrap_or(10)
        .max(10);
    let mut s = format!("{:<w0$}", "");
    let width: Vec<usize> = cols
        .iter()
        .map(|(n, r)| {
            metrics
                .iter()
                .map(|(_, p)| cell(r.pointer(p)).len())
                .chain(std::iter::once(n.len()))
                .max()
                .unwrap_or(8)
                + 2
        })
        .collect();
    for ((n, _), w) in cols.iter().zip(&width) {
        s.push_str(&format!("{n:>w$}"));
    }
    s.push('\n');
    for (label, ptr) in metrics {
        s.push_str(&format!("{label:<w0$}"));
        for ((_, r), w) in cols.iter().zip(&width) {
            s.push_str(&format!("{:>w$}", cell(r.pointer(ptr))));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_lists_every_result_as_a_column() {
        let a = serde_json::json!({"scenario": "fanout", "results": [
            {"server": "ringcast", "subscribers": 10, "loss": {"delivered": 5}, "latency": {"p99_ms": 1.5}, "valid": true}]});
        let b = serde_json::json!({"scenario": "fanout", "results": [
            {"server": "other", "subscribers": 10, "loss": {"delivered": 4}, "latency": {"p99_ms": 2.25}, "valid": false}]});
        let t = side_by_side(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("ringcast") && lines[0].contains("other"));
        let p99 = lines.iter().find(|l| l.starts_with("p99 ms")).unwrap();
        assert!(p99.contains("1.500") && p99.contains("2.250"), "{p99}");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("missing") && l.contains('-')));
    }

    #[test]
    fn knee_is_the_highest_valid_rate_within_budget() {
        let mk = |rate: f64, p99: f64, missing: u64| {
            let mut r = dummy();
            r.rate = rate;
            r.latency.p99_ms = p99;
            r.loss = crate::loss::LossReport {
                expected: 10,
                delivered: 10 - missing,
                missing,
                duplicates: 0,
                unexpected: 0,
            };
            r.valid = missing == 0;
            r
        };
        let rows = [
            mk(10.0, 5.0, 0),
            mk(20.0, 50.0, 0),
            mk(40.0, 150.0, 1),
            mk(80.0, 500.0, 0),
        ];
        let refs: Vec<&PhaseResult> = rows.iter().collect();
        assert_eq!(knee(&refs, 100.0).map(|k| k.rate), Some(20.0));
        assert_eq!(knee(&refs, 1.0).map(|k| k.rate), None);
        let svg = svg(&rows, 100.0, "t");
        assert!(svg.contains("<polyline") && svg.ends_with("</svg>\n"));
        assert_eq!(csv(&rows).lines().count(), 5);
    }

    #[test]
    fn failures_are_split_by_whose_fault_they_are() {
        let mut r = dummy();
        classify(&mut r);
        assert!(r.valid, "{r:?}");
        r.loss = crate::loss::LossReport {
            expected: 10,
            delivered: 8,
            missing: 2,
            duplicates: 1,
            unexpected: 0,
        };
        r.connections_closed = 3;
        r.gen_thread_max_util = 0.97;
        r.gen_saturated = true;
        r.publish_lag.p99_ms = 50.0;
        r.rest = Some(crate::scenario::rest::RestReport {
            throttled: 4,
            rejected: 1,
            rejected_statuses: [(401, 1)].into_iter().collect(),
            unsent_at_deadline: 7,
            unsent_blocked_by_server: 5,
            ..Default::default()
        });
        classify(&mut r);
        assert!(!r.valid);
        let srv = r.server_failures.join("\n");
        let gen = r.generator_failures.join("\n");
        for want in [
            "loss: 2 of 10",
            "duplicates: 1",
            "closed 3",
            "429",
            "401",
            "not taken: 5",
        ] {
            assert!(srv.contains(want), "{want} in {srv}");
        }
        for want in ["saturated", "p99 50.0 ms", "2 REST requests were not sent"] {
            assert!(gen.contains(want), "{want} in {gen}");
        }
        assert!(!srv.contains("saturated") && !gen.contains("loss"));
    }

    fn dummy() -> PhaseResult {
        PhaseResult {
            server: "s".into(),
            mode: crate::scenario::fanout::PublishMode::Client,
            subscribers: 1,
            channels: 1,
            payload: 100,
            rate: 1.0,
            duration_s: 1.0,
            events: 10,
            published: 10,
            publish_skipped: 0,
            publish_rejected: 0,
            rest_ok: 0,
            loss: Default::default(),
            stale: 0,
            misrouted: 0,
            connections_closed: 0,
            deliveries_per_sec: 10.0,
            latency: Default::default(),
            server_cpu_s: None,
            server_cpu_us_per_delivery: None,
            gen_cpu_s: 0.0,
            gen_thread_max_util: 0.1,
            gen_saturated: false,
            machine_util: None,
            machine_busy: None,
            load_avg_before: String::new(),
            valid: true,
            rest: None,
            publish_lag: Default::default(),
            publish_wait_server: Default::default(),
            notes: Vec::new(),
            gen_cpu_us_per_delivery: None,
            machine_sharing: String::new(),
            server_failures: Vec::new(),
            generator_failures: Vec::new(),
            procs: 1,
            max_publish_lag_ms: 10.0,
        }
    }
}
