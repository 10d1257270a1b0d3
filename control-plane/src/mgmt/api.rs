//! The `/api` management endpoints (docs/management.md has the reference). Every request needs
//! `Authorization: Bearer rc_...`: missing or bad token 401, missing scope (or an app outside
//! the token's app restriction) 403, both as JSON. Reads that need the management state and
//! every write run on the management thread; the handler only awaits the reply.

use std::sync::Arc;

use ringcast_engine::{AppConfig, Publish};
use ringcast_protocol::{ChannelKind, ChannelName};
use serde_json::{json, Map, Value};

use super::error::MgmtError;
use super::model::{self, apply_fields, new_key_pair, settings_of, validate_id, ManagedApp};
use super::token::{self, Scope, TokenRecord};
use super::Management;
use crate::api::{percent_decode, Api, Ctx};
use crate::auth::{bearer_token, Credential};
use crate::http::{Request, Response};

/// Largest `/api` request body (apps and tokens are small).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest token name.
const MAX_TOKEN_NAME: usize = 200;

type R = Result<Response, MgmtError>;

/// Answers one `/api` request.
pub async fn handle(api: &Api, m: &Arc<Management>, req: &Request) -> Response {
    match route(api, m, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(path = %req.path, "{e}");
            }
            e.to_response()
        }
    }
}

fn authenticate(m: &Management, req: &Request) -> Result<TokenRecord, MgmtError> {
    let t = bearer_token(req).ok_or_else(|| {
        MgmtError::unauthorized("this endpoint needs an Authorization: Bearer rc_... API token")
    })?;
    m.verify(t)
}

fn need(t: &TokenRecord, s: Scope) -> Result<(), MgmtError> {
    if t.has(s) {
        Ok(())
    } else {
        Err(MgmtError::forbidden(format!(
            "the token lacks the {} scope",
            s.as_str()
        )))
    }
}

fn need_app(t: &TokenRecord, s: Scope, app: &str) -> Result<(), MgmtError> {
    need(t, s)?;
    if t.covers_app(app) {
        Ok(())
    } else {
        Err(MgmtError::forbidden(format!(
            "the token is restricted to another app than {app:?}"
        )))
    }
}

