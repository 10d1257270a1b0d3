//! [`Api`]: routing, per-app authentication and the handlers. Each request is routed
//! ([`route`]), its app resolved (404) and authenticated (401), then handled; every answer,
//! success or [`ApiError`], is counted in the REST metrics by endpoint and status.

mod admission;
mod body;
mod history;
mod route;

use std::sync::Arc;

use ringcast_engine::{AppConfig, AppIdx, EngineHandle};
use serde_json::json;

pub use crate::dialect::pusher::{parse_event, EventSpec};
pub use admission::{Refusal, Refusals};
pub use body::{data_text, query_param, Body, Info};
pub use route::{percent_decode, route, Endpoint, Route, RouteError};

use crate::auth::{authenticate_app, authenticate_by_key, Credential};
use crate::config::ApiConfig;
use crate::dialect::{lattestream, relay};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::metrics::RestMetrics;
use crate::ratelimit::{Decision, RateLimiter};
use crate::{metrics, stats};

/// Seconds since the Unix epoch; injectable so tests can sign with any timestamp.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// Apps whose REST requests are counted per app (`ringcast_rest_app_requests_total`); apps
/// with a higher index (after this many were ever created) are counted in the totals only.
pub const MAX_COUNTED_APPS: usize = 4096;

/// An authenticated request's app.
pub struct Ctx {
    pub idx: AppIdx,
    pub app: Arc<AppConfig>,
    pub cred: Credential,
}

/// The HTTP API over an engine handle.
pub struct Api {
    pub(crate) engine: EngineHandle,
    pub(crate) config: ApiConfig,
    clock: Clock,
    pub(crate) metrics: RestMetrics,
    /// The management plane (`/api`, `/dashboard`), when the composition root started one.
    pub(crate) mgmt: std::sync::OnceLock<Arc<crate::mgmt::Management>>,
    /// Bodies being received, process-wide.
    pub(crate) body_budget: crate::http::BodyBudget,
    /// Requests refused by admission control, by reason.
    pub(crate) refusals: Refusals,
    /// The webhook sender, when the composition root started one.
    pub(crate) webhooks: std::sync::OnceLock<std::sync::Arc<crate::webhook::Webhooks>>,
    /// `[api.tls]`: the API listener's TLS acceptor (its counters are in `/metrics`).
    pub(crate) api_tls: std::sync::OnceLock<ringcast_engine::TlsAcceptor>,
    /// Per-app, per-endpoint rate limits (shared by every thread serving the API).
    pub(crate) limiter: RateLimiter,
    /// Last LatteStream `batch_id` handed out (Unix microseconds, strictly increasing).
    pub(crate) last_batch_id: std::sync::atomic::AtomicU64,
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the API's own listener, `--api-listen`).
    Full,
    /// Everything on the public port, but `/metrics` and `/stats` only to a client whose
    /// address is in `[api] metrics_allow` (`peer`: the client address, after trusted proxies).
    Public { peer: Option<std::net::IpAddr> },
    /// Only `/health` (the public port when the API has its own `--api-listen` listener).
    HealthOnly,
}

/// `/api/...` and `/dashboard/...`: the management plane's paths (served when it runs).
pub(crate) fn is_management_path(path: &str) -> bool {
    path == "/api"
        || path.starts_with("/api/")
        || path == "/dashboard"
        || path.starts_with("/dashboard/")
}

