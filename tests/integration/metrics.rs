//! `GET /metrics` after a scripted load: connections, frames, publishes, deliveries, a stalled
//! client cut off, close codes, and backend callouts against a real HTTP backend that answers,
//! refuses, fails, or is not there at all; the token rule and the scrape-only listener.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::mock_backend::MockBackend;

/// A scrape parsed into `name{labels}` -> value (labels as the encoder writes them).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (key, value) = line.rsplit_once(' ').expect("sample line");
            values.insert(key.to_owned(), value.parse().expect("sample value"));
        }
        Self(values)
    }

    /// The value of a sample, 0 when it was never set (counters are created on first use).
    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
}

async fn scrape(url: &str, token: Option<&str>) -> Scrape {
    let reply = http("GET", url, token, None).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        reply.content_type
    );
    let text = String::from_utf8(reply.body).unwrap();
    assert!(text.ends_with("# EOF\n"), "a complete exposition");
    Scrape::parse(&text)
}

/// Scrape until `check` holds (counters of ended sessions land a moment after the close).
async fn scrape_until(url: &str, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        let scraped = scrape(url, None).await;
        if check(&scraped) {
            return scraped;
        }
        assert!(start.elapsed() < WAIT, "metrics never showed {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn metrics_count_connections_frames_publishes_deliveries_and_cut_offs() {
    let hub = start(&demo_config("outbound_queue_bytes = 65536"));
    let url = hub.push_url("/metrics");
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut ws = connect(&hub.ws_url("/rpc")).await;
        let subscribe = json!({"jsonrpc": "2.0", "id": i, "method": "subscribe",
            "params": {"channel": "m"}});
        call(&mut ws, subscribe).await;
        readers.push(ws);
    }
    let mut echo = connect(&hub.ws_url("/ws")).await;
    for text in ["one", "two"] {
        send_text(&mut echo, text).await;
        next_data(&mut echo).await;
    }
    for n in 0..5 {
        let reply = post(&hub, "/api/publish", &json!({"channel": "m", "data": n})).await;
        assert_eq!(reply.json["reached"], 3);
    }
    let reply = post(&hub, "/api/broadcast", &json!({"data": "all"})).await;
    assert_eq!(reply.json["reached"], 4);

    let m = scrape(&url, None).await;
    let rpc = r#"{route="/rpc",dialect="jsonrpc"}"#;
    let raw = r#"{route="/ws",dialect="raw"}"#;
    assert_eq!(m.get(&format!("switchboard_connections{rpc}")), 3.0);
    assert_eq!(m.get(&format!("switchboard_connections{raw}")), 1.0);
    assert_eq!(m.get(&format!("switchboard_connects_total{rpc}")), 3.0);
    assert_eq!(
        m.get(r#"switchboard_frames_received_total{dialect="jsonrpc"}"#),
        3.0
    );
    assert_eq!(
        m.get(r#"switchboard_frames_received_total{dialect="raw"}"#),
        2.0
    );
    assert_eq!(m.get(r#"switchboard_publishes_total{source="api"}"#), 5.0);
    assert_eq!(
        m.get(r#"switchboard_publishes_total{source="broadcast"}"#),
        1.0
    );
    // 5 publishes x 3 readers, plus the broadcast to each of the four connections.
    assert_eq!(
        m.get(r#"switchboard_deliveries_total{dialect="jsonrpc"}"#),
        18.0
    );
    assert_eq!(m.get(r#"switchboard_deliveries_total{dialect="raw"}"#), 1.0);
    assert_eq!(m.get("switchboard_fanout_duration_seconds_count"), 6.0);
    assert_eq!(m.get("switchboard_channels"), 1.0);
    assert_eq!(m.get("switchboard_deliveries_dropped_total"), 0.0);

    // A client that stops reading is cut off once: one drop, one stalled disconnect, 1008.
    let mut stalled = small_buffer_client(&hub, "/rpc").await;
    let subscribe =
        json!({"jsonrpc": "2.0", "id": 9, "method": "subscribe", "params": {"channel": "s"}});
    call(&mut stalled, subscribe).await;
    publish_until_dropped(&hub, "s").await;
    assert_eq!(expect_close(&mut stalled).await.0, 1008);

    // A normal close by a reader.
    let mut reader = readers.pop().unwrap();
    reader
        .send(Message::Close(Some(CloseFrame {
            code: code(1000),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    let m = scrape_until(&url, "the two closes", |m| {
        m.get(r#"switchboard_disconnects_total{code="1008"}"#) == 1.0
            && m.get(r#"switchboard_disconnects_total{code="1000"}"#) == 1.0
    })
    .await;
    assert_eq!(m.get("switchboard_deliveries_dropped_total"), 1.0);
    assert_eq!(m.get("switchboard_stalled_disconnects_total"), 1.0);
    assert_eq!(m.get(&format!("switchboard_connections{rpc}")), 2.0);
    assert_eq!(m.get(&format!("switchboard_connects_total{rpc}")), 4.0);
    assert_eq!(m.get("switchboard_slow_consumer_queued_bytes"), 0.0);
    let stats = get(&hub, "/healthz").await.json;
    assert_eq!(stats["deliveries_dropped"], 1, "the hub agrees");
}

fn ws2api_config(url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
page = false

[push]
{extra}

[backend]
kind = "http"
format = "ws2api"
url = "{url}"
request_timeout_ms = 600

[[routes]]
path = "/{{id}}"
dialect = "raw"
"#
    )
}

#[actix_web::test]
async fn backend_callouts_are_counted_by_outcome_and_timed() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(&backend.url("/api"), ""));
    let url = hub.push_url("/metrics");
    // The connect check is answered; the frame is relayed.
    let mut ws = connect(&hub.ws_url("/client-1")).await;
    send_text(&mut ws, "hello").await;
    backend
        .wait_for("the frame", |r| r.iter().any(|r| r.method == "POST"))
        .await;
    // The application answers one connect check with 500.
    let _ = tokio_tungstenite::connect_async(hub.ws_url("/broken-1")).await;
    let m = scrape_until(&url, "two ok callouts and a refusal", |m| {
        m.get(r#"switchboard_backend_callouts_total{format="ws2api",outcome="ok"}"#) >= 2.0
            && m.get(r#"switchboard_backend_callouts_total{format="ws2api",outcome="refused"}"#)
                >= 1.0
    })
    .await;
    let timed = m.get(r#"switchboard_backend_callout_duration_seconds_count{format="ws2api"}"#);
    let counted: f64 = ["ok", "refused", "failed"]
        .iter()
        .map(|o| {
            m.get(&format!(
                r#"switchboard_backend_callouts_total{{format="ws2api",outcome="{o}"}}"#
            ))
        })
        .sum();
    assert_eq!(timed, counted, "every callout is timed once");
    assert_eq!(
        m.get(r#"switchboard_backend_callouts_in_flight{format="ws2api"}"#),
        0.0
    );
    // An outage: the application answers 503; the frame's callout is retried and refused.
    backend.set_outage(true);
    send_text(&mut ws, "during the outage").await;
    assert_eq!(expect_close(&mut ws).await.0, 1013, "the client is told");
    let m = scrape(&url, None).await;
    assert!(
        m.get(r#"switchboard_backend_callouts_total{format="ws2api",outcome="refused"}"#) >= 2.0
    );

    // No application at all: the connect check fails (502) and is counted as failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/api", dead.local_addr().unwrap());
    drop(dead);
    let lonely = start(&ws2api_config(&dead_url, ""));
    let _ = tokio_tungstenite::connect_async(lonely.ws_url("/client-2")).await;
    let m = scrape_until(&lonely.push_url("/metrics"), "a failed callout", |m| {
        m.get(r#"switchboard_backend_callouts_total{format="ws2api",outcome="failed"}"#) >= 1.0
    })
    .await;
    assert_eq!(
        m.get(r#"switchboard_backend_callouts_total{format="ws2api",outcome="ok"}"#),
        0.0
    );
}

#[actix_web::test]
async fn metrics_need_the_token_except_on_the_scrape_listener() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(
        &backend.url("/api"),
        "token = \"s3cret\"\nmetrics_listen = \"127.0.0.1:0\"",
    ));
    let reply = http("GET", &hub.push_url("/metrics"), None, None).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json["error"], "unauthorized");
    scrape(&hub.push_url("/metrics"), Some("s3cret")).await;
    let _ws = connect(&hub.ws_url("/client-1")).await;

    hub.wait_for_log("listening metrics=").await;
    let log = hub.log();
    let addr = log
        .split("listening metrics=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    // The session counts itself once it has started, a moment after the 101.
    scrape_until(&format!("http://{addr}/metrics"), "the connection", |m| {
        m.get(r#"switchboard_connections{route="/{id}",dialect="raw"}"#) == 1.0
    })
    .await;
    // The scrape listener serves nothing else.
    let reply = http("GET", &format!("http://{addr}/api/connections"), None, None).await;
    assert_eq!(reply.status, 404);
}
