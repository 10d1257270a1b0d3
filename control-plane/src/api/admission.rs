//! Admission control: what the API decides from a request head alone, before reading the
//! body, so an unauthenticated client can never make the server hold memory for it.
//!
//! Order: route (404/405), app (404), the Pusher signature or Bearer token (401; the signature
//! covers `body_md5`, so it verifies without the body), app enabled (403), then a reservation
//! of `Content-Length` bytes in the process-wide body budget (503 past it). The full check,
//! `body_md5` against the body included, runs again once the body is in.
//!
//! `/metrics` and `/stats` on the public port are answered only to the addresses in
//! `[api] metrics_allow` (403 otherwise).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ringcast_protocol::client_addr::any_contains;

use super::{route, Api, Endpoint, Route, Scope};
use crate::auth::{authenticate_app_head, authenticate_by_key_head, bearer_in};
use crate::error::ApiError;
use crate::http::{BodyBudget, BodyPermit, RequestHead, Response};

/// Why admission refused a request (the `reason` label of `ringcast_http_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Route or app unknown, before the body.
    NotFound,
    /// Key, timestamp or signature missing or wrong, before the body.
    Unauthenticated,
    /// The app is disabled, before the body.
    Disabled,
    /// The body budget is spent (503).
    BodyBudget,
    /// `/metrics` or `/stats` from an address outside `metrics_allow` (403).
    MetricsForbidden,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::NotFound,
        Refusal::Unauthenticated,
        Refusal::Disabled,
        Refusal::BodyBudget,
        Refusal::MetricsForbidden,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotFound => "not_found_before_body",
            Refusal::Unauthenticated => "unauthenticated_before_body",
            Refusal::Disabled => "app_disabled_before_body",
            Refusal::BodyBudget => "body_budget",
            Refusal::MetricsForbidden => "metrics_forbidden",
        }
    }
}

/// Refusal counters (process-wide; refusals are rare enough that one shared atomic each is
/// cheap).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; 5],
}

impl Refusals {
    pub fn count(&self, r: Refusal) -> u64 {
        self.counts[r as usize].load(Relaxed)
    }

    pub(crate) fn inc(&self, r: Refusal) {
        self.counts[r as usize].fetch_add(1, Relaxed);
    }

