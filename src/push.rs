//! The push API for backends: HTTP handlers that only translate requests into typed hub
//! messages and the hub's replies into statuses, always with a JSON body.
//!
//! | method and path | body | reply |
//! |---|---|---|
//! | `GET /healthz` (no token) | | `{"status": "ok", ...counters}` |
//! | `GET /api/connections` | | `{"connections": [{id, route, remote, channels, connected_since}]}` |
//! | `GET /api/channels` | | `{"channels": [{name, subscribers}]}` |
//! | `POST /api/connections/{id}/send` | `{"text": str}` or `{"binary": base64}` | `{"sent": true}` |
//! | `POST /api/connections/{id}/close` | `{"code": 1000\|3000-4999, "reason": str}` (optional) | `{"closed": true}` |
//! | `POST /api/publish` | `{"channel": str, "data": any}` | `{"channel", "reached", "dropped"}` |
//! | `POST /api/broadcast` | `{"data": any}` | `{"reached", "dropped"}` |
//! | `POST /` | JSON-RPC 2.0 (RocketWS's backend port, see `push_rpc`) | JSON-RPC response |
//!
//! Every path first checks `Host` (DNS rebinding) and `Origin` (CSRF: a present `Origin` must be
//! in `push.allowed_origins`), see [`crate::origin`]; then the token, except on `/healthz`. The
//! `/api` bodies must be `application/json`, and every body must arrive within
//! `push.body_timeout_ms`.
//!
//! Errors: 400 malformed body or id, 401 missing/wrong bearer token, 403 foreign `Origin` or
//! `Host`, 404 unknown connection or path, 408 body too slow (the connection is closed), 413 body
//! too large, 415 an `/api` body that is not `application/json`, 503 queue full or hub
//! unavailable; each as `{"error": kind, "message": text}`.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use base64::Engine;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::channel::ChannelName;
use crate::config::{PushConfig, RelayFormat};
use crate::connection::ConnectionId;
use crate::delivery::Undelivered;
use crate::frame::{close_code, Close, Frame};
use crate::hub::{HubHandle, HubUnavailable};
use crate::origin::{HostPolicy, OriginPolicy};

/// The push API's shared settings, kept in app data.
pub struct PushSettings {
    /// The bearer token every `/api` request must carry, if set.
    pub token: Option<String>,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Origins whose pages may call the push API (requests without `Origin` always may).
    pub origins: OriginPolicy,
    /// `Host` values the push API answers (DNS rebinding).
    pub hosts: HostPolicy,
    /// When this hub started, reported by `/healthz` so operators can tell hubs apart.
    pub started_at: u64,
}

impl PushSettings {
    /// The settings of a validated `[push]` section, with the body limit the server derives
    /// from `limits.max_message_size`.
    pub fn new(push: &PushConfig, max_body: usize) -> Self {
        Self {
            token: push.token().map(str::to_owned),
            max_body,
            body_timeout: push.body_timeout(),
            origins: push
                .origin_policy()
                .expect("push.allowed_origins is checked by Config::validate"),
            hosts: push
                .host_policy()
                .expect("push.allowed_hosts is checked by Config::validate"),
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// A push-API failure, mapped to a status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed body, id or value.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("missing or wrong bearer token: send `Authorization: Bearer <push.token>`")]
    Unauthorized,
    /// A foreign `Origin` or `Host`: a web page (CSRF) or a rebound DNS name.
    #[error("{0}")]
    Forbidden(String),
    /// No such connection or path.
    #[error("{0}")]
    NotFound(String),
    /// The body did not arrive within `push.body_timeout_ms`.
    #[error("the request body did not arrive within {0} ms (push.body_timeout_ms)")]
    BodyTimeout(u128),
    /// The body exceeds the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// A JSON endpoint was sent a body of another type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The hub could not take the request now.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            // The rest of the body may still be trickling in: drop the connection with it.
            ApiError::BodyTimeout(_) => {
                response.force_close();
            }
            _ => {}
        }
        response.json(json!({"error": self.kind(), "message": self.to_string()}))
    }
}

impl From<HubUnavailable> for ApiError {
    fn from(_: HubUnavailable) -> Self {
        ApiError::Unavailable("the hub is not answering".into())
    }
}

