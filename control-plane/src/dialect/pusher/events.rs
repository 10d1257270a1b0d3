//! Publishing: `POST /events` and `POST /batch_events` (the Relay dialect's `POST /events/batch`
//! reuses [`Api::batch_items`], see `dialect::relay`).
//! Everything in a request is validated before anything is published.

use ringcast_engine::{AppConfig, ChannelCounts, Publish};
use ringcast_protocol::{validate_event_name, ChannelKind, ChannelName, SocketId};
use serde_json::{json, Map, Value};

use crate::api::{data_text, Body, Ctx, Info};
use crate::auth::Credential;
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::Api;

/// One validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    pub name: String,
    pub channels: Vec<ChannelName>,
    pub data: String,
    pub except: Option<SocketId>,
    pub info: Info,
}

fn channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| {
        ApiError::new(
            400,
            "invalid_channel",
            format!("invalid channel name {name:?}: {e}"),
        )
    })
}

/// Validates one event object. `batch_item`: one `channel` per item (the batch shape).
/// Accepts the Pusher field names (`name`, `channels`) and the Relay ones (`event`,
/// `channel`).
pub fn parse_event(
    b: &Body,
    app: &AppConfig,
    cfg: &ApiConfig,
    batch_item: bool,
) -> Result<EventSpec, ApiError> {
    let name = match b.opt_str("name")? {
        Some(n) => n,
        None => b
            .opt_str("event")?
            .ok_or_else(|| ApiError::bad_request("`name` (the event name) is required"))?,
    };
    if !validate_event_name(name) {
        return Err(ApiError::bad_request(
            "the event name must be 1 to 200 bytes long",
        ));
    }
    let raw: Vec<&str> = match (b.get("channels"), b.opt_str("channel")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "send either `channels` or `channel`, not both",
            ))
        }
        (Some(_), None) if batch_item => {
            return Err(ApiError::bad_request(
                "batch items take `channel` (one channel per item), not `channels`",
            ))
        }
        (Some(Value::Array(list)), None) => {
            let mut out = Vec::with_capacity(list.len());
            for v in list {
                out.push(v.as_str().ok_or_else(|| {
                    ApiError::bad_request("`channels` must be an array of strings")
                })?);
            }
            out
        }
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "`channels` must be an array of strings",
            ))
        }
        (None, Some(c)) => vec![c],
        (None, None) => {
            return Err(ApiError::bad_request(if batch_item {
                "`channel` is required in every batch item"
            } else {
                "`channels` (or `channel`) is required"
            }))
        }
    };
    if raw.is_empty() {
        return Err(ApiError::bad_request("`channels` must not be empty"));
    }
    if raw.len() > cfg.max_channels_per_event {
        return Err(ApiError::new(
            400,
            "too_many_channels",
            format!(
                "{} channels given; at most {} per event",
                raw.len(),
                cfg.max_channels_per_event
            ),
        ));
    }
    let mut channels: Vec<ChannelName> = Vec::with_capacity(raw.len());
    for r in raw {
        let c = channel(r)?;
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    if channels.len() > 1
        && channels
            .iter()
            .any(|c| c.kind() == ChannelKind::PrivateEncrypted)
    {
        return Err(ApiError::bad_request(
            "cannot trigger to several channels when one is private-encrypted",
        ));
    }
    let data = data_text(
        b.get("data")
            .ok_or_else(|| ApiError::bad_request("`data` is required"))?,
    );
    if data.len() > app.max_event_bytes {
        return Err(ApiError::new(
            413,
            "event_too_large",
            format!(
                "event data is {} bytes; app {:?} allows at most {} bytes",
                data.len(),
                app.id,
                app.max_event_bytes
            ),
        ));
    }
    let except = match b.opt_str("socket_id")? {
        None => None,
        Some(s) => Some(SocketId::parse(s).ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_socket_id",
                format!("invalid socket_id {s:?}: expected digits.digits"),
            )
        })?),
    };
    let info = match b.opt_str("info")? {
        None => Info::default(),
        Some(list) => Info::parse(list, false)?,
    };
    Ok(EventSpec {
        name: name.to_owned(),
        channels,
        data,
        except,
        info,
    })
}

/// `{"user_count"?: N, "subscription_count"?: N}` for one channel (user_count: presence only).
pub fn counts_json(channel: &ChannelName, counts: &ChannelCounts, info: Info) -> Value {
    let mut m = Map::new();
    if info.user_count && channel.kind() == ChannelKind::Presence {
        m.insert("user_count".into(), counts.user_count.unwrap_or(0).into());
    }
    if info.subscription_count {
        m.insert(
            "subscription_count".into(),
            counts.subscription_count.into(),
        );
    }
    Value::Object(m)
}

