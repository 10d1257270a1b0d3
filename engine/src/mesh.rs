//! The core mesh: one bounded lock-free SPSC ring per ordered pair of cores, plus one bounded
//! MPSC injection queue per core for the rest of the process (REST handle, signals).
//!
//! Wake-up: each core has one [`AtomicWaker`]; its drain task registers there before it parks.
//! A producer pushes, marks the destination dirty, and on [`MeshTx::flush`] wakes each dirty
//! destination once. Waking a monoio task from another thread goes through monoio's cross-thread
//! unpark (an eventfd read by the ring), so a parked core sleeps in the kernel, never spins.
//!
//! Full ring policy: a message that does not fit goes to the sender's local overflow queue for
//! that peer (order preserved) and is retried on the next drain tick. The overflow is bounded
//! by `mesh_overflow_limit`: past it, *event deliveries* to that peer are dropped and counted in
//! `ringcast_mesh_dropped_total`; subscription bookkeeping (subscribe, unsubscribe, acks) is
//! never dropped, because losing it would corrupt channel state, and it is itself bounded by
//! connection and per-connection subscription limits.

use std::collections::VecDeque;
use std::sync::Arc;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::metrics::CoreMetrics;
use crate::msg::{Command, Msg};

/// Per-core wake-up point, shared by every producer.
#[derive(Default)]
pub(crate) struct CoreSignal {
    pub waker: AtomicWaker,
}

/// What every thread can reach: wake-ups and injection queues of all cores.
pub(crate) struct MeshShared {
    pub signals: Box<[CachePadded<CoreSignal>]>,
    pub injectors: Box<[ArrayQueue<Command>]>,
}

impl MeshShared {
    pub fn new(workers: usize, inject_capacity: usize) -> MeshShared {
        MeshShared {
            signals: (0..workers)
                .map(|_| CachePadded::new(CoreSignal::default()))
                .collect(),
            injectors: (0..workers)
                .map(|_| ArrayQueue::new(inject_capacity))
                .collect(),
        }
    }

    /// Pushes a command into a core's injection queue and wakes it. Gives the command back if
    /// the queue is full (the caller reports overload; nothing is silently lost).
    pub fn inject(&self, core: usize, cmd: Command) -> Result<(), Command> {
        self.injectors[core].push(cmd)?;
        self.signals[core].waker.wake();
        Ok(())
    }
}

/// The sending side of one core: producers to every other core.
pub(crate) struct MeshTx {
    me: usize,
    producers: Vec<Option<rtrb::Producer<Msg>>>,
    overflow: Vec<VecDeque<Msg>>,
    dirty: Vec<bool>,
    any_dirty: bool,
    overflow_limit: usize,
    shared: Arc<MeshShared>,
}

/// The receiving side of one core.
pub(crate) struct MeshRx {
    consumers: Vec<Option<rtrb::Consumer<Msg>>>,
}

/// Builds the N x N mesh; returns each core's (tx, rx).
pub(crate) fn build(
    workers: usize,
    capacity: usize,
    overflow_limit: usize,
    shared: Arc<MeshShared>,
) -> Vec<(MeshTx, MeshRx)> {
    let mut producers: Vec<Vec<Option<rtrb::Producer<Msg>>>> = (0..workers)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    let mut consumers: Vec<Vec<Option<rtrb::Consumer<Msg>>>> = (0..workers)
        .map(|_| (0..workers).map(|_| None).collect())
        .collect();
    for from in 0..workers {
        for to in 0..workers {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(capacity);
                producers[from][to] = Some(p);
                consumers[to][from] = Some(c);
            }
        }
    }
    producers
        .into_iter()
        .zip(consumers)
        .enumerate()
        .map(|(me, (p, c))| {
            (
                MeshTx {
                    me,
                    producers: p,
                    overflow: (0..workers).map(|_| VecDeque::new()).collect(),
                    dirty: vec![false; workers],
                    any_dirty: false,
                    overflow_limit,
                    shared: shared.clone(),
                },
                MeshRx { consumers: c },
            )
        })
        .collect()
}

impl MeshTx {
    /// Queues `msg` for core `to` (never `self`). Wakes happen on [`flush`](Self::flush).
    pub fn send(&mut self, to: usize, msg: Msg, metrics: &CoreMetrics) {
        debug_assert_ne!(to, self.me, "self-messages use the core's local queue");
        metrics.mesh_sent.inc();
        self.dirty[to] = true;
        self.any_dirty = true;
        let overflow = &mut self.overflow[to];
        if overflow.is_empty() {
            // Invariant: producers[to] is Some for every to != me (built that way).
            let p = self.producers[to].as_mut().expect("producer for peer core");
            match p.push(msg) {
                Ok(()) => return,
                Err(rtrb::PushError::Full(m)) => {
                    metrics.mesh_overflowed.inc();
                    overflow.push_back(m);
                    return;
                }
            }
        }
        if overflow.len() >= self.overflow_limit && msg.is_droppable() {
            metrics.mesh_dropped.inc();
            return;
        }
        metrics.mesh_overflowed.inc();
        overflow.push_back(msg);
    }

    /// Moves what it can from the overflow queues into the rings and wakes every peer that got
    /// something since the last flush.
    pub fn flush(&mut self) {
        if !self.any_dirty {
            return;
        }
        self.any_dirty = false;
        for to in 0..self.dirty.len() {
            if !self.dirty[to] {
                continue;
            }
            let overflow = &mut self.overflow[to];
            if let Some(p) = self.producers[to].as_mut() {
                while let Some(m) = overflow.pop_front() {
                    if let Err(rtrb::PushError::Full(m)) = p.push(m) {
                        overflow.push_front(m);
                        break;
                    }
                }
            }
            // Keep the peer marked while something waits, so the next flush retries it.
            self.dirty[to] = !overflow.is_empty();
            self.any_dirty |= self.dirty[to];
            self.shared.signals[to].waker.wake();
        }
    }

    /// True while some peer queue was full and messages wait locally.
    pub fn has_overflow(&self) -> bool {
        self.overflow.iter().any(|q| !q.is_empty())
    }
}

impl MeshRx {
    /// Pops up to `budget` messages from peers, round-robin, into `f`. Returns how many.
    pub fn drain(&mut self, budget: usize, mut f: impl FnMut(Msg)) -> usize {
        let mut n = 0;
        loop {
            let before = n;
            for c in self.consumers.iter_mut().flatten() {
                // Take a slice of each ring per round so one busy peer cannot starve the others.
                for _ in 0..64 {
                    match c.pop() {
                        Ok(m) => {
                            f(m);
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            if n == before || n >= budget {
                return n;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.consumers.iter().flatten().all(|c| c.is_empty())
    }
}
