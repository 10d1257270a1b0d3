//! Activity history (AltoHost's shape): per app, opt-in (`activity_history_size` > 0) and
//! bounded, a record of every CONNECT, DISCONNECT, SUBSCRIBE, UNSUBSCRIBE, CLIENT_EVENT and
//! API_EVENT. Each core keeps the records of what happened on it (connections and client
//! events on the connection's core, API events on the channel's owner), newest
//! `activity_history_size` per app; a query asks every core and merges, newest first.
//! Nothing here is shared between cores.

use std::collections::{HashMap, VecDeque};

use crate::msg::AppIdx;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivityKind {
    Connect,
    Disconnect,
    Subscribe,
    Unsubscribe,
    ClientEvent,
    ApiEvent,
}

impl ActivityKind {
    pub const ALL: [ActivityKind; 6] = [
        ActivityKind::Connect,
        ActivityKind::Disconnect,
        ActivityKind::Subscribe,
        ActivityKind::Unsubscribe,
        ActivityKind::ClientEvent,
        ActivityKind::ApiEvent,
    ];

    /// The record's `event` (`CONNECT`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ActivityKind::Connect => "CONNECT",
            ActivityKind::Disconnect => "DISCONNECT",
            ActivityKind::Subscribe => "SUBSCRIBE",
            ActivityKind::Unsubscribe => "UNSUBSCRIBE",
            ActivityKind::ClientEvent => "CLIENT_EVENT",
            ActivityKind::ApiEvent => "API_EVENT",
        }
    }

    pub fn parse(s: &str) -> Option<ActivityKind> {
        ActivityKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityRecord {
    /// Unique in the process: the core's sequence number times 1024 plus the core index.
    pub id: u64,
    pub kind: ActivityKind,
    pub channel: Option<String>,
    pub socket_id: Option<String>,
    pub user_id: Option<String>,
    /// The event name of CLIENT_EVENT and API_EVENT records.
    pub event_name: Option<String>,
    /// Unix milliseconds.
    pub time_ms: u64,
}

/// A query over one app.
#[derive(Clone, Debug, Default)]
pub struct ActivityQuery {
    /// Only these kinds (empty: all).
    pub kinds: Vec<ActivityKind>,
    pub channel: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
}

impl ActivityQuery {
    fn matches(&self, r: &ActivityRecord) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&r.kind))
            && self
                .channel
                .as_deref()
                .is_none_or(|c| r.channel.as_deref() == Some(c))
            && self.since_ms.is_none_or(|s| r.time_ms >= s)
            && self.until_ms.is_none_or(|u| r.time_ms <= u)
    }
}

/// One core's records, per app.
pub(crate) struct ActivityLog {
    core: u64,
    next: u64,
    per_app: HashMap<AppIdx, VecDeque<ActivityRecord>>,
}

impl ActivityLog {
    pub fn new(core: usize) -> ActivityLog {
        ActivityLog {
            core: core as u64,
            next: 0,
            per_app: HashMap::new(),
        }
    }

    /// Appends a record, dropping the app's oldest past `cap`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        app: AppIdx,
        cap: usize,
        kind: ActivityKind,
        channel: Option<&str>,
        socket_id: Option<&str>,
        user_id: Option<&str>,
        event_name: Option<&str>,
        time_ms: u64,
    ) {
        if cap == 0 {
            return;
        }
        self.next += 1;
        let log = self.per_app.entry(app).or_default();
        while log.len() >= cap {
            log.pop_front();
        }
        log.push_back(ActivityRecord {
            id: self.next * 1024 + self.core,
            kind,
            channel: channel.map(str::to_owned),
            socket_id: socket_id.map(str::to_owned),
            user_id: user_id.map(str::to_owned),
            event_name: event_name.map(str::to_owned),
            time_ms,
        });
    }

    /// Newest first, at most `limit + 1` (the caller detects "has more").
    pub fn query(&self, app: AppIdx, q: &ActivityQuery) -> Vec<ActivityRecord> {
        let Some(log) = self.per_app.get(&app) else {
            return Vec::new();
        };
        log.iter()
            .rev()
            .filter(|r| q.matches(r))
            .take(q.limit.saturating_add(1))
            .cloned()
            .collect()
    }
}

/// Newest first; ties by id so paging is stable.
pub(crate) fn sort_newest_first(v: &mut [ActivityRecord]) {
    v.sort_by(|a, b| b.time_ms.cmp(&a.time_ms).then(b.id.cmp(&a.id)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_app_and_filtered() {
        let mut l = ActivityLog::new(1);
        for i in 0..5u64 {
            let kind = if i % 2 == 0 {
                ActivityKind::Connect
            } else {
                ActivityKind::Subscribe
            };
            l.record(0, 3, kind, Some("c"), Some("1.1"), None, None, i);
        }
        l.record(1, 0, ActivityKind::Connect, None, None, None, None, 9);
        let all = l.query(
            0,
            &ActivityQuery {
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(
            all.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            vec![4, 3, 2]
        );
        assert!(all.iter().all(|r| r.id % 1024 == 1));
        let connects = l.query(
            0,
            &ActivityQuery {
                kinds: vec![ActivityKind::Connect],
                since_ms: Some(3),
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(connects.len(), 1);
        assert!(l
            .query(
                1,
                &ActivityQuery {
                    limit: 10,
                    ..Default::default()
                }
            )
            .is_empty());
        assert_eq!(
            ActivityKind::parse("API_EVENT"),
            Some(ActivityKind::ApiEvent)
        );
        assert_eq!(ActivityKind::parse("api_event"), None);
    }
}
