//! Ringcast scale-out: many nodes as one cluster over an existing broker (Redis, Redis
//! Cluster or NATS). The engine exposes a seam ([`ringcast_engine::ClusterLink`]); this crate
//! is the other side of it: the bridge thread with its own tokio runtime, the broker clients,
//! and the wire encoding. Design and fault behaviour: docs/scale-out.md.

pub mod bridge;
pub mod broker;
pub mod config;
pub mod management;
mod nats;
mod redis;
pub mod wire;

pub use bridge::{link_for, Bridge};
pub use config::{Backend, ClusterConfig, ClusterOverrides};
pub use management::{ManagementPeer, MgmtOutbox, MgmtPort};
