//! NATS backend (async-nats): one server or a list (the client picks one and fails over);
//! `no_echo`, so a node never receives its own publishes. The library reconnects with our
//! backoff (100 ms doubling to 2 s) and re-sends every subscription itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use ringcast_engine::{ClusterLink, ClusterMetrics};
use tokio::sync::mpsc;

use crate::broker::{BrokerEvent, Subject};
use crate::config::{defaults, Backend, ClusterConfig};

pub struct NatsBroker {
    client: async_nats::Client,
    subs: HashMap<String, tokio::task::JoinHandle<()>>,
    events: mpsc::Sender<BrokerEvent>,
    pub_tx: mpsc::Sender<(Subject, Bytes)>,
    publisher: tokio::task::JoinHandle<()>,
    link: Arc<ClusterLink>,
}

impl NatsBroker {
    pub async fn start(
        cfg: &ClusterConfig,
        events: mpsc::Sender<BrokerEvent>,
        link: Arc<ClusterLink>,
    ) -> Result<NatsBroker, String> {
        let Backend::Nats { servers } = &cfg.backend else {
            return Err("not a nats url".into());
        };
        let addrs: Vec<async_nats::ServerAddr> = servers
            .iter()
            .map(|s| s.parse().map_err(|e| format!("cluster url {s:?}: {e}")))
            .collect::<Result<_, String>>()?;
        let ev = events.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(2))
            .subscription_capacity(1 << 16)
            .reconnect_delay_callback(|attempts| {
                let ms = 100u64.saturating_mul(1 << attempts.min(5)).min(2_000);
                Duration::from_millis(ms)
            })
            .event_callback(move |e| {
                let ev = ev.clone();
                async move {
                    match e {
                        async_nats::Event::Connected => {
                            let _ = ev.send(BrokerEvent::Up).await;
                        }
                        async_nats::Event::Disconnected => {
                            let _ = ev.send(BrokerEvent::Down).await;
                        }
                        other => tracing::debug!("nats: {other}"),
                    }
                }
            });
        if let Some(p) = &cfg.password {
            opts = opts.token(p.clone());
        }
        let client = opts
            .connect(addrs)
            .await
            .map_err(|e| format!("nats: {e}"))?;
        let (pub_tx, pub_rx) = mpsc::channel(defaults::PUBLISH_QUEUE);
        let publisher = tokio::spawn(publish_loop(client.clone(), pub_rx, link.clone()));
        Ok(NatsBroker {
            client,
            subs: HashMap::new(),
            events,
            pub_tx,
            publisher,
            link,
        })
    }

    pub async fn subscribe(&mut self, s: &Subject) -> Result<(), String> {
        if !self.subs.contains_key(&s.name) {
            let mut sub = self
                .client
                .subscribe(s.name.clone())
                .await
                .map_err(|e| e.to_string())?;
            let events = self.events.clone();
            let link = self.link.clone();
            let task = tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    if events.try_send(BrokerEvent::Message(m.payload)).is_err() {
                        ClusterMetrics::inc(&link.metrics.inbound_dropped);
                    }
                }
            });
            self.subs.insert(s.name.clone(), task);
        }
        // A PING/PONG round trip: the server has processed the SUB when it answers.
        tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .map_err(|_| "nats: flush timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    pub async fn unsubscribe(&mut self, s: &Subject) -> Result<(), String> {
        // Dropping the subscriber (with its task) sends UNSUB.
        if let Some(t) = self.subs.remove(&s.name) {
            t.abort();
        }
        Ok(())
    }

    pub fn publish(&self, s: Subject, payload: Bytes) -> bool {
        self.pub_tx.try_send((s, payload)).is_ok()
    }

    pub async fn flush(&self) {
        for _ in 0..200 {
            if self.pub_tx.capacity() == self.pub_tx.max_capacity() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
    }

    pub async fn close(self) {
        for (_, t) in self.subs {
            t.abort();
        }
        self.publisher.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.drain()).await;
    }
}

async fn publish_loop(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<(Subject, Bytes)>,
    link: Arc<ClusterLink>,
) {
    while let Some((s, payload)) = rx.recv().await {
        match client.publish(s.name, payload).await {
            Ok(()) => ClusterMetrics::inc(&link.metrics.published),
            Err(e) => {
                ClusterMetrics::inc(&link.metrics.publish_failed);
                tracing::debug!("cluster publish failed: {e}");
            }
        }
    }
}
