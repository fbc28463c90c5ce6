//! The WebSocket upgrade. actix-http hands every request that asks for `Upgrade: websocket`
//! to [`serve`] together with its socket (actix-http's upgrade hook), so the socket leaves the
//! HTTP dispatcher and its buffers for good. Here the request finds its route, the handshake is
//! checked (RFC 6455 §4.2.1), the connection cap applied, the id chosen, the backend's connect
//! check and the route's connect hook asked; then the answer is 101 (with permessage-deflate
//! when the route and the client agree on it) and a session starts on the raw socket. A refusal is a status with a JSON body, and the socket is closed at once.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use actix::Addr;
use actix_http::body::BodySize;
use actix_http::header::{self, HeaderMap, HeaderValue};
use actix_http::{
    h1, ws, ConnectionType, HttpMessage, Method, Request, Response, StatusCode, Version,
};
use actix_web::dev::{Path, ResourceDef, Url};
use base64::Engine;
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::TcpStream;

use crate::backend::http::Check;
use crate::backend::Backend;
use crate::config::TrustedProxies;
use crate::connection::ConnectionId;
use crate::courier::CourierHandle;
use crate::deflate;
use crate::frame::Frame;
use crate::hook::authorize::Authorizer;
use crate::hook::connect::{Admit, ConnectHook};
use crate::origin::OriginRule;
use crate::session::{self, RouteContext, SessionSetup};

/// The upgrade's view of one worker: the routes and this worker's backend and hooks.
pub(crate) struct Upgrader {
    /// Each WebSocket route, in config order.
    pub routes: Vec<UpgradeRoute>,
    /// This worker's backend.
    pub backend: Backend,
    /// This worker's authorization hook.
    pub authorizer: Option<Addr<Authorizer>>,
    /// This worker's connect hook client.
    pub admission: Option<Addr<ConnectHook>>,
    /// WebSocket connections allowed at once in the process.
    pub max_connections: usize,
    /// This worker's courier.
    pub courier: CourierHandle,
}

/// What the upgrade knows of one route.
pub(crate) struct UpgradeRoute {
    /// The path pattern (`{id}` segments are captured).
    pub pattern: ResourceDef,
    /// What the route's sessions share.
    pub context: Arc<RouteContext>,
    /// The origins whose pages may open it.
    pub origins: OriginRule,
    /// The bearer token sent to its connect hook (`routes[i].accept_token`), if set.
    pub accept_token: Option<String>,
}

/// A refused upgrade: the status, a JSON body, and any extra header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The HTTP status.
    pub status: StatusCode,
    /// The `error` field: a short machine-readable kind.
    pub kind: &'static str,
    /// The `message` field.
    pub message: String,
    /// An extra header (`Allow`, `Sec-WebSocket-Version`).
    pub header: Option<(header::HeaderName, &'static str)>,
}

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            header: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// Check the handshake itself (RFC 6455 §4.2.1): GET over HTTP/1.1 or later, `Upgrade:
/// websocket`, `Connection: upgrade`, version 13 (or the hybi drafts 7 and 8), and exactly one
/// `Sec-WebSocket-Key` that is 16 bytes once base64-decoded.
pub(crate) fn check_handshake(head: &actix_http::RequestHead) -> Result<(), Refusal> {
    if head.method != Method::GET {
        let mut refusal = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "a WebSocket handshake is a GET request",
        );
        refusal.header = Some((header::ALLOW, "GET"));
        return Err(refusal);
    }
    if head.version < Version::HTTP_11 {
        return Err(Refusal::bad_request(
            "a WebSocket handshake needs HTTP/1.1 or later",
        ));
    }
    if let Err(e) = ws::verify_handshake(head) {
        if e == ws::HandshakeError::UnsupportedVersion {
            let mut refusal = Refusal::new(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported_version",
                "unsupported Sec-WebSocket-Version: this server speaks 13",
            );
            refusal.header = Some((header::SEC_WEBSOCKET_VERSION, "13"));
            return Err(refusal);
        }
        return Err(Refusal::bad_request(format!(
            "bad WebSocket handshake: {e}"
        )));
    }
    let mut keys = head.headers.get_all(header::SEC_WEBSOCKET_KEY);
    let key = keys.next();
    if keys.next().is_some() {
        return Err(Refusal::bad_request("more than one Sec-WebSocket-Key"));
    }
    let decoded = key.and_then(|key| {
        base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .ok()
    });
    if decoded.map(|k| k.len()) != Some(16) {
        return Err(Refusal::bad_request(
            "Sec-WebSocket-Key must be 16 bytes, base64-encoded",
        ));
    }
    Ok(())
}

