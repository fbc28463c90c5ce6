//! The session actor, one per WebSocket: the heartbeat, the size, UTF-8 and rate limits,
//! fragment reassembly, and frames in and out on the raw socket. The upgrade hands it the
//! TCP stream once the handshake is answered; from then on the socket belongs to this actor
//! alone (no HTTP dispatcher, no buffers kept for the socket's whole life).
//!
//! Reading: bytes are read only when the socket is readable, into a buffer that exists only
//! while a frame is incomplete; a frame header announcing more than `limits.max_message_size`
//! is refused (1009) before any of its payload is read. Writing: frames are written at once
//! with vectored writes of shared payloads; only what the kernel does not take waits in the
//! [`Outbox`], and what waits is bounded by the connection's [`Backlog`]. While the client
//! lets the backlog of its own replies (echoes, answers) grow past the budget, the session
//! stops reading from it. A client that does not read at all is closed within the heartbeat
//! timeout, and every close ends the TCP connection as soon as the close frames are exchanged.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream};
use tokio::net::TcpStream;

use crate::backend::http::{BackendReply, Closed, Open, Relay};
use crate::backend::{loopback, Backend};
use crate::config::LimitsConfig;
use crate::connection::ConnectionId;
use crate::courier::CourierHandle;
use crate::deflate::Deflate;
use crate::delivery::{Deliver, Outbound};
use crate::dialect::{Action, Dialect, DialectKind, DialectOptions, ReplyPlan};
use crate::frame::{close_code, Close, Frame};
use crate::gate;
use crate::hook::authorize::{Authorize, Authorizer};
use crate::hub::{HubHandle, Registration};
use crate::metrics::RouteLabels;
use crate::operation::ChannelOp;
use crate::outbox::{Backlog, Outbox};
use crate::rate_limit::RateLimit;
use crate::reassembly::Reassembly;
use crate::shutdown::{Guard, Tracker};
use crate::wire::{self, DataKind, Header, Incoming, Opcode};

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
    /// Hands every session the guard that shutdown waits for (and counts them for the
    /// connection cap).
    pub sessions: Tracker,
    /// Per-connection limits and the heartbeat.
    pub limits: LimitsConfig,
    /// The hub every session registers with.
    pub hub: HubHandle,
    /// The path has an `{id}` segment: the client picks its id (ws2api), and a newer
    /// connection with the same id replaces the older one.
    pub client_ids: bool,
    /// Frames one connection may have waiting for the backend.
    pub max_pending: usize,
    /// Peers whose X-Forwarded-For header is believed.
    pub trusted_proxies: Arc<crate::config::TrustedProxies>,
    /// permessage-deflate, when the route accepts it.
    pub compression: Option<crate::deflate::Settings>,
    /// The route's labels in the metrics.
    pub labels: RouteLabels,
}

/// Source of session serials (unique per process).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// Bytes read from the socket per read call (the buffer is given back once no frame is
/// incomplete, so an idle connection holds none).
const READ_CHUNK: usize = 4096;

/// Longest wait for the client's answer to the server's close frame before the TCP
/// connection is closed anyway (never longer than the heartbeat timeout). Browsers answer at
/// once; this only bounds clients that do not, and clients that have stopped reading.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything the upgrade decided about a new connection.
pub(crate) struct SessionSetup {
    /// The connection's id.
    pub id: ConnectionId,
    /// The route it connected on.
    pub route: Arc<RouteContext>,
    /// The client's address.
    pub remote: Option<Arc<str>>,
    /// The route's dialect settings for this connection (the xrf cookie filled in).
    pub options: DialectOptions,
    /// This worker's backend.
    pub backend: Backend,
    /// This worker's authorization hook, when one is configured.
    pub authorizer: Option<Addr<Authorizer>>,
    /// This worker's courier, which delivers publications to the session.
    pub courier: CourierHandle,
    /// Connect-time headers and address, for the backend and the authorization hook.
    pub connect_context: Option<serde_json::Value>,
    /// The connect hook's answer, sent as the first frame.
    pub first_frame: Option<Frame>,
    /// The socket, after the 101 answer.
    pub io: TcpStream,
    /// Bytes the client sent after its handshake that were already read.
    pub read_buf: BytesMut,
    /// permessage-deflate, when the handshake agreed on it.
    pub deflate: Option<crate::deflate::Agreed>,
}

