//! The bridge: one thread with a tokio current-thread runtime beside the engine's cores. It
//! drains the cores' outbound queues (ClusterLink), publishes events and share deltas to the
//! broker, and hands what other nodes publish to the owner cores through their injection
//! queues. It keeps the node table (heartbeats, leases, the webhook leader) and answers
//! snapshot requests. A core never waits for it. See docs/scale-out.md.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast_engine::{
    AppIdx, ClusterLink, ClusterMetrics, EngineHandle, NodeId, Outbound, Remote, ShareChannel,
};
use ringcast_protocol::ChannelName;
use tokio::sync::{mpsc, Notify};

use crate::broker::{Broker, BrokerEvent, Subject};
use crate::config::{defaults, Backend, ClusterConfig};
use crate::management::{ManagementPeer, MgmtPort};
use crate::wire::{self, Control, Item, Message, ShareEntry};

/// A running bridge.
pub struct Bridge {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The link to attach to the engine before it starts.
pub fn link_for(cfg: &ClusterConfig, workers: usize) -> Arc<ClusterLink> {
    Arc::new(ClusterLink::new(
        Arc::from(cfg.node_id.as_str()),
        cfg.backend.name(),
        workers,
        defaults::OUTBOUND_QUEUE,
    ))
}

impl Bridge {
    /// Starts the bridge thread. `on_connected` runs once, the first time the broker
    /// connection is up (the composition root prints its line there).
    pub fn start(
        cfg: ClusterConfig,
        handle: EngineHandle,
        link: Arc<ClusterLink>,
        mgmt: Option<MgmtPort>,
        on_connected: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<Bridge> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ringcast-cluster".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cluster: cannot build the runtime: {e}");
                        return;
                    }
                };
                rt.block_on(run(cfg, handle, link, mgmt, on_connected, stop_rx));
                let _ = done_tx.send(());
            })?;
        Ok(Bridge {
            stop: Some(stop_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// Graceful stop: publishes what is queued and `Bye` (the other nodes drop this node's
    /// share at once), then closes the broker connections. Bounded.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if self.done.recv_timeout(Duration::from_secs(3)).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Peer {
    started_at: u64,
    last_seen: Instant,
    /// Last delta/snapshot sequence applied; `None` until its state is known.
    seq: Option<u64>,
    sync_asked: Option<Instant>,
    /// Last management message number seen from it.
    mgmt_seq: Option<u64>,
}

/// Snapshot parts being collected from one node.
struct Partial {
    seq: u64,
    parts: u32,
    got: HashSet<u32>,
    channels: Vec<ShareEntry>,
}

struct State {
    cfg: ClusterConfig,
    handle: EngineHandle,
    link: Arc<ClusterLink>,
    me: NodeId,
    started_at: u64,
    seq: u64,
    connected: bool,
    /// Delta items not yet published; counts coalesced per channel.
    pending: Vec<Item>,
    count_idx: HashMap<(AppIdx, ChannelName), usize>,
    /// Channels with local subscribers (their event subjects are subscribed).
    interest: HashSet<(AppIdx, ChannelName)>,
    /// Apps whose broadcast subject is subscribed.
    bc_subscribed: HashSet<AppIdx>,
    peers: HashMap<String, Peer>,
    partial: HashMap<String, Partial>,
    on_connected: Option<Box<dyn FnOnce() + Send>>,
    /// A node does not claim the webhook leadership until it has heard the cluster for a
    /// moment after its first connection (the others answer its Hello at once), so a new
    /// node never sends lifecycle webhooks beside the real leader.
    settle_at: Option<Instant>,
    settled: bool,
    /// The management plane, when it is on (docs/management.md, "In a cluster").
    mgmt: Option<Arc<dyn ManagementPeer>>,
    /// Management messages this node published.
    mgmt_seq: u64,
    /// Where the management plane's snapshot replies come back to this thread.
    mgmt_snap_tx: mpsc::UnboundedSender<Vec<Bytes>>,
}

async fn run(
    cfg: ClusterConfig,
    handle: EngineHandle,
    link: Arc<ClusterLink>,
    mgmt: Option<MgmtPort>,
    on_connected: Box<dyn FnOnce() + Send>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (mgmt_peer, mut mgmt_rx) = match mgmt {
        Some(p) => (Some(p.peer), Some(p.rx)),
        None => (None, None),
    };
    let (mgmt_snap_tx, mut mgmt_snap_rx) = mpsc::unbounded_channel::<Vec<Bytes>>();
    let notify = Arc::new(Notify::new());
    {
        let n = notify.clone();
        link.set_waker(Box::new(move || n.notify_one()));
    }
    let (ev_tx, mut ev_rx) = mpsc::channel(1 << 16);
    let mut broker = match Broker::start(&cfg, ev_tx, link.clone()).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cluster: {e}");
            return;
        }
    };
    let lease = cfg.lease;
    let mut st = State {
        me: link.node_id().clone(),
        started_at: now_ms(),
        seq: 0,
        connected: false,
        pending: Vec::new(),
        count_idx: HashMap::new(),
        interest: HashSet::new(),
        bc_subscribed: HashSet::new(),
        peers: HashMap::new(),
        partial: HashMap::new(),
        on_connected: Some(on_connected),
        settle_at: None,
        settled: false,
        mgmt: mgmt_peer,
        mgmt_seq: 0,
        mgmt_snap_tx,
        cfg,
        handle,
        link,
    };
    st.link
        .metrics
        .nodes_alive
        .store(1, std::sync::atomic::Ordering::Relaxed);
    st.link.set_leader(false);
    let mut flush = tokio::time::interval(Duration::from_millis(defaults::DELTA_FLUSH_MS));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(lease / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            ev = ev_rx.recv() => match ev {
                Some(BrokerEvent::Message(b)) => st.on_message(b, &mut broker).await,
                Some(BrokerEvent::Up) => st.on_up(&mut broker).await,
                Some(BrokerEvent::Down) => st.on_down(),
                None => break,
            },
            _ = notify.notified() => st.drain(&mut broker).await,
            Some(records) = next_local_change(&mut mgmt_rx) => st.publish_mgmt(&broker, records),
            Some(parts) = mgmt_snap_rx.recv() => {
                for records in parts {
                    st.publish_mgmt(&broker, records);
                }
            }
            _ = flush.tick() => {
                if !st.settled && st.settle_at.is_some_and(|t| Instant::now() >= t) {
                    st.settled = true;
                    st.update_leader();
                }
                st.flush_delta(&broker);
                if st.link.take_resync() && st.connected {
                    st.send_snapshot(&broker).await;
                }
            }
            _ = beat.tick() => {
                if st.connected {
                    st.subscribe_apps(&mut broker).await;
                }
                st.heartbeat(&broker);
                st.expire().await;
            }
        }
    }
    // Graceful stop: management changes still queued, what the cores queued while closing
    // their clients, then Bye.
    while let Some(Ok(records)) = mgmt_rx.as_mut().map(|rx| rx.try_recv()) {
        st.publish_mgmt(&broker, records);
    }
    st.drain(&mut broker).await;
    st.flush_delta(&broker);
    if st.connected {
        st.publish_control(
            &broker,
            &Control::Bye {
                node: st.me.to_string(),
            },
        );
        broker.flush().await;
    }
    st.link.set_connected(false);
    broker.close().await;
}

