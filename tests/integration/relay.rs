//! The http backend in ws2api and SocketDock formats, against a real HTTP application.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::mock_backend::{MockBackend, Received};

pub(crate) fn ws2api_config(backend: &MockBackend, extra_limits: &str) -> String {
    format!(
        r#"
[server]
page = false
shutdown_timeout_ms = 3000

[limits]
{extra_limits}

[backend]
kind = "http"
format = "ws2api"
url = "{}"
request_timeout_ms = 1500

[[routes]]
path = "/{{id}}"
dialect = "raw"
"#,
        backend.url("/api")
    )
}

pub(crate) fn socketdock_config(backend: &MockBackend) -> String {
    format!(
        r#"
[server]
page = false

[backend]
kind = "http"
format = "socketdock"
url = "{}"
connect_url = "{}"
disconnect_url = "{}"
external_url = "https://relay-7.example.com"

[[routes]]
path = "/ws"
dialect = "raw"
"#,
        backend.url("/sd/message"),
        backend.url("/sd/connect"),
        backend.url("/sd/disconnect")
    )
}

fn deletes(received: &[Received], id: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.method == "DELETE" && r.path == format!("/api/{id}"))
        .map(Received::text)
        .collect()
}

#[actix_web::test]
async fn ws2api_flow_from_config_alone() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(&backend, ""));
    let (mut ws, _) = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = hub.ws_url("/client-1").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Cookie", "session=abc".parse().unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap()
    };
    let check = backend.received()[0].clone();
    assert_eq!(
        (check.method.as_str(), check.path.as_str()),
        ("GET", "/api/client-1")
    );
    assert_eq!(
        check.header("cookie"),
        Some("session=abc"),
        "the check sees the client's headers"
    );
    assert_eq!(
        check.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "and the client's address"
    );
    assert_eq!(
        check.header("upgrade"),
        None,
        "hop-by-hop headers stay behind"
    );

    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Text("re:hello".into()));
    ws.send(Message::Binary(vec![0, 159, 255])).await.unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::Binary(b"re:\x00\x9f\xff".to_vec())
    );
    let posts: Vec<Received> = backend
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts[0].body, b"hello");
    assert_eq!(posts[1].body, vec![0, 159, 255]);
    assert_eq!(posts[1].content_type, "application/octet-stream");

    // Push by id on the push listener, with ws2api's statuses and bodies.
    let reply = http("POST", &hub.push_url("/client-1"), None, Some("pushed")).await;
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(next_data(&mut ws).await, Message::Text("pushed".into()));
    let reply = http("POST", &hub.push_url("/nobody"), None, Some("x")).await;
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (404, &b"not found"[..])
    );

    // An empty answer sends nothing back: the next frame is the answer to the next message.
    ws.send(Message::Text("silent".into())).await.unwrap();
    ws.send(Message::Text("after".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Text("re:after".into()));

    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: code(1000),
        reason: "done here".into(),
    }))
    .await
    .unwrap();
    let received = backend
        .wait_for("the DELETE", |r| !deletes(r, "client-1").is_empty())
        .await;
    assert_eq!(deletes(&received, "client-1"), vec!["done here"]);
}

#[actix_web::test]
async fn ws2api_connect_check_statuses() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(&backend, ""));
    let status = |url: String| async move {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                response.status().as_u16()
            }
            other => panic!("expected an HTTP error, got {:?}", other.map(|_| ())),
        }
    };
    assert_eq!(status(hub.ws_url("/deny-me")).await, 403);
    assert_eq!(status(hub.ws_url("/broken-1")).await, 502);
    assert_eq!(status(hub.ws_url("/bad%20id")).await, 400);
    let reply = http("GET", &hub.http_url("/plain-http"), None, None).await;
    assert_eq!(reply.status, 400, "no Upgrade header after a passed check");
    assert!(wait_for_connections(&hub, 0).await.is_empty());
}

