//! The dialects a route can speak, by name: the key of per-dialect caches (a publication's
//! encodings) and of the config's `dialect` field.

use serde::Deserialize;

/// The dialects a route can speak, as named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DialectKind {
    /// Frames go to the backend as they are (SocketDock, ws2api, the demo echo).
    #[serde(rename = "raw")]
    Raw,
    /// RocketWS's JSON-RPC 2.0 channels.
    #[serde(rename = "jsonrpc")]
    JsonRpc,
    /// AWX's declarative groups.
    #[serde(rename = "groups")]
    Groups,
    /// fedmsg's topic prefixes.
    #[serde(rename = "topics")]
    Topics,
}

impl DialectKind {
    /// How many dialects there are (the size of per-dialect caches).
    pub const COUNT: usize = 4;

    /// Every dialect, in index order.
    pub const ALL: [DialectKind; Self::COUNT] = [
        DialectKind::Raw,
        DialectKind::JsonRpc,
        DialectKind::Groups,
        DialectKind::Topics,
    ];

    /// A dense index for per-dialect caches.
    pub fn index(self) -> usize {
        match self {
            DialectKind::Raw => 0,
            DialectKind::JsonRpc => 1,
            DialectKind::Groups => 2,
            DialectKind::Topics => 3,
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            DialectKind::Raw => "raw",
            DialectKind::JsonRpc => "jsonrpc",
            DialectKind::Groups => "groups",
            DialectKind::Topics => "topics",
        }
    }
}
