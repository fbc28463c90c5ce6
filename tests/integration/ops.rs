//! Operations: the Origin allow-list (WebSocket handshake and push API), `/readyz` through a
//! drain, config keys and secrets from the environment, and JSON log lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// A WebSocket handshake by hand with this `Origin` (or none); the reply's status and, for a
/// refusal, its JSON body.
async fn handshake(addr: SocketAddr, path: &str, origin: Option<&str>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(WAIT, stream.read_exact(&mut byte))
            .await
            .expect("no answer to the handshake")
            .expect("read");
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    if status == 101 {
        return (status, Value::Null);
    }
    let body = read_to_end(&mut stream).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A push-API POST with this `Origin` (and the push listener's own `Host`).
async fn push_with_origin(hub: &HubProcess, origin: &str) -> Reply {
    let body = br#"{"channel": "c", "data": 1}"#;
    raw_http(
        hub.push,
        &format!(
            "POST /api/publish HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nContent-Type: application/json",
            hub.push
        ),
        body,
    )
    .await
}

const ORIGINS: &str = r#"
[server]
allowed_origins = ["https://app.example.com", "https://*.example.org"]

[[routes]]
path = "/ws"
dialect = "raw"

[[routes]]
path = "/strict"
dialect = "raw"
allowed_origins = ["https://only.example.net"]
require_origin = true
"#;

#[actix_web::test]
async fn the_origin_list_governs_handshakes_per_route() {
    let hub = start(ORIGINS);
    for (origin, status) in [
        (Some("https://app.example.com"), 101),
        (Some("https://eu.example.org"), 101),
        (Some("https://example.org"), 403),
        (Some("http://evil.example"), 403),
        (None, 101),
    ] {
        let (got, body) = handshake(hub.ws, "/ws", origin).await;
        assert_eq!(got, status, "/ws with {origin:?}: {body}");
        if status == 403 {
            assert_eq!(body["error"], "forbidden_origin", "{body}");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.contains(origin.unwrap()) && message.contains("server.allowed_origins"),
                "{message}"
            );
        }
    }
    hub.wait_for_log("refusing a WebSocket upgrade on /ws from 127.0.0.1")
        .await;
    assert!(hub
        .log()
        .contains("origin `http://evil.example` is not allowed"));

    // The route's own list replaces the server's, and it requires an Origin.
    for (origin, status) in [
        (Some("https://only.example.net"), 101),
        (Some("https://app.example.com"), 403),
        (None, 403),
    ] {
        let (got, body) = handshake(hub.ws, "/strict", origin).await;
        assert_eq!(got, status, "/strict with {origin:?}: {body}");
        if origin == Some("https://app.example.com") {
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("routes[1].allowed_origins"),
                "{body}"
            );
        }
        if origin.is_none() {
            assert!(
                body["message"].as_str().unwrap().contains("require_origin"),
                "{body}"
            );
        }
    }
}

