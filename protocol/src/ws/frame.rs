//! RFC 6455 framing: a resumable sans-IO decoder and single-allocation encoders.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Buf, Bytes};

use crate::close;

/// A complete WebSocket message (data messages are reassembled from their fragments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Text message; the payload is validated UTF-8.
    Text(Bytes),
    /// Binary message.
    Binary(Bytes),
    /// Ping control frame (payload <= 125 bytes).
    Ping(Bytes),
    /// Pong control frame (payload <= 125 bytes).
    Pong(Bytes),
    /// Close control frame: status code (if any) and UTF-8 reason.
    Close(Option<u16>, String),
}

/// Which side of the connection the decoder is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Decodes masked client frames; unmasked frames are a protocol error.
    Server,
    /// Decodes unmasked server frames; masked frames are a protocol error.
    Client,
}

/// A fatal decoding error; the connection should be closed with [`WsError::close_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsError {
    /// Framing rule violated (reserved bits/opcodes, masking, control frame rules, fragmentation).
    Protocol(&'static str),
    /// A text message or close reason is not valid UTF-8.
    InvalidUtf8,
    /// A frame or message exceeds the configured maximum size.
    TooBig,
}

impl WsError {
    /// The close code to send: 1002 / 1007 / 1009.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => close::INVALID_PAYLOAD,
            WsError::TooBig => close::MESSAGE_TOO_BIG,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            WsError::InvalidUtf8 => f.write_str("invalid UTF-8 in WebSocket text"),
            WsError::TooBig => f.write_str("WebSocket message too big"),
        }
    }
}

impl std::error::Error for WsError {}

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0
    Continuation,
    /// 0x1
    Text,
    /// 0x2
    Binary,
    /// 0x8
    Close,
    /// 0x9
    Ping,
    /// 0xA
    Pong,
}

impl OpCode {
    /// The 4-bit opcode value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }
}

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest header of an unmasked (server) frame.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// State of the frame whose payload is being received.
#[derive(Debug)]
struct FrameState {
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    remaining: usize,
    /// Payload bytes of this frame already unmasked (mask key rotation offset).
    done: usize,
}

/// Resumable WebSocket decoder: feed any split of the byte stream with
/// [`handle_bytes`](FrameDecoder::handle_bytes), then call [`poll_message`](FrameDecoder::poll_message)
/// until it returns `Ok(None)`.
///
/// Bytes are processed as they arrive: headers are validated (including the size limit) before
/// any payload byte is stored, payloads are unmasked straight into the message buffer, and a
/// finished message hands that buffer over as [`Bytes`] without copying. When no partial frame
/// or message is pending, the decoder holds no heap allocation.
///
/// After an error, further input is ignored and `poll_message` keeps returning the error (messages
/// completed before the error are returned first). After a Close frame, further input is ignored.
#[derive(Debug)]
pub struct FrameDecoder {
    role: Role,
    max_message: usize,
    hdr: [u8; 14],
    hdr_len: usize,
    frame: Option<FrameState>,
    /// Opcode (text/binary) of the data message being assembled, if any.
    msg_opcode: Option<u8>,
    msg: Vec<u8>,
    ctrl: Vec<u8>,
    queue: VecDeque<Message>,
    error: Option<WsError>,
    closed: bool,
}

impl FrameDecoder {
    /// A decoder for `role` accepting frames and messages of at most `max_message` payload bytes.
    pub fn new(role: Role, max_message: usize) -> Self {
        FrameDecoder {
            role,
            max_message,
            hdr: [0; 14],
            hdr_len: 0,
            frame: None,
            msg_opcode: None,
            msg: Vec::new(),
            ctrl: Vec::new(),
            queue: VecDeque::new(),
            error: None,
            closed: false,
        }
    }

    /// Consumes `data` (any split of the stream). Completed messages are queued for
    /// [`poll_message`](FrameDecoder::poll_message).
    pub fn handle_bytes(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() && !self.closed {
            if self.frame.is_none() {
                let used = self.read_header(data);
                data = &data[used..];
            } else {
                let used = self.read_payload(data);
                data = &data[used..];
            }
        }
    }

