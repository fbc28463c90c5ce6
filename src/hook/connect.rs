//! The connect hook of a route (`accept_url`): before the upgrade, the application sees the
//! handshake and decides. A 2xx admits the client, and its non-empty body becomes the client's
//! first frame (AWX sends `{"accept": true, "user": id}`); 401 and 403 refuse the handshake with
//! that status; anything else (or no answer) is 502. The whole call, answer body included,
//! finishes within [`ADMISSION_TIMEOUT`], and the answer is read up to [`ADMISSION_ANSWER_LIMIT`].

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use crate::backend::callout::{frame_of, read_answer};
use crate::backend::BackendError;
use crate::frame::Frame;
use crate::metrics::{HookOutcome, Metrics};

/// How long the connect hook may take, answer body included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (it becomes the client's first frame, e.g. AWX's small accept object).
const ANSWER_LIMIT: usize = 64 * 1024;

/// Upgrade handler -> connect hook: may this handshake proceed? Refused with the status the
/// handshake gets (see [`BackendError::handshake_status`]).
#[derive(Message)]
#[rtype(result = "Result<Option<Frame>, u16>")]
pub struct Admit {
    /// The route's `accept_url`.
    pub url: String,
    /// `{"path", "headers", "remote"}` of the handshake.
    pub handshake: Value,
}

/// One worker's connect-hook client.
pub struct ConnectHook {
    client: awc::Client,
    /// Where the hook's answers are counted.
    metrics: Arc<Metrics>,
}

impl Actor for ConnectHook {
    type Context = Context<Self>;
}

impl ConnectHook {
    /// A connect-hook client for the current worker.
    pub fn start_for_worker(metrics: Arc<Metrics>) -> Addr<Self> {
        ConnectHook {
            client: awc::Client::builder()
                .timeout(TIMEOUT)
                .disable_redirects()
                .finish(),
            metrics,
        }
        .start()
    }
}

impl Handler<Admit> for ConnectHook {
    type Result = ResponseFuture<Result<Option<Frame>, u16>>;

    fn handle(&mut self, msg: Admit, _: &mut Context<Self>) -> Self::Result {
        let request = self.client.post(&msg.url).send_json(&msg.handshake);
        let exchange = async move {
            let mut response = request.await?;
            BackendError::check_status(response.status())?;
            let body = read_answer(&mut response, ANSWER_LIMIT).await?;
            Ok::<_, BackendError>((!body.is_empty()).then(|| frame_of(body)))
        };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = actix_web::rt::time::timeout(TIMEOUT, exchange)
                .await
                .unwrap_or(Err(BackendError::Timeout(TIMEOUT)));
            let outcome = match &result {
                Ok(_) => HookOutcome::Allowed,
                Err(BackendError::Refused(_)) => HookOutcome::Refused,
                Err(_) => HookOutcome::Failed,
            };
            metrics.hook_answered("connect", outcome);
            result.map_err(|e| {
                let status = e.handshake_status();
                if status == 502 {
                    log::warn!("connect hook {}: {e}", msg.url);
                }
                status
            })
        })
    }
}
