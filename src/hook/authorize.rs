//! The subscription authorization hook: one actor per worker thread that asks the application
//! which channels a connection may join, caching answers for `authorization.cache_ms`. The whole
//! question, answer body included, finishes within `authorization.timeout_ms`, and the answer is
//! read up to [`ANSWER_LIMIT`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{json, Value};

use crate::backend::callout::read_answer;
use crate::backend::BackendError;
use crate::config::AuthorizationConfig;
use crate::connection::ConnectionId;
use crate::metrics::{HookOutcome, Metrics};

/// Past this many cached answers, expired ones are swept out (at most once per TTL); while the
/// cache is still this full, new answers are not cached, so memory stays bounded.
const CACHE_CAP: usize = 100_000;
/// Largest answer read: a list of channel names (the default `limits.max_message_size`).
const ANSWER_LIMIT: usize = 1024 * 1024;

/// Session -> authorizer: which of these channels (or topic prefixes) may `id` join?
#[derive(Message)]
#[rtype(result = "HashSet<String>")]
pub struct Authorize {
    /// The connection.
    pub id: ConnectionId,
    /// The session's serial: answers are cached per session, never shared by a later
    /// connection that reuses the id.
    pub serial: u64,
    /// The channels it asks for.
    pub channels: Vec<String>,
    /// Its connect-time headers and address, as the hook sees them.
    pub context: Value,
}

/// One worker's authorization hook client.
pub struct Authorizer {
    client: awc::Client,
    url: String,
    /// Deadline for one question, answer body included.
    timeout: Duration,
    ttl: Duration,
    cache: HashMap<(u64, String), (bool, Instant)>,
    /// When the cache was last swept.
    swept: Instant,
    /// Where questions and cache hits are counted.
    metrics: Arc<Metrics>,
}

impl Actor for Authorizer {
    type Context = Context<Self>;
}

impl Authorizer {
    /// The authorizer for the current worker, when a hook is configured.
    pub fn for_worker(config: &AuthorizationConfig, metrics: &Arc<Metrics>) -> Option<Addr<Self>> {
        let url = config.url.as_ref()?.to_string();
        let client = awc::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.get()))
            .disable_redirects()
            .finish();
        Some(
            Authorizer {
                client,
                url,
                timeout: Duration::from_millis(config.timeout_ms.get()),
                ttl: Duration::from_millis(config.cache_ms),
                cache: HashMap::new(),
                swept: Instant::now(),
                metrics: metrics.clone(),
            }
            .start(),
        )
    }

    fn cached(&self, serial: u64, channel: &str) -> Option<bool> {
        let (allowed, expires) = self.cache.get(&(serial, channel.to_owned()))?;
        (Instant::now() < *expires).then_some(*allowed)
    }
}

impl Handler<Authorize> for Authorizer {
    type Result = ResponseActFuture<Self, HashSet<String>>;

    fn handle(&mut self, msg: Authorize, _: &mut Context<Self>) -> Self::Result {
        let mut allowed = HashSet::new();
        let mut ask = Vec::new();
        for channel in msg.channels {
            match self.cached(msg.serial, &channel) {
                Some(true) => {
                    self.metrics.hook_cache_hit("authorize");
                    allowed.insert(channel);
                }
                Some(false) => self.metrics.hook_cache_hit("authorize"),
                None => ask.push(channel),
            }
        }
        if ask.is_empty() {
            return Box::pin(actix::fut::ready(allowed));
        }
        let mut body = json!({"connection_id": msg.id, "channels": ask});
        if let (Value::Object(body), Value::Object(context)) = (&mut body, msg.context) {
            body.extend(context);
        }
        let request = self.client.post(&self.url).send_json(&body);
        let url = self.url.clone();
        let id = msg.id;
        let serial = msg.serial;
        let timeout = self.timeout;
        let exchange = async move {
            let mut response = request.await?;
            BackendError::check_status(response.status())?;
            let body = read_answer(&mut response, ANSWER_LIMIT).await?;
            let answer: Value = serde_json::from_slice(&body)
                .map_err(|e| BackendError::Malformed(e.to_string()))?;
            Ok(answer["allowed"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect::<HashSet<String>>()
                })
                .unwrap_or_default())
        };
        Box::pin(
            async move {
                actix_web::rt::time::timeout(timeout, exchange)
                    .await
                    .unwrap_or(Err(BackendError::Timeout(timeout)))
            }
            .into_actor(self)
            .map(
                move |result: Result<HashSet<String>, BackendError>, act, _| {
                    let granted = match result {
                        Ok(granted) => granted,
                        Err(e) => {
                            log::warn!("id={id} authorization hook {url} failed, denying: {e}");
                            act.metrics.hook_answered("authorize", HookOutcome::Failed);
                            HashSet::new()
                        }
                    };
                    if act.cache.len() >= CACHE_CAP && act.swept.elapsed() >= act.ttl {
                        let now = Instant::now();
                        act.cache.retain(|_, (_, expires)| *expires > now);
                        act.swept = now;
                    }
                    let expires = Instant::now() + act.ttl;
                    for channel in ask {
                        let ok = granted.contains(&channel);
                        if !act.ttl.is_zero() && act.cache.len() < CACHE_CAP {
                            act.cache.insert((serial, channel.clone()), (ok, expires));
                        }
                        if ok {
                            act.metrics.hook_answered("authorize", HookOutcome::Allowed);
                            allowed.insert(channel);
                        } else {
                            act.metrics.hook_answered("authorize", HookOutcome::Refused);
                        }
                    }
                    allowed
                },
            ),
        )
    }
}
