//! The connect hook of a route (`accept_url`): before the upgrade, the application sees the
//! handshake and decides. A 2xx admits the client, and its non-empty body becomes the client's
//! first frame (AWX sends `{"accept": true, "user": id}`); 401 and 403 refuse the handshake with
//! that status; anything else (or no answer) is 502.

use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::Value;

use crate::channel::Frame;

/// How long the connect hook may take.
const ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);

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
        Box::pin(async move {
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
            let body = response.body().limit(64 * 1024).await.map_err(|_| 502u16)?;
            if body.is_empty() {
                return Ok(None);
            }
            Ok(Some(match ByteString::try_from(body.clone()) {
                Ok(text) => Frame::Text(text),
                Err(_) => Frame::Binary(body),
            }))
        })
    }
}
