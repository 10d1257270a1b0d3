//! The Relay dialect (the self-hosted relay server Ringcast replaces; called "seed" before it
//! had a name here): the response shapes an `Authorization: Bearer <app secret>` request gets
//! on the shared `/apps/{id}/...` paths, its own `POST /apps/{id}/events/batch`, and
//! server-side channel authorization (`POST /apps/{id}/auth`). Authentication, rate limits,
//! body limits and error rendering are the shared pipeline's (`crate::api`).
//!
//! | request | Bearer response |
//! |---|---|
//! | `POST /apps/{id}/events` `{channel, event, data, socket_id?}` | `{"ok": true}` |
//! | `POST /apps/{id}/events/batch` `{"batch": [{channel, event, data}]}` | `{"ok": true, "count": N}` |
//! | `GET /apps/{id}/channels` | `{"channels": [{name, type, subscriber_count, occupied, app_id}]}` |
//! | `GET /apps/{id}/channels/{name}` | one such object |
//! | `GET /apps/{id}/channels/{name}/users` | `{"users": [{id, user_info}]}` |
//! | `POST /apps/{id}/auth` `{socket_id, channel_name, channel_data?}` | `{auth, channel_data?}` |

use ringcast_engine::{AppConfig, ChannelSummary, PresenceUser};
use ringcast_protocol::{channel_auth, parse_channel_data, ChannelKind, ChannelName, SocketId};
use serde_json::{json, Value};

use crate::api::{Body, Ctx};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::Api;

/// `type` of a channel object.
pub fn channel_type(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Public => "public",
        ChannelKind::Private => "private",
        ChannelKind::PrivateEncrypted => "private-encrypted",
        ChannelKind::Presence => "presence",
        ChannelKind::ServerToUser => "server-to-user",
    }
}

/// `{name, type, subscriber_count, occupied, app_id}` (`subscriber_count` counts connections;
/// presence channels add `user_count`, distinct users).
pub fn channel_object(app_id: &str, s: &ChannelSummary) -> Value {
    let mut v = json!({
        "name": s.name.as_str(),
        "type": channel_type(s.name.kind()),
        "subscriber_count": s.subscription_count,
        "occupied": s.occupied,
        "app_id": app_id,
    });
    if let (Some(n), Value::Object(m)) = (s.user_count, &mut v) {
        m.insert("user_count".into(), n.into());
    }
    v
}

/// `{"users": [{id, user_info}]}` with each member's `user_info` as sent at subscription
/// (`null` when none).
pub fn users_object(users: &[PresenceUser]) -> Value {
    let list: Vec<Value> = users
        .iter()
        .map(|u| {
            json!({
                "id": u.id,
                "user_info": serde_json::from_str::<Value>(&u.user_info_json).unwrap_or(Value::Null),
            })
        })
        .collect();
    json!({ "users": list })
}

pub use ringcast_protocol::jwt::pattern_matches;

/// Server-side channel authorization: signs `socket_id:channel_name[:channel_data]` with the
/// app's primary secret, but only for channels matching one of the app's
/// `server_auth_channels` patterns (empty = disabled, the default: signing for anyone who
/// asks would make every private channel public).
pub fn server_auth(app: &AppConfig, body: &Body) -> Result<Value, ApiError> {
    if app.server_auth_channels.is_empty() {
        return Err(ApiError::new(
            403,
            "server_auth_disabled",
            format!(
                "server-side channel authorization is disabled for app {:?}: it would let anyone \
                 holding the API credentials subscribe to private channels. Enable it by listing \
                 the channel patterns it may sign in the app's `server_auth_channels` (e.g. \
                 [\"private-support-*\"]), or sign in your own auth endpoint",
                app.id
            ),
        ));
    }
    let socket_id = body.str("socket_id")?;
    if SocketId::parse(socket_id).is_none() {
        return Err(ApiError::new(
            400,
            "invalid_socket_id",
            format!("invalid socket_id {socket_id:?}: expected digits.digits"),
        ));
    }
    let name = body.str("channel_name")?;
    let channel = ChannelName::parse(name).map_err(|e| {
        ApiError::new(
            400,
            "invalid_channel",
            format!("invalid channel name {name:?}: {e}"),
        )
    })?;
    match channel.kind() {
        ChannelKind::Private | ChannelKind::Presence => {}
        ChannelKind::Public => {
            return Err(ApiError::bad_request(format!(
                "{name:?} is a public channel: subscribing needs no authorization"
            )))
        }
        ChannelKind::PrivateEncrypted => {
            return Err(ApiError::bad_request(
                "private-encrypted channels need a shared_secret derived from the app's \
                 encryption master key, which the server does not hold: authorize them in your \
                 own auth endpoint",
            ))
        }
        ChannelKind::ServerToUser => {
            return Err(ApiError::bad_request(
                "#server-to-user- channels are joined by signing in (pusher:signin), not by \
                 channel authorization",
            ))
        }
    }
    if !app
        .server_auth_channels
        .iter()
        .any(|p| pattern_matches(p, name))
    {
        return Err(ApiError::new(
            403,
            "server_auth_forbidden",
            format!(
                "channel {name:?} matches none of app {:?}'s server_auth_channels patterns",
                app.id
            ),
        ));
    }
    let channel_data: Option<String> = match body.get("channel_data") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        // An object is signed as its compact JSON text, returned so the client sends exactly it.
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`channel_data` must be a JSON string (or object)",
            ))
        }
    };
    if channel.kind() == ChannelKind::Presence {
        let Some(cd) = &channel_data else {
            return Err(ApiError::bad_request(
                "presence channels need `channel_data` ({\"user_id\": ..., \"user_info\": ...})",
            ));
        };
        parse_channel_data(cd, app.max_user_info_bytes).map_err(|e| {
            ApiError::new(
                400,
                "invalid_channel_data",
                format!("invalid channel_data: {e}"),
            )
        })?;
    }
    let auth = channel_auth(
        &app.key,
        app.primary_secret(),
        socket_id,
        name,
        channel_data.as_deref(),
    );
    Ok(match channel_data {
        Some(cd) => json!({"auth": auth, "channel_data": cd}),
        None => json!({ "auth": auth }),
    })
}

