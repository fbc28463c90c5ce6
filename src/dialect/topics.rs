//! The topics dialect (fedmsg websocket gateway). A client subscribes with
//! `{"topic": "__topic_subscribe__", "body": "<topic>"}` (no acknowledgement; subscriptions add
//! up until disconnect). Every `*` is stripped and the rest is a prefix (exact match in strict
//! mode). Deliveries are `{"topic": "<full topic>", "body": <message>}`, once per message per
//! connection however many of its prefixes match. With client publishing enabled,
//! `{"topic": t, "body": b}` publishes `b` to `t`; otherwise other frames are ignored. A
//! subscription refused by a limit is answered with `{"topic": "__topic_subscribe__", "body":
//! {"error": "subscription limit reached: ..."}}`, in the shape of a delivery so that clients
//! parse it; fedmsg itself never refuses one.

use serde_json::{json, Value};

use crate::channel::{ChannelName, Publication};
use crate::frame::Frame;
use crate::operation::{ChannelOp, OpOutcome};

use super::{Action, ReplyPlan};

/// The subscribe marker fedmsg clients send as `topic`.
pub const SUBSCRIBE: &str = "__topic_subscribe__";

/// Topics codec for one connection.
pub struct Topics {
    strict: bool,
    client_publish: bool,
}

impl Topics {
    /// A codec; `strict` matches topics exactly, `client_publish` lets clients publish.
    pub fn new(strict: bool, client_publish: bool) -> Self {
        Self {
            strict,
            client_publish,
        }
    }

    /// Client frame -> action.
    pub fn decode(&mut self, frame: Frame) -> Action {
        let Frame::Text(text) = frame else {
            return Action::Ignore;
        };
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(&text) else {
            return Action::Ignore;
        };
        let Some(Value::String(topic)) = message.remove("topic") else {
            return Action::Ignore;
        };
        let op = if topic == SUBSCRIBE {
            let Some(Value::String(requested)) = message.remove("body") else {
                return Action::Ignore;
            };
            let stripped: String = requested.chars().filter(|c| *c != '*').collect();
            if self.strict {
                match ChannelName::parse(&stripped) {
                    Ok(channel) => ChannelOp::Subscribe(channel),
                    Err(_) => return Action::Ignore,
                }
            } else if stripped.len() > crate::channel::MAX_CHANNEL_LEN {
                return Action::Ignore;
            } else {
                ChannelOp::SubscribePrefix(stripped)
            }
        } else if self.client_publish {
            let (Ok(channel), Some(body)) = (ChannelName::parse(&topic), message.remove("body"))
            else {
                return Action::Ignore;
            };
            ChannelOp::Publish {
                channel,
                data: body,
                exclude_sender: false,
                require_subscribed: false,
            }
        } else {
            return Action::Ignore;
        };
        Action::Hub {
            ops: vec![op],
            reply: ReplyPlan::new(|outcomes| match outcomes.first() {
                Some(OpOutcome::LimitReached(limit)) => vec![Frame::text(
                    json!({
                        "topic": SUBSCRIBE,
                        "body": {"error": format!("subscription limit reached: {limit}")},
                    })
                    .to_string(),
                )],
                _ => Vec::new(),
            }),
        }
    }
}

/// Publication -> `{"topic", "body"}` (a broadcast has topic `""`).
pub fn encode(publication: &Publication) -> Frame {
    let topic = publication.channel.as_ref().map_or("", |c| c.as_str());
    Frame::text(json!({"topic": topic, "body": publication.data}).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::PublicationKind;

    fn ops(codec: &mut Topics, text: &str) -> Vec<ChannelOp> {
        match codec.decode(Frame::text(text)) {
            Action::Hub { ops, reply } => {
                assert!(
                    reply.render(vec![]).is_empty(),
                    "fedmsg sends no acknowledgement"
                );
                ops
            }
            Action::Ignore => vec![],
            _ => panic!("unexpected action"),
        }
    }

    #[test]
    fn subscribe_strips_stars_and_subscribes_a_prefix() {
        let mut codec = Topics::new(false, false);
        assert_eq!(
            ops(
                &mut codec,
                r#"{"topic": "__topic_subscribe__", "body": "org.fedoraproject.prod.*"}"#
            ),
            vec![ChannelOp::SubscribePrefix("org.fedoraproject.prod.".into())]
        );
        assert_eq!(
            ops(
                &mut codec,
                r#"{"topic": "__topic_subscribe__", "body": "*"}"#
            ),
            vec![ChannelOp::SubscribePrefix(String::new())]
        );
    }

    #[test]
    fn strict_mode_matches_exactly() {
        let mut codec = Topics::new(true, false);
        assert_eq!(
            ops(
                &mut codec,
                r#"{"topic": "__topic_subscribe__", "body": "a.b*"}"#
            ),
            vec![ChannelOp::Subscribe(ChannelName::parse("a.b").unwrap())]
        );
    }

    #[test]
    fn other_frames_are_ignored_unless_publishing_is_on() {
        let frame = r#"{"topic": "a.b", "body": {"x": 1}}"#;
        assert!(ops(&mut Topics::new(false, false), frame).is_empty());
        assert!(ops(&mut Topics::new(false, false), "not json").is_empty());
        assert_eq!(
            ops(&mut Topics::new(false, true), frame),
            vec![ChannelOp::Publish {
                channel: ChannelName::parse("a.b").unwrap(),
                data: json!({"x": 1}),
                exclude_sender: false,
                require_subscribed: false,
            }]
        );
    }

    #[test]
    fn deliveries_carry_the_full_topic() {
        let p = Publication::new(
            Some(ChannelName::parse("org.fedoraproject.prod.git.receive").unwrap()),
            json!({"commit": "abc"}),
            PublicationKind::Message,
        );
        let Frame::Text(text) = encode(&p) else {
            panic!()
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({"topic": "org.fedoraproject.prod.git.receive", "body": {"commit": "abc"}})
        );
    }

    #[test]
    fn a_subscription_refused_by_a_limit_gets_an_error_frame() {
        let Action::Hub { reply, .. } = Topics::new(false, false).decode(Frame::text(
            r#"{"topic": "__topic_subscribe__", "body": "a.*"}"#,
        )) else {
            panic!()
        };
        let frames = reply.render(vec![OpOutcome::LimitReached(
            crate::operation::SubscriptionLimit::Bytes(512),
        )]);
        let [Frame::Text(text)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["topic"], SUBSCRIBE);
        assert_eq!(
            value["body"]["error"],
            "subscription limit reached: the channel names and topic prefixes of a connection may total 512 bytes"
        );
    }
}
