//! The groups dialect (AWX channels). `{"groups": {"jobs": ["status_changed"], "job_events":
//! [42]}}` replaces the connection's whole subscription set with the groups `jobs-status_changed`
//! and `job_events-42`; `{"groups": {}}` leaves all. The reply is `{"groups_current",
//! "groups_left", "groups_joined"}`. A value that is not a list is refused with
//! `{"error": "access denied to channel"}` and the message is ignored, and so is an item that is
//! neither a string nor a number (AWX's items are names and resource ids; an object, a list,
//! `null` or a boolean would otherwise become a channel such as `jobs-null`). With the xrftoken
//! rule on,
//! every message must carry `"xrftoken"` equal to the named cookie of the handshake. Deliveries
//! are the published JSON as it is.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::channel::{ChannelName, Publication};
use crate::frame::Frame;
use crate::operation::{ChannelOp, OpOutcome, SubscriptionLimit};

use super::{Action, ReplyPlan};

/// AWX's refusal, sent for a bad token or a malformed `groups` value.
const ACCESS_DENIED: &str = "access denied to channel";

/// Groups codec for one connection.
pub struct Groups {
    /// The token every message must carry, when the xrftoken rule is on.
    xrf_token: Option<String>,
}

impl Groups {
    /// A codec; `xrf_token` is the handshake cookie's value when the rule is on (a missing
    /// cookie makes an empty token that no message can match).
    pub fn new(xrf_token: Option<String>) -> Self {
        Self { xrf_token }
    }

    /// Client frame -> action.
    pub fn decode(&mut self, frame: Frame) -> Action {
        let Frame::Text(text) = frame else {
            return denied();
        };
        let Ok(Value::Object(message)) = serde_json::from_str::<Value>(&text) else {
            return denied();
        };
        if let Some(expected) = &self.xrf_token {
            let given = message.get("xrftoken").and_then(Value::as_str);
            if expected.is_empty() || given != Some(expected.as_str()) {
                return denied();
            }
        }
        let Some(groups) = message.get("groups") else {
            return Action::Ignore;
        };
        let Value::Object(groups) = groups else {
            return denied();
        };
        let mut wanted = BTreeSet::new();
        // Which key and item each channel came from, for per-resource denial messages.
        let mut origin = std::collections::HashMap::new();
        for (key, items) in groups {
            let Value::Array(items) = items else {
                return denied();
            };
            for item in items {
                let item = match item {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return denied(),
                };
                match ChannelName::parse(&format!("{key}-{item}")) {
                    Ok(channel) => {
                        origin.insert(channel.clone(), (key.clone(), item));
                        wanted.insert(channel);
                    }
                    Err(_) => return denied(),
                }
            }
        }
        Action::Hub {
            ops: vec![ChannelOp::Replace(wanted)],
            reply: ReplyPlan::new(move |outcomes| match outcomes.into_iter().next() {
                Some(OpOutcome::Replaced {
                    current,
                    left,
                    joined,
                    denied,
                }) => {
                    // AWX: one error frame per refused resource; the rest of the request applies.
                    let mut frames: Vec<Frame> = denied
                        .iter()
                        .filter_map(|channel| origin.get(channel))
                        .map(|(key, item)| {
                            let message = format!("{ACCESS_DENIED} {key} for resource id {item}");
                            Frame::text(json!({ "error": message }).to_string())
                        })
                        .collect();
                    frames.push(Frame::text(
                        json!({
                            "groups_current": current,
                            "groups_left": left,
                            "groups_joined": joined,
                        })
                        .to_string(),
                    ));
                    frames
                }
                Some(OpOutcome::LimitReached(limit)) => {
                    let message = match limit {
                        SubscriptionLimit::Count(n) => format!("too many groups: at most {n}"),
                        other => format!("too many groups: {other}"),
                    };
                    vec![Frame::text(json!({ "error": message }).to_string())]
                }
                _ => vec![Frame::text(json!({"error": ACCESS_DENIED}).to_string())],
            }),
        }
    }
}

fn denied() -> Action {
    Action::Reply(Frame::text(json!({"error": ACCESS_DENIED}).to_string()))
}