impl Api {
    /// Relay `POST /apps/{id}/events/batch`: `{"ok": true, "count": N}`.
    pub(crate) async fn relay_batch(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        let specs = self.batch_items(ctx, req, true)?;
        let n = specs.len();
        for s in specs {
            self.publish_queued(ctx, s)?;
        }
        Ok(Response::json(200, &json!({"ok": true, "count": n})))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::verify_channel_auth;

    fn app(patterns: &[&str]) -> AppConfig {
        AppConfig {
            secrets: vec!["primary".into(), "old".into()],
            server_auth_channels: patterns.iter().map(|s| s.to_string()).collect(),
            ..AppConfig::embedded_default()
        }
    }

    fn body(v: Value) -> Body {
        match v {
            Value::Object(m) => Body(m),
            _ => panic!(),
        }
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("private-*", "private-a"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("presence-room-*-x", "presence-room-1-x"));
        assert!(pattern_matches("private-a", "private-a"));
        assert!(!pattern_matches("private-a", "private-ab"));
        assert!(!pattern_matches("private-*", "presence-a"));
        assert!(pattern_matches("*-x", "a-b-x"));
        assert!(!pattern_matches("*-x", "a-b-y"));
        assert!(pattern_matches("a**b", "ab"));
    }

    #[test]
    fn disabled_by_default() {
        let e = server_auth(
            &app(&[]),
            &body(json!({"socket_id": "1.2", "channel_name": "private-a"})),
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (403, "server_auth_disabled"));
        assert!(e.message.contains("server_auth_channels"));
    }

    #[test]
    fn signs_matching_private_channels_with_the_primary_secret() {
        let a = app(&["private-ok-*"]);
        let v = server_auth(
            &a,
            &body(json!({"socket_id": "1234.1234", "channel_name": "private-ok-1"})),
        )
        .unwrap();
        let auth = v["auth"].as_str().unwrap();
        assert_eq!(
            auth,
            channel_auth("app-key", "primary", "1234.1234", "private-ok-1", None)
        );
        assert!(v.get("channel_data").is_none());
        let ch = ChannelName::parse("private-ok-1").unwrap();
        verify_channel_auth("app-key", &a.secrets, "1234.1234", &ch, None, Some(auth)).unwrap();
        let e = server_auth(
            &a,
            &body(json!({"socket_id": "1234.1234", "channel_name": "private-other"})),
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (403, "server_auth_forbidden"));
    }

    #[test]
    fn presence_needs_valid_channel_data_and_echoes_it() {
        let a = app(&["presence-*"]);
        let cd = r#"{"user_id": 10, "user_info": {"name": "Mr. Channels"}}"#;
        let v = server_auth(
            &a,
            &body(json!({"socket_id": "1.2", "channel_name": "presence-r", "channel_data": cd})),
        )
        .unwrap();
        assert_eq!(v["channel_data"], cd);
        assert_eq!(
            v["auth"],
            channel_auth("app-key", "primary", "1.2", "presence-r", Some(cd))
        );
        let obj = server_auth(
            &a,
            &body(json!({"socket_id": "1.2", "channel_name": "presence-r", "channel_data": {"user_id": "u"}})),
        )
        .unwrap();
        assert_eq!(obj["channel_data"], "{\"user_id\":\"u\"}");
        for bad in [
            json!({"socket_id": "1.2", "channel_name": "presence-r"}),
            json!({"socket_id": "1.2", "channel_name": "presence-r", "channel_data": "{}"}),
            json!({"socket_id": "1.2", "channel_name": "presence-r", "channel_data": "nope"}),
        ] {
            assert_eq!(
                server_auth(&a, &body(bad.clone())).unwrap_err().status,
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_inputs_are_400() {
        let a = app(&["*"]);
        for bad in [
            json!({"channel_name": "private-a"}),
            json!({"socket_id": "x", "channel_name": "private-a"}),
            json!({"socket_id": "1.2"}),
            json!({"socket_id": "1.2", "channel_name": "bad name"}),
            json!({"socket_id": "1.2", "channel_name": "public"}),
            json!({"socket_id": "1.2", "channel_name": "private-encrypted-a"}),
            json!({"socket_id": "1.2", "channel_name": "#server-to-user-1"}),
            json!({"socket_id": "1.2", "channel_name": "private-a", "channel_data": 5}),
        ] {
            assert_eq!(
                server_auth(&a, &body(bad.clone())).unwrap_err().status,
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn shapes() {
        let s = ChannelSummary {
            name: ChannelName::parse("presence-x").unwrap(),
            occupied: true,
            subscription_count: 3,
            user_count: Some(2),
        };
        assert_eq!(
            channel_object("app-id", &s),
            json!({"name": "presence-x", "type": "presence", "subscriber_count": 3,
                   "occupied": true, "app_id": "app-id", "user_count": 2})
        );
        let users = vec![
            PresenceUser {
                id: "1".into(),
                user_info_json: "{\"n\":1}".into(),
            },
            PresenceUser {
                id: "2".into(),
                user_info_json: "null".into(),
            },
        ];
        assert_eq!(
            users_object(&users),
            json!({"users": [{"id": "1", "user_info": {"n": 1}}, {"id": "2", "user_info": null}]})
        );
    }
}
