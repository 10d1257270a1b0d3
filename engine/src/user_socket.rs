//! The alrt user socket: `GET /ws?token=<jwt>` (a user token, `scope: "user"`, signed with the
//! app's secret) is a WebSocket that speaks plain JSON for one user instead of the Pusher
//! protocol. It is an ordinary connection of the engine: it joins the user's
//! `#server-to-user-<id>` channel silently, so every server-to-user event (the SDKs'
//! `sendToUser`, `POST /apps/{id}/users/{user_id}/events`) reaches it on the same fan-out path;
//! the core turns the shared Pusher frame into the socket's form once per delivery
//! (`Core::deliver`), not once per socket.
//!
//! | client sends | server answers |
//! |---|---|
//! | — | `{"type":"notification","event":E,"data":D}` for every event to the user |
//! | `{"type":"ping"}` | `{"type":"pong"}` |
//! | any other `{"type":T,...}` | `{"type":"ack","ack":T,"id":<its id>}`; forwarded to the app's webhooks as `client_message` |
//!
//! Close codes: 4001 invalid or expired token (before anything else); 4000 replaced by a newer
//! connection of the same user when the app sets `single_connection_per_user`.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::{jwt, ws, ChannelName};
use serde_json::{json, Value};

use crate::conn::{start_subscription, Conn};
use crate::core::Core;
use crate::msg::Command;
use crate::shared::{App, Shared};

/// Closed because a newer connection of the same user replaced it.
pub(crate) const CLOSE_REPLACED: u16 = 4000;
/// The token is missing, malformed, forged, expired or not a user token.
pub(crate) const CLOSE_INVALID_TOKEN: u16 = 4001;

/// The `?token=` of a `/ws` request, verified against the secrets of the app it names.
/// Returns the app's key (the connection's key) and the claims.
pub(crate) fn verify_token(
    shared: &Shared,
    query: &str,
) -> Result<(Box<str>, jwt::Claims), String> {
    let Some((_, token)) = ws::parse_query(query)
        .into_iter()
        .find(|(k, _)| k == "token")
    else {
        return Err("Invalid token: missing ?token=".into());
    };
    let parsed = jwt::Jwt::parse(&token).map_err(|e| format!("Invalid token: {e}"))?;
    let apps = shared.apps();
    let app = apps
        .by_id(&parsed.unverified_claims().app)
        .ok_or("Invalid token: unknown app")?;
    let claims = parsed
        .verify(&app.config.secrets, crate::core::unix_now_secs())
        .map_err(|e| format!("Invalid token: {e}"))?;
    if claims.scope != "user" {
        return Err("Invalid token: not a user token".into());
    }
    if ChannelName::parse(&format!("#server-to-user-{}", claims.sub)).is_err() {
        return Err("Invalid token: invalid user id".into());
    }
    Ok((app.config.key.as_str().into(), claims))
}

/// Signs the socket in as its user and, for apps with `single_connection_per_user`, closes
/// the user's older sockets on every core.
pub(crate) fn start(core: &Core, conn: &Rc<Conn>, app: &App, claims: jwt::Claims) {
    let Ok(name) = ChannelName::parse(&format!("#server-to-user-{}", claims.sub)) else {
        return; // verify_token checked it
    };
    let user: Arc<str> = claims.sub.as_str().into();
    let mut st = conn.state.borrow_mut();
    st.user = Some(user.clone());
    core.add_user(app.idx, user, conn.id());
    start_subscription(core, conn, &mut st, app.idx, name, None, true, None);
    drop(st);
    if app.config.single_connection_per_user {
        for c in 0..core.shared.config.workers {
            let cmd = Command::ReplaceUserSocket {
                app: app.idx,
                user_id: claims.sub.clone(),
                keep: conn.id(),
            };
            if core.shared.mesh.inject(c, cmd).is_err() {
                tracing::warn!(
                    core = c,
                    "injection queue full: an older user socket stays open"
                );
            }
        }
    }
}

/// One text message from the client.
pub(crate) fn on_text(core: &Core, conn: &Rc<Conn>, app: &App, text: &[u8]) {
    let reply = match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(m)) => match m.get("type").and_then(Value::as_str) {
            Some("ping") => json!({"type": "pong"}),
            Some(t) => {
                if !conn.state.borrow_mut().allow_client_message() {
                    json!({"type": "error", "message": "rate limit: too many messages"})
                } else {
                    let user = conn.state.borrow().user.clone();
                    if let (Some(obs), Some(u), Ok(s)) =
                        (&core.shared.observer, user, std::str::from_utf8(text))
                    {
                        obs.client_message(&app.config, &u, s);
                    }
                    let mut ack = json!({"type": "ack", "ack": t});
                    if let Some(id) = m.get("id") {
                        ack["id"] = id.clone();
                    }
                    ack
                }
            }
            None => json!({"type": "error", "message": "a message needs a string `type`"}),
        },
        _ => json!({"type": "error", "message": "messages are JSON objects"}),
    };
    conn.push(ws::text_frame(reply.to_string().as_bytes()));
}

/// The socket's form of an encoded Pusher event frame: `{"type":"notification","event","data"}`
/// with `data` as JSON when the event's data string is JSON text. `None` for a frame that is
/// not an event.
pub(crate) fn notification_frame(frame: &Bytes) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(crate::history::frame_payload(frame)?).ok()?;
    let event = v.get("event")?.as_str()?;
    let data = match v.get("data") {
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(other) => other.clone(),
        None => Value::Null,
    };
    let out = json!({"type": "notification", "event": event, "data": data});
    Some(ws::text_frame(out.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::pusher;

    fn payload(frame: &Bytes) -> Value {
        serde_json::from_slice(crate::history::frame_payload(frame).unwrap()).unwrap()
    }

    #[test]
    fn notification_form_of_an_event_frame() {
        let f = pusher::event_frame("new-message", "#server-to-user-u", r#"{"n":1}"#, None);
        let n = notification_frame(&f).unwrap();
        assert_eq!(
            payload(&n),
            json!({"type": "notification", "event": "new-message", "data": {"n": 1}})
        );
        let f = pusher::event_frame("e", "#server-to-user-u", "plain text", None);
        assert_eq!(
            payload(&notification_frame(&f).unwrap())["data"],
            "plain text"
        );
        assert!(notification_frame(&Bytes::from_static(b"\x81\x02{}")).is_none());
    }
}