impl State {
    // ------------------------------------------------------------ subjects

    fn nats(&self) -> bool {
        matches!(self.cfg.backend, Backend::Nats { .. })
    }

    fn control_subject(&self) -> Subject {
        let sep = if self.nats() { '.' } else { ':' };
        Subject {
            name: format!("{}{sep}ctl", self.cfg.prefix),
            sharded: false,
        }
    }

    /// Cache channels and apps that keep history: every node records every such event (so
    /// every node answers cache and history the same), so they go on one subject per app
    /// that every node subscribes to.
    fn is_broadcast(&self, app: AppIdx, channel: &ChannelName) -> bool {
        channel.is_cache() || self.handle.app(app).is_some_and(|a| a.history_size > 0)
    }

    fn broadcast_subject(&self, app: AppIdx) -> Subject {
        let id = &self.app_id(app);
        if self.nats() {
            Subject {
                name: format!("{}.bc.{}", self.cfg.prefix, nats_token(id)),
                sharded: false,
            }
        } else {
            Subject {
                name: format!("{}:bc:{id}", self.cfg.prefix),
                sharded: false,
            }
        }
    }

    fn event_subject(&self, app: AppIdx, channel: &ChannelName) -> Subject {
        if self.is_broadcast(app, channel) {
            return self.broadcast_subject(app);
        }
        let id = &self.app_id(app);
        match self.cfg.backend {
            Backend::Nats { .. } => Subject {
                name: format!(
                    "{}.ev.{}.{}",
                    self.cfg.prefix,
                    nats_token(id),
                    hex(channel.as_str())
                ),
                sharded: false,
            },
            Backend::Redis { .. } => Subject {
                name: format!("{}:ev:{id}:{}", self.cfg.prefix, channel.as_str()),
                sharded: false,
            },
            Backend::RedisCluster { .. } => Subject {
                name: format!("{}:ev:{id}:{}", self.cfg.prefix, channel.as_str()),
                sharded: true,
            },
        }
    }

