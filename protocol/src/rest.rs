//! HTTP API request authentication (`auth_signature`, `body_md5`, timestamp window).

use std::fmt;

use md5::{Digest, Md5};

use crate::auth::{hmac_hex, verify_hex};
use crate::limits::REST_TIMESTAMP_WINDOW_SECS;
use crate::ws::parse_query;

/// Lowercase hex MD5 of the raw request body.
pub fn body_md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// `METHOD\nPATH\nQUERY` where METHOD is uppercased and QUERY is every parameter except
/// `auth_signature`, keys lowercased, sorted by key (stable), `key=value` joined by `&`, values
/// NOT escaped. `params` are the percent-decoded pairs (see [`crate::ws::parse_query`]).
pub fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .filter(|(k, _)| k != "auth_signature")
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(
        method.len()
            + path.len()
            + 2
            + sorted
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>(),
    );
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    out.push_str(path);
    out.push('\n');
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Which key signed a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RestAuth<'a> {
    /// The `auth_key` of the request.
    pub key: &'a str,
}

/// Why an HTTP API request was not authenticated.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RestAuthError {
    /// A required `auth_*` parameter is absent (or `auth_timestamp` is not a number).
    MissingParam(&'static str),
    /// `auth_version` is not `1.0`.
    BadVersion,
    /// `|now - auth_timestamp| > 600 s`.
    TimestampExpired {
        /// `auth_timestamp` of the request.
        given: u64,
        /// Server time.
        now: u64,
    },
    /// `body_md5` does not match the body.
    BodyMd5Mismatch,
    /// The body is non-empty but no `body_md5` was sent.
    BodyMd5Missing,
    /// `auth_key` is not known.
    UnknownKey,
    /// No secret of the key produces `auth_signature`.
    InvalidSignature,
}

impl RestAuthError {
    /// HTTP status to answer with (401 for every variant).
    pub fn status(&self) -> u16 {
        401
    }
}

impl fmt::Display for RestAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestAuthError::MissingParam(p) => write!(f, "Missing or invalid parameter: {p}"),
            RestAuthError::BadVersion => f.write_str("Invalid auth_version: expected 1.0"),
            RestAuthError::TimestampExpired { given, now } => write!(
                f,
                "Timestamp expired: Given timestamp ({given}) not within {REST_TIMESTAMP_WINDOW_SECS}s of server time ({now})"
            ),
            RestAuthError::BodyMd5Mismatch => f.write_str("Invalid body_md5: does not match the request body"),
            RestAuthError::BodyMd5Missing => f.write_str("Missing body_md5 for a request with a body"),
            RestAuthError::UnknownKey => f.write_str("Unknown auth_key"),
            RestAuthError::InvalidSignature => f.write_str("Invalid signature: you should have sent HmacSHA256Hex(string_to_sign, secret)"),
        }
    }
}

impl std::error::Error for RestAuthError {}

fn param<'p>(params: &'p [(String, String)], name: &'static str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Verifies an HTTP API request. `query` is the raw query string, `path` the request path as
/// received. `secrets_for_key` maps `auth_key` to the app's secrets (rotation: any may sign).
/// `body_md5` is verified whenever present (PY sends it on GETs too) and required for non-empty
/// bodies. Returns the `auth_key` on success.
pub fn verify_rest<'k>(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now_unix: u64,
    secrets_for_key: impl Fn(&str) -> Option<&'k [String]>,
) -> Result<String, RestAuthError> {
    let params = parse_query(query);
    let key = verify_params(method, path, &params, body.len(), now_unix, secrets_for_key)?;
    if let Some(md5) = param(&params, "body_md5") {
        if !md5.eq_ignore_ascii_case(&body_md5_hex(body)) {
            return Err(RestAuthError::BodyMd5Mismatch);
        }
    }
    Ok(key)
}

