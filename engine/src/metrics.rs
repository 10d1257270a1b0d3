//! Per-core counters. Each core writes only its own [`CoreMetrics`] (a relaxed load + store, no
//! read-modify-write, no contention); readers sum all cores on demand. Nothing on the hot path
//! touches a cache line another core writes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

/// Why a connection ended. Each reason is counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed (close frame or EOF).
    ClientClosed,
    /// A socket read or write failed.
    IoError,
    /// WebSocket protocol violation by the client (1002/1007/1009).
    ProtocolError,
    /// Unknown app key (4001), disabled app (4003), bad path/version (4005-4008).
    Refused,
    /// App connection quota reached (4004).
    OverQuota,
    /// Outbound budget exceeded (4100).
    SlowConsumerBudget,
    /// Write deadline exceeded (4100).
    SlowConsumerDeadline,
    /// The connection's core could not take an event for one of its channels from the owner
    /// core (the mesh to it was past its hard limit): closed with 4100 instead of missing it.
    SlowConsumerMesh,
    /// No answer to our ping (4201).
    PongTimeout,
    /// Server shutting down (4200).
    Shutdown,
    /// Terminated through the API (4009).
    Terminated,
    /// The handshake (HTTP request head) was malformed, too large or too slow.
    BadHandshake,
    /// More pings than `pings_per_minute` (4301).
    PingRateLimit,
}

impl CloseReason {
    pub const ALL: [CloseReason; 13] = [
        CloseReason::ClientClosed,
        CloseReason::IoError,
        CloseReason::ProtocolError,
        CloseReason::Refused,
        CloseReason::OverQuota,
        CloseReason::SlowConsumerBudget,
        CloseReason::SlowConsumerDeadline,
        CloseReason::SlowConsumerMesh,
        CloseReason::PongTimeout,
        CloseReason::Shutdown,
        CloseReason::Terminated,
        CloseReason::BadHandshake,
        CloseReason::PingRateLimit,
    ];

    /// Label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::IoError => "io_error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Refused => "refused",
            CloseReason::OverQuota => "over_quota",
            CloseReason::SlowConsumerBudget => "slow_consumer_budget",
            CloseReason::SlowConsumerDeadline => "slow_consumer_deadline",
            CloseReason::SlowConsumerMesh => "slow_consumer_mesh",
            CloseReason::PongTimeout => "pong_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Terminated => "terminated",
            CloseReason::BadHandshake => "bad_handshake",
            CloseReason::PingRateLimit => "ping_rate_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A counter written by exactly one core.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning core calls this, so load + store is race-free and avoids a
    /// locked instruction.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    /// For gauges: set the current value.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// One core's counters.
#[derive(Default)]
pub struct CoreMetrics {
    pub connections_opened: Counter,
    pub connections_current: Counter,
    pub closed: [Counter; CloseReason::ALL.len()],
    pub subscriptions_current: Counter,
    pub channels_owned: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub deliveries: Counter,
    pub events_published: Counter,
    pub client_events: Counter,
    pub client_events_rate_limited: Counter,
    /// Subscribe / sign-in messages refused by `control_messages_per_sec`.
    pub control_rate_limited: Counter,
    pub auth_failures: Counter,
    pub protocol_errors: Counter,
    pub mesh_sent: Counter,
    pub mesh_overflowed: Counter,
    pub mesh_dropped: Counter,
    pub mesh_pushback: Counter,
    pub history_bytes: Counter,
    pub cache_entries: Counter,
    /// SSE streams (`GET /apps/{id}/stream`): opened, and open now (also counted in the
    /// connection counters above).
    pub sse_opened: Counter,
    pub sse_current: Counter,
    /// Flush passes (engine/src/flush.rs): passes run, passes that waited out the coalescing
    /// window first, nonblocking `sendmsg` calls made by passes, frames those calls completed,
    /// and connections handed to the io_uring slow path (partial write or `EAGAIN`).
    pub flush_passes: Counter,
    pub flush_windowed_passes: Counter,
    pub flush_writes: Counter,
    pub flush_frames: Counter,
    pub flush_slow_paths: Counter,
    /// Times a pass let the core's other tasks run after writing for a slice (`PASS_SLICE`).
    pub flush_yields: Counter,
}

impl CoreMetrics {
    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].inc();
    }
}

/// All cores' counters; cloned handles read them.
pub struct Metrics {
    cores: Box<[CachePadded<CoreMetrics>]>,
}

impl Metrics {
    pub fn new(workers: usize) -> Metrics {
        Metrics {
            cores: (0..workers)
                .map(|_| CachePadded::new(CoreMetrics::default()))
                .collect(),
        }
    }

