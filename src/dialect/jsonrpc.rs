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

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::channel::{ChannelName, Publication, PublicationKind};
use crate::connection::ConnectionId;
use crate::frame::Frame;
use crate::operation::{ChannelOp, OpOutcome, SubscriptionLimit};

use super::{Action, ReplyPlan};

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a valid JSON-RPC request object.
pub const INVALID_REQUEST: i64 = -32600;
/// Unknown method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Params of the wrong shape.
pub const INVALID_PARAMS: i64 = -32602;
/// The call was valid but could not be carried out.
pub const SERVER_ERROR: i64 = -32000;
/// The connection's channel names and prefixes would exceed `limits.max_subscription_bytes`.
pub const SUBSCRIPTION_BYTES_EXCEEDED: i64 = -32001;
/// The hub holds `limits.max_channels` distinct channels and prefixes already.
pub const CHANNEL_LIMIT_REACHED: i64 = -32002;

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

/// A request id exactly as the client wrote it: a string, a number of any size, or null.
pub type Id = Box<RawValue>;

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

/// A JSON-RPC body split into its calls, each still unparsed text.
pub enum Body<'a> {
    /// One request.
    Single(&'a RawValue),
    /// A batch (never empty).
    Batch(Vec<&'a RawValue>),
}

/// Split a body into its calls without building values for them. A batch longer than
/// `max_batch` (when given) is refused after reading `max_batch + 1` calls, however long it is.
/// `Err` holds the one error response to send (parse error, empty or too long batch).
pub fn split(text: &str, max_batch: Option<usize>) -> Result<Body<'_>, String> {
    let parse_error =
        |e: serde_json::Error| error(RawValue::NULL, PARSE_ERROR, &format!("Parse error: {e}"));
    if !text.trim_start().starts_with('[') {
        return serde_json::from_str::<&RawValue>(text)
            .map(Body::Single)
            .map_err(parse_error);
    }
    let too_long = Cell::new(false);
    let seed = BatchSeed {
        max: max_batch.unwrap_or(usize::MAX),
        too_long: &too_long,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let calls = seed.deserialize(&mut de).and_then(|calls| {
        de.end()?;
        Ok(calls)
    });
    match calls {
        Ok(calls) if calls.is_empty() => Err(error(
            RawValue::NULL,
            INVALID_REQUEST,
            "Invalid Request: empty batch",
        )),
        Ok(calls) => Ok(Body::Batch(calls)),
        Err(_) if too_long.get() => Err(error(
            RawValue::NULL,
            INVALID_REQUEST,
            &format!(
                "Invalid Request: a batch may hold at most {} requests",
                max_batch.unwrap_or(usize::MAX)
            ),
        )),
        Err(e) => Err(parse_error(e)),
    }
}

/// Reads a JSON array of raw values, stopping at the first value beyond `max`.
struct BatchSeed<'f> {
    max: usize,
    /// Set when the array had more than `max` values.
    too_long: &'f Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch of JSON-RPC requests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut calls = Vec::new();
        while let Some(call) = seq.next_element::<&'de RawValue>()? {
            if calls.len() == self.max {
                self.too_long.set(true);
                return Err(de::Error::custom("batch too long"));
            }
            calls.push(call);
        }
        Ok(calls)
    }
}

/// A JSON-RPC 2.0 request whose envelope is valid.
pub struct Request {
    /// The id as sent; `None` for a notification (run it, never answer it).
    pub id: Option<Id>,
    /// The method name.
    pub method: String,
    /// The params object (empty when absent).
    pub params: Map<String, Value>,
}

/// The members of a request object; a member that is present (even `null`) is `Some`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    jsonrpc: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    method: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    params: Option<Value>,
}

/// A member that is there, `null` included (serde would otherwise read `null` as absent).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Request {
    /// Check the envelope of one request. `Err` holds the error response to send, or `None`
    /// where the spec says a notification gets no answer.
    pub fn parse(call: &RawValue) -> Result<Self, Option<String>> {
        let invalid_request =
            |message: &str| Err(Some(error(RawValue::NULL, INVALID_REQUEST, message)));
        if !call.get().starts_with('{') {
            return invalid_request("Invalid Request: a request must be a JSON object");
        }
        let envelope: Envelope<'_> = match serde_json::from_str(call.get()) {
            Ok(envelope) => envelope,
            Err(e) => return invalid_request(&format!("Invalid Request: {e}")),
        };
        let id = match envelope.id {
            None => None,
            Some(id)
                if id.get().starts_with([
                    '"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'n',
                ]) =>
            {
                Some(id.to_owned())
            }
            Some(_) => {
                return invalid_request("Invalid Request: id must be a string, a number or null")
            }
        };
        // An invalid request is answered even without an id (with id null), per the spec.
        let invalid = |message: &str| {
            Err(Some(error(
                id.as_deref().unwrap_or(RawValue::NULL),
                INVALID_REQUEST,
                message,
            )))
        };
        if envelope.jsonrpc.as_ref().and_then(Value::as_str) != Some("2.0") {
            return invalid("Invalid Request: \"jsonrpc\" must be \"2.0\"");
        }
        let Some(Value::String(method)) = envelope.method else {
            return invalid("Invalid Request: \"method\" must be a string");
        };
        let params = match envelope.params {
            None => Map::new(),
            Some(Value::Object(params)) => params,
            Some(_) => {
                return Err(id.as_deref().map(|id| {
                    error(
                        id,
                        INVALID_PARAMS,
                        "Invalid params: params must be an object, e.g. {\"channel\": \"chat\"}",
                    )
                }))
            }
        };
        Ok(Self { id, method, params })
    }
}

/// What one call needs.
enum Call {
    Ready(Option<String>),
    Op { id: Option<Id>, op: ChannelOp },
}

/// `params.channel` as a valid channel name, or the -32602 message.
pub fn channel_param(params: &Map<String, Value>) -> Result<ChannelName, String> {
    match params.get("channel") {
        Some(Value::String(name)) => {
            ChannelName::parse(name).map_err(|e| format!("Invalid params: params.channel: {e}"))
        }
        _ => Err("Invalid params: params.channel must be a string".to_owned()),
    }
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

/// The responses of a batch as one JSON array (`[]` when there are none).
pub fn join_batch(responses: impl Iterator<Item = String>) -> String {
    let mut text = String::from("[");
    for response in responses {
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&response);
    }
    text.push(']');
    text
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

/// A success response, as text; the id is written exactly as it was received.
pub fn success(id: &RawValue, result: &Value) -> String {
    format!(r#"{{"id":{},"jsonrpc":"2.0","result":{result}}}"#, id.get())
}

/// An error response, as text; the id is written exactly as it was received.
pub fn error(id: &RawValue, code: i64, message: &str) -> String {
    format!(
        r#"{{"error":{{"code":{code},"message":{}}},"id":{},"jsonrpc":"2.0"}}"#,
        Value::from(message),
        id.get()
    )
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
    use crate::delivery::Delivery;

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
                dropped: 0,
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
