//! The WebSocket wire format around actix-http's frame parser: client frames decoded into
//! [`Incoming`] values with the size limit enforced from the frame header (before any payload
//! is buffered), and the headers of the frames the server sends (their payloads are written as
//! they are, shared between sockets, never copied per connection).

use actix_http::ws::{OpCode, Parser, ProtocolError};
use bytes::{Bytes, BytesMut};

use crate::frame::{close_code, Close};

/// What a data frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataKind {
    /// The first (or only) frame of a text message.
    Text,
    /// The first (or only) frame of a binary message.
    Binary,
    /// A later fragment of the message being received.
    Continuation,
}

/// One frame from a client, unmasked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A data frame; `fin` marks the last frame of a message.
    Data {
        /// Text, binary or a continuation.
        kind: DataKind,
        /// Whether the message ends with this frame.
        fin: bool,
        /// RSV1 on the first frame of a message: the message is compressed
        /// (permessage-deflate, only on a connection that negotiated it).
        compressed: bool,
        /// The frame's payload.
        payload: Bytes,
    },
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (an answer to the server's ping, or unsolicited).
    Pong,
    /// A close frame: its code (None for an empty close) and UTF-8 reason.
    Close(Option<(u16, String)>),
}

/// Opcodes of the frames the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    /// A text message.
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// A close frame.
    Close = 8,
    /// A ping.
    Ping = 9,
    /// A pong.
    Pong = 10,
}

/// The length a frame's header announces, once enough of the header has arrived to know it.
fn announced_length(src: &[u8]) -> Option<u64> {
    let short = *src.get(1)? & 0x7f;
    match short {
        126 => src
            .get(2..4)
            .map(|b| u64::from(u16::from_be_bytes([b[0], b[1]]))),
        127 => src
            .get(2..10)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes"))),
        n => Some(u64::from(n)),
    }
}

/// RSV1 in a frame's first byte: permessage-deflate's "compressed" bit.
const RSV1: u8 = 0x40;

/// Take the next whole frame off `src`, if it has arrived. A header announcing more than
/// `max_payload` bytes is refused (1009) as soon as its length field is complete, so no client
/// can make the server buffer more than one frame of at most `max_payload` bytes. RSV1 is
/// legal only when `deflate` (the connection negotiated permessage-deflate), and then only on
/// the first frame of a data message (RFC 7692 §6).
pub(crate) fn decode(
    src: &mut BytesMut,
    max_payload: usize,
    deflate: bool,
) -> Result<Option<Incoming>, Close> {
    if let Some(length) = announced_length(src) {
        if length > max_payload as u64 {
            return Err(Close::new(close_code::MESSAGE_TOO_BIG, "message too big"));
        }
    }
    // actix-http's parser refuses every reserved bit: RSV1 is taken off before it parses (and
    // put back while the frame is incomplete).
    let compressed = deflate && src.first().is_some_and(|b| b & RSV1 != 0);
    if compressed {
        src[0] &= !RSV1;
    }
    let parsed = Parser::parse(src, true, max_payload).map_err(refusal)?;
    let Some((fin, opcode, payload)) = parsed else {
        if compressed {
            src[0] |= RSV1;
        }
        return Ok(None);
    };
    if compressed && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(protocol_error(
            "RSV1 set on a control or continuation frame",
        ));
    }
    let payload = payload.map_or_else(Bytes::new, BytesMut::freeze);
    let control = matches!(opcode, OpCode::Ping | OpCode::Pong | OpCode::Close);
    if control && !fin {
        return Err(protocol_error("fragmented control frame"));
    }
    let data = |kind| Incoming::Data {
        kind,
        fin,
        compressed,
        payload: payload.clone(),
    };
    Ok(Some(match opcode {
        OpCode::Text => data(DataKind::Text),
        OpCode::Binary => data(DataKind::Binary),
        OpCode::Continue => data(DataKind::Continuation),
        OpCode::Ping => Incoming::Ping(payload),
        OpCode::Pong => Incoming::Pong,
        OpCode::Close => Incoming::Close(close_payload(&payload)?),
        OpCode::Bad => return Err(protocol_error("invalid opcode")),
    }))
}

/// A close frame's code and reason, validated (RFC 6455 §5.5.1, §7.4).
fn close_payload(payload: &[u8]) -> Result<Option<(u16, String)>, Close> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol_error("close frame with a one-byte payload")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let reason = std::str::from_utf8(reason).map_err(|_| {
                Close::new(
                    close_code::INVALID_PAYLOAD,
                    "close reason is not valid UTF-8",
                )
            })?;
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(protocol_error(format!("invalid close code {code}")));
            }
            Ok(Some((code, reason.to_owned())))
        }
    }
}

fn protocol_error(reason: impl Into<String>) -> Close {
    Close::new(close_code::PROTOCOL_ERROR, reason)
}

/// The close a parser error calls for.
fn refusal(err: ProtocolError) -> Close {
    match err {
        ProtocolError::Overflow => Close::new(close_code::MESSAGE_TOO_BIG, "message too big"),
        ProtocolError::UnmaskedFrame => protocol_error("unmasked frame from a client"),
        ProtocolError::InvalidOpcode(op) => protocol_error(format!("invalid opcode {op}")),
        ProtocolError::InvalidLength(_) => protocol_error("control frame longer than 125 bytes"),
        // actix-http reports reserved bits as an I/O error of kind InvalidData.
        ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            protocol_error("reserved bits set without a negotiated extension")
        }
        other => protocol_error(format!("protocol error: {other}")),
    }
}

