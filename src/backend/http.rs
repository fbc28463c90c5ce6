//! The http backend: one actor per worker thread that owns that thread's `awc` client and
//! relays frames to the application in SocketDock's or ws2api's format.
//!
//! Per connection the backend keeps a queue of jobs (connect notice, messages, disconnect
//! notice) and runs them strictly one after another, so the application sees a connection's
//! frames in order and its disconnect notice last, while different connections proceed in
//! parallel. Results go back to the session as [`BackendReply`] messages. Transient failures
//! (connection refused, any 5xx) are retried with backoff until `request_timeout_ms`; a
//! callout that still fails closes the client with 1013 so it knows its frame was not relayed.
//! Each attempt, answer body included, finishes within the time left; answers are read up to
//! `limits.max_message_size`.
//!
//! The disconnect notice of an ended connection is small and must not be lost to a short
//! outage: it is kept (at most `max_pending_notices` across workers) and retried with backoff
//! for `notice_retry_ms`. Every notice carries a [`NOTICE_ID_HEADER`] that stays the same on
//! every try, so the application can drop a copy it already processed.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::http::{Method, StatusCode};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{read_answer, AnswerError};
use crate::config::{BackendConfig, RelayFormat};
use crate::connection::ConnectionId;
use crate::frame::{close_code, Close, Frame};

/// First retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts of a frame or connect notice.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a kept disconnect notice: an application back from an
/// outage hears about the connections that ended meanwhile within this long.
const NOTICE_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest ws2api connect-check answer read: the only answer that admits is `ok`.
const CHECK_ANSWER_LIMIT: usize = 64 * 1024;
/// The header that names a notice (connect notice, disconnect notice, connect check). It is the
/// same on every try of that notice, so an application can drop copies it already processed.
pub const NOTICE_ID_HEADER: &str = "switchboard-notice-id";

/// Backend -> session: what became of a job.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum BackendReply {
    /// A frame was relayed; send this answer to the client.
    Answer(Frame),
    /// A frame was relayed; no answer.
    Done,
    /// The backend failed; close the client with this.
    Failed(Close),
}

/// Disconnect notices not yet delivered, across all workers (shutdown waits for zero), and the
/// count of notices that were finally dropped.
#[derive(Clone, Default)]
pub struct PendingNotices(Arc<NoticeCounts>);

/// The counters behind [`PendingNotices`].
#[derive(Default)]
struct NoticeCounts {
    /// Disconnect notices queued, in flight or waiting for a retry.
    pending: AtomicUsize,
    /// Of those, the ones that failed at least once and are kept for a retry (the bounded ones).
    kept: AtomicUsize,
    /// Notices (connect or disconnect) given up on since start.
    dropped: AtomicU64,
    /// Woken when `pending` drops to zero (the drain waits on it).
    settled: tokio::sync::Notify,
}

impl PendingNotices {
    /// How many disconnect notices are queued, in flight or waiting for a retry.
    pub fn count(&self) -> usize {
        self.0.pending.load(Ordering::SeqCst)
    }

    /// A session is about to hand over a notice: counted before it is sent, so shutdown
    /// cannot see zero while the notice is still on its way to the backend actor.
    pub fn add(&self) {
        self.0.pending.fetch_add(1, Ordering::SeqCst);
    }

