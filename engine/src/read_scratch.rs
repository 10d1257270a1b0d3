//! The core's one receive buffer. A connection waits for readability without a buffer
//! (io_uring POLL_ADD, `ConnReader::readable`), then receives into this per-core scratch
//! without blocking (`ConnReader::recv`) and decodes the frames straight out of it. Only the
//! bytes of a frame still incomplete at the end of a receive stay with the connection (in its
//! `FrameDecoder`, boxed only while a frame is mid-way), so an idle connection holds no read
//! buffer at all.
//!
//! Each worker is one thread, so a thread-local is a per-core buffer. The scratch is borrowed
//! only inside a synchronous section (never across an await), so one connection's use cannot
//! overlap another's on the same core.

use std::cell::RefCell;

/// Size of the per-core scratch. A TLS connection uses its first half for ciphertext (a full
/// record is at most ~16.7 KiB) and its second half for plaintext.
pub(crate) const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// Runs `f` with this core's scratch buffer. Re-entry (which the engine never does) gets a
/// temporary buffer of its own instead of a panic.
pub(crate) fn with<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut vec![0u8; SCRATCH_BYTES]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_buffer_per_thread_and_reentry_gets_its_own() {
        let outer = with(|a| {
            a[0] = 7;
            let inner = with(|b| {
                assert_eq!(b.len(), SCRATCH_BYTES);
                b[0]
            });
            (a.as_ptr() as usize, inner)
        });
        assert_eq!(outer.1, 0, "re-entry does not see the borrowed buffer");
        let again = with(|a| (a.as_ptr() as usize, a[0]));
        assert_eq!(again, (outer.0, 7), "the same per-thread buffer is reused");
    }
}