    /// The app's id (apps are named by id on the wire, never by index).
    fn app_id(&self, app: AppIdx) -> String {
        self.handle
            .app(app)
            .map(|a| a.id.clone())
            .unwrap_or_default()
    }

    /// Subscribes the broadcast subject of every live app not subscribed yet (apps can be
    /// added at runtime).
    async fn subscribe_apps(&mut self, broker: &mut Broker) {
        for (app, _) in self.handle.apps() {
            if self.bc_subscribed.insert(app) {
                let s = self.broadcast_subject(app);
                if let Err(e) = broker.subscribe(&s).await {
                    self.bc_subscribed.remove(&app);
                    tracing::warn!("cluster: subscribing {}: {e}", s.name);
                }
            }
        }
    }

    fn app_idx(&self, id: &str) -> Option<AppIdx> {
        self.handle.app_by_id(id).map(|(i, _)| i)
    }

    // ------------------------------------------------------------ to the cores

    /// Hands an update to a core; retries briefly when its injection queue is full, then
    /// counts the loss.
    async fn to_core(&self, core: usize, mut r: Remote) -> bool {
        for _ in 0..200 {
            match self.handle.cluster_send(core, r) {
                Ok(()) => return true,
                Err(back) => r = back,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ClusterMetrics::inc(&self.link.metrics.inbound_dropped);
        false
    }

    async fn to_all_cores(&self, r: impl Fn() -> Remote) {
        for core in 0..self.handle.workers() {
            self.to_core(core, r()).await;
        }
    }

    // ------------------------------------------------------------ from the cores

    async fn drain(&mut self, broker: &mut Broker) {
        let mut items = Vec::new();
        self.link.drain(|i| items.push(i));
        for item in items {
            match item {
                Outbound::Interest { app, channel, on } => {
                    self.on_interest(broker, app, channel, on).await;
                }
                Outbound::Count {
                    app,
                    channel,
                    local,
                } => {
                    let key = (app, channel);
                    // Coalesced, except across zero: a subscribe and unsubscribe within one
                    // batch still reach the leader as occupied + vacated.
                    let slot = self
                        .count_idx
                        .get(&key)
                        .and_then(|&i| match &mut self.pending[i] {
                            Item::Count { count, .. } if (*count == 0) == (local == 0) => {
                                Some(count)
                            }
                            _ => None,
                        });
                    match slot {
                        Some(count) => *count = local,
                        None => {
                            self.count_idx.insert(key.clone(), self.pending.len());
                            self.pending.push(Item::Count {
                                app_id: self.app_id(app),
                                channel: key.1.as_str().to_owned(),
                                count: local,
                            });
                        }
                    }
                }
                Outbound::Join {
                    app,
                    channel,
                    user,
                    info,
                } => self.pending.push(Item::Join {
                    app_id: self.app_id(app),
                    channel: channel.as_str().to_owned(),
                    user: user.to_string(),
                    info: info.to_string(),
                }),
                Outbound::Leave { app, channel, user } => self.pending.push(Item::Leave {
                    app_id: self.app_id(app),
                    channel: channel.as_str().to_owned(),
                    user: user.to_string(),
                }),
                Outbound::Publish {
                    app,
                    channel,
                    frame,
                    except,
                } => {
                    if !self.connected {
                        ClusterMetrics::inc(&self.link.metrics.undeliverable);
                        continue;
                    }
                    let payload = wire::encode_event(
                        &self.me,
                        &self.app_id(app),
                        channel.as_str(),
                        except,
                        &frame,
                    );
                    let subject = self.event_subject(app, &channel);
                    if !broker.publish(subject, payload) {
                        ClusterMetrics::inc(&self.link.metrics.publish_failed);
                    }
                }
                Outbound::Terminate { app, user_id, code } => {
                    let c = Control::Terminate {
                        node: self.me.to_string(),
                        app_id: self.app_id(app),
                        user_id: user_id.to_string(),
                        code,
                    };
                    if self.connected {
                        self.publish_control(broker, &c);
                    } else {
                        ClusterMetrics::inc(&self.link.metrics.undeliverable);
                    }
                }
            }
        }
    }

    async fn on_interest(
        &mut self,
        broker: &mut Broker,
        app: AppIdx,
        channel: ChannelName,
        on: bool,
    ) {
        let broadcast = self.is_broadcast(app, &channel);
        if on {
            if !broadcast && self.interest.insert((app, channel.clone())) && self.connected {
                let s = self.event_subject(app, &channel);
                if let Err(e) = broker.subscribe(&s).await {
                    tracing::warn!("cluster: subscribing {}: {e}", s.name);
                }
            }
            let core = self.handle.owner_core(app, &channel);
            self.to_core(core, Remote::InterestReady { app, channel })
                .await;
        } else if !broadcast && self.interest.remove(&(app, channel.clone())) && self.connected {
            let s = self.event_subject(app, &channel);
            if let Err(e) = broker.unsubscribe(&s).await {
                tracing::warn!("cluster: unsubscribing {}: {e}", s.name);
            }
        }
    }

    fn flush_delta(&mut self, broker: &Broker) {
        if self.pending.is_empty() {
            return;
        }
        let items = std::mem::take(&mut self.pending);
        self.count_idx.clear();
        if !self.connected {
            // The snapshot published on reconnect carries this state.
            return;
        }
        self.seq += 1;
        let c = Control::Delta {
            node: self.me.to_string(),
            seq: self.seq,
            items,
        };
        self.publish_control(broker, &c);
    }

    /// Publishes management records of this node (a local change or a snapshot part). While
    /// the link is down they are dropped: the snapshot exchange on reconnect carries them.
    fn publish_mgmt(&mut self, broker: &Broker, records: Bytes) {
        if !self.connected {
            ClusterMetrics::inc(&self.link.metrics.undeliverable);
            return;
        }
        self.mgmt_seq += 1;
        let c = Control::Mgmt {
            node: self.me.to_string(),
            seq: self.mgmt_seq,
            records,
        };
        self.publish_control(broker, &c);
    }

    /// Asks the management plane for its whole state; the parts come back through
    /// `mgmt_snap_tx` and are published from the loop.
    fn send_mgmt_snapshot(&self) {
        if let Some(m) = &self.mgmt {
            let tx = self.mgmt_snap_tx.clone();
            m.snapshot(
                defaults::SNAPSHOT_PART_BYTES,
                Box::new(move |parts| {
                    let _ = tx.send(parts);
                }),
            );
        }
    }

    fn publish_control(&self, broker: &Broker, c: &Control) {
        if !broker.publish(self.control_subject(), wire::encode_control(c)) {
            ClusterMetrics::inc(&self.link.metrics.publish_failed);
        }
    }

    /// Publishes this node's whole share (split in parts below the broker's payload limit).
    async fn send_snapshot(&mut self, broker: &Broker) {
        // Items drained before the dump are in it; what comes later follows as deltas.
        let share: Vec<ShareChannel> = match self.handle.cluster_dump().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cluster: snapshot: {e}");
                return;
            }
        };
        let entries: Vec<ShareEntry> = share
            .into_iter()
            .map(|c| ShareEntry {
                app_id: self.app_id(c.app),
                channel: c.channel.as_str().to_owned(),
                count: c.count,
                members: c
                    .members
                    .into_iter()
                    .map(|(u, i)| (u.to_string(), i.to_string()))
                    .collect(),
            })
            .collect();
        let mut parts: Vec<Vec<ShareEntry>> = vec![Vec::new()];
        let mut size = 0;
        for e in entries {
            let n = wire::share_entry_size(&e);
            if size + n > defaults::SNAPSHOT_PART_BYTES && !parts.last().is_some_and(Vec::is_empty)
            {
                parts.push(Vec::new());
                size = 0;
            }
            size += n;
            if let Some(last) = parts.last_mut() {
                last.push(e);
            }
        }
        let total = parts.len() as u32;
        for (i, channels) in parts.into_iter().enumerate() {
            let c = Control::Snapshot {
                node: self.me.to_string(),
                started_at: self.started_at,
                seq: self.seq,
                part: i as u32,
                parts: total,
                channels,
            };
            self.publish_control(broker, &c);
        }
        ClusterMetrics::inc(&self.link.metrics.snapshots_sent);
    }

