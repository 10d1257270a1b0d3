//! Configuration in two layers: [`RawConfig`] is what serde reads from TOML (every field
//! optional), [`Config`] is the resolved, validated, immutable value the engine runs on.
//! Every default lives in [`defaults`], documented once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ringcast_protocol::client_addr::IpCidr;
use ringcast_protocol::{limits, Dialect};

use crate::admission::{AdmissionConfig, OriginPattern};
use serde::Deserialize;

/// Every default value, documented in one place (the README's config reference mirrors it).
pub mod defaults {
    use ringcast_protocol::limits;

    /// Address the WebSocket (and, by default, REST) listener binds. Loopback only: the embedded
    /// default app's secret is public, so Ringcast does not listen wider unless told to.
    pub const LISTEN: &str = "127.0.0.1:6001";
    /// Seconds of client silence before the server sends `pusher:ping`; also advertised to clients
    /// in `connection_established` as `activity_timeout`.
    pub const ACTIVITY_TIMEOUT_SECS: u32 = limits::ACTIVITY_TIMEOUT_SECS;
    /// Seconds to wait for any frame after our `pusher:ping` before closing with 4201.
    pub const PONG_TIMEOUT_SECS: u32 = limits::PONG_TIMEOUT_SECS;
    /// Per-connection outbound byte budget: frames queued but not yet written. Past it the
    /// connection is closed as a slow consumer (4100).
    pub const OUTBOUND_BUDGET_BYTES: usize = limits::OUTBOUND_BUDGET_BYTES;
    /// A single batched write that does not complete within this deadline closes the connection
    /// as a slow consumer.
    pub const WRITE_DEADLINE_MS: u64 = 10_000;
    /// Largest inbound WebSocket message (and frame) accepted from a client; larger -> close 1009.
    pub const MAX_MESSAGE_BYTES: usize = limits::MAX_FRAME_BYTES;
    /// Channels one connection may be subscribed to (or have pending) at once.
    pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 1_000;
    /// Subscribe/unsubscribe/sign-in messages one connection may send per second; past it the
    /// message is refused with `pusher:error` (subscribe floods).
    pub const CONTROL_MESSAGES_PER_SEC: u32 = 100;
    /// `pusher:ping` messages and WebSocket ping frames one connection may send per minute,
    /// with a burst of one minute's worth; past it the connection is closed with 4301
    /// (ping floods; engine/src/ping_budget.rs). 0 = unlimited.
    pub const PINGS_PER_MINUTE: u32 = 30;
    /// Time a client has to send a complete HTTP request head.
    pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
    /// On SIGINT/SIGTERM: time given to connections to receive their 4200 close before exit.
    pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
    /// Entries in each SPSC queue of the core mesh (per ordered pair of cores); 0 = derived
    /// from the worker count (131072 / workers, clamped to 1024..=32768).
    pub const MESH_QUEUE_CAPACITY: usize = 0;
    /// Hard limit of a core's local overflow for one full peer queue. From half of it the core
    /// is congested and pushes back (new publishes get 503 / `pusher:error`, new subscriptions
    /// `subscription_error`); an event delivery past the limit is not queued and that peer's
    /// subscribers of the channel are closed with 4100 instead (`ringcast_mesh_dropped_total`).
    /// Subscription bookkeeping is never dropped (it is bounded by admission).
    pub const MESH_OVERFLOW_LIMIT: usize = 1 << 20;
    /// Entries in the queue from the process (REST, control plane) into each core.
    pub const INJECT_QUEUE_CAPACITY: usize = 65_536;
    /// The flush pass's shortest coalescing window, in microseconds (engine/src/flush.rs):
    /// while a core's flush passes back up (each took at least this long and the core then
    /// stayed quiet for less than the pass took), the next pass first waits at least this long
    /// so that more events share one write per socket. Never applied after a quiet period.
    /// 0 = never wait.
    pub const FLUSH_WINDOW_US: u64 = 1_000;
    /// The largest `flush_window_us` accepted (100 ms), and the longest window the ratio below
    /// can make: a longer wait would be added latency, not coalescing.
    pub const FLUSH_WINDOW_US_MAX: u64 = 100_000;
    /// While passes back up, the window is also this percentage of the previous pass's
    /// duration (the longer of the two applies, at most `FLUSH_WINDOW_US_MAX`): a core that
    /// spends 60 ms per pass waits 15 ms before the next one, so each socket's write carries
    /// about 1.25 times the frames, for a fixed share of latency. Measured in
    /// docs/benchmarks.md ("Proportional coalescing window"). 0 = the fixed `flush_window_us`
    /// only.
    pub const FLUSH_WINDOW_RATIO_PCT: u32 = 25;
    /// The largest `flush_window_ratio_pct` accepted: the wait never exceeds the pass itself.
    pub const FLUSH_WINDOW_RATIO_PCT_MAX: u32 = 100;

    /// The embedded default app, used when no config file declares any app.
    pub const DEFAULT_APP_ID: &str = "app-id";
    pub const DEFAULT_APP_KEY: &str = "app-key";
    pub const DEFAULT_APP_SECRET: &str = "app-secret";

