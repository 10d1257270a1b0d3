//! Request authentication: a Pusher signature (`auth_key`, `auth_timestamp` within +-600 s,
//! `auth_version`, `body_md5`, `auth_signature`, verified by [`ringcast_protocol::verify_rest`]
//! against every active secret of the app) or `Authorization: Bearer <app secret>` (the seed
//! dialect). The clock is an argument: nothing here reads the time.

use std::sync::Arc;

use ringcast_engine::{AppConfig, AppIdx};
use ringcast_protocol::{parse_query, verify_rest, verify_rest_head};

use crate::error::ApiError;
use crate::http::{Request, RequestHead};

/// How a request proved it may act for an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A valid Pusher `auth_signature`.
    Signature,
    /// `Authorization: Bearer <secret>` with one of the app's secrets.
    Bearer,
    /// A LatteStream private API key (`lsk_...`) of the app.
    ApiKey,
}

/// The token of an `Authorization: Bearer` header, if the request has one.
pub fn bearer_token(req: &Request) -> Option<&str> {
    bearer_in(&req.headers)
}

pub(crate) fn bearer_in(headers: &[(String, String)]) -> Option<&str> {
    let v = header(headers, "authorization")?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// What of the body an authentication may look at.
#[derive(Clone, Copy)]
enum BodySeen<'b> {
    /// The whole body: `body_md5` is checked against it.
    Whole(&'b [u8]),
    /// Only its announced length (admission, before the body is read).
    Announced(usize),
}

/// Authenticates a request addressed to `app` (`/apps/{id}/...`): Bearer when the header is
/// present, else the Pusher signature. `now_unix` is the server clock in seconds.
pub fn authenticate_app(
    req: &Request,
    app: &AppConfig,
    now_unix: u64,
) -> Result<Credential, ApiError> {
    authenticate(
        &req.method,
        &req.path,
        &req.query,
        &req.headers,
        BodySeen::Whole(&req.body),
        app,
        now_unix,
    )
}

/// Admission: everything [`authenticate_app`] checks except `body_md5` against the body, from
/// the request head alone, so a request without a valid key, timestamp and signature is
/// refused before its body is read.
pub fn authenticate_app_head(
    head: &RequestHead,
    app: &AppConfig,
    now_unix: u64,
) -> Result<Credential, ApiError> {
    authenticate(
        &head.method,
        &head.path,
        &head.query,
        &head.headers,
        BodySeen::Announced(head.content_length),
        app,
        now_unix,
    )
}

fn authenticate(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: BodySeen<'_>,
    app: &AppConfig,
    now_unix: u64,
) -> Result<Credential, ApiError> {
    if let Some(token) = bearer_in(headers) {
        // Every secret is compared (rotation), without stopping at the first match.
        let ok = app
            .secrets
            .iter()
            .fold(false, |ok, s| ct_eq(s.as_bytes(), token.as_bytes()) | ok);
        return if ok {
            Ok(Credential::Bearer)
        } else {
            Err(ApiError::unauthorized(
                "invalid_bearer",
                format!("the Bearer token is not a secret of app {:?}", app.id),
            ))
        };
    }
    if let Some((_, key)) = parse_query(query)
        .into_iter()
        .find(|(k, _)| k == "auth_key")
    {
        if app.secrets_for(&key).is_none() {
            return Err(ApiError::unauthorized(
                "unknown_auth_key",
                format!("auth_key {key:?} is not the key of app {:?}", app.id),
            ));
        }
    } else if query.is_empty() && header(headers, "authorization").is_none() {
        return Err(ApiError::unauthorized(
            "unauthenticated",
            "this endpoint needs a Pusher signature (auth_key, auth_timestamp, auth_version, \
             body_md5, auth_signature) or an Authorization: Bearer <app secret> header",
        ));
    }
    let secrets = |k: &str| app.secrets_for(k);
    match body {
        BodySeen::Whole(b) => verify_rest(method, path, query, b, now_unix, secrets)?,
        BodySeen::Announced(n) => verify_rest_head(method, path, query, n, now_unix, secrets)?,
    };
    Ok(Credential::Signature)
}

/// Admission for a path that names no app: the signature must verify for the app whose key
/// signed it (see [`authenticate_by_key`]).
pub fn authenticate_by_key_head(
    head: &RequestHead,
    now_unix: u64,
    app_by_key: impl Fn(&str) -> Option<(AppIdx, Arc<AppConfig>)>,
) -> Result<(), ApiError> {
    if bearer_in(&head.headers).is_some() {
        return Err(signature_required());
    }
    let found = parse_query(&head.query)
        .into_iter()
        .find(|(k, _)| k == "auth_key")
        .and_then(|(_, key)| app_by_key(&key));
    verify_rest_head(
        &head.method,
        &head.path,
        &head.query,
        head.content_length,
        now_unix,
        |k| found.as_ref().and_then(|(_, a)| a.secrets_for(k)),
    )?;
    Ok(())
}

fn signature_required() -> ApiError {
    ApiError::unauthorized(
        "signature_required",
        "this path names no app, so only a Pusher signature (whose auth_key names the app) \
         can authenticate it; use /apps/{app_id}/users/{user_id}/terminate_connections \
         with a Bearer token",
    )
}

/// Authenticates a request whose path names no app (the Python SDK's
/// `/users/{id}/terminate_connections`): the app is the one whose key signed it.
pub fn authenticate_by_key(
    req: &Request,
    now_unix: u64,
    app_by_key: impl Fn(&str) -> Option<(AppIdx, Arc<AppConfig>)>,
) -> Result<(AppIdx, Arc<AppConfig>), ApiError> {
    if bearer_token(req).is_some() {
        return Err(signature_required());
    }
    // The app is looked up once, by the auth_key the request names; verify_rest then checks
    // the key again and the signature against that key's secrets.
    let found = parse_query(&req.query)
        .into_iter()
        .find(|(k, _)| k == "auth_key")
        .and_then(|(_, key)| app_by_key(&key));
    verify_rest(
        &req.method,
        &req.path,
        &req.query,
        &req.body,
        now_unix,
        |k| found.as_ref().and_then(|(_, a)| a.secrets_for(k)),
    )?;
    found.ok_or_else(|| ApiError::unauthorized("unknown_auth_key", "unknown auth_key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::{body_md5_hex, sign_rest, string_to_sign};

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const TS: u64 = 1353088179;

    fn app() -> AppConfig {
        AppConfig {
            id: "3".into(),
            key: KEY.into(),
            secrets: vec!["new-secret".into(), SECRET.into()],
            ..AppConfig::embedded_default()
        }
    }

    fn req(method: &str, path: &str, query: &str, body: &[u8]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: Vec::new(),
            body: body.to_vec(),
            keep_alive: true,
        }
    }

    fn params(q: &str) -> Vec<(String, String)> {
        parse_query(q)
    }

    // The worked REST examples of the wire reference (section 9.1).
    const EVENT_BODY: &str =
        r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    #[test]
    fn worked_example_post_with_body_md5() {
        assert_eq!(
            body_md5_hex(EVENT_BODY.as_bytes()),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let q = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        let s = string_to_sign("POST", "/apps/3/events", &params(q));
        assert_eq!(s, format!("POST\n/apps/3/events\n{q}"));
        let sig = ringcast_protocol::hmac_hex(SECRET.as_bytes(), s.as_bytes());
        assert_eq!(
            sig,
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        let r = req(
            "POST",
            "/apps/3/events",
            &format!("{q}&auth_signature={sig}"),
            EVENT_BODY.as_bytes(),
        );
        assert_eq!(
            authenticate_app(&r, &app(), TS + 599),
            Ok(Credential::Signature)
        );
    }

    #[test]
    fn worked_example_get_without_body_md5_node_form() {
        let q = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=presence-&info=user_count";
        let sig = "16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291";
        assert_eq!(
            ringcast_protocol::hmac_hex(
                SECRET.as_bytes(),
                string_to_sign("GET", "/apps/3/channels", &params(q)).as_bytes()
            ),
            sig
        );
        let r = req(
            "GET",
            "/apps/3/channels",
            &format!("{q}&auth_signature={sig}"),
            b"",
        );
        assert_eq!(authenticate_app(&r, &app(), TS), Ok(Credential::Signature));
    }

    #[test]
    fn worked_example_get_with_body_md5_python_form() {
        // PY sends body_md5 of the empty body on GETs and sorts auth_signature into the query.
        let sig = "f3f17c61ae491cc9085db68b22076e9b772e3bcb301659d655153ee3f9782aba";
        let q = format!("auth_key=278d425bdf160c739803&auth_signature={sig}&auth_timestamp=1353088179&auth_version=1.0&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-&info=user_count");
        let r = req("GET", "/apps/3/channels", &q, b"");
        assert_eq!(
            authenticate_app(&r, &app(), TS - 600),
            Ok(Credential::Signature)
        );
    }

    fn signed(method: &str, path: &str, extra: &[(&str, &str)], body: &[u8], ts: u64) -> Request {
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let q = sign_rest(KEY, SECRET, method, path, &extra, body, ts);
        req(method, path, &q, body)
    }

    fn code(r: Result<Credential, ApiError>) -> (u16, &'static str) {
        let e = r.unwrap_err();
        (e.status, e.code)
    }

    #[test]
    fn signed_with_an_older_rotated_secret_is_accepted() {
        let r = signed("POST", "/apps/3/events", &[], b"{}", TS);
        assert_eq!(authenticate_app(&r, &app(), TS), Ok(Credential::Signature));
    }

    #[test]
    fn negative_cases() {
        let a = app();
        // Unsigned.
        assert_eq!(
            code(authenticate_app(
                &req("GET", "/apps/3/channels", "", b""),
                &a,
                TS
            )),
            (401, "unauthenticated")
        );
        // Partially signed.
        assert_eq!(
            code(authenticate_app(
                &req(
                    "GET",
                    "/apps/3/channels",
                    "auth_key=278d425bdf160c739803",
                    b""
                ),
                &a,
                TS
            )),
            (401, "missing_auth_param")
        );
        // Wrong signature: tampered query.
        let mut r = signed(
            "GET",
            "/apps/3/channels",
            &[("info", "user_count")],
            b"",
            TS,
        );
        r.query = r
            .query
            .replace("info=user_count", "info=subscription_count");
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "invalid_signature")
        );
        // Signed for another path.
        let mut r = signed("GET", "/apps/3/channels", &[], b"", TS);
        r.path = "/apps/3/channels/x".into();
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "invalid_signature")
        );
        // Method changed.
        let mut r = signed("GET", "/apps/3/channels", &[], b"", TS);
        r.method = "POST".into();
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "invalid_signature")
        );
        // Expired / future timestamp.
        let r = signed("GET", "/apps/3/channels", &[], b"", TS);
        assert_eq!(
            code(authenticate_app(&r, &a, TS + 601)),
            (401, "timestamp_expired")
        );
        assert_eq!(
            code(authenticate_app(&r, &a, TS - 601)),
            (401, "timestamp_expired")
        );
        // Wrong body_md5 (body changed after signing).
        let mut r = signed("POST", "/apps/3/events", &[], b"{\"a\":1}", TS);
        r.body = b"{\"a\":2}".to_vec();
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "body_md5_mismatch")
        );
        // Body without body_md5.
        let mut r = signed("POST", "/apps/3/events", &[], b"", TS);
        r.body = b"{}".to_vec();
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "body_md5_missing")
        );
        // Another app's key.
        let other = AppConfig {
            key: "other".into(),
            ..app()
        };
        let r = signed("GET", "/apps/3/channels", &[], b"", TS);
        assert_eq!(
            code(authenticate_app(&r, &other, TS)),
            (401, "unknown_auth_key")
        );
        // Wrong secret.
        let wrong = AppConfig {
            secrets: vec!["nope".into()],
            ..app()
        };
        assert_eq!(
            code(authenticate_app(&r, &wrong, TS)),
            (401, "invalid_signature")
        );
        // Bad auth_version.
        let r = req(
            "GET",
            "/apps/3/channels",
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=2.0&auth_signature=00",
            b"",
        );
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "bad_auth_version")
        );
    }

    #[test]
    fn bearer_accepts_any_active_secret_only() {
        let a = app();
        let mut r = req("GET", "/apps/3/channels", "", b"");
        for (h, ok) in [
            ("Bearer new-secret", true),
            (&format!("bearer {SECRET}"), true),
            ("Bearer wrong", false),
            ("Bearer ", false),
            ("Bearer new-secretx", false),
        ] {
            r.headers = vec![("authorization".into(), h.to_string())];
            let got = authenticate_app(&r, &a, TS);
            if ok {
                assert_eq!(got, Ok(Credential::Bearer), "{h}");
            } else {
                assert_eq!(code(got), (401, "invalid_bearer"), "{h}");
            }
        }
        // A non-Bearer Authorization header falls back to the signature check.
        r.headers = vec![("authorization".into(), "Basic abc".into())];
        assert_eq!(
            code(authenticate_app(&r, &a, TS)),
            (401, "missing_auth_param")
        );
    }

    #[test]
    fn by_key_resolves_the_app_from_auth_key() {
        let a = Arc::new(app());
        let lookup = |k: &str| (k == KEY).then(|| (0u32, a.clone()));
        let r = signed("POST", "/users/u1/terminate_connections", &[], b"{}", TS);
        let (idx, got) = authenticate_by_key(&r, TS, lookup).unwrap();
        assert_eq!((idx, got.id.as_str()), (0, "3"));
        let mut r2 = r.clone();
        r2.query = r2.query.replace(KEY, "unknown");
        assert_eq!(
            authenticate_by_key(&r2, TS, lookup).unwrap_err().code,
            "unknown_auth_key"
        );
        let mut r3 = r;
        r3.headers = vec![("authorization".into(), format!("Bearer {SECRET}"))];
        assert_eq!(
            authenticate_by_key(&r3, TS, lookup).unwrap_err().code,
            "signature_required"
        );
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
