//! The engine's side of the cluster seam (scale-out over a broker, docs/scale-out.md).
//!
//! The engine knows no broker and no async runtime. A [`ClusterLink`] attached before start
//! gives every core a bounded outbound queue to the bridge (the broker client, its own thread)
//! plus a non-blocking wake callback; the bridge reaches the cores through their existing
//! injection queues with [`Remote`] updates (`EngineHandle::cluster_send`). Without a link
//! nothing of this runs: the hot path pays one `OnceLock` check.
//!
//! A core never blocks on the bridge. A full outbound queue is handled by policy, never
//! silently: a lost event publish is counted in `outbound_dropped`; a lost bookkeeping item
//! (interest, count, join, leave) is counted too and sets `resync`, after which the bridge
//! re-reads every core's share and publishes a full snapshot that replaces what was lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use ringcast_protocol::{ChannelName, SocketId};

use crate::msg::AppIdx;

/// A node of the cluster, by its configured or generated id.
pub type NodeId = Arc<str>;

/// What a core tells the bridge. Only the owner core of a channel sends its channel items.
#[derive(Debug)]
pub enum Outbound {
    /// This node gained its first (`on`) or lost its last local subscriber of a channel.
    Interest {
        app: AppIdx,
        channel: ChannelName,
        on: bool,
    },
    /// The node-local subscription count of a channel changed (absolute, so idempotent).
    Count {
        app: AppIdx,
        channel: ChannelName,
        local: u64,
    },
    /// A user's first local connection joined a presence channel.
    Join {
        app: AppIdx,
        channel: ChannelName,
        user: Arc<str>,
        info: Arc<str>,
    },
    /// A user's last local connection left a presence channel.
    Leave {
        app: AppIdx,
        channel: ChannelName,
        user: Arc<str>,
    },
    /// A locally originated event (REST on this node, a client event of this node's
    /// connection), already delivered locally: the complete WebSocket frame.
    Publish {
        app: AppIdx,
        channel: ChannelName,
        frame: Bytes,
        except: Option<SocketId>,
    },
    /// `terminate_connections` asked of this node: every other node closes the user's
    /// connections too.
    Terminate {
        app: AppIdx,
        user_id: Arc<str>,
        code: u16,
    },
}

impl Outbound {
    fn is_event(&self) -> bool {
        matches!(self, Outbound::Publish { .. })
    }
}

/// A node's share of one channel: its local subscription count and (presence) its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareChannel {
    pub app: AppIdx,
    pub channel: ChannelName,
    pub count: u64,
    /// (user id, user_info JSON)
    pub members: Vec<(Arc<str>, Arc<str>)>,
}

/// What the bridge hands a core (through its injection queue).
#[derive(Debug)]
pub enum Remote {
    /// An event published on another node: delivered to local subscribers (and recorded in
    /// cache/history), never re-published.
    Event {
        app: AppIdx,
        channel: ChannelName,
        frame: Bytes,
        except: Option<SocketId>,
    },
    Count {
        node: NodeId,
        app: AppIdx,
        channel: ChannelName,
        count: u64,
    },
    Join {
        node: NodeId,
        app: AppIdx,
        channel: ChannelName,
        user: Arc<str>,
        info: Arc<str>,
    },
    Leave {
        node: NodeId,
        app: AppIdx,
        channel: ChannelName,
        user: Arc<str>,
    },
    /// Full replacement of a node's share on one core: `channels` are those of this core
    /// (every core gets one, possibly empty, so vanished channels are dropped everywhere).
    Snapshot {
        node: NodeId,
        channels: Vec<ShareChannel>,
    },
    /// A node stopped or its lease ran out: drop its share on this core.
    NodeGone { node: NodeId },
    /// The broker subscription for this channel's events is in place (or the broker is down
    /// and it will be made on reconnect): held `subscription_succeeded` answers may go.
    InterestReady { app: AppIdx, channel: ChannelName },
    /// `terminate_connections` from another node: close the user's local connections.
    Terminate {
        app: AppIdx,
        user_id: Arc<str>,
        code: u16,
    },
}

/// Counters of the cluster bridge (rendered as `ringcast_cluster_*` in /metrics).
#[derive(Default, Debug)]
pub struct ClusterMetrics {
    /// Messages published to the broker (events and control).
    pub published: AtomicU64,
    /// Messages received from the broker and accepted.
    pub received: AtomicU64,
    /// Malformed or foreign messages on our subjects, ignored.
    pub bad_messages: AtomicU64,
    /// Broker publishes that failed (event or control lost for the other nodes).
    pub publish_failed: AtomicU64,
    /// Events not published because the broker was unreachable.
    pub undeliverable: AtomicU64,
    /// Items a core could not queue for the bridge (queue full).
    pub outbound_dropped: AtomicU64,
    /// Remote updates the bridge could not hand to a core (injection queue full).
    pub inbound_dropped: AtomicU64,
    /// Live nodes including this one (gauge).
    pub nodes_alive: AtomicU64,
    /// Broker (re)connections.
    pub connects: AtomicU64,
    /// Snapshots of this node's share published.
    pub snapshots_sent: AtomicU64,
    /// Sequence gaps seen in another node's deltas (each asks that node for a snapshot).
    pub sequence_gaps: AtomicU64,
    /// Nodes whose lease ran out.
    pub nodes_expired: AtomicU64,
}

impl ClusterMetrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The seam between the cores and the bridge.
pub struct ClusterLink {
    node_id: NodeId,
    backend: &'static str,
    queues: Box<[ArrayQueue<Outbound>]>,
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
    armed: AtomicBool,
    connected: AtomicBool,
    leader: AtomicBool,
    resync: AtomicBool,
    pub metrics: ClusterMetrics,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("node_id", &self.node_id)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// A link for `workers` cores, each with an outbound queue of `capacity` items.
    pub fn new(
        node_id: NodeId,
        backend: &'static str,
        workers: usize,
        capacity: usize,
    ) -> ClusterLink {
        ClusterLink {
            node_id,
            backend,
            queues: (0..workers.max(1))
                .map(|_| ArrayQueue::new(capacity))
                .collect(),
            wake: OnceLock::new(),
            armed: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            // Alone until another node is seen: this node sends lifecycle webhooks.
            leader: AtomicBool::new(true),
            resync: AtomicBool::new(false),
            metrics: ClusterMetrics::default(),
        }
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// "redis", "redis-cluster" or "nats".
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Installs the bridge's wake-up (must not block: e.g. a tokio `Notify`).
    pub fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        let _ = self.wake.set(wake);
    }

    /// Queues an item from core `core` for the bridge; never blocks.
    pub fn push(&self, core: usize, item: Outbound) {
        let q = &self.queues[core % self.queues.len()];
        if let Err(item) = q.push(item) {
            ClusterMetrics::inc(&self.metrics.outbound_dropped);
            if !item.is_event() {
                // Bookkeeping lost: the bridge republishes a full snapshot instead.
                self.resync.store(true, Ordering::Release);
            }
        }
        self.wake();
    }

    fn wake(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.wake.get() {
                w();
            }
        }
    }

    /// For the bridge: takes everything queued, core by core (per-core order is kept).
    pub fn drain(&self, mut f: impl FnMut(Outbound)) {
        self.armed.store(false, Ordering::Release);
        for q in self.queues.iter() {
            while let Some(item) = q.pop() {
                f(item);
            }
        }
    }

    /// For the bridge: true (once) when bookkeeping was lost and a snapshot is owed.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
    }

    /// The webhook leader (the oldest live node) sends the lifecycle webhooks.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Release);
    }
}
