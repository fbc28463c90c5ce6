//! SocketDock's relay format (`backend.format = "socketdock"`), all of it: every frame is a JSON
//! envelope `{"meta", "message"}` POSTed to `backend.url` (binary that is not UTF-8 goes as
//! base64 with `"message_encoding": "base64"`); new and ended connections are told to
//! `connect_url` and `disconnect_url`; answers are not read (the application pushes instead).
//! `meta` carries the push paths of the connection, built on `backend.external_url`, which this
//! file also serves: `POST /socket/{id}/send` and `POST /socket/{id}/disconnect`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{Format, Request};
use crate::config::{BackendConfig, HttpUrl};
use crate::connection::ConnectionId;
use crate::frame::{close_code, Close, Frame};
use crate::hub::HubHandle;
use crate::push::guard::{connection_id, plain, read_body, ApiError, Authorized, PushSettings};

/// SocketDock's settings, from `[backend]`.
#[derive(Debug, Clone)]
pub struct SocketDock {
    /// Where every frame's envelope goes.
    url: String,
    /// Told about each new connection, when set.
    connect_url: Option<String>,
    /// Told about each ended connection, when set.
    disconnect_url: Option<String>,
    /// The push API's public base URL, without a trailing `/`.
    external_url: String,
}

impl SocketDock {
    /// The format of a `[backend]` section with `format = "socketdock"`.
    pub fn new(config: &BackendConfig) -> Self {
        let url = |url: &Option<HttpUrl>| url.as_ref().map(HttpUrl::to_string);
        Self {
            // As SocketDock: a trailing `/` of the message URL is not sent.
            url: url(&config.url)
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            connect_url: url(&config.connect_url),
            disconnect_url: url(&config.disconnect_url),
            external_url: config
                .external_url
                .as_ref()
                .map_or("", |u| u.as_str())
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    /// The `meta` object of a connection: its id and where the application pushes to it.
    fn meta(&self, id: &ConnectionId) -> Map<String, Value> {
        let base = &self.external_url;
        let mut meta = Map::new();
        meta.insert("connection_id".into(), json!(id));
        meta.insert("send".into(), format!("{base}/socket/{id}/send").into());
        meta.insert(
            "disconnect".into(),
            format!("{base}/socket/{id}/disconnect").into(),
        );
        meta
    }
}

impl Format for SocketDock {
    fn announces_disconnects(&self) -> bool {
        self.disconnect_url.is_some()
    }

    /// `POST connect_url {"meta": {connection_id, send, disconnect, headers, remote}}`.
    fn connect_notice(&self, id: &ConnectionId, handshake: &Value) -> Option<Request> {
        let mut meta = self.meta(id);
        if let Value::Object(extra) = handshake {
            meta.extend(extra.clone());
        }
        Some(Request::json(
            self.connect_url.clone()?,
            &json!({ "meta": meta }),
        ))
    }

    /// `POST url {"meta", "message"}`: text as is, binary as text when it is UTF-8, else
    /// base64 with `"message_encoding": "base64"`.
    fn message(&self, id: &ConnectionId, frame: &Frame) -> Request {
        let mut body = Map::new();
        body.insert("meta".into(), Value::Object(self.meta(id)));
        match frame {
            Frame::Text(text) => {
                body.insert("message".into(), Value::String(text.to_string()));
            }
            Frame::Binary(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => {
                    body.insert("message".into(), text.into());
                }
                Err(_) => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                    body.insert("message".into(), encoded.into());
                    body.insert("message_encoding".into(), "base64".into());
                }
            },
        }
        Request::json(self.url.clone(), &Value::Object(body))
    }

    /// `POST disconnect_url {"connection_id"}`, when one is configured.
    fn disconnect_notice(&self, id: &ConnectionId, _reason: &str) -> Option<Request> {
        Some(Request::json(
            self.disconnect_url.clone()?,
            &json!({ "connection_id": id }),
        ))
    }
}

/// Register SocketDock's push paths (the ones `meta.send` and `meta.disconnect` name).
pub fn configure_push(cfg: &mut web::ServiceConfig) {
    cfg.route("/socket/{id}/send", web::post().to(send))
        .route("/socket/{id}/disconnect", web::post().to(disconnect));
}

/// `POST /socket/{id}/send`: a `text/*` body is a text frame (it must be UTF-8), anything
/// else a binary frame. 200 `OK` as SocketDock answers; unknown id 404 (SocketDock: 500).
async fn send(
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
        .is_some_and(is_text_type);
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

/// Whether a pushed body's `Content-Type` makes it a text frame: any `text/*`.
fn is_text_type(content_type: &str) -> bool {
    content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("text/")
}

/// `POST /socket/{id}/disconnect`: close with 1000; 200 `OK`.
async fn disconnect(
    _: Authorized,
    hub: web::Data<HubHandle>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = connection_id(&id)?;
    let close = Close::new(close_code::NORMAL, "");
    hub.close(id, close).await??;
    Ok(plain(StatusCode::OK, "OK"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use awc::http::Method;

    fn format(disconnect: bool) -> SocketDock {
        SocketDock {
            url: "http://app/messages".into(),
            connect_url: Some("http://app/connect".into()),
            disconnect_url: disconnect.then(|| "http://app/disconnect".into()),
            external_url: "https://hub.example".into(),
        }
    }

    fn body(request: &Request) -> Value {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.content_type, Some("application/json"));
        assert_eq!(
            request.answer_limit, None,
            "SocketDock answers are not read"
        );
        serde_json::from_slice(&request.body).unwrap()
    }

    fn id() -> ConnectionId {
        ConnectionId::parse("c1").unwrap()
    }

    #[test]
    fn a_text_frame_goes_in_an_envelope_with_the_push_paths() {
        let request = format(true).message(&id(), &Frame::text("hello"));
        assert_eq!(request.url, "http://app/messages");
        assert_eq!(
            body(&request),
            json!({
                "meta": {
                    "connection_id": "c1",
                    "send": "https://hub.example/socket/c1/send",
                    "disconnect": "https://hub.example/socket/c1/disconnect",
                },
                "message": "hello",
            })
        );
    }

    #[test]
    fn binary_goes_as_text_when_utf8_else_base64() {
        let utf8 = format(true).message(&id(), &Frame::Binary("é".as_bytes().to_vec().into()));
        let utf8 = body(&utf8);
        assert_eq!(utf8["message"], "é");
        assert!(utf8.get("message_encoding").is_none());
        let raw = format(true).message(&id(), &Frame::Binary(vec![0xff, 0x00, 0x10].into()));
        let raw = body(&raw);
        assert_eq!(raw["message"], "/wAQ");
        assert_eq!(raw["message_encoding"], "base64");
    }

    #[test]
    fn the_connect_notice_carries_the_handshake() {
        let handshake = json!({"headers": {"cookie": "a=b"}, "remote": "192.0.2.1"});
        let request = format(true).connect_notice(&id(), &handshake).unwrap();
        assert_eq!(request.url, "http://app/connect");
        let meta = &body(&request)["meta"];
        assert_eq!(meta["connection_id"], "c1");
        assert_eq!(meta["headers"]["cookie"], "a=b");
        assert_eq!(meta["remote"], "192.0.2.1");
        assert_eq!(meta["send"], "https://hub.example/socket/c1/send");
        let mut quiet = format(true);
        quiet.connect_url = None;
        assert!(quiet.connect_notice(&id(), &handshake).is_none());
    }

    #[test]
    fn ended_connections_are_announced_only_with_a_disconnect_url() {
        let with = format(true);
        assert!(with.announces_disconnects());
        let request = with.disconnect_notice(&id(), "EOF").unwrap();
        assert_eq!(request.url, "http://app/disconnect");
        assert_eq!(body(&request), json!({"connection_id": "c1"}));
        let without = format(false);
        assert!(!without.announces_disconnects());
        assert!(without.disconnect_notice(&id(), "EOF").is_none());
        assert!(
            !without.checks_connect(),
            "SocketDock asks nothing before upgrades"
        );
    }

    #[test]
    fn pushed_bodies_are_text_for_any_text_type() {
        assert!(is_text_type("text/plain; charset=utf-8"));
        assert!(is_text_type(" Text/HTML"));
        assert!(!is_text_type("application/json"));
        assert!(!is_text_type("application/octet-stream"));
    }
}