impl Api {
    pub fn new(engine: EngineHandle, config: ApiConfig, clock: Clock) -> Api {
        let apps = engine.config().apps.len();
        let body_budget = crate::http::BodyBudget::new(config.max_body_bytes_in_flight);
        Api {
            config,
            clock,
            // Apps created at runtime get new indexes: room for them in the per-app counters.
            metrics: RestMetrics::new(apps.max(MAX_COUNTED_APPS)),
            mgmt: std::sync::OnceLock::new(),
            body_budget,
            refusals: Refusals::default(),
            webhooks: std::sync::OnceLock::new(),
            api_tls: std::sync::OnceLock::new(),
            limiter: RateLimiter::new(&engine.config().apps),
            last_batch_id: std::sync::atomic::AtomicU64::new(0),
            engine,
        }
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The clock (Unix seconds).
    pub(crate) fn now_unix(&self) -> u64 {
        (self.clock)()
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// The REST request counters.
    pub fn rest_metrics(&self) -> &RestMetrics {
        &self.metrics
    }

    /// Answers one request and counts it.
    pub async fn handle(&self, req: &Request, scope: Scope) -> Response {
        if scope != Scope::HealthOnly {
            if let Some(m) = self.mgmt.get() {
                if req.path == "/api" || req.path.starts_with("/api/") {
                    let resp = crate::mgmt::api::handle(self, m, req).await;
                    self.metrics.record(Endpoint::Other, resp.status, None);
                    return resp;
                }
                if req.path == "/dashboard" || req.path.starts_with("/dashboard/") {
                    let resp = crate::mgmt::dashboard::serve(req);
                    self.metrics.record(Endpoint::Other, resp.status, None);
                    return resp;
                }
            }
        }
        let rate = std::cell::Cell::new(None);
        let (endpoint, app, result) = self.dispatch(req, scope, &rate).await;
        let mut resp = result.unwrap_or_else(|e| {
            if e.status >= 500 {
                tracing::warn!(path = %req.path, "{e}");
            } else {
                tracing::debug!(path = %req.path, "{e}");
            }
            if endpoint.is_lattestream() {
                e.to_lattestream_response()
            } else {
                e.to_response()
            }
        });
        if let Some(d) = rate.get() {
            resp = rate_headers(resp, d, self.now_unix());
        }
        self.metrics.record(endpoint, resp.status, app);
        resp
    }

    /// The shared pipeline's rate-limit step: `Err(429)` when the (app, endpoint) budget is
    /// spent; the decision is kept for the `X-RateLimit-*` headers.
    fn rate_limit(
        &self,
        idx: AppIdx,
        endpoint: Endpoint,
        rate: &std::cell::Cell<Option<Decision>>,
    ) -> Result<(), ApiError> {
        let version = self.engine.apps_version();
        if version != self.limiter.version() {
            let apps = self.engine.apps();
            let list: Vec<(usize, &AppConfig)> =
                apps.iter().map(|(i, a)| (*i as usize, &**a)).collect();
            self.limiter.refresh(version, &list);
        }
        let Some(d) = self.limiter.check(idx as usize, endpoint) else {
            return Ok(());
        };
        rate.set(Some(d));
        if d.allowed {
            Ok(())
        } else {
            Err(ApiError::rate_limited(endpoint.label(), d.retry_after_secs))
        }
    }

    fn app_ctx(&self, id: &str, req: &Request, route: &Route) -> Result<Ctx, ApiError> {
        let (idx, app) = self
            .engine
            .app_by_id(id)
            .ok_or_else(|| ApiError::unknown_app(id))?;
        if let (Some(m), Some(t)) = (self.mgmt.get(), crate::auth::bearer_token(req)) {
            if t.starts_with(crate::mgmt::token::TOKEN_PREFIX) {
                // A management API token: publishing needs events:trigger, reads apps:read,
                // server-side channel auth secrets:manage, other writes apps:write.
                use crate::mgmt::token::Scope;
                let need = match route {
                    Route::Events { .. } | Route::BatchEvents { .. } | Route::SeedBatch { .. } => {
                        Scope::EventsTrigger
                    }
                    Route::Auth { .. } => Scope::SecretsManage,
                    _ if req.method == "GET" => Scope::AppsRead,
                    _ => Scope::AppsWrite,
                };
                let rec = m
                    .verify(t)
                    .map_err(|e| ApiError::unauthorized("invalid_api_token", e.message))?;
                if !rec.has(need) || !rec.covers_app(id) {
                    return Err(ApiError::new(
                        403,
                        "forbidden",
                        format!(
                            "the API token lacks the {} scope for app {id:?}",
                            need.as_str()
                        ),
                    ));
                }
                Self::enabled(&app)?;
                return Ok(Ctx {
                    idx,
                    app,
                    cred: Credential::Bearer,
                });
            }
        }
        let cred = authenticate_app(req, &app, (self.clock)())?;
        Self::enabled(&app)?;
        Ok(Ctx { idx, app, cred })
    }

    fn enabled(app: &AppConfig) -> Result<(), ApiError> {
        if app.enabled {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                "app_disabled",
                format!("app {:?} is disabled", app.id),
            ))
        }
    }