// --- Origin allow-list (the handshake's cross-site check) ---

/// Refuse a handshake whose `Origin` the route's rule does not allow (a page on another
/// site), with 403 and a log line naming the origin and the key to add it to.
fn check_origin(
    req: &Request,
    origins: &OriginRule,
    trusted: &TrustedProxies,
) -> Result<(), Refusal> {
    let values = req
        .headers()
        .get_all(header::ORIGIN)
        .map(|value| value.to_str().unwrap_or(""));
    let host = req
        .headers()
        .get(header::HOST)
        .map(|value| value.to_str().unwrap_or(""));
    origins.check(values, host).map_err(|refusal| {
        let remote = client_address(req.peer_addr(), req.headers(), trusted);
        log::warn!(
            "refusing a WebSocket upgrade on {} from {}: {refusal}",
            req.path(),
            remote.as_deref().unwrap_or("-")
        );
        Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            refusal.to_string(),
        )
    })
}

// --- end of the origin allow-list ---

/// An X-Forwarded-For entry as an IP: `1.2.3.4`, `1.2.3.4:5`, `::1` or `[::1]:5`.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The IP part of an `ip:port` or bare `ip` address text.
fn ip_of(address: &str) -> String {
    forwarded_ip(address).map_or_else(|| address.to_owned(), |ip| ip.to_string())
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last
/// X-Forwarded-For entry that is not itself a trusted proxy.
pub(crate) fn client_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
) -> Option<Arc<str>> {
    let peer = peer?;
    if trusted.contains(&peer.ip()) {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // From the right: skip our own proxies; the first other entry is the client. One that
        // does not parse ends the walk (entries left of it cannot be trusted either).
        for entry in entries.iter().rev() {
            match forwarded_ip(entry) {
                Some(ip) if trusted.contains(&ip) => continue,
                Some(ip) => return Some(Arc::from(ip.to_string())),
                None => break,
            }
        }
    }
    Some(Arc::from(peer.to_string()))
}

/// The value of cookie `name` in the request's `Cookie` headers ("" when it is missing).
fn cookie(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| actix_web::cookie::Cookie::parse(pair.trim()).ok())
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .unwrap_or_default()
}

