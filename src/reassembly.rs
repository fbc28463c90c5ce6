//! Joining a client's fragmented messages (RFC 6455 §5.4): the size limit applies to the
//! joined message, text is checked as UTF-8 as it arrives (an invalid sequence fails at the
//! fragment that holds it, not at the end), and fragments out of order are protocol errors.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::frame::{close_code, Close, Frame};
use crate::wire::DataKind;

/// A message being received in fragments.
struct Partial {
    /// Text (validated as UTF-8) or binary.
    text: bool,
    /// The payload so far.
    buf: BytesMut,
    /// How many leading bytes of `buf` are known to be valid UTF-8.
    checked: usize,
}

/// One connection's message in progress.
pub(crate) struct Reassembly {
    partial: Option<Partial>,
    max_message_size: usize,
}

fn not_utf8() -> Close {
    Close::new(close_code::INVALID_PAYLOAD, "text is not valid UTF-8")
}

fn whole(text: bool, bytes: Bytes) -> Result<Frame, Close> {
    if text {
        ByteString::try_from(bytes)
            .map(Frame::Text)
            .map_err(|_| not_utf8())
    } else {
        Ok(Frame::Binary(bytes))
    }
}

impl Reassembly {
    /// Nothing in progress; joined messages may be at most `max_message_size` bytes.
    pub(crate) fn new(max_message_size: usize) -> Self {
        Self {
            partial: None,
            max_message_size,
        }
    }

    /// Forget the message in progress (the connection is closing).
    pub(crate) fn clear(&mut self) {
        self.partial = None;
    }

    /// Take one data frame: the whole message once its last frame arrived, `None` while it
    /// is incomplete, or the close the client earned.
    pub(crate) fn push(
        &mut self,
        kind: DataKind,
        fin: bool,
        data: Bytes,
    ) -> Result<Option<Frame>, Close> {
        let first = match kind {
            DataKind::Text => Some(true),
            DataKind::Binary => Some(false),
            DataKind::Continuation => None,
        };
        let partial = match (first, self.partial.as_mut()) {
            // An unfragmented message: no copy.
            (Some(text), None) if fin => return whole(text, data).map(Some),
            (Some(text), None) => self.partial.insert(Partial {
                text,
                buf: BytesMut::new(),
                checked: 0,
            }),
            (None, Some(partial)) => partial,
            (Some(_), Some(_)) => {
                return Err(Close::new(
                    close_code::PROTOCOL_ERROR,
                    "new message before the fragmented one ended",
                ))
            }
            (None, None) => {
                return Err(Close::new(
                    close_code::PROTOCOL_ERROR,
                    "unexpected continuation frame",
                ))
            }
        };
        if partial.buf.len() + data.len() > self.max_message_size {
            return Err(Close::new(close_code::MESSAGE_TOO_BIG, "message too big"));
        }
        partial.buf.extend_from_slice(&data);
        if partial.text && !utf8_prefix_ok(partial, fin) {
            return Err(not_utf8());
        }
        if !fin {
            return Ok(None);
        }
        let partial = self.partial.take().expect("a message in progress");
        whole(partial.text, partial.buf.freeze()).map(Some)
    }
}

/// Check the UTF-8 of a text message being joined, as far as it has arrived. A sequence cut at
/// the end of a fragment is fine unless this is the last fragment; an invalid one fails at once.
fn utf8_prefix_ok(partial: &mut Partial, last: bool) -> bool {
    match std::str::from_utf8(&partial.buf[partial.checked..]) {
        Ok(_) => {
            partial.checked = partial.buf.len();
            true
        }
        Err(e) if e.error_len().is_none() && !last => {
            partial.checked += e.valid_up_to();
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    #[test]
    fn fragments_are_joined_and_utf8_may_be_split_between_them() {
        let mut r = Reassembly::new(100);
        assert_eq!(r.push(DataKind::Text, false, b(b"ab\xc3")), Ok(None));
        assert_eq!(r.push(DataKind::Continuation, false, b(b"\xa9")), Ok(None));
        assert_eq!(
            r.push(DataKind::Continuation, true, b(b"!")),
            Ok(Some(Frame::text("abé!")))
        );
        assert_eq!(
            r.push(DataKind::Binary, true, b(&[0xff])),
            Ok(Some(Frame::Binary(b(&[0xff]))))
        );
    }

    #[test]
    fn bad_text_size_and_order_get_their_close_codes() {
        let code = |r: Result<Option<Frame>, Close>| r.unwrap_err().code;
        let mut r = Reassembly::new(100);
        r.push(DataKind::Text, false, b(b"fine")).unwrap();
        assert_eq!(
            code(r.push(DataKind::Continuation, false, b(&[0xc3, 0x28]))),
            1007
        );
        let mut r = Reassembly::new(100);
        assert_eq!(code(r.push(DataKind::Text, true, b(&[0xff]))), 1007);
        // A sequence cut at the very end of the message is invalid.
        r.push(DataKind::Text, false, b(b"x")).unwrap();
        assert_eq!(code(r.push(DataKind::Continuation, true, b(&[0xc3]))), 1007);
        let mut r = Reassembly::new(10);
        r.push(DataKind::Binary, false, b(&[0; 6])).unwrap();
        assert_eq!(code(r.push(DataKind::Continuation, true, b(&[0; 5]))), 1009);
        let mut r = Reassembly::new(10);
        assert_eq!(code(r.push(DataKind::Continuation, true, b(b"x"))), 1002);
        r.push(DataKind::Text, false, b(b"x")).unwrap();
        assert_eq!(code(r.push(DataKind::Binary, true, b(b"y"))), 1002);
    }
}
