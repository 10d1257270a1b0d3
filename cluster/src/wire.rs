//! The cluster's wire encoding: compact, binary, versioned. Every message starts with the
//! magic `RC`, the version (1) and a kind byte. Integers are little-endian; strings and byte
//! strings are a `u32` length and the bytes. Apps are named by app id, never by index.
//!
//! Decoding never panics and never allocates more than the message itself can justify: a
//! malformed, truncated or foreign message is an `Err` (the bridge counts it and ignores it).
//! An event carries the complete encoded WebSocket frame as its tail, so a receiving node wraps
//! the received bytes (`Bytes::slice`, no copy) instead of encoding the event again.

use bytes::{BufMut, Bytes, BytesMut};
use ringcast_protocol::SocketId;

pub const MAGIC: &[u8; 2] = b"RC";
pub const VERSION: u8 = 1;

const K_EVENT: u8 = 1;
const K_HELLO: u8 = 2;
const K_HEARTBEAT: u8 = 3;
const K_DELTA: u8 = 4;
const K_SNAPSHOT: u8 = 5;
const K_BYE: u8 = 6;
const K_TERMINATE: u8 = 7;
const K_SYNC_REQUEST: u8 = 8;
const K_MGMT: u8 = 9;
const K_MGMT_SYNC: u8 = 10;

const I_COUNT: u8 = 1;
const I_JOIN: u8 = 2;
const I_LEAVE: u8 = 3;

/// An event published on one node for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub origin: String,
    pub app_id: String,
    pub channel: String,
    pub except: Option<SocketId>,
    /// The complete WebSocket frame, delivered verbatim.
    pub frame: Bytes,
}

/// One change of a node's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Count {
        app_id: String,
        channel: String,
        count: u64,
    },
    Join {
        app_id: String,
        channel: String,
        user: String,
        info: String,
    },
    Leave {
        app_id: String,
        channel: String,
        user: String,
    },
}

/// A node's share of one channel (in a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    pub app_id: String,
    pub channel: String,
    pub count: u64,
    /// (user id, user_info JSON)
    pub members: Vec<(String, String)>,
}

/// Messages on the control subject every node subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Hello {
        node: String,
        started_at: u64,
    },
    Heartbeat {
        node: String,
        started_at: u64,
        seq: u64,
        /// The number of the last `Mgmt` message `node` published (0: none), so a receiver
        /// that missed the last one sees the gap without waiting for the next.
        mgmt_seq: u64,
    },
    Delta {
        node: String,
        seq: u64,
        items: Vec<Item>,
    },
    /// Full replacement of `node`'s share, one part of `parts` (large shares are split so one
    /// message stays below broker payload limits; the receiver applies them once all arrived).
    Snapshot {
        node: String,
        started_at: u64,
        seq: u64,
        part: u32,
        parts: u32,
        channels: Vec<ShareEntry>,
    },
    Bye {
        node: String,
    },
    Terminate {
        node: String,
        app_id: String,
        user_id: String,
        code: u16,
    },
    SyncRequest {
        node: String,
        target: String,
    },
    /// Management change records (opaque to the bridge: encoded and applied by the
    /// management plane). `seq` counts the management messages `node` published since it
    /// started, so a receiver sees a gap.
    Mgmt {
        node: String,
        seq: u64,
        records: Bytes,
    },
    /// "Send me your whole management state": to `target`, or to every node when empty.
    MgmtSync {
        node: String,
        target: String,
    },
}

impl Control {
    pub fn node(&self) -> &str {
        match self {
            Control::Hello { node, .. }
            | Control::Heartbeat { node, .. }
            | Control::Delta { node, .. }
            | Control::Snapshot { node, .. }
            | Control::Bye { node }
            | Control::Terminate { node, .. }
            | Control::SyncRequest { node, .. }
            | Control::Mgmt { node, .. }
            | Control::MgmtSync { node, .. } => node,
        }
    }
}

/// Any message of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Event(Event),
    Control(Control),
}

/// Why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not ours (no magic) or from a newer version.
    Foreign,
    Truncated,
    BadUtf8,
    UnknownKind(u8),
    TrailingBytes,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Foreign => f.write_str("not a ringcast cluster message"),
            DecodeError::Truncated => f.write_str("truncated message"),
            DecodeError::BadUtf8 => f.write_str("invalid UTF-8 in a string field"),
            DecodeError::UnknownKind(k) => write!(f, "unknown message kind {k}"),
            DecodeError::TrailingBytes => f.write_str("trailing bytes"),
        }
    }
}