    fn heartbeat(&self, broker: &Broker) {
        if self.connected {
            self.publish_control(
                broker,
                &Control::Heartbeat {
                    node: self.me.to_string(),
                    started_at: self.started_at,
                    seq: self.seq,
                    mgmt_seq: self.mgmt_seq,
                },
            );
        }
    }

    // ------------------------------------------------------------ broker state

    async fn on_up(&mut self, broker: &mut Broker) {
        ClusterMetrics::inc(&self.link.metrics.connects);
        let mut subjects = vec![self.control_subject()];
        self.bc_subscribed.clear();
        let interest: Vec<(AppIdx, ChannelName)> = self.interest.iter().cloned().collect();
        for (app, ch) in &interest {
            subjects.push(self.event_subject(*app, ch));
        }
        for s in &subjects {
            if let Err(e) = broker.subscribe(s).await {
                tracing::warn!("cluster: subscribing {}: {e}", s.name);
            }
        }
        self.subscribe_apps(broker).await;
        let first = !self.connected && self.on_connected.is_some();
        if self.settle_at.is_none() {
            self.settle_at = Some(now_settle(self.cfg.lease));
        }
        // The others' leases restart now: they could not be heard while the link was down.
        let now = Instant::now();
        for p in self.peers.values_mut() {
            p.last_seen = now;
        }
        self.connected = true;
        self.link.set_connected(true);
        self.publish_control(
            broker,
            &Control::Hello {
                node: self.me.to_string(),
                started_at: self.started_at,
            },
        );
        self.send_snapshot(broker).await;
        if self.mgmt.is_some() {
            // Converge both ways: the others send their management state, this node sends its
            // own (changes made here while the link was down reach them).
            self.publish_control(
                broker,
                &Control::MgmtSync {
                    node: self.me.to_string(),
                    target: String::new(),
                },
            );
            self.send_mgmt_snapshot();
        }
        self.heartbeat(broker);
        tracing::info!(node = %self.me, backend = self.cfg.backend.name(), "cluster: broker connection up");
        if first {
            if let Some(f) = self.on_connected.take() {
                f();
            }
        }
    }

