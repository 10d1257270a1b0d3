//! Fuzz target bodies. Each takes arbitrary bytes, must never panic on them, and checks a
//! property (a `panic!`/`assert!` is a finding):
//!
//! | target | what | property beyond "no panic" |
//! |---|---|---|
//! | [`ws_frames`] | WebSocket frame decoder | the same messages whatever the split of the stream; buffered bytes bounded by the limit; every decoded message re-encodes and decodes back to itself; a single minimal frame re-encodes to the same bytes |
//! | [`http_head`] | HTTP request head parsers (engine handshake, API keep-alive reader) | the API reader yields the same requests whatever the split; a parsed head never claims more bytes than it was given |
//! | [`pusher_message`] | Pusher client messages | parsing is deterministic (twice on copies gives the same result) |
//! | [`rest_request`] | REST path: routing, query, body, signature check | a request signed with the app secret verifies; any one-byte change to its signature, body, path or query does not |
//! | [`config`] | config file parsing and resolution | resolving never panics; a resolved config re-resolves identically |
//! | [`jwt`] | `?token=` JWTs (HS256) | a token signed with the secret verifies to its claims; any one-byte change does not |
//! | [`proxy_header`] | PROXY protocol v1/v2, address ranges, X-Forwarded-For | a header parses the same from any prefix that completes it; never claims more bytes than given |
//!
//! The first input byte(s) are used as parameters (split points, mutation positions) where a
//! target needs them; see each function.

use ringcast_control_plane::http::{Limits, Progress, Request, RequestReader};
use ringcast_engine::{AppConfig, RawConfig};
use ringcast_protocol::client_addr::{client_from_forwarded_for, parse_proxy_header, IpCidr};
use ringcast_protocol::{
    encode_client_frame_into, parse_client_message, parse_request_head, sign_rest, verify_rest,
    Dialect, FrameDecoder, Message, OpCode, Role,
};

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus directory names).
pub const TARGETS: [(&str, Target); 7] = [
    ("ws_frames", ws_frames),
    ("http_head", http_head),
    ("pusher_message", pusher_message),
    ("rest_request", rest_request),
    ("config", config),
    ("proxy_header", proxy_header),
    ("jwt", jwt),
];

const MAX_MESSAGE: usize = 4096;

/// Split points derived from a seed byte: chunk sizes 1..=seed%17+1, cycling.
fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0usize;
    while !rest.is_empty() {
        let n =
            (usize::from(seed.wrapping_add((i as u8).wrapping_mul(7))) % 17 + 1).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

fn decode_all(parts: &[&[u8]]) -> (Vec<Message>, Option<u16>, usize) {
    let mut d = FrameDecoder::new(Role::Server, MAX_MESSAGE);
    let mut out = Vec::new();
    let mut max_buffered = 0;
    let mut err = None;
    for p in parts {
        d.handle_bytes(p);
        max_buffered = max_buffered.max(d.buffered_len());
        loop {
            match d.poll_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => {
                    err = Some(e.close_code());
                    break;
                }
            }
        }
        if err.is_some() {
            break;
        }
    }
    (out, err, max_buffered)
}

/// WebSocket frames (server role: masked client frames). Byte 0 picks the split.
pub fn ws_frames(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let (whole, err_whole, _) = decode_all(&[stream]);
    let (split, err_split, max_buffered) = decode_all(&chunks(stream, seed));
    assert_eq!(whole, split, "messages depend on how the stream was split");
    assert_eq!(err_whole, err_split, "the error depends on the split");
    // A partial header is at most 14 bytes; payloads are bounded by the limit (data) or 125
    // (control); queued messages are bounded by what was fed.
    assert!(
        max_buffered <= 14 + 2 * MAX_MESSAGE + 125 + stream.len().min(MAX_MESSAGE * 2),
        "decoder buffered {max_buffered} bytes"
    );
    for m in &whole {
        let (op, payload): (OpCode, Vec<u8>) = match m {
            Message::Text(b) => (OpCode::Text, b.to_vec()),
            Message::Binary(b) => (OpCode::Binary, b.to_vec()),
            Message::Ping(b) => (OpCode::Ping, b.to_vec()),
            Message::Pong(b) => (OpCode::Pong, b.to_vec()),
            Message::Close(..) => continue,
        };
        let mut wire = Vec::new();
        encode_client_frame_into(op, &payload, [seed, 1, 2, 3], &mut wire);
        let (again, e, _) = decode_all(&[&wire]);
        assert_eq!(e, None, "a re-encoded message does not decode");
        assert_eq!(
            again.as_slice(),
            std::slice::from_ref(m),
            "re-encode/decode changed it"
        );
    }
    // A stream that is exactly one minimal, unfragmented data frame re-encodes to itself.
    if let ([m], None) = (whole.as_slice(), err_whole) {
        if stream.len() >= 6 && stream[0] & 0x80 != 0 && stream[1] & 0x80 != 0 {
            let payload = match m {
                Message::Text(b) | Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
                Message::Close(..) => return,
            };
            let len7 = stream[1] & 0x7f;
            let minimal = match len7 {
                126 => payload.len() >= 126,
                127 => payload.len() > 0xffff,
                _ => true,
            };
            let op = match stream[0] & 0x0f {
                1 => OpCode::Text,
                2 => OpCode::Binary,
                9 => OpCode::Ping,
                10 => OpCode::Pong,
                _ => return,
            };
            let mask_at = match len7 {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            if minimal && stream.len() >= mask_at + 4 {
                let mask = [
                    stream[mask_at],
                    stream[mask_at + 1],
                    stream[mask_at + 2],
                    stream[mask_at + 3],
                ];
                let mut wire = Vec::new();
                encode_client_frame_into(op, payload, mask, &mut wire);
                if wire.len() == stream.len() {
                    assert_eq!(
                        wire, stream,
                        "a decoded frame does not re-encode to its bytes"
                    );
                }
            }
        }
    }
}

fn read_requests(parts: &[&[u8]]) -> (Vec<Request>, Option<u16>) {
    let mut r = RequestReader::new(
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 4096,
        },
        Vec::new(),
    );
    let mut out = Vec::new();
    for p in parts {
        r.feed(p);
        loop {
            match r.poll() {
                Ok(Progress::Request(req)) => out.push(req),
                Ok(_) => break,
                Err(e) => return (out, Some(e.status)),
            }
        }
    }
    (out, None)
}

