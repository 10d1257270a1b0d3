//! Process-wide state every core and handle can read: the resolved config, the apps table
//! (swapped whole at runtime, never locked on the hot path), the metrics registry, the mesh
//! wake-ups and injection queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;

use arc_swap::ArcSwap;

use ringcast_protocol::{ChannelName, SocketId};

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
    pub deleted: bool,
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
    apps: ArcSwap<AppsTable>,
    /// Serializes writers of `apps` (never taken by a core).
    pub apps_writer: std::sync::Mutex<()>,
    pub metrics: Metrics,
    pub mesh: Arc<MeshShared>,
    pub observer: Option<Arc<dyn EngineObserver>>,
    pub shutdown: AtomicBool,
    pub http: std::sync::OnceLock<Arc<dyn crate::HttpService>>,
    /// Fixed seeds: every core must compute the same owner for a channel.
    hasher: ahash::RandomState,
}

impl Shared {
    pub fn new(
        config: Config,
        mesh: Arc<MeshShared>,
        observer: Option<Arc<dyn EngineObserver>>,
    ) -> Shared {
        let apps = config
            .apps
            .iter()
            .enumerate()
            .map(|(i, a)| App {
                idx: i as AppIdx,
                config: Arc::new(a.clone()),
                connections: Arc::new(AtomicU32::new(0)),
                deleted: false,
            })
            .collect();
        let apps = ArcSwap::from_pointee(AppsTable::build(apps, 0));
        Shared {
            metrics: Metrics::new(config.workers),
            config,
            apps,
            apps_writer: std::sync::Mutex::new(()),
            mesh,
            observer,
            shutdown: AtomicBool::new(false),
            http: std::sync::OnceLock::new(),
            hasher: ahash::RandomState::with_seeds(
                0x5249_4e47_4341_5354,
                0x0123_4567_89ab_cdef,
                0x0f1e_2d3c_4b5a_6978,
                0x9e37_79b9_7f4a_7c15,
            ),
        }
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

    /// The core owning `key`: ahash of (app, channel name) modulo the worker count.
    #[inline]
    pub fn owner_of(&self, key: &ChanKey) -> usize {
        let h = self.hasher.hash_one((key.app, key.name.as_str()));
        (h % self.config.workers as u64) as usize
    }
}
