//! Sans-IO Pusher Channels protocol 7: WebSocket framing, Pusher messages, channel names, socket
//! ids and signatures. No runtime, socket, clock or randomness: time and random numbers come in
//! as arguments.
//!
//! ```text
//!  client side (inbound)
//!  ---------------------
//!  bytes from socket --> FrameDecoder::handle_bytes --> poll_message --> Message::Text(Bytes)
//!      (HTTP head first: parse_request_head -> accept_response, parse_connect)     |
//!                                                                                  v
//!                                     parse_client_message(dialect, &text) -> ClientMessage
//!                                       (Subscribe / Unsubscribe / Ping / Signin / ClientEvent ...)
//!
//!  server side (outbound)
//!  ----------------------
//!  event_frame / client_event_frame / subscription_succeeded_frame / ... (*_frame encoders)
//!      --> one complete WebSocket text frame as `Bytes` (single allocation)
//!      --> Bytes::clone() shared by all subscribers (no per-subscriber copy)
//! ```
//!
//! # Decoder call order
//!
//! Feed every chunk read from the socket (any split, even one byte at a time) to
//! [`FrameDecoder::handle_bytes`], then call [`FrameDecoder::poll_message`] until it returns
//! `Ok(None)`. An `Err` is fatal: close the connection with [`WsError::close_code`]. When all input
//! is consumed and no partial frame is pending, the decoder holds no buffer.
//!
//! ```
//! use ringcast_protocol::{encode_client_frame_into, FrameDecoder, Message, OpCode, Role};
//!
//! let mut wire = Vec::new();
//! encode_client_frame_into(OpCode::Text, br#"{"event":"pusher:ping","data":{}}"#, [1, 2, 3, 4], &mut wire);
//! let mut dec = FrameDecoder::new(Role::Server, ringcast_protocol::limits::MAX_FRAME_BYTES);
//! dec.handle_bytes(&wire);
//! while let Some(msg) = dec.poll_message().unwrap() {
//!     assert!(matches!(msg, Message::Text(_)));
//! }
//! ```
//!
//! # Namespaces
//!
//! `ws::*` (handshake, framing) and `pusher::*` (messages) are also re-exported flat at the crate
//! root, except `ping_frame`/`pong_frame`, which exist in both: at the root they are the WebSocket
//! control frames (`ws::ping_frame(payload)`); the Pusher message twins are
//! `pusher::ping_frame(dialect)` / `pusher::pong_frame(dialect)`.
//!
//! # Client event data
//!
//! `ClientMessage::ClientEvent::data` is the exact byte span of the client's `data` value, taken
//! from the one JSON reading of the message (serde_json, borrowing from the frame: the message is
//! not copied), so it is relayed byte-for-byte as received. A field the server reads may appear
//! only once in an object (`MessageError::DuplicateField` otherwise): one rule, one reader.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client_addr;
pub mod close;
pub mod jwt;
pub mod limits;
pub mod pusher;
pub mod ws;

mod auth;
mod channel;
mod json;
mod rest;
mod socket_id;

pub use auth::{
    channel_auth, encrypted_shared_secret, hmac_hex, parse_channel_data, parse_user_data,
    signin_auth, verify_channel_auth, verify_signin, webhook_signature, AuthError, PresenceMember,
    UserData,
};
pub use channel::{
    validate_event_name, ChannelKind, ChannelName, ChannelNameError, SERVER_TO_USER_PREFIX,
};
pub use pusher::{
    cache_miss, cache_miss_frame, client_event, client_event_frame, connection_established,
    connection_established_frame, error, error_frame, event, event_frame, member_added,
    member_added_frame, member_removed, member_removed_frame, parse_client_message, ping, pong,
    signin_success, signin_success_frame, subscription_count, subscription_count_frame,
    subscription_error, subscription_error_frame, subscription_succeeded,
    subscription_succeeded_frame, watchlist_events, watchlist_events_frame, ClientMessage, Dialect,
    MessageError, PresenceSnapshot,
};
pub use rest::{
    body_md5_hex, sign_rest, string_to_sign, verify_rest, verify_rest_head, RestAuth, RestAuthError,
};
pub use socket_id::SocketId;
pub use ws::{
    accept_response, close_frame, encode_client_frame_into, encode_frame_into, parse_connect,
    parse_query, parse_request_head, ping_frame, pong_frame, text_frame, text_frame_with,
    text_frame_with_capacity, ConnectParams, FrameDecoder, HandshakeError, Message, OpCode,
    RequestHead, Role, WsError, MAX_CONTROL_PAYLOAD, MAX_SERVER_HEADER_LEN,
};
