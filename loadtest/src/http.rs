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

/// Parses one complete response at the start of `buf`: Ok(Some((status, bytes used))),
/// Ok(None) if incomplete, Err if malformed.
pub fn parse_response(buf: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    let mut clen: Option<usize> = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            clen = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = std::str::from_utf8(h.value)
                .map(|v| v.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false);
        }
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
                // Trailers (none expected) end with an empty line.
                let Some(end) = memchr::memmem::find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                return Ok(Some((code, at + end + 2)));
            }
            if buf.len() < at + size + 2 {
                return Ok(None);
            }
            at += size + 2;
        }
    }
    let body = if code == 204 || code == 304 || (100..200).contains(&code) {
        0
    } else {
        clen.unwrap_or(0)
    };
    if buf.len() < head + body {
        return Ok(None);
    }
    Ok(Some((code, head + body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_in_pieces() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!";
        let (c, n) = parse_response(two).unwrap().unwrap();
        assert_eq!(c, 200);
        let (c2, n2) = parse_response(&two[n..]).unwrap().unwrap();
        assert_eq!((c2, n + n2), (401, two.len()));
        for cut in 0..n {
            assert!(parse_response(&two[..cut]).unwrap().is_none(), "cut {cut}");
        }
        let ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(parse_response(ch).unwrap(), Some((200, ch.len())));
        assert!(parse_response(&ch[..ch.len() - 1]).unwrap().is_none());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn trigger_request_is_signed() {
        let t = Target {
            ws_addr: "127.0.0.1:1".parse().unwrap(),
            ws_host: "h".into(),
            ws_path_prefix: String::new(),
            api_addr: "127.0.0.1:1".parse().unwrap(),
            api_host: "127.0.0.1:1".into(),
            api_path_prefix: String::new(),
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
