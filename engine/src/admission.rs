//! Connection admission on the public port, decided before a connection costs anything:
//! process-wide caps on open connections and on handshakes in flight (checked at accept,
//! before a byte is read), per-client-address caps on concurrent connections and on new
//! connections per second, the client address behind trusted proxies, and per-app
//! `allowed_origins`.
//!
//! Per-address state is a fixed-size, lock-free count-min sketch (two tables of atomic
//! counters indexed by two keyed hashes of the address; the estimate is the smaller of the
//! two). Its memory does not grow with the number of addresses an attacker controls, no core
//! ever waits on a lock for it, and it never under-counts: a collision can only make an
//! address look busier than it is (see docs/security.md). IPv6 clients are counted per /64,
//! the block one subscriber usually gets.
//!
//! A refusal at accept closes the socket without reading or writing a byte. Every refusal is
//! counted by reason (`ringcast_connections_refused_total`).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use ringcast_protocol::client_addr::{any_contains, canonical, IpCidr};

/// Slots per sketch table (a power of two). 2 tables x 65536 x (4 + 4 + 8) bytes = 2 MiB.
const SLOTS: usize = 1 << 16;

/// Why a connection was refused before it cost anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` open connections in the process.
    Connections,
    /// `max_handshakes_in_flight` connections are still sending their request head.
    Handshakes,
    /// The client address has `max_connections_per_ip` connections open.
    IpConnections,
    /// The client address opened more than `new_connections_per_ip_per_sec` in this second.
    IpRate,
    /// The `Origin` is not in the app's `allowed_origins` (close 4009 after the upgrade).
    Origin,
    /// A trusted proxy sent no valid PROXY protocol header.
    ProxyHeader,
    /// The client address has `max_handshakes_in_flight_per_ip` connections still sending
    /// their request head (one address cannot fill the process-wide handshake cap).
    IpHandshakes,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::Connections,
        Refusal::Handshakes,
        Refusal::IpConnections,
        Refusal::IpRate,
        Refusal::Origin,
        Refusal::ProxyHeader,
        Refusal::IpHandshakes,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::Handshakes => "max_handshakes_in_flight",
            Refusal::IpConnections => "max_connections_per_ip",
            Refusal::IpRate => "new_connections_per_ip_per_sec",
            Refusal::Origin => "origin_not_allowed",
            Refusal::ProxyHeader => "bad_proxy_header",
            Refusal::IpHandshakes => "max_handshakes_in_flight_per_ip",
        }
    }
}

/// An `allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com[:port]`: this exact origin (scheme, host and port).
    Exact(String),
    /// `app.example.com[:port]`: this host (and port) with any scheme.
    Host(String),
    /// `*.example.com`: any subdomain of example.com (not example.com itself), any scheme
    /// and port.
    Subdomains(String),
}

impl std::str::FromStr for OriginPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<OriginPattern, String> {
        let p = s.trim().to_ascii_lowercase();
        let bad = || {
            format!(
                "allowed_origins entry {s:?}: expected \"*\", \"https://host[:port]\", \
                 \"host[:port]\" or \"*.domain\""
            )
        };
        if p == "*" {
            return Ok(OriginPattern::Any);
        }
        if p.is_empty() || p.ends_with('/') {
            return Err(bad());
        }
        if let Some(rest) = p.strip_prefix("*.") {
            if rest.is_empty() || rest.contains(['*', '/', ':']) {
                return Err(bad());
            }
            return Ok(OriginPattern::Subdomains(rest.to_owned()));
        }
        if p.contains('*') {
            return Err(bad());
        }
        match p.split_once("://") {
            Some((scheme, host))
                if !scheme.is_empty() && !host.is_empty() && !host.contains('/') =>
            {
                Ok(OriginPattern::Exact(p))
            }
            Some(_) => Err(bad()),
            None if p.contains('/') => Err(bad()),
            None => Ok(OriginPattern::Host(p)),
        }
    }
}

impl std::fmt::Display for OriginPattern {
    /// The pattern as written in the config (lower-cased), so it parses back to itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OriginPattern::Any => f.write_str("*"),
            OriginPattern::Exact(s) | OriginPattern::Host(s) => f.write_str(s),
            OriginPattern::Subdomains(d) => write!(f, "*.{d}"),
        }
    }
}