/// HTTP request heads. Byte 0 picks the split.
pub fn http_head(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    if let Ok(Some(h)) = parse_request_head(stream, 8 * 1024) {
        assert!(h.head_len <= stream.len(), "head longer than the input");
    }
    let (whole, e1) = read_requests(&[stream]);
    let (split, e2) = read_requests(&chunks(stream, seed));
    // An error can surface earlier in the split stream only for the same request (431 on a
    // partial head): compare what completed before it.
    let n = whole.len().min(split.len());
    assert_eq!(whole[..n], split[..n], "requests depend on the split");
    if e1.is_none() && e2.is_none() {
        assert_eq!(whole, split);
    }
}

/// Pusher client messages, both dialects. Byte 0 picks the dialect.
pub fn pusher_message(data: &[u8]) {
    let Some((&d, text)) = data.split_first() else {
        return;
    };
    let dialect = if d & 1 == 0 {
        Dialect::Pusher
    } else {
        Dialect::Relay
    };
    let ra = parse_client_message(dialect, text);
    let copy = text.to_vec();
    let rb = parse_client_message(dialect, &copy);
    assert_eq!(ra, rb, "parsing is not deterministic");
}

const KEY: &str = "fuzz-key";
const SECRET: &str = "fuzz-secret";
const NOW: u64 = 1_700_000_000;

/// The REST path. Input: `method \n path \n extra-query \n body` (missing parts empty). Routes
/// the request, signs it properly and checks it verifies, then checks that a one-byte change
/// (byte 0 picks where) makes it fail.
pub fn rest_request(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or("POST").to_owned();
    let path = parts.next().unwrap_or("/").to_owned();
    let query = parts.next().unwrap_or("").to_owned();
    let body = parts.next().unwrap_or("").as_bytes().to_vec();
    let _ = ringcast_control_plane::api::route(&method, &path);
    let raw_req = Request {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        headers: Vec::new(),
        body: body.clone(),
        keep_alive: true,
    };
    let _ = ringcast_control_plane::api::Body::json_or_form(&raw_req);
    let app = AppConfig {
        key: KEY.into(),
        secrets: vec![SECRET.into()],
        ..AppConfig::embedded_default()
    };
    // Unsigned, as received: must not panic (and must not verify unless it carries a valid
    // signature, which random bytes cannot).
    let _ = ringcast_control_plane::auth::authenticate_app(&raw_req, &app, NOW);
    // Properly signed: verifies.
    let extra: Vec<(String, String)> = ringcast_protocol::parse_query(&query)
        .into_iter()
        .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("auth_") && k != "body_md5")
        .collect();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return;
    }
    let signed_q = sign_rest(KEY, SECRET, &method, &path, &extra, &body, NOW);
    let secrets = vec![SECRET.to_owned()];
    let lookup = |k: &str| (k == KEY).then_some(secrets.as_slice());
    let ok = verify_rest(&method, &path, &signed_q, &body, NOW, lookup);
    assert_eq!(
        ok.as_deref(),
        Ok(KEY),
        "a properly signed request does not verify"
    );
    // One-byte changes that change the meaning must fail.
    let sig_at = signed_q.find("auth_signature=").map(|i| i + 15);
    match pick % 3 {
        0 => {
            if let Some(at) = sig_at {
                let mut q = signed_q.clone().into_bytes();
                let i = at + usize::from(pick) % 64;
                q[i] = if q[i] == b'0' { b'1' } else { b'0' };
                let q = String::from_utf8(q).expect("ascii");
                assert!(
                    verify_rest(&method, &path, &q, &body, NOW, lookup).is_err(),
                    "a changed signature verifies"
                );
            }
        }
        1 if !body.is_empty() => {
            let mut b = body.clone();
            let i = usize::from(pick) % b.len();
            b[i] ^= 0x01;
            assert!(
                verify_rest(&method, &path, &signed_q, &b, NOW, lookup).is_err(),
                "a changed body verifies"
            );
        }
        _ => {
            if !path.is_empty() {
                let mut p = path.clone().into_bytes();
                let i = usize::from(pick) % p.len();
                p[i] = if p[i] == b'a' { b'b' } else { b'a' };
                if let Ok(p) = String::from_utf8(p) {
                    assert!(
                        verify_rest(&method, &p, &signed_q, &body, NOW, lookup).is_err(),
                        "a changed path verifies"
                    );
                }
            }
        }
    }
}

