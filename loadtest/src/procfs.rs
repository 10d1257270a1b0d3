//! Reading CPU time and memory from /proc: the server's (`--server-pid`), the generator's own
//! threads, and the kernel's socket memory (/proc/net/sockstat).

use serde::Serialize;

/// Clock ticks per second for /proc CPU times.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime in seconds from a `stat` file's content.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_sec())
}

/// CPU seconds used so far by process `pid` (all threads).
pub fn process_cpu(pid: u32) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds used so far by thread `tid` of this process.
pub fn thread_cpu(tid: i32) -> Option<f64> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?)
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A `kB` field (e.g. `VmRSS`) of /proc/PID/status, in bytes.
pub fn status_field(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&s, field)
}

pub fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            if let Some(v) = rest.strip_prefix(':') {
                let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
                return Some(kb * 1024);
            }
        }
    }
    None
}

/// Resident set size of `pid` in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_field(&pid.to_string(), "VmRSS")
}

/// Our own resident set size in bytes.
pub fn self_rss() -> Option<u64> {
    status_field("self", "VmRSS")
}

/// TCP socket counters of the network namespace (both ends of loopback connections count).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SockStat {
    pub tcp_inuse: u64,
    pub tcp_alloc: u64,
    /// Pages of kernel memory charged to TCP sockets (buffers).
    pub tcp_mem_pages: u64,
}

impl SockStat {
    pub fn read() -> Option<SockStat> {
        parse_sockstat(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
    }

    pub fn mem_bytes(&self) -> u64 {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        self.tcp_mem_pages * if page > 0 { page as u64 } else { 4096 }
    }
}

pub fn parse_sockstat(s: &str) -> Option<SockStat> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = f.iter().position(|x| *x == name)?;
        f.get(i + 1)?.parse().ok()
    };
    Some(SockStat {
        tcp_inuse: get("inuse")?,
        tcp_alloc: get("alloc").unwrap_or(0),
        tcp_mem_pages: get("mem").unwrap_or(0),
    })
}

/// Total slab memory the kernel uses for TCP socket objects (`TCP`, `tcp_bind_bucket`, ...) from
/// /proc/slabinfo, when readable (root), in bytes.
pub fn tcp_slab_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let mut total = 0u64;
    for line in s.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let name = f[0];
        if name == "TCP"
            || name.starts_with("tcp_")
            || name == "request_sock_TCP"
            || name == "sock_inode_cache"
        {
            let active: u64 = f[1].parse().unwrap_or(0);
            let size: u64 = f[3].parse().unwrap_or(0);
            total += active * size;
        }
    }
    Some(total)
}

/// Machine-wide CPU time from /proc/stat: (busy, total) in clock ticks, all CPUs. Busy includes
/// softirq work the kernel defers to ksoftirqd, which no process's own counters show.
pub fn machine_cpu() -> Option<(u64, u64)> {
    parse_machine_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

pub fn parse_machine_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Busy fraction of the whole machine between two [`machine_cpu`] readings.
pub fn busy_between(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (a?, b?);
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// The load average line (1, 5, 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A CPU list as `/proc/*/status` writes it (`0-1,3`) to a sorted set.
pub fn parse_cpu_set(s: &str) -> std::collections::BTreeSet<usize> {
    parse_cpu_list(s).unwrap_or_default().into_iter().collect()
}

/// The CPUs the threads of `pid` may run on (union over its threads' `Cpus_allowed_list`).
pub fn process_cpus(pid: &str) -> Option<std::collections::BTreeSet<usize>> {
    let mut all = std::collections::BTreeSet::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(t) = t else { continue };
        let Ok(st) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        if let Some(l) = st
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            all.extend(parse_cpu_set(l.trim()));
        }
    }
    (!all.is_empty()).then_some(all)
}