impl Upgrader {
    /// Decide on one handshake: everything a session needs, or why not.
    async fn admit(&self, req: &Request) -> Result<AdmittedSession, Refusal> {
        let mut path = Path::new(Url::new(req.uri().clone()));
        let Some(entry) = self
            .routes
            .iter()
            .find(|entry| entry.pattern.capture_match_info(&mut path))
        else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no WebSocket route at {}", req.path()),
            ));
        };
        check_handshake(req.head())?;
        let route = entry.context.clone();
        check_origin(req, &entry.origins, &route.trusted_proxies)?;
        let live = route.sessions.live();
        if live >= self.max_connections {
            log::warn!(
                "refusing a WebSocket upgrade: {live} connections open, server.max_connections = {}",
                self.max_connections
            );
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "too many connections; try again later",
            ));
        }
        let id = if route.client_ids {
            ConnectionId::parse(path.get("id").unwrap_or_default())
                .map_err(|e| Refusal::bad_request(e.to_string()))?
        } else {
            ConnectionId::generate()
        };
        let remote = client_address(req.peer_addr(), req.headers(), &route.trusted_proxies);
        let relays = matches!(self.backend, Backend::Http { .. });
        // Only the http backend and the hooks tell the application about the headers.
        let hooked = route.accept_url.is_some();
        let wants_context = relays || self.authorizer.is_some() || hooked;
        let headers: Vec<(String, String)> = if wants_context {
            req.headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((
                        name.as_str().to_ascii_lowercase(),
                        value.to_str().ok()?.to_owned(),
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        if let Backend::Http {
            addr,
            checks_connect: true,
            ..
        } = &self.backend
        {
            // ws2api: the application decides before the upgrade, seeing the client's headers.
            let check = Check {
                id: id.clone(),
                headers: headers.clone(),
                remote: remote.as_deref().map(ip_of),
            };
            let bad_gateway = || {
                Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the application could not be asked",
                )
            };
            match addr.send(check).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    return Err(Refusal::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "the application refused this connection",
                    ))
                }
                Ok(Err(e)) => {
                    log::warn!(id:% = id; "connect check failed: {e}");
                    return Err(bad_gateway());
                }
                Err(_) => return Err(bad_gateway()),
            }
        }
        let context = wants_context.then(|| {
            let headers: serde_json::Map<String, serde_json::Value> =
                headers.into_iter().map(|(k, v)| (k, v.into())).collect();
            serde_json::json!({"headers": headers, "remote": remote.as_deref()})
        });
        let mut first_frame = None;
        if let (Some(url), Some(admission), Some(context)) =
            (&route.accept_url, &self.admission, &context)
        {
            let mut handshake = context.clone();
            handshake["path"] = req.path().into();
            let admit = Admit {
                url: url.clone(),
                handshake,
                token: entry.accept_token.clone(),
            };
            let refused = |status: StatusCode| {
                Refusal::new(
                    status,
                    "refused",
                    "the connect hook refused this connection",
                )
            };
            match admission.send(admit).await {
                Ok(Ok(frame)) => first_frame = frame,
                Ok(Err(status)) => {
                    return Err(refused(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    ))
                }
                Err(_) => return Err(refused(StatusCode::BAD_GATEWAY)),
            }
        }
        // The connect hook alone needs the context only before the upgrade.
        let connect_context = context.filter(|_| relays || self.authorizer.is_some());
        let mut options = route.options.clone();
        if let Some(name) = &route.xrf_cookie {
            options.xrf_token = Some(cookie(req.headers(), name));
        }
        Ok(AdmittedSession {
            id,
            route,
            remote,
            options,
            connect_context,
            first_frame,
        })
    }
}

/// What an admitted handshake decided.
struct AdmittedSession {
    id: ConnectionId,
    route: Arc<RouteContext>,
    remote: Option<Arc<str>>,
    options: crate::dialect::DialectOptions,
    connect_context: Option<serde_json::Value>,
    first_frame: Option<Frame>,
}

/// Serve one upgrade request on its socket: answer 101 and start a session, or refuse. A
/// socket that fails while the answer is written is only logged: nobody is left to tell.
pub(crate) async fn serve(
    upgrader: Rc<Upgrader>,
    request: (Request, actix_codec::Framed<TcpStream, h1::Codec>),
) -> Result<(), actix_http::Error> {
    if let Err(e) = answer(upgrader, request).await {
        log::debug!("upgrade answer not written: {e}");
    }
    Ok(())
}

