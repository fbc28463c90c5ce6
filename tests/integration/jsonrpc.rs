//! The JSON-RPC (RocketWS) route through real sockets.

use serde_json::{json, Value};

use crate::harness::*;

fn request(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[actix_web::test]
async fn results_match_rocketws() {
    let hub = start(&demo_config(""));
    let mut a = connect(&hub.ws_url("/rpc")).await;
    let mut b = connect(&hub.ws_url("/rpc")).await;
    let mut c = connect(&hub.ws_url("/rpc")).await;

    let reply = call(&mut a, request(0, "subscribe", json!({"channel": "chat"}))).await;
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "result": "subscribed", "id": 0})
    );
    let reply = call(&mut a, request(1, "subscribe", json!({"channel": "chat"}))).await;
    assert_eq!(reply["result"], "subscribed", "subscribe is idempotent");
    assert_eq!(
        call(&mut b, request(1, "subscribe", json!({"channel": "chat"}))).await["result"],
        "subscribed"
    );
    assert_eq!(
        call(&mut c, request(1, "subscribe", json!({"channel": "other"}))).await["result"],
        "subscribed"
    );

    let reply = call(
        &mut a,
        request(
            2,
            "send_data",
            json!({"channel": "chat", "data": {"message": "hola!"}}),
        ),
    )
    .await;
    assert_eq!(reply["result"], "emitted: 1", "the sender is excluded");
    let delivery = next_json(&mut b).await;
    assert_eq!(delivery["message"], "hola!");
    assert_eq!(delivery["__type"], "message");
    assert!(delivery["__ts"].as_u64().unwrap() > 1_700_000_000);

    let reply = call(&mut a, request(3, "heartbeat", json!({}))).await;
    assert_eq!(reply["result"], json!({"heartbeat": "ok"}));

    let reply = call(
        &mut a,
        request(4, "unsubscribe", json!({"channel": "chat"})),
    )
    .await;
    assert_eq!(reply["result"], "unsubscribed");
    let reply = call(
        &mut a,
        request(5, "unsubscribe", json!({"channel": "never"})),
    )
    .await;
    assert_eq!(
        reply["result"], "unsubscribed",
        "unsubscribe when not subscribed is fine"
    );

    let reply = call(
        &mut a,
        request(6, "send_data", json!({"channel": "chat", "data": {}})),
    )
    .await;
    assert_eq!(reply["error"]["code"], -32000);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("is not a subscriber of the channel `chat`"));

    // c, on another channel, got nothing: its next frame is the reply to its own call.
    assert_eq!(
        call(&mut c, request(9, "heartbeat", json!({}))).await["id"],
        9
    );
}

