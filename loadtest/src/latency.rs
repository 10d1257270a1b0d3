//! Latency accounting: every delivery's latency (receive time - *intended* send time) goes into
//! an HdrHistogram in microseconds. Each generator thread keeps its own; they are merged at the
//! end. Measuring from the intended time (not the actual send time) means a publisher that falls
//! behind shows up as latency instead of silently lowering the load (coordinated omission).

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histogram tracks exactly: one hour, in microseconds.
pub const MAX_TRACKED_US: u64 = 3_600_000_000;

/// A latency histogram (microseconds, 3 significant digits).
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn new() -> Latency {
        // Invariant: the bounds are constant and valid (low >= 1, high >= 2 * low, sigfig <= 5).
        let hist =
            Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("valid histogram bounds");
        Latency { hist }
    }

    /// Records one delivery received at `recv_ns` that was meant to be sent at `intended_ns`
    /// (both from [`crate::clock`]). A receive time before the intended time (impossible unless
    /// the clocks differ) counts as the smallest latency; latencies above one hour saturate.
    #[inline]
    pub fn record(&mut self, recv_ns: u64, intended_ns: u64) {
        let us = recv_ns.saturating_sub(intended_ns).div_ceil(1000);
        self.record_us(us);
    }

    /// Records a latency given in microseconds.
    #[inline]
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_TRACKED_US));
    }

    /// Adds every value of `other` to `self`.
    pub fn merge(&mut self, other: &Latency) {
        // Invariant: both histograms have the same bounds (built by `new`), and `add` only fails
        // when a value of `other` does not fit `self`'s range.
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
    }

    /// The histogram as (value, count) pairs, one per non-empty bucket: what a child process
    /// (`--procs`) sends to the parent. [`Self::from_buckets`] rebuilds exactly the same
    /// buckets, so merging the rebuilt histograms equals merging the originals.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub fn from_buckets(b: &[(u64, u64)]) -> Latency {
        let mut l = Latency::new();
        for &(v, n) in b {
            l.hist.saturating_record_n(v.clamp(1, MAX_TRACKED_US), n);
        }
        l
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn reset(&mut self) {
        self.hist.reset();
    }

    /// Value at quantile `q` (0..=1) in milliseconds (0 when empty).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn summary(&self) -> LatencySummary {
        if self.hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.hist.len(),
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
            mean_ms: self.hist.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_receive_minus_intended_time() {
        let mut l = Latency::new();
        // Intended at 1 s, received 2.5 ms later.
        l.record(1_000_000_000 + 2_500_000, 1_000_000_000);
        let s = l.summary();
        assert_eq!(s.count, 1);
        assert!((s.p50_ms - 2.5).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 2.5).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn late_publisher_shows_as_latency_not_missing_samples() {
        // Coordinated omission: the publisher meant to send at t=0,1,2,3 ms but was stalled and
        // sent all four at t=10 ms; all arrive at 10.1 ms. Latency counts from the intended time.
        let mut l = Latency::new();
        for i in 0..4u64 {
            l.record(10_100_000, i * 1_000_000);
        }
        let s = l.summary();
        assert_eq!(s.count, 4);
        assert!((s.max_ms - 10.1).abs() < 0.02, "{s:?}");
        assert!(s.p50_ms > 8.0, "{s:?}");
    }

    #[test]
    fn early_receive_and_huge_values_saturate() {
        let mut l = Latency::new();
        l.record(5, 10); // before intended: smallest bucket
        l.record(u64::MAX, 0); // beyond one hour: saturates
        let s = l.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 3_600_000.0 * 0.999);
    }

    #[test]
    fn merging_histograms_equals_recording_into_one() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        let mut all = Latency::new();
        for i in 1..=1000u64 {
            let us = i * 37 % 5000 + 1;
            if i % 3 == 0 {
                a.record_us(us);
            } else {
                b.record_us(us);
            }
            all.record_us(us);
        }
        let mut merged = Latency::new();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.count(), 1000);
        assert_eq!(merged.summary(), all.summary());
        // Through buckets (what --procs children send): the same summary.
        let rebuilt = Latency::from_buckets(&a.buckets());
        let mut m2 = Latency::from_buckets(&b.buckets());
        m2.merge(&rebuilt);
        assert_eq!(m2.summary(), all.summary());
        assert_eq!(m2.buckets(), all.buckets());
        merged.reset();
        assert_eq!(merged.count(), 0);
        assert_eq!(merged.summary(), LatencySummary::default());
    }
}