// ------------------------------------------------------------------ encoding

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn header(b: &mut BytesMut, kind: u8) {
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    b.put_u8(kind);
}

/// Encodes an event; the frame is copied once into the broker payload.
pub fn encode_event(
    origin: &str,
    app_id: &str,
    channel: &str,
    except: Option<SocketId>,
    frame: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(
        4 + 12 + origin.len() + app_id.len() + channel.len() + 17 + frame.len(),
    );
    header(&mut b, K_EVENT);
    put_str(&mut b, origin);
    put_str(&mut b, app_id);
    put_str(&mut b, channel);
    match except {
        Some(s) => {
            b.put_u8(1);
            b.put_u64_le(s.hi);
            b.put_u64_le(s.lo);
        }
        None => b.put_u8(0),
    }
    b.put_slice(frame);
    b.freeze()
}

fn put_item(b: &mut BytesMut, item: &Item) {
    match item {
        Item::Count {
            app_id,
            channel,
            count,
        } => {
            b.put_u8(I_COUNT);
            put_str(b, app_id);
            put_str(b, channel);
            b.put_u64_le(*count);
        }
        Item::Join {
            app_id,
            channel,
            user,
            info,
        } => {
            b.put_u8(I_JOIN);
            put_str(b, app_id);
            put_str(b, channel);
            put_str(b, user);
            put_str(b, info);
        }
        Item::Leave {
            app_id,
            channel,
            user,
        } => {
            b.put_u8(I_LEAVE);
            put_str(b, app_id);
            put_str(b, channel);
            put_str(b, user);
        }
    }
}

/// Approximate encoded size of a share entry (for splitting snapshots).
pub fn share_entry_size(e: &ShareEntry) -> usize {
    16 + e.app_id.len()
        + e.channel.len()
        + e.members
            .iter()
            .map(|(u, i)| 8 + u.len() + i.len())
            .sum::<usize>()
}

pub fn encode_control(c: &Control) -> Bytes {
    let mut b = BytesMut::with_capacity(64);
    match c {
        Control::Hello { node, started_at } => {
            header(&mut b, K_HELLO);
            put_str(&mut b, node);
            b.put_u64_le(*started_at);
        }
        Control::Heartbeat {
            node,
            started_at,
            seq,
            mgmt_seq,
        } => {
            header(&mut b, K_HEARTBEAT);
            put_str(&mut b, node);
            b.put_u64_le(*started_at);
            b.put_u64_le(*seq);
            b.put_u64_le(*mgmt_seq);
        }
        Control::Delta { node, seq, items } => {
            header(&mut b, K_DELTA);
            put_str(&mut b, node);
            b.put_u64_le(*seq);
            b.put_u32_le(items.len() as u32);
            for i in items {
                put_item(&mut b, i);
            }
        }
        Control::Snapshot {
            node,
            started_at,
            seq,
            part,
            parts,
            channels,
        } => {
            header(&mut b, K_SNAPSHOT);
            put_str(&mut b, node);
            b.put_u64_le(*started_at);
            b.put_u64_le(*seq);
            b.put_u32_le(*part);
            b.put_u32_le(*parts);
            b.put_u32_le(channels.len() as u32);
            for e in channels {
                put_str(&mut b, &e.app_id);
                put_str(&mut b, &e.channel);
                b.put_u64_le(e.count);
                b.put_u32_le(e.members.len() as u32);
                for (u, i) in &e.members {
                    put_str(&mut b, u);
                    put_str(&mut b, i);
                }
            }
        }
        Control::Bye { node } => {
            header(&mut b, K_BYE);
            put_str(&mut b, node);
        }
        Control::Terminate {
            node,
            app_id,
            user_id,
            code,
        } => {
            header(&mut b, K_TERMINATE);
            put_str(&mut b, node);
            put_str(&mut b, app_id);
            put_str(&mut b, user_id);
            b.put_u16_le(*code);
        }
        Control::SyncRequest { node, target } => {
            header(&mut b, K_SYNC_REQUEST);
            put_str(&mut b, node);
            put_str(&mut b, target);
        }
        Control::Mgmt { node, seq, records } => {
            header(&mut b, K_MGMT);
            put_str(&mut b, node);
            b.put_u64_le(*seq);
            b.put_u32_le(records.len() as u32);
            b.put_slice(records);
        }
        Control::MgmtSync { node, target } => {
            header(&mut b, K_MGMT_SYNC);
            put_str(&mut b, node);
            put_str(&mut b, target);
        }
    }
    b.freeze()
}

