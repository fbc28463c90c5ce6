//! Heartbeat, stalled clients, graceful shutdown.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[actix_web::test]
async fn heartbeat_closes_a_silent_client_and_keeps_a_live_one() {
    let hub = start(&demo_config(
        "heartbeat_interval_ms = 50\nheartbeat_timeout_ms = 400",
    ));
    let mut silent = raw_silent_client(hub.ws, "/ws").await;
    let silent_id = wait_for_connections(&hub, 1).await.remove(0);
    let mut live = connect(&hub.ws_url("/ws")).await;
    let both = wait_for_connections(&hub, 2).await;
    let live_id = both.into_iter().find(|id| *id != silent_id).unwrap();

    // The live client keeps reading, so tungstenite answers the server's pings.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout_at(until.into(), live.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 3, "the server pings every interval (got {pings})");
    hub.wait_for_log("heartbeat timeout").await;

    // The silent client reads only now: pings, then the server's close frame, then EOF.
    let received = read_to_end(&mut silent).await;
    let close = close_frame_bytes(1001, "heartbeat timeout");
    assert!(received.ends_with(&close), "received {received:?}");
    assert!(
        received.starts_with(&[0x89, 0]),
        "a ping came first: {received:?}"
    );
    let left = wait_for_connections(&hub, 1).await;
    assert_eq!(
        left,
        vec![live_id],
        "the silent one is gone, the live one stays"
    );
    live.send(Message::Text("still alive".into()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut live).await,
        Message::Text("still alive".into())
    );
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    let hub = start(&demo_config(
        "outbound_queue = 16\nmax_message_size = 1048576",
    ));
    let subscribe =
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "flood"}});

    // The stalled client: a small receive buffer, and it never reads after subscribing.
    let mut stalled = small_buffer_client(&hub, "/rpc").await;
    call(&mut stalled, subscribe.clone()).await;

    let mut neighbour = connect(&hub.ws_url("/rpc")).await;
    call(&mut neighbour, subscribe).await;
    // The neighbour reads everything; the publisher waits for it after each publish, so on a
    // loaded machine only the stalled client can fall behind.
    let received = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let counter = received.clone();
    let reader = actix_web::rt::spawn(async move {
        while let Some(Ok(msg)) = neighbour.next().await {
            if let Message::Text(text) = msg {
                assert!(text.contains("\"__type\":\"message\""));
                counter.set(counter.get() + 1);
            }
        }
        counter.get()
    });
    let caught_up = |expected: usize| {
        let received = received.clone();
        async move {
            let start = std::time::Instant::now();
            while received.get() < expected {
                assert!(start.elapsed() < WAIT, "the neighbour stopped receiving");
                actix_web::rt::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    let payload = "x".repeat(64 * 1024);
    let rss_start = hub.rss_kib();
    let mut reached_total = 0;
    let mut cut_at = None;
    for i in 0..4000 {
        let reply = post(
            &hub,
            "/api/publish",
            &json!({"channel": "flood", "data": {"p": payload}}),
        )
        .await;
        assert_eq!(reply.status, 200);
        if reply.json["dropped"] == 1 {
            cut_at = Some(i);
            assert_eq!(reply.json["reached"], 1, "the neighbour still got it");
            reached_total += 1;
            break;
        }
        assert_eq!(reply.json["reached"], 2);
        reached_total += 1;
        caught_up(reached_total).await;
    }
    let cut_at = cut_at.expect("the stalled client was never cut off");
    let rss_at_cut = hub.rss_kib();
    // After the cut: only the neighbour is reached, and the hub's memory does not follow the
    // volume published (500 x 64 KiB = 32 MiB more).
    for _ in 0..500 {
        let reply = post(
            &hub,
            "/api/publish",
            &json!({"channel": "flood", "data": {"p": payload}}),
        )
        .await;
        assert_eq!(
            (reply.json["reached"].clone(), reply.json["dropped"].clone()),
            (json!(1), json!(0))
        );
        reached_total += 1;
        caught_up(reached_total).await;
    }
    let rss_end = hub.rss_kib();
    assert!(
        rss_end < rss_at_cut + 16 * 1024,
        "RSS grew from {rss_at_cut} KiB to {rss_end} KiB after the cut (start {rss_start} KiB, cut after {cut_at} publishes)"
    );
    let stats = get(&hub, "/healthz").await.json;
    assert_eq!(stats["stalled_connections_closed"], 1);
    assert_eq!(stats["connections"], 1);
    hub.wait_for_log("outbound queue full").await;

    // The hub does not keep the stalled socket open: the session ends (1008) once its close
    // frame could not be written within a second, and the socket is gone. Reading now gets
    // what the kernel still held, then the end of the stream.
    hub.wait_for_log("code=1008").await;
    tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = stalled.next().await {
            if let Message::Close(_) = msg {
                break;
            }
        }
    })
    .await
    .expect("the stalled socket was left open");

    // The neighbour received every message the hub said it reached.
    let mut rx_hub = hub;
    assert!(rx_hub.terminate().success());
    let received = reader.await.unwrap();
    assert_eq!(received, reached_total);
}

#[actix_web::test]
async fn shutdown_closes_every_socket_with_1001_and_exits_0() {
    let mut hub = start(&demo_config(""));
    let mut clients = Vec::new();
    for path in ["/ws", "/ws", "/rpc"] {
        clients.push(connect(&hub.ws_url(path)).await);
    }
    wait_for_connections(&hub, 3).await;
    let status = hub.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", hub.log());
    for ws in &mut clients {
        assert_eq!(
            expect_close(ws).await,
            (1001, "server shutting down".to_owned())
        );
    }
    let log = hub.log();
    assert!(log.contains("all connections closed"), "{log}");
    assert_eq!(log.matches("code=1001").count(), 3, "{log}");
}