    /// How many notices (connect or disconnect) were given up on since start.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::SeqCst)
    }

    fn done(&self) {
        if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.settled.notify_waiters();
        }
    }

    /// Wait until no disconnect notice is pending.
    pub async fn settled(&self) {
        loop {
            let notified = self.0.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a `done` in between is not missed.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Take one of `max` places for a notice kept for retries; false when all are taken.
    fn keep(&self, max: usize) -> bool {
        self.0
            .kept
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |kept| {
                (kept < max).then_some(kept + 1)
            })
            .is_ok()
    }

    /// Give back a place taken with [`Self::keep`].
    fn release(&self) {
        self.0.kept.fetch_sub(1, Ordering::SeqCst);
    }

    /// Count a notice given up on; returns the total so far, for the log line.
    fn note_dropped(&self) -> u64 {
        self.0.dropped.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Settings shared by every request of one backend.
struct Settings {
    format: RelayFormat,
    url: String,
    connect_url: Option<String>,
    disconnect_url: Option<String>,
    external_url: String,
    request_timeout: Duration,
    max_in_flight: usize,
    /// How long the disconnect notice of an ended connection is retried.
    notice_retry: Duration,
    /// Disconnect notices kept for retries, across workers.
    max_pending_notices: usize,
    /// Largest answer body read (`limits.max_message_size`).
    max_answer: usize,
}

/// One callout for one connection.
enum Job {
    /// SocketDock connect notice (with the upgrade request's headers and the client address).
    Connect {
        /// The upgrade request's headers and client address.
        headers: Value,
        /// Its [`NOTICE_ID_HEADER`].
        notice_id: String,
    },
    /// A client frame.
    Message(Frame),
    /// The connection ended: send the disconnect notice if there is one, then forget the queue.
    Finish { notice: Option<Notice> },
}

/// The disconnect notice of an ended connection: tried until delivered or `notice_retry` after
/// the connection ended.
struct Notice {
    /// ws2api's DELETE body: the close reason, `EOF` for a dropped connection.
    reason: String,
    /// Its [`NOTICE_ID_HEADER`], the same on every try.
    id: String,
    /// When the connection ended.
    since: Instant,
    /// The wait before the next try.
    backoff: Duration,
    /// Whether it holds one of the `max_pending_notices` places (it failed at least once).
    kept: bool,
    /// Whether the warning that it outlived `request_timeout` was logged.
    warned: bool,
}

impl Notice {
    fn new(reason: String) -> Self {
        Self {
            reason,
            id: new_notice_id(),
            since: Instant::now(),
            backoff: FIRST_BACKOFF,
            kept: false,
            warned: false,
        }
    }
}

/// A fresh notice id: 32 hex digits, unique across connections and restarts.
fn new_notice_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The jobs of one connection.
struct Queue {
    id: ConnectionId,
    reply_to: Recipient<BackendReply>,
    jobs: VecDeque<Job>,
    busy: bool,
}

/// Session -> backend: a connection opened (registers it; SocketDock: sends the connect notice).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Open {
    /// A key unique to this session (ids may repeat across sessions in ws2api).
    pub key: u64,
    /// The connection id.
    pub id: ConnectionId,
    /// Where results go.
    pub reply_to: Recipient<BackendReply>,
    /// The upgrade request's headers (names lowercased) and client address, for the notice.
    pub headers: Value,
}

/// Session -> backend: relay a frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relay {
    /// The session's key.
    pub key: u64,
    /// The frame.
    pub frame: Frame,
}

/// Session -> backend: the connection ended; send the disconnect notice after its frames.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Closed {
    /// The session's key.
    pub key: u64,
    /// The close reason (ws2api's DELETE body), `EOF` when the TCP connection dropped.
    pub reason: String,
    /// Whether to send the notice; the session counted it in [`PendingNotices`] already.
    /// False when the id lives on in a newer connection (ws2api replacement).
    pub notify: bool,
}

/// Upgrade handler -> backend: ws2api's connect check, `GET {url}/{id}`.
#[derive(Message)]
#[rtype(result = "Result<bool, CheckError>")]
pub struct Check {
    /// The id the client asked for.
    pub id: ConnectionId,
    /// The upgrade request's end-to-end headers, forwarded to the application.
    pub headers: Vec<(String, String)>,
    /// The client's address, sent as `X-Forwarded-For`.
    pub remote: Option<String>,
}

/// Headers of the upgrade request that belong to that hop and are not forwarded.
/// The client's own forwarding headers are dropped too: the hub sets `X-Forwarded-For` itself.
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

