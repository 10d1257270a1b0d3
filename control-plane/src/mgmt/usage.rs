//! Per-app usage by UTC day, kept by the management thread: connections (peak, sampled each
//! second), and the deltas of cumulative counters it samples each second (API calls, messages
//! in and out, webhook deliveries and failures). Held in memory for the last
//! [`DAYS_KEPT`] days; it restarts empty with the process (docs/management.md).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

pub const DAYS_KEPT: usize = 30;

/// One app's usage on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    fn day(&mut self, app: &str, day: u64) -> &mut Day {
        let days = self.days.entry(app.to_owned()).or_default();
        while days.len() >= DAYS_KEPT && !days.contains_key(&day) {
            let oldest = *days.keys().next().unwrap_or(&day);
            days.remove(&oldest);
        }
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
    }
}