    /// Per-app defaults.
    pub const APP_CLIENT_EVENTS: bool = false;
    pub const APP_MAX_CONNECTIONS: u32 = 0; // 0 = unlimited
    pub const APP_MAX_EVENT_BYTES: usize = limits::MAX_EVENT_DATA_BYTES;
    pub const APP_MAX_PRESENCE_MEMBERS: usize = limits::MAX_PRESENCE_MEMBERS;
    pub const APP_MAX_USER_INFO_BYTES: usize = limits::MAX_USER_INFO_BYTES;
    pub const APP_CLIENT_EVENTS_PER_SEC: u32 = limits::CLIENT_EVENTS_PER_SEC;
    /// Cache channels: how long the last event stays replayable to new subscribers (30 min).
    pub const APP_CACHE_TTL_SECS: u64 = 1800;
    /// Send `pusher_internal:subscription_count` to subscribers of non-presence channels.
    pub const APP_SUBSCRIPTION_COUNT: bool = false;
    /// Above this many subscribers, subscription counts are sent at most every
    /// `SUBSCRIPTION_COUNT_INTERVAL_SECS`.
    pub const SUBSCRIPTION_COUNT_THROTTLE_ABOVE: u64 = 100;
    pub const SUBSCRIPTION_COUNT_INTERVAL_SECS: u64 = 5;
    /// Event history: events kept per channel (0 = history off).
    pub const APP_HISTORY_SIZE: usize = 0;
    /// Activity history (CONNECT, SUBSCRIBE, ... records): records kept per app on each core
    /// (0 = off), and the most an app may ask for.
    pub const APP_ACTIVITY_HISTORY_SIZE: usize = 0;
    pub const MAX_ACTIVITY_HISTORY_SIZE: usize = 100_000;
    /// Event history: events older than this are dropped.
    pub const APP_HISTORY_MAX_AGE_SECS: u64 = 3600;
    /// Memory cap for the event history of all channels owned by one core; the oldest events
    /// go first past it.
    pub const HISTORY_MAX_BYTES_PER_CORE: usize = 64 << 20;
    /// Cache channels: most last-event entries one core keeps (oldest expire first past it).
    pub const CACHE_MAX_ENTRIES_PER_CORE: usize = 100_000;
    /// SSE streams (`GET /apps/{id}/stream`): seconds between `: heartbeat` comments.
    pub const SSE_HEARTBEAT_SECS: u64 = 15;
    /// SSE streams: most channels one stream may name in `?channels=`.
    pub const SSE_MAX_CHANNELS: usize = 100;
    /// SSE streams: the `retry:` (milliseconds) sent first, how long an `EventSource` waits
    /// before it reconnects.
    pub const SSE_RETRY_MS: u64 = 1_000;
    /// Webhooks: a delivery is retried (1 s, 5 s, 30 s, then every 60 s) for this long in all.
    pub const WEBHOOK_RETRY_BUDGET_SECS: u64 = 300;
    /// Webhooks: one request's timeout.
    pub const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
    /// Webhooks with `batch = true`: most events in one request, and the longest wait for more.
    pub const WEBHOOK_BATCH_MAX_EVENTS: usize = 100;
    pub const WEBHOOK_BATCH_WINDOW_MS: u64 = 50;
    /// Webhooks with `debounce = true`: how long vacated/member_removed are held.
    pub const WEBHOOK_DEBOUNCE_MS: u64 = 3_000;
    /// Webhook events waiting to be sent, over all apps; past it new events are recorded as
    /// failed in the delivery log and counted, never silently dropped.
    pub const WEBHOOK_QUEUE_CAPACITY: usize = 65_536;
    /// Deliveries kept per app in the delivery log (`GET /apps/{id}/webhooks`).
    pub const WEBHOOK_LOG_ENTRIES: usize = 1_000;

    /// `[admission]`: open connections (WebSocket + HTTP) on the public port; 0 = unlimited
    /// (the open-file limit rules).
    pub const MAX_CONNECTIONS: usize = 0;
    /// `[admission]`: connections whose request head has not arrived yet (slow-loris bound).
    pub const MAX_HANDSHAKES_IN_FLIGHT: usize = 4_096;
    /// `[admission]`: of those, from one client address (IPv6: per /64), so one address
    /// cannot fill the process-wide cap with slow-loris connections.
    pub const MAX_HANDSHAKES_IN_FLIGHT_PER_IP: u32 = 64;
    /// `[admission]`: open connections per client address (IPv6: per /64).
    pub const MAX_CONNECTIONS_PER_IP: u32 = 1_000;
    /// `[admission]`: new connections per client address per second.
    pub const NEW_CONNECTIONS_PER_IP_PER_SEC: u32 = 50;
    /// `[admission]`: addresses the per-address limits skip: loopback (the operator's own
    /// machine: load tests, a local proxy that is not declared in `trusted_proxies`).
    pub const LIMIT_EXEMPT: [&str; 2] = ["127.0.0.0/8", "::1/128"];
}

/// The `[admission]` table as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    pub max_connections: Option<usize>,
    pub max_handshakes_in_flight: Option<usize>,
    pub max_handshakes_in_flight_per_ip: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub new_connections_per_ip_per_sec: Option<u32>,
    pub limit_exempt: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
    pub proxy_protocol: Option<bool>,
}

