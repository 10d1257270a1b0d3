//! Process-wide, immutable-after-start state every core and handle can read: the resolved
//! config, the apps, the metrics registry, the mesh wake-ups and injection queues.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;

use ringcast_protocol::{ChannelName, SocketId};

use crate::config::{AppConfig, Config};
use crate::mesh::MeshShared;
use crate::metrics::Metrics;
use crate::msg::{AppIdx, ChanKey};

/// One app and its live connection count (checked against `max_connections` on connect; the
/// only cross-core atomic, and it is off the message path).
pub struct App {
    pub idx: AppIdx,
    pub config: AppConfig,
    pub connections: AtomicU32,
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
    pub apps: Box<[App]>,
    pub metrics: Metrics,
    pub mesh: Arc<MeshShared>,
    pub observer: Option<Arc<dyn EngineObserver>>,
    pub shutdown: AtomicBool,
    pub http: std::sync::OnceLock<Arc<dyn crate::HttpService>>,
    /// The cluster seam, when `[cluster]` is configured (attached before start).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterLink>>,
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
                config: a.clone(),
                connections: AtomicU32::new(0),
            })
            .collect();
        Shared {
            metrics: Metrics::new(config.workers),
            config,
            apps,
            mesh,
            observer,
            shutdown: AtomicBool::new(false),
            http: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            hasher: ahash::RandomState::with_seeds(
                0x5249_4e47_4341_5354,
                0x0123_4567_89ab_cdef,
                0x0f1e_2d3c_4b5a_6978,
                0x9e37_79b9_7f4a_7c15,
            ),
        }
    }

    #[inline]
    pub fn app(&self, idx: AppIdx) -> &App {
        &self.apps[idx as usize]
    }

    pub fn app_by_key(&self, key: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.config.key == key)
    }

    pub fn app_by_id(&self, id: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.config.id == id)
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

    /// The core owning `key`: ahash of (app, channel name) modulo the worker count.
    #[inline]
    pub fn owner_of(&self, key: &ChanKey) -> usize {
        let h = self.hasher.hash_one((key.app, key.name.as_str()));
        (h % self.config.workers as u64) as usize
    }
}