#[actix_web::test]
async fn without_a_list_only_the_pages_own_origin_may_connect() {
    let hub = start(&demo_config(""));
    let own = format!("http://{}", hub.ws);
    assert_eq!(handshake(hub.ws, "/ws", Some(&own)).await.0, 101);
    let (status, body) = handshake(hub.ws, "/ws", Some("http://evil.example")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(handshake(hub.ws, "/ws", None).await.0, 101);
    // The push API (another listener, so another origin) refuses the page and the stranger.
    assert_eq!(push_with_origin(&hub, &own).await.status, 403);
    assert_eq!(
        push_with_origin(&hub, "http://evil.example").await.status,
        403
    );
}

#[actix_web::test]
async fn the_push_api_inherits_the_server_list_unless_it_has_its_own() {
    let hub = start(ORIGINS);
    let reply = push_with_origin(&hub, "https://app.example.com").await;
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(
        push_with_origin(&hub, "https://eu.example.org")
            .await
            .status,
        200
    );
    let reply = push_with_origin(&hub, "http://evil.example").await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.json["message"]
            .as_str()
            .unwrap()
            .contains("push.allowed_origins"),
        "{:?}",
        reply.json
    );
    drop(hub);

    // An explicit push list (even an empty one) replaces the inherited one; `*` on the
    // server opens handshakes to any origin, never the push API.
    let config = ORIGINS.replace(
        "[server]\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]",
        "[server]\nallowed_origins = [\"*\"]\n[push]\nallowed_origins = []",
    );
    let hub = start(&config);
    assert_eq!(
        handshake(hub.ws, "/ws", Some("http://any.example")).await.0,
        101
    );
    assert_eq!(
        push_with_origin(&hub, "https://app.example.com")
            .await
            .status,
        403
    );
    drop(hub);
    let config = ORIGINS.replace(
        "https://app.example.com\", ",
        "*\", \"https://app.example.com\", ",
    );
    let hub = start(&config);
    assert_eq!(
        handshake(hub.ws, "/ws", Some("http://any.example")).await.0,
        101
    );
    assert_eq!(
        push_with_origin(&hub, "http://any.example").await.status,
        403
    );
    assert_eq!(
        push_with_origin(&hub, "https://app.example.com")
            .await
            .status,
        200
    );

    let (code, stderr) = run_to_exit(
        "[push]\nallowed_origins = [\"*\"]\n",
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`push.allowed_origins[0]`"), "{stderr}");
    let (code, stderr) = run_to_exit(
        "[[routes]]\npath = \"/ws\"\ndialect = \"raw\"\nallowed_origins = [\"app.example.com\"]\n",
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`routes[0].allowed_origins[0]`"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn readyz_turns_503_before_the_drain_closes_the_sockets() {
    let config = demo_config("").replace(
        "shutdown_timeout_ms = 3000",
        "shutdown_timeout_ms = 3000\ndrain_delay_ms = 1500",
    );
    let mut hub = start(&config);
    let reply = get(&hub, "/readyz").await;
    assert_eq!(
        (reply.status, reply.json.clone()),
        (200, json!({"status": "ready"}))
    );
    let health = get(&hub, "/healthz").await;
    assert_eq!(health.status, 200);

    let mut ws = connect(&hub.ws_url("/ws")).await;
    wait_for_connections(&hub, 1).await;
    let closed = tokio::spawn(async move {
        let close = expect_close(&mut ws).await;
        (close, Instant::now())
    });
    hub.signal_term();
    let start = Instant::now();
    let (not_ready_at, body) = loop {
        let reply = get(&hub, "/readyz").await;
        if reply.status == 503 {
            break (Instant::now(), reply.json);
        }
        assert_eq!(reply.status, 200);
        assert!(start.elapsed() < WAIT, "/readyz never answered 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["reasons"], json!(["draining"]), "{body}");
    assert!(body["message"].as_str().unwrap().contains("shutting down"));
    // Liveness is not readiness: /healthz still answers while draining.
    assert_eq!(get(&hub, "/healthz").await.status, 200);
    let ((code, _), closed_at) = closed.await.unwrap();
    assert_eq!(code, 1001);
    assert!(
        not_ready_at < closed_at,
        "the load balancer must see 503 before the 1001 close"
    );
    assert!(hub.wait_exit().success());
    hub.wait_for_log("draining: /readyz answers 503").await;
}

#[actix_web::test]
async fn readyz_is_served_wherever_healthz_is() {
    let hub = start_with_args(
        &demo_config(""),
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.1:0"],
    );
    assert_eq!(hub.ws, hub.push, "one shared listener");
    let reply = http("GET", &hub.http_url("/readyz"), None, None).await;
    assert_eq!(
        (reply.status, reply.json),
        (200, json!({"status": "ready"}))
    );
    // A foreign Host is refused as on /healthz (DNS rebinding).
    let reply = raw_http(hub.ws, "GET /readyz HTTP/1.1\r\nHost: evil.example", b"").await;
    assert_eq!(reply.status, 403);
}

#[actix_web::test]
async fn keys_come_from_the_environment_over_the_file() {
    let config = format!(
        "{}\n[push]\nallowed_origins = [\"https://file.example\"]\n",
        demo_config("")
    );
    let hub = start_with_env(
        &config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
        &[
            ("SWITCHBOARD_SERVER_PAGE", "false"),
            ("SWITCHBOARD_ROUTES_0_PATH", "/from-env"),
            ("SWITCHBOARD_LIMITS_MAX_MESSAGE_SIZE", "8"),
            (
                "SWITCHBOARD_PUSH_ALLOWED_ORIGINS",
                r#"["https://env.example"]"#,
            ),
        ],
    );
    assert_eq!(
        http("GET", &hub.http_url("/"), None, None).await.status,
        404
    );
    let mut ws = connect(&hub.ws_url("/from-env")).await;
    send_text(&mut ws, "0123456789").await;
    assert_eq!(expect_close(&mut ws).await.0, 1009, "max_message_size = 8");
    assert_eq!(
        push_with_origin(&hub, "https://env.example").await.status,
        200
    );
    assert_eq!(
        push_with_origin(&hub, "https://file.example").await.status,
        403
    );
}

#[test]
fn environment_errors_name_the_key_and_the_variable() {
    let args = ["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"];
    for (var, value, needles) in [
        (
            "SWITCHBOARD_SERVER_WORKERS",
            "999",
            &["`server.workers` (SWITCHBOARD_SERVER_WORKERS)", "0..=256"][..],
        ),
        (
            "SWITCHBOARD_LIMITS_MAX_BATCH",
            "many",
            &[
                "`limits.max_batch` (SWITCHBOARD_LIMITS_MAX_BATCH)",
                "invalid type",
            ],
        ),
        (
            "SWITCHBOARD_SERVER_LISTEN_PORT",
            "1",
            &["SWITCHBOARD_SERVER_LISTEN_PORT", "listen_port"],
        ),
        (
            "SWITCHBOARD_SERVR_LISTEN",
            "x",
            &["SWITCHBOARD_SERVR_LISTEN", "section"],
        ),
        (
            "SWITCHBOARD_ROUTES_4_PATH",
            "/x",
            &["routes[4]", "SWITCHBOARD_ROUTES_4_PATH"],
        ),
        (
            "SWITCHBOARD_LOG_FORMAT",
            "xml",
            &["`log.format` (SWITCHBOARD_LOG_FORMAT)", "xml"],
        ),
    ] {
        let (code, stderr) = run_to_exit_with_env(&demo_config(""), &args, &[(var, value)]);
        assert_eq!(code, Some(2), "{var}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{var}: {needle:?} not in {stderr}");
        }
    }
    // A rule between keys names the variables that took part.
    let (code, stderr) = run_to_exit_with_env(
        &demo_config(""),
        &args,
        &[("SWITCHBOARD_LIMITS_HEARTBEAT_INTERVAL_MS", "40000")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SWITCHBOARD_LIMITS_HEARTBEAT_INTERVAL_MS from the environment")
            && stderr.contains("`limits.heartbeat_interval_ms`"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn the_push_token_comes_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("push.secret");
    std::fs::write(&file, "file-secret\n").unwrap();
    let args = ["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"];
    let file_var = file.display().to_string();
    for (env, token) in [
        (
            vec![("SWITCHBOARD_PUSH_TOKEN_FILE", file_var.as_str())],
            "file-secret",
        ),
        // A secret that looks like a number is still a string.
        (vec![("SWITCHBOARD_PUSH_TOKEN", "12345")], "12345"),
        (
            vec![
                ("SWITCHBOARD_PUSH_TOKEN_FILE", file_var.as_str()),
                ("SWITCHBOARD_PUSH_TOKEN", "env-wins"),
            ],
            "env-wins",
        ),
    ] {
        let hub = start_with_env(&demo_config(""), &args, &env);
        let url = hub.push_url("/api/channels");
        assert_eq!(http("GET", &url, None, None).await.status, 401, "{env:?}");
        assert_eq!(http("GET", &url, Some("wrong"), None).await.status, 401);
        assert_eq!(
            http("GET", &url, Some(token), None).await.status,
            200,
            "{env:?}"
        );
    }
    let (code, stderr) = run_to_exit_with_env(
        &demo_config(""),
        &args,
        &[("SWITCHBOARD_PUSH_TOKEN_FILE", "/nonexistent/secret")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`push.token_file`") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn json_logs_are_one_object_per_line_with_the_connection_id() {
    let config = format!("{}\n[log]\nformat = \"json\"\n", demo_config(""));
    let hub = start(&config);
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let id = wait_for_connections(&hub, 1).await.remove(0);
    ws.close(None).await.unwrap();
    hub.wait_for_log("disconnect route=/ws").await;
    let lines: Vec<Value> = hub
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    let disconnect = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .starts_with("disconnect route=/ws")
        })
        .unwrap();
    assert_eq!(disconnect["id"], id.as_str(), "{disconnect}");
    assert_eq!(disconnect["level"], "INFO");
    assert_eq!(disconnect["target"], "switchboard::session");
    assert!(
        !disconnect["message"].as_str().unwrap().contains(&id),
        "the id is a field, not part of the message: {disconnect}"
    );
    let connect = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .starts_with("connect route=/ws")
        })
        .unwrap();
    assert_eq!(connect["id"], id.as_str());
    // The timestamp is RFC 3339 in UTC.
    let ts = disconnect["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
}

#[actix_web::test]
async fn hook_tokens_come_from_a_file_or_the_environment() {
    let backend = crate::mock_backend::MockBackend::start();
    let config = format!(
        "[server]\npage = false\n[authorization]\nurl = \"{}\"\n[[routes]]\npath = \"/websocket/\"\ndialect = \"groups\"\naccept_url = \"{}\"\n",
        backend.url("/auth"),
        backend.url("/accept")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accept.secret");
    std::fs::write(&file, "  accept-from-file\n").unwrap();
    let file = file.display().to_string();
    let hub = start_with_env(
        &config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
        &[
            ("SWITCHBOARD_AUTHORIZATION_TOKEN", "auth-from-env"),
            ("SWITCHBOARD_ROUTES_0_ACCEPT_TOKEN_FILE", &file),
        ],
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = hub.ws_url("/websocket/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Cookie", "sessionid=good".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"accept": true, "user": 42})
    );
    let reply = call(&mut ws, json!({"groups": {"jobs": ["summary"]}})).await;
    assert_eq!(reply["groups_current"], json!(["jobs-summary"]));
    let received = backend.received();
    let header = |path: &str| {
        received
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{path} was not called"))
            .header("authorization")
            .map(str::to_owned)
    };
    assert_eq!(
        header("/accept").as_deref(),
        Some("Bearer accept-from-file")
    );
    assert_eq!(header("/auth").as_deref(), Some("Bearer auth-from-env"));

    // A token for a hook that is not configured, and an unreadable file, are refused by key.
    let args = ["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"];
    let (code, stderr) = run_to_exit("[authorization]\ntoken = \"x\"\n", &args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`authorization.token`"), "{stderr}");
    let (code, stderr) = run_to_exit_with_env(
        &config,
        &args,
        &[(
            "SWITCHBOARD_ROUTES_0_ACCEPT_TOKEN_FILE",
            "/nonexistent/secret",
        )],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`routes[0].accept_token_file`"), "{stderr}");
}