fn cidrs(list: &[String], what: &str) -> Result<Vec<IpCidr>, ConfigError> {
    list.iter()
        .map(|s| {
            s.parse::<IpCidr>()
                .map_err(|e| ConfigError(format!("[admission] {what}: {e}")))
        })
        .collect()
}

impl RawAdmission {
    fn resolve(self) -> Result<AdmissionConfig, ConfigError> {
        let exempt: Vec<String> = self.limit_exempt.unwrap_or_else(|| {
            defaults::LIMIT_EXEMPT
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        let cfg = AdmissionConfig {
            max_connections: self.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
            max_handshakes_in_flight: self
                .max_handshakes_in_flight
                .unwrap_or(defaults::MAX_HANDSHAKES_IN_FLIGHT),
            max_handshakes_in_flight_per_ip: self
                .max_handshakes_in_flight_per_ip
                .unwrap_or(defaults::MAX_HANDSHAKES_IN_FLIGHT_PER_IP),
            max_connections_per_ip: self
                .max_connections_per_ip
                .unwrap_or(defaults::MAX_CONNECTIONS_PER_IP),
            new_connections_per_ip_per_sec: self
                .new_connections_per_ip_per_sec
                .unwrap_or(defaults::NEW_CONNECTIONS_PER_IP_PER_SEC),
            limit_exempt: cidrs(&exempt, "limit_exempt")?,
            trusted_proxies: cidrs(&self.trusted_proxies.unwrap_or_default(), "trusted_proxies")?,
            proxy_protocol: self.proxy_protocol.unwrap_or(false),
        };
        if cfg.proxy_protocol && cfg.trusted_proxies.is_empty() {
            return err("[admission] proxy_protocol = true needs trusted_proxies (the peers that send the header)");
        }
        Ok(cfg)
    }
}

/// The TOML file as read. Unknown keys are an error (a typo must not silently fall back to a
/// default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub api_listen: Option<String>,
    pub workers: Option<usize>,
    pub activity_timeout: Option<u32>,
    pub pong_timeout: Option<u32>,
    pub outbound_budget_bytes: Option<usize>,
    pub write_deadline_ms: Option<u64>,
    pub max_message_bytes: Option<usize>,
    pub max_subscriptions_per_connection: Option<usize>,
    pub control_messages_per_sec: Option<u32>,
    pub pings_per_minute: Option<u32>,
    pub handshake_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub mesh_queue_capacity: Option<usize>,
    pub mesh_overflow_limit: Option<usize>,
    /// The flush pass's shortest coalescing window (`defaults::FLUSH_WINDOW_US`).
    pub flush_window_us: Option<u64>,
    /// The window as a percentage of the previous pass (`defaults::FLUSH_WINDOW_RATIO_PCT`).
    pub flush_window_ratio_pct: Option<u32>,
    pub history_max_bytes_per_core: Option<usize>,
    pub cache_max_entries_per_core: Option<usize>,
    /// Seconds between SSE heartbeat comments (`defaults::SSE_HEARTBEAT_SECS`).
    pub sse_heartbeat_secs: Option<u64>,
    /// The `[api]` table: the HTTP API's own limits. Opaque to the engine; the control plane
    /// resolves and validates it.
    pub api: Option<toml::Table>,
    /// The `[management]` table (data dir, admin token). Opaque to the engine; the control
    /// plane resolves it.
    pub management: Option<toml::Table>,
    /// The `[admission]` table: connection caps, trusted proxies.
    pub admission: Option<RawAdmission>,
    /// The `[cluster]` table (scale-out over Redis or NATS). Opaque to the engine; the
    /// cluster crate resolves and validates it.
    pub cluster: Option<toml::Table>,
    /// The `[tls]` table: the public port speaks TLS with this certificate and key.
    pub tls: Option<crate::tls::TlsFiles>,
    #[serde(default)]
    pub apps: Vec<RawApp>,
}

/// One `[[apps]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub id: String,
    pub key: String,
    pub secret: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub client_events: Option<bool>,
    pub max_connections: Option<u32>,
    pub max_event_bytes: Option<usize>,
    pub max_presence_members: Option<usize>,
    pub max_user_info_bytes: Option<usize>,
    pub client_events_per_sec: Option<u32>,
    /// `"pusher"` (default) or `"relay"`: the WebSocket event prefix.
    pub event_prefix: Option<String>,
    /// Channel-name patterns (`*` wildcard) the server-side auth endpoint may sign for.
    pub server_auth_channels: Option<Vec<String>>,
    pub cache_ttl_secs: Option<u64>,
    pub subscription_count: Option<bool>,
    /// `[[apps.webhooks]]` targets.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// Total time a webhook delivery is retried before it is marked failed.
    pub webhook_retry_budget_secs: Option<u64>,
    pub history_size: Option<usize>,
    pub history_max_age_secs: Option<u64>,
    /// Origins allowed to open WebSocket connections (`*`, `https://host`, `host`,
    /// `*.domain`); empty or absent = any.
    pub allowed_origins: Option<Vec<String>>,
    /// LatteStream private API keys (`lsk_...`) that identify this app on the LatteStream REST
    /// dialect.
    pub api_keys: Option<Vec<String>>,
    /// `[apps.rate_limits]`: endpoint label -> `{per_minute, burst_per_sec?}`.
    pub rate_limits: Option<std::collections::BTreeMap<String, RawRateLimit>>,
    /// Activity records kept per core for this app (0 = activity history off).
    pub activity_history_size: Option<usize>,
    /// alrt user socket: a new `/ws` connection of a user closes the older ones with 4000.
    pub single_connection_per_user: Option<bool>,
}

