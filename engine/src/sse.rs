//! Server-sent events, the AltoHost shape: `GET /apps/{id}/stream?channels=a,b` answers
//! `text/event-stream` and stays open. An SSE stream is a connection of the engine core that
//! accepted it, exactly like a WebSocket: it subscribes to each channel through the channel's
//! owner (`start_subscription`), sits in the core's local subscriber index, and gets every
//! event on the same fan-out path, under the same outbound budget and write deadline
//! (4100 past either, counted), the same connection caps and admission.
//!
//! Wire form of one event (`id:` is the channel's sequence number, see below):
//!
//! ```text
//! id: 7
//! event: order-shipped
//! data: {"id":7}
//!
//! ```
//!
//! Data holding line breaks is split into one `data:` line per line (the SSE spec joins them
//! back with `\n`). `Core::deliver` encodes an event into this form once per delivery per core,
//! only when the channel has SSE subscribers on that core, and every SSE subscriber there
//! queues the same `Bytes`.
//!
//! Sequence numbers: with the app's `history_size > 0` the owner's history numbers each
//! channel's events (1, 2, ...), and `Last-Event-ID` resumes from it: the owner answers the
//! subscription with every held event after that id, read at the moment the answer leaves
//! (later events follow it on the FIFO mesh), so the stream has no gap and no duplicate. When
//! the history no longer holds the event right after the id (or the app keeps no history),
//! the stream gets a `ringcast:reset` event first and continues live. Each channel then gets
//! `ringcast:subscribed` (from here it is live; on a single-channel stream it carries
//! `id: <newest seq>`, so even a client that saw no event resumes exactly). Other lines:
//! `: heartbeat` comments every `sse_heartbeat_secs` and, when the server ends the stream,
//! `event: ringcast:close` with `{code, reason}`.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::tls::ClientStream;
use ringcast_protocol::ws::RequestHead;
use ringcast_protocol::{close, jwt, ws, ChannelKind, ChannelName};
use serde_json::{json, Value};

use crate::admission::origin_allowed;
use crate::conn::{cleanup, start_subscription, Conn};
use crate::core::Core;
use crate::metrics::CloseReason;
use crate::msg::{AppIdx, ChanKey, Replay, Resume};

/// Name of the event that says a channel of the stream is live.
pub const SUBSCRIBED_EVENT: &str = "ringcast:subscribed";
/// Name of the event sent when a resume cannot be exact.
pub const RESET_EVENT: &str = "ringcast:reset";
/// Name of the event sent before the server ends a stream.
pub const CLOSE_EVENT: &str = "ringcast:close";
/// Longest `Last-Event-ID` read (longer: treated as naming no position).
const MAX_LAST_EVENT_ID: usize = 4096;

/// An admitted stream request: what `run` needs.
pub(crate) struct SseRequest {
    app: AppIdx,
    key: Box<str>,
    channels: Vec<(ChannelName, Resume)>,
    user: Option<Arc<str>>,
    /// `Access-Control-Allow-Origin` to send (the request's allowed `Origin`).
    allow_origin: Option<String>,
}