/// Verifies everything of an HTTP API request that does not need its body: the `auth_*`
/// parameters, the timestamp window and the signature (which covers `body_md5`, so it is
/// checkable from the request head alone), and that a body of `body_len` bytes comes with a
/// `body_md5`. A server calls this before reading the body (admission control: an unsigned
/// request never makes it hold the body); [`verify_rest`] later checks `body_md5` against the
/// body. Returns the `auth_key` on success.
pub fn verify_rest_head<'k>(
    method: &str,
    path: &str,
    query: &str,
    body_len: usize,
    now_unix: u64,
    secrets_for_key: impl Fn(&str) -> Option<&'k [String]>,
) -> Result<String, RestAuthError> {
    verify_params(
        method,
        path,
        &parse_query(query),
        body_len,
        now_unix,
        secrets_for_key,
    )
}

fn verify_params<'k>(
    method: &str,
    path: &str,
    params: &[(String, String)],
    body_len: usize,
    now_unix: u64,
    secrets_for_key: impl Fn(&str) -> Option<&'k [String]>,
) -> Result<String, RestAuthError> {
    let key = param(params, "auth_key").ok_or(RestAuthError::MissingParam("auth_key"))?;
    let ts =
        param(params, "auth_timestamp").ok_or(RestAuthError::MissingParam("auth_timestamp"))?;
    let version =
        param(params, "auth_version").ok_or(RestAuthError::MissingParam("auth_version"))?;
    let signature =
        param(params, "auth_signature").ok_or(RestAuthError::MissingParam("auth_signature"))?;
    if version != "1.0" {
        return Err(RestAuthError::BadVersion);
    }
    let secrets = secrets_for_key(key).ok_or(RestAuthError::UnknownKey)?;
    let given: u64 = ts
        .parse()
        .map_err(|_| RestAuthError::MissingParam("auth_timestamp"))?;
    if given.abs_diff(now_unix) > REST_TIMESTAMP_WINDOW_SECS {
        return Err(RestAuthError::TimestampExpired {
            given,
            now: now_unix,
        });
    }
    if body_len > 0 && param(params, "body_md5").is_none() {
        return Err(RestAuthError::BodyMd5Missing);
    }
    let to_sign = string_to_sign(method, path, params);
    let ok = secrets.iter().fold(false, |ok, s| {
        verify_hex(s.as_bytes(), to_sign.as_bytes(), signature) | ok
    });
    if ok {
        Ok(key.to_owned())
    } else {
        Err(RestAuthError::InvalidSignature)
    }
}

/// Percent-encodes everything except unreserved characters and `,` (so values round-trip through
/// [`crate::ws::parse_query`]).
fn query_escape(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b',') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

