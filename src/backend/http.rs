//! The http backend: one actor per worker thread that owns that thread's `awc` client and
//! relays frames to the application in a relay [`Format`] (SocketDock's or ws2api's); what
//! each format sends is built in its own file, this one only sends, queues and retries.
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
use awc::http::StatusCode;
use bytes::Bytes;
use serde_json::Value;

use super::callout::{frame_of, read_answer, NOTICE_ID_HEADER};
use super::{BackendError, Format, Request};
use crate::config::BackendConfig;
use crate::connection::ConnectionId;
use crate::frame::{close_code, Close, Frame};
use crate::metrics::{CalloutOutcome, Metrics};

/// First retry delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts of a frame or connect notice.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a kept disconnect notice: an application back from an
/// outage hears about the connections that ended meanwhile within this long.
const NOTICE_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait of a notice for the cluster to forget its connection (the cluster answers
/// within its request timeout; this only bounds a stuck answer).
const FORGET_WAIT: Duration = Duration::from_secs(10);

/// A tag unique to this process start (32 hex digits): with a session serial it makes the
/// notice id of that session's disconnect notice, the same whoever sends it (the owner, or in
/// a cluster the node that reaps a dead one), so a backend can drop a copy.
pub fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

/// The notice id of the disconnect notice of session `serial` of the process tagged `tag`.
pub fn notice_id(tag: &str, serial: u64) -> String {
    format!("{tag}-{serial}")
}

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
    #[cfg(test)]
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
    /// What the requests look like.
    format: Box<dyn Format>,
    /// Deadline for one callout, retries included.
    request_timeout: Duration,
    /// Callouts this worker may have in flight (`backend.max_in_flight`).
    max_in_flight: usize,
    /// How long the disconnect notice of an ended connection is retried.
    notice_retry: Duration,
    /// Disconnect notices kept for retries, across workers.
    max_pending_notices: usize,
    /// Where each callout is counted and timed.
    meter: Meter,
}

/// Counts and times the callouts of one backend in the metrics.
#[derive(Clone)]
struct Meter {
    /// The process's metrics.
    metrics: Arc<Metrics>,
    /// The relay format's name, the callouts' `format` label.
    format: &'static str,
}

/// One callout for one connection.
enum Job {
    /// The format's connect notice, with its [`NOTICE_ID_HEADER`] set.
    Connect(Request),
    /// A client frame.
    Message(Frame),
    /// The connection ended: send the disconnect notice if there is one, then forget the queue.
    Finish { notice: Option<Notice> },
}