#[actix_web::test]
async fn ws2api_duplicate_id_replaces_the_older_connection() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(&backend, ""));
    let mut old = connect(&hub.ws_url("/dup")).await;
    wait_for_connections(&hub, 1).await;
    let mut new = connect(&hub.ws_url("/dup")).await;
    assert_eq!(expect_close(&mut old).await.0, 4001);
    assert_eq!(wait_for_connections(&hub, 1).await, vec!["dup"]);
    let reply = http("POST", &hub.push_url("/dup"), None, Some("to the live one")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        next_data(&mut new).await,
        Message::Text("to the live one".into())
    );
    // The id stayed connected, so the replaced connection sends no DELETE; the live one does.
    new.close(None).await.unwrap();
    let received = backend
        .wait_for("the DELETE", |r| !deletes(r, "dup").is_empty())
        .await;
    assert_eq!(deletes(&received, "dup").len(), 1);
    assert!(wait_for_connections(&hub, 0).await.is_empty());
}

#[actix_web::test]
async fn per_connection_order_is_kept() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(&backend, ""));
    let mut a = connect(&hub.ws_url("/order-a")).await;
    let mut b = connect(&hub.ws_url("/order-b")).await;
    for i in 0..40 {
        a.send(Message::Text(format!("a{i}"))).await.unwrap();
        b.send(Message::Text(format!("b{i}"))).await.unwrap();
    }
    for i in 0..40 {
        assert_eq!(next_data(&mut a).await, Message::Text(format!("re:a{i}")));
        assert_eq!(next_data(&mut b).await, Message::Text(format!("re:b{i}")));
    }
    let seen: Vec<String> = backend
        .received()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/api/order-a")
        .map(|r| r.text())
        .collect();
    assert_eq!(seen, (0..40).map(|i| format!("a{i}")).collect::<Vec<_>>());
}

#[actix_web::test]
async fn disconnect_notice_arrives_exactly_once_however_the_connection_ends() {
    let backend = MockBackend::start();
    let mut hub = start(&ws2api_config(
        &backend,
        "heartbeat_interval_ms = 50\nheartbeat_timeout_ms = 400",
    ));
    // Client close.
    let mut client = connect(&hub.ws_url("/by-client")).await;
    client.close(None).await.unwrap();
    // A client closing with 4001 (the code the hub uses for replaced ids) still gets its notice.
    let mut coded = connect(&hub.ws_url("/by-4001")).await;
    coded
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: code(4001),
            reason: "mine".into(),
        }))
        .await
        .unwrap();
    // Server close through the push API.
    let mut closed = connect(&hub.ws_url("/by-push")).await;
    let reply = post(
        &hub,
        "/api/connections/by-push/close",
        &json!({"code": 4000, "reason": "kicked"}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(expect_close(&mut closed).await.0, 4000);
    // TCP drop, and a peer that goes silent (heartbeat timeout).
    let dropped = connect(&hub.ws_url("/by-drop")).await;
    drop(dropped);
    let _silent = raw_silent_client(hub.ws, "/by-timeout").await;
    hub.wait_for_log("heartbeat timeout").await;
    // Shutdown: the hub waits for the notices before it exits. This client reads and flushes
    // (so it answers the 50 ms pings through the drain delay) until the hub closes it.
    let mut open = connect(&hub.ws_url("/by-shutdown")).await;
    let reader = actix_web::rt::spawn(async move {
        while let Some(Ok(_)) = open.next().await {
            let _ = open.flush().await;
        }
    });
    wait_for_connections(&hub, 1).await;
    // Signal without blocking this thread: the reader runs on it through the drain delay.
    hub.signal_term();
    reader.await.unwrap();
    assert_eq!(hub.wait_exit().code(), Some(0));

    let received = backend.received();
    assert_eq!(deletes(&received, "by-client"), vec![""]);
    assert_eq!(deletes(&received, "by-4001"), vec!["mine"]);
    assert_eq!(deletes(&received, "by-push"), vec!["kicked"]);
    assert_eq!(deletes(&received, "by-drop"), vec!["EOF"]);
    assert_eq!(deletes(&received, "by-timeout"), vec!["heartbeat timeout"]);
    assert_eq!(
        deletes(&received, "by-shutdown"),
        vec!["server shutting down"]
    );
}

#[actix_web::test]
async fn backend_failures_are_told_to_the_client() {
    let backend = MockBackend::start();
    let hub = start(&ws2api_config(&backend, ""));
    // Too slow: the answer comes after the 1.5 s deadline.
    let mut slow = connect(&hub.ws_url("/slow-1")).await;
    let mut neighbour = connect(&hub.ws_url("/calm-1")).await;
    slow.send(Message::Text("slow".into())).await.unwrap();
    neighbour
        .send(Message::Text("meanwhile".into()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut neighbour).await,
        Message::Text("re:meanwhile".into())
    );
    assert_eq!(
        expect_close(&mut slow).await,
        (1013, "backend unavailable".to_owned())
    );
    // A 500 is retried with backoff within the deadline, then the client is told.
    let mut failing = connect(&hub.ws_url("/fail-1")).await;
    failing.send(Message::Text("fail".into())).await.unwrap();
    assert_eq!(expect_close(&mut failing).await.0, 1013);
    let attempts = backend
        .received()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/fail-1")
        .count();
    assert!(
        attempts >= 3,
        "a 500 is retried with backoff (saw {attempts} attempts)"
    );
    neighbour
        .send(Message::Text("still fine".into()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut neighbour).await,
        Message::Text("re:still fine".into())
    );

    // The backend gone altogether (connection refused).
    let config =
        ws2api_config(&backend, "").replace(&backend.url("/api"), "http://127.0.0.1:9/api");
    let down = start(&config);
    match tokio_tungstenite::connect_async(down.ws_url("/anyone")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502)
        }
        other => panic!("expected 502, got {:?}", other.map(|_| ())),
    }
    // Refused on a relayed frame (SocketDock format has no connect check): retried, then 1013.
    let config = "[server]\npage = false\n[backend]\nkind = \"http\"\nformat = \"socketdock\"\nurl = \"http://127.0.0.1:9/m\"\nrequest_timeout_ms = 800\n[[routes]]\npath = \"/ws\"\ndialect = \"raw\"\n";
    let refused = start(config);
    let mut ws = connect(&refused.ws_url("/ws")).await;
    ws.send(Message::Text("anyone home?".into())).await.unwrap();
    assert_eq!(
        expect_close(&mut ws).await,
        (1013, "backend unavailable".to_owned())
    );
    refused.wait_for_log("cannot connect").await;
}