/// One `[apps.rate_limits]` entry, e.g. `events = { per_minute = 1000, burst_per_sec = 100 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests per minute (the long-run rate and the minute bucket's size); 0 = no limit
    /// (turns a dialect's default off).
    pub per_minute: u32,
    /// Requests per second (the burst bucket's size and refill); default `per_minute / 10`.
    pub burst_per_sec: Option<u32>,
}

/// A resolved rate limit: two token buckets, both must hold a token for a request to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst_per_sec: u32,
}

/// Endpoint labels `[apps.rate_limits]` accepts (the `endpoint` label of
/// `ringcast_rest_requests_total`; `ls_*` are the LatteStream dialect's endpoints).
pub const RATE_LIMIT_ENDPOINTS: [&str; 14] = [
    "events",
    "batch_events",
    "events_batch",
    "channels",
    "channel",
    "channel_users",
    "auth",
    "ls_events",
    "ls_batch_events",
    "ls_token",
    "ls_auth",
    "ls_channels",
    "user_token",
    "user_events",
];

/// One `[[apps.webhooks]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    /// Only these event names (`channel_occupied`, `member_added`, ...); all when absent.
    pub event_types: Option<Vec<String>>,
    /// Only events on channels starting with this prefix.
    pub channel_prefix: Option<String>,
    /// Batch up to `WEBHOOK_BATCH_MAX_EVENTS` events or `WEBHOOK_BATCH_WINDOW_MS` per request.
    pub batch: Option<bool>,
    /// Hold `channel_vacated`/`member_removed` for `WEBHOOK_DEBOUNCE_MS` and drop them with the
    /// matching `channel_occupied`/`member_added` if the client comes straight back.
    pub debounce: Option<bool>,
}

/// A resolved webhook target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    pub event_types: Option<Vec<String>>,
    pub channel_prefix: Option<String>,
    pub batch: bool,
    pub debounce: bool,
}

/// Webhook event names the server sends.
pub const WEBHOOK_EVENT_TYPES: [&str; 8] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
    "client_message",
];

/// The resolved configuration: validated, immutable, shared by every core.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub api_listen: Option<SocketAddr>,
    pub workers: usize,
    pub activity_timeout_secs: u32,
    pub pong_timeout: Duration,
    pub outbound_budget_bytes: usize,
    pub write_deadline: Duration,
    pub max_message_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    pub control_messages_per_sec: u32,
    /// Pings (`pusher:ping` and WebSocket pings) per connection per minute; 0 = unlimited.
    pub pings_per_minute: u32,
    pub handshake_timeout: Duration,
    pub shutdown_grace: Duration,
    pub mesh_queue_capacity: usize,
    pub mesh_overflow_limit: usize,
    /// The flush pass's shortest coalescing window (zero: passes never wait).
    pub flush_window: Duration,
    /// The coalescing window as a percentage of the previous pass (0: the fixed window only).
    pub flush_window_ratio_pct: u32,
    pub history_max_bytes_per_core: usize,
    pub cache_max_entries_per_core: usize,
    /// Interval of the SSE streams' `: heartbeat` comment.
    pub sse_heartbeat: Duration,
    pub admission: AdmissionConfig,
    /// `[tls]`: serve wss:// and https:// on the public port (files read at bind and on SIGHUP).
    pub tls: Option<crate::tls::TlsFiles>,
    pub apps: Vec<AppConfig>,
}

/// One resolved app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub id: String,
    pub key: String,
    /// Active secrets, newest first: requests signed with any are accepted; new signatures use
    /// the first.
    pub secrets: Vec<String>,
    pub enabled: bool,
    pub client_events: bool,
    /// 0 = unlimited.
    pub max_connections: u32,
    pub max_event_bytes: usize,
    pub max_presence_members: usize,
    pub max_user_info_bytes: usize,
    pub client_events_per_sec: u32,
    pub dialect: Dialect,
    pub server_auth_channels: Vec<String>,
    pub cache_ttl: Duration,
    pub subscription_count: bool,
    /// Events kept per channel; 0 = history off.
    pub history_size: usize,
    pub history_max_age: Duration,
    pub webhooks: Vec<WebhookTarget>,
    pub webhook_retry_budget: Duration,
    /// Origins allowed to connect (empty = any); others are closed with 4009 after the upgrade.
    pub allowed_origins: Vec<OriginPattern>,
    /// LatteStream private API keys (`lsk_...`), unique over all apps.
    pub api_keys: Vec<String>,
    /// Per-endpoint rate limits configured for this app (endpoint label, limit); the control
    /// plane adds its dialects' defaults for endpoints not listed here.
    pub rate_limits: Vec<(String, RateLimit)>,
    /// Activity records (CONNECT, SUBSCRIBE, ...) kept per core; 0 = off.
    pub activity_history_size: usize,
    /// `/ws` user sockets: one per user (a newer one closes the older with 4000).
    pub single_connection_per_user: bool,
    /// Further key/secret pairs besides (`key`, `secrets`) (created through the management
    /// API). Each connection remembers the key it connected with; revoking a key closes them.
    pub extra_keys: Vec<AppKey>,
    /// Signs the app's webhooks when set (management API); otherwise the primary secret does,
    /// as with Pusher.
    pub webhook_secret: Option<String>,
}

