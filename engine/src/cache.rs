//! Cache channels: the owner core keeps the last event of each `cache-*` channel (by reference:
//! the encoded frame) for the app's TTL, and replays it to every new subscriber right after
//! `subscription_succeeded`. Bounded by a per-core entry cap; expired entries are swept.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::msg::ChanKey;

struct Entry {
    frame: Bytes,
    expires: Instant,
    /// Which `order` record is this entry's current one.
    gen: u64,
}

/// Cache entries with O(1) insert, lookup and eviction: a map plus a write-order queue of
/// `(key, gen)` records. Overwriting a key only bumps its `gen`, leaving a stale record that
/// eviction skips; the queue is compacted when stale records outnumber live entries, so it
/// stays within twice the cap (amortised O(1)).
pub(crate) struct Cache {
    entries: crate::maps::CoreMap<ChanKey, Entry>,
    order: VecDeque<(ChanKey, u64)>,
    next_gen: u64,
    max: usize,
}

/// A cached event as reported by `GET /channels/{name}?info=cache`.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedEvent {
    pub event: String,
    pub data: serde_json::Value,
    /// Seconds until it expires.
    pub ttl_secs: u64,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache {
            entries: crate::maps::CoreMap::default(),
            order: VecDeque::new(),
            next_gen: 0,
            max,
        }
    }

    /// Stores the channel's last event. At the cap, the least recently written entry goes
    /// (O(1): expired entries are swept by the core's periodic tick, not here).
    pub fn put(&mut self, key: &ChanKey, frame: &Bytes, ttl: Duration, now: Instant) {
        if self.max == 0 {
            return;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let entry = Entry {
            frame: frame.clone(),
            expires: now + ttl,
            gen,
        };
        if self.entries.insert(key.clone(), entry).is_none() && self.entries.len() > self.max {
            self.evict_oldest();
        }
        self.order.push_back((key.clone(), gen));
        if self.order.len() > 2 * self.max.max(self.entries.len()) {
            let entries = &self.entries;
            self.order
                .retain(|(k, g)| entries.get(k).is_some_and(|e| e.gen == *g));
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((k, g)) = self.order.pop_front() {
            if self.entries.get(&k).is_some_and(|e| e.gen == g) {
                self.entries.remove(&k);
                return;
            }
        }
    }

    /// The cached frame if present and not expired.
    pub fn get(&mut self, key: &ChanKey, now: Instant) -> Option<(Bytes, Duration)> {
        let e = self.entries.get(key)?;
        if e.expires <= now {
            self.entries.remove(key);
            return None;
        }
        Some((e.frame.clone(), e.expires - now))
    }

    pub fn describe(&mut self, key: &ChanKey, now: Instant) -> Option<CachedEvent> {
        let (frame, ttl) = self.get(key, now)?;
        let v: serde_json::Value =
            serde_json::from_slice(crate::history::frame_payload(&frame)?).ok()?;
        Some(CachedEvent {
            event: v.get("event")?.as_str()?.to_owned(),
            data: v.get("data").cloned().unwrap_or(serde_json::Value::Null),
            ttl_secs: ttl.as_secs(),
        })
    }

    /// Drops expired entries (the core's tick, every 10 s).
    pub fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
        let entries = &self.entries;
        self.order
            .retain(|(k, g)| entries.get(k).is_some_and(|e| e.gen == *g));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::{pusher, ChannelName};

    fn key(n: &str) -> ChanKey {
        ChanKey {
            app: 0,
            name: ChannelName::parse(n).unwrap(),
        }
    }

    #[test]
    fn last_event_wins_until_ttl_and_cap_holds() {
        let now = Instant::now();
        let mut c = Cache::new(2);
        let k = key("cache-a");
        c.put(
            &k,
            &pusher::event_frame("e1", "cache-a", "1", None),
            Duration::from_secs(10),
            now,
        );
        c.put(
            &k,
            &pusher::event_frame("e2", "cache-a", "2", None),
            Duration::from_secs(10),
            now,
        );
        let d = c.describe(&k, now).unwrap();
        assert_eq!(
            (d.event.as_str(), d.data.clone(), d.ttl_secs),
            ("e2", serde_json::json!("2"), 10)
        );
        assert!(
            c.get(&k, now + Duration::from_secs(11)).is_none(),
            "expired"
        );
        for n in ["cache-b", "cache-c", "cache-d"] {
            c.put(
                &key(n),
                &pusher::event_frame("e", n, "x", None),
                Duration::from_secs(10),
                now,
            );
        }
        assert_eq!(c.len(), 2);
        assert!(
            c.get(&key("cache-b"), now).is_none(),
            "oldest evicted at the cap"
        );
        assert!(c.get(&key("cache-d"), now).is_some());
    }

    /// Eviction takes the least recently written entry in O(1), and the write-order queue
    /// stays bounded however often one hot key is overwritten.
    #[test]
    fn eviction_is_by_write_order_and_the_order_queue_stays_bounded() {
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut c = Cache::new(3);
        let f = |n: &str| pusher::event_frame("e", n, "x", None);
        for n in ["cache-a", "cache-b", "cache-c"] {
            c.put(&key(n), &f(n), ttl, now);
        }
        // Rewriting a makes b the oldest.
        for _ in 0..10_000 {
            c.put(&key("cache-a"), &f("cache-a"), ttl, now);
            assert!(c.order.len() <= 6, "order queue bounded: {}", c.order.len());
        }
        c.put(&key("cache-d"), &f("cache-d"), ttl, now);
        assert_eq!(c.len(), 3);
        assert!(
            c.get(&key("cache-b"), now).is_none(),
            "least recently written goes"
        );
        for n in ["cache-a", "cache-c", "cache-d"] {
            assert!(c.get(&key(n), now).is_some(), "{n}");
        }
        c.sweep(now + ttl);
        assert_eq!((c.len(), c.order.len()), (0, 0));
    }
}
