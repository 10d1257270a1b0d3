//! The core mesh: one bounded lock-free SPSC ring per ordered pair of cores, plus one bounded
//! MPSC injection queue per core for the rest of the process (REST handle, signals).
//!
//! Wake-up: each core has one [`AtomicWaker`]; its drain task registers there before it parks.
//! A producer pushes, marks the destination dirty, and on [`MeshTx::flush`] wakes each dirty
//! destination once. Waking a monoio task from another thread goes through monoio's cross-thread
//! unpark (an eventfd read by the ring), so a parked core sleeps in the kernel, never spins.
//!
//! Full ring policy (no subscriber silently misses an event):
//! - A message that does not fit in the ring goes to the sender's local overflow queue for that
//!   peer (order preserved) and is retried on every flush.
//! - **Push back first.** Once any overflow queue of a core (or its queue to itself) holds
//!   `pushback_at` messages (half of `mesh_overflow_limit`), the core is *congested*
//!   ([`MeshShared::congested`]): new publishes whose owner or sender is congested are refused
//!   (REST `EngineError::Overloaded` -> 503, client events -> `pusher:error`), and so are new
//!   subscriptions. Nothing is dropped to get there.
//! - **Hard limit.** Publishes already admitted can still fan out past the push-back mark. An
//!   event delivery (`Deliver`) that would take a peer's overflow beyond `mesh_overflow_limit`
//!   is not queued; its channel is remembered for that peer, and a `Lost` message (queued
//!   before anything else for that peer as soon as there is room) makes the peer close its
//!   subscribers of the channel with 4100 (slow consumer), so they reconnect knowing they
//!   missed something, instead of silently missing it. Counted in `ringcast_mesh_dropped_total`.
//! - Bookkeeping (`Subscribe`, `Unsubscribe`, `SubAck`, `Lost`) and `Publish` are never dropped
//!   (dropping them would corrupt channel state or lose an event for every subscriber). They are
//!   bounded by admission: `Publish` and `Subscribe` are only sent while not congested, every
//!   `SubAck` answers an admitted `Subscribe`, every `Unsubscribe` undoes one, and `Lost` holds
//!   at most one entry per channel. So an overflow queue holds at most `mesh_overflow_limit`
//!   deliveries plus the bookkeeping of the subscriptions in flight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;

use crate::metrics::CoreMetrics;
use crate::msg::{ChanKey, Command, Msg};

/// Per-core wake-up point, shared by every producer.
#[derive(Default)]
pub(crate) struct CoreSignal {
    pub waker: AtomicWaker,
}

/// What every thread can reach: wake-ups and injection queues of all cores.
pub(crate) struct MeshShared {
    pub signals: Box<[CachePadded<CoreSignal>]>,
    pub injectors: Box<[ArrayQueue<Command>]>,
    /// Per core: its outgoing mesh (or its queue to itself) is past the push-back mark. Written
    /// only by that core; read by every publisher and subscriber that involves it.
    pub congested: Box<[CachePadded<AtomicBool>]>,
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
            congested: (0..workers)
                .map(|_| CachePadded::new(AtomicBool::new(false)))
                .collect(),
        }
    }

    /// True while core `core` asks publishers and subscribers to back off.
    #[inline]
    pub fn is_congested(&self, core: usize) -> bool {
        self.congested[core].load(Ordering::Relaxed)
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
    pushback_at: usize,
    /// Per peer: channels whose delivery was refused at the hard limit, owed a `Lost`.
    lost: Vec<Vec<ChanKey>>,
    /// Some overflow queue holds `pushback_at` messages or more.
    congested: bool,
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
                    overflow_limit: overflow_limit.max(2),
                    pushback_at: pushback_mark(overflow_limit),
                    lost: (0..workers).map(|_| Vec::new()).collect(),
                    congested: false,
                    shared: shared.clone(),
                },
                MeshRx { consumers: c },
            )
        })
        .collect()
}

/// Push-back starts at half the hard limit, leaving the other half for the fan-out of publishes
/// already admitted.
pub(crate) fn pushback_mark(overflow_limit: usize) -> usize {
    (overflow_limit.max(2) / 2).max(1)
}