/// The header of an unfragmented, unmasked server frame (2 to 10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a frame with this opcode and payload length.
    pub(crate) fn new(opcode: Opcode, payload_len: usize) -> Self {
        Self::with_rsv1(opcode, payload_len, false)
    }

    /// The header of a data frame whose payload is compressed (permessage-deflate).
    pub(crate) fn compressed(opcode: Opcode, payload_len: usize) -> Self {
        Self::with_rsv1(opcode, payload_len, true)
    }

    fn with_rsv1(opcode: Opcode, payload_len: usize, rsv1: bool) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | if rsv1 { RSV1 } else { 0 } | opcode as u8;
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    /// The header's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The payload of a close frame: the code, then the reason.
pub(crate) fn close_frame_payload(close: &Close) -> Bytes {
    let mut payload = Vec::with_capacity(2 + close.reason.len());
    payload.extend_from_slice(&close.code.to_be_bytes());
    payload.extend_from_slice(close.reason.as_bytes());
    Bytes::from(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame (zero mask key, so the payload is sent as it is).
    fn client_frame(first: u8, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[first]);
        match payload.len() {
            n if n < 126 => out.extend_from_slice(&[0x80 | n as u8]),
            n if n <= 0xffff => {
                out.extend_from_slice(&[0x80 | 126]);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.extend_from_slice(&[0x80 | 127]);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_header_announcing_too_much_is_refused_before_its_payload() {
        // 2^62 bytes announced, nothing of the payload sent.
        let mut src = BytesMut::from(&[0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        let err = decode(&mut src, 65_536, false).unwrap_err();
        assert_eq!(err.code, close_code::MESSAGE_TOO_BIG);
        // One byte over the limit, 16-bit length, only the header so far.
        let mut src = BytesMut::from(&[0x82, 0xfe, 0x01, 0x01][..]);
        assert_eq!(decode(&mut src, 256, false).unwrap_err().code, 1009);
        // Exactly the limit is fine, and waits for the payload.
        let mut src = BytesMut::from(&[0x82, 0xfe, 0x01, 0x00, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut src, 256, false), Ok(None));
    }

    #[test]
    fn frames_are_decoded_whole() {
        let mut src = client_frame(0x81, b"hello");
        src.extend_from_slice(&client_frame(0x89, b"p"));
        let first = decode(&mut src, 1024, false).unwrap().unwrap();
        assert_eq!(
            first,
            Incoming::Data {
                kind: DataKind::Text,
                fin: true,
                compressed: false,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(
            decode(&mut src, 1024, false).unwrap().unwrap(),
            Incoming::Ping(Bytes::from_static(b"p"))
        );
        assert_eq!(decode(&mut src, 1024, false), Ok(None));
        // Half a frame waits.
        let mut half = client_frame(0x82, &[7; 300]);
        half.truncate(100);
        assert_eq!(decode(&mut half, 1024, false), Ok(None));
    }

    #[test]
    fn protocol_errors_get_their_close_codes() {
        let code = |mut src: BytesMut| decode(&mut src, 1024, false).unwrap_err().code;
        // RSV1 set.
        assert_eq!(code(client_frame(0xc1, b"x")), 1002);
        // Unmasked.
        assert_eq!(code(BytesMut::from(&[0x81, 0x01, b'x'][..])), 1002);
        // Fragmented ping.
        assert_eq!(code(client_frame(0x09, b"")), 1002);
        // Close codes: invalid, one-byte payload, bad UTF-8 reason.
        assert_eq!(code(client_frame(0x88, &999u16.to_be_bytes())), 1002);
        assert_eq!(code(client_frame(0x88, &[3])), 1002);
        assert_eq!(code(client_frame(0x88, &[0x03, 0xe8, 0xff])), 1007);
        let mut ok = client_frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e']);
        assert_eq!(
            decode(&mut ok, 1024, false).unwrap().unwrap(),
            Incoming::Close(Some((4000, "bye".into())))
        );
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_where_negotiated() {
        let code = |mut src: BytesMut| decode(&mut src, 1024, true).unwrap_err().code;
        // First frame of a text message, in two reads: the bit survives the wait.
        let whole = client_frame(0xc1, b"xyz");
        let mut src = BytesMut::from(&whole[..4]);
        assert_eq!(decode(&mut src, 1024, true), Ok(None));
        src.extend_from_slice(&whole[4..]);
        assert_eq!(
            decode(&mut src, 1024, true).unwrap().unwrap(),
            Incoming::Data {
                kind: DataKind::Text,
                fin: true,
                compressed: true,
                payload: Bytes::from_static(b"xyz")
            }
        );
        // On a continuation or a control frame it is a protocol error; so are RSV2 and RSV3.
        assert_eq!(code(client_frame(0xc0, b"x")), 1002);
        assert_eq!(code(client_frame(0xc9, b"")), 1002);
        assert_eq!(code(client_frame(0xa2, b"x")), 1002);
        assert_eq!(Header::compressed(Opcode::Binary, 3).as_bytes(), &[0xc2, 3]);
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(Header::new(Opcode::Text, 5).as_bytes(), &[0x81, 5]);
        assert_eq!(
            Header::new(Opcode::Binary, 300).as_bytes(),
            &[0x82, 126, 1, 44]
        );
        assert_eq!(
            Header::new(Opcode::Binary, 70_000).as_bytes(),
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        let close = close_frame_payload(&Close::new(1000, "ok"));
        assert_eq!(&close[..], &[0x03, 0xe8, b'o', b'k']);
    }
}