/// A refused stream request: an HTTP error with the shared JSON error shape.
pub(crate) struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    /// The complete HTTP response.
    pub(crate) fn response(&self) -> Vec<u8> {
        let body = json!({"error": self.message, "code": self.code}).to_string();
        let reason = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\naccess-control-allow-origin: *\r\nconnection: close\r\n",
            self.status,
            body.len()
        );
        if self.status == 503 {
            out.push_str("retry-after: 1\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

/// The app id of a `/apps/{id}/stream` path.
fn stream_app_id(path: &str) -> Option<&str> {
    let id = path
        .trim_end_matches('/')
        .strip_prefix("/apps/")?
        .strip_suffix("/stream")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Whether the head asks for an SSE stream (`GET` or `HEAD`-less `GET /apps/{id}/stream`).
pub(crate) fn is_stream_request(head: &RequestHead) -> bool {
    head.method == "GET" && stream_app_id(&head.path).is_some()
}

/// Checks a stream request against the app, its channels, its token and the caps. On
/// success the app's connection count has been taken (given back by `cleanup`).
pub(crate) fn admit(
    core: &Core,
    head: &RequestHead,
    _client: Option<IpAddr>,
) -> Result<SseRequest, Refusal> {
    let app_id = stream_app_id(&head.path).unwrap_or_default();
    let apps = core.shared.apps();
    let Some(app) = apps.by_id(app_id) else {
        return Err(Refusal::new(
            404,
            "app_not_found",
            format!("no app with id {app_id:?}"),
        ));
    };
    let origin = head.header("origin");
    if !origin_allowed(&app.config.allowed_origins, origin) {
        core.shared
            .admission
            .refuse(crate::admission::Refusal::Origin);
        return Err(Refusal::new(
            403,
            "origin_not_allowed",
            format!(
                "Origin {:?} is not allowed for this app",
                origin.unwrap_or_default()
            ),
        ));
    }
    if !app.config.enabled {
        return Err(Refusal::new(403, "app_disabled", "App is disabled"));
    }
    if core.shutting_down.get() {
        return Err(Refusal::new(
            503,
            "shutting_down",
            "Server shutting down, reconnect",
        ));
    }
    let query = ws::parse_query(&head.query);
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // Channels: comma-separated, each a valid name (so names holding a comma cannot be
    // streamed), at most SSE_MAX_CHANNELS (and the per-connection subscription cap).
    let mut names: Vec<ChannelName> = Vec::new();
    for raw in param("channels").unwrap_or_default().split(',') {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let name = ChannelName::parse(raw).map_err(|e| {
            Refusal::new(
                400,
                "invalid_channel",
                format!("invalid channel name {raw:?}: {e}"),
            )
        })?;
        match name.kind() {
            ChannelKind::Public | ChannelKind::Private => {}
            other => {
                return Err(Refusal::new(
                    400,
                    "unsupported_channel",
                    format!(
                        "{raw:?} is a {other:?} channel: SSE streams carry public and private channels only"
                    ),
                ))
            }
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Err(Refusal::new(
            400,
            "invalid_channel",
            "`channels` must name at least one channel (comma-separated)",
        ));
    }
    let max = crate::config::defaults::SSE_MAX_CHANNELS
        .min(core.shared.config.max_subscriptions_per_connection);
    if names.len() > max {
        return Err(Refusal::new(
            400,
            "too_many_channels",
            format!("a stream may name at most {max} channels"),
        ));
    }
    // The user token: `?token=` (EventSource cannot set headers) or `Authorization: Bearer`.
    let bearer = head
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = param("token").or(bearer);
    let claims = match token {
        None => None,
        Some(t) => Some(verify_token(&app.config, t)?),
    };
    if let Some(c) = &claims {
        if !c.allows("read") {
            return Err(Refusal::new(
                403,
                "permission_denied",
                "the token lacks the read permission",
            ));
        }
    }
    for name in names.iter().filter(|n| n.kind() == ChannelKind::Private) {
        match &claims {
            None => {
                return Err(Refusal::new(
                    401,
                    "token_required",
                    format!("{name} is private: pass a token (?token=) whose channels allow it"),
                ))
            }
            Some(c) if !c.allows_channel(name.as_str()) => {
                return Err(Refusal::new(
                    403,
                    "channel_forbidden",
                    format!("the token does not allow {name}"),
                ))
            }
            Some(_) => {}
        }
    }
    // Push-back, as for a WebSocket subscription.
    for name in &names {
        let owner = core.shared.owner_of(&ChanKey {
            app: app.idx,
            name: name.clone(),
        });
        if !core.admits(owner) {
            return Err(Refusal::new(
                503,
                "overloaded",
                "Server overloaded, retry later",
            ));
        }
    }
    let last_id = head
        .header("last-event-id")
        .or_else(|| param("lastEventId"))
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let channels = resume_points(&names, last_id);
    // The app's connection cap, last: from here `cleanup` gives the count back.
    let n = app.connections.fetch_add(1, Ordering::Relaxed);
    if app.config.max_connections > 0 && n >= app.config.max_connections {
        app.connections.fetch_sub(1, Ordering::Relaxed);
        return Err(Refusal::new(
            429,
            "over_quota",
            "Application is over connection quota",
        ));
    }
    Ok(SseRequest {
        app: app.idx,
        key: app.config.key.as_str().into(),
        channels,
        user: claims.map(|c| Arc::from(c.sub.as_str())),
        allow_origin: origin.map(str::to_owned),
    })
}

/// A stream's token: an access token of this app (`POST /apps/token`), verified and unexpired.
fn verify_token(app: &crate::config::AppConfig, token: &str) -> Result<jwt::Claims, Refusal> {
    let claims = jwt::Jwt::parse(token)
        .and_then(|t| t.verify(&app.secrets, crate::core::unix_now_secs()))
        .map_err(|e| Refusal::new(401, "invalid_token", format!("invalid token: {e}")))?;
    if claims.app != app.id || claims.scope != "access" {
        return Err(Refusal::new(
            401,
            "invalid_token",
            "invalid token: not an access token of this app",
        ));
    }
    Ok(claims)
}

/// Where each channel resumes from `Last-Event-ID`: absent, every channel is new. A bare
/// number is the position of a single-channel stream (ids carry no channel, so on a
/// multi-channel stream it names none: every channel gets a reset). `a:7,b:3` names the
/// position of each listed channel (for clients that track them; unlisted channels reset).
fn resume_points(names: &[ChannelName], last_id: Option<&str>) -> Vec<(ChannelName, Resume)> {
    let Some(id) = last_id.filter(|s| s.len() <= MAX_LAST_EVENT_ID) else {
        let r = if last_id.is_some() {
            Resume::After(u64::MAX)
        } else {
            Resume::Fresh
        };
        return names.iter().map(|n| (n.clone(), r)).collect();
    };
    if let Ok(n) = id.parse::<u64>() {
        let r = if names.len() == 1 {
            Resume::After(n)
        } else {
            Resume::After(u64::MAX)
        };
        return names.iter().map(|c| (c.clone(), r)).collect();
    }
    let named: Vec<(&str, u64)> = id
        .split(',')
        .filter_map(|p| {
            let (c, n) = p.trim().rsplit_once(':')?;
            Some((c, n.parse().ok()?))
        })
        .collect();
    names
        .iter()
        .map(|c| {
            let at = named
                .iter()
                .find(|(n, _)| *n == c.as_str())
                .map_or(u64::MAX, |(_, s)| *s);
            (c.clone(), Resume::After(at))
        })
        .collect()
}

/// The stream: a connection of this core until either side ends it.
pub(crate) async fn run(core: Rc<Core>, req: SseRequest, stream: ClientStream) {
    let conn = Rc::new(Conn::new_sse(&core, req.app, req.key, stream.as_raw_fd()));
    core.conns.borrow_mut().insert(conn.id(), conn.clone());
    let m = core.metrics();
    m.connections_opened.inc();
    m.connections_current.inc();
    m.sse_opened.inc();
    m.sse_current.inc();
    conn.push(response_head(req.allow_origin.as_deref()));
    core.record_activity(
        req.app,
        crate::activity::ActivityKind::Connect,
        None,
        Some(conn.socket_id),
        req.user.as_deref(),
        None,
    );
    {
        let mut st = conn.state.borrow_mut();
        if let Some(u) = req.user {
            st.user = Some(u.clone());
            core.add_user(req.app, u, conn.id());
        }
        for (name, resume) in req.channels {
            start_subscription(
                &core,
                &conn,
                &mut st,
                req.app,
                name,
                None,
                true,
                Some(resume),
            );
        }
    }
    core.flush();
    let (mut reader, writer) = stream.into_split();
    crate::flush::attach(&core, &conn, writer);
    // The client sends nothing after its request: read (and drop) until it hangs up, which
    // is how a closed EventSource shows. The writer ends the socket when the server closes.
    let mut buf = Vec::with_capacity(64);
    loop {
        let (res, b) = reader.read(buf).await;
        buf = b;
        match res {
            Ok(0) => {
                conn.set_end_reason(CloseReason::ClientClosed);
                break;
            }
            Err(_) => {
                conn.set_end_reason(CloseReason::IoError);
                break;
            }
            Ok(_) => {
                buf.clear();
                if conn.is_closing() {
                    break;
                }
            }
        }
    }
    if !conn.is_closing() {
        conn.close(close::NORMAL, "", CloseReason::ClientClosed);
    }
    crate::flush::finish(&core, &conn).await;
    cleanup(&core, &conn);
    let m = core.metrics();
    m.sse_current.set(m.sse_current.get().saturating_sub(1));
}

/// The `200` head and the stream's first line (`retry:`, the reconnect delay).
fn response_head(allow_origin: Option<&str>) -> Bytes {
    let mut h = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n",
    );
    if let Some(o) = allow_origin.filter(|o| !o.contains(['\r', '\n'])) {
        h.push_str("access-control-allow-origin: ");
        h.push_str(o);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.push_str(&format!(
        "retry: {}\n\n",
        crate::config::defaults::SSE_RETRY_MS
    ));
    Bytes::from(h)
}

/// The subscription of `key` is in place (queued before any delivery of the channel, which
/// follows the owner's answer): a resumed stream first gets the replayed events or a
/// `ringcast:reset`, then every stream gets `ringcast:subscribed` `{channel, last_seq}`: from
/// here the channel is live. On a single-channel stream it carries `id: <last_seq>`, so a
/// client that saw no event yet still resumes exactly.
pub(crate) fn on_subscribed(conn: &Rc<Conn>, key: &ChanKey, replay: Replay) {
    let single = conn.state.borrow().subs.len() == 1;
    let id = single.then_some(replay.head);
    let channel = key.name.as_str();
    if replay.reset {
        let data = json!({
            "channel": channel,
            "reason": "the events after Last-Event-ID are no longer held: reload the state",
            "last_seq": replay.head,
        });
        conn.push(Bytes::from(encode(id, RESET_EVENT, &data.to_string())));
    }
    for (seq, frame) in &replay.events {
        if let Some(b) = event_bytes(frame, *seq) {
            conn.push(b);
        }
    }
    let data = json!({"channel": channel, "last_seq": replay.head});
    conn.push(Bytes::from(encode(id, SUBSCRIBED_EVENT, &data.to_string())));
}

/// The SSE form of an encoded Pusher event frame with its sequence number: `id:`, `event:`,
/// one `data:` line per line of the data. `None` for a frame that is not an event.
pub(crate) fn event_bytes(frame: &[u8], seq: u64) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(crate::history::frame_payload(frame)?).ok()?;
    let event = v.get("event")?.as_str()?;
    let data_owned;
    let data: &str = match v.get("data") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => "",
        Some(other) => {
            data_owned = other.to_string();
            &data_owned
        }
    };
    Some(Bytes::from(encode(Some(seq), event, data)))
}

/// `id:` (when given), `event:` and the `data:` lines of one SSE event, blank-line terminated.
/// Line breaks in `event` (which would end the field) become spaces; `data` is split at every
/// CRLF, CR or LF.
fn encode(id: Option<u64>, event: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + event.len() + 40);
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"event: ");
    out.extend(
        event
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.push(b'\n');
    let mut rest = data.as_bytes();
    loop {
        let cut = rest.iter().position(|b| *b == b'\r' || *b == b'\n');
        out.extend_from_slice(b"data: ");
        match cut {
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.push(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
    out.push(b'\n');
    out
}

/// The comment line a stream gets every `sse_heartbeat_secs`.
pub(crate) fn heartbeat() -> Bytes {
    Bytes::from_static(b": heartbeat\n\n")
}

/// What a stream gets before the server ends it: `event: ringcast:close`, `{code, reason}`.
pub(crate) fn close_bytes(code: u16, reason: &str) -> Bytes {
    let data = json!({"code": code, "reason": reason}).to_string();
    Bytes::from(encode(None, CLOSE_EVENT, &data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::pusher;

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn event_form_splits_every_kind_of_line_break() {
        let f = pusher::event_frame("e", "news", "one\ntwo\r\nthree\rfour", None);
        let b = event_bytes(&f, 7).unwrap();
        assert_eq!(
            text(&b),
            "id: 7\nevent: e\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
        let f = pusher::event_frame("e", "news", "", None);
        assert_eq!(
            text(&event_bytes(&f, 1).unwrap()),
            "id: 1\nevent: e\ndata: \n\n"
        );
        let f = pusher::event_frame("e", "news", "trailing\n", None);
        assert_eq!(
            text(&event_bytes(&f, 2).unwrap()),
            "id: 2\nevent: e\ndata: trailing\ndata: \n\n"
        );
        // Client events carry JSON data: sent as its text.
        let f = pusher::client_event_frame("client-x", "private-a", Some(r#"{"a":1}"#), None);
        assert_eq!(
            text(&event_bytes(&f, 3).unwrap()),
            "id: 3\nevent: client-x\ndata: {\"a\":1}\n\n"
        );
        assert!(event_bytes(b"\x81\x02{}", 1).is_none());
    }

    #[test]
    fn event_names_cannot_break_the_framing() {
        assert_eq!(
            text(&encode(None, "a\nb\rc", "x")),
            "event: a b c\ndata: x\n\n"
        );
        let c = close_bytes(4100, "slow");
        assert_eq!(
            text(&c),
            "event: ringcast:close\ndata: {\"code\":4100,\"reason\":\"slow\"}\n\n"
        );
    }

    #[test]
    fn stream_paths() {
        assert_eq!(stream_app_id("/apps/app-id/stream"), Some("app-id"));
        assert_eq!(stream_app_id("/apps/app-id/stream/"), Some("app-id"));
        assert_eq!(stream_app_id("/apps//stream"), None);
        assert_eq!(stream_app_id("/apps/a/b/stream"), None);
        assert_eq!(stream_app_id("/apps/a/events"), None);
    }

    #[test]
    fn last_event_id_forms() {
        let a = ChannelName::parse("a").unwrap();
        let b = ChannelName::parse("b").unwrap();
        let one = vec![a.clone()];
        let two = vec![a.clone(), b.clone()];
        assert_eq!(resume_points(&one, None), vec![(a.clone(), Resume::Fresh)]);
        assert_eq!(
            resume_points(&one, Some("12")),
            vec![(a.clone(), Resume::After(12))]
        );
        // A bare id names no channel of a multi-channel stream.
        assert_eq!(
            resume_points(&two, Some("12")),
            vec![
                (a.clone(), Resume::After(u64::MAX)),
                (b.clone(), Resume::After(u64::MAX))
            ]
        );
        assert_eq!(
            resume_points(&two, Some("a:3, b:9")),
            vec![(a.clone(), Resume::After(3)), (b.clone(), Resume::After(9))]
        );
        assert_eq!(
            resume_points(&two, Some("b:9")),
            vec![(a.clone(), Resume::After(u64::MAX)), (b, Resume::After(9))]
        );
        assert_eq!(
            resume_points(&one, Some("garbage")),
            vec![(a, Resume::After(u64::MAX))]
        );
    }
}
