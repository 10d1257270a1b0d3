//! What crosses cores. [`Msg`] travels on the SPSC mesh between cores; [`Command`] enters a core
//! from the rest of the process through its injection queue. Frames are `Bytes`: sending one
//! to a core or a connection is a reference-count increment, never a copy.

use std::sync::Arc;

use bytes::Bytes;
use futures_channel::oneshot;
use ringcast_protocol::{ChannelName, SocketId};

/// Index of an app in the resolved config.
pub type AppIdx = u32;

/// A channel of an app: the unit of ownership.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ChanKey {
    pub app: AppIdx,
    pub name: ChannelName,
}

/// A presence member as the owner stores it.
#[derive(Clone, Debug)]
pub(crate) struct MemberInfo {
    pub user_id: Arc<str>,
    pub info_json: Arc<str>,
}

/// Result of a subscription, decided by the owner.
pub(crate) enum SubOutcome {
    /// Subscribed. `snapshot`: for presence channels, the `subscription_succeeded` frame with
    /// the member snapshot (only the owner knows the members); for others the subscriber core
    /// encodes it. `then`: for cache channels, the cached event or `pusher:cache_miss`.
    Ok {
        snapshot: Option<Bytes>,
        then: Option<Bytes>,
        /// SSE streams: what the subscriber asked for; the owner fills `replay` when it
        /// sends the answer.
        resume: Option<Resume>,
        replay: Option<Replay>,
    },
    /// Refused (presence member limit): frames to send to the connection.
    Refused(Vec<Bytes>),
}

/// What an SSE stream's subscription asks of the owner's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// A new stream: only the channel's newest sequence number (the stream's first `id:`).
    Fresh,
    /// `Last-Event-ID`: the events after this sequence number. `u64::MAX` when the id names
    /// no position in this channel (always a reset).
    After(u64),
}

/// An SSE stream's resume, read from the owner's history at the moment the owner answers the
/// subscription: every event after the asked sequence number up to that moment (later ones
/// follow as deliveries, behind this answer on the FIFO mesh), so nothing is missed or doubled.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// `(seq, frame)`, oldest first.
    pub events: Vec<(u64, Bytes)>,
    /// History no longer holds the event right after the asked one (or never numbered it):
    /// the stream gets a reset event instead of a replay.
    pub reset: bool,
    /// The channel's newest sequence number at that moment (0: none yet).
    pub head: u64,
}

/// Subscription and delivery counts of one channel after a publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    /// Connections subscribed.
    pub subscription_count: u64,
    /// Distinct users (presence channels only).
    pub user_count: Option<u64>,
}

/// One channel as seen by a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSummary {
    pub name: ChannelName,
    pub occupied: bool,
    pub subscription_count: u64,
    /// Presence channels only.
    pub user_count: Option<u64>,
}

/// A presence channel member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceUser {
    pub id: String,
    /// The member's `user_info` as raw JSON text (`null` if none was given).
    pub user_info_json: String,
}

pub(crate) enum Msg {
    /// To the owner: a connection on core `from` wants to subscribe. `socket.lo` is the
    /// connection id; the whole socket id is kept to exclude it from its own `member_added`.
    Subscribe {
        key: ChanKey,
        socket: SocketId,
        gen: u32,
        from: u16,
        member: Option<MemberInfo>,
        /// SSE streams: what to answer with besides the subscription (see `Replay`); `None`
        /// for every other subscription.
        resume: Option<Resume>,
    },
    /// To the owner: a connection on core `from` left (or never completed) a subscription.
    Unsubscribe {
        key: ChanKey,
        conn: u64,
        from: u16,
        user_id: Option<Arc<str>>,
    },
    /// To the owner: publish an encoded frame to every subscriber except `except`.
    Publish {
        key: ChanKey,
        frame: Bytes,
        except: Option<SocketId>,
    },
    /// From the owner to the subscriber's core.
    SubAck {
        key: ChanKey,
        conn: u64,
        gen: u32,
        outcome: SubOutcome,
    },
    /// From the owner to a core holding subscribers: write `frame` to each local subscriber.
    Deliver {
        key: ChanKey,
        frame: Bytes,
        except: Option<SocketId>,
        /// The event's sequence number in its channel (events only; `None` for presence and
        /// count frames): an SSE stream's `id:`.
        seq: Option<u64>,
    },
    /// From an owner to a core that could not take a delivery of these channels (its mesh
    /// was past the hard limit): close their local subscribers with 4100.
    Lost { keys: Vec<ChanKey> },
}

pub(crate) enum Command {
    /// Close every local connection of `app` (disabled: 4003, deleted: 4001), or only those
    /// that connected with `key` (a revoked key: 4001).
    CloseApp {
        app: AppIdx,
        key: Option<String>,
        code: u16,
        reason: &'static str,
    },
    Publish {
        key: ChanKey,
        frame: Bytes,
        except: Option<SocketId>,
        reply: Option<oneshot::Sender<ChannelCounts>>,
    },
    ListChannels {
        app: AppIdx,
        prefix: Option<String>,
        reply: oneshot::Sender<Vec<ChannelSummary>>,
    },
    ChannelInfo {
        key: ChanKey,
        reply: oneshot::Sender<ChannelSummary>,
    },
    PresenceUsers {
        key: ChanKey,
        reply: oneshot::Sender<Vec<PresenceUser>>,
    },
    TerminateUser {
        app: AppIdx,
        user_id: String,
        code: u16,
        reply: oneshot::Sender<usize>,
    },
    ChannelCache {
        key: ChanKey,
        reply: oneshot::Sender<Option<crate::cache::CachedEvent>>,
    },
    ChannelHistory {
        key: ChanKey,
        limit: usize,
        reply: oneshot::Sender<Vec<crate::history::RawEvent>>,
    },
    History {
        app: AppIdx,
        query: crate::history::HistoryQuery,
        reply: oneshot::Sender<Vec<crate::history::RawEvent>>,
    },
    /// From the cluster bridge: another node's event or share, or a node's departure.
    Remote(crate::cluster::Remote),
    /// For the cluster bridge: this core's share (local counts and members of owned channels).
    ClusterDump {
        reply: oneshot::Sender<Vec<crate::cluster::ShareChannel>>,
    },
    Activity {
        app: AppIdx,
        query: crate::activity::ActivityQuery,
        reply: oneshot::Sender<Vec<crate::activity::ActivityRecord>>,
    },
    /// Close the user's other `/ws` user sockets on this core with 4000 (apps with
    /// `single_connection_per_user`); `keep` is the new connection.
    ReplaceUserSocket {
        app: AppIdx,
        user_id: String,
        keep: u64,
    },
    Shutdown,
    /// Test hook: the core panics while handling this (proves the panic policy).
    InjectPanic,
    /// Test hook: run the once-a-second housekeeping now (with full expiry), then reply.
    Tick {
        reply: oneshot::Sender<()>,
    },
    /// Test hook: the core blocks its thread (says so on `stalled`) until `release` is dropped,
    /// as a core too busy to drain its mesh would; bounded to 30 s.
    Stall {
        stalled: std::sync::mpsc::SyncSender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
}
