//! Smoke runs of every scenario against an in-process Ringcast engine on 127.0.0.1:0 (and the
//! floor server for REST publishing). They check counts (delivered == expected, no loss, every
//! join seen exactly once), never speed, and each takes a few seconds.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ringcast_engine::{Engine, RawConfig, RunningEngine};

const BIN: &str = env!("CARGO_BIN_EXE_ringcast-loadtest");

fn engine() -> RunningEngine {
    engine_with(false)
}

/// The engine, optionally with the control plane (the Pusher HTTP API) on the same port.
fn engine_with(rest: bool) -> RunningEngine {
    let raw = RawConfig::from_toml(
        r#"
        listen = "127.0.0.1:0"
        workers = 2
        shutdown_grace_ms = 500
        [[apps]]
        id = "app-id"
        key = "app-key"
        secret = "app-secret"
        client_events = true
        client_events_per_sec = 100000
        "#,
    )
    .expect("config parses");
    let config = raw.resolve(2).expect("config resolves");
    let engine = Engine::bind(config, None).expect("bind");
    let http: Option<std::sync::Arc<dyn ringcast_engine::HttpService>> = rest.then(|| {
        let cp = ringcast_control_plane::ControlPlane::new(
            engine.handle(),
            ringcast_control_plane::ApiConfig::default(),
        );
        std::sync::Arc::new(cp) as std::sync::Arc<dyn ringcast_engine::HttpService>
    });
    engine.start(http).expect("start")
}

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ringcast-loadtest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("temp dir");
    p
}

/// Runs the binary with a hard time limit and returns the JSON it wrote.
fn run(args: &[&str], json: &PathBuf, limit: Duration) -> serde_json::Value {
    let mut child = Command::new(BIN)
        .args(args)
        .args([
            "--quiet",
            "--threads",
            "1",
            "--json",
            json.to_str().expect("utf-8 path"),
        ])
        .spawn()
        .expect("spawn ringcast-loadtest");
    let until = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringcast-loadtest {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "ringcast-loadtest {args:?} failed: {status}"
    );
    let text = std::fs::read_to_string(json).expect("json written");
    serde_json::from_str(&text).expect("valid json")
}

fn assert_exact(r: &serde_json::Value) {
    let loss = &r["loss"];
    let expected = loss["expected"].as_u64().expect("expected");
    assert!(expected > 0, "{r}");
    assert_eq!(loss["delivered"].as_u64(), Some(expected), "{r}");
    assert_eq!(loss["missing"].as_u64(), Some(0), "{r}");
    assert_eq!(loss["duplicates"].as_u64(), Some(0), "{r}");
    assert_eq!(loss["unexpected"].as_u64(), Some(0), "{r}");
    assert_eq!(r["stale"].as_u64(), Some(0), "{r}");
    assert_eq!(r["publish_rejected"].as_u64(), Some(0), "{r}");
    assert_eq!(r["latency"]["count"].as_u64(), Some(expected), "{r}");
}

#[test]
fn fanout_with_client_events_delivers_everything_and_measures_the_floor() {
    let e = engine();
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("fanout");
    let v = run(
        &[
            "fanout",
            "--ws-url",
            &url,
            "--subscribers",
            "60",
            "--channels",
            "3",
            "--rate",
            "60",
            "--duration",
            "1.5",
            "--publishers",
            "2",
            "--label",
            "ringcast",
            "--floor",
            "--floor-workers",
            "1",
            "--drain",
            "2",
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    );
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "floor + ringcast");
    assert_eq!(results[0]["server"], "floor");
    for r in results {
        assert_exact(r);
        // 90 events over 3 channels, 20 subscribers each.
        assert_eq!(r["loss"]["expected"].as_u64(), Some(90 * 20));
    }
    assert!(v["ratio_to_floor"]["deliveries_per_sec"].as_f64().is_some());
    e.shutdown_and_join();
}