#[actix_web::test]
async fn errors_batches_and_notifications() {
    let hub = start(&demo_config(""));
    let mut ws = connect(&hub.ws_url("/rpc")).await;

    send_text(&mut ws, "{broken").await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["error"]["code"], -32700);
    assert_eq!(reply["id"], Value::Null);

    let cases = [
        (json!({"id": 1, "method": "heartbeat"}), -32600),
        (json!("just a string"), -32600),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "explode"}),
            -32601,
        ),
        (request(1, "subscribe", json!(["chat"])), -32602),
        (request(1, "subscribe", json!({"channel": 42})), -32602),
        (request(1, "subscribe", json!({})), -32602),
        (
            request(
                1,
                "send_data",
                json!({"channel": "c", "data": "not an object"}),
            ),
            -32602,
        ),
    ];
    for (req, code) in cases {
        let reply = call(&mut ws, req.clone()).await;
        assert_eq!(reply["error"]["code"], code, "request {req}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }

    // A notification is carried out but not answered: the next frame answers the next request.
    send_text(
        &mut ws,
        &json!({"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "n"}}).to_string(),
    )
    .await;
    send_text(
        &mut ws,
        &json!({"jsonrpc": "2.0", "method": "nope"}).to_string(),
    )
    .await;
    let reply = call(&mut ws, request(10, "heartbeat", json!({}))).await;
    assert_eq!(reply["id"], 10);
    let channels = get(&hub, "/api/channels").await.json;
    assert_eq!(
        channels["channels"],
        json!([{"name": "n", "subscribers": 1}])
    );

    let reply = call(
        &mut ws,
        json!([
            request(20, "subscribe", json!({"channel": "b1"})),
            {"jsonrpc": "2.0", "method": "subscribe", "params": {"channel": "b2"}},
            request(21, "heartbeat", json!({})),
            request(22, "nope", json!({})),
            5
        ]),
    )
    .await;
    let items = reply.as_array().expect("a batch is answered with an array");
    assert_eq!(items.len(), 4);
    assert_eq!(
        (items[0]["id"].clone(), items[0]["result"].clone()),
        (json!(20), json!("subscribed"))
    );
    assert_eq!(items[1]["id"], 21);
    assert_eq!(items[2]["error"]["code"], -32601);
    assert_eq!(items[3]["error"]["code"], -32600);

    let reply = call(&mut ws, json!([])).await;
    assert_eq!(reply["error"]["code"], -32600);

    // The connection survived all of it.
    assert_eq!(
        call(&mut ws, request(30, "heartbeat", json!({}))).await["result"]["heartbeat"],
        "ok"
    );
}

#[actix_web::test]
async fn publish_reaches_exactly_the_subscribers() {
    let hub = start(&demo_config(""));
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&hub.ws_url("/rpc")).await;
        call(&mut ws, request(1, "subscribe", json!({"channel": "news"}))).await;
        subscribers.push(ws);
    }
    let mut outsider = connect(&hub.ws_url("/rpc")).await;
    call(
        &mut outsider,
        request(1, "subscribe", json!({"channel": "sports"})),
    )
    .await;
    let mut leaver = connect(&hub.ws_url("/rpc")).await;
    call(
        &mut leaver,
        request(1, "subscribe", json!({"channel": "news"})),
    )
    .await;
    call(
        &mut leaver,
        request(2, "unsubscribe", json!({"channel": "news"})),
    )
    .await;

    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "news", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json,
        json!({"channel": "news", "reached": 3, "dropped": 0})
    );
    for ws in &mut subscribers {
        let delivery = next_json(ws).await;
        assert_eq!(
            (delivery["n"].clone(), delivery["__type"].clone()),
            (json!(1), json!("message"))
        );
    }
    for ws in [&mut outsider, &mut leaver] {
        assert_eq!(
            call(ws, request(7, "heartbeat", json!({}))).await["id"],
            7,
            "no delivery expected"
        );
    }

    let reply = post(&hub, "/api/broadcast", &json!({"data": {"alert": true}})).await;
    assert_eq!(reply.json["reached"], 5);
    for ws in subscribers.iter_mut().chain([&mut outsider, &mut leaver]) {
        let delivery = next_json(ws).await;
        assert_eq!(delivery["__type"], "broadcast");
        assert_eq!(delivery["alert"], true);
    }
}

#[actix_web::test]
async fn subscriptions_per_connection_are_limited() {
    let hub = start(&demo_config("max_subscriptions = 2"));
    let mut ws = connect(&hub.ws_url("/rpc")).await;
    for (id, channel) in [(1, "a"), (2, "b"), (3, "a")] {
        let reply = call(
            &mut ws,
            request(id, "subscribe", json!({"channel": channel})),
        )
        .await;
        assert_eq!(reply["result"], "subscribed", "{channel}");
    }
    let reply = call(&mut ws, request(4, "subscribe", json!({"channel": "c"}))).await;
    assert_eq!(reply["error"]["code"], -32000);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
    call(&mut ws, request(5, "unsubscribe", json!({"channel": "a"}))).await;
    let reply = call(&mut ws, request(6, "subscribe", json!({"channel": "c"}))).await;
    assert_eq!(
        reply["result"], "subscribed",
        "room again after leaving one"
    );
}