    async fn dispatch(
        &self,
        req: &Request,
        scope: Scope,
        rate: &std::cell::Cell<Option<Decision>>,
    ) -> (Endpoint, Option<AppIdx>, Result<Response, ApiError>) {
        let r = match route(&req.method, &req.path) {
            Ok(r) => r,
            Err(e) => {
                let ep = e.endpoint();
                if scope == Scope::HealthOnly && ep != Endpoint::Health {
                    return (Endpoint::Other, None, Err(health_only_error()));
                }
                let err = e.to_error(&req.method, &req.path);
                return match e.allow() {
                    Some(allow) => (ep, None, Ok(err.to_response().header("allow", allow))),
                    None => (ep, None, Err(err)),
                };
            }
        };
        let endpoint = r.endpoint();
        if scope == Scope::HealthOnly && r != Route::Health {
            return (Endpoint::Other, None, Err(health_only_error()));
        }
        if let Err(e) = self.observability_allowed(&r, scope) {
            self.refusals.inc(admission::Refusal::MetricsForbidden);
            return (endpoint, None, Err(e));
        }
        let app_id = r.app();
        let ctx = match app_id {
            Some(id) => match self.app_ctx(id, req, &r) {
                Ok(c) => Some(c),
                Err(e) => {
                    let idx = self.engine.app_by_id(id).map(|(i, _)| i);
                    return (endpoint, idx, Err(e));
                }
            },
            None => None,
        };
        let idx = ctx.as_ref().map(|c| c.idx);
        if let Some(c) = &ctx {
            if let Err(e) = self.rate_limit(c.idx, endpoint, rate) {
                return (endpoint, idx, Err(e));
            }
        }
        if endpoint.is_lattestream() {
            // LatteStream: the API key in the request names the app.
            let body = if req.method == "POST" {
                match Body::json(req) {
                    Ok(b) => Some(b),
                    Err(e) => return (endpoint, None, Err(e)),
                }
            } else {
                None
            };
            let (idx, result) = match lattestream::authenticate(&self.engine, req, body.as_ref()) {
                Ok(ctx) => match self.rate_limit(ctx.idx, endpoint, rate) {
                    Ok(()) => (Some(ctx.idx), self.lattestream(&r, &ctx, req, body).await),
                    Err(e) => (Some(ctx.idx), Err(e)),
                },
                Err(e) => (None, Err(e)),
            };
            return (endpoint, idx, result);
        }
        let result = match (&r, &ctx) {
            (Route::Health, _) if self.engine.is_shutting_down() => Ok(Response::json(
                503,
                &json!({"ok": false, "shutting_down": true}),
            )),
            (Route::Health, _) => {
                let stopped = self.engine.stopped_cores();
                if stopped.is_empty() {
                    Ok(Response::json(200, &self.health()))
                } else {
                    Ok(Response::json(
                        503,
                        &json!({"ok": false, "stopped_cores": stopped}),
                    ))
                }
            }
            (Route::Stats, _) => Ok(Response::json(200, &stats::render(&self.engine.stats()))),
            (Route::Metrics, _) => Ok(self.metrics_response()),
            (Route::TerminateConnections { app: None, user }, _) => {
                // The Python SDK's path: the app is the one whose key signed the request.
                let engine = &self.engine;
                match authenticate_by_key(req, (self.clock)(), |k| engine.app_by_key(k)) {
                    Ok((idx, app)) => {
                        let ctx = Ctx {
                            idx,
                            app,
                            cred: Credential::Signature,
                        };
                        let res = match Self::enabled(&ctx.app) {
                            Ok(()) => self.terminate(&ctx, user).await,
                            Err(e) => Err(e),
                        };
                        return (endpoint, Some(idx), res);
                    }
                    Err(e) => Err(e),
                }
            }
            (_, None) => Err(ApiError::new(500, "internal", "route without an app")),
            (Route::LsEvents, _)
            | (Route::LsBatchEvents, _)
            | (Route::LsToken, _)
            | (Route::LsAuth, _)
            | (Route::LsChannels, _) => Err(ApiError::new(500, "internal", "unreachable")),
            (Route::Events { .. }, Some(ctx)) => self.events(ctx, req).await,
            (Route::BatchEvents { .. }, Some(ctx)) => self.batch_events(ctx, req).await,
            (Route::SeedBatch { .. }, Some(ctx)) => self.relay_batch(ctx, req).await,
            (Route::Channels { .. }, Some(ctx)) => self.channels(ctx, req).await,
            (Route::Channel { channel, .. }, Some(ctx)) => self.channel(ctx, req, channel).await,
            (Route::ChannelUsers { channel, .. }, Some(ctx)) => {
                self.channel_users(ctx, channel).await
            }
            (Route::TerminateConnections { user, .. }, Some(ctx)) => {
                self.terminate(ctx, user).await
            }
            (Route::Webhooks { .. }, Some(ctx)) => self.webhook_log(ctx),
            (Route::Redeliver { .. }, Some(ctx)) => self.redeliver(ctx, req),
            (Route::ChannelEvents { channel, .. }, Some(ctx)) => {
                self.channel_events(ctx, req, channel).await
            }
            (Route::EventLog { .. }, Some(ctx)) => self.event_log(ctx).await,
            (Route::History { .. }, Some(ctx)) => self.history(ctx, req).await,
            (Route::UserToken { user, .. }, Some(ctx)) => self.user_token(ctx, req, user),
            (Route::UserEvents { user, .. }, Some(ctx)) => self.user_events(ctx, req, user).await,
            (Route::Auth { .. }, Some(ctx)) => Body::json_or_form(req)
                .and_then(|b| relay::server_auth(&ctx.app, &b))
                .map(|v| Response::json(200, &v)),
        };
        (endpoint, idx, result)
    }

