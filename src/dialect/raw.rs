//! The raw dialect: every client frame goes to the backend unchanged (the demo echo, SocketDock,
//! ws2api). A publication reaches a raw client as a text frame: a JSON string value as its text,
//! any other value as JSON.

use crate::channel::Publication;
use crate::frame::Frame;

use super::Action;

/// Raw relay; it keeps no per-connection state.
pub struct Raw;

impl Raw {
    /// Every frame, empty ones included, is relayed as it is.
    pub fn decode(&mut self, frame: Frame) -> Action {
        Action::Relay(frame)
    }
}

/// Publication -> text frame.
pub fn encode(publication: &Publication) -> Frame {
    match &publication.data {
        serde_json::Value::String(text) => Frame::text(text.as_str()),
        other => Frame::text(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::PublicationKind;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn frames_are_relayed_unchanged() {
        let frame = Frame::Binary(Bytes::from_static(&[0, 159, 255]));
        match Raw.decode(frame.clone()) {
            Action::Relay(relayed) => assert_eq!(relayed, frame),
            _ => panic!("expected relay"),
        }
    }

    #[test]
    fn publications_become_text() {
        let p = Publication::new(None, json!("hello"), PublicationKind::Broadcast);
        assert_eq!(encode(&p), Frame::text("hello"));
        let p = Publication::new(None, json!({"a": [1]}), PublicationKind::Broadcast);
        assert_eq!(encode(&p), Frame::text(r#"{"a":[1]}"#));
    }
}
