//! [`RequestReader`]: a sans-IO, resumable HTTP/1.1 request parser (httparse for the head).
//! Feed it any split of the byte stream, poll it for complete requests. It enforces the head
//! size limit (431), the body size limit (413, decided from `Content-Length` before any body
//! byte is buffered), refuses `Transfer-Encoding` bodies (411: every Pusher SDK sends
//! `Content-Length`), and keeps pipelined bytes for the next request.

use crate::error::ApiError;

/// Most headers one request may carry.
const MAX_HEADERS: usize = 64;

/// Size limits of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, including the final CRLFCRLF.
    pub max_head_bytes: usize,
    /// Body (`Content-Length`).
    pub max_body_bytes: usize,
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ... as sent (methods are case-sensitive).
    pub method: String,
    /// The path as received (still percent-encoded), without the query.
    pub path: String,
    /// The raw query after `?`, `""` if none.
    pub query: String,
    /// Every header, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client wants the connection kept open (HTTP/1.1 default, or `Connection:
    /// keep-alive` on HTTP/1.0) and did not send `Connection: close`.
    pub keep_alive: bool,
}

impl Request {
    /// First value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the reader needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No byte of the next request yet (keep-alive idle).
    Idle,
    /// Part of a request head is buffered.
    Head,
    /// The head is complete, the body is not. `send_continue` asks the caller to write
    /// `HTTP/1.1 100 Continue` once (the client sent `Expect: 100-continue`).
    Body { send_continue: bool },
    /// A complete request.
    Request(Request),
}

/// A parsed request head whose body may not have arrived yet: what admission control decides
/// on before any body byte is read (see [`RequestReader::pending_head`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, ... as sent.
    pub method: String,
    /// The path as received (still percent-encoded), without the query.
    pub path: String,
    /// The raw query after `?`, `""` if none.
    pub query: String,
    /// Every header, names lowercased.
    pub headers: Vec<(String, String)>,
    /// `Content-Length` (0 when absent).
    pub content_length: usize,
    head_len: usize,
    keep_alive: bool,
    expect_continue: bool,
}

