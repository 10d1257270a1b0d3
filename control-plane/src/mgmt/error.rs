//! [`MgmtError`]: a management API failure, rendered as
//! `{"error": "<explanation>", "code": "<code>", "field": "<field>"?}`. `field` names the
//! request field at fault for bad input.

use crate::error::ApiError;
use crate::http::Response;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl MgmtError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> MgmtError {
        MgmtError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 `invalid_field`, naming the field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> MgmtError {
        let field = field.into();
        MgmtError {
            status: 400,
            code: "invalid_field",
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }

    /// 401: no token, or a token that is malformed, unknown, revoked or expired.
    pub fn unauthorized(message: impl Into<String>) -> MgmtError {
        MgmtError::new(401, "unauthorized", message)
    }

    /// 403: a valid token without the scope (or outside its app restriction).
    pub fn forbidden(message: impl Into<String>) -> MgmtError {
        MgmtError::new(403, "forbidden", message)
    }

    pub fn not_found(what: impl Into<String>) -> MgmtError {
        MgmtError::new(404, "not_found", what)
    }

    pub fn conflict(message: impl Into<String>) -> MgmtError {
        MgmtError::new(409, "conflict", message)
    }

    /// 500/503 for a store that failed: nothing was applied.
    pub fn store(e: impl std::fmt::Display) -> MgmtError {
        MgmtError::new(503, "store_unavailable", format!("the store failed: {e}"))
    }

    pub fn to_response(&self) -> Response {
        let mut body = serde_json::json!({ "error": self.message, "code": self.code });
        if let Some(f) = &self.field {
            body["field"] = serde_json::json!(f);
        }
        Response::json(self.status, &body)
    }
}

impl From<ApiError> for MgmtError {
    fn from(e: ApiError) -> MgmtError {
        MgmtError::new(e.status, e.code, e.message)
    }
}

impl std::fmt::Display for MgmtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}