    /// Appends the counters and the body budget gauges in the Prometheus text format, and the
    /// engine's connection refusals (`engine`: `(reason, count)`).
    pub fn render(
        &self,
        out: &mut String,
        budget: &BodyBudget,
        engine: &[(&'static str, u64)],
        in_use: (usize, usize),
    ) {
        let _ = writeln!(
            out,
            "# HELP ringcast_public_connections_open Connections open on the public port (WebSocket and HTTP), against [admission] max_connections.\n# TYPE ringcast_public_connections_open gauge\nringcast_public_connections_open {}\n# HELP ringcast_handshakes_in_flight Connections whose request head has not arrived yet, against [admission] max_handshakes_in_flight.\n# TYPE ringcast_handshakes_in_flight gauge\nringcast_handshakes_in_flight {}",
            in_use.0, in_use.1
        );
        out.push_str("# HELP ringcast_connections_refused_total Connections on the public port refused by admission control, by reason (caps and per-address limits: closed at accept or after the head; origin_not_allowed: close 4009 after the upgrade).\n# TYPE ringcast_connections_refused_total counter\n");
        for (reason, n) in engine {
            let _ = writeln!(
                out,
                "ringcast_connections_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP ringcast_http_refused_total HTTP requests refused by admission control, by reason (decided from the request head, before any body byte is read).\n# TYPE ringcast_http_refused_total counter\n");
        for r in Refusal::ALL {
            let _ = writeln!(
                out,
                "ringcast_http_refused_total{{reason=\"{}\"}} {}",
                r.label(),
                self.count(r)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ringcast_http_body_bytes_in_flight Request body bytes reserved now (bodies being received).\n# TYPE ringcast_http_body_bytes_in_flight gauge\nringcast_http_body_bytes_in_flight {}\n# HELP ringcast_http_body_bytes_in_flight_limit The body budget ([api] max_body_bytes_in_flight).\n# TYPE ringcast_http_body_bytes_in_flight_limit gauge\nringcast_http_body_bytes_in_flight_limit {}",
            budget.in_use(),
            budget.limit()
        );
    }
}

impl Api {
    /// Decides on a request from its head alone (see the module docs). `Ok` carries the
    /// request's reservation in the body budget, held until it is answered.
    pub fn admit(&self, head: &RequestHead, scope: Scope) -> Result<Option<BodyPermit>, Response> {
        self.admit_inner(head, scope)
            .map_err(|(endpoint, app, why, e)| {
                self.refusals.inc(why);
                self.metrics.record(endpoint, e.status, app);
                tracing::debug!(path = %head.path, "refused before the body: {e}");
                e.to_response().closing()
            })
    }

    #[allow(clippy::type_complexity)]
    fn admit_inner(
        &self,
        head: &RequestHead,
        scope: Scope,
    ) -> Result<Option<BodyPermit>, (Endpoint, Option<u32>, Refusal, ApiError)> {
        if scope != Scope::HealthOnly && super::is_management_path(&head.path) {
            if let Some(m) = self.mgmt.get() {
                return self.admit_management(m, head);
            }
        }
        let r = match route(&head.method, &head.path) {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    e.endpoint(),
                    None,
                    Refusal::NotFound,
                    e.to_error(&head.method, &head.path),
                ))
            }
        };
        let endpoint = r.endpoint();
        if scope == Scope::HealthOnly && r != Route::Health {
            return Err((
                Endpoint::Other,
                None,
                Refusal::NotFound,
                super::health_only_error(),
            ));
        }
        self.observability_allowed(&r, scope)
            .map_err(|e| (endpoint, None, Refusal::MetricsForbidden, e))?;
        let now = (self.clock)();
        let mut app_idx = None;
        if let Some(id) = r.app() {
            let (idx, app) = self
                .engine
                .app_by_id(id)
                .ok_or_else(|| (endpoint, None, Refusal::NotFound, ApiError::unknown_app(id)))?;
            app_idx = Some(idx);
            match (self.mgmt.get(), bearer_in(&head.headers)) {
                // A management API token (`Authorization: Bearer rc_...`): verified here from
                // memory; its scopes are checked by the handler (`app_ctx`).
                (Some(m), Some(t)) if t.starts_with(crate::mgmt::token::TOKEN_PREFIX) => {
                    m.verify(t).map_err(|e| {
                        (
                            endpoint,
                            app_idx,
                            Refusal::Unauthenticated,
                            ApiError::unauthorized("invalid_api_token", e.message),
                        )
                    })?;
                }
                _ => {
                    authenticate_app_head(head, &app, now)
                        .map_err(|e| (endpoint, app_idx, Refusal::Unauthenticated, e))?;
                }
            }
            Self::enabled(&app).map_err(|e| (endpoint, app_idx, Refusal::Disabled, e))?;
        } else if let Route::TerminateConnections { app: None, .. } = r {
            let engine = &self.engine;
            authenticate_by_key_head(head, now, |k| engine.app_by_key(k))
                .map_err(|e| (endpoint, None, Refusal::Unauthenticated, e))?;
        }
        if head.content_length == 0 {
            return Ok(None);
        }
        self.body_budget
            .reserve(head.content_length)
            .map(Some)
            .ok_or_else(|| {
                (
                    endpoint,
                    app_idx,
                    Refusal::BodyBudget,
                    ApiError::new(
                        503,
                        "body_budget_exhausted",
                        "the server is receiving too many request bodies at once; retry later",
                    ),
                )
            })
    }

    /// The management plane's paths: a request with a body must carry a valid API token
    /// (checked from memory) before its body is read; the handler then checks its scopes.
    /// Pages and bodiless requests go on to the handler, which answers 401 with its JSON error.
    #[allow(clippy::type_complexity)]
    fn admit_management(
        &self,
        m: &crate::mgmt::Management,
        head: &RequestHead,
    ) -> Result<Option<BodyPermit>, (Endpoint, Option<u32>, Refusal, ApiError)> {
        if head.content_length == 0 {
            return Ok(None);
        }
        let token = bearer_in(&head.headers).ok_or_else(|| {
            (
                Endpoint::Other,
                None,
                Refusal::Unauthenticated,
                ApiError::unauthorized(
                    "missing_token",
                    "an API token is required (Authorization: Bearer rc_...)",
                ),
            )
        })?;
        m.verify(token).map_err(|e| {
            (
                Endpoint::Other,
                None,
                Refusal::Unauthenticated,
                ApiError::unauthorized("invalid_api_token", e.message),
            )
        })?;
        self.body_budget
            .reserve(head.content_length)
            .map(Some)
            .ok_or_else(|| {
                (
                    Endpoint::Other,
                    None,
                    Refusal::BodyBudget,
                    ApiError::new(
                        503,
                        "body_budget_exhausted",
                        "the server is receiving too many request bodies at once; retry later",
                    ),
                )
            })
    }

    /// `/metrics` and `/stats` on the public port: only for `[api] metrics_allow`.
    pub(crate) fn observability_allowed(&self, r: &Route, scope: Scope) -> Result<(), ApiError> {
        let Scope::Public { peer } = scope else {
            return Ok(());
        };
        if !matches!(r, Route::Metrics | Route::Stats) {
            return Ok(());
        }
        match peer {
            Some(ip) if any_contains(&self.config.metrics_allow, ip) => Ok(()),
            _ => Err(ApiError::new(
                403,
                "forbidden",
                "/metrics and /stats are served on the public port only to the addresses \
                     in [api] metrics_allow (or on the --api-listen listener)",
            )),
        }
    }
}
