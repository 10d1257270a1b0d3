//! The panic policy: a panic in any task on a core aborts the process (a supervisor restarts
//! it), and `/health` reports any core that has stopped.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::*;

fn get_health(s: &Server) -> String {
    let mut h = TcpStream::connect(s.addr).unwrap();
    h.set_read_timeout(Some(WAIT)).unwrap();
    h.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = h.read_to_string(&mut resp);
    resp
}

const CHILD_ENV: &str = "RINGCAST_TEST_PANIC_CHILD";

/// Default policy: a panic on one core takes the whole process down with SIGABRT (never a
/// process that looks alive with a dead core). The engine runs in a child process (this test
/// binary re-executed), because the abort ends it.
#[test]
fn a_panic_on_a_core_aborts_the_process() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let s = Server::start(2, "");
        let mut c = s.connect();
        c.subscribe("before-the-panic");
        s.handle().inject_panic(1).expect("queued");
        // The abort ends this process. If the policy is missing, the process survives: report
        // that with a distinct exit code once the wait is over.
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            std::thread::park_timeout(WAIT);
        }
        eprintln!("stopped cores: {:?}", s.handle().stopped_cores());
        std::process::exit(3);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_on_a_core_aborts_the_process",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("child runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("injected panic on core 1") && stderr.contains("aborting"),
        "{stderr}"
    );
}

/// With the abort turned off by the test hook, the panicked core stays stopped: `/health`
/// answers 503 naming it (served by the other core), and the engine reports it.
#[test]
fn health_reports_a_stopped_core() {
    let s = Server::start(2, "");
    let h = s.handle();
    assert!(get_health(&s).starts_with("HTTP/1.1 200"));
    assert!(h.stopped_cores().is_empty());
    h.set_abort_on_panic(false);
    h.inject_panic(1).expect("queued");
    let until = Instant::now() + WAIT;
    while h.stopped_cores().is_empty() {
        assert!(Instant::now() < until, "core 1 never stopped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(h.stopped_cores(), vec![1]);
    // Core 1's listener is closed with its runtime, so every request reaches core 0.
    let resp = get_health(&s);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").expect("head ends") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(v, serde_json::json!({"ok": false, "stopped_cores": [1]}));
}
