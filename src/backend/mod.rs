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

/// Why an answer body from the application was not read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The answer is larger than the hub relays (announced by Content-Length, or counted while
    /// reading a body without one).
    #[error("answer {} is larger than the limit of {limit} bytes", announced.map_or_else(|| "body".to_owned(), |n| format!("of {n} bytes")))]
    TooLarge {
        /// What Content-Length announced, when it was the header that told.
        announced: Option<u64>,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read (connection closed mid-body, malformed chunking).
    #[error("reading the answer: {0}")]
    Read(awc::error::PayloadError),
}

/// Read a whole answer body of at most `limit` bytes. An announced Content-Length over the
/// limit is refused before a byte of the body is read. There is no deadline here: callers
/// bound the whole callout, body included, with one timeout.
pub async fn read_answer<S>(
    response: &mut awc::ClientResponse<S>,
    limit: usize,
) -> Result<bytes::Bytes, AnswerError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let announced = response
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = announced {
        if length > limit as u64 {
            return Err(AnswerError::TooLarge {
                announced: Some(length),
                limit,
            });
        }
    }
    response.body().limit(limit).await.map_err(|e| match e {
        awc::error::PayloadError::Overflow => AnswerError::TooLarge {
            announced: None,
            limit,
        },
        other => AnswerError::Read(other),
    })
}
