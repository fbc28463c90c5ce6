//! The groups (AWX) and topics (fedmsg) dialects through real sockets, beside raw and JSON-RPC
//! routes on one hub sharing one channel space.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// Every dialect on one hub (the cluster tests run it on each node).
pub(crate) const FOUR_ROUTES: &str = r#"
[server]
page = false

[[routes]]
path = "/ws"
dialect = "raw"

[[routes]]
path = "/rpc"
dialect = "jsonrpc"

[[routes]]
path = "/websocket/"
dialect = "groups"

[[routes]]
path = "/topics"
dialect = "topics"

[[routes]]
path = "/topics-strict"
dialect = "topics"
strict = true
client_publish = true
"#;

async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string())).await.unwrap();
}

/// Subscribe a topics client and wait until the hub has applied it (fedmsg sends no ack).
async fn topic_subscribe(hub: &HubProcess, ws: &mut Ws, topic: &str) {
    send_json(ws, json!({"topic": "__topic_subscribe__", "body": topic})).await;
    let start = std::time::Instant::now();
    let stripped = topic.replace('*', "");
    loop {
        let list = get(hub, "/api/connections").await.json;
        let listed = list["connections"].as_array().unwrap().iter().any(|c| {
            c["prefixes"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == &json!(stripped)))
                || c["channels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == &json!(stripped))
        });
        if listed {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "subscription to {topic} never applied"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn groups_replace_the_whole_set() {
    let hub = start(FOUR_ROUTES);
    let mut ws = connect(&hub.ws_url("/websocket/")).await;
    let reply = call(
        &mut ws,
        json!({"groups": {"jobs": ["status_changed", "summary"], "job_events": [42]}}),
    )
    .await;
    assert_eq!(
        reply,
        json!({
            "groups_current": ["job_events-42", "jobs-status_changed", "jobs-summary"],
            "groups_left": [],
            "groups_joined": ["job_events-42", "jobs-status_changed", "jobs-summary"]
        })
    );
    let reply = call(
        &mut ws,
        json!({"groups": {"jobs": ["summary"], "schedules": ["changed"]}}),
    )
    .await;
    assert_eq!(
        reply["groups_left"],
        json!(["job_events-42", "jobs-status_changed"])
    );
    assert_eq!(reply["groups_joined"], json!(["schedules-changed"]));
    assert_eq!(
        reply["groups_current"],
        json!(["jobs-summary", "schedules-changed"])
    );

    let reply = call(&mut ws, json!({"groups": {"jobs": "status_changed"}})).await;
    assert_eq!(reply, json!({"error": "access denied to channel"}));

    let published = post(
        &hub,
        "/api/publish",
        &json!({"channel": "jobs-summary", "data": {"id": 7, "status": "ok"}}),
    )
    .await;
    assert_eq!(published.json["reached"], 1);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"id": 7, "status": "ok"}),
        "the payload as it is"
    );

    let reply = call(&mut ws, json!({"groups": {}})).await;
    assert_eq!(reply["groups_current"], json!([]));
    let published = post(
        &hub,
        "/api/publish",
        &json!({"channel": "jobs-summary", "data": 1}),
    )
    .await;
    assert_eq!(published.json["reached"], 0);
}