impl From<Undelivered> for ApiError {
    fn from(e: Undelivered) -> Self {
        match e {
            Undelivered::UnknownConnection => ApiError::NotFound(e.to_string()),
            Undelivered::QueueFull => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// Refuse a request whose `Host` the push API does not answer (DNS rebinding) or whose
/// `Origin` is present and not allowed (a web page: CSRF). Requests without `Origin` come from
/// servers and tools, not from a browser's cross-site request, and pass.
fn check_host_and_origin(req: &HttpRequest, settings: &PushSettings) -> Result<(), ApiError> {
    let host = match req.headers().get(header::HOST) {
        // A value that is not text matches no policy entry.
        Some(value) => Some(value.to_str().unwrap_or("")),
        // HTTP/1.0 tools may send none; a browser always does.
        None => req.uri().authority().map(|a| a.as_str()),
    };
    if let Some(host) = host {
        if !settings.hosts.allows(host) {
            return Err(ApiError::Forbidden(format!(
                "the push API does not answer to Host `{host}`: add it to push.allowed_hosts"
            )));
        }
    }
    for origin in req.headers().get_all(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !settings.origins.allows(origin) {
            return Err(ApiError::Forbidden(format!(
                "requests from origin `{origin}` are not allowed: add it to push.allowed_origins"
            )));
        }
    }
    Ok(())
}

fn settings_of(req: &HttpRequest) -> Result<&PushSettings, ApiError> {
    req.app_data::<web::Data<PushSettings>>()
        .map(|settings| settings.get_ref())
        .ok_or_else(|| ApiError::Unavailable("the push API is not configured".into()))
}

/// Proof that a request passed the `Host` and `Origin` checks (see [`Authorized`]); enough
/// for `/healthz`, which needs no token.
pub struct Allowed;

impl FromRequest for Allowed {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            settings_of(req)
                .and_then(|settings| check_host_and_origin(req, settings))
                .map(|()| Allowed),
        )
    }
}

/// Proof that a request passed the `Host` and `Origin` checks and carried the configured
/// bearer token (or that none is configured). Every push path but `/healthz` takes one.
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authorize(req))
    }
}

fn authorize(req: &HttpRequest) -> Result<Authorized, ApiError> {
    let settings = settings_of(req)?;
    check_host_and_origin(req, settings)?;
    let Some(expected) = settings.token.as_deref() else {
        return Ok(Authorized);
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_credentials)
        .unwrap_or("");
    if constant_time_eq::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(Authorized)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 9110, section 11.1).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_matches(' '))
}