/// Publication -> the published JSON itself.
pub fn encode(publication: &Publication) -> Frame {
    Frame::text(publication.data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    fn decode(codec: &mut Groups, text: &str) -> Result<Vec<ChannelOp>, Value> {
        match codec.decode(Frame::text(text)) {
            Action::Hub { ops, .. } => Ok(ops),
            Action::Reply(Frame::Text(reply)) => Err(serde_json::from_str(&reply).unwrap()),
            Action::Ignore => Ok(vec![]),
            _ => panic!("unexpected action"),
        }
    }

    #[test]
    fn groups_become_key_item_channels_replacing_the_set() {
        let ops = decode(
            &mut Groups::new(None),
            r#"{"groups": {"jobs": ["status_changed", "summary"], "job_events": [42]}}"#,
        )
        .unwrap();
        let wanted: BTreeSet<_> = ["jobs-status_changed", "jobs-summary", "job_events-42"]
            .into_iter()
            .map(channel)
            .collect();
        assert_eq!(ops, vec![ChannelOp::Replace(wanted)]);
        assert_eq!(
            decode(&mut Groups::new(None), r#"{"groups": {}}"#).unwrap(),
            vec![ChannelOp::Replace(BTreeSet::new())]
        );
    }

    #[test]
    fn the_reply_lists_current_left_and_joined() {
        let Action::Hub { reply, .. } =
            Groups::new(None).decode(Frame::text(r#"{"groups": {"a": [1]}}"#))
        else {
            panic!()
        };
        let mut frames = reply.render(vec![OpOutcome::Replaced {
            current: vec![channel("a-1")],
            left: vec![channel("b-2")],
            joined: vec![channel("a-1")],
            denied: vec![],
        }]);
        assert_eq!(frames.len(), 1);
        let Some(Frame::Text(text)) = frames.pop() else {
            panic!()
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({"groups_current": ["a-1"], "groups_left": ["b-2"], "groups_joined": ["a-1"]})
        );
    }

    #[test]
    fn refused_resources_get_their_own_error_frame() {
        let Action::Hub { reply, .. } =
            Groups::new(None).decode(Frame::text(r#"{"groups": {"job_events": [42, 43]}}"#))
        else {
            panic!()
        };
        let frames = reply.render(vec![OpOutcome::Replaced {
            current: vec![channel("job_events-43")],
            left: vec![],
            joined: vec![channel("job_events-43")],
            denied: vec![channel("job_events-42")],
        }]);
        let texts: Vec<Value> = frames
            .iter()
            .map(|f| match f {
                Frame::Text(t) => serde_json::from_str(t).unwrap(),
                Frame::Binary(_) => panic!(),
            })
            .collect();
        assert_eq!(
            texts[0],
            json!({"error": "access denied to channel job_events for resource id 42"})
        );
        assert_eq!(texts[1]["groups_current"], json!(["job_events-43"]));
    }

    #[test]
    fn non_lists_and_bad_tokens_are_denied() {
        let denied = json!({"error": "access denied to channel"});
        assert_eq!(
            decode(
                &mut Groups::new(None),
                r#"{"groups": {"jobs": "status_changed"}}"#
            ),
            Err(denied.clone())
        );
        let mut guarded = Groups::new(Some("t0k".into()));
        assert_eq!(
            decode(&mut guarded, r#"{"groups": {}}"#),
            Err(denied.clone())
        );
        assert_eq!(
            decode(&mut guarded, r#"{"groups": {}, "xrftoken": "nope"}"#),
            Err(denied)
        );
        assert!(decode(&mut guarded, r#"{"groups": {}, "xrftoken": "t0k"}"#).is_ok());
    }

    #[test]
    fn items_that_are_not_strings_or_numbers_are_denied() {
        let denied = json!({"error": "access denied to channel"});
        for item in [r#"{"a": [1, 2]}"#, "[1]", "null", "true", "false"] {
            let text = format!(r#"{{"groups": {{"g": ["ok", {item}]}}}}"#);
            assert_eq!(
                decode(&mut Groups::new(None), &text),
                Err(denied.clone()),
                "{item}"
            );
        }
        let ops = decode(
            &mut Groups::new(None),
            r#"{"groups": {"g": ["s", 42, -1.5]}}"#,
        );
        let wanted: BTreeSet<_> = ["g-s", "g-42", "g--1.5"].into_iter().map(channel).collect();
        assert_eq!(ops, Ok(vec![ChannelOp::Replace(wanted)]));
    }

    #[test]
    fn limits_are_error_frames_naming_the_limit() {
        let message = |limit| {
            let Action::Hub { reply, .. } =
                Groups::new(None).decode(Frame::text(r#"{"groups": {"a": [1]}}"#))
            else {
                panic!()
            };
            match reply
                .render(vec![OpOutcome::LimitReached(limit)])
                .as_slice()
            {
                [Frame::Text(text)] => serde_json::from_str::<Value>(text).unwrap()["error"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            message(SubscriptionLimit::Count(5)),
            "too many groups: at most 5"
        );
        assert_eq!(
            message(SubscriptionLimit::Bytes(512)),
            "too many groups: the channel names and topic prefixes of a connection may total 512 bytes"
        );
        assert_eq!(
            message(SubscriptionLimit::Channels(7)),
            "too many groups: the server holds its maximum of 7 distinct channels and topic prefixes"
        );
    }
}