/// One worker's http backend.
pub struct HttpBackend {
    client: awc::Client,
    settings: Rc<Settings>,
    queues: HashMap<u64, Queue>,
    in_flight: usize,
    notices: PendingNotices,
}

impl Actor for HttpBackend {
    type Context = Context<Self>;
}

/// What went wrong with one callout.
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    /// The TCP connection could not be made: the application saw nothing (retried).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A 5xx: the application did not process it (retried).
    #[error("backend answered {0}")]
    Unavailable(StatusCode),
    /// A 4xx (or another non-2xx): the application refused this one callout (not retried).
    #[error("backend refused it with {0}")]
    Refused(StatusCode),
    /// No complete answer, body included, within the time left.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The answer could not be relayed (too large, or cut off mid-body).
    #[error(transparent)]
    Answer(#[from] AnswerError),
    /// The request may have reached the application (connection closed mid-request, ...).
    #[error("{0}")]
    Transport(String),
    /// The deadline passed between two attempts.
    #[error("deadline passed")]
    Deadline,
}

impl CalloutError {
    /// Whether a frame's callout may be tried again: only when the application cannot have
    /// processed it, so a frame is never relayed twice.
    fn transient(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Unavailable(_))
    }

    /// The close a session gets when its frame's callout failed with this.
    fn close(&self) -> Close {
        match self {
            Self::Answer(AnswerError::TooLarge { .. }) => Close::new(
                close_code::INTERNAL_ERROR,
                "backend answer larger than max_message_size",
            ),
            _ => Close::new(close_code::TRY_AGAIN_LATER, "backend unavailable"),
        }
    }
}

/// The ws2api connect check could not be made (the upgrade is then refused with 502).
#[derive(Debug, thiserror::Error)]
#[error("GET {url}: {error}")]
pub struct CheckError {
    url: String,
    error: CalloutError,
}

impl HttpBackend {
    /// A backend for the current worker thread.
    pub fn new(config: &BackendConfig, notices: PendingNotices) -> Self {
        let client = awc::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connector(
                awc::Connector::new()
                    .timeout(Duration::from_millis(config.connect_timeout_ms))
                    .limit(config.max_in_flight),
            )
            .disable_redirects()
            .finish();
        let url = config.url.clone().unwrap_or_default();
        let settings = Settings {
            format: config.format,
            url: url.trim_end_matches('/').to_owned(),
            connect_url: config.connect_url.clone(),
            disconnect_url: config.disconnect_url.clone(),
            external_url: config
                .external_url
                .clone()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_in_flight: config.max_in_flight,
            notice_retry: Duration::from_millis(config.notice_retry_ms),
            max_pending_notices: config.max_pending_notices,
            max_answer: config.max_answer_size,
        };
        Self {
            client,
            settings: Rc::new(settings),
            queues: HashMap::new(),
            in_flight: 0,
            notices,
        }
    }