#[actix_web::test]
async fn requests_in_flight_are_capped_per_worker() {
    let backend = MockBackend::start();
    let config = ws2api_config(&backend, "")
        .replace("[server]", "[server]\nworkers = 1")
        .replace(
            "request_timeout_ms = 1500",
            "request_timeout_ms = 5000\nmax_in_flight = 1",
        );
    let hub = start(&config);
    let mut first = connect(&hub.ws_url("/cap-1")).await;
    let mut second = connect(&hub.ws_url("/cap-2")).await;
    first.send(Message::Text("slow".into())).await.unwrap();
    backend
        .wait_for("the slow POST", |r| {
            r.iter()
                .any(|r| r.path == "/api/cap-1" && r.method == "POST")
        })
        .await;
    second.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        expect_close(&mut second).await,
        (
            1013,
            "backend overloaded: too many requests in flight".to_owned()
        )
    );
    assert_eq!(next_data(&mut first).await, Message::Text("late".into()));
}

#[actix_web::test]
async fn socketdock_flow_from_config_alone() {
    let backend = MockBackend::start();
    let hub = start(&socketdock_config(&backend));
    let (mut ws, _) = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = hub.ws_url("/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("X-Agent", "mediator-test".parse().unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap()
    };
    let connect_notice = backend.first_json("/sd/connect").await;
    let meta = &connect_notice["meta"];
    let id = meta["connection_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        meta["send"],
        format!("https://relay-7.example.com/socket/{id}/send")
    );
    assert_eq!(
        meta["disconnect"],
        format!("https://relay-7.example.com/socket/{id}/disconnect")
    );
    assert_eq!(meta["headers"]["x-agent"], "mediator-test");
    assert!(meta["remote"].as_str().unwrap().starts_with("127.0.0.1:"));

    ws.send(Message::Text("{\"hello\": 1}".into()))
        .await
        .unwrap();
    ws.send(Message::Binary(b"packed-didcomm".to_vec()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![0xff, 0x00])).await.unwrap();
    let received = backend
        .wait_for("three messages", |r| {
            r.iter().filter(|r| r.path == "/sd/message").count() == 3
        })
        .await;
    let messages: Vec<_> = received
        .iter()
        .filter(|r| r.path == "/sd/message")
        .map(Received::json)
        .collect();
    assert_eq!(messages[0]["message"], "{\"hello\": 1}");
    assert_eq!(messages[0]["meta"]["connection_id"], id);
    assert_eq!(messages[1]["message"], "packed-didcomm");
    assert_eq!(
        (
            messages[2]["message"].clone(),
            messages[2]["message_encoding"].clone()
        ),
        (json!("/wA="), json!("base64"))
    );

    // Push: text/* -> text frame, anything else -> binary, bad UTF-8 in text -> 400.
    let send = hub.push_url(&format!("/socket/{id}/send"));
    let client = awc::Client::default();
    let response = client
        .post(&send)
        .insert_header(("Content-Type", "text/plain; charset=utf-8"))
        .send_body("hi")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(next_data(&mut ws).await, Message::Text("hi".into()));
    let response = client
        .post(&send)
        .insert_header(("Content-Type", "application/didcomm-envelope-enc"))
        .send_body(vec![1u8, 2])
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(next_data(&mut ws).await, Message::Binary(vec![1, 2]));
    let response = client
        .post(&send)
        .insert_header(("Content-Type", "text/plain"))
        .send_body(vec![0xffu8])
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = client
        .post(hub.push_url("/socket/0123456789abcdef0123456789abcdef/send"))
        .send_body("x")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    let response = client
        .post(hub.push_url(&format!("/socket/{id}/disconnect")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    let received = backend
        .wait_for("the disconnect notice", |r| {
            r.iter().any(|r| r.path == "/sd/disconnect")
        })
        .await;
    let notices: Vec<_> = received
        .iter()
        .filter(|r| r.path == "/sd/disconnect")
        .collect();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].json(), json!({"connection_id": id}));
    // Both notices name themselves, so an application can drop a copy it already processed.
    let connect_id = one_notice_id(&tries(&received, "POST", "/sd/connect"));
    assert_eq!(connect_id.len(), 32);
    assert_ne!(one_notice_id(&notices), connect_id);
}