#[actix_web::test]
async fn xrftoken_must_match_the_handshake_cookie() {
    let config = r#"
[server]
page = false
[[routes]]
path = "/websocket/"
dialect = "groups"
xrf_cookie = "csrftoken"
"#;
    let hub = start(config);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = hub.ws_url("/websocket/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Cookie", "sessionid=x; csrftoken=abc123".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let denied = call(
        &mut ws,
        json!({"groups": {"jobs": ["summary"]}, "xrftoken": "wrong"}),
    )
    .await;
    assert_eq!(denied, json!({"error": "access denied to channel"}));
    let ok = call(
        &mut ws,
        json!({"groups": {"jobs": ["summary"]}, "xrftoken": "abc123"}),
    )
    .await;
    assert_eq!(ok["groups_current"], json!(["jobs-summary"]));
    let mut no_cookie = connect(&hub.ws_url("/websocket/")).await;
    let denied = call(&mut no_cookie, json!({"groups": {}, "xrftoken": ""})).await;
    assert_eq!(denied, json!({"error": "access denied to channel"}));
}

#[actix_web::test]
async fn topics_match_prefixes_once_and_strict_exactly() {
    let hub = start(FOUR_ROUTES);
    let mut overlapping = connect(&hub.ws_url("/topics")).await;
    topic_subscribe(&hub, &mut overlapping, "org.fedoraproject.*").await;
    topic_subscribe(&hub, &mut overlapping, "org.fedoraproject.prod.*").await;
    topic_subscribe(&hub, &mut overlapping, "org.fedoraproject.prod.git.receive").await;
    let mut strict = connect(&hub.ws_url("/topics-strict")).await;
    topic_subscribe(&hub, &mut strict, "org.fedoraproject.prod.git.receive").await;
    let mut other = connect(&hub.ws_url("/topics")).await;
    topic_subscribe(&hub, &mut other, "org.debian.*").await;

    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "org.fedoraproject.prod.git.receive", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(
        reply.json["reached"], 2,
        "one delivery per connection however many prefixes match"
    );
    let expected = json!({"topic": "org.fedoraproject.prod.git.receive", "body": {"n": 1}});
    assert_eq!(next_json(&mut overlapping).await, expected);
    assert_eq!(next_json(&mut strict).await, expected);

    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "org.fedoraproject.prod.git.lookaside", "data": 2}),
    )
    .await;
    assert_eq!(
        reply.json["reached"], 1,
        "strict does not match another topic under the prefix"
    );
    assert_eq!(next_json(&mut overlapping).await["body"], 2);

    // Client publishing (enabled on /topics-strict) reaches prefix subscribers too.
    send_json(
        &mut strict,
        json!({"topic": "org.debian.dev.upload", "body": "pkg"}),
    )
    .await;
    assert_eq!(
        next_json(&mut other).await,
        json!({"topic": "org.debian.dev.upload", "body": "pkg"})
    );
    // Publishing is off on /topics: the frame is ignored, nothing is delivered. The
    // subscription that follows it on the same connection is applied after it, so once that
    // subscription is in effect a delivered publish would already have reached `overlapping`.
    send_json(
        &mut other,
        json!({"topic": "org.fedoraproject.x", "body": "no"}),
    )
    .await;
    topic_subscribe(&hub, &mut other, "zz.*").await;
    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "org.fedoraproject.y", "data": 3}),
    )
    .await;
    assert_eq!(reply.json["reached"], 1);
    assert_eq!(
        next_json(&mut overlapping).await["topic"],
        "org.fedoraproject.y"
    );
}

#[actix_web::test]
async fn one_publish_reaches_every_dialect_in_its_own_format() {
    let hub = start(FOUR_ROUTES);
    let mut rpc = connect(&hub.ws_url("/rpc")).await;
    call(&mut rpc, json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "jobs-summary"}})).await;
    let mut groups = connect(&hub.ws_url("/websocket/")).await;
    call(&mut groups, json!({"groups": {"jobs": ["summary"]}})).await;
    let mut topics = connect(&hub.ws_url("/topics")).await;
    topic_subscribe(&hub, &mut topics, "jobs-*").await;
    let mut raw = connect(&hub.ws_url("/ws")).await;

    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "jobs-summary", "data": {"status": "done"}}),
    )
    .await;
    assert_eq!(reply.json["reached"], 3);
    let delivered = next_json(&mut rpc).await;
    assert_eq!(
        (delivered["status"].clone(), delivered["__type"].clone()),
        (json!("done"), json!("message"))
    );
    assert_eq!(next_json(&mut groups).await, json!({"status": "done"}));
    assert_eq!(
        next_json(&mut topics).await,
        json!({"topic": "jobs-summary", "body": {"status": "done"}})
    );

    let reply = post(
        &hub,
        "/api/broadcast",
        &json!({"data": {"maintenance": true}}),
    )
    .await;
    assert_eq!(
        reply.json["reached"], 4,
        "a broadcast reaches every route, raw included"
    );
    assert_eq!(next_json(&mut raw).await, json!({"maintenance": true}));
    assert_eq!(next_json(&mut rpc).await["__type"], "broadcast");
    assert_eq!(next_json(&mut groups).await, json!({"maintenance": true}));
    assert_eq!(
        next_json(&mut topics).await["body"],
        json!({"maintenance": true})
    );
}