impl RequestHead {
    /// First value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Head = RequestHead;

/// A resumable request parser over one connection's byte stream.
#[derive(Debug)]
pub struct RequestReader {
    buf: Vec<u8>,
    head: Option<Head>,
    limits: Limits,
    continue_sent: bool,
}

impl RequestReader {
    /// `initial`: bytes already read from the connection (the engine hands over what it read
    /// while looking for a WebSocket upgrade).
    pub fn new(limits: Limits, initial: Vec<u8>) -> RequestReader {
        RequestReader {
            buf: initial,
            head: None,
            limits,
            continue_sent: false,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as part of a request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The head of the request whose body is being read (after [`Progress::Body`]).
    pub fn pending_head(&self) -> Option<&RequestHead> {
        self.head.as_ref()
    }

    /// Body bytes of the pending request still to arrive (0 when none is pending).
    pub fn body_missing(&self) -> usize {
        self.head
            .as_ref()
            .map(|h| (h.head_len + h.content_length).saturating_sub(self.buf.len()))
            .unwrap_or(0)
    }

    /// Advances the parser. An `Err` is final for the connection: answer it and close (the
    /// stream position is unknown or the client is over a limit).
    pub fn poll(&mut self) -> Result<Progress, ApiError> {
        if self.head.is_none() {
            if self.buf.is_empty() {
                return Ok(Progress::Idle);
            }
            match parse_head(&self.buf, &self.limits)? {
                Some(h) => {
                    self.head = Some(h);
                    self.continue_sent = false;
                }
                None => return Ok(Progress::Head),
            }
        }
        // Invariant: set just above when it was None.
        let head = self.head.as_ref().expect("head parsed");
        let total = head.head_len + head.content_length;
        if self.buf.len() < total {
            let send_continue = head.expect_continue && !self.continue_sent;
            self.continue_sent = true;
            return Ok(Progress::Body { send_continue });
        }
        // Invariant: checked just above that it is Some.
        let head = self.head.take().expect("head parsed");
        let body = self.buf[head.head_len..total].to_vec();
        self.buf.drain(..total);
        Ok(Progress::Request(Request {
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            body,
            keep_alive: head.keep_alive,
        }))
    }
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, ApiError> {
    let too_large = || {
        ApiError::new(
            431,
            "head_too_large",
            format!(
                "request head exceeds {} bytes (or {MAX_HEADERS} headers)",
                limits.max_head_bytes
            ),
        )
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > limits.max_head_bytes => return Err(too_large()),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(too_large())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                400,
                "malformed_request",
                format!("malformed HTTP request: {e}"),
            ))
        }
    };
    // Invariant: a Complete parse always fills method, path and version.
    let method = req.method.expect("complete head has a method").to_owned();
    let target = req.path.expect("complete head has a path");
    let minor = req.version.expect("complete head has a version");
    // Absolute-form targets (`http://host/path?q`): keep the origin-form part.
    let target = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => target,
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.to_owned(), String::new()),
    };
    let mut out_headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    let mut keep_alive = minor >= 1;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_owned();
        match name.as_str() {
            "content-length" => {
                let n: usize = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid Content-Length {value:?}"))
                })?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(ApiError::bad_request("conflicting Content-Length headers"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                return Err(ApiError::new(
                    411,
                    "length_required",
                    "Transfer-Encoding bodies are not supported: send Content-Length",
                ))
            }
            "connection" => {
                if has_token(&value, "close") {
                    keep_alive = false;
                } else if has_token(&value, "keep-alive") {
                    keep_alive = true;
                }
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        out_headers.push((name, value));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.max_body_bytes {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!(
                "request body of {content_length} bytes exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        ));
    }
    Ok(Some(Head {
        method,
        path,
        query,
        headers: out_headers,
        head_len,
        content_length,
        keep_alive,
        expect_continue,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 8 * 1024,
        max_body_bytes: 1024,
    };

    fn reader() -> RequestReader {
        RequestReader::new(LIMITS, Vec::new())
    }

    const POST: &[u8] = b"POST /apps/1/events?auth_key=k&x=%2F HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"a\":\"b\"} ";

    fn expect_post(r: Request) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/apps/1/events");
        assert_eq!(r.query, "auth_key=k&x=%2F");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{\"a\":\"b\"} ");
        assert!(r.keep_alive);
    }

    #[test]
    fn parses_a_request_split_at_every_byte() {
        for split in 0..=POST.len() {
            let mut rd = reader();
            rd.feed(&POST[..split]);
            let p = rd.poll().unwrap();
            if split < POST.len() {
                assert!(
                    matches!(p, Progress::Idle | Progress::Head | Progress::Body { .. }),
                    "split {split}: {p:?}"
                );
                rd.feed(&POST[split..]);
                match rd.poll().unwrap() {
                    Progress::Request(r) => expect_post(r),
                    other => panic!("split {split}: {other:?}"),
                }
            } else {
                match p {
                    Progress::Request(r) => expect_post(r),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(rd.buffered(), 0);
        }
    }

    #[test]
    fn parses_one_byte_at_a_time_and_reports_the_phase() {
        let mut rd = reader();
        assert_eq!(rd.poll().unwrap(), Progress::Idle);
        let head_end = POST.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        for (i, b) in POST.iter().enumerate() {
            rd.feed(&[*b]);
            let p = rd.poll().unwrap();
            if i + 1 < head_end {
                assert_eq!(p, Progress::Head, "byte {i}");
            } else if i + 1 < POST.len() {
                assert_eq!(
                    p,
                    Progress::Body {
                        send_continue: false
                    },
                    "byte {i}"
                );
            } else {
                assert!(matches!(p, Progress::Request(_)));
            }
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut rd = reader();
        let mut wire = POST.to_vec();
        wire.extend_from_slice(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        rd.feed(&wire);
        match rd.poll().unwrap() {
            Progress::Request(r) => expect_post(r),
            other => panic!("{other:?}"),
        }
        match rd.poll().unwrap() {
            Progress::Request(r) => {
                assert_eq!(r.path, "/health");
                assert!(r.body.is_empty());
                assert!(!r.keep_alive);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rd.poll().unwrap(), Progress::Idle);
    }

    #[test]
    fn http10_keeps_alive_only_when_asked() {
        let mut rd = reader();
        rd.feed(b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        let Progress::Request(a) = rd.poll().unwrap() else {
            panic!()
        };
        let Progress::Request(b) = rd.poll().unwrap() else {
            panic!()
        };
        assert!(!a.keep_alive);
        assert!(b.keep_alive);
    }

    #[test]
    fn expect_continue_is_reported_once() {
        let mut rd = reader();
        rd.feed(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(
            rd.poll().unwrap(),
            Progress::Body {
                send_continue: true
            }
        );
        assert_eq!(
            rd.poll().unwrap(),
            Progress::Body {
                send_continue: false
            }
        );
        rd.feed(b"{}");
        assert!(matches!(rd.poll().unwrap(), Progress::Request(_)));
    }

    #[test]
    fn oversize_head_is_431_even_before_it_completes() {
        let mut rd = reader();
        rd.feed(b"GET / HTTP/1.1\r\nX: ");
        rd.feed(&vec![b'a'; 9000]);
        assert_eq!(rd.poll().unwrap_err().status, 431);
        let mut rd = reader();
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        rd.feed(&many);
        assert_eq!(rd.poll().unwrap_err().status, 431);
    }

    #[test]
    fn oversize_body_is_413_from_the_header_alone() {
        let mut rd = reader();
        rd.feed(b"POST /x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n");
        let e = rd.poll().unwrap_err();
        assert_eq!((e.status, e.code), (413, "payload_too_large"));
    }

    #[test]
    fn chunked_is_411_and_bad_lengths_are_400() {
        let mut rd = reader();
        rd.feed(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(rd.poll().unwrap_err().status, 411);
        for bad in [
            &b"POST /x HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            let mut rd = reader();
            rd.feed(bad);
            assert_eq!(
                rd.poll().unwrap_err().status,
                400,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn absolute_form_target_is_reduced_to_its_path() {
        let mut rd = reader();
        rd.feed(b"GET http://h:1/apps/1/channels?a=b HTTP/1.1\r\n\r\n");
        let Progress::Request(r) = rd.poll().unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.path.as_str(), r.query.as_str()),
            ("/apps/1/channels", "a=b")
        );
    }
}
