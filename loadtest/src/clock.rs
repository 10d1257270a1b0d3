//! One monotonic clock for every generator process: nanoseconds of `CLOCK_MONOTONIC`.
//! Publishers stamp the *intended* send time with it and receivers read it on arrival. The
//! clock is the machine's, not the process's, so a receiver in one process (`--procs`) can
//! subtract a time stamped by a publisher in another process on the same machine.

/// Nanoseconds of `CLOCK_MONOTONIC` (since some fixed point in the machine's past).
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec on our stack; CLOCK_MONOTONIC is
    // always available on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds since the Unix epoch (REST `auth_timestamp`).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
