//! The generator's thread-per-core runtime: one OS thread per generator core, each optionally
//! pinned (`--cpus`) and running its own monoio runtime (io_uring, or epoll where io_uring is
//! unavailable). Threads share nothing on the hot path: each owns its connections, histogram
//! and loss trackers; the main thread coordinates phases through [`Ctl`] (a few atomics polled
//! every couple of milliseconds) and receives per-thread results over a channel.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::latency::Latency;

/// How the generator runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GenConfig {
    pub threads: usize,
    /// CPUs to pin thread `i` to (`cpus[i % len]`); None = no pinning.
    pub cpus: Option<Vec<usize>>,
}

/// One phase of load (a fan-out run has one, a sweep one per rate).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhaseSpec {
    pub phase: u32,
    /// Events per second over all channels.
    pub rate: f64,
    /// Events in the phase: `k` in `0..events`.
    pub events: u64,
    /// Intended send time of event 0 ([`crate::clock`] ns).
    pub t0_ns: u64,
    /// Publishers give up on events they could not send by this time.
    pub deadline_ns: u64,
}

impl PhaseSpec {
    /// Intended send time of event `k` (open loop: a fixed schedule).
    #[inline]
    pub fn intended_ns(&self, k: u64) -> u64 {
        self.t0_ns + (k as f64 * 1e9 / self.rate) as u64
    }
}

/// Per-thread counters the progress line reads (written by one thread only).
#[derive(Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    /// REST requests written and not yet answered: a phase does not end before they are
    /// answered (or its deadline), even when every delivery has arrived.
    pub unanswered: AtomicU64,
}

/// Shared between the main thread and the generator threads.
pub struct Ctl {
    pub stop: AtomicBool,
    /// Threads whose setup (connect + subscribe) is complete.
    pub ready: AtomicUsize,
    pub errors: Mutex<Vec<String>>,
    pub error_count: AtomicU64,
    /// Things worth knowing that are not errors (e.g. how a REST probe was answered).
    pub notes: Mutex<Vec<String>>,
    pub phase_gen: AtomicU32,
    pub spec: Mutex<PhaseSpec>,
    /// The phase the main thread wants results of.
    pub collect: AtomicU32,
    pub counters: Box<[CachePadded<Counters>]>,
    /// Latency of the current phase so far, per thread (refreshed every second).
    pub live: Box<[Mutex<Latency>]>,
    /// Generator thread ids, for CPU accounting.
    pub tids: Mutex<Vec<i32>>,
}

impl Ctl {
    pub fn new(threads: usize) -> Arc<Ctl> {
        Arc::new(Ctl {
            stop: AtomicBool::new(false),
            ready: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
            error_count: AtomicU64::new(0),
            notes: Mutex::new(Vec::new()),
            phase_gen: AtomicU32::new(0),
            spec: Mutex::new(PhaseSpec::default()),
            collect: AtomicU32::new(0),
            counters: (0..threads)
                .map(|_| CachePadded::new(Counters::default()))
                .collect(),
            live: (0..threads).map(|_| Mutex::new(Latency::new())).collect(),
            tids: Mutex::new(Vec::new()),
        })
    }

    /// Records a setup or run error (the first few texts are kept).
    pub fn error(&self, e: String) {
        self.error_count.fetch_add(1, Relaxed);
        let mut v = lock(&self.errors);
        if v.len() < 20 {
            v.push(e);
        }
    }

    /// Records a note (kept once, at most 20).
    pub fn note(&self, n: String) {
        let mut v = lock(&self.notes);
        if v.len() < 20 && !v.contains(&n) {
            v.push(n);
        }
    }

    pub fn first_errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    pub fn start_phase(&self, spec: PhaseSpec) {
        *lock(&self.spec) = spec;
        self.phase_gen.fetch_add(1, Relaxed);
    }

    pub fn current_spec(&self) -> PhaseSpec {
        *lock(&self.spec)
    }

    pub fn total(&self, f: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| f(c).load(Relaxed)).sum()
    }

    /// Merged latency of the current phase so far.
    pub fn live_latency(&self) -> Latency {
        let mut l = Latency::new();
        for h in self.live.iter() {
            l.merge(&lock(h));
        }
        l
    }

    /// Generator CPU seconds per thread so far.
    pub fn thread_cpu(&self) -> Vec<f64> {
        lock(&self.tids)
            .iter()
            .map(|t| crate::procfs::thread_cpu(*t).unwrap_or(0.0))
            .collect()
    }
}

