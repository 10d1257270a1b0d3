//! Loss and duplicate detection. Every receiver expects a dense range of sequence numbers
//! `0..expected` for its channel; [`SeqTracker`] remembers which it has seen in a sliding
//! bitmap (in-order arrival costs one compare and one add; out-of-order arrival uses the bitmap,
//! which is compacted as soon as a 64-bit word is full), so memory stays bounded by how far
//! arrivals are out of order, not by how many arrive.

use serde::Serialize;

/// Largest out-of-order window tracked per receiver, in sequence numbers (64 Ki words of 64).
/// A sequence number this far ahead of the oldest gap declares the gap lost.
pub const MAX_WINDOW: u64 = 64 * 65_536;

#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    /// Every sequence number below `base` has been seen (or declared lost).
    base: u64,
    /// Bit `i` of word `w` is sequence number `base + 64 * w + i`.
    bits: std::collections::VecDeque<u64>,
    unique: u64,
    duplicates: u64,
    /// Sequence numbers skipped when the window overflowed (counted as missing).
    forced: u64,
    max_seen: Option<u64>,
}

impl SeqTracker {
    pub fn new() -> SeqTracker {
        SeqTracker::default()
    }

    /// Records one arrival of `seq`. Returns false if it was a duplicate.
    #[inline]
    pub fn record(&mut self, seq: u64) -> bool {
        self.max_seen = Some(self.max_seen.map_or(seq, |m| m.max(seq)));
        if seq == self.base && self.bits.is_empty() {
            self.base += 1;
            self.unique += 1;
            return true;
        }
        if seq < self.base {
            self.duplicates += 1;
            return false;
        }
        let mut off = seq - self.base;
        if off >= MAX_WINDOW {
            // Slide: declare the oldest words lost until `seq` fits.
            let shift_words = (off - MAX_WINDOW) / 64 + 1;
            for _ in 0..shift_words {
                match self.bits.pop_front() {
                    Some(w) => self.forced += 64 - u64::from(w.count_ones()),
                    None => self.forced += 64,
                }
                self.base += 64;
            }
            off = seq - self.base;
        }
        let word = (off / 64) as usize;
        let bit = 1u64 << (off % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.bits[word] |= bit;
        self.unique += 1;
        while self.bits.front() == Some(&u64::MAX) {
            self.bits.pop_front();
            self.base += 64;
        }
        // A single partial word whose low bits are all seen: shift them out, so in-order
        // arrival takes the fast path again once a reordering has resolved.
        if self.bits.len() == 1 {
            let t = self.bits[0].trailing_ones();
            if t > 0 {
                self.base += u64::from(t);
                self.bits[0] >>= t;
                if self.bits[0] == 0 {
                    self.bits.clear();
                }
            }
        }
        true
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Compares what arrived with the `expected` sequence numbers `0..expected`.
    pub fn check(&self, expected: u64) -> LossReport {
        let beyond = match self.max_seen {
            Some(m) if m >= expected => self.count_at_or_above(expected),
            _ => 0,
        };
        let in_range = self.unique - beyond;
        LossReport {
            expected,
            delivered: in_range,
            missing: expected.saturating_sub(in_range),
            duplicates: self.duplicates,
            unexpected: beyond,
        }
    }

    /// Distinct sequence numbers >= `limit` that were seen.
    fn count_at_or_above(&self, limit: u64) -> u64 {
        // Numbers below `base` are all seen (or were declared lost, which only happens far ahead).
        let mut n = self.base.saturating_sub(limit);
        for (w, word) in self.bits.iter().enumerate() {
            for b in 0..64u64 {
                if word & (1 << b) != 0 && self.base + w as u64 * 64 + b >= limit {
                    n += 1;
                }
            }
        }
        n.saturating_sub(if self.base > limit {
            self.forced.min(self.base - limit)
        } else {
            0
        })
    }
}

/// Delivery accounting of one receiver, or the sum over many.
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LossReport {
    /// Deliveries that should have arrived.
    pub expected: u64,
    /// Distinct expected deliveries that arrived.
    pub delivered: u64,
    /// Expected deliveries that never arrived.
    pub missing: u64,
    /// Deliveries that arrived more than once (each extra copy counts).
    pub duplicates: u64,
    /// Deliveries with a sequence number outside the expected range (misrouted or stale).
    pub unexpected: u64,
}

impl LossReport {
    pub fn add(&mut self, o: &LossReport) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
    }

    /// Every expected delivery arrived exactly once and nothing else did.
    pub fn is_exact(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.unexpected == 0
            && self.delivered == self.expected
    }
}

/// How many of the events `0..n` (event `k` goes to channel `k % channels`) go to channel `c`.
pub fn events_for_channel(n: u64, channels: u64, c: u64) -> u64 {
    if channels == 0 {
        return 0;
    }
    n / channels + u64::from(c < n % channels)
}

/// How many of `subscribers` (subscriber `i` listens on channel `i % channels`) listen on `c`.
pub fn subscribers_of_channel(subscribers: u64, channels: u64, c: u64) -> u64 {
    events_for_channel(subscribers, channels, c)
}

/// Deliveries expected when `n` events are spread over `channels` channels round-robin and
/// `subscribers` receivers are spread over the same channels round-robin.
pub fn expected_deliveries(n: u64, channels: u64, subscribers: u64) -> u64 {
    (0..channels)
        .map(|c| {
            events_for_channel(n, channels, c) * subscribers_of_channel(subscribers, channels, c)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_exact() {
        let mut t = SeqTracker::new();
        for s in 0..10_000 {
            assert!(t.record(s));
        }
        let r = t.check(10_000);
        assert!(r.is_exact(), "{r:?}");
        assert_eq!(r.delivered, 10_000);
        assert!(t.bits.is_empty());
    }

    #[test]
    fn out_of_order_is_not_loss_and_window_compacts() {
        let mut t = SeqTracker::new();
        let mut order: Vec<u64> = (0..1000).collect();
        // A deterministic shuffle within blocks of 100.
        for chunk in order.chunks_mut(100) {
            chunk.reverse();
        }
        for s in order {
            assert!(t.record(s));
        }
        assert!(t.check(1000).is_exact());
        assert!(t.bits.is_empty(), "window compacts once everything arrived");
        assert_eq!(t.base, 1000);
    }

    #[test]
    fn gaps_are_missing_and_repeats_are_duplicates() {
        let mut t = SeqTracker::new();
        for s in [0, 1, 2, 4, 5, 5, 7, 1] {
            t.record(s);
        }
        let r = t.check(8);
        assert_eq!(r.delivered, 6); // 0 1 2 4 5 7
        assert_eq!(r.missing, 2); // 3 6
        assert_eq!(r.duplicates, 2); // 5 again, 1 again
        assert_eq!(r.unexpected, 0);
        assert!(!r.is_exact());
    }

    #[test]
    fn sequence_numbers_beyond_the_expected_range_are_unexpected() {
        let mut t = SeqTracker::new();
        for s in [0, 1, 2, 3, 9, 70] {
            t.record(s);
        }
        let r = t.check(4);
        assert_eq!(r.delivered, 4);
        assert_eq!(r.missing, 0);
        assert_eq!(r.unexpected, 2);
        // In-order overshoot too.
        let mut t = SeqTracker::new();
        for s in 0..6 {
            t.record(s);
        }
        let r = t.check(4);
        assert_eq!((r.delivered, r.unexpected, r.missing), (4, 2, 0));
    }

    #[test]
    fn nothing_received_is_all_missing() {
        let r = SeqTracker::new().check(5);
        assert_eq!((r.delivered, r.missing), (0, 5));
    }

    #[test]
    fn window_overflow_declares_the_gap_lost() {
        let mut t = SeqTracker::new();
        t.record(1); // 0 never arrives
        t.record(MAX_WINDOW + 10);
        assert!(t.bits.len() as u64 <= MAX_WINDOW / 64 + 1);
        let r = t.check(MAX_WINDOW + 11);
        assert_eq!(r.delivered, 2);
        assert_eq!(r.missing, MAX_WINDOW + 11 - 2);
    }

    #[test]
    fn reports_add_up() {
        let mut a = LossReport {
            expected: 10,
            delivered: 9,
            missing: 1,
            duplicates: 0,
            unexpected: 0,
        };
        a.add(&LossReport {
            expected: 5,
            delivered: 5,
            missing: 0,
            duplicates: 2,
            unexpected: 1,
        });
        assert_eq!(
            a,
            LossReport {
                expected: 15,
                delivered: 14,
                missing: 1,
                duplicates: 2,
                unexpected: 1
            }
        );
    }

    #[test]
    fn expected_counts_for_round_robin_spread() {
        // 10 events over 3 channels: 4, 3, 3. 7 subscribers over 3 channels: 3, 2, 2.
        assert_eq!(events_for_channel(10, 3, 0), 4);
        assert_eq!(events_for_channel(10, 3, 2), 3);
        assert_eq!(subscribers_of_channel(7, 3, 0), 3);
        assert_eq!(expected_deliveries(10, 3, 7), 4 * 3 + 3 * 2 + 3 * 2);
        assert_eq!(expected_deliveries(100, 1, 10_000), 1_000_000);
        assert_eq!(expected_deliveries(5, 0, 10), 0);
    }
}
