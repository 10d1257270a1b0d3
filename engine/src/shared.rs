//! Process-wide, immutable-after-start state every core and handle can read: the resolved
//! config, the apps, the metrics registry, the mesh wake-ups and injection queues.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::Arc;

use ringcast_protocol::{ChannelName, SocketId};

use crate::admission::Admission;
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
    /// Connection caps and per-address limits (process-wide).
    pub admission: Admission,
    pub apps: Box<[App]>,
    pub metrics: Metrics,
    pub mesh: Arc<MeshShared>,
    pub observer: Option<Arc<dyn EngineObserver>>,
    pub shutdown: AtomicBool,
    pub http: std::sync::OnceLock<Arc<dyn crate::HttpService>>,
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
                config: a.clone(),
                connections: AtomicU32::new(0),
            })
            .collect();
        let mut seed = [0u8; 32];
        // Without OS randomness the sketch still works; only its slots become predictable.
        let _ = getrandom::getrandom(&mut seed);
        let k = |i: usize| u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Shared {
            metrics: Metrics::new(config.workers),
            admission: Admission::new(config.admission.clone(), [k(0), k(1), k(2), k(3)]),
            config,
            apps,
            mesh,
            observer,
            shutdown: AtomicBool::new(false),
            http: std::sync::OnceLock::new(),
            placement,
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
}
