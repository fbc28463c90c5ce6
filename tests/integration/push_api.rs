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
    hub.wait_for_log(&format!("disconnect id={id} route=/ws"))
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
