//! [`EngineHandle`]: how the rest of the process (the control plane, the composition root)
//! publishes and queries. It is `Send + Sync + Clone`; each call encodes what it can on the
//! caller's thread (an event becomes its WebSocket frame here, once per channel) and enters the
//! owning core through that core's bounded injection queue. Answers come back on oneshot
//! channels, so the futures work on any executor.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use futures_channel::oneshot;
use ringcast_protocol::{close, pusher, ChannelKind, ChannelName, SocketId};

use crate::cache::CachedEvent;
use crate::config::{AppConfig, Config, ConfigError};
use crate::history::{HistoryEvent, HistoryQuery};
use crate::metrics::MetricsSnapshot;
use crate::msg::{AppIdx, ChanKey, ChannelCounts, ChannelSummary, Command, PresenceUser};
use crate::shared::{App, AppsTable, Shared};

/// Why the engine could not do what a handle asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A core's injection queue is full: the caller should answer 503/429 and retry later.
    Overloaded,
    /// The engine is shutting down or stopped.
    Stopped,
    /// No such app.
    UnknownApp,
    /// Clustered and the broker is unreachable: an event could not reach the other nodes.
    ClusterUnavailable,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineError::Overloaded => "server overloaded, retry later",
            EngineError::Stopped => "server is shutting down",
            EngineError::UnknownApp => "unknown app",
            EngineError::ClusterUnavailable => {
                "the cluster broker is unavailable: the event cannot reach the other nodes"
            }
        })
    }
}
impl std::error::Error for EngineError {}

/// An event to publish.
#[derive(Debug, Clone)]
pub struct Publish {
    pub app: AppIdx,
    pub channels: Vec<ChannelName>,
    pub event: String,
    /// The event's data string, delivered verbatim.
    pub data: String,
    /// Connection excluded from delivery (the publisher's own socket).
    pub except: Option<SocketId>,
}

/// Connection totals for `/stats`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub connections: u64,
    pub channels: u64,
    /// (app id, connections)
    pub per_app: Vec<(String, u64)>,
}

/// A core blocked by [`EngineHandle::stall_core`]; dropping it releases the core.
#[doc(hidden)]
pub struct CoreStall {
    _release: std::sync::mpsc::SyncSender<()>,
}

/// What a [`EngineHandle::set_apps`] changed (app ids), and the table version it published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppsUpdate {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub version: u64,
}

/// Checks a whole set of apps: non-empty ids and keys, at least one secret, ids and keys (all
/// of every app's keys) unique.
pub fn validate_apps(apps: &[AppConfig]) -> Result<(), ConfigError> {
    let mut ids = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut api_keys = std::collections::HashSet::new();
    for a in apps {
        if a.id.is_empty() {
            return Err(ConfigError("an app needs a non-empty id".into()));
        }
        if !ids.insert(a.id.as_str()) {
            return Err(ConfigError(format!("duplicate app id {:?}", a.id)));
        }
        for (k, secrets) in a.credentials() {
            if k.is_empty() || secrets.iter().all(|s| s.is_empty()) {
                return Err(ConfigError(format!(
                    "app {:?}: every key needs a non-empty key and secret",
                    a.id
                )));
            }
            if !keys.insert(k) {
                return Err(ConfigError(format!("duplicate app key {k:?}")));
            }
        }
        for k in &a.api_keys {
            if !api_keys.insert(k.as_str()) {
                return Err(ConfigError(format!("api key {k:?} is listed twice")));
            }
        }
    }
    Ok(())
}

/// One app's live usage counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUsage {
    pub id: String,
    pub idx: AppIdx,
    pub connections: u64,
    /// Frames received from the app's clients.
    pub messages_in: u64,
    /// Frames delivered to the app's clients (one per subscriber).
    pub messages_out: u64,
}

#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
}

impl EngineHandle {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Finds a live app by id (its config as of now: later changes publish a new `Arc`).
    pub fn app_by_id(&self, id: &str) -> Option<(AppIdx, Arc<AppConfig>)> {
        self.shared
            .apps()
            .by_id(id)
            .map(|a| (a.idx, a.config.clone()))
    }