    fn on_down(&mut self) {
        if self.connected {
            tracing::warn!(
                "cluster: broker connection lost; local delivery continues, reconnecting"
            );
        }
        self.connected = false;
        self.link.set_connected(false);
    }

    // ------------------------------------------------------------ from the broker

    async fn on_message(&mut self, payload: Bytes, broker: &mut Broker) {
        let msg = match wire::decode(&payload) {
            Ok(m) => m,
            Err(e) => {
                ClusterMetrics::inc(&self.link.metrics.bad_messages);
                tracing::debug!("cluster: ignored a bad message: {e}");
                return;
            }
        };
        match msg {
            Message::Event(ev) => {
                if *ev.origin == *self.me {
                    return;
                }
                let (Some(app), Ok(channel)) =
                    (self.app_idx(&ev.app_id), ChannelName::parse(&ev.channel))
                else {
                    ClusterMetrics::inc(&self.link.metrics.bad_messages);
                    return;
                };
                ClusterMetrics::inc(&self.link.metrics.received);
                let core = self.handle.owner_core(app, &channel);
                self.to_core(
                    core,
                    Remote::Event {
                        app,
                        channel,
                        frame: ev.frame,
                        except: ev.except,
                    },
                )
                .await;
            }
            Message::Control(c) => {
                if *c.node() == *self.me {
                    return;
                }
                ClusterMetrics::inc(&self.link.metrics.received);
                self.on_control(c, broker).await;
            }
        }
    }

