//! Client-side WebSocket reading. [`FrameReader`] owns one growable read buffer and yields the
//! complete server frames in it without copying: the hot receive path of a fan-out run looks at
//! a million small frames a second on a shared 2-core machine, so it borrows each payload from
//! the read buffer instead of building a message per frame. Fragmented messages (which Ringcast
//! never sends, other servers may) are reassembled. Everything that is not the hot path (tests,
//! cross-checks) uses `ringcast_protocol::FrameDecoder`.

/// One decoded server message, borrowed from the read buffer (or the reassembly buffer).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    Close(Option<u16>),
}

/// A protocol violation by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "websocket: {}", self.0)
    }
}
impl std::error::Error for FrameError {}

/// Largest message accepted (a runaway length is an error, not an allocation).
pub const MAX_MESSAGE: usize = 16 << 20;

pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    /// Reassembly of a fragmented message: (opcode, bytes).
    frag: Option<(u8, Vec<u8>)>,
    min_cap: usize,
}

impl FrameReader {
    pub fn new(capacity: usize) -> FrameReader {
        FrameReader {
            buf: Vec::with_capacity(capacity),
            start: 0,
            frag: None,
            min_cap: capacity,
        }
    }

    /// Takes the buffer out for a read into its spare capacity ([`Self::give_back`] after).
    /// Makes sure some spare room exists.
    pub fn take_buf(&mut self) -> Vec<u8> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(self.min_cap.max(self.buf.len()));
        }
        std::mem::take(&mut self.buf)
    }

    pub fn give_back(&mut self, buf: Vec<u8>) {
        self.buf = buf;
    }

    /// Appends bytes (for data that did not come through [`Self::take_buf`]).
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The bytes not yet taken as frames, and a fragmented message in progress (to hand a
    /// connection over to another reader, e.g. [`crate::epoll_receiver`]).
    pub fn into_parts(mut self) -> (Vec<u8>, Option<(u8, Vec<u8>)>) {
        self.buf.drain(..self.start);
        (self.buf, self.frag)
    }

    /// Calls `f` for every complete message buffered; stops early when `f` returns false.
    pub fn drain(&mut self, mut f: impl FnMut(Frame<'_>) -> bool) -> Result<(), FrameError> {
        loop {
            let b = &self.buf[self.start..];
            let Some(h) = parse_header(b)? else {
                break;
            };
            if b.len() < h.total() {
                if self.buf.capacity() < self.start + h.total() {
                    // Make room for the whole frame before the next read.
                    self.buf.reserve(h.total());
                }
                break;
            }
            let payload = &b[h.hdr..h.total()];
            self.start += h.total();
            if !dispatch(&mut self.frag, h, payload, &mut f)? {
                break;
            }
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 4 * self.min_cap.max(4096) {
                self.buf = Vec::with_capacity(self.min_cap);
            }
        }
        Ok(())
    }
}

/// The header of one server frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub op: u8,
    /// Header length (2, 4 or 10: server frames are unmasked).
    pub hdr: usize,
    /// Payload length.
    pub len: usize,
}

impl Header {
    /// Header and payload.
    #[inline]
    pub fn total(&self) -> usize {
        self.hdr + self.len
    }
}

/// How many bytes the header starting at `b[0]` takes (2 while fewer than 2 are known).
#[inline]
pub fn header_len(b: &[u8]) -> usize {
    match b.get(1).map(|x| x & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// Parses the header of the server frame at `b[0]`: None while it is incomplete.
#[inline]
pub fn parse_header(b: &[u8]) -> Result<Option<Header>, FrameError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
        return Err(FrameError("reserved bits set"));
    }
    let op = b[0] & 0x0f;
    if b[1] & 0x80 != 0 {
        return Err(FrameError("masked server frame"));
    }
    let (len, hdr) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(FrameError("frame too large"));
    }
    Ok(Some(Header {
        fin,
        op,
        hdr,
        len: len as usize,
    }))
}

