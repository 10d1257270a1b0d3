//! The delivery log: the last deliveries per app, with their events, status, attempts and last
//! error. Bounded per app; read by `GET /apps/{id}/webhooks`.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
pub struct DeliveryRecord {
    pub id: String,
    pub url: String,
    pub events: Vec<Value>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl DeliveryRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "url": self.url,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "events": self.events,
        })
    }
}

pub(crate) struct DeliveryLog {
    apps: Vec<Mutex<VecDeque<DeliveryRecord>>>,
    cap: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DeliveryLog {
    pub fn new(apps: usize, cap: usize) -> DeliveryLog {
        DeliveryLog {
            apps: (0..apps).map(|_| Mutex::new(VecDeque::new())).collect(),
            cap: cap.max(1),
        }
    }

    fn push(&self, app: usize, rec: DeliveryRecord) {
        let mut l = lock(&self.apps[app]);
        if l.len() >= self.cap {
            l.pop_front();
        }
        l.push_back(rec);
    }

    pub fn insert_pending(&self, app: usize, id: &str, url: &str, events: Vec<Value>) {
        let now = super::now_ms();
        self.push(
            app,
            DeliveryRecord {
                id: id.into(),
                url: url.into(),
                events,
                status: DeliveryStatus::Pending,
                attempts: 0,
                last_error: None,
                created_ms: now,
                updated_ms: now,
            },
        );
    }

    pub fn insert_failed(&self, app: usize, id: &str, url: &str, events: Vec<Value>, why: &str) {
        let now = super::now_ms();
        self.push(
            app,
            DeliveryRecord {
                id: id.into(),
                url: url.into(),
                events,
                status: DeliveryStatus::Failed,
                attempts: 0,
                last_error: Some(why.into()),
                created_ms: now,
                updated_ms: now,
            },
        );
    }

    pub fn update(&self, app: usize, id: &str, f: impl FnOnce(&mut DeliveryRecord)) {
        let mut l = lock(&self.apps[app]);
        if let Some(r) = l.iter_mut().rev().find(|r| r.id == id) {
            f(r);
            r.updated_ms = super::now_ms();
        }
    }

    pub fn set_status(&self, app: usize, id: &str, status: DeliveryStatus, err: Option<String>) {
        self.update(app, id, |r| {
            r.status = status;
            if err.is_some() {
                r.last_error = err;
            }
        });
    }

    pub fn get(&self, app: usize, id: &str) -> Option<DeliveryRecord> {
        lock(&self.apps[app])
            .iter()
            .rev()
            .find(|r| r.id == id)
            .cloned()
    }

    /// Newest first.
    pub fn recent(&self, app: usize) -> Vec<DeliveryRecord> {
        lock(&self.apps[app]).iter().rev().cloned().collect()
    }
}
