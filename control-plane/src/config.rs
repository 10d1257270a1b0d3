//! [`ApiConfig`]: the control plane's own limits and timeouts (per-app limits such as
//! `max_event_bytes` and `server_auth_channels` live in the engine's app config). Every
//! default is documented once, in [`defaults`].

use std::time::Duration;

use ringcast_protocol::{close, limits};

use crate::http::{Limits, Timeouts};

/// Every default of [`ApiConfig`].
pub mod defaults {
    use super::{close, limits};

    /// Request line plus headers (431 past it).
    pub const MAX_HEAD_BYTES: usize = limits::MAX_REQUEST_HEAD_BYTES;
    /// Request body (413 past it, decided from `Content-Length`). Ten full batches of ten
    /// 10 KB events fit easily.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// Channels of one `POST /events` (400 past it).
    pub const MAX_CHANNELS_PER_EVENT: usize = limits::MAX_CHANNELS_PER_TRIGGER;
    /// Items of one `POST /batch_events` or seed `POST /events/batch` (400 past it).
    pub const MAX_BATCH_EVENTS: usize = limits::MAX_BATCH_EVENTS;
    /// From the first byte of a request head to its end (408 past it): slow clients.
    pub const HEAD_TIMEOUT_MS: u64 = 10_000;
    /// From the end of the head to the end of the body (408 past it).
    pub const BODY_TIMEOUT_MS: u64 = 30_000;
    /// Keep-alive: silence allowed between two requests before the server closes.
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    /// Longest time one request may spend in its handler (503 past it).
    pub const HANDLER_TIMEOUT_MS: u64 = 30_000;
    /// Longest time writing one response may take (the connection is dropped past it).
    pub const WRITE_TIMEOUT_MS: u64 = 10_000;
    /// Close code for `terminate_connections`: 4009 "connection unauthorized". pusher-js
    /// treats 4000-4099 as `refused` and does not reconnect by itself, so a terminated
    /// (kicked, banned, logged-out) user stays disconnected until the app calls
    /// `pusher.connect()` again; Soketi sends the same code. See docs/api.md.
    pub const TERMINATE_CLOSE_CODE: u16 = close::UNAUTHORIZED;
}

/// Limits and timeouts of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_channels_per_event: usize,
    pub max_batch_events: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub handler_timeout: Duration,
    pub write_timeout: Duration,
    pub terminate_close_code: u16,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            max_head_bytes: defaults::MAX_HEAD_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_channels_per_event: defaults::MAX_CHANNELS_PER_EVENT,
            max_batch_events: defaults::MAX_BATCH_EVENTS,
            head_timeout: Duration::from_millis(defaults::HEAD_TIMEOUT_MS),
            body_timeout: Duration::from_millis(defaults::BODY_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(defaults::IDLE_TIMEOUT_MS),
            handler_timeout: Duration::from_millis(defaults::HANDLER_TIMEOUT_MS),
            write_timeout: Duration::from_millis(defaults::WRITE_TIMEOUT_MS),
            terminate_close_code: defaults::TERMINATE_CLOSE_CODE,
        }
    }
}

impl ApiConfig {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.max_head_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            head: self.head_timeout,
            body: self.body_timeout,
            idle: self.idle_timeout,
            handler: self.handler_timeout,
            write: self.write_timeout,
        }
    }
}