    fn touch(&mut self, node: &str, started_at: Option<u64>) -> bool {
        let now = Instant::now();
        let mut new = false;
        let p = self.peers.entry(node.to_owned()).or_insert_with(|| {
            new = true;
            Peer {
                started_at: started_at.unwrap_or(u64::MAX),
                last_seen: now,
                seq: None,
                sync_asked: None,
                mgmt_seq: None,
            }
        });
        p.last_seen = now;
        if let Some(s) = started_at {
            if p.started_at != s {
                // Restarted with the same id: its state starts over.
                // (Its management numbers start over too; a node first heard without its
                // start time, through a `Mgmt` or `MgmtSync`, keeps what was counted.)
                if p.started_at != u64::MAX {
                    p.mgmt_seq = None;
                }
                p.started_at = s;
                p.seq = None;
            }
        }
        if new {
            self.update_leader();
        }
        new
    }

    fn ask_sync(&mut self, broker: &Broker, node: &str) {
        let lease = self.cfg.lease;
        let Some(p) = self.peers.get_mut(node) else {
            return;
        };
        if p.sync_asked.is_some_and(|t| t.elapsed() < lease / 3) {
            return;
        }
        p.sync_asked = Some(Instant::now());
        let c = Control::SyncRequest {
            node: self.me.to_string(),
            target: node.to_owned(),
        };
        self.publish_control(broker, &c);
    }

