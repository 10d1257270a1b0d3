//! The LatteStream REST dialect: paths at the API root, private API keys (`lsk_...`, the
//! app's `api_keys`) that name the app, its error codes. Authentication by key, rate limits
//! and error rendering run in the shared pipeline (`crate::api`); this module resolves the
//! key and validates and answers LatteStream's own request shapes.
//!
//! | request | answer |
//! |---|---|
//! | `POST /events` `{channels (<= 10), event (<= 200 chars), data (object or string, <= 32 KB)}` | `{channels, event, triggered}` |
//! | `POST /batch_events` `{batch: [{channel, name, data}] (<= 10)}` | `{batch_id, total_events, total_triggered}` |
//! | `POST /apps/token` `{api_key, socket_id, permissions?, expires_in? (<= 86400)}` | `{access_token, token_type, expires_in, tenant_id}` |
//! | `POST /auth` `{socket_id, channel_name, channel_data? or user_id/user_info}` | `{auth, channel_data?}` |
//! | `GET /channels` | `{channels: [{channel, member_count, members?}], total_channels}` |
//!
//! `triggered` is the number of connections the owner core counted as subscribed when it fanned
//! the event out: the connections the shared frame was queued to.

use std::sync::atomic::Ordering;

use ringcast_engine::{EngineHandle, Publish};
use ringcast_protocol::{jwt, ChannelKind, ChannelName};
use serde_json::{json, Value};

use crate::api::{query_param, Body, Ctx, Route};
use crate::auth::{bearer_token, Credential};
use crate::dialect::relay;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::Api;

/// Channels of one `POST /events`.
pub const MAX_CHANNELS: usize = 10;
/// Events of one `POST /batch_events`.
pub const MAX_BATCH: usize = 10;
/// Event names, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 200;
/// Event data (after stringifying an object), in bytes.
pub const MAX_DATA_BYTES: usize = 32 * 1024;
/// Token lifetime when `expires_in` is not given, and the most it may ask for (seconds).
pub const DEFAULT_TOKEN_SECS: u64 = 3600;
pub const MAX_TOKEN_SECS: u64 = 86_400;
/// Permissions a token may carry; `read` is what a token gets when none are asked for.
pub const PERMISSIONS: [&str; 3] = ["read", "write", "presence"];
/// Most channel patterns one token may carry (`channels`, for SSE streams).
pub const MAX_TOKEN_CHANNELS: usize = 100;

fn invalid_key(msg: impl Into<String>) -> ApiError {
    ApiError::unauthorized("INVALID_API_KEY", msg)
}

/// Finds the app whose `api_keys` hold the request's key: `Authorization: Bearer lsk_...`,
/// the body's `api_key`, or `?api_key=` (GET).
pub fn authenticate(
    engine: &EngineHandle,
    req: &Request,
    body: Option<&Body>,
) -> Result<Ctx, ApiError> {
    let from_body = match body {
        Some(b) => b
            .opt_str("api_key")
            .map_err(|_| invalid_key("`api_key` must be a string"))?
            .map(str::to_owned),
        None => None,
    };
    let key = bearer_token(req)
        .map(str::to_owned)
        .or(from_body)
        .or_else(|| query_param(req, "api_key"))
        .ok_or_else(|| {
            invalid_key(
                "missing API key: send `Authorization: Bearer lsk_...`, `api_key` in the JSON \
                 body, or `?api_key=` on GET",
            )
        })?;
    let (idx, app) = engine
        .app_by_api_key(&key)
        .ok_or_else(|| invalid_key("the API key is not valid"))?;
    if !app.enabled {
        return Err(ApiError::new(
            403,
            "APP_DISABLED",
            format!("app {:?} is disabled", app.id),
        ));
    }
    Ok(Ctx {
        idx,
        app,
        cred: Credential::ApiKey,
    })
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| {
        ApiError::new(
            400,
            "INVALID_CHANNEL",
            format!("invalid channel name {name:?}: {e}"),
        )
        .with_details(json!({ "channel": name }))
    })
}

fn event_name(v: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_EVENT_NAME_CHARS => {
            Ok(s.clone())
        }
        _ => Err(ApiError::new(
            400,
            "INVALID_EVENT",
            format!("`{field}` must be a string of 1 to {MAX_EVENT_NAME_CHARS} characters"),
        )),
    }
}

/// `data`: a string verbatim, an object as its JSON text; at most [`MAX_DATA_BYTES`].
fn data(v: Option<&Value>) -> Result<String, ApiError> {
    let text = match v {
        Some(Value::String(s)) => s.clone(),
        Some(o @ Value::Object(_)) => o.to_string(),
        _ => {
            return Err(ApiError::new(
                400,
                "INVALID_EVENT",
                "`data` must be a JSON object or a string",
            ))
        }
    };
    if text.len() > MAX_DATA_BYTES {
        return Err(ApiError::new(
            413,
            "PAYLOAD_TOO_LARGE",
            format!(
                "event data is {} bytes; at most {MAX_DATA_BYTES}",
                text.len()
            ),
        )
        .with_details(json!({"size": text.len(), "max": MAX_DATA_BYTES})));
    }
    Ok(text)
}