/// Lets the session stop and resume reading from its socket.
#[derive(Default)]
struct ReadGate {
    paused: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl ReadGate {
    fn resume(&self) {
        self.paused.set(false);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Why reading ended early.
enum ReadError {
    /// The client broke the protocol or a limit: close with this.
    Refused(Close),
    /// The socket failed.
    Io(std::io::Error),
}

/// The socket's frames, read when the socket is readable.
struct FrameReader {
    io: Rc<TcpStream>,
    buf: BytesMut,
    max_payload: usize,
    /// RSV1 may be set (permessage-deflate was agreed).
    deflate: bool,
    gate: Rc<ReadGate>,
    done: bool,
}

impl Stream for FrameReader {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.gate.paused.get() {
                this.gate.waker.set(Some(cx.waker().clone()));
                return Poll::Pending;
            }
            match wire::decode(&mut this.buf, this.max_payload, this.deflate) {
                Ok(Some(frame)) => {
                    // The frame's payload was split off the buffer and may share its
                    // allocation: an empty buffer is dropped, or the connection would keep
                    // its largest message's memory until its next frame.
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
                Err(close) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ReadError::Refused(close))));
                }
            }
            if let Err(e) = futures_util::ready!(this.io.poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Err(ReadError::Io(e))));
            }
            if this.buf.capacity() - this.buf.len() < READ_CHUNK {
                this.buf.reserve(READ_CHUNK);
            }
            match this.io.try_read_buf(&mut this.buf) {
                Ok(0) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Nothing more to read now: an idle connection keeps no buffer.
                    if this.buf.is_empty() {
                        this.buf = BytesMut::new();
                    }
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(ReadError::Io(e))));
                }
            }
        }
    }
}

/// One WebSocket connection.
pub struct Session {
    id: ConnectionId,
    route: Arc<RouteContext>,
    remote: Option<Arc<str>>,
    dialect: Dialect,
    backend: Backend,
    /// The socket (shared with the reader stream).
    io: Rc<TcpStream>,
    /// Pauses reading while the client's own replies are over the backlog budget.
    gate: Rc<ReadGate>,
    /// Frames the kernel has not taken yet.
    outbox: Outbox,
    /// Messages and bytes queued for this connection (shared with the hub).
    backlog: Arc<Backlog>,
    /// A wait for the socket to become writable is in flight.
    waiting_writable: bool,
    /// When the outbox last made progress (bytes written, or it was empty).
    last_write: Instant,
    /// When the client last showed it is alive (any frame, ping or pong).
    last_seen: Instant,
    /// When the heartbeat last ran (a long gap means this process was not scheduled).
    last_tick: Instant,
    /// Messages and bytes per second this client may send.
    rate: RateLimit,
    /// A fragmented message being joined.
    reassembly: Reassembly,
    /// permessage-deflate, when the handshake agreed on it.
    deflate: Option<Deflate>,
    /// The close code of the close handshake, once one started (logged on disconnect).
    close_code: Option<u16>,
    /// The close reason (ws2api's DELETE body); None means the TCP connection dropped.
    close_reason: Option<String>,
    /// The server's close frame is queued.
    close_sent: bool,
    /// The client's close frame arrived.
    close_received: bool,
    /// The connection is being failed (RFC 6455 §7.1.7): TCP ends once the close frame is
    /// written, without waiting for the client's answer.
    failing: bool,
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
    /// Keeps shutdown waiting until this session has ended.
    drain_guard: Option<Guard>,
    /// This worker's courier, handed to the hub with the registration.
    courier: Option<CourierHandle>,
    /// Bytes of this session's outbox counted in the slow-consumer gauge.
    queued_reported: usize,
}

