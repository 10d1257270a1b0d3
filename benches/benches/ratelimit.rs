//! The cost of the HTTP API's rate limiter (control-plane/src/ratelimit.rs): one check of a
//! limited (app, endpoint) that passes, one that is refused, an unlimited endpoint's lookup,
//! and checks from two threads contending for the same bucket (the cross-core case).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringcast_control_plane::ratelimit::{Bucket, RateLimiter};
use ringcast_control_plane::Endpoint;
use ringcast_engine::{AppConfig, RateLimit};

fn limiter() -> RateLimiter {
    let mut app = AppConfig::embedded_default();
    app.rate_limits = vec![(
        "events".into(),
        RateLimit {
            per_minute: u32::MAX,
            burst_per_sec: u32::MAX,
        },
    )];
    RateLimiter::new(&[app])
}

fn checks(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let l = limiter();
    g.bench_function("check_passes", |b| {
        b.iter(|| l.check(black_box(0), black_box(Endpoint::Events)))
    });
    g.bench_function("unlimited_endpoint", |b| {
        b.iter(|| l.check(black_box(0), black_box(Endpoint::Channels)))
    });
    let spent = Bucket::new(RateLimit {
        per_minute: 1,
        burst_per_sec: 1,
    });
    spent.check(0);
    g.bench_function("check_refused", |b| b.iter(|| spent.check(black_box(1))));
    // Another thread hammering the same bucket: the CAS retries of cross-core contention.
    let shared = Arc::new(limiter());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                black_box(shared.check(0, Endpoint::Events));
            }
        })
    };
    g.bench_function("check_contended_2_threads", |b| {
        b.iter(|| shared.check(black_box(0), black_box(Endpoint::Events)))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = other.join();
    g.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
