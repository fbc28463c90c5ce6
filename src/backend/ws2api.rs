//! ws2api's relay format (`backend.format = "ws2api"`), all of it: before each upgrade the
//! application is asked `GET {url}/{id}` with the client's headers and admits it by answering
//! 200 `ok`; every frame is POSTed raw to `{url}/{id}` (text as `text/plain`, binary as
//! `application/octet-stream`) and a non-empty answer goes back to the client; an ended
//! connection is announced with `DELETE {url}/{id}` carrying the close reason (`EOF` for a
//! dropped connection). The application pushes with `POST /{id}`, which this file also serves.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use awc::http::Method;
use bytes::Bytes;

use super::callout::frame_of;
use super::{BackendError, Format, Request};
use crate::config::BackendConfig;
use crate::connection::ConnectionId;
use crate::delivery::Undelivered;
use crate::frame::Frame;
use crate::hub::HubHandle;
use crate::push::guard::{plain, read_body, ApiError, Authorized, PushSettings};

/// Largest connect-check answer read: the only answer that admits is `ok`.
const CHECK_ANSWER_LIMIT: usize = 64 * 1024;

/// Headers of the upgrade request that belong to that hop and are not forwarded to the
/// connect check. The client's own forwarding headers are dropped too: the hub sets
/// `X-Forwarded-For` itself.
const HOP_HEADERS: [&str; 10] = [
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// ws2api's settings, from `[backend]`.
#[derive(Debug, Clone)]
pub struct Ws2Api {
    /// The API base URL without a trailing `/`: connections are `{url}/{id}`.
    url: String,
    /// Largest answer body read (`limits.max_message_size`).
    max_answer: usize,
}

impl Ws2Api {
    /// The format of a `[backend]` section with `format = "ws2api"`.
    pub fn new(config: &BackendConfig) -> Self {
        Self {
            url: config
                .url
                .as_ref()
                .map_or("", |u| u.as_str())
                .trim_end_matches('/')
                .to_owned(),
            max_answer: config.max_answer_size,
        }
    }

    fn connection_url(&self, id: &ConnectionId) -> String {
        format!("{}/{id}", self.url)
    }
}

impl Format for Ws2Api {
    fn checks_connect(&self) -> bool {
        true
    }

    fn announces_disconnects(&self) -> bool {
        true
    }

    /// `POST {url}/{id}` with the frame as it is; the answer, when not empty, is the reply.
    fn message(&self, id: &ConnectionId, frame: &Frame) -> Request {
        let (content_type, body) = match frame {
            Frame::Text(text) => ("text/plain; charset=utf-8", text.clone().into_bytes()),
            Frame::Binary(bytes) => ("application/octet-stream", bytes.clone()),
        };
        let mut request = Request::post(self.connection_url(id), content_type, body);
        request.answer_limit = Some(self.max_answer);
        request
    }

    /// `DELETE {url}/{id}` with the close reason as text.
    fn disconnect_notice(&self, id: &ConnectionId, reason: &str) -> Option<Request> {
        let mut request = Request::post(
            self.connection_url(id),
            "text/plain; charset=utf-8",
            Bytes::from(reason.to_owned()),
        );
        request.method = Method::DELETE;
        Some(request)
    }

    /// `GET {url}/{id}` with the client's end-to-end headers and `X-Forwarded-For: remote`.
    fn connect_check(
        &self,
        id: &ConnectionId,
        headers: &[(String, String)],
        remote: Option<&str>,
    ) -> Option<Request> {
        let mut forwarded: Vec<(String, String)> = headers
            .iter()
            .filter(|(name, _)| {
                !HOP_HEADERS.contains(&name.as_str()) && !name.starts_with("sec-websocket-")
            })
            .cloned()
            .collect();
        if let Some(remote) = remote {
            forwarded.push(("x-forwarded-for".into(), remote.to_owned()));
        }
        Some(Request {
            method: Method::GET,
            url: self.connection_url(id),
            content_type: None,
            body: Bytes::new(),
            headers: forwarded,
            answer_limit: Some(CHECK_ANSWER_LIMIT.min(self.max_answer)),
            notice_id: None,
        })
    }

    /// Exactly 200 with the body `ok` admits; another 200 refuses; any other status is an
    /// answer the hub cannot take (the upgrade fails with 502).
    fn admits(&self, status: StatusCode, body: &[u8]) -> Result<bool, BackendError> {
        if status != StatusCode::OK {
            BackendError::check_status(status)?;
            return Err(BackendError::Refused(status));
        }
        Ok(body == b"ok")
    }
}

/// Register ws2api's push path, `POST /{id}`.
pub fn configure_push(cfg: &mut web::ServiceConfig) {
    cfg.route("/{id}", web::post().to(push));
}

/// `POST /{id}`: the body as a text frame; 200 `ok`, unknown id 404 `not found`.
async fn push(
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
    let frame = frame_of(body);
    match hub.send_to(id, frame).await? {
        Ok(()) => Ok(plain(StatusCode::OK, "ok")),
        Err(Undelivered::UnknownConnection) => Ok(plain(StatusCode::NOT_FOUND, "not found")),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> Ws2Api {
        Ws2Api {
            url: "http://app/ws".into(),
            max_answer: 1024 * 1024,
        }
    }

    fn id() -> ConnectionId {
        ConnectionId::parse("c1").unwrap()
    }

    #[test]
    fn frames_go_raw_to_the_connection_url_and_answers_come_back() {
        let text = format().message(&id(), &Frame::text("hi"));
        assert_eq!(
            (text.method.clone(), text.url.as_str(), text.content_type),
            (
                Method::POST,
                "http://app/ws/c1",
                Some("text/plain; charset=utf-8")
            )
        );
        assert_eq!(&text.body[..], b"hi");
        assert_eq!(
            text.answer_limit,
            Some(1024 * 1024),
            "a ws2api answer is the client's reply, up to limits.max_message_size"
        );
        let binary = format().message(&id(), &Frame::Binary(vec![0xff, 1].into()));
        assert_eq!(binary.content_type, Some("application/octet-stream"));
        assert_eq!(&binary.body[..], &[0xff, 1]);
    }

    #[test]
    fn an_ended_connection_is_a_delete_with_the_reason() {
        let format = format();
        assert!(format.announces_disconnects());
        let notice = format.disconnect_notice(&id(), "going away").unwrap();
        assert_eq!(notice.method, Method::DELETE);
        assert_eq!(notice.url, "http://app/ws/c1");
        assert_eq!(&notice.body[..], b"going away");
        assert_eq!(notice.answer_limit, None);
    }

    #[test]
    fn the_connect_check_forwards_end_to_end_headers_only() {
        let headers: Vec<(String, String)> = [
            ("host", "hub"),
            ("cookie", "s=1"),
            ("sec-websocket-key", "k"),
            ("x-forwarded-for", "6.6.6.6"),
            ("authorization", "Bearer t"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let format = format();
        assert!(format.checks_connect());
        let check = format
            .connect_check(&id(), &headers, Some("192.0.2.1"))
            .unwrap();
        assert_eq!(check.method, Method::GET);
        assert_eq!(check.url, "http://app/ws/c1");
        assert_eq!(check.content_type, None, "a GET without a body");
        assert_eq!(check.answer_limit, Some(CHECK_ANSWER_LIMIT));
        assert_eq!(
            check.headers,
            vec![
                ("cookie".to_owned(), "s=1".to_owned()),
                ("authorization".to_owned(), "Bearer t".to_owned()),
                ("x-forwarded-for".to_owned(), "192.0.2.1".to_owned()),
            ]
        );
    }

    #[test]
    fn only_200_ok_admits() {
        let format = format();
        assert!(format.admits(StatusCode::OK, b"ok").unwrap());
        assert!(!format.admits(StatusCode::OK, b"no").unwrap());
        assert!(!format.admits(StatusCode::OK, b"").unwrap());
        assert!(matches!(
            format.admits(StatusCode::NO_CONTENT, b""),
            Err(BackendError::Refused(_))
        ));
        assert!(matches!(
            format.admits(StatusCode::FORBIDDEN, b""),
            Err(BackendError::Refused(_))
        ));
        assert!(matches!(
            format.admits(StatusCode::BAD_GATEWAY, b""),
            Err(BackendError::Unavailable(_))
        ));
    }
}
