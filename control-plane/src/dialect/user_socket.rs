//! The alrt user-socket dialect's HTTP side: user tokens and events to one user. The socket
//! itself (`GET /ws?token=`) is a connection of the engine (`engine/src/user_socket.rs`).
//!
//! | request | answer |
//! |---|---|
//! | `POST /apps/{id}/users/{user_id}/token` `{expires_in?}` | `{token, expires_in}`: HS256, `scope: "user"`, 24 h by default |
//! | `POST /apps/{id}/users/{user_id}/events` `{event (or name), data}` | `{ok, triggered}` |
//!
//! Both authenticate like every `/apps/{id}` path (Pusher signature or `Bearer <app secret>`).

use ringcast_engine::Publish;
use ringcast_protocol::{jwt, validate_event_name, ChannelName};
use serde_json::{json, Value};

use crate::api::{data_text, Body, Ctx};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::Api;

/// Lifetime of a user token when `expires_in` is not given (24 h), and the most it may be.
pub const DEFAULT_USER_TOKEN_SECS: u64 = 86_400;
pub const MAX_USER_TOKEN_SECS: u64 = 30 * 86_400;

fn user_channel(user: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(&format!("#server-to-user-{user}")).map_err(|_| {
        ApiError::bad_request(format!(
            "invalid user id {user:?}: letters, digits and -_=@,.; only"
        ))
    })
}

impl Api {
    /// `POST /apps/{id}/users/{user_id}/token`.
    pub(crate) fn user_token(
        &self,
        ctx: &Ctx,
        req: &Request,
        user: &str,
    ) -> Result<Response, ApiError> {
        user_channel(user)?;
        let expires_in = if req.body.iter().all(u8::is_ascii_whitespace) {
            DEFAULT_USER_TOKEN_SECS
        } else {
            match Body::json(req)?.get("expires_in") {
                None => DEFAULT_USER_TOKEN_SECS,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_USER_TOKEN_SECS).contains(&n) => n,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "expires_in must be 1 to {MAX_USER_TOKEN_SECS} seconds"
                        )))
                    }
                },
            }
        };
        let now = self.now_unix();
        let claims = jwt::Claims {
            sub: user.to_owned(),
            app: ctx.app.id.clone(),
            iat: now,
            exp: now + expires_in,
            permissions: Vec::new(),
            channels: Vec::new(),
            scope: "user".into(),
        };
        let token = jwt::sign(&claims, ctx.app.primary_secret());
        Ok(Response::json(
            200,
            &json!({"token": token, "expires_in": expires_in}),
        ))
    }

    /// `POST /apps/{id}/users/{user_id}/events`: one event to the user's channel, which every
    /// signed-in Pusher connection of the user and every `/ws` user socket is subscribed to.
    pub(crate) async fn user_events(
        &self,
        ctx: &Ctx,
        req: &Request,
        user: &str,
    ) -> Result<Response, ApiError> {
        let channel = user_channel(user)?;
        let body = Body::json(req)?;
        let event = match body.opt_str("event")? {
            Some(e) => e,
            None => body.str("name")?,
        };
        if !validate_event_name(event) {
            return Err(ApiError::bad_request(
                "the event name must be 1 to 200 bytes long",
            ));
        }
        let data = data_text(body.get("data").unwrap_or(&Value::Null));
        if data.len() > ctx.app.max_event_bytes {
            return Err(ApiError::new(
                413,
                "event_too_large",
                format!(
                    "event data is {} bytes; the app allows {}",
                    data.len(),
                    ctx.app.max_event_bytes
                ),
            ));
        }
        let counts = self
            .engine
            .publish(Publish {
                app: ctx.idx,
                channels: vec![channel],
                event: event.to_owned(),
                data,
                except: None,
            })
            .await?;
        let triggered: u64 = counts.iter().map(|c| c.subscription_count).sum();
        Ok(Response::json(
            200,
            &json!({"ok": true, "triggered": triggered}),
        ))
    }
}
