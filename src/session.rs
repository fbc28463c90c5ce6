//! The session actor, one per WebSocket: the heartbeat, the size and UTF-8 limits, fragment
//! reassembly, and frames in and out. This is the only module that knows the WebSocket library
//! (actix-web-actors); the rest of the hub sees [`Frame`]s and [`Close`]s.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::Item;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use bytes::BytesMut;
use bytestring::ByteString;

use crate::backend::admission::{Admission, Admit};
use crate::backend::authorizer::{Authorize, Authorizer};
use crate::backend::http::{BackendReply, Check, Closed, Open, Relay};
use crate::backend::Backend;
use crate::channel::{close_code, Close, Frame};
use crate::config::LimitsConfig;
use crate::connection::ConnectionId;
use crate::dialect::{Action, Dialect, DialectKind, DialectOptions, ReplyPlan};
use crate::hub::{
    Apply, ChannelOp, Connect, ConnectRefused, Deliver, Disconnect, Hub, OpOutcome, Outbound,
};

/// What every session of one route shares.
pub struct RouteContext {
    /// The route path, e.g. `/ws`.
    pub path: Arc<str>,
    /// The dialect its clients speak.
    pub dialect: DialectKind,
    /// The dialect's settings (topics: strict, client_publish).
    pub options: DialectOptions,
    /// groups: the handshake cookie each message must repeat as `xrftoken`.
    pub xrf_cookie: Option<String>,
    /// The connect hook that admits handshakes and may give the first frame.
    pub accept_url: Option<String>,
    /// Sessions alive in the whole process (shutdown waits for zero).
    pub live: Arc<std::sync::atomic::AtomicUsize>,
    /// Per-connection limits and the heartbeat.
    pub limits: LimitsConfig,
    /// The hub every session registers with.
    pub hub: Addr<Hub>,
    /// The path has an `{id}` segment: the client picks its id (ws2api), and a newer
    /// connection with the same id replaces the older one.
    pub client_ids: bool,
    /// Frames one connection may have waiting for the backend.
    pub max_pending: usize,
    /// Peers whose X-Forwarded-For header is believed.
    pub trusted_proxies: Arc<crate::config::TrustedProxies>,
}

/// Source of session serials (unique per process).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// A message being received in fragments.
struct Fragments {
    /// Text (validated as UTF-8) or binary.
    text: bool,
    /// The payload so far.
    buf: BytesMut,
    /// How many leading bytes of `buf` are known to be valid UTF-8.
    checked: usize,
}

/// One WebSocket connection.
pub struct Session {
    id: ConnectionId,
    route: Arc<RouteContext>,
    remote: Option<Arc<str>>,
    dialect: Dialect,
    backend: Backend,
    /// When the client last showed it is alive (any frame, ping or pong).
    last_seen: Instant,
    /// A fragmented message being joined.
    fragments: Option<Fragments>,
    /// The close code of the close handshake, once one started (logged on disconnect).
    close_code: Option<u16>,
    /// The close reason (ws2api's DELETE body); None means the TCP connection dropped.
    close_reason: Option<String>,
    /// Unique per session (ids repeat across sessions on ws2api routes).
    serial: u64,
    /// Frames handed to the backend and not yet answered.
    pending: usize,
    /// The authorization hook of this worker, when one is configured.
    authorizer: Option<Addr<Authorizer>>,
    /// Connect-time headers and address, for the backend's connect notice and the
    /// authorization hook; dropped after the notice when no hook needs it later.
    connect_context: Option<serde_json::Value>,
    /// Hub actions waiting for an authorization answer ahead of them.
    hub_actions: VecDeque<(Vec<ChannelOp>, ReplyPlan)>,
    /// An authorization question is in flight.
    authorizing: bool,
    /// The connect hook's answer, sent as the first frame.
    first_frame: Option<Frame>,
    /// The hub closed this connection because a newer one took its id.
    replaced: bool,
}

