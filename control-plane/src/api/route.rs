//! [`Route`]: method + path -> endpoint, a pure function. Path segments are percent-decoded
//! after splitting on `/` (a channel named `#server-to-user-1` arrives as `%23server-to-user-1`).

use crate::error::ApiError;

/// Every endpoint, as a metrics label too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Health,
    Stats,
    Metrics,
    Events,
    BatchEvents,
    SeedBatch,
    Channels,
    Channel,
    ChannelUsers,
    TerminateConnections,
    Auth,
    Webhooks,
    Redeliver,
    ChannelEvents,
    EventLog,
    History,
    /// LatteStream dialect: `POST /events`, `POST /batch_events`, `POST /apps/token`,
    /// `POST /auth`, `GET /channels` (paths at the API root, `lsk_` API keys).
    LsEvents,
    LsBatchEvents,
    LsToken,
    LsAuth,
    LsChannels,
    /// alrt user socket dialect: `POST /apps/{id}/users/{user}/token` and `.../events`.
    UserToken,
    UserEvents,
    /// No route matched, or the HTTP layer refused the request before routing.
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 24] = [
        Endpoint::Health,
        Endpoint::Stats,
        Endpoint::Metrics,
        Endpoint::Events,
        Endpoint::BatchEvents,
        Endpoint::SeedBatch,
        Endpoint::Channels,
        Endpoint::Channel,
        Endpoint::ChannelUsers,
        Endpoint::TerminateConnections,
        Endpoint::Auth,
        Endpoint::Webhooks,
        Endpoint::Redeliver,
        Endpoint::ChannelEvents,
        Endpoint::EventLog,
        Endpoint::History,
        Endpoint::LsEvents,
        Endpoint::LsBatchEvents,
        Endpoint::LsToken,
        Endpoint::LsAuth,
        Endpoint::LsChannels,
        Endpoint::UserToken,
        Endpoint::UserEvents,
        Endpoint::Other,
    ];

    /// Label in `ringcast_rest_requests_total{endpoint=...}`.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Health => "health",
            Endpoint::Stats => "stats",
            Endpoint::Metrics => "metrics",
            Endpoint::Events => "events",
            Endpoint::BatchEvents => "batch_events",
            Endpoint::SeedBatch => "events_batch",
            Endpoint::Channels => "channels",
            Endpoint::Channel => "channel",
            Endpoint::ChannelUsers => "channel_users",
            Endpoint::TerminateConnections => "terminate_connections",
            Endpoint::Auth => "auth",
            Endpoint::Webhooks => "webhooks",
            Endpoint::Redeliver => "webhooks_redeliver",
            Endpoint::ChannelEvents => "channel_events",
            Endpoint::EventLog => "events_log",
            Endpoint::History => "history",
            Endpoint::LsEvents => "ls_events",
            Endpoint::LsBatchEvents => "ls_batch_events",
            Endpoint::LsToken => "ls_token",
            Endpoint::LsAuth => "ls_auth",
            Endpoint::LsChannels => "ls_channels",
            Endpoint::UserToken => "user_token",
            Endpoint::UserEvents => "user_events",
            Endpoint::Other => "other",
        }
    }

    /// The LatteStream dialect's endpoints (their errors use its shape and codes).
    pub fn is_lattestream(self) -> bool {
        matches!(
            self,
            Endpoint::LsEvents
                | Endpoint::LsBatchEvents
                | Endpoint::LsToken
                | Endpoint::LsAuth
                | Endpoint::LsChannels
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A matched request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Stats,
    Metrics,
    /// `POST /apps/{app}/events`
    Events {
        app: String,
    },
    /// `POST /apps/{app}/batch_events`
    BatchEvents {
        app: String,
    },
    /// `POST /apps/{app}/events/batch` (seed dialect)
    SeedBatch {
        app: String,
    },
    /// `GET /apps/{app}/channels`
    Channels {
        app: String,
    },
    /// `GET /apps/{app}/channels/{channel}`
    Channel {
        app: String,
        channel: String,
    },
    /// `GET /apps/{app}/channels/{channel}/users`
    ChannelUsers {
        app: String,
        channel: String,
    },
    /// `POST /apps/{app}/users/{user}/terminate_connections`, or without `/apps/{app}` (the
    /// Python SDK's path; the app comes from `auth_key`).
    TerminateConnections {
        app: Option<String>,
        user: String,
    },
    /// `POST /apps/{app}/auth` (server-side channel authorization)
    Auth {
        app: String,
    },
    /// `GET /apps/{app}/webhooks` (delivery log)
    Webhooks {
        app: String,
    },
    /// `POST /apps/{app}/webhooks/redeliver`
    Redeliver {
        app: String,
    },
    /// `GET /apps/{app}/channels/{channel}/events`
    ChannelEvents {
        app: String,
        channel: String,
    },
    /// `GET /apps/{app}/events/log`
    EventLog {
        app: String,
    },
    /// `GET /apps/{app}/history`
    History {
        app: String,
    },
    /// LatteStream `POST /events`
    LsEvents,
    /// LatteStream `POST /batch_events`
    LsBatchEvents,
    /// LatteStream `POST /apps/token`
    LsToken,
    /// LatteStream `POST /auth`
    LsAuth,
    /// LatteStream `GET /channels`
    LsChannels,
    /// `POST /apps/{app}/users/{user}/token` (alrt user token)
    UserToken {
        app: String,
        user: String,
    },
    /// `POST /apps/{app}/users/{user}/events` (an event to one user)
    UserEvents {
        app: String,
        user: String,
    },
}

impl Route {
    /// The app id the path names, if any.
    pub fn app(&self) -> Option<&str> {
        match self {
            Route::Events { app }
            | Route::BatchEvents { app }
            | Route::SeedBatch { app }
            | Route::Channels { app }
            | Route::Channel { app, .. }
            | Route::ChannelUsers { app, .. }
            | Route::Auth { app }
            | Route::Webhooks { app }
            | Route::Redeliver { app }
            | Route::ChannelEvents { app, .. }
            | Route::EventLog { app }
            | Route::History { app }
            | Route::UserToken { app, .. }
            | Route::UserEvents { app, .. }
            | Route::TerminateConnections { app: Some(app), .. } => Some(app.as_str()),
            _ => None,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match self {
            Route::Health => Endpoint::Health,
            Route::Stats => Endpoint::Stats,
            Route::Metrics => Endpoint::Metrics,
            Route::Events { .. } => Endpoint::Events,
            Route::BatchEvents { .. } => Endpoint::BatchEvents,
            Route::SeedBatch { .. } => Endpoint::SeedBatch,
            Route::Channels { .. } => Endpoint::Channels,
            Route::Channel { .. } => Endpoint::Channel,
            Route::ChannelUsers { .. } => Endpoint::ChannelUsers,
            Route::TerminateConnections { .. } => Endpoint::TerminateConnections,
            Route::Auth { .. } => Endpoint::Auth,
            Route::Webhooks { .. } => Endpoint::Webhooks,
            Route::Redeliver { .. } => Endpoint::Redeliver,
            Route::ChannelEvents { .. } => Endpoint::ChannelEvents,
            Route::EventLog { .. } => Endpoint::EventLog,
            Route::History { .. } => Endpoint::History,
            Route::LsEvents => Endpoint::LsEvents,
            Route::LsBatchEvents => Endpoint::LsBatchEvents,
            Route::LsToken => Endpoint::LsToken,
            Route::LsAuth => Endpoint::LsAuth,
            Route::LsChannels => Endpoint::LsChannels,
            Route::UserToken { .. } => Endpoint::UserToken,
            Route::UserEvents { .. } => Endpoint::UserEvents,
        }
    }
}

/// Why no route was matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// 404.
    NotFound,
    /// 405; the methods the path allows.
    MethodNotAllowed {
        endpoint: Endpoint,
        allow: &'static str,
    },
}

impl RouteError {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            RouteError::NotFound => Endpoint::Other,
            RouteError::MethodNotAllowed { endpoint, .. } => *endpoint,
        }
    }

    pub fn to_error(&self, method: &str, path: &str) -> ApiError {
        match self {
            // Only reached on the `--api-listen` port (dialect/sse.rs).
            RouteError::NotFound
                if method == "GET" && crate::dialect::sse::is_stream_path(path) =>
            {
                crate::dialect::sse::not_on_api_listener()
            }
            RouteError::NotFound => ApiError::not_found(path),
            RouteError::MethodNotAllowed { allow, .. } => ApiError::new(
                405,
                "method_not_allowed",
                format!("{method} is not allowed on {path}; use {allow}"),
            ),
        }
    }

    pub fn allow(&self) -> Option<&'static str> {
        match self {
            RouteError::NotFound => None,
            RouteError::MethodNotAllowed { allow, .. } => Some(allow),
        }
    }
}

