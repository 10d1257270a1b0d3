//! Per-app, per-endpoint rate limits for every HTTP dialect: two token buckets per
//! (app, endpoint), a minute bucket (`per_minute` tokens, refilled at `per_minute` per 60 s)
//! and a burst bucket (`burst_per_sec` tokens, refilled at that many per second). A request
//! passes when both buckets hold a token.
//!
//! Each bucket is one `AtomicU64` (the GCRA form of a token bucket: the "theoretical arrival
//! time" of the next request, in nanoseconds on the limiter's monotonic clock), updated with a
//! compare-and-swap. Every core serving the API shares the same atomics, so the budget is
//! exact across cores and there is no lock on the hot path: a request costs two CAS (and, when
//! the second bucket refuses, one `fetch_sub` giving the first token back). A token is taken
//! before the request is admitted, so concurrent requests can never over-spend a bucket; a
//! token briefly held by a request the other bucket then refuses can make a racing request
//! see one token fewer (never more).
//!
//! Defaults: the LatteStream dialect's endpoints are limited as LatteStream documents them
//! ([`default_limit`]); every other endpoint (the Pusher and Relay dialects) is unlimited
//! unless the app's `[apps.rate_limits]` table names it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use ringcast_engine::{AppConfig, RateLimit};

use crate::api::Endpoint;

const NS_PER_SEC: u64 = 1_000_000_000;

/// A dialect's built-in limit for an endpoint (used when the app's config does not name it).
pub fn default_limit(endpoint: Endpoint) -> Option<RateLimit> {
    let l = |per_minute, burst_per_sec| {
        Some(RateLimit {
            per_minute,
            burst_per_sec,
        })
    };
    match endpoint {
        Endpoint::LsEvents => l(1_000, 100),
        Endpoint::LsBatchEvents => l(500, 50),
        Endpoint::LsToken => l(2_000, 200),
        Endpoint::LsChannels => l(500, 50),
        _ => None,
    }
}

/// One token bucket in GCRA form.
struct Cell {
    /// When the bucket will be full again (ns on the limiter clock); `<= now` means full.
    tat: AtomicU64,
    /// Nanoseconds per token.
    interval: u64,
    /// `capacity * interval`: how far ahead of `now` the arrival time may run.
    tolerance: u64,
}

impl Cell {
    fn new(capacity: u32, period_ns: u64) -> Cell {
        let capacity = u64::from(capacity.max(1));
        let interval = (period_ns / capacity).max(1);
        Cell {
            tat: AtomicU64::new(0),
            interval,
            tolerance: interval * capacity,
        }
    }

    /// Takes a token: `Ok(new arrival time)` or `Err(ns until one is available)`.
    #[inline]
    fn take(&self, now: u64) -> Result<u64, u64> {
        let mut cur = self.tat.load(Ordering::Relaxed);
        loop {
            let next = cur.max(now) + self.interval;
            if next - now > self.tolerance {
                return Err(next - now - self.tolerance);
            }
            match self
                .tat
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(next),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Returns a token taken by [`take`](Self::take).
    fn give_back(&self) {
        self.tat.fetch_sub(self.interval, Ordering::AcqRel);
    }

    /// Tokens left when the arrival time is `tat`.
    fn remaining(&self, tat: u64, now: u64) -> u64 {
        (self.tolerance - tat.saturating_sub(now).min(self.tolerance)) / self.interval
    }
}

/// The two buckets of one (app, endpoint).
pub struct Bucket {
    limit: RateLimit,
    minute: Cell,
    burst: Cell,
}

/// What the limiter decided, with what the `X-RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `X-RateLimit-Limit`: the per-minute budget.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: requests that would pass right now (the tighter bucket).
    pub remaining: u32,
    /// Seconds until the minute bucket is full again (`X-RateLimit-Reset` = now + this).
    pub reset_after_secs: u64,
    /// Refused requests: seconds until a request can pass (`Retry-After`, at least 1).
    pub retry_after_secs: u64,
}

fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_SEC)
}

