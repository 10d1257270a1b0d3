//! WebSocket close codes: RFC 6455 codes and the Pusher protocol 7 codes (4000-4999).
//!
//! pusher-js reaction by range: 4000-4099 refused (no reconnect), 4100-4199 back off 1 s,
//! 4200-4299 reconnect immediately, >= 4300 refused. Never close with a 43xx code that is meant as a
//! soft error; send it as a `pusher:error` instead.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// Endpoint going away (e.g. server shutdown without the Pusher 4200 semantics).
pub const GOING_AWAY: u16 = 1001;
/// WebSocket protocol violation (bad framing, masking, opcodes...).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Unsupported data (e.g. binary messages, which Pusher does not use).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Invalid payload data (text message that is not valid UTF-8).
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation.
pub const POLICY: u16 = 1008;
/// Message too big for the configured limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Internal server error.
pub const INTERNAL: u16 = 1011;
/// Pusher: application key does not exist (refused, no reconnect).
pub const APP_NOT_FOUND: u16 = 4001;
/// Pusher: application disabled (refused).
pub const APP_DISABLED: u16 = 4003;
/// Pusher: application over its connection quota (refused).
pub const OVER_QUOTA: u16 = 4004;
/// Pusher: path not found (refused).
pub const PATH_NOT_FOUND: u16 = 4005;
/// Pusher: invalid version string format (refused).
pub const INVALID_VERSION: u16 = 4006;
/// Pusher: unsupported protocol version (refused).
pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
/// Pusher: no protocol version supplied (refused).
pub const NO_PROTOCOL: u16 = 4008;
/// Pusher: connection unauthorized (refused).
pub const UNAUTHORIZED: u16 = 4009;
/// Pusher: over capacity (pusher-js backs off 1 s and reconnects).
pub const OVER_CAPACITY: u16 = 4100;
/// Slow consumer: the outbound budget or the write deadline was exceeded. Same code as
/// [`OVER_CAPACITY`]: pusher-js backs off 1 s and reconnects.
pub const SLOW_CONSUMER: u16 = 4100;
/// Pusher: generic reconnect, used on server shutdown (pusher-js reconnects immediately).
pub const RECONNECT: u16 = 4200;
/// Pusher: pong reply not received (pusher-js reconnects immediately).
pub const PONG_TIMEOUT: u16 = 4201;
/// Pusher: closed after inactivity (pusher-js reconnects immediately).
pub const INACTIVITY: u16 = 4202;
/// Pusher: client event rate limit exceeded, sent as a `pusher:error` code. Ringcast also closes
/// a connection over its ping budget with it (the 4300-4399 range: reconnect after a back-off).
pub const CLIENT_EVENT_RATE: u16 = 4301;
/// Pusher: watchlist limit exceeded. Send as `pusher:error` code, never as a close code.
pub const WATCHLIST_LIMIT: u16 = 4302;

/// A short human-readable reason for a close / error code ("" is never returned; unknown codes
/// yield "Unknown error").
pub fn reason(code: u16) -> &'static str {
    match code {
        NORMAL => "Normal closure",
        GOING_AWAY => "Going away",
        PROTOCOL_ERROR => "Protocol error",
        UNSUPPORTED_DATA => "Unsupported data",
        INVALID_PAYLOAD => "Invalid payload data",
        POLICY => "Policy violation",
        MESSAGE_TOO_BIG => "Message too big",
        INTERNAL => "Internal server error",
        APP_NOT_FOUND => "Application does not exist",
        APP_DISABLED => "Application disabled",
        OVER_QUOTA => "Application is over connection quota",
        PATH_NOT_FOUND => "Path not found",
        INVALID_VERSION => "Invalid version string format",
        UNSUPPORTED_PROTOCOL => "Unsupported protocol version",
        NO_PROTOCOL => "No protocol version supplied",
        UNAUTHORIZED => "Connection is unauthorized",
        OVER_CAPACITY => "Over capacity",
        RECONNECT => "Server is shutting down, please reconnect",
        PONG_TIMEOUT => "Pong reply not received",
        INACTIVITY => "Closed after inactivity",
        CLIENT_EVENT_RATE => "Client event rate limit exceeded",
        WATCHLIST_LIMIT => "Watchlist limit exceeded",
        _ => "Unknown error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons() {
        let all = [
            NORMAL,
            GOING_AWAY,
            PROTOCOL_ERROR,
            UNSUPPORTED_DATA,
            INVALID_PAYLOAD,
            POLICY,
            MESSAGE_TOO_BIG,
            INTERNAL,
            APP_NOT_FOUND,
            APP_DISABLED,
            OVER_QUOTA,
            PATH_NOT_FOUND,
            INVALID_VERSION,
            UNSUPPORTED_PROTOCOL,
            NO_PROTOCOL,
            UNAUTHORIZED,
            OVER_CAPACITY,
            SLOW_CONSUMER,
            RECONNECT,
            PONG_TIMEOUT,
            INACTIVITY,
            CLIENT_EVENT_RATE,
            WATCHLIST_LIMIT,
        ];
        assert_eq!(
            all,
            [
                1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4001, 4003, 4004, 4005, 4006, 4007,
                4008, 4009, 4100, 4100, 4200, 4201, 4202, 4301, 4302
            ]
        );
        for c in all {
            assert_ne!(reason(c), "Unknown error", "{c}");
            assert!(reason(c).len() <= 123);
        }
        assert_eq!(reason(4201), "Pong reply not received");
        assert_eq!(reason(1234), "Unknown error");
    }
}
