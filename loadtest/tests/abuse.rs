//! `abuse` and `soak` against an in-process Ringcast (engine and HTTP API on one port) with
//! admission limits small enough that the abusers meet them within a second: checks the report's
//! structure, that the honest clients lost nothing, and that what the abusers saw refused was
//! counted by the server by reason. Counts only, never speed (no timing thresholds).

mod common;

use std::time::Duration;

use common::{engine_from, run, test_pki, tmp};

/// Like loadtest/abuse.toml, scaled down: honest clients (127.0.0.1-4) exempt, abusers
/// (127.0.0.64-87, two per attack) limited; short head timeout, small message and outbound limits.
const CONFIG: &str = r#"
listen = "127.0.0.1:0"
workers = 2
shutdown_grace_ms = 500
handshake_timeout_ms = 500
max_message_bytes = 4096
outbound_budget_bytes = 16384
control_messages_per_sec = 20
[admission]
limit_exempt = ["127.0.0.0/29"]
max_connections_per_ip = 40
new_connections_per_ip_per_sec = 10
[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
client_events = true
client_events_per_sec = 100000
"#;

fn counted(phase: &serde_json::Value, key: &str) -> f64 {
    phase["server_counted"]
        .as_object()
        .expect("server_counted")
        .iter()
        .filter(|(k, _)| k.starts_with(key))
        .map(|(_, v)| v.as_f64().unwrap_or(0.0))
        .sum()
}

fn seen(phase: &serde_json::Value, attack: &str, outcome: &str) -> u64 {
    phase["attacks"]
        .as_array()
        .expect("attacks")
        .iter()
        .filter(|a| a["attack"] == attack)
        .flat_map(|a| a["outcomes"].as_object().expect("outcomes").iter())
        .filter(|(k, _)| k.starts_with(outcome))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn abuse_phases_keep_honest_clients_whole_and_count_every_refusal() {
    let e = engine_from(CONFIG);
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("abuse");
    let pid = std::process::id().to_string();
    let v = run(
        &[
            "abuse",
            "--ws-url",
            &url,
            "--subscribers",
            "20",
            "--rate",
            "20",
            "--duration",
            "1",
            "--drain",
            "3",
            "--abuse-connections",
            "3",
            "--idle-connections",
            "20",
            "--flood-rate",
            "200",
            "--abuse-sources",
            "24",
            "--timeout",
            "5",
            "--server-pid",
            &pid,
            // The loaded test machine's timing is not what this test is about.
            "--max-p99-ratio",
            "1000000",
            "--max-publish-lag-ms",
            "100000",
        ],
        &dir.join("out.json"),
        Duration::from_secs(300),
    );
    let rep = &v["report"];
    let phases = rep["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "quiet",
            "slow-loris",
            "half-open",
            "idle",
            "slow-consumer",
            "subscribe-flood",
            "oversized",
            "fragmented",
            "ping-flood",
            "bad-signature",
            "bad-auth",
            "malformed-json",
            "churn",
            "all-together"
        ]
    );
    for p in phases {
        // The honest fan-out lost nothing in any phase, and no honest connection was closed.
        let h = &p["honest"];
        assert!(h["loss"]["expected"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(
            h["loss"]["delivered"], h["loss"]["expected"],
            "{}: {h}",
            p["name"]
        );
        assert_eq!(h["loss"]["missing"].as_u64(), Some(0), "{h}");
        assert_eq!(h["connections_closed"].as_u64(), Some(0), "{h}");
        assert!(p["peak"]["rss_bytes"].as_u64().unwrap() > 0, "{p}");
        assert!(p["peak"]["open_files"].as_u64().unwrap() > 0, "{p}");
        if p["name"] != "quiet" {
            assert!(p["p99_ratio"].as_f64().is_some(), "{p}");
            assert!(!p["attacks"].as_array().unwrap().is_empty(), "{p}");
        }
    }
    let by = |n: &str| phases.iter().find(|p| p["name"] == n).unwrap();
    // Each attack was refused the way the server's limits say, and counted by reason.
    let p = by("bad-signature");
    assert!(seen(p, "bad-signature", "http 401") > 0, "{p}");
    assert!(
        counted(
            p,
            "ringcast_http_refused_total{reason=\"unauthenticated_before_body\"}"
        ) > 0.0,
        "{p}"
    );
    let p = by("oversized");
    assert!(seen(p, "oversized", "close 1009") > 0, "{p}");
    assert!(
        counted(
            p,
            "ringcast_connections_closed_total{reason=\"protocol_error\"}"
        ) > 0.0,
        "{p}"
    );
    let p = by("fragmented");
    assert!(seen(p, "fragmented", "close 1009") > 0, "{p}");
    let p = by("malformed-json");
    assert!(seen(p, "malformed-json", "pusher:error") > 0, "{p}");
    assert!(counted(p, "ringcast_protocol_errors_total") > 0.0, "{p}");
    let p = by("bad-auth");
    assert!(seen(p, "bad-auth", "pusher:subscription_error") > 0, "{p}");
    assert!(counted(p, "ringcast_auth_failures_total") > 0.0, "{p}");
    let p = by("subscribe-flood");
    assert!(
        seen(p, "subscribe-flood", "pusher:error - Too many") > 0,
        "{p}"
    );
    assert!(
        counted(p, "ringcast_control_messages_rate_limited_total") > 0.0,
        "{p}"
    );
    let p = by("ping-flood");
    assert!(seen(p, "ping-flood", "close 4301") > 0, "{p}");
    assert!(
        counted(
            p,
            "ringcast_connections_closed_total{reason=\"ping_rate_limit\"}"
        ) > 0.0,
        "{p}"
    );
    let p = by("churn");
    assert!(seen(p, "churn", "refused:") > 0, "{p}");
    assert!(
        counted(
            p,
            "ringcast_connections_refused_total{reason=\"new_connections_per_ip_per_sec\"}"
        ) > 0.0,
        "{p}"
    );
    let p = by("slow-loris");
    assert!(seen(p, "slow-loris", "") > 0, "{p}");
    assert!(
        counted(
            p,
            "ringcast_connections_closed_total{reason=\"bad_handshake\"}"
        ) > 0.0,
        "{p}"
    );
    // The goals are computed; loss and counting must pass (the timing goals are not asserted).
    let goals = rep["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 5, "{goals:?}");
    for g in goals {
        assert!(g["pass"].is_boolean() && g["detail"].is_string(), "{g}");
    }
    assert_eq!(goals[0]["goal"], "no loss for honest clients");
    assert_eq!(goals[0]["pass"], true, "{}", goals[0]);
    assert_eq!(
        goals[4]["goal"],
        "every rejected abuser counted by reason in /metrics"
    );
    assert_eq!(goals[4]["pass"], true, "{}", goals[4]);
    e.shutdown_and_join();
}

/// The CPUs this process may run on (`Cpus_allowed_list`).
fn allowed_cpus() -> Vec<usize> {
    let st = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = st
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string();
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

/// The flags every small abuse run in these tests shares: 10 honest subscribers at 20 ev/s
/// for 1 s, 2 connections per attack from 24 abuser addresses, and tolerances so wide that the
/// loaded test machine's timing never decides a goal (counts are what is checked).
fn small_run(pid: &str) -> [&str; 22] {
    [
        "--subscribers",
        "10",
        "--rate",
        "20",
        "--duration",
        "1",
        "--drain",
        "3",
        "--abuse-connections",
        "2",
        "--flood-rate",
        "100",
        "--abuse-sources",
        "24",
        "--timeout",
        "5",
        "--server-pid",
        pid,
        "--max-p99-ratio",
        "1000000",
        "--max-publish-lag-ms",
        "100000",
    ]
}

/// Every phase delivered exactly what was expected to the honest clients, none closed.
fn assert_honest_whole(rep: &serde_json::Value) {
    let phases = rep["phases"].as_array().expect("phases");
    assert!(phases.len() >= 2, "{rep}");
    for p in phases {
        let h = &p["honest"];
        assert!(h["loss"]["expected"].as_u64().unwrap() > 0, "{h}");
        assert_eq!(
            h["loss"]["delivered"], h["loss"]["expected"],
            "{}: {h}",
            p["name"]
        );
        assert_eq!(h["connections_closed"].as_u64(), Some(0), "{h}");
    }
    assert_eq!(rep["goals"][0]["goal"], "no loss for honest clients");
    assert_eq!(rep["goals"][0]["pass"], true, "{}", rep["goals"][0]);
}

/// Attackers and honest clients pinned apart (`--attack-cpus`, `--honest-cpus`): the run
/// completes with no honest loss, and the report's `sharing` section records the pinning.
#[test]
fn pinned_abuse_run_records_the_sharing_and_keeps_honest_clients_whole() {
    let e = engine_from(CONFIG);
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("abuse-pinned");
    let pid = std::process::id().to_string();
    let cpus = allowed_cpus();
    let (attack, honest) = (cpus[cpus.len() - 1], cpus[0]);
    let v = run(
        &[
            &[
                "abuse",
                "--ws-url",
                &url,
                "--attacks",
                "ping-flood,malformed-json",
                "--attack-cpus",
                &attack.to_string(),
                "--honest-cpus",
                &honest.to_string(),
            ][..],
            // The run's size and the tolerances every small abuse run shares.
            &small_run(&pid),
        ]
        .concat(),
        &dir.join("out.json"),
        Duration::from_secs(120),
    );
    let rep = &v["report"];
    assert_honest_whole(rep);
    let sh = &rep["sharing"];
    assert_eq!(sh["attack_cpus"], serde_json::json!([attack]), "{sh}");
    assert_eq!(sh["honest_cpus"], serde_json::json!([honest]), "{sh}");
    assert!(
        sh["server_cpus"].as_array().is_some_and(|c| !c.is_empty()),
        "{sh}"
    );
    let summary = sh["summary"].as_str().expect("summary");
    assert!(
        summary.contains(&format!("attackers on CPU {attack}")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("honest clients on CPU {honest}")),
        "{summary}"
    );
    // The attackers ran (pinned) and were refused as configured.
    let flood = rep["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ping-flood")
        .expect("ping-flood phase");
    assert!(seen(flood, "ping-flood", "close 4301") > 0, "{flood}");
    e.shutdown_and_join();
}

/// The abusers speak TLS against a `wss://` listener (`--tls-ca`): the run completes with no
/// honest loss, the attacks that need a TLS session (a wrongly signed API request over https,
/// pings and junk over wss) reached the server and were refused, and every refusal was counted.
#[test]
fn abuse_run_over_tls_keeps_honest_clients_whole() {
    let dir = tmp("abuse-tls");
    test_pki(&dir);
    let e = engine_from(&format!(
        "{CONFIG}\n[tls]\ncert = {:?}\nkey = {:?}\n",
        dir.join("server.pem").display().to_string(),
        dir.join("server.key").display().to_string()
    ));
    let url = format!("wss://{}", e.local_addr());
    let ca = dir.join("ca.pem");
    let pid = std::process::id().to_string();
    let v = run(
        &[
            &[
                "abuse",
                "--ws-url",
                &url,
                "--tls-ca",
                ca.to_str().expect("utf-8 path"),
                "--attacks",
                "slow-loris,ping-flood,bad-signature,malformed-json",
                "--no-together",
            ][..],
            // The run's size and the tolerances every small abuse run shares.
            &small_run(&pid),
        ]
        .concat(),
        &dir.join("out.json"),
        Duration::from_secs(120),
    );
    let rep = &v["report"];
    assert_honest_whole(rep);
    let by = |n: &str| {
        rep["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("no {n} phase"))
            .clone()
    };
    let p = by("bad-signature");
    assert!(seen(&p, "bad-signature", "http 401") > 0, "{p}");
    let p = by("ping-flood");
    assert!(seen(&p, "ping-flood", "close 4301") > 0, "{p}");
    let p = by("malformed-json");
    assert!(seen(&p, "malformed-json", "pusher:error") > 0, "{p}");
    let p = by("slow-loris");
    assert!(seen(&p, "slow-loris", "") > 0, "{p}");
    // The goal that every refusal was counted holds over TLS too (a connection refused at
    // accept is seen as a TLS handshake cut short, and counted by its reason).
    assert_eq!(rep["goals"][4]["pass"], true, "{}", rep["goals"][4]);
    e.shutdown_and_join();
}

#[test]
fn soak_samples_and_checks_flatness() {
    let e = engine_from(CONFIG);
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("soak");
    let pid = std::process::id().to_string();
    let out = dir.join("soak");
    let v = run(
        &[
            "soak",
            "--ws-url",
            &url,
            "--subscribers",
            "20",
            "--rate",
            "20",
            "--minutes",
            "0.05",
            "--sample-secs",
            "1",
            "--warmup-secs",
            "0",
            "--churn-rate",
            "5",
            "--presence-rate",
            "5",
            "--presence-hold-ms",
            "100",
            "--drain",
            "3",
            "--server-pid",
            &pid,
            "--out",
            out.to_str().unwrap(),
            "--max-publish-lag-ms",
            "100000",
        ],
        &dir.join("out.json"),
        Duration::from_secs(120),
    );
    let rep = &v["report"];
    let samples = rep["samples"].as_array().expect("samples");
    assert!(samples.len() >= 2, "{rep}");
    for s in samples {
        assert!(s["rss_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(s["open_files"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["exact"], true, "{s}");
        assert_eq!(s["delivered"], s["expected"], "{s}");
    }
    assert!(
        rep["churn"]["connections_ok"].as_u64().unwrap() > 0,
        "{rep}"
    );
    assert!(rep["churn"]["joins_ok"].as_u64().unwrap() > 0, "{rep}");
    let goals = rep["goals"].as_array().expect("goals");
    let names: Vec<&str> = goals.iter().map(|g| g["goal"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "RSS within 10% after the warm-up",
            "open files back to the baseline at the end",
            "no loss"
        ]
    );
    assert_eq!(goals[2]["pass"], true, "{}", goals[2]);
    for g in goals {
        assert!(g["pass"].is_boolean(), "{g}");
    }
    let svg = std::fs::read_to_string(out.join("soak.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 3);
    let csv = std::fs::read_to_string(out.join("soak.csv")).expect("csv");
    assert_eq!(csv.lines().count(), samples.len() + 1);
    e.shutdown_and_join();
}