#[actix_web::test]
async fn a_flooding_client_is_closed_before_memory_grows() {
    let backend = MockBackend::start();
    let config = ws2api_config(&backend, "").replace(
        "request_timeout_ms = 1500",
        "request_timeout_ms = 1500\nmax_pending_per_connection = 4",
    );
    let hub = start(&config);
    let mut flooder = connect(&hub.ws_url("/flood-1")).await;
    let mut neighbour = connect(&hub.ws_url("/calm-2")).await;
    for _ in 0..20 {
        // The backend takes 3 s per "slow": frames pile up behind the first one.
        if flooder.send(Message::Text("slow".into())).await.is_err() {
            break;
        }
    }
    assert_eq!(
        expect_close(&mut flooder).await,
        (1008, "too many messages waiting for the backend".to_owned())
    );
    neighbour
        .send(Message::Text("unaffected".into()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut neighbour).await,
        Message::Text("re:unaffected".into())
    );
}

#[actix_web::test]
async fn a_backend_that_hangs_up_mid_request_is_reported() {
    // An "application" that reads the request and closes the connection without answering.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        for stream in listener.incoming().take(20) {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
        }
    });
    let config = format!(
        "[server]\npage = false\n[backend]\nkind = \"http\"\nformat = \"socketdock\"\nurl = \"http://{addr}/message\"\nrequest_timeout_ms = 2000\n[[routes]]\npath = \"/ws\"\ndialect = \"raw\"\n"
    );
    let hub = start(&config);
    let mut ws = connect(&hub.ws_url("/ws")).await;
    ws.send(Message::Text("lost?".into())).await.unwrap();
    assert_eq!(
        expect_close(&mut ws).await,
        (1013, "backend unavailable".to_owned())
    );
    hub.wait_for_log("backend callout failed").await;
}

