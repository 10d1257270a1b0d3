//! Prometheus text rendering (`GET /metrics`) of the engine's per-core counters plus the
//! control plane's own REST counters.
//!
//! REST counters are sharded per thread: each thread that serves requests (an engine core, or
//! an `--api-listen` thread) gets its own [`Shard`] on first use and is its only writer (a
//! relaxed load + store, no read-modify-write, no shared cache line); a scrape sums all shards.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use ringcast_engine::{AppIdx, MetricsSnapshot, Stats};

use crate::api::Endpoint;

/// Status codes counted individually; anything else is counted as `other`.
const STATUSES: [u16; 14] = [
    200, 400, 401, 403, 404, 405, 408, 411, 413, 429, 431, 500, 503, 101,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUSES.len())
}

fn status_label(slot: usize) -> String {
    STATUSES
        .get(slot)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "other".into())
}

/// A counter with a single writer thread.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn inc(&self) {
        // Only the owning thread writes: load + store is race-free and takes no lock.
        self.0.store(self.0.load(Relaxed).wrapping_add(1), Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// One thread's REST counters.
struct Shard {
    /// `[endpoint][status slot]`
    requests: Box<[[Counter; STATUS_SLOTS]]>,
    /// Requests addressed to each app (by app index).
    per_app: Box<[Counter]>,
}

impl Shard {
    fn new(apps: usize) -> Shard {
        Shard {
            requests: Endpoint::ALL
                .iter()
                .map(|_| std::array::from_fn(|_| Counter::default()))
                .collect(),
            per_app: (0..apps).map(|_| Counter::default()).collect(),
        }
    }
}

static NEXT_REGISTRY: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's shard of every live registry, by registry id.
    static LOCAL: RefCell<Vec<(u64, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// REST request counters by endpoint, status and app.
pub struct RestMetrics {
    id: u64,
    apps: usize,
    /// Every thread's shard; locked only when a thread serves its first request, and on scrape.
    shards: Mutex<Vec<Arc<Shard>>>,
}

impl RestMetrics {
    pub fn new(apps: usize) -> RestMetrics {
        RestMetrics {
            id: NEXT_REGISTRY.fetch_add(1, Relaxed),
            apps,
            shards: Mutex::new(Vec::new()),
        }
    }

    fn with_shard(&self, f: impl FnOnce(&Shard)) {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if let Some((_, s)) = local.iter().find(|(id, _)| *id == self.id) {
                f(s);
                return;
            }
            // First request on this thread for this registry; also forget shards of dropped
            // registries (only this thread still holds them).
            local.retain(|(_, s)| Arc::strong_count(s) > 1);
            let shard = Arc::new(Shard::new(self.apps));
            self.shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(shard.clone());
            f(&shard);
            local.push((self.id, shard));
        })
    }

    /// Counts one answered request.
    pub fn record(&self, endpoint: Endpoint, status: u16, app: Option<AppIdx>) {
        self.with_shard(|s| {
            s.requests[endpoint.index()][status_slot(status)].inc();
            if let Some(c) = app.and_then(|a| s.per_app.get(a as usize)) {
                c.inc();
            }
        })
    }

    /// Sum over threads: `(endpoint, status label, count)` for every non-zero cell.
    pub fn requests(&self) -> Vec<(Endpoint, String, u64)> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for e in Endpoint::ALL {
            for slot in 0..STATUS_SLOTS {
                let n: u64 = shards
                    .iter()
                    .map(|s| s.requests[e.index()][slot].get())
                    .sum();
                if n > 0 {
                    out.push((e, status_label(slot), n));
                }
            }
        }
        out
    }

    /// Sum over threads of requests per app index.
    pub fn per_app(&self) -> Vec<u64> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        (0..self.apps)
            .map(|a| shards.iter().map(|s| s.per_app[a].get()).sum())
            .collect()
    }

    /// Count of one endpoint/status pair (tests, diagnostics).
    pub fn count(&self, endpoint: Endpoint, status: u16) -> u64 {
        let label = status.to_string();
        self.requests()
            .into_iter()
            .find(|(e, s, _)| *e == endpoint && *s == label)
            .map(|(_, _, n)| n)
            .unwrap_or(0)
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }
    fn single(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.family(name, kind, help);
        self.sample(name, "", v);
    }
}