impl OriginPattern {
    /// Whether the `Origin` header value matches.
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let host_port = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
        let host = match host_port.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host_port,
        };
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => origin == *o,
            OriginPattern::Host(h) => host_port == h || host == h,
            OriginPattern::Subdomains(d) => host
                .strip_suffix(d.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        }
    }
}

/// Whether an upgrade with this `Origin` may connect to an app with these patterns. An empty
/// list allows any origin; a request without `Origin` (a non-browser client, which could send
/// any value anyway) is allowed: origin checks protect browsers' users from other sites
/// embedding the app key, they are not authentication.
pub fn origin_allowed(patterns: &[OriginPattern], origin: Option<&str>) -> bool {
    match origin {
        _ if patterns.is_empty() => true,
        None => true,
        Some(o) => patterns.iter().any(|p| p.matches(o)),
    }
}

/// The resolved `[admission]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Open connections (WebSocket and HTTP) on the public port; 0 = unlimited.
    pub max_connections: usize,
    /// Connections accepted whose request head has not been read yet; 0 = unlimited.
    pub max_handshakes_in_flight: usize,
    /// Of those, from one client address (IPv6: per /64); 0 = unlimited.
    pub max_handshakes_in_flight_per_ip: u32,
    /// Open connections per client address (IPv6: per /64); 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// New connections per client address per second; 0 = unlimited.
    pub new_connections_per_ip_per_sec: u32,
    /// Addresses the per-address limits do not apply to.
    pub limit_exempt: Vec<IpCidr>,
    /// Peers whose `X-Forwarded-For` (or PROXY header) names the client.
    pub trusted_proxies: Vec<IpCidr>,
    /// Trusted proxies start every connection with a PROXY protocol v1/v2 header.
    pub proxy_protocol: bool,
}

/// Shared admission state (one per engine).
pub(crate) struct Admission {
    pub config: AdmissionConfig,
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    conns: [Box<[AtomicU32]>; 2],
    /// Handshakes in flight per address (same slots as `conns`).
    handshakes_ip: [Box<[AtomicU32]>; 2],
    /// `(second << 32) | count` per slot.
    rate: [Box<[AtomicU64]>; 2],
    hasher: [ahash::RandomState; 2],
    epoch: Instant,
    refused: [AtomicU64; Refusal::ALL.len()],
}

/// Holds one open connection in the process-wide count.
pub(crate) struct ConnPermit<'a>(&'a Admission);

impl Drop for ConnPermit<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

/// Holds one handshake in flight, and, once its client address is known
/// ([`Admission::admit_handshake_ip`]), that address's count of handshakes in flight.
pub(crate) struct HandshakePermit<'a> {
    adm: &'a Admission,
    ip_slots: Option<[usize; 2]>,
}

impl Drop for HandshakePermit<'_> {
    fn drop(&mut self) {
        self.adm.handshakes.fetch_sub(1, Relaxed);
        if let Some(slots) = self.ip_slots {
            for (t, s) in slots.iter().enumerate() {
                self.adm.handshakes_ip[t][*s].fetch_sub(1, Relaxed);
            }
        }
    }
}

/// Holds one connection of a client address.
pub(crate) struct IpPermit<'a> {
    adm: &'a Admission,
    slots: [usize; 2],
}

impl Drop for IpPermit<'_> {
    fn drop(&mut self) {
        for (t, s) in self.slots.iter().enumerate() {
            self.adm.conns[t][*s].fetch_sub(1, Relaxed);
        }
    }
}

/// An established connection's permits, owned: the connection's own task holds them (for as
/// long as it runs) without borrowing the handshake's state. One open connection in the
/// process-wide count, and its client address's slots (none when exempt or unlimited).
pub(crate) struct ConnPermits {
    shared: std::sync::Arc<crate::shared::Shared>,
    ip_slots: Option<[u32; 2]>,
}

impl ConnPermits {
    /// Takes over the handshake's borrowed permits (taken from `shared.admission`).
    pub(crate) fn new(
        shared: std::sync::Arc<crate::shared::Shared>,
        conn: ConnPermit<'_>,
        ip: Option<IpPermit<'_>>,
    ) -> ConnPermits {
        debug_assert!(std::ptr::eq(conn.0, &shared.admission));
        std::mem::forget(conn);
        let ip_slots = ip.map(|p| {
            let slots = [p.slots[0] as u32, p.slots[1] as u32];
            std::mem::forget(p);
            slots
        });
        ConnPermits { shared, ip_slots }
    }
}

