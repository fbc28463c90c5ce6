//! Backends: where the frames of relay (raw-dialect) routes go, and where replies come from.
//! A backend is the only place with outbound I/O. Each HTTP worker thread builds its own
//! [`Backend`] (an `awc` client is `!Send`, so it cannot be shared across threads).

pub mod admission;
pub mod authorizer;
pub mod http;

use actix::{Actor, Addr};

use crate::config::{BackendConfig, BackendKind, RelayFormat};

/// The backend handle a session relays through.
#[derive(Clone)]
pub enum Backend {
    /// Echo every frame back to its sender: text stays text, binary stays binary.
    Loopback,
    /// Relay to an HTTP application through this worker's backend actor.
    Http {
        /// The worker's backend actor.
        addr: Addr<http::HttpBackend>,
        /// ws2api: ask the application before upgrading (`GET {url}/{id}`).
        checks_connect: bool,
        /// Whether ended connections are announced (ws2api always; SocketDock with a
        /// `disconnect_url`), and the shared count of notices not yet delivered.
        notices: Option<http::PendingNotices>,
    },
}

impl Backend {
    /// The backend for one worker thread (call it on that thread: it starts an actor there).
    pub fn for_worker(config: &BackendConfig, notices: &http::PendingNotices) -> Self {
        match config.kind {
            BackendKind::Loopback => Backend::Loopback,
            BackendKind::Http => Backend::Http {
                addr: http::HttpBackend::new(config, notices.clone()).start(),
                checks_connect: config.format == RelayFormat::Ws2Api,
                notices: (config.format == RelayFormat::Ws2Api || config.disconnect_url.is_some())
                    .then(|| notices.clone()),
            },
        }
    }
}
