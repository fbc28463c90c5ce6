//! The http backend: one actor per worker thread that owns that thread's `awc` client and
//! relays frames to the application in SocketDock's or ws2api's format.
//!
//! Per connection the backend keeps a queue of jobs (connect notice, messages, disconnect
//! notice) and runs them strictly one after another, so the application sees a connection's
//! frames in order and its disconnect notice last, while different connections proceed in
//! parallel. Results go back to the session as [`BackendReply`] messages. Transient failures
//! (connection refused, any 5xx) are retried with backoff until `request_timeout_ms`; a
//! callout that still fails closes the client with 1013 so it knows its frame was not relayed.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::http::{Method, StatusCode};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::channel::{close_code, Close, Frame};
use crate::config::{BackendConfig, RelayFormat};
use crate::connection::ConnectionId;

/// First retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

/// Disconnect notices not yet delivered, across all workers (shutdown waits for zero).
#[derive(Clone, Default)]
pub struct PendingNotices(Arc<AtomicUsize>);

impl PendingNotices {
    /// How many disconnect notices are queued or in flight.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// A session is about to hand over a notice: counted before it is sent, so shutdown
    /// cannot see zero while the notice is still on its way to the backend actor.
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
}

/// One callout for one connection.
enum Job {
    /// SocketDock connect notice (with the upgrade request's headers and the client address).
    Connect { headers: Value },
    /// A client frame.
    Message(Frame),
    /// The connection ended: send the disconnect notice (ws2api: the close reason, `EOF` for a
    /// dropped connection) if `notice` is set, then forget the queue.
    Finish { notice: Option<String> },
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
#[rtype(result = "Result<bool, String>")]
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
        let Some(job) = queue.jobs.pop_front() else {
            return;
        };
        let (is_finish, is_notice) = match &job {
            Job::Finish { notice } => (true, notice.is_some()),
            _ => (false, false),
        };
        let is_connect = matches!(job, Job::Connect { .. });
        if !is_finish && self.in_flight >= self.settings.max_in_flight {
            queue.reply_to.do_send(BackendReply::Failed(Close::new(
                close_code::TRY_AGAIN_LATER,
                "backend overloaded: too many requests in flight",
            )));
            return self.pump(key, ctx);
        }
        queue.busy = true;
        let id = queue.id.clone();
        self.in_flight += 1;
        let request = self.request(&id, job);
        let client = self.client.clone();
        let deadline = Instant::now() + self.settings.request_timeout;
        async move { call(&client, request, deadline).await }
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.in_flight -= 1;
                if is_notice {
                    act.notices.done();
                }
                let Some(queue) = act.queues.get_mut(&key) else {
                    return;
                };
                queue.busy = false;
                let reply = match result {
                    // Finish and the connect notice never counted as pending frames.
                    Ok(_) if is_finish || is_connect => None,
                    Ok(Some(frame)) => Some(BackendReply::Answer(frame)),
                    Ok(None) => Some(BackendReply::Done),
                    Err(e) => {
                        log::warn!("id={id} backend callout failed: {e}");
                        (!is_finish).then(|| {
                            BackendReply::Failed(Close::new(
                                close_code::TRY_AGAIN_LATER,
                                "backend unavailable",
                            ))
                        })
                    }
                };
                if let Some(reply) = reply {
                    queue.reply_to.do_send(reply);
                }
                if is_finish {
                    act.queues.remove(&key);
                } else {
                    act.pump(key, ctx);
                }
            })
            .spawn(ctx);
    }

    /// Build the HTTP request for a job in the configured format.
    fn request(&self, id: &ConnectionId, job: Job) -> Request {
        let s = &self.settings;
        let meta = || {
            json!({
                "connection_id": id,
                "send": format!("{}/socket/{id}/send", s.external_url),
                "disconnect": format!("{}/socket/{id}/disconnect", s.external_url),
            })
        };
        match (s.format, job) {
            (RelayFormat::SocketDock, Job::Connect { headers }) => {
                let mut meta = meta();
                if let (Value::Object(meta), Value::Object(extra)) = (&mut meta, headers) {
                    meta.extend(extra);
                }
                Request::json(s.connect_url.clone(), json!({ "meta": meta }))
            }
            (RelayFormat::SocketDock, Job::Message(frame)) => {
                let mut body = Map::new();
                body.insert("meta".into(), meta());
                match frame {
                    Frame::Text(text) => {
                        body.insert("message".into(), Value::String(text.to_string()));
                    }
                    Frame::Binary(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(text) => {
                            body.insert("message".into(), text.into());
                        }
                        Err(_) => {
                            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
                            body.insert("message".into(), encoded.into());
                            body.insert("message_encoding".into(), "base64".into());
                        }
                    },
                }
                Request::json(Some(s.url.clone()), Value::Object(body))
            }
            (_, Job::Finish { notice: None }) => Request::none(),
            (RelayFormat::SocketDock, Job::Finish { .. }) => {
                Request::json(s.disconnect_url.clone(), json!({ "connection_id": id }))
            }
            (RelayFormat::Ws2Api, Job::Connect { .. }) => Request::none(),
            (RelayFormat::Ws2Api, Job::Message(frame)) => {
                let (content_type, body) = match frame {
                    Frame::Text(text) => ("text/plain; charset=utf-8", text.into_bytes()),
                    Frame::Binary(bytes) => ("application/octet-stream", bytes),
                };
                Request {
                    method: Method::POST,
                    url: Some(format!("{}/{id}", s.url)),
                    content_type,
                    body,
                    answers: true,
                }
            }
            (
                RelayFormat::Ws2Api,
                Job::Finish {
                    notice: Some(reason),
                },
            ) => Request {
                method: Method::DELETE,
                url: Some(format!("{}/{id}", s.url)),
                content_type: "text/plain; charset=utf-8",
                body: Bytes::from(reason),
                answers: false,
            },
        }
    }
}

