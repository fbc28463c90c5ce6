//! Connection identity: the id every registry entry, log line and push-API URL uses.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest id accepted from a URL (ids are put into backend URLs, so they are kept short).
pub const MAX_ID_LEN: usize = 128;

/// A connection's id: 32 lowercase hex characters when the hub picks it, or a client-chosen id
/// of URL-safe characters (`A-Z a-z 0-9 - _ . ~`, at most [`MAX_ID_LEN`]) for dialects that let
/// the client name itself. Cloning is cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ConnectionId(Arc<str>);

/// Why a client-supplied id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The id was empty.
    #[error("connection id is empty")]
    Empty,
    /// The id was longer than [`MAX_ID_LEN`].
    #[error("connection id is longer than {MAX_ID_LEN} characters")]
    TooLong,
    /// The id had a character outside `A-Z a-z 0-9 - _ . ~`.
    #[error("connection id may only contain A-Z a-z 0-9 - _ . ~")]
    BadCharacter,
    /// `.` and `..` are path segments, not ids (they would change the backend URL).
    #[error("connection id may not be `.` or `..`")]
    DotSegment,
}

impl ConnectionId {
    /// A fresh random id (UUID v4 as 32 lowercase hex characters, as SocketDock uses).
    pub fn generate() -> Self {
        let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
        let text = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
        Self(Arc::from(&*text))
    }

    /// Validate an id taken from a URL or a request body.
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        if text.is_empty() {
            return Err(InvalidId::Empty);
        }
        if text.len() > MAX_ID_LEN {
            return Err(InvalidId::TooLong);
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        {
            return Err(InvalidId::BadCharacter);
        }
        if text == "." || text == ".." {
            return Err(InvalidId::DotSegment);
        }
        Ok(Self(Arc::from(text)))
    }

    /// The id as text.
    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex() {
        let id = ConnectionId::generate();
        assert_eq!(id.as_str().len(), 32);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, ConnectionId::generate());
    }

    #[test]
    fn parse_rejects_what_cannot_go_into_a_url() {
        assert_eq!(ConnectionId::parse(""), Err(InvalidId::Empty));
        assert_eq!(ConnectionId::parse("a/b"), Err(InvalidId::BadCharacter));
        assert_eq!(ConnectionId::parse("a b"), Err(InvalidId::BadCharacter));
        assert_eq!(ConnectionId::parse(".."), Err(InvalidId::DotSegment));
        assert_eq!(ConnectionId::parse("."), Err(InvalidId::DotSegment));
        assert_eq!(
            ConnectionId::parse(&"x".repeat(MAX_ID_LEN + 1)),
            Err(InvalidId::TooLong)
        );
        assert_eq!(
            ConnectionId::parse("user-42.a_b~").unwrap().as_str(),
            "user-42.a_b~"
        );
    }
}
