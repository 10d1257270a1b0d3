//! The `[cluster]` table: raw (serde) and resolved. Defaults live in [`defaults`].

use std::time::Duration;

use serde::Deserialize;

pub mod defaults {
    /// Key/subject prefix: several clusters can share one broker with different prefixes.
    pub const PREFIX: &str = "ringcast";
    /// A node silent this long is dead.
    pub const LEASE_MS: u64 = 10_000;
    /// Smallest lease accepted (heartbeats go every lease/3).
    pub const MIN_LEASE_MS: u64 = 300;
    /// Items each core may queue for the bridge before the policy applies.
    pub const OUTBOUND_QUEUE: usize = 65_536;
    /// Count changes are coalesced per channel for this long before they are published.
    pub const DELTA_FLUSH_MS: u64 = 50;
    /// Largest snapshot part (bytes, approximately): below NATS's default 1 MiB payload limit.
    pub const SNAPSHOT_PART_BYTES: usize = 512 * 1024;
    /// Events waiting for the broker connection's writer (then counted as publish_failed).
    pub const PUBLISH_QUEUE: usize = 65_536;
}

/// The `[cluster]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub url: Option<String>,
    pub node_id: Option<String>,
    pub prefix: Option<String>,
    pub lease_ms: Option<u64>,
    pub password: Option<String>,
}

/// Which broker, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// One Redis server (`redis://[:password@]host:port[/db]`).
    Redis { url: String },
    /// A Redis Cluster (`redis-cluster://host:port,host:port`): sharded pub/sub for events.
    RedisCluster { nodes: Vec<(String, u16)> },
    /// One NATS server or several (`nats://h:p` or `nats://h:p,nats://h:p`).
    Nats { servers: Vec<String> },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Redis { .. } => "redis",
            Backend::RedisCluster { .. } => "redis-cluster",
            Backend::Nats { .. } => "nats",
        }
    }

    /// Parses a cluster URL.
    pub fn parse(url: &str) -> Result<Backend, String> {
        let url = url.trim();
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            if url.starts_with("rediss://") {
                return Err("cluster url: TLS (rediss://) is not supported".into());
            }
            return Ok(Backend::Redis { url: url.into() });
        }
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            let mut nodes = Vec::new();
            for hp in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let hp = hp.strip_prefix("redis://").unwrap_or(hp);
                nodes.push(host_port(hp)?);
            }
            if nodes.is_empty() {
                return Err("cluster url: redis-cluster:// needs at least one host:port".into());
            }
            return Ok(Backend::RedisCluster { nodes });
        }
        if url.starts_with("nats://") {
            let servers: Vec<String> = url
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s.starts_with("nats://") {
                        s.to_owned()
                    } else {
                        format!("nats://{s}")
                    }
                })
                .collect();
            for s in &servers {
                host_port(&s["nats://".len()..])?;
            }
            return Ok(Backend::Nats { servers });
        }
        Err(format!(
            "cluster url {url:?}: expected redis://host:port, redis-cluster://host:port,host:port or nats://host:port"
        ))
    }
}

fn host_port(s: &str) -> Result<(String, u16), String> {
    let s = s.rsplit('@').next().unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("cluster url: {s:?} is not host:port"))?;
    let port: u16 = p
        .parse()
        .map_err(|_| format!("cluster url: bad port in {s:?}"))?;
    if h.is_empty() {
        return Err(format!("cluster url: empty host in {s:?}"));
    }
    Ok((h.to_owned(), port))
}

/// The resolved, immutable cluster config.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub backend: Backend,
    pub node_id: String,
    pub prefix: String,
    pub lease: Duration,
    pub password: Option<String>,
}

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct ClusterOverrides {
    pub url: Option<String>,
    pub node_id: Option<String>,
    pub lease_ms: Option<u64>,
}

impl ClusterConfig {
    /// Resolves the `[cluster]` table and the command line. `Ok(None)`: not clustered.
    pub fn resolve(
        table: Option<toml::Table>,
        cli: &ClusterOverrides,
    ) -> Result<Option<ClusterConfig>, String> {
        let raw: RawCluster = match table {
            Some(t) => toml::Value::Table(t)
                .try_into()
                .map_err(|e| format!("[cluster]: {e}"))?,
            None => RawCluster::default(),
        };
        let Some(url) = cli.url.clone().or(raw.url) else {
            if raw.node_id.is_some() || cli.node_id.is_some() {
                return Err("[cluster]: node_id given without a url".into());
            }
            return Ok(None);
        };
        let backend = Backend::parse(&url)?;
        let node_id = match cli.node_id.clone().or(raw.node_id) {
            Some(n) => n,
            None => generated_node_id(),
        };
        if node_id.is_empty() || node_id.len() > 128 || !node_id.chars().all(token_char) {
            return Err(format!(
                "[cluster]: node_id {node_id:?} must be 1..128 characters of A-Z a-z 0-9 - _"
            ));
        }
        let prefix = raw.prefix.unwrap_or_else(|| defaults::PREFIX.into());
        if prefix.is_empty() || !prefix.chars().all(token_char) {
            return Err(format!(
                "[cluster]: prefix {prefix:?} must be characters of A-Z a-z 0-9 - _"
            ));
        }
        let lease_ms = cli.lease_ms.or(raw.lease_ms).unwrap_or(defaults::LEASE_MS);
        if lease_ms < defaults::MIN_LEASE_MS {
            return Err(format!(
                "[cluster]: lease_ms must be at least {}",
                defaults::MIN_LEASE_MS
            ));
        }
        Ok(Some(ClusterConfig {
            backend,
            node_id,
            prefix,
            lease: Duration::from_millis(lease_ms),
            password: raw.password,
        }))
    }
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// A node id from the host name, the process id and the clock (unique enough across restarts).
fn generated_node_id() -> String {
    let host: String = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| token_char(*c))
        .take(32)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{}-{:x}", std::process::id(), nanos & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_backends() {
        assert_eq!(
            Backend::parse("redis://127.0.0.1:6379").unwrap(),
            Backend::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(
            Backend::parse("redis-cluster://a:1,b:2").unwrap(),
            Backend::RedisCluster {
                nodes: vec![("a".into(), 1), ("b".into(), 2)]
            }
        );
        assert_eq!(
            Backend::parse("nats://a:1,nats://b:2").unwrap(),
            Backend::Nats {
                servers: vec!["nats://a:1".into(), "nats://b:2".into()]
            }
        );
        assert!(Backend::parse("http://x:1").is_err());
        assert!(Backend::parse("redis-cluster://").is_err());
        assert!(Backend::parse("nats://nohost").is_err());
    }

    #[test]
    fn resolve_applies_defaults_and_overrides() {
        assert!(ClusterConfig::resolve(None, &ClusterOverrides::default())
            .unwrap()
            .is_none());
        let t: toml::Table =
            toml::from_str("url = \"nats://127.0.0.1:4222\"\nprefix = \"p1\"").unwrap();
        let c = ClusterConfig::resolve(
            Some(t),
            &ClusterOverrides {
                node_id: Some("n1".into()),
                lease_ms: Some(3000),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.prefix, "p1");
        assert_eq!(c.lease, Duration::from_millis(3000));
        let bad: toml::Table = toml::from_str("url = \"redis://h:1\"\nbogus = 1").unwrap();
        assert!(ClusterConfig::resolve(Some(bad), &ClusterOverrides::default()).is_err());
        let generated = ClusterConfig::resolve(
            None,
            &ClusterOverrides {
                url: Some("redis://h:1".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert!(!generated.node_id.is_empty());
    }
}