// ------------------------------------------------------------------ decoding

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// A declared element count, capped by what the rest of the message could hold (each
    /// element takes at least `min_size` bytes), so a lying count cannot allocate.
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > self.remaining() / min_size.max(1) {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }
}

/// Decodes a message. `payload` is kept by reference for an event's frame (no copy).
pub fn decode(payload: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    if r.take(2).map_err(|_| DecodeError::Foreign)? != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if r.u8().map_err(|_| DecodeError::Foreign)? != VERSION {
        return Err(DecodeError::Foreign);
    }
    let kind = r.u8()?;
    let msg = match kind {
        K_EVENT => {
            let origin = r.string()?;
            let app_id = r.string()?;
            let channel = r.string()?;
            let except = match r.u8()? {
                0 => None,
                1 => {
                    let hi = r.u64()?;
                    let lo = r.u64()?;
                    Some(SocketId::new(hi, lo))
                }
                _ => return Err(DecodeError::Truncated),
            };
            let frame = payload.slice(r.pos..);
            return Ok(Message::Event(Event {
                origin,
                app_id,
                channel,
                except,
                frame,
            }));
        }
        K_HELLO => Control::Hello {
            node: r.string()?,
            started_at: r.u64()?,
        },
        K_HEARTBEAT => Control::Heartbeat {
            node: r.string()?,
            started_at: r.u64()?,
            seq: r.u64()?,
            mgmt_seq: r.u64()?,
        },
        K_DELTA => {
            let node = r.string()?;
            let seq = r.u64()?;
            let n = r.count(9)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(match r.u8()? {
                    I_COUNT => Item::Count {
                        app_id: r.string()?,
                        channel: r.string()?,
                        count: r.u64()?,
                    },
                    I_JOIN => Item::Join {
                        app_id: r.string()?,
                        channel: r.string()?,
                        user: r.string()?,
                        info: r.string()?,
                    },
                    I_LEAVE => Item::Leave {
                        app_id: r.string()?,
                        channel: r.string()?,
                        user: r.string()?,
                    },
                    k => return Err(DecodeError::UnknownKind(k)),
                });
            }
            Control::Delta { node, seq, items }
        }
        K_SNAPSHOT => {
            let node = r.string()?;
            let started_at = r.u64()?;
            let seq = r.u64()?;
            let part = r.u32()?;
            let parts = r.u32()?;
            let n = r.count(20)?;
            let mut channels = Vec::with_capacity(n);
            for _ in 0..n {
                let app_id = r.string()?;
                let channel = r.string()?;
                let count = r.u64()?;
                let m = r.count(8)?;
                let mut members = Vec::with_capacity(m);
                for _ in 0..m {
                    members.push((r.string()?, r.string()?));
                }
                channels.push(ShareEntry {
                    app_id,
                    channel,
                    count,
                    members,
                });
            }
            Control::Snapshot {
                node,
                started_at,
                seq,
                part,
                parts,
                channels,
            }
        }
        K_BYE => Control::Bye { node: r.string()? },
        K_TERMINATE => Control::Terminate {
            node: r.string()?,
            app_id: r.string()?,
            user_id: r.string()?,
            code: r.u16()?,
        },
        K_SYNC_REQUEST => Control::SyncRequest {
            node: r.string()?,
            target: r.string()?,
        },
        K_MGMT => {
            let node = r.string()?;
            let seq = r.u64()?;
            let n = r.u32()? as usize;
            let start = r.pos;
            r.take(n)?;
            Control::Mgmt {
                node,
                seq,
                records: payload.slice(start..start + n),
            }
        }
        K_MGMT_SYNC => Control::MgmtSync {
            node: r.string()?,
            target: r.string()?,
        },
        k => return Err(DecodeError::UnknownKind(k)),
    };
    r.finish()?;
    Ok(Message::Control(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Bytes> {
        vec![
            encode_event(
                "n1",
                "app-1",
                "presence-x",
                Some(SocketId::new(12, 34)),
                b"\x81\x05hello",
            ),
            encode_event("n1", "a", "c", None, b""),
            encode_control(&Control::Hello {
                node: "n2".into(),
                started_at: 7,
            }),
            encode_control(&Control::Heartbeat {
                node: "n2".into(),
                started_at: 7,
                seq: 9,
                mgmt_seq: 2,
            }),
            encode_control(&Control::Delta {
                node: "n2".into(),
                seq: 3,
                items: vec![
                    Item::Count {
                        app_id: "a".into(),
                        channel: "c".into(),
                        count: 5,
                    },
                    Item::Join {
                        app_id: "a".into(),
                        channel: "presence-c".into(),
                        user: "u1".into(),
                        info: "{\"n\":1}".into(),
                    },
                    Item::Leave {
                        app_id: "a".into(),
                        channel: "presence-c".into(),
                        user: "u1".into(),
                    },
                ],
            }),
            encode_control(&Control::Snapshot {
                node: "n2".into(),
                started_at: 7,
                seq: 4,
                part: 0,
                parts: 1,
                channels: vec![ShareEntry {
                    app_id: "a".into(),
                    channel: "presence-c".into(),
                    count: 2,
                    members: vec![("u1".into(), "null".into())],
                }],
            }),
            encode_control(&Control::Bye { node: "n2".into() }),
            encode_control(&Control::Terminate {
                node: "n2".into(),
                app_id: "a".into(),
                user_id: "u1".into(),
                code: 4009,
            }),
            encode_control(&Control::SyncRequest {
                node: "n1".into(),
                target: "n2".into(),
            }),
            encode_control(&Control::Mgmt {
                node: "n1".into(),
                seq: 3,
                records: Bytes::from_static(b"{\"records\":[]}"),
            }),
            encode_control(&Control::MgmtSync {
                node: "n1".into(),
                target: String::new(),
            }),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for b in samples() {
            let m = decode(&b).expect("decodes");
            let again = match &m {
                Message::Event(e) => {
                    encode_event(&e.origin, &e.app_id, &e.channel, e.except, &e.frame)
                }
                Message::Control(c) => encode_control(c),
            };
            assert_eq!(again, b);
        }
    }

    #[test]
    fn event_frame_is_the_payload_tail_without_copy() {
        let b = encode_event("n", "a", "c", None, b"FRAME");
        let Message::Event(e) = decode(&b).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(&e.frame[..], b"FRAME");
        // Same allocation: the frame points into the payload.
        let base = b.as_ptr() as usize;
        let f = e.frame.as_ptr() as usize;
        assert!(f >= base && f < base + b.len());
    }

    #[test]
    fn truncations_and_corruptions_are_errors_never_panics() {
        for b in samples() {
            for cut in 0..b.len() {
                let t = b.slice(..cut);
                // Events may legitimately end anywhere in the frame tail.
                let _ = decode(&t);
            }
            for i in 0..b.len() {
                for x in [0x00u8, 0xff, 0x7f, 0x80] {
                    let mut v = b.to_vec();
                    v[i] = x;
                    let _ = decode(&Bytes::from(v));
                }
            }
        }
        assert_eq!(
            decode(&Bytes::from_static(b"hello")),
            Err(DecodeError::Foreign)
        );
        assert_eq!(decode(&Bytes::from_static(b"")), Err(DecodeError::Foreign));
        assert_eq!(
            decode(&Bytes::from_static(b"RC\x02\x01")),
            Err(DecodeError::Foreign)
        );
        assert_eq!(
            decode(&Bytes::from_static(b"RC\x01\x63")),
            Err(DecodeError::UnknownKind(0x63))
        );
    }

    #[test]
    fn a_lying_count_does_not_allocate() {
        let mut b = BytesMut::new();
        header(&mut b, K_DELTA);
        put_str(&mut b, "n");
        b.put_u64_le(1);
        b.put_u32_le(u32::MAX);
        assert_eq!(decode(&b.freeze()), Err(DecodeError::Truncated));
    }

    #[test]
    fn pseudo_random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400usize {
            let mut v = Vec::with_capacity(len + 4);
            v.extend_from_slice(b"RC\x01");
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            let _ = decode(&Bytes::from(v));
        }
    }
}
