//! Process-wide state every core and handle can read: the resolved config, the apps table
//! (swapped whole at runtime, never locked on the hot path), the metrics registry, the mesh
//! wake-ups and injection queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Arc;

use arc_swap::ArcSwap;

use ringcast_protocol::{ChannelName, SocketId};

use crate::admission::Admission;
use crate::config::{AppConfig, Config};
use crate::mesh::MeshShared;
use crate::metrics::Metrics;
use crate::msg::{AppIdx, ChanKey};

/// One app slot and its live connection count (checked against `max_connections` on connect;
/// the only cross-core atomic, and it is off the message path). A slot keeps its index for the
/// life of the process: an update replaces `config` in a new table but keeps the counter, a
/// deletion leaves a tombstone (`deleted`) that refuses everything.
pub struct App {
    pub idx: AppIdx,
    pub config: Arc<AppConfig>,
    pub connections: Arc<AtomicU32>,
    /// Messages received from and delivered to this app's clients (usage; kept across updates).
    pub counters: Arc<AppCounters>,
    pub deleted: bool,
}

/// Cumulative per-app message counters, one shard per core (summed on read): a core bumps only
/// its own cache line, so cores delivering the same app's events never contend on one atomic
/// (one add per received frame and one per delivery batch on a core, not per subscriber).
#[derive(Default, Debug)]
pub struct AppCounters {
    pub messages_in: ShardedCounter,
    pub messages_out: ShardedCounter,
}

/// Shards of a [`ShardedCounter`]: cores beyond this many share shards (`core % SHARDS`), which
/// stays correct (atomic adds), just no longer contention-free.
const COUNTER_SHARDS: usize = 16;

/// A monotonic counter split into cache-line-padded per-core shards; [`ShardedCounter::get`]
/// sums them.
#[derive(Default, Debug)]
pub struct ShardedCounter {
    shards: [crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>; COUNTER_SHARDS],
}

