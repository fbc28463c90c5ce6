//! Backends: where the frames of relay (raw-dialect) routes go, and where replies come from.
//! A backend is the only place with outbound I/O. Each HTTP worker thread builds its own
//! [`Backend`] (an `awc` client is `!Send`, so it cannot be shared across threads).
//!
//! # Layout
//! - [`loopback`]: the echo backend (demos, conformance runs).
//! - [`http`]: the generic relay machinery: one actor per worker, per-connection job queues,
//!   retries, the in-flight cap, disconnect notices kept through outages.
//! - [`socketdock`], [`ws2api`]: the relay formats, each one [`Format`] with everything it
//!   needs: its requests, how its answers are read, and its push-API compatibility paths.
//! - [`callout`]: what every call to the application shares: the prepared request, the typed
//!   [`BackendError`], bounded answer bodies (the hooks in [`crate::hook`] use it too).

pub mod callout;
pub mod http;
pub mod loopback;
pub mod socketdock;
pub mod ws2api;

use std::sync::Arc;

use actix::{Actor, Addr};
use awc::http::StatusCode;
use serde_json::Value;

pub use callout::{BackendError, Request};

use crate::config::{BackendConfig, BackendKind, RelayFormat};
use crate::connection::ConnectionId;
use crate::frame::Frame;
use crate::metrics::Metrics;

/// The backend handle a session relays through.
#[derive(Clone)]
pub enum Backend {
    /// Echo every frame back to its sender (see [`loopback::answer`]).
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
    pub fn for_worker(
        config: &BackendConfig,
        notices: &http::PendingNotices,
        metrics: &Arc<Metrics>,
    ) -> Self {
        match config.kind {
            BackendKind::Loopback => Backend::Loopback,
            BackendKind::Http => {
                let format = format_for(config);
                Backend::Http {
                    checks_connect: format.checks_connect(),
                    notices: format.announces_disconnects().then(|| notices.clone()),
                    addr: http::HttpBackend::new(config, format, notices.clone(), metrics.clone())
                        .start(),
                }
            }
        }
    }
}

/// A relay format: the requests the http backend makes for a connection, and how it reads the
/// answers. A format only builds and reads; sending, queueing and retrying are [`http`]'s.
pub trait Format {
    /// Whether the application is asked before each upgrade ([`Format::connect_check`]).
    fn checks_connect(&self) -> bool {
        false
    }

    /// Whether ended connections are announced ([`Format::disconnect_notice`]).
    fn announces_disconnects(&self) -> bool;

    /// The notice of a new connection, if this format sends one; `handshake` holds the upgrade
    /// request's headers (names lowercased) and the client's address.
    fn connect_notice(&self, _id: &ConnectionId, _handshake: &Value) -> Option<Request> {
        None
    }

    /// The callout that relays one client frame.
    fn message(&self, id: &ConnectionId, frame: &Frame) -> Request;

    /// The notice of an ended connection, if this format sends one; `reason` is the close
    /// reason, `EOF` when the TCP connection dropped.
    fn disconnect_notice(&self, id: &ConnectionId, reason: &str) -> Option<Request>;

    /// The question asked before upgrading `id`, if this format asks one; `headers` are the
    /// upgrade request's (names lowercased), `remote` the client's address.
    fn connect_check(
        &self,
        _id: &ConnectionId,
        _headers: &[(String, String)],
        _remote: Option<&str>,
    ) -> Option<Request> {
        None
    }

    /// Whether the answer to [`Format::connect_check`] admits the client.
    fn admits(&self, _status: StatusCode, _body: &[u8]) -> Result<bool, BackendError> {
        Ok(true)
    }
}

/// The format `[backend]` names, built from its settings.
pub fn format_for(config: &BackendConfig) -> Box<dyn Format> {
    match config.format {
        RelayFormat::SocketDock => Box::new(socketdock::SocketDock::new(config)),
        RelayFormat::Ws2Api => Box::new(ws2api::Ws2Api::new(config)),
    }
}