fn body(req: &Request) -> Result<Map<String, Value>, MgmtError> {
    if req.body.len() > MAX_BODY_BYTES {
        return Err(MgmtError::new(
            413,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => match duplicate_key(&req.body) {
            Some(k) => Err(MgmtError::field(k, "appears twice in the same object")),
            None => Ok(m),
        },
        Ok(_) => Err(MgmtError::new(
            400,
            "malformed_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(MgmtError::new(
            400,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// Only these fields may appear.
fn only(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), MgmtError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(MgmtError::field(
            k.as_str(),
            format!("unknown field (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn method_not_allowed(allow: &'static str) -> R {
    Ok(
        MgmtError::new(405, "method_not_allowed", format!("allowed: {allow}"))
            .to_response()
            .header("allow", allow),
    )
}

async fn route(api: &Api, m: &Arc<Management>, req: &Request) -> R {
    let segs: Vec<String> = req
        .path
        .trim_start_matches("/api")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| MgmtError::new(400, "bad_path", "the path is not valid percent-encoding"))?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method.as_str();
    // Authenticate first: an unauthenticated caller learns nothing about what exists.
    let t = authenticate(m, req)?;
    match (method, segs.as_slice()) {
        ("GET", ["token"]) => Ok(Response::json(200, &t.view())),
        ("GET", ["stats"]) => stats(m, &t),
        ("GET", ["apps"]) => list_apps(m, &t).await,
        ("POST", ["apps"]) => create_app(m, &t, req).await,
        (_, ["apps"]) => method_not_allowed("GET, POST"),
        ("GET", ["apps", id]) => get_app(m, &t, id).await,
        ("PUT", ["apps", id]) | ("PATCH", ["apps", id]) => update_app(m, &t, id, req).await,
        ("DELETE", ["apps", id]) => delete_app(m, &t, id).await,
        (_, ["apps", _]) => method_not_allowed("GET, PUT, PATCH, DELETE"),
        ("POST", ["apps", id, "keys"]) => add_key(m, &t, id).await,
        ("DELETE", ["apps", id, "keys"]) => {
            let b = body(req)?;
            only(&b, &["key"])?;
            let key = b
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| MgmtError::field("key", "the key to revoke is required"))?
                .to_owned();
            revoke_key(m, &t, id, key).await
        }
        ("DELETE", ["apps", id, "keys", key]) => revoke_key(m, &t, id, key.to_string()).await,
        (_, ["apps", _, "keys", ..]) => method_not_allowed("POST, DELETE"),
        ("POST", ["apps", id, "webhooks", "secret"]) => rotate_webhook_secret(m, &t, id).await,
        ("POST", ["apps", id, "debug", "trigger"]) => debug_trigger(m, &t, id, req).await,
        ("GET", ["apps", id, "usage"]) => usage(m, &t, id).await,
        ("GET", ["apps", id, "channels"]) => channels(m, &t, id).await,
        ("GET", ["apps", id, "history"]) => {
            let ctx = ctx_for(m, &t, Scope::AppsRead, id)?;
            Ok(api.history(&ctx, req).await?)
        }
        ("GET", ["apps", id, "webhooks"]) => {
            let ctx = ctx_for(m, &t, Scope::AppsRead, id)?;
            Ok(api.webhook_log(&ctx)?)
        }
        ("POST", ["apps", id, "webhooks", "redeliver"]) => {
            let ctx = ctx_for(m, &t, Scope::AppsWrite, id)?;
            Ok(api.redeliver(&ctx, req)?)
        }
        ("GET", ["tokens"]) => list_tokens(m, &t).await,
        ("POST", ["tokens"]) => create_token(m, &t, req).await,
        ("DELETE", ["tokens", id]) => revoke_token(m, &t, id).await,
        (_, ["tokens", ..]) => method_not_allowed("GET, POST, DELETE"),
        _ => Err(MgmtError::not_found(format!(
            "no such endpoint: {} {}",
            req.method, req.path
        ))),
    }
}

/// A live app's context for the app-API handlers reused here.
fn ctx_for(m: &Management, t: &TokenRecord, s: Scope, id: &str) -> Result<Ctx, MgmtError> {
    need_app(t, s, id)?;
    let (idx, app) = m
        .engine()
        .app_by_id(id)
        .ok_or_else(|| MgmtError::not_found(format!("no app {id:?}")))?;
    Ok(Ctx {
        idx,
        app,
        cred: Credential::Bearer,
    })
}

/// An app as the API shows it. Secrets only with `secrets:manage`.
fn app_view(
    cfg: &AppConfig,
    managed: Option<&ManagedApp>,
    secrets: bool,
    connections: u64,
) -> Value {
    let keys: Vec<Value> = cfg
        .credentials()
        .map(|(k, s)| {
            let mut v = json!({ "key": k });
            if let Some(ma) = managed {
                if let Some(kp) = ma.keys.iter().find(|kp| kp.key == k) {
                    v["created_at"] = json!(kp.created_at);
                }
            }
            if secrets {
                v["secret"] = json!(s.first());
                if s.len() > 1 {
                    v["secrets"] = json!(s);
                }
            }
            v
        })
        .collect();
    let mut settings = settings_of(cfg);
    if !secrets {
        // Credentials: only how many there are.
        settings["api_keys"] = json!(cfg.api_keys.iter().map(|_| "(hidden)").collect::<Vec<_>>());
    }
    let mut v = json!({
        "id": cfg.id,
        "name": managed.map(|a| a.name.as_str()).unwrap_or(""),
        "source": if managed.is_some() { "api" } else { "config" },
        "settings": settings,
        "keys": keys,
        "connections": connections,
    });
    if let Some(a) = managed {
        v["created_at"] = json!(a.created_at);
        v["updated_at"] = json!(a.updated_at);
        v["webhook_secret_set"] = json!(a.webhook_secret.is_some());
        if secrets {
            v["webhook_secret"] = json!(a.webhook_secret);
        }
    }
    v
}

fn connections_of(m: &Management, id: &str) -> u64 {
    m.engine()
        .app_usage()
        .into_iter()
        .find(|u| u.id == id)
        .map_or(0, |u| u.connections)
}

async fn list_apps(m: &Arc<Management>, t: &TokenRecord) -> R {
    need(t, Scope::AppsRead)?;
    let live = m.engine().apps();
    let managed: Vec<ManagedApp> = m.call(|st| st.managed_apps().cloned().collect()).await?;
    let secrets = t.has(Scope::SecretsManage);
    let usage = m.engine().app_usage();
    let apps: Vec<Value> = live
        .iter()
        .filter(|(_, a)| t.covers_app(&a.id))
        .map(|(idx, a)| {
            let ma = managed.iter().find(|x| x.id == a.id);
            let conns = usage
                .iter()
                .find(|u| u.idx == *idx)
                .map_or(0, |u| u.connections);
            app_view(a, ma, secrets, conns)
        })
        .collect();
    Ok(Response::json(200, &json!({ "apps": apps })))
}

async fn get_app(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need_app(t, Scope::AppsRead, id)?;
    let (_, cfg) = m
        .engine()
        .app_by_id(id)
        .ok_or_else(|| MgmtError::not_found(format!("no app {id:?}")))?;
    let key = id.to_owned();
    let managed = m.call(move |st| st.app(&key).cloned()).await?;
    Ok(Response::json(
        200,
        &app_view(
            &cfg,
            managed.as_ref(),
            t.has(Scope::SecretsManage),
            connections_of(m, id),
        ),
    ))
}

/// Answers with the app as it is live now.
fn applied(m: &Management, t: &TokenRecord, app: &ManagedApp, status: u16) -> R {
    let (_, cfg) = m
        .engine()
        .app_by_id(&app.id)
        .ok_or_else(|| MgmtError::conflict("the app was stored but another change hid it"))?;
    Ok(Response::json(
        status,
        &app_view(
            &cfg,
            Some(app),
            t.has(Scope::SecretsManage),
            connections_of(m, &app.id),
        ),
    ))
}

async fn create_app(m: &Arc<Management>, t: &TokenRecord, req: &Request) -> R {
    need(t, Scope::AppsWrite)?;
    if t.app.is_some() {
        return Err(MgmtError::forbidden(
            "a token restricted to one app cannot create apps",
        ));
    }
    let b = body(req)?;
    need_for_secret_settings(t, &b)?;
    let id = match b.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            validate_id(s)?;
            Some(s.clone())
        }
        Some(Value::Number(n)) => {
            let s = n.to_string();
            validate_id(&s)?;
            Some(s)
        }
        Some(_) => return Err(MgmtError::field("id", "must be a string")),
    };
    let mut name = String::new();
    let mut settings = Map::new();
    apply_fields(&b, &mut name, &mut settings)?;
    let app = m
        .call(move |st| -> Result<ManagedApp, MgmtError> {
            let now = st.now();
            let id = match id {
                Some(id) => id,
                // Numeric ids, as the Python SDK requires.
                None => loop {
                    let n = u32::from_str_radix(&token::random_hex(4)?, 16).unwrap_or(1)
                        % 900_000_000
                        + 100_000_000;
                    let id = n.to_string();
                    if st.app(&id).is_none() && !st.is_config_app(&id) {
                        break id;
                    }
                },
            };
            if st.app(&id).is_some() || st.is_config_app(&id) {
                return Err(MgmtError {
                    field: Some("id".into()),
                    ..MgmtError::conflict(format!("an app with id {id:?} exists"))
                });
            }
            let app = ManagedApp {
                id,
                name,
                keys: vec![new_key_pair(now)?],
                settings,
                webhook_secret: None,
                created_at: now,
                updated_at: now,
            };
            st.upsert_app(app.clone())?;
            Ok(app)
        })
        .await??;
    applied(m, t, &app, 201)
}

/// Settings that are credentials (LatteStream `api_keys`) need `secrets:manage` to be written.
fn need_for_secret_settings(t: &TokenRecord, b: &Map<String, Value>) -> Result<(), MgmtError> {
    if model::SECRET_SETTINGS.iter().any(|k| b.contains_key(*k)) {
        need(t, Scope::SecretsManage)?;
    }
    Ok(())
}

/// Refuses changes to apps that come from the config file.
fn managed_or_err<'a>(st: &'a super::State, id: &str) -> Result<&'a ManagedApp, MgmtError> {
    match st.app(id) {
        Some(a) if !st.is_config_app(id) => Ok(a),
        _ if st.is_config_app(id) => Err(MgmtError::new(
            409,
            "managed_by_config",
            format!("app {id:?} comes from the config file: change it there and send SIGHUP"),
        )),
        _ => Err(MgmtError::not_found(format!("no app {id:?}"))),
    }
}

async fn update_app(m: &Arc<Management>, t: &TokenRecord, id: &str, req: &Request) -> R {
    need_app(t, Scope::AppsWrite, id)?;
    let b = body(req)?;
    need_for_secret_settings(t, &b)?;
    if let Some(v) = b.get("id") {
        if v.as_str() != Some(id) {
            return Err(MgmtError::field("id", "the id of an app cannot change"));
        }
    }
    let id = id.to_owned();
    let app = m
        .call(move |st| -> Result<ManagedApp, MgmtError> {
            let mut app = managed_or_err(st, &id)?.clone();
            apply_fields(&b, &mut app.name, &mut app.settings)?;
            app.updated_at = st.now();
            st.upsert_app(app.clone())?;
            Ok(app)
        })
        .await??;
    applied(m, t, &app, 200)
}

async fn delete_app(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need_app(t, Scope::AppsWrite, id)?;
    let id = id.to_owned();
    m.call(move |st| -> Result<(), MgmtError> {
        managed_or_err(st, &id)?;
        st.delete_app(&id)?;
        Ok(())
    })
    .await??;
    Ok(Response::json(200, &json!({"ok": true})))
}

async fn add_key(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need_app(t, Scope::SecretsManage, id)?;
    let id = id.to_owned();
    let kp = m
        .call(move |st| -> Result<model::KeyPair, MgmtError> {
            let mut app = managed_or_err(st, &id)?.clone();
            if app.keys.len() >= 16 {
                return Err(MgmtError::conflict("an app holds at most 16 keys"));
            }
            let kp = new_key_pair(st.now())?;
            app.keys.push(kp.clone());
            app.updated_at = st.now();
            st.upsert_app(app)?;
            Ok(kp)
        })
        .await??;
    Ok(Response::json(
        201,
        &json!({"key": kp.key, "secret": kp.secret, "created_at": kp.created_at}),
    ))
}

async fn revoke_key(m: &Arc<Management>, t: &TokenRecord, id: &str, key: String) -> R {
    need_app(t, Scope::SecretsManage, id)?;
    let id = id.to_owned();
    m.call(move |st| -> Result<(), MgmtError> {
        let mut app = managed_or_err(st, &id)?.clone();
        let before = app.keys.len();
        app.keys.retain(|k| k.key != key);
        if app.keys.len() == before {
            return Err(MgmtError::not_found(format!(
                "app {id:?} has no key {key:?}"
            )));
        }
        if app.keys.is_empty() {
            return Err(MgmtError::conflict(
                "an app needs at least one key: add a new one before revoking the last",
            ));
        }
        app.updated_at = st.now();
        st.upsert_app(app)?;
        Ok(())
    })
    .await??;
    Ok(Response::json(200, &json!({"ok": true})))
}

async fn rotate_webhook_secret(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need_app(t, Scope::SecretsManage, id)?;
    let id = id.to_owned();
    let secret = m
        .call(move |st| -> Result<String, MgmtError> {
            let mut app = managed_or_err(st, &id)?.clone();
            let s = token::random_hex(20)?;
            app.webhook_secret = Some(s.clone());
            app.updated_at = st.now();
            st.upsert_app(app)?;
            Ok(s)
        })
        .await??;
    Ok(Response::json(200, &json!({"webhook_secret": secret})))
}

async fn debug_trigger(m: &Arc<Management>, t: &TokenRecord, id: &str, req: &Request) -> R {
    need_app(t, Scope::EventsTrigger, id)?;
    let (idx, app) = m
        .engine()
        .app_by_id(id)
        .ok_or_else(|| MgmtError::not_found(format!("no app {id:?}")))?;
    let b = body(req)?;
    only(&b, &["channel", "event", "data"])?;
    let channel = b
        .get("channel")
        .and_then(Value::as_str)
        .ok_or_else(|| MgmtError::field("channel", "a channel name is required"))?;
    let name = ChannelName::parse(channel)
        .map_err(|e| MgmtError::field("channel", format!("{channel:?}: {e}")))?;
    let event = match b.get("event") {
        None => "debug",
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => s.as_str(),
        Some(_) => return Err(MgmtError::field("event", "must be a string of 1-200 bytes")),
    };
    let data = match b.get("data") {
        None => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    if data.len() > app.max_event_bytes {
        return Err(MgmtError {
            field: Some("data".into()),
            ..MgmtError::new(
                413,
                "payload_too_large",
                format!(
                    "data is larger than the app's max_event_bytes ({})",
                    app.max_event_bytes
                ),
            )
        });
    }
    let counts = m
        .engine()
        .publish(Publish {
            app: idx,
            channels: vec![name],
            event: event.to_owned(),
            data,
            except: None,
        })
        .await
        .map_err(|e| MgmtError::from(crate::error::ApiError::from(e)))?;
    Ok(Response::json(
        200,
        &json!({"ok": true, "subscription_count": counts.first().map_or(0, |c| c.subscription_count)}),
    ))
}

async fn usage(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need_app(t, Scope::AppsRead, id)?;
    let now = m
        .engine()
        .app_usage()
        .into_iter()
        .find(|u| u.id == id)
        .ok_or_else(|| MgmtError::not_found(format!("no app {id:?}")))?;
    let key = id.to_owned();
    let inner = m.inner().clone();
    let days = m
        .call(move |_| {
            inner
                .usage
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .days(&key)
        })
        .await?;
    Ok(Response::json(
        200,
        &json!({
            "app": id,
            "connections": now.connections,
            "messages_in_total": now.messages_in,
            "messages_out_total": now.messages_out,
            "days": days,
        }),
    ))
}

/// Most presence channels whose members `GET /api/apps/{id}/channels` lists.
const MAX_PRESENCE_LISTED: usize = 50;

async fn channels(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need_app(t, Scope::AppsRead, id)?;
    let (idx, _) = m
        .engine()
        .app_by_id(id)
        .ok_or_else(|| MgmtError::not_found(format!("no app {id:?}")))?;
    let list = m
        .engine()
        .channels(idx, None)
        .await
        .map_err(|e| MgmtError::from(crate::error::ApiError::from(e)))?;
    let mut out = Vec::with_capacity(list.len());
    let mut presence_listed = 0;
    for c in list {
        let mut v = json!({
            "name": c.name.as_str(),
            "subscription_count": c.subscription_count,
            "user_count": c.user_count,
        });
        if c.name.kind() == ChannelKind::Presence && presence_listed < MAX_PRESENCE_LISTED {
            presence_listed += 1;
            let users = m
                .engine()
                .presence_users(idx, c.name.clone())
                .await
                .map_err(|e| MgmtError::from(crate::error::ApiError::from(e)))?;
            v["members"] = json!(users
                .iter()
                .map(|u| json!({
                    "id": u.id,
                    "user_info": serde_json::from_str::<Value>(&u.user_info_json).unwrap_or(Value::Null),
                }))
                .collect::<Vec<_>>());
        }
        out.push(v);
    }
    Ok(Response::json(200, &json!({"channels": out})))
}

fn stats(m: &Arc<Management>, t: &TokenRecord) -> R {
    need(t, Scope::AppsRead)?;
    let snap = m.engine().metrics();
    let apps: Vec<Value> = m
        .engine()
        .app_usage()
        .into_iter()
        .filter(|u| t.covers_app(&u.id))
        .map(|u| {
            json!({
                "id": u.id,
                "connections": u.connections,
                "messages_in": u.messages_in,
                "messages_out": u.messages_out,
            })
        })
        .collect();
    let mut v = json!({
        "time_ms": m.now() * 1000,
        "apps": apps,
    });
    if t.app.is_none() {
        v["connections"] = json!(snap.connections_current);
        v["messages_in"] = json!(snap.messages_in);
        v["messages_out"] = json!(snap.messages_out);
    }
    Ok(Response::json(200, &v))
}

async fn list_tokens(m: &Arc<Management>, t: &TokenRecord) -> R {
    need(t, Scope::TokensManage)?;
    let restrict = t.app.clone();
    let list: Vec<Value> = m
        .call(move |st| {
            st.tokens()
                .iter()
                .filter(|x| restrict.is_none() || x.app == restrict)
                .map(TokenRecord::view)
                .collect()
        })
        .await?;
    Ok(Response::json(200, &json!({"tokens": list})))
}

async fn create_token(m: &Arc<Management>, t: &TokenRecord, req: &Request) -> R {
    need(t, Scope::TokensManage)?;
    let b = body(req)?;
    only(
        &b,
        &["name", "scopes", "expires_in_secs", "expires_at", "app"],
    )?;
    let name = match b.get("name") {
        None => String::new(),
        Some(Value::String(s)) if s.len() <= MAX_TOKEN_NAME => s.clone(),
        Some(_) => {
            return Err(MgmtError::field(
                "name",
                format!("must be a string of at most {MAX_TOKEN_NAME} bytes"),
            ))
        }
    };
    let list = b
        .get("scopes")
        .and_then(Value::as_array)
        .ok_or_else(|| MgmtError::field("scopes", "a non-empty array of scopes is required"))?;
    let mut scopes = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let sc = s.as_str().and_then(Scope::parse).ok_or_else(|| {
            MgmtError::field(
                format!("scopes[{i}]"),
                format!(
                    "unknown scope {s} (scopes: {})",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ),
            )
        })?;
        // A token cannot grant more than its creator has.
        if !t.has(sc) {
            return Err(MgmtError::forbidden(format!(
                "cannot grant {}: the creating token lacks it",
                sc.as_str()
            )));
        }
        if !scopes.contains(&sc) {
            scopes.push(sc);
        }
    }
    if scopes.is_empty() {
        return Err(MgmtError::field("scopes", "at least one scope is required"));
    }
    let now = m.now();
    let expires_at = match (b.get("expires_in_secs"), b.get("expires_at")) {
        (Some(_), Some(_)) => {
            return Err(MgmtError::field(
                "expires_at",
                "give expires_in_secs or expires_at, not both",
            ))
        }
        (Some(v), None) => Some(
            v.as_u64()
                .filter(|s| *s > 0 && *s <= 10 * 365 * 86_400)
                .ok_or_else(|| MgmtError::field("expires_in_secs", "seconds, 1 to 10 years"))?
                + now,
        ),
        (None, Some(v)) => Some(
            v.as_u64()
                .filter(|s| *s > now)
                .ok_or_else(|| MgmtError::field("expires_at", "Unix seconds in the future"))?,
        ),
        (None, None) => None,
    };
    let app = match b.get("app") {
        None | Some(Value::Null) => t.app.clone(),
        Some(Value::String(a)) => {
            validate_id(a).map_err(|_| MgmtError::field("app", "not an app id"))?;
            if !t.covers_app(a) {
                return Err(MgmtError::forbidden(
                    "cannot create a token for an app outside the creating token's restriction",
                ));
            }
            Some(a.clone())
        }
        Some(_) => return Err(MgmtError::field("app", "must be an app id string")),
    };
    if let Some(a) = &app {
        if m.engine().app_by_id(a).is_none() {
            return Err(MgmtError::field("app", format!("no app {a:?}")));
        }
    }
    if t.app.is_some() && app != t.app {
        return Err(MgmtError::forbidden(
            "a token restricted to one app can only create tokens for that app",
        ));
    }
    let new = token::generate(name, scopes, expires_at, app, now)?;
    let rec = new.record.clone();
    m.call(move |st| st.add_token(rec)).await??;
    let mut v = new.record.view();
    v["token"] = json!(new.token);
    Ok(Response::json(201, &v))
}

async fn revoke_token(m: &Arc<Management>, t: &TokenRecord, id: &str) -> R {
    need(t, Scope::TokensManage)?;
    let id = id.to_owned();
    let restrict = t.app.clone();
    m.call(move |st| -> Result<(), MgmtError> {
        if let Some(a) = &restrict {
            if st
                .tokens()
                .iter()
                .any(|x| x.id == id && x.app.as_ref() != Some(a))
            {
                return Err(MgmtError::forbidden("the token belongs to another app"));
            }
        }
        st.revoke_token(&id)
    })
    .await??;
    Ok(Response::json(200, &json!({"ok": true})))
}

/// Finds the first object key that appears twice in the same JSON object (at any depth):
/// `{"name": "a", "name": "b"}` must not silently become `"b"`.
fn duplicate_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Check(Option<String>);
    impl<'de> Deserialize<'de> for Check {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Check, D::Error> {
            d.deserialize_any(CheckVisitor)
        }
    }
    struct CheckVisitor;
    impl<'de> Visitor<'de> for CheckVisitor {
        type Value = Check;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Check, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = None;
            while let Some(k) = m.next_key::<String>()? {
                let inner: Check = m.next_value()?;
                if dup.is_none() {
                    dup = inner.0;
                }
                if !seen.insert(k.clone()) && dup.is_none() {
                    dup = Some(k);
                }
            }
            Ok(Check(dup))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Check, A::Error> {
            let mut dup = None;
            while let Some(inner) = s.next_element::<Check>()? {
                if dup.is_none() {
                    dup = inner.0;
                }
            }
            Ok(Check(dup))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Check, E> {
            Ok(Check(None))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Check, E> {
            Ok(Check(None))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Check, E> {
            Ok(Check(None))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Check, E> {
            Ok(Check(None))
        }
        fn visit_str<E>(self, _: &str) -> Result<Check, E> {
            Ok(Check(None))
        }
        fn visit_unit<E>(self) -> Result<Check, E> {
            Ok(Check(None))
        }
    }
    serde_json::from_slice::<Check>(bytes)
        .ok()
        .and_then(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;

    #[test]
    fn duplicate_object_keys_are_found_at_any_depth() {
        assert_eq!(duplicate_key(br#"{"a":1,"b":2}"#), None);
        assert_eq!(duplicate_key(br#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_key(br#"{"w":[{"url":"x","url":"y"}]}"#).as_deref(),
            Some("url")
        );
        assert_eq!(
            duplicate_key(br#"[1,{"k":{"z":null,"z":true}}]"#).as_deref(),
            Some("z")
        );
    }
}
