//! [`ApiError`]: every failure the control plane answers, as an HTTP status, a stable
//! machine-readable `code` and a human explanation. Rendered as
//! `{"error": "<explanation>", "code": "<code>"}`.

use std::fmt;

use ringcast_engine::EngineError;
use ringcast_protocol::RestAuthError;

use crate::http::Response;

/// A failed request: status, stable code, explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable, machine-readable code (`invalid_signature`, `payload_too_large`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Extra machine-readable detail (rendered as `details`).
    pub details: Option<serde_json::Value>,
    /// Rate limits: seconds until a request can pass (`Retry-After` and `retry_after`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// Adds `details`.
    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// 429 `rate_limited` with the seconds until a request can pass.
    pub fn rate_limited(endpoint: &str, retry_after: u64) -> ApiError {
        let mut e = ApiError::new(
            429,
            "rate_limited",
            format!("rate limit exceeded on {endpoint}: retry in {retry_after} s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    /// 401 with the given code.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(401, code, message)
    }

    /// 404 `not_found` for an unknown route.
    pub fn not_found(path: &str) -> ApiError {
        ApiError::new(404, "not_found", format!("no such endpoint: {path}"))
    }

    /// 404 `unknown_app`.
    pub fn unknown_app(id: &str) -> ApiError {
        ApiError::new(404, "unknown_app", format!("unknown app id {id:?}"))
    }

    /// 400 for a malformed JSON body.
    pub fn malformed_json(e: &serde_json::Error) -> ApiError {
        ApiError::new(
            400,
            "malformed_json",
            format!("request body is not valid JSON: {e}"),
        )
    }

    /// The JSON error response: `{"error", "code", "details"?, "retry_after"?}`.
    pub fn to_response(&self) -> Response {
        self.render(self.code.to_owned())
    }

    /// The LatteStream dialect's rendering: the same shape with its upper-case codes
    /// (`INVALID_API_KEY`, `RATE_LIMIT_EXCEEDED`, ...; codes it does not define are the
    /// shared code in upper case).
    pub fn to_lattestream_response(&self) -> Response {
        let code = match self.code {
            "rate_limited" => "RATE_LIMIT_EXCEEDED".to_owned(),
            "payload_too_large" | "event_too_large" => "PAYLOAD_TOO_LARGE".to_owned(),
            "too_many_channels" => "TOO_MANY_CHANNELS".to_owned(),
            "too_many_events" => "TOO_MANY_EVENTS".to_owned(),
            "invalid_channel" => "INVALID_CHANNEL".to_owned(),
            "malformed_json" | "bad_request" => "INVALID_REQUEST".to_owned(),
            other => other.to_ascii_uppercase(),
        };
        self.render(code)
    }

    fn render(&self, code: String) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.message.clone().into());
        body.insert("code".into(), code.into());
        if let Some(d) = &self.details {
            body.insert("details".into(), d.clone());
        }
        if let Some(s) = self.retry_after {
            body.insert("retry_after".into(), s.into());
        }
        let mut r = Response::json(self.status, &serde_json::Value::Object(body));
        if self.status == 429 || self.status == 503 {
            let secs = self.retry_after.unwrap_or(1).to_string();
            r = r.header("retry-after", secs);
        }
        r
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            // A core's injection queue is full or its mesh is congested: the publisher should
            // slow down and retry (push-back happens before any event is dropped).
            EngineError::Overloaded => ApiError::new(
                503,
                "overloaded",
                "server overloaded: a core's queue is full, retry later",
            ),
            EngineError::Stopped => ApiError::new(503, "shutting_down", "server is shutting down"),
            EngineError::UnknownApp => ApiError::new(404, "unknown_app", "unknown app"),
            EngineError::ClusterUnavailable => ApiError::new(
                503,
                "cluster_unavailable",
                "the cluster broker is unavailable: the event cannot reach the other nodes, retry later",
            ),
        }
    }
}

impl From<RestAuthError> for ApiError {
    fn from(e: RestAuthError) -> ApiError {
        let code = match &e {
            RestAuthError::MissingParam(_) => "missing_auth_param",
            RestAuthError::BadVersion => "bad_auth_version",
            RestAuthError::TimestampExpired { .. } => "timestamp_expired",
            RestAuthError::BodyMd5Mismatch => "body_md5_mismatch",
            RestAuthError::BodyMd5Missing => "body_md5_missing",
            RestAuthError::UnknownKey => "unknown_auth_key",
            RestAuthError::InvalidSignature => "invalid_signature",
        };
        ApiError::new(e.status(), code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_error_and_code() {
        let r = ApiError::bad_request("nope").to_response();
        assert_eq!(r.status, 400);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "nope", "code": "bad_request"})
        );
    }

    #[test]
    fn overload_is_503_with_retry_after() {
        let r = ApiError::from(EngineError::Overloaded).to_response();
        assert_eq!(r.status, 503);
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| *k == "retry-after" && v == "1"));
        assert_eq!(ApiError::from(EngineError::Stopped).status, 503);
    }

    #[test]
    fn rest_auth_errors_are_401_with_distinct_codes() {
        let e = ApiError::from(RestAuthError::TimestampExpired {
            given: 1,
            now: 1000,
        });
        assert_eq!(e.status, 401);
        assert_eq!(e.code, "timestamp_expired");
        assert!(e.message.contains("not within 600s"), "{}", e.message);
        assert_eq!(
            ApiError::from(RestAuthError::InvalidSignature).code,
            "invalid_signature"
        );
    }
}