impl MeshTx {
    /// Queues `msg` for core `to` (never `self`). Wakes happen on [`flush`](Self::flush).
    /// A `Deliver` that would pass the hard limit is not queued: its channel is owed a `Lost`.
    pub fn send(&mut self, to: usize, msg: Msg, metrics: &CoreMetrics) {
        debug_assert_ne!(to, self.me, "self-messages use the core's local queue");
        metrics.mesh_sent.inc();
        self.dirty[to] = true;
        self.any_dirty = true;
        if !self.lost[to].is_empty() {
            self.queue_lost(to);
        }
        let overflow = &mut self.overflow[to];
        if overflow.is_empty() {
            // Invariant: producers[to] is Some for every to != me (built that way).
            let p = self.producers[to].as_mut().expect("producer for peer core");
            match p.push(msg) {
                Ok(()) => return,
                Err(rtrb::PushError::Full(m)) => {
                    metrics.mesh_overflowed.inc();
                    overflow.push_back(m);
                    self.update_congestion();
                    return;
                }
            }
        }
        if overflow.len() >= self.overflow_limit {
            if let Msg::Deliver { key, .. } = &msg {
                metrics.mesh_dropped.inc();
                if !self.lost[to].contains(key) {
                    self.lost[to].push(key.clone());
                }
                return;
            }
        }
        metrics.mesh_overflowed.inc();
        overflow.push_back(msg);
        self.update_congestion();
    }

    /// Queues the `Lost` owed to `to` if its overflow has room (it goes behind everything
    /// already queued and before anything sent later, so no later event of those channels
    /// reaches a subscriber that missed an earlier one).
    fn queue_lost(&mut self, to: usize) {
        if self.overflow[to].len() >= self.overflow_limit {
            return;
        }
        let keys = std::mem::take(&mut self.lost[to]);
        let msg = Msg::Lost { keys };
        let overflow = &mut self.overflow[to];
        if overflow.is_empty() {
            let p = self.producers[to].as_mut().expect("producer for peer core");
            if let Err(rtrb::PushError::Full(m)) = p.push(msg) {
                overflow.push_back(m);
            }
        } else {
            overflow.push_back(msg);
        }
        self.dirty[to] = true;
        self.any_dirty = true;
    }

    fn update_congestion(&mut self) {
        let c = self.overflow.iter().any(|q| q.len() >= self.pushback_at);
        if c != self.congested {
            self.congested = c;
        }
    }

    /// True while some overflow queue is past the push-back mark.
    pub fn is_congested(&self) -> bool {
        self.congested
    }

    /// Moves what it can from the overflow queues into the rings and wakes every peer that got
    /// something since the last flush.
    pub fn flush(&mut self) {
        if !self.any_dirty {
            return;
        }
        self.any_dirty = false;
        let mut drained = false;
        for to in 0..self.dirty.len() {
            if !self.dirty[to] {
                continue;
            }
            let overflow = &mut self.overflow[to];
            if let Some(p) = self.producers[to].as_mut() {
                while let Some(m) = overflow.pop_front() {
                    drained = true;
                    if let Err(rtrb::PushError::Full(m)) = p.push(m) {
                        overflow.push_front(m);
                        break;
                    }
                }
            }
            if !self.lost[to].is_empty() {
                self.queue_lost(to);
            }
            // Keep the peer marked while something waits, so the next flush retries it.
            let waiting = !self.overflow[to].is_empty() || !self.lost[to].is_empty();
            self.dirty[to] = waiting;
            self.any_dirty |= waiting;
            self.shared.signals[to].waker.wake();
        }
        if drained && self.congested {
            self.update_congestion();
        }
    }

