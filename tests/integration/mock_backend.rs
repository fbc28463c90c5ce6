//! A real HTTP application for the relay tests: an actix-web server on a free port, in its own
//! thread, that records every request and answers by a small script keyed on the path and body.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// One request the application received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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
    received: Arc<Mutex<Vec<Received>>>,
    server: actix_web::dev::ServerHandle,
}

/// The script:
/// - `GET /api/{id}`: `ok`, except ids starting `deny` (body `no`) and `broken` (500).
/// - `POST /api/{id}`: body `silent` -> empty answer; `slow` -> answers after 3 s;
///   `fail` -> 500; otherwise the body echoed back prefixed with `re:` (bytes kept as sent).
/// - `DELETE /api/{id}` and `POST /sd/...`: 200, empty.
/// - `POST /accept`: 200 `{"accept": true, "user": 42}` for a `sessionid=good` cookie, else 403.
/// - `POST /auth`: `{"allowed": [...]}`, every asked channel without `secret` in its name.
async fn script(
    req: HttpRequest,
    body: web::Bytes,
    received: web::Data<Mutex<Vec<Received>>>,
) -> HttpResponse {
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
    };
    received.lock().unwrap().push(record.clone());
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
        ("GET", true) => HttpResponse::Ok().body("ok"),
        ("POST", true) => match &body[..] {
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
        let received = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::from(received.clone());
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
                .bind("127.0.0.1:0")
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
            received,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
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