/// An additional key of an app and the secret that signs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKey {
    pub key: String,
    pub secret: String,
}

/// A configuration the operator must fix.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

impl RawConfig {
    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(format!("invalid config: {e}")))
    }

    /// Validates and fills defaults. `cores` is the machine's core count (the default worker count).
    pub fn resolve(self, cores: usize) -> Result<Config, ConfigError> {
        let listen = parse_addr(self.listen.as_deref().unwrap_or(defaults::LISTEN), "listen")?;
        let api_listen = match self.api_listen.as_deref() {
            Some(a) => Some(parse_addr(a, "api_listen")?),
            None => None,
        };
        let workers = match self.workers {
            Some(0) | None => cores.max(1),
            Some(n) if n > 1024 => return err("workers must be at most 1024"),
            Some(n) => n,
        };
        let activity = self
            .activity_timeout
            .unwrap_or(defaults::ACTIVITY_TIMEOUT_SECS);
        if activity == 0 {
            return err("activity_timeout must be > 0 (pusher-js refuses a zero timeout)");
        }
        let pong = self.pong_timeout.unwrap_or(defaults::PONG_TIMEOUT_SECS);
        if pong == 0 {
            return err("pong_timeout must be > 0");
        }
        let budget = self
            .outbound_budget_bytes
            .unwrap_or(defaults::OUTBOUND_BUDGET_BYTES);
        if budget < 1024 {
            return err("outbound_budget_bytes must be at least 1024");
        }
        let max_message = self
            .max_message_bytes
            .unwrap_or(defaults::MAX_MESSAGE_BYTES);
        if !(256..=16 << 20).contains(&max_message) {
            return err("max_message_bytes must be within 256..=16777216");
        }
        let mesh_cap = match self
            .mesh_queue_capacity
            .unwrap_or(defaults::MESH_QUEUE_CAPACITY)
        {
            0 => (131_072 / workers).clamp(1024, 32_768),
            n => n.max(16),
        };
        let flush_window_us = self.flush_window_us.unwrap_or(defaults::FLUSH_WINDOW_US);
        if flush_window_us > defaults::FLUSH_WINDOW_US_MAX {
            return err(format!(
                "flush_window_us must be at most {} (100 ms), got {flush_window_us}",
                defaults::FLUSH_WINDOW_US_MAX
            ));
        }
        let flush_window_ratio_pct = self
            .flush_window_ratio_pct
            .unwrap_or(defaults::FLUSH_WINDOW_RATIO_PCT);
        if flush_window_ratio_pct > defaults::FLUSH_WINDOW_RATIO_PCT_MAX {
            return err(format!(
                "flush_window_ratio_pct must be at most {}, got {flush_window_ratio_pct}",
                defaults::FLUSH_WINDOW_RATIO_PCT_MAX
            ));
        }
        let mut apps = Vec::new();
        if self.apps.is_empty() {
            apps.push(AppConfig::embedded_default());
        }
        for raw in self.apps {
            apps.push(raw.resolve()?);
        }
        for (i, a) in apps.iter().enumerate() {
            for k in &a.api_keys {
                if apps[i..]
                    .iter()
                    .flat_map(|b| &b.api_keys)
                    .filter(|x| *x == k)
                    .count()
                    > 1
                {
                    return err(format!("api key {k:?} is listed twice"));
                }
            }
            for b in &apps[i + 1..] {
                if a.id == b.id {
                    return err(format!("duplicate app id {:?}", a.id));
                }
                if a.key == b.key {
                    return err(format!("duplicate app key {:?}", a.key));
                }
            }
        }
        Ok(Config {
            listen,
            api_listen,
            workers,
            activity_timeout_secs: activity,
            pong_timeout: Duration::from_secs(pong.into()),
            outbound_budget_bytes: budget,
            write_deadline: Duration::from_millis(
                self.write_deadline_ms
                    .unwrap_or(defaults::WRITE_DEADLINE_MS)
                    .max(1),
            ),
            max_message_bytes: max_message,
            max_subscriptions_per_connection: self
                .max_subscriptions_per_connection
                .unwrap_or(defaults::MAX_SUBSCRIPTIONS_PER_CONNECTION)
                .max(1),
            control_messages_per_sec: self
                .control_messages_per_sec
                .unwrap_or(defaults::CONTROL_MESSAGES_PER_SEC)
                .max(1),
            pings_per_minute: self.pings_per_minute.unwrap_or(defaults::PINGS_PER_MINUTE),
            handshake_timeout: Duration::from_millis(
                self.handshake_timeout_ms
                    .unwrap_or(defaults::HANDSHAKE_TIMEOUT_MS)
                    .max(1),
            ),
            shutdown_grace: Duration::from_millis(
                self.shutdown_grace_ms
                    .unwrap_or(defaults::SHUTDOWN_GRACE_MS),
            ),
            mesh_queue_capacity: mesh_cap,
            mesh_overflow_limit: self
                .mesh_overflow_limit
                .unwrap_or(defaults::MESH_OVERFLOW_LIMIT)
                .max(1),
            flush_window: Duration::from_micros(flush_window_us),
            flush_window_ratio_pct,
            history_max_bytes_per_core: self
                .history_max_bytes_per_core
                .unwrap_or(defaults::HISTORY_MAX_BYTES_PER_CORE),
            cache_max_entries_per_core: self
                .cache_max_entries_per_core
                .unwrap_or(defaults::CACHE_MAX_ENTRIES_PER_CORE),
            sse_heartbeat: Duration::from_secs(
                self.sse_heartbeat_secs
                    .unwrap_or(defaults::SSE_HEARTBEAT_SECS)
                    .max(1),
            ),
            admission: self.admission.unwrap_or_default().resolve()?,
            tls: self.tls,
            apps,
        })
    }
}

