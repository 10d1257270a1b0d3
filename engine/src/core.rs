//! One worker core's state and its message handling. Everything here is `!Send` and touched
//! only by the core's own tasks; other cores are reached only through the mesh.
//!
//! Two roles live on every core:
//! - **subscriber side**: the local index channel -> connections on this core, and delivery of
//!   frames to them (`deliver`);
//! - **owner side**: for the channels hashed to this core, the authoritative state: subscriber
//!   count per core, presence members with per-user connection refcounts, occupied/vacated
//!   transitions (`on_subscribe`, `on_unsubscribe`, `on_publish`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use indexmap::IndexMap;
use ringcast_protocol::{pusher, ChannelKind, PresenceSnapshot, SocketId};

use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::cluster::{NodeId, Outbound, Remote, ShareChannel};
use crate::config::defaults;
use crate::conn::{Conn, SubState};
use crate::history::History;
use crate::maps::{CoreMap, SubscriberMap};
use crate::mesh::{MeshRx, MeshTx};
use crate::metrics::{CloseReason, CoreMetrics};
use crate::msg::{
    AppIdx, ChanKey, ChannelCounts, ChannelSummary, Command, MemberInfo, Msg, PresenceUser, Replay,
    Resume, SubOutcome,
};
use crate::shared::Shared;

/// From this many subscribers of a channel on a core, `Core::deliver` gives them a core-local
/// copy of the frame (one allocation and copy per event per core) rather than the shared one;
/// never on a one-worker server, where no other core touches the count.
pub(crate) const LOCAL_COPY_MIN_SUBSCRIBERS: usize = 32;

/// Signed-in connections on a core: (app, user id) -> connection ids.
type UserIndex = CoreMap<(AppIdx, Arc<str>), Vec<u64>>;

/// Authoritative state of a channel, held by its owner core. Clustered, it also holds the
/// other nodes' shares, so every query is answered from the merged view without asking the
/// broker; an entry stays while the channel is occupied anywhere in the cluster.
pub(crate) struct OwnedChannel {
    /// Subscribed connections per core.
    per_core: Box<[u32]>,
    /// Presence channels: user id -> member (with the connections that joined as that user).
    members: Option<IndexMap<Arc<str>, Member>>,
    /// Other nodes' shares of this channel (clustered only; a handful of entries).
    remote: Vec<RemoteShare>,
    /// Clustered: `subscription_succeeded` answers held until the broker subscription for
    /// this channel's events is in place (`Some` while waiting), so the first event after a
    /// subscription is never missed.
    held_acks: Option<Vec<(usize, Msg)>>,
    /// Subscription-count broadcasts: when the last one went out, and whether one is owed.
    count_sent: Option<Instant>,
    count_dirty: bool,
    /// Events fanned out while the channel is occupied: their sequence numbers for apps
    /// without history (with history the history numbers them).
    seq: u64,
}

/// One other node's share of a channel.
struct RemoteShare {
    node: NodeId,
    count: u64,
    /// user id -> user_info JSON
    members: IndexMap<Arc<str>, Arc<str>>,
}

impl OwnedChannel {
    /// The cores of this node holding subscribers of the channel.
    fn target_cores(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_core
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, _)| i)
    }

    fn new(workers: usize, presence: bool) -> OwnedChannel {
        OwnedChannel {
            per_core: vec![0; workers].into_boxed_slice(),
            members: presence.then(IndexMap::new),
            remote: Vec::new(),
            held_acks: None,
            count_sent: None,
            count_dirty: false,
            seq: 0,
        }
    }

    /// Subscribed connections on this node's cores.
    fn local_total(&self) -> u64 {
        self.per_core.iter().map(|&n| u64::from(n)).sum()
    }

    /// Subscribed connections in the whole cluster.
    fn total(&self) -> u64 {
        self.local_total() + self.remote.iter().map(|r| r.count).sum::<u64>()
    }

    /// Whether `user` is a member anywhere in the cluster.
    fn is_present(&self, user: &str) -> bool {
        self.members.as_ref().is_some_and(|m| m.contains_key(user))
            || self.remote.iter().any(|r| r.members.contains_key(user))
    }

    /// Members of the merged view: local ones first, then each remote user once.
    fn merged_members(&self) -> Vec<(&str, &str)> {
        let Some(local) = self.members.as_ref() else {
            return Vec::new();
        };
        let mut out: Vec<(&str, &str)> =
            local.iter().map(|(id, m)| (&**id, &*m.info_json)).collect();
        if self.remote.is_empty() {
            return out;
        }
        let mut seen: std::collections::HashSet<&str> = out.iter().map(|(id, _)| *id).collect();
        for r in &self.remote {
            for (id, info) in &r.members {
                if seen.insert(id) {
                    out.push((id, info));
                }
            }
        }
        out
    }

    /// Distinct users in the whole cluster (presence channels only).
    fn user_count(&self) -> Option<u64> {
        let local = self.members.as_ref()?;
        if self.remote.is_empty() {
            return Some(local.len() as u64);
        }
        Some(self.merged_members().len() as u64)
    }

    /// Nothing left anywhere: the owner drops the entry.
    fn is_empty(&self) -> bool {
        self.total() == 0
            && self.members.as_ref().is_none_or(|m| m.is_empty())
            && self.remote.iter().all(|r| r.members.is_empty())
    }
}

/// A change to another node's share of a channel.
enum ShareEdit {
    Count(u64),
    Join(Arc<str>, Arc<str>),
    Leave(Arc<str>),
    /// Full replacement (snapshot); `Replace(0, [])` removes the share.
    Replace(u64, Vec<(Arc<str>, Arc<str>)>),
}

struct Member {
    info_json: Arc<str>,
    conns: Vec<u64>,
}

pub(crate) struct Core {
    pub idx: usize,
    pub shared: Arc<Shared>,
    tx: RefCell<MeshTx>,
    rx: RefCell<MeshRx>,
    /// Messages this core sends to itself (it owns the channel): processed by the drain task.
    local_q: RefCell<VecDeque<Msg>>,
    /// Local subscribers of each channel that has any on this core.
    subs: RefCell<CoreMap<ChanKey, SubscriberMap<Rc<Conn>>>>,
    /// Channels this core owns.
    owned: RefCell<CoreMap<ChanKey, OwnedChannel>>,
    /// Live connections on this core by id.
    pub conns: RefCell<CoreMap<u64, Rc<Conn>>>,
    /// Signed-in users on this core: (app, user id) -> connection ids.
    users: RefCell<UserIndex>,
    next_seq: Cell<u64>,
    rng: Cell<u64>,
    pub shutting_down: Cell<bool>,
    /// Wakes the accept loop when shutdown begins.
    pub shutdown_waker: RefCell<Option<std::task::Waker>>,
    history: RefCell<History>,
    activity: RefCell<crate::activity::ActivityLog>,
    cache: RefCell<Cache>,
    /// Owned channels whose throttled subscription count is owed.
    dirty_counts: RefCell<Vec<ChanKey>>,
    /// Push-back mark of the mesh (and of `local_q`), and the congestion last published.
    pushback_at: usize,
    congested: Cell<bool>,
    /// Scratch list of the cores an event goes to, reused by every `fan_out` (taken out while
    /// in use), so a publish allocates no target list.
    targets: RefCell<Vec<usize>>,
}

