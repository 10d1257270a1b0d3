//! HTTP/1.1 request head parsing, the WebSocket upgrade response and the Pusher connect URL.

use std::fmt;

use crate::close;

/// A parsed HTTP request head (request line and headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Request method as sent, e.g. `"GET"`.
    pub method: String,
    /// Request target before `'?'`, e.g. `"/app/app-key"`.
    pub path: String,
    /// Raw text after `'?'`, `""` if none.
    pub query: String,
    /// `Some(key)` only for a valid WebSocket upgrade: `GET`, `Upgrade: websocket`
    /// (case-insensitive), `Connection` containing the token `upgrade`, `Sec-WebSocket-Version: 13`
    /// and a non-empty `Sec-WebSocket-Key`.
    pub websocket_key: Option<String>,
    /// All headers in order, names lowercased, values trimmed (for the HTTP API).
    pub headers: Vec<(String, String)>,
    /// Bytes of the head including the final CRLFCRLF; a body (if any) starts here.
    pub head_len: usize,
}

impl RequestHead {
    /// First header with this (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request head could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a syntactically valid HTTP/1.x request head.
    Malformed(String),
    /// The head did not complete within the allowed number of bytes.
    TooLarge,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(why) => write!(f, "malformed HTTP request head: {why}"),
            HandshakeError::TooLarge => f.write_str("HTTP request head too large"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Maximum number of headers accepted in a request head.
const MAX_HEADERS: usize = 96;

/// Parses an HTTP/1.x request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more bytes and call again with the whole buffer.
/// `Err`: malformed, or the head is longer than `max_len` bytes (complete or not).
pub fn parse_request_head(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<RequestHead>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_len {
                Err(HandshakeError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(e) => {
            // A head already over the limit is reported as too large even if it is also broken.
            return if buf.len() > max_len && !matches!(e, httparse::Error::TooManyHeaders) {
                Err(HandshakeError::TooLarge)
            } else {
                Err(HandshakeError::Malformed(e.to_string()))
            };
        }
    };
    if head_len > max_len {
        return Err(HandshakeError::TooLarge);
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.to_owned(), String::new()),
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let websocket_key = websocket_key(&method, &headers);
    Ok(Some(RequestHead {
        method,
        path,
        query,
        websocket_key,
        headers,
        head_len,
    }))
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn websocket_key(method: &str, headers: &[(String, String)]) -> Option<String> {
    if method != "GET" {
        return None;
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut version = false;
    let mut key = None;
    for (name, value) in headers {
        match name.as_str() {
            "upgrade" => upgrade |= has_token(value, "websocket"),
            "connection" => connection |= has_token(value, "upgrade"),
            "sec-websocket-version" => version |= value == "13",
            "sec-websocket-key" if !value.is_empty() => key = Some(value.clone()),
            _ => {}
        }
    }
    if upgrade && connection && version {
        key
    } else {
        None
    }
}

/// The complete `101 Switching Protocols` response for a WebSocket upgrade.
pub fn accept_response(websocket_key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(websocket_key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Parameters of a Pusher connect URL `/app/{key}?protocol=7&client=js&version=8.4.0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectParams {
    /// The application key from the path.
    pub app_key: String,
    /// Protocol version, 4..=7.
    pub protocol: u8,
    /// `client` query parameter (e.g. `"js"`).
    pub client: Option<String>,
    /// `version` query parameter (client library version, e.g. `"8.4.0"`).
    pub version: Option<String>,
}

/// Oldest supported protocol version.
const MIN_PROTOCOL: u32 = 4;
/// Newest supported protocol version.
const MAX_PROTOCOL: u32 = 7;

/// Parses the path `/app/{key}` (a trailing `/` is tolerated) and the query parameters
/// `protocol`, `client`, `version` (percent-decoded).
///
/// Errors carry the Pusher close code: 4005 bad path, 4008 no `protocol` and no `version` to infer
/// it from, 4007 protocol outside 4..=7, 4006 protocol (or, when inferring, version) not parseable.
/// When `protocol` is absent it is inferred from a `version` of the form `<digits>[.<anything>]`
/// as protocol 7 (all maintained client libraries speak 7). The `version` is not otherwise
/// validated, so unusual client builds are never refused.
pub fn parse_connect(path: &str, query: &str) -> Result<ConnectParams, u16> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let app_key = match path.strip_prefix("/app/") {
        Some(k) if !k.is_empty() && !k.contains('/') => k.to_owned(),
        _ => return Err(close::PATH_NOT_FOUND),
    };
    let mut protocol = None;
    let mut client = None;
    let mut version = None;
    for (k, v) in parse_query(query) {
        match k.as_str() {
            "protocol" if protocol.is_none() => protocol = Some(v),
            "client" if client.is_none() => client = Some(v),
            "version" if version.is_none() => version = Some(v),
            _ => {}
        }
    }
    let protocol = match protocol {
        Some(p) => {
            let p = p.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(close::INVALID_VERSION);
            }
            // Digits only: overflow means "far out of range", not "unparseable".
            let n = p.parse::<u32>().unwrap_or(u32::MAX);
            if !(MIN_PROTOCOL..=MAX_PROTOCOL).contains(&n) {
                return Err(close::UNSUPPORTED_PROTOCOL);
            }
            n as u8
        }
        None => match version.as_deref() {
            None | Some("") => return Err(close::NO_PROTOCOL),
            Some(v) if v.as_bytes()[0].is_ascii_digit() => MAX_PROTOCOL as u8,
            Some(_) => return Err(close::INVALID_VERSION),
        },
    };
    Ok(ConnectParams {
        app_key,
        protocol,
        client,
        version,
    })
}

/// Splits a raw query string into percent-decoded `(key, value)` pairs (`'+'` decodes to `' '`).
/// Empty segments are skipped; a segment without `'='` yields an empty value. Invalid percent
/// escapes are kept literally; invalid UTF-8 is replaced with U+FFFD.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|seg| match seg.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(seg), String::new()),
        })
        .collect()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s` (`'+'` -> `' '`).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return s.to_owned();
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str =
        "GET /app/app-key?protocol=7&client=js&version=8.4.0&flash=false HTTP/1.1\r\n\
        Host: localhost:6001\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Origin: http://example.com\r\n\r\n";

    #[test]
    fn parses_websocket_upgrade() {
        let head = parse_request_head(UPGRADE.as_bytes(), 8192)
            .unwrap()
            .unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/app/app-key");
        assert_eq!(head.query, "protocol=7&client=js&version=8.4.0&flash=false");
        assert_eq!(
            head.websocket_key.as_deref(),
            Some("dGhlIHNhbXBsZSBub25jZQ==")
        );
        assert_eq!(head.head_len, UPGRADE.len());
        assert_eq!(
            head.headers[0],
            ("host".to_owned(), "localhost:6001".to_owned())
        );
        assert_eq!(head.header("origin"), Some("http://example.com"));
        assert_eq!(head.headers.len(), 6);
    }

    #[test]
    fn incomplete_at_every_prefix() {
        for i in 0..UPGRADE.len() {
            assert_eq!(
                parse_request_head(&UPGRADE.as_bytes()[..i], 8192),
                Ok(None),
                "prefix {i}"
            );
        }
    }

    #[test]
    fn body_starts_at_head_len() {
        let req = "POST /apps/1/events?auth_key=k HTTP/1.1\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}";
        let head = parse_request_head(req.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(head.websocket_key, None);
        assert_eq!(&req[head.head_len..], "{}");
        assert_eq!(head.path, "/apps/1/events");
        assert_eq!(head.header("content-type"), Some("application/json"));
    }

    #[test]
    fn too_large_and_malformed() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(100));
        assert_eq!(
            parse_request_head(big.as_bytes(), 64),
            Err(HandshakeError::TooLarge)
        );
        assert_eq!(parse_request_head(big.as_bytes(), 200), Ok(None));
        let complete = format!("{big}\r\n");
        assert_eq!(
            parse_request_head(complete.as_bytes(), 64),
            Err(HandshakeError::TooLarge)
        );
        assert!(parse_request_head(complete.as_bytes(), 200)
            .unwrap()
            .is_some());
        assert!(matches!(
            parse_request_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 8192),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            parse_request_head(b"\x01\x02garbage\r\n\r\n", 8192),
            Err(HandshakeError::Malformed(_))
        ));
        assert_eq!(
            HandshakeError::TooLarge.to_string(),
            "HTTP request head too large"
        );
    }

    #[test]
    fn websocket_key_requires_all_upgrade_conditions() {
        let variants = [
            UPGRADE.replace("GET", "POST"),
            UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c"),
            UPGRADE.replace("keep-alive, Upgrade", "keep-alive"),
            UPGRADE.replace("Version: 13", "Version: 8"),
            UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        ];
        for v in variants {
            let head = parse_request_head(v.as_bytes(), 8192).unwrap().unwrap();
            assert_eq!(head.websocket_key, None, "{v}");
        }
        let lower = UPGRADE
            .replace("Upgrade: websocket", "upgrade: WebSocket")
            .replace("Connection: keep-alive, Upgrade", "connection: upgrade");
        let head = parse_request_head(lower.as_bytes(), 8192).unwrap().unwrap();
        assert!(head.websocket_key.is_some());
    }

    #[test]
    fn accept_response_rfc_example() {
        let r = String::from_utf8(accept_response("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn connect_params() {
        let p = parse_connect(
            "/app/app-key",
            "protocol=7&client=js&version=8.4.0&flash=false",
        )
        .unwrap();
        assert_eq!(
            p,
            ConnectParams {
                app_key: "app-key".into(),
                protocol: 7,
                client: Some("js".into()),
                version: Some("8.4.0".into()),
            }
        );
        assert_eq!(
            parse_connect("/app/app-key/", "protocol=7")
                .unwrap()
                .app_key,
            "app-key"
        );
        assert_eq!(parse_connect("/app/k", "protocol=4").unwrap().protocol, 4);
        assert_eq!(
            parse_connect("/app/k", "client=my%20lib&protocol=5")
                .unwrap()
                .client
                .as_deref(),
            Some("my lib")
        );
        // Inferred from version.
        let p = parse_connect("/app/k", "client=js&version=8.4.0").unwrap();
        assert_eq!((p.protocol, p.client.as_deref()), (7, Some("js")));
    }

    #[test]
    fn connect_errors_carry_close_codes() {
        for path in [
            "/",
            "/app",
            "/app/",
            "/apps/k",
            "/app/k/extra",
            "/pusher/app/k",
            "app/k",
        ] {
            assert_eq!(parse_connect(path, "protocol=7"), Err(4005), "{path}");
        }
        assert_eq!(parse_connect("/app/k", ""), Err(4008));
        assert_eq!(parse_connect("/app/k", "client=js"), Err(4008));
        assert_eq!(parse_connect("/app/k", "version="), Err(4008));
        for bad in ["1", "2", "3", "8", "99", "300", "99999999999999999999"] {
            assert_eq!(
                parse_connect("/app/k", &format!("protocol={bad}")),
                Err(4007),
                "{bad}"
            );
        }
        for bad in ["abc", "7.0", "-7", "", "%2B7"] {
            assert_eq!(
                parse_connect("/app/k", &format!("protocol={bad}")),
                Err(4006),
                "{bad:?}"
            );
        }
        assert_eq!(parse_connect("/app/k", "version=beta"), Err(4006));
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_query("a=1&b=x+y&c=%41%2b%zz&&d&e=&f=%E2%82%AC&g=a=b&h=%"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "A+%zz".into()),
                ("d".into(), String::new()),
                ("e".into(), String::new()),
                ("f".into(), "€".into()),
                ("g".into(), "a=b".into()),
                ("h".into(), "%".into()),
            ]
        );
        assert_eq!(parse_query(""), vec![]);
        assert_eq!(
            parse_query("channels%5B%5D=a"),
            vec![("channels[]".into(), "a".into())]
        );
        assert_eq!(parse_query("x=%ff"), vec![("x".into(), "\u{fffd}".into())]);
    }
}
