//! A real HTTP application for the relay tests: an actix-web server on a free port, in its own
//! thread, that records every request and answers by a small script keyed on the path and body.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::stream;

/// One request the application received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Answered 503 because the application was in an outage ([`MockBackend::set_outage`]).
    pub failed: bool,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// The running mock application.
pub struct MockBackend {
    pub addr: std::net::SocketAddr,
    state: Arc<State>,
    server: actix_web::dev::ServerHandle,
}

/// The shared state of the script.
struct State {
    received: Mutex<Vec<Received>>,
    outage: Arc<AtomicBool>,
}

/// A body that sends `first`, then nothing for 20 s, then `rest`: an answer that trickles.
fn trickle(
    first: &'static [u8],
    rest: &'static [u8],
) -> impl futures_util::Stream<Item = Result<web::Bytes, std::io::Error>> {
    stream::unfold(0u8, move |step| async move {
        match step {
            0 => Some((Ok(web::Bytes::from_static(first)), 1)),
            1 => {
                actix_web::rt::time::sleep(Duration::from_secs(20)).await;
                Some((Ok(web::Bytes::from_static(rest)), 2))
            }
            _ => None,
        }
    })
}

/// The script:
/// - `GET /api/{id}`: `ok`, except ids starting `deny` (body `no`) and `broken` (500).
///   `GET /api/slowbody-*`: `ok`, but the `k` comes 20 s after the `o`.
/// - `POST /api/{id}`: body `silent` -> empty answer; `slow` -> answers after 3 s;
///   `fail` -> 500; `slow-body` -> the answer's head and `re:` at once, the rest after 20 s;
///   `huge:N` -> N bytes of `x`, chunked (no Content-Length); `announce-huge` -> a head that
///   announces 10 MiB, then nothing; otherwise the body echoed back prefixed with `re:`.
/// - `DELETE /api/{id}` and `POST /sd/...`: 200, empty; a SocketDock message `slow` answers
///   after 3 s.
/// - During an outage ([`MockBackend::set_outage`]) every request is answered 503.
/// - `POST /accept`: 200 `{"accept": true, "user": 42}` for a `sessionid=good` cookie, else 403.
/// - `POST /auth`: `{"allowed": [...]}`, every asked channel without `secret` in its name.
async fn script(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let failed = state.outage.load(Ordering::SeqCst);
    let record = Received {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        content_type: req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body.to_vec(),
        failed,
        at: Instant::now(),
    };
    state.received.lock().unwrap().push(record.clone());
    if failed {
        return HttpResponse::ServiceUnavailable().finish();
    }
    if record.path == "/sd/message" {
        let message: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if message["message"] == "slow" {
            actix_web::rt::time::sleep(Duration::from_secs(3)).await;
        }
        return HttpResponse::Ok().finish();
    }
    if record.path == "/accept" {
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let cookie = asked["headers"]["cookie"].as_str().unwrap_or_default();
        return if cookie.contains("sessionid=good") {
            HttpResponse::Ok().json(serde_json::json!({"accept": true, "user": 42}))
        } else {
            HttpResponse::Forbidden().finish()
        };
    }
    if record.path == "/auth" {
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let allowed: Vec<&str> = asked["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .filter(|c| !c.contains("secret"))
            .collect();
        return HttpResponse::Ok().json(serde_json::json!({ "allowed": allowed }));
    }
    let id = record.path.trim_start_matches("/api/");
    match (record.method.as_str(), record.path.starts_with("/api/")) {
        ("GET", true) if id.starts_with("deny") => HttpResponse::Ok().body("no"),
        ("GET", true) if id.starts_with("broken") => HttpResponse::InternalServerError().finish(),
        ("GET", true) if id.starts_with("slowbody") => {
            HttpResponse::Ok().streaming(trickle(b"o", b"k"))
        }
        ("GET", true) => HttpResponse::Ok().body("ok"),
        ("POST", true) if body.starts_with(b"huge:") => {
            let n: usize = std::str::from_utf8(&body[5..]).unwrap().parse().unwrap();
            let chunks = vec![Ok::<_, std::io::Error>(web::Bytes::from(vec![b'x'; n]))];
            HttpResponse::Ok().streaming(stream::iter(chunks))
        }
        ("POST", true) => match &body[..] {
            b"slow-body" => HttpResponse::Ok().streaming(trickle(b"re:", b"late")),
            b"announce-huge" => HttpResponse::Ok()
                .no_chunking(10 * 1024 * 1024)
                .streaming(stream::pending::<Result<web::Bytes, std::io::Error>>()),
            b"silent" => HttpResponse::Ok().finish(),
            b"fail" => HttpResponse::InternalServerError().finish(),
            b"slow" => {
                actix_web::rt::time::sleep(Duration::from_secs(3)).await;
                HttpResponse::Ok().body("late")
            }
            other => {
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(other);
                HttpResponse::Ok().body(answer)
            }
        },
        _ => HttpResponse::Ok().finish(),
    }
}

impl MockBackend {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// Start on a given address (an application that comes up where the hub expects it).
    pub fn start_on(addr: &str) -> Self {
        let outage = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            received: Mutex::new(Vec::new()),
            outage,
        });
        let data = web::Data::from(state.clone());
        let addr = addr.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .default_service(web::to(script))
                })
                .workers(1)
                .disable_signals()
                .bind(addr)
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            })
        });
        let (addr, server) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("mock backend start");
        Self {
            addr,
            state,
            server,
        }
    }

    /// Start or end an outage: while it lasts, every request is answered 503.
    pub fn set_outage(&self, on: bool) {
        self.state.outage.store(on, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Wait for the first request to `path` and return its body as JSON.
    pub async fn first_json(&self, path: &str) -> serde_json::Value {
        let received = self
            .wait_for(path, |r| r.iter().any(|r| r.path == path))
            .await;
        received.iter().find(|r| r.path == path).unwrap().json()
    }

    /// Wait until `pred` holds for the recorded requests; returns them.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if pred(&received) {
                return received;
            }
            assert!(
                start.elapsed() < crate::harness::WAIT,
                "backend never saw {what}; got {received:#?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        // The stop command is sent when `stop` is called; its completion is not awaited here.
        drop(self.server.stop(false));
    }
}
