//! The hash maps a core keeps, with `ahash` instead of the standard library's SipHash (several
//! times cheaper per lookup on the short keys used here; every event looks a channel up at
//! least twice: at its owner and on each subscriber core).
//!
//! - [`CoreMap`]: per-core tables whose keys clients choose (channel names, user ids): keyed
//!   with random per-process seeds (`ahash::RandomState`), so nobody can precompute collisions.
//! - [`ConnMap`]: a connection's own subscriptions: fixed keys and a zero-sized hasher (no
//!   16-32 bytes of seed in every connection); a client can only collide within its own map,
//!   which is bounded by `max_subscriptions_per_connection`.
//! - [`SubscriberMap`]: a channel's local subscribers by connection id (ids are the engine's,
//!   not the client's), in subscription order.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// A per-core table keyed by client-chosen data (random seeds per process).
pub(crate) type CoreMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A per-connection table (fixed keys, zero-sized hasher; bounded by the connection's limits).
pub(crate) type ConnMap<K, V> = HashMap<K, V, BuildHasherDefault<ahash::AHasher>>;

/// A channel's local subscribers on a core, by connection id, in subscription order.
pub(crate) type SubscriberMap<V> = indexmap::IndexMap<u64, V, ahash::RandomState>;
