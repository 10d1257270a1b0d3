//! The dispatcher: routes events to the app's targets (filters), holds debounced
//! `channel_vacated`/`member_removed`, batches, and turns events into logged deliveries.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringcast_engine::defaults;
use serde_json::Value;

use super::sender::Delivery;
use super::{QueuedEvent, Shared};

struct Held {
    target: usize,
    name: &'static str,
    channel: String,
    user_id: Option<String>,
    body: Value,
    due: Instant,
}

struct Batch {
    target: usize,
    events: Vec<Value>,
    due: Instant,
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<QueuedEvent>, spilled: Receiver<QueuedEvent>) {
    let mut held: Vec<Held> = Vec::new();
    let mut batches: Vec<Batch> = Vec::new();
    loop {
        // Events a full queue refused on an engine core: recorded as failed, with their bodies
        // logged, here rather than on the core.
        while let Ok(ev) = spilled.try_recv() {
            record_refused(&shared, ev);
        }
        let now = Instant::now();
        let next = held
            .iter()
            .map(|h| h.due)
            .chain(batches.iter().map(|b| b.due))
            .min();
        let wait = next
            .map_or(Duration::from_millis(500), |d| {
                d.saturating_duration_since(now)
            })
            .min(Duration::from_millis(500));
        match rx.recv_timeout(wait) {
            Ok(ev) => {
                route(&shared, ev, &mut held, &mut batches);
                shared.stats.events_routed.fetch_add(1, Relaxed);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let stopping = shared.shutdown.load(Relaxed);
        let now = Instant::now();
        // Release debounced events whose client did not come back.
        let mut i = 0;
        while i < held.len() {
            if stopping || held[i].due <= now {
                let h = held.swap_remove(i);
                enqueue(&shared, h.target, h.body, &mut batches);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < batches.len() {
            if stopping || batches[i].due <= now {
                let b = batches.swap_remove(i);
                create(&shared, b.target, b.events);
            } else {
                i += 1;
            }
        }
        let holding = held.len() + batches.iter().map(|b| b.events.len()).sum::<usize>();
        shared.stats.held.store(holding as u64, Relaxed);
        if stopping {
            // Anything that arrives now is recorded by the senders' shutdown path.
            while let Ok(ev) = rx.try_recv() {
                for &t in &shared.apps[ev.app].targets {
                    create(&shared, t, vec![ev.body.clone()]);
                }
            }
            for t in &shared.targets {
                t.wake();
            }
            break;
        }
    }
}

fn record_refused(shared: &Shared, ev: QueuedEvent) {
    tracing::warn!(event = %ev.body, "webhook queue full: event recorded as failed");
    let id = shared.next_delivery_id();
    for &t in &shared.apps[ev.app].targets {
        shared.log.insert_failed(
            ev.app,
            &id,
            &shared.targets[t].target.url,
            vec![ev.body.clone()],
            "webhook queue full",
        );
    }
}

fn matches(shared: &Shared, t: usize, ev: &QueuedEvent) -> bool {
    let target = &shared.targets[t].target;
    target
        .event_types
        .as_ref()
        .is_none_or(|l| l.iter().any(|n| n == ev.name))
        && target
            .channel_prefix
            .as_deref()
            .is_none_or(|p| ev.channel.starts_with(p))
}

fn route(shared: &Shared, ev: QueuedEvent, held: &mut Vec<Held>, batches: &mut Vec<Batch>) {
    for &t in &shared.apps[ev.app].targets {
        if !matches(shared, t, &ev) {
            continue;
        }
        if shared.targets[t].target.debounce {
            match ev.name {
                "channel_vacated" | "member_removed" => {
                    held.push(Held {
                        target: t,
                        name: ev.name,
                        channel: ev.channel.clone(),
                        user_id: ev.user_id.clone(),
                        body: ev.body.clone(),
                        due: Instant::now() + Duration::from_millis(defaults::WEBHOOK_DEBOUNCE_MS),
                    });
                    continue;
                }
                "channel_occupied" | "member_added" => {
                    let undo = if ev.name == "channel_occupied" {
                        "channel_vacated"
                    } else {
                        "member_removed"
                    };
                    if let Some(pos) = held.iter().position(|h| {
                        h.target == t
                            && h.name == undo
                            && h.channel == ev.channel
                            && h.user_id == ev.user_id
                    }) {
                        // The client came straight back: neither event happened for the app.
                        held.swap_remove(pos);
                        shared.stats.debounced.fetch_add(2, Relaxed);
                        continue;
                    }
                }
                _ => {}
            }
        }
        enqueue(shared, t, ev.body.clone(), batches);
    }
}

fn enqueue(shared: &Shared, t: usize, body: Value, batches: &mut Vec<Batch>) {
    if !shared.targets[t].target.batch {
        create(shared, t, vec![body]);
        return;
    }
    let pos = match batches.iter().position(|b| b.target == t) {
        Some(p) => p,
        None => {
            batches.push(Batch {
                target: t,
                events: Vec::new(),
                due: Instant::now() + Duration::from_millis(defaults::WEBHOOK_BATCH_WINDOW_MS),
            });
            batches.len() - 1
        }
    };
    batches[pos].events.push(body);
    if batches[pos].events.len() >= defaults::WEBHOOK_BATCH_MAX_EVENTS {
        let b = batches.swap_remove(pos);
        create(shared, t, b.events);
    }
}

/// A new delivery: logged as pending, then queued for its target's sender.
fn create(shared: &Shared, t: usize, events: Vec<Value>) {
    let tq = &shared.targets[t];
    let id = shared.next_delivery_id();
    shared.stats.deliveries_created.fetch_add(1, Relaxed);
    shared
        .log
        .insert_pending(tq.app, &id, &tq.target.url, events.clone());
    if let Some(d) = tq.push(Delivery {
        id,
        app: tq.app,
        events,
        attempts: 0,
    }) {
        shared.stats.queue_full.fetch_add(1, Relaxed);
        tracing::warn!(url = %tq.target.url, delivery = %d.id, "webhook target backlog full: delivery recorded as failed");
        shared.log.set_status(
            d.app,
            &d.id,
            super::DeliveryStatus::Failed,
            Some("target backlog full".into()),
        );
    }
}
