//! The management model: an app created through the API ([`ManagedApp`]), how its JSON input
//! is validated (every error names its field) and how it becomes the engine's [`AppConfig`].
//! Per-app settings are exactly the `[[apps]]` keys of the config file, with the same names,
//! defaults and validation (`RawApp::resolve`).

use ringcast_engine::{AppConfig, AppKey, RawApp};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::error::MgmtError;
use super::token::random_hex;

/// The per-app settings the API accepts (the config file's `[[apps]]` keys other than the
/// credentials, which are managed through `/keys`).
pub const SETTINGS: [&str; 20] = [
    "enabled",
    "client_events",
    "client_events_per_sec",
    "max_connections",
    "max_event_bytes",
    "max_presence_members",
    "max_user_info_bytes",
    "event_prefix",
    "server_auth_channels",
    "cache_ttl_secs",
    "subscription_count",
    "history_size",
    "history_max_age_secs",
    "webhook_retry_budget_secs",
    "webhooks",
    "allowed_origins",
    "api_keys",
    "rate_limits",
    "activity_history_size",
    "single_connection_per_user",
];

/// Settings that are credentials: written only with `secrets:manage`, shown only with it.
pub const SECRET_SETTINGS: [&str; 1] = ["api_keys"];

/// Longest app id / name.
pub const MAX_ID_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 200;

/// A key/secret pair of a managed app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    pub key: String,
    pub secret: String,
    pub created_at: u64,
}

/// An app created through the API, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedApp {
    pub id: String,
    pub name: String,
    /// The first key is the primary one (it signs what the server signs).
    pub keys: Vec<KeyPair>,
    /// Validated settings as given (absent = default).
    pub settings: Map<String, Value>,
    /// Signs the app's webhooks when set (else the primary secret does).
    pub webhook_secret: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl ManagedApp {
    /// The engine's view. Fails only if the stored settings no longer resolve.
    pub fn to_config(&self) -> Result<AppConfig, MgmtError> {
        let primary = self
            .keys
            .first()
            .ok_or_else(|| MgmtError::conflict(format!("app {:?} has no key", self.id)))?;
        let mut obj = self.settings.clone();
        obj.insert("id".into(), json!(self.id));
        obj.insert("key".into(), json!(primary.key));
        obj.insert("secret".into(), json!(primary.secret));
        let raw: RawApp = serde_json::from_value(Value::Object(obj))
            .map_err(|e| MgmtError::field("settings", e.to_string()))?;
        let mut cfg = raw
            .resolve()
            .map_err(|e| MgmtError::field("settings", e.0))?;
        cfg.extra_keys = self.keys[1..]
            .iter()
            .map(|k| AppKey {
                key: k.key.clone(),
                secret: k.secret.clone(),
            })
            .collect();
        cfg.webhook_secret = self.webhook_secret.clone();
        Ok(cfg)
    }
}

/// A new key/secret pair: a 20-hex-digit key and a 40-hex-digit secret from the OS.
pub fn new_key_pair(now: u64) -> Result<KeyPair, MgmtError> {
    Ok(KeyPair {
        key: random_hex(10)?,
        secret: random_hex(20)?,
        created_at: now,
    })
}

/// App ids: 1..=64 of `A-Z a-z 0-9 _ -`, starting with a letter or digit.
pub fn validate_id(id: &str) -> Result<(), MgmtError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MgmtError::field(
            "id",
            format!("{id:?} is not an app id (1-{MAX_ID_LEN} of A-Z a-z 0-9 _ -)"),
        ))
    }
}

