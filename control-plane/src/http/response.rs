//! [`Response`]: status, headers, body, serialized as an HTTP/1.1 response.

/// An HTTP response before serialization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (names lowercase).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this response (the request stream is not trustworthy, e.g.
    /// an unread body).
    pub close: bool,
}

/// `content-type` of JSON bodies.
pub const JSON: &str = "application/json";
/// `content-type` of the Prometheus text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
            close: false,
        }
    }

    /// `200 {}`: what the Pusher SDKs expect on success.
    pub fn empty_object() -> Response {
        Response::raw(200, JSON, b"{}".to_vec())
    }

    pub fn raw(status: u16, content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Marks the connection to be closed after this response.
    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    /// The wire bytes. `keep_alive` decides the `connection` header; `head_only` (a HEAD
    /// request) keeps `content-length` but omits the body.
    pub fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(self.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\ncache-control: no-store");
        for (k, v) in &self.headers {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(if keep_alive && !self.close {
            b"\r\nconnection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"\r\nconnection: close\r\n\r\n".as_slice()
        });
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_status_headers_and_body() {
        let r = Response::empty_object().header("x-a", "b");
        let s = String::from_utf8(r.to_bytes(true, false)).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ncache-control: no-store\r\nx-a: b\r\nconnection: keep-alive\r\n\r\n{}"
        );
        let s = String::from_utf8(r.closing().to_bytes(true, true)).unwrap();
        assert!(s.ends_with("connection: close\r\n\r\n"), "{s}");
        assert!(s.contains("content-length: 2\r\n"));
    }
}
