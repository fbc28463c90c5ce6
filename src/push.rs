//! The push API for backends: HTTP handlers that only translate requests into typed hub
//! messages and the hub's replies into statuses, always with a JSON body.
//!
//! | method and path | body | reply |
//! |---|---|---|
//! | `GET /healthz` (no token) | | `{"status": "ok", ...counters}` |
//! | `GET /readyz` (no token) | | 200 `{"status": "ready"}`, or 503 `{"status": "not_ready", "reasons": [...]}` |
//! | `GET /api/connections` | | `{"connections": [{id, route, remote, channels, connected_since}]}` |
//! | `GET /api/channels` | | `{"channels": [{name, subscribers}]}` |
//! | `GET /api/presence?channel=NAME` | | `{"channel", "subscribers", "connections": [id]}` |
//! | `POST /api/connections/{id}/send` | `{"text": str}` or `{"binary": base64}` | `{"sent": true}` |
//! | `POST /api/connections/{id}/close` | `{"code": 1000\|3000-4999, "reason": str}` (optional) | `{"closed": true}` |
//! | `POST /api/publish` | `{"channel": str, "data": any}` | `{"channel", "reached", "dropped"}` |
//! | `POST /api/broadcast` | `{"data": any}` | `{"reached", "dropped"}` |
//! | `POST /` | JSON-RPC 2.0 (RocketWS's backend port, see `push_rpc`) | JSON-RPC response |
//! | `GET /metrics` | | Prometheus text format (see [`dashboard`]) |
//! | `GET /dashboard` (no token) | | the live dashboard page |
//! | `GET /api/dashboard` | | `{"node", "totals", "channels": {"count", "top"}, "nodes"}` |
//!
//! The relay format adds its compatibility paths: [`socketdock::configure_push`],
//! [`ws2api::configure_push`]. What every endpoint shares is in [`guard`].
//!
//! Every path first checks `Host` (DNS rebinding) and `Origin` (CSRF: a present `Origin` must be
//! allowed by `push.allowed_origins`, or by `server.allowed_origins` when that is unset), see
//! [`crate::origin`]; then the token, except on `/healthz` and `/readyz`. The `/api` bodies
//! must be `application/json`, and every body must arrive within
//! `push.body_timeout_ms`.
//!
//! In a cluster (`[cluster]`), pushes by id reach the connection on whichever node holds it,
//! publishes and broadcasts carry `"cluster": {"published", "other_nodes"}` (`reached` counts
//! this node's connections), and listings carry `"cluster": {"nodes", "missing", "partial"}`:
//! a node that did not answer in time makes a listing partial, never silently short.
//!
//! Errors: 400 malformed body or id, 401 missing/wrong bearer token, 403 foreign `Origin` or
//! `Host`, 404 unknown connection or path, 408 body too slow (the connection is closed), 413 body
//! too large, 415 an `/api` body that is not `application/json`, 503 queue full or hub
//! unavailable; each as `{"error": kind, "message": text}`.

pub mod dashboard;
pub mod guard;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

pub use guard::{Allowed, ApiError, Authorized, PushSettings};

use crate::backend::{socketdock, ws2api};
use crate::channel::ChannelName;
use crate::cluster::Coverage;
use crate::config::RelayFormat;
use crate::frame::{close_code, Close, Frame};
use crate::hub::HubHandle;
use crate::readiness::Readiness;
use guard::{connection_id, read_json};

/// Register the push API's routes, with the compatibility paths of the relay format, if any.
pub fn configure(cfg: &mut web::ServiceConfig, relay: Option<RelayFormat>) {
    match relay {
        Some(RelayFormat::SocketDock) => socketdock::configure_push(cfg),
        Some(RelayFormat::Ws2Api) => ws2api::configure_push(cfg),
        None => {}
    }
    cfg.route("/", web::post().to(crate::push_rpc::handle))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .configure(dashboard::configure)
        .service(
            web::scope("/api")
                .route("/dashboard", web::get().to(dashboard::data))
                .route("/connections", web::get().to(list_connections))
                .route("/channels", web::get().to(list_channels))
                .route("/presence", web::get().to(presence))
                .route("/connections/{id}/send", web::post().to(send))
                .route("/connections/{id}/close", web::post().to(close))
                .route("/publish", web::post().to(publish))
                .route("/broadcast", web::post().to(broadcast)),
        );
}

/// The JSON 404 for paths no route matches.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no such path: {} {}",
        req.method(),
        req.path()
    )))
}

async fn healthz(
    _: Allowed,
    req: HttpRequest,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
) -> Result<HttpResponse, ApiError> {
    let stats = hub.stats().await?;
    let mut body = serde_json::to_value(stats).expect("stats serialize");
    body["status"] = json!("ok");
    if let Some(cluster) = hub.cluster() {
        // A node that lost the cluster still serves its own connections, but is not "ok".
        let status = cluster.status();
        if status.state != "connected" {
            body["status"] = json!("degraded");
        }
        body["cluster"] = serde_json::to_value(status).expect("status serializes");
    }
    // Which hub answered: operators (and the CLI) tell hubs on one machine apart by these.
    body["hub"] = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "push": req.app_config().local_addr().to_string(),
        "started_at": settings.started_at,
    });
    Ok(HttpResponse::Ok().json(body))
}