/// Hands the complete frame `h` (payload `payload`) to `f` as a message, reassembling
/// fragmented messages in `frag`. Returns what `f` returned (true while a message is still
/// being reassembled).
#[inline]
pub fn dispatch(
    frag: &mut Option<(u8, Vec<u8>)>,
    h: Header,
    payload: &[u8],
    f: &mut impl FnMut(Frame<'_>) -> bool,
) -> Result<bool, FrameError> {
    Ok(match h.op {
        0x0 => {
            let Some((fop, acc)) = frag.as_mut() else {
                return Err(FrameError("continuation without a first fragment"));
            };
            if acc.len() + payload.len() > MAX_MESSAGE {
                return Err(FrameError("message too large"));
            }
            acc.extend_from_slice(payload);
            if h.fin {
                let fop = *fop;
                // Invariant: frag is Some (checked above).
                let (_, acc) = frag.take().expect("fragment in progress");
                if fop == 0x1 {
                    f(Frame::Text(&acc))
                } else {
                    f(Frame::Binary(&acc))
                }
            } else {
                true
            }
        }
        0x1 | 0x2 if !h.fin => {
            if frag.is_some() {
                return Err(FrameError("new message inside a fragmented one"));
            }
            *frag = Some((h.op, payload.to_vec()));
            true
        }
        0x1 => f(Frame::Text(payload)),
        0x2 => f(Frame::Binary(payload)),
        0x8 => {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            f(Frame::Close(code))
        }
        0x9 => f(Frame::Ping(payload)),
        0xA => f(Frame::Pong),
        _ => return Err(FrameError("reserved opcode")),
    })
}

/// A masked client text frame. The mask need not be secret for a load generator; it varies per
/// frame so servers that check for masking see a real one.
pub fn client_text(payload: &[u8], mask_seed: u32, out: &mut Vec<u8>) {
    let m = mask_seed.wrapping_mul(0x9E37_79B9) | 1;
    ringcast_protocol::encode_client_frame_into(
        ringcast_protocol::ws::OpCode::Text,
        payload,
        m.to_le_bytes(),
        out,
    );
}

/// A masked client close frame (1000).
pub fn client_close(out: &mut Vec<u8>) {
    ringcast_protocol::encode_client_frame_into(
        ringcast_protocol::ws::OpCode::Close,
        &1000u16.to_be_bytes(),
        [1, 2, 3, 4],
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::ws::{encode_frame_into, OpCode};

    fn collect(r: &mut FrameReader) -> Vec<String> {
        let mut out = Vec::new();
        r.drain(|f| {
            out.push(match f {
                Frame::Text(t) => format!("T:{}", String::from_utf8_lossy(t)),
                Frame::Binary(b) => format!("B:{}", b.len()),
                Frame::Ping(p) => format!("P:{}", p.len()),
                Frame::Pong => "pong".into(),
                Frame::Close(c) => format!("C:{c:?}"),
            });
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn frames_split_at_every_byte_boundary_match_the_protocol_decoder() {
        let mut wire = Vec::new();
        encode_frame_into(OpCode::Text, b"hello", &mut wire);
        encode_frame_into(OpCode::Ping, b"pp", &mut wire);
        let big = "x".repeat(300);
        encode_frame_into(OpCode::Text, big.as_bytes(), &mut wire);
        let huge = "y".repeat(70_000);
        encode_frame_into(OpCode::Text, huge.as_bytes(), &mut wire);
        // Fragmented: "ab" + ping + "cd".
        encode_frame_into(OpCode::Text, b"ab", &mut wire);
        let last = wire.len() - 4;
        wire[last] &= 0x7f; // clear FIN of the first fragment
        encode_frame_into(OpCode::Ping, b"", &mut wire);
        encode_frame_into(OpCode::Continuation, b"cd", &mut wire);
        wire.extend_from_slice(&ringcast_protocol::ws::close_frame(1000, "bye"));

        // The reference decoder.
        let mut dec =
            ringcast_protocol::FrameDecoder::new(ringcast_protocol::Role::Client, 1 << 20);
        dec.handle_bytes(&wire);
        let mut reference = Vec::new();
        while let Some(m) = dec.poll_message().unwrap() {
            reference.push(match m {
                ringcast_protocol::Message::Text(t) => format!("T:{}", String::from_utf8_lossy(&t)),
                ringcast_protocol::Message::Binary(b) => format!("B:{}", b.len()),
                ringcast_protocol::Message::Ping(p) => format!("P:{}", p.len()),
                ringcast_protocol::Message::Pong(_) => "pong".into(),
                ringcast_protocol::Message::Close(c, _) => format!("C:{c:?}"),
            });
        }
        assert_eq!(reference.len(), 7);

        for split in [1usize, 2, 3, 7, 64, 1000, wire.len()] {
            let mut r = FrameReader::new(16);
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                r.extend(chunk);
                got.extend(collect(&mut r));
            }
            assert_eq!(got, reference, "split {split}");
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn masked_or_reserved_frames_are_errors() {
        let mut r = FrameReader::new(64);
        let mut wire = Vec::new();
        client_text(b"x", 1, &mut wire);
        r.extend(&wire);
        assert!(r.drain(|_| true).is_err());
        let mut r = FrameReader::new(64);
        r.extend(&[0x83, 0x00]);
        assert!(r.drain(|_| true).is_err());
    }
}
