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

const LOG_HAS: &str = "((log, dir, text) => [...document.querySelectorAll(log + ' .entry')].some(e => e.dataset.dir === dir && e.textContent.includes(text)))";

#[actix_web::test]
#[cfg_attr(missing_chromium, ignore = "chromium is not installed")]
async fn the_sample_page_echoes_subscribes_and_shows_deliveries() {
    let binary = chromium().expect("chromium is not installed (apt-get install chromium)");
    let hub = start(&demo_config(""));
    let (_browser, port) = launch(binary, &hub.http_url("/"));
    let mut page = open_page(port).await;
    page.wait_until(
        "document.readyState === 'complete' && document.querySelector('#echo-connect')",
    )
    .await;

    // Echo: connect, send, see the echo.
    page.eval("document.querySelector('#echo-connect').click()")
        .await;
    page.wait_until("document.querySelector('#echo-status').dataset.state === 'open'")
        .await;
    page.eval("document.querySelector('#echo-input').value = 'hello from chromium'; document.querySelector('#echo-send').click()").await;
    page.wait_until(&format!(
        "{LOG_HAS}('#echo-log', 'in', 'hello from chromium')"
    ))
    .await;

    // Channels: connect, subscribe, then a publish from a backend shows up as a delivery.
    page.eval("document.querySelector('#rpc-connect').click()")
        .await;
    page.wait_until("document.querySelector('#rpc-status').dataset.state === 'open'")
        .await;
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

#[actix_web::test]
#[cfg_attr(missing_chromium, ignore = "chromium is not installed")]
async fn chromium_negotiates_permessage_deflate_on_a_compressing_route() {
    let binary = chromium().expect("chromium is not installed (apt-get install chromium)");
    let hub = start(
        "[server]\npage = true\n\n[backend]\nkind = \"loopback\"\n\n\
         [[routes]]\npath = \"/ws\"\ndialect = \"raw\"\ncompression = true\n\n\
         [[routes]]\npath = \"/rpc\"\ndialect = \"jsonrpc\"\ncompression = true\n\n\
         [[routes]]\npath = \"/plain\"\ndialect = \"raw\"\n",
    );
    let (_browser, port) = launch(binary, &hub.http_url("/"));
    let mut page = open_page(port).await;
    page.wait_until("document.readyState === 'complete'").await;

    // An echo both ways: Chromium compresses what it sends, the hub what it answers.
    let echo = |path: &str| {
        format!(
            "new Promise((resolve, reject) => {{
                const ws = new WebSocket(`ws://${{location.host}}{path}`);
                const sent = Array.from({{length: 400}}, (_, i) => `message ${{i * 7919 % 1000}} from chromium`).join(' ');
                ws.onopen = () => ws.send(sent);
                ws.onmessage = (e) => {{ resolve({{extensions: ws.extensions, same: e.data === sent, length: e.data.length}}); ws.close(); }};
                ws.onerror = () => reject(new Error('websocket error'));
            }})"
        )
    };
    let compressed = page.eval(&echo("/ws")).await;
    assert!(
        compressed["extensions"]
            .as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "{compressed}"
    );
    assert_eq!(compressed["same"], true, "{compressed}");
    assert!(compressed["length"].as_u64() > Some(5000), "{compressed}");
    let plain = page.eval(&echo("/plain")).await;
    assert_eq!(plain["extensions"], "", "{plain}");
    assert_eq!(plain["same"], true, "{plain}");

    // A publication from the backend reaches the page compressed (the shared path).
    page.eval(
        "new Promise((resolve, reject) => {
            window.received = [];
            const ws = new WebSocket(`ws://${location.host}/rpc`);
            window.rpc = ws;
            ws.onopen = () => ws.send(JSON.stringify({jsonrpc: '2.0', id: 1, method: 'subscribe', params: {channel: 'deflated'}}));
            ws.onmessage = (e) => { window.received.push(e.data); if (e.data.includes('subscribed')) resolve(ws.extensions); };
            ws.onerror = () => reject(new Error('websocket error'));
        })",
    )
    .await;
    assert!(page
        .eval("window.rpc.extensions")
        .await
        .as_str()
        .is_some_and(|e| e.starts_with("permessage-deflate")));
    let story = "a long story from the backend ".repeat(100);
    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "deflated", "data": {"story": story}}),
    )
    .await;
    assert_eq!(
        reply.json["reached"], 1,
        "the page's socket is the subscriber"
    );
    page.wait_until(&format!(
        "window.received.some(m => m.includes({}))",
        json!(story)
    ))
    .await;
    let _ = page.ws.close(None).await;
    let _ = page.ws.next().await;
}
