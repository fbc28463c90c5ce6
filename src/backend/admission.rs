//! The connect hook of a route (`accept_url`): before the upgrade, the application sees the
//! handshake and decides. A 2xx admits the client, and its non-empty body becomes the client's
//! first frame (AWX sends `{"accept": true, "user": id}`); 401 and 403 refuse the handshake with
//! that status; anything else (or no answer) is 502. The whole call, answer body included,
//! finishes within [`ADMISSION_TIMEOUT`], and the answer is read up to [`ADMISSION_ANSWER_LIMIT`].

use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::Value;

use super::read_answer;
use crate::frame::Frame;

/// How long the connect hook may take, answer body included.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (it becomes the client's first frame, e.g. AWX's small accept object).
const ADMISSION_ANSWER_LIMIT: usize = 64 * 1024;

/// Upgrade handler -> admission: may this handshake proceed?
#[derive(Message)]
#[rtype(result = "Result<Option<Frame>, u16>")]
pub struct Admit {
    /// The route's `accept_url`.
    pub url: String,
    /// `{"path", "headers", "remote"}` of the handshake.
    pub handshake: Value,
}

/// One worker's connect-hook client.
pub struct Admission {
    client: awc::Client,
}

impl Actor for Admission {
    type Context = Context<Self>;
}

impl Admission {
    /// A connect-hook client for the current worker.
    pub fn start_for_worker() -> Addr<Self> {
        Admission {
            client: awc::Client::builder()
                .timeout(ADMISSION_TIMEOUT)
                .disable_redirects()
                .finish(),
        }
        .start()
    }
}

impl Handler<Admit> for Admission {
    type Result = ResponseFuture<Result<Option<Frame>, u16>>;

    fn handle(&mut self, msg: Admit, _: &mut Context<Self>) -> Self::Result {
        let request = self.client.post(&msg.url).send_json(&msg.handshake);
        let exchange = async move {
            let mut response = request.await.map_err(|e| {
                log::warn!("connect hook {}: {e}", msg.url);
                502u16
            })?;
            let status = response.status().as_u16();
            if matches!(status, 401 | 403) {
                return Err(status);
            }
            if !response.status().is_success() {
                log::warn!("connect hook {}: answered {status}", msg.url);
                return Err(502);
            }
            let body = read_answer(&mut response, ADMISSION_ANSWER_LIMIT)
                .await
                .map_err(|e| {
                    log::warn!("connect hook {}: {e}", msg.url);
                    502u16
                })?;
            if body.is_empty() {
                return Ok(None);
            }
            Ok(Some(match ByteString::try_from(body.clone()) {
                Ok(text) => Frame::Text(text),
                Err(_) => Frame::Binary(body),
            }))
        };
        Box::pin(async move {
            actix_web::rt::time::timeout(ADMISSION_TIMEOUT, exchange)
                .await
                .unwrap_or_else(|_| {
                    log::warn!("connect hook: no complete answer within {ADMISSION_TIMEOUT:?}");
                    Err(502)
                })
        })
    }
}
