//! AltoHost's server-sent-event streams, `GET /apps/{id}/stream?channels=a,b`, as seen from the
//! control plane. The stream itself is an engine connection (`engine/src/sse.rs`): like a
//! WebSocket it is a subscriber held by the core that accepted it, so the control plane never
//! serves one. Its part is only to recognise the path:
//!
//! - on the public port, a stream request that arrives on a kept-alive API connection is handed
//!   back to the core (`crate::http::Handler::hands_back`, `HttpService::serve` returns the
//!   stream), which serves it as it would a fresh one;
//! - on the `--api-listen` port (whose threads hold no subscriptions) it is answered with 404
//!   `stream_on_public_port`.

use crate::error::ApiError;

/// `/apps/{id}/stream` (with or without a trailing slash).
pub fn is_stream_path(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(segs.as_slice(), ["", "apps", id, "stream"] if !id.is_empty())
}

/// The answer on the API listener.
pub fn not_on_api_listener() -> ApiError {
    ApiError::new(
        404,
        "stream_on_public_port",
        "SSE streams (GET /apps/{id}/stream) are served on the public port (listen), where the \
         engine cores hold the subscriptions, not on the API listener",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths() {
        assert!(is_stream_path("/apps/app-id/stream"));
        assert!(is_stream_path("/apps/app-id/stream/"));
        assert!(!is_stream_path("/apps//stream"));
        assert!(!is_stream_path("/apps/a/b/stream"));
        assert!(!is_stream_path("/apps/a/events"));
    }
}
