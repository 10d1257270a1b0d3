//! [`BodyBudget`]: a process-wide cap on request body bytes being received at once. A request
//! whose body has not fully arrived reserves its `Content-Length` when its head is admitted and
//! gives it back when it has been answered (or its connection dies), so however many clients
//! send bodies slowly at once, the server never holds more than the budget in bodies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The shared budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    in_use: AtomicUsize,
}

/// A reservation; released on drop.
#[derive(Debug)]
pub struct BodyPermit {
    inner: Arc<Inner>,
    bytes: usize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> BodyBudget {
        BodyBudget {
            inner: Arc::new(Inner {
                limit,
                in_use: AtomicUsize::new(0),
            }),
        }
    }

    /// Reserves `bytes`, or `None` when that would exceed the limit.
    pub fn reserve(&self, bytes: usize) -> Option<BodyPermit> {
        let mut cur = self.inner.in_use.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes)?;
            if next > self.inner.limit {
                return None;
            }
            match self.inner.in_use.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(BodyPermit {
                        inner: self.inner.clone(),
                        bytes,
                    })
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.inner.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_capped_and_released_on_drop() {
        let b = BodyBudget::new(100);
        let p1 = b.reserve(60).unwrap();
        assert!(b.reserve(41).is_none());
        let p2 = b.reserve(40).unwrap();
        assert_eq!(b.in_use(), 100);
        assert!(b.reserve(1).is_none());
        drop(p1);
        assert_eq!(b.in_use(), 40);
        assert!(b.reserve(60).is_some(), "a dropped permit is released");
        drop(p2);
        assert_eq!(b.in_use(), 0);
        assert!(b.reserve(usize::MAX).is_none());
    }
}