/// Start the session of an upgraded connection on the current worker thread.
pub(crate) fn start(setup: SessionSetup) {
    let limits = &setup.route.limits;
    let io = Rc::new(setup.io);
    let gate = Rc::new(ReadGate::default());
    let reader = FrameReader {
        io: io.clone(),
        // What the client sent right behind its handshake; the HTTP reader's buffer itself
        // is not kept.
        buf: if setup.read_buf.is_empty() {
            BytesMut::new()
        } else {
            BytesMut::from(&setup.read_buf[..])
        },
        max_payload: limits.max_message_size,
        deflate: setup.deflate.is_some(),
        gate: gate.clone(),
        done: false,
    };
    let now = Instant::now();
    let session = Session {
        dialect: Dialect::new(setup.route.dialect, &setup.id, setup.options),
        id: setup.id,
        remote: setup.remote,
        backend: setup.backend,
        io,
        gate,
        outbox: Outbox::default(),
        backlog: Arc::new(Backlog::new(
            limits.outbound_queue,
            limits.outbound_queue_bytes,
        )),
        waiting_writable: false,
        last_write: now,
        last_seen: now,
        last_tick: now,
        rate: RateLimit::new(limits.max_messages_per_second, limits.max_bytes_per_second),
        reassembly: Reassembly::new(limits.max_message_size),
        deflate: setup
            .deflate
            .map(|agreed| Deflate::new(agreed, limits.max_message_size)),
        close_code: None,
        close_reason: None,
        close_sent: false,
        close_received: false,
        failing: false,
        serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        pending: 0,
        authorizer: setup.authorizer,
        connect_context: setup.connect_context,
        hub_actions: VecDeque::new(),
        authorizing: false,
        first_frame: setup.first_frame,
        replaced: false,
        drain_guard: Some(setup.route.sessions.guard()),
        courier: Some(setup.courier),
        queued_reported: 0,
        route: setup.route,
    };
    Session::create(move |ctx| {
        ctx.add_stream(reader);
        session
    });
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The backlog bounds deliveries; the mailbox only needs room for the few messages
        // beyond it (closes, replacement).
        ctx.set_mailbox_capacity(self.route.limits.outbound_queue + 16);
        log::info!(
            id:% = self.id;
            "connect route={} remote={}",
            self.route.path,
            self.remote.as_deref().unwrap_or("-")
        );
        self.route.hub.metrics().connected(&self.route.labels);
        let courier = self.courier.take().expect("a session starts once");
        let connect = Registration {
            id: self.id.clone(),
            route: self.route.path.clone(),
            remote: self.remote.clone(),
            recipient: ctx.address().recipient(),
            serial: self.serial,
            replace: self.route.client_ids,
            dialect: self.route.dialect,
            backlog: self.backlog.clone(),
            courier,
        };
        // Fire and forget: a refusal comes back as a close, so a session that ends at once
        // is still registered (and counted) before its disconnect.
        if self.route.hub.connect(connect).is_err() {
            self.close(ctx, Close::new(close_code::TRY_AGAIN_LATER, "server busy"));
        }
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
            self.reply(ctx, frame);
        }
        let interval = self.route.limits.heartbeat_interval();
        ctx.run_interval(interval, Self::heartbeat);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        let (messages, bytes) = self.outbox.clear();
        self.backlog.release(messages, bytes);
        self.report_queued();
        let code = self.close_code.unwrap_or(close_code::ABNORMAL);
        self.route
            .hub
            .metrics()
            .disconnected(&self.route.labels, code);
        let forgotten = self.route.hub.disconnect(self.id.clone(), self.serial);
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
                forgotten,
            });
        }
        // Dropping the guard tells shutdown this session is over.
        self.drain_guard.take();
        log::info!(
            id:% = self.id;
            "disconnect route={} remote={} code={}",
            self.route.path,
            self.remote.as_deref().unwrap_or("-"),
            self.close_code.unwrap_or(close_code::ABNORMAL)
        );
    }
}

