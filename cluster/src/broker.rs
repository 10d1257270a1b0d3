//! What the bridge needs of a broker, over the backends in `redis.rs` and `nats.rs`:
//! subscribe/unsubscribe a subject (confirmed by the broker before returning), publish
//! (queued in order, never blocking the bridge), and a stream of [`BrokerEvent`]s.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::config::{Backend, ClusterConfig};

/// A subject (NATS) or channel (Redis). `sharded`: a Redis Cluster sharded channel
/// (SPUBLISH/SSUBSCRIBE); ignored elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    pub name: String,
    pub sharded: bool,
}

/// What the broker side tells the bridge.
#[derive(Debug)]
pub enum BrokerEvent {
    /// A message on one of our subjects.
    Message(Bytes),
    /// The connection is (again) up: resubscribe and re-assert this node's share.
    Up,
    /// The connection is down (the client library reconnects with backoff).
    Down,
}

pub enum Broker {
    Redis(crate::redis::RedisBroker),
    Nats(crate::nats::NatsBroker),
}

impl Broker {
    /// Starts connecting (in the background: an unreachable broker is retried with backoff,
    /// never an error here except for a bad configuration).
    pub async fn start(
        cfg: &ClusterConfig,
        events: mpsc::Sender<BrokerEvent>,
        link: std::sync::Arc<ringcast_engine::ClusterLink>,
    ) -> Result<Broker, String> {
        match &cfg.backend {
            Backend::Redis { .. } | Backend::RedisCluster { .. } => Ok(Broker::Redis(
                crate::redis::RedisBroker::start(cfg, events, link).await?,
            )),
            Backend::Nats { .. } => Ok(Broker::Nats(
                crate::nats::NatsBroker::start(cfg, events, link).await?,
            )),
        }
    }

    pub async fn subscribe(&mut self, s: &Subject) -> Result<(), String> {
        match self {
            Broker::Redis(b) => b.subscribe(s).await,
            Broker::Nats(b) => b.subscribe(s).await,
        }
    }

    pub async fn unsubscribe(&mut self, s: &Subject) -> Result<(), String> {
        match self {
            Broker::Redis(b) => b.unsubscribe(s).await,
            Broker::Nats(b) => b.unsubscribe(s).await,
        }
    }

    /// Queues a publish; false when the publish queue is full or closed (the caller counts).
    pub fn publish(&self, s: Subject, payload: Bytes) -> bool {
        match self {
            Broker::Redis(b) => b.publish(s, payload),
            Broker::Nats(b) => b.publish(s, payload),
        }
    }

    /// Waits (bounded) until what was queued is handed to the broker.
    pub async fn flush(&self) {
        match self {
            Broker::Redis(b) => b.flush().await,
            Broker::Nats(b) => b.flush().await,
        }
    }

    pub async fn close(self) {
        match self {
            Broker::Redis(b) => b.close().await,
            Broker::Nats(b) => b.close().await,
        }
    }
}
