//! Who the client is: address ranges ([`IpCidr`]), the client address behind trusted proxies
//! (`X-Forwarded-For`, [`client_from_forwarded_for`]) and the PROXY protocol header v1/v2
//! ([`parse_proxy_header`]). Pure functions: the caller decides whether the peer is trusted.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address range: `10.0.0.0/8`, `::1/128`, or a bare address (a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not an address range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(pub String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an IP address or range (expected e.g. 10.0.0.0/8, 127.0.0.1 or ::1/128)",
            self.0
        )
    }
}

impl std::error::Error for CidrError {}

impl FromStr for IpCidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<IpCidr, CidrError> {
        let err = || CidrError(s.to_owned());
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl IpCidr {
    /// The loopback ranges `127.0.0.0/8` and `::1/128`.
    pub fn loopback() -> [IpCidr; 2] {
        [
            IpCidr {
                addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                prefix: 8,
            },
            IpCidr {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`; other addresses unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether any range contains `ip`.
pub fn any_contains(ranges: &[IpCidr], ip: IpAddr) -> bool {
    ranges.iter().any(|r| r.contains(ip))
}

/// The client address of a request whose TCP peer is `peer`, given its `X-Forwarded-For`
/// values (every header occurrence, in order) and the trusted proxies. Only a trusted peer's
/// header is believed, and only as far as the chain stays trusted: the result is the
/// right-most address that is not itself a trusted proxy (so a client cannot forge its
/// address by sending its own `X-Forwarded-For`). An unparsable entry stops the walk there.
pub fn client_from_forwarded_for<'h>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'h str>,
    trusted: &[IpCidr],
) -> IpAddr {
    if !any_contains(trusted, peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = canonical(ip);
        if !any_contains(trusted, client) {
            return client;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The v2 signature, the first 12 bytes of a binary PROXY header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest PROXY header accepted (v1 is at most 107 bytes; v2 with TLVs is capped here).
pub const MAX_PROXY_HEADER_BYTES: usize = 536;

/// A parsed PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes of the header (the connection's own bytes start after them).
    pub len: usize,
    /// The original client address; `None` for `UNKNOWN` / `LOCAL` (use the peer address).
    pub source: Option<SocketAddr>,
}

/// Why a PROXY header is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// Neither a v1 (`PROXY `) nor a v2 signature.
    NotProxy,
    /// A header that breaks the grammar, or longer than [`MAX_PROXY_HEADER_BYTES`].
    Malformed(&'static str),
}

impl fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyHeaderError::NotProxy => f.write_str("no PROXY protocol header"),
            ProxyHeaderError::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
        }
    }
}

impl std::error::Error for ProxyHeaderError {}

/// Parses a PROXY protocol v1 or v2 header at the start of `buf`. `Ok(None)`: more bytes
/// needed. Never reads past [`MAX_PROXY_HEADER_BYTES`].
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    const V1: &[u8] = b"PROXY ";
    if buf.is_empty() {
        return Ok(None);
    }
    let n = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..n] == PROXY_V2_SIGNATURE[..n] {
        if buf.len() < 16 {
            return Ok(None);
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(V1.len());
    if buf[..n] != V1[..n] {
        return Err(ProxyHeaderError::NotProxy);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    const MAX_V1: usize = 107;
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > MAX_V1 {
        return Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 line is not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Some(ProxyHeader { len, source: None })),
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source address"))?;
            let _: IpAddr = dst
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 destination address"))?;
            if (*fam == "TCP4") != src.is_ipv4() {
                return Err(ProxyHeaderError::Malformed("v1 family and address differ"));
            }
            let sport: u16 = sport
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source port"))?;
            let _: u16 = dport
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 destination port"))?;
            Ok(Some(ProxyHeader {
                len,
                source: Some(SocketAddr::new(src, sport)),
            }))
        }
        _ => Err(ProxyHeaderError::Malformed("v1 line")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    if buf[..12] != PROXY_V2_SIGNATURE {
        return Err(ProxyHeaderError::NotProxy);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body_len;
    if len > MAX_PROXY_HEADER_BYTES {
        return Err(ProxyHeaderError::Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    let source = match ver_cmd & 0x0f {
        // LOCAL: a health check from the proxy itself; the peer address stands.
        0 => None,
        1 => match fam >> 4 {
            1 if body.len() >= 12 => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(body[0], body[1], body[2], body[3])),
                u16::from_be_bytes([body[8], body[9]]),
            )),
            2 if body.len() >= 36 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[..16]);
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(a)),
                    u16::from_be_bytes([body[32], body[33]]),
                ))
            }
            1 | 2 => return Err(ProxyHeaderError::Malformed("v2 address block too short")),
            // AF_UNSPEC / AF_UNIX: no usable address.
            _ => None,
        },
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    };
    Ok(Some(ProxyHeader { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parses_and_matches() {
        let n: IpCidr = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")), "mapped IPv4");
        let h: IpCidr = "192.168.1.1".parse().unwrap();
        assert!(h.contains(ip("192.168.1.1")) && !h.contains(ip("192.168.1.2")));
        let all: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: IpCidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["", "10.0.0.0/33", "::/129", "x", "10.0.0.0/a", "1.2.3"] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad}");
        }
        assert!(any_contains(&IpCidr::loopback(), ip("127.0.0.5")));
        assert!(any_contains(&IpCidr::loopback(), ip("::1")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_from_forwarded_for(ip("1.2.3.4"), ["9.9.9.9"], &trusted),
            ip("1.2.3.4")
        );
        // Trusted peer: the right-most untrusted hop (the client cannot forge the left part).
        assert_eq!(
            client_from_forwarded_for(ip("10.0.0.1"), ["6.6.6.6, 5.5.5.5, 10.0.0.7"], &trusted),
            ip("5.5.5.5")
        );
        assert_eq!(
            client_from_forwarded_for(ip("10.0.0.1"), ["6.6.6.6", "5.5.5.5:99"], &trusted),
            ip("5.5.5.5")
        );
        // No header, garbage, all trusted.
        assert_eq!(
            client_from_forwarded_for(ip("10.0.0.1"), [], &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_from_forwarded_for(ip("10.0.0.1"), ["nonsense"], &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_from_forwarded_for(ip("10.0.0.1"), ["10.0.0.2"], &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_from_forwarded_for(ip("10.0.0.1"), ["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn proxy_v1() {
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let p = parse_proxy_header(h).unwrap().unwrap();
        assert_eq!(p.len, 47);
        assert_eq!(p.source, Some("192.168.0.1:56324".parse().unwrap()));
        let h6 = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert_eq!(
            parse_proxy_header(h6).unwrap().unwrap().source,
            Some("[2001:db8::1]:1".parse().unwrap())
        );
        let u = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse_proxy_header(u).unwrap().unwrap().source, None);
        // Every prefix is "need more".
        for i in 1..47 {
            assert_eq!(parse_proxy_header(&h[..i]), Ok(None), "prefix {i}");
        }
        assert_eq!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::NotProxy)
        );
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 1\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"PROXY UDP 1 2 3 4\r\n",
        ] {
            assert!(
                matches!(parse_proxy_header(bad), Err(ProxyHeaderError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse_proxy_header(&long).is_err());
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = PROXY_V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn proxy_v2() {
        let body = [1, 2, 3, 4, 5, 6, 7, 8, 0x1f, 0x90, 0, 80];
        let mut h = v2(1, 0x11, &body);
        let len = h.len();
        h.extend_from_slice(b"GET /");
        let p = parse_proxy_header(&h).unwrap().unwrap();
        assert_eq!(p.len, len);
        assert_eq!(p.source, Some("1.2.3.4:8080".parse().unwrap()));
        for i in 1..len {
            assert_eq!(parse_proxy_header(&h[..i]), Ok(None), "prefix {i}");
        }
        let local = v2(0, 0, &[]);
        assert_eq!(parse_proxy_header(&local).unwrap().unwrap().source, None);
        let mut b6 = vec![0u8; 36];
        b6[15] = 1;
        b6[32] = 1;
        assert_eq!(
            parse_proxy_header(&v2(1, 0x21, &b6))
                .unwrap()
                .unwrap()
                .source,
            Some("[::1]:256".parse().unwrap())
        );
        assert!(parse_proxy_header(&v2(1, 0x11, &[1, 2])).is_err());
        assert!(parse_proxy_header(&v2(5, 0x11, &body)).is_err());
        let mut wrong_version = v2(1, 0x11, &body);
        wrong_version[12] = 0x11;
        assert!(parse_proxy_header(&wrong_version).is_err());
        assert!(parse_proxy_header(&v2(1, 0x11, &[0; 600])).is_err());
    }
}