    /// True while some peer queue was full and messages wait locally.
    pub fn has_overflow(&self) -> bool {
        self.overflow.iter().any(|q| !q.is_empty()) || self.lost.iter().any(|l| !l.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use bytes::Bytes;
    use ringcast_protocol::ChannelName;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    fn key(name: &str) -> ChanKey {
        ChanKey {
            app: 0,
            name: ChannelName::parse(name).unwrap(),
        }
    }

    fn deliver(name: &str, n: u8) -> Msg {
        Msg::Deliver {
            key: key(name),
            frame: Bytes::from(vec![n]),
            except: None,
            seq: None,
        }
    }

    fn unsubscribe(name: &str, conn: u64) -> Msg {
        Msg::Unsubscribe {
            key: key(name),
            conn,
            from: 0,
            user_id: None,
        }
    }

    /// What core 1 reads, as short descriptions: `d<n>` deliveries, `u<conn>` unsubscribes,
    /// `lost:<names>`.
    fn read_all(rx: &mut MeshRx) -> Vec<String> {
        let mut out = Vec::new();
        rx.drain(usize::MAX, |m| {
            out.push(match m {
                Msg::Deliver { frame, .. } => format!("d{}", frame[0]),
                Msg::Unsubscribe { conn, .. } => format!("u{conn}"),
                Msg::Lost { keys } => format!(
                    "lost:{}",
                    keys.iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => "other".into(),
            })
        });
        out
    }

    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Two cores, ring capacity `cap`, overflow limit `limit`. Returns core 0's tx, core 1's rx.
    fn pair(cap: usize, limit: usize) -> (MeshTx, MeshRx, Arc<MeshShared>, Metrics) {
        let shared = Arc::new(MeshShared::new(2, 16));
        let mut wiring = build(2, cap, limit, shared.clone());
        let (_, rx1) = wiring.pop().unwrap();
        let (tx0, _) = wiring.pop().unwrap();
        (tx0, rx1, shared, Metrics::new(2))
    }

    #[test]
    fn order_is_kept_through_the_ring_and_the_overflow() {
        let (mut tx, mut rx, _, metrics) = pair(4, 100);
        let m = metrics.core(0);
        for i in 0..10 {
            tx.send(1, deliver("a", i), m);
        }
        assert!(tx.has_overflow());
        tx.flush();
        let mut seen = read_all(&mut rx);
        // The ring took 4; the rest move in as it drains.
        for _ in 0..10 {
            tx.flush();
            seen.extend(read_all(&mut rx));
        }
        let want: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        assert_eq!(seen, want);
        assert!(!tx.has_overflow());
        assert_eq!(m.mesh_dropped.get(), 0);
    }

    #[test]
    fn flush_wakes_each_destination_once_and_only_when_sent_to() {
        let (mut tx, _rx, shared, metrics) = pair(16, 100);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        shared.signals[1].waker.register(&waker);
        tx.flush();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "nothing sent, no wake");
        for i in 0..3 {
            tx.send(1, deliver("a", i), metrics.core(0));
        }
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "send alone does not wake"
        );
        tx.flush();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "one wake per flush");
        // AtomicWaker hands the waker out once per registration.
        shared.signals[1].waker.register(&waker);
        tx.flush();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "clean flush does not wake"
        );
    }

    #[test]
    fn pushback_at_half_the_limit_then_lost_instead_of_a_silent_drop() {
        let (mut tx, mut rx, _, metrics) = pair(2, 4);
        let m = metrics.core(0);
        // Ring 2, then overflow: congested from 2 waiting (half the limit of 4).
        for i in 0..3 {
            tx.send(1, deliver("a", i), m);
        }
        assert!(!tx.is_congested());
        tx.send(1, deliver("a", 3), m);
        assert!(tx.is_congested(), "push-back from half the hard limit");
        tx.send(1, deliver("b", 4), m);
        tx.send(1, deliver("b", 5), m);
        // Overflow is at the limit (4): more deliveries are refused and their channels owed a
        // Lost; bookkeeping still queues.
        tx.send(1, deliver("a", 6), m);
        tx.send(1, deliver("c", 7), m);
        tx.send(1, deliver("a", 8), m);
        tx.send(1, unsubscribe("a", 42), m);
        assert_eq!(m.mesh_dropped.get(), 3);
        // The peer drains: everything queued, then one Lost for both channels, and a later
        // delivery only after it.
        let mut seen = read_all(&mut rx);
        for _ in 0..8 {
            tx.flush();
            seen.extend(read_all(&mut rx));
        }
        tx.send(1, deliver("a", 9), m);
        tx.flush();
        seen.extend(read_all(&mut rx));
        assert_eq!(
            seen,
            ["d0", "d1", "d2", "d3", "d4", "d5", "u42", "lost:a,c", "d9"]
        );
        assert!(
            !tx.is_congested(),
            "push-back ends once the overflow drained"
        );
        assert!(!tx.has_overflow());
    }

    #[test]
    fn bookkeeping_is_never_dropped() {
        let (mut tx, mut rx, _, metrics) = pair(2, 2);
        let m = metrics.core(0);
        for c in 0..20 {
            tx.send(1, unsubscribe("a", c), m);
        }
        let mut seen = Vec::new();
        for _ in 0..20 {
            tx.flush();
            seen.extend(read_all(&mut rx));
        }
        let want: Vec<String> = (0..20).map(|c| format!("u{c}")).collect();
        assert_eq!(seen, want);
        assert_eq!(m.mesh_dropped.get(), 0);
    }

    #[test]
    fn the_lost_follows_everything_queued_before_the_refusal() {
        let (mut tx, mut rx, _, metrics) = pair(2, 2);
        let m = metrics.core(0);
        for i in 0..5 {
            tx.send(1, deliver("a", i), m);
        }
        // ring: d0 d1; overflow: d2 d3; d4 refused.
        assert_eq!(read_all(&mut rx), ["d0", "d1"]);
        tx.flush();
        assert_eq!(read_all(&mut rx), ["d2", "d3"]);
        tx.flush();
        assert_eq!(read_all(&mut rx), ["lost:a"]);
    }
}
