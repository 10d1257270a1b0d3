//! `ringcast-loadtest compare --out DIR`: one report from one scenario grid run against several
//! servers, one at a time, on one machine (`loadtest/compare.sh` runs the grid and then this).
//!
//! Input, per server `S` listed in `DIR/meta.json` (`{"servers": [..], "machine": {..},
//! "versions": {..}, "grid": "..", "commands": [..]}`):
//!
//! | file | scenario |
//! |---|---|
//! | `DIR/S/sweep/sweep.json` | fan-out knee sweep (client events) |
//! | `DIR/S/fanout.json` | one fan-out point: latency percentiles, CPU per delivery |
//! | `DIR/S/connect.json` | idle connections: memory per connection, setup rate |
//! | `DIR/S/rest/sweep.json` | REST publishing sweep: triggers/s at the knee |
//! | `DIR/S/presence.json` | presence churn: every join/leave seen exactly once, latency |
//!
//! Output: `DIR/report.md` (machine, versions, commands, a Markdown table, every failure by
//! whose fault it was) and SVG charts beside it: `knee.svg`, `latency.svg`, `cpu.svg`,
//! `memory.svg`, `setup.svg`, `rest.svg`. A missing file leaves its cells `-` (a server that
//! failed a scenario still gets a column).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::report::{self, fmt_rate};
use crate::scenario::fanout::PhaseResult;

