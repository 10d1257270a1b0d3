//! Hooks for the criterion benches (`benches/benches/engine.rs`): they measure the engine's own
//! code, not a copy of it. Not part of the supported API.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::{ChannelName, SocketId};

use crate::config::{defaults, RawConfig};
use crate::conn::Conn;
use crate::core::Core;
use crate::mesh::{self, MeshShared};
use crate::msg::ChanKey;
use crate::shared::{Placement, Shared};

/// One core's subscriber side for one channel, without sockets: `deliver` is the engine's
/// `Core::deliver` over `Conn::push` (frame shared by reference, byte budget, writer wake-up).
pub struct LocalFanout {
    core: Rc<Core>,
    key: ChanKey,
    conns: Vec<Rc<Conn>>,
}

impl LocalFanout {
    /// `subscribers` socket-less connections on a single core, each with an outbound budget of
    /// `budget` bytes, subscribed to one channel.
    pub fn new(subscribers: usize, budget: usize) -> LocalFanout {
        let config = RawConfig::default()
            .resolve(1)
            .expect("the default config resolves");
        let mesh_shared = Arc::new(MeshShared::new(1, defaults::INJECT_QUEUE_CAPACITY));
        let (tx, rx) = mesh::build(1, 16, 16, mesh_shared.clone())
            .pop()
            .expect("one core's mesh ends");
        let shared = Arc::new(Shared::new(
            config,
            mesh_shared,
            None,
            Placement::with_key([1, 2, 3, 4]),
        ));
        let core = Rc::new(Core::new(0, shared, tx, rx, 1));
        let key = ChanKey {
            app: 0,
            name: ChannelName::parse("bench-channel").expect("valid name"),
        };
        let conns: Vec<Rc<Conn>> = (0..subscribers as u64)
            .map(|i| {
                let id = i + 1;
                let conn = Rc::new(Conn::detached(SocketId::new(7, id), 0, budget));
                core.add_local_sub(&key, conn.clone());
                conn
            })
            .collect();
        LocalFanout { core, key, conns }
    }

    /// `Core::deliver` of `frame` to every subscriber except `except` (a socket id
    /// `7.<n>`, n from 1). Returns the number of subscribers.
    #[inline]
    pub fn deliver(&self, frame: &Bytes, except: Option<u64>) -> usize {
        self.core.deliver(
            &self.key,
            frame,
            except.map(|n| SocketId::new(7, n)),
            Some(1),
        );
        self.conns.len()
    }

    /// Every writer runs once: queued frames are released and the writer parks again.
    /// Returns the frames released.
    pub fn drain_all(&self) -> usize {
        self.conns.iter().map(|c| c.drain_detached()).sum()
    }
}

static CONN_FUTURE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records the size of an established connection's task future (`conn::run`), taken with
/// `size_of_val` just before it is spawned.
pub(crate) fn note_conn_future(bytes: usize) {
    CONN_FUTURE_BYTES.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The largest established-connection task future spawned so far in this process, in bytes
/// (0 before the first connection): what every idle WebSocket connection's task holds beside
/// the runtime's task header.
pub fn conn_future_bytes() -> usize {
    CONN_FUTURE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_form_is_encoded_once_per_delivery_and_shared_by_every_stream() {
        let f = LocalFanout::new(3, 1 << 20);
        let streams: Vec<Rc<Conn>> = (100..104u64)
            .map(|id| {
                let mut c = Conn::detached(SocketId::new(7, id), 0, 1 << 20);
                c.sse = true;
                let c = Rc::new(c);
                f.core.add_local_sub(&f.key, c.clone());
                c
            })
            .collect();
        let frame = ringcast_protocol::pusher::event_frame("e", "bench-channel", "a\nb", None);
        f.core.deliver(&f.key, &frame, None, Some(42));
        // WebSocket subscribers: the frame itself.
        for c in &f.conns {
            let q = c.queued();
            assert_eq!(q.len(), 1);
            assert_eq!(q[0].as_ptr(), frame.as_ptr());
        }
        // Streams: one SSE encoding, the same buffer in every queue (no copy per stream).
        let first = streams[0].queued();
        assert_eq!(first.len(), 1);
        assert_eq!(&first[0][..], b"id: 42\nevent: e\ndata: a\ndata: b\n\n");
        for c in &streams {
            let q = c.queued();
            assert_eq!(q.len(), 1);
            assert_eq!(q[0].as_ptr(), first[0].as_ptr(), "shared, not copied");
        }
        // A frame that is not a numbered event (presence, counts) is not streamed.
        f.core.deliver(&f.key, &frame, None, None);
        assert_eq!(streams[0].queued().len(), 1);
        assert_eq!(f.conns[0].queued().len(), 2);
    }

    #[test]
    fn delivers_to_everyone_but_the_excluded_socket() {
        let f = LocalFanout::new(10, 1 << 20);
        let frame = Bytes::from_static(b"frame");
        f.deliver(&frame, None);
        assert_eq!(f.drain_all(), 10);
        f.deliver(&frame, Some(4));
        assert_eq!(f.drain_all(), 9);
    }
}
