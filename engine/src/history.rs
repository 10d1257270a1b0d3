//! Event history kept by a channel's owner core: a bounded ring of recent events per channel,
//! each with a per-channel sequence number and a timestamp. Entries hold the event's encoded
//! frame by reference (`Bytes`), so recording an event copies nothing. Queries never decode on
//! the core: it filters by time and by event name (a byte comparison with the name's JSON
//! literal at the start of the frame) and answers with [`RawEvent`]s (frames by reference);
//! the asking thread decodes the at most `limit + 1` results ([`decode`]).
//!
//! Memory is bounded three ways: events per channel (`history_size`), age
//! (`history_max_age_secs`), and a byte cap for the whole core (`history_max_bytes_per_core`)
//! past which the globally oldest events go first.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::msg::{AppIdx, ChanKey};

/// One recorded event, decoded for a query.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEvent {
    /// Per-channel sequence number, starting at 1.
    pub seq: u64,
    /// Unix time in milliseconds when the owner fanned it out.
    pub time_ms: u64,
    pub channel: String,
    pub event: String,
    /// The event's `data` as delivered: a JSON string for server events, any JSON value for
    /// client events.
    pub data: serde_json::Value,
    /// Sender's user id (client events on presence channels).
    pub user_id: Option<String>,
}

/// A history query over one app (on one core; the handle merges cores).
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub channel: Option<String>,
    pub event: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
}

struct Entry {
    seq: u64,
    time_ms: u64,
    frame: Bytes,
}

/// A history entry as a core answers a query: the frame by reference, not decoded.
#[derive(Clone, Debug)]
pub(crate) struct RawEvent {
    pub seq: u64,
    pub time_ms: u64,
    pub channel: ringcast_protocol::ChannelName,
    pub frame: Bytes,
}

/// The JSON text `{"event":<name literal>` every event frame's payload starts with, to filter
/// by event name without decoding.
pub(crate) fn event_prefix(name: &str) -> Vec<u8> {
    let mut p = b"{\"event\":".to_vec();
    p.extend_from_slice(serde_json::Value::from(name).to_string().as_bytes());
    p
}

fn has_event(frame: &[u8], prefix: &[u8]) -> bool {
    frame_payload(frame).is_some_and(|p| {
        p.starts_with(prefix) && matches!(p.get(prefix.len()), Some(b',') | Some(b'}'))
    })
}

struct ChannelHistory {
    key: Rc<ChanKey>,
    next_seq: u64,
    events: VecDeque<Entry>,
}

pub(crate) struct History {
    channels: crate::maps::CoreMap<ChanKey, ChannelHistory>,
    /// Every entry in the order recorded: (channel, seq, size), for the byte cap.
    order: VecDeque<(Rc<ChanKey>, u64, usize)>,
    bytes: usize,
    max_bytes: usize,
}