fn read(p: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn num(v: Option<&Value>, ptr: &str) -> Option<f64> {
    v?.pointer(ptr)?.as_f64()
}

/// One server's results.
struct Column {
    server: String,
    sweep: Option<Value>,
    fanout: Option<Value>,
    connect: Option<Value>,
    rest: Option<Value>,
    presence: Option<Value>,
}

impl Column {
    fn fanout_point(&self) -> Option<&Value> {
        self.fanout.as_ref()?.pointer("/results/0")
    }

    fn connect_point(&self) -> Option<&Value> {
        self.connect.as_ref()?.pointer("/results/0")
    }

    fn presence_point(&self) -> Option<&Value> {
        self.presence.as_ref()?.pointer("/results/0")
    }

    /// Knee of a sweep document (the first knee entry of this server).
    fn knee(doc: Option<&Value>, field: &str) -> Option<f64> {
        doc?.get("knees")?
            .as_array()?
            .iter()
            .find(|k| k.get("server").and_then(|s| s.as_str()) != Some("floor"))?
            .get(field)?
            .as_f64()
    }

    fn rows(doc: Option<&Value>) -> Vec<PhaseResult> {
        doc.and_then(|d| d.get("results"))
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect()
    }
}

/// A grouped bar chart: one group per server, one bar per series.
pub fn bars(
    title: &str,
    unit: &str,
    series: &[&str],
    groups: &[(String, Vec<Option<f64>>)],
) -> String {
    let (w, h, ml, mt, mb) = (900.0, 420.0, 90.0, 50.0, 70.0);
    let ph = h - mt - mb;
    let pw = w - ml - 30.0;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b))
        .max(1e-9)
        * 1.15;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="22" font-size="15">{}</text>"##,
        xml(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="14" y="{:.0}" transform="rotate(-90 14,{:.0})">{}</text>"##,
        mt + ph / 2.0 + 40.0,
        mt + ph / 2.0 + 40.0,
        xml(unit)
    );
    for i in 0..=4 {
        let v = max / 4.0 * i as f64;
        let y = mt + ph - v / max * ph;
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
            ml + pw,
            ml - 4.0,
            y + 4.0,
            short(v)
        );
    }
    let gw = pw / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / series.len().max(1) as f64;
    for (gi, (name, vals)) in groups.iter().enumerate() {
        let gx = ml + gw * gi as f64 + gw * 0.1;
        for (si, v) in vals.iter().enumerate() {
            let x = gx + bw * si as f64;
            match v {
                Some(v) => {
                    let bh = v / max * ph;
                    let _ = writeln!(
                        s,
                        r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"##,
                        mt + ph - bh,
                        bw * 0.9,
                        colors[si % colors.len()],
                        x + bw * 0.45,
                        mt + ph - bh - 3.0,
                        short(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">n/a</text>"##,
                        x + bw * 0.45,
                        mt + ph - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            gx + gw * 0.4,
            mt + ph + 18.0,
            xml(name)
        );
    }
    for (si, name) in series.iter().enumerate() {
        let x = ml + 150.0 * si as f64;
        let y = h - 18.0;
        let _ = writeln!(
            s,
            r##"<rect x="{x:.0}" y="{:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{y:.0}">{}</text>"##,
            y - 9.0,
            colors[si % colors.len()],
            x + 14.0,
            xml(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn short(v: f64) -> String {
    if v.abs() >= 1000.0 {
        fmt_rate(v)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// Writes `report.md` and the charts into `dir`; returns the Markdown.
pub fn write(dir: &Path, p99_budget_ms: f64) -> anyhow::Result<String> {
    let meta = read(&dir.join("meta.json")).unwrap_or(Value::Null);
    let servers: Vec<String> = match meta.get("servers").and_then(|s| s.as_array()) {
        Some(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
        None => {
            let mut v: Vec<String> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            v.sort();
            v
        }
    };
    anyhow::ensure!(
        !servers.is_empty(),
        "no server results in {}",
        dir.display()
    );
    let cols: Vec<Column> = servers
        .iter()
        .map(|s| {
            let d = dir.join(s);
            Column {
                server: s.clone(),
                sweep: read(&d.join("sweep").join("sweep.json")),
                fanout: read(&d.join("fanout.json")),
                connect: read(&d.join("connect.json")),
                rest: read(&d.join("rest").join("sweep.json")),
                presence: read(&d.join("presence.json")),
            }
        })
        .collect();

    // Charts.
    let mut knee_rows: Vec<PhaseResult> = Vec::new();
    for c in &cols {
        knee_rows.extend(
            Column::rows(c.sweep.as_ref())
                .into_iter()
                .filter(|r| r.server != "floor"),
        );
    }
    if !knee_rows.is_empty() {
        let title = format!(
            "fan-out knee sweep: {} subscribers, {}-byte payloads, p99 budget {p99_budget_ms} ms",
            knee_rows[0].subscribers, knee_rows[0].payload
        );
        std::fs::write(
            dir.join("knee.svg"),
            report::svg(&knee_rows, p99_budget_ms, &title),
        )?;
    }
    let group = |f: &dyn Fn(&Column) -> Vec<Option<f64>>| -> Vec<(String, Vec<Option<f64>>)> {
        cols.iter().map(|c| (c.server.clone(), f(c))).collect()
    };
    let fp = |c: &Column, p: &str| num(c.fanout_point(), p);
    let cp = |c: &Column, p: &str| num(c.connect_point(), p);
    let pp = |c: &Column, p: &str| num(c.presence_point(), p);
    let point = cols
        .iter()
        .find_map(|c| c.fanout_point())
        .map(|r| {
            format!(
                "{} subscribers, {} ev/s, {}-byte payloads",
                r["subscribers"], r["rate"], r["payload"]
            )
        })
        .unwrap_or_default();
    std::fs::write(
        dir.join("latency.svg"),
        bars(
            &format!("delivery latency percentiles ({point})"),
            "milliseconds",
            &["p50", "p90", "p99", "p99.9"],
            &group(&|c| {
                [
                    "/latency/p50_ms",
                    "/latency/p90_ms",
                    "/latency/p99_ms",
                    "/latency/p999_ms",
                ]
                .iter()
                .map(|p| fp(c, p))
                .collect()
            }),
        ),
    )?;
    std::fs::write(
        dir.join("cpu.svg"),
        bars(
            &format!("CPU per delivery ({point})"),
            "microseconds",
            &["server", "generator"],
            &group(&|c| {
                vec![
                    fp(c, "/server_cpu_us_per_delivery"),
                    fp(c, "/gen_cpu_us_per_delivery"),
                ]
            }),
        ),
    )?;
    std::fs::write(
        dir.join("memory.svg"),
        bars(
            "server memory (RSS) per idle connection",
            "bytes",
            &["RSS per connection"],
            &group(&|c| vec![cp(c, "/server_rss_per_conn")]),
        ),
    )?;
    std::fs::write(
        dir.join("setup.svg"),
        bars(
            "connection setup rate (TCP + upgrade + connection_established)",
            "connections per second",
            &["connections/s"],
            &group(&|c| vec![cp(c, "/rate_achieved")]),
        ),
    )?;
    std::fs::write(
        dir.join("rest.svg"),
        bars(
            &format!("signed REST triggers per second at the knee (p99 <= {p99_budget_ms} ms, nothing lost)"),
            "triggers per second",
            &["triggers/s"],
            &group(&|c| vec![Column::knee(c.rest.as_ref(), "knee_rate")]),
        ),
    )?;

    // The Markdown report.
    let mut md = String::from("# Side by side\n\n");
    if let Some(d) = meta.get("date").and_then(|v| v.as_str()) {
        let _ = writeln!(md, "Run {d}.");
    }
    if let Some(g) = meta.get("grid").and_then(|v| v.as_str()) {
        let _ = writeln!(
            md,
            "Grid: `{g}`. Each server ran alone, one after the other.\n"
        );
    }
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    if let Some(m) = meta.get("machine").and_then(|v| v.as_object()) {
        for (k, v) in m {
            let _ = writeln!(
                md,
                "| {k} | {} |",
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            );
        }
    }
    if let Some(r) = cols.iter().find_map(|c| c.fanout_point()) {
        if let Some(s) = r.get("machine_sharing").and_then(|v| v.as_str()) {
            let _ = writeln!(md, "| sharing (fan-out point) | {s} |");
        }
    }
    md.push_str("\n## Versions\n\n| | |\n|---|---|\n");
    if let Some(m) = meta.get("versions").and_then(|v| v.as_object()) {
        for (k, v) in m {
            let _ = writeln!(md, "| {k} | {} |", v.as_str().unwrap_or(""));
        }
    }
    md.push_str("\n## Results\n\n| Measure |");
    for c in &cols {
        let _ = write!(md, " {} |", c.server);
    }
    md.push_str("\n|---|");
    for _ in &cols {
        md.push_str("---|");
    }
    md.push('\n');
    let ms = |v: f64| format!("{v:.2}");
    let us = |v: f64| format!("{v:.3}");
    let int = |v: f64| format!("{v:.0}");
    let rate = |v: f64| fmt_rate(v);
    type Get<'a> = Box<dyn Fn(&Column) -> String + 'a>;
    let rows: Vec<(String, Get)> = vec![
        (
            format!("fan-out knee: deliveries/s at p99 <= {p99_budget_ms} ms, nothing lost"),
            Box::new(|c: &Column| {
                cell(
                    Column::knee(c.sweep.as_ref(), "knee_deliveries_per_sec"),
                    rate,
                )
            }),
        ),
        (
            format!("latency p50 ms ({point})"),
            Box::new(move |c: &Column| cell(fp(c, "/latency/p50_ms"), ms)),
        ),
        (
            "latency p99 ms".into(),
            Box::new(move |c: &Column| cell(fp(c, "/latency/p99_ms"), ms)),
        ),
        (
            "latency p99.9 ms".into(),
            Box::new(move |c: &Column| cell(fp(c, "/latency/p999_ms"), ms)),
        ),
        (
            "delivered / expected".into(),
            Box::new(
                move |c: &Column| match (fp(c, "/loss/delivered"), fp(c, "/loss/expected")) {
                    (Some(d), Some(e)) => format!("{d:.0} / {e:.0}"),
                    _ => "-".into(),
                },
            ),
        ),
        (
            "server CPU µs per delivery".into(),
            Box::new(move |c: &Column| cell(fp(c, "/server_cpu_us_per_delivery"), us)),
        ),
        (
            "generator CPU µs per delivery".into(),
            Box::new(move |c: &Column| cell(fp(c, "/gen_cpu_us_per_delivery"), us)),
        ),
        (
            "server RSS per idle connection, bytes".into(),
            Box::new(move |c: &Column| cell(cp(c, "/server_rss_per_conn"), int)),
        ),
        (
            "idle connections established".into(),
            Box::new(move |c: &Column| cell(cp(c, "/established"), int)),
        ),
        (
            "connection setup rate, conn/s".into(),
            Box::new(move |c: &Column| cell(cp(c, "/rate_achieved"), rate)),
        ),
        (
            "connection setup p99 ms".into(),
            Box::new(move |c: &Column| cell(cp(c, "/latency/p99_ms"), ms)),
        ),
        (
            format!("REST triggers/s at p99 <= {p99_budget_ms} ms, nothing lost"),
            Box::new(|c: &Column| cell(Column::knee(c.rest.as_ref(), "knee_rate"), rate)),
        ),
        (
            "presence: every join and leave seen exactly once".into(),
            Box::new(
                |c: &Column| match c.presence_point().and_then(|r| r.get("correct")) {
                    Some(Value::Bool(true)) => "yes".into(),
                    Some(Value::Bool(false)) => "NO".into(),
                    _ => "-".into(),
                },
            ),
        ),
        (
            "presence member_added p99 ms".into(),
            Box::new(move |c: &Column| cell(pp(c, "/member_added_latency/p99_ms"), ms)),
        ),
        (
            "REST requests per connection".into(),
            Box::new(|c: &Column| {
                let rows = Column::rows(c.rest.as_ref());
                rows.iter()
                    .rev()
                    .find_map(|r| {
                        r.rest
                            .as_ref()
                            .map(|x| format!("{:.1}", x.requests_per_connection))
                    })
                    .unwrap_or_else(|| "-".into())
            }),
        ),
    ];
    for (label, get) in &rows {
        let _ = write!(md, "| {label} |");
        for c in &cols {
            let _ = write!(md, " {} |", get(c));
        }
        md.push('\n');
    }
    md.push_str(
        "\nCharts: [knee](knee.svg), [latency](latency.svg), [CPU per delivery](cpu.svg), \
         [memory per idle connection](memory.svg), [setup rate](setup.svg), [REST](rest.svg).\n",
    );
    md.push_str("\n## What went wrong, by whose fault\n\n");
    let mut any = false;
    for c in &cols {
        for (what, doc) in [
            ("sweep", &c.sweep),
            ("fan-out point", &c.fanout),
            ("REST sweep", &c.rest),
        ] {
            for r in Column::rows(doc.as_ref())
                .iter()
                .filter(|r| r.server != "floor")
            {
                for f in &r.server_failures {
                    any = true;
                    let _ = writeln!(
                        md,
                        "- **{}** {what} @ {} ev/s, server: {f}",
                        c.server, r.rate
                    );
                }
                for f in &r.generator_failures {
                    any = true;
                    let _ = writeln!(
                        md,
                        "- **{}** {what} @ {} ev/s, generator: {f}",
                        c.server, r.rate
                    );
                }
                if let Some(rest) = &r.rest {
                    for m in rest.modes.iter().take(1) {
                        let _ = writeln!(md, "- {} {what} @ {} ev/s, REST {m}", c.server, r.rate);
                    }
                }
            }
        }
        if let Some(r) = c.presence_point() {
            if r.get("correct") == Some(&Value::Bool(false)) {
                any = true;
                let _ = writeln!(
                    md,
                    "- **{}** presence, server: member_added missing {} / duplicates {}, member_removed missing {} / duplicates {}, join errors {}",
                    c.server,
                    r["added_missing"],
                    r["added_duplicates"],
                    r["removed_missing"],
                    r["removed_duplicates"],
                    r["join_errors"]
                );
            }
        }
        if let Some(e) = c
            .connect_point()
            .and_then(|r| r.get("failed"))
            .and_then(|v| v.as_u64())
        {
            if e > 0 {
                any = true;
                let _ = writeln!(md, "- **{}** connect: {e} connections failed", c.server);
            }
        }
    }
    if !any {
        md.push_str("Nothing: no loss, no duplicates, no disconnects, no rejected publishes, generator never saturated or behind.\n");
    }
    if let Some(cmds) = meta.get("commands").and_then(|v| v.as_array()) {
        md.push_str("\n## Commands\n\n```text\n");
        for c in cmds {
            let _ = writeln!(md, "{}", c.as_str().unwrap_or(""));
        }
        md.push_str("```\n");
    }
    std::fs::write(dir.join("report.md"), &md)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_a_column_per_server_every_chart_and_the_failures() {
        let dir = std::env::temp_dir().join(format!("ringcast-compare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (srv, p99, correct) in [("alpha", 1.5, true), ("beta", 7.25, false)] {
            let d = dir.join(srv);
            std::fs::create_dir_all(&d).unwrap();
            let fan = serde_json::json!({"scenario": "fanout", "results": [{
                "server": srv, "subscribers": 100, "rate": 50.0, "payload": 100,
                "latency": {"p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": p99, "p999_ms": 9.0},
                "loss": {"expected": 10, "delivered": 10},
                "server_cpu_us_per_delivery": 2.0, "gen_cpu_us_per_delivery": 0.5,
                "machine_sharing": "2 CPUs; separate cores"}]});
            std::fs::write(d.join("fanout.json"), fan.to_string()).unwrap();
            let con = serde_json::json!({"scenario": "connect", "results": [{
                "server": srv, "established": 300, "failed": 0, "rate_achieved": 1234.0,
                "server_rss_per_conn": 2048.0, "latency": {"p99_ms": 3.0}}]});
            std::fs::write(d.join("connect.json"), con.to_string()).unwrap();
            let pre = serde_json::json!({"scenario": "presence", "results": [{
                "server": srv, "correct": correct, "added_missing": 2, "added_duplicates": 0,
                "removed_missing": 0, "removed_duplicates": 0, "join_errors": 0,
                "member_added_latency": {"p99_ms": 4.0}}]});
            std::fs::write(d.join("presence.json"), pre.to_string()).unwrap();
        }
        let meta = serde_json::json!({"servers": ["alpha", "beta"], "grid": "quick",
            "machine": {"CPU": "2 x test"}, "versions": {"alpha": "1"},
            "commands": ["ringcast-loadtest fanout --label alpha"]});
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
        let md = write(&dir, 200.0).unwrap();
        assert!(md.contains("| Measure | alpha | beta |"), "{md}");
        let p99 = md
            .lines()
            .find(|l| l.starts_with("| latency p99 ms"))
            .unwrap();
        assert!(p99.contains("1.50") && p99.contains("7.25"), "{p99}");
        assert!(md.contains("2 CPUs; separate cores"));
        assert!(
            md.contains("**beta** presence, server: member_added missing 2"),
            "{md}"
        );
        assert!(!md.contains("**alpha** presence"));
        assert!(md.contains("ringcast-loadtest fanout --label alpha"));
        for chart in ["latency", "cpu", "memory", "setup", "rest"] {
            let svg = std::fs::read_to_string(dir.join(format!("{chart}.svg"))).unwrap();
            assert!(svg.contains("alpha") && svg.contains("beta"), "{chart}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bars_draw_every_value_and_mark_missing_ones() {
        let s = bars(
            "t",
            "u",
            &["a", "b"],
            &[
                ("x".into(), vec![Some(1.0), None]),
                ("y".into(), vec![Some(2500.0), Some(3.0)]),
            ],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(
            s.matches("<rect x=").count(),
            3 + 2,
            "3 bars + 2 legend boxes"
        );
        assert!(s.contains("n/a") && s.contains("2.5k"));
    }
}