/// Percent-decodes one path segment (`+` stays `+` in paths). Invalid escapes and invalid
/// UTF-8 make the segment unroutable.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Matches a request. `HEAD` is accepted wherever `GET` is.
pub fn route(method: &str, path: &str) -> Result<Route, RouteError> {
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let raw: Vec<&str> = trimmed.split('/').skip(1).collect();
    if !path.starts_with('/') || raw.iter().any(|s| s.is_empty()) {
        return Err(RouteError::NotFound);
    }
    let mut segs = Vec::with_capacity(raw.len());
    for s in raw {
        segs.push(percent_decode(s).ok_or(RouteError::NotFound)?);
    }
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = method == "GET" || method == "HEAD";
    let post = method == "POST";
    let need = |ok: bool, r: Route, allow: &'static str| {
        if ok {
            Ok(r.clone())
        } else {
            Err(RouteError::MethodNotAllowed {
                endpoint: r.endpoint(),
                allow,
            })
        }
    };
    let app = |i: usize| seg[i].to_owned();
    match seg.as_slice() {
        ["health"] => need(get, Route::Health, "GET"),
        ["stats"] => need(get, Route::Stats, "GET"),
        ["metrics"] => need(get, Route::Metrics, "GET"),
        ["events"] => need(post, Route::LsEvents, "POST"),
        ["batch_events"] => need(post, Route::LsBatchEvents, "POST"),
        ["apps", "token"] => need(post, Route::LsToken, "POST"),
        ["auth"] => need(post, Route::LsAuth, "POST"),
        ["channels"] => need(get, Route::LsChannels, "GET"),
        ["users", user, "terminate_connections"] => need(
            post,
            Route::TerminateConnections {
                app: None,
                user: (*user).to_owned(),
            },
            "POST",
        ),
        ["apps", _, "events"] => need(post, Route::Events { app: app(1) }, "POST"),
        ["apps", _, "events", "batch"] => need(post, Route::SeedBatch { app: app(1) }, "POST"),
        ["apps", _, "batch_events"] => need(post, Route::BatchEvents { app: app(1) }, "POST"),
        ["apps", _, "channels"] => need(get, Route::Channels { app: app(1) }, "GET"),
        ["apps", _, "channels", ch] => need(
            get,
            Route::Channel {
                app: app(1),
                channel: (*ch).to_owned(),
            },
            "GET",
        ),
        ["apps", _, "channels", ch, "users"] => need(
            get,
            Route::ChannelUsers {
                app: app(1),
                channel: (*ch).to_owned(),
            },
            "GET",
        ),
        ["apps", _, "users", user, "terminate_connections"] => need(
            post,
            Route::TerminateConnections {
                app: Some(app(1)),
                user: (*user).to_owned(),
            },
            "POST",
        ),
        ["apps", _, "auth"] => need(post, Route::Auth { app: app(1) }, "POST"),
        ["apps", _, "users", user, "token"] => need(
            post,
            Route::UserToken {
                app: app(1),
                user: (*user).to_owned(),
            },
            "POST",
        ),
        ["apps", _, "users", user, "events"] => need(
            post,
            Route::UserEvents {
                app: app(1),
                user: (*user).to_owned(),
            },
            "POST",
        ),
        ["apps", _, "webhooks"] => need(get, Route::Webhooks { app: app(1) }, "GET"),
        ["apps", _, "webhooks", "redeliver"] => {
            need(post, Route::Redeliver { app: app(1) }, "POST")
        }
        ["apps", _, "channels", ch, "events"] => need(
            get,
            Route::ChannelEvents {
                app: app(1),
                channel: (*ch).to_owned(),
            },
            "GET",
        ),
        ["apps", _, "events", "log"] => need(get, Route::EventLog { app: app(1) }, "GET"),
        ["apps", _, "history"] => need(get, Route::History { app: app(1) }, "GET"),
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn routes_every_endpoint() {
        let cases = [
            ("GET", "/health", Route::Health),
            ("HEAD", "/health", Route::Health),
            ("GET", "/stats", Route::Stats),
            ("GET", "/metrics", Route::Metrics),
            ("POST", "/apps/1/events", Route::Events { app: app("1") }),
            ("POST", "/apps/1/events/", Route::Events { app: app("1") }),
            (
                "POST",
                "/apps/my-app/batch_events",
                Route::BatchEvents { app: app("my-app") },
            ),
            (
                "POST",
                "/apps/1/events/batch",
                Route::SeedBatch { app: app("1") },
            ),
            ("GET", "/apps/1/channels", Route::Channels { app: app("1") }),
            (
                "GET",
                "/apps/1/channels/presence-x",
                Route::Channel {
                    app: app("1"),
                    channel: "presence-x".into(),
                },
            ),
            (
                "GET",
                "/apps/1/channels/%23server-to-user-7",
                Route::Channel {
                    app: app("1"),
                    channel: "#server-to-user-7".into(),
                },
            ),
            (
                "GET",
                "/apps/1/channels/presence-x/users",
                Route::ChannelUsers {
                    app: app("1"),
                    channel: "presence-x".into(),
                },
            ),
            (
                "POST",
                "/apps/1/users/u%201/terminate_connections",
                Route::TerminateConnections {
                    app: Some(app("1")),
                    user: "u 1".into(),
                },
            ),
            (
                "POST",
                "/users/42/terminate_connections",
                Route::TerminateConnections {
                    app: None,
                    user: "42".into(),
                },
            ),
            ("POST", "/apps/1/auth", Route::Auth { app: app("1") }),
            ("POST", "/events", Route::LsEvents),
            ("POST", "/batch_events", Route::LsBatchEvents),
            ("POST", "/apps/token", Route::LsToken),
            ("POST", "/auth", Route::LsAuth),
            ("GET", "/channels", Route::LsChannels),
        ];
        for (m, p, want) in cases {
            assert_eq!(route(m, p), Ok(want), "{m} {p}");
        }
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        for (m, p, allow) in [
            ("GET", "/apps/1/events", "POST"),
            ("POST", "/apps/1/channels", "GET"),
            ("DELETE", "/apps/1/channels/x", "GET"),
            ("PUT", "/health", "GET"),
            ("GET", "/users/1/terminate_connections", "POST"),
            ("HEAD", "/apps/1/auth", "POST"),
        ] {
            let e = route(m, p).unwrap_err();
            assert_eq!(e.allow(), Some(allow), "{m} {p}");
            assert_eq!(e.to_error(m, p).status, 405);
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for p in [
            "/",
            "",
            "/apps",
            "/apps/1",
            "/apps/1/nope",
            "/apps//events",
            "/apps/1/channels/x/users/y",
            "/app/app-key",
            "/health/x",
            "/apps/1/channels/%zz",
            "/apps/1/channels/%ff",
            "relative",
        ] {
            assert_eq!(route("GET", p), Err(RouteError::NotFound), "{p:?}");
            assert_eq!(route("GET", p).unwrap_err().to_error("GET", p).status, 404);
        }
    }

    #[test]
    fn endpoint_indexes_are_dense() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
