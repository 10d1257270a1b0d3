//! Ringcast's data plane: thread-per-core workers on monoio (io_uring), sharded channel
//! ownership, an SPSC mesh between cores, and zero-copy fan-out.
//!
//! ```text
//!  client ──TCP──► worker k (SO_REUSEPORT accept) ── upgrade ──► conn task (reader)
//!                                                                   │ pusher:subscribe
//!                                                                   ▼
//!        owner core o = keyed_hash(app, channel) % N ◄── Subscribe ── mesh k→o (SPSC)
//!        (per-core counts, presence members)     ── SubAck ────► conn: subscription_succeeded
//!
//!  EngineHandle::publish (REST)         client event on core k
//!        │ frame encoded once                │ frame encoded once
//!        └──► inject queue o ──► owner o ◄───┘ mesh k→o
//!                                   │ Deliver(frame: Bytes) to each core with subscribers
//!                                   ▼
//!                       core j: for each local subscriber: queue.push(frame.clone())
//!                                   ▼
//!                       flush pass (per core): one sendmsg of all due frames per dirty socket
//! ```
//!
//! Cores share nothing but the mesh: tasks are `!Send`, each core owns its connections and
//! the channels hashed to it. See docs/ARCHITECTURE.md for the full data path.

mod activity;
mod admission;
#[doc(hidden)]
pub mod bench_support;
mod cache;
mod cluster;
mod config;
mod conn;
mod core;
mod flush;
mod handle;
mod history;
mod maps;
mod mesh;
mod metrics;
mod msg;
mod ping_budget;
mod read_scratch;
mod server;
mod shared;
mod sse;
mod tls;
mod user_socket;

pub use crate::activity::{ActivityKind, ActivityQuery, ActivityRecord};
pub use crate::admission::{origin_allowed, AdmissionConfig, OriginPattern, Refusal};
pub use crate::cache::CachedEvent;
pub use crate::cluster::{ClusterLink, ClusterMetrics, NodeId, Outbound, Remote, ShareChannel};
pub use crate::config::{
    defaults, AppConfig, AppKey, Config, ConfigError, RateLimit, RawAdmission, RawApp, RawConfig,
    RawRateLimit, RawWebhook, WebhookTarget, RATE_LIMIT_ENDPOINTS, WEBHOOK_EVENT_TYPES,
};
pub use crate::handle::{
    validate_apps, AppUsage, AppsUpdate, CoreStall, EngineError, EngineHandle, Publish, Stats,
};
pub use crate::history::{HistoryEvent, HistoryQuery};
pub use crate::metrics::{CloseReason, MetricsSnapshot};
pub use crate::msg::{AppIdx, ChannelCounts, ChannelSummary, PresenceUser};
pub use crate::server::{reuseport_listener, Engine, HttpService, HttpServing, RunningEngine};
pub use crate::shared::EngineObserver;
pub use crate::tls::{
    ClientStream, HandshakeFailure, TlsAcceptor, TlsCounters, TlsError, TlsFiles, TlsStream,
};

/// Re-exported so the composition root and control plane use the same runtime types.
pub use monoio;