/// Connect with an X-Forwarded-For header to a hub trusting `trusted`; returns meta.remote
/// from the SocketDock connect notice.
async fn remote_seen_by_backend(trusted: &str) -> String {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let backend = MockBackend::start();
    let config = socketdock_config(&backend).replace(
        "page = false",
        &format!("page = false\ntrusted_proxies = [{trusted}]"),
    );
    let hub = start(&config);
    let mut request = hub.ws_url("/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("X-Forwarded-For", "203.0.113.9, 127.0.0.1".parse().unwrap());
    let (_ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let notice = backend.first_json("/sd/connect").await;
    notice["meta"]["remote"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // The peer 127.0.0.1 is trusted: the last untrusted X-Forwarded-For entry is the client.
    assert_eq!(remote_seen_by_backend("\"127.0.0.1\"").await, "203.0.113.9");
    // Nobody trusted: the header is ignored and the peer address is used.
    assert!(remote_seen_by_backend("").await.starts_with("127.0.0.1:"));
}

#[actix_web::test]
async fn forwarded_for_is_believed_from_trusted_ranges() {
    // A range holding the peer 127.0.0.1 is trusted like the address itself.
    assert_eq!(
        remote_seen_by_backend("\"127.0.0.0/8\"").await,
        "203.0.113.9"
    );
    // Ranges that do not hold the peer: the header is ignored.
    assert!(remote_seen_by_backend("\"10.0.0.0/8\", \"fd00::/8\"")
        .await
        .starts_with("127.0.0.1:"));
}

/// The tries the application saw of the disconnect notice at `path`.
fn tries<'a>(received: &'a [Received], method: &str, path: &str) -> Vec<&'a Received> {
    received
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .collect()
}

/// The notice id every try of one notice carries; asserts it is the same on all of them.
fn one_notice_id(tries: &[&Received]) -> String {
    let ids: std::collections::BTreeSet<&str> = tries
        .iter()
        .map(|r| {
            r.header("switchboard-notice-id")
                .expect("a notice id header")
        })
        .collect();
    assert_eq!(ids.len(), 1, "one id on every try: {ids:?}");
    ids.into_iter().next().unwrap().to_owned()
}

#[actix_web::test]
async fn disconnect_notices_outlive_a_backend_outage() {
    // ws2api, the application answering 503 for longer than request_timeout_ms.
    let backend = MockBackend::start();
    let config = ws2api_config(&backend, "").replace(
        "request_timeout_ms = 1500",
        "request_timeout_ms = 300\nnotice_retry_ms = 60000",
    );
    let hub = start(&config);
    let ids = ["gone-1", "gone-2", "gone-3"];
    let mut clients = Vec::new();
    for id in ids {
        clients.push(connect(&hub.ws_url(&format!("/{id}"))).await);
    }
    wait_for_connections(&hub, ids.len()).await;
    backend.set_outage(true);
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: code(1000),
                reason: format!("bye {i}").into(),
            }))
            .await
            .unwrap();
    }
    // Each notice is still tried after request_timeout_ms has passed.
    backend
        .wait_for("notices tried past request_timeout_ms", |r| {
            ids.iter().all(|id| {
                let tries = tries(r, "DELETE", &format!("/api/{id}"));
                tries.len() >= 2
                    && tries[tries.len() - 1].at - tries[0].at
                        > std::time::Duration::from_millis(300)
            })
        })
        .await;
    for id in ids {
        hub.wait_for_log(&format!("id={id} disconnect notice still not delivered"))
            .await;
    }
    backend.set_outage(false);
    let received = backend
        .wait_for("every notice delivered after the outage", |r| {
            ids.iter().all(|id| {
                tries(r, "DELETE", &format!("/api/{id}"))
                    .iter()
                    .any(|t| !t.failed)
            })
        })
        .await;
    let mut notice_ids = std::collections::BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let tries = tries(&received, "DELETE", &format!("/api/{id}"));
        let delivered: Vec<String> = tries
            .iter()
            .filter(|t| !t.failed)
            .map(|t| t.text())
            .collect();
        assert_eq!(delivered, vec![format!("bye {i}")], "{id}: delivered once");
        notice_ids.insert(one_notice_id(&tries));
    }
    assert_eq!(notice_ids.len(), ids.len(), "each notice has its own id");

    // SocketDock, the application down altogether (nothing listening) and started later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "[server]\npage = false\n[backend]\nkind = \"http\"\nformat = \"socketdock\"\nurl = \"http://{addr}/sd/message\"\ndisconnect_url = \"http://{addr}/sd/disconnect\"\nrequest_timeout_ms = 300\nnotice_retry_ms = 60000\n[[routes]]\npath = \"/ws\"\ndialect = \"raw\"\n"
    );
    let hub = start(&config);
    let mut first = connect(&hub.ws_url("/ws")).await;
    let mut second = connect(&hub.ws_url("/ws")).await;
    let ids = wait_for_connections(&hub, 2).await;
    first.close(None).await.unwrap();
    second.close(None).await.unwrap();
    for id in &ids {
        hub.wait_for_log(&format!("id={id} disconnect notice still not delivered"))
            .await;
    }
    let backend = MockBackend::start_on(&addr.to_string());
    let received = backend
        .wait_for("both notices once the application is up", |r| {
            tries(r, "POST", "/sd/disconnect").len() == 2
        })
        .await;
    let mut told: Vec<String> = tries(&received, "POST", "/sd/disconnect")
        .iter()
        .map(|r| r.json()["connection_id"].as_str().unwrap().to_owned())
        .collect();
    told.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(told, expected);
    for notice in tries(&received, "POST", "/sd/disconnect") {
        one_notice_id(&[notice]);
    }
}

