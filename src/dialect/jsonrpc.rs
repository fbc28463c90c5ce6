//! The JSON-RPC dialect (RocketWS): JSON-RPC 2.0 over text frames.
//!
//! | method | params | result |
//! |---|---|---|
//! | subscribe | {"channel": str} | "subscribed" |
//! | unsubscribe | {"channel": str} | "unsubscribed" |
//! | send_data | {"channel": str, "data": object} | "emitted: N" (N = other subscribers) |
//! | heartbeat | {} or absent | {"heartbeat": "ok"} |
//!
//! Errors: -32700 parse error, -32600 invalid request, -32601 method not found, -32602 invalid
//! params, -32000 server error (sender not subscribed, subscription count limit), -32001 the
//! connection's subscription byte budget is spent, -32002 the hub's channel limit is reached.
//! Unlike upstream, notifications (no `id`) are executed without a reply, batches are answered
//! as batches, and params of the wrong shape are an error, never a dropped connection.
//! Deliveries are the published object with `__type` and `__ts` merged in; a published value
//! that is not an object arrives as `{"data": value}`.
//!
//! Ids are kept as the bytes the client sent (`serde_json`'s `RawValue`), so a number of any
//! size or precision comes back exactly as written. Replies are written as text, never built as
//! `Value` trees, and a batch holds at most `limits.max_batch` calls (a longer one gets one
//! -32600 error), so a batch's reply is at most its request's bytes plus
//! `MAX_RESPONSE_OVERHEAD` (256) bytes per call in it.

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::channel::{Publication, PublicationKind};
use crate::connection::ConnectionId;
use crate::frame::Frame;
use crate::operation::{ChannelOp, OpOutcome, SubscriptionLimit};

use super::{Action, ReplyPlan};
use crate::jsonrpc_envelope::{
    channel_param, error, join_batch, split, success, Body, Id, Request, CHANNEL_LIMIT_REACHED,
    INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, SERVER_ERROR, SUBSCRIPTION_BYTES_EXCEEDED,
};

/// Default of `limits.max_batch`: calls one batch may hold.
pub const DEFAULT_MAX_BATCH: usize = 100;

/// The most bytes one response adds beyond what it repeats from its own request (the id as
/// sent, a channel name, the start of an unknown method's name): the envelope, the longest
/// fixed message, a connection id (at most 128 bytes) and a comma. The reply to a batch of `n`
/// calls is therefore at most `request bytes + n * MAX_RESPONSE_OVERHEAD`.
#[cfg(test)]
pub const MAX_RESPONSE_OVERHEAD: usize = 256;

/// How much of an unknown method's name the "method not found" error repeats.
const MAX_QUOTED_METHOD: usize = 64;

/// JSON-RPC codec for one connection (it needs the id for RocketWS's error messages).
pub struct JsonRpc {
    id: ConnectionId,
    /// Calls one batch may hold (`limits.max_batch`).
    max_batch: usize,
}

/// One call of a request or batch: answered already, or waiting for the hub.
enum Slot {
    /// The response text (None for a notification).
    Ready(Option<String>),
    /// Waiting for the outcome of one hub operation.
    Pending {
        /// The request id (None for a notification).
        id: Option<Id>,
    },
}

impl JsonRpc {
    /// A codec for connection `id` whose batches may hold at most `max_batch` calls.
    pub fn new(id: ConnectionId, max_batch: usize) -> Self {
        Self { id, max_batch }
    }