/// Locks a mutex, ignoring poisoning (a panicked generator thread already reported itself).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns the generator threads; thread `i` runs `f(i)` to completion on its own runtime.
pub fn spawn<F, Fut>(cfg: &GenConfig, ctl: Arc<Ctl>, f: F) -> anyhow::Result<Vec<JoinHandle<()>>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let f = Arc::new(f);
    let mut out = Vec::new();
    for i in 0..cfg.threads {
        let f = f.clone();
        let ctl = ctl.clone();
        let pin = cfg.cpus.as_ref().map(|c| c[i % c.len()]);
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || {
                if let Some(cpu) = pin {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        ctl.error(format!("thread {i}: cannot pin to cpu {cpu}"));
                    }
                }
                lock(&ctl.tids).push(crate::procfs::gettid());
                let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .with_entries(8192)
                    .enable_timer()
                    .build();
                match rt {
                    Ok(mut rt) => rt.block_on(f(i)),
                    Err(e) => {
                        ctl.error(format!("thread {i}: cannot build runtime: {e}"));
                        ctl.ready.fetch_add(1, Relaxed);
                    }
                }
            })?;
        out.push(h);
    }
    Ok(out)
}

/// Waits (bounded) for the threads to exit after `stop` was set.
pub fn join(threads: Vec<JoinHandle<()>>, limit: Duration) {
    let until = std::time::Instant::now() + limit;
    for t in threads {
        while !t.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
        // A thread still running past the limit is left behind; the process exits anyway.
    }
}

/// Thread-local concurrency limit for connection setup (a counting gate polled by sleeping).
pub struct Gate {
    free: std::cell::Cell<usize>,
}

impl Gate {
    pub fn new(n: usize) -> Gate {
        Gate {
            free: std::cell::Cell::new(n.max(1)),
        }
    }

    /// Takes a slot, waiting at most `limit`. Returns false on timeout.
    pub async fn acquire(&self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            let f = self.free.get();
            if f > 0 {
                self.free.set(f - 1);
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn release(&self) {
        self.free.set(self.free.get() + 1);
    }
}

/// Sleeps until the [`crate::clock`] time `ns` (1 ms timer granularity; returns at once if due).
pub async fn sleep_until_ns(ns: u64) {
    let now = crate::clock::now_ns();
    if ns > now {
        monoio::time::sleep(Duration::from_nanos(ns - now)).await;
    }
}

/// The sockets of one generator thread, so a stop can end every pending read: monoio keeps a
/// socket with an operation in flight open (the kernel may still use its buffer), so dropping
/// the runtime would leak the descriptors. `shutdown(2)` completes those reads with EOF, the
/// tasks exit and close their sockets.
#[derive(Default)]
pub struct Sockets {
    fds: std::cell::RefCell<std::collections::HashSet<std::os::fd::RawFd>>,
}

/// Registered while a connection task owns its socket.
pub struct SocketGuard {
    set: std::rc::Rc<Sockets>,
    fd: std::os::fd::RawFd,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.set.fds.borrow_mut().remove(&self.fd);
    }
}

impl Sockets {
    pub fn register(self: &std::rc::Rc<Self>, fd: std::os::fd::RawFd) -> SocketGuard {
        self.fds.borrow_mut().insert(fd);
        SocketGuard {
            set: self.clone(),
            fd,
        }
    }

    pub fn live(&self) -> usize {
        self.fds.borrow().len()
    }

    /// Shuts every registered socket down and waits (at most `limit`) until their tasks
    /// dropped them.
    pub async fn close_all(&self, limit: Duration) {
        for fd in self.fds.borrow().iter() {
            // SAFETY: shutdown(2) on a descriptor we registered and have not closed (the guard
            // removes it before the socket is dropped); it neither closes nor frees anything.
            unsafe {
                libc::shutdown(*fd, libc::SHUT_RDWR);
            }
        }
        let until = std::time::Instant::now() + limit;
        while self.live() > 0 && std::time::Instant::now() < until {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