    /// `/health`: `status` is `ok`, or `degraded` when clustered and the broker is unreachable
    /// (still HTTP 200: the node serves its own clients and delivers locally; a load balancer
    /// must not take every node out at once because the shared broker is down).
    fn health(&self) -> serde_json::Value {
        match self.engine.cluster() {
            // Single node: unchanged from before clustering existed.
            None => json!({"ok": true}),
            Some(c) if c.is_connected() => json!({
                "ok": true,
                "status": "ok",
                "cluster": "connected",
                "node": &**c.node_id(),
            }),
            Some(c) => json!({
                "ok": true,
                "status": "degraded",
                "cluster": "disconnected",
                "node": &**c.node_id(),
                "reason": "the cluster broker is unreachable: local delivery continues, REST publishing answers 503",
            }),
        }
    }

    fn metrics_response(&self) -> Response {
        let slots = self.engine.app_slots();
        let apps: Vec<&str> = slots.iter().map(|(_, id, _)| id.as_str()).collect();
        let text = metrics::render(
            &self.engine.metrics(),
            &self.engine.stats(),
            &self.metrics,
            &apps,
        );
        let mut text = text;
        self.refusals.render(
            &mut text,
            &self.body_budget,
            &self.engine.admission_refusals(),
            self.engine.admission_in_use(),
        );
        if let Some(c) = self.engine.cluster() {
            metrics::render_cluster(c, &mut text);
        }
        if let Some(w) = self.webhooks.get() {
            w.stats().render_prometheus(&mut text);
        }
        let listeners: Vec<(&str, &ringcast_engine::TlsAcceptor)> = self
            .engine
            .tls()
            .map(|t| ("public", t))
            .into_iter()
            .chain(self.api_tls.get().map(|t| ("api", t)))
            .collect();
        if !listeners.is_empty() {
            metrics::render_tls(&listeners, &mut text);
        }
        Response::raw(200, crate::http::response::PROMETHEUS, text.into_bytes())
    }
}

/// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (Unix seconds when the
/// minute budget is full again).
fn rate_headers(resp: Response, d: Decision, now_unix: u64) -> Response {
    resp.header("x-ratelimit-limit", d.limit.to_string())
        .header("x-ratelimit-remaining", d.remaining.to_string())
        .header(
            "x-ratelimit-reset",
            (now_unix + d.reset_after_secs).to_string(),
        )
}

fn health_only_error() -> ApiError {
    ApiError::new(
        404,
        "not_found",
        "this port serves WebSocket connections and /health only: the HTTP API is on the \
         api_listen address",
    )
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::task::Poll;
    use std::task::{Context, Waker};

    /// A future that records its first poll, then is pending once before finishing.
    struct Step {
        id: usize,
        log: Rc<RefCell<Vec<usize>>>,
        polled: bool,
    }

    impl Future for Step {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<usize> {
            if self.polled {
                Poll::Ready(self.id)
            } else {
                self.polled = true;
                self.log.borrow_mut().push(self.id);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[test]
    fn join_all_first_polls_in_list_order_and_keeps_result_order() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let futs: Vec<Step> = (0..5)
            .map(|id| Step {
                id,
                log: log.clone(),
                polled: false,
            })
            .collect();
        let mut fut = Box::pin(futures_util::future::join_all(futs));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(*log.borrow(), vec![0, 1, 2, 3, 4]);
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => assert_eq!(out, vec![0, 1, 2, 3, 4]),
            Poll::Pending => panic!("should be done"),
        }
    }
}