/// Upgrade an HTTP request on a route to a WebSocket session.
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    route: web::Data<RouteContext>,
    backend: web::Data<Backend>,
    authorizer: web::Data<Option<Addr<Authorizer>>>,
    admission: web::Data<Option<Addr<Admission>>>,
) -> Result<HttpResponse, actix_web::Error> {
    let id = if route.client_ids {
        let text = req.match_info().get("id").unwrap_or_default();
        match ConnectionId::parse(text) {
            Ok(id) => id,
            Err(e) => {
                return Ok(HttpResponse::BadRequest()
                    .json(serde_json::json!({"error": "bad_request", "message": e.to_string()})))
            }
        }
    } else {
        ConnectionId::generate()
    };
    let remote = client_address(&req, &route.trusted_proxies);
    let relays = matches!(backend.get_ref(), Backend::Http { .. });
    let authorizer = authorizer.get_ref().clone();
    // Only the http backend and the authorization hook tell the application about the
    // upgrade request's headers.
    let hooked = route.accept_url.is_some();
    let headers: Vec<(String, String)> = if relays || authorizer.is_some() || hooked {
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
    } = backend.get_ref()
    {
        // ws2api: the application decides before the upgrade, seeing the client's headers.
        let check = Check {
            id: id.clone(),
            headers: headers.clone(),
            remote: remote.as_deref().map(ip_of),
        };
        match addr.send(check).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(HttpResponse::Forbidden().body("forbidden")),
            Ok(Err(e)) => {
                log::warn!("id={id} connect check failed: {e}");
                return Ok(HttpResponse::BadGateway().body("bad gateway"));
            }
            Err(_) => return Ok(HttpResponse::BadGateway().body("bad gateway")),
        }
    }
    let context = (relays || authorizer.is_some() || hooked).then(|| {
        let headers: serde_json::Map<String, serde_json::Value> =
            headers.into_iter().map(|(k, v)| (k, v.into())).collect();
        serde_json::json!({"headers": headers, "remote": remote.as_deref()})
    });
    let mut first_frame = None;
    if let (Some(url), Some(admission), Some(context)) =
        (&route.accept_url, admission.get_ref(), &context)
    {
        let mut handshake = context.clone();
        handshake["path"] = req.path().into();
        let admit = Admit {
            url: url.clone(),
            handshake,
        };
        match admission.send(admit).await {
            Ok(Ok(frame)) => first_frame = frame,
            Ok(Err(status)) => {
                let status = actix_web::http::StatusCode::from_u16(status)
                    .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
                return Ok(HttpResponse::build(status).finish());
            }
            Err(_) => return Ok(HttpResponse::BadGateway().finish()),
        }
    }
    // The connect hook alone needs the context only before the upgrade.
    let connect_context = context.filter(|_| relays || authorizer.is_some());
    let mut options = route.options.clone();
    if let Some(cookie) = &route.xrf_cookie {
        options.xrf_token = Some(
            req.cookie(cookie)
                .map(|c| c.value().to_owned())
                .unwrap_or_default(),
        );
    }
    let session = Session {
        dialect: Dialect::new(route.dialect, &id, options),
        id,
        route: route.into_inner(),
        remote,
        backend: backend.get_ref().clone(),
        last_seen: Instant::now(),
        fragments: None,
        close_code: None,
        close_reason: None,
        serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        pending: 0,
        authorizer,
        connect_context,
        hub_actions: VecDeque::new(),
        authorizing: false,
        first_frame,
        replaced: false,
    };
    let max = session.route.limits.max_message_size;
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(max)
        .start()
}

/// An X-Forwarded-For entry as an IP: `1.2.3.4`, `1.2.3.4:5`, `::1` or `[::1]:5`.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// The IP part of an `ip:port` or bare `ip` address text.
fn ip_of(address: &str) -> String {
    forwarded_ip(address).map_or_else(|| address.to_owned(), |ip| ip.to_string())
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last
/// X-Forwarded-For entry that is not itself a trusted proxy.
fn client_address(req: &HttpRequest, trusted: &crate::config::TrustedProxies) -> Option<Arc<str>> {
    let peer = req.peer_addr()?;
    if trusted.contains(&peer.ip()) {
        let entries: Vec<&str> = req
            .headers()
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

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.route.live.fetch_add(1, Ordering::SeqCst);
        ctx.set_mailbox_capacity(self.route.limits.outbound_queue);
        log::info!(
            "connect id={} route={} remote={}",
            self.id,
            self.route.path,
            self.remote.as_deref().unwrap_or("-")
        );
        let connect = Connect {
            id: self.id.clone(),
            route: self.route.path.clone(),
            remote: self.remote.clone(),
            recipient: ctx.address().recipient(),
            serial: self.serial,
            replace: self.route.client_ids,
        };
        self.route
            .hub
            .send(connect)
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(Ok(())) => {}
                Ok(Err(ConnectRefused::ShuttingDown)) => act.close(
                    ctx,
                    Close::new(close_code::GOING_AWAY, "server shutting down"),
                ),
                Ok(Err(refused)) => act.close(
                    ctx,
                    Close::new(close_code::TRY_AGAIN_LATER, refused.to_string()),
                ),
                Err(_) => act.close(
                    ctx,
                    Close::new(close_code::INTERNAL_ERROR, "hub unavailable"),
                ),
            })
            .spawn(ctx);
        if let Backend::Http { addr, .. } = &self.backend {
            addr.do_send(Open {
                key: self.serial,
                id: self.id.clone(),
                reply_to: ctx.address().recipient(),
                headers: if self.authorizer.is_some() {
                    self.connect_context.clone()
                } else {
                    self.connect_context.take()
                }
                .unwrap_or_default(),
            });
        }
        if let Some(frame) = self.first_frame.take() {
            Self::write(ctx, frame);
        }
        self.heartbeat(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.route.hub.do_send(Disconnect {
            id: self.id.clone(),
            serial: self.serial,
        });
        if let Backend::Http { addr, notices, .. } = &self.backend {
            // Exactly once per session: `stopped` runs once, whatever ended the connection.
            // A connection replaced by a newer one with its id sends none: the id lives on.
            let notify = notices.is_some() && !self.replaced;
            if let (true, Some(notices)) = (notify, notices) {
                notices.add();
            }
            addr.do_send(Closed {
                key: self.serial,
                reason: self.close_reason.clone().unwrap_or_else(|| "EOF".into()),
                notify,
            });
        }
        self.route.live.fetch_sub(1, Ordering::SeqCst);
        log::info!(
            "disconnect id={} route={} remote={} code={}",
            self.id,
            self.route.path,
            self.remote.as_deref().unwrap_or("-"),
            self.close_code.unwrap_or(close_code::ABNORMAL)
        );
    }
}