impl RawApp {
    /// Validates one app and fills its defaults (also used for apps created through the
    /// management API).
    pub fn resolve(self) -> Result<AppConfig, ConfigError> {
        if self.id.is_empty() || self.key.is_empty() {
            return err("every [[apps]] entry needs a non-empty id and key");
        }
        if self.key.contains(['/', '?', '#', ':']) {
            return err(format!("app key {:?} must not contain / ? # :", self.key));
        }
        let mut secrets = Vec::new();
        if let Some(s) = self.secret {
            secrets.push(s);
        }
        secrets.extend(self.secrets.unwrap_or_default());
        secrets.retain(|s| !s.is_empty());
        if secrets.is_empty() {
            return err(format!("app {:?} needs `secret` or `secrets`", self.id));
        }
        let dialect = match self.event_prefix.as_deref() {
            None | Some("pusher") => Dialect::Pusher,
            Some("relay") => Dialect::Relay,
            Some(other) => {
                return err(format!(
                    "app {:?}: event_prefix must be \"pusher\" or \"relay\", not {other:?}",
                    self.id
                ))
            }
        };
        let mut webhooks = Vec::new();
        for w in self.webhooks {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return err(format!(
                    "app {:?}: webhook url {:?} must be http:// or https://",
                    self.id, w.url
                ));
            }
            if let Some(types) = &w.event_types {
                if let Some(bad) = types
                    .iter()
                    .find(|t| !WEBHOOK_EVENT_TYPES.contains(&t.as_str()))
                {
                    return err(format!(
                        "app {:?}: unknown webhook event type {bad:?}",
                        self.id
                    ));
                }
            }
            webhooks.push(WebhookTarget {
                url: w.url,
                event_types: w.event_types,
                channel_prefix: w.channel_prefix,
                batch: w.batch.unwrap_or(false),
                debounce: w.debounce.unwrap_or(false),
            });
        }
        let allowed_origins = self
            .allowed_origins
            .unwrap_or_default()
            .iter()
            .map(|o| o.parse::<OriginPattern>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError(format!("app {:?}: {e}", self.id)))?;
        let api_keys = self.api_keys.unwrap_or_default();
        if let Some(bad) = api_keys
            .iter()
            .find(|k| !k.starts_with("lsk_") || k.len() < 8 || k.contains(char::is_whitespace))
        {
            return err(format!(
                "app {:?}: api key {bad:?} must look like lsk_<at least 4 characters>",
                self.id
            ));
        }
        let mut rate_limits = Vec::new();
        for (name, r) in self.rate_limits.unwrap_or_default() {
            if !RATE_LIMIT_ENDPOINTS.contains(&name.as_str()) {
                return err(format!(
                    "app {:?}: unknown rate-limited endpoint {name:?} (one of {})",
                    self.id,
                    RATE_LIMIT_ENDPOINTS.join(", ")
                ));
            }
            let burst = r.burst_per_sec.unwrap_or(r.per_minute.div_ceil(10));
            if r.per_minute > 0 && burst == 0 {
                return err(format!(
                    "app {:?}: rate limit {name:?}: burst_per_sec must be > 0",
                    self.id
                ));
            }
            rate_limits.push((
                name,
                RateLimit {
                    per_minute: r.per_minute,
                    burst_per_sec: burst,
                },
            ));
        }
        let activity_history_size = self
            .activity_history_size
            .unwrap_or(defaults::APP_ACTIVITY_HISTORY_SIZE);
        if activity_history_size > defaults::MAX_ACTIVITY_HISTORY_SIZE {
            return err(format!(
                "app {:?}: activity_history_size must be at most {}",
                self.id,
                defaults::MAX_ACTIVITY_HISTORY_SIZE
            ));
        }
        Ok(AppConfig {
            allowed_origins,
            single_connection_per_user: self.single_connection_per_user.unwrap_or(false),
            activity_history_size,
            api_keys,
            rate_limits,
            extra_keys: Vec::new(),
            webhook_secret: None,
            webhooks,
            webhook_retry_budget: Duration::from_secs(
                self.webhook_retry_budget_secs
                    .unwrap_or(defaults::WEBHOOK_RETRY_BUDGET_SECS),
            ),
            id: self.id,
            key: self.key,
            secrets,
            enabled: self.enabled.unwrap_or(true),
            client_events: self.client_events.unwrap_or(defaults::APP_CLIENT_EVENTS),
            max_connections: self
                .max_connections
                .unwrap_or(defaults::APP_MAX_CONNECTIONS),
            max_event_bytes: self
                .max_event_bytes
                .unwrap_or(defaults::APP_MAX_EVENT_BYTES),
            max_presence_members: self
                .max_presence_members
                .unwrap_or(defaults::APP_MAX_PRESENCE_MEMBERS),
            max_user_info_bytes: self
                .max_user_info_bytes
                .unwrap_or(defaults::APP_MAX_USER_INFO_BYTES),
            client_events_per_sec: self
                .client_events_per_sec
                .unwrap_or(defaults::APP_CLIENT_EVENTS_PER_SEC)
                .max(1),
            dialect,
            server_auth_channels: self.server_auth_channels.unwrap_or_default(),
            cache_ttl: Duration::from_secs(
                self.cache_ttl_secs
                    .unwrap_or(defaults::APP_CACHE_TTL_SECS)
                    .max(1),
            ),
            subscription_count: self
                .subscription_count
                .unwrap_or(defaults::APP_SUBSCRIPTION_COUNT),
            history_size: self.history_size.unwrap_or(defaults::APP_HISTORY_SIZE),
            history_max_age: Duration::from_secs(
                self.history_max_age_secs
                    .unwrap_or(defaults::APP_HISTORY_MAX_AGE_SECS)
                    .max(1),
            ),
        })
    }
}

