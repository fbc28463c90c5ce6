//! Backends: where the frames of relay (raw-dialect) routes go, and where replies come from.
//! A backend is the only place with outbound I/O. Each HTTP worker thread builds its own
//! [`Backend`] (an `awc` client is `!Send`, so it cannot be shared across threads).

use crate::channel::Frame;
use crate::config::{BackendConfig, BackendKind};

/// The backend handle a session relays through.
#[derive(Clone)]
pub enum Backend {
    /// Echo every frame back to its sender: text stays text, binary stays binary.
    Loopback,
}

/// What became of a relayed frame.
pub enum Relayed {
    /// The answer is ready now: send it to the client.
    Reply(Frame),
}

impl Backend {
    /// The backend for one worker thread.
    pub fn for_worker(config: &BackendConfig) -> Self {
        match config.kind {
            BackendKind::Loopback => Backend::Loopback,
        }
    }

    /// Relay one client frame.
    pub fn relay(&self, frame: Frame) -> Relayed {
        match self {
            Backend::Loopback => Relayed::Reply(frame),
        }
    }
}