impl Session {
    /// Ping every interval; close a connection silent for longer than the timeout.
    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let limits = &self.route.limits;
        let timeout = limits.heartbeat_timeout();
        ctx.run_interval(limits.heartbeat_interval(), move |act, ctx| {
            if act.last_seen.elapsed() > timeout {
                log::info!("id={} heartbeat timeout after {:?}", act.id, timeout);
                act.close(ctx, Close::new(close_code::GOING_AWAY, "heartbeat timeout"));
            } else {
                ctx.ping(b"");
            }
        });
    }

    /// Send a close frame and stop.
    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, close: Close) {
        if self.close_code.is_none() {
            self.close_code = Some(close.code);
            self.close_reason = Some(close.reason.clone());
        }
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(close.code),
            description: (!close.reason.is_empty()).then_some(close.reason),
        }));
        ctx.stop();
    }

    fn write(ctx: &mut ws::WebsocketContext<Self>, frame: Frame) {
        match frame {
            Frame::Text(text) => ctx.text(text),
            Frame::Binary(bytes) => ctx.binary(bytes),
        }
    }

    /// A whole message arrived: let the dialect decide what it means.
    fn on_frame(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: Frame) {
        match self.dialect.decode(frame) {
            Action::Relay(frame) => match &self.backend {
                Backend::Loopback => Self::write(ctx, frame),
                Backend::Http { addr, .. } => {
                    if self.pending >= self.route.max_pending {
                        return self.close(
                            ctx,
                            Close::new(
                                close_code::POLICY_VIOLATION,
                                "too many messages waiting for the backend",
                            ),
                        );
                    }
                    self.pending += 1;
                    addr.do_send(Relay {
                        key: self.serial,
                        frame,
                    });
                }
            },
            Action::Hub { ops, reply } => {
                // Requests waiting behind an authorization question are bounded like frames
                // waiting for the backend.
                if self.hub_actions.len() >= self.route.max_pending {
                    return self.close(
                        ctx,
                        Close::new(
                            close_code::POLICY_VIOLATION,
                            "too many requests waiting for authorization",
                        ),
                    );
                }
                self.hub_actions.push_back((ops, reply));
                self.next_hub_action(ctx);
            }
            Action::Reply(frame) => Self::write(ctx, frame),
            Action::Close(close) => self.close(ctx, close),
            Action::Ignore => {}
        }
    }

    /// Run queued hub actions in order. One that needs the authorization hook waits for its
    /// answer, and the actions behind it wait too, so a client's requests keep their order.
    fn next_hub_action(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        while !self.authorizing {
            let Some((ops, reply)) = self.hub_actions.pop_front() else {
                return;
            };
            let channels = channels_to_authorize(&ops);
            match &self.authorizer {
                Some(authorizer) if !channels.is_empty() => {
                    self.authorizing = true;
                    let question = Authorize {
                        id: self.id.clone(),
                        serial: self.serial,
                        channels,
                        context: self.connect_context.clone().unwrap_or_default(),
                    };
                    authorizer
                        .send(question)
                        .into_actor(self)
                        .map(move |allowed, act, ctx| {
                            act.authorizing = false;
                            act.apply(ctx, ops, reply, Some(allowed.unwrap_or_default()));
                            act.next_hub_action(ctx);
                        })
                        .spawn(ctx);
                }
                _ => self.apply(ctx, ops, reply, None),
            }
        }
    }

    /// Apply channel operations in the hub, minus what `allowed` (if any) refuses, and send
    /// the dialect's rendering of the outcomes.
    fn apply(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        ops: Vec<ChannelOp>,
        reply: ReplyPlan,
        allowed: Option<HashSet<String>>,
    ) {
        // For each op: Some(outcome) decided here, or None for "the hub's next outcome".
        let mut decided = Vec::with_capacity(ops.len());
        let mut kept = Vec::with_capacity(ops.len());
        let mut replace_denied = Vec::new();
        for op in ops {
            let Some(allowed) = &allowed else {
                kept.push(op);
                decided.push(None);
                continue;
            };
            match op {
                ChannelOp::Subscribe(channel) if !allowed.contains(channel.as_str()) => {
                    decided.push(Some(OpOutcome::Denied(channel.to_string())));
                }
                ChannelOp::SubscribePrefix(prefix) if !allowed.contains(&prefix) => {
                    decided.push(Some(OpOutcome::Denied(prefix)));
                }
                ChannelOp::Replace(wanted) => {
                    let (ok, denied): (BTreeSet<_>, BTreeSet<_>) = wanted
                        .into_iter()
                        .partition(|c| allowed.contains(c.as_str()));
                    replace_denied = denied.into_iter().collect();
                    kept.push(ChannelOp::Replace(ok));
                    decided.push(None);
                }
                op => {
                    kept.push(op);
                    decided.push(None);
                }
            }
        }
        let merge = move |outcomes: Vec<OpOutcome>| {
            let mut outcomes = outcomes.into_iter();
            decided
                .into_iter()
                .map(|slot| match slot.or_else(|| outcomes.next()) {
                    Some(OpOutcome::Replaced {
                        current,
                        left,
                        joined,
                        ..
                    }) => OpOutcome::Replaced {
                        current,
                        left,
                        joined,
                        denied: replace_denied.clone(),
                    },
                    Some(outcome) => outcome,
                    None => OpOutcome::UnknownConnection,
                })
                .collect::<Vec<_>>()
        };
        if kept.is_empty() {
            for frame in reply.render(merge(Vec::new())) {
                Self::write(ctx, frame);
            }
            return;
        }
        let apply = Apply {
            id: self.id.clone(),
            ops: kept,
        };
        self.route
            .hub
            .send(apply)
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(outcomes) => {
                    for frame in reply.render(merge(outcomes)) {
                        Self::write(ctx, frame);
                    }
                }
                Err(_) => act.close(
                    ctx,
                    Close::new(close_code::INTERNAL_ERROR, "hub unavailable"),
                ),
            })
            .spawn(ctx);
    }

    /// A fragment arrived: join it, enforcing the size limit and UTF-8 as it goes.
    fn on_fragment(&mut self, ctx: &mut ws::WebsocketContext<Self>, item: Item) {
        let (first, data, last) = match item {
            Item::FirstText(data) => (Some(true), data, false),
            Item::FirstBinary(data) => (Some(false), data, false),
            Item::Continue(data) => (None, data, false),
            Item::Last(data) => (None, data, true),
        };
        let fragments = match (first, self.fragments.as_mut()) {
            (Some(text), None) => self.fragments.insert(Fragments {
                text,
                buf: BytesMut::new(),
                checked: 0,
            }),
            (None, Some(fragments)) => fragments,
            (Some(_), Some(_)) | (None, None) => {
                return self.close(
                    ctx,
                    Close::new(close_code::PROTOCOL_ERROR, "unexpected continuation frame"),
                )
            }
        };
        if fragments.buf.len() + data.len() > self.route.limits.max_message_size {
            return self.close(
                ctx,
                Close::new(close_code::MESSAGE_TOO_BIG, "message too big"),
            );
        }
        fragments.buf.extend_from_slice(&data);
        if fragments.text && !utf8_prefix_ok(fragments, last) {
            return self.close(
                ctx,
                Close::new(close_code::INVALID_PAYLOAD, "text is not valid UTF-8"),
            );
        }
        if last {
            let fragments = self.fragments.take().expect("fragments in progress");
            let bytes = fragments.buf.freeze();
            let frame = if fragments.text {
                match ByteString::try_from(bytes) {
                    Ok(text) => Frame::Text(text),
                    Err(_) => {
                        return self.close(
                            ctx,
                            Close::new(close_code::INVALID_PAYLOAD, "text is not valid UTF-8"),
                        )
                    }
                }
            } else {
                Frame::Binary(bytes)
            };
            self.on_frame(ctx, frame);
        }
    }
}

