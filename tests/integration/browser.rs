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

#[actix_web::test]
#[cfg_attr(missing_chromium, ignore = "chromium is not installed")]
async fn the_dashboard_shows_the_hubs_figures_and_publishes() {
    let binary = chromium().expect("chromium is not installed (apt-get install chromium)");
    let hub = start(&format!(
        "{}\n[push]\ntoken = \"dash-token\"\nlisten = \"127.0.0.1:0\"\n",
        demo_config("")
    ));
    let token = Some("dash-token");
    // A known load: three subscribers of `dash`, one echo client, two publishes.
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut ws = connect(&hub.ws_url("/rpc")).await;
        let subscribe = json!({"jsonrpc": "2.0", "id": i, "method": "subscribe",
            "params": {"channel": "dash"}});
        call(&mut ws, subscribe).await;
        readers.push(ws);
    }
    let mut echo = connect(&hub.ws_url("/ws")).await;
    send_text(&mut echo, "ping").await;
    next_data(&mut echo).await;
    for n in 0..2 {
        let body = json!({"channel": "dash", "data": n}).to_string();
        let reply = http("POST", &hub.push_url("/api/publish"), token, Some(&body)).await;
        assert_eq!(reply.json["reached"], 3);
    }
    for reader in &mut readers {
        for _ in 0..2 {
            next_json(reader).await;
        }
    }

    let (_browser, port) = launch(binary, &hub.push_url("/dashboard"));
    let mut page = open_page(port).await;
    // Without the token the page shows nothing but asks for it.
    page.wait_until(
        "document.querySelector('#token-form') && !document.querySelector('#token-form').hidden",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#connections').textContent")
            .await,
        "-"
    );
    page.eval("document.querySelector('#token').value = 'dash-token'; document.querySelector('#token-save').click()").await;
    page.wait_until("document.querySelector('#status').dataset.state === 'ok'")
        .await;

    // The page's figures are the hub's.
    let data = http("GET", &hub.push_url("/api/dashboard"), token, None)
        .await
        .json;
    assert_eq!(data["totals"]["connections"], 4);
    assert_eq!(data["totals"]["deliveries"], 6);
    assert_eq!(
        data["totals"]["frames_in"], 4,
        "three subscribes and one echo"
    );
    let shown = |id: &str| format!("document.querySelector('#{id}').textContent");
    assert_eq!(page.eval(&shown("connections")).await, "4");
    assert_eq!(page.eval(&shown("connects")).await, "4");
    assert_eq!(page.eval(&shown("deliveries")).await, "6");
    assert_eq!(page.eval(&shown("frames-in")).await, "4");
    assert_eq!(page.eval(&shown("dropped")).await, "0");
    assert_eq!(page.eval(&shown("channel-count")).await, "1");
    assert_eq!(
        page.eval("document.querySelector('#channels tr[data-channel=\"dash\"] td:last-child').textContent").await,
        "3"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#nodes tbody tr').length")
            .await,
        1
    );
    page.wait_until("document.querySelector('#chart canvas')")
        .await;

    // The publish form goes through the push API, from the page's own origin.
    page.eval("document.querySelector('#publish-channel').value = 'dash'; document.querySelector('#publish-data').value = '{\"from\": \"the dashboard\"}'; document.querySelector('#publish').click()").await;
    page.wait_until(
        "document.querySelector('#publish-result').textContent === 'reached 3, dropped 0'",
    )
    .await;
    for reader in &mut readers {
        let delivery = next_json(reader).await;
        assert_eq!(delivery["from"], "the dashboard", "{delivery}");
    }
    page.wait_until("document.querySelector('#deliveries').textContent === '9'")
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
    // The sample page itself, not a blank tab that is still loading it.
    page.wait_until(
        "document.readyState === 'complete' && document.querySelector('#echo-connect')",
    )
    .await;

    // An echo both ways: Chromium compresses what it sends, the hub what it answers.
    let echo = |path: &str| {
        format!(
            "new Promise((resolve, reject) => {{
                const ws = new WebSocket(`ws://${{location.host}}{path}`);
                const sent = Array.from({{length: 400}}, (_, i) => `message ${{i * 7919 % 1000}} from chromium`).join(' ');
                ws.onopen = () => ws.send(sent);
                ws.onmessage = (e) => {{ resolve({{extensions: ws.extensions, same: e.data === sent, length: e.data.length}}); ws.close(); }};
                ws.onclose = (e) => resolve({{closed: e.code}});
                ws.onerror = () => resolve({{error: true}});
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