impl History {
    pub fn new(max_bytes: usize) -> History {
        History {
            channels: crate::maps::CoreMap::default(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes of frames currently held (reported as a metric).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records `frame` for `key`, keeping at most `size` events younger than `max_age`.
    /// Returns the event's sequence number (`None` when history is off).
    pub fn record(
        &mut self,
        key: &ChanKey,
        frame: &Bytes,
        now_ms: u64,
        size: usize,
        max_age: Duration,
    ) -> Option<u64> {
        if size == 0 || self.max_bytes == 0 {
            return None;
        }
        let ch = self
            .channels
            .entry(key.clone())
            .or_insert_with(|| ChannelHistory {
                key: Rc::new(key.clone()),
                next_seq: 1,
                events: VecDeque::new(),
            });
        let seq = ch.next_seq;
        ch.next_seq += 1;
        ch.events.push_back(Entry {
            seq,
            time_ms: now_ms,
            frame: frame.clone(),
        });
        self.order.push_back((ch.key.clone(), seq, frame.len()));
        self.bytes += frame.len();
        let cutoff = now_ms.saturating_sub(max_age.as_millis() as u64);
        while ch.events.len() > size || ch.events.front().is_some_and(|e| e.time_ms < cutoff) {
            if let Some(e) = ch.events.pop_front() {
                self.bytes -= e.frame.len();
            }
        }
        self.enforce_cap();
        Some(seq)
    }

    /// The newest sequence number held for `key` (0: none).
    pub fn head(&self, key: &ChanKey) -> u64 {
        self.channels
            .get(key)
            .and_then(|c| c.events.back())
            .map_or(0, |e| e.seq)
    }

    /// Every held event of `key` after sequence number `after`, oldest first, when the history
    /// still holds the one right after it (`None` otherwise: there would be a gap).
    pub fn after(&self, key: &ChanKey, after: u64) -> Option<Vec<(u64, Bytes)>> {
        let ch = self.channels.get(key)?;
        let first = ch.events.front()?.seq;
        let head = ch.events.back()?.seq;
        if after >= head || first > after.saturating_add(1) {
            return (after == head).then(Vec::new);
        }
        Some(
            ch.events
                .iter()
                .filter(|e| e.seq > after)
                .map(|e| (e.seq, e.frame.clone()))
                .collect(),
        )
    }

    fn enforce_cap(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((key, seq, _)) = self.order.pop_front() else {
                break;
            };
            self.remove_entry(&key, seq);
        }
        // Drop order records of entries already gone, so `order` stays bounded too.
        while let Some((key, seq, _)) = self.order.front() {
            let live = self
                .channels
                .get(&**key)
                .and_then(|c| c.events.front())
                .is_some_and(|e| e.seq <= *seq);
            if live {
                break;
            }
            self.order.pop_front();
        }
    }

    fn remove_entry(&mut self, key: &ChanKey, seq: u64) {
        let Some(ch) = self.channels.get_mut(key) else {
            return;
        };
        if ch.events.front().is_some_and(|e| e.seq == seq) {
            if let Some(e) = ch.events.pop_front() {
                self.bytes -= e.frame.len();
            }
        }
        if ch.events.is_empty() {
            // Keep the sequence counter only while the channel has history; a channel
            // that comes back starts a new sequence (documented in docs/api.md).
            self.channels.remove(key);
        }
    }

    /// Drops events older than each app's max age (called periodically).
    pub fn expire(&mut self, now_ms: u64, max_age_of: impl Fn(AppIdx) -> Duration) {
        self.channels.retain(|k, ch| {
            let cutoff = now_ms.saturating_sub(max_age_of(k.app).as_millis() as u64);
            while ch.events.front().is_some_and(|e| e.time_ms < cutoff) {
                if let Some(e) = ch.events.pop_front() {
                    self.bytes -= e.frame.len();
                }
            }
            !ch.events.is_empty()
        });
        self.enforce_cap();
    }

    /// Newest first, at most `limit`, for one channel (not decoded).
    pub fn channel_events(&self, key: &ChanKey, limit: usize) -> Vec<RawEvent> {
        let Some(ch) = self.channels.get(key) else {
            return Vec::new();
        };
        ch.events
            .iter()
            .rev()
            .take(limit)
            .map(|e| raw(key, e))
            .collect()
    }

    /// Newest first, matching `q`, at most `q.limit + 1` (the caller detects "has more"), not
    /// decoded: the event-name filter compares bytes.
    pub fn query(&self, app: AppIdx, q: &HistoryQuery) -> Vec<RawEvent> {
        let prefix = q.event.as_deref().map(event_prefix);
        let want = q.limit.saturating_add(1);
        let mut out = Vec::new();
        for (k, ch) in &self.channels {
            if k.app != app || q.channel.as_deref().is_some_and(|c| c != k.name.as_str()) {
                continue;
            }
            let mut taken = 0;
            for e in ch.events.iter().rev() {
                if q.until_ms.is_some_and(|u| e.time_ms > u) {
                    continue;
                }
                if q.since_ms.is_some_and(|s| e.time_ms < s) || taken == want {
                    // Newest first per channel: nothing older can make the global top `want`
                    // once this channel has given `want`.
                    break;
                }
                if prefix.as_deref().is_none_or(|p| has_event(&e.frame, p)) {
                    out.push(raw(k, e));
                    taken += 1;
                }
            }
        }
        sort_newest_first(&mut out);
        out.truncate(want);
        out
    }
}

fn raw(key: &ChanKey, e: &Entry) -> RawEvent {
    RawEvent {
        seq: e.seq,
        time_ms: e.time_ms,
        channel: key.name.clone(),
        frame: e.frame.clone(),
    }
}

/// Newest first; ties by channel and sequence so paging is stable.
pub(crate) fn sort_newest_first(v: &mut [RawEvent]) {
    v.sort_by(|a, b| {
        b.time_ms
            .cmp(&a.time_ms)
            .then(a.channel.as_str().cmp(b.channel.as_str()))
            .then(b.seq.cmp(&a.seq))
    });
}

/// The `event` of an encoded event frame (activity records of API events).
pub(crate) fn frame_event_name(frame: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        event: String,
    }
    serde_json::from_slice::<Named>(frame_payload(frame)?)
        .ok()
        .map(|n| n.event)
}

/// The JSON payload of an unmasked server text frame.
pub(crate) fn frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let len7 = *frame.get(1)? & 0x7f;
    let start = match len7 {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    frame.get(start..)
}

/// Decodes one answered event (on the asking thread, never on a core).
pub(crate) fn decode(e: &RawEvent) -> Option<HistoryEvent> {
    let v: serde_json::Value = serde_json::from_slice(frame_payload(&e.frame)?).ok()?;
    Some(HistoryEvent {
        seq: e.seq,
        time_ms: e.time_ms,
        channel: e.channel.as_str().to_owned(),
        event: v.get("event")?.as_str()?.to_owned(),
        data: v.get("data").cloned().unwrap_or(serde_json::Value::Null),
        user_id: v.get("user_id").and_then(|u| u.as_str()).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::{pusher, ChannelName};

    fn key(app: AppIdx, n: &str) -> ChanKey {
        ChanKey {
            app,
            name: ChannelName::parse(n).unwrap(),
        }
    }
    fn ev(ch: &str, name: &str, data: &str) -> Bytes {
        pusher::event_frame(name, ch, data, None)
    }
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn keeps_the_newest_per_channel_with_sequence_numbers() {
        let mut h = History::new(1 << 20);
        let k = key(0, "a");
        for i in 0..5 {
            h.record(&k, &ev("a", "e", &i.to_string()), 1000 + i, 3, HOUR);
        }
        let got: Vec<HistoryEvent> = h.channel_events(&k, 10).iter().filter_map(decode).collect();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4, 3]);
        assert_eq!(got[0].data, serde_json::json!("4"));
        assert_eq!(got[0].event, "e");
        assert_eq!(h.channel_events(&k, 1).len(), 1);
    }

    #[test]
    fn resume_after_a_sequence_number_only_without_a_gap() {
        let mut h = History::new(1 << 20);
        let k = key(0, "a");
        assert_eq!(h.head(&k), 0);
        assert!(h.after(&k, 0).is_none(), "nothing held");
        for i in 1..=5u64 {
            assert_eq!(
                h.record(&k, &ev("a", "e", &i.to_string()), i, 3, HOUR),
                Some(i)
            );
        }
        // Holds 3, 4, 5.
        assert_eq!(h.head(&k), 5);
        let seqs =
            |v: Option<Vec<(u64, Bytes)>>| v.map(|v| v.iter().map(|e| e.0).collect::<Vec<_>>());
        assert_eq!(seqs(h.after(&k, 2)), Some(vec![3, 4, 5]));
        assert_eq!(seqs(h.after(&k, 4)), Some(vec![5]));
        assert_eq!(seqs(h.after(&k, 5)), Some(vec![]), "up to date");
        assert_eq!(seqs(h.after(&k, 1)), None, "2 was evicted: a gap");
        assert_eq!(seqs(h.after(&k, 9)), None, "an id from the future");
        assert_eq!(
            h.record(&k, &ev("a", "e", "x"), 6, 0, HOUR),
            None,
            "history off"
        );
    }

    #[test]
    fn byte_cap_evicts_globally_oldest_first_and_stays_bounded() {
        let one = ev("a", "e", "x").len();
        let mut h = History::new(one * 4);
        for i in 0..100u64 {
            let ch = if i % 2 == 0 { "a" } else { "b" };
            h.record(&key(0, ch), &ev(ch, "e", "x"), i, 1000, HOUR);
            assert!(h.bytes() <= one * 4);
            assert!(h.order.len() <= 8, "order records stay bounded");
        }
        let a = h.channel_events(&key(0, "a"), 10);
        let b = h.channel_events(&key(0, "b"), 10);
        assert_eq!(a.len() + b.len(), 4);
        assert!(a.iter().chain(&b).all(|e| e.time_ms >= 96));
    }

    /// The event filter compares bytes: names that are prefixes of others, or that need
    /// escaping, match exactly; nothing is decoded on the core.
    #[test]
    fn event_filter_matches_the_exact_name_without_decoding() {
        let mut h = History::new(1 << 20);
        let k = key(0, "a");
        for (i, name) in ["e", "e2", "quo\"te", "client-x"].iter().enumerate() {
            h.record(&k, &ev("a", name, "1"), 1000 + i as u64, 10, HOUR);
        }
        h.record(
            &k,
            &pusher::client_event_frame("client-y", "a", Some("{}"), Some("u1")),
            2000,
            10,
            HOUR,
        );
        let names = |event: &str| -> Vec<String> {
            let q = HistoryQuery {
                event: Some(event.into()),
                limit: 10,
                ..Default::default()
            };
            h.query(0, &q)
                .iter()
                .filter_map(decode)
                .map(|e| e.event)
                .collect()
        };
        assert_eq!(names("e"), ["e"]);
        assert_eq!(names("e2"), ["e2"]);
        assert_eq!(names("quo\"te"), ["quo\"te"]);
        assert_eq!(names("client-y"), ["client-y"]);
        assert!(names("client").is_empty());
    }

    /// A query returns at most `limit + 1` frames whatever the history holds (the caller
    /// decodes only those).
    #[test]
    fn a_query_answers_at_most_limit_plus_one_frames() {
        let mut h = History::new(1 << 30);
        for c in 0..10 {
            let name = format!("c{c}");
            for i in 0..100u64 {
                h.record(&key(0, &name), &ev(&name, "e", "x"), i, 1000, HOUR);
            }
        }
        let q = HistoryQuery {
            limit: 5,
            ..Default::default()
        };
        let got = h.query(0, &q);
        assert_eq!(got.len(), 6);
        assert!(got.iter().all(|e| e.time_ms == 99));
    }

    #[test]
    fn age_and_filters() {
        let mut h = History::new(1 << 20);
        h.record(
            &key(0, "a"),
            &ev("a", "old", "1"),
            1_000,
            10,
            Duration::from_secs(10),
        );
        h.record(
            &key(0, "a"),
            &ev("a", "new", "2"),
            20_000,
            10,
            Duration::from_secs(10),
        );
        assert_eq!(
            h.channel_events(&key(0, "a"), 10).len(),
            1,
            "the old event aged out on record"
        );
        h.record(&key(0, "b"), &ev("b", "new", "3"), 21_000, 10, HOUR);
        h.record(&key(1, "b"), &ev("b", "other-app", "4"), 21_000, 10, HOUR);
        let q = |channel: Option<&str>, event: Option<&str>, since, until, limit| HistoryQuery {
            channel: channel.map(Into::into),
            event: event.map(Into::into),
            since_ms: since,
            until_ms: until,
            limit,
        };
        assert_eq!(h.query(0, &q(None, None, None, None, 10)).len(), 2);
        assert_eq!(h.query(0, &q(Some("b"), None, None, None, 10)).len(), 1);
        assert_eq!(h.query(0, &q(None, Some("nope"), None, None, 10)).len(), 0);
        assert_eq!(
            h.query(0, &q(None, None, Some(20_500), None, 10))[0]
                .channel
                .as_str(),
            "b"
        );
        assert_eq!(
            h.query(0, &q(None, None, None, Some(20_500), 10))[0]
                .channel
                .as_str(),
            "a"
        );
        assert_eq!(
            h.query(0, &q(None, None, None, None, 1)).len(),
            2,
            "limit + 1 to detect more"
        );
        h.expire(40_000, |a| {
            if a == 0 {
                Duration::from_secs(10)
            } else {
                HOUR
            }
        });
        assert_eq!(h.query(0, &q(None, None, None, None, 10)).len(), 0);
        assert_eq!(h.query(1, &q(None, None, None, None, 10)).len(), 1);
    }
}
