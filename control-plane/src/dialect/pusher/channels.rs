//! Queries: `GET /channels`, `GET /channels/{name}`, `GET /channels/{name}/users`, and
//! `POST /users/{id}/terminate_connections`. Counts come from the channel owners, so they
//! are exact across cores (`user_count` distinct users, `subscription_count` connections).

use ringcast_protocol::{ChannelKind, ChannelName, SERVER_TO_USER_PREFIX};
use serde_json::{json, Map, Value};

use crate::api::{query_param, Ctx, Info};
use crate::auth::Credential;
use crate::dialect::relay;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::Api;

fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| {
        ApiError::new(
            400,
            "invalid_channel",
            format!("invalid channel name {name:?}: {e}"),
        )
    })
}

fn info_of(req: &Request, allow_cache: bool) -> Result<Info, ApiError> {
    match query_param(req, "info") {
        Some(list) => Info::parse(&list, allow_cache),
        None => Ok(Info::default()),
    }
}

/// Largest user id accepted by `terminate_connections` (the Python SDK's own limit).
const MAX_USER_ID_BYTES: usize = 200;

impl Api {
    /// `GET /apps/{id}/channels`: occupied channels, optionally by `filter_by_prefix`.
    pub(crate) async fn channels(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        let prefix = query_param(req, "filter_by_prefix").filter(|p| !p.is_empty());
        let info = info_of(req, false)?;
        if info.user_count
            && !prefix
                .as_deref()
                .is_some_and(|p| p.starts_with("presence-"))
        {
            return Err(ApiError::bad_request(
                "info=user_count is only available for presence channels: add \
                 filter_by_prefix=presence-",
            ));
        }
        let mut list = self.engine.channels(ctx.idx, prefix.as_deref()).await?;
        // `#server-to-user-*` channels are internal: listed only when asked for by prefix.
        let internal_asked = prefix.as_deref().is_some_and(|p| p.starts_with('#'));
        list.retain(|s| {
            s.occupied && (internal_asked || !s.name.as_str().starts_with(SERVER_TO_USER_PREFIX))
        });
        let body = if ctx.cred == Credential::Bearer {
            let arr: Vec<Value> = list
                .iter()
                .map(|s| relay::channel_object(&ctx.app.id, s))
                .collect();
            json!({ "channels": arr })
        } else {
            let mut m = Map::new();
            for s in &list {
                let mut attrs = Map::new();
                if info.user_count {
                    if let Some(n) = s.user_count {
                        attrs.insert("user_count".into(), n.into());
                    }
                }
                if info.subscription_count {
                    attrs.insert("subscription_count".into(), s.subscription_count.into());
                }
                m.insert(s.name.as_str().to_owned(), Value::Object(attrs));
            }
            json!({ "channels": m })
        };
        Ok(Response::json(200, &body))
    }

    /// `GET /apps/{id}/channels/{name}`: `occupied` always, counts when asked for.
    pub(crate) async fn channel(
        &self,
        ctx: &Ctx,
        req: &Request,
        name: &str,
    ) -> Result<Response, ApiError> {
        let channel = parse_channel(name)?;
        let info = info_of(req, true)?;
        let presence = channel.kind() == ChannelKind::Presence;
        if info.user_count && !presence {
            return Err(ApiError::bad_request(
                "info=user_count is only available for presence channels",
            ));
        }
        let cached = if info.cache && channel.is_cache() {
            self.engine.channel_cache(ctx.idx, channel.clone()).await?
        } else {
            None
        };
        let s = self.engine.channel(ctx.idx, channel).await?;
        if ctx.cred == Credential::Bearer {
            return Ok(Response::json(200, &relay::channel_object(&ctx.app.id, &s)));
        }
        let mut m = Map::new();
        m.insert("occupied".into(), s.occupied.into());
        if info.user_count {
            m.insert("user_count".into(), s.user_count.unwrap_or(0).into());
        }
        if info.subscription_count {
            m.insert("subscription_count".into(), s.subscription_count.into());
        }
        if let Some(c) = cached {
            m.insert("cache".into(), json!({"data": c.data, "ttl": c.ttl_secs}));
        }
        Ok(Response::json(200, &Value::Object(m)))
    }

    /// `GET /apps/{id}/channels/{name}/users`: presence channels only.
    pub(crate) async fn channel_users(&self, ctx: &Ctx, name: &str) -> Result<Response, ApiError> {
        let channel = parse_channel(name)?;
        if channel.kind() != ChannelKind::Presence {
            return Err(ApiError::bad_request(format!(
                "{name:?} is not a presence channel: only presence channels have users"
            )));
        }
        let users = self.engine.presence_users(ctx.idx, channel).await?;
        let body = if ctx.cred == Credential::Bearer {
            relay::users_object(&users)
        } else {
            let list: Vec<Value> = users.iter().map(|u| json!({"id": u.id})).collect();
            json!({ "users": list })
        };
        Ok(Response::json(200, &body))
    }

    /// `POST .../users/{id}/terminate_connections`: closes every connection signed in as the
    /// user with the configured close code (4009 by default).
    pub(crate) async fn terminate(&self, ctx: &Ctx, user: &str) -> Result<Response, ApiError> {
        if user.is_empty() || user.len() > MAX_USER_ID_BYTES {
            return Err(ApiError::bad_request(format!(
                "the user id must be 1 to {MAX_USER_ID_BYTES} bytes long"
            )));
        }
        let n = self
            .engine
            .terminate_user(ctx.idx, user, self.config.terminate_close_code)
            .await?;
        tracing::info!(app = %ctx.app.id, user, connections = n, "terminated user connections");
        if ctx.cred == Credential::Bearer {
            Ok(Response::json(200, &json!({"ok": true, "connections": n})))
        } else {
            Ok(Response::empty_object())
        }
    }
}