impl Drop for ConnPermits {
    fn drop(&mut self) {
        let adm = &self.shared.admission;
        adm.connections.fetch_sub(1, Relaxed);
        if let Some(slots) = self.ip_slots {
            for (t, s) in slots.iter().enumerate() {
                adm.conns[t][*s as usize].fetch_sub(1, Relaxed);
            }
        }
    }
}

fn table<T: Default>() -> Box<[T]> {
    (0..SLOTS).map(|_| T::default()).collect()
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
fn ip_key(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig, seeds: [u64; 4]) -> Admission {
        Admission {
            config,
            connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            conns: [table(), table()],
            handshakes_ip: [table(), table()],
            rate: [table(), table()],
            hasher: [
                ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3]),
                ahash::RandomState::with_seeds(seeds[3], seeds[2], seeds[1], seeds[0] ^ 1),
            ],
            epoch: Instant::now(),
            refused: Default::default(),
        }
    }

    pub fn refuse(&self, r: Refusal) {
        self.refused[r as usize].fetch_add(1, Relaxed);
    }

    /// `(reason label, count)` for every reason.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.label(), self.refused[*r as usize].load(Relaxed)))
            .collect()
    }

    /// `(connections open, handshakes in flight)` on the public port now.
    pub fn in_use(&self) -> (usize, usize) {
        (
            self.connections.load(Relaxed),
            self.handshakes.load(Relaxed),
        )
    }

    /// Process-wide caps, at accept.
    pub fn accept(&self) -> Result<(ConnPermit<'_>, HandshakePermit<'_>), Refusal> {
        let c = take(&self.connections, self.config.max_connections)
            .map(|_| ConnPermit(self))
            .ok_or(Refusal::Connections)?;
        let h = take(&self.handshakes, self.config.max_handshakes_in_flight)
            .map(|_| HandshakePermit {
                adm: self,
                ip_slots: None,
            })
            .ok_or(Refusal::Handshakes)?;
        Ok((c, h))
    }

    /// Whether the client address of a connection from `peer` comes from the proxy.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        any_contains(&self.config.trusted_proxies, peer)
    }

    /// Per-address limits for `client`. `Ok(None)`: exempt or unlimited.
    pub fn admit_ip(&self, client: IpAddr) -> Result<Option<IpPermit<'_>>, Refusal> {
        let cfg = &self.config;
        if (cfg.max_connections_per_ip == 0 && cfg.new_connections_per_ip_per_sec == 0)
            || any_contains(&cfg.limit_exempt, client)
        {
            return Ok(None);
        }
        let slots = self.slots(client);
        if cfg.new_connections_per_ip_per_sec > 0 {
            let now = self.epoch.elapsed().as_secs() as u32;
            let seen = slots
                .iter()
                .enumerate()
                .map(|(t, s)| bump_rate(&self.rate[t][*s], now))
                .min()
                .unwrap_or(0);
            if seen > cfg.new_connections_per_ip_per_sec {
                return Err(Refusal::IpRate);
            }
        }
        let open = slots
            .iter()
            .enumerate()
            .map(|(t, s)| self.conns[t][*s].fetch_add(1, Relaxed) + 1)
            .min()
            .unwrap_or(0);
        let permit = IpPermit { adm: self, slots };
        if cfg.max_connections_per_ip > 0 && open > cfg.max_connections_per_ip {
            return Err(Refusal::IpConnections); // the permit's drop undoes the increments
        }
        Ok(Some(permit))
    }

    /// Counts `permit`'s handshake against `client`'s `max_handshakes_in_flight_per_ip`
    /// until the permit is dropped (the request head is in). Exempt addresses and a limit of
    /// 0 are not counted. A permit is counted against one address at most: a second call
    /// does nothing.
    pub fn admit_handshake_ip(
        &self,
        permit: &mut HandshakePermit<'_>,
        client: IpAddr,
    ) -> Result<(), Refusal> {
        let limit = self.config.max_handshakes_in_flight_per_ip;
        if limit == 0
            || permit.ip_slots.is_some()
            || any_contains(&self.config.limit_exempt, client)
        {
            return Ok(());
        }
        let slots = self.slots(client);
        let open = slots
            .iter()
            .enumerate()
            .map(|(t, s)| self.handshakes_ip[t][*s].fetch_add(1, Relaxed) + 1)
            .min()
            .unwrap_or(0);
        if open > limit {
            for (t, s) in slots.iter().enumerate() {
                self.handshakes_ip[t][*s].fetch_sub(1, Relaxed);
            }
            return Err(Refusal::IpHandshakes);
        }
        permit.ip_slots = Some(slots);
        Ok(())
    }

    /// The sketch slots an address is counted in, one per table.
    fn slots(&self, client: IpAddr) -> [usize; 2] {
        let key = ip_key(client);
        [
            (self.hasher[0].hash_one(key) as usize) & (SLOTS - 1),
            (self.hasher[1].hash_one(key) as usize) & (SLOTS - 1),
        ]
    }
}

