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
//! params, -32000 server error (sender not subscribed). Unlike upstream, notifications (no `id`)
//! are executed without a reply, batches are answered as batches, and params of the wrong shape
//! are an error, never a dropped connection. Deliveries are the published object with `__type`
//! and `__ts` merged in; a published value that is not an object arrives as `{"data": value}`.

use serde_json::{json, Map, Value};

use crate::channel::{ChannelName, Frame, Publication, PublicationKind};
use crate::connection::ConnectionId;
use crate::hub::{ChannelOp, OpOutcome};

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

/// JSON-RPC codec for one connection (it needs the id for RocketWS's error messages).
pub struct JsonRpc {
    id: ConnectionId,
}

/// One call of a request or batch: answered already, or waiting for the hub.
enum Slot {
    /// The response (None for a notification).
    Ready(Option<Value>),
    /// Waiting for the outcome of one hub operation.
    Pending {
        /// The request id (None for a notification).
        id: Option<Value>,
    },
}

impl JsonRpc {
    /// A codec for connection `id`.
    pub fn new(id: ConnectionId) -> Self {
        Self { id }
    }

    /// Client frame -> action.
    pub fn decode(&mut self, frame: Frame) -> Action {
        let text = match &frame {
            Frame::Text(text) => text,
            Frame::Binary(_) => {
                return reply(error(
                    Value::Null,
                    INVALID_REQUEST,
                    "Invalid Request: JSON-RPC requests are text frames, not binary",
                ))
            }
        };
        let parsed: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(e) => {
                return reply(error(
                    Value::Null,
                    PARSE_ERROR,
                    &format!("Parse error: {e}"),
                ))
            }
        };
        let (calls, batch) = match parsed {
            Value::Array(items) if items.is_empty() => {
                return reply(error(
                    Value::Null,
                    INVALID_REQUEST,
                    "Invalid Request: empty batch",
                ))
            }
            Value::Array(items) => (items, true),
            single => (vec![single], false),
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

    /// One request object -> its immediate response or the hub operation it needs.
    fn call(&self, call: Value) -> Call {
        let Request {
            id,
            method,
            mut params,
        } = match Request::parse(call) {
            Ok(request) => request,
            Err(response) => return Call::Ready(response),
        };
        let fail =
            |code: i64, message: &str| Call::Ready(id.clone().map(|id| error(id, code, message)));
        let op = match method.as_str() {
            "heartbeat" => {
                return Call::Ready(id.map(|id| success(id, json!({"heartbeat": "ok"}))));
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
                        "Method not found: `{other}` (methods: subscribe, unsubscribe, send_data, heartbeat)"
                    ),
                )
            }
        };
        Call::Op { id, op }
    }
}

/// A JSON-RPC 2.0 request whose envelope is valid.
pub struct Request {
    /// The id; `None` for a notification (run it, never answer it).
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The params object (empty when absent).
    pub params: Map<String, Value>,
}

impl Request {
    /// Check the envelope of one request. `Err` holds the error response to send, or `None`
    /// where the spec says a notification gets no answer.
    pub fn parse(call: Value) -> Result<Self, Option<Value>> {
        let Value::Object(mut call) = call else {
            return Err(Some(error(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: a request must be a JSON object",
            )));
        };
        let id = match call.remove("id") {
            None => None,
            Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
            Some(_) => {
                return Err(Some(error(
                    Value::Null,
                    INVALID_REQUEST,
                    "Invalid Request: id must be a string, a number or null",
                )))
            }
        };
        // An invalid request is answered even without an id (with id null), per the spec.
        let invalid = |message: &str| {
            Err(Some(error(
                id.clone().unwrap_or(Value::Null),
                INVALID_REQUEST,
                message,
            )))
        };
        if call.get("jsonrpc") != Some(&Value::String("2.0".into())) {
            return invalid("Invalid Request: \"jsonrpc\" must be \"2.0\"");
        }
        let Some(Value::String(method)) = call.remove("method") else {
            return invalid("Invalid Request: \"method\" must be a string");
        };
        let params = match call.remove("params") {
            None => Map::new(),
            Some(Value::Object(params)) => params,
            Some(_) => {
                return Err(id.map(|id| {
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
    Ready(Option<Value>),
    Op { id: Option<Value>, op: ChannelOp },
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
    let responses: Vec<Value> = slots
        .into_iter()
        .filter_map(|slot| match slot {
            Slot::Ready(response) => response,
            Slot::Pending { id } => {
                let outcome = outcomes.next();
                id.map(|id| respond(id, outcome, conn))
            }
        })
        .collect();
    if batch {
        (!responses.is_empty()).then(|| Frame::text(Value::Array(responses).to_string()))
    } else {
        responses
            .into_iter()
            .next()
            .map(|response| Frame::text(response.to_string()))
    }
}

fn respond(id: Value, outcome: Option<OpOutcome>, conn: &ConnectionId) -> Value {
    match outcome {
        Some(OpOutcome::Subscribed) => success(id, json!("subscribed")),
        Some(OpOutcome::Unsubscribed) => success(id, json!("unsubscribed")),
        Some(OpOutcome::Published(delivery)) => {
            success(id, json!(format!("emitted: {}", delivery.reached)))
        }
        Some(OpOutcome::Denied(channel)) => error(
            id,
            SERVER_ERROR,
            &format!("access denied to channel `{channel}`"),
        ),
        Some(OpOutcome::LimitReached(limit)) => error(
            id,
            SERVER_ERROR,
            &format!("subscription limit reached: a connection may hold {limit} channels"),
        ),
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

/// A success response.
pub fn success(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "result": result, "id": id})
}

/// An error response.
pub fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id})
}

fn reply(response: Value) -> Action {
    Action::Reply(Frame::text(response.to_string()))
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
    use crate::hub::Delivery;

    fn codec() -> JsonRpc {
        JsonRpc::new(ConnectionId::parse("c1").unwrap())
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
}