#[actix_web::test]
async fn undelivered_notices_are_bounded_and_dropped_with_a_warning() {
    let backend = MockBackend::start();
    // At most one notice kept for retries.
    let config = ws2api_config(&backend, "").replace(
        "request_timeout_ms = 1500",
        "request_timeout_ms = 300\nnotice_retry_ms = 60000\nmax_pending_notices = 1",
    );
    let hub = start(&config);
    let mut kept = connect(&hub.ws_url("/kept-1")).await;
    let mut over = connect(&hub.ws_url("/over-1")).await;
    wait_for_connections(&hub, 2).await;
    backend.set_outage(true);
    kept.close(None).await.unwrap();
    backend
        .wait_for("a retry of the first notice", |r| {
            tries(r, "DELETE", "/api/kept-1").len() >= 2
        })
        .await;
    over.close(None).await.unwrap();
    hub.wait_for_log("id=over-1 disconnect notice dropped")
        .await;
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("id=over-1 disconnect notice dropped"))
        .unwrap();
    assert!(
        line.contains("backend.max_pending_notices (1)")
            && line.contains("1 notice(s) dropped since start"),
        "{line}"
    );
    backend.set_outage(false);
    backend
        .wait_for("the kept notice delivered", |r| {
            tries(r, "DELETE", "/api/kept-1").iter().any(|t| !t.failed)
        })
        .await;
    assert!(
        tries(&backend.received(), "DELETE", "/api/over-1")
            .iter()
            .all(|t| t.failed),
        "the dropped notice is not sent again"
    );

    // A notice still undelivered when notice_retry_ms has passed is dropped.
    let config = ws2api_config(&backend, "").replace(
        "request_timeout_ms = 1500",
        "request_timeout_ms = 300\nnotice_retry_ms = 600",
    );
    let hub = start(&config);
    let mut client = connect(&hub.ws_url("/expire-1")).await;
    wait_for_connections(&hub, 1).await;
    backend.set_outage(true);
    client.close(None).await.unwrap();
    hub.wait_for_log("id=expire-1 disconnect notice dropped")
        .await;
    assert!(
        hub.log().contains("backend.notice_retry_ms = 600"),
        "{}",
        hub.log()
    );
    backend.set_outage(false);
}

