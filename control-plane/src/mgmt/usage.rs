//! Per-app usage by UTC day, kept by the management thread: connections (peak, sampled each
//! second), and the deltas of cumulative counters it samples each second (API calls, messages
//! in and out, webhook deliveries and failures). Held in memory for the last
//! [`DAYS_KEPT`] days and written to the store's `usage` table every [`FLUSH_SECS`] and at
//! shutdown (only the rows that changed), so the days survive a restart
//! (docs/management.md). Usage is per node: in a cluster each node counts its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub const DAYS_KEPT: usize = 30;
/// How often the management thread writes the changed usage rows to the store.
pub const FLUSH_SECS: u64 = 10;

/// One app's usage on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    pub day: String,
    pub connections_peak: u64,
    pub api_calls: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub webhook_deliveries: u64,
    pub webhook_failures: u64,
}

/// Cumulative counters of one app at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub api_calls: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub webhook_deliveries: u64,
    pub webhook_failures: u64,
}

#[derive(Default)]
pub struct Usage {
    /// app id -> day number -> usage
    days: HashMap<String, BTreeMap<u64, Day>>,
    last: HashMap<String, Counters>,
    /// (app, day) rows changed since the last [`Usage::take_dirty`].
    dirty: HashSet<(String, u64)>,
}

/// Days since the Unix epoch.
pub fn day_of(unix: u64) -> u64 {
    unix / 86_400
}

fn day_label(day: u64) -> String {
    chrono::DateTime::from_timestamp((day * 86_400) as i64, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

impl Usage {
    /// The rows read from the store at start-up.
    pub fn load(rows: Vec<(String, u64, Day)>) -> Usage {
        let mut u = Usage::default();
        for (app, day, d) in rows {
            u.days.entry(app).or_default().insert(day, d);
        }
        for days in u.days.values_mut() {
            while days.len() > DAYS_KEPT {
                days.pop_first();
            }
        }
        u
    }

    /// The rows changed since the last call (to write to the store).
    pub fn take_dirty(&mut self) -> Vec<(String, u64, Day)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|(app, day)| {
                let d = self.days.get(&app)?.get(&day)?.clone();
                Some((app, day, d))
            })
            .collect()
    }

    /// Puts rows back after a failed write, so the next flush retries them.
    pub fn mark_dirty(&mut self, rows: &[(String, u64, Day)]) {
        self.dirty
            .extend(rows.iter().map(|(a, d, _)| (a.clone(), *d)));
    }

    fn day(&mut self, app: &str, day: u64) -> &mut Day {
        let days = self.days.entry(app.to_owned()).or_default();
        while days.len() >= DAYS_KEPT && !days.contains_key(&day) {
            let oldest = *days.keys().next().unwrap_or(&day);
            days.remove(&oldest);
        }
        self.dirty.insert((app.to_owned(), day));
        days.entry(day).or_insert_with(|| Day {
            day: day_label(day),
            ..Day::default()
        })
    }

    pub fn sample_connections(&mut self, app: &str, day: u64, now: u64) {
        let d = self.day(app, day);
        d.connections_peak = d.connections_peak.max(now);
    }

    /// Adds what the cumulative counters gained since the last sample.
    pub fn sample_counters(&mut self, app: &str, day: u64, c: Counters) {
        let prev = self.last.insert(app.to_owned(), c).unwrap_or_default();
        let d = self.day(app, day);
        d.api_calls += c.api_calls.saturating_sub(prev.api_calls);
        d.messages_in += c.messages_in.saturating_sub(prev.messages_in);
        d.messages_out += c.messages_out.saturating_sub(prev.messages_out);
        d.webhook_deliveries += c.webhook_deliveries.saturating_sub(prev.webhook_deliveries);
        d.webhook_failures += c.webhook_failures.saturating_sub(prev.webhook_failures);
    }

    /// Newest day first.
    pub fn days(&self, app: &str) -> Vec<Day> {
        self.days
            .get(app)
            .map(|d| d.values().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_peaks_per_day() {
        let mut u = Usage::default();
        let c = |a| Counters {
            api_calls: a,
            ..Counters::default()
        };
        u.sample_counters("a", 10, c(5));
        u.sample_connections("a", 10, 3);
        u.sample_connections("a", 10, 1);
        u.sample_counters("a", 10, c(7));
        u.sample_counters("a", 11, c(8));
        let days = u.days("a");
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].api_calls, 1);
        assert_eq!(days[1].api_calls, 7);
        assert_eq!(days[1].connections_peak, 3);
        assert_eq!(days[1].day, "1970-01-11");
        for d in 0..40 {
            u.sample_connections("a", 100 + d, 1);
        }
        assert_eq!(u.days("a").len(), DAYS_KEPT);
        // What changed is handed out once, and loading it back gives the same days.
        let rows = u.take_dirty();
        assert_eq!(rows.len(), DAYS_KEPT);
        assert!(u.take_dirty().is_empty());
        let back = Usage::load(rows);
        assert_eq!(back.days("a"), u.days("a"));
    }
}