/// Signs a request for clients (load test, tests): returns the full query string (without `?`):
/// `extra` params plus `auth_key`, `auth_timestamp`, `auth_version=1.0`, `body_md5` (only when
/// the body is non-empty) sorted by key, then `auth_signature`. Values are percent-encoded in
/// the URL and signed decoded.
pub fn sign_rest(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra: &[(String, String)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut params: Vec<(String, String)> = extra.to_vec();
    params.push(("auth_key".into(), key.into()));
    params.push(("auth_timestamp".into(), timestamp.to_string()));
    params.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        params.push(("body_md5".into(), body_md5_hex(body)));
    }
    let signature = hmac_hex(
        secret.as_bytes(),
        string_to_sign(method, path, &params).as_bytes(),
    );
    params.sort_by_key(|(k, _)| k.to_ascii_lowercase());
    let mut out = String::new();
    for (k, v) in &params {
        query_escape(k, &mut out);
        out.push('=');
        query_escape(v, &mut out);
        out.push('&');
    }
    out.push_str("auth_signature=");
    out.push_str(&signature);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // REST credentials (shared/docs/pusher-protocol.md §9.1).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TS: u64 = 1353088179;
    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn secrets() -> Vec<String> {
        vec![SECRET.to_owned()]
    }

    #[test]
    fn worked_example_post_events() {
        assert_eq!(
            body_md5_hex(BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let params = pairs(&[
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
        ]);
        let s = string_to_sign("POST", "/apps/3/events", &params);
        assert_eq!(
            s,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        let sig = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
        assert_eq!(hmac_hex(SECRET.as_bytes(), s.as_bytes()), sig);
        let q = sign_rest(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TS,
        );
        assert_eq!(
            q,
            format!("auth_key={KEY}&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature={sig}")
        );
        let s = secrets();
        assert_eq!(
            verify_rest("POST", "/apps/3/events", &q, BODY.as_bytes(), TS + 5, |k| {
                (k == KEY).then_some(s.as_slice())
            }),
            Ok(KEY.to_owned())
        );
    }

    #[test]
    fn worked_example_get_channels_node_and_py() {
        let base = [
            ("auth_key", KEY),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("filter_by_prefix", "presence-"),
            ("info", "user_count"),
        ];
        let s = string_to_sign("GET", "/apps/3/channels", &pairs(&base));
        assert_eq!(
            s,
            "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=presence-&info=user_count"
        );
        let node_sig = "16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291";
        assert_eq!(hmac_hex(SECRET.as_bytes(), s.as_bytes()), node_sig);
        let mut py = base.to_vec();
        py.push(("body_md5", "d41d8cd98f00b204e9800998ecf8427e"));
        let s = string_to_sign("get", "/apps/3/channels", &pairs(&py));
        let py_sig = "f3f17c61ae491cc9085db68b22076e9b772e3bcb301659d655153ee3f9782aba";
        assert_eq!(hmac_hex(SECRET.as_bytes(), s.as_bytes()), py_sig);

        let sec = secrets();
        let lookup = |k: &str| (k == KEY).then_some(sec.as_slice());
        // NODE: no body_md5 on GET; auth_signature may appear anywhere in the query.
        let q = format!("auth_signature={node_sig}&auth_key={KEY}&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=presence-&info=user_count");
        assert_eq!(
            verify_rest("GET", "/apps/3/channels", &q, b"", TS, lookup),
            Ok(KEY.to_owned())
        );
        // PY: body_md5 of the empty body on a GET.
        let q = format!("auth_key={KEY}&auth_signature={py_sig}&auth_timestamp=1353088179&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-&info=user_count");
        assert_eq!(
            verify_rest("GET", "/apps/3/channels", &q, b"", TS, lookup),
            Ok(KEY.to_owned())
        );
    }

    #[test]
    fn head_verification_needs_no_body() {
        let sec = secrets();
        let lookup = |k: &str| (k == KEY).then_some(sec.as_slice());
        let q = sign_rest(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TS,
        );
        let h =
            |q: &str, len: usize| verify_rest_head("POST", "/apps/3/events", q, len, TS, lookup);
        // The signature covers body_md5, so the head alone proves the signer.
        assert_eq!(h(&q, BODY.len()), Ok(KEY.to_owned()));
        // A body announced without body_md5 is refused from the head.
        let q2 = sign_rest(KEY, SECRET, "POST", "/apps/3/events", &[], b"", TS);
        assert_eq!(h(&q2, 10), Err(RestAuthError::BodyMd5Missing));
        assert_eq!(h(&q2, 0), Ok(KEY.to_owned()));
        assert_eq!(h("", 10), Err(RestAuthError::MissingParam("auth_key")));
        let forged = q.replace("auth_timestamp=", "auth_timestamp=1");
        assert!(h(&forged, BODY.len()).is_err());
    }

    #[test]
    fn rest_errors() {
        let sec = secrets();
        let lookup = |k: &str| (k == KEY).then_some(sec.as_slice());
        let q = sign_rest(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TS,
        );
        let v = |q: &str, body: &[u8], now: u64| {
            verify_rest("POST", "/apps/3/events", q, body, now, lookup)
        };
        assert_eq!(v(&q, BODY.as_bytes(), TS + 600), Ok(KEY.to_owned()));
        assert_eq!(v(&q, BODY.as_bytes(), TS - 600), Ok(KEY.to_owned()));
        let e = v(&q, BODY.as_bytes(), TS + 601).unwrap_err();
        assert_eq!(
            e,
            RestAuthError::TimestampExpired {
                given: TS,
                now: TS + 601
            }
        );
        assert_eq!(
            e.to_string(),
            "Timestamp expired: Given timestamp (1353088179) not within 600s of server time (1353088780)"
        );
        assert!(v(&q, BODY.as_bytes(), TS - 601).is_err());
        assert_eq!(v(&q, b"{}", TS), Err(RestAuthError::BodyMd5Mismatch));
        // Body without body_md5.
        let q2 = sign_rest(KEY, SECRET, "POST", "/apps/3/events", &[], b"", TS);
        assert_eq!(v(&q2, b"{}", TS), Err(RestAuthError::BodyMd5Missing));
        assert_eq!(v(&q, BODY.as_bytes(), TS).map(|_| ()), Ok(()));
        // Wrong path / method / secret.
        assert_eq!(
            verify_rest("POST", "/apps/4/events", &q, BODY.as_bytes(), TS, lookup),
            Err(RestAuthError::InvalidSignature)
        );
        assert_eq!(
            verify_rest("PUT", "/apps/3/events", &q, BODY.as_bytes(), TS, lookup),
            Err(RestAuthError::InvalidSignature)
        );
        let q3 = sign_rest(
            KEY,
            "other",
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TS,
        );
        assert_eq!(
            v(&q3, BODY.as_bytes(), TS),
            Err(RestAuthError::InvalidSignature)
        );
        let q4 = sign_rest(
            "unknown",
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TS,
        );
        assert_eq!(v(&q4, BODY.as_bytes(), TS), Err(RestAuthError::UnknownKey));
        // Missing parameters and bad version.
        for (name, param) in [
            ("auth_key", "auth_key="),
            ("auth_timestamp", "auth_timestamp="),
            ("auth_version", "auth_version="),
            ("auth_signature", "auth_signature="),
        ] {
            let stripped: String = q
                .split('&')
                .filter(|kv| !kv.starts_with(param))
                .collect::<Vec<_>>()
                .join("&");
            assert_eq!(
                v(&stripped, BODY.as_bytes(), TS),
                Err(RestAuthError::MissingParam(name)),
                "{name}"
            );
        }
        let bad_ts = q.replace("auth_timestamp=1353088179", "auth_timestamp=soon");
        assert_eq!(
            v(&bad_ts, BODY.as_bytes(), TS),
            Err(RestAuthError::MissingParam("auth_timestamp"))
        );
        let bad_version = q.replace("auth_version=1.0", "auth_version=2.0");
        assert_eq!(
            v(&bad_version, BODY.as_bytes(), TS),
            Err(RestAuthError::BadVersion)
        );
        for e in [
            RestAuthError::MissingParam("auth_key"),
            RestAuthError::BadVersion,
            RestAuthError::TimestampExpired { given: 0, now: 0 },
            RestAuthError::BodyMd5Mismatch,
            RestAuthError::BodyMd5Missing,
            RestAuthError::UnknownKey,
            RestAuthError::InvalidSignature,
        ] {
            assert_eq!(e.status(), 401);
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn sign_rest_round_trips_awkward_values_and_rotation() {
        let extra = pairs(&[
            ("info", "user_count,subscription_count"),
            ("channels[]", "a b+c&d=e%"),
            ("Filter_By_Prefix", "presence-"),
        ]);
        let q = sign_rest(KEY, SECRET, "get", "/apps/3/channels", &extra, b"", TS);
        assert!(q.contains("info=user_count,subscription_count"));
        assert!(!q.contains("body_md5"));
        let rotated = vec!["new".to_owned(), SECRET.to_owned()];
        assert_eq!(
            verify_rest("GET", "/apps/3/channels", &q, b"", TS, |_| Some(
                rotated.as_slice()
            )),
            Ok(KEY.to_owned())
        );
        // The signed string uses decoded values and lowercased keys.
        let decoded = crate::ws::parse_query(&q);
        let s = string_to_sign("GET", "/apps/3/channels", &decoded);
        assert!(s.contains(
            "channels[]=a b+c&d=e%&filter_by_prefix=presence-&info=user_count,subscription_count"
        ));
        assert!(!s.contains("auth_signature"));
    }
}