/// `POST /events` body, validated.
fn parse_events(b: &Body) -> Result<(Vec<ChannelName>, String, String), ApiError> {
    let raw: Vec<&str> = match (b.get("channels"), b.get("channel")) {
        (Some(Value::Array(list)), None) => list
            .iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
                    ApiError::new(
                        400,
                        "INVALID_CHANNEL",
                        "`channels` must be an array of strings",
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        (None, Some(Value::String(c))) => vec![c.as_str()],
        _ => {
            return Err(ApiError::new(
                400,
                "INVALID_CHANNEL",
                "`channels` (an array of channel names) is required",
            ))
        }
    };
    if raw.is_empty() {
        return Err(ApiError::new(
            400,
            "INVALID_CHANNEL",
            "`channels` must not be empty",
        ));
    }
    if raw.len() > MAX_CHANNELS {
        return Err(ApiError::new(
            400,
            "TOO_MANY_CHANNELS",
            format!("{} channels given; at most {MAX_CHANNELS}", raw.len()),
        )
        .with_details(json!({"count": raw.len(), "max": MAX_CHANNELS})));
    }
    let mut channels: Vec<ChannelName> = Vec::with_capacity(raw.len());
    for r in raw {
        let c = channel(r)?;
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    let event = event_name(b.get("event"), "event")?;
    let data = data(b.get("data"))?;
    Ok((channels, event, data))
}

impl Api {
    /// Answers one authenticated, rate-limited LatteStream request.
    pub(crate) async fn lattestream(
        &self,
        route: &Route,
        ctx: &Ctx,
        req: &Request,
        body: Option<Body>,
    ) -> Result<Response, ApiError> {
        let body = || {
            body.as_ref().ok_or_else(|| {
                ApiError::new(400, "INVALID_REQUEST", "this endpoint needs a JSON body")
            })
        };
        match route {
            Route::LsEvents => self.ls_events(ctx, body()?).await,
            Route::LsBatchEvents => self.ls_batch(ctx, body()?).await,
            Route::LsToken => self.ls_token(ctx, body()?),
            Route::LsAuth => self.ls_auth(ctx, body()?),
            Route::LsChannels => self.ls_channels(ctx, req).await,
            _ => Err(ApiError::new(500, "internal", "not a LatteStream route")),
        }
    }

    /// Publishes and returns how many connections it reached (summed over channels).
    async fn ls_publish(
        &self,
        ctx: &Ctx,
        channels: Vec<ChannelName>,
        event: String,
        data: String,
    ) -> Result<u64, ApiError> {
        let counts = self
            .engine
            .publish(Publish {
                app: ctx.idx,
                channels,
                event,
                data,
                except: None,
            })
            .await?;
        Ok(counts.iter().map(|c| c.subscription_count).sum())
    }

    async fn ls_events(&self, ctx: &Ctx, b: &Body) -> Result<Response, ApiError> {
        let (channels, event, data) = parse_events(b)?;
        let names: Vec<String> = channels.iter().map(|c| c.as_str().to_owned()).collect();
        let triggered = self.ls_publish(ctx, channels, event.clone(), data).await?;
        Ok(Response::json(
            200,
            &json!({"channels": names, "event": event, "triggered": triggered}),
        ))
    }

    /// Unique and increasing: Unix microseconds, bumped past the last id handed out.
    fn next_batch_id(&self) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let prev = self
            .last_batch_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now_us.max(last + 1))
            })
            .unwrap_or(0);
        now_us.max(prev + 1)
    }

    async fn ls_batch(&self, ctx: &Ctx, b: &Body) -> Result<Response, ApiError> {
        let items = match b.get("batch") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => {
                return Err(ApiError::new(
                    400,
                    "INVALID_EVENT",
                    "`batch` must be a non-empty array of {channel, name, data}",
                ))
            }
        };
        if items.len() > MAX_BATCH {
            return Err(ApiError::new(
                400,
                "TOO_MANY_EVENTS",
                format!("{} events in the batch; at most {MAX_BATCH}", items.len()),
            )
            .with_details(json!({"count": items.len(), "max": MAX_BATCH})));
        }
        let mut parsed = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = |mut e: ApiError| {
                e.message = format!("batch item {i}: {}", e.message);
                e
            };
            let Value::Object(m) = item else {
                return Err(at(ApiError::new(400, "INVALID_EVENT", "must be an object")));
            };
            let ch = match m.get("channel") {
                Some(Value::String(c)) => channel(c).map_err(at)?,
                _ => {
                    return Err(at(ApiError::new(
                        400,
                        "INVALID_CHANNEL",
                        "`channel` is required",
                    )))
                }
            };
            let name = event_name(m.get("name"), "name").map_err(at)?;
            let data = data(m.get("data")).map_err(at)?;
            parsed.push((ch, name, data));
        }
        let total_events = parsed.len();
        // Every item is handed to its owner before any count is awaited; each owner's queue is
        // FIFO, so events to one channel keep the batch order.
        let futs: Vec<_> = parsed
            .into_iter()
            .map(|(c, n, d)| self.ls_publish(ctx, vec![c], n, d))
            .collect();
        let mut total_triggered = 0;
        for r in futures_util::future::join_all(futs).await {
            total_triggered += r?;
        }
        Ok(Response::json(
            200,
            &json!({
                "batch_id": self.next_batch_id(),
                "total_events": total_events,
                "total_triggered": total_triggered,
            }),
        ))
    }

    fn ls_token(&self, ctx: &Ctx, b: &Body) -> Result<Response, ApiError> {
        let user = match b.get("socket_id") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ApiError::new(
                    400,
                    "INVALID_REQUEST",
                    "`socket_id` (the user's id, 1 to 200 bytes) is required",
                ))
            }
        };
        if ChannelName::parse(&format!("#server-to-user-{user}")).is_err() {
            return Err(ApiError::new(
                400,
                "INVALID_REQUEST",
                "`socket_id` may only hold letters, digits and -_=@,.;",
            ));
        }
        let permissions = match b.get("permissions") {
            None => vec!["read".to_owned()],
            Some(Value::Array(list)) => {
                let mut out = Vec::new();
                for p in list {
                    match p.as_str() {
                        Some(p) if PERMISSIONS.contains(&p) => out.push(p.to_owned()),
                        _ => {
                            return Err(ApiError::new(
                                400,
                                "INVALID_REQUEST",
                                format!("`permissions` items must be one of {PERMISSIONS:?}"),
                            ))
                        }
                    }
                }
                out
            }
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "INVALID_REQUEST",
                    "`permissions` must be an array",
                ))
            }
        };
        // Ringcast's addition: the private channels an SSE stream may read with this token.
        let channels = match b.get("channels") {
            None => Vec::new(),
            Some(Value::Array(list)) if list.len() <= MAX_TOKEN_CHANNELS => {
                let mut out = Vec::new();
                for p in list {
                    match p.as_str() {
                        Some(p) if !p.is_empty() && p.len() <= 200 => out.push(p.to_owned()),
                        _ => {
                            return Err(ApiError::new(
                                400,
                                "INVALID_REQUEST",
                                "`channels` items must be channel-name patterns of 1 to 200 bytes",
                            ))
                        }
                    }
                }
                out
            }
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "INVALID_REQUEST",
                    format!("`channels` must be an array of at most {MAX_TOKEN_CHANNELS} patterns"),
                ))
            }
        };
        let expires_in = match b.get("expires_in") {
            None => DEFAULT_TOKEN_SECS,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_TOKEN_SECS).contains(&n) => n,
                _ => {
                    return Err(ApiError::new(
                        400,
                        "INVALID_REQUEST",
                        format!("`expires_in` must be 1 to {MAX_TOKEN_SECS} seconds"),
                    ))
                }
            },
        };
        let now = self.now_unix();
        let claims = jwt::Claims {
            sub: user,
            app: ctx.app.id.clone(),
            iat: now,
            exp: now + expires_in,
            permissions,
            channels,
            scope: "access".into(),
        };
        let token = jwt::sign(&claims, ctx.app.primary_secret());
        Ok(Response::json(
            200,
            &json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": expires_in,
                "tenant_id": ctx.app.id,
            }),
        ))
    }

    fn ls_auth(&self, ctx: &Ctx, b: &Body) -> Result<Response, ApiError> {
        let mut fields = b.0.clone();
        fields.remove("api_key");
        // Presence without channel_data: build it from user_id / user_info.
        if !fields.contains_key("channel_data") {
            if let Some(uid) = fields.get("user_id").cloned() {
                let info = fields.get("user_info").cloned().unwrap_or(Value::Null);
                fields.insert(
                    "channel_data".into(),
                    Value::String(json!({"user_id": uid, "user_info": info}).to_string()),
                );
            }
        }
        let v = relay::server_auth(&ctx.app, &Body(fields))?;
        Ok(Response::json(200, &v))
    }

    async fn ls_channels(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        let prefix = query_param(req, "prefix").filter(|p| !p.is_empty());
        let mut list = self.engine.channels(ctx.idx, prefix.as_deref()).await?;
        list.retain(|s| s.occupied && s.name.kind() != ChannelKind::ServerToUser);
        let mut out = Vec::with_capacity(list.len());
        for s in &list {
            let mut o = serde_json::Map::new();
            o.insert("channel".into(), s.name.as_str().into());
            if s.name.kind() == ChannelKind::Presence {
                let users = self.engine.presence_users(ctx.idx, s.name.clone()).await?;
                o.insert("member_count".into(), users.len().into());
                let members: Vec<Value> = users
                    .iter()
                    .map(|u| {
                        json!({
                            "user_id": u.id,
                            "user_info": serde_json::from_str::<Value>(&u.user_info_json)
                                .unwrap_or(Value::Null),
                        })
                    })
                    .collect();
                o.insert("members".into(), members.into());
            } else {
                o.insert("member_count".into(), s.subscription_count.into());
            }
            out.push(Value::Object(o));
        }
        Ok(Response::json(
            200,
            &json!({"channels": out, "total_channels": list.len()}),
        ))
    }
}
