//! WebSocket layer: the HTTP upgrade handshake and RFC 6455 framing.

mod frame;
mod handshake;

pub use frame::{
    close_frame, encode_client_frame_into, encode_frame_into, ping_frame, pong_frame, text_frame,
    text_frame_with, text_frame_with_capacity, FrameDecoder, Message, OpCode, Role, WsError,
    MAX_CONTROL_PAYLOAD, MAX_SERVER_HEADER_LEN,
};
pub use handshake::{
    accept_response, parse_connect, parse_query, parse_request_head, ConnectParams, HandshakeError,
    RequestHead,
};