#[actix_web::test]
async fn the_authorization_hook_allows_denies_and_partially_applies() {
    let backend = crate::mock_backend::MockBackend::start();
    let config = format!(
        "{FOUR_ROUTES}\n[authorization]\nurl = \"{}\"\ncache_ms = 60000\n",
        backend.url("/auth")
    );
    let hub = start(&config);

    // AWX: the refused resource gets its own error frame; the rest of the request applies.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = hub.ws_url("/websocket/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Cookie", "sessionid=s1".parse().unwrap());
    let (mut groups, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send_json(
        &mut groups,
        json!({"groups": {"jobs": ["summary"], "job_events": ["secret-1", 7]}}),
    )
    .await;
    assert_eq!(
        next_json(&mut groups).await,
        json!({"error": "access denied to channel job_events for resource id secret-1"})
    );
    let reply = next_json(&mut groups).await;
    assert_eq!(
        reply["groups_current"],
        json!(["job_events-7", "jobs-summary"])
    );
    let asked = backend
        .received()
        .into_iter()
        .find(|r| r.path == "/auth")
        .unwrap()
        .json();
    assert_eq!(
        asked["headers"]["cookie"], "sessionid=s1",
        "the hook sees connect-time headers"
    );
    assert_eq!(asked["connection_id"].as_str().unwrap().len(), 32);

    // JSON-RPC: a denial is a -32000 error; allowed answers are cached.
    let mut rpc = connect(&hub.ws_url("/rpc")).await;
    let subscribe = |id: i64, channel: &str| json!({"jsonrpc": "2.0", "id": id, "method": "subscribe", "params": {"channel": channel}});
    let denied = call(&mut rpc, subscribe(1, "secret-room")).await;
    assert_eq!(denied["error"]["code"], -32000);
    assert_eq!(
        denied["error"]["message"],
        "access denied to channel `secret-room`"
    );
    assert_eq!(
        call(&mut rpc, subscribe(2, "open")).await["result"],
        "subscribed"
    );
    assert_eq!(
        call(&mut rpc, subscribe(3, "open")).await["result"],
        "subscribed"
    );
    let asked_open = backend
        .received()
        .iter()
        .filter(|r| r.path == "/auth" && r.json()["channels"].to_string().contains("\"open\""))
        .count();
    assert_eq!(asked_open, 1, "the second subscribe used the cached answer");
    // Order is kept behind a pending question: subscribe then send_data in one burst.
    send_json(&mut rpc, subscribe(4, "fresh")).await;
    send_json(&mut rpc, json!({"jsonrpc": "2.0", "id": 5, "method": "send_data", "params": {"channel": "fresh", "data": {}}})).await;
    assert_eq!(next_json(&mut rpc).await["result"], "subscribed");
    assert_eq!(next_json(&mut rpc).await["result"], "emitted: 0");

    // topics: a refused prefix is ignored silently, like any fedmsg subscription.
    let mut topics = connect(&hub.ws_url("/topics")).await;
    send_json(
        &mut topics,
        json!({"topic": "__topic_subscribe__", "body": "secret.*"}),
    )
    .await;
    topic_subscribe(&hub, &mut topics, "public.*").await;
    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "secret.x", "data": 1}),
    )
    .await;
    assert_eq!(reply.json["reached"], 0);
}