/// Appends the TLS listeners' counters (`ringcast_tls_*`), labelled `listener="public"|"api"`.
pub fn render_tls(listeners: &[(&str, &ringcast_engine::TlsAcceptor)], text: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = Out(std::mem::take(text));
    o.family(
        "ringcast_tls_handshakes_total",
        "counter",
        "TLS handshakes by outcome: ok, or the reason it failed (timeout: not done within \
         handshake_timeout; bad_record: a record rustls refused or a fatal alert from the client; \
         plaintext: plain HTTP sent to the TLS port, closed unanswered; aborted: the client \
         closed mid-handshake).",
    );
    for (l, t) in listeners {
        let c = t.counters();
        for (result, v) in [
            ("ok", &c.completed),
            ("timeout", &c.timeout),
            ("bad_record", &c.bad_record),
            ("plaintext", &c.plaintext),
            ("aborted", &c.aborted),
        ] {
            o.sample(
                "ringcast_tls_handshakes_total",
                &format!("listener=\"{l}\",result=\"{result}\""),
                v.load(Relaxed),
            );
        }
    }
    o.family(
        "ringcast_tls_reloads_total",
        "counter",
        "Certificate reloads (SIGHUP): applied, or rejected (the old certificate stayed).",
    );
    for (l, t) in listeners {
        let c = t.counters();
        for (result, v) in [("ok", &c.reloads), ("rejected", &c.reload_failures)] {
            o.sample(
                "ringcast_tls_reloads_total",
                &format!("listener=\"{l}\",result=\"{result}\""),
                v.load(Relaxed),
            );
        }
    }
    *text = o.0;
}

/// Appends the cluster bridge's counters (`ringcast_cluster_*`).
pub fn render_cluster(c: &ringcast_engine::ClusterLink, text: &mut String) {
    use ringcast_engine::ClusterMetrics as M;
    let m = &c.metrics;
    let mut o = Out(std::mem::take(text));
    for (name, help, v) in [
        (
            "ringcast_cluster_published_total",
            "Messages published to the broker (events and control).",
            M::get(&m.published),
        ),
        (
            "ringcast_cluster_received_total",
            "Messages from other nodes received and accepted.",
            M::get(&m.received),
        ),
        (
            "ringcast_cluster_bad_messages_total",
            "Malformed or foreign messages on the cluster's subjects, ignored.",
            M::get(&m.bad_messages),
        ),
        (
            "ringcast_cluster_publish_failed_total",
            "Broker publishes that failed or found the publish queue full.",
            M::get(&m.publish_failed),
        ),
        (
            "ringcast_cluster_undeliverable_total",
            "Locally originated events and terminations not sent to the other nodes because the broker was unreachable.",
            M::get(&m.undeliverable),
        ),
        (
            "ringcast_cluster_outbound_dropped_total",
            "Items a core could not queue for the bridge (queue full; bookkeeping is then re-sent as a snapshot).",
            M::get(&m.outbound_dropped),
        ),
        (
            "ringcast_cluster_inbound_dropped_total",
            "Messages from the broker not handed to a core (queue full or the broker client lagged).",
            M::get(&m.inbound_dropped),
        ),
        (
            "ringcast_cluster_connects_total",
            "Broker connections established (first and reconnects).",
            M::get(&m.connects),
        ),
        (
            "ringcast_cluster_snapshots_sent_total",
            "Full snapshots of this node's share published.",
            M::get(&m.snapshots_sent),
        ),
        (
            "ringcast_cluster_sequence_gaps_total",
            "Gaps in another node's delta sequence (each answered by a snapshot).",
            M::get(&m.sequence_gaps),
        ),
        (
            "ringcast_cluster_nodes_expired_total",
            "Nodes whose lease ran out.",
            M::get(&m.nodes_expired),
        ),
    ] {
        o.single(name, "counter", help, v);
    }
    o.single(
        "ringcast_cluster_nodes_alive",
        "gauge",
        "Live nodes in the cluster, this one included.",
        M::get(&m.nodes_alive),
    );
    o.single(
        "ringcast_cluster_connected",
        "gauge",
        "1 while the broker connection is up.",
        u64::from(c.is_connected()),
    );
    o.single(
        "ringcast_cluster_leader",
        "gauge",
        "1 on the webhook leader (the oldest live node).",
        u64::from(c.is_leader()),
    );
    *text = o.0;
}