/// The channels (and topic prefixes) a list of operations would join.
fn channels_to_authorize(ops: &[ChannelOp]) -> Vec<String> {
    let mut channels = Vec::new();
    for op in ops {
        match op {
            ChannelOp::Subscribe(channel) => channels.push(channel.to_string()),
            ChannelOp::SubscribePrefix(prefix) => channels.push(prefix.clone()),
            ChannelOp::Replace(wanted) => channels.extend(wanted.iter().map(|c| c.to_string())),
            ChannelOp::Unsubscribe(_) | ChannelOp::Publish { .. } => {}
        }
    }
    channels
}

/// Check the UTF-8 of a text message being joined, as far as it has arrived. A sequence cut at
/// the end of a fragment is fine unless this is the last fragment; an invalid one fails at once.
fn utf8_prefix_ok(fragments: &mut Fragments, last: bool) -> bool {
    match std::str::from_utf8(&fragments.buf[fragments.checked..]) {
        Ok(_) => {
            fragments.checked = fragments.buf.len();
            true
        }
        Err(e) if e.error_len().is_none() && !last => {
            fragments.checked += e.valid_up_to();
            true
        }
        Err(_) => false,
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        let msg = match msg {
            Ok(msg) => msg,
            Err(err) => return self.on_protocol_error(ctx, err),
        };
        match msg {
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Text(_) | ws::Message::Binary(_) if self.fragments.is_some() => {
                self.close(
                    ctx,
                    Close::new(
                        close_code::PROTOCOL_ERROR,
                        "new message before the fragmented one ended",
                    ),
                );
            }
            ws::Message::Text(text) => self.on_frame(ctx, Frame::Text(text)),
            ws::Message::Binary(bytes) => self.on_frame(ctx, Frame::Binary(bytes)),
            ws::Message::Continuation(item) => self.on_fragment(ctx, item),
            ws::Message::Close(reason) => {
                // Echo the client's close code (RFC 6455 §5.5.1) and stop.
                self.close_code = Some(
                    reason
                        .as_ref()
                        .map_or(close_code::NO_STATUS, |r| r.code.into()),
                );
                self.close_reason = Some(
                    reason
                        .as_ref()
                        .and_then(|r| r.description.clone())
                        .unwrap_or_default(),
                );
                ctx.close(reason.map(|r| ws::CloseReason {
                    code: r.code,
                    description: None,
                }));
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The TCP stream ended; without a close frame this is an abnormal closure (1006).
        ctx.stop();
    }
}

impl Session {
    fn on_protocol_error(&mut self, ctx: &mut ws::WebsocketContext<Self>, err: ws::ProtocolError) {
        let close = match &err {
            ws::ProtocolError::Overflow => {
                Close::new(close_code::MESSAGE_TOO_BIG, "message too big")
            }
            // actix-web-actors reports text that is not UTF-8 as an I/O error naming UTF-8.
            ws::ProtocolError::Io(e) if e.to_string().to_ascii_lowercase().contains("utf-8") => {
                Close::new(close_code::INVALID_PAYLOAD, "text is not valid UTF-8")
            }
            ws::ProtocolError::Io(e) => {
                log::debug!("id={} read error: {e}", self.id);
                ctx.stop();
                return;
            }
            other => Close::new(
                close_code::PROTOCOL_ERROR,
                format!("protocol error: {other}"),
            ),
        };
        log::debug!("id={} closing with {}: {err}", self.id, close.code);
        self.close(ctx, close);
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match msg.0 {
            Outbound::Frame(frame) => Self::write(ctx, frame),
            Outbound::Publication(publication) => {
                Self::write(ctx, self.dialect.encode(&publication))
            }
            Outbound::Close(close) => self.close(ctx, close),
            Outbound::Replaced => {
                // Only the hub's replacement sets this; a client or the push API using code
                // 4001 does not suppress the disconnect notice.
                self.replaced = true;
                self.close(
                    ctx,
                    Close::new(
                        close_code::REPLACED,
                        "replaced by a newer connection with the same id",
                    ),
                );
            }
        }
    }
}

impl Handler<BackendReply> for Session {
    type Result = ();

    fn handle(&mut self, msg: BackendReply, ctx: &mut Self::Context) {
        match msg {
            BackendReply::Answer(frame) => {
                self.pending = self.pending.saturating_sub(1);
                Self::write(ctx, frame);
            }
            BackendReply::Done => self.pending = self.pending.saturating_sub(1),
            BackendReply::Failed(close) => self.close(ctx, close),
        }
    }
}
