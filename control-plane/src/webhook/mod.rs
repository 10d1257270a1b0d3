//! Webhooks that never lose an event.
//!
//! ```text
//!  engine core (owner)            dispatcher thread                 one thread per target
//!  EngineObserver::member_added ─► bounded queue ─► filter (event_types, channel_prefix)
//!   (non-blocking try_send;          debounce (vacated/removed held 3 s)
//!    full: counted, logged,          batch (100 events / 50 ms)  ─► Delivery{id} ─► POST, retry
//!    recorded failed in the log)                                     1 s, 5 s, 30 s, 60 s ... until
//!                                                                    the budget (300 s); every
//!                                                                    outcome in the DeliveryLog
//! ```
//!
//! Cores never block on webhooks: they only `try_send` into a bounded queue. A full queue, an
//! exhausted retry budget, or a shutdown with deliveries pending is counted (`WebhookStats`,
//! exported in /metrics), logged, and the events stay readable in the delivery log
//! (`GET /apps/{id}/webhooks`); `redeliver` sends a logged delivery again with the same id.

mod dispatch;
mod log;
mod sender;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ringcast_engine::{defaults, AppConfig, EngineObserver};
use ringcast_protocol::{ChannelName, SocketId};
use serde_json::{json, Value};

use self::log::DeliveryLog;
pub use self::log::{DeliveryRecord, DeliveryStatus};
use self::sender::TargetQueue;

/// Counters for /metrics.
#[derive(Default, Debug)]
pub struct WebhookStats {
    pub events_queued: AtomicU64,
    pub queue_full: AtomicU64,
    pub deliveries_created: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub exhausted: AtomicU64,
    pub debounced: AtomicU64,
    pub shutdown_undelivered: AtomicU64,
    /// Events the dispatcher has taken from the queue (for `busy`).
    pub(crate) events_routed: AtomicU64,
    /// Events the dispatcher holds (debounce, batch windows).
    pub(crate) held: AtomicU64,
}

impl WebhookStats {
    /// Appends the counters in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            ("ringcast_webhook_events_queued_total", "Webhook events handed to the sender.", &self.events_queued),
            ("ringcast_webhook_queue_full_total", "Webhook events or deliveries refused by a full queue (recorded as failed in the delivery log).", &self.queue_full),
            ("ringcast_webhook_deliveries_total", "Webhook deliveries created (one request body each, retried as needed).", &self.deliveries_created),
            ("ringcast_webhook_delivered_total", "Webhook deliveries answered with a 2xx.", &self.delivered),
            ("ringcast_webhook_failed_attempts_total", "Webhook attempts that failed (non-2xx, error or timeout).", &self.failed_attempts),
            ("ringcast_webhook_exhausted_total", "Webhook deliveries given up after the retry budget (kept in the log as failed).", &self.exhausted),
            ("ringcast_webhook_debounced_total", "Webhook events dropped by debounce (vacated/occupied or removed/added pairs).", &self.debounced),
            ("ringcast_webhook_shutdown_undelivered_total", "Webhook deliveries still pending at shutdown (logged with their events).", &self.shutdown_undelivered),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
    }
}

/// One webhook event on its way to the dispatcher.
pub(crate) struct QueuedEvent {
    pub app: usize,
    pub name: &'static str,
    pub channel: String,
    pub user_id: Option<String>,
    pub body: Value,
}

pub(crate) struct AppHooks {
    pub config: AppConfig,
    /// Union of what this app's targets want (cheap early exit on the core).
    pub wants: Vec<&'static str>,
    /// Index into `Shared::targets` for each of the app's targets.
    pub targets: Vec<usize>,
}

pub(crate) struct Shared {
    pub apps: Vec<AppHooks>,
    pub by_id: HashMap<String, usize>,
    pub targets: Vec<Arc<TargetQueue>>,
    pub log: DeliveryLog,
    pub stats: WebhookStats,
    pub shutdown: AtomicBool,
    next_id: AtomicU64,
    id_prefix: String,
}

impl Shared {
    pub fn next_delivery_id(&self) -> String {
        format!("{}-{}", self.id_prefix, self.next_id.fetch_add(1, Relaxed))
    }
}

/// Refused events (queue full) waiting for the dispatcher to record them as failed.
const SPILL_CAPACITY: usize = 4096;

