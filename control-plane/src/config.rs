//! [`ApiConfig`]: the control plane's own limits and timeouts (per-app limits such as
//! `max_event_bytes` and `server_auth_channels` live in the engine's app config). Every
//! default is documented once, in [`defaults`].

use std::time::Duration;

use serde::Deserialize;

use ringcast_protocol::client_addr::IpCidr;
use ringcast_protocol::{close, limits};

use crate::http::{Limits, Timeouts};

/// Every default of [`ApiConfig`].
pub mod defaults {
    use super::{close, limits};

    /// Request line plus headers (431 past it).
    pub const MAX_HEAD_BYTES: usize = limits::MAX_REQUEST_HEAD_BYTES;
    /// Request body (413 past it, decided from `Content-Length`). Ten full batches of ten
    /// 10 KB events fit easily.
    pub const MAX_BODY_BYTES: usize = 1 << 20;
    /// Channels of one `POST /events` (400 past it).
    pub const MAX_CHANNELS_PER_EVENT: usize = limits::MAX_CHANNELS_PER_TRIGGER;
    /// Items of one `POST /batch_events` or seed `POST /events/batch` (400 past it).
    pub const MAX_BATCH_EVENTS: usize = limits::MAX_BATCH_EVENTS;
    /// From the first byte of a request head to its end (408 past it): slow clients.
    pub const HEAD_TIMEOUT_MS: u64 = 10_000;
    /// From the end of the head to the end of the body (408 past it).
    pub const BODY_TIMEOUT_MS: u64 = 30_000;
    /// Keep-alive: silence allowed between two requests before the server closes.
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    /// Longest time one request may spend in its handler (503 past it).
    pub const HANDLER_TIMEOUT_MS: u64 = 30_000;
    /// Longest time writing one response may take (the connection is dropped past it).
    pub const WRITE_TIMEOUT_MS: u64 = 10_000;
    /// Close code for `terminate_connections`: 4009 "connection unauthorized". pusher-js
    /// treats 4000-4099 as `refused` and does not reconnect by itself, so a terminated
    /// (kicked, banned, logged-out) user stays disconnected until the app calls
    /// `pusher.connect()` again; Soketi sends the same code. See docs/api.md.
    pub const TERMINATE_CLOSE_CODE: u16 = close::UNAUTHORIZED;
    /// Process-wide cap on request body bytes being received at once (503 past it). 64 bodies
    /// of the largest size; only requests whose signature already verified from their head
    /// get this far.
    pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 << 20;
    /// Who may read `/metrics` and `/stats` on the public port: loopback only. On a separate
    /// API listener (`--api-listen`) they are served to whoever reaches it.
    pub fn metrics_allow() -> Vec<super::IpCidr> {
        super::IpCidr::loopback().to_vec()
    }
}

/// Limits and timeouts of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_channels_per_event: usize,
    pub max_batch_events: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub handler_timeout: Duration,
    pub write_timeout: Duration,
    pub terminate_close_code: u16,
    pub max_body_bytes_in_flight: usize,
    /// Addresses allowed `/metrics` and `/stats` on the public port.
    pub metrics_allow: Vec<IpCidr>,
    /// `[api.tls]`: the separate API listener (`api_listen`) speaks https:// with this pair.
    pub tls: Option<ringcast_engine::TlsFiles>,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            max_head_bytes: defaults::MAX_HEAD_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_channels_per_event: defaults::MAX_CHANNELS_PER_EVENT,
            max_batch_events: defaults::MAX_BATCH_EVENTS,
            head_timeout: Duration::from_millis(defaults::HEAD_TIMEOUT_MS),
            body_timeout: Duration::from_millis(defaults::BODY_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(defaults::IDLE_TIMEOUT_MS),
            handler_timeout: Duration::from_millis(defaults::HANDLER_TIMEOUT_MS),
            write_timeout: Duration::from_millis(defaults::WRITE_TIMEOUT_MS),
            terminate_close_code: defaults::TERMINATE_CLOSE_CODE,
            max_body_bytes_in_flight: defaults::MAX_BODY_BYTES_IN_FLIGHT,
            metrics_allow: defaults::metrics_allow(),
            tls: None,
        }
    }
}

/// The `[api]` table of the config file, as read. Every key is optional; unknown keys are an
/// error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiConfig {
    pub max_head_bytes: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_channels_per_event: Option<usize>,
    pub max_batch_events: Option<usize>,
    pub head_timeout_ms: Option<u64>,
    pub body_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub handler_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub terminate_close_code: Option<u16>,
    pub max_body_bytes_in_flight: Option<usize>,
    pub metrics_allow: Option<Vec<String>>,
    pub tls: Option<ringcast_engine::TlsFiles>,
}