    /// Client frame -> action.
    pub fn decode(&mut self, frame: Frame) -> Action {
        let text = match &frame {
            Frame::Text(text) => text,
            Frame::Binary(_) => {
                return reply(error(
                    RawValue::NULL,
                    INVALID_REQUEST,
                    "Invalid Request: JSON-RPC requests are text frames, not binary",
                ))
            }
        };
        let (calls, batch) = match split(text, Some(self.max_batch)) {
            Ok(Body::Single(call)) => (vec![call], false),
            Ok(Body::Batch(calls)) => (calls, true),
            Err(response) => return reply(response),
        };
        let mut slots = Vec::with_capacity(calls.len());
        let mut ops = Vec::new();
        for call in calls {
            match self.call(call) {
                Call::Ready(response) => slots.push(Slot::Ready(response)),
                Call::Op { id, op } => {
                    ops.push(op);
                    slots.push(Slot::Pending { id });
                }
            }
        }
        if ops.is_empty() {
            return match render(slots, Vec::new(), batch, &self.id) {
                Some(frame) => Action::Reply(frame),
                None => Action::Ignore,
            };
        }
        let conn = self.id.clone();
        Action::Hub {
            ops,
            reply: ReplyPlan::new(move |outcomes| {
                render(slots, outcomes, batch, &conn).into_iter().collect()
            }),
        }
    }

    /// One request -> its immediate response or the hub operation it needs.
    fn call(&self, call: &RawValue) -> Call {
        let Request {
            id,
            method,
            mut params,
        } = match Request::parse(call) {
            Ok(request) => request,
            Err(response) => return Call::Ready(response),
        };
        let fail = |code: i64, message: &str| {
            Call::Ready(id.as_deref().map(|id| error(id, code, message)))
        };
        let op = match method.as_str() {
            "heartbeat" => {
                return Call::Ready(
                    id.as_deref()
                        .map(|id| success(id, &json!({"heartbeat": "ok"}))),
                );
            }
            "subscribe" | "unsubscribe" | "send_data" => {
                let channel = match channel_param(&params) {
                    Ok(channel) => channel,
                    Err(message) => return fail(INVALID_PARAMS, &message),
                };
                match method.as_str() {
                    "subscribe" => ChannelOp::Subscribe(channel),
                    "unsubscribe" => ChannelOp::Unsubscribe(channel),
                    _ => match params.remove("data") {
                        Some(data @ Value::Object(_)) => ChannelOp::Publish {
                            channel,
                            data,
                            exclude_sender: true,
                            require_subscribed: true,
                        },
                        _ => {
                            return fail(
                                INVALID_PARAMS,
                                "Invalid params: params.data must be a JSON object",
                            )
                        }
                    },
                }
            }
            other => {
                return fail(
                    METHOD_NOT_FOUND,
                    &format!(
                        "Method not found: `{}` (methods: subscribe, unsubscribe, send_data, heartbeat)",
                        truncate(other, MAX_QUOTED_METHOD)
                    ),
                )
            }
        };
        Call::Op { id, op }
    }
}

/// What one call needs.
enum Call {
    Ready(Option<String>),
    Op { id: Option<Id>, op: ChannelOp },
}

/// Fill the pending slots with the hub's outcomes and build the reply frame.
fn render(
    slots: Vec<Slot>,
    outcomes: Vec<OpOutcome>,
    batch: bool,
    conn: &ConnectionId,
) -> Option<Frame> {
    let mut outcomes = outcomes.into_iter();
    let responses = slots.into_iter().filter_map(|slot| match slot {
        Slot::Ready(response) => response,
        Slot::Pending { id } => {
            let outcome = outcomes.next();
            id.map(|id| respond(&id, outcome, conn))
        }
    });
    if batch {
        let text = join_batch(responses);
        (text.len() > 2).then(|| Frame::text(text))
    } else {
        responses.into_iter().next().map(Frame::text)
    }
}