/// The disconnect notice of an ended connection: tried until delivered or `notice_retry` after
/// the connection ended.
struct Notice {
    /// The format's request, with its [`NOTICE_ID_HEADER`]: the same on every try.
    request: Request,
    /// When the connection ended.
    since: Instant,
    /// The wait before the next try.
    backoff: Duration,
    /// Whether it holds one of the `max_pending_notices` places (it failed at least once).
    kept: bool,
    /// Whether the warning that it outlived `request_timeout` was logged.
    warned: bool,
    /// In a cluster: answered once Redis forgot the connection; the first try waits for it.
    forgotten: Option<tokio::sync::oneshot::Receiver<()>>,
    /// A reaped connection's notice: told once the notice is settled (delivered, refused or
    /// given up on), so that the reaper can strike it from what it still owes.
    settled: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Notice {
    fn new(
        mut request: Request,
        notice_id: String,
        forgotten: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Self {
        request.notice_id = Some(notice_id);
        Self {
            request,
            since: Instant::now(),
            backoff: FIRST_BACKOFF,
            kept: false,
            warned: false,
            forgotten,
            settled: None,
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
    /// The session; none for the notice of a connection of a dead cluster node.
    reply_to: Option<Recipient<BackendReply>>,
    jobs: VecDeque<Job>,
    busy: bool,
}

/// Session -> backend: a connection opened (registers it, and sends the format's connect
/// notice, if it has one).
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
    /// In a cluster: answered once Redis forgot the connection; the notice waits for it.
    pub forgotten: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Cluster -> backend: a connection of a dead node ended unannounced; send its disconnect
/// notice (reason `EOF`) with the notice id its owner would have used.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Orphaned {
    /// The connection id.
    pub id: ConnectionId,
    /// The notice id (see [`notice_id`]).
    pub notice_id: String,
    /// Told once the notice is settled: delivered, refused by the application, or given up
    /// on (dropping it unsent, when the format sends no disconnect notice, tells as much).
    pub settled: tokio::sync::oneshot::Sender<()>,
}

/// Upgrade handler -> backend: may this client connect? The format's connect check (ws2api:
/// `GET {url}/{id}`); true at once for a format that asks nothing.
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

/// One worker's http backend.
pub struct HttpBackend {
    client: awc::Client,
    settings: Rc<Settings>,
    queues: HashMap<u64, Queue>,
    in_flight: usize,
    notices: PendingNotices,
    /// The queue key of the next orphaned notice (counting down from `u64::MAX`, where no
    /// session serial reaches).
    next_orphan: u64,
}

impl Actor for HttpBackend {
    type Context = Context<Self>;
}

/// The connect check could not be made (the upgrade is then refused with 502).
#[derive(Debug, thiserror::Error)]
#[error("{request}: {error}")]
pub struct CheckError {
    /// The check's method and URL.
    request: String,
    /// What went wrong.
    error: BackendError,
}

impl HttpBackend {
    /// A backend for the current worker thread.
    pub fn new(
        config: &BackendConfig,
        format: Box<dyn Format>,
        notices: PendingNotices,
        metrics: Arc<Metrics>,
    ) -> Self {
        let client = awc::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms.get()))
            .connector(
                awc::Connector::new()
                    .timeout(Duration::from_millis(config.connect_timeout_ms.get()))
                    .limit(config.max_in_flight.get()),
            )
            .disable_redirects()
            .finish();
        let settings = Settings {
            format,
            request_timeout: Duration::from_millis(config.request_timeout_ms.get()),
            max_in_flight: config.max_in_flight.get(),
            notice_retry: Duration::from_millis(config.notice_retry_ms.get()),
            max_pending_notices: config.max_pending_notices.get(),
            meter: Meter {
                metrics,
                format: config.format.name(),
            },
        };
        Self {
            client,
            settings: Rc::new(settings),
            queues: HashMap::new(),
            in_flight: 0,
            notices,
            next_orphan: u64::MAX,
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
            Some(Job::Connect(request)) => self.send_callout(key, request, true, ctx),
            Some(Job::Message(frame)) => {
                let request = self.settings.format.message(&queue.id, &frame);
                self.send_callout(key, request, false, ctx);
            }
        }
    }

    /// Run a frame's callout (or, `is_connect`, the connect notice) of a live connection:
    /// retried until `request_timeout`, then the client is closed with 1013.
    fn send_callout(
        &mut self,
        key: u64,
        request: Request,
        is_connect: bool,
        ctx: &mut Context<Self>,
    ) {
        let Some(queue) = self.queues.get(&key) else {
            return;
        };
        let id = queue.id.clone();
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
                    id:% = id; "connect notice dropped: backend.max_in_flight ({max}) callouts in flight; {dropped} notice(s) dropped since start"
                );
            } else {
                log::warn!(
                    id:% = id; "frame refused: backend.max_in_flight ({max}) callouts in flight"
                );
            }
            if let Some(reply_to) = &queue.reply_to {
                reply_to.do_send(BackendReply::Failed(Close::new(
                    close_code::TRY_AGAIN_LATER,
                    "backend overloaded: too many requests in flight",
                )));
            }
            return self.pump(key, ctx);
        }
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.busy = true;
        }
        self.in_flight += 1;
        let client = self.client.clone();
        let deadline = Instant::now() + self.settings.request_timeout;
        let meter = self.settings.meter.clone();
        async move {
            let result = call(&client, &request, deadline, &meter).await;
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
                Err(BackendError::Refused(status)) => {
                    // The application refused this one callout: logged, the connection lives.
                    log::warn!(id:% = id; "{request}: backend answered {status}");
                    (!is_connect).then_some(BackendReply::Done)
                }
                Err(e) => {
                    if is_connect {
                        let dropped = act.notices.note_dropped();
                        log::warn!(
                            id:% = id; "backend callout failed, connect notice dropped: {request}: {e}; {dropped} notice(s) dropped since start"
                        );
                    } else {
                        log::warn!(id:% = id; "backend callout failed ({what}): {request}: {e}");
                    }
                    Some(BackendReply::Failed(e.close()))
                }
            };
            let Some(queue) = act.queues.get_mut(&key) else {
                return;
            };
            queue.busy = false;
            if let (Some(reply), Some(reply_to)) = (reply, &queue.reply_to) {
                reply_to.do_send(reply);
            }
            act.pump(key, ctx);
        })
        .spawn(ctx);
    }

    /// Try the disconnect notice of an ended connection once; on failure keep it and try again
    /// after a backoff, until `notice_retry` after the connection ended.
    fn send_notice(&mut self, key: u64, mut notice: Notice, ctx: &mut Context<Self>) {
        let Some(id) = self.queues.get(&key).map(|queue| queue.id.clone()) else {
            return;
        };
        let request = notice.request.clone();
        let forgotten = notice.forgotten.take();
        if let Some(queue) = self.queues.get_mut(&key) {
            queue.busy = true;
        }
        self.in_flight += 1;
        let client = self.client.clone();
        let timeout = self.settings.request_timeout;
        let meter = self.settings.meter.clone();
        async move {
            if let Some(forgotten) = forgotten {
                // Redis forgets the connection first, so no reaper can claim it any more.
                let _ = actix_web::rt::time::timeout(FORGET_WAIT, forgotten).await;
            }
            let result = attempt(&client, &request, timeout, &meter).await;
            (request, result)
        }
        .into_actor(self)
        .map(move |(request, result), act, ctx| {
            act.in_flight -= 1;
            match result {
                Ok(_) => act.finish_notice(key, notice),
                Err(BackendError::Refused(status)) => {
                    log::warn!(id:% = id; "{request}: backend answered {status}; not retried");
                    act.finish_notice(key, notice);
                }
                Err(e) => act.retry_notice(key, notice, &request, e, ctx),
            }
        })
        .spawn(ctx);
    }

    /// A notice was delivered (or refused by the application): forget it and its queue.
    fn finish_notice(&mut self, key: u64, notice: Notice) {
        if let Some(settled) = notice.settled {
            let _ = settled.send(());
        }
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
        error: BackendError,
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
                id:% = id; "disconnect notice dropped: {request}: {error}; {why}; {dropped} notice(s) dropped since start"
            );
            self.finish_notice(key, notice);
            return;
        }
        notice.kept = true;
        if !notice.warned && elapsed >= settings.request_timeout {
            // Where a frame's callout gives up; a notice is kept.
            notice.warned = true;
            log::warn!(
                id:% = id; "disconnect notice still not delivered after {elapsed:?}: {request}: {error}; kept, retrying for up to {:?} in all",
                settings.notice_retry
            );
        } else {
            log::debug!(
                id:% = id; "disconnect notice: {request}: {error}; retrying in {:?}",
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
}

/// Run a callout with retries until `deadline`. Ok(Some(frame)) is an answer for the client.
async fn call(
    client: &awc::Client,
    request: &Request,
    deadline: Instant,
    meter: &Meter,
) -> Result<Option<Frame>, BackendError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(BackendError::Deadline);
        }
        let error = match attempt(client, request, remaining, meter).await {
            Ok((_, answer)) => return Ok(answer.filter(|body| !body.is_empty()).map(frame_of)),
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

/// One attempt: request, status, and (when the request reads its answer) a body of at most
/// its `answer_limit` bytes, all within `timeout`. Ok is a 2xx, with the body when read.
async fn attempt(
    client: &awc::Client,
    request: &Request,
    timeout: Duration,
    meter: &Meter,
) -> Result<(StatusCode, Option<Bytes>), BackendError> {
    meter.metrics.callout_started(meter.format);
    let started = Instant::now();
    let result = exchange(client, request, timeout).await;
    let outcome = match &result {
        Ok(_) => CalloutOutcome::Ok,
        Err(BackendError::Refused(_) | BackendError::Unavailable(_)) => CalloutOutcome::Refused,
        Err(_) => CalloutOutcome::Failed,
    };
    let seconds = started.elapsed().as_secs_f64();
    meter.metrics.callout_ended(meter.format, outcome, seconds);
    result
}

/// The request and its answer, within `timeout`.
async fn exchange(
    client: &awc::Client,
    request: &Request,
    timeout: Duration,
) -> Result<(StatusCode, Option<Bytes>), BackendError> {
    let exchange = async {
        let mut builder = client
            .request(request.method.clone(), &request.url)
            .timeout(timeout);
        if let Some(content_type) = request.content_type {
            builder = builder.insert_header(("content-type", content_type));
        }
        if let Some(id) = &request.notice_id {
            builder = builder.insert_header((NOTICE_ID_HEADER, id.as_str()));
        }
        for (name, value) in &request.headers {
            builder = builder.append_header((name.as_str(), value.as_str()));
        }
        let mut response = match request.content_type {
            Some(_) => builder.send_body(request.body.clone()).await?,
            None => builder.send().await?,
        };
        let status = response.status();
        BackendError::check_status(status)?;
        let Some(limit) = request.answer_limit else {
            return Ok((status, None));
        };
        Ok((status, Some(read_answer(&mut response, limit).await?)))
    };
    actix_web::rt::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(BackendError::Timeout(timeout)))
}

