//! The sample page in a real headless Chromium, driven through the Chrome DevTools Protocol
//! (a WebSocket, spoken with the same client the other tests use): connect, echo, subscribe,
//! and a delivery published through the push API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// A headless Chromium, killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

/// Start Chromium on `url`; returns it and its DevTools port.
fn launch(binary: &str, url: &str) -> (Browser, u16) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(WAIT)
        .expect("chromium printed no DevTools address");
    (
        Browser {
            child,
            _profile: profile,
        },
        port,
    )
}

/// A DevTools session on the page.
struct Page {
    ws: Ws,
    next_id: u64,
}

impl Page {
    /// Evaluate a JS expression (awaiting a promise) and return its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": "Runtime.evaluate", "params": {
            "expression": expression, "awaitPromise": true, "returnByValue": true}});
        self.ws
            .send(Message::Text(request.to_string()))
            .await
            .unwrap();
        loop {
            let reply = next_json(&mut self.ws).await;
            if reply["id"] == id {
                assert!(
                    reply["result"]["exceptionDetails"].is_null(),
                    "{expression}: {reply}"
                );
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// Wait until a JS condition holds in the page.
    async fn wait_until(&mut self, condition: &str) {
        let start = std::time::Instant::now();
        while self.eval(&format!("Boolean({condition})")).await != json!(true) {
            assert!(start.elapsed() < WAIT, "page never satisfied: {condition}");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn open_page(devtools_port: u16) -> Page {
    let start = std::time::Instant::now();
    loop {
        let reply = http(
            "GET",
            &format!("http://127.0.0.1:{devtools_port}/json/list"),
            None,
            None,
        )
        .await;
        let page = reply.json.as_array().and_then(|targets| {
            targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        if let Some(url) = page {
            return Page {
                ws: connect(&url).await,
                next_id: 0,
            };
        }
        assert!(start.elapsed() < WAIT, "no page target in chromium");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Chromium on the hub's sample page, once the page has loaded.
async fn load_page(binary: &str, hub: &HubProcess) -> (Browser, Page) {
    let (browser, port) = launch(binary, &hub.http_url("/"));
    let mut page = open_page(port).await;
    page.wait_until("document.readyState === 'complete' && document.querySelector('#rpc-connect')")
        .await;
    (browser, page)
}

/// Click a panel's Connect button (`echo` or `rpc`) and wait until its socket is open.
async fn connect_panel(page: &mut Page, panel: &str) {
    page.eval(&format!(
        "document.querySelector('#{panel}-connect').click()"
    ))
    .await;
    page.wait_until(&format!(
        "document.querySelector('#{panel}-status').dataset.state === 'open'"
    ))
    .await;
}

const LOG_HAS: &str = "((log, dir, text) => [...document.querySelectorAll(log + ' .entry')].some(e => e.dataset.dir === dir && e.textContent.includes(text)))";

#[actix_web::test]
#[cfg_attr(missing_chromium, ignore = "chromium is not installed")]
async fn the_sample_page_echoes_subscribes_and_shows_deliveries() {
    let binary = chromium().expect("chromium is not installed (apt-get install chromium)");
    let hub = start(&demo_config(""));
    let (_browser, mut page) = load_page(binary, &hub).await;

    // Echo: connect, send, see the echo.
    connect_panel(&mut page, "echo").await;
    page.eval("document.querySelector('#echo-input').value = 'hello from chromium'; document.querySelector('#echo-send').click()").await;
    page.wait_until(&format!(
        "{LOG_HAS}('#echo-log', 'in', 'hello from chromium')"
    ))
    .await;

    // Channels: connect, subscribe, then a publish from a backend shows up as a delivery.
    connect_panel(&mut page, "rpc").await;
    page.eval("document.querySelector('#channel').value = 'browser-demo'; document.querySelector('#subscribe').click()").await;
    page.wait_until(&format!("{LOG_HAS}('#rpc-log', 'in', 'subscribed')"))
        .await;
    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "browser-demo", "data": {"note": "from the backend"}}),
    )
    .await;
    assert_eq!(
        reply.json["reached"], 1,
        "the page's socket is the subscriber"
    );
    page.wait_until(&format!("{LOG_HAS}('#rpc-log', 'in', 'from the backend')"))
        .await;

    // Close from the server: the page shows the code and reason.
    let ids = connection_ids(&hub).await;
    for id in ids {
        post(
            &hub,
            &format!("/api/connections/{id}/close"),
            &json!({"code": 4000, "reason": "demo over"}),
        )
        .await;
    }
    page.wait_until(&format!("{LOG_HAS}('#echo-log', 'info', 'code=4000')"))
        .await;
    page.wait_until(&format!("{LOG_HAS}('#rpc-log', 'info', 'demo over')"))
        .await;
    let _ = page.ws.close(None).await;
    let _ = page.ws.next().await;
}

/// Whether the log has an entry marked as an error (red).
const LOG_HAS_ERROR: &str =
    "((log) => [...document.querySelectorAll(log + ' .entry.err')].map(e => e.textContent))";

#[actix_web::test]
#[cfg_attr(missing_chromium, ignore = "chromium is not installed")]
async fn in_the_demo_config_connect_then_publish_shows_a_delivery_from_the_backend() {
    let binary = chromium().expect("chromium is not installed (apt-get install chromium)");
    // The demo config itself, with the push API on the page's listener as it sets it.
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .expect("read config.toml");
    let hub = start_with_args(
        &config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.1:0"],
    );
    assert_eq!(hub.ws, hub.push, "the demo config shares one listener");
    let (_browser, mut page) = load_page(binary, &hub).await;

    // The first natural clicks: Connect, then Publish.
    connect_panel(&mut page, "rpc").await;
    page.eval("document.querySelector('#data').value = '{\"note\": \"from the page backend\"}'; document.querySelector('#publish').click()").await;
    page.wait_until(&format!(
        "{LOG_HAS}('#rpc-log', 'in', 'published: reached 1')"
    ))
    .await;
    page.wait_until(&format!(
        "{LOG_HAS}('#rpc-log', 'in', 'from the page backend')"
    ))
    .await;
    assert_eq!(
        page.eval(&format!("{LOG_HAS_ERROR}('#rpc-log')")).await,
        json!([]),
        "no red entry in the log"
    );
    // The hub saw a subscriber on lobby (the page subscribed itself) and the publish.
    let channels = get(&hub, "/api/channels").await;
    assert_eq!(
        channels.json["channels"],
        json!([{"name": "lobby", "subscribers": 1}])
    );
    let _ = page.ws.close(None).await;
    let _ = page.ws.next().await;
}
