//! Cluster replication of the management state: versioned change records, last writer wins.
//!
//! Every management write (app create/update/delete, which includes key add/revoke and webhook
//! secret rotation, and token create/revoke) produces a [`Record`] carrying the full new app or
//! token record (or nothing: a tombstone) and its [`Version`]. The management plane hands the
//! encoded record to the cluster bridge, which publishes it on the control subject; every other
//! node applies it to its own store (durably, with its version) and swaps its apps table.
//!
//! Conflicts: a record is applied only when its version is greater than the version this node
//! holds for that (kind, id); versions order by (hybrid clock, node id), so concurrent writes on
//! two nodes end with the same winner everywhere. The hybrid clock is the wall clock in
//! milliseconds, never less than one more than the greatest clock seen (local or received).
//! Deletes leave tombstones (in the store's `versions` table, kept forever) so a late or
//! replayed older write cannot bring a deleted record back.
//!
//! Convergence after loss (a node that starts, reconnects after a broker outage or sees a gap)
//! is a full-state exchange: [`snapshot`] encodes every record with its version, tombstones
//! included, and applying it is the same last-writer-wins merge. The encoding is JSON
//! (`{"format":1,"records":[...]}`) inside the bridge's binary envelope. Secrets travel in it:
//! the broker is trusted infrastructure (docs/management.md, "In a cluster").

use serde::{Deserialize, Serialize};

use super::model::{validate_id, ManagedApp};
use super::token::TokenRecord;

/// The record encoding's version; a batch in another format is refused (logged).
pub const FORMAT: u32 = 1;

/// Which record a version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    App,
    Token,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "app" => Some(Kind::App),
            "token" => Some(Kind::Token),
            _ => None,
        }
    }
}

/// A record's version: (hybrid clock, node id), compared in that order. Records written before
/// versions existed (a schema-1 store) have the zero version, which every write beats.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version {
    pub clock: u64,
    pub node: String,
}

/// One replicated change: the whole new record, or a tombstone (both `app` and `token` absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    pub id: String,
    pub version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<ManagedApp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenRecord>,
}

impl Record {
    pub fn is_tombstone(&self) -> bool {
        self.app.is_none() && self.token.is_none()
    }
}

#[derive(Serialize, Deserialize)]
struct Batch {
    format: u32,
    records: Vec<Record>,
}

/// The hybrid logical clock of one node.
#[derive(Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// The clock of a new local write: the wall clock (ms), or one past the greatest seen.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        self.last = now_ms.max(self.last + 1);
        self.last
    }

    /// A clock seen in a stored or received version.
    pub fn observe(&mut self, clock: u64) {
        self.last = self.last.max(clock);
    }
}

/// Encodes records as one batch.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = format!("{{\"format\":{FORMAT},\"records\":[").into_bytes();
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // A Record always serializes (plain data).
        out.extend(serde_json::to_vec(r).unwrap_or_default());
    }
    out.extend_from_slice(b"]}");
    out
}

/// Encodes records as batches of at most about `max_bytes` each (one record per batch at
/// least, whatever its size).
pub fn encode_parts(records: &[Record], max_bytes: usize) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, r) in records.iter().enumerate() {
        let n = serde_json::to_vec(r).map(|v| v.len() + 1).unwrap_or(0);
        if i > start && size + n > max_bytes {
            parts.push(encode(&records[start..i]));
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < records.len() || parts.is_empty() {
        parts.push(encode(&records[start..]));
    }
    parts
}

/// Decodes a batch a peer published.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let b: Batch = serde_json::from_slice(bytes).map_err(|e| format!("bad record batch: {e}"))?;
    if b.format != FORMAT {
        return Err(format!(
            "record batch format {} (this build reads {FORMAT})",
            b.format
        ));
    }
    for r in &b.records {
        let consistent = match (r.kind, &r.app, &r.token) {
            (Kind::App, Some(a), None) => a.id == r.id && validate_id(&r.id).is_ok(),
            (Kind::Token, None, Some(t)) => t.id == r.id,
            (_, None, None) => true,
            _ => false,
        };
        if !consistent {
            return Err(format!("record {:?} {:?} is inconsistent", r.kind, r.id));
        }
    }
    Ok(b.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, name: &str) -> ManagedApp {
        ManagedApp {
            id: id.into(),
            name: name.into(),
            keys: vec![],
            settings: Default::default(),
            webhook_secret: Some("s".into()),
            created_at: 1,
            updated_at: 2,
        }
    }

    fn rec(id: &str, clock: u64, node: &str) -> Record {
        Record {
            kind: Kind::App,
            id: id.into(),
            version: Version {
                clock,
                node: node.into(),
            },
            app: Some(app(id, "n")),
            token: None,
        }
    }

    #[test]
    fn versions_order_by_clock_then_node() {
        let v = |c, n: &str| Version {
            clock: c,
            node: n.into(),
        };
        assert!(v(2, "a") > v(1, "z"));
        assert!(v(2, "b") > v(2, "a"));
        assert!(v(0, "") < v(1, ""));
        assert_eq!(Version::default(), v(0, ""));
    }

    #[test]
    fn the_clock_never_goes_back() {
        let mut h = Hlc::default();
        assert_eq!(h.next(100), 100);
        assert_eq!(h.next(50), 101);
        h.observe(500);
        assert_eq!(h.next(200), 501);
        assert_eq!(h.next(1000), 1000);
    }

    #[test]
    fn batches_round_trip_and_split() {
        let mut recs: Vec<Record> = (0..50).map(|i| rec(&format!("a{i}"), i, "n1")).collect();
        recs.push(Record {
            kind: Kind::Token,
            id: "t1".into(),
            version: Version::default(),
            app: None,
            token: None,
        });
        assert_eq!(decode(&encode(&recs)).unwrap(), recs);
        let parts = encode_parts(&recs, 1000);
        assert!(parts.len() > 5, "{}", parts.len());
        let back: Vec<Record> = parts.iter().flat_map(|p| decode(p).unwrap()).collect();
        assert_eq!(back, recs);
        assert!(back.last().unwrap().is_tombstone());
        assert_eq!(encode_parts(&[], 1000).len(), 1);
    }

    #[test]
    fn foreign_or_inconsistent_batches_are_refused() {
        assert!(decode(b"nope").is_err());
        assert!(decode(b"{\"format\":2,\"records\":[]}").is_err());
        let mut r = rec("a", 1, "n");
        r.id = "b".into();
        assert!(decode(&encode(&[r])).is_err());
        // An app id the API would refuse is refused from a peer too.
        assert!(decode(&encode(&[rec("a/b", 1, "n")])).is_err());
    }
}
