//! API tokens: `rc_` + a 16-hex-digit public id + 48 hex digits of secret, 32 random bytes in
//! all from the OS. Only the SHA-256 of the whole token is stored; a presented token is found
//! by its id and its hash compared in constant time (`subtle`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::MgmtError;

pub const TOKEN_PREFIX: &str = "rc_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 48;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Scope {
    #[serde(rename = "apps:read")]
    AppsRead,
    #[serde(rename = "apps:write")]
    AppsWrite,
    #[serde(rename = "events:trigger")]
    EventsTrigger,
    #[serde(rename = "secrets:manage")]
    SecretsManage,
    #[serde(rename = "tokens:manage")]
    TokensManage,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::AppsRead,
        Scope::AppsWrite,
        Scope::EventsTrigger,
        Scope::SecretsManage,
        Scope::TokensManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AppsRead => "apps:read",
            Scope::AppsWrite => "apps:write",
            Scope::EventsTrigger => "events:trigger",
            Scope::SecretsManage => "secrets:manage",
            Scope::TokensManage => "tokens:manage",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// A stored token: never the token itself, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public id (the 16 hex digits after `rc_`).
    pub id: String,
    pub name: String,
    /// SHA-256 of the whole token, hex.
    pub hash: String,
    pub scopes: Vec<Scope>,
    /// Unix seconds; none = never expires.
    pub expires_at: Option<u64>,
    /// Only this app (by id); none = every app.
    pub app: Option<String>,
    pub created_at: u64,
}

impl TokenRecord {
    pub fn has(&self, s: Scope) -> bool {
        self.scopes.contains(&s)
    }

    /// May act on `app`.
    pub fn covers_app(&self, app: &str) -> bool {
        self.app.as_deref().is_none_or(|a| a == app)
    }

    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// The public view (no hash).
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "scopes": self.scopes,
            "expires_at": self.expires_at,
            "app": self.app,
            "created_at": self.created_at,
        })
    }
}

/// A freshly generated token: the value (shown once) and its record.
pub struct NewToken {
    pub token: String,
    pub record: TokenRecord,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Random hex from the OS.
pub fn random_hex(bytes: usize) -> Result<String, MgmtError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf)
        .map_err(|e| MgmtError::new(503, "no_randomness", format!("OS randomness: {e}")))?;
    Ok(hex::encode(buf))
}

/// Generates a token.
pub fn generate(
    name: String,
    scopes: Vec<Scope>,
    expires_at: Option<u64>,
    app: Option<String>,
    now: u64,
) -> Result<NewToken, MgmtError> {
    let raw = random_hex((ID_HEX + SECRET_HEX) / 2)?;
    let token = format!("{TOKEN_PREFIX}{raw}");
    Ok(NewToken {
        record: record_for(&token, name, scopes, expires_at, app, now)
            .ok_or_else(|| MgmtError::new(500, "internal", "generated token is malformed"))?,
        token,
    })
}

/// The record of a given token value (the bootstrap token from the config or the
/// environment); `None` when the value is not a well-formed `rc_` token.
pub fn record_for(
    token: &str,
    name: String,
    scopes: Vec<Scope>,
    expires_at: Option<u64>,
    app: Option<String>,
    now: u64,
) -> Option<TokenRecord> {
    let id = token_id(token)?;
    Some(TokenRecord {
        id: id.to_owned(),
        name,
        hash: hash_token(token),
        scopes,
        expires_at,
        app,
        created_at: now,
    })
}

/// The public id of a well-formed token.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    if rest.len() != ID_HEX + SECRET_HEX || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(&rest[..ID_HEX])
}

/// Finds the record matching `token` (by id, then a constant-time hash comparison) and checks
/// expiry.
pub fn verify<'a>(
    records: &'a [TokenRecord],
    token: &str,
    now: u64,
) -> Result<&'a TokenRecord, MgmtError> {
    let id = token_id(token).ok_or_else(|| {
        MgmtError::unauthorized("the Bearer token is not a Ringcast API token (rc_...)")
    })?;
    let presented = hash_token(token);
    let rec = records
        .iter()
        .find(|r| r.id == id)
        .filter(|r| bool::from(r.hash.as_bytes().ct_eq(presented.as_bytes())))
        .ok_or_else(|| MgmtError::unauthorized("unknown or revoked API token"))?;
    if rec.expired(now) {
        return Err(MgmtError::unauthorized("the API token has expired"));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_verify_and_others_do_not() {
        let t = generate("t".into(), vec![Scope::AppsRead], Some(100), None, 1).unwrap();
        assert!(t.token.starts_with("rc_"));
        assert_eq!(t.token.len(), 3 + 64);
        assert_ne!(t.record.hash, t.token, "only the hash is kept");
        let recs = vec![t.record.clone()];
        assert_eq!(verify(&recs, &t.token, 50).unwrap().id, t.record.id);
        // Expired.
        assert_eq!(verify(&recs, &t.token, 100).unwrap_err().status, 401);
        // Same id, different secret.
        let mut forged = t.token.clone();
        let last = if forged.ends_with('0') { "1" } else { "0" };
        forged.replace_range(forged.len() - 1.., last);
        assert_eq!(verify(&recs, &forged, 50).unwrap_err().status, 401);
        // Malformed.
        for bad in ["", "rc_", "rc_xyz", "Bearer", "app-secret"] {
            assert_eq!(verify(&recs, bad, 50).unwrap_err().status, 401);
        }
    }

    #[test]
    fn scopes_round_trip_by_name() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Scope::parse("apps:delete"), None);
    }
}