impl ShardedCounter {
    /// Adds `n` on `core`'s shard.
    #[inline]
    pub fn add(&self, core: usize, n: u64) {
        self.shards[core % COUNTER_SHARDS].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The total over every shard.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

impl App {
    /// Live: not deleted (a disabled app is live but refuses connections).
    pub fn is_live(&self) -> bool {
        !self.deleted
    }
}

/// An immutable snapshot of every app slot, published through an [`ArcSwap`]: readers load it
/// without a lock (`Shared::apps`), writers build a new one and swap it in
/// (`EngineHandle::set_apps`).
pub struct AppsTable {
    pub(crate) apps: Vec<App>,
    by_key: HashMap<String, AppIdx>,
    by_id: HashMap<String, AppIdx>,
    /// Incremented on every swap.
    pub version: u64,
}

impl AppsTable {
    pub(crate) fn build(apps: Vec<App>, version: u64) -> AppsTable {
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for a in apps.iter().filter(|a| a.is_live()) {
            by_id.insert(a.config.id.clone(), a.idx);
            for (k, _) in a.config.credentials() {
                by_key.insert(k.to_owned(), a.idx);
            }
        }
        AppsTable {
            apps,
            by_key,
            by_id,
            version,
        }
    }

    /// The slot `idx` (every index ever handed out stays valid).
    #[inline]
    pub fn app(&self, idx: AppIdx) -> &App {
        &self.apps[idx as usize]
    }

    /// The slot `idx`, if it was ever handed out.
    pub fn get(&self, idx: AppIdx) -> Option<&App> {
        self.apps.get(idx as usize)
    }

    /// A live app holding `key` (any of its keys).
    pub fn by_key(&self, key: &str) -> Option<&App> {
        self.by_key.get(key).map(|&i| self.app(i))
    }

    /// A live app by id.
    pub fn by_id(&self, id: &str) -> Option<&App> {
        self.by_id.get(id).map(|&i| self.app(i))
    }

    /// Every slot, tombstones included.
    pub fn slots(&self) -> &[App] {
        &self.apps
    }

    /// Live apps in index order.
    pub fn live(&self) -> impl Iterator<Item = &App> {
        self.apps.iter().filter(|a| a.is_live())
    }
}

/// Hooks the engine calls when channel state changes, on the owner core (or, for client events,
/// on the sender's core). Implementations must not block: hand the event to a queue and return.
/// This is the seam for webhooks.
#[allow(unused_variables)]
pub trait EngineObserver: Send + Sync + 'static {
    fn channel_occupied(&self, app: &AppConfig, channel: &ChannelName) {}
    fn channel_vacated(&self, app: &AppConfig, channel: &ChannelName) {}
    /// A user's first connection joined a presence channel.
    fn member_added(&self, app: &AppConfig, channel: &ChannelName, user_id: &str) {}
    /// A user's last connection left a presence channel.
    fn member_removed(&self, app: &AppConfig, channel: &ChannelName, user_id: &str) {}
    /// A new subscriber of a cache channel found no cached event.
    fn cache_miss(&self, app: &AppConfig, channel: &ChannelName) {}
    /// The subscription count of a non-presence channel changed (apps with
    /// `subscription_count` on; throttled like the client-side event).
    fn subscription_count(&self, app: &AppConfig, channel: &ChannelName, count: u64) {}
    /// A message from an alrt user socket (`/ws`) other than ping: `message_json` is the
    /// client's JSON text as received.
    fn client_message(&self, app: &AppConfig, user_id: &str, message_json: &str) {}
    fn client_event(
        &self,
        app: &AppConfig,
        channel: &ChannelName,
        event: &str,
        data_json: Option<&str>,
        socket_id: &SocketId,
        user_id: Option<&str>,
    ) {
    }
}

pub(crate) struct Shared {
    pub config: Config,
    /// Connection caps and per-address limits (process-wide).
    pub admission: Admission,
    apps: ArcSwap<AppsTable>,
    /// Serializes writers of `apps` (never taken by a core).
    pub apps_writer: std::sync::Mutex<()>,
    pub metrics: Metrics,
    pub mesh: Arc<MeshShared>,
    pub observer: Option<Arc<dyn EngineObserver>>,
    pub shutdown: AtomicBool,
    /// The engine's clock offset (ms): zero in production; only a hidden test hook
    /// (`EngineHandle::advance_clock`) moves it, so timing tests do not sleep.
    clock_offset_ms: AtomicU64,
    /// Per core: its worker has stopped (returned or panicked). `/health` reports these.
    pub core_stopped: Box<[AtomicBool]>,
    /// Panic policy: abort the process when a task on a core panics (the default). Only a test
    /// hook turns this off, to observe a stopped core (`EngineHandle::set_abort_on_panic`).
    pub abort_on_panic: AtomicBool,
    pub http: std::sync::OnceLock<Arc<dyn crate::HttpService>>,
    /// `[tls]`: the public port speaks TLS (wss://, https://) with this acceptor.
    pub tls: std::sync::OnceLock<crate::tls::TlsAcceptor>,
    /// The cluster seam, when `[cluster]` is configured (attached before start).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterLink>>,
    /// Keyed channel placement, shared by every core of the process (so all agree on owners).
    placement: Placement,
}

/// Channel placement: a keyed hash of (app, channel name) modulo the worker count. The key is
/// 256 random bits drawn from the OS when the process starts and never leaves it, so a client
/// cannot predict which core owns a channel and cannot craft names that all land on one core.
/// (A cluster needs a stable, secret key shared by its nodes instead: build it with
/// [`Placement::with_key`].)
pub(crate) struct Placement {
    hasher: ahash::RandomState,
}

impl Placement {
    /// A placement keyed with fresh OS randomness.
    pub fn random() -> std::io::Result<Placement> {
        let mut b = [0u8; 32];
        getrandom::getrandom(&mut b)
            .map_err(|e| std::io::Error::other(format!("no OS random source: {e}")))?;
        let k = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(Placement::with_key([k(0), k(1), k(2), k(3)]))
    }

    /// A placement with a given secret key.
    pub fn with_key(key: [u64; 4]) -> Placement {
        Placement {
            hasher: ahash::RandomState::with_seeds(key[0], key[1], key[2], key[3]),
        }
    }