#[actix_web::test]
async fn the_connect_hook_admits_refuses_and_gives_the_first_frame() {
    let backend = crate::mock_backend::MockBackend::start();
    let config = format!(
        "[server]\npage = false\n[[routes]]\npath = \"/websocket/\"\ndialect = \"groups\"\naccept_url = \"{}\"\n",
        backend.url("/accept")
    );
    let hub = start(&config);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let with_cookie = |cookie: &str| {
        let mut request = hub.ws_url("/websocket/").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Cookie", cookie.parse().unwrap());
        request
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(with_cookie("sessionid=good"))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws).await,
        json!({"accept": true, "user": 42})
    );
    let reply = call(&mut ws, json!({"groups": {"jobs": ["summary"]}})).await;
    assert_eq!(reply["groups_current"], json!(["jobs-summary"]));
    let asked = backend
        .received()
        .into_iter()
        .find(|r| r.path == "/accept")
        .unwrap()
        .json();
    assert_eq!(asked["path"], "/websocket/");
    match tokio_tungstenite::connect_async(with_cookie("sessionid=bad")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[actix_web::test]
async fn groups_refuse_items_that_are_not_strings_or_numbers() {
    let hub = start(FOUR_ROUTES);
    let mut ws = connect(&hub.ws_url("/websocket/")).await;
    for item in [json!({"a": [1, 2]}), json!([1]), Value::Null, json!(true)] {
        send_json(&mut ws, json!({"groups": {"g": ["fine", item]}})).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"error": "access denied to channel"}),
            "item {item}"
        );
    }
    assert_eq!(get(&hub, "/api/channels").await.json["channels"], json!([]));
    send_json(
        &mut ws,
        json!({"groups": {"jobs": ["status_changed"], "job_events": [42]}}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await["groups_current"],
        json!(["job_events-42", "jobs-status_changed"])
    );
}

#[actix_web::test]
async fn subscription_limits_are_error_frames_in_groups_and_topics() {
    let config =
        format!("{FOUR_ROUTES}\n[limits]\nmax_subscription_bytes = 512\nmax_channels = 4\n");
    let hub = start(&config);
    let mut groups = connect(&hub.ws_url("/websocket/")).await;
    let (x, y) = ("x".repeat(254), "y".repeat(254));
    send_json(&mut groups, json!({"groups": {"g": [x, y, "z"]}})).await;
    assert_eq!(
        next_json(&mut groups).await,
        json!({"error": "too many groups: the channel names and topic prefixes of a connection may total 512 bytes"})
    );
    send_json(&mut groups, json!({"groups": {"g": [x, y]}})).await;
    assert_eq!(
        next_json(&mut groups).await["groups_joined"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let mut topics = connect(&hub.ws_url("/topics")).await;
    topic_subscribe(&hub, &mut topics, &"p".repeat(256)).await;
    topic_subscribe(&hub, &mut topics, &"q".repeat(256)).await;
    send_json(
        &mut topics,
        json!({"topic": "__topic_subscribe__", "body": "r.*"}),
    )
    .await;
    assert_eq!(
        next_json(&mut topics).await,
        json!({"topic": "__topic_subscribe__", "body": {"error": "subscription limit reached: the channel names and topic prefixes of a connection may total 512 bytes"}})
    );

    // Four distinct channels and prefixes are held now: nothing new fits in the hub.
    let full = "the server holds its maximum of 4 distinct channels and topic prefixes";
    let mut other = connect(&hub.ws_url("/topics")).await;
    send_json(
        &mut other,
        json!({"topic": "__topic_subscribe__", "body": "s.*"}),
    )
    .await;
    assert_eq!(
        next_json(&mut other).await["body"]["error"],
        format!("subscription limit reached: {full}")
    );
    let mut late = connect(&hub.ws_url("/websocket/")).await;
    send_json(&mut late, json!({"groups": {"new": [1]}})).await;
    assert_eq!(
        next_json(&mut late).await,
        json!({"error": format!("too many groups: {full}")})
    );
}