impl Core {
    pub(crate) fn new(idx: usize, shared: Arc<Shared>, tx: MeshTx, rx: MeshRx, seed: u64) -> Core {
        Core {
            idx,
            tx: RefCell::new(tx),
            rx: RefCell::new(rx),
            local_q: RefCell::new(VecDeque::new()),
            subs: RefCell::new(CoreMap::default()),
            owned: RefCell::new(CoreMap::default()),
            conns: RefCell::new(CoreMap::default()),
            users: RefCell::new(CoreMap::default()),
            next_seq: Cell::new(1),
            rng: Cell::new(seed | 1),
            shutting_down: Cell::new(false),
            shutdown_waker: RefCell::new(None),
            history: RefCell::new(History::new(shared.config.history_max_bytes_per_core)),
            activity: RefCell::new(crate::activity::ActivityLog::new(idx)),
            cache: RefCell::new(Cache::new(shared.config.cache_max_entries_per_core)),
            dirty_counts: RefCell::new(Vec::new()),
            pushback_at: crate::mesh::pushback_mark(shared.config.mesh_overflow_limit),
            congested: Cell::new(false),
            targets: RefCell::new(Vec::new()),
            shared,
        }
    }

    #[inline]
    pub fn metrics(&self) -> &CoreMetrics {
        self.shared.metrics.core(self.idx)
    }

    #[inline]
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// A new connection id: unique in the process, `id % workers == core`.
    pub fn next_conn_id(&self) -> u64 {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        seq * self.workers() as u64 + self.idx as u64
    }

    /// xorshift64*: the random half of socket ids (not a secret, only uniqueness across restarts).
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    // ---------------------------------------------------------------- sending

    /// Sends a message to the owner of `key` (possibly this core).
    pub(crate) fn to_owner(&self, key: &ChanKey, msg: Msg) {
        let owner = self.shared.owner_of(key);
        self.send(owner, msg);
    }

    pub(crate) fn send(&self, to: usize, msg: Msg) {
        if to == self.idx {
            self.local_q.borrow_mut().push_back(msg);
            self.shared.mesh.signals[self.idx].waker.wake();
        } else {
            self.tx.borrow_mut().send(to, msg, self.metrics());
        }
    }

