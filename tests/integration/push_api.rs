//! The push API: statuses, JSON bodies, the bearer token.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[actix_web::test]
async fn send_close_and_list_connections() {
    let hub = start(&demo_config(""));
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let mut rpc = connect(&hub.ws_url("/rpc")).await;
    call(
        &mut rpc,
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "room"}}),
    )
    .await;

    let list = get(&hub, "/api/connections").await;
    assert_eq!(list.status, 200);
    let connections = list.json["connections"].as_array().unwrap().clone();
    assert_eq!(connections.len(), 2);
    let raw = connections.iter().find(|c| c["route"] == "/ws").unwrap();
    let chat = connections.iter().find(|c| c["route"] == "/rpc").unwrap();
    assert_eq!(chat["channels"], json!(["room"]));
    assert!(raw["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(raw["connected_since"].as_u64().unwrap() > 1_700_000_000);
    let id = raw["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    let channels = get(&hub, "/api/channels").await;
    assert_eq!(
        channels.json,
        json!({"channels": [{"name": "room", "subscribers": 1}]})
    );

    let reply = post(
        &hub,
        &format!("/api/connections/{id}/send"),
        &json!({"text": "pushed"}),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (200, json!({"sent": true}))
    );
    assert_eq!(next_data(&mut ws).await, Message::Text("pushed".into()));
    let reply = post(
        &hub,
        &format!("/api/connections/{id}/send"),
        &json!({"binary": "AAH/"}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(next_data(&mut ws).await, Message::Binary(vec![0, 1, 255]));

    let reply = post(
        &hub,
        &format!("/api/connections/{id}/close"),
        &json!({"code": 4001, "reason": "bye"}),
    )
    .await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (200, json!({"closed": true}))
    );
    assert_eq!(expect_close(&mut ws).await, (4001, "bye".to_owned()));
    wait_for_connections(&hub, 1).await;
    hub.wait_for_log(&format!("id={id} disconnect route=/ws"))
        .await;
}

#[actix_web::test]
async fn errors_are_specific_json() {
    let hub = start(&demo_config(""));
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let id = wait_for_connections(&hub, 1).await.remove(0);

    let unknown = post(
        &hub,
        "/api/connections/0123456789abcdef0123456789abcdef/send",
        &json!({"text": "x"}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json["error"], "not_found");
    let unknown = post(&hub, "/api/connections/nobody/close", &json!({})).await;
    assert_eq!(unknown.status, 404);

    let send = format!("/api/connections/{id}/send");
    let cases = [
        (send.as_str(), "{not json", "invalid JSON"),
        (
            send.as_str(),
            r#"{"text": "a", "binary": "AA=="}"#,
            "exactly one",
        ),
        (send.as_str(), r#"{}"#, "exactly one"),
        (send.as_str(), r#"{"binary": "***"}"#, "base64"),
        (send.as_str(), r#"{"txt": "typo"}"#, "unknown field"),
        (
            "/api/connections/bad%20id/send",
            r#"{"text": "a"}"#,
            "connection id",
        ),
        ("/api/publish", r#"{"channel": "", "data": 1}"#, "channel"),
        ("/api/publish", r#"{"data": 1}"#, "missing field `channel`"),
        ("/api/broadcast", r#"[]"#, "invalid JSON"),
    ];
    for (path, body, needle) in cases {
        let reply = http("POST", &hub.push_url(path), None, Some(body)).await;
        assert_eq!(reply.status, 400, "{path} {body}");
        assert_eq!(reply.json["error"], "bad_request");
        let message = reply.json["message"].as_str().unwrap();
        assert!(message.contains(needle), "{path} {body}: {message}");
    }
    let close = format!("/api/connections/{id}/close");
    let reply = post(&hub, &close, &json!({"code": 1006})).await;
    assert_eq!(reply.status, 400);
    assert!(reply.json["message"].as_str().unwrap().contains("1006"));

    let missing = get(&hub, "/api/nothing-here").await;
    assert_eq!(
        (missing.status, missing.json["error"].clone()),
        (404, json!("not_found"))
    );

    // None of that disturbed the connection.
    ws.send(Message::Text("alive".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Text("alive".into()));
}

#[actix_web::test]
async fn token_is_required_when_set() {
    let hub = start(&format!(
        "{}\n[push]\ntoken = \"s3cret\"\n",
        demo_config("")
    ));
    let url = hub.push_url("/api/connections");
    let none = http("GET", &url, None, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json["error"], "unauthorized");
    let wrong = http("GET", &url, Some("guess"), None).await;
    assert_eq!(wrong.status, 401);
    let publish = http(
        "POST",
        &hub.push_url("/api/publish"),
        None,
        Some(r#"{"channel": "c", "data": 1}"#),
    )
    .await;
    assert_eq!(publish.status, 401);
    let right = http("GET", &url, Some("s3cret"), None).await;
    assert_eq!(
        (right.status, right.json.clone()),
        (200, json!({"connections": []}))
    );
    let health = http("GET", &hub.push_url("/healthz"), None, None).await;
    assert_eq!(
        (health.status, health.json["status"].clone()),
        (200, json!("ok"))
    );
}

#[actix_web::test]
async fn push_api_can_share_the_websocket_listener() {
    let config = demo_config("");
    let hub = start_with_args(
        &config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.1:0"],
    );
    assert_eq!(hub.ws, hub.push);
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let id = wait_for_connections(&hub, 1).await.remove(0);
    let reply = post(
        &hub,
        &format!("/api/connections/{id}/send"),
        &json!({"text": "same port"}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(next_data(&mut ws).await, Message::Text("same port".into()));
}

#[actix_web::test]
async fn rocketws_backend_port_speaks_json_rpc() {
    let config = "[server]\npage = false\n[[routes]]\npath = \"/rpc\"\ndialect = \"jsonrpc\"\n[[routes]]\npath = \"/websocket/\"\ndialect = \"groups\"\n";
    let hub = start(config);
    let mut a = connect(&hub.ws_url("/rpc")).await;
    for channel in ["chat", "news"] {
        call(&mut a, json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": channel}})).await;
    }
    let mut b = connect(&hub.ws_url("/websocket/")).await;
    call(&mut b, json!({"groups": {"chat": ["room"]}})).await;
    let mut idle = connect(&hub.ws_url("/rpc")).await;
    wait_for_connections(&hub, 3).await;

    let rpc = |body: serde_json::Value| {
        let url = hub.push_url("/");
        async move { http("POST", &url, None, Some(&body.to_string())).await }
    };
    let reply = rpc(json!({"jsonrpc": "2.0", "id": 1, "method": "emit", "params": {"channel": "chat", "data": {"m": 1}}})).await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (
            200,
            json!({"jsonrpc": "2.0", "result": "emitted: 1", "id": 1})
        )
    );
    assert_eq!(next_json(&mut a).await["m"], 1);
    let reply = rpc(json!({"jsonrpc": "2.0", "id": 2, "method": "emit", "params": {"channel": "chat-room", "data": {"m": 2}}})).await;
    assert_eq!(
        reply.json["result"], "emitted: 1",
        "reaches the groups dialect too"
    );
    assert_eq!(next_json(&mut b).await, json!({"m": 2}));

    // notify_all: every connection once, even `a` which is in two channels.
    let reply = rpc(json!({"jsonrpc": "2.0", "id": 3, "method": "notify_all", "params": {"data": {"sys": true}}})).await;
    assert_eq!(reply.json["result"], "notified: 3");
    assert_eq!(next_json(&mut a).await["__type"], "broadcast");
    assert_eq!(next_json(&mut b).await, json!({"sys": true}));
    assert_eq!(next_json(&mut idle).await["__type"], "broadcast");
    let heartbeat = call(
        &mut a,
        json!({"jsonrpc": "2.0", "id": 9, "method": "heartbeat"}),
    )
    .await;
    assert_eq!(
        heartbeat["id"], 9,
        "no second broadcast frame for the second channel"
    );

    let reply = rpc(json!([
        {"jsonrpc": "2.0", "id": 4, "method": "total_subscribers", "params": {"channel": "chat"}},
        {"jsonrpc": "2.0", "id": 5, "method": "total_subscribers", "params": {"channel": null}},
        {"jsonrpc": "2.0", "id": 6, "method": "available_channels"},
        {"jsonrpc": "2.0", "id": 7, "method": "ping"},
        {"jsonrpc": "2.0", "method": "ping"}
    ]))
    .await;
    assert_eq!(
        reply.json,
        json!([
            {"jsonrpc": "2.0", "result": 1, "id": 4},
            {"jsonrpc": "2.0", "result": 2, "id": 5},
            {"jsonrpc": "2.0", "result": ["chat", "chat-room", "news"], "id": 6},
            {"jsonrpc": "2.0", "result": {"ping": "ok"}, "id": 7}
        ])
    );

    let code = |reply: &Reply| reply.json["error"]["code"].clone();
    let reply = http("POST", &hub.push_url("/"), None, Some("{nope")).await;
    assert_eq!((reply.status, code(&reply)), (200, json!(-32700)));
    let reply = rpc(json!({"jsonrpc": "2.0", "id": 8, "method": "explode"})).await;
    assert_eq!(code(&reply), -32601);
    let reply = rpc(json!({"jsonrpc": "2.0", "id": 8, "method": "emit", "params": {"channel": "chat", "data": 5}})).await;
    assert_eq!(code(&reply), -32602);
    let reply = rpc(json!({"jsonrpc": "2.0", "id": 8, "method": "emit", "params": ["chat"]})).await;
    assert_eq!(code(&reply), -32602);
    let reply = rpc(json!({"jsonrpc": "2.0", "method": "ping"})).await;
    assert_eq!(reply.status, 204, "a notification gets no response body");
}

/// The request head of a push-API call with these extra header lines.
fn head(method: &str, path: &str, host: &str, headers: &[&str]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}");
    for header in headers {
        head.push_str("\r\n");
        head.push_str(header);
    }
    head
}

/// A refusal as the push API gives it: this status and a JSON body with this `error`.
fn assert_refused(reply: &Reply, status: u16, error: &str, context: &str) {
    assert_eq!(reply.status, status, "{context}: {:?}", reply.json);
    assert_eq!(reply.json["error"], error, "{context}");
    assert!(reply.json["message"].is_string(), "{context}");
}

const FOREIGN: &str = "Origin: https://evil.example.net";

#[actix_web::test]
async fn foreign_origins_are_refused_on_every_push_path() {
    let config = format!(
        "{}\n[push]\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]\n",
        demo_config("")
    );
    let hub = start(&config);
    let host = hub.push.to_string();
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let id = wait_for_connections(&hub, 1).await.remove(0);
    let body = br#"{"data": "csrf"}"#;

    // What a web page can send without a preflight: a text/plain POST with its Origin.
    let page = head(
        "POST",
        "/api/broadcast",
        &host,
        &[FOREIGN, "Content-Type: text/plain"],
    );
    let reply = raw_http(hub.push, &page, body).await;
    assert_refused(&reply, 403, "forbidden", "text/plain from a foreign page");
    let send = format!("/api/connections/{id}/send");
    let close = format!("/api/connections/{id}/close");
    for (method, path, body) in [
        ("POST", "/api/broadcast", &body[..]),
        ("POST", "/api/publish", br#"{"channel": "c", "data": 1}"#),
        ("POST", send.as_str(), br#"{"text": "csrf"}"#),
        ("POST", close.as_str(), b""),
        ("GET", "/api/connections", b""),
        ("GET", "/api/channels", b""),
        ("GET", "/healthz", b""),
        (
            "POST",
            "/",
            br#"{"jsonrpc": "2.0", "id": 1, "method": "notify_all", "params": {"data": {}}}"#,
        ),
    ] {
        let request = head(
            method,
            path,
            &host,
            &[FOREIGN, "Content-Type: application/json"],
        );
        let reply = raw_http(hub.push, &request, body).await;
        assert_refused(&reply, 403, "forbidden", &format!("{method} {path}"));
    }
    let null = head(
        "POST",
        "/api/broadcast",
        &host,
        &["Origin: null", "Content-Type: application/json"],
    );
    assert_refused(
        &raw_http(hub.push, &null, body).await,
        403,
        "forbidden",
        "Origin: null",
    );

    // Allowed origins (exact and pattern), with a charset parameter.
    for origin in ["https://app.example.com", "https://eu.example.org"] {
        let request = head(
            "POST",
            "/api/broadcast",
            &host,
            &[
                &format!("Origin: {origin}"),
                "Content-Type: application/json; charset=utf-8",
            ],
        );
        let reply = raw_http(hub.push, &request, br#"{"data": "allowed"}"#).await;
        assert_eq!(
            (reply.status, reply.json["reached"].clone()),
            (200, json!(1)),
            "{origin}"
        );
        assert_eq!(next_data(&mut ws).await, Message::Text("allowed".into()));
    }

    // Without an Origin (a server), the JSON endpoints still want application/json.
    for content_type in [
        Some("Content-Type: text/plain"),
        Some("Content-Type: application/x-www-form-urlencoded"),
        None,
    ] {
        let headers: Vec<&str> = content_type.into_iter().collect();
        let request = head("POST", "/api/broadcast", &host, &headers);
        let reply = raw_http(hub.push, &request, body).await;
        assert_refused(
            &reply,
            415,
            "unsupported_media_type",
            &format!("{content_type:?}"),
        );
    }
    // A RocketWS backend that sends no content type and no Origin keeps working.
    let rpc = head("POST", "/", &host, &[]);
    let reply = raw_http(
        hub.push,
        &rpc,
        br#"{"jsonrpc": "2.0", "id": 1, "method": "notify_all", "params": {"data": {"rpc": 1}}}"#,
    )
    .await;
    assert_eq!(
        (reply.status, reply.json["result"].clone()),
        (200, json!("notified: 1"))
    );
    assert_eq!(
        next_data(&mut ws).await,
        Message::Text(r#"{"rpc":1}"#.into())
    );
    // Close with no body and no content type still closes with 1000.
    let request = head("POST", &close, &host, &[]);
    assert_eq!(raw_http(hub.push, &request, b"").await.status, 200);
    assert_eq!(expect_close(&mut ws).await.0, 1000);
}

#[actix_web::test]
async fn foreign_origins_are_refused_on_the_compatibility_paths() {
    let socketdock = start(
        "[server]\npage = false\n[backend]\nkind = \"http\"\nformat = \"socketdock\"\nurl = \"http://127.0.0.1:9/m\"\n[[routes]]\npath = \"/ws\"\ndialect = \"raw\"\n",
    );
    let ws2api = start(
        "[server]\npage = false\n[backend]\nkind = \"http\"\nformat = \"ws2api\"\nurl = \"http://127.0.0.1:9/api\"\n[[routes]]\npath = \"/{id}\"\ndialect = \"raw\"\n",
    );
    let nobody = "0123456789abcdef0123456789abcdef";
    let cases = [
        (&socketdock, format!("/socket/{nobody}/send")),
        (&socketdock, format!("/socket/{nobody}/disconnect")),
        (&ws2api, format!("/{nobody}")),
    ];
    for (hub, path) in &cases {
        let host = hub.push.to_string();
        let page = head("POST", path, &host, &[FOREIGN, "Content-Type: text/plain"]);
        let reply = raw_http(hub.push, &page, b"from a page").await;
        assert_refused(&reply, 403, "forbidden", path);
        // The application's own call (no Origin, text/plain or raw) reaches the handler: the
        // id is unknown here, so it is the handler's 404.
        let server = head("POST", path, &host, &["Content-Type: text/plain"]);
        let reply = raw_http(hub.push, &server, b"from the backend").await;
        assert_eq!(
            reply.status,
            404,
            "{path}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}

#[actix_web::test]
async fn a_loopback_push_listener_answers_loopback_host_names_only() {
    let hub = start(&format!(
        "{}\n[push]\nallowed_hosts = [\"push.internal\"]\n",
        demo_config("")
    ));
    let port = hub.push.port();
    // A page on a name that resolves to 127.0.0.1 reads without an Origin (a simple GET).
    for host in [
        "rebind.evil.example.net".to_owned(),
        format!("rebind.evil.example.net:{port}"),
        "10.0.0.5".to_owned(),
    ] {
        for path in ["/api/connections", "/healthz"] {
            let reply = raw_http(hub.push, &head("GET", path, &host, &[]), b"").await;
            assert_refused(&reply, 403, "forbidden", &format!("Host {host} {path}"));
        }
    }
    for host in [
        hub.push.to_string(),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "LocalHost".to_owned(),
        format!("[::1]:{port}"),
        format!("push.internal:{port}"),
    ] {
        let reply = raw_http(hub.push, &head("GET", "/api/connections", &host, &[]), b"").await;
        assert_eq!(reply.status, 200, "Host {host}: {:?}", reply.json);
    }
}

#[actix_web::test]
async fn a_public_push_listener_checks_host_names_only_when_configured() {
    let open = start_with_args(
        &format!("{}\n[push]\ntoken = \"t\"\n", demo_config("")),
        &["--listen", "127.0.0.1:0", "--push-listen", "0.0.0.0:0"],
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", open.push.port()).parse().unwrap();
    let reply = raw_http(
        addr,
        &head(
            "GET",
            "/api/channels",
            "anything.example.net",
            &["Authorization: Bearer t"],
        ),
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);

    let listed = start_with_args(
        &format!(
            "{}\n[push]\ntoken = \"t\"\nallowed_hosts = [\"push.internal\"]\n",
            demo_config("")
        ),
        &["--listen", "127.0.0.1:0", "--push-listen", "0.0.0.0:0"],
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", listed.push.port()).parse().unwrap();
    let auth = ["Authorization: Bearer t"];
    let reply = raw_http(
        addr,
        &head("GET", "/api/channels", "anything.example.net", &auth),
        b"",
    )
    .await;
    assert_refused(
        &reply,
        403,
        "forbidden",
        "unlisted host on a public listener",
    );
    let reply = raw_http(
        addr,
        &head("GET", "/api/channels", "push.internal:8081", &auth),
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
}

#[actix_web::test]
async fn the_token_can_come_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("push-token");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let config = format!(
        "{}\n[push]\ntoken_file = {:?}\n",
        demo_config(""),
        file.display().to_string()
    );
    let url = |hub: &HubProcess| hub.push_url("/api/connections");

    let hub = start(&config);
    assert_eq!(http("GET", &url(&hub), None, None).await.status, 401);
    assert_eq!(
        http("GET", &url(&hub), Some("from-the-file"), None)
            .await
            .status,
        200
    );

    // The environment wins over the file.
    let hub = start_with_env(
        &config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
        &[("SWITCHBOARD_PUSH_TOKEN", "from-the-env")],
    );
    assert_eq!(
        http("GET", &url(&hub), Some("from-the-file"), None)
            .await
            .status,
        401
    );
    assert_eq!(
        http("GET", &url(&hub), Some("from-the-env"), None)
            .await
            .status,
        200
    );

    // A public listener with the token only in the environment starts.
    let hub = start_with_env(
        &demo_config(""),
        &["--listen", "127.0.0.1:0", "--push-listen", "0.0.0.0:0"],
        &[("SWITCHBOARD_PUSH_TOKEN", "env-only")],
    );
    let public = format!("http://127.0.0.1:{}/api/channels", hub.push.port());
    assert_eq!(
        http("GET", &public, Some("env-only"), None).await.status,
        200
    );
    assert_eq!(http("GET", &public, None, None).await.status, 401);

    // An unreadable or empty file stops start-up with the key named.
    let missing = format!(
        "[push]\ntoken_file = {:?}\n",
        dir.path().join("nope").display().to_string()
    );
    let (code, stderr) = run_to_exit(&missing, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("push.token_file") && stderr.contains("cannot read"),
        "{stderr}"
    );
    std::fs::write(&file, " \n").unwrap();
    let (code, stderr) = run_to_exit(&config, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("push.token_file") && stderr.contains("empty"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let hub = start(&format!(
        "{}\n[push]\ntoken = \"s3cret\"\n",
        demo_config("")
    ));
    let host = hub.push.to_string();
    for (authorization, status) in [
        ("Authorization: bearer s3cret", 200),
        ("Authorization: BEARER s3cret", 200),
        ("Authorization: Bearer s3cret", 200),
        ("Authorization: bearer wrong", 401),
        ("Authorization: Basic s3cret", 401),
        ("Authorization: s3cret", 401),
    ] {
        let reply = raw_http(
            hub.push,
            &head("GET", "/api/channels", &host, &[authorization]),
            b"",
        )
        .await;
        assert_eq!(reply.status, status, "{authorization}");
    }
}

#[actix_web::test]
async fn a_request_body_that_trickles_in_is_cut_off_with_408() {
    use tokio::io::AsyncWriteExt;
    let hub = start(&format!(
        "{}\n[push]\nbody_timeout_ms = 300\n",
        demo_config("")
    ));
    let mut stream = tokio::net::TcpStream::connect(hub.push).await.unwrap();
    let body = br#"{"data": "slow"}"#;
    let request = format!(
        "POST /api/broadcast HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        hub.push,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = std::time::Instant::now();
    // One byte every 100 ms: the whole body would take 1.6 s, past the 300 ms deadline.
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = writer.shutdown().await;
        // Hold the write half until the test ends: only the server may close.
        std::future::pending::<()>().await;
    });
    let mut received = Vec::new();
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut received),
    )
    .await
    .expect("the server never closed the slow connection")
    .expect("read");
    let elapsed = started.elapsed();
    trickle.abort();
    let reply = parse_reply(&received);
    assert_refused(&reply, 408, "request_timeout", "slow body");
    assert!(
        elapsed < std::time::Duration::from_millis(1500),
        "closed only after {elapsed:?}, when the body was nearly complete"
    );
}