    /// Finds a live app by any of its keys.
    pub fn app_by_key(&self, key: &str) -> Option<(AppIdx, Arc<AppConfig>)> {
        self.shared
            .apps()
            .by_key(key)
            .map(|a| (a.idx, a.config.clone()))
    }

    /// Finds the live app one of whose LatteStream `api_keys` is `key` (every key is compared
    /// in constant time).
    pub fn app_by_api_key(&self, key: &str) -> Option<(AppIdx, Arc<AppConfig>)> {
        let ct_eq = |a: &[u8], b: &[u8]| {
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
        };
        let mut found = None;
        for a in self.shared.apps().live() {
            for k in &a.config.api_keys {
                if ct_eq(k.as_bytes(), key.as_bytes()) && found.is_none() {
                    found = Some((a.idx, a.config.clone()));
                }
            }
        }
        found
    }

    /// The config of slot `idx` (a deleted app's last config); `None` for an index never
    /// handed out.
    pub fn app(&self, idx: AppIdx) -> Option<Arc<AppConfig>> {
        self.shared.apps().get(idx).map(|a| a.config.clone())
    }

    /// Every live app, in index order.
    pub fn apps(&self) -> Vec<(AppIdx, Arc<AppConfig>)> {
        self.shared
            .apps()
            .live()
            .map(|a| (a.idx, a.config.clone()))
            .collect()
    }

    /// Every slot ever handed out: (index, id, deleted). Index order.
    pub fn app_slots(&self) -> Vec<(AppIdx, String, bool)> {
        self.shared
            .apps()
            .slots()
            .iter()
            .map(|a| (a.idx, a.config.id.clone(), a.deleted))
            .collect()
    }

    /// Usage counters of every live app: (id, connections now, messages in, messages out).
    pub fn app_usage(&self) -> Vec<AppUsage> {
        use std::sync::atomic::Ordering::Relaxed;
        self.shared
            .apps()
            .live()
            .map(|a| AppUsage {
                id: a.config.id.clone(),
                idx: a.idx,
                connections: a.connections.load(Relaxed) as u64,
                messages_in: a.counters.messages_in.get(),
                messages_out: a.counters.messages_out.get(),
            })
            .collect()
    }

    /// Incremented by every [`set_apps`](Self::set_apps).
    pub fn apps_version(&self) -> u64 {
        self.shared.apps().version
    }

