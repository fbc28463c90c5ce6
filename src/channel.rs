//! What travels through the hub: channel names and publications.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

use crate::dialect::kind::DialectKind;
use crate::frame::Frame;

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 256;

/// A validated channel name: 1 to 256 bytes, no control characters. Cloning is cheap.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChannelName(Arc<str>);

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChannel {
    /// Empty name.
    #[error("channel name is empty")]
    Empty,
    /// Longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// Has a control character.
    #[error("channel name contains a control character")]
    ControlCharacter,
}

impl ChannelName {
    /// Validate a channel name.
    pub fn parse(text: &str) -> Result<Self, InvalidChannel> {
        if text.is_empty() {
            Err(InvalidChannel::Empty)
        } else if text.len() > MAX_CHANNEL_LEN {
            Err(InvalidChannel::TooLong)
        } else if text.chars().any(char::is_control) {
            Err(InvalidChannel::ControlCharacter)
        } else {
            Ok(Self(Arc::from(text)))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({})", self.0)
    }
}

/// Whether a publication went to one channel or to everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicationKind {
    /// Published to one channel (RocketWS `__type: "message"`).
    Message,
    /// Sent to every connection (RocketWS `__type: "broadcast"`).
    Broadcast,
}

/// A published JSON value on its way to many connections. It is built once per publish and
/// shared; each dialect encodes it at most once, the first time one of its connections needs it.
pub struct Publication {
    /// The channel, or `None` for a broadcast.
    pub channel: Option<ChannelName>,
    /// The published value.
    pub data: serde_json::Value,
    /// Channel message or broadcast.
    pub kind: PublicationKind,
    /// When the hub accepted it, in Unix seconds.
    pub ts: u64,
    /// The frame each dialect made of it, filled on first use.
    encoded: [OnceLock<Frame>; DialectKind::COUNT],
}

impl Publication {
    /// A publication stamped with the current time.
    pub fn new(
        channel: Option<ChannelName>,
        data: serde_json::Value,
        kind: PublicationKind,
    ) -> Self {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            channel,
            data,
            kind,
            ts,
            encoded: Default::default(),
        }
    }

    /// The frame for `dialect`, encoding it with `encode` only the first time.
    pub fn frame_for(&self, dialect: DialectKind, encode: impl FnOnce(&Self) -> Frame) -> Frame {
        self.encoded[dialect.index()]
            .get_or_init(|| encode(self))
            .clone()
    }
}

impl fmt::Debug for Publication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publication")
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .field("ts", &self.ts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_validated() {
        assert_eq!(ChannelName::parse(""), Err(InvalidChannel::Empty));
        assert_eq!(
            ChannelName::parse("a\nb"),
            Err(InvalidChannel::ControlCharacter)
        );
        assert_eq!(
            ChannelName::parse(&"c".repeat(MAX_CHANNEL_LEN + 1)),
            Err(InvalidChannel::TooLong)
        );
        assert_eq!(ChannelName::parse("jobs-42").unwrap().as_str(), "jobs-42");
    }

    #[test]
    fn a_publication_is_encoded_once_per_dialect() {
        let p = Publication::new(
            None,
            serde_json::json!({"a": 1}),
            PublicationKind::Broadcast,
        );
        let mut calls = 0;
        for _ in 0..3 {
            p.frame_for(DialectKind::Raw, |_| {
                calls += 1;
                Frame::text("x")
            });
        }
        assert_eq!(calls, 1);
    }
}