    async fn on_control(&mut self, c: Control, broker: &mut Broker) {
        match c {
            Control::Hello { node, started_at } => {
                self.touch(&node, Some(started_at));
                // It knows nothing of this node yet.
                self.send_snapshot(broker).await;
            }
            Control::Heartbeat {
                node,
                started_at,
                seq,
                mgmt_seq,
            } => {
                self.touch(&node, Some(started_at));
                self.check_mgmt_seq(broker, &node, mgmt_seq);
                let known = self.peers.get(&node).and_then(|p| p.seq);
                match known {
                    Some(k) if seq <= k => {}
                    Some(_) => {
                        ClusterMetrics::inc(&self.link.metrics.sequence_gaps);
                        self.ask_sync(broker, &node);
                    }
                    None => self.ask_sync(broker, &node),
                }
            }
            Control::Delta { node, seq, items } => {
                self.touch(&node, None);
                let known = self.peers.get(&node).and_then(|p| p.seq);
                match known {
                    Some(k) if seq <= k => return, // a duplicate
                    Some(k) if seq != k + 1 => {
                        ClusterMetrics::inc(&self.link.metrics.sequence_gaps);
                        self.ask_sync(broker, &node);
                    }
                    Some(_) => {}
                    None => self.ask_sync(broker, &node),
                }
                if let Some(p) = self.peers.get_mut(&node) {
                    p.seq = Some(seq);
                }
                let nid: NodeId = Arc::from(node.as_str());
                for item in items {
                    self.apply_item(&nid, item).await;
                }
            }
            Control::Snapshot {
                node,
                started_at,
                seq,
                part,
                parts,
                channels,
            } => {
                self.touch(&node, Some(started_at));
                if parts == 0 || part >= parts {
                    ClusterMetrics::inc(&self.link.metrics.bad_messages);
                    return;
                }
                let p = self.partial.entry(node.clone()).or_insert_with(|| Partial {
                    seq,
                    parts,
                    got: HashSet::new(),
                    channels: Vec::new(),
                });
                if p.seq != seq || p.parts != parts {
                    *p = Partial {
                        seq,
                        parts,
                        got: HashSet::new(),
                        channels: Vec::new(),
                    };
                }
                if p.got.insert(part) {
                    p.channels.extend(channels);
                }
                if p.got.len() as u32 == parts {
                    let done = self.partial.remove(&node).map(|p| p.channels);
                    if let Some(channels) = done {
                        self.apply_snapshot(&node, channels).await;
                        if let Some(peer) = self.peers.get_mut(&node) {
                            peer.seq = Some(seq);
                        }
                    }
                }
            }
            Control::Bye { node } => {
                if self.peers.remove(&node).is_some() {
                    tracing::info!(node = %node, "cluster: node left");
                }
                self.partial.remove(&node);
                self.update_leader();
                let nid: NodeId = Arc::from(node.as_str());
                self.to_all_cores(|| Remote::NodeGone { node: nid.clone() })
                    .await;
            }
            Control::Terminate {
                app_id,
                user_id,
                code,
                ..
            } => {
                let Some(app) = self.app_idx(&app_id) else {
                    ClusterMetrics::inc(&self.link.metrics.bad_messages);
                    return;
                };
                let user: Arc<str> = Arc::from(user_id.as_str());
                self.to_all_cores(|| Remote::Terminate {
                    app,
                    user_id: user.clone(),
                    code,
                })
                .await;
            }
            Control::SyncRequest { node, target } => {
                self.touch(&node, None);
                if *target == *self.me {
                    self.send_snapshot(broker).await;
                }
            }
            Control::Mgmt { node, seq, records } => {
                self.touch(&node, None);
                let Some(m) = self.mgmt.clone() else {
                    return;
                };
                let known = self.peers.get(&node).and_then(|p| p.mgmt_seq);
                if let Some(p) = self.peers.get_mut(&node) {
                    p.mgmt_seq = Some(seq);
                }
                // Records are idempotent (last writer wins), so a repeat or a restarted
                // node's low numbers are applied anyway; only a gap needs a snapshot.
                if known.is_some_and(|k| seq > k + 1) {
                    ClusterMetrics::inc(&self.link.metrics.sequence_gaps);
                    self.publish_control(
                        broker,
                        &Control::MgmtSync {
                            node: self.me.to_string(),
                            target: node.clone(),
                        },
                    );
                }
                m.apply(&node, records);
            }
            Control::MgmtSync { node, target } => {
                self.touch(&node, None);
                if target.is_empty() || *target == *self.me {
                    self.send_mgmt_snapshot();
                }
            }
        }
    }

    /// A heartbeat names the last management message its node published: if this node has
    /// not seen it, the message was lost and that node's management state is asked for. An
    /// unknown node's number is taken as it is (its state arrives by the exchange when either
    /// side's link comes up).
    fn check_mgmt_seq(&mut self, broker: &Broker, node: &str, mgmt_seq: u64) {
        if self.mgmt.is_none() {
            return;
        }
        let Some(p) = self.peers.get_mut(node) else {
            return;
        };
        let lost = p.mgmt_seq.is_some_and(|k| mgmt_seq > k);
        p.mgmt_seq = Some(mgmt_seq);
        if lost {
            ClusterMetrics::inc(&self.link.metrics.sequence_gaps);
            self.publish_control(
                broker,
                &Control::MgmtSync {
                    node: self.me.to_string(),
                    target: node.to_owned(),
                },
            );
        }
    }