    #[inline]
    fn core_of(&self, key: &ChanKey, workers: usize) -> usize {
        let h = self.hasher.hash_one((key.app, key.name.as_str()));
        (h % workers as u64) as usize
    }
}

impl Shared {
    pub fn new(
        config: Config,
        mesh: Arc<MeshShared>,
        observer: Option<Arc<dyn EngineObserver>>,
        placement: Placement,
    ) -> Shared {
        let apps = config
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| App {
                idx: i as AppIdx,
                config: Arc::new(a.clone()),
                connections: Arc::new(AtomicU32::new(0)),
                counters: Arc::default(),
                deleted: false,
            })
            .collect();
        let workers = config.workers;
        let apps = ArcSwap::from_pointee(AppsTable::build(apps, 0));
        let mut seed = [0u8; 32];
        // Without OS randomness the sketch still works; only its slots become predictable.
        let _ = getrandom::getrandom(&mut seed);
        let k = |i: usize| u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Shared {
            metrics: Metrics::new(workers),
            admission: Admission::new(config.admission.clone(), [k(0), k(1), k(2), k(3)]),
            config,
            apps,
            apps_writer: std::sync::Mutex::new(()),
            mesh,
            observer,
            shutdown: AtomicBool::new(false),
            clock_offset_ms: AtomicU64::new(0),
            core_stopped: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            abort_on_panic: AtomicBool::new(true),
            http: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            placement,
        }
    }

    /// The engine's monotonic clock: liveness, write deadlines, cache TTLs, count throttling.
    #[inline]
    pub fn now(&self) -> std::time::Instant {
        std::time::Instant::now() + self.clock_offset()
    }

    /// The engine's wall clock in Unix milliseconds (history timestamps and expiry).
    pub fn now_ms(&self) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        wall + self.clock_offset().as_millis() as u64
    }

    fn clock_offset(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.clock_offset_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Test hook: moves the engine's clocks forward.
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.clock_offset_ms
            .fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Cores whose worker has stopped, in order.
    pub fn stopped_cores(&self) -> Vec<usize> {
        self.core_stopped
            .iter()
            .enumerate()
            .filter(|(_, s)| s.load(std::sync::atomic::Ordering::Acquire))
            .map(|(i, _)| i)
            .collect()
    }

    /// The current apps table: a lock-free load (no reference-count write in the common case).
    /// Do not hold the guard across an `.await`.
    #[inline]
    pub fn apps(&self) -> arc_swap::Guard<Arc<AppsTable>> {
        self.apps.load()
    }

    /// The current apps table as an owned `Arc` (for holders that outlive a call).
    pub fn apps_full(&self) -> Arc<AppsTable> {
        self.apps.load_full()
    }

    /// Publishes a new table (callers hold `apps_writer`).
    pub fn store_apps(&self, table: AppsTable) {
        self.apps.store(Arc::new(table));
    }

    #[inline]
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterLink>> {
        self.cluster.get()
    }

    /// Lifecycle webhooks (occupied/vacated, member added/removed, subscription count) are
    /// sent by one node only: the cluster's webhook leader, or this node when alone.
    #[inline]
    pub fn sends_lifecycle(&self) -> bool {
        self.cluster().is_none_or(|c| c.is_leader())
    }

    /// The core owning `key`: the keyed placement hash of (app, channel name) modulo the worker
    /// count. The single place that decides ownership.
    #[inline]
    pub fn owner_of(&self, key: &ChanKey) -> usize {
        self.placement.core_of(key, self.config.workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::ChannelName;

    fn owners(p: &Placement, workers: usize) -> Vec<usize> {
        (0..256)
            .map(|i| {
                let key = ChanKey {
                    app: 0,
                    name: ChannelName::parse(&format!("room-{i}")).unwrap(),
                };
                p.core_of(&key, workers)
            })
            .collect()
    }

    /// Two processes place the same names differently: the key is random per process, so
    /// nobody can precompute a set of names that share one owner.
    #[test]
    fn placement_is_keyed_randomly_per_process() {
        let a = owners(&Placement::random().unwrap(), 2);
        let b = owners(&Placement::random().unwrap(), 2);
        // 256 names on 2 cores: equal placements by chance have probability 2^-256.
        assert_ne!(a, b);
        // Deterministic for one key (every core of a process agrees).
        let k = [1, 2, 3, 4];
        assert_eq!(
            owners(&Placement::with_key(k), 4),
            owners(&Placement::with_key(k), 4)
        );
    }

    #[test]
    fn a_sharded_counter_sums_every_core_including_shared_shards() {
        let c = ShardedCounter::default();
        c.add(0, 3);
        c.add(1, 4);
        // Core 17 shares core 1's shard (16 shards): still counted, never lost.
        c.add(17, 5);
        assert_eq!(c.get(), 12);
    }
}
