//! The management plane's side of the bridge: change records published on the control
//! subject and full-state snapshots exchanged between nodes, so a change made through any
//! node's `/api` reaches every node (docs/management.md, "In a cluster").
//!
//! The records are opaque here: the management plane encodes them, applies them (last writer
//! wins by version, deletes as tombstones) and builds its snapshots; the bridge only carries
//! them, numbers them per node (a receiver that sees a gap asks for a snapshot) and asks its
//! peers for their state when its broker link comes up. Nothing here touches a data-plane
//! core: the bridge thread hands records to the management thread without waiting.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// An encoded batch of management records (the management plane's encoding).
pub type Records = Bytes;

/// What the bridge needs of the management plane. Both calls must return at once (they run
/// on the bridge thread): the work happens on the management thread.
pub trait ManagementPeer: Send + Sync + 'static {
    /// Records a peer published (one change, or one part of its snapshot).
    fn apply(&self, from: &str, records: Bytes);
    /// This node's whole management state as encoded parts of at most about `max_bytes`
    /// each; `reply` is called once, from any thread.
    fn snapshot(&self, max_bytes: usize, reply: Box<dyn FnOnce(Vec<Bytes>) + Send>);
}

/// Where the management plane puts its local changes for the bridge to publish. Cheap to
/// clone; never blocks (unbounded: management writes come at the rate of API calls).
#[derive(Clone)]
pub struct MgmtOutbox(mpsc::UnboundedSender<Bytes>);

impl MgmtOutbox {
    /// Queues one encoded change; false once the bridge is gone.
    pub fn send(&self, records: Bytes) -> bool {
        self.0.send(records).is_ok()
    }
}

/// The bridge's end: the peer and the queue of local changes.
pub struct MgmtPort {
    pub(crate) peer: Arc<dyn ManagementPeer>,
    pub(crate) rx: mpsc::UnboundedReceiver<Bytes>,
}

/// Connects a management plane to the bridge: the outbox goes to the management plane, the
/// port to [`crate::Bridge::start`].
pub fn channel(peer: Arc<dyn ManagementPeer>) -> (MgmtOutbox, MgmtPort) {
    let (tx, rx) = mpsc::unbounded_channel();
    (MgmtOutbox(tx), MgmtPort { peer, rx })
}
