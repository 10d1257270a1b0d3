//! `GET /dashboard`: one HTML page with its script and styles inline, compiled into the binary
//! (nothing is fetched from the internet). It signs in with an API token kept in the page's
//! `sessionStorage` and talks only to `/api` on the same origin, plus a WebSocket to the same
//! host for the debug console's live subscription.

use crate::http::{Request, Response};

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

pub fn serve(req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/dashboard") | ("GET", "/dashboard/") => {
            Response::raw(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
                .header("cache-control", "no-store")
                .header(
                    "content-security-policy",
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self' ws: wss:; img-src 'self' data:",
                )
        }
        ("GET", _) => super::error::MgmtError::not_found("no such dashboard page").to_response(),
        _ => super::error::MgmtError::new(405, "method_not_allowed", "allowed: GET")
            .to_response()
            .header("allow", "GET"),
    }
}
