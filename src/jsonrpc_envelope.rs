//! The JSON-RPC 2.0 envelope, shared by the client dialect (`dialect::jsonrpc`) and RocketWS's
//! backend port (`push_rpc`): error codes, splitting a body into its calls without building
//! values (batches bounded while they are read), the request shape, and responses written as
//! text with the id exactly as it was sent.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::channel::ChannelName;

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

/// A request id exactly as the client wrote it: a string, a number of any size, or null.
pub type Id = Box<RawValue>;

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

/// `params.channel` as a valid channel name, or the -32602 message.
pub fn channel_param(params: &Map<String, Value>) -> Result<ChannelName, String> {
    match params.get("channel") {
        Some(Value::String(name)) => {
            ChannelName::parse(name).map_err(|e| format!("Invalid params: params.channel: {e}"))
        }
        _ => Err("Invalid params: params.channel must be a string".to_owned()),
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