/// The webhook subsystem: an engine observer plus the threads that deliver.
pub struct Webhooks {
    shared: Arc<Shared>,
    tx: SyncSender<QueuedEvent>,
    /// Events the full queue refused, handed (never blocking) to the dispatcher thread, which
    /// records them as failed and logs their bodies off the engine core. Bounded; past it an
    /// event is only counted.
    spilled: SyncSender<QueuedEvent>,
    /// Unix ms of the last "queue full" warning (at most one a second, from the cores).
    last_full_warning_ms: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Webhooks {
    /// Starts the dispatcher and one sender thread per configured target. With no targets
    /// anywhere, no thread is started and the observer does nothing.
    pub fn start(apps: &[AppConfig]) -> Arc<Webhooks> {
        let mut targets = Vec::new();
        let mut hooks = Vec::new();
        for (i, a) in apps.iter().enumerate() {
            let mut idx = Vec::new();
            let mut wants: Vec<&'static str> = Vec::new();
            for t in &a.webhooks {
                idx.push(targets.len());
                targets.push(Arc::new(TargetQueue::new(i, t.clone())));
                for name in ringcast_engine::WEBHOOK_EVENT_TYPES {
                    let wanted = t
                        .event_types
                        .as_ref()
                        .is_none_or(|l| l.iter().any(|x| x == name));
                    if wanted && !wants.contains(&name) {
                        wants.push(name);
                    }
                }
            }
            hooks.push(AppHooks {
                config: a.clone(),
                wants,
                targets: idx,
            });
        }
        let shared = Arc::new(Shared {
            by_id: apps
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i))
                .collect(),
            apps: hooks,
            targets,
            log: DeliveryLog::new(apps.len(), defaults::WEBHOOK_LOG_ENTRIES),
            stats: WebhookStats::default(),
            shutdown: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            id_prefix: format!("{:x}", now_ms()),
        });
        let (tx, rx) = sync_channel(defaults::WEBHOOK_QUEUE_CAPACITY);
        let (spilled, spilled_rx) = sync_channel(SPILL_CAPACITY);
        let mut threads = Vec::new();
        if !shared.targets.is_empty() {
            let s = shared.clone();
            if let Ok(t) = std::thread::Builder::new()
                .name("ringcast-webhooks".into())
                .spawn(move || dispatch::run(s, rx, spilled_rx))
            {
                threads.push(t);
            }
            for t in 0..shared.targets.len() {
                let s = shared.clone();
                if let Ok(h) = std::thread::Builder::new()
                    .name(format!("ringcast-webhook-{t}"))
                    .spawn(move || sender::run(s, t))
                {
                    threads.push(h);
                }
            }
        }
        Arc::new(Webhooks {
            shared,
            tx,
            spilled,
            last_full_warning_ms: AtomicU64::new(0),
            threads: Mutex::new(threads),
        })
    }

    /// The observer to hand to `Engine::bind`.
    pub fn observer(self: &Arc<Self>) -> Arc<dyn EngineObserver> {
        Arc::new(Observer(self.clone()))
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.shared.stats
    }

    /// Recent deliveries of an app (newest first), `None` for an unknown app.
    pub fn deliveries(&self, app_id: &str) -> Option<Vec<DeliveryRecord>> {
        let app = *self.shared.by_id.get(app_id)?;
        Some(self.shared.log.recent(app))
    }

    /// Sends a logged delivery again (same id, attempt numbers continue).
    pub fn redeliver(&self, app_id: &str, delivery_id: &str) -> Result<(), String> {
        let app = *self.shared.by_id.get(app_id).ok_or("unknown app")?;
        let rec = self
            .shared
            .log
            .get(app, delivery_id)
            .ok_or_else(|| format!("no delivery {delivery_id:?}"))?;
        let target = *self.shared.apps[app]
            .targets
            .iter()
            .find(|t| self.shared.targets[**t].target.url == rec.url)
            .ok_or("the delivery's target is no longer configured")?;
        self.shared
            .log
            .set_status(app, delivery_id, DeliveryStatus::Pending, None);
        self.shared.targets[target].push(sender::Delivery {
            id: rec.id.clone(),
            app,
            events: rec.events.clone(),
            attempts: rec.attempts,
        });
        Ok(())
    }

    /// True while events or deliveries are still on their way.
    pub fn busy(&self) -> bool {
        let s = &self.shared.stats;
        s.events_queued.load(Relaxed) != s.events_routed.load(Relaxed)
            || s.held.load(Relaxed) > 0
            || self.shared.targets.iter().any(|t| t.in_flight())
    }

    /// Waits (at most `grace`) for pending webhooks to go out, then shuts down.
    pub fn shutdown_graceful(&self, grace: std::time::Duration) {
        let until = std::time::Instant::now() + grace;
        while self.busy() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.shutdown();
    }

    /// Stops accepting events and ends the threads. Whatever is still undelivered is counted,
    /// logged with its body, and stays in the delivery log.
    pub fn shutdown(&self) {
        if self.shared.shutdown.swap(true, Relaxed) {
            return;
        }
        for t in &self.shared.targets {
            t.wake();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }

    fn emit(
        &self,
        app: &AppConfig,
        name: &'static str,
        channel: &ChannelName,
        user_id: Option<&str>,
        body: impl FnOnce() -> Value,
    ) {
        let Some(&idx) = self.shared.by_id.get(&app.id) else {
            return;
        };
        if !self.shared.apps[idx].wants.contains(&name) || self.shared.shutdown.load(Relaxed) {
            return;
        }
        // Built only when some target wants it: this runs on the engine's cores.
        let mut body = body();
        body["name"] = json!(name);
        body["channel"] = json!(channel.as_str());
        let ev = QueuedEvent {
            app: idx,
            name,
            channel: channel.as_str().to_owned(),
            user_id: user_id.map(str::to_owned),
            body,
        };
        match self.tx.try_send(ev) {
            Ok(()) => {
                self.shared.stats.events_queued.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(ev)) | Err(TrySendError::Disconnected(ev)) => {
                // On the engine core: count, hand the event to the dispatcher to be recorded
                // as failed (and logged with its body) off the core, and warn at most once a
                // second, without the body.
                let n = self.shared.stats.queue_full.fetch_add(1, Relaxed) + 1;
                let _ = self.spilled.try_send(ev);
                let now = now_ms();
                let last = self.last_full_warning_ms.load(Relaxed);
                if now.saturating_sub(last) >= 1000
                    && self
                        .last_full_warning_ms
                        .compare_exchange(last, now, Relaxed, Relaxed)
                        .is_ok()
                {
                    tracing::warn!(app = %app.id, refused_total = n, "webhook queue full: events recorded as failed");
                }
            }
        }
    }
}