fn respond(id: &RawValue, outcome: Option<OpOutcome>, conn: &ConnectionId) -> String {
    match outcome {
        Some(OpOutcome::Subscribed) => success(id, &json!("subscribed")),
        Some(OpOutcome::Unsubscribed) => success(id, &json!("unsubscribed")),
        Some(OpOutcome::Published(delivery)) => {
            success(id, &json!(format!("emitted: {}", delivery.reached)))
        }
        Some(OpOutcome::Denied(channel)) => error(
            id,
            SERVER_ERROR,
            &format!("access denied to channel `{channel}`"),
        ),
        Some(OpOutcome::LimitReached(limit)) => {
            let code = match limit {
                SubscriptionLimit::Count(_) => SERVER_ERROR,
                SubscriptionLimit::Bytes(_) => SUBSCRIPTION_BYTES_EXCEEDED,
                SubscriptionLimit::Channels(_) => CHANNEL_LIMIT_REACHED,
            };
            error(id, code, &format!("subscription limit reached: {limit}"))
        }
        Some(OpOutcome::NotSubscribed(channel)) => error(
            id,
            SERVER_ERROR,
            &format!("Client `{conn}` is not a subscriber of the channel `{channel}`"),
        ),
        Some(OpOutcome::UnknownConnection | OpOutcome::Replaced { .. }) | None => error(
            id,
            SERVER_ERROR,
            "Server error: this connection is not registered with the hub",
        ),
    }
}