    /// Start the next job of `key` if it is idle.
    fn pump(&mut self, key: u64, ctx: &mut Context<Self>) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        if queue.busy {
            return;
        }
        match queue.jobs.pop_front() {
            None => {}
            Some(Job::Finish { notice: None }) => {
                self.queues.remove(&key);
            }
            Some(Job::Finish {
                notice: Some(notice),
            }) => self.send_notice(key, notice, ctx),
            Some(job) => self.send_job(key, job, ctx),
        }
    }

    /// Run a frame or connect notice of a live connection: retried until `request_timeout`,
    /// then the client is closed with 1013.
    fn send_job(&mut self, key: u64, job: Job, ctx: &mut Context<Self>) {
        let Some(queue) = self.queues.get(&key) else {
            return;
        };
        let id = queue.id.clone();
        let is_connect = matches!(job, Job::Connect { .. });
        let what = if is_connect {
            "connect notice"
        } else {
            "frame"
        };
        if self.in_flight >= self.settings.max_in_flight {
            let max = self.settings.max_in_flight;
            if is_connect {
                let dropped = self.notices.note_dropped();
                log::warn!(
                    "id={id} connect notice dropped: backend.max_in_flight ({max}) callouts in flight; {dropped} notice(s) dropped since start"
                );
            } else {
                log::warn!(
                    "id={id} frame refused: backend.max_in_flight ({max}) callouts in flight"
                );
            }
            queue.reply_to.do_send(BackendReply::Failed(Close::new(
                close_code::TRY_AGAIN_LATER,
                "backend overloaded: too many requests in flight",
            )));
            return self.pump(key, ctx);
        }
        let Some(request) = self.request(&id, &job) else {
            return self.pump(key, ctx);
        };
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.busy = true;
        }
        self.in_flight += 1;
        let client = self.client.clone();
        let deadline = Instant::now() + self.settings.request_timeout;
        let limit = self.settings.max_answer;
        async move {
            let result = call(&client, &request, deadline, limit).await;
            (request, result)
        }
        .into_actor(self)
        .map(move |(request, result), act, ctx| {
            act.in_flight -= 1;
            let reply = match result {
                // The connect notice never counted as a pending frame.
                Ok(_) if is_connect => None,
                Ok(Some(frame)) => Some(BackendReply::Answer(frame)),
                Ok(None) => Some(BackendReply::Done),
                Err(CalloutError::Refused(status)) => {
                    // The application refused this one callout: logged, the connection lives.
                    log::warn!("id={id} {request}: backend answered {status}");
                    (!is_connect).then_some(BackendReply::Done)
                }
                Err(e) => {
                    if is_connect {
                        let dropped = act.notices.note_dropped();
                        log::warn!(
                            "id={id} backend callout failed, connect notice dropped: {request}: {e}; {dropped} notice(s) dropped since start"
                        );
                    } else {
                        log::warn!("id={id} backend callout failed ({what}): {request}: {e}");
                    }
                    Some(BackendReply::Failed(e.close()))
                }
            };
            let Some(queue) = act.queues.get_mut(&key) else {
                return;
            };
            queue.busy = false;
            if let Some(reply) = reply {
                queue.reply_to.do_send(reply);
            }
            act.pump(key, ctx);
        })
        .spawn(ctx);
    }

    /// Try the disconnect notice of an ended connection once; on failure keep it and try again
    /// after a backoff, until `notice_retry` after the connection ended.
    fn send_notice(&mut self, key: u64, notice: Notice, ctx: &mut Context<Self>) {
        let Some(id) = self.queues.get(&key).map(|queue| queue.id.clone()) else {
            return;
        };
        let Some(request) = self.notice_request(&id, &notice) else {
            self.finish_notice(key, &notice);
            return;
        };
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.busy = true;
        }
        self.in_flight += 1;
        let client = self.client.clone();
        let timeout = self.settings.request_timeout;
        async move {
            let result = attempt(&client, &request, timeout, 0).await;
            (request, result)
        }
        .into_actor(self)
        .map(move |(request, result), act, ctx| {
            act.in_flight -= 1;
            match result {
                Ok(_) => act.finish_notice(key, &notice),
                Err(CalloutError::Refused(status)) => {
                    log::warn!("id={id} {request}: backend answered {status}; not retried");
                    act.finish_notice(key, &notice);
                }
                Err(e) => act.retry_notice(key, notice, &request, e, ctx),
            }
        })
        .spawn(ctx);
    }

    /// A notice was delivered (or refused by the application): forget it and its queue.
    fn finish_notice(&mut self, key: u64, notice: &Notice) {
        if notice.kept {
            self.notices.release();
        }
        self.notices.done();
        self.queues.remove(&key);
    }

    /// A try of a notice failed: keep it for another try, or give up on it with a warning.
    fn retry_notice(
        &mut self,
        key: u64,
        mut notice: Notice,
        request: &Request,
        error: CalloutError,
        ctx: &mut Context<Self>,
    ) {
        let Some(queue) = self.queues.get(&key) else {
            return;
        };
        let id = queue.id.clone();
        let settings = self.settings.clone();
        let elapsed = notice.since.elapsed();
        let why = if elapsed + notice.backoff >= settings.notice_retry {
            Some(format!(
                "still undelivered {elapsed:?} after the connection ended (backend.notice_retry_ms = {})",
                settings.notice_retry.as_millis()
            ))
        } else if !notice.kept && !self.notices.keep(settings.max_pending_notices) {
            Some(format!(
                "backend.max_pending_notices ({}) notices are already waiting for a retry",
                settings.max_pending_notices
            ))
        } else {
            None
        };
        if let Some(why) = why {
            let dropped = self.notices.note_dropped();
            log::warn!(
                "id={id} disconnect notice dropped: {request}: {error}; {why}; {dropped} notice(s) dropped since start"
            );
            self.finish_notice(key, &notice);
            return;
        }
        notice.kept = true;
        if !notice.warned && elapsed >= settings.request_timeout {
            // Where a frame's callout gives up; a notice is kept.
            notice.warned = true;
            log::warn!(
                "id={id} disconnect notice still not delivered after {elapsed:?}: {request}: {error}; kept, retrying for up to {:?} in all",
                settings.notice_retry
            );
        } else {
            log::debug!(
                "id={id} disconnect notice: {request}: {error}; retrying in {:?}",
                notice.backoff
            );
        }
        let wait = notice.backoff;
        notice.backoff = (notice.backoff * 2).min(NOTICE_MAX_BACKOFF);
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.jobs.push_front(Job::Finish {
                notice: Some(notice),
            });
        }
        ctx.run_later(wait, move |act, ctx| {
            if let Some(queue) = act.queues.get_mut(&key) {
                queue.busy = false;
            }
            act.pump(key, ctx);
        });
    }

    /// The HTTP request for a frame or connect notice in the configured format; `None` when
    /// there is nothing to call.
    fn request(&self, id: &ConnectionId, job: &Job) -> Option<Request> {
        let s = &self.settings;
        match (s.format, job) {
            (RelayFormat::SocketDock, Job::Connect { headers, notice_id }) => {
                let mut meta = self.meta(id);
                if let (Value::Object(meta), Value::Object(extra)) = (&mut meta, headers) {
                    meta.extend(extra.clone());
                }
                let mut request = Request::json(s.connect_url.clone()?, json!({ "meta": meta }));
                request.notice_id = Some(notice_id.clone());
                Some(request)
            }
            (RelayFormat::SocketDock, Job::Message(frame)) => {
                let mut body = Map::new();
                body.insert("meta".into(), self.meta(id));
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
                Some(Request::json(s.url.clone(), Value::Object(body)))
            }
            (RelayFormat::Ws2Api, Job::Message(frame)) => {
                let (content_type, body) = match frame {
                    Frame::Text(text) => ("text/plain; charset=utf-8", text.clone().into_bytes()),
                    Frame::Binary(bytes) => ("application/octet-stream", bytes.clone()),
                };
                Some(Request {
                    method: Method::POST,
                    url: format!("{}/{id}", s.url),
                    content_type,
                    body,
                    answers: true,
                    notice_id: None,
                })
            }
            (RelayFormat::Ws2Api, Job::Connect { .. }) | (_, Job::Finish { .. }) => None,
        }
    }

    /// The disconnect notice's request in the configured format; `None` when SocketDock has no
    /// `disconnect_url`.
    fn notice_request(&self, id: &ConnectionId, notice: &Notice) -> Option<Request> {
        let s = &self.settings;
        let mut request = match s.format {
            RelayFormat::SocketDock => {
                Request::json(s.disconnect_url.clone()?, json!({ "connection_id": id }))
            }
            RelayFormat::Ws2Api => Request {
                method: Method::DELETE,
                url: format!("{}/{id}", s.url),
                content_type: "text/plain; charset=utf-8",
                body: Bytes::from(notice.reason.clone()),
                answers: false,
                notice_id: None,
            },
        };
        request.notice_id = Some(notice.id.clone());
        Some(request)
    }

    /// SocketDock's `meta` object for a connection.
    fn meta(&self, id: &ConnectionId) -> Value {
        let base = &self.settings.external_url;
        json!({
            "connection_id": id,
            "send": format!("{base}/socket/{id}/send"),
            "disconnect": format!("{base}/socket/{id}/disconnect"),
        })
    }
}

