//! Redis backend (fred): one server, or a Redis Cluster with sharded pub/sub (SPUBLISH /
//! SSUBSCRIBE for event channels, so an event travels only within its shard; MOVED/ASK are
//! followed by the library). Two connections: a publisher (pipelined, in order) and a
//! subscriber. Reconnects with exponential backoff (100 ms .. 2 s).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, ServerConfig};
use fred::types::Value;
use ringcast_engine::{ClusterLink, ClusterMetrics};
use tokio::sync::mpsc;

use crate::broker::{BrokerEvent, Subject};
use crate::config::{defaults, Backend, ClusterConfig};

pub struct RedisBroker {
    publisher: Client,
    subscriber: SubscriberClient,
    pub_tx: mpsc::Sender<(Subject, Bytes)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RedisBroker {
    pub async fn start(
        cfg: &ClusterConfig,
        events: mpsc::Sender<BrokerEvent>,
        link: Arc<ClusterLink>,
    ) -> Result<RedisBroker, String> {
        let mut config = match &cfg.backend {
            Backend::Redis { url } => {
                Config::from_url(url).map_err(|e| format!("cluster url {url:?}: {e}"))?
            }
            Backend::RedisCluster { nodes } => Config {
                server: ServerConfig::new_clustered(nodes.clone()),
                ..Default::default()
            },
            Backend::Nats { .. } => return Err("not a redis url".into()),
        };
        if let Some(p) = &cfg.password {
            config.password = Some(p.clone());
        }
        // Keep retrying an unreachable broker in the background instead of failing start-up.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = 1 << 16;
                // A command queued while the broker is down fails instead of waiting forever.
                p.default_command_timeout = Duration::from_secs(3);
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
            });
        let publisher = builder.build().map_err(|e| e.to_string())?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.to_string())?;
        publisher.connect();
        subscriber.connect();

        let mut tasks = Vec::new();
        // Messages -> bridge.
        {
            let mut rx = subscriber.message_rx();
            let events = events.clone();
            let link = link.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(m) => {
                            let payload = match m.value {
                                Value::Bytes(b) => b,
                                Value::String(s) => s.into_inner(),
                                _ => {
                                    ClusterMetrics::inc(&link.metrics.bad_messages);
                                    continue;
                                }
                            };
                            if events.try_send(BrokerEvent::Message(payload)).is_err() {
                                ClusterMetrics::inc(&link.metrics.inbound_dropped);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            link.metrics
                                .inbound_dropped
                                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }));
        }
        // Connection state -> bridge: both connections up = up. A reconnect between two
        // looks (a broker restarted quickly) is caught by the reconnect notifications.
        {
            let p = publisher.clone();
            let s = subscriber.clone();
            let mut reconnects = subscriber.reconnect_rx();
            let mut p_reconnects = publisher.reconnect_rx();
            tasks.push(tokio::spawn(async move {
                let mut up = false;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    let mut reasserted = false;
                    tokio::select! {
                        _ = tick.tick() => {}
                        r = reconnects.recv() => { reasserted = r.is_ok(); }
                        r = p_reconnects.recv() => { reasserted = r.is_ok(); }
                    }
                    let now = p.is_connected() && s.is_connected();
                    if now && (!up || reasserted) {
                        if events.send(BrokerEvent::Up).await.is_err() {
                            break;
                        }
                    } else if !now && up && events.send(BrokerEvent::Down).await.is_err() {
                        break;
                    }
                    up = now;
                }
            }));
        }
        let (pub_tx, pub_rx) = mpsc::channel(defaults::PUBLISH_QUEUE);
        tasks.push(tokio::spawn(publish_loop(publisher.clone(), pub_rx, link)));
        Ok(RedisBroker {
            publisher,
            subscriber,
            pub_tx,
            tasks,
        })
    }

    pub async fn subscribe(&mut self, s: &Subject) -> Result<(), String> {
        let r = if s.sharded {
            self.subscriber.ssubscribe(s.name.clone()).await
        } else {
            self.subscriber.subscribe(s.name.clone()).await
        };
        r.map_err(|e| e.to_string())
    }

    pub async fn unsubscribe(&mut self, s: &Subject) -> Result<(), String> {
        let r = if s.sharded {
            self.subscriber.sunsubscribe(s.name.clone()).await
        } else {
            self.subscriber.unsubscribe(s.name.clone()).await
        };
        r.map_err(|e| e.to_string())
    }

    pub fn publish(&self, s: Subject, payload: Bytes) -> bool {
        self.pub_tx.try_send((s, payload)).is_ok()
    }

    pub async fn flush(&self) {
        // The publish loop drains in order; wait (bounded) until it has taken everything.
        for _ in 0..200 {
            if self.pub_tx.capacity() == self.pub_tx.max_capacity() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.subscriber.quit()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.publisher.quit()).await;
    }
}

/// Publishes in order, as pipelines of whatever is queued (one round trip per batch).
async fn publish_loop(
    client: Client,
    mut rx: mpsc::Receiver<(Subject, Bytes)>,
    link: Arc<ClusterLink>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let p = client.pipeline();
        for (s, payload) in batch.drain(..) {
            let queued: Result<(), Error> = if s.sharded {
                p.spublish(s.name, payload).await
            } else {
                p.publish(s.name, payload).await
            };
            if queued.is_err() {
                ClusterMetrics::inc(&link.metrics.publish_failed);
            }
        }
        for r in p.try_all::<Value>().await {
            match r {
                Ok(_) => ClusterMetrics::inc(&link.metrics.published),
                Err(e) => {
                    ClusterMetrics::inc(&link.metrics.publish_failed);
                    tracing::debug!("cluster publish failed: {e}");
                }
            }
        }
    }
}
