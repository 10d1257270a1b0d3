//! Ringcast's control plane: the HTTP API dialects (`dialect::*`: Pusher, Relay, ...) over one
//! shared request pipeline (`api`), request
//! authentication, `/health`, `/stats` and Prometheus `/metrics`. It reaches the engine only
//! through [`ringcast_engine::EngineHandle`].
//!
//! ```text
//!  public port (engine core k)          --api-listen ADDR (own thread + monoio runtime)
//!  non-upgrade request -> HttpService        accept -> ApiServer
//!              \                               /
//!               http::serve  (keep-alive loop; head 8 KiB -> 431, body limit -> 413,
//!               |             head/body deadlines -> 408, no chunked -> 411)
//!               v
//!         RequestReader (httparse) --> Request
//!               |
//!               v
//!         api::route(method, path) --404/405-->  {"error": "...", "code": "..."}
//!               |
//!         app by id (404) -> auth::authenticate_app (Pusher signature | Bearer; 401)
//!               |
//!         handlers: events / batch_events / channels / users / terminate / relay::server_auth
//!               |  EngineHandle::publish / channels / channel / presence_users / terminate_user
//!               v
//!         Response (Pusher shape, or Relay shape for Bearer requests)
//!               + metrics::RestMetrics (per-thread shards, summed on scrape)
//! ```
//!
//! Nothing here blocks a core: handlers only await the engine's reply channels, and every
//! wait on the client has a deadline.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod dialect;
pub mod error;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod service;
pub mod stats;
pub mod webhook;

pub use api::{system_clock, Api, Clock, Endpoint, Scope};
pub use config::{defaults, ApiConfig};
pub use error::ApiError;
pub use service::{ApiServer, ControlPlane};