impl Bucket {
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    pub fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            minute: Cell::new(limit.per_minute, 60 * NS_PER_SEC),
            burst: Cell::new(limit.burst_per_sec, NS_PER_SEC),
        }
    }

    /// Takes one request's tokens at `now` (ns on a monotonic clock).
    #[inline]
    pub fn check(&self, now: u64) -> Decision {
        // The smaller bucket first: it refuses most often, so the other is rarely touched.
        let (first, second) = if self.limit.burst_per_sec <= self.limit.per_minute {
            (&self.burst, &self.minute)
        } else {
            (&self.minute, &self.burst)
        };
        let refused = |wait: u64| Decision {
            allowed: false,
            limit: self.limit.per_minute,
            remaining: 0,
            reset_after_secs: ceil_secs(
                self.minute.tat.load(Ordering::Relaxed).saturating_sub(now),
            ),
            retry_after_secs: ceil_secs(wait).max(1),
        };
        let t1 = match first.take(now) {
            Ok(t) => t,
            Err(wait) => return refused(wait),
        };
        let t2 = match second.take(now) {
            Ok(t) => t,
            Err(wait) => {
                first.give_back();
                return refused(wait);
            }
        };
        let (tm, tb) = if std::ptr::eq(first, &self.burst) {
            (t2, t1)
        } else {
            (t1, t2)
        };
        let remaining = self
            .minute
            .remaining(tm, now)
            .min(self.burst.remaining(tb, now));
        Decision {
            allowed: true,
            limit: self.limit.per_minute,
            remaining: remaining.min(u64::from(u32::MAX)) as u32,
            reset_after_secs: ceil_secs(tm.saturating_sub(now)),
            retry_after_secs: 0,
        }
    }
}

/// The buckets of one version of the apps table, indexed by `app * endpoints + endpoint`.
struct Slots {
    version: u64,
    slots: Box<[Option<Arc<Bucket>>]>,
}

/// Every limited (app, endpoint) of the process, shared by every thread serving the API.
/// Built from the apps table and rebuilt when the management API changes it (a new table
/// swapped in; a bucket whose limit did not change is carried over with its budget).
pub struct RateLimiter {
    table: ArcSwap<Slots>,
    rebuild: Mutex<()>,
    epoch: Instant,
}

fn limit_of(app: &AppConfig, ep: Endpoint) -> Option<RateLimit> {
    let configured = app
        .rate_limits
        .iter()
        .find(|(name, _)| name == ep.label())
        .map(|(_, l)| *l);
    configured
        .or_else(|| default_limit(ep))
        .filter(|l| l.per_minute > 0)
}

fn build(apps: &[(usize, &AppConfig)], version: u64, old: Option<&Slots>) -> Slots {
    let n = Endpoint::ALL.len();
    let len = apps.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
    let mut slots: Vec<Option<Arc<Bucket>>> = vec![None; len * n];
    for (idx, app) in apps {
        for ep in Endpoint::ALL {
            let i = idx * n + ep.index();
            slots[i] = limit_of(app, ep).map(|l| {
                match old.and_then(|o| o.slots.get(i)).and_then(|b| b.as_ref()) {
                    Some(b) if b.limit() == l => b.clone(),
                    _ => Arc::new(Bucket::new(l)),
                }
            });
        }
    }
    Slots {
        version,
        slots: slots.into_boxed_slice(),
    }
}

