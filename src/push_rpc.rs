//! RocketWS's backend port: `POST /` on the push listener with a JSON-RPC 2.0 body (one
//! request or a batch). Like the rest of the push API it only translates requests into hub
//! messages. Unlike RocketWS it answers with JSON (not Python `repr`), reports errors as
//! JSON-RPC errors, and `notify_all` reaches each connection once. Ids are echoed exactly as
//! sent (a number of any size included).
//!
//! | method | params | result |
//! |---|---|---|
//! | emit | {"channel": str, "data": object} | "emitted: N" |
//! | notify_all | {"data": object} | "notified: N" (every connection, once) |
//! | total_subscribers | {"channel": str or null} | N |
//! | available_channels | {} | [channel, ...] |
//! | ping | {} | {"ping": "ok"} |

use actix_web::{web, HttpResponse};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::channel::ChannelName;
use crate::hub::HubHandle;
use crate::jsonrpc_envelope::{
    channel_param, error, join_batch, split, success, Body, Request, INVALID_PARAMS,
    METHOD_NOT_FOUND, PARSE_ERROR,
};
use crate::push::guard::{read_body, ApiError, Authorized, PushSettings};

/// `POST /`: run the request or batch; 200 with the response(s), 204 when all were
/// notifications.
pub async fn handle(
    _: Authorized,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, &settings).await?;
    // Calls stay raw text until each is parsed, so ids are echoed exactly as sent.
    let calls = match std::str::from_utf8(&body) {
        Ok(text) => split(text, None),
        Err(e) => Err(error(
            RawValue::NULL,
            PARSE_ERROR,
            &format!("Parse error: {e}"),
        )),
    };
    let reply = match calls {
        Err(response) => Some(response),
        Ok(Body::Batch(calls)) => {
            let mut responses = Vec::with_capacity(calls.len());
            for call in calls {
                responses.extend(run(&hub, call).await?);
            }
            (!responses.is_empty()).then(|| join_batch(responses.into_iter()))
        }
        Ok(Body::Single(call)) => run(&hub, call).await?,
    };
    Ok(match reply {
        Some(reply) => HttpResponse::Ok()
            .content_type("application/json")
            .body(reply),
        None => HttpResponse::NoContent().finish(),
    })
}

/// Run one call; `None` for a notification.
async fn run(hub: &HubHandle, call: &RawValue) -> Result<Option<String>, ApiError> {
    let Request { id, method, params } = match Request::parse(call) {
        Ok(request) => request,
        Err(response) => return Ok(response),
    };
    let outcome: Result<Value, (i64, String)> = match method.as_str() {
        "ping" => Ok(json!({"ping": "ok"})),
        "emit" => match (channel_param(&params), params.get("data")) {
            (Ok(channel), Some(data @ Value::Object(_))) => {
                let data = data.clone();
                let delivery = hub.publish(channel, data).await?;
                Ok(json!(format!("emitted: {}", delivery.reached)))
            }
            (Err(message), _) => Err((INVALID_PARAMS, message)),
            _ => Err((INVALID_PARAMS, data_must_be_object())),
        },
        "notify_all" => match params.get("data") {
            Some(data @ Value::Object(_)) => {
                let data = data.clone();
                let delivery = hub.broadcast(data).await?;
                Ok(json!(format!("notified: {}", delivery.reached)))
            }
            _ => Err((INVALID_PARAMS, data_must_be_object())),
        },
        "total_subscribers" => {
            let channel = match params.get("channel") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(name)) => ChannelName::parse(name)
                    .map(Some)
                    .map_err(|e| (INVALID_PARAMS, format!("Invalid params: params.channel: {e}"))),
                Some(_) => Err((
                    INVALID_PARAMS,
                    "Invalid params: params.channel must be a string or null".to_owned(),
                )),
            };
            match channel {
                Ok(channel) => Ok(json!(hub.count_subscribers_everywhere(channel).await?.0)),
                Err(e) => Err(e),
            }
        }
        "available_channels" => {
            let channels = hub.channels_everywhere().await?.items;
            Ok(json!(channels.into_iter().map(|c| c.name).collect::<Vec<_>>()))
        }
        other => Err((
            METHOD_NOT_FOUND,
            format!(
                "Method not found: `{other}` (methods: emit, notify_all, total_subscribers, available_channels, ping)"
            ),
        )),
    };
    Ok(id.map(|id| match outcome {
        Ok(result) => success(&id, &result),
        Err((code, message)) => error(&id, code, &message),
    }))
}

fn data_must_be_object() -> String {
    "Invalid params: params.data must be a JSON object".to_owned()
}
