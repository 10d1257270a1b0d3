//! A minimal HTTP/1.1 client side for REST publishing: signed `POST /apps/{id}/events`
//! requests (pipelined on keep-alive connections) and a resumable response parser.

use crate::net::Target;

/// The body of a trigger request for one channel.
pub fn trigger_body(event: &str, channel: &str, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"name\":\"");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\",\"channels\":[\"");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\"],\"data\":\"");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\"}");
}

/// Appends a complete signed request (head + body) for `POST {prefix}/apps/{id}/events`.
pub fn trigger_request(t: &Target, body: &[u8], unix_ts: u64, out: &mut Vec<u8>) {
    let path = format!("{}/apps/{}/events", t.api_path_prefix, t.app_id);
    let query = ringcast_protocol::sign_rest(&t.key, &t.secret, "POST", &path, &[], body, unix_ts);
    out.extend_from_slice(
        format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            t.api_host,
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// What one HTTP response said, beyond its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the whole response (head + body) at the start of the buffer.
    pub len: usize,
    /// The server will close the connection after this response (`Connection: close`, or
    /// HTTP/1.0 without `keep-alive`, or a body delimited by the end of the connection).
    pub close: bool,
    /// `Retry-After` in seconds (HTTP-date values are not interpreted: None).
    pub retry_after_s: Option<u64>,
    /// An interim (1xx) response: another one follows for the same request.
    pub interim: bool,
}

/// A signed `GET {prefix}/apps/{id}/channels`: a read-only request the REST publisher uses to
/// probe whether the server answers pipelined requests (it publishes nothing).
pub fn probe_request(t: &Target, unix_ts: u64, out: &mut Vec<u8>) {
    let path = format!("{}/apps/{}/channels", t.api_path_prefix, t.app_id);
    let query = ringcast_protocol::sign_rest(&t.key, &t.secret, "GET", &path, &[], b"", unix_ts);
    out.extend_from_slice(
        format!(
            "GET {path}?{query} HTTP/1.1\r\nHost: {}\r\n\r\n",
            t.api_host
        )
        .as_bytes(),
    );
}

/// Parses one complete response at the start of `buf`: Ok(Some(response)), Ok(None) if
/// incomplete, Err if malformed. `eof`: the connection has ended, so a body delimited by the
/// end of the connection is complete.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut clen: Option<usize> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    let mut retry_after_s = None;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            clen = Some(
                value
                    .parse()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after_s = value.parse().ok();
        }
    }
    let interim = (100..200).contains(&status) && status != 101;
    let done = |len: usize, close: bool| {
        Ok(Some(Response {
            status,
            len,
            close,
            retry_after_s,
            interim,
        }))
    };
    if interim || status == 204 || status == 304 {
        return done(head, close);
    }
    if chunked {
        let mut at = head;
        loop {
            let Some(eol) = memchr::memmem::find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            at += eol + 2;
            if size == 0 {
                // Optional trailer fields, then an empty line.
                loop {
                    let Some(end) = memchr::memmem::find(&buf[at..], b"\r\n") else {
                        return Ok(None);
                    };
                    at += end + 2;
                    if end == 0 {
                        return done(at, close);
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            at += size + 2;
        }
    }
    match clen {
        Some(n) if buf.len() >= head + n => done(head + n, close),
        Some(_) => Ok(None),
        // No length: the body runs to the end of the connection.
        None if eof => done(buf.len(), true),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_in_pieces() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!";
        let r = parse_response(two, false).unwrap().unwrap();
        assert_eq!((r.status, r.close), (200, false));
        let r2 = parse_response(&two[r.len..], false).unwrap().unwrap();
        assert_eq!((r2.status, r.len + r2.len), (401, two.len()));
        for cut in 0..r.len {
            assert!(
                parse_response(&two[..cut], false).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(ch, false).unwrap().map(|r| r.len),
            Some(ch.len())
        );
        for cut in 0..ch.len() {
            assert!(
                parse_response(&ch[..cut], false).unwrap().is_none(),
                "cut {cut}"
            );
        }
        // Trailers after the last chunk.
        let tr =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(
            parse_response(tr, false).unwrap().map(|r| r.len),
            Some(tr.len())
        );
        assert!(parse_response(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn close_retry_after_and_unframed_bodies() {
        let c = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        assert!(parse_response(c, false).unwrap().unwrap().close);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(old, false).unwrap().unwrap().close);
        let ka = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert!(!parse_response(ka, false).unwrap().unwrap().close);
        let t = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n";
        let r = parse_response(t, false).unwrap().unwrap();
        assert_eq!((r.status, r.retry_after_s), (429, Some(3)));
        // No length, not chunked: complete only at the end of the connection.
        let u = b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}";
        assert!(parse_response(u, false).unwrap().is_none());
        let r = parse_response(u, true).unwrap().unwrap();
        assert_eq!((r.len, r.close), (u.len(), true));
        let i = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let r = parse_response(i, false).unwrap().unwrap();
        assert!(r.interim);
        assert_eq!(
            parse_response(&i[r.len..], false).unwrap().unwrap().status,
            200
        );
    }

    #[test]
    fn trigger_request_is_signed() {
        let t = Target {
            ws: vec![crate::net::WsEndpoint::at("127.0.0.1:1".parse().unwrap())],
            api_addr: "127.0.0.1:1".parse().unwrap(),
            api_host: "127.0.0.1:1".into(),
            api_path_prefix: String::new(),
            api_tls: false,
            tls_ca: None,
            app_id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
            source_addrs: 1,
        };
        let mut body = Vec::new();
        trigger_body("foo", "project-3", b"x", &mut body);
        assert_eq!(
            body,
            br#"{"name":"foo","channels":["project-3"],"data":"x"}"#
        );
        let mut req = Vec::new();
        trigger_request(&t, &body, 1353088179, &mut req);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("POST /apps/3/events?"));
        assert!(text.contains("auth_signature="));
        assert!(text.contains("body_md5="));
        assert!(text.ends_with(std::str::from_utf8(&body).unwrap()));
        // The server side verifies what the client signed.
        let q = text.split_once('?').unwrap().1.split_once(' ').unwrap().0;
        let secrets = vec![t.secret.clone()];
        let ok =
            ringcast_protocol::verify_rest("POST", "/apps/3/events", q, &body, 1353088179, |k| {
                (k == t.key).then_some(secrets.as_slice())
            });
        assert!(ok.is_ok(), "{ok:?}");
    }
}