async fn answer(
    upgrader: Rc<Upgrader>,
    (req, mut framed): (Request, actix_codec::Framed<TcpStream, h1::Codec>),
) -> Result<(), std::io::Error> {
    let admitted = match upgrader.admit(&req).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            log::debug!(
                "upgrade of {} refused: {} {}",
                req.path(),
                refusal.status,
                refusal.message
            );
            return refuse(framed, refusal).await;
        }
    };
    let mut response = ws::handshake_response(req.head());
    let deflate = admitted.route.compression.as_ref().and_then(|settings| {
        let offers = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .filter_map(|v| v.to_str().ok());
        deflate::negotiate(offers, settings)
    });
    if let Some(agreed) = &deflate {
        response.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, agreed.response()));
    }
    let response = response.finish().drop_body();
    framed
        .send(h1::Message::Item((response, BodySize::None)))
        .await?;
    let parts = framed.into_parts();
    session::start(SessionSetup {
        id: admitted.id,
        route: admitted.route,
        remote: admitted.remote,
        options: admitted.options,
        backend: upgrader.backend.clone(),
        authorizer: upgrader.authorizer.clone(),
        courier: upgrader.courier.clone(),
        connect_context: admitted.connect_context,
        first_frame: admitted.first_frame,
        io: parts.io,
        read_buf: parts.read_buf,
        deflate,
    });
    Ok(())
}

/// Answer a refused upgrade with its status and JSON body, then close the connection.
async fn refuse(
    mut framed: actix_codec::Framed<TcpStream, h1::Codec>,
    refusal: Refusal,
) -> Result<(), std::io::Error> {
    let body = Bytes::from(
        serde_json::json!({"error": refusal.kind, "message": refusal.message}).to_string(),
    );
    let mut response = Response::with_body(refusal.status, ());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some((name, value)) = refusal.header {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    framed
        .send(h1::Message::Item((
            response,
            BodySize::Sized(body.len() as u64),
        )))
        .await?;
    framed.send(h1::Message::Chunk(Some(body))).await?;
    framed.send(h1::Message::Chunk(None)).await?;
    framed.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::test::TestRequest;

    fn handshake(edit: impl FnOnce(&mut TestRequest) -> &mut TestRequest) -> Result<(), Refusal> {
        let mut base = TestRequest::default();
        base.insert_header((header::UPGRADE, "websocket"))
            .insert_header((header::CONNECTION, "upgrade"))
            .insert_header((header::SEC_WEBSOCKET_VERSION, "13"));
        let req = edit(&mut base).finish();
        check_handshake(req.head())
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn a_valid_handshake_passes() {
        assert_eq!(
            handshake(|r| r.insert_header((header::SEC_WEBSOCKET_KEY, KEY))),
            Ok(())
        );
    }

    #[test]
    fn keys_must_be_sixteen_base64_bytes_once() {
        for key in ["", "YQ==", "!!!not-base64!!!"] {
            let refused = handshake(|r| r.insert_header((header::SEC_WEBSOCKET_KEY, key)));
            assert_eq!(
                refused.unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{key:?}"
            );
        }
        let twice = handshake(|r| {
            r.append_header((header::SEC_WEBSOCKET_KEY, KEY))
                .append_header((header::SEC_WEBSOCKET_KEY, KEY))
        });
        assert_eq!(twice.unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn method_version_and_protocol_version_are_checked() {
        let post = handshake(|r| {
            r.method(Method::POST)
                .insert_header((header::SEC_WEBSOCKET_KEY, KEY))
        })
        .unwrap_err();
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.header, Some((header::ALLOW, "GET")));
        let old = handshake(|r| {
            r.version(Version::HTTP_10)
                .insert_header((header::SEC_WEBSOCKET_KEY, KEY))
        });
        assert_eq!(old.unwrap_err().status, StatusCode::BAD_REQUEST);
        let v14 = handshake(|r| {
            r.insert_header((header::SEC_WEBSOCKET_KEY, KEY))
                .insert_header((header::SEC_WEBSOCKET_VERSION, "14"))
        })
        .unwrap_err();
        assert_eq!(v14.status, StatusCode::UPGRADE_REQUIRED);
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6, 10.0.0.9, 10.0.0.2"),
        );
        let proxy: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let trusted = TrustedProxies::parse(&["10.0.0.0/30"]).unwrap();
        assert_eq!(
            client_address(Some(proxy), &headers, &trusted).as_deref(),
            Some("10.0.0.9")
        );
        let stranger: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        assert_eq!(
            client_address(Some(stranger), &headers, &trusted).as_deref(),
            Some("10.0.0.7:4000")
        );
    }
}