/// Config files: the whole input as TOML.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = RawConfig::from_toml(text) {
        let api = raw.api.clone();
        if let Ok(c) = raw.resolve(2) {
            let again = RawConfig::from_toml(text)
                .expect("parsed once")
                .resolve(2)
                .expect("resolved once");
            assert_eq!(
                format!("{c:?}"),
                format!("{again:?}"),
                "resolution is not deterministic"
            );
        }
        let _ = ringcast_control_plane::ApiConfig::from_table(api);
    }
    if let Ok(t) = text.parse::<toml::Table>() {
        let _ = ringcast_control_plane::ApiConfig::from_table(Some(t));
    }
}

/// PROXY headers, address ranges and X-Forwarded-For chains.
pub fn proxy_header(data: &[u8]) {
    if let Ok(Some(h)) = parse_proxy_header(data) {
        assert!(h.len <= data.len(), "header longer than the input");
        // Every prefix that contains the header parses to the same header.
        for cut in [h.len, (h.len + data.len()) / 2, data.len()] {
            assert_eq!(parse_proxy_header(&data[..cut]), Ok(Some(h)));
        }
        // Shorter prefixes ask for more bytes or fail, never yield a different header.
        if h.len > 0 {
            if let Ok(Some(other)) = parse_proxy_header(&data[..h.len - 1]) {
                panic!("a strict prefix parsed as {other:?}");
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = text.parse::<IpCidr>();
    let trusted: Vec<IpCidr> = ["10.0.0.0/8", "::1/128"]
        .iter()
        .map(|s| s.parse().expect("valid"))
        .collect();
    let client =
        client_from_forwarded_for("10.1.2.3".parse().expect("ip"), [text.as_ref()], &trusted);
    let untrusted =
        client_from_forwarded_for("8.8.8.8".parse().expect("ip"), [text.as_ref()], &trusted);
    assert_eq!(
        untrusted,
        "8.8.8.8".parse::<std::net::IpAddr>().expect("ip")
    );
    let _ = client;
}

/// `?token=` JWTs: the input as a token (must not verify: it cannot carry a valid HS256
/// signature), then claims built from the input signed properly (must verify to the same
/// claims), then that token with one byte changed (byte 0 picks where: must not verify).
pub fn jwt(data: &[u8]) {
    use ringcast_protocol::jwt::{sign, Claims, Jwt};
    let secrets = vec![SECRET.to_owned()];
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = Jwt::parse(&text) {
        let _ = t.unverified_claims();
        let _ = t.verify(&secrets, NOW);
    }
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let s = String::from_utf8_lossy(rest);
    let mut parts = s.splitn(3, '\n');
    let claims = Claims {
        sub: parts.next().unwrap_or("").to_owned(),
        app: parts.next().unwrap_or("").to_owned(),
        iat: NOW,
        exp: NOW + 1 + u64::from(pick),
        permissions: parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        channels: vec![format!("private-{pick}-*")],
        scope: "access".into(),
    };
    let token = sign(&claims, SECRET);
    let parsed = Jwt::parse(&token);
    if token.len() > ringcast_protocol::jwt::MAX_TOKEN_BYTES {
        assert!(parsed.is_err(), "an oversized token parses");
        return;
    }
    let verified = parsed
        .expect("a signed token parses")
        .verify(&secrets, NOW)
        .expect("a signed token verifies");
    assert_eq!(verified, claims, "claims changed on the way");
    let mut bytes = token.into_bytes();
    let i = usize::from(pick) * 7 % bytes.len();
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    if let Ok(changed) = String::from_utf8(bytes) {
        if let Ok(t) = Jwt::parse(&changed) {
            assert!(
                t.verify(&secrets, NOW).is_err(),
                "a token with a changed byte verifies"
            );
        }
    }
}