fn publish_of(ctx: &Ctx, e: EventSpec) -> Publish {
    Publish {
        app: ctx.idx,
        channels: e.channels,
        event: e.name,
        data: e.data,
        except: e.except,
    }
}

impl Api {
    /// Queues the event without waiting for the owners' counts (requests without `info`):
    /// the answer does not wait for a cross-core round trip.
    pub(crate) fn publish_queued(&self, ctx: &Ctx, e: EventSpec) -> Result<(), ApiError> {
        Ok(self.engine.publish_queued(publish_of(ctx, e))?)
    }

    pub(crate) async fn publish(
        &self,
        ctx: &Ctx,
        e: EventSpec,
    ) -> Result<Vec<ChannelCounts>, ApiError> {
        Ok(self
            .engine
            .publish(Publish {
                app: ctx.idx,
                channels: e.channels,
                event: e.name,
                data: e.data,
                except: e.except,
            })
            .await?)
    }

    /// `POST /apps/{id}/events`
    pub(crate) async fn events(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        let spec = parse_event(&Body::json(req)?, &ctx.app, &self.config, false)?;
        let info = spec.info;
        let mut out = Map::new();
        if !info.any() {
            self.publish_queued(ctx, spec)?;
            if ctx.cred == Credential::Bearer {
                out.insert("ok".into(), true.into());
            }
            return Ok(Response::json(200, &Value::Object(out)));
        }
        let channels = spec.channels.clone();
        let counts = self.publish(ctx, spec).await?;
        if ctx.cred == Credential::Bearer {
            out.insert("ok".into(), true.into());
        }
        if info.any() {
            let per: Map<String, Value> = channels
                .iter()
                .zip(&counts)
                .map(|(c, n)| (c.as_str().to_owned(), counts_json(c, n, info)))
                .collect();
            out.insert("channels".into(), Value::Object(per));
        }
        Ok(Response::json(200, &Value::Object(out)))
    }

