//! Pusher protocol 7 messages (client parsing, server encoding).

mod message;

pub use message::{
    cache_miss, cache_miss_frame, client_event, client_event_frame, connection_established,
    connection_established_frame, error, error_frame, event, event_frame, member_added,
    member_added_frame, member_removed, member_removed_frame, parse_client_message, ping,
    ping_frame, pong, pong_frame, signin_success, signin_success_frame, subscription_count,
    subscription_count_frame, subscription_error, subscription_error_frame, subscription_succeeded,
    subscription_succeeded_frame, watchlist_events, watchlist_events_frame, ClientMessage, Dialect,
    MessageError, PresenceSnapshot,
};