/// Renders everything in the Prometheus text exposition format (0.0.4).
pub fn render(m: &MetricsSnapshot, stats: &Stats, rest: &RestMetrics, app_ids: &[&str]) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.single(
        "ringcast_connections",
        "gauge",
        "WebSocket connections open now.",
        m.connections_current,
    );
    o.single(
        "ringcast_connections_opened_total",
        "counter",
        "WebSocket connections accepted.",
        m.connections_opened,
    );
    o.family(
        "ringcast_connections_closed_total",
        "counter",
        "WebSocket connections closed, by reason (terminated = 4009 via the API, slow_consumer_* = 4100, pong_timeout = 4201, shutdown = 4200, ping_rate_limit = 4301).",
    );
    for (reason, n) in &m.closed {
        o.sample(
            "ringcast_connections_closed_total",
            &format!("reason=\"{}\"", label(reason)),
            *n,
        );
    }
    o.single(
        "ringcast_slow_consumer_closes_total",
        "counter",
        "Connections closed as slow consumers (outbound budget or write deadline).",
        m.closed_by("slow_consumer_budget")
            + m.closed_by("slow_consumer_deadline")
            + m.closed_by("slow_consumer_mesh"),
    );
    o.single(
        "ringcast_subscriptions",
        "gauge",
        "Channel subscriptions now (connection x channel).",
        m.subscriptions_current,
    );
    o.single(
        "ringcast_channels",
        "gauge",
        "Occupied channels now.",
        m.channels_current,
    );
    for (name, help, v) in [
        (
            "ringcast_messages_in_total",
            "WebSocket messages received from clients.",
            m.messages_in,
        ),
        (
            "ringcast_messages_out_total",
            "WebSocket messages sent to clients.",
            m.messages_out,
        ),
        (
            "ringcast_bytes_out_total",
            "Bytes written to WebSocket clients.",
            m.bytes_out,
        ),
        (
            "ringcast_deliveries_total",
            "Event deliveries to subscribers (one per subscriber per event).",
            m.deliveries,
        ),
        (
            "ringcast_events_published_total",
            "Events published to channels (REST and client events).",
            m.events_published,
        ),
        (
            "ringcast_client_events_total",
            "client-* events relayed.",
            m.client_events,
        ),
        (
            "ringcast_client_events_rate_limited_total",
            "client-* events refused by the per-connection rate limit.",
            m.client_events_rate_limited,
        ),
        (
            "ringcast_control_messages_rate_limited_total",
            "Subscribe and sign-in messages refused by the per-connection control_messages_per_sec limit (answered with pusher:error).",
            m.control_rate_limited,
        ),
        (
            "ringcast_auth_failures_total",
            "Channel subscription or sign-in signatures refused.",
            m.auth_failures,
        ),
        (
            "ringcast_protocol_errors_total",
            "Malformed or unknown client messages.",
            m.protocol_errors,
        ),
        (
            "ringcast_mesh_sent_total",
            "Messages sent between cores.",
            m.mesh_sent,
        ),
        (
            "ringcast_mesh_overflowed_total",
            "Inter-core messages that waited in a local overflow queue.",
            m.mesh_overflowed,
        ),
        (
            "ringcast_mesh_dropped_total",
            "Event deliveries a peer core could not take (past the mesh's hard limit); that core's subscribers of the channel were closed with 4100.",
            m.mesh_dropped,
        ),
        (
            "ringcast_mesh_pushback_total",
            "Publishes (REST 503, client-event errors) and subscriptions refused because a core's mesh was congested.",
            m.mesh_pushback,
        ),
        (
            "ringcast_flush_passes_total",
            "Flush passes run by the cores (one pass writes every dirty connection of its core).",
            m.flush_passes,
        ),
        (
            "ringcast_flush_windowed_passes_total",
            "Flush passes that first waited out the coalescing window (flush_window_us, flush_window_ratio_pct) because passes were backing up.",
            m.flush_windowed_passes,
        ),
        (
            "ringcast_flush_writes_total",
            "Nonblocking sendmsg calls made by flush passes (one per dirty plaintext connection per pass).",
            m.flush_writes,
        ),
        (
            "ringcast_flush_frames_total",
            "Frames written completely by flush passes (frames / writes = the coalescing achieved).",
            m.flush_frames,
        ),
        (
            "ringcast_flush_slow_paths_total",
            "Connections handed from a flush pass to the io_uring writer after a partial write or EAGAIN.",
            m.flush_slow_paths,
        ),
        (
            "ringcast_flush_yields_total",
            "Times a flush pass let its core's other tasks run after writing for one slice (1 ms).",
            m.flush_yields,
        ),
    ] {
        o.single(name, "counter", help, v);
    }
    o.single(
        "ringcast_history_bytes",
        "gauge",
        "Bytes held by the event history (all cores).",
        m.history_bytes,
    );
    o.single(
        "ringcast_cache_entries",
        "gauge",
        "Cache-channel last events held (all cores).",
        m.cache_entries,
    );
    o.single(
        "ringcast_sse_streams_opened_total",
        "counter",
        "SSE streams (GET /apps/{id}/stream) opened; they are connections too.",
        m.sse_opened,
    );
    o.single(
        "ringcast_sse_streams",
        "gauge",
        "SSE streams open now (included in ringcast_connections).",
        m.sse_current,
    );
    o.family(
        "ringcast_app_connections",
        "gauge",
        "WebSocket connections open now, per app.",
    );
    for (app, n) in &stats.per_app {
        o.sample(
            "ringcast_app_connections",
            &format!("app=\"{}\"", label(app)),
            *n,
        );
    }
    o.family(
        "ringcast_rest_requests_total",
        "counter",
        "HTTP API requests answered, by endpoint and status.",
    );
    for (e, status, n) in rest.requests() {
        o.sample(
            "ringcast_rest_requests_total",
            &format!("endpoint=\"{}\",status=\"{status}\"", e.label()),
            n,
        );
    }
    o.family(
        "ringcast_rest_app_requests_total",
        "counter",
        "HTTP API requests addressed to each app (any status).",
    );
    for (i, n) in rest.per_app().into_iter().enumerate() {
        if let Some(app) = app_ids.get(i) {
            o.sample(
                "ringcast_rest_app_requests_total",
                &format!("app=\"{}\"", label(app)),
                n,
            );
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_per_thread_and_summed_on_read() {
        let r = Arc::new(RestMetrics::new(2));
        r.record(Endpoint::Events, 200, Some(0));
        r.record(Endpoint::Events, 200, Some(1));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        r.record(Endpoint::Events, 200, Some(1));
                    }
                    r.record(Endpoint::Channels, 418, None);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(r.count(Endpoint::Events, 200), 302);
        assert_eq!(r.per_app(), vec![1, 301]);
        let other: u64 = r
            .requests()
            .iter()
            .filter(|(e, s, _)| *e == Endpoint::Channels && s == "other")
            .map(|(_, _, n)| *n)
            .sum();
        assert_eq!(other, 3);
        assert_eq!(r.shards.lock().unwrap().len(), 4);
        // A second registry on the same thread gets its own shard.
        let r2 = RestMetrics::new(1);
        r2.record(Endpoint::Health, 200, None);
        assert_eq!(r2.count(Endpoint::Health, 200), 1);
        assert_eq!(r.count(Endpoint::Health, 200), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
