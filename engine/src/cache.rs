//! Cache channels: the owner core keeps the last event of each `cache-*` channel (by reference:
//! the encoded frame) for the app's TTL, and replays it to every new subscriber right after
//! `subscription_succeeded`. Bounded by a per-core entry cap; expired entries are swept.

use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;

use crate::msg::ChanKey;

struct Entry {
    frame: Bytes,
    expires: Instant,
}

pub(crate) struct Cache {
    entries: IndexMap<ChanKey, Entry>,
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
            entries: IndexMap::new(),
            max,
        }
    }

    pub fn put(&mut self, key: &ChanKey, frame: &Bytes, ttl: Duration, now: Instant) {
        if self.max == 0 {
            return;
        }
        let entry = Entry {
            frame: frame.clone(),
            expires: now + ttl,
        };
        if let Some(e) = self.entries.get_mut(key) {
            *e = entry;
            return;
        }
        if self.entries.len() >= self.max {
            self.sweep(now);
        }
        if self.entries.len() >= self.max {
            // Still full of live entries: the oldest-inserted goes.
            self.entries.shift_remove_index(0);
        }
        self.entries.insert(key.clone(), entry);
    }

    /// The cached frame if present and not expired.
    pub fn get(&mut self, key: &ChanKey, now: Instant) -> Option<(Bytes, Duration)> {
        let e = self.entries.get(key)?;
        if e.expires <= now {
            self.entries.swap_remove(key);
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

    pub fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.expires > now);
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
}