    /// Replaces the set of apps at runtime, on every core at once, without pausing traffic:
    /// a new immutable table is swapped in (readers never lock), then closes are broadcast:
    /// an app that became disabled closes its connections with 4003, a deleted app with 4001,
    /// a removed key the connections that used it with 4001. An app keeps its index for the
    /// life of the process (matched by id); a deleted app leaves a tombstone; new apps append.
    /// Nothing is applied when `apps` is invalid (duplicate ids or keys, empty id/key/secret).
    /// Writers are serialized; the call may wait briefly for a full injection queue, so call it
    /// from a control thread, never from an engine core.
    pub fn set_apps(&self, apps: Vec<AppConfig>) -> Result<AppsUpdate, ConfigError> {
        validate_apps(&apps)?;
        let _writer = self
            .shared
            .apps_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let old = self.shared.apps_full();
        let mut slots: Vec<App> = old
            .slots()
            .iter()
            .map(|a| App {
                idx: a.idx,
                config: a.config.clone(),
                connections: a.connections.clone(),
                counters: a.counters.clone(),
                deleted: a.deleted,
            })
            .collect();
        let mut keep = vec![false; slots.len()];
        let mut update = AppsUpdate::default();
        let mut closes: Vec<(AppIdx, Option<String>, u16, &'static str)> = Vec::new();
        for cfg in apps {
            match old.by_id(&cfg.id) {
                Some(prev) => {
                    let i = prev.idx as usize;
                    keep[i] = true;
                    if prev.config.enabled && !cfg.enabled {
                        closes.push((prev.idx, None, close::APP_DISABLED, "App disabled"));
                    }
                    for (k, _) in prev.config.credentials() {
                        if cfg.secrets_for(k).is_none() {
                            closes.push((
                                prev.idx,
                                Some(k.to_owned()),
                                close::APP_NOT_FOUND,
                                "App key revoked",
                            ));
                        }
                    }
                    if *prev.config != cfg {
                        update.changed.push(cfg.id.clone());
                    }
                    slots[i].config = Arc::new(cfg);
                }
                None => {
                    update.added.push(cfg.id.clone());
                    slots.push(App {
                        idx: slots.len() as AppIdx,
                        config: Arc::new(cfg),
                        connections: Arc::new(AtomicU32::new(0)),
                        counters: Arc::default(),
                        deleted: false,
                    });
                    keep.push(true);
                }
            }
        }
        for (i, slot) in slots.iter_mut().enumerate() {
            if !keep[i] && !slot.deleted {
                slot.deleted = true;
                update.removed.push(slot.config.id.clone());
                closes.push((slot.idx, None, close::APP_NOT_FOUND, "App deleted"));
            }
        }
        if slots.len() > AppIdx::MAX as usize {
            return Err(ConfigError("too many apps".into()));
        }
        update.version = old.version + 1;
        self.shared
            .store_apps(AppsTable::build(slots, update.version));
        for (app, key, code, reason) in closes {
            for core in 0..self.shared.config.workers {
                self.inject_reliably(
                    core,
                    Command::CloseApp {
                        app,
                        key: key.clone(),
                        code,
                        reason,
                    },
                );
            }
        }
        Ok(update)
    }

    /// Hands a command that must not be lost to a core: retries briefly on a full queue.
    fn inject_reliably(&self, core: usize, mut cmd: Command) {
        for _ in 0..1000 {
            match self.shared.mesh.inject(core, cmd) {
                Ok(()) => return,
                Err(c) => {
                    cmd = c;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        tracing::error!(core, "injection queue full for 1 s: a command was dropped");
    }

    fn live_app(&self, app: AppIdx) -> Result<(), EngineError> {
        match self.shared.apps().get(app) {
            Some(a) if a.is_live() => Ok(()),
            _ => Err(EngineError::UnknownApp),
        }
    }

    fn key(&self, app: AppIdx, name: ChannelName) -> Result<ChanKey, EngineError> {
        self.live_app(app)?;
        Ok(ChanKey { app, name })
    }

    fn live(&self) -> Result<(), EngineError> {
        if self
            .shared
            .shutdown
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            Err(EngineError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Clustered with the broker unreachable: publishing is refused (never accepted for an
    /// event that cannot reach the cluster).
    fn cluster_up(&self) -> Result<(), EngineError> {
        match self.shared.cluster() {
            Some(c) if !c.is_connected() => Err(EngineError::ClusterUnavailable),
            _ => Ok(()),
        }
    }

    /// The cluster seam, when clustered.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::ClusterLink>> {
        self.shared.cluster()
    }

    /// The public port's TLS acceptor (`[tls]`): reload its certificate, read its counters.
    pub fn tls(&self) -> Option<&crate::tls::TlsAcceptor> {
        self.shared.tls.get()
    }

    /// Worker cores.
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// For the cluster bridge: hands a remote update to a core without waiting; gives it back
    /// when that core's injection queue is full.
    pub fn cluster_send(
        &self,
        core: usize,
        r: crate::cluster::Remote,
    ) -> Result<(), crate::cluster::Remote> {
        match self.shared.mesh.inject(core, Command::Remote(r)) {
            Ok(()) => Ok(()),
            Err(Command::Remote(r)) => Err(r),
            Err(_) => unreachable!("inject gives back the command it was given"),
        }
    }

    /// For the cluster bridge: this node's share of every channel (local counts and
    /// members), from every core.
    pub async fn cluster_dump(&self) -> Result<Vec<crate::cluster::ShareChannel>, EngineError> {
        Ok(self
            .ask_all(|reply| Command::ClusterDump { reply })
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Push-back for publishes: refused while the owner's mesh is congested, before anything
    /// would have to be dropped.
    fn admit_publish(&self, owner: usize) -> Result<(), EngineError> {
        if self.shared.mesh.is_congested(owner) {
            Err(EngineError::Overloaded)
        } else {
            Ok(())
        }
    }

    /// Hands a command to one core (no wait).
    fn send_to(&self, core: usize, cmd: Command) -> Result<(), EngineError> {
        self.shared
            .mesh
            .inject(core, cmd)
            .map_err(|_| EngineError::Overloaded)
    }

    /// Asks the owner of `(app, name)` and awaits its answer.
    async fn ask_owner<T>(
        &self,
        app: AppIdx,
        name: ChannelName,
        cmd: impl FnOnce(ChanKey, oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        self.live()?;
        let key = self.key(app, name)?;
        let owner = self.shared.owner_of(&key);
        let (tx, rx) = oneshot::channel();
        self.send_to(owner, cmd(key, tx))?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Asks every core (all sends first, so the cores work in parallel) and collects the
    /// answers in core order.
    async fn ask_all<T>(
        &self,
        cmd: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<Vec<T>, EngineError> {
        self.live()?;
        let mut replies = Vec::with_capacity(self.shared.config.workers);
        for core in 0..self.shared.config.workers {
            let (tx, rx) = oneshot::channel();
            self.send_to(core, cmd(tx))?;
            replies.push(rx);
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(rx.await.map_err(|_| EngineError::Stopped)?);
        }
        Ok(out)
    }

    /// Publishes one event to several channels. Each channel's frame is encoded once here and
    /// shared by every subscriber. Returns the subscription counts per channel (in order),
    /// taken at the owner when the event was fanned out. Every channel is handed to its owner
    /// before any answer is awaited. On `Overloaded`, channels before the full queue may
    /// already have been published.
    pub async fn publish(&self, p: Publish) -> Result<Vec<ChannelCounts>, EngineError> {
        self.live()?;
        self.cluster_up()?;
        // The whole socket id: a connection is excluded only if both halves match.
        let except = p.except;
        let mut replies = Vec::with_capacity(p.channels.len());
        for name in p.channels {
            let frame = pusher::event_frame(&p.event, name.as_str(), &p.data, None);
            let key = self.key(p.app, name)?;
            let owner = self.shared.owner_of(&key);
            self.admit_publish(owner)?;
            let (tx, rx) = oneshot::channel();
            self.send_to(
                owner,
                Command::Publish {
                    key,
                    frame,
                    except,
                    reply: Some(tx),
                },
            )?;
            replies.push(rx);
        }
        let mut out = Vec::with_capacity(replies.len());
        for rx in replies {
            out.push(rx.await.map_err(|_| EngineError::Stopped)?);
        }
        Ok(out)
    }

    /// Publishes like [`publish`](Self::publish) but returns as soon as every channel is in its
    /// owner's queue, without waiting for the fan-out or its counts: one cross-core wake-up
    /// less per call (the REST API uses it when the request asks for no `info`). Order per
    /// channel is the same as `publish`'s (each owner's queue is FIFO).
    pub fn publish_queued(&self, p: Publish) -> Result<(), EngineError> {
        self.live()?;
        self.cluster_up()?;
        // The whole socket id: a connection is excluded only if both halves match.
        let except = p.except;
        for name in p.channels {
            let frame = pusher::event_frame(&p.event, name.as_str(), &p.data, None);
            let key = self.key(p.app, name)?;
            let owner = self.shared.owner_of(&key);
            self.admit_publish(owner)?;
            self.send_to(
                owner,
                Command::Publish {
                    key,
                    frame,
                    except,
                    reply: None,
                },
            )?;
        }
        Ok(())
    }

    /// Occupied channels of an app (optionally by name prefix), exact counts from the owners.
    pub async fn channels(
        &self,
        app: AppIdx,
        prefix: Option<&str>,
    ) -> Result<Vec<ChannelSummary>, EngineError> {
        self.live_app(app)?;
        let prefix = prefix.map(str::to_owned);
        let per_core = self
            .ask_all(|reply| Command::ListChannels {
                app,
                prefix: prefix.clone(),
                reply,
            })
            .await?;
        let mut all: Vec<ChannelSummary> = per_core.into_iter().flatten().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One channel's state.
    pub async fn channel(
        &self,
        app: AppIdx,
        name: ChannelName,
    ) -> Result<ChannelSummary, EngineError> {
        self.ask_owner(app, name, |key, reply| Command::ChannelInfo { key, reply })
            .await
    }

    /// Members of a presence channel (empty for other channels or when unoccupied).
    pub async fn presence_users(
        &self,
        app: AppIdx,
        name: ChannelName,
    ) -> Result<Vec<PresenceUser>, EngineError> {
        if name.kind() != ChannelKind::Presence {
            self.live()?;
            return Ok(Vec::new());
        }
        self.ask_owner(app, name, |key, reply| Command::PresenceUsers {
            key,
            reply,
        })
        .await
    }

    /// Closes every connection signed in as `user_id` with `close_code`; returns how many.
    pub async fn terminate_user(
        &self,
        app: AppIdx,
        user_id: &str,
        close_code: u16,
    ) -> Result<usize, EngineError> {
        if let Some(c) = self.shared.cluster() {
            // The other nodes close theirs too.
            c.push(
                0,
                crate::cluster::Outbound::Terminate {
                    app,
                    user_id: Arc::from(user_id),
                    code: close_code,
                },
            );
        }
        let per_core = self
            .ask_all(|reply| Command::TerminateUser {
                app,
                user_id: user_id.to_owned(),
                code: close_code,
                reply,
            })
            .await?;
        Ok(per_core.into_iter().sum())
    }

    /// The cached last event of a cache channel, if any and not expired.
    pub async fn channel_cache(
        &self,
        app: AppIdx,
        name: ChannelName,
    ) -> Result<Option<CachedEvent>, EngineError> {
        self.ask_owner(app, name, |key, reply| Command::ChannelCache { key, reply })
            .await
    }

    /// A channel's recent events, newest first (empty when the app keeps no history).
    pub async fn channel_history(
        &self,
        app: AppIdx,
        name: ChannelName,
        limit: usize,
    ) -> Result<Vec<HistoryEvent>, EngineError> {
        let raw = self
            .ask_owner(app, name, |key, reply| Command::ChannelHistory {
                key,
                limit,
                reply,
            })
            .await?;
        // Decoded here, on the asking thread: the owner core only picked the frames.
        Ok(raw.iter().filter_map(crate::history::decode).collect())
    }

    /// An app's recent events across channels (all cores), newest first, filtered by `q`.
    /// Returns at most `q.limit` events and whether more matched.
    pub async fn history(
        &self,
        app: AppIdx,
        q: HistoryQuery,
    ) -> Result<(Vec<HistoryEvent>, bool), EngineError> {
        self.live_app(app)?;
        let mut all: Vec<crate::history::RawEvent> = match &q.channel {
            // One channel lives on one owner.
            Some(c) => match ChannelName::parse(c) {
                Ok(name) => {
                    let q = q.clone();
                    self.ask_owner(app, name, |_, reply| Command::History {
                        app,
                        query: q,
                        reply,
                    })
                    .await?
                }
                Err(_) => return Ok((Vec::new(), false)),
            },
            None => self
                .ask_all(|reply| Command::History {
                    app,
                    query: q.clone(),
                    reply,
                })
                .await?
                .into_iter()
                .flatten()
                .collect(),
        };
        crate::history::sort_newest_first(&mut all);
        let more = all.len() > q.limit;
        all.truncate(q.limit);
        // Decoded here, on the asking thread: the cores only picked the frames.
        Ok((
            all.iter().filter_map(crate::history::decode).collect(),
            more,
        ))
    }

    /// Activity records of an app, newest first, merged over every core; `true` when more
    /// matched than `q.limit`.
    pub async fn activity(
        &self,
        app: AppIdx,
        q: crate::activity::ActivityQuery,
    ) -> Result<(Vec<crate::activity::ActivityRecord>, bool), EngineError> {
        self.live_app(app)?;
        let mut all: Vec<_> = self
            .ask_all(|reply| Command::Activity {
                app,
                query: q.clone(),
                reply,
            })
            .await?
            .into_iter()
            .flatten()
            .collect();
        crate::activity::sort_newest_first(&mut all);
        let more = all.len() > q.limit;
        all.truncate(q.limit);
        Ok((all, more))
    }

    /// The core owning a channel (placement is keyed with this process's secret, so only the
    /// process itself can answer). For benchmarks and tests that place a channel on purpose.
    #[doc(hidden)]
    pub fn owner_core(&self, app: AppIdx, name: &ChannelName) -> usize {
        self.shared.owner_of(&ChanKey {
            app,
            name: name.clone(),
        })
    }

    /// Cores whose worker has stopped (after a shutdown, eventually all of them). Under the
    /// engine's panic policy (a panic in any task on a core aborts the process) this stays
    /// empty unless a worker ends otherwise (e.g. its listener could not be registered), but
    /// `/health` reports it whatever the cause: a stopped core leaves its connections and the
    /// channels it owns unserved.
    pub fn stopped_cores(&self) -> Vec<usize> {
        self.shared.stopped_cores()
    }

    /// Test hook: makes core `core` panic inside its mesh task.
    #[doc(hidden)]
    pub fn inject_panic(&self, core: usize) -> Result<(), EngineError> {
        self.send_to(core, Command::InjectPanic)
    }

    /// Test hook: blocks core `core`'s thread until the returned guard is dropped (at most
    /// 30 s), as a core too busy to drain its mesh would be. Returns once the core is blocked.
    #[doc(hidden)]
    pub fn stall_core(&self, core: usize) -> Result<CoreStall, EngineError> {
        let (stalled_tx, stalled_rx) = std::sync::mpsc::sync_channel(1);
        let (release_tx, release_rx) = std::sync::mpsc::sync_channel(1);
        self.send_to(
            core,
            Command::Stall {
                stalled: stalled_tx,
                release: release_rx,
            },
        )?;
        stalled_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .map_err(|_| EngineError::Stopped)?;
        Ok(CoreStall {
            _release: release_tx,
        })
    }

    /// Test hook: moves the engine's clock (`Shared::now`, `now_ms`) forward by `by`, so
    /// timing behaviour (liveness, TTLs, expiry) is tested without sleeping. Pair it with
    /// [`tick_now`](Self::tick_now).
    #[doc(hidden)]
    pub fn advance_clock(&self, by: std::time::Duration) {
        self.shared.advance_clock(by);
    }

    /// Test hook: every core runs its housekeeping pass now (pings and 4201s, write deadlines,
    /// owed counts, cache and history expiry) on the engine's clock; returns when all did.
    #[doc(hidden)]
    pub async fn tick_now(&self) -> Result<(), EngineError> {
        self.ask_all(|reply| Command::Tick { reply })
            .await
            .map(|_| ())
    }

    /// Test hook: with `false`, a panicking core stops (and is reported by `/health`) instead
    /// of aborting the process. Never use this in production: a stopped core's connections
    /// and owned channels are left unserved.
    #[doc(hidden)]
    pub fn set_abort_on_panic(&self, abort: bool) {
        self.shared
            .abort_on_panic
            .store(abort, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once a graceful shutdown has begun (health checks answer 503 from then on).
    pub fn is_shutting_down(&self) -> bool {
        self.shared
            .shutdown
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connections refused by admission control: `(reason label, count)` for every reason.
    pub fn admission_refusals(&self) -> Vec<(&'static str, u64)> {
        self.shared.admission.refusals()
    }

    /// `(connections open, handshakes in flight)` on the public port (WebSocket and HTTP).
    pub fn admission_in_use(&self) -> (usize, usize) {
        self.shared.admission.in_use()
    }

    /// Counters summed over cores.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Totals for `/stats`.
    pub fn stats(&self) -> Stats {
        let m = &self.shared.metrics;
        Stats {
            connections: m.sum(|c| &c.connections_current),
            channels: m.sum(|c| &c.channels_owned),
            per_app: self
                .shared
                .apps()
                .live()
                .map(|a| {
                    (
                        a.config.id.clone(),
                        a.connections.load(std::sync::atomic::Ordering::Relaxed) as u64,
                    )
                })
                .collect(),
        }
    }

    /// Starts a graceful shutdown: every core stops accepting and closes its clients with 4200.
    pub fn shutdown(&self) {
        if self
            .shared
            .shutdown
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        for core in 0..self.shared.config.workers {
            // A full queue cannot lose the shutdown: retry briefly, the core is draining.
            self.inject_reliably(core, Command::Shutdown);
        }
    }
}