impl AppConfig {
    /// The embedded default app: id `app-id`, key `app-key`, secret `app-secret`, client events on.
    pub fn embedded_default() -> AppConfig {
        AppConfig {
            id: defaults::DEFAULT_APP_ID.into(),
            key: defaults::DEFAULT_APP_KEY.into(),
            secrets: vec![defaults::DEFAULT_APP_SECRET.into()],
            enabled: true,
            client_events: true,
            max_connections: defaults::APP_MAX_CONNECTIONS,
            max_event_bytes: defaults::APP_MAX_EVENT_BYTES,
            max_presence_members: defaults::APP_MAX_PRESENCE_MEMBERS,
            max_user_info_bytes: defaults::APP_MAX_USER_INFO_BYTES,
            client_events_per_sec: defaults::APP_CLIENT_EVENTS_PER_SEC,
            dialect: Dialect::Pusher,
            server_auth_channels: Vec::new(),
            cache_ttl: Duration::from_secs(defaults::APP_CACHE_TTL_SECS),
            subscription_count: defaults::APP_SUBSCRIPTION_COUNT,
            history_size: defaults::APP_HISTORY_SIZE,
            history_max_age: Duration::from_secs(defaults::APP_HISTORY_MAX_AGE_SECS),
            webhooks: Vec::new(),
            webhook_retry_budget: Duration::from_secs(defaults::WEBHOOK_RETRY_BUDGET_SECS),
            allowed_origins: Vec::new(),
            api_keys: Vec::new(),
            rate_limits: Vec::new(),
            activity_history_size: defaults::APP_ACTIVITY_HISTORY_SIZE,
            single_connection_per_user: false,
            extra_keys: Vec::new(),
            webhook_secret: None,
        }
    }

    /// Every (key, accepted secrets) pair: the primary key first, then `extra_keys`.
    pub fn credentials(&self) -> impl Iterator<Item = (&str, &[String])> {
        std::iter::once((self.key.as_str(), self.secrets.as_slice())).chain(
            self.extra_keys
                .iter()
                .map(|k| (k.key.as_str(), std::slice::from_ref(&k.secret))),
        )
    }

    /// The secrets accepted for signatures made with `key`, if it is one of this app's keys.
    pub fn secrets_for(&self, key: &str) -> Option<&[String]> {
        self.credentials().find(|(k, _)| *k == key).map(|(_, s)| s)
    }

    /// The secret new signatures are made with.
    pub fn primary_secret(&self) -> &str {
        // Invariant: resolve() refuses an app without a secret.
        &self.secrets[0]
    }
}

impl Config {
    /// The configuration used with no config file at all.
    pub fn embedded_default(cores: usize) -> Config {
        // Invariant: the default RawConfig resolves (all defaults are valid).
        RawConfig::default()
            .resolve(cores)
            .expect("embedded defaults are valid")
    }
}

fn parse_addr(s: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError(format!(
            "{what}: {s:?} is not an address like 127.0.0.1:6001"
        ))
    })
}