/// A prepared callout.
struct Request {
    method: Method,
    url: String,
    content_type: &'static str,
    body: Bytes,
    /// Whether a non-empty response body is sent back to the client (ws2api).
    answers: bool,
    /// The [`NOTICE_ID_HEADER`] of a notice.
    notice_id: Option<String>,
}

impl Request {
    fn json(url: String, body: Value) -> Self {
        Self {
            method: Method::POST,
            url,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
            answers: false,
            notice_id: None,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// Run a callout with retries until `deadline`. Ok(Some(frame)) is an answer for the client.
async fn call(
    client: &awc::Client,
    request: &Request,
    deadline: Instant,
    limit: usize,
) -> Result<Option<Frame>, CalloutError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(CalloutError::Deadline);
        }
        let error = match attempt(client, request, remaining, limit).await {
            Ok(answer) => return Ok(answer.and_then(answer_frame)),
            Err(e) if e.transient() => e,
            // Anything else (timeout, connection closed mid-request) may have reached the
            // application: not retried, so a frame is never relayed twice.
            Err(e) => return Err(e),
        };
        if Instant::now() + backoff >= deadline {
            return Err(error);
        }
        log::debug!("{request}: {error}; retrying in {backoff:?}");
        actix_web::rt::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt: request, status, and (when the request answers) a body of at most `limit`
/// bytes, all within `timeout`. Ok(Some(body)) is the answer body of a 2xx.
async fn attempt(
    client: &awc::Client,
    request: &Request,
    timeout: Duration,
    limit: usize,
) -> Result<Option<Bytes>, CalloutError> {
    let exchange = async {
        let mut builder = client
            .request(request.method.clone(), &request.url)
            .timeout(timeout)
            .insert_header(("content-type", request.content_type));
        if let Some(id) = &request.notice_id {
            builder = builder.insert_header((NOTICE_ID_HEADER, id.as_str()));
        }
        let mut response = builder
            .send_body(request.body.clone())
            .await
            .map_err(send_error)?;
        let status = response.status();
        if status.is_server_error() {
            return Err(CalloutError::Unavailable(status));
        }
        if !status.is_success() {
            return Err(CalloutError::Refused(status));
        }
        if !request.answers {
            return Ok(None);
        }
        Ok(Some(read_answer(&mut response, limit).await?))
    };
    actix_web::rt::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(CalloutError::Timeout(timeout)))
}

/// Sort awc's send errors: only a failed connect is known not to have reached the application.
fn send_error(error: awc::error::SendRequestError) -> CalloutError {
    match error {
        awc::error::SendRequestError::Connect(e) => CalloutError::Connect(e.to_string()),
        other => CalloutError::Transport(other.to_string()),
    }
}

/// A non-empty answer becomes a text frame when it is UTF-8, else a binary one.
fn answer_frame(body: Bytes) -> Option<Frame> {
    if body.is_empty() {
        return None;
    }
    Some(match bytestring::ByteString::try_from(body.clone()) {
        Ok(text) => Frame::Text(text),
        Err(_) => Frame::Binary(body),
    })
}

impl Handler<Open> for HttpBackend {
    type Result = ();

