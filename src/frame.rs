//! One WebSocket message as the hub sees it (fragments joined), and the close frames it sends:
//! codes (RFC 6455 §7.4.1) and reasons.

use bytes::Bytes;
use bytestring::ByteString;

/// One WebSocket message, whole (fragments already joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text message (always valid UTF-8).
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
}

impl Frame {
    /// A text frame from anything string-like.
    pub fn text(text: impl Into<ByteString>) -> Self {
        Frame::Text(text.into())
    }
}

/// WebSocket close codes the hub sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// The purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is going down, or the peer went silent.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// No close code was present (never sent on the wire; used in logs).
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame (never sent on the wire; used in logs).
    pub const ABNORMAL: u16 = 1006;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A policy was violated (e.g. the client stopped reading and its queue filled up).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message was larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an internal error.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is overloaded; try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The server is restarting or leaving its cluster: reconnect (sent to the clients of a
    /// node that lost its cluster lease).
    pub const SERVICE_RESTART: u16 = 1012;

    /// A newer connection with the same client-chosen id took over (ws2api routes).
    pub const REPLACED: u16 = 4001;

    /// Whether an application may send this code in a close frame (1000, or 3000-4999).
    pub fn is_sendable(code: u16) -> bool {
        code == NORMAL || (3000..=4999).contains(&code)
    }
}

/// Longest close reason, in bytes, that fits a close frame (125 minus the 2-byte code).
pub const MAX_CLOSE_REASON: usize = 123;

/// A close frame's code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code.
    pub code: u16,
    /// A short human-readable reason (at most 123 bytes on the wire).
    pub reason: String,
}

impl Close {
    /// A close with a code and reason; the reason is cut to the 123 bytes a close frame holds.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON {
            let mut end = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Self { code, reason }
    }
}