/// Checks one setting by resolving an app that has only it: the error then belongs to it.
pub fn validate_setting(name: &str, value: &Value) -> Result<(), MgmtError> {
    if !SETTINGS.contains(&name) {
        return Err(MgmtError::field(
            name,
            format!("unknown field (settings are: {})", SETTINGS.join(", ")),
        ));
    }
    if name == "server_auth_channels" {
        let list = value
            .as_array()
            .ok_or_else(|| MgmtError::field(name, "must be an array of channel patterns"))?;
        for (i, p) in list.iter().enumerate() {
            let p = p.as_str().unwrap_or("");
            let ok = !p.is_empty()
                && p.len() <= 200
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;*#".contains(&b));
            if !ok {
                return Err(MgmtError::field(
                    format!("server_auth_channels[{i}]"),
                    "not a channel pattern (1-200 of A-Z a-z 0-9 _ - = @ , . ; # and * wildcards)",
                ));
            }
        }
    }
    let obj = json!({"id": "x", "key": "x", "secret": "x", name: value});
    let raw: RawApp =
        serde_json::from_value(obj).map_err(|e| MgmtError::field(name, e.to_string()))?;
    raw.resolve().map_err(|e| MgmtError::field(name, e.0))?;
    Ok(())
}

/// Applies a JSON object of settings (and `name`) to `settings`: `null` resets a setting to
/// its default. Fields other than `name`, `id` and [`SETTINGS`] are refused, naming them.
pub fn apply_fields(
    body: &Map<String, Value>,
    name: &mut String,
    settings: &mut Map<String, Value>,
) -> Result<(), MgmtError> {
    for (k, v) in body {
        match k.as_str() {
            "id" => {}
            "name" => {
                let n = v
                    .as_str()
                    .ok_or_else(|| MgmtError::field("name", "must be a string"))?;
                if n.len() > MAX_NAME_LEN {
                    return Err(MgmtError::field(
                        "name",
                        format!("longer than {MAX_NAME_LEN} bytes"),
                    ));
                }
                *name = n.to_owned();
            }
            "key" | "secret" | "secrets" | "keys" => {
                return Err(MgmtError::field(
                    k,
                    "credentials are managed with POST/DELETE /api/apps/{id}/keys",
                ))
            }
            _ if v.is_null() => {
                validate_setting(k, &json!(false)).or_else(|e| {
                    // Unknown names fail whatever the value; known ones may be reset.
                    if SETTINGS.contains(&k.as_str()) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
                settings.remove(k);
            }
            _ => {
                validate_setting(k, v)?;
                settings.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

/// Every setting of a resolved app, as the API shows it (defaults filled in).
pub fn settings_of(a: &AppConfig) -> Value {
    json!({
        "enabled": a.enabled,
        "client_events": a.client_events,
        "client_events_per_sec": a.client_events_per_sec,
        "max_connections": a.max_connections,
        "max_event_bytes": a.max_event_bytes,
        "max_presence_members": a.max_presence_members,
        "max_user_info_bytes": a.max_user_info_bytes,
        "event_prefix": match a.dialect {
            ringcast_protocol::Dialect::Pusher => "pusher",
            ringcast_protocol::Dialect::Relay => "relay",
        },
        "server_auth_channels": a.server_auth_channels,
        "cache_ttl_secs": a.cache_ttl.as_secs(),
        "subscription_count": a.subscription_count,
        "history_size": a.history_size,
        "history_max_age_secs": a.history_max_age.as_secs(),
        "webhook_retry_budget_secs": a.webhook_retry_budget.as_secs(),
        "webhooks": a.webhooks.iter().map(|w| json!({
            "url": w.url,
            "event_types": w.event_types,
            "channel_prefix": w.channel_prefix,
            "batch": w.batch,
            "debounce": w.debounce,
        })).collect::<Vec<_>>(),
        "allowed_origins": a.allowed_origins.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        "api_keys": a.api_keys,
        "rate_limits": a.rate_limits.iter().map(|(k, r)| (k.clone(), json!({
            "per_minute": r.per_minute,
            "burst_per_sec": r.burst_per_sec,
        }))).collect::<Map<String, Value>>(),
        "activity_history_size": a.activity_history_size,
        "single_connection_per_user": a.single_connection_per_user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            ("nope", json!(1), "nope"),
            ("max_connections", json!("x"), "max_connections"),
            ("max_connections", json!(-1), "max_connections"),
            ("event_prefix", json!("other"), "event_prefix"),
            ("webhooks", json!([{"url": "ftp://x"}]), "webhooks"),
            (
                "webhooks",
                json!([{"url": "http://x", "oops": 1}]),
                "webhooks",
            ),
            (
                "server_auth_channels",
                json!(["ok-*", "bad channel"]),
                "server_auth_channels[1]",
            ),
        ];
        for (k, v, field) in cases {
            let e = validate_setting(k, &v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{k}={v}: {e}");
            assert_eq!(e.status, 400);
        }
        let more = [
            (
                "allowed_origins",
                json!(["https://x.test/"]),
                "allowed_origins",
            ),
            (
                "allowed_origins",
                json!("https://x.test"),
                "allowed_origins",
            ),
            ("api_keys", json!(["nope"]), "api_keys"),
            (
                "rate_limits",
                json!({"bogus": {"per_minute": 1}}),
                "rate_limits",
            ),
            (
                "rate_limits",
                json!({"events": {"per_minute": 1, "oops": 2}}),
                "rate_limits",
            ),
            (
                "activity_history_size",
                json!(1u64 << 40),
                "activity_history_size",
            ),
            (
                "single_connection_per_user",
                json!("yes"),
                "single_connection_per_user",
            ),
        ];
        for (k, v, field) in more {
            let e = validate_setting(k, &v).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{k}={v}: {e}");
        }
        validate_setting("max_connections", &json!(5)).unwrap();
        validate_setting("server_auth_channels", &json!(["private-*"])).unwrap();
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["1", "app-1", "A_b"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "-a", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(validate_id(bad).unwrap_err().field.as_deref(), Some("id"));
        }
    }

    #[test]
    fn a_managed_app_resolves_with_its_keys() {
        let mut settings = Map::new();
        let mut name = String::new();
        apply_fields(
            json!({"name": "n", "client_events": true, "max_connections": 3})
                .as_object()
                .unwrap(),
            &mut name,
            &mut settings,
        )
        .unwrap();
        let app = ManagedApp {
            id: "7".into(),
            name,
            keys: vec![new_key_pair(1).unwrap(), new_key_pair(1).unwrap()],
            settings,
            webhook_secret: None,
            created_at: 1,
            updated_at: 1,
        };
        let cfg = app.to_config().unwrap();
        assert!(cfg.client_events);
        assert_eq!(cfg.max_connections, 3);
        assert_eq!(cfg.key, app.keys[0].key);
        assert_eq!(cfg.extra_keys.len(), 1);
        // Every config-file setting round-trips through the model and shows as written.
        let mut settings = Map::new();
        apply_fields(
            json!({
                "allowed_origins": ["https://a.test", "*.b.test", "c.test:8080"],
                "api_keys": ["lsk_abcdef"],
                "rate_limits": {"events": {"per_minute": 600, "burst_per_sec": 20}},
                "activity_history_size": 7,
                "single_connection_per_user": true,
            })
            .as_object()
            .unwrap(),
            &mut String::new(),
            &mut settings,
        )
        .unwrap();
        let cfg = ManagedApp {
            settings,
            ..app.clone()
        }
        .to_config()
        .unwrap();
        let shown = settings_of(&cfg);
        assert_eq!(
            shown["allowed_origins"],
            json!(["https://a.test", "*.b.test", "c.test:8080"])
        );
        assert_eq!(shown["api_keys"], json!(["lsk_abcdef"]));
        assert_eq!(
            shown["rate_limits"],
            json!({"events": {"per_minute": 600, "burst_per_sec": 20}})
        );
        assert_eq!(shown["activity_history_size"], json!(7));
        assert_eq!(shown["single_connection_per_user"], json!(true));
        assert_eq!(
            cfg.secrets_for(&app.keys[1].key),
            Some(&[app.keys[1].secret.clone()][..])
        );
    }
}