#[allow(dead_code)]
const _ASSERT_LIMITS: () = assert!(limits::MAX_CHANNEL_NAME_LEN == 200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_window_defaults_accepts_zero_and_rejects_above_100ms() {
        let w = |t: &str| RawConfig::from_toml(t).unwrap().resolve(1);
        assert_eq!(
            w("").unwrap().flush_window,
            Duration::from_micros(defaults::FLUSH_WINDOW_US)
        );
        assert_eq!(
            w("flush_window_us = 0").unwrap().flush_window,
            Duration::ZERO
        );
        assert_eq!(
            w("flush_window_us = 100000").unwrap().flush_window,
            Duration::from_millis(100)
        );
        let e = w("flush_window_us = 100001").unwrap_err().to_string();
        assert!(e.contains("flush_window_us must be at most 100000"), "{e}");
    }

    #[test]
    fn flush_window_ratio_defaults_accepts_zero_and_rejects_above_100() {
        let w = |t: &str| RawConfig::from_toml(t).unwrap().resolve(1);
        assert_eq!(
            w("").unwrap().flush_window_ratio_pct,
            defaults::FLUSH_WINDOW_RATIO_PCT
        );
        assert_eq!(
            w("flush_window_ratio_pct = 0")
                .unwrap()
                .flush_window_ratio_pct,
            0
        );
        assert_eq!(
            w("flush_window_ratio_pct = 100")
                .unwrap()
                .flush_window_ratio_pct,
            100
        );
        let e = w("flush_window_ratio_pct = 101").unwrap_err().to_string();
        assert!(
            e.contains("flush_window_ratio_pct must be at most 100"),
            "{e}"
        );
    }

    #[test]
    fn tls_table_is_parsed_and_its_mistakes_are_errors() {
        let c = RawConfig::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n")
            .unwrap()
            .resolve(1)
            .unwrap();
        let t = c.tls.expect("[tls] resolved");
        assert_eq!(t.cert, std::path::PathBuf::from("c.pem"));
        assert_eq!(t.key, std::path::PathBuf::from("k.pem"));
        assert!(RawConfig::from_toml("")
            .unwrap()
            .resolve(1)
            .unwrap()
            .tls
            .is_none());
        let err = |s: &str| RawConfig::from_toml(s).unwrap_err().to_string();
        assert!(err("[tls]\ncert = \"c.pem\"\n").contains("missing field `key`"));
        assert!(err("[tls]\nkey = \"k.pem\"\n").contains("missing field `cert`"));
        assert!(err("[tls]\ncert = \"c\"\nkey = \"k\"\ncert_file = \"x\"\n").contains("cert_file"));
        assert!(err("tls = true\n").contains("tls"));
    }

    #[test]
    fn empty_config_gives_embedded_default_app() {
        let c = RawConfig::from_toml("").unwrap().resolve(4).unwrap();
        assert_eq!(c.workers, 4);
        assert_eq!(c.listen.to_string(), "127.0.0.1:6001");
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].key, "app-key");
        assert!(c.apps[0].client_events);
        assert_eq!(c.activity_timeout_secs, 120);
    }

    #[test]
    fn apps_table_resolves_with_defaults_and_rotation() {
        let c = RawConfig::from_toml(
            r#"
            listen = "0.0.0.0:7000"
            workers = 2
            [[apps]]
            id = "1"
            key = "k"
            secret = "new"
            secrets = ["old"]
            max_connections = 3
            event_prefix = "relay"
            "#,
        )
        .unwrap()
        .resolve(8)
        .unwrap();
        assert_eq!(c.workers, 2);
        let a = &c.apps[0];
        assert_eq!(a.secrets, vec!["new".to_string(), "old".to_string()]);
        assert_eq!(a.primary_secret(), "new");
        assert!(!a.client_events);
        assert_eq!(a.max_connections, 3);
        assert_eq!(a.dialect, Dialect::Relay);
        assert_eq!(a.max_event_bytes, 10 * 1024);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(RawConfig::from_toml("lisen = \"x\"").is_err());
        let bad = |t: &str| RawConfig::from_toml(t).unwrap().resolve(1).is_err();
        assert!(bad("listen = \"nope\""));
        assert!(bad("activity_timeout = 0"));
        assert!(bad("[[apps]]\nid=\"a\"\nkey=\"k\""));
        assert!(bad("[[apps]]\nid=\"a\"\nkey=\"k\"\nsecret=\"s\"\n[[apps]]\nid=\"a\"\nkey=\"k2\"\nsecret=\"s\""));
        assert!(bad(
            "[[apps]]\nid=\"a\"\nkey=\"k\"\nsecret=\"s\"\nevent_prefix=\"x\""
        ));
    }

    #[test]
    fn webhook_targets_resolve_and_bad_ones_are_refused() {
        let app = "[[apps]]\nid='a'\nkey='k'\nsecret='s'\n";
        let bad = |t: String| RawConfig::from_toml(&t).unwrap().resolve(1).is_err();
        assert!(bad(format!("{app}[[apps.webhooks]]\nurl='ftp://x'")));
        assert!(bad(format!(
            "{app}[[apps.webhooks]]\nurl='http://x'\nevent_types=['nope']"
        )));
        let ok = RawConfig::from_toml(&format!(
            "{app}webhook_retry_budget_secs=7\n[[apps.webhooks]]\nurl='http://127.0.0.1:9/h'\nevent_types=['member_added']\nbatch=true"
        ))
        .unwrap()
        .resolve(1)
        .unwrap();
        let a = &ok.apps[0];
        assert_eq!(a.webhook_retry_budget, Duration::from_secs(7));
        let w = &a.webhooks[0];
        assert!(w.batch && !w.debounce);
        assert_eq!(
            w.event_types.as_deref(),
            Some(&["member_added".to_string()][..])
        );
    }
}
