//! Watching the server under test from outside: its `/metrics` counters (what the server says
//! it counted), and its resident memory and open files from `/proc/PID` (sampled on a thread of
//! their own, peaks kept). Used by `abuse` and `soak`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::gen::lock;
use crate::procfs;

/// Counter samples by `name{labels}` (exactly as the exposition writes them).
pub type Counters = BTreeMap<String, f64>;

/// Reads `GET {prefix}/metrics` (Prometheus text format) from `addr`, over TLS when `tls`
/// (trusting the system's roots and `ca`), bounded by `timeout`.
pub fn fetch_metrics(
    addr: SocketAddr,
    host: &str,
    prefix: &str,
    tls: Option<Option<&std::path::Path>>,
    timeout: Duration,
) -> anyhow::Result<Counters> {
    let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!("GET {prefix}/metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    // Bounded: the server closes (Connection: close); the read timeout ends a stall.
    match tls {
        None => {
            let mut s = s;
            s.write_all(req.as_bytes())?;
            s.take(64 << 20).read_to_end(&mut buf)?;
        }
        Some(ca) => {
            let config = crate::tls::client_config(ca).map_err(|e| anyhow::anyhow!(e))?;
            let conn = rustls::ClientConnection::new(config, crate::tls::server_name(host)?)?;
            let mut s = rustls::StreamOwned::new(conn, s);
            s.write_all(req.as_bytes())?;
            // A server that closes without close_notify after the whole answer is fine.
            match s.take(64 << 20).read_to_end(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head from {addr}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "200", "GET /metrics answered {status}");
    Ok(parse_metrics(body))
}

/// The samples of a Prometheus text exposition (comments skipped).
pub fn parse_metrics(body: &str) -> Counters {
    let mut out = Counters::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                out.insert(k.to_string(), v);
            }
        }
    }
    out
}

/// The counters that moved between two scrapes among those whose key starts with one of
/// `prefixes`.
pub fn delta(before: &Counters, after: &Counters, prefixes: &[&str]) -> Counters {
    after
        .iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Sum of the deltas of every key starting with `prefix`.
pub fn sum_prefix(d: &Counters, prefix: &str) -> f64 {
    d.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Open file descriptors of a process (`/proc/PID/fd`).
pub fn open_files(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// The process listening on TCP `port` (IPv4 or IPv6), from `/proc/net/tcp*` and the
/// `socket:[inode]` links under `/proc/*/fd` (only processes this user may read).
pub fn find_listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(t) = std::fs::read_to_string(f) else {
            continue;
        };
        inodes.extend(listening_inodes(&t, port));
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| l.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of sockets in LISTEN state (0A) on `port` in a `/proc/net/tcp` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1].ends_with(&hex) && f[3] == "0A")
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// One reading of the server process.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub open_files: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Option<ProcSample> {
        Some(ProcSample {
            rss_bytes: procfs::rss(pid)?,
            open_files: open_files(pid)?,
        })
    }
}

#[derive(Default)]
struct Peaks {
    peak: ProcSample,
    last: ProcSample,
}

/// Samples a process every `interval` on a thread of its own, keeping the peaks since the last
/// [`Sampler::take_peak`].
pub struct Sampler {
    state: Arc<Mutex<Peaks>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub pid: u32,
}

impl Sampler {
    pub fn start(pid: u32, interval: Duration) -> Sampler {
        let state = Arc::new(Mutex::new(Peaks::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("server-sampler".into())
            .spawn(move || {
                while !stop2.load(Relaxed) {
                    if let Some(x) = ProcSample::read(pid) {
                        let mut p = lock(&s2);
                        p.last = x;
                        p.peak.rss_bytes = p.peak.rss_bytes.max(x.rss_bytes);
                        p.peak.open_files = p.peak.open_files.max(x.open_files);
                    }
                    std::thread::sleep(interval);
                }
            })
            .ok();
        Sampler {
            state,
            stop,
            thread,
            pid,
        }
    }

    /// The peaks since the previous call (then restarted from the current reading).
    pub fn take_peak(&self) -> ProcSample {
        let now = ProcSample::read(self.pid);
        let mut p = lock(&self.state);
        if let Some(x) = now {
            p.peak.rss_bytes = p.peak.rss_bytes.max(x.rss_bytes);
            p.peak.open_files = p.peak.open_files.max(x.open_files);
            p.last = x;
        }
        let out = p.peak;
        p.peak = p.last;
        out
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_parses_and_deltas_keep_what_moved() {
        let a = parse_metrics(
            "# HELP x y\n# TYPE x counter\nx_total{reason=\"a\"} 3\nx_total{reason=\"b\"} 1\ny 5\n",
        );
        let b = parse_metrics("x_total{reason=\"a\"} 7\nx_total{reason=\"b\"} 1\ny 9\n");
        let d = delta(&a, &b, &["x_total"]);
        assert_eq!(d.len(), 1);
        assert_eq!(d["x_total{reason=\"a\"}"], 4.0);
        assert_eq!(sum_prefix(&d, "x_total"), 4.0);
    }

    #[test]
    fn listening_sockets_are_found_by_port() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1771 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0\n   1: 0100007F:1771 0100007F:9999 01 00000000:00000000 00:00000000 00000000  1000        0 999 1 0\n";
        assert_eq!(listening_inodes(t, 6001), vec![12345]);
        assert!(listening_inodes(t, 6002).is_empty());
    }

    #[test]
    fn this_process_is_sampled() {
        let s = ProcSample::read(std::process::id()).expect("own /proc");
        assert!(s.rss_bytes > 0 && s.open_files > 0);
    }
}
