//! Socket ids: `<digits>.<digits>`, as validated by every Pusher server SDK.

use std::fmt;

/// A connection's socket id, displayed as `"hi.lo"`. The caller supplies the numbers (e.g. a
/// node/core prefix and a counter, or random numbers).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SocketId {
    /// Part before the dot.
    pub hi: u64,
    /// Part after the dot.
    pub lo: u64,
}

impl SocketId {
    /// A socket id from its two parts.
    pub fn new(hi: u64, lo: u64) -> Self {
        SocketId { hi, lo }
    }

    /// Parses `^\d+\.\d+$` where each part fits in a `u64`.
    pub fn parse(s: &str) -> Option<SocketId> {
        let (hi, lo) = s.split_once('.')?;
        Some(SocketId {
            hi: parse_digits(hi)?,
            lo: parse_digits(lo)?,
        })
    }
}

fn parse_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.hi, self.lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse() {
        let id = SocketId::new(208836, 27464492);
        assert_eq!(id.to_string(), "208836.27464492");
        assert_eq!(SocketId::parse("208836.27464492"), Some(id));
        let max = SocketId::new(u64::MAX, u64::MAX);
        assert_eq!(SocketId::parse(&max.to_string()), Some(max));
        assert_eq!(SocketId::parse("0.0"), Some(SocketId::new(0, 0)));
        assert_eq!(SocketId::parse("007.1"), Some(SocketId::new(7, 1)));
    }

    #[test]
    fn rejects_non_matching() {
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1",
            "1.2.3",
            "a.1",
            "1.b",
            "+1.2",
            "1.+2",
            "-1.2",
            " 1.2",
            "1.2 ",
            "1,2",
            "18446744073709551616.1",
            "1.18446744073709551616",
            "١.٢",
        ] {
            assert_eq!(SocketId::parse(bad), None, "{bad:?}");
        }
    }
}