fn reply(response: String) -> Action {
    Action::Reply(Frame::text(response))
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Publication -> delivery frame: the data object with `__type` and `__ts` merged in.
pub fn encode(publication: &Publication) -> Frame {
    let mut object = match &publication.data {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = Map::new();
            map.insert("data".into(), other.clone());
            map
        }
    };
    let kind = match publication.kind {
        PublicationKind::Message => "message",
        PublicationKind::Broadcast => "broadcast",
    };
    object.insert("__type".into(), kind.into());
    object.insert("__ts".into(), publication.ts.into());
    Frame::text(Value::Object(object).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use crate::delivery::Delivery;
    use crate::jsonrpc_envelope::PARSE_ERROR;

    fn codec() -> JsonRpc {
        JsonRpc::new(ConnectionId::parse("c1").unwrap(), DEFAULT_MAX_BATCH)
    }

    fn json_of(frame: &Frame) -> Value {
        match frame {
            Frame::Text(text) => serde_json::from_str(text).unwrap(),
            Frame::Binary(_) => panic!("expected text"),
        }
    }

    /// Decode `text`; if it needs the hub, answer with `outcomes`. Returns the reply, if any.
    fn exchange(text: &str, outcomes: Vec<OpOutcome>) -> (Vec<ChannelOp>, Option<Value>) {
        match codec().decode(Frame::text(text)) {
            Action::Reply(frame) => (vec![], Some(json_of(&frame))),
            Action::Ignore => (vec![], None),
            Action::Hub { ops, reply } => {
                let frame = reply.render(outcomes).pop();
                (ops, frame.as_ref().map(json_of))
            }
            _ => panic!("unexpected action"),
        }
    }

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name).unwrap()
    }

    #[test]
    fn subscribe_and_unsubscribe_results() {
        let (ops, reply) = exchange(
            r#"{"id": 0, "jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "chat"}}"#,
            vec![OpOutcome::Subscribed],
        );
        assert_eq!(ops, vec![ChannelOp::Subscribe(channel("chat"))]);
        assert_eq!(
            reply.unwrap(),
            json!({"jsonrpc": "2.0", "result": "subscribed", "id": 0})
        );
        let (_, reply) = exchange(
            r#"{"id": "x", "jsonrpc": "2.0", "method": "unsubscribe", "params": {"channel": "chat"}}"#,
            vec![OpOutcome::Unsubscribed],
        );
        assert_eq!(reply.unwrap()["result"], "unsubscribed");
    }

    #[test]
    fn send_data_excludes_sender_and_requires_membership() {
        let (ops, reply) = exchange(
            r#"{"id": 1, "jsonrpc": "2.0", "method": "send_data", "params": {"channel": "chat", "data": {"m": 1}}}"#,
            vec![OpOutcome::Published(Delivery {
                reached: 3,
                ..Delivery::default()
            })],
        );
        assert_eq!(
            ops,
            vec![ChannelOp::Publish {
                channel: channel("chat"),
                data: json!({"m": 1}),
                exclude_sender: true,
                require_subscribed: true
            }]
        );
        assert_eq!(reply.unwrap()["result"], "emitted: 3");
        let (_, reply) = exchange(
            r#"{"id": 1, "jsonrpc": "2.0", "method": "send_data", "params": {"channel": "chat", "data": {}}}"#,
            vec![OpOutcome::NotSubscribed(channel("chat"))],
        );
        let reply = reply.unwrap();
        assert_eq!(reply["error"]["code"], SERVER_ERROR);
        assert_eq!(
            reply["error"]["message"],
            "Client `c1` is not a subscriber of the channel `chat`"
        );
    }

    #[test]
    fn heartbeat_is_answered_at_once() {
        let (ops, reply) = exchange(
            r#"{"id": 7, "jsonrpc": "2.0", "method": "heartbeat"}"#,
            vec![],
        );
        assert!(ops.is_empty());
        assert_eq!(reply.unwrap()["result"], json!({"heartbeat": "ok"}));
    }

    #[test]
    fn error_codes() {
        let code = |text: &str| exchange(text, vec![]).1.unwrap()["error"]["code"].clone();
        assert_eq!(code("{not json"), PARSE_ERROR);
        assert_eq!(code("[]"), INVALID_REQUEST);
        assert_eq!(code("42"), INVALID_REQUEST);
        assert_eq!(code(r#"{"id": 1, "method": "heartbeat"}"#), INVALID_REQUEST);
        assert_eq!(
            code(r#"{"id": {}, "jsonrpc": "2.0", "method": "heartbeat"}"#),
            INVALID_REQUEST
        );
        assert_eq!(
            code(r#"{"id": 1, "jsonrpc": "2.0", "method": "nope"}"#),
            METHOD_NOT_FOUND
        );
        assert_eq!(
            code(r#"{"id": 1, "jsonrpc": "2.0", "method": "subscribe", "params": ["chat"]}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            code(r#"{"id": 1, "jsonrpc": "2.0", "method": "subscribe", "params": {"channel": 5}}"#),
            INVALID_PARAMS
        );
        assert_eq!(
            code(
                r#"{"id": 1, "jsonrpc": "2.0", "method": "send_data", "params": {"channel": "c", "data": 5}}"#
            ),
            INVALID_PARAMS
        );
        let parse = exchange("{", vec![]).1.unwrap();
        assert_eq!(parse["id"], Value::Null);
    }

    #[test]
    fn notifications_get_no_reply_but_run() {
        let (ops, reply) = exchange(
            r#"{"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "n"}}"#,
            vec![OpOutcome::Subscribed],
        );
        assert_eq!(ops.len(), 1);
        assert!(reply.is_none());
        let (_, reply) = exchange(r#"{"jsonrpc": "2.0", "method": "nope"}"#, vec![]);
        assert!(reply.is_none());
    }

    #[test]
    fn batches_are_answered_as_batches_in_order() {
        let (ops, reply) = exchange(
            r#"[
                {"id": 1, "jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "a"}},
                {"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "b"}},
                {"id": 2, "jsonrpc": "2.0", "method": "heartbeat"},
                {"id": 3, "jsonrpc": "2.0", "method": "bogus"},
                5
            ]"#,
            vec![OpOutcome::Subscribed, OpOutcome::Subscribed],
        );
        assert_eq!(ops.len(), 2);
        let reply = reply.unwrap();
        let items = reply.as_array().unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0]["id"], 1);
        assert_eq!(items[0]["result"], "subscribed");
        assert_eq!(items[1]["id"], 2);
        assert_eq!(items[2]["error"]["code"], METHOD_NOT_FOUND);
        assert_eq!(items[3]["error"]["code"], INVALID_REQUEST);
        let (_, reply) = exchange(r#"[{"jsonrpc": "2.0", "method": "heartbeat"}]"#, vec![]);
        assert!(reply.is_none(), "a batch of notifications gets no reply");
    }

    #[test]
    fn deliveries_carry_type_and_timestamp() {
        let p = Publication::new(
            Some(channel("chat")),
            json!({"message": "hola!"}),
            PublicationKind::Message,
        );
        let delivered = json_of(&encode(&p));
        assert_eq!(delivered["message"], "hola!");
        assert_eq!(delivered["__type"], "message");
        assert_eq!(delivered["__ts"], p.ts);
        let b = Publication::new(None, json!(5), PublicationKind::Broadcast);
        let delivered = json_of(&encode(&b));
        assert_eq!(delivered["data"], 5);
        assert_eq!(delivered["__type"], "broadcast");
    }

    /// The reply text of `decode(text)` after the hub answered with `outcomes`.
    fn reply_text(codec: &mut JsonRpc, text: &str, outcomes: Vec<OpOutcome>) -> Option<String> {
        let frame = match codec.decode(Frame::text(text)) {
            Action::Reply(frame) => Some(frame),
            Action::Ignore => None,
            Action::Hub { reply, .. } => reply.render(outcomes).pop(),
            _ => panic!("unexpected action"),
        };
        frame.map(|frame| match frame {
            Frame::Text(text) => text.to_string(),
            Frame::Binary(_) => panic!("expected text"),
        })
    }

    #[test]
    fn ids_come_back_exactly_as_sent() {
        for id in [
            "18446744073709551616",
            "-123456789012345678901234567890",
            "1.0",
            "-1.5e300",
            "0.1000000000000000055511151231257827",
            r#""\u00e9t\u00e9""#,
            r#""plain""#,
            "null",
        ] {
            let heartbeat = format!(r#"{{"id": {id}, "jsonrpc": "2.0", "method": "heartbeat"}}"#);
            let text = reply_text(&mut codec(), &heartbeat, vec![]).unwrap();
            assert!(text.contains(&format!(r#""id":{id}"#)), "{id}: {text}");
            let subscribe = format!(
                r#"[{{"id": {id}, "jsonrpc": "2.0", "method": "subscribe", "params": {{"channel": "c"}}}}]"#
            );
            let text = reply_text(&mut codec(), &subscribe, vec![OpOutcome::Subscribed]).unwrap();
            assert!(text.contains(&format!(r#""id":{id}"#)), "{id}: {text}");
            let wrong = format!(r#"{{"id": {id}, "jsonrpc": "1.0", "method": "heartbeat"}}"#);
            let text = reply_text(&mut codec(), &wrong, vec![]).unwrap();
            assert!(text.contains(&format!(r#""id":{id}"#)), "{id}: {text}");
        }
        // A member that is present but null is an id (answered), not a notification.
        let (_, reply) = exchange(
            r#"{"id": null, "jsonrpc": "2.0", "method": "heartbeat"}"#,
            vec![],
        );
        assert_eq!(reply.unwrap()["id"], Value::Null);
        for bad in ["true", "[1]", "{}"] {
            let text = format!(r#"{{"id": {bad}, "jsonrpc": "2.0", "method": "heartbeat"}}"#);
            let reply = exchange(&text, vec![]).1.unwrap();
            assert_eq!(reply["error"]["code"], INVALID_REQUEST, "{bad}");
        }
    }

    #[test]
    fn a_batch_longer_than_max_batch_gets_one_error() {
        let mut small = JsonRpc::new(ConnectionId::parse("c1").unwrap(), 3);
        let text = reply_text(&mut small, "[0,0,0,0]", vec![]).unwrap();
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["error"]["code"], INVALID_REQUEST, "{text}");
        assert_eq!(
            reply["error"]["message"],
            "Invalid Request: a batch may hold at most 3 requests"
        );
        assert_eq!(reply["id"], Value::Null);
        let text = reply_text(&mut small, "[0, 0, 0]", vec![]).unwrap();
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply.as_array().map(Vec::len), Some(3), "{text}");

        // A 1 MB batch of invalid requests costs one short error.
        let huge = format!("[{}0]", "0,".repeat(500_000));
        let text = reply_text(&mut codec(), &huge, vec![]).unwrap();
        assert!(text.len() < 200, "{} bytes", text.len());
        assert!(text.contains("at most 100 requests"), "{text}");
        // Broken JSON after the limit is not read: still the length error.
        let text = reply_text(&mut small, "[1,2,3,4,{", vec![]).unwrap();
        assert!(text.contains("at most 3"), "{text}");
        let text = reply_text(&mut small, "[1,2,{", vec![]).unwrap();
        assert!(text.contains(&PARSE_ERROR.to_string()), "{text}");
    }

    #[test]
    fn a_batch_reply_is_bounded_by_its_request() {
        // Every kind of call that is answered, each as short as it can be, with the longest
        // connection id (it appears in "not a subscriber" errors).
        let conn = ConnectionId::parse(&"x".repeat(128)).unwrap();
        let long = "\"".repeat(200);
        let long_json = Value::from(long.as_str()).to_string();
        let kinds: Vec<(String, Option<OpOutcome>)> = vec![
            ("0".into(), None),
            ("{}".into(), None),
            (r#"{"id":true}"#.into(), None),
            (r#"{"id":1}"#.into(), None),
            (r#"{"id":1,"jsonrpc":"2.0"}"#.into(), None),
            (r#"{"id":1,"id":2}"#.into(), None),
            (r#"{"id":1,"jsonrpc":"2.0","method":"x"}"#.into(), None),
            (format!(r#"{{"id":1,"jsonrpc":"2.0","method":{long_json}}}"#), None),
            (r#"{"id":1,"jsonrpc":"2.0","method":"subscribe","params":0}"#.into(), None),
            (r#"{"id":1,"jsonrpc":"2.0","method":"subscribe"}"#.into(), None),
            (
                format!(r#"{{"id":1,"jsonrpc":"2.0","method":"subscribe","params":{{"channel":{long_json}}}}}"#),
                Some(OpOutcome::LimitReached(SubscriptionLimit::Bytes(usize::MAX))),
            ),
            (
                r#"{"id":1,"jsonrpc":"2.0","method":"subscribe","params":{"channel":"c"}}"#.into(),
                Some(OpOutcome::LimitReached(SubscriptionLimit::Channels(usize::MAX))),
            ),
            (
                r#"{"id":1,"jsonrpc":"2.0","method":"send_data","params":{"channel":"c","data":{}}}"#.into(),
                Some(OpOutcome::NotSubscribed(channel("c"))),
            ),
            (
                format!(r#"{{"id":1,"jsonrpc":"2.0","method":"send_data","params":{{"channel":{long_json},"data":{{}}}}}}"#),
                Some(OpOutcome::NotSubscribed(channel(&long))),
            ),
            (
                r#"{"id":1,"jsonrpc":"2.0","method":"send_data","params":{"channel":"c"}}"#.into(),
                None,
            ),
            (
                r#"{"id":1,"jsonrpc":"2.0","method":"heartbeat"}"#.into(),
                None,
            ),
        ];
        for (call, outcome) in &kinds {
            let batch = format!("[{}]", vec![call.as_str(); DEFAULT_MAX_BATCH].join(","));
            let outcomes =
                vec![outcome.clone().unwrap_or(OpOutcome::Subscribed); DEFAULT_MAX_BATCH];
            let mut codec = JsonRpc::new(conn.clone(), DEFAULT_MAX_BATCH);
            let text = reply_text(&mut codec, &batch, outcomes).unwrap();
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                reply.as_array().map(Vec::len),
                Some(DEFAULT_MAX_BATCH),
                "{call}"
            );
            let bound = batch.len() + DEFAULT_MAX_BATCH * MAX_RESPONSE_OVERHEAD;
            assert!(
                text.len() <= bound,
                "{call}: a {}-byte batch got {} bytes (bound {bound}): {}",
                batch.len(),
                text.len(),
                &text[..text.len().min(400)]
            );
        }
    }
}