#[actix_web::test]
async fn a_slowly_sent_answer_is_bounded_by_the_request_timeout() {
    let backend = MockBackend::start();
    let config = ws2api_config(&backend, "")
        .replace("request_timeout_ms = 1500", "request_timeout_ms = 500");
    let hub = start(&config);
    // The answer's head comes at once, its body 20 s later.
    let mut ws = connect(&hub.ws_url("/trickle-1")).await;
    ws.send(Message::Text("slow-body".into())).await.unwrap();
    assert_eq!(
        expect_close(&mut ws).await,
        (1013, "backend unavailable".to_owned())
    );
    let received = backend
        .wait_for("the DELETE", |r| !deletes(r, "trickle-1").is_empty())
        .await;
    assert_eq!(deletes(&received, "trickle-1"), vec!["backend unavailable"]);
    // The connect check's answer too: a check that does not finish in time is 502.
    let check = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(hub.ws_url("/slowbody-1")),
    )
    .await
    .expect("the connect check is bounded by request_timeout_ms");
    match check {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 502)
        }
        other => panic!("expected 502, got {:?}", other.map(|_| ())),
    }
}

#[actix_web::test]
async fn answers_larger_than_max_message_size_are_not_relayed() {
    let backend = MockBackend::start();
    let config = ws2api_config(&backend, "max_message_size = 1024")
        .replace("request_timeout_ms = 1500", "request_timeout_ms = 5000");
    let hub = start(&config);
    let mut ws = connect(&hub.ws_url("/big-1")).await;
    ws.send(Message::Text("huge:1024".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Text("x".repeat(1024)));
    ws.send(Message::Text("huge:1025".into())).await.unwrap();
    assert_eq!(
        expect_close(&mut ws).await,
        (
            1011,
            "backend answer larger than max_message_size".to_owned()
        )
    );
    // An announced Content-Length over the limit is refused before the body is read: the
    // client hears at once, not at the 5 s deadline.
    let mut ws = connect(&hub.ws_url("/big-2")).await;
    let sent = std::time::Instant::now();
    ws.send(Message::Text("announce-huge".into()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1011);
    assert!(sent.elapsed() < std::time::Duration::from_secs(4));
    hub.wait_for_log("id=big-2 backend callout failed").await;
    assert!(
        hub.log()
            .contains("answer of 10485760 bytes is larger than the limit of 1024 bytes"),
        "{}",
        hub.log()
    );
}

#[actix_web::test]
async fn a_connect_notice_dropped_on_overload_is_logged_and_counted() {
    let backend = MockBackend::start();
    let config = socketdock_config(&backend)
        .replace("[server]", "[server]\nworkers = 1")
        .replace(
            "[backend]",
            "[backend]\nmax_in_flight = 1\nrequest_timeout_ms = 5000",
        );
    let hub = start(&config);
    let mut busy = connect(&hub.ws_url("/ws")).await;
    let first = backend.first_json("/sd/connect").await["meta"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    busy.send(Message::Text("slow".into())).await.unwrap();
    backend
        .wait_for("the slow message", |r| {
            r.iter().any(|r| r.path == "/sd/message")
        })
        .await;
    let mut refused = connect(&hub.ws_url("/ws")).await;
    assert_eq!(
        expect_close(&mut refused).await,
        (
            1013,
            "backend overloaded: too many requests in flight".to_owned()
        )
    );
    hub.wait_for_log("connect notice dropped").await;
    let log = hub.log();
    let line = log
        .lines()
        .find(|l| l.contains("connect notice dropped"))
        .unwrap();
    assert!(line.contains("1 notice(s) dropped since start"), "{line}");
    let id = line
        .split("id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(id.len(), 32, "{line}");
    assert_ne!(id, first);
    let connects: Vec<String> = backend
        .received()
        .iter()
        .filter(|r| r.path == "/sd/connect")
        .map(|r| {
            r.json()["meta"]["connection_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(connects, vec![first], "the dropped notice was never sent");
}