    pub fn core(&self, i: usize) -> &CoreMetrics {
        &self.cores[i]
    }

    /// Sum over cores of one counter.
    pub fn sum(&self, f: impl Fn(&CoreMetrics) -> &Counter) -> u64 {
        self.cores.iter().map(|c| f(c).get()).sum()
    }

    /// A consistent-enough snapshot (each counter read once).
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connections_opened: self.sum(|c| &c.connections_opened),
            connections_current: self.sum(|c| &c.connections_current),
            closed: CloseReason::ALL.map(|r| (r.label(), self.sum(|c| &c.closed[r.index()]))),
            subscriptions_current: self.sum(|c| &c.subscriptions_current),
            channels_current: self.sum(|c| &c.channels_owned),
            messages_in: self.sum(|c| &c.messages_in),
            messages_out: self.sum(|c| &c.messages_out),
            bytes_out: self.sum(|c| &c.bytes_out),
            deliveries: self.sum(|c| &c.deliveries),
            events_published: self.sum(|c| &c.events_published),
            client_events: self.sum(|c| &c.client_events),
            client_events_rate_limited: self.sum(|c| &c.client_events_rate_limited),
            control_rate_limited: self.sum(|c| &c.control_rate_limited),
            auth_failures: self.sum(|c| &c.auth_failures),
            protocol_errors: self.sum(|c| &c.protocol_errors),
            mesh_sent: self.sum(|c| &c.mesh_sent),
            mesh_overflowed: self.sum(|c| &c.mesh_overflowed),
            mesh_dropped: self.sum(|c| &c.mesh_dropped),
            mesh_pushback: self.sum(|c| &c.mesh_pushback),
            history_bytes: self.sum(|c| &c.history_bytes),
            cache_entries: self.sum(|c| &c.cache_entries),
            sse_opened: self.sum(|c| &c.sse_opened),
            sse_current: self.sum(|c| &c.sse_current),
            flush_passes: self.sum(|c| &c.flush_passes),
            flush_windowed_passes: self.sum(|c| &c.flush_windowed_passes),
            flush_writes: self.sum(|c| &c.flush_writes),
            flush_frames: self.sum(|c| &c.flush_frames),
            flush_slow_paths: self.sum(|c| &c.flush_slow_paths),
            flush_yields: self.sum(|c| &c.flush_yields),
        }
    }
}

/// Summed counters at one moment.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub connections_opened: u64,
    pub connections_current: u64,
    /// (reason label, count), one entry per [`CloseReason`].
    pub closed: [(&'static str, u64); CloseReason::ALL.len()],
    pub subscriptions_current: u64,
    pub channels_current: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub deliveries: u64,
    pub events_published: u64,
    pub client_events: u64,
    pub client_events_rate_limited: u64,
    pub control_rate_limited: u64,
    pub auth_failures: u64,
    pub protocol_errors: u64,
    pub mesh_sent: u64,
    pub mesh_overflowed: u64,
    pub mesh_dropped: u64,
    /// Publishes and subscriptions refused because a core's outgoing mesh was congested.
    pub mesh_pushback: u64,
    /// Bytes held by event history (all cores).
    pub history_bytes: u64,
    /// Cache-channel entries held (all cores).
    pub cache_entries: u64,
    /// SSE streams opened, and open now (all cores; included in the connection counts).
    pub sse_opened: u64,
    pub sse_current: u64,
    /// Flush passes run, passes that waited out the coalescing window, `sendmsg` calls and
    /// frames written by passes, connections handed to the slow path (all cores).
    pub flush_passes: u64,
    pub flush_windowed_passes: u64,
    pub flush_writes: u64,
    pub flush_frames: u64,
    pub flush_slow_paths: u64,
    /// Pass slices ended to let other tasks run (all cores).
    pub flush_yields: u64,
}

impl MetricsSnapshot {
    pub fn closed_by(&self, label: &str) -> u64 {
        self.closed
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_across_cores_and_reasons() {
        let m = Metrics::new(3);
        m.core(0).deliveries.add(5);
        m.core(2).deliveries.add(7);
        m.core(1).closed(CloseReason::SlowConsumerBudget);
        m.core(2).closed(CloseReason::SlowConsumerBudget);
        let s = m.snapshot();
        assert_eq!(s.deliveries, 12);
        assert_eq!(s.closed_by("slow_consumer_budget"), 2);
        assert_eq!(s.closed_by("pong_timeout"), 0);
        assert_eq!(CloseReason::ALL.len(), m.core(0).closed.len());
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
