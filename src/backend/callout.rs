//! One HTTP call to the application, as every caller shares it: the prepared [`Request`] a relay
//! format builds, the typed [`BackendError`] of a call that went wrong (with the one place that
//! maps it to a close code or an HTTP status), and reading an answer body within a size limit.
//! Used by the http backend, the relay formats and the hooks.

use std::fmt;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use bytes::Bytes;
use bytestring::ByteString;

use crate::frame::{close_code, Close, Frame};

/// The header that names a notice (connect notice, disconnect notice, connect check). It is the
/// same on every try of that notice, so an application can drop copies it already processed.
pub const NOTICE_ID_HEADER: &str = "switchboard-notice-id";

/// A prepared callout: what a relay format asks the application, before anyone sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// POST for frames and notices, DELETE for ws2api's disconnect, GET for its connect check.
    pub method: Method,
    /// The whole URL.
    pub url: String,
    /// The body's type; `None` sends no body at all (the connect check's GET).
    pub content_type: Option<&'static str>,
    /// The body.
    pub body: Bytes,
    /// Extra headers (the connect check forwards the client's).
    pub headers: Vec<(String, String)>,
    /// Whether the answer body is read, and up to how many bytes: it goes back to the client
    /// (ws2api's frames) or decides (the connect check). `None`: only the status counts.
    pub answer_limit: Option<usize>,
    /// The [`NOTICE_ID_HEADER`] of a notice, set by the backend that keeps it.
    pub notice_id: Option<String>,
}

impl Request {
    /// A POST with a body of `content_type`, whose answer is not read.
    pub fn post(url: String, content_type: &'static str, body: Bytes) -> Self {
        Self {
            method: Method::POST,
            url,
            content_type: Some(content_type),
            body,
            headers: Vec::new(),
            answer_limit: None,
            notice_id: None,
        }
    }

    /// A POST of a JSON body, whose answer is not read.
    pub fn json(url: String, body: &serde_json::Value) -> Self {
        Self::post(url, "application/json", Bytes::from(body.to_string()))
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// What went wrong with one call to the application (a relay callout or a hook).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The TCP connection could not be made: the application saw nothing (retried).
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// A 5xx: the application did not process it (retried).
    #[error("backend answered {0}")]
    Unavailable(StatusCode),
    /// A 4xx (or another status the caller does not take): the application refused this one
    /// call (not retried).
    #[error("backend refused it with {0}")]
    Refused(StatusCode),
    /// No complete answer, body included, within the time left.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The answer is larger than the caller reads (announced by Content-Length, or counted
    /// while reading a body without one).
    #[error("answer {} is larger than the limit of {limit} bytes", announced.map_or_else(|| "body".to_owned(), |n| format!("of {n} bytes")))]
    TooLarge {
        /// What Content-Length announced, when it was the header that told.
        announced: Option<u64>,
        /// The limit in bytes.
        limit: usize,
    },
    /// The exchange broke off midway (connection closed mid-request or mid-body, malformed
    /// chunking): the request may have reached the application.
    #[error("{0}")]
    Io(String),
    /// The answer arrived but is not what the caller understands (a hook's malformed JSON).
    #[error("unreadable answer: {0}")]
    Malformed(String),
    /// The deadline passed between two attempts.
    #[error("deadline passed")]
    Deadline,
}

impl BackendError {
    /// Whether a callout may be tried again: only when the application cannot have processed
    /// it, so a frame is never relayed twice.
    pub fn transient(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Unavailable(_))
    }

    /// The close a session gets when its frame's callout failed with this.
    pub fn close(&self) -> Close {
        match self {
            Self::TooLarge { .. } => Close::new(
                close_code::INTERNAL_ERROR,
                "backend answer larger than max_message_size",
            ),
            _ => Close::new(close_code::TRY_AGAIN_LATER, "backend unavailable"),
        }
    }