struct Observer(Arc<Webhooks>);

impl EngineObserver for Observer {
    fn channel_occupied(&self, app: &AppConfig, channel: &ChannelName) {
        self.0
            .emit(app, "channel_occupied", channel, None, || json!({}));
    }
    fn channel_vacated(&self, app: &AppConfig, channel: &ChannelName) {
        self.0
            .emit(app, "channel_vacated", channel, None, || json!({}));
    }
    fn member_added(&self, app: &AppConfig, channel: &ChannelName, user_id: &str) {
        self.0.emit(
            app,
            "member_added",
            channel,
            Some(user_id),
            || json!({"user_id": user_id}),
        );
    }
    fn member_removed(&self, app: &AppConfig, channel: &ChannelName, user_id: &str) {
        self.0.emit(
            app,
            "member_removed",
            channel,
            Some(user_id),
            || json!({"user_id": user_id}),
        );
    }
    fn cache_miss(&self, app: &AppConfig, channel: &ChannelName) {
        self.0.emit(app, "cache_miss", channel, None, || json!({}));
    }
    fn subscription_count(&self, app: &AppConfig, channel: &ChannelName, count: u64) {
        self.0.emit(
            app,
            "subscription_count",
            channel,
            None,
            || json!({"subscription_count": count}),
        );
    }
    fn client_message(&self, app: &AppConfig, user_id: &str, message_json: &str) {
        let Ok(channel) = ChannelName::parse(&format!("#server-to-user-{user_id}")) else {
            return;
        };
        self.0
            .emit(app, "client_message", &channel, Some(user_id), || {
                let message = serde_json::from_str::<Value>(message_json).unwrap_or(Value::Null);
                json!({"user_id": user_id, "message": message})
            });
    }

    fn client_event(
        &self,
        app: &AppConfig,
        channel: &ChannelName,
        event: &str,
        data_json: Option<&str>,
        socket_id: &SocketId,
        user_id: Option<&str>,
    ) {
        self.0.emit(app, "client_event", channel, user_id, || {
            // `data` as a string, as the Pusher docs show it.
            let data = match data_json.map(serde_json::from_str::<Value>) {
                Some(Ok(Value::String(s))) => s,
                Some(Ok(v)) => v.to_string(),
                _ => String::new(),
            };
            let mut body =
                json!({"event": event, "data": data, "socket_id": socket_id.to_string()});
            if let Some(u) = user_id {
                body["user_id"] = json!(u);
            }
            body
        });
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.shutdown();
    }
}