/// Readiness for load balancers: the reasons not to send new clients here, from the shared
/// flag set (no hub round trip).
async fn readyz(_: Allowed, readiness: web::Data<Readiness>) -> HttpResponse {
    let reasons = readiness.reasons();
    if reasons.is_empty() {
        return HttpResponse::Ok().json(json!({"status": "ready"}));
    }
    let names: Vec<&str> = reasons.iter().map(|r| r.name()).collect();
    let message: Vec<&str> = reasons.iter().map(|r| r.describe()).collect();
    HttpResponse::ServiceUnavailable().json(json!({
        "status": "not_ready",
        "reasons": names,
        "message": message.join("; "),
    }))
}

async fn list_connections(
    _: Authorized,
    hub: web::Data<HubHandle>,
) -> Result<HttpResponse, ApiError> {
    let listing = hub.connections_everywhere().await?;
    let body = json!({"connections": listing.items});
    Ok(HttpResponse::Ok().json(covered(body, listing.cluster)))
}

async fn list_channels(_: Authorized, hub: web::Data<HubHandle>) -> Result<HttpResponse, ApiError> {
    let listing = hub.channels_everywhere().await?;
    let body = json!({"channels": listing.items});
    Ok(HttpResponse::Ok().json(covered(body, listing.cluster)))
}

/// A listing's body with, in a cluster, which nodes it covers.
fn covered(mut body: serde_json::Value, coverage: Option<Coverage>) -> serde_json::Value {
    if let Some(coverage) = coverage {
        body["cluster"] = json!(coverage);
    }
    body
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    channel: String,
}

/// Presence: how many and which connections are in a channel (on every node).
async fn presence(
    _: Authorized,
    hub: web::Data<HubHandle>,
    query: web::Query<PresenceQuery>,
) -> Result<HttpResponse, ApiError> {
    let channel = ChannelName::parse(&query.channel)
        .map_err(|e| ApiError::BadRequest(format!("`channel`: {e}")))?;
    let listing = hub.presence(channel.clone()).await?;
    let body = json!({
        "channel": channel,
        "subscribers": listing.items.len(),
        "connections": listing.items,
    });
    Ok(HttpResponse::Ok().json(covered(body, listing.cluster)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    text: Option<String>,
    binary: Option<String>,
}

async fn send(
    _: Authorized,
    req: HttpRequest,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = connection_id(&id)?;
    let body: SendBody = read_json(&req, payload, &settings, None).await?;
    let frame = match (body.text, body.binary) {
        (Some(text), None) => Frame::text(text),
        (None, Some(encoded)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| ApiError::BadRequest(format!("`binary` is not valid base64: {e}")))?;
            Frame::Binary(bytes.into())
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `text` (a string) or `binary` (base64)".into(),
            ))
        }
    };
    hub.send_to(id, frame).await??;
    Ok(HttpResponse::Ok().json(json!({"sent": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    #[serde(default = "normal_close")]
    code: u16,
    #[serde(default)]
    reason: String,
}

fn normal_close() -> u16 {
    close_code::NORMAL
}

async fn close(
    _: Authorized,
    req: HttpRequest,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = connection_id(&id)?;
    let default = CloseBody {
        code: close_code::NORMAL,
        reason: String::new(),
    };
    let body: CloseBody = read_json(&req, payload, &settings, Some(default)).await?;
    if !close_code::is_sendable(body.code) {
        return Err(ApiError::BadRequest(format!(
            "close code {} is not allowed: use 1000 or 3000-4999",
            body.code
        )));
    }
    if body.reason.len() > crate::frame::MAX_CLOSE_REASON {
        return Err(ApiError::BadRequest(format!(
            "close reason is longer than {} bytes",
            crate::frame::MAX_CLOSE_REASON
        )));
    }
    let close = Close::new(body.code, body.reason);
    hub.close(id, close).await??;
    Ok(HttpResponse::Ok().json(json!({"closed": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: serde_json::Value,
}

async fn publish(
    _: Authorized,
    req: HttpRequest,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: PublishBody = read_json(&req, payload, &settings, None).await?;
    let channel = ChannelName::parse(&body.channel)
        .map_err(|e| ApiError::BadRequest(format!("`channel`: {e}")))?;
    let delivery = hub.publish(channel.clone(), body.data).await?;
    let mut reply = json!({
        "channel": channel,
        "reached": delivery.reached,
        "dropped": delivery.dropped,
    });
    if let Some(cluster) = delivery.cluster {
        reply["cluster"] = json!(cluster);
    }
    Ok(HttpResponse::Ok().json(reply))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    data: serde_json::Value,
}

async fn broadcast(
    _: Authorized,
    req: HttpRequest,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: BroadcastBody = read_json(&req, payload, &settings, None).await?;
    let delivery = hub.broadcast(body.data).await?;
    Ok(HttpResponse::Ok().json(delivery))
}