    async fn apply_item(&mut self, node: &NodeId, item: Item) {
        let (app_id, channel) = match &item {
            Item::Count {
                app_id, channel, ..
            }
            | Item::Join {
                app_id, channel, ..
            }
            | Item::Leave {
                app_id, channel, ..
            } => (app_id, channel),
        };
        let (Some(app), Ok(channel)) = (self.app_idx(app_id), ChannelName::parse(channel)) else {
            ClusterMetrics::inc(&self.link.metrics.bad_messages);
            return;
        };
        let core = self.handle.owner_core(app, &channel);
        let node = node.clone();
        let r = match item {
            Item::Count { count, .. } => Remote::Count {
                node,
                app,
                channel,
                count,
            },
            Item::Join { user, info, .. } => Remote::Join {
                node,
                app,
                channel,
                user: Arc::from(user.as_str()),
                info: Arc::from(info.as_str()),
            },
            Item::Leave { user, .. } => Remote::Leave {
                node,
                app,
                channel,
                user: Arc::from(user.as_str()),
            },
        };
        self.to_core(core, r).await;
    }

    async fn apply_snapshot(&mut self, node: &str, channels: Vec<ShareEntry>) {
        let workers = self.handle.workers();
        let mut per_core: Vec<Vec<ShareChannel>> = (0..workers).map(|_| Vec::new()).collect();
        for e in channels {
            let (Some(app), Ok(channel)) =
                (self.app_idx(&e.app_id), ChannelName::parse(&e.channel))
            else {
                ClusterMetrics::inc(&self.link.metrics.bad_messages);
                continue;
            };
            let core = self.handle.owner_core(app, &channel);
            per_core[core].push(ShareChannel {
                app,
                channel,
                count: e.count,
                members: e
                    .members
                    .into_iter()
                    .map(|(u, i)| (Arc::from(u.as_str()), Arc::from(i.as_str())))
                    .collect(),
            });
        }
        let nid: NodeId = Arc::from(node);
        for (core, channels) in per_core.into_iter().enumerate() {
            self.to_core(
                core,
                Remote::Snapshot {
                    node: nid.clone(),
                    channels,
                },
            )
            .await;
        }
    }

    /// Nodes silent for a lease are dead: their share is dropped on every core.
    ///
    /// Not while this node's own broker link is down: then silence proves nothing about the
    /// others (their leases restart when the link is back).
    async fn expire(&mut self) {
        if !self.connected {
            return;
        }
        let lease = self.cfg.lease;
        let dead: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.last_seen.elapsed() > lease)
            .map(|(n, _)| n.clone())
            .collect();
        for node in &dead {
            tracing::warn!(node = %node, "cluster: node lease expired, dropping its share");
            self.peers.remove(node);
            self.partial.remove(node);
            ClusterMetrics::inc(&self.link.metrics.nodes_expired);
        }
        // The leader first: if the dead node was the leader, its successor must already be
        // in charge when the cores drop the share and fire member_removed / vacated.
        self.update_leader();
        for node in dead {
            let nid: NodeId = Arc::from(node.as_str());
            self.to_all_cores(|| Remote::NodeGone { node: nid.clone() })
                .await;
        }
    }

    /// The webhook leader is the oldest live node: smallest (started_at, node id).
    fn update_leader(&self) {
        let mine = (self.started_at, &*self.me);
        let leader = self.settled
            && self
                .peers
                .iter()
                .all(|(id, p)| mine < (p.started_at, id.as_str()));
        self.link.set_leader(leader);
        self.link.metrics.nodes_alive.store(
            self.peers.len() as u64 + 1,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// The next local management change, or never when the management plane is off.
async fn next_local_change(rx: &mut Option<mpsc::UnboundedReceiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// When a newly connected node may claim the leadership: a third of the lease, at most 500 ms.
fn now_settle(lease: Duration) -> Instant {
    Instant::now() + (lease / 3).min(Duration::from_millis(500))
}

/// App ids are used as one NATS subject token; anything but [A-Za-z0-9_-] is hex-encoded.
fn nats_token(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s.to_owned()
    } else {
        format!("x{}", hex(s))
    }
}

fn hex(s: &str) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        out.push(H[(b >> 4) as usize] as char);
        out.push(H[(b & 15) as usize] as char);
    }
    out
}