    /// Next complete message. Call until it returns `Ok(None)` after every `handle_bytes`.
    pub fn poll_message(&mut self) -> Result<Option<Message>, WsError> {
        if let Some(m) = self.queue.pop_front() {
            if self.queue.is_empty() {
                // Release the queue's allocation: idle connections hold no buffer.
                self.queue = VecDeque::new();
            }
            return Ok(Some(m));
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Bytes currently held: partial header, partial frame/message payloads and queued messages.
    pub fn buffered_len(&self) -> usize {
        let queued: usize = self
            .queue
            .iter()
            .map(|m| match m {
                Message::Text(b) | Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => {
                    b.len()
                }
                Message::Close(_, r) => r.len() + 2,
            })
            .sum();
        self.hdr_len + self.msg.len() + self.ctrl.len() + queued
    }

    /// Heap bytes reserved by the decoder's internal buffers (0 when idle).
    pub fn allocated_len(&self) -> usize {
        self.msg.capacity()
            + self.ctrl.capacity()
            + self.queue.capacity() * std::mem::size_of::<Message>()
    }

    /// True when nothing is pending: no partial header, frame or fragmented message, no queued
    /// message, no error and no Close seen. An idle decoder is equivalent to a new one, so a
    /// caller may drop it and start afresh with the next bytes (an idle connection then keeps
    /// no decoder at all).
    pub fn is_idle(&self) -> bool {
        self.hdr_len == 0
            && self.frame.is_none()
            && self.msg_opcode.is_none()
            && self.msg.is_empty()
            && self.ctrl.is_empty()
            && self.queue.is_empty()
            && self.error.is_none()
            && !self.closed
    }

    /// True once a Close frame has been decoded (later input is ignored).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn fail(&mut self, e: WsError) {
        self.error = Some(e);
        self.frame = None;
        self.msg = Vec::new();
        self.ctrl = Vec::new();
        self.hdr_len = 0;
    }

    /// Accumulates header bytes; returns how many bytes of `data` were used.
    fn read_header(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        let entry_len = self.hdr_len;
        if self.hdr_len < 2 {
            let n = (2 - self.hdr_len).min(data.len());
            self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[..n]);
            self.hdr_len += n;
            used += n;
            if self.hdr_len < 2 {
                return used;
            }
            if let Err(e) = self.check_first_bytes() {
                self.fail(e);
                return used;
            }
        }
        let total = header_total(self.hdr[1]);
        let n = (total - self.hdr_len).min(data.len() - used);
        self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&data[used..used + n]);
        self.hdr_len += n;
        used += n;
        // Enforce the size limit as soon as the length is known, before the mask key and before
        // any payload byte is buffered.
        let len_end = len_field_end(self.hdr[1]);
        if entry_len < len_end && self.hdr_len >= len_end {
            if let Err(e) = self.check_len() {
                self.fail(e);
                return used;
            }
        }
        if self.hdr_len < total {
            return used;
        }
        self.hdr_len = 0;
        match self.parse_header() {
            Ok(frame) => {
                let empty = frame.remaining == 0;
                self.frame = Some(frame);
                if empty {
                    self.finish_frame();
                }
            }
            Err(e) => self.fail(e),
        }
        used
    }

    fn check_first_bytes(&self) -> Result<(), WsError> {
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        match b0 & 0x0F {
            OP_CONT => {
                if self.msg_opcode.is_none() {
                    return Err(WsError::Protocol("continuation frame without a message"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.msg_opcode.is_some() {
                    return Err(WsError::Protocol(
                        "new data frame inside a fragmented message",
                    ));
                }
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(WsError::Protocol("fragmented control frame"));
                }
                if usize::from(len7) > MAX_CONTROL_PAYLOAD {
                    return Err(WsError::Protocol("control frame payload too long"));
                }
            }
            _ => return Err(WsError::Protocol("reserved opcode")),
        }
        match (self.role, masked) {
            (Role::Server, false) => Err(WsError::Protocol("unmasked client frame")),
            (Role::Client, true) => Err(WsError::Protocol("masked server frame")),
            _ => Ok(()),
        }
    }

    /// The payload length announced by the (complete) length field.
    fn announced_len(&self) -> u64 {
        let h = &self.hdr;
        match h[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        }
    }

    fn check_len(&self) -> Result<(), WsError> {
        let len = self.announced_len();
        if len >> 63 != 0 {
            return Err(WsError::Protocol("invalid payload length"));
        }
        if self.hdr[0] & 0x0F < OP_CLOSE {
            let room = self.max_message.saturating_sub(self.msg.len()) as u64;
            if len > room {
                return Err(WsError::TooBig);
            }
        }
        Ok(())
    }

    fn parse_header(&mut self) -> Result<FrameState, WsError> {
        let h = &self.hdr;
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0F;
        let masked = h[1] & 0x80 != 0;
        self.check_len()?;
        let len = self.announced_len();
        let mut at = len_field_end(h[1]);
        let mask = if masked {
            let m = [h[at], h[at + 1], h[at + 2], h[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        debug_assert_eq!(at, header_total(h[1]));
        if opcode == OP_TEXT || opcode == OP_BINARY {
            self.msg_opcode = Some(opcode);
        }
        // Data frames are bounded by max_message (checked above), control frames by 125.
        let remaining = usize::try_from(len).map_err(|_| WsError::TooBig)?;
        Ok(FrameState {
            opcode,
            fin,
            mask,
            remaining,
            done: 0,
        })
    }

    /// Copies (and unmasks) payload bytes; returns how many bytes of `data` were used.
    fn read_payload(&mut self, data: &[u8]) -> usize {
        let Some(frame) = self.frame.as_mut() else {
            return 0;
        };
        let n = frame.remaining.min(data.len());
        let dest = if frame.opcode >= OP_CLOSE {
            &mut self.ctrl
        } else {
            &mut self.msg
        };
        if n == frame.remaining && frame.fin && dest.is_empty() {
            // Whole (final) payload available at once: allocate exactly, so the Bytes handed out
            // later owns a tight buffer.
            dest.reserve_exact(n);
        }
        let start = dest.len();
        dest.extend_from_slice(&data[..n]);
        if let Some(mask) = frame.mask {
            apply_mask(&mut dest[start..], mask, frame.done);
        }
        frame.done += n;
        frame.remaining -= n;
        if frame.remaining == 0 {
            self.finish_frame();
        }
        n
    }

    fn finish_frame(&mut self) {
        let Some(frame) = self.frame.take() else {
            return;
        };
        match frame.opcode {
            OP_PING => {
                let p = std::mem::take(&mut self.ctrl);
                self.queue.push_back(Message::Ping(Bytes::from(p)));
            }
            OP_PONG => {
                let p = std::mem::take(&mut self.ctrl);
                self.queue.push_back(Message::Pong(Bytes::from(p)));
            }
            OP_CLOSE => {
                let p = std::mem::take(&mut self.ctrl);
                match parse_close_payload(&p) {
                    Ok(m) => {
                        self.queue.push_back(m);
                        self.closed = true;
                        self.msg = Vec::new();
                        self.msg_opcode = None;
                    }
                    Err(e) => self.fail(e),
                }
            }
            _ => {
                if !frame.fin {
                    return;
                }
                let payload = std::mem::take(&mut self.msg);
                match self.msg_opcode.take() {
                    Some(OP_TEXT) => {
                        if std::str::from_utf8(&payload).is_err() {
                            self.fail(WsError::InvalidUtf8);
                            return;
                        }
                        self.queue.push_back(Message::Text(Bytes::from(payload)));
                    }
                    _ => self.queue.push_back(Message::Binary(Bytes::from(payload))),
                }
            }
        }
    }
}

/// End of the length field (2, 4 or 10) implied by the second header byte.
fn len_field_end(b1: u8) -> usize {
    match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Header size implied by the second header byte.
fn header_total(b1: u8) -> usize {
    let base = match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    if b1 & 0x80 != 0 {
        base + 4
    } else {
        base
    }
}

/// Close codes a peer may send (RFC 6455 §7.4, IANA registry, 3000-4999 application codes).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn parse_close_payload(p: &[u8]) -> Result<Message, WsError> {
    match p.len() {
        0 => Ok(Message::Close(None, String::new())),
        1 => Err(WsError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&p[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close(Some(code), reason.to_owned()))
        }
    }
}

/// XORs `buf` with the mask key, starting at key position `offset` (payload bytes already done).
fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let m = [
        mask[offset & 3],
        mask[(offset + 1) & 3],
        mask[(offset + 2) & 3],
        mask[(offset + 3) & 3],
    ];
    let m64 = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ m64).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

/// Header length (without mask key) for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

fn write_header(out: &mut Vec<u8>, b0: u8, mask_bit: u8, len: usize) {
    out.push(b0);
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends one server frame (FIN set, unmasked).
pub fn encode_frame_into(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(header_len(payload.len()) + payload.len());
    write_header(out, 0x80 | opcode.bits(), 0, payload.len());
    out.extend_from_slice(payload);
}

/// Appends one client frame (FIN set), masked with `mask` (the caller supplies randomness).
pub fn encode_client_frame_into(opcode: OpCode, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(header_len(payload.len()) + 4 + payload.len());
    write_header(out, 0x80 | opcode.bits(), 0x80, payload.len());
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// One complete unmasked text frame built in a single allocation: `write` appends the payload to
/// a buffer that starts with [`MAX_SERVER_HEADER_LEN`] reserved bytes; the header is then written
/// right-aligned into the reserved space and the returned [`Bytes`] starts at the header (no copy
/// of the payload). The initial capacity is 128 bytes; use [`text_frame_with_capacity`] when the
/// payload size is known so that exactly one allocation happens.
pub fn text_frame_with(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    text_frame_with_capacity(128 - MAX_SERVER_HEADER_LEN, write)
}

/// [`text_frame_with`] with an explicit payload capacity hint (exact size: one allocation, and the
/// buffer is handed to [`Bytes`] without reallocation).
pub fn text_frame_with_capacity(
    payload_capacity: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> Bytes {
    let mut v = Vec::with_capacity(MAX_SERVER_HEADER_LEN + payload_capacity);
    v.resize(MAX_SERVER_HEADER_LEN, 0);
    write(&mut v);
    let len = v.len() - MAX_SERVER_HEADER_LEN;
    let start = MAX_SERVER_HEADER_LEN - header_len(len);
    let hl = MAX_SERVER_HEADER_LEN - start;
    let mut header = [0u8; MAX_SERVER_HEADER_LEN];
    header[0] = 0x80 | OP_TEXT;
    if len < 126 {
        header[1] = len as u8;
    } else if len <= 0xFFFF {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
    }
    v[start..MAX_SERVER_HEADER_LEN].copy_from_slice(&header[..hl]);
    let mut b = Bytes::from(v);
    // `advance` moves the start without cloning (no shared-header allocation).
    b.advance(start);
    b
}

/// One complete unmasked text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    text_frame_with_capacity(payload.len(), |v| v.extend_from_slice(payload))
}

fn control_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let p = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut v = Vec::with_capacity(2 + p.len());
    write_header(&mut v, 0x80 | opcode.bits(), 0, p.len());
    v.extend_from_slice(p);
    Bytes::from(v)
}

/// A close frame with `code` and `reason` (reason truncated at a char boundary to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    control_frame(OpCode::Close, &p)
}

/// A ping frame (payload truncated to 125 bytes).
pub fn ping_frame(payload: &[u8]) -> Bytes {
    control_frame(OpCode::Ping, payload)
}

/// A pong frame (payload truncated to 125 bytes).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    control_frame(OpCode::Pong, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_client_frame_into(op, payload, MASK, &mut v);
        v
    }

    /// Client frame with explicit FIN flag and opcode bits (for fragmentation and bad frames).
    fn raw_client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_header(&mut v, b0, 0x80, payload.len());
        v.extend_from_slice(&MASK);
        let start = v.len();
        v.extend_from_slice(payload);
        apply_mask(&mut v[start..], MASK, 0);
        v
    }

    fn drain(d: &mut FrameDecoder) -> Result<Vec<Message>, WsError> {
        let mut out = Vec::new();
        while let Some(m) = d.poll_message()? {
            out.push(m);
        }
        Ok(out)
    }

    fn decode_chunks(role: Role, max: usize, chunks: &[&[u8]]) -> (Vec<Message>, Option<WsError>) {
        let mut d = FrameDecoder::new(role, max);
        let mut msgs = Vec::new();
        for c in chunks {
            d.handle_bytes(c);
            loop {
                match d.poll_message() {
                    Ok(Some(m)) => msgs.push(m),
                    Ok(None) => break,
                    Err(e) => return (msgs, Some(e)),
                }
            }
        }
        (msgs, None)
    }

    #[test]
    fn idle_only_between_whole_messages() {
        let mut d = FrameDecoder::new(Role::Server, 1 << 20);
        assert!(d.is_idle(), "new");
        let wire = [
            raw_client(0x01, b"frag"), // text, not FIN: a message is open
            raw_client(0x80, b"ment"), // FIN continuation
        ]
        .concat();
        for (i, b) in wire.iter().enumerate() {
            d.handle_bytes(&[*b]);
            if i + 1 < wire.len() {
                assert!(!d.is_idle(), "mid-message after byte {i}");
                assert!(d.poll_message().unwrap().is_none());
            }
        }
        assert!(!d.is_idle(), "a completed message is still queued");
        assert_eq!(
            drain(&mut d).unwrap(),
            vec![Message::Text(Bytes::from_static(b"fragment"))]
        );
        assert!(d.is_idle(), "drained");
        d.handle_bytes(&client(OpCode::Close, &[]));
        drain(&mut d).unwrap();
        assert!(!d.is_idle(), "closed is not idle (later input is ignored)");
        let mut e = FrameDecoder::new(Role::Server, 1 << 20);
        e.handle_bytes(&[0x81, 0x05]); // unmasked client frame: an error
        assert!(!e.is_idle(), "an error is not idle");
    }

    /// Decodes `wire` whole, split at every byte boundary into two parts, split into three parts
    /// around every position, and byte by byte; all must give `expected`.
    fn check_all_splits(role: Role, wire: &[u8], expected: &[Message]) {
        let (m, e) = decode_chunks(role, 1 << 20, &[wire]);
        assert_eq!(e, None);
        assert_eq!(m, expected, "whole");
        for i in 0..=wire.len() {
            let (m, e) = decode_chunks(role, 1 << 20, &[&wire[..i], &wire[i..]]);
            assert_eq!(e, None, "split at {i}");
            assert_eq!(m, expected, "split at {i}");
        }
        for i in 0..wire.len() {
            let j = (i + 3).min(wire.len());
            let (m, _) = decode_chunks(role, 1 << 20, &[&wire[..i], &wire[i..j], &wire[j..]]);
            assert_eq!(m, expected, "split at {i},{j}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let (m, e) = decode_chunks(role, 1 << 20, &bytes);
        assert_eq!(e, None);
        assert_eq!(m, expected, "byte by byte");
    }

    fn text(s: &str) -> Message {
        Message::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn single_text_frame_every_split() {
        let payload = r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#;
        check_all_splits(
            Role::Server,
            &client(OpCode::Text, payload.as_bytes()),
            &[text(payload)],
        );
    }

    #[test]
    fn medium_and_large_lengths_every_split() {
        let p200 = "x".repeat(200);
        check_all_splits(
            Role::Server,
            &client(OpCode::Text, p200.as_bytes()),
            &[text(&p200)],
        );
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let wire = client(OpCode::Binary, &big);
        assert_eq!(wire[1], 0x80 | 127);
        let expected = [Message::Binary(Bytes::from(big))];
        let (m, e) = decode_chunks(Role::Server, 1 << 20, &[&wire]);
        assert_eq!((m.as_slice(), e), (&expected[..], None));
        for i in [1, 2, 5, 9, 13, 14, 15, 1000, 65_537, wire.len() - 1] {
            let (m, e) = decode_chunks(Role::Server, 1 << 20, &[&wire[..i], &wire[i..]]);
            assert_eq!((m.as_slice(), e), (&expected[..], None), "split at {i}");
        }
        let chunks: Vec<&[u8]> = wire.chunks(7).collect();
        let (m, e) = decode_chunks(Role::Server, 1 << 20, &chunks);
        assert_eq!((m.as_slice(), e), (&expected[..], None));
    }

    #[test]
    fn fragmented_message_with_ping_between_fragments_every_split() {
        let mut wire = raw_client(OP_TEXT, b"Hello, ");
        wire.extend(raw_client(0x80 | OP_PING, b"are you there"));
        wire.extend(raw_client(OP_CONT, b"frag"));
        wire.extend(raw_client(0x80 | OP_PONG, b""));
        wire.extend(raw_client(0x80 | OP_CONT, b"mented world"));
        let expected = [
            Message::Ping(Bytes::from_static(b"are you there")),
            Message::Pong(Bytes::new()),
            text("Hello, fragmented world"),
        ];
        check_all_splits(Role::Server, &wire, &expected);
    }

    #[test]
    fn multibyte_char_split_across_fragments() {
        let s = "prix: 10€ 🎉";
        let bytes = s.as_bytes();
        let euro = s.find('€').unwrap() + 1; // inside the 3-byte euro sign
        let party = s.find('🎉').unwrap() + 2; // inside the 4-byte emoji
        let mut wire = raw_client(OP_TEXT, &bytes[..euro]);
        wire.extend(raw_client(OP_CONT, &bytes[euro..party]));
        wire.extend(raw_client(0x80 | OP_CONT, &bytes[party..]));
        check_all_splits(Role::Server, &wire, &[text(s)]);
    }

    #[test]
    fn close_frame_every_split_and_input_after_close_ignored() {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        let wire = client(OpCode::Close, &payload);
        check_all_splits(
            Role::Server,
            &wire,
            &[Message::Close(Some(1000), "bye ✓".into())],
        );

        let mut d = FrameDecoder::new(Role::Server, 1024);
        let mut both = wire.clone();
        both.extend(client(OpCode::Text, b"ignored"));
        d.handle_bytes(&both);
        assert_eq!(
            drain(&mut d).unwrap(),
            vec![Message::Close(Some(1000), "bye ✓".into())]
        );
        assert!(d.is_closed());
        d.handle_bytes(&client(OpCode::Text, b"ignored too"));
        assert_eq!(drain(&mut d).unwrap(), vec![]);
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn empty_close_and_close_codes() {
        let (m, e) = decode_chunks(Role::Server, 64, &[&client(OpCode::Close, b"")]);
        assert_eq!((m, e), (vec![Message::Close(None, String::new())], None));
        for ok in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1014, 3000, 4001, 4999,
        ] {
            let (m, e) = decode_chunks(
                Role::Server,
                64,
                &[&client(OpCode::Close, &ok.to_be_bytes())],
            );
            assert_eq!(
                (m, e),
                (vec![Message::Close(Some(ok), String::new())], None),
                "{ok}"
            );
        }
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let (_, e) = decode_chunks(
                Role::Server,
                64,
                &[&client(OpCode::Close, &bad.to_be_bytes())],
            );
            assert_eq!(e, Some(WsError::Protocol("invalid close code")), "{bad}");
        }
        let (_, e) = decode_chunks(Role::Server, 64, &[&client(OpCode::Close, &[3])]);
        assert!(matches!(e, Some(WsError::Protocol(_))));
        let (_, e) = decode_chunks(
            Role::Server,
            64,
            &[&client(OpCode::Close, &[0x03, 0xe8, 0xff, 0xfe])],
        );
        assert_eq!(e, Some(WsError::InvalidUtf8));
    }

    #[test]
    fn masking_rules_per_role() {
        let mut unmasked = Vec::new();
        encode_frame_into(OpCode::Text, b"hi", &mut unmasked);
        let (_, e) = decode_chunks(Role::Server, 64, &[&unmasked]);
        assert_eq!(e, Some(WsError::Protocol("unmasked client frame")));
        let (m, e) = decode_chunks(Role::Client, 64, &[&unmasked]);
        assert_eq!((m, e), (vec![text("hi")], None));
        let (_, e) = decode_chunks(Role::Client, 64, &[&client(OpCode::Text, b"hi")]);
        assert_eq!(e, Some(WsError::Protocol("masked server frame")));
        assert_eq!(WsError::Protocol("x").close_code(), 1002);
    }

    #[test]
    fn masking_matches_rfc_example() {
        // RFC 6455 §5.7: masked "Hello" with key 37 fa 21 3d.
        let wire = client(OpCode::Text, b"Hello");
        assert_eq!(
            wire,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let mut unmasked = Vec::new();
        encode_frame_into(OpCode::Text, b"Hello", &mut unmasked);
        assert_eq!(unmasked, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // Masking is an involution at every offset.
        let data: Vec<u8> = (0..=255).collect();
        for off in 0..8 {
            let mut d = data.clone();
            apply_mask(&mut d, MASK, off);
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[(i + off) % 4])
                .collect();
            assert_eq!(d, expected);
        }
    }

    #[test]
    fn protocol_violations() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (raw_client(0x80 | 0x40 | OP_TEXT, b"x"), "reserved bits set"),
            (raw_client(0x80 | 0x10 | OP_TEXT, b"x"), "reserved bits set"),
            (raw_client(0x80 | 0x3, b"x"), "reserved opcode"),
            (raw_client(0x80 | 0xB, b"x"), "reserved opcode"),
            (raw_client(OP_PING, b"x"), "fragmented control frame"),
            (
                raw_client(0x80 | OP_PING, &[0; 126]),
                "control frame payload too long",
            ),
            (
                raw_client(0x80 | OP_CONT, b"x"),
                "continuation frame without a message",
            ),
            (
                [raw_client(OP_TEXT, b"a"), raw_client(0x80 | OP_TEXT, b"b")].concat(),
                "new data frame inside a fragmented message",
            ),
        ];
        for (wire, why) in cases {
            let (m, e) = decode_chunks(Role::Server, 1024, &[&wire]);
            assert_eq!(m, vec![]);
            assert_eq!(e, Some(WsError::Protocol(why)));
        }
        // 64-bit length with the most significant bit set.
        let mut wire = vec![0x82, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 63).to_be_bytes());
        wire.extend_from_slice(&MASK);
        let (_, e) = decode_chunks(Role::Server, usize::MAX, &[&wire]);
        assert_eq!(e, Some(WsError::Protocol("invalid payload length")));
    }

    #[test]
    fn invalid_utf8_text() {
        let (_, e) = decode_chunks(Role::Server, 64, &[&client(OpCode::Text, &[b'a', 0xc3])]);
        assert_eq!(e, Some(WsError::InvalidUtf8));
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        // Binary messages are not validated.
        let (m, e) = decode_chunks(Role::Server, 64, &[&client(OpCode::Binary, &[0xff])]);
        assert_eq!(
            (m, e),
            (vec![Message::Binary(Bytes::from_static(&[0xff]))], None)
        );
    }

    #[test]
    fn too_big_detected_from_header_before_payload() {
        let wire = client(OpCode::Text, &[b'a'; 101]);
        let mut d = FrameDecoder::new(Role::Server, 100);
        d.handle_bytes(&wire[..2]);
        assert_eq!(d.poll_message(), Err(WsError::TooBig));
        assert_eq!(d.buffered_len(), 0);
        assert_eq!(WsError::TooBig.close_code(), 1009);
        // 16-bit length header: rejected as soon as the extended length is known.
        let wire = client(OpCode::Binary, &[0; 70_000]);
        let mut d = FrameDecoder::new(Role::Server, 65_536);
        d.handle_bytes(&wire[..10]);
        assert_eq!(d.poll_message(), Err(WsError::TooBig));
        assert_eq!(d.allocated_len(), 0);
        // Exactly at the limit is fine.
        let (m, e) = decode_chunks(Role::Server, 100, &[&client(OpCode::Text, &[b'a'; 100])]);
        assert_eq!((m.len(), e), (1, None));
    }

    #[test]
    fn too_big_across_fragments() {
        let mut wire = raw_client(OP_TEXT, &[b'a'; 60]);
        wire.extend(raw_client(0x80 | OP_CONT, &[b'a'; 41]));
        let (m, e) = decode_chunks(Role::Server, 100, &[&wire]);
        assert_eq!((m, e), (vec![], Some(WsError::TooBig)));
        let mut wire = raw_client(OP_TEXT, &[b'a'; 60]);
        wire.extend(raw_client(0x80 | OP_CONT, &[b'a'; 40]));
        let (m, e) = decode_chunks(Role::Server, 100, &[&wire]);
        assert_eq!((m.len(), e), (1, None));
    }

    #[test]
    fn error_is_sticky_and_earlier_messages_come_first() {
        let mut wire = client(OpCode::Text, b"first");
        wire.extend(raw_client(0x80 | 0x3, b"x"));
        let mut d = FrameDecoder::new(Role::Server, 100);
        d.handle_bytes(&wire);
        assert_eq!(d.poll_message(), Ok(Some(text("first"))));
        assert!(d.poll_message().is_err());
        d.handle_bytes(&client(OpCode::Text, b"later"));
        assert!(d.poll_message().is_err());
    }

    #[test]
    fn buffer_released_when_idle() {
        let mut d = FrameDecoder::new(Role::Server, 1 << 16);
        assert_eq!((d.buffered_len(), d.allocated_len()), (0, 0));
        let wire = client(OpCode::Text, &[b'z'; 1000]);
        d.handle_bytes(&wire[..500]);
        assert_eq!(d.buffered_len(), 500 - 8);
        assert!(d.allocated_len() > 0);
        assert_eq!(d.poll_message(), Ok(None));
        d.handle_bytes(&wire[500..]);
        assert_eq!(d.buffered_len(), 1000);
        assert!(matches!(d.poll_message(), Ok(Some(Message::Text(_)))));
        assert_eq!(d.poll_message(), Ok(None));
        assert_eq!((d.buffered_len(), d.allocated_len()), (0, 0));
        // Partial header only: a few bytes, no heap.
        d.handle_bytes(&wire[..3]);
        assert_eq!((d.buffered_len(), d.allocated_len()), (3, 0));
    }

    #[test]
    fn several_messages_in_one_chunk_and_empty_frames() {
        let mut wire = client(OpCode::Text, b"");
        wire.extend(client(OpCode::Ping, b"p"));
        wire.extend(client(OpCode::Text, b"two"));
        check_all_splits(
            Role::Server,
            &wire,
            &[
                text(""),
                Message::Ping(Bytes::from_static(b"p")),
                text("two"),
            ],
        );
    }

    #[test]
    fn server_encoders_decode_as_client_at_every_size() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "a".repeat(len);
            let f = text_frame(payload.as_bytes());
            let mut expected = Vec::new();
            encode_frame_into(OpCode::Text, payload.as_bytes(), &mut expected);
            assert_eq!(&f[..], &expected[..], "len {len}");
            let g = text_frame_with(|v| v.extend_from_slice(payload.as_bytes()));
            assert_eq!(f, g);
            let (m, e) = decode_chunks(Role::Client, 1 << 20, &[&f]);
            assert_eq!((m, e), (vec![text(&payload)], None));
            let hl = header_len(len);
            assert_eq!(f.len(), hl + len);
        }
    }

    #[test]
    fn control_frame_encoders() {
        assert_eq!(&ping_frame(b"abc")[..], &[0x89, 3, b'a', b'b', b'c']);
        assert_eq!(&pong_frame(b"")[..], &[0x8A, 0]);
        assert_eq!(ping_frame(&[7; 300]).len(), 2 + 125);
        assert_eq!(
            &close_frame(4201, "Pong reply not received")[..4],
            &[0x88, 25, 0x10, 0x69]
        );
        let long = "é".repeat(100); // 200 bytes
        let f = close_frame(1000, &long);
        let (m, e) = decode_chunks(Role::Client, 1024, &[&f]);
        assert_eq!(e, None);
        match &m[0] {
            Message::Close(Some(1000), r) => {
                assert!(r.len() <= 123 && r.len() >= 122);
                assert!(long.starts_with(r.as_str()));
            }
            other => panic!("{other:?}"),
        }
        assert!(f.len() <= 2 + 125);
    }

    #[test]
    fn client_encoder_masks_every_opcode() {
        for op in [
            OpCode::Text,
            OpCode::Binary,
            OpCode::Ping,
            OpCode::Pong,
            OpCode::Close,
        ] {
            let payload: &[u8] = if op == OpCode::Close {
                &[3, 232]
            } else {
                b"data"
            };
            let (m, e) = decode_chunks(Role::Server, 64, &[&client(op, payload)]);
            assert_eq!(e, None, "{op:?}");
            assert_eq!(m.len(), 1);
        }
        assert_eq!(OpCode::Continuation.bits(), 0);
    }
}