    /// The status a WebSocket handshake is refused with when its connect hook failed with
    /// this: the application's own 401 or 403, else 502.
    pub fn handshake_status(&self) -> u16 {
        match self {
            Self::Refused(status) if matches!(status.as_u16(), 401 | 403) => status.as_u16(),
            _ => 502,
        }
    }

    /// Sort a status: 2xx is fine, 5xx [`Self::Unavailable`], the rest [`Self::Refused`].
    pub fn check_status(status: StatusCode) -> Result<(), Self> {
        if status.is_server_error() {
            Err(Self::Unavailable(status))
        } else if !status.is_success() {
            Err(Self::Refused(status))
        } else {
            Ok(())
        }
    }
}

impl From<awc::error::SendRequestError> for BackendError {
    /// Only a failed connect is known not to have reached the application.
    fn from(error: awc::error::SendRequestError) -> Self {
        match error {
            awc::error::SendRequestError::Connect(e) => Self::Unreachable(e.to_string()),
            other => Self::Io(other.to_string()),
        }
    }
}

/// Read a whole answer body of at most `limit` bytes. An announced Content-Length over the
/// limit is refused before a byte of the body is read. There is no deadline here: callers
/// bound the whole call, body included, with one timeout.
pub async fn read_answer<S>(
    response: &mut awc::ClientResponse<S>,
    limit: usize,
) -> Result<Bytes, BackendError>
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let announced = response
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = announced {
        if length > limit as u64 {
            return Err(BackendError::TooLarge {
                announced: Some(length),
                limit,
            });
        }
    }
    response.body().limit(limit).await.map_err(|e| match e {
        awc::error::PayloadError::Overflow => BackendError::TooLarge {
            announced: None,
            limit,
        },
        other => BackendError::Io(format!("reading the answer: {other}")),
    })
}

/// A body as a frame: text when it is UTF-8, else binary (never corrupted).
pub fn frame_of(body: Bytes) -> Frame {
    match ByteString::try_from(body.clone()) {
        Ok(text) => Frame::Text(text),
        Err(_) => Frame::Binary(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_the_application_never_saw_are_retried() {
        assert!(BackendError::Unreachable("refused".into()).transient());
        assert!(BackendError::Unavailable(StatusCode::BAD_GATEWAY).transient());
        assert!(!BackendError::Refused(StatusCode::BAD_REQUEST).transient());
        assert!(!BackendError::Timeout(Duration::from_secs(1)).transient());
        assert!(!BackendError::Io("reset".into()).transient());
    }

    #[test]
    fn errors_map_to_close_codes_and_handshake_statuses() {
        let too_large = BackendError::TooLarge {
            announced: Some(10),
            limit: 5,
        };
        assert_eq!(too_large.close().code, close_code::INTERNAL_ERROR);
        assert_eq!(
            BackendError::Timeout(Duration::from_secs(1)).close().code,
            close_code::TRY_AGAIN_LATER
        );
        assert_eq!(
            BackendError::Refused(StatusCode::FORBIDDEN).handshake_status(),
            403
        );
        assert_eq!(
            BackendError::Refused(StatusCode::UNAUTHORIZED).handshake_status(),
            401
        );
        assert_eq!(
            BackendError::Refused(StatusCode::NOT_FOUND).handshake_status(),
            502
        );
        assert_eq!(
            BackendError::Unreachable("x".into()).handshake_status(),
            502
        );
    }

    #[test]
    fn statuses_are_sorted() {
        assert!(BackendError::check_status(StatusCode::NO_CONTENT).is_ok());
        assert!(matches!(
            BackendError::check_status(StatusCode::SERVICE_UNAVAILABLE),
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            BackendError::check_status(StatusCode::CONFLICT),
            Err(BackendError::Refused(_))
        ));
    }

    #[test]
    fn bodies_become_text_or_binary_frames() {
        assert_eq!(frame_of(Bytes::from_static(b"hi")), Frame::text("hi"));
        assert_eq!(
            frame_of(Bytes::from_static(&[0xff, 0])),
            Frame::Binary(Bytes::from_static(&[0xff, 0]))
        );
    }
}
