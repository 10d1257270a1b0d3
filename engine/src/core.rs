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
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use indexmap::IndexMap;
use ringcast_protocol::{pusher, ChannelKind, PresenceSnapshot, SocketId};

use std::time::{Duration, Instant};

use crate::cache::Cache;
use crate::config::defaults;
use crate::conn::{Conn, SubState};
use crate::history::History;
use crate::mesh::{MeshRx, MeshTx};
use crate::metrics::{CloseReason, CoreMetrics};
use crate::msg::{
    AppIdx, ChanKey, ChannelCounts, ChannelSummary, Command, MemberInfo, Msg, PresenceUser,
    SubOutcome,
};
use crate::shared::Shared;

/// Signed-in connections on a core: (app, user id) -> connection ids.
type UserIndex = HashMap<(AppIdx, Arc<str>), Vec<u64>>;

/// Authoritative state of a channel, held by its owner core.
pub(crate) struct OwnedChannel {
    /// Subscribed connections per core.
    per_core: Box<[u32]>,
    /// Presence channels: user id -> member (with the connections that joined as that user).
    members: Option<IndexMap<Arc<str>, Member>>,
    /// Subscription-count broadcasts: when the last one went out, and whether one is owed.
    count_sent: Option<Instant>,
    count_dirty: bool,
}

impl OwnedChannel {
    /// Subscribed connections on all cores.
    fn total(&self) -> u64 {
        self.per_core.iter().map(|&n| u64::from(n)).sum()
    }
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
    subs: RefCell<HashMap<ChanKey, IndexMap<u64, Rc<Conn>>>>,
    /// Channels this core owns.
    owned: RefCell<HashMap<ChanKey, OwnedChannel>>,
    /// Live connections on this core by id.
    pub conns: RefCell<HashMap<u64, Rc<Conn>>>,
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
}