impl RateLimiter {
    /// The limits of `apps` (app index = position): each app's `rate_limits`, then the
    /// dialect defaults for endpoints it does not name. `per_minute = 0` turns a limit off.
    pub fn new(apps: &[AppConfig]) -> RateLimiter {
        let list: Vec<(usize, &AppConfig)> = apps.iter().enumerate().collect();
        RateLimiter {
            table: ArcSwap::from_pointee(build(&list, 0, None)),
            rebuild: Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    /// Rebuilds the buckets for apps table `version` unless already built for it (called by
    /// the pipeline when the management API has swapped the apps table; never per request).
    pub fn refresh(&self, version: u64, apps: &[(usize, &AppConfig)]) {
        let _one_at_a_time = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.table.load_full();
        if old.version == version {
            return;
        }
        self.table.store(Arc::new(build(apps, version, Some(&old))));
    }

    /// The apps-table version the buckets were built for.
    pub fn version(&self) -> u64 {
        self.table.load().version
    }

    /// The bucket of `(app, endpoint)`, if that endpoint is limited for the app.
    #[inline]
    pub fn bucket(&self, app: usize, endpoint: Endpoint) -> Option<Arc<Bucket>> {
        self.table
            .load()
            .slots
            .get(app * Endpoint::ALL.len() + endpoint.index())?
            .clone()
    }

    /// Checks one request now; `None` when the endpoint is not limited for the app.
    #[inline]
    pub fn check(&self, app: usize, endpoint: Endpoint) -> Option<Decision> {
        let table = self.table.load();
        let bucket = table
            .slots
            .get(app * Endpoint::ALL.len() + endpoint.index())?
            .as_ref()?;
        Some(bucket.check(self.now()))
    }

    /// Nanoseconds since the limiter was built (monotonic).
    #[inline]
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    fn bucket(per_minute: u32, burst_per_sec: u32) -> Bucket {
        Bucket::new(RateLimit {
            per_minute,
            burst_per_sec,
        })
    }

    #[test]
    fn burst_then_refill_per_second() {
        let b = bucket(1_000, 100);
        let t0 = 5 * NS_PER_SEC;
        for i in 0..100 {
            let d = b.check(t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
            assert_eq!(d.limit, 1_000);
        }
        let d = b.check(t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_secs, 1);
        // 10 ms later exactly one token (100/s) has come back.
        let t1 = t0 + 10_000_000;
        assert!(b.check(t1).allowed);
        assert!(!b.check(t1).allowed);
    }

    #[test]
    fn minute_budget_caps_sustained_bursts() {
        let b = bucket(120, 100);
        let mut passed = 0;
        // Ten seconds of 100 requests per second: the minute bucket (120, +2/s) runs dry.
        for s in 0..10u64 {
            for _ in 0..100 {
                passed += u32::from(b.check(s * NS_PER_SEC).allowed);
            }
        }
        assert_eq!(passed, 120 + 9 * 2);
        let d = b.check(9 * NS_PER_SEC + 1);
        assert!(!d.allowed);
        assert!(d.reset_after_secs > 0 && d.reset_after_secs <= 60, "{d:?}");
        assert!(d.retry_after_secs >= 1);
    }

    #[test]
    fn limiter_uses_config_then_defaults() {
        let mut app = AppConfig::embedded_default();
        app.rate_limits = vec![
            (
                "events".into(),
                RateLimit {
                    per_minute: 10,
                    burst_per_sec: 2,
                },
            ),
            (
                "ls_batch_events".into(),
                RateLimit {
                    per_minute: 0,
                    burst_per_sec: 0,
                },
            ),
        ];
        let l = RateLimiter::new(&[app, AppConfig::embedded_default()]);
        assert!(l.bucket(0, Endpoint::Events).is_some());
        assert!(l.bucket(0, Endpoint::LsBatchEvents).is_none(), "turned off");
        assert!(l.bucket(0, Endpoint::LsEvents).is_some(), "default");
        assert!(l.bucket(1, Endpoint::Events).is_none(), "Pusher: off");
        assert!(l.bucket(1, Endpoint::LsToken).is_some());
        assert!(l.bucket(7, Endpoint::Events).is_none(), "unknown app");
    }

    #[test]
    fn every_configurable_label_is_an_endpoint() {
        for name in ringcast_engine::RATE_LIMIT_ENDPOINTS {
            assert!(
                Endpoint::ALL.iter().any(|e| e.label() == name),
                "{name} is not an endpoint label"
            );
        }
    }

    /// Exact budget under contention: threads on both cores hammer one bucket at a frozen
    /// instant; exactly the burst passes, however the CAS races fall.
    #[test]
    fn exact_budget_from_several_threads() {
        for (per_minute, burst) in [(1_000, 100), (50, 400), (300, 300)] {
            let b = Arc::new(bucket(per_minute, burst));
            let passed = Arc::new(AtomicU32::new(0));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (b, passed) = (b.clone(), passed.clone());
                    std::thread::spawn(move || {
                        for _ in 0..1_000 {
                            if b.check(NS_PER_SEC).allowed {
                                passed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(
                passed.load(Ordering::Relaxed),
                per_minute.min(burst),
                "{per_minute}/{burst}"
            );
        }
    }
}
