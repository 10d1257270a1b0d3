//! Shared by the integration tests: an in-process Ringcast, a bounded run of the binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ringcast_engine::{Engine, RawConfig, RunningEngine};

pub const BIN: &str = env!("CARGO_BIN_EXE_ringcast-loadtest");

pub fn engine() -> RunningEngine {
    engine_with(false)
}

/// The engine, optionally with the control plane (the Pusher HTTP API) on the same port.
pub fn engine_with(rest: bool) -> RunningEngine {
    engine_with_extra(rest, "")
}

/// The engine with the control plane, speaking TLS (`[tls]`) with this certificate and key.
pub fn engine_tls(cert: &std::path::Path, key: &std::path::Path) -> RunningEngine {
    engine_with_extra(
        true,
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 (`server.pem`, `server.key`)
/// in `dir`, made with the openssl CLI.
pub fn test_pki(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=loadtest CA",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "9",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

fn engine_with_extra(rest: bool, extra: &str) -> RunningEngine {
    let raw = RawConfig::from_toml(&format!(
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
        {extra}"#,
    ))
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

pub fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ringcast-loadtest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("temp dir");
    p
}

/// Runs the binary with a hard time limit and returns the JSON it wrote.
pub fn run(args: &[&str], json: &PathBuf, limit: Duration) -> serde_json::Value {
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

pub fn assert_exact(r: &serde_json::Value) {
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

/// The engine and the control plane (the HTTP API on the same port) from a TOML config.
pub fn engine_from(toml: &str) -> RunningEngine {
    let raw = RawConfig::from_toml(toml).expect("config parses");
    let config = raw.resolve(2).expect("config resolves");
    let engine = Engine::bind(config, None).expect("bind");
    let cp = ringcast_control_plane::ControlPlane::new(
        engine.handle(),
        ringcast_control_plane::ApiConfig::default(),
    );
    engine
        .start(Some(
            std::sync::Arc::new(cp) as std::sync::Arc<dyn ringcast_engine::HttpService>
        ))
        .expect("start")
}