    fn handle(&mut self, msg: Open, ctx: &mut Context<Self>) {
        let mut jobs = VecDeque::new();
        if self.settings.format == RelayFormat::SocketDock && self.settings.connect_url.is_some() {
            jobs.push_back(Job::Connect {
                headers: msg.headers,
                notice_id: new_notice_id(),
            });
        }
        self.queues.insert(
            msg.key,
            Queue {
                id: msg.id,
                reply_to: msg.reply_to,
                jobs,
                busy: false,
            },
        );
        self.pump(msg.key, ctx);
    }
}

impl Handler<Relay> for HttpBackend {
    type Result = ();

    fn handle(&mut self, msg: Relay, ctx: &mut Context<Self>) {
        if let Some(queue) = self.queues.get_mut(&msg.key) {
            queue.jobs.push_back(Job::Message(msg.frame));
            self.pump(msg.key, ctx);
        } else {
            log::warn!(
                "session {} relayed a frame after it ended; dropped",
                msg.key
            );
        }
    }
}

impl Handler<Closed> for HttpBackend {
    type Result = ();

    fn handle(&mut self, msg: Closed, ctx: &mut Context<Self>) {
        let Some(queue) = self.queues.get_mut(&msg.key) else {
            if msg.notify {
                let dropped = self.notices.note_dropped();
                log::warn!(
                    "session {} ended without being opened here: disconnect notice dropped; {dropped} notice(s) dropped since start",
                    msg.key
                );
                self.notices.done();
            }
            return;
        };
        // Queued frames are still relayed; the notice (if any) goes after the last of them.
        queue.jobs.push_back(Job::Finish {
            notice: msg.notify.then(|| Notice::new(msg.reason)),
        });
        self.pump(msg.key, ctx);
    }
}

impl Handler<Check> for HttpBackend {
    type Result = ResponseFuture<Result<bool, CheckError>>;

