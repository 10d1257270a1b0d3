//! Reading request bodies and query attributes: JSON objects (or form-encoded pairs), typed
//! field access with clear errors, and the `info` attribute lists.

use ringcast_protocol::parse_query;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::http::Request;

/// A request body as a JSON object.
pub struct Body(pub Map<String, Value>);

impl Body {
    /// Parses the body as a JSON object (400 `malformed_json` otherwise).
    pub fn json(req: &Request) -> Result<Body, ApiError> {
        if req.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                400,
                "malformed_json",
                "the request body is empty: send a JSON object",
            ));
        }
        match serde_json::from_slice::<Value>(&req.body) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(ApiError::new(
                400,
                "malformed_json",
                "the request body must be a JSON object",
            )),
            Err(e) => Err(ApiError::malformed_json(&e)),
        }
    }

    /// A JSON object, or `application/x-www-form-urlencoded` pairs as string fields (what an
    /// auth endpoint receives from pusher-js).
    pub fn json_or_form(req: &Request) -> Result<Body, ApiError> {
        let form = req
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form {
            let text = std::str::from_utf8(&req.body)
                .map_err(|_| ApiError::bad_request("the form body is not UTF-8"))?;
            Ok(Body(
                parse_query(text)
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ))
        } else {
            Body::json(req)
        }
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// An optional string field (400 if present with another type).
    pub fn opt_str(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::bad_request(format!("`{field}` must be a string"))),
        }
    }

    /// A required string field.
    pub fn str(&self, field: &str) -> Result<&str, ApiError> {
        self.opt_str(field)?
            .ok_or_else(|| ApiError::bad_request(format!("`{field}` is required")))
    }
}

/// The event `data`: a string is used verbatim; any other JSON value (the seed dialect and
/// some clients send objects) is delivered as its JSON text.
pub fn data_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Requested `info` attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub user_count: bool,
    pub subscription_count: bool,
    /// `cache` (GET /channels/{name} only): the cache channel's last event.
    pub cache: bool,
}

impl Info {
    pub fn any(self) -> bool {
        self.user_count || self.subscription_count
    }

    /// Parses a comma list. `allow_cache`: `cache` is valid (GET /channels/{name}).
    pub fn parse(list: &str, allow_cache: bool) -> Result<Info, ApiError> {
        let mut info = Info::default();
        for attr in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match attr {
                "user_count" => info.user_count = true,
                "subscription_count" => info.subscription_count = true,
                "cache" if allow_cache => info.cache = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown info attribute {other:?}: use user_count and/or subscription_count"
                    )))
                }
            }
        }
        Ok(info)
    }
}

/// The first value of a query parameter (percent-decoded).
pub fn query_param(req: &Request, name: &str) -> Option<String> {
    parse_query(&req.query)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &str, ct: Option<&str>) -> Request {
        Request {
            method: "POST".into(),
            path: "/".into(),
            query: String::new(),
            headers: ct
                .map(|c| vec![("content-type".to_string(), c.to_string())])
                .unwrap_or_default(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    #[test]
    fn json_objects_only() {
        assert!(Body::json(&req("{\"a\":1}", None)).is_ok());
        for bad in ["", "  ", "[1]", "\"s\"", "{", "{\"a\":}", "nul"] {
            let e = Body::json(&req(bad, None)).err().unwrap();
            assert_eq!((e.status, e.code), (400, "malformed_json"), "{bad:?}");
        }
    }

    #[test]
    fn form_bodies() {
        let b = Body::json_or_form(&req(
            "socket_id=1.2&channel_name=private-a%2Bb",
            Some("application/x-www-form-urlencoded; charset=UTF-8"),
        ))
        .unwrap();
        assert_eq!(b.str("socket_id").unwrap(), "1.2");
        assert_eq!(b.str("channel_name").unwrap(), "private-a+b");
    }

    #[test]
    fn typed_fields() {
        let b = Body::json(&req("{\"s\":\"x\",\"n\":1,\"z\":null}", None)).unwrap();
        assert_eq!(b.str("s").unwrap(), "x");
        assert_eq!(b.str("n").unwrap_err().status, 400);
        assert_eq!(b.opt_str("z").unwrap(), None);
        assert!(b.str("missing").unwrap_err().message.contains("required"));
    }

    #[test]
    fn info_lists() {
        assert_eq!(
            Info::parse("user_count, subscription_count", false).unwrap(),
            Info {
                user_count: true,
                subscription_count: true,
                cache: false
            }
        );
        assert!(!Info::parse("", false).unwrap().any());
        assert!(Info::parse("cache", false).is_err());
        assert!(Info::parse("cache", true).unwrap().cache);
        assert_eq!(Info::parse("occupied", false).unwrap_err().status, 400);
    }

    #[test]
    fn data_text_keeps_strings_verbatim() {
        assert_eq!(data_text(&Value::String("{\"a\": 1}".into())), "{\"a\": 1}");
        assert_eq!(data_text(&serde_json::json!({"a": 1})), "{\"a\":1}");
    }
}
