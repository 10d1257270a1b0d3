//! Channel names: validation and classification by exact prefix.

use std::borrow::Borrow;
use std::fmt;

use crate::limits::{MAX_CHANNEL_NAME_LEN, MAX_EVENT_NAME_LEN};

/// Prefix of the per-user channel (`#server-to-user-<user_id>`).
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A validated channel name. Only built by [`ChannelName::parse`].
///
/// Shared (`Arc<str>`): a clone is a reference-count increment, never an allocation, so
/// naming the channel in every message an event causes between cores (and in every
/// subscription record) costs no allocation on the hot path.
#[derive(Clone, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ChannelName(std::sync::Arc<str>);

/// Channel type, decided by the exact name prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ChannelKind {
    /// No recognised prefix (also `cache-*`).
    Public,
    /// `private-` (also `private-cache-`).
    Private,
    /// `private-encrypted-` (also `private-encrypted-cache-`). Authorised like a private channel.
    PrivateEncrypted,
    /// `presence-` (also `presence-cache-`).
    Presence,
    /// `#server-to-user-<user_id>`.
    ServerToUser,
}

/// Why a channel name is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChannelNameError {
    /// Empty name.
    Empty,
    /// Longer than [`MAX_CHANNEL_NAME_LEN`] bytes.
    TooLong,
    /// A character outside `[A-Za-z0-9_\-=@,.;]` (`'#'` is only allowed as the
    /// `#server-to-user-` prefix followed by a non-empty user id).
    InvalidChar(char),
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelNameError::Empty => f.write_str("Invalid channel name: empty"),
            ChannelNameError::TooLong => write!(
                f,
                "Invalid channel name: longer than {MAX_CHANNEL_NAME_LEN} characters"
            ),
            ChannelNameError::InvalidChar(c) => {
                write!(f, "Invalid channel name: invalid character {c:?}")
            }
        }
    }
}

impl std::error::Error for ChannelNameError {}

/// Characters allowed in channel names and user ids of `#server-to-user-` channels.
fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

fn check_chars(s: &str) -> Result<(), ChannelNameError> {
    match s.chars().find(|&c| !valid_char(c)) {
        Some(c) => Err(ChannelNameError::InvalidChar(c)),
        None => Ok(()),
    }
}