/// A frame's opcode and payload.
fn frame_parts(frame: Frame) -> (Opcode, Bytes) {
    match frame {
        Frame::Text(text) => (Opcode::Text, text.into_bytes()),
        Frame::Binary(bytes) => (Opcode::Binary, bytes),
    }
}

impl Session {
    /// Ping every interval; close a connection silent for longer than the timeout, and drop
    /// one that has not taken a byte for that long.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let limits = &self.route.limits;
        let (interval, timeout) = (limits.heartbeat_interval(), limits.heartbeat_timeout());
        let now = Instant::now();
        let gap = now.duration_since(self.last_tick);
        self.last_tick = now;
        if let Some(deflate) = &mut self.deflate {
            deflate.idle_check();
        }
        if gap > interval * 2 {
            // This process was not scheduled (stopped, a paused VM): the silence was ours, not
            // the client's. Ask again and give it a whole timeout to answer.
            log::debug!(id:% = self.id; "heartbeat resumed after a {gap:?} gap");
            self.last_seen = now;
            self.last_write = now;
            self.ping(ctx);
            return;
        }
        if self.close_sent {
            return;
        }
        if !self.outbox.is_empty() && now.duration_since(self.last_write) > timeout {
            log::info!(
                id:% = self.id; "not reading: nothing written for {timeout:?}; closing the socket"
            );
            self.close_code.get_or_insert(close_code::POLICY_VIOLATION);
            self.close_reason
                .get_or_insert_with(|| "client is not reading".into());
            return self.abort(ctx);
        }
        if now.duration_since(self.last_seen) > timeout {
            log::info!(id:% = self.id; "heartbeat timeout after {:?}", timeout);
            return self.close(ctx, Close::new(close_code::GOING_AWAY, "heartbeat timeout"));
        }
        self.ping(ctx);
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        self.send(ctx, Opcode::Ping, Bytes::new(), None, false);
    }

    /// Queue a frame and write what the socket takes. `counted` is its size when its room in
    /// the backlog is already taken (the uncompressed size); `shared` marks a payload other
    /// connections receive too (its compressed form is shared as well).
    fn send(
        &mut self,
        ctx: &mut Context<Self>,
        opcode: Opcode,
        payload: Bytes,
        counted: Option<usize>,
        shared: bool,
    ) {
        if self.close_sent {
            // Nothing follows the close frame.
            if let Some(size) = counted {
                self.backlog.release(1, size);
            }
            return;
        }
        let data = matches!(opcode, Opcode::Text | Opcode::Binary);
        let compressed = self
            .deflate
            .as_mut()
            .filter(|_| data)
            .and_then(|deflate| deflate.outgoing(&payload, shared));
        let (header, payload) = match compressed {
            Some(compressed) => (Header::compressed(opcode, compressed.len()), compressed),
            None => (Header::new(opcode, payload.len()), payload),
        };
        self.outbox.push(header, payload, counted);
        self.flush(ctx);
    }

    /// Send a frame the session makes itself (an answer, an echo). It always counts in the
    /// backlog; while the backlog is over budget, the session stops reading from this client.
    fn reply(&mut self, ctx: &mut Context<Self>, frame: Frame) {
        let (opcode, payload) = frame_parts(frame);
        self.send_own(ctx, opcode, payload);
    }

    /// Queue a frame of the session's own (counted in the backlog); pause reading while the
    /// backlog is over budget.
    fn send_own(&mut self, ctx: &mut Context<Self>, opcode: Opcode, payload: Bytes) {
        let size = payload.len();
        self.backlog.add(size);
        self.send(ctx, opcode, payload, Some(size), false);
        if self.backlog.over_budget() && !self.gate.paused.get() {
            log::debug!(id:% = self.id; "backlog over budget: reading paused");
            self.gate.paused.set(true);
        }
    }

    /// Write queued frames until the socket would block; then wait until it is writable.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.waiting_writable {
            return;
        }
        let io = self.io.clone();
        match self.outbox.flush(|slices| io.try_write_vectored(slices)) {
            Ok(done) => {
                self.backlog
                    .release(done.released_messages, done.released_bytes);
                if done.written > 0 || !done.blocked {
                    self.last_write = Instant::now();
                }
                if done.blocked {
                    self.waiting_writable = true;
                    let io = self.io.clone();
                    async move { io.writable().await }
                        .into_actor(self)
                        .map(|ready, act, ctx| {
                            act.waiting_writable = false;
                            match ready {
                                Ok(()) => act.flush(ctx),
                                Err(_) => act.abort(ctx),
                            }
                        })
                        .spawn(ctx);
                } else if self.close_sent && (self.close_received || self.failing) {
                    self.finish(ctx);
                    return;
                }
                if self.gate.paused.get() && self.backlog.below_half() {
                    self.gate.resume();
                }
                if done.blocked || self.queued_reported > 0 {
                    self.report_queued();
                }
            }
            Err(e) => {
                log::debug!(id:% = self.id; "write failed: {e}");
                self.abort(ctx);
            }
        }
    }

    /// Bring the slow-consumer gauge up to date with what waits in the outbox.
    fn report_queued(&mut self) {
        let queued = self.outbox.queued_bytes();
        let gauge = self.route.hub.metrics().queued_bytes();
        let delta = i64::try_from(queued).unwrap_or(i64::MAX)
            - i64::try_from(self.queued_reported).unwrap_or(i64::MAX);
        gauge.inc_by(delta);
        self.queued_reported = queued;
    }

    /// The close handshake is complete: end the TCP connection now (RFC 6455 §7.1.1).
    fn finish(&mut self, ctx: &mut Context<Self>) {
        let _ = socket2::SockRef::from(&*self.io).shutdown(std::net::Shutdown::Write);
        ctx.stop();
    }

    /// Drop the connection without waiting for anything (reset, kernel buffers freed).
    fn abort(&mut self, ctx: &mut Context<Self>) {
        let _ = socket2::SockRef::from(&*self.io).set_linger(Some(Duration::ZERO));
        ctx.stop();
    }

    /// Send a close frame; the TCP connection ends once the client answers it (or the close
    /// handshake times out).
    fn close(&mut self, ctx: &mut Context<Self>, close: Close) {
        self.close_with(ctx, Some(close));
    }

    fn close_with(&mut self, ctx: &mut Context<Self>, close: Option<Close>) {
        if self.close_sent {
            return;
        }
        let payload = close
            .as_ref()
            .map_or_else(Bytes::new, wire::close_frame_payload);
        if self.close_code.is_none() {
            self.close_code = Some(close.as_ref().map_or(close_code::NO_STATUS, |c| c.code));
            self.close_reason = Some(close.map(|c| c.reason).unwrap_or_default());
        }
        self.reassembly.clear();
        if let Some(deflate) = &mut self.deflate {
            deflate.clear();
        }
        self.outbox
            .push(Header::new(Opcode::Close, payload.len()), payload, None);
        self.close_sent = true;
        // Whatever the client does, the socket is closed by then.
        let wait = CLOSE_HANDSHAKE_TIMEOUT.min(self.route.limits.heartbeat_timeout());
        ctx.run_later(wait, |act, ctx| {
            if act.outbox.is_empty() {
                log::debug!(
                    id:% = act.id; "no answer to the close frame; closing the socket"
                );
                act.finish(ctx);
            } else {
                log::info!(
                    id:% = act.id; "not reading: the close frame was never taken; resetting the socket"
                );
                act.abort(ctx);
            }
        });
        self.flush(ctx);
    }

    /// Fail the connection (RFC 6455 §7.1.7) after a protocol error or a broken limit: send
    /// the close frame and end the TCP connection once it is written.
    fn fail(&mut self, ctx: &mut Context<Self>, close: Close) {
        self.failing = true;
        self.close(ctx, close);
    }

    /// A whole message arrived: let the dialect decide what it means.
    fn on_message(&mut self, ctx: &mut Context<Self>, frame: Frame) {
        self.route.hub.metrics().frame_received(self.route.dialect);
        let size = match &frame {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        };
        if !self.rate.allow(1, size) {
            return self.over_rate(ctx);
        }
        match self.dialect.decode(frame) {
            Action::Relay(frame) => match &self.backend {
                Backend::Loopback => self.reply(ctx, loopback::answer(frame)),
                Backend::Http { addr, .. } => {
                    if self.pending >= self.route.max_pending {
                        return self.fail(
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
                // A request that publishes several times counts once per publish.
                let publishes = ops
                    .iter()
                    .filter(|op| matches!(op, ChannelOp::Publish { .. }))
                    .count();
                if publishes > 1 && !self.rate.allow(publishes as u32 - 1, 0) {
                    return self.over_rate(ctx);
                }
                // Requests waiting behind an authorization question are bounded like frames
                // waiting for the backend.
                if self.hub_actions.len() >= self.route.max_pending {
                    return self.fail(
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
            Action::Reply(frame) => self.reply(ctx, frame),
            Action::Ignore => {}
        }
    }

    fn over_rate(&mut self, ctx: &mut Context<Self>) {
        let limits = &self.route.limits;
        let reason = format!(
            "rate limit: more than {} messages or {} bytes per second",
            limits.max_messages_per_second, limits.max_bytes_per_second
        );
        log::info!(id:% = self.id; "{reason}");
        self.fail(ctx, Close::new(close_code::POLICY_VIOLATION, reason));
    }

    /// A data frame arrived: inflate it if its message is compressed, then pass a whole
    /// message on, or join it to the message in progress.
    fn on_data(
        &mut self,
        ctx: &mut Context<Self>,
        kind: DataKind,
        fin: bool,
        compressed: bool,
        data: Bytes,
    ) {
        let data = match &mut self.deflate {
            Some(deflate) => match deflate.incoming(kind, fin, compressed, data) {
                Ok(data) => data,
                Err(close) => return self.fail(ctx, close),
            },
            None => data,
        };
        match self.reassembly.push(kind, fin, data) {
            Ok(Some(frame)) => self.on_message(ctx, frame),
            Ok(None) => {}
            Err(close) => self.fail(ctx, close),
        }
    }

    /// Run queued hub actions in order. One that needs the authorization hook waits for its
    /// answer, and the actions behind it wait too, so a client's requests keep their order.
    fn next_hub_action(&mut self, ctx: &mut Context<Self>) {
        while !self.authorizing {
            let Some((ops, reply)) = self.hub_actions.pop_front() else {
                return;
            };
            let channels = gate::channels_to_authorize(&ops);
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
        ctx: &mut Context<Self>,
        ops: Vec<ChannelOp>,
        reply: ReplyPlan,
        allowed: Option<HashSet<String>>,
    ) {
        let mut screened = gate::screen(ops, allowed.as_ref());
        let kept = std::mem::take(&mut screened.kept);
        if kept.is_empty() {
            for frame in reply.render(screened.outcomes(Vec::new())) {
                self.reply(ctx, frame);
            }
            return;
        }
        // Subscription changes go to the hub as one `apply` per run of them, each publish on
        // its own (`publish_from`): all are queued now, in request order, so the hub handles
        // them in that order; the outcomes are joined back in the same order.
        let hub = &self.route.hub;
        let mut requests = Vec::new();
        let mut run = Vec::new();
        for op in kept {
            match op {
                ChannelOp::Publish {
                    channel,
                    data,
                    exclude_sender,
                    require_subscribed,
                } => {
                    if !run.is_empty() {
                        requests.push(
                            hub.apply(self.id.clone(), std::mem::take(&mut run))
                                .boxed_local(),
                        );
                    }
                    let published = hub.publish_from(
                        self.id.clone(),
                        channel,
                        data,
                        exclude_sender,
                        require_subscribed,
                    );
                    requests.push(
                        async move { published.await.map(|outcome| vec![outcome]) }.boxed_local(),
                    );
                }
                op => run.push(op),
            }
        }
        if !run.is_empty() {
            requests.push(hub.apply(self.id.clone(), run).boxed_local());
        }
        futures_util::future::try_join_all(requests)
            .into_actor(self)
            .map(move |result, act, ctx| match result {
                Ok(outcomes) => {
                    let outcomes = outcomes.into_iter().flatten().collect();
                    for frame in reply.render(screened.outcomes(outcomes)) {
                        act.reply(ctx, frame);
                    }
                }
                Err(_) => act.close(
                    ctx,
                    Close::new(close_code::INTERNAL_ERROR, "hub unavailable"),
                ),
            })
            .spawn(ctx);
    }
}

impl StreamHandler<Result<Incoming, ReadError>> for Session {
    fn handle(&mut self, item: Result<Incoming, ReadError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        let frame = match item {
            Ok(frame) => frame,
            Err(ReadError::Refused(close)) => {
                log::debug!(
                    id:% = self.id; "closing with {}: {}",
                    close.code,
                    close.reason
                );
                return self.fail(ctx, close);
            }
            Err(ReadError::Io(e)) => {
                log::debug!(id:% = self.id; "read error: {e}");
                return ctx.stop();
            }
        };
        match frame {
            Incoming::Close(reason) => {
                self.close_received = true;
                if self.close_sent {
                    // The answer to our close: the handshake is complete once it is written.
                    self.flush(ctx);
                } else {
                    // Echo the client's close code (RFC 6455 §5.5.1); its reason is kept for
                    // the disconnect notice.
                    self.close_code = Some(reason.as_ref().map_or(close_code::NO_STATUS, |r| r.0));
                    self.close_reason =
                        Some(reason.as_ref().map(|r| r.1.clone()).unwrap_or_default());
                    self.close_with(ctx, reason.map(|(code, _)| Close::new(code, "")));
                }
            }
            // After our close frame only the client's close matters.
            _ if self.close_sent => {}
            Incoming::Ping(payload) => self.send_own(ctx, Opcode::Pong, payload),
            Incoming::Pong => {}
            Incoming::Data {
                kind,
                fin,
                compressed,
                payload,
            } => self.on_data(ctx, kind, fin, compressed, payload),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The client's side of the TCP stream ended (or reading failed); without a close frame
        // this is an abnormal closure (1006).
        ctx.stop();
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        match msg.0 {
            Outbound::Frame(frame) => {
                let (opcode, payload) = frame_parts(frame);
                let size = payload.len();
                // The hub reserved its room in the backlog.
                self.send(ctx, opcode, payload, Some(size), true);
            }
            Outbound::Close(close) => self.close(ctx, close),
            Outbound::CutOff => {
                let (messages, bytes) = self.outbox.drop_unstarted();
                self.backlog.release(messages, bytes);
                log::debug!(
                    id:% = self.id; "cut off: {messages} queued message(s) dropped"
                );
                self.close(
                    ctx,
                    Close::new(
                        close_code::POLICY_VIOLATION,
                        "outbound queue full: client is not reading",
                    ),
                );
            }
            Outbound::Fenced => {
                // This node lost its cluster lease: the node that reaps it sends the notice.
                self.replaced = true;
                self.close(
                    ctx,
                    Close::new(
                        close_code::SERVICE_RESTART,
                        "this node lost its cluster; reconnect",
                    ),
                );
            }
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
                self.reply(ctx, frame);
            }
            BackendReply::Done => self.pending = self.pending.saturating_sub(1),
            BackendReply::Failed(close) => self.close(ctx, close),
        }
    }
}
