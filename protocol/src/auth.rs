//! Channel, presence and sign-in signatures (HMAC-SHA256, lowercase hex, constant-time checks),
//! presence `channel_data` / sign-in `user_data` parsing, webhook signatures and the
//! encrypted-channel shared secret.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::channel::{ChannelKind, ChannelName};
use crate::json::raw_member;
use crate::limits::MAX_USER_ID_LEN;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], msg: &[u8]) -> HmacSha256 {
    // Invariant: HMAC accepts keys of any length, so `new_from_slice` never returns InvalidLength.
    #[allow(clippy::expect_used)]
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC-SHA256 accepts any key length");
    m.update(msg);
    m
}

/// Lowercase hex HMAC-SHA256 of `msg` with `secret`.
pub fn hmac_hex(secret: &[u8], msg: &[u8]) -> String {
    hex::encode(mac(secret, msg).finalize().into_bytes())
}

/// Constant-time check of `given_hex` against HMAC-SHA256(secret, msg).
pub(crate) fn verify_hex(secret: &[u8], msg: &[u8], given_hex: &str) -> bool {
    let mut sig = [0u8; 32];
    if hex::decode_to_slice(given_hex, &mut sig).is_err() {
        return false;
    }
    mac(secret, msg).verify_slice(&sig).is_ok()
}

/// The string signed for a channel subscription: `socket_id:channel[:channel_data]`.
fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(d) => format!("{socket_id}:{channel}:{d}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// `"<key>:<hex>"` signing `socket_id:channel[:channel_data]` (what an app's auth endpoint returns).
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let s = channel_string(socket_id, channel, channel_data);
    format!("{key}:{}", hmac_hex(secret.as_bytes(), s.as_bytes()))
}

/// `"<key>:<hex>"` signing `socket_id::user::user_data` (sign-in).
pub fn signin_auth(key: &str, secret: &str, socket_id: &str, user_data: &str) -> String {
    let s = format!("{socket_id}::user::{user_data}");
    format!("{key}:{}", hmac_hex(secret.as_bytes(), s.as_bytes()))
}

/// Why a subscription or sign-in signature was rejected.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AuthError {
    /// No (or empty) `auth`.
    Missing,
    /// `auth` is not `<key>:<signature>`.
    Malformed,
    /// The key part is not the app key (the given key is kept).
    WrongKey(String),
    /// No secret produces the given signature. `signed` is the string that should have been
    /// signed.
    InvalidSignature {
        /// The string that should have been signed.
        signed: String,
    },
}