fn fmt_set(s: &std::collections::BTreeSet<usize>) -> String {
    s.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// How the generator and the server share the machine, in words: CPUs of each, whether they
/// overlap, and the load average (other tenants).
pub fn sharing(gen_cpus: Option<&[usize]>, server_pid: Option<u32>) -> String {
    let gen: std::collections::BTreeSet<usize> = match gen_cpus {
        Some(c) => c.iter().copied().collect(),
        None => process_cpus("self").unwrap_or_default(),
    };
    let gen_how = if gen_cpus.is_some() {
        "pinned to"
    } else {
        "unpinned, on"
    };
    let srv = server_pid.and_then(|p| process_cpus(&p.to_string()));
    let both = match &srv {
        Some(s) if s.is_disjoint(&gen) => "separate cores".to_string(),
        Some(s) => format!(
            "SHARED cores {}",
            fmt_set(&s.intersection(&gen).copied().collect())
        ),
        None => "server CPUs unknown (no --server-pid)".to_string(),
    };
    format!(
        "{} CPUs; generator threads {gen_how} CPU {}; server threads on CPU {}: {both}; load average {}",
        cpus(),
        fmt_set(&gen),
        srv.as_ref().map(fmt_set).unwrap_or_else(|| "?".into()),
        loadavg()
    )
}

/// Restricts the calling thread to `cpus` (it may run on any of them).
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Err(std::io::Error::other("no CPUs given"));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside the set for ids below
    // CPU_SETSIZE (checked first); sched_setaffinity(0, ...) only reads the set, which lives
    // across the call, and applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(std::io::Error::other(format!("CPU {c} out of range")));
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Online CPU count.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `0,1` or `0-3,6` into CPU ids.
pub fn parse_cpu_list(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                anyhow::ensure!(a <= b && b - a < 4096, "bad cpu range {part}");
                out.extend(a..=b);
            }
            None => out.push(part.parse()?),
        }
    }
    anyhow::ensure!(!out.is_empty(), "empty cpu list");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_parses_with_spaces_in_the_name() {
        let stat = "1234 (my (weird) prog) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let t = ticks_per_sec();
        assert!((parse_stat_cpu(stat).unwrap() - 300.0 / t).abs() < 1e-9);
    }

    #[test]
    fn status_and_sockstat_parse() {
        let st = "Name:\tx\nVmRSS:\t  1234 kB\nVmHWM:\t 2000 kB\n";
        assert_eq!(parse_status_field(st, "VmRSS"), Some(1234 * 1024));
        assert_eq!(parse_status_field(st, "VmSwap"), None);
        let ss =
            "sockets: used 100\nTCP: inuse 10 orphan 0 tw 2 alloc 12 mem 5\nUDP: inuse 1 mem 0\n";
        assert_eq!(
            parse_sockstat(ss),
            Some(SockStat {
                tcp_inuse: 10,
                tcp_alloc: 12,
                tcp_mem_pages: 5
            })
        );
        assert!(process_cpu(std::process::id()).is_some());
        assert!(self_rss().unwrap() > 0);
    }

    #[test]
    fn machine_cpu_parses() {
        let st = "cpu  100 0 50 800 50 0 10 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_cpu(st), Some((160, 1010)));
        assert_eq!(busy_between(Some((0, 100)), Some((50, 200))), Some(0.5));
        assert!(machine_cpu().is_some());
    }

    #[test]
    fn sharing_names_both_sides_cpus() {
        let me = std::process::id();
        let all = process_cpus(&me.to_string()).expect("own affinity");
        let first = *all.iter().next().unwrap();
        // The generator pinned to a CPU the "server" (this process) may also use: shared.
        let s = sharing(Some(&[first]), Some(me));
        assert!(s.contains("SHARED"), "{s}");
        assert!(s.contains(&format!("pinned to CPU {first}")), "{s}");
        let s = sharing(Some(&[first]), None);
        assert!(s.contains("no --server-pid"), "{s}");
        // A CPU the server cannot use: separate.
        let s = sharing(Some(&[4095]), Some(me));
        assert!(s.contains("separate cores"), "{s}");
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
    }
}