impl Handler<Open> for HttpBackend {
    type Result = ();

    fn handle(&mut self, msg: Open, ctx: &mut Context<Self>) {
        let mut jobs = VecDeque::new();
        if let Some(mut notice) = self.settings.format.connect_notice(&msg.id, &msg.headers) {
            notice.notice_id = Some(new_notice_id());
            jobs.push_back(Job::Connect(notice));
        }
        self.queues.insert(
            msg.key,
            Queue {
                id: msg.id,
                reply_to: Some(msg.reply_to),
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
        let notice = match msg.notify {
            true => match self
                .settings
                .format
                .disconnect_notice(&queue.id, &msg.reason)
            {
                Some(request) => Some(Notice::new(
                    request,
                    notice_id(process_tag(), msg.key),
                    msg.forgotten,
                )),
                None => {
                    // Counted by the session, but this format announces nothing.
                    self.notices.done();
                    None
                }
            },
            false => None,
        };
        queue.jobs.push_back(Job::Finish { notice });
        self.pump(msg.key, ctx);
    }
}

impl Handler<Orphaned> for HttpBackend {
    type Result = ();

    fn handle(&mut self, msg: Orphaned, ctx: &mut Context<Self>) {
        let Some(request) = self.settings.format.disconnect_notice(&msg.id, "EOF") else {
            return;
        };
        self.notices.add();
        let key = self.next_orphan;
        self.next_orphan -= 1;
        let mut notice = Notice::new(request, msg.notice_id, None);
        notice.settled = Some(msg.settled);
        self.queues.insert(
            key,
            Queue {
                id: msg.id,
                reply_to: None,
                jobs: VecDeque::from([Job::Finish {
                    notice: Some(notice),
                }]),
                busy: false,
            },
        );
        self.pump(key, ctx);
    }
}

impl Handler<Check> for HttpBackend {
    type Result = ResponseFuture<Result<bool, CheckError>>;

    fn handle(&mut self, msg: Check, _: &mut Context<Self>) -> Self::Result {
        let settings = self.settings.clone();
        let Some(mut request) =
            settings
                .format
                .connect_check(&msg.id, &msg.headers, msg.remote.as_deref())
        else {
            return Box::pin(async { Ok(true) });
        };
        request.notice_id = Some(new_notice_id());
        let client = self.client.clone();
        Box::pin(async move {
            // The whole check, answer body included, within request_timeout_ms.
            let result = attempt(&client, &request, settings.request_timeout, &settings.meter)
                .await
                .and_then(|(status, body)| {
                    settings
                        .format
                        .admits(status, body.as_deref().unwrap_or_default())
                });
            result.map_err(|error| CheckError {
                request: request.to_string(),
                error,
            })
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