/// The next text frame as it was sent (numbers not reparsed).
async fn next_text(ws: &mut Ws) -> String {
    match next_data(ws).await {
        tokio_tungstenite::tungstenite::Message::Text(text) => text,
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[actix_web::test]
async fn a_long_batch_gets_one_error_and_batch_replies_stay_small() {
    let hub = start(&demo_config(""));
    let mut ws = connect(&hub.ws_url("/rpc")).await;

    // About 1 MB of invalid requests: one short error, not one error per element.
    let huge = format!("[{}0]", "0,".repeat(500_000));
    send_text(&mut ws, &huge).await;
    let text = next_text(&mut ws).await;
    assert!(text.len() < 200, "a {}-byte reply", text.len());
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["error"]["code"], -32600);
    assert_eq!(
        reply["error"]["message"],
        "Invalid Request: a batch may hold at most 100 requests"
    );
    assert_eq!(reply["id"], Value::Null);

    // A full batch of invalid requests is answered element by element, within the stated bound.
    let full = format!("[{}0]", "0,".repeat(99));
    send_text(&mut ws, &full).await;
    let text = next_text(&mut ws).await;
    let reply: Value = serde_json::from_str(&text).unwrap();
    let items = reply.as_array().expect("an array");
    assert_eq!(items.len(), 100);
    assert!(items.iter().all(|item| item["error"]["code"] == -32600));
    assert!(
        text.len() <= full.len() + 100 * 256,
        "{} bytes for a {}-byte batch",
        text.len(),
        full.len()
    );

    // The connection is fine afterwards.
    let reply = call(&mut ws, request(1, "heartbeat", json!({}))).await;
    assert_eq!(reply["result"]["heartbeat"], "ok");
}

#[actix_web::test]
async fn ids_round_trip_exactly_in_the_dialect_and_the_backend_port() {
    let hub = start(&demo_config(""));
    let mut ws = connect(&hub.ws_url("/rpc")).await;
    for id in [
        "18446744073709551616",
        "-98765432109876543210.5e-3",
        "1.0",
        r#""\u00e9""#,
        r#""x""#,
        "null",
    ] {
        for request in [
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"heartbeat"}}"#),
            format!(
                r#"[{{"jsonrpc":"2.0","id":{id},"method":"subscribe","params":{{"channel":"c"}}}}]"#
            ),
        ] {
            send_text(&mut ws, &request).await;
            let text = next_text(&mut ws).await;
            assert!(
                text.contains(&format!(r#""id":{id}"#)),
                "{request} -> {text}"
            );
        }
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        let reply = http("POST", &hub.push_url("/"), None, Some(&body)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        let text = String::from_utf8(reply.body).unwrap();
        assert!(text.contains(&format!(r#""id":{id}"#)), "{body} -> {text}");
        assert_eq!(reply.json["result"], json!({"ping": "ok"}));
    }
}

#[actix_web::test]
async fn subscription_bytes_and_the_hub_channel_count_are_limited() {
    let hub = start(&demo_config(
        "max_subscription_bytes = 512\nmax_channels = 3",
    ));
    let mut a = connect(&hub.ws_url("/rpc")).await;
    let (x, y) = ("x".repeat(256), "y".repeat(256));
    for (id, name) in [(1, x.as_str()), (2, y.as_str())] {
        let reply = call(&mut a, request(id, "subscribe", json!({"channel": name}))).await;
        assert_eq!(reply["result"], "subscribed");
    }
    let reply = call(&mut a, request(3, "subscribe", json!({"channel": "z"}))).await;
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    assert_eq!(
        reply["error"]["message"],
        "subscription limit reached: the channel names and topic prefixes of a connection may total 512 bytes"
    );

    let mut b = connect(&hub.ws_url("/rpc")).await;
    let reply = call(&mut b, request(1, "subscribe", json!({"channel": "z"}))).await;
    assert_eq!(reply["result"], "subscribed");
    let reply = call(&mut b, request(2, "subscribe", json!({"channel": "w"}))).await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert_eq!(
        reply["error"]["message"],
        "subscription limit reached: the server holds its maximum of 3 distinct channels and topic prefixes"
    );
    let reply = call(&mut b, request(3, "subscribe", json!({"channel": x}))).await;
    assert_eq!(
        reply["result"], "subscribed",
        "existing channels can be joined"
    );
}