impl Core {
    pub(crate) fn new(idx: usize, shared: Arc<Shared>, tx: MeshTx, rx: MeshRx, seed: u64) -> Core {
        Core {
            idx,
            tx: RefCell::new(tx),
            rx: RefCell::new(rx),
            local_q: RefCell::new(VecDeque::new()),
            subs: RefCell::new(HashMap::new()),
            owned: RefCell::new(HashMap::new()),
            conns: RefCell::new(HashMap::new()),
            users: RefCell::new(HashMap::new()),
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
            if did >= BUDGET {
                // Let connection tasks run between large batches.
                yield_now().await;
                continue;
            }
            if did > 0 {
                continue;
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
            } => self.on_subscribe(key, socket, gen, from as usize, member),
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
            Msg::Deliver { key, frame, except } => self.deliver(&key, &frame, except),
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
                    .filter(|(k, _)| {
                        k.app == app
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
                    .and_then(|ch| ch.members.as_ref())
                    .map(|m| {
                        m.iter()
                            .map(|(id, mem)| PresenceUser {
                                id: id.to_string(),
                                user_info_json: mem.info_json.to_string(),
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
                let ids: Vec<u64> = self
                    .users
                    .borrow()
                    .get(&(app, Arc::from(user_id.as_str())))
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
                let _ = reply.send(n);
            }
            Command::ChannelCache { key, reply } => {
                let _ = reply.send(self.cache.borrow_mut().describe(&key, Instant::now()));
            }
            Command::ChannelHistory { key, limit, reply } => {
                let _ = reply.send(self.history.borrow().channel_events(&key, limit));
            }
            Command::History { app, query, reply } => {
                // `query` returns newest first already.
                let _ = reply.send(self.history.borrow().query(app, &query));
            }
            Command::Activity { app, query, reply } => {
                let _ = reply.send(self.activity.borrow().query(app, &query));
            }
            Command::Shutdown => return true,
            Command::InjectPanic => panic!("injected panic on core {} (test hook)", self.idx),
            Command::Stall { stalled, release } => {
                // Test hook only: a core never blocks otherwise.
                let _ = stalled.send(());
                let _ = release.recv_timeout(Duration::from_secs(30));
            }
        }
        false
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
            match conn.ping_sent.get() {
                Some(t) if now.saturating_duration_since(t) >= cfg.pong_timeout => {
                    conn.close(
                        ringcast_protocol::close::PONG_TIMEOUT,
                        "Pong reply not received in time",
                        CloseReason::PongTimeout,
                    );
                }
                None if now.saturating_duration_since(conn.last_read.get()) >= activity => {
                    conn.ping_sent.set(Some(now));
                    conn.push(pusher::ping_frame(
                        self.shared.apps().app(conn.app).config.dialect,
                    ));
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
    ) {
        let conn = socket.lo;
        let apps = self.shared.apps();
        let app = apps.app(key.app);
        let mut owned = self.owned.borrow_mut();
        let new_channel = !owned.contains_key(&key);
        let is_presence = key.name.kind() == ChannelKind::Presence;
        let workers = self.workers();
        let ch = owned.entry(key.clone()).or_insert_with(|| OwnedChannel {
            per_core: vec![0; workers].into_boxed_slice(),
            members: is_presence.then(IndexMap::new),
            count_sent: None,
            count_dirty: false,
        });
        let mut added_member: Option<MemberInfo> = None;
        if let (Some(members), Some(m)) = (ch.members.as_mut(), member.as_ref()) {
            let full = members.len() >= app.config.max_presence_members;
            match members.get_mut(&m.user_id) {
                Some(existing) => existing.conns.push(conn),
                None if full => {
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
                    added_member = Some(m.clone());
                }
            }
        }
        ch.per_core[from] += 1;
        let snapshot = ch.members.as_ref().map(|members| {
            let snap = PresenceSnapshot {
                members: members
                    .iter()
                    .map(|(id, m)| (&**id, &*m.info_json))
                    .collect(),
            };
            pusher::subscription_succeeded_frame(app.config.dialect, key.name.as_str(), Some(&snap))
        });
        let targets: Vec<usize> = targets_of(ch);
        drop(owned);
        if new_channel {
            self.metrics().channels_owned.inc();
            if let Some(obs) = &self.shared.observer {
                obs.channel_occupied(&app.config, &key.name);
            }
        }
        if let Some(m) = added_member {
            let frame = pusher::member_added_frame(
                app.config.dialect,
                key.name.as_str(),
                &m.user_id,
                &m.info_json,
            );
            for c in &targets {
                self.send_deliver(*c, &key, &frame, Some(socket));
            }
            if let Some(obs) = &self.shared.observer {
                obs.member_added(&app.config, &key.name, &m.user_id);
            }
        }
        let then = if key.name.is_cache() {
            match self.cache.borrow_mut().get(&key, Instant::now()) {
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
        self.ack(
            from,
            Msg::SubAck {
                key: key.clone(),
                conn,
                gen,
                outcome: SubOutcome::Ok { snapshot, then },
            },
        );
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
        let now = Instant::now();
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
            self.send_deliver(c, key, &frame, None);
        }
        if let Some(obs) = &self.shared.observer {
            obs.subscription_count(&app.config, &key.name, total);
        }
    }

    /// Housekeeping once a second: owed subscription counts, cache and history expiry.
    pub(crate) async fn tick_loop(self: Rc<Self>) {
        let interval = Duration::from_secs(defaults::SUBSCRIPTION_COUNT_INTERVAL_SECS);
        let mut n: u64 = 0;
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            n += 1;
            let owed = std::mem::take(&mut *self.dirty_counts.borrow_mut());
            let now = Instant::now();
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
            if n.is_multiple_of(10) {
                self.cache.borrow_mut().sweep(Instant::now());
                let shared = self.shared.clone();
                self.history
                    .borrow_mut()
                    .expire(now_ms(), |a| shared.apps().app(a).config.history_max_age);
            }
            self.sweep_connections(Instant::now());
            let m = self.metrics();
            m.history_bytes.set(self.history.borrow().bytes() as u64);
            m.cache_entries.set(self.cache.borrow().len() as u64);
            self.flush();
        }
    }

    fn on_unsubscribe(&self, key: ChanKey, conn: u64, from: usize, user_id: Option<Arc<str>>) {
        let apps = self.shared.apps();
        let app = apps.app(key.app);
        let mut owned = self.owned.borrow_mut();
        let Some(ch) = owned.get_mut(&key) else {
            return;
        };
        let mut removed_member: Option<Arc<str>> = None;
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
                removed_member = Some(uid);
            }
        }
        ch.per_core[from] = ch.per_core[from].saturating_sub(1);
        let vacated = ch.total() == 0;
        let targets = targets_of(ch);
        if vacated {
            owned.remove(&key);
        }
        drop(owned);
        if let Some(uid) = removed_member {
            let frame = pusher::member_removed_frame(app.config.dialect, key.name.as_str(), &uid);
            for c in &targets {
                self.send_deliver(*c, &key, &frame, None);
            }
            if let Some(obs) = &self.shared.observer {
                obs.member_removed(&app.config, &key.name, &uid);
            }
        }
        if !vacated {
            self.count_changed(&key);
        }
        if vacated {
            self.metrics()
                .channels_owned
                .set(self.metrics().channels_owned.get().saturating_sub(1));
            if let Some(obs) = &self.shared.observer {
                obs.channel_vacated(&app.config, &key.name);
            }
        }
    }

    /// Forwards `frame` to every core holding subscribers of `key`.
    fn on_publish(&self, key: &ChanKey, frame: Bytes, except: Option<SocketId>) -> ChannelCounts {
        let apps = self.shared.apps();
        let app = &*apps.app(key.app).config;
        if key.name.is_cache() {
            self.cache
                .borrow_mut()
                .put(key, &frame, app.cache_ttl, Instant::now());
        }
        if app.history_size > 0 {
            self.history.borrow_mut().record(
                key,
                &frame,
                now_ms(),
                app.history_size,
                app.history_max_age,
            );
        }
        let owned = self.owned.borrow();
        let Some(ch) = owned.get(key) else {
            return ChannelCounts::default();
        };
        let counts = ChannelCounts {
            subscription_count: ch.total(),
            user_count: ch.members.as_ref().map(|m| m.len() as u64),
        };
        let targets = targets_of(ch);
        drop(owned);
        for c in targets {
            self.send_deliver(c, key, &frame, except);
        }
        counts
    }

    /// Sends a subscription answer. To this core's own connection it is handled at once, so it
    /// is ordered before any delivery the owner makes in place right after it.
    fn ack(&self, to: usize, msg: Msg) {
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

    fn send_deliver(&self, core: usize, key: &ChanKey, frame: &Bytes, except: Option<SocketId>) {
        if core == self.idx {
            // Deliver in place: no queue hop for the owner's own subscribers.
            self.deliver(key, frame, except);
        } else {
            self.send(
                core,
                Msg::Deliver {
                    key: key.clone(),
                    frame: frame.clone(),
                    except,
                },
            );
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
        socket_id: Option<&str>,
        user_id: Option<&str>,
        event_name: Option<&str>,
    ) {
        let cap = self.activity_cap(app);
        if cap == 0 {
            return;
        }
        self.activity.borrow_mut().record(
            app,
            cap,
            kind,
            channel,
            socket_id,
            user_id,
            event_name,
            now_ms(),
        );
    }

    // ---------------------------------------------------------------- subscriber side

    /// Appends `frame` (shared, not copied) to every local subscriber's outbound queue.
    pub(crate) fn deliver(&self, key: &ChanKey, frame: &Bytes, except: Option<SocketId>) {
        let subs = self.subs.borrow();
        let Some(list) = subs.get(key) else { return };
        let mut n = 0u64;
        for (id, conn) in list.iter() {
            // The connection id is the socket id's low half, so the cheap compare comes first;
            // the exclusion holds only when the whole socket id matches.
            if let Some(ex) = except {
                if ex.lo == *id && conn.socket_id == ex {
                    continue;
                }
            }
            conn.push(frame.clone());
            n += 1;
        }
        self.metrics().deliveries.add(n);
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
                        Some(&conn.socket_id_str),
                        user.as_deref(),
                        None,
                    );
                    let frame = frame.unwrap_or_else(|| {
                        pusher::subscription_succeeded_frame(dialect, key.name.as_str(), None)
                    });
                    conn.push(frame);
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
    ch.per_core
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, _)| i)
        .collect()
}

fn summary(key: &ChanKey, ch: Option<&OwnedChannel>) -> ChannelSummary {
    match ch {
        Some(ch) => ChannelSummary {
            name: key.name.clone(),
            occupied: ch.total() > 0,
            subscription_count: ch.total(),
            user_count: ch.members.as_ref().map(|m| m.len() as u64),
        },
        None => ChannelSummary {
            name: key.name.clone(),
            occupied: false,
            subscription_count: 0,
            user_count: (key.name.kind() == ChannelKind::Presence).then_some(0),
        },
    }
}

/// Gives other tasks on this core a turn.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