impl ChannelName {
    /// Validates `s`: charset `^[A-Za-z0-9_\-=@,.;]+$`, 1..=200 bytes; names
    /// `#server-to-user-<id>` with `<id>` non-empty in the same charset are also accepted.
    pub fn parse(s: &str) -> Result<ChannelName, ChannelNameError> {
        if s.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if s.len() > MAX_CHANNEL_NAME_LEN {
            return Err(ChannelNameError::TooLong);
        }
        match s.strip_prefix(SERVER_TO_USER_PREFIX) {
            Some("") => return Err(ChannelNameError::InvalidChar('#')),
            Some(user) => check_chars(user)?,
            None => check_chars(s)?,
        }
        Ok(ChannelName(s.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Channel type by exact prefix (`"privatex"` is public, `"private-encrypted-x"` is
    /// private-encrypted).
    pub fn kind(&self) -> ChannelKind {
        let s = self.as_str();
        if s.starts_with(SERVER_TO_USER_PREFIX) {
            ChannelKind::ServerToUser
        } else if s.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if s.starts_with("private-") {
            ChannelKind::Private
        } else if s.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// Cache channel: `cache-`, `private-cache-`, `private-encrypted-cache-`, `presence-cache-`.
    pub fn is_cache(&self) -> bool {
        let s = self.as_str();
        [
            "cache-",
            "private-cache-",
            "private-encrypted-cache-",
            "presence-cache-",
        ]
        .iter()
        .any(|p| s.starts_with(p))
    }

    /// `Some(user_id)` for `#server-to-user-<user_id>`.
    pub fn server_to_user_id(&self) -> Option<&str> {
        self.as_str().strip_prefix(SERVER_TO_USER_PREFIX)
    }

    /// Private, private-encrypted and presence channels need a subscription signature.
    pub fn requires_auth(&self) -> bool {
        matches!(
            self.kind(),
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }

    /// Presence channel (`presence-*`).
    pub fn is_presence(&self) -> bool {
        self.kind() == ChannelKind::Presence
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Event names: 1..=200 bytes, any characters (Laravel sends `App\Events\OrderShipped`).
pub fn validate_event_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_EVENT_NAME_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn kind(s: &str) -> ChannelKind {
        ChannelName::parse(s).unwrap().kind()
    }

    #[test]
    fn classification_by_exact_prefix() {
        use ChannelKind::*;
        for (name, k) in [
            ("my-channel", Public),
            ("privatex", Public),
            ("private", Public),
            ("presence", Public),
            ("xprivate-a", Public),
            ("cache-x", Public),
            ("Private-x", Public),
            ("private-x", Private),
            ("private-cache-x", Private),
            ("private-encrypted", Private),
            ("private-encrypted-x", PrivateEncrypted),
            ("private-encrypted-cache-x", PrivateEncrypted),
            ("presence-x", Presence),
            ("presence-cache-x", Presence),
            ("#server-to-user-42", ServerToUser),
        ] {
            assert_eq!(kind(name), k, "{name}");
        }
    }

    #[test]
    fn cache_and_auth_flags() {
        for (name, cache, auth) in [
            ("cache-x", true, false),
            ("private-cache-x", true, true),
            ("private-encrypted-cache-x", true, true),
            ("presence-cache-x", true, true),
            ("cachex", false, false),
            ("my-cache-x", false, false),
            ("private-x", false, true),
            ("private-encrypted-x", false, true),
            ("presence-x", false, true),
            ("public", false, false),
            ("#server-to-user-1", false, false),
        ] {
            let c = ChannelName::parse(name).unwrap();
            assert_eq!((c.is_cache(), c.requires_auth()), (cache, auth), "{name}");
        }
        assert!(ChannelName::parse("presence-x").unwrap().is_presence());
    }

    #[test]
    fn validation() {
        assert!(ChannelName::parse("AZaz09_-=@,.;").is_ok());
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert!(ChannelName::parse(&"a".repeat(200)).is_ok());
        assert_eq!(
            ChannelName::parse(&"a".repeat(201)),
            Err(ChannelNameError::TooLong)
        );
        for (bad, c) in [
            ("a b", ' '),
            ("a:b", ':'),
            ("#x", '#'),
            ("a/b", '/'),
            ("é", 'é'),
            ("a#", '#'),
            ("a*", '*'),
        ] {
            assert_eq!(
                ChannelName::parse(bad),
                Err(ChannelNameError::InvalidChar(c)),
                "{bad}"
            );
        }
        assert_eq!(
            ChannelName::parse("#server-to-user-"),
            Err(ChannelNameError::InvalidChar('#'))
        );
        assert_eq!(
            ChannelName::parse("#server-to-user-a#b"),
            Err(ChannelNameError::InvalidChar('#'))
        );
        assert_eq!(
            ChannelName::parse("#server-to-user-a b"),
            Err(ChannelNameError::InvalidChar(' '))
        );
        let u = ChannelName::parse("#server-to-user-user@example.com").unwrap();
        assert_eq!(u.server_to_user_id(), Some("user@example.com"));
        assert_eq!(
            ChannelName::parse("private-a").unwrap().server_to_user_id(),
            None
        );
        assert_eq!(
            ChannelNameError::InvalidChar(' ').to_string(),
            "Invalid channel name: invalid character ' '"
        );
        assert_eq!(
            ChannelNameError::TooLong.to_string(),
            "Invalid channel name: longer than 200 characters"
        );
    }

    #[test]
    fn borrow_display_ord() {
        let mut set = HashSet::new();
        set.insert(ChannelName::parse("presence-a").unwrap());
        assert!(set.contains("presence-a"));
        assert!(!set.contains("presence-b"));
        let c = ChannelName::parse("my-channel").unwrap();
        assert_eq!(c.to_string(), "my-channel");
        assert_eq!(c.as_str(), "my-channel");
        assert!(ChannelName::parse("a").unwrap() < ChannelName::parse("b").unwrap());
    }

    #[test]
    fn event_names() {
        assert!(validate_event_name(r"App\Events\OrderShipped"));
        assert!(validate_event_name("client-typing"));
        assert!(validate_event_name("with space and ünïcode"));
        assert!(validate_event_name(&"e".repeat(200)));
        assert!(!validate_event_name(&"e".repeat(201)));
        assert!(!validate_event_name(""));
    }
}
