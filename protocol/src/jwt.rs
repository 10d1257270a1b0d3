//! HS256 JSON Web Tokens (RFC 7519), the only kind Ringcast issues and accepts: LatteStream
//! access tokens (`POST /apps/token`, `?token=` on `/app/{key}`) and alrt user tokens.
//!
//! Parse, don't validate: [`Jwt::parse`] turns the text into a token whose header says HS256
//! and whose claims have the shape below, without trusting it; [`Jwt::verify`] then checks the
//! signature against the app's secrets and the expiry against a clock given as an argument,
//! and only then hands out the [`Claims`]. Signing ([`sign`]) is the inverse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Longest token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a token says. `sub` is the user id; `app` the app (tenant) id it was issued for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user id.
    pub sub: String,
    /// The app (tenant) id the token was issued for.
    pub app: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds); the token is refused from this second on.
    pub exp: u64,
    /// LatteStream permissions (`read`, `write`, `presence`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    /// Channel-name patterns (`*` matches any run of characters) the token lets its holder
    /// read without a per-channel authorization: the private channels of an SSE stream
    /// (`GET /apps/{id}/stream?token=`). Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// What the token is for: `"access"` (LatteStream, `/app/{key}?token=`) or `"user"` (the
    /// alrt user socket).
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    /// Whether `permissions` holds `permission`.
    pub fn allows(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }

    /// Whether one of the `channels` patterns matches `channel`.
    pub fn allows_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| pattern_matches(p, channel))
    }
}

/// Glob match with `*` (any run of characters, possibly empty); everything else literal.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON with the required claims, or too long.
    Malformed(&'static str),
    /// The header's `alg` is not HS256 (`none` included).
    UnsupportedAlgorithm,
    /// No secret of the app produced this signature.
    BadSignature,
    /// `exp` has passed.
    Expired,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::UnsupportedAlgorithm => f.write_str("token algorithm must be HS256"),
            JwtError::BadSignature => f.write_str("invalid token signature"),
            JwtError::Expired => f.write_str("token expired"),
        }
    }
}
impl std::error::Error for JwtError {}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// A parsed, not yet trusted token.
#[derive(Debug, Clone)]
pub struct Jwt {
    signing_input: String,
    signature: Vec<u8>,
    claims: Claims,
}

fn mac(secret: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length.
    <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any HMAC key length")
}

impl Jwt {
    /// Parses the token's three parts (nothing is trusted yet).
    pub fn parse(token: &str) -> Result<Jwt, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("expected header.payload.signature"));
        };
        let header = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| JwtError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header)
            .map_err(|_| JwtError::Malformed("header is not a JSON object with alg"))?;
        if header.alg != "HS256" {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| JwtError::Malformed("payload is not base64url"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|_| JwtError::Malformed("payload needs sub, app, iat and exp"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        Ok(Jwt {
            signing_input: token[..h.len() + 1 + p.len()].to_owned(),
            signature,
            claims,
        })
    }

    /// The claims, unverified (to find the app whose secret must have signed them).
    pub fn unverified_claims(&self) -> &Claims {
        &self.claims
    }

    /// Checks the signature against each secret (rotation) and `exp` against `now_unix`.
    pub fn verify(self, secrets: &[String], now_unix: u64) -> Result<Claims, JwtError> {
        let ok = secrets.iter().fold(false, |ok, secret| {
            let mut m = mac(secret);
            m.update(self.signing_input.as_bytes());
            m.verify_slice(&self.signature).is_ok() | ok
        });
        if !ok {
            return Err(JwtError::BadSignature);
        }
        if now_unix >= self.claims.exp {
            return Err(JwtError::Expired);
        }
        Ok(self.claims)
    }
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Serializing a struct of strings and integers cannot fail.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    format!("{input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "user-1".into(),
            app: "app-id".into(),
            iat: 100,
            exp,
            permissions: vec!["read".into(), "write".into()],
            channels: vec!["private-news-*".into()],
            scope: "access".into(),
        }
    }

    #[test]
    fn round_trip_and_rotation() {
        let t = sign(&claims(200), "old");
        let secrets = vec!["new".to_owned(), "old".to_owned()];
        let c = Jwt::parse(&t).unwrap().verify(&secrets, 150).unwrap();
        assert_eq!(c, claims(200));
        assert!(c.allows("write") && !c.allows("presence"));
        assert!(c.allows_channel("private-news-1") && !c.allows_channel("private-other"));
    }

    #[test]
    fn refusals() {
        let secrets = vec!["s".to_owned()];
        let t = sign(&claims(200), "s");
        assert_eq!(
            Jwt::parse(&t).unwrap().verify(&secrets, 200).unwrap_err(),
            JwtError::Expired
        );
        assert_eq!(
            Jwt::parse(&sign(&claims(200), "other"))
                .unwrap()
                .verify(&secrets, 1)
                .unwrap_err(),
            JwtError::BadSignature
        );
        // A payload swapped under a valid signature.
        let other = sign(
            &Claims {
                sub: "admin".into(),
                ..claims(200)
            },
            "x",
        );
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert_eq!(
            Jwt::parse(&forged)
                .unwrap()
                .verify(&secrets, 1)
                .unwrap_err(),
            JwtError::BadSignature
        );
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(
            Jwt::parse(&none).unwrap_err(),
            JwtError::UnsupportedAlgorithm
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.x.y", &"a".repeat(5000)] {
            assert!(
                matches!(Jwt::parse(bad), Err(JwtError::Malformed(_))),
                "{bad:?}"
            );
        }
        let no_exp = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(br#"{"sub":"u","app":"a","iat":1}"#),
            parts[2]
        );
        assert!(matches!(Jwt::parse(&no_exp), Err(JwtError::Malformed(_))));
    }
}