/// Increments `n` unless it is at `limit` (0 = unlimited).
fn take(n: &AtomicUsize, limit: usize) -> Option<()> {
    if limit == 0 {
        n.fetch_add(1, Relaxed);
        return Some(());
    }
    n.fetch_update(Relaxed, Relaxed, |v| (v < limit).then_some(v + 1))
        .ok()
        .map(|_| ())
}

/// Counts one new connection in this second's window of a slot; returns the window's count.
fn bump_rate(slot: &AtomicU64, now: u32) -> u32 {
    let mut cur = slot.load(Relaxed);
    loop {
        let (sec, count) = ((cur >> 32) as u32, cur as u32);
        let next_count = if sec == now {
            count.saturating_add(1)
        } else {
            1
        };
        let next = (u64::from(now) << 32) | u64::from(next_count);
        match slot.compare_exchange_weak(cur, next, Relaxed, Relaxed) {
            Ok(_) => return next_count,
            Err(actual) => cur = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdmissionConfig {
        AdmissionConfig {
            max_connections: 0,
            max_handshakes_in_flight: 0,
            max_handshakes_in_flight_per_ip: 0,
            max_connections_per_ip: 0,
            new_connections_per_ip_per_sec: 0,
            limit_exempt: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn origin_patterns() {
        let p = |s: &str| s.parse::<OriginPattern>().unwrap();
        assert!(p("*").matches("https://evil.test"));
        let exact = p("https://app.example.com");
        assert!(exact.matches("https://app.example.com"));
        assert!(exact.matches("HTTPS://APP.example.com"));
        assert!(!exact.matches("http://app.example.com"));
        assert!(!exact.matches("https://app.example.com:8443"));
        assert!(!exact.matches("https://app.example.com.evil.test"));
        let host = p("app.example.com");
        assert!(host.matches("http://app.example.com"));
        assert!(host.matches("https://app.example.com:8443"));
        assert!(!host.matches("https://xapp.example.com"));
        let with_port = p("localhost:3000");
        assert!(with_port.matches("http://localhost:3000"));
        assert!(!with_port.matches("http://localhost:3001"));
        let sub = p("*.example.com");
        assert!(sub.matches("https://a.example.com"));
        assert!(sub.matches("https://a.b.example.com:8443"));
        assert!(!sub.matches("https://example.com"));
        assert!(!sub.matches("https://evilexample.com"));
        assert!(!sub.matches("https://a.example.com.evil.test"));
        assert!(!sub.matches("null"));
        for bad in ["", "https://", "*.", "a*.b", "https://x/", "*.a/b", "x/y"] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad}");
        }
        assert!(origin_allowed(&[], Some("https://any")));
        assert!(origin_allowed(std::slice::from_ref(&sub), None));
        assert!(!origin_allowed(
            std::slice::from_ref(&sub),
            Some("https://other.test")
        ));
        assert!(origin_allowed(&[exact, sub], Some("https://z.example.com")));
    }

    #[test]
    fn global_caps_take_and_release() {
        let a = Admission::new(
            AdmissionConfig {
                max_connections: 2,
                max_handshakes_in_flight: 1,
                ..cfg()
            },
            [1, 2, 3, 4],
        );
        let (c1, h1) = a.accept().unwrap();
        assert_eq!(a.accept().err(), Some(Refusal::Handshakes));
        drop(h1);
        let (c2, _h2) = a.accept().unwrap();
        assert_eq!(a.accept().err(), Some(Refusal::Connections));
        drop((c1, c2));
        assert_eq!(a.connections.load(Relaxed), 0);
    }

    #[test]
    fn per_ip_concurrency_and_rate() {
        let a = Admission::new(
            AdmissionConfig {
                max_connections_per_ip: 2,
                limit_exempt: vec!["10.0.0.0/8".parse().unwrap()],
                ..cfg()
            },
            [5, 6, 7, 8],
        );
        let p1 = a.admit_ip(ip("1.1.1.1")).unwrap();
        let p2 = a.admit_ip(ip("1.1.1.1")).unwrap();
        assert!(p1.is_some() && p2.is_some());
        assert_eq!(
            a.admit_ip(ip("1.1.1.1")).err(),
            Some(Refusal::IpConnections)
        );
        assert!(
            a.admit_ip(ip("1.1.1.2")).unwrap().is_some(),
            "another address"
        );
        drop(p1);
        let _p3 = a.admit_ip(ip("1.1.1.1")).unwrap();
        for _ in 0..10 {
            assert!(a.admit_ip(ip("10.1.1.1")).unwrap().is_none(), "exempt");
        }
        // IPv6: one /64 counts as one client.
        let _a = a.admit_ip(ip("2001:db8::1")).unwrap();
        let _b = a.admit_ip(ip("2001:db8::2")).unwrap();
        assert_eq!(
            a.admit_ip(ip("2001:db8::3")).err(),
            Some(Refusal::IpConnections)
        );
        assert!(a.admit_ip(ip("2001:db8:0:1::1")).unwrap().is_some());

        let r = Admission::new(
            AdmissionConfig {
                new_connections_per_ip_per_sec: 3,
                ..cfg()
            },
            [9, 9, 9, 9],
        );
        // Within one second (the window is whole seconds since start; a boundary crossing
        // only resets the count, so at most the first 3 + 3 could pass).
        let mut passed = 0;
        for _ in 0..20 {
            if r.admit_ip(ip("3.3.3.3")).is_ok() {
                passed += 1;
            }
        }
        assert!((3..=6).contains(&passed), "{passed}");
    }

    #[test]
    fn per_ip_handshakes_in_flight() {
        let a = Admission::new(
            AdmissionConfig {
                max_handshakes_in_flight: 10,
                max_handshakes_in_flight_per_ip: 2,
                limit_exempt: vec!["10.0.0.0/8".parse().unwrap()],
                ..cfg()
            },
            [11, 12, 13, 14],
        );
        let ip1 = ip("1.1.1.1");
        let mut held = Vec::new();
        for _ in 0..2 {
            let (_c, mut h) = a.accept().unwrap();
            a.admit_handshake_ip(&mut h, ip1).unwrap();
            // Counted once however often it is asked.
            a.admit_handshake_ip(&mut h, ip1).unwrap();
            held.push(h);
        }
        let (_c, mut third) = a.accept().unwrap();
        assert_eq!(
            a.admit_handshake_ip(&mut third, ip1).err(),
            Some(Refusal::IpHandshakes)
        );
        drop(third);
        // The refused one took nothing: still exactly two handshakes in flight.
        assert_eq!(a.in_use().1, 2);
        // Another address, and exempt addresses, are not held back by 1.1.1.1.
        let (_c, mut other) = a.accept().unwrap();
        a.admit_handshake_ip(&mut other, ip("1.1.1.2")).unwrap();
        let mut exempt = Vec::new();
        for _ in 0..5 {
            let (_c, mut h) = a.accept().unwrap();
            a.admit_handshake_ip(&mut h, ip("10.1.1.1")).unwrap();
            exempt.push(h);
        }
        // A head that arrives (the permit is dropped) gives the address its slot back.
        held.pop();
        let (_c, mut again) = a.accept().unwrap();
        a.admit_handshake_ip(&mut again, ip1).unwrap();
        // IPv6: one /64 is one client.
        drop((held, again, other, exempt));
        let (_c, mut v1) = a.accept().unwrap();
        let (_c, mut v2) = a.accept().unwrap();
        let (_c, mut v3) = a.accept().unwrap();
        a.admit_handshake_ip(&mut v1, ip("2001:db8::1")).unwrap();
        a.admit_handshake_ip(&mut v2, ip("2001:db8::2")).unwrap();
        assert_eq!(
            a.admit_handshake_ip(&mut v3, ip("2001:db8::3")).err(),
            Some(Refusal::IpHandshakes)
        );
        assert_eq!(
            Refusal::IpHandshakes.label(),
            "max_handshakes_in_flight_per_ip"
        );
        let unlimited = Admission::new(cfg(), [1, 1, 1, 1]);
        let mut all = Vec::new();
        for _ in 0..100 {
            let (_c, mut h) = unlimited.accept().unwrap();
            unlimited.admit_handshake_ip(&mut h, ip1).unwrap();
            all.push(h);
        }
    }
}