    pub(crate) fn batch_items(
        &self,
        ctx: &Ctx,
        req: &Request,
        relay: bool,
    ) -> Result<Vec<EventSpec>, ApiError> {
        let body = Body::json(req)?;
        let items = match body.get("batch") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err(ApiError::bad_request("`batch` must be an array")),
            None => return Err(ApiError::bad_request("`batch` is required")),
        };
        if items.len() > self.config.max_batch_events {
            return Err(ApiError::new(
                400,
                "too_many_events",
                format!(
                    "{} events in the batch; at most {} per request",
                    items.len(),
                    self.config.max_batch_events
                ),
            ));
        }
        let mut specs = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Value::Object(m) = item else {
                return Err(ApiError::bad_request(format!(
                    "batch item {i} must be an object"
                )));
            };
            let spec = parse_event(&Body(m.clone()), &ctx.app, &self.config, !relay).map_err(
                |mut e| {
                    e.message = format!("batch item {i}: {}", e.message);
                    e
                },
            )?;
            specs.push(spec);
        }
        Ok(specs)
    }

    /// Publishes every item; the first poll of each publish enqueues it, in item order, so
    /// events to one channel keep the batch order.
    async fn publish_all(
        &self,
        ctx: &Ctx,
        specs: Vec<EventSpec>,
    ) -> Result<Vec<Vec<ChannelCounts>>, ApiError> {
        let futs: Vec<_> = specs.into_iter().map(|s| self.publish(ctx, s)).collect();
        // join_all polls the futures in list order first (tested in api::tests).
        futures_util::future::join_all(futs)
            .await
            .into_iter()
            .collect()
    }

    /// `POST /apps/{id}/batch_events`: `{}` or, when any item asks for `info`,
    /// `{"batch": [{...}, {}, ...]}` index-aligned.
    pub(crate) async fn batch_events(
        &self,
        ctx: &Ctx,
        req: &Request,
    ) -> Result<Response, ApiError> {
        let specs = self.batch_items(ctx, req, false)?;
        let shape: Vec<(ChannelName, Info)> = specs
            .iter()
            .map(|s| (s.channels[0].clone(), s.info))
            .collect();
        if !shape.iter().any(|(_, i)| i.any()) {
            // No counts asked for: queue in item order (events to one channel keep it).
            for s in specs {
                self.publish_queued(ctx, s)?;
            }
            return Ok(Response::empty_object());
        }
        let counts = self.publish_all(ctx, specs).await?;
        let batch: Vec<Value> = shape
            .iter()
            .zip(&counts)
            .map(|((c, info), n)| match n.first() {
                Some(n) => counts_json(c, n, *info),
                None => json!({}),
            })
            .collect();
        Ok(Response::json(200, &json!({ "batch": batch })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Body {
        match v {
            Value::Object(m) => Body(m),
            _ => panic!("object expected"),
        }
    }

    fn app() -> AppConfig {
        AppConfig::embedded_default()
    }

    fn parse(v: Value) -> Result<EventSpec, ApiError> {
        parse_event(&body(v), &app(), &ApiConfig::default(), false)
    }

    #[test]
    fn pusher_and_seed_shapes() {
        let e = parse(
            json!({"name": "e", "channels": ["a", "b", "a"], "data": "{\"x\":1}",
            "socket_id": "1.2", "info": "user_count,subscription_count"}),
        )
        .unwrap();
        assert_eq!(e.name, "e");
        assert_eq!(
            e.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(e.data, "{\"x\":1}");
        assert_eq!(e.except, Some(SocketId::new(1, 2)));
        assert!(e.info.user_count && e.info.subscription_count);
        let s = parse(json!({"event": "e", "channel": "c", "data": {"x": 1}})).unwrap();
        assert_eq!(s.data, "{\"x\":1}");
        assert_eq!(s.channels[0].as_str(), "c");
    }

    #[test]
    fn validation_errors() {
        let cases = [
            (json!({"channels": ["a"], "data": "d"}), 400, "bad_request"),
            (
                json!({"name": "", "channels": ["a"], "data": "d"}),
                400,
                "bad_request",
            ),
            (json!({"name": "e", "data": "d"}), 400, "bad_request"),
            (
                json!({"name": "e", "channels": [], "data": "d"}),
                400,
                "bad_request",
            ),
            (
                json!({"name": "e", "channels": "a", "data": "d"}),
                400,
                "bad_request",
            ),
            (
                json!({"name": "e", "channels": [1], "data": "d"}),
                400,
                "bad_request",
            ),
            (
                json!({"name": "e", "channels": ["a"], "channel": "a", "data": "d"}),
                400,
                "bad_request",
            ),
            (
                json!({"name": "e", "channels": ["a b"], "data": "d"}),
                400,
                "invalid_channel",
            ),
            (json!({"name": "e", "channels": ["a"]}), 400, "bad_request"),
            (
                json!({"name": "e", "channels": ["a"], "data": "d", "socket_id": "x"}),
                400,
                "invalid_socket_id",
            ),
            (
                json!({"name": "e", "channels": ["a"], "data": "d", "info": "nope"}),
                400,
                "bad_request",
            ),
            (
                json!({"name": "e", "channels": ["a", "private-encrypted-b"], "data": "d"}),
                400,
                "bad_request",
            ),
            (
                json!({"name": "e", "channels": ["a"], "data": "x".repeat(10 * 1024 + 1)}),
                413,
                "event_too_large",
            ),
        ];
        for (v, status, code) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!((e.status, e.code), (status, code), "{v}");
        }
        // Exactly at the limit is fine.
        assert!(
            parse(json!({"name": "e", "channels": ["a"], "data": "x".repeat(10 * 1024)})).is_ok()
        );
    }

    #[test]
    fn channel_limit() {
        let ok: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
        assert!(parse(json!({"name": "e", "channels": ok, "data": ""})).is_ok());
        let over: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let e = parse(json!({"name": "e", "channels": over, "data": ""})).unwrap_err();
        assert_eq!((e.status, e.code), (400, "too_many_channels"));
    }

    #[test]
    fn batch_items_take_one_channel() {
        let b = body(json!({"name": "e", "channels": ["a"], "data": "d"}));
        assert!(parse_event(&b, &app(), &ApiConfig::default(), true).is_err());
        let b = body(json!({"name": "e", "channel": "a", "data": "d"}));
        assert!(parse_event(&b, &app(), &ApiConfig::default(), true).is_ok());
    }

    #[test]
    fn counts_json_user_count_is_presence_only() {
        let all = Info {
            user_count: true,
            subscription_count: true,
            cache: false,
        };
        let n = ChannelCounts {
            subscription_count: 3,
            user_count: Some(2),
        };
        let p = ChannelName::parse("presence-x").unwrap();
        let c = ChannelName::parse("x").unwrap();
        assert_eq!(
            counts_json(&p, &n, all),
            json!({"user_count": 2, "subscription_count": 3})
        );
        assert_eq!(counts_json(&c, &n, all), json!({"subscription_count": 3}));
        assert_eq!(counts_json(&c, &n, Info::default()), json!({}));
    }
}
