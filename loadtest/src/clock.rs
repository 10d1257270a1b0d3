//! One monotonic clock for the whole process: nanoseconds since a process-wide base instant.
//! Publishers stamp the *intended* send time with it and receivers read it on arrival; both
//! run in this process, so the two readings are directly comparable (CLOCK_MONOTONIC is
//! consistent across threads).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// The base instant (fixed on first use).
pub fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since [`base`].
#[inline]
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// The instant `ns` nanoseconds after [`base`].
pub fn instant_at(ns: u64) -> Instant {
    base() + Duration::from_nanos(ns)
}

/// Seconds since the Unix epoch (REST `auth_timestamp`).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
