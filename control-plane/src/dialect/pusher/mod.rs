//! The Pusher HTTP API (v1 paths under `/apps/{id}/`, Pusher signatures): publishing
//! (`events`) and the channel queries and `terminate_connections` (`channels`). It is the
//! reference dialect: the Relay one reuses its validation and only changes response shapes.

mod channels;
mod events;

pub use events::{counts_json, parse_event, EventSpec};