impl ApiConfig {
    /// Resolves the `[api]` table (absent: every default).
    pub fn from_table(table: Option<toml::Table>) -> Result<ApiConfig, String> {
        let raw: RawApiConfig = match table {
            Some(t) => t
                .try_into()
                .map_err(|e| format!("invalid [api] table: {e}"))?,
            None => RawApiConfig::default(),
        };
        let d = ApiConfig::default();
        let ms = |v: Option<u64>, dflt: Duration| {
            v.map(|m| Duration::from_millis(m.max(1))).unwrap_or(dflt)
        };
        let cfg = ApiConfig {
            max_head_bytes: raw.max_head_bytes.unwrap_or(d.max_head_bytes),
            max_body_bytes: raw.max_body_bytes.unwrap_or(d.max_body_bytes),
            max_channels_per_event: raw
                .max_channels_per_event
                .unwrap_or(d.max_channels_per_event),
            max_batch_events: raw.max_batch_events.unwrap_or(d.max_batch_events),
            head_timeout: ms(raw.head_timeout_ms, d.head_timeout),
            body_timeout: ms(raw.body_timeout_ms, d.body_timeout),
            idle_timeout: ms(raw.idle_timeout_ms, d.idle_timeout),
            handler_timeout: ms(raw.handler_timeout_ms, d.handler_timeout),
            write_timeout: ms(raw.write_timeout_ms, d.write_timeout),
            terminate_close_code: raw.terminate_close_code.unwrap_or(d.terminate_close_code),
            max_body_bytes_in_flight: raw
                .max_body_bytes_in_flight
                .unwrap_or(d.max_body_bytes_in_flight),
            metrics_allow: match raw.metrics_allow {
                Some(list) => list
                    .iter()
                    .map(|s| s.parse::<IpCidr>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("[api] metrics_allow: {e}"))?,
                None => d.metrics_allow,
            },
            tls: raw.tls,
        };
        if cfg.max_body_bytes_in_flight < cfg.max_body_bytes {
            return Err(
                "[api] max_body_bytes_in_flight must be at least max_body_bytes (else no \
                 largest request could ever be read)"
                    .into(),
            );
        }
        if cfg.max_head_bytes < 1024 || cfg.max_body_bytes < 1024 {
            return Err("[api] max_head_bytes and max_body_bytes must be at least 1024".into());
        }
        if cfg.max_channels_per_event == 0 || cfg.max_batch_events == 0 {
            return Err(
                "[api] max_channels_per_event and max_batch_events must be at least 1".into(),
            );
        }
        if !(4000..=4999).contains(&cfg.terminate_close_code) {
            return Err("[api] terminate_close_code must be within 4000..=4999".into());
        }
        Ok(cfg)
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.max_head_bytes,
            max_body_bytes: self.max_body_bytes,
        }
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        Timeouts {
            head: self.head_timeout,
            body: self.body_timeout,
            idle: self.idle_timeout,
            handler: self.handler_timeout,
            write: self.write_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_table_overrides_defaults_and_refuses_typos() {
        let t: toml::Table =
            toml::from_str("max_batch_events = 25\nhead_timeout_ms = 500").unwrap();
        let c = ApiConfig::from_table(Some(t)).unwrap();
        assert_eq!(c.max_batch_events, 25);
        assert_eq!(c.head_timeout, Duration::from_millis(500));
        assert_eq!(c.max_channels_per_event, defaults::MAX_CHANNELS_PER_EVENT);
        assert_eq!(ApiConfig::from_table(None).unwrap(), ApiConfig::default());
        let bad = |s: &str| ApiConfig::from_table(Some(toml::from_str(s).unwrap())).is_err();
        assert!(bad("max_batch_event = 3"));
        assert!(bad("max_batch_events = 0"));
        assert!(bad("terminate_close_code = 1000"));
        assert!(bad("metrics_allow = [\"10.0.0.0/40\"]"));
        assert!(bad("max_body_bytes_in_flight = 2048"));
        let t: toml::Table = toml::from_str("metrics_allow = [\"10.0.0.0/8\"]").unwrap();
        let c = ApiConfig::from_table(Some(t)).unwrap();
        assert!(c.metrics_allow[0].contains("10.9.9.9".parse().unwrap()));
        assert_eq!(c.metrics_allow.len(), 1);
    }

    #[test]
    fn api_tls_table_is_parsed_and_its_mistakes_are_errors() {
        let t: toml::Table = toml::from_str("[tls]\ncert = \"a.pem\"\nkey = \"b.pem\"").unwrap();
        let c = ApiConfig::from_table(Some(t)).unwrap();
        let tls = c.tls.expect("[api.tls]");
        assert_eq!(tls.cert, std::path::PathBuf::from("a.pem"));
        assert_eq!(tls.key, std::path::PathBuf::from("b.pem"));
        assert!(ApiConfig::from_table(None).unwrap().tls.is_none());
        let err = |s: &str| ApiConfig::from_table(Some(toml::from_str(s).unwrap())).unwrap_err();
        assert!(err("[tls]\ncert = \"a.pem\"").contains("missing field `key`"));
        assert!(err("[tls]\ncert = \"a\"\nkey = \"b\"\nverify = true").contains("verify"));
    }
}
