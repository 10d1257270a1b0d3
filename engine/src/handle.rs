//! [`EngineHandle`]: how the rest of the process (the control plane, the composition root)
//! publishes and queries. It is `Send + Sync + Clone`; each call encodes what it can on the
//! caller's thread (an event becomes its WebSocket frame here, once per channel) and enters the
//! owning core through that core's bounded injection queue. Answers come back on oneshot
//! channels, so the futures work on any executor.

use std::sync::Arc;

use futures_channel::oneshot;
use ringcast_protocol::{pusher, ChannelKind, ChannelName, SocketId};

use crate::cache::CachedEvent;
use crate::config::{AppConfig, Config};
use crate::history::{HistoryEvent, HistoryQuery};
use crate::metrics::MetricsSnapshot;
use crate::msg::{AppIdx, ChanKey, ChannelCounts, ChannelSummary, Command, PresenceUser};
use crate::shared::Shared;

/// Why the engine could not do what a handle asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// A core's injection queue is full: the caller should answer 503/429 and retry later.
    Overloaded,
    /// The engine is shutting down or stopped.
    Stopped,
    /// No such app.
    UnknownApp,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineError::Overloaded => "server overloaded, retry later",
            EngineError::Stopped => "server is shutting down",
            EngineError::UnknownApp => "unknown app",
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

#[derive(Clone)]
pub struct EngineHandle {
    pub(crate) shared: Arc<Shared>,
}

impl EngineHandle {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Finds an app by id.
    pub fn app_by_id(&self, id: &str) -> Option<(AppIdx, &AppConfig)> {
        self.shared.app_by_id(id).map(|a| (a.idx, &a.config))
    }

    /// Finds an app by key.
    pub fn app_by_key(&self, key: &str) -> Option<(AppIdx, &AppConfig)> {
        self.shared.app_by_key(key).map(|a| (a.idx, &a.config))
    }

    pub fn app(&self, idx: AppIdx) -> &AppConfig {
        &self.shared.app(idx).config
    }

    fn key(&self, app: AppIdx, name: ChannelName) -> Result<ChanKey, EngineError> {
        if (app as usize) < self.shared.apps.len() {
            Ok(ChanKey { app, name })
        } else {
            Err(EngineError::UnknownApp)
        }
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
        // The whole socket id: a connection is excluded only if both halves match.
        let except = p.except;
        let mut replies = Vec::with_capacity(p.channels.len());
        for name in p.channels {
            let frame = pusher::event_frame(&p.event, name.as_str(), &p.data, None);
            let key = self.key(p.app, name)?;
            let owner = self.shared.owner_of(&key);
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
        // The whole socket id: a connection is excluded only if both halves match.
        let except = p.except;
        for name in p.channels {
            let frame = pusher::event_frame(&p.event, name.as_str(), &p.data, None);
            let key = self.key(p.app, name)?;
            let owner = self.shared.owner_of(&key);
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
        if (app as usize) >= self.shared.apps.len() {
            return Err(EngineError::UnknownApp);
        }
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
        self.ask_owner(app, name, |key, reply| Command::ChannelHistory {
            key,
            limit,
            reply,
        })
        .await
    }

    /// An app's recent events across channels (all cores), newest first, filtered by `q`.
    /// Returns at most `q.limit` events and whether more matched.
    pub async fn history(
        &self,
        app: AppIdx,
        q: HistoryQuery,
    ) -> Result<(Vec<HistoryEvent>, bool), EngineError> {
        if (app as usize) >= self.shared.apps.len() {
            return Err(EngineError::UnknownApp);
        }
        let mut all: Vec<HistoryEvent> = match &q.channel {
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
                .apps
                .iter()
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
            let mut cmd = Command::Shutdown;
            for _ in 0..1000 {
                match self.shared.mesh.inject(core, cmd) {
                    Ok(()) => break,
                    Err(c) => {
                        cmd = c;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            }
        }
    }
}