    /// Wakes peers that were sent something, and publishes this core's congestion (its
    /// outgoing mesh or its queue to itself past the push-back mark). Called after every batch
    /// of work.
    pub fn flush(&self) {
        let mut tx = self.tx.borrow_mut();
        tx.flush();
        let congested = tx.is_congested() || self.local_q.borrow().len() >= self.pushback_at;
        drop(tx);
        if congested != self.congested.get() {
            self.congested.set(congested);
            self.shared.mesh.congested[self.idx]
                .store(congested, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Admission control for new work that will travel to `owner` and fan out from it (a
    /// publish, a subscription): refused while this core or the owner is congested, so the
    /// publisher backs off before any event would have to be dropped. Counts a refusal.
    pub(crate) fn admits(&self, owner: usize) -> bool {
        let mesh = &self.shared.mesh;
        if self.congested.get() || mesh.is_congested(owner) {
            self.metrics().mesh_pushback.inc();
            false
        } else {
            true
        }
    }

    // ---------------------------------------------------------------- drain task

    /// The core's mesh task: handles everything addressed to this core, parks when idle.
    pub(crate) async fn drain_loop(self: Rc<Self>) {
        const BUDGET: usize = 4096;
        let mut turn = DrainTurn::default();
        loop {
            let mut did = 0;
            // Peers.
            // Handled inline: nothing `handle_msg` does touches `rx`.
            did += self.rx.borrow_mut().drain(BUDGET, |m| self.handle_msg(m));
            // Self.
            loop {
                let m = self.local_q.borrow_mut().pop_front();
                match m {
                    Some(m) => {
                        did += 1;
                        self.handle_msg(m);
                    }
                    None => break,
                }
                if did >= BUDGET {
                    break;
                }
            }
            // The rest of the process.
            while let Some(cmd) = self.shared.mesh.injectors[self.idx].pop() {
                did += 1;
                if self.handle_command(cmd) {
                    self.begin_shutdown();
                }
                if did >= BUDGET {
                    break;
                }
            }
            self.flush();
            match turn.after_batch(did, BUDGET) {
                DrainNext::Yield => {
                    // Let connection tasks and the flush pass run.
                    yield_now().await;
                    continue;
                }
                DrainNext::Again => continue,
                DrainNext::Park => {}
            }
            if self.tx.borrow().has_overflow() {
                // A peer ring is full: retry shortly instead of parking indefinitely.
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
            let me = self.clone();
            std::future::poll_fn(move |cx| {
                me.shared.mesh.signals[me.idx].waker.register(cx.waker());
                if me.has_pending() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    fn has_pending(&self) -> bool {
        !self.local_q.borrow().is_empty()
            || !self.rx.borrow().is_empty()
            || !self.shared.mesh.injectors[self.idx].is_empty()
    }

    fn handle_msg(&self, m: Msg) {
        match m {
            Msg::Subscribe {
                key,
                socket,
                gen,
                from,
                member,
                resume,
            } => self.on_subscribe(key, socket, gen, from as usize, member, resume),
            Msg::Unsubscribe {
                key,
                conn,
                from,
                user_id,
            } => self.on_unsubscribe(key, conn, from as usize, user_id),
            Msg::Publish { key, frame, except } => {
                self.on_publish(&key, frame, except);
            }
            Msg::SubAck {
                key,
                conn,
                gen,
                outcome,
            } => self.on_sub_ack(key, conn, gen, outcome),
            Msg::Deliver {
                key,
                frame,
                except,
                seq,
            } => self.deliver(&key, &frame, except, seq),
            Msg::Lost { keys } => self.on_lost(&keys),
        }
    }

    /// Returns true when the command asks the core to shut down.
    fn handle_command(&self, cmd: Command) -> bool {
        match cmd {
            Command::Publish {
                key,
                frame,
                except,
                reply,
            } => {
                self.metrics().events_published.inc();
                if self.activity_cap(key.app) > 0 {
                    let name = crate::history::frame_event_name(&frame);
                    self.record_activity(
                        key.app,
                        crate::activity::ActivityKind::ApiEvent,
                        Some(key.name.as_str()),
                        None,
                        None,
                        name.as_deref(),
                    );
                }
                let counts = self.on_publish(&key, frame, except);
                if let Some(reply) = reply {
                    let _ = reply.send(counts);
                }
            }
            Command::ListChannels { app, prefix, reply } => {
                let owned = self.owned.borrow();
                let list = owned
                    .iter()
                    .filter(|(k, ch)| {
                        ch.total() > 0
                            && k.app == app
                            && prefix
                                .as_deref()
                                .is_none_or(|p| k.name.as_str().starts_with(p))
                    })
                    .map(|(k, ch)| summary(k, Some(ch)))
                    .collect();
                let _ = reply.send(list);
            }
            Command::ChannelInfo { key, reply } => {
                let _ = reply.send(summary(&key, self.owned.borrow().get(&key)));
            }
            Command::PresenceUsers { key, reply } => {
                let users = self
                    .owned
                    .borrow()
                    .get(&key)
                    .map(|ch| {
                        ch.merged_members()
                            .into_iter()
                            .map(|(id, info)| PresenceUser {
                                id: id.to_string(),
                                user_info_json: info.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(users);
            }
            Command::CloseApp {
                app,
                key,
                code,
                reason,
            } => {
                let conns = self.conns.borrow();
                for c in conns.values() {
                    if c.app == app && key.as_deref().is_none_or(|k| *c.key == *k) {
                        c.close(code, reason, CloseReason::Refused);
                    }
                }
            }
            Command::TerminateUser {
                app,
                user_id,
                code,
                reply,
            } => {
                let _ = reply.send(self.terminate_local(app, &user_id, code));
            }
            Command::ChannelCache { key, reply } => {
                let _ = reply.send(self.cache.borrow_mut().describe(&key, self.shared.now()));
            }
            Command::ChannelHistory { key, limit, reply } => {
                let _ = reply.send(self.history.borrow().channel_events(&key, limit));
            }
            Command::History { app, query, reply } => {
                // `query` returns newest first already.
                let _ = reply.send(self.history.borrow().query(app, &query));
            }
            Command::Remote(r) => self.on_remote(r),
            Command::ClusterDump { reply } => {
                let _ = reply.send(self.cluster_dump());
            }
            Command::Activity { app, query, reply } => {
                let _ = reply.send(self.activity.borrow().query(app, &query));
            }
            Command::ReplaceUserSocket { app, user_id, keep } => {
                let ids: Vec<u64> = self
                    .users
                    .borrow()
                    .get(&(app, Arc::from(user_id.as_str())))
                    .cloned()
                    .unwrap_or_default();
                let conns = self.conns.borrow();
                for id in ids.into_iter().filter(|id| *id != keep) {
                    if let Some(c) = conns.get(&id).filter(|c| c.user_socket) {
                        c.close(
                            crate::user_socket::CLOSE_REPLACED,
                            "Replaced by a newer connection of the same user",
                            CloseReason::Terminated,
                        );
                    }
                }
            }
            Command::Shutdown => return true,
            Command::InjectPanic => panic!("injected panic on core {} (test hook)", self.idx),
            Command::Tick { reply } => {
                self.housekeeping(true);
                let _ = reply.send(());
            }
            Command::Stall { stalled, release } => {
                // Test hook only: a core never blocks otherwise.
                let _ = stalled.send(());
                let _ = release.recv_timeout(Duration::from_secs(30));
            }
        }
        false
    }

    /// Closes the local connections signed in as `user_id`; returns how many.
    fn terminate_local(&self, app: AppIdx, user_id: &str, code: u16) -> usize {
        let ids: Vec<u64> = self
            .users
            .borrow()
            .get(&(app, Arc::from(user_id)))
            .cloned()
            .unwrap_or_default();
        let conns = self.conns.borrow();
        let mut n = 0;
        for id in ids {
            if let Some(c) = conns.get(&id) {
                c.close(
                    code,
                    "Connection terminated by the server",
                    CloseReason::Terminated,
                );
                n += 1;
            }
        }
        n
    }

    // ---------------------------------------------------------------- cluster

    /// Queues an item for the cluster bridge (when clustered).
    fn to_cluster(&self, item: impl FnOnce() -> Outbound) {
        if let Some(c) = self.shared.cluster() {
            c.push(self.idx, item());
        }
    }

    fn on_remote(&self, r: Remote) {
        match r {
            Remote::Event {
                app,
                channel,
                frame,
                except,
            } => {
                if self.shared.apps().get(app).is_some() {
                    let key = ChanKey { app, name: channel };
                    self.metrics().events_published.inc();
                    self.fan_out(&key, frame, except);
                }
            }
            Remote::Count {
                node,
                app,
                channel,
                count,
            } => self.apply_share(
                ChanKey { app, name: channel },
                &node,
                ShareEdit::Count(count),
            ),
            Remote::Join {
                node,
                app,
                channel,
                user,
                info,
            } => self.apply_share(
                ChanKey { app, name: channel },
                &node,
                ShareEdit::Join(user, info),
            ),
            Remote::Leave {
                node,
                app,
                channel,
                user,
            } => self.apply_share(
                ChanKey { app, name: channel },
                &node,
                ShareEdit::Leave(user),
            ),
            Remote::Snapshot { node, channels } => {
                let mut gone: std::collections::HashSet<ChanKey> = self
                    .owned
                    .borrow()
                    .iter()
                    .filter(|(_, ch)| ch.remote.iter().any(|r| r.node == node))
                    .map(|(k, _)| k.clone())
                    .collect();
                for c in channels {
                    let key = ChanKey {
                        app: c.app,
                        name: c.channel,
                    };
                    gone.remove(&key);
                    self.apply_share(key, &node, ShareEdit::Replace(c.count, c.members));
                }
                for key in gone {
                    self.apply_share(key, &node, ShareEdit::Replace(0, Vec::new()));
                }
            }
            Remote::NodeGone { node } => {
                let keys: Vec<ChanKey> = self
                    .owned
                    .borrow()
                    .iter()
                    .filter(|(_, ch)| ch.remote.iter().any(|r| r.node == node))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    self.apply_share(key, &node, ShareEdit::Replace(0, Vec::new()));
                }
            }
            Remote::InterestReady { app, channel } => {
                let key = ChanKey { app, name: channel };
                let held = self
                    .owned
                    .borrow_mut()
                    .get_mut(&key)
                    .and_then(|ch| ch.held_acks.take());
                if let Some(held) = held {
                    for (to, msg) in held {
                        self.ack(to, msg);
                    }
                    self.count_changed(&key);
                }
            }
            Remote::Terminate { app, user_id, code } => {
                if self.shared.apps().get(app).is_some() {
                    self.terminate_local(app, &user_id, code);
                }
            }
        }
    }

    /// This core's share of its owned channels: local counts and local members.
    fn cluster_dump(&self) -> Vec<ShareChannel> {
        self.owned
            .borrow()
            .iter()
            .filter(|(_, ch)| ch.local_total() > 0)
            .map(|(k, ch)| ShareChannel {
                app: k.app,
                channel: k.name.clone(),
                count: ch.local_total(),
                members: ch
                    .members
                    .as_ref()
                    .map(|m| {
                        m.iter()
                            .map(|(id, mem)| (id.clone(), mem.info_json.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Applies a change to another node's share of a channel and tells the local
    /// subscribers (and, on the webhook leader, the observer) what changed in the merged view:
    /// members that appeared or vanished cluster-wide, the count, occupied/vacated.
    fn apply_share(&self, key: ChanKey, node: &NodeId, edit: ShareEdit) {
        let apps = self.shared.apps();
        let Some(app) = apps.get(key.app) else {
            return;
        };
        let mut owned = self.owned.borrow_mut();
        if !owned.contains_key(&key) {
            let nothing = match &edit {
                ShareEdit::Count(n) => *n == 0,
                ShareEdit::Join(..) => false,
                ShareEdit::Leave(_) => true,
                ShareEdit::Replace(n, m) => *n == 0 && m.is_empty(),
            };
            if nothing {
                return;
            }
            let presence = key.name.kind() == ChannelKind::Presence;
            owned.insert(key.clone(), OwnedChannel::new(self.workers(), presence));
            self.metrics().channels_owned.inc();
        }
        let Some(ch) = owned.get_mut(&key) else {
            return;
        };
        // Occupied = a subscriber or a member anywhere: a remote Join may arrive before
        // that node's Count (they travel from different cores), and must not announce a
        // member of a channel that was never announced occupied.
        let was_occupied = !ch.is_empty();
        let before_count = ch.total();
        let idx = match ch.remote.iter().position(|r| &r.node == node) {
            Some(i) => i,
            None => {
                ch.remote.push(RemoteShare {
                    node: node.clone(),
                    count: 0,
                    members: IndexMap::new(),
                });
                ch.remote.len() - 1
            }
        };
        let presence = ch.members.is_some();
        let mut added: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        let mut removed: Vec<Arc<str>> = Vec::new();
        match edit {
            ShareEdit::Count(n) => ch.remote[idx].count = n,
            ShareEdit::Join(user, info) => {
                if presence {
                    let present = ch.is_present(&user);
                    ch.remote[idx].members.insert(user.clone(), info.clone());
                    if !present {
                        added.push((user, info));
                    }
                }
            }
            ShareEdit::Leave(user) => {
                if ch.remote[idx].members.shift_remove(&user).is_some() && !ch.is_present(&user) {
                    removed.push(user);
                }
            }
            ShareEdit::Replace(n, members) => {
                ch.remote[idx].count = n;
                if presence {
                    // With this share emptied, `is_present` answers "elsewhere".
                    let old = std::mem::take(&mut ch.remote[idx].members);
                    let new: IndexMap<Arc<str>, Arc<str>> = members.into_iter().collect();
                    for (user, info) in &new {
                        if !old.contains_key(user) && !ch.is_present(user) {
                            added.push((user.clone(), info.clone()));
                        }
                    }
                    for user in old.keys() {
                        if !new.contains_key(user) && !ch.is_present(user) {
                            removed.push(user.clone());
                        }
                    }
                    ch.remote[idx].members = new;
                }
            }
        }
        if ch.remote[idx].count == 0 && ch.remote[idx].members.is_empty() {
            ch.remote.swap_remove(idx);
        }
        let now_occupied = !ch.is_empty();
        let count_moved = ch.total() != before_count;
        let empty = ch.is_empty();
        let targets = targets_of(ch);
        if empty {
            owned.remove(&key);
        }
        drop(owned);
        if empty {
            let m = self.metrics();
            m.channels_owned
                .set(m.channels_owned.get().saturating_sub(1));
        }
        let lifecycle = self.shared.sends_lifecycle();
        let obs = self.shared.observer.as_ref().filter(|_| lifecycle);
        if !was_occupied && now_occupied {
            if let Some(obs) = obs {
                obs.channel_occupied(&app.config, &key.name);
            }
        }
        for (user, info) in added {
            let frame =
                pusher::member_added_frame(app.config.dialect, key.name.as_str(), &user, &info);
            for c in &targets {
                self.send_deliver(*c, &key, &frame, None, None);
            }
            if let Some(obs) = obs {
                obs.member_added(&app.config, &key.name, &user);
            }
        }
        for user in removed {
            let frame = pusher::member_removed_frame(app.config.dialect, key.name.as_str(), &user);
            for c in &targets {
                self.send_deliver(*c, &key, &frame, None, None);
            }
            if let Some(obs) = obs {
                obs.member_removed(&app.config, &key.name, &user);
            }
        }
        if count_moved && !empty {
            self.count_changed(&key);
        }
        if was_occupied && !now_occupied {
            if let Some(obs) = obs {
                obs.channel_vacated(&app.config, &key.name);
            }
        }
    }

    /// Liveness and write deadlines for every connection of this core, once a second (instead
    /// of one timer per read and per write, which would cost each connection a timer entry
    /// and every I/O a timer-wheel insert and removal):
    /// - a write running longer than `write_deadline`: the socket is shut down, which fails the
    ///   write; counted as `slow_consumer_deadline`;
    /// - no frame from the client for `activity_timeout`: `pusher:ping`;
    /// - still nothing `pong_timeout` after that ping: close 4201.
    pub(crate) fn sweep_connections(&self, now: Instant) {
        let cfg = &self.shared.config;
        let activity = Duration::from_secs(cfg.activity_timeout_secs.into());
        let stamp = crate::conn::Stamp::of(now);
        for conn in self.conns.borrow().values() {
            if conn
                .write_started
                .get()
                .is_some_and(|t| now.saturating_duration_since(t) >= cfg.write_deadline)
            {
                conn.set_end_reason(CloseReason::SlowConsumerDeadline);
                conn.shutdown_socket();
                continue;
            }
            if conn.sse {
                // SSE clients send nothing: a comment heartbeat keeps proxies from timing the
                // stream out (`last_read` holds the last heartbeat's time), and a dead client
                // shows as a failed write or a closed read.
                if conn.last_read.get().until(stamp) >= cfg.sse_heartbeat {
                    conn.last_read.set(stamp);
                    conn.push(crate::sse::heartbeat());
                }
                continue;
            }
            match conn.ping_sent.get() {
                Some(t) if t.until(stamp) >= cfg.pong_timeout => {
                    conn.close(
                        ringcast_protocol::close::PONG_TIMEOUT,
                        "Pong reply not received in time",
                        CloseReason::PongTimeout,
                    );
                }
                None if conn.last_read.get().until(stamp) >= activity => {
                    conn.ping_sent.set(Some(stamp));
                    if conn.user_socket {
                        // Plain JSON clients answer a WebSocket ping (any frame counts).
                        conn.push(ringcast_protocol::ws::ping_frame(b""));
                    } else {
                        conn.push(pusher::ping_frame(
                            self.shared.apps().app(conn.app).config.dialect,
                        ));
                    }
                }
                _ => {}
            }
        }
    }

    /// Closes every connection with 4200 and wakes the accept loop so it stops.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        for c in self.conns.borrow().values() {
            c.close(
                ringcast_protocol::close::RECONNECT,
                "Server shutting down, reconnect",
                CloseReason::Shutdown,
            );
        }
        if let Some(w) = self.shutdown_waker.borrow_mut().take() {
            w.wake();
        }
    }

    // ---------------------------------------------------------------- owner side

    fn on_subscribe(
        &self,
        key: ChanKey,
        socket: SocketId,
        gen: u32,
        from: usize,
        member: Option<MemberInfo>,
        resume: Option<Resume>,
    ) {
        let conn = socket.lo;
        let apps = self.shared.apps();
        let app = apps.app(key.app);
        let mut owned = self.owned.borrow_mut();
        let new_channel = !owned.contains_key(&key);
        let is_presence = key.name.kind() == ChannelKind::Presence;
        let workers = self.workers();
        let ch = owned
            .entry(key.clone())
            .or_insert_with(|| OwnedChannel::new(workers, is_presence));
        let was_occupied = !ch.is_empty();
        let local_before = ch.local_total();
        // A user's first connection on this node (told to the other nodes) and, when the user
        // is not present elsewhere either, a new member of the merged view (member_added).
        let mut local_join: Option<MemberInfo> = None;
        let mut added_member = false;
        let remote_present = member
            .as_ref()
            .is_some_and(|m| ch.remote.iter().any(|r| r.members.contains_key(&m.user_id)));
        let members_now = ch.user_count().unwrap_or(0) as usize;
        if let (Some(members), Some(m)) = (ch.members.as_mut(), member.as_ref()) {
            let full = members_now >= app.config.max_presence_members;
            match members.get_mut(&m.user_id) {
                Some(existing) => existing.conns.push(conn),
                None if full && !remote_present => {
                    let frames = vec![
                        pusher::subscription_error_frame(
                            app.config.dialect,
                            key.name.as_str(),
                            "LimitReached",
                            "The presence channel has reached its member limit",
                            400,
                        ),
                        pusher::error_frame(
                            app.config.dialect,
                            None,
                            &format!(
                                "Presence channel {} is full ({} members)",
                                key.name, app.config.max_presence_members
                            ),
                        ),
                    ];
                    if new_channel {
                        owned.remove(&key);
                    }
                    drop(owned);
                    self.ack(
                        from,
                        Msg::SubAck {
                            key,
                            conn,
                            gen,
                            outcome: SubOutcome::Refused(frames),
                        },
                    );
                    return;
                }
                None => {
                    members.insert(
                        m.user_id.clone(),
                        Member {
                            info_json: m.info_json.clone(),
                            conns: vec![conn],
                        },
                    );
                    local_join = Some(m.clone());
                    added_member = !remote_present;
                }
            }
        }
        ch.per_core[from] += 1;
        let local_total = ch.local_total();
        let snapshot = ch.members.as_ref().map(|_| {
            let snap = PresenceSnapshot {
                members: ch.merged_members(),
            };
            pusher::subscription_succeeded_frame(app.config.dialect, key.name.as_str(), Some(&snap))
        });
        let targets: Vec<usize> = targets_of(ch);
        let then = if key.name.is_cache() {
            match self.cache.borrow_mut().get(&key, self.shared.now()) {
                Some((frame, _)) => Some(frame),
                None => {
                    if let Some(obs) = &self.shared.observer {
                        obs.cache_miss(&app.config, &key.name);
                    }
                    Some(pusher::cache_miss_frame(
                        app.config.dialect,
                        key.name.as_str(),
                    ))
                }
            }
        } else {
            None
        };
        let ack = Msg::SubAck {
            key: key.clone(),
            conn,
            gen,
            outcome: SubOutcome::Ok {
                snapshot,
                then,
                resume,
                replay: None,
            },
        };
        // Clustered: the node's first subscriber of a channel waits for the broker
        // subscription of its events (the bridge answers InterestReady).
        let clustered = self.shared.cluster().is_some();
        let ack = if clustered && (local_before == 0 || ch.held_acks.is_some()) {
            ch.held_acks.get_or_insert_with(Vec::new).push((from, ack));
            None
        } else {
            Some(ack)
        };
        drop(owned);
        if new_channel {
            self.metrics().channels_owned.inc();
        }
        if clustered {
            let (app_idx, name) = (key.app, &key.name);
            if local_before == 0 {
                self.to_cluster(|| Outbound::Interest {
                    app: app_idx,
                    channel: name.clone(),
                    on: true,
                });
            }
            if let Some(m) = &local_join {
                self.to_cluster(|| Outbound::Join {
                    app: app_idx,
                    channel: name.clone(),
                    user: m.user_id.clone(),
                    info: m.info_json.clone(),
                });
            }
            self.to_cluster(|| Outbound::Count {
                app: app_idx,
                channel: name.clone(),
                local: local_total,
            });
        }
        let lifecycle = self.shared.sends_lifecycle();
        if !was_occupied && lifecycle {
            if let Some(obs) = &self.shared.observer {
                obs.channel_occupied(&app.config, &key.name);
            }
        }
        if let (true, Some(m)) = (added_member, local_join) {
            let frame = pusher::member_added_frame(
                app.config.dialect,
                key.name.as_str(),
                &m.user_id,
                &m.info_json,
            );
            for c in &targets {
                self.send_deliver(*c, &key, &frame, Some(socket), None);
            }
            if lifecycle {
                if let Some(obs) = &self.shared.observer {
                    obs.member_added(&app.config, &key.name, &m.user_id);
                }
            }
        }
        if let Some(ack) = ack {
            self.ack(from, ack);
        }
        // After the ack, so the new subscriber (now in its core's index) gets the count too.
        self.count_changed(&key);
    }

    /// Subscription-count feature: tells a non-presence channel's subscribers its new count,
    /// at once up to the throttle threshold, at most every interval above it.
    fn count_changed(&self, key: &ChanKey) {
        let apps = self.shared.apps();
        let app = apps.app(key.app);
        if !app.config.subscription_count || key.name.kind() == ChannelKind::Presence {
            return;
        }
        let mut owned = self.owned.borrow_mut();
        let Some(ch) = owned.get_mut(key) else { return };
        let now = self.shared.now();
        let interval = Duration::from_secs(defaults::SUBSCRIPTION_COUNT_INTERVAL_SECS);
        let due = ch.total() <= defaults::SUBSCRIPTION_COUNT_THROTTLE_ABOVE
            || ch
                .count_sent
                .is_none_or(|t| now.duration_since(t) >= interval);
        if !due {
            if !ch.count_dirty {
                ch.count_dirty = true;
                self.dirty_counts.borrow_mut().push(key.clone());
            }
            return;
        }
        ch.count_sent = Some(now);
        ch.count_dirty = false;
        let total = ch.total();
        let targets = targets_of(ch);
        drop(owned);
        let frame = pusher::subscription_count_frame(app.config.dialect, key.name.as_str(), total);
        for c in targets {
            self.send_deliver(c, key, &frame, None, None);
        }
        if let Some(obs) = self
            .shared
            .observer
            .as_ref()
            .filter(|_| self.shared.sends_lifecycle())
        {
            obs.subscription_count(&app.config, &key.name, total);
        }
    }

    /// Housekeeping once a second: owed subscription counts, cache and history expiry.
    pub(crate) async fn tick_loop(self: Rc<Self>) {
        let mut n: u64 = 0;
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            n += 1;
            self.housekeeping(n.is_multiple_of(10));
        }
    }

    /// One housekeeping pass on the engine's clock (`Shared::now`): owed subscription counts,
    /// liveness and write deadlines, and with `expire` cache and history expiry.
    fn housekeeping(&self, expire: bool) {
        let interval = Duration::from_secs(defaults::SUBSCRIPTION_COUNT_INTERVAL_SECS);
        let owed = std::mem::take(&mut *self.dirty_counts.borrow_mut());
        let now = self.shared.now();
        for key in owed {
            let state = self
                .owned
                .borrow()
                .get(&key)
                .map(|c| (c.count_dirty, c.count_sent));
            match state {
                Some((true, Some(sent))) if now.duration_since(sent) < interval => {
                    self.dirty_counts.borrow_mut().push(key);
                }
                Some((true, _)) => {
                    if let Some(ch) = self.owned.borrow_mut().get_mut(&key) {
                        ch.count_dirty = false;
                        ch.count_sent = None;
                    }
                    self.count_changed(&key);
                }
                _ => {}
            }
        }
        if expire {
            self.cache.borrow_mut().sweep(now);
            let shared = self.shared.clone();
            self.history.borrow_mut().expire(shared.now_ms(), |a| {
                shared.apps().app(a).config.history_max_age
            });
        }
        self.sweep_connections(now);
        let m = self.metrics();
        m.history_bytes.set(self.history.borrow().bytes() as u64);
        m.cache_entries.set(self.cache.borrow().len() as u64);
        self.flush();
    }

    fn on_unsubscribe(&self, key: ChanKey, conn: u64, from: usize, user_id: Option<Arc<str>>) {
        let apps = self.shared.apps();
        let app = apps.app(key.app);
        let mut owned = self.owned.borrow_mut();
        let Some(ch) = owned.get_mut(&key) else {
            return;
        };
        let was_occupied = !ch.is_empty();
        let mut local_leave: Option<Arc<str>> = None;
        let mut removed_member = false;
        if let Some(members) = ch.members.as_mut() {
            // Presence: only connections the owner actually counted are uncounted (a refused
            // subscription is followed by an unsubscribe that must change nothing).
            let Some(uid) = user_id else { return };
            let Some(m) = members.get_mut(&uid) else {
                return;
            };
            let Some(pos) = m.conns.iter().position(|c| *c == conn) else {
                return;
            };
            m.conns.swap_remove(pos);
            if m.conns.is_empty() {
                members.shift_remove(&uid);
                removed_member = !ch.remote.iter().any(|r| r.members.contains_key(&uid));
                local_leave = Some(uid);
            }
        }
        if ch.per_core[from] == 0 {
            return;
        }
        ch.per_core[from] -= 1;
        let local_total = ch.local_total();
        let empty = ch.is_empty();
        let now_occupied = !empty;
        let targets = targets_of(ch);
        if empty {
            owned.remove(&key);
        }
        drop(owned);
        if self.shared.cluster().is_some() {
            let (app_idx, name) = (key.app, &key.name);
            if let Some(uid) = &local_leave {
                self.to_cluster(|| Outbound::Leave {
                    app: app_idx,
                    channel: name.clone(),
                    user: uid.clone(),
                });
            }
            self.to_cluster(|| Outbound::Count {
                app: app_idx,
                channel: name.clone(),
                local: local_total,
            });
            if local_total == 0 {
                self.to_cluster(|| Outbound::Interest {
                    app: app_idx,
                    channel: name.clone(),
                    on: false,
                });
            }
        }
        let lifecycle = self.shared.sends_lifecycle();
        if let (true, Some(uid)) = (removed_member, local_leave) {
            let frame = pusher::member_removed_frame(app.config.dialect, key.name.as_str(), &uid);
            for c in &targets {
                self.send_deliver(*c, &key, &frame, None, None);
            }
            if lifecycle {
                if let Some(obs) = &self.shared.observer {
                    obs.member_removed(&app.config, &key.name, &uid);
                }
            }
        }
        if !empty {
            self.count_changed(&key);
        }
        if empty {
            self.metrics()
                .channels_owned
                .set(self.metrics().channels_owned.get().saturating_sub(1));
        }
        if was_occupied && !now_occupied && lifecycle {
            if let Some(obs) = &self.shared.observer {
                obs.channel_vacated(&app.config, &key.name);
            }
        }
    }

    /// A locally originated event (REST on this node, a client event of a local connection):
    /// fanned out here and, clustered, handed to the bridge for the other nodes.
    fn on_publish(&self, key: &ChanKey, frame: Bytes, except: Option<SocketId>) -> ChannelCounts {
        if let Some(c) = self.shared.cluster() {
            c.push(
                self.idx,
                Outbound::Publish {
                    app: key.app,
                    channel: key.name.clone(),
                    frame: frame.clone(),
                    except,
                },
            );
        }
        self.fan_out(key, frame, except)
    }

    /// Records the event (cache, history) and forwards `frame` to every core of this node
    /// holding subscribers of `key`. Returns the cluster-wide counts.
    fn fan_out(&self, key: &ChanKey, frame: Bytes, except: Option<SocketId>) -> ChannelCounts {
        let apps = self.shared.apps();
        let app = &*apps.app(key.app).config;
        if key.name.is_cache() {
            self.cache
                .borrow_mut()
                .put(key, &frame, app.cache_ttl, self.shared.now());
        }
        // The event's sequence number in its channel: the history's when the app keeps
        // history (so an SSE stream can resume from it), else the owner's own count.
        let recorded = if app.history_size > 0 {
            self.history.borrow_mut().record(
                key,
                &frame,
                self.shared.now_ms(),
                app.history_size,
                app.history_max_age,
            )
        } else {
            None
        };
        let mut owned = self.owned.borrow_mut();
        let Some(ch) = owned.get_mut(key) else {
            return ChannelCounts::default();
        };
        let seq = recorded.unwrap_or_else(|| {
            ch.seq += 1;
            ch.seq
        });
        let counts = ChannelCounts {
            subscription_count: ch.total(),
            user_count: ch.user_count(),
        };
        let mut targets = std::mem::take(&mut *self.targets.borrow_mut());
        targets.clear();
        targets.extend(ch.target_cores());
        drop(owned);
        for &c in &targets {
            self.send_deliver(c, key, &frame, except, Some(seq));
        }
        *self.targets.borrow_mut() = targets;
        counts
    }

    /// Sends a subscription answer. To this core's own connection it is handled at once, so it
    /// is ordered before any delivery the owner makes in place right after it.
    fn ack(&self, to: usize, mut msg: Msg) {
        if let Msg::SubAck {
            key,
            outcome:
                SubOutcome::Ok {
                    resume: Some(resume),
                    replay,
                    ..
                },
            ..
        } = &mut msg
        {
            // Read now, as the answer leaves: every later event of the channel follows it.
            *replay = Some(self.replay(key, *resume));
        }
        if to == self.idx {
            if let Msg::SubAck {
                key,
                conn,
                gen,
                outcome,
            } = msg
            {
                self.on_sub_ack(key, conn, gen, outcome);
            }
        } else {
            self.send(to, msg);
        }
    }

    fn send_deliver(
        &self,
        core: usize,
        key: &ChanKey,
        frame: &Bytes,
        except: Option<SocketId>,
        seq: Option<u64>,
    ) {
        if core == self.idx {
            // Deliver in place: no queue hop for the owner's own subscribers.
            self.deliver(key, frame, except, seq);
        } else {
            self.send(
                core,
                Msg::Deliver {
                    key: key.clone(),
                    frame: frame.clone(),
                    except,
                    seq,
                },
            );
        }
    }

    /// What an SSE subscription gets from the channel's history (see `Resume`, `Replay`).
    fn replay(&self, key: &ChanKey, resume: Resume) -> Replay {
        let with_history = self
            .shared
            .apps()
            .get(key.app)
            .is_some_and(|a| a.config.history_size > 0);
        let history = self.history.borrow();
        let head = if with_history {
            history.head(key)
        } else {
            self.owned.borrow().get(key).map_or(0, |c| c.seq)
        };
        match resume {
            Resume::Fresh => Replay {
                events: Vec::new(),
                reset: false,
                head,
            },
            Resume::After(n) if with_history && n == head => Replay {
                events: Vec::new(),
                reset: false,
                head,
            },
            Resume::After(n) => match history.after(key, n).filter(|_| with_history) {
                Some(events) => Replay {
                    events,
                    reset: false,
                    head,
                },
                None => Replay {
                    events: Vec::new(),
                    reset: true,
                    head,
                },
            },
        }
    }

    /// The app's `activity_history_size` (0: off, or no such app).
    fn activity_cap(&self, app: AppIdx) -> usize {
        self.shared
            .apps()
            .get(app)
            .map_or(0, |a| a.config.activity_history_size)
    }

    /// Appends an activity record when the app keeps activity history (a branch otherwise).
    pub(crate) fn record_activity(
        &self,
        app: AppIdx,
        kind: crate::activity::ActivityKind,
        channel: Option<&str>,
        socket_id: Option<SocketId>,
        user_id: Option<&str>,
        event_name: Option<&str>,
    ) {
        let cap = self.activity_cap(app);
        if cap == 0 {
            return;
        }
        // Rendered only for a record that is kept (a connection does not store its text).
        let socket_id = socket_id.map(|s| s.to_string());
        self.activity.borrow_mut().record(
            app,
            cap,
            kind,
            channel,
            socket_id.as_deref(),
            user_id,
            event_name,
            self.shared.now_ms(),
        );
    }

    // ---------------------------------------------------------------- subscriber side

    /// Appends `frame` (shared, not copied per subscriber) to every local subscriber's
    /// outbound queue.
    pub(crate) fn deliver(
        &self,
        key: &ChanKey,
        frame: &Bytes,
        except: Option<SocketId>,
        seq: Option<u64>,
    ) {
        let subs = self.subs.borrow();
        let Some(list) = subs.get(key) else { return };
        // The frame arrives shared by every core; each local subscriber's queue takes a
        // reference and the flush pass drops it. With many subscribers here the core takes
        // its own copy first, so those counts stay in this core's cache instead of every
        // core bouncing one atomic count between them (with one core there is no other).
        let local;
        let frame = if list.len() >= LOCAL_COPY_MIN_SUBSCRIBERS && self.shared.config.workers > 1 {
            local = Bytes::copy_from_slice(frame);
            &local
        } else {
            frame
        };
        let mut n = 0u64;
        let mut alt: Option<Option<Bytes>> = None;
        let mut sse: Option<Option<Bytes>> = None;
        for (id, conn) in list.iter() {
            // The connection id is the socket id's low half, so the cheap compare comes first;
            // the exclusion holds only when the whole socket id matches.
            if let Some(ex) = except {
                if ex.lo == *id && conn.socket_id == ex {
                    continue;
                }
            }
            if conn.sse {
                // The SSE form (`id:`/`event:`/`data:`), encoded once per delivery on this
                // core, only when the channel has SSE subscribers here; events only.
                let Some(seq) = seq else { continue };
                if sse.is_none() {
                    sse = Some(crate::sse::event_bytes(frame, seq));
                }
                if let Some(Some(f)) = &sse {
                    conn.push(f.clone());
                    n += 1;
                }
                continue;
            }
            if conn.user_socket {
                // The alrt user socket's JSON form, encoded once per delivery on this core.
                if alt.is_none() {
                    alt = Some(crate::user_socket::notification_frame(frame));
                }
                if let Some(Some(f)) = &alt {
                    conn.push(f.clone());
                    n += 1;
                }
                continue;
            }
            conn.push(frame.clone());
            n += 1;
        }
        self.metrics().deliveries.add(n);
        if n > 0 {
            self.shared
                .apps()
                .app(key.app)
                .counters
                .messages_out
                .add(self.idx, n);
        }
    }

    /// The owner could not hand this core an event of these channels: every local subscriber
    /// of them is closed with 4100 (slow consumer), so it reconnects knowing it missed
    /// something rather than silently missing it. Closing first flushes what was queued before.
    fn on_lost(&self, keys: &[ChanKey]) {
        let subs = self.subs.borrow();
        for key in keys {
            let Some(list) = subs.get(key) else { continue };
            for conn in list.values() {
                conn.set_end_reason(CloseReason::SlowConsumerMesh);
                conn.close(
                    ringcast_protocol::close::SLOW_CONSUMER,
                    "Slow consumer: events for a channel could not be delivered",
                    CloseReason::SlowConsumerMesh,
                );
            }
        }
    }

    fn on_sub_ack(&self, key: ChanKey, conn_id: u64, gen: u32, outcome: SubOutcome) {
        let Some(conn) = self.conns.borrow().get(&conn_id).cloned() else {
            return;
        };
        let dialect = self.shared.apps().app(key.app).config.dialect;
        let mut state = conn.state.borrow_mut();
        let Some(sub) = state.subs.get_mut(&key.name) else {
            return;
        };
        let SubState::Pending { gen: want, silent } = sub.state else {
            return;
        };
        if want != gen {
            return;
        }
        match outcome {
            SubOutcome::Ok {
                snapshot: frame,
                then,
                replay,
                ..
            } => {
                sub.state = SubState::Active;
                drop(state);
                self.subs
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .insert(conn_id, conn.clone());
                self.metrics().subscriptions_current.inc();
                if !silent {
                    let user = {
                        let st = conn.state.borrow();
                        st.subs
                            .get(&key.name)
                            .and_then(|s| s.presence_user.clone())
                            .or_else(|| st.user.clone())
                    };
                    self.record_activity(
                        key.app,
                        crate::activity::ActivityKind::Subscribe,
                        Some(key.name.as_str()),
                        Some(conn.socket_id),
                        user.as_deref(),
                        None,
                    );
                    let frame = frame.unwrap_or_else(|| {
                        pusher::subscription_succeeded_frame(dialect, key.name.as_str(), None)
                    });
                    conn.push(frame);
                }
                if conn.sse {
                    // Before any delivery (they follow this answer): the replay or the reset.
                    if let Some(r) = replay {
                        crate::sse::on_subscribed(&conn, &key, r);
                    }
                    return;
                }
                if let Some(f) = then {
                    conn.push(f);
                }
            }
            SubOutcome::Refused(frames) => {
                state.subs.remove(&key.name);
                drop(state);
                for f in frames {
                    conn.push(f);
                }
            }
        }
    }

    /// Puts a connection in the local index of `key` directly (the bench hook; the engine
    /// itself does this on a `SubAck`).
    pub(crate) fn add_local_sub(&self, key: &ChanKey, conn: Rc<Conn>) {
        self.subs
            .borrow_mut()
            .entry(key.clone())
            .or_default()
            .insert(conn.id(), conn);
    }

    /// Removes a connection's active subscription from the local index.
    pub(crate) fn remove_local_sub(&self, key: &ChanKey, conn: u64) {
        let mut subs = self.subs.borrow_mut();
        if let Some(list) = subs.get_mut(key) {
            if list.swap_remove(&conn).is_some() {
                let m = self.metrics();
                m.subscriptions_current
                    .set(m.subscriptions_current.get().saturating_sub(1));
            }
            if list.is_empty() {
                subs.remove(key);
            }
        }
    }

    pub(crate) fn add_user(&self, app: AppIdx, user: Arc<str>, conn: u64) {
        self.users
            .borrow_mut()
            .entry((app, user))
            .or_default()
            .push(conn);
    }

    pub(crate) fn remove_user(&self, app: AppIdx, user: Arc<str>, conn: u64) {
        let mut users = self.users.borrow_mut();
        let k = (app, user);
        if let Some(v) = users.get_mut(&k) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                users.remove(&k);
            }
        }
    }

    pub(crate) fn shared_http(&self) -> Option<Arc<dyn crate::HttpService>> {
        self.shared.http.get().cloned()
    }

    pub(crate) fn app_connections_dec(&self, app: AppIdx) {
        self.shared
            .apps()
            .app(app)
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wall-clock Unix seconds (token expiry).
pub(crate) fn unix_now_secs() -> u64 {
    now_ms() / 1000
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn targets_of(ch: &OwnedChannel) -> Vec<usize> {
    ch.target_cores().collect()
}

fn summary(key: &ChanKey, ch: Option<&OwnedChannel>) -> ChannelSummary {
    match ch {
        Some(ch) => ChannelSummary {
            name: key.name.clone(),
            occupied: ch.total() > 0,
            subscription_count: ch.total(),
            user_count: ch.user_count(),
        },
        None => ChannelSummary {
            name: key.name.clone(),
            occupied: false,
            subscription_count: 0,
            user_count: (key.name.kind() == ChannelKind::Presence).then_some(0),
        },
    }
}

/// What the drain task does after a batch ([`DrainTurn::after_batch`]).
#[derive(Debug, PartialEq, Eq)]
enum DrainNext {
    /// Give the core's other tasks a turn, then drain again.
    Yield,
    /// Drain again at once (work arrived while this batch ran).
    Again,
    /// Nothing was there: wait for a wake-up.
    Park,
}

/// The drain task's budget across batches: it yields once it has handled `budget` messages
/// since its last yield, whether they came in one large batch or in many small ones (a steady
/// stream of small batches must not keep the connection tasks and the flush pass waiting).
#[derive(Default)]
struct DrainTurn {
    since_yield: usize,
}

impl DrainTurn {
    fn after_batch(&mut self, did: usize, budget: usize) -> DrainNext {
        if did == 0 {
            self.since_yield = 0;
            return DrainNext::Park;
        }
        self.since_yield += did;
        if self.since_yield >= budget {
            self.since_yield = 0;
            DrainNext::Yield
        } else {
            DrainNext::Again
        }
    }
}

/// Gives every other ready task on this core a turn (and lets the runtime reap the ring)
/// before the caller continues.
///
/// A monoio task that wakes itself while it is polled goes back to the *front* of the queue
/// and runs again at once, so waking ourselves would yield to nobody. Instead a small task at
/// the back of the queue holds the waker: everything queued before it runs first, and the
/// runtime reaps the ring while tasks keep coming.
pub(crate) fn yield_now() -> impl std::future::Future<Output = ()> {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            let waker = cx.waker().clone();
            monoio::spawn(async move { waker.wake() });
            Poll::Pending
        }
    })
}

#[cfg(test)]
mod tests {
    //! The owner's bookkeeping, driven message by message on a socket-less core 0 of 2 (the
    //! test plays core 1: it sends what core 1 would and reads what core 0 sends it).

    use super::*;
    use crate::config::{AppConfig, RawConfig};
    use crate::mesh::{self, MeshShared};
    use crate::shared::{EngineObserver, Placement};
    use ringcast_protocol::ChannelName;
    use std::sync::Mutex;

    #[test]
    fn the_drain_yields_after_its_budget_even_in_small_batches() {
        let mut t = DrainTurn::default();
        // One large batch.
        assert_eq!(t.after_batch(4096, 4096), DrainNext::Yield);
        // A steady stream of small batches: again and again, then a yield at the budget.
        for _ in 0..40 {
            assert_eq!(t.after_batch(100, 4096), DrainNext::Again);
        }
        assert_eq!(t.after_batch(100, 4096), DrainNext::Yield);
        assert_eq!(t.after_batch(100, 4096), DrainNext::Again);
        // Nothing there: park, and the count starts over.
        assert_eq!(t.after_batch(0, 4096), DrainNext::Park);
        for _ in 0..40 {
            assert_eq!(t.after_batch(100, 4096), DrainNext::Again);
        }
    }

    #[test]
    fn yield_now_lets_the_tasks_queued_behind_run_first() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime");
        let order = rt.block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let o = order.clone();
            let a = monoio::spawn(async move {
                o.borrow_mut().push("a1");
                yield_now().await;
                o.borrow_mut().push("a2");
            });
            let o = order.clone();
            let b = monoio::spawn(async move { o.borrow_mut().push("b") });
            a.await;
            b.await;
            Rc::try_unwrap(order).unwrap().into_inner()
        });
        // A task that wakes itself runs again at once in monoio (a1, a2, b): no yield at all.
        assert_eq!(order, ["a1", "b", "a2"]);
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);
    impl EngineObserver for Seen {
        fn channel_occupied(&self, _: &AppConfig, c: &ChannelName) {
            self.0.lock().unwrap().push(format!("occupied {c}"));
        }
        fn channel_vacated(&self, _: &AppConfig, c: &ChannelName) {
            self.0.lock().unwrap().push(format!("vacated {c}"));
        }
        fn member_added(&self, _: &AppConfig, _: &ChannelName, u: &str) {
            self.0.lock().unwrap().push(format!("added {u}"));
        }
        fn member_removed(&self, _: &AppConfig, _: &ChannelName, u: &str) {
            self.0.lock().unwrap().push(format!("removed {u}"));
        }
    }

    fn owner() -> (Core, MeshRx, Arc<Seen>) {
        let config = RawConfig::from_toml(
            "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\nmax_presence_members = 2\n",
        )
        .unwrap()
        .resolve(2)
        .unwrap();
        let ms = Arc::new(MeshShared::new(2, 16));
        let mut wiring = mesh::build(2, 64, 64, ms.clone());
        let (_, rx1) = wiring.pop().unwrap();
        let (tx0, rx0) = wiring.pop().unwrap();
        let seen = Arc::new(Seen::default());
        let obs: Arc<dyn EngineObserver> = seen.clone();
        let shared = Arc::new(Shared::new(
            config,
            ms,
            Some(obs),
            Placement::with_key([1, 2, 3, 4]),
        ));
        (Core::new(0, shared, tx0, rx0, 1), rx1, seen)
    }

    fn key() -> ChanKey {
        ChanKey {
            app: 0,
            name: ChannelName::parse("presence-room").unwrap(),
        }
    }

    fn sub(core: &Core, conn: u64, user: &str) {
        core.handle_msg(Msg::Subscribe {
            key: key(),
            socket: SocketId::new(9, conn),
            gen: 1,
            from: 1,
            member: Some(MemberInfo {
                user_id: user.into(),
                info_json: "null".into(),
            }),
            resume: None,
        });
        core.flush();
    }

    fn unsub(core: &Core, conn: u64, user: &str) {
        core.handle_msg(Msg::Unsubscribe {
            key: key(),
            conn,
            from: 1,
            user_id: Some(user.into()),
        });
        core.flush();
    }

    /// What core 0 sent core 1, in order.
    fn sent(rx: &mut MeshRx) -> Vec<String> {
        let mut out = Vec::new();
        rx.drain(usize::MAX, |m| {
            out.push(match m {
                Msg::SubAck {
                    conn,
                    outcome: SubOutcome::Ok { .. },
                    ..
                } => format!("ack {conn}"),
                Msg::SubAck {
                    conn,
                    outcome: SubOutcome::Refused(_),
                    ..
                } => format!("refused {conn}"),
                Msg::Deliver { frame, except, .. } => {
                    let text = String::from_utf8_lossy(&frame).into_owned();
                    let what = if text.contains("member_added") {
                        "member_added"
                    } else if text.contains("member_removed") {
                        "member_removed"
                    } else {
                        "other"
                    };
                    format!("{what} except {except:?}")
                }
                _ => "other".into(),
            })
        });
        out
    }

    /// Subscribers counted on core 1, and each member's connections.
    type Counted = Option<(u32, Vec<(String, Vec<u64>)>)>;

    fn counted(core: &Core) -> Counted {
        core.owned.borrow().get(&key()).map(|ch| {
            (
                ch.per_core[1],
                ch.members
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|(u, m)| (u.to_string(), m.conns.clone()))
                    .collect(),
            )
        })
    }

    #[test]
    fn presence_refcounts_per_user_and_occupied_vacated_once() {
        let (core, mut rx, seen) = owner();
        sub(&core, 11, "u1");
        assert_eq!(counted(&core), Some((1, vec![("u1".into(), vec![11])])));
        // member_added goes to the subscribers' cores, excluding the joining socket (whole id),
        // before the ack; the ack follows.
        assert_eq!(
            sent(&mut rx),
            [
                format!("member_added except {:?}", Some(SocketId::new(9, 11))),
                "ack 11".into()
            ]
        );
        // A second connection of the same user: counted, no second member_added.
        sub(&core, 13, "u1");
        assert_eq!(counted(&core), Some((2, vec![("u1".into(), vec![11, 13])])));
        assert_eq!(sent(&mut rx), ["ack 13"]);
        // One of them leaves: the user stays.
        unsub(&core, 11, "u1");
        assert_eq!(counted(&core), Some((1, vec![("u1".into(), vec![13])])));
        assert_eq!(sent(&mut rx), Vec::<String>::new());
        // An unsubscribe the owner never counted (a refused join) changes nothing.
        unsub(&core, 99, "u9");
        assert_eq!(counted(&core), Some((1, vec![("u1".into(), vec![13])])));
        // The last connection leaves: member removed, channel vacated and forgotten.
        unsub(&core, 13, "u1");
        assert_eq!(counted(&core), None);
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "occupied presence-room",
                "added u1",
                "removed u1",
                "vacated presence-room"
            ]
        );
    }

    #[test]
    fn a_full_presence_channel_refuses_and_leaves_no_trace() {
        let (core, mut rx, seen) = owner();
        sub(&core, 11, "u1");
        sub(&core, 13, "u2");
        let _ = sent(&mut rx);
        // max_presence_members = 2: a third user is refused, an existing one still joins.
        sub(&core, 15, "u3");
        assert_eq!(sent(&mut rx), ["refused 15"]);
        sub(&core, 17, "u2");
        assert_eq!(sent(&mut rx), ["ack 17"]);
        // The refused connection's unsubscribe (its cleanup) changes nothing.
        unsub(&core, 15, "u3");
        assert_eq!(
            counted(&core),
            Some((
                3,
                vec![("u1".into(), vec![11]), ("u2".into(), vec![13, 17])]
            ))
        );
        assert!(!seen.0.lock().unwrap().iter().any(|e| e.contains("u3")));
    }
}