    fn handle(&mut self, msg: Check, _: &mut Context<Self>) -> Self::Result {
        let url = format!("{}/{}", self.settings.url, msg.id);
        let timeout = self.settings.request_timeout;
        let limit = CHECK_ANSWER_LIMIT.min(self.settings.max_answer);
        let mut request = self
            .client
            .get(&url)
            .timeout(timeout)
            .insert_header((NOTICE_ID_HEADER, new_notice_id()));
        for (name, value) in &msg.headers {
            if !HOP_HEADERS.contains(&name.as_str()) && !name.starts_with("sec-websocket-") {
                request = request.append_header((name.as_str(), value.as_str()));
            }
        }
        if let Some(remote) = &msg.remote {
            request = request.insert_header(("x-forwarded-for", remote.as_str()));
        }
        Box::pin(async move {
            // The whole check, answer body included, within request_timeout_ms.
            let exchange = async {
                let mut response = request.send().await.map_err(send_error)?;
                match response.status() {
                    StatusCode::OK => {}
                    status if status.is_server_error() => {
                        return Err(CalloutError::Unavailable(status))
                    }
                    status => return Err(CalloutError::Refused(status)),
                }
                Ok(read_answer(&mut response, limit).await?)
            };
            let body = actix_web::rt::time::timeout(timeout, exchange)
                .await
                .unwrap_or(Err(CalloutError::Timeout(timeout)))
                .map_err(|error| CheckError { url, error })?;
            Ok(&body[..] == b"ok")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_notices_are_bounded_and_released() {
        let notices = PendingNotices::default();
        assert!(notices.keep(2));
        assert!(notices.keep(2));
        assert!(!notices.keep(2), "a third place beyond the bound");
        notices.release();
        assert!(notices.keep(2), "a released place can be taken again");
    }

    #[test]
    fn pending_and_dropped_are_counted() {
        let notices = PendingNotices::default();
        notices.add();
        notices.add();
        assert_eq!(notices.count(), 2);
        notices.done();
        assert_eq!(notices.count(), 1);
        assert_eq!(notices.note_dropped(), 1);
        assert_eq!(notices.note_dropped(), 2);
        assert_eq!(notices.dropped(), 2);
    }
}