/// Register the push API's routes, with the compatibility paths of the relay format, if any.
pub fn configure(cfg: &mut web::ServiceConfig, relay: Option<RelayFormat>) {
    match relay {
        Some(RelayFormat::SocketDock) => {
            cfg.route("/socket/{id}/send", web::post().to(socketdock_send))
                .route(
                    "/socket/{id}/disconnect",
                    web::post().to(socketdock_disconnect),
                );
        }
        Some(RelayFormat::Ws2Api) => {
            cfg.route("/{id}", web::post().to(ws2api_push));
        }
        None => {}
    }
    cfg.route("/", web::post().to(crate::push_rpc::handle))
        .route("/healthz", web::get().to(healthz))
        .service(
            web::scope("/api")
                .route("/connections", web::get().to(list_connections))
                .route("/channels", web::get().to(list_channels))
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

/// Read a request body up to the push API's limit, within `push.body_timeout_ms`.
pub(crate) async fn read_body(
    payload: web::Payload,
    settings: &PushSettings,
) -> Result<web::Bytes, ApiError> {
    tokio::time::timeout(
        settings.body_timeout,
        read_body_unbounded(payload, settings),
    )
    .await
    .unwrap_or(Err(ApiError::BodyTimeout(
        settings.body_timeout.as_millis(),
    )))
}

async fn read_body_unbounded(
    mut payload: web::Payload,
    settings: &PushSettings,
) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
        if body.len() + chunk.len() > settings.max_body {
            return Err(ApiError::TooLarge(settings.max_body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Whether a `Content-Type` value is `application/json`, parameters (charset) allowed.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Read a JSON body. It must be declared `application/json`: a browser can send `text/plain`
/// or a form cross-site without a preflight, never `application/json`. With `empty_default`,
/// an empty body without a content type takes that value.
async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    settings: &PushSettings,
    empty_default: Option<T>,
) -> Result<T, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE);
    let declared_json = content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    let body = read_body(payload, settings).await?;
    if body.is_empty() && content_type.is_none() {
        if let Some(default) = empty_default {
            return Ok(default);
        }
    }
    if !declared_json {
        let given = content_type.map_or("none".into(), |v| {
            format!("`{}`", String::from_utf8_lossy(v.as_bytes()))
        });
        return Err(ApiError::UnsupportedMediaType(format!(
            "send the body with `Content-Type: application/json` (given: {given})"
        )));
    }
    if body.is_empty() {
        if let Some(default) = empty_default {
            return Ok(default);
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn connection_id(text: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(text).map_err(|e| ApiError::BadRequest(format!("{e}: `{text}`")))
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
    // Which hub answered: operators (and the CLI) tell hubs on one machine apart by these.
    body["hub"] = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "push": req.app_config().local_addr().to_string(),
        "started_at": settings.started_at,
    });
    Ok(HttpResponse::Ok().json(body))
}

async fn list_connections(
    _: Authorized,
    hub: web::Data<HubHandle>,
) -> Result<HttpResponse, ApiError> {
    let connections = hub.connections().await?;
    Ok(HttpResponse::Ok().json(json!({"connections": connections})))
}

async fn list_channels(_: Authorized, hub: web::Data<HubHandle>) -> Result<HttpResponse, ApiError> {
    let channels = hub.channels().await?;
    Ok(HttpResponse::Ok().json(json!({"channels": channels})))
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
    Ok(HttpResponse::Ok().json(json!({
        "channel": channel,
        "reached": delivery.reached,
        "dropped": delivery.dropped,
    })))
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

/// A plain-text reply, as the compatibility paths' originals answer.
fn plain(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(body)
}

/// SocketDock `POST /socket/{id}/send`: a `text/*` body is a text frame (it must be UTF-8),
/// anything else a binary frame. 200 `OK` as SocketDock answers; unknown id 404 (SocketDock: 500).
async fn socketdock_send(
    _: Authorized,
    req: HttpRequest,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = connection_id(&id)?;
    let body = read_body(payload, &settings).await?;
    let is_text = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/"));
    let frame = if is_text {
        let text = bytestring::ByteString::try_from(body)
            .map_err(|_| ApiError::BadRequest("a text/* body must be valid UTF-8".into()))?;
        Frame::Text(text)
    } else {
        Frame::Binary(body)
    };
    hub.send_to(id, frame).await??;
    Ok(plain(StatusCode::OK, "OK"))
}

/// SocketDock `POST /socket/{id}/disconnect`: close with 1000; 200 `OK`.
async fn socketdock_disconnect(
    _: Authorized,
    hub: web::Data<HubHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = connection_id(&id)?;
    let close = Close::new(close_code::NORMAL, "");
    hub.close(id, close).await??;
    Ok(plain(StatusCode::OK, "OK"))
}

/// ws2api `POST /{id}`: the body as a text frame; 200 `ok`, unknown id 404 `not found`.
async fn ws2api_push(
    _: Authorized,
    hub: web::Data<HubHandle>,
    settings: web::Data<PushSettings>,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let Ok(id) = ConnectionId::parse(&id) else {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    };
    let body = read_body(payload, &settings).await?;
    // ws2api pushes text; a body that is not UTF-8 goes out as a binary frame, not corrupted.
    let frame = match bytestring::ByteString::try_from(body.clone()) {
        Ok(text) => Frame::Text(text),
        Err(_) => Frame::Binary(body),
    };
    match hub.send_to(id, frame).await? {
        Ok(()) => Ok(plain(StatusCode::OK, "ok")),
        Err(Undelivered::UnknownConnection) => Ok(plain(StatusCode::NOT_FOUND, "not found")),
        Err(e) => Err(e.into()),
    }
}