impl AuthError {
    /// The full Pusher error text including the signature the client gave (taken from the
    /// `auth` value that was verified): `"Invalid signature: Expected HMAC SHA256 hex digest of
    /// <signed>, but got <hex>"`. Other variants yield their `Display` text.
    pub fn pusher_message(&self, auth: Option<&str>) -> String {
        match self {
            AuthError::InvalidSignature { signed } => {
                let given = auth
                    .and_then(|a| a.split_once(':'))
                    .map(|(_, sig)| sig)
                    .unwrap_or("");
                format!("Invalid signature: Expected HMAC SHA256 hex digest of {signed}, but got {given}")
            }
            other => other.to_string(),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("Missing auth for subscription"),
            AuthError::Malformed => f.write_str("Invalid auth format: expected '<key>:<signature>'"),
            AuthError::WrongKey(given) => write!(f, "Invalid key in subscription auth data: '{given}'"),
            // The variant does not carry the given signature; see `AuthError::pusher_message`
            // for the text including it.
            AuthError::InvalidSignature { signed } => write!(
                f,
                "Invalid signature: Expected HMAC SHA256 hex digest of {signed}, but got a different signature"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

/// Splits `auth` into (key, signature) and checks the key.
fn split_auth<'a>(key: &str, auth: Option<&'a str>) -> Result<&'a str, AuthError> {
    let auth = match auth {
        None | Some("") => return Err(AuthError::Missing),
        Some(a) => a,
    };
    let (given_key, sig) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if given_key != key {
        return Err(AuthError::WrongKey(given_key.to_owned()));
    }
    Ok(sig)
}

fn any_secret(secrets: &[String], msg: &str, sig: &str) -> bool {
    // Check every secret (no early exit) so timing does not reveal which one matched.
    secrets.iter().fold(false, |ok, s| {
        verify_hex(s.as_bytes(), msg.as_bytes(), sig) | ok
    })
}

/// Verifies a subscription `auth` against every secret (key rotation).
///
/// Private and private-encrypted channels accept `socket:channel` and, when `channel_data` is
/// given, also `socket:channel:channel_data` (NODE signs it). Presence channels sign
/// `socket:channel:channel_data`, or `socket:channel` when no `channel_data` is sent (signed-in
/// user). Public and server-to-user channels are verified like private ones if called.
/// The received strings are hashed as is (never re-serialised).
pub fn verify_channel_auth(
    key: &str,
    secrets: &[String],
    socket_id: &str,
    channel: &ChannelName,
    channel_data: Option<&str>,
    auth: Option<&str>,
) -> Result<(), AuthError> {
    let sig = split_auth(key, auth)?;
    let plain = channel_string(socket_id, channel.as_str(), None);
    match (channel.kind(), channel_data) {
        (ChannelKind::Presence, Some(data)) => {
            let with = channel_string(socket_id, channel.as_str(), Some(data));
            if any_secret(secrets, &with, sig) {
                return Ok(());
            }
            Err(AuthError::InvalidSignature { signed: with })
        }
        (_, data) => {
            let mut ok = any_secret(secrets, &plain, sig);
            if let Some(data) = data {
                let with = channel_string(socket_id, channel.as_str(), Some(data));
                ok |= any_secret(secrets, &with, sig);
            }
            if ok {
                Ok(())
            } else {
                Err(AuthError::InvalidSignature { signed: plain })
            }
        }
    }
}

/// Verifies a sign-in `auth` (`<key>:<hex of socket_id::user::user_data>`) against every secret.
pub fn verify_signin(
    key: &str,
    secrets: &[String],
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> Result<(), AuthError> {
    let sig = split_auth(key, Some(auth))?;
    let signed = format!("{socket_id}::user::{user_data}");
    if any_secret(secrets, &signed, sig) {
        Ok(())
    } else {
        Err(AuthError::InvalidSignature { signed })
    }
}

/// A presence member from `channel_data`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PresenceMember {
    /// String form of `user_id` (numbers are converted: `10` -> `"10"`).
    pub user_id: String,
    /// Raw JSON text of `user_info` exactly as sent, `"null"` if absent.
    pub user_info_json: String,
}

/// The string form of a JSON user id (string, or number as written).
fn id_string(v: &BorrowedValue<'_>, raw: Option<&str>) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_owned());
    }
    if v.is_i64() || v.is_u64() || v.is_f64() {
        // Use the number exactly as the client wrote it (Laravel sends integers).
        return Some(raw.map(str::to_owned).unwrap_or_else(|| v.encode()));
    }
    None
}

/// Parses presence `channel_data`: `{"user_id": string|number, "user_info"?: any}`. The error is a
/// human-readable text for `pusher:error`.
pub fn parse_channel_data(s: &str, max_user_info: usize) -> Result<PresenceMember, String> {
    let mut buf = s.as_bytes().to_vec();
    let v = simd_json::to_borrowed_value(&mut buf)
        .map_err(|_| "Invalid channel_data: not valid JSON".to_owned())?;
    if v.as_object().is_none() {
        return Err("Invalid channel_data: expected a JSON object".into());
    }
    let id_v = v
        .get("user_id")
        .ok_or_else(|| "Invalid channel_data: missing user_id".to_owned())?;
    let user_id = id_string(id_v, raw_member(s, "user_id"))
        .ok_or_else(|| "Invalid channel_data: user_id must be a string or a number".to_owned())?;
    if user_id.is_empty() {
        return Err("Invalid channel_data: user_id must not be empty".into());
    }
    if user_id.len() > MAX_USER_ID_LEN {
        return Err(format!(
            "Invalid channel_data: user_id longer than {MAX_USER_ID_LEN} characters"
        ));
    }
    let user_info_json = user_info_text(&v, s);
    if user_info_json.len() > max_user_info {
        return Err(format!(
            "Invalid channel_data: user_info larger than {max_user_info} bytes"
        ));
    }
    Ok(PresenceMember {
        user_id,
        user_info_json,
    })
}

/// Raw text of `user_info` (re-serialised only if the raw span cannot be located), `"null"` if
/// absent.
fn user_info_text(v: &BorrowedValue<'_>, s: &str) -> String {
    match v.get("user_info") {
        None => "null".to_owned(),
        Some(info) => raw_member(s, "user_info")
            .map(str::to_owned)
            .unwrap_or_else(|| info.encode()),
    }
}

/// Sign-in `user_data`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UserData {
    /// Non-empty string id.
    pub id: String,
    /// Raw JSON text of `user_info`, `"null"` if absent.
    pub user_info_json: String,
    /// Watchlist user ids as sent (not truncated; see [`crate::limits::MAX_WATCHLIST`]).
    pub watchlist: Vec<String>,
}

