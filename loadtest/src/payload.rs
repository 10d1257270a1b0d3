//! The measurement payload carried in each event's `data` string:
//! `LT|<phase>|<k>|<intended_ns>|xxxx…` padded with `x` to the requested size. `k` is the global
//! event number of the phase (event `k` goes to channel `k % channels`, where it has sequence
//! number `k / channels`), `intended_ns` the time the open-loop schedule meant to send it
//! ([`crate::clock`]). Only characters that need no JSON escaping are used, so the payload
//! appears byte-for-byte in the frame whether the server relays a client event or a REST event.

use memchr::memmem;

pub const MARK: &[u8] = b"LT|";

/// What a receiver learns from one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub phase: u32,
    pub k: u64,
    pub intended_ns: u64,
}

/// Appends the payload for event `k` of `phase` to `out`, at least as long as the header and
/// padded to `size` bytes.
pub fn encode(phase: u32, k: u64, intended_ns: u64, size: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let start = out.len();
    // Invariant: writing to a Vec cannot fail.
    write!(out, "LT|{phase}|{k}|{intended_ns}|").expect("write to Vec");
    let len = out.len() - start;
    if len < size {
        out.resize(start + size, b'x');
    }
}

#[inline]
fn num(b: &[u8], i: &mut usize) -> Option<u64> {
    let start = *i;
    let mut v: u64 = 0;
    while *i < b.len() && b[*i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add(u64::from(b[*i] - b'0'))?;
        *i += 1;
    }
    if *i == start || *i >= b.len() || b[*i] != b'|' {
        return None;
    }
    *i += 1;
    Some(v)
}

/// Decodes a payload that starts at `b[0]` (with the mark).
pub fn decode(b: &[u8]) -> Option<Stamp> {
    if !b.starts_with(MARK) {
        return None;
    }
    let mut i = MARK.len();
    let phase = num(b, &mut i)?;
    let k = num(b, &mut i)?;
    let intended_ns = num(b, &mut i)?;
    Some(Stamp {
        phase: u32::try_from(phase).ok()?,
        k,
        intended_ns,
    })
}

/// Finds and decodes the payload inside a whole message (a Pusher event JSON text).
pub struct StampFinder {
    finder: memmem::Finder<'static>,
}

impl Default for StampFinder {
    fn default() -> Self {
        Self::new()
    }
}

impl StampFinder {
    pub fn new() -> StampFinder {
        StampFinder {
            finder: memmem::Finder::new(MARK),
        }
    }

    #[inline]
    pub fn find(&self, msg: &[u8]) -> Option<Stamp> {
        let at = self.finder.find(msg)?;
        decode(&msg[at..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut out = Vec::new();
        encode(3, 12345, 987_654_321, 100, &mut out);
        assert_eq!(out.len(), 100);
        assert!(out.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'|'));
        let s = decode(&out).unwrap();
        assert_eq!(
            s,
            Stamp {
                phase: 3,
                k: 12345,
                intended_ns: 987_654_321
            }
        );
        // Shorter than the header: not truncated.
        let mut out = Vec::new();
        encode(1, 1, 1, 4, &mut out);
        assert_eq!(out, b"LT|1|1|1|");
    }

    #[test]
    fn found_inside_an_event_frame() {
        let mut data = Vec::new();
        encode(1, 7, 42, 40, &mut data);
        let data = String::from_utf8(data).unwrap();
        let text = ringcast_protocol::event("lt", "lt-0", &data, None);
        let f = StampFinder::new();
        assert_eq!(f.find(text.as_bytes()).unwrap().k, 7);
        let text = ringcast_protocol::client_event(
            "client-lt",
            "private-lt-0",
            Some(&format!("\"{data}\"")),
            None,
        );
        assert_eq!(f.find(text.as_bytes()).unwrap().intended_ns, 42);
        assert!(f.find(b"{\"event\":\"pusher:pong\",\"data\":{}}").is_none());
        assert!(f.find(b"LT|1|2|").is_none());
        assert!(decode(b"LT|99999999999|1|1|").is_none());
    }
}
