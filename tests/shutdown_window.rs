//! A SIGINT/SIGTERM sent the instant the server reports ready is handled as a graceful
//! shutdown (exit code 0), never the default action that kills the process (and drops its
//! clients with 1006). Before the fix the handlers were installed only after the readiness line.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 10;
const WAIT: Duration = Duration::from_secs(20);

fn signal_at_readiness(sig: libc::c_int) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ringcast starts");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("readiness line");
    assert!(line.contains("listening on"), "{line:?}");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0);
    let until = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("ringcast did not exit within {WAIT:?} of signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        (status.signal(), status.code()),
        (None, Some(0)),
        "signal {sig} at readiness: {status:?} (killed by the signal = handlers not installed yet)"
    );
}

#[test]
fn sigint_at_the_instant_of_readiness_is_a_graceful_shutdown() {
    for _ in 0..RUNS {
        signal_at_readiness(libc::SIGINT);
    }
}

#[test]
fn sigterm_at_the_instant_of_readiness_is_a_graceful_shutdown() {
    for _ in 0..RUNS {
        signal_at_readiness(libc::SIGTERM);
    }
}
