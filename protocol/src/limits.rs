//! Protocol limits and defaults. Every value is a documented constant so the engine, the control
//! plane and the tests agree on one number.

/// Seconds of silence after which a client should ping (advertised in
/// `pusher:connection_established`; must be non-zero for pusher-js).
pub const ACTIVITY_TIMEOUT_SECS: u32 = 120;
/// Seconds to wait for any inbound frame after a server ping before closing with 4201.
pub const PONG_TIMEOUT_SECS: u32 = 30;
/// Maximum channel name length in bytes (NODE/PY SDKs allow 200; Pusher docs say 164).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;
/// Maximum event name length in bytes (no charset restriction).
pub const MAX_EVENT_NAME_LEN: usize = 200;
/// Maximum presence `user_id` length in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Maximum size of an event's `data` (HTTP API returns 413 beyond this).
pub const MAX_EVENT_DATA_BYTES: usize = 10 * 1024;
/// Maximum number of distinct users on one presence channel.
pub const MAX_PRESENCE_MEMBERS: usize = 100;
/// Maximum size of a presence member's `user_info` JSON text.
pub const MAX_USER_INFO_BYTES: usize = 1024;
/// Maximum size of an HTTP request head (request line + headers + CRLFCRLF).
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Default inbound WebSocket frame and message size limit.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Client events allowed per second per connection (beyond: `pusher:error` 4301).
pub const CLIENT_EVENTS_PER_SEC: u32 = 10;
/// Maximum watchlist size for `pusher:signin` (beyond: first 100 kept + `pusher:error` 4302).
pub const MAX_WATCHLIST: usize = 100;
/// Maximum channels in one HTTP trigger (`POST /events`, 400 beyond).
pub const MAX_CHANNELS_PER_TRIGGER: usize = 100;
/// Maximum events in one `POST /batch_events` (400 beyond).
pub const MAX_BATCH_EVENTS: usize = 10;
/// Allowed clock skew of the HTTP API `auth_timestamp`, in seconds.
pub const REST_TIMESTAMP_WINDOW_SECS: u64 = 600;
/// Outbound bytes queued per connection before it is closed as a slow consumer (4100).
pub const OUTBOUND_BUDGET_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        assert_eq!(ACTIVITY_TIMEOUT_SECS, 120);
        assert_eq!(PONG_TIMEOUT_SECS, 30);
        assert_eq!(
            (MAX_CHANNEL_NAME_LEN, MAX_EVENT_NAME_LEN, MAX_USER_ID_LEN),
            (200, 200, 128)
        );
        assert_eq!((MAX_EVENT_DATA_BYTES, MAX_USER_INFO_BYTES), (10_240, 1024));
        assert_eq!(
            (
                MAX_PRESENCE_MEMBERS,
                MAX_WATCHLIST,
                MAX_CHANNELS_PER_TRIGGER,
                MAX_BATCH_EVENTS
            ),
            (100, 100, 100, 10)
        );
        assert_eq!(
            (
                MAX_REQUEST_HEAD_BYTES,
                MAX_FRAME_BYTES,
                OUTBOUND_BUDGET_BYTES
            ),
            (8192, 65_536, 1_048_576)
        );
        assert_eq!(
            (CLIENT_EVENTS_PER_SEC, REST_TIMESTAMP_WINDOW_SECS),
            (10, 600)
        );
    }
}