#[test]
fn sweep_writes_csv_json_svg_and_finds_a_knee() {
    let e = engine();
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("sweep");
    let out = dir.join("sweep");
    let v = run(
        &[
            "sweep",
            "--ws-url",
            &url,
            "--subscribers",
            "20",
            "--rates",
            "20,40",
            "--duration",
            "1",
            "--p99-budget",
            "1000",
            "--drain",
            "2",
            "--label",
            "ringcast",
            "--out",
            out.to_str().expect("utf-8"),
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    );
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for r in results {
        assert_exact(r);
    }
    assert_eq!(
        v["knees"][0]["knee_rate"].as_f64(),
        Some(40.0),
        "{}",
        v["knees"]
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let svg = std::fs::read_to_string(out.join("sweep.svg")).expect("svg");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    e.shutdown_and_join();
}

#[test]
fn connect_opens_and_holds_every_connection() {
    let e = engine();
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("connect");
    let v = run(
        &[
            "connect",
            "--ws-url",
            &url,
            "--connections",
            "300",
            "--rate",
            "1000",
            "--hold",
            "0.2",
            "--server-pid",
            &std::process::id().to_string(),
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    );
    let r = &v["results"][0];
    assert_eq!(r["established"].as_u64(), Some(300), "{r}");
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    assert_eq!(r["still_open_after_hold"].as_u64(), Some(300), "{r}");
    assert_eq!(r["latency"]["count"].as_u64(), Some(300), "{r}");
    assert!(r["server_rss_after"].as_u64().is_some(), "{r}");
    e.shutdown_and_join();
}

#[test]
fn presence_churn_is_seen_exactly_once_by_every_resident() {
    let e = engine();
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("presence");
    let v = run(
        &[
            "presence",
            "--ws-url",
            &url,
            "--residents",
            "3",
            "--churners",
            "4",
            "--rate",
            "10",
            "--duration",
            "1.5",
            "--hold-ms",
            "100",
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    );
    let r = &v["results"][0];
    assert_eq!(r["correct"], true, "{r}");
    assert_eq!(r["joins"].as_u64(), Some(15), "{r}");
    assert_eq!(r["added_seen"].as_u64(), Some(45), "{r}");
    assert_eq!(r["removed_seen"].as_u64(), Some(45), "{r}");
    e.shutdown_and_join();
}

#[test]
fn rest_publishing_against_the_floor_is_exact() {
    // The floor speaks the REST trigger endpoint (unsigned); the harness signs anyway.
    let mut floor = Command::new(BIN)
        .args(["floor", "--workers", "1", "--max-secs", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn floor");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = floor.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("floor address");
    }
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .expect("address")
        .to_string();
    let dir = tmp("rest");
    let v = run(
        &[
            "fanout",
            "--ws-url",
            &format!("ws://{addr}"),
            "--publish",
            "rest",
            "--publishers",
            "2",
            "--subscribers",
            "10",
            "--channels",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
            "--label",
            "floor",
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    );
    let _ = floor.kill();
    let _ = floor.wait();
    let r = &v["results"][0];
    assert_exact(r);
    assert_eq!(r["rest_ok"].as_u64(), Some(200), "{r}");
}

#[test]
fn rest_publishing_against_ringcast_is_exact() {
    let e = engine_with(true);
    let url = format!("ws://{}", e.local_addr());
    let dir = tmp("rest-ringcast");
    let v = run(
        &[
            "fanout",
            "--ws-url",
            &url,
            "--publish",
            "rest",
            "--publishers",
            "2",
            "--subscribers",
            "10",
            "--channels",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
            "--label",
            "ringcast",
        ],
        &dir.join("out.json"),
        Duration::from_secs(60),
    );
    let r = &v["results"][0];
    assert_exact(r);
    // Every signed trigger was accepted (2xx).
    assert_eq!(r["rest_ok"].as_u64(), Some(200), "{r}");
    e.shutdown_and_join();
}
