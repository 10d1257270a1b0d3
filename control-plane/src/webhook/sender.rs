//! One sender thread per webhook target: deliveries go out in order; the head is retried with
//! backoff (1 s, 5 s, 30 s, then every 60 s) until it succeeds or the app's retry budget is
//! spent. Any 2xx is success; a timeout (10 s) or any other status is a failed attempt.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ringcast_engine::{defaults, WebhookTarget};
use serde_json::{json, Value};

use super::log::DeliveryStatus;
use super::Shared;

/// Deliveries a target may have waiting; past it new ones are recorded as failed.
const TARGET_BACKLOG: usize = 10_000;
const BACKOFF_SECS: [u64; 4] = [1, 5, 30, 60];

pub(crate) struct Delivery {
    pub id: String,
    pub app: usize,
    pub events: Vec<Value>,
    /// Attempts made so far (a redelivery continues the count).
    pub attempts: u32,
}

pub(crate) struct TargetQueue {
    pub app: usize,
    pub target: WebhookTarget,
    q: Mutex<VecDeque<Delivery>>,
    cv: Condvar,
    /// A delivery is being sent (or waiting to be retried).
    sending: std::sync::atomic::AtomicBool,
}

impl TargetQueue {
    pub fn new(app: usize, target: WebhookTarget) -> TargetQueue {
        TargetQueue {
            app,
            target,
            q: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            sending: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a delivery; gives it back when the backlog is full.
    pub fn push(&self, d: Delivery) -> Option<Delivery> {
        let mut q = self.lock();
        if q.len() >= TARGET_BACKLOG {
            return Some(d);
        }
        q.push_back(d);
        self.cv.notify_one();
        None
    }

    /// Something is queued or being sent.
    pub fn in_flight(&self) -> bool {
        self.sending.load(Relaxed) || !self.lock().is_empty()
    }

    pub fn wake(&self) {
        self.cv.notify_all();
    }

    fn pop(&self, shared: &Shared) -> Option<Delivery> {
        let mut q = self.lock();
        loop {
            if shared.shutdown.load(Relaxed) {
                return None;
            }
            if let Some(d) = q.pop_front() {
                self.sending.store(true, Relaxed);
                return Some(d);
            }
            q = self
                .cv
                .wait_timeout(q, Duration::from_millis(500))
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Sleeps up to `d`, waking early on shutdown. Returns false on shutdown.
    fn sleep(&self, shared: &Shared, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut q = self.lock();
        loop {
            if shared.shutdown.load(Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            q = self
                .cv
                .wait_timeout(q, until - now)
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn drain(&self) -> Vec<Delivery> {
        self.lock().drain(..).collect()
    }
}

pub(crate) fn run(shared: std::sync::Arc<Shared>, t: usize) {
    let tq = shared.targets[t].clone();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(defaults::WEBHOOK_TIMEOUT_MS))
        .build();
    while let Some(d) = tq.pop(&shared) {
        if let Some(undelivered) = deliver(&shared, &tq, &agent, d) {
            record_shutdown(&shared, &tq, undelivered);
        }
        tq.sending.store(false, Relaxed);
    }
    for d in tq.drain() {
        record_shutdown(&shared, &tq, d);
    }
}

fn record_shutdown(shared: &Shared, tq: &TargetQueue, d: Delivery) {
    shared.stats.shutdown_undelivered.fetch_add(1, Relaxed);
    tracing::warn!(url = %tq.target.url, delivery = %d.id, events = %json!(d.events), "shutdown with webhook delivery pending");
    shared.log.set_status(
        d.app,
        &d.id,
        DeliveryStatus::Failed,
        Some("server shut down before delivery".into()),
    );
}

/// Sends until success, budget exhaustion or shutdown. Returns the delivery on shutdown.
fn deliver(
    shared: &Shared,
    tq: &TargetQueue,
    agent: &ureq::Agent,
    mut d: Delivery,
) -> Option<Delivery> {
    let app = &shared.apps[d.app].config;
    let budget = app.webhook_retry_budget;
    let start = Instant::now();
    let mut step = 0;
    loop {
        if shared.shutdown.load(Relaxed) {
            return Some(d);
        }
        d.attempts += 1;
        let body = json!({"time_ms": super::now_ms(), "events": d.events}).to_string();
        // The current signing credentials (the management API may rotate them at runtime).
        let (key, secret) = shared.signing_for(app);
        let signature = ringcast_protocol::webhook_signature(&secret, body.as_bytes());
        let res = agent
            .post(&tq.target.url)
            .set("Content-Type", "application/json")
            .set("X-Pusher-Key", &key)
            .set("X-Pusher-Signature", &signature)
            .set("X-Ringcast-Delivery", &d.id)
            .set("X-Ringcast-Attempt", &d.attempts.to_string())
            .send_string(&body);
        let err = match res {
            Ok(r) if (200..300).contains(&r.status()) => None,
            Ok(r) => Some(format!("HTTP {}", r.status())),
            Err(ureq::Error::Status(code, _)) => Some(format!("HTTP {code}")),
            Err(e) => Some(e.to_string()),
        };
        let attempts = d.attempts;
        match err {
            None => {
                shared.stats.delivered.fetch_add(1, Relaxed);
                shared.apps[d.app].delivered.fetch_add(1, Relaxed);
                shared.log.update(d.app, &d.id, |r| {
                    r.attempts = attempts;
                    r.status = DeliveryStatus::Delivered;
                });
                return None;
            }
            Some(e) => {
                shared.stats.failed_attempts.fetch_add(1, Relaxed);
                shared.apps[d.app].failed.fetch_add(1, Relaxed);
                shared.log.update(d.app, &d.id, |r| {
                    r.attempts = attempts;
                    r.last_error = Some(e.clone());
                });
                let wait = Duration::from_secs(BACKOFF_SECS[step.min(BACKOFF_SECS.len() - 1)]);
                step += 1;
                if start.elapsed() + wait > budget {
                    shared.stats.exhausted.fetch_add(1, Relaxed);
                    tracing::warn!(url = %tq.target.url, delivery = %d.id, attempts, error = %e,
                        events = %json!(d.events), "webhook retry budget exhausted; delivery kept in the log as failed");
                    shared
                        .log
                        .set_status(d.app, &d.id, DeliveryStatus::Failed, Some(e));
                    return None;
                }
                if !tq.sleep(shared, wait) {
                    return Some(d);
                }
            }
        }
    }
}
