//! The per-connection ping budget (`pings_per_minute`): a client's `pusher:ping` messages and
//! WebSocket ping frames each cost a pong, so a client may send at most `pings_per_minute`
//! of them per minute, with a burst of one minute's worth. Past it the connection is closed
//! with 4301 ("Ping rate limit exceeded"; the Pusher 4300-4399 range: the client reconnects
//! after a back-off) and counted as `ringcast_connections_closed_total{reason="ping_rate_limit"}`.
//!
//! The bucket is a GCRA (generic cell rate algorithm): its whole state is one `u64`, the
//! theoretical arrival time of the next ping in microseconds of the engine's monotonic clock,
//! so it adds 8 bytes to a connection. The rate is not stored per connection: it is read from
//! the configuration on each ping. It behaves exactly like a token bucket of capacity
//! `pings_per_minute` refilled at `pings_per_minute` per minute: a client that sends at most
//! `pings_per_minute` pings in any 60 seconds is never refused.

use std::sync::OnceLock;
use std::time::Instant;

use ringcast_protocol::close;

/// The close code of a connection over its ping budget (Pusher's 4301, "rate limit
/// exceeded": pusher-js backs off and reconnects).
pub(crate) const CLOSE_CODE: u16 = close::CLIENT_EVENT_RATE;
/// Its close reason.
pub(crate) const CLOSE_REASON: &str = "Ping rate limit exceeded";

const MINUTE_US: u64 = 60_000_000;

/// One connection's ping budget: the GCRA's theoretical arrival time of the next ping, in microseconds since [`clock_us`]'s origin. 0: a full bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PingBudget {
    tat_us: u64,
}

impl PingBudget {
    /// Spends one ping at `now_us` under a budget of `per_minute` (0 = unlimited). False:
    /// over budget (the caller closes the connection); a refused ping costs nothing.
    pub(crate) fn allow(&mut self, now_us: u64, per_minute: u32) -> bool {
        if per_minute == 0 {
            return true;
        }
        let per_minute = u64::from(per_minute);
        // The interval one ping uses up, and how far ahead of now the bucket may run: a
        // burst of `per_minute` pings at one instant fills it exactly.
        let interval = (MINUTE_US / per_minute).max(1);
        let tolerance = interval * (per_minute - 1);
        if self.tat_us > now_us.saturating_add(tolerance) {
            return false;
        }
        self.tat_us = self.tat_us.max(now_us).saturating_add(interval);
        true
    }
}

/// Microseconds of the engine clock (`Shared::now`, which tests move forward) since a
/// process-wide origin: the real monotonic clock at the first call. An engine's clock is the
/// real one plus a non-negative offset, so every engine's `now` is at or past the origin,
/// whichever engine (with whatever offset) called first. Monotonic.
pub(crate) fn clock_us(now: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    now.saturating_duration_since(origin).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_burst_of_one_minute_then_the_rate() {
        let mut b = PingBudget::default();
        let t0 = 5 * S;
        for i in 0..30 {
            assert!(b.allow(t0, 30), "ping {i} of the burst");
        }
        assert!(!b.allow(t0, 30), "the 31st at the same instant");
        // A refused ping costs nothing: one interval (2 s at 30/min) later, exactly one more.
        assert!(!b.allow(t0 + 2 * S - 1, 30));
        assert!(b.allow(t0 + 2 * S, 30));
        assert!(!b.allow(t0 + 2 * S, 30));
        // A minute of silence refills the whole burst, never more.
        let t1 = t0 + 2 * S + 60 * S;
        for _ in 0..30 {
            assert!(b.allow(t1 + 3600 * S, 30));
        }
        assert!(!b.allow(t1 + 3600 * S, 30));
    }

    #[test]
    fn the_allowed_rate_is_never_refused() {
        // Evenly at the rate, from the first instant and for an hour, and at the rate right
        // after a full burst.
        let mut b = PingBudget::default();
        for i in 0..1800u64 {
            assert!(b.allow(i * 2 * S, 30), "ping {i}");
        }
        let mut b = PingBudget::default();
        for _ in 0..30 {
            assert!(b.allow(0, 30));
        }
        for i in 1..=100u64 {
            assert!(b.allow(i * 2 * S, 30), "ping {i} after the burst");
        }
        // Any 60-second window with at most 30 pings: 30 at the end of one minute, 30 at the
        // start of the next.
        let mut b = PingBudget::default();
        for _ in 0..30 {
            assert!(b.allow(59 * S, 30));
        }
        for _ in 0..30 {
            assert!(b.allow(119 * S, 30));
        }
    }

    #[test]
    fn zero_is_unlimited_and_extreme_rates_do_not_overflow() {
        let mut b = PingBudget::default();
        for _ in 0..10_000 {
            assert!(b.allow(0, 0));
        }
        assert_eq!(b, PingBudget::default(), "unlimited keeps no state");
        let mut b = PingBudget::default();
        for _ in 0..1000 {
            assert!(b.allow(u64::MAX - 1, u32::MAX));
        }
        let mut b = PingBudget::default();
        assert!(b.allow(0, 1));
        assert!(!b.allow(59 * S, 1));
        assert!(b.allow(60 * S, 1));
    }

    #[test]
    fn clock_is_monotonic_from_its_origin() {
        // A clock moved forward (a test engine's) calling first does not stall the others.
        let ahead = Instant::now() + std::time::Duration::from_secs(500);
        let _ = clock_us(ahead);
        let now = Instant::now();
        let a = clock_us(now);
        let b = clock_us(now + std::time::Duration::from_secs(3));
        // Had the origin been taken from the clock ahead, both would read 0.
        assert_eq!(b - a, 3 * S);
        assert!(clock_us(ahead) > b);
    }
}
