//! Retained state over HTTP: event history (`/channels/{name}/events`, `/events/log`,
//! `/history`) and the webhook delivery log (`/webhooks`, `/webhooks/redeliver`).

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use ringcast_engine::{ActivityKind, ActivityQuery, ActivityRecord, HistoryEvent, HistoryQuery};
use ringcast_protocol::ChannelName;
use serde_json::{json, Value};

use super::body::{query_param, Body};
use super::Ctx;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::Api;

/// Default and largest `limit` of the history endpoints.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
/// Events in `GET /apps/{id}/events/log`.
pub const EVENT_LOG_SIZE: usize = 20;

fn limit_of(req: &Request) -> Result<usize, ApiError> {
    match query_param(req, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {MAX_LIMIT}, got {s:?}"
            ))),
        },
    }
}

/// ISO 8601 / RFC 3339 (`2026-11-23T19:00:00Z`, offsets allowed) or a plain date (UTC midnight).
fn time_of(req: &Request, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(s) = query_param(req, name).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let ms = if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        t.timestamp_millis()
    } else if let Ok(d) = NaiveDate::parse_from_str(&s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
            .unwrap_or(0)
    } else {
        return Err(ApiError::bad_request(format!(
            "{name} must be an ISO 8601 time such as 2026-11-23T19:00:00Z, got {s:?}"
        )));
    };
    Ok(Some(ms.max(0) as u64))
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn event_json(e: &HistoryEvent) -> Value {
    let mut v = json!({
        "seq": e.seq,
        "timestamp": iso(e.time_ms),
        "time_ms": e.time_ms,
        "channel": e.channel,
        "event": e.event,
        "data": e.data,
    });
    if let Some(u) = &e.user_id {
        v["user_id"] = json!(u);
    }
    v
}

/// AltoHost's record shape: `{id, channel, event, socketId, metadata: {userId?, eventName?},
/// createdAt}`.
fn activity_json(r: &ActivityRecord) -> Value {
    let mut meta = serde_json::Map::new();
    if let Some(u) = &r.user_id {
        meta.insert("userId".into(), json!(u));
    }
    if let Some(n) = &r.event_name {
        meta.insert("eventName".into(), json!(n));
    }
    json!({
        "id": r.id.to_string(),
        "channel": r.channel,
        "event": r.kind.name(),
        "socketId": r.socket_id,
        "metadata": meta,
        "createdAt": iso(r.time_ms),
    })
}

impl Api {
    /// `GET /apps/{id}/channels/{name}/events?limit=N`: newest first.
    pub(crate) async fn channel_events(
        &self,
        ctx: &Ctx,
        req: &Request,
        channel: &str,
    ) -> Result<Response, ApiError> {
        let name = ChannelName::parse(channel).map_err(|e| {
            ApiError::new(
                400,
                "invalid_channel",
                format!("invalid channel name {channel:?}: {e}"),
            )
        })?;
        let limit = limit_of(req)?;
        let events = self.engine.channel_history(ctx.idx, name, limit).await?;
        let list: Vec<Value> = events.iter().map(event_json).collect();
        Ok(Response::json(200, &json!({ "events": list })))
    }

    /// `GET /apps/{id}/events/log`: the app's most recent events across channels.
    pub(crate) async fn event_log(&self, ctx: &Ctx) -> Result<Response, ApiError> {
        let (events, _) = self
            .engine
            .history(
                ctx.idx,
                HistoryQuery {
                    limit: EVENT_LOG_SIZE,
                    ..Default::default()
                },
            )
            .await?;
        let list: Vec<Value> = events.iter().map(event_json).collect();
        Ok(Response::json(200, &json!({ "events": list })))
    }

    /// `GET /apps/{id}/history?channel=&event=&since=&until=&limit=`: the activity history
    /// for apps that keep one (`activity_history_size` > 0), the event history otherwise.
    pub(crate) async fn history(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        if ctx.app.activity_history_size > 0 {
            return self.activity_history(ctx, req).await;
        }
        let q = HistoryQuery {
            channel: query_param(req, "channel").filter(|s| !s.is_empty()),
            event: query_param(req, "event").filter(|s| !s.is_empty()),
            since_ms: time_of(req, "since")?,
            until_ms: time_of(req, "until")?,
            limit: limit_of(req)?,
        };
        if let (Some(s), Some(u)) = (q.since_ms, q.until_ms) {
            if s > u {
                return Err(ApiError::bad_request("since is after until"));
            }
        }
        let (events, more) = self.engine.history(ctx.idx, q).await?;
        let list: Vec<Value> = events.iter().map(event_json).collect();
        Ok(Response::json(
            200,
            &json!({ "count": list.len(), "hasMore": more, "events": list }),
        ))
    }

    /// The activity history: `event=` is a comma-separated list of CONNECT, DISCONNECT,
    /// SUBSCRIBE, UNSUBSCRIBE, CLIENT_EVENT, API_EVENT.
    async fn activity_history(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        let mut kinds = Vec::new();
        if let Some(list) = query_param(req, "event").filter(|s| !s.is_empty()) {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                kinds.push(ActivityKind::parse(name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown activity event {name:?}: one of CONNECT, DISCONNECT, \
                         SUBSCRIBE, UNSUBSCRIBE, CLIENT_EVENT, API_EVENT"
                    ))
                })?);
            }
        }
        let q = ActivityQuery {
            kinds,
            channel: query_param(req, "channel").filter(|s| !s.is_empty()),
            since_ms: time_of(req, "since")?,
            until_ms: time_of(req, "until")?,
            limit: limit_of(req)?,
        };
        if let (Some(s), Some(u)) = (q.since_ms, q.until_ms) {
            if s > u {
                return Err(ApiError::bad_request("since is after until"));
            }
        }
        let (records, more) = self.engine.activity(ctx.idx, q).await?;
        let list: Vec<Value> = records.iter().map(activity_json).collect();
        Ok(Response::json(
            200,
            &json!({ "count": list.len(), "hasMore": more, "events": list }),
        ))
    }

    /// `GET /apps/{id}/webhooks`: recent deliveries, newest first.
    pub(crate) fn webhook_log(&self, ctx: &Ctx) -> Result<Response, ApiError> {
        let list: Vec<Value> = self
            .webhooks
            .get()
            .and_then(|w| w.deliveries(&ctx.app.id))
            .unwrap_or_default()
            .iter()
            .map(|d| d.to_json())
            .collect();
        Ok(Response::json(200, &json!({ "deliveries": list })))
    }

    /// `POST /apps/{id}/webhooks/redeliver` with `{"id": "..."}`.
    pub(crate) fn redeliver(&self, ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
        let body = Body::json(req)?;
        let id = body.str("id")?;
        let hooks = self
            .webhooks
            .get()
            .ok_or_else(|| ApiError::new(404, "not_found", "no webhooks are configured"))?;
        hooks
            .redeliver(&ctx.app.id, id)
            .map_err(|e| ApiError::new(404, "not_found", e))?;
        Ok(Response::json(200, &json!({})))
    }
}