/// Parses sign-in `user_data`: `{"id": non-empty string, "user_info"?: any, "watchlist"?: [string]}`.
/// The error is a human-readable text for `pusher:error`.
pub fn parse_user_data(s: &str) -> Result<UserData, String> {
    let mut buf = s.as_bytes().to_vec();
    let v = simd_json::to_borrowed_value(&mut buf)
        .map_err(|_| "Invalid user_data: not valid JSON".to_owned())?;
    if v.as_object().is_none() {
        return Err("Invalid user_data: expected a JSON object".into());
    }
    let id = match v.get("id") {
        None => return Err("Invalid user_data: missing id".into()),
        Some(id) => id
            .as_str()
            .ok_or_else(|| "Invalid user_data: id must be a string".to_owned())?,
    };
    if id.is_empty() {
        return Err("Invalid user_data: id must not be empty".into());
    }
    let watchlist = match v.get("watchlist") {
        None => Vec::new(),
        Some(w) if w.is_null() => Vec::new(),
        Some(w) => {
            let arr = w
                .as_array()
                .ok_or_else(|| "Invalid user_data: watchlist must be an array".to_owned())?;
            arr.iter()
                .map(|x| {
                    x.as_str().map(str::to_owned).ok_or_else(|| {
                        "Invalid user_data: watchlist entries must be strings".to_owned()
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(UserData {
        id: id.to_owned(),
        user_info_json: user_info_text(&v, s),
        watchlist,
    })
}

/// `X-Pusher-Signature` of a webhook: hex HMAC-SHA256 of the raw body.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hmac_hex(secret.as_bytes(), body)
}

/// Encrypted-channel shared secret: `base64(SHA256(channel || master_key))` (standard alphabet,
/// padded), as returned by an app's auth endpoint.
pub fn encrypted_shared_secret(channel: &str, master_key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(channel.as_bytes());
    h.update(master_key);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    // SIGS credentials (shared/docs/pusher-protocol.md §7).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const SOCKET: &str = "1234.1234";

    fn secrets() -> Vec<String> {
        vec![SECRET.to_owned()]
    }

    fn chan(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn worked_example_private_channel() {
        let hex = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert_eq!(
            hmac_hex(SECRET.as_bytes(), b"1234.1234:private-foobar"),
            hex
        );
        let auth = channel_auth(KEY, SECRET, SOCKET, "private-foobar", None);
        assert_eq!(auth, format!("{KEY}:{hex}"));
        assert_eq!(
            verify_channel_auth(
                KEY,
                &secrets(),
                SOCKET,
                &chan("private-foobar"),
                None,
                Some(&auth)
            ),
            Ok(())
        );
    }

    #[test]
    fn worked_example_signin() {
        let user_data = r#"{"id":"12345"}"#;
        let hex = "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba";
        assert_eq!(
            hmac_hex(SECRET.as_bytes(), br#"1234.1234::user::{"id":"12345"}"#),
            hex
        );
        let auth = signin_auth(KEY, SECRET, SOCKET, user_data);
        assert_eq!(auth, format!("{KEY}:{hex}"));
        assert_eq!(
            verify_signin(KEY, &secrets(), SOCKET, user_data, &auth),
            Ok(())
        );
        assert_eq!(
            verify_signin(KEY, &secrets(), SOCKET, r#"{"id":"12346"}"#, &auth),
            Err(AuthError::InvalidSignature {
                signed: r#"1234.1234::user::{"id":"12346"}"#.into()
            })
        );
        assert_eq!(
            verify_signin(KEY, &secrets(), SOCKET, user_data, ""),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn worked_examples_presence() {
        let cases = [
            (
                r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#,
                "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80",
            ),
            (
                r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#,
                "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c",
            ),
            // PY `authenticate()` serialisation (with spaces): hashed exactly as received.
            (
                r#"{"user_id": 10, "user_info": {"name": "Mr. Channels"}}"#,
                "5b8808f3035fec2e4157c6b430a06d5b0de16d174e1a779e0e2b64d9983bde27",
            ),
        ];
        let presence = chan("presence-foobar");
        for (data, hex) in cases {
            let auth = channel_auth(KEY, SECRET, SOCKET, "presence-foobar", Some(data));
            assert_eq!(auth, format!("{KEY}:{hex}"), "{data}");
            assert_eq!(
                verify_channel_auth(KEY, &secrets(), SOCKET, &presence, Some(data), Some(&auth)),
                Ok(())
            );
        }
        // The member parsed from the PY form keeps user_info byte-for-byte.
        let m = parse_channel_data(cases[2].0, 1024).unwrap();
        assert_eq!(m.user_id, "10");
        assert_eq!(m.user_info_json, r#"{"name": "Mr. Channels"}"#);
    }

    #[test]
    fn presence_requires_data_form_when_data_sent() {
        let presence = chan("presence-room");
        let data = r#"{"user_id":"1"}"#;
        let plain = channel_auth(KEY, SECRET, SOCKET, "presence-room", None);
        assert_eq!(
            verify_channel_auth(KEY, &secrets(), SOCKET, &presence, Some(data), Some(&plain)),
            Err(AuthError::InvalidSignature {
                signed: format!("1234.1234:presence-room:{data}")
            })
        );
        // Signed-in user: no channel_data, plain form.
        assert_eq!(
            verify_channel_auth(KEY, &secrets(), SOCKET, &presence, None, Some(&plain)),
            Ok(())
        );
    }

    #[test]
    fn private_accepts_both_forms() {
        let c = chan("private-a");
        let data = r#"{"x":1}"#;
        let plain = channel_auth(KEY, SECRET, SOCKET, "private-a", None);
        let with = channel_auth(KEY, SECRET, SOCKET, "private-a", Some(data));
        let s = secrets();
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &c, Some(data), Some(&plain)),
            Ok(())
        );
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &c, Some(data), Some(&with)),
            Ok(())
        );
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &c, None, Some(&with)),
            Err(AuthError::InvalidSignature {
                signed: "1234.1234:private-a".into()
            })
        );
        let enc = chan("private-encrypted-a");
        let auth = channel_auth(KEY, SECRET, SOCKET, "private-encrypted-a", None);
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &enc, None, Some(&auth)),
            Ok(())
        );
    }

    #[test]
    fn auth_errors_and_texts() {
        let c = chan("private-foobar");
        let s = secrets();
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &c, None, None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &c, None, Some("")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verify_channel_auth(KEY, &s, SOCKET, &c, None, Some("nocolon")),
            Err(AuthError::Malformed)
        );
        let e = verify_channel_auth(KEY, &s, SOCKET, &c, None, Some("wrong:abc")).unwrap_err();
        assert_eq!(e, AuthError::WrongKey("wrong".into()));
        assert_eq!(
            e.to_string(),
            "Invalid key in subscription auth data: 'wrong'"
        );
        let given = format!("{KEY}:52aa00");
        let e = verify_channel_auth(KEY, &s, SOCKET, &c, None, Some(&given)).unwrap_err();
        assert_eq!(
            e,
            AuthError::InvalidSignature {
                signed: "1234.1234:private-foobar".into()
            }
        );
        assert!(e
            .to_string()
            .starts_with("Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-foobar, but got"));
        assert_eq!(
            e.pusher_message(Some(&given)),
            "Invalid signature: Expected HMAC SHA256 hex digest of 1234.1234:private-foobar, but got 52aa00"
        );
        assert_eq!(
            AuthError::Missing.pusher_message(None),
            AuthError::Missing.to_string()
        );
        // Non-hex and wrong-length signatures are invalid signatures, not panics.
        for sig in ["zz", "", "58df", &"0".repeat(66)] {
            let a = format!("{KEY}:{sig}");
            assert!(matches!(
                verify_channel_auth(KEY, &s, SOCKET, &c, None, Some(&a)),
                Err(AuthError::InvalidSignature { .. })
            ));
        }
        // Another socket id must not verify.
        let auth = channel_auth(KEY, SECRET, SOCKET, "private-foobar", None);
        assert!(verify_channel_auth(KEY, &s, "1234.1235", &c, None, Some(&auth)).is_err());
    }

    #[test]
    fn secret_rotation() {
        let auth = channel_auth(KEY, SECRET, SOCKET, "private-foobar", None);
        let rotated = vec!["old-secret".to_owned(), SECRET.to_owned()];
        let c = chan("private-foobar");
        assert_eq!(
            verify_channel_auth(KEY, &rotated, SOCKET, &c, None, Some(&auth)),
            Ok(())
        );
        assert!(
            verify_channel_auth(KEY, &["old".to_owned()], SOCKET, &c, None, Some(&auth)).is_err()
        );
        assert!(verify_channel_auth(KEY, &[], SOCKET, &c, None, Some(&auth)).is_err());
        let ud = r#"{"id":"1"}"#;
        let a = signin_auth(KEY, SECRET, SOCKET, ud);
        assert_eq!(verify_signin(KEY, &rotated, SOCKET, ud, &a), Ok(()));
    }

    #[test]
    fn channel_data_parsing() {
        let m = parse_channel_data(r#"{"user_id":"abc","user_info":{"name":"A"}}"#, 1024).unwrap();
        assert_eq!(
            m,
            PresenceMember {
                user_id: "abc".into(),
                user_info_json: r#"{"name":"A"}"#.into()
            }
        );
        let m = parse_channel_data(r#"{"user_id":42}"#, 1024).unwrap();
        assert_eq!(
            m,
            PresenceMember {
                user_id: "42".into(),
                user_info_json: "null".into()
            }
        );
        let m = parse_channel_data(r#"{"user_info":[1, 2],"user_id":"x"}"#, 1024).unwrap();
        assert_eq!(m.user_info_json, "[1, 2]");
        assert!(parse_channel_data(r#"{"user_id":"x","user_info":{"a":"12345"}}"#, 10).is_err());
        assert!(parse_channel_data(r#"{"user_id":"x","user_info":{"a":"1"}}"#, 11).is_ok());
        assert!(
            parse_channel_data(&format!(r#"{{"user_id":"{}"}}"#, "u".repeat(128)), 1024).is_ok()
        );
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"user_id":true}"#,
            r#"{"user_id":null}"#,
            r#"{"user_id":""}"#,
            r#"{"user_id":{"a":1}}"#,
            &format!(r#"{{"user_id":"{}"}}"#, "u".repeat(129)),
        ] {
            let e = parse_channel_data(bad, 1024).unwrap_err();
            assert!(e.starts_with("Invalid channel_data"), "{bad}: {e}");
        }
    }

    #[test]
    fn user_data_parsing() {
        let u = parse_user_data(r#"{"id":"1","user_info":{"name":"A"},"watchlist":["2","3"]}"#)
            .unwrap();
        assert_eq!(
            u,
            UserData {
                id: "1".into(),
                user_info_json: r#"{"name":"A"}"#.into(),
                watchlist: vec!["2".into(), "3".into()],
            }
        );
        let u = parse_user_data(r#"{"id":"12345"}"#).unwrap();
        assert_eq!((u.user_info_json.as_str(), u.watchlist.len()), ("null", 0));
        let many: Vec<String> = (0..150).map(|i| format!("\"{i}\"")).collect();
        let u =
            parse_user_data(&format!(r#"{{"id":"1","watchlist":[{}]}}"#, many.join(","))).unwrap();
        assert_eq!(u.watchlist.len(), 150);
        for bad in [
            "x",
            "[]",
            "{}",
            r#"{"id":1}"#,
            r#"{"id":""}"#,
            r#"{"id":"1","watchlist":"2"}"#,
            r#"{"id":"1","watchlist":[2]}"#,
        ] {
            let e = parse_user_data(bad).unwrap_err();
            assert!(e.starts_with("Invalid user_data"), "{bad}: {e}");
        }
    }

    #[test]
    fn worked_example_webhook_signature() {
        let body = br#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}"#;
        assert_eq!(
            webhook_signature(SECRET, body),
            "c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf"
        );
    }

    #[test]
    fn encrypted_channel_shared_secret() {
        let key: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            encrypted_shared_secret("private-encrypted-foo", &key),
            "E3I6KxLwqP1Rr/p1676Vpnrw23CkRdS5bkX5NazRkeY="
        );
    }
}