/// A prepared callout; `url: None` means there is nothing to call.
struct Request {
    method: Method,
    url: Option<String>,
    content_type: &'static str,
    body: Bytes,
    /// Whether a non-empty response body is sent back to the client (ws2api).
    answers: bool,
}

impl Request {
    fn json(url: Option<String>, body: Value) -> Self {
        Self {
            method: Method::POST,
            url,
            content_type: "application/json",
            body: Bytes::from(body.to_string()),
            answers: false,
        }
    }

    fn none() -> Self {
        Self::json(None, Value::Null)
    }
}

/// Whether a failed attempt may be tried again: a 5xx says the application did not process
/// the request. A 4xx is the application refusing this one callout (logged, not retried).
fn transient_status(status: StatusCode) -> bool {
    status.is_server_error()
}

/// Run a callout with retries until `deadline`. Ok(Some(frame)) is an answer for the client.
async fn call(
    client: &awc::Client,
    request: Request,
    deadline: Instant,
) -> Result<Option<Frame>, String> {
    let Some(url) = request.url else {
        return Ok(None);
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!("{} {url}: deadline passed", request.method));
        }
        let attempt = client
            .request(request.method.clone(), &url)
            .timeout(remaining)
            .insert_header(("content-type", request.content_type))
            .send_body(request.body.clone())
            .await;
        let error = match attempt {
            Ok(mut response) => {
                let status = response.status();
                if status.is_success() {
                    if !request.answers {
                        return Ok(None);
                    }
                    let body = response.body().limit(64 * 1024 * 1024).await.map_err(|e| {
                        format!("{} {url}: reading the answer: {e}", request.method)
                    })?;
                    return Ok(answer_frame(body));
                }
                if !transient_status(status) {
                    // The application refused this one callout: logged, the connection lives on.
                    log::warn!("{} {url}: backend answered {status}", request.method);
                    return Ok(None);
                }
                format!("{} {url}: backend answered {status}", request.method)
            }
            Err(awc::error::SendRequestError::Connect(e)) => {
                format!("{} {url}: cannot connect: {e}", request.method)
            }
            // Anything else (timeout, connection closed mid-request) may have reached the
            // application: not retried, so a frame is never relayed twice.
            Err(e) => return Err(format!("{} {url}: {e}", request.method)),
        };
        if Instant::now() + backoff >= deadline {
            return Err(error);
        }
        log::debug!("{error}; retrying in {backoff:?}");
        actix_web::rt::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
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
        }
    }
}

impl Handler<Closed> for HttpBackend {
    type Result = ();

    fn handle(&mut self, msg: Closed, ctx: &mut Context<Self>) {
        let Some(queue) = self.queues.get_mut(&msg.key) else {
            if msg.notify {
                self.notices.done();
            }
            return;
        };
        // Queued frames are still relayed; the notice (if any) goes after the last of them.
        queue.jobs.push_back(Job::Finish {
            notice: msg.notify.then_some(msg.reason),
        });
        self.pump(msg.key, ctx);
    }
}

impl Handler<Check> for HttpBackend {
    type Result = ResponseFuture<Result<bool, String>>;

    fn handle(&mut self, msg: Check, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        let url = format!("{}/{}", self.settings.url, msg.id);
        let mut request = client.get(&url);
        for (name, value) in &msg.headers {
            if !HOP_HEADERS.contains(&name.as_str()) && !name.starts_with("sec-websocket-") {
                request = request.append_header((name.as_str(), value.as_str()));
            }
        }
        if let Some(remote) = &msg.remote {
            request = request.insert_header(("x-forwarded-for", remote.as_str()));
        }
        Box::pin(async move {
            let mut response = request
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("GET {url}: backend answered {}", response.status()));
            }
            let body = response
                .body()
                .limit(64 * 1024)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            Ok(&body[..] == b"ok")
        })
    }
}
