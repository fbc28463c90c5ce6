//! The loopback backend: every frame a client relays comes straight back to it, text as text
//! and binary as binary. No I/O: demos and conformance runs need no application.

use crate::frame::Frame;

/// The loopback's answer to a relayed frame: the frame itself.
pub fn answer(frame: Frame) -> Frame {
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_unchanged_and_of_the_same_kind() {
        assert_eq!(answer(Frame::text("ping")), Frame::text("ping"));
        let binary = Frame::Binary(bytes::Bytes::from_static(&[0, 159, 146, 150]));
        assert_eq!(answer(binary.clone()), binary);
    }
}
