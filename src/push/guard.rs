//! What every push-API endpoint shares: its settings, its error type (a status and a JSON
//! body), the `Host`/`Origin`/token guards as extractors, and request bodies read within a
//! size limit and a deadline. The push API's own handlers ([`crate::push`]), RocketWS's port
//! ([`crate::push_rpc`]) and the relay formats' compatibility paths build on it.

use std::future::{ready, Ready};
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::Config;
use crate::connection::ConnectionId;
use crate::delivery::Undelivered;
use crate::hub::HubUnavailable;
use crate::origin::{HostPolicy, OriginRule};

/// The push API's shared settings, kept in app data.
pub struct PushSettings {
    /// The bearer token every `/api` request must carry, if set.
    pub token: Option<String>,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Origins whose pages may call the push API (requests without `Origin` always may).
    pub origins: OriginRule,
    /// `Host` values the push API answers (DNS rebinding).
    pub hosts: HostPolicy,
    /// When this hub started, reported by `/healthz` so operators can tell hubs apart.
    pub started_at: u64,
}

impl PushSettings {
    /// The settings of a validated config's `[push]` section (and the origin list it may
    /// inherit from `[server]`), with the body limit the server derives from
    /// `limits.max_message_size`.
    pub fn new(config: &Config, max_body: usize) -> Self {
        let push = &config.push;
        Self {
            token: push.token().map(str::to_owned),
            max_body,
            body_timeout: push.body_timeout(),
            origins: config.push_origins(),
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
            Undelivered::QueueFull
            | Undelivered::NodeUnreachable
            | Undelivered::ClusterUnreachable => ApiError::Unavailable(e.to_string()),
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
    // A page this listener served itself (the dashboard) is not a foreign site, whatever
    // the list says: its `Host` already passed the check above.
    let origins = req
        .headers()
        .get_all(header::ORIGIN)
        .map(|origin| origin.to_str().unwrap_or(""))
        .filter(|origin| !host.is_some_and(|host| crate::origin::same_origin(origin, host)));
    settings
        .origins
        .check(origins, host)
        .map_err(|e| ApiError::Forbidden(format!("push API: {e}")))
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
pub(crate) async fn read_json<T: DeserializeOwned>(
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

pub(crate) fn connection_id(text: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(text).map_err(|e| ApiError::BadRequest(format!("{e}: `{text}`")))
}

/// A plain-text reply, as the compatibility paths' originals answer.
pub(crate) fn plain(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain")
        .body(body)
}
