//! Hostile and careless clients: frame headers that announce too much, readers that stall,
//! floods, closes, bad handshakes, the connection cap, a paused process. Each scenario checks
//! what the attacker and its neighbours see on the wire.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// A masked client frame header (zero mask key, so the payload is sent as it is).
fn frame_header(first: u8, len: u64) -> Vec<u8> {
    let mut out = vec![first];
    match len {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// Read from a raw stream until a close frame arrives; its code.
async fn read_close_code(stream: &mut TcpStream) -> u16 {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            // Skip whole frames (pings) until a close frame (0x88).
            while received.len() >= 2 {
                let len = usize::from(received[1] & 0x7f);
                if received[0] == 0x88 && received.len() >= 4 {
                    return u16::from_be_bytes([received[2], received[3]]);
                }
                if received.len() < 2 + len {
                    break;
                }
                received.drain(..2 + len);
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the stream ended without a close frame");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no close frame")
}

#[actix_web::test]
async fn a_frame_header_that_announces_too_much_is_refused_before_its_payload() {
    let hub = start(&demo_config(
        "max_message_size = 65536\nheartbeat_interval_ms = 10000\nheartbeat_timeout_ms = 30000",
    ));
    let mut neighbour = connect(&hub.ws_url("/ws")).await;
    let rss_before = hub.rss_kib();

    // max + 1 announced, then silence: refused at once, not at the heartbeat timeout.
    let mut silent = raw_silent_client(hub.ws, "/ws").await;
    silent.write_all(&frame_header(0x82, 65_537)).await.unwrap();
    let started = Instant::now();
    assert_eq!(read_close_code(&mut silent).await, 1009);
    assert!(started.elapsed() < Duration::from_secs(5));

    // 2^62 announced, then 32 MiB of payload streamed: refused from the header; the hub
    // reads nothing of it into memory.
    let mut streaming = raw_silent_client(hub.ws, "/rpc").await;
    streaming
        .write_all(&frame_header(0x82, 1 << 62))
        .await
        .unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..32 {
        if streaming.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, streaming.read_to_end(&mut rest)).await;
    assert!(
        rest.windows(2).any(|w| w == [0x88, 0x11]),
        "a 1009 close frame: {:?}",
        &rest[..rest.len().min(64)]
    );
    let grown = hub.rss_kib().saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");

    neighbour.send(Message::Text("fine".into())).await.unwrap();
    assert_eq!(
        next_data(&mut neighbour).await,
        Message::Text("fine".into())
    );
    assert!(hub.log().matches("code=1009").count() >= 2, "{}", hub.log());
}

#[actix_web::test]
async fn readers_keep_every_message_while_stalled_neighbours_are_cut_off_and_closed() {
    let hub = start(&demo_config(
        "heartbeat_interval_ms = 500\nheartbeat_timeout_ms = 2000\noutbound_queue_bytes = 1048576",
    ));
    let subscribe =
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "news"}});
    // Stalled subscribers: small receive buffers, never read after subscribing.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut ws = small_buffer_client(&hub, "/rpc").await;
        call(&mut ws, subscribe.clone()).await;
        stalled.push(ws);
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut ws = connect(&hub.ws_url("/rpc")).await;
        call(&mut ws, subscribe.clone()).await;
        readers.push(actix_web::rt::spawn(async move {
            let mut count = 0usize;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(text) = msg {
                    if text.contains("\"__type\":\"message\"") {
                        count += 1;
                    }
                }
            }
            count
        }));
    }
    let rss_start = hub.rss_kib();
    let payload = "x".repeat(100_000);
    let mut dropped = 0;
    let publishes = 200;
    for _ in 0..publishes {
        let reply = post(
            &hub,
            "/api/publish",
            &json!({"channel": "news", "data": {"p": payload}}),
        )
        .await;
        assert_eq!(reply.status, 200);
        dropped += reply.json["dropped"].as_u64().unwrap();
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        dropped, 40,
        "each stalled subscriber is dropped once, no reader is"
    );
    let stats = get(&hub, "/healthz").await.json;
    assert_eq!(stats["connections"], 4);
    assert_eq!(stats["stalled_connections_closed"], 40);
    // 40 stalled clients x 1 MiB budget at most, shared publication bytes: well under the
    // 200 x 100 KB x 40 = 800 MB that copies per recipient would cost.
    let grown = hub.rss_kib().saturating_sub(rss_start);
    assert!(grown < 96 * 1024, "RSS grew by {grown} KiB");

    // The stalled sockets are closed by the hub, whatever the clients do (they never read).
    let deadline = Instant::now() + WAIT;
    while hub.log().matches("code=1008").count() < 40 {
        assert!(Instant::now() < deadline, "{}", hub.log());
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    for mut ws in stalled {
        let ended =
            tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
        assert!(ended.is_ok(), "a stalled socket was left open");
    }
    let mut hub = hub;
    assert!(hub.terminate().success());
    for reader in readers {
        assert_eq!(reader.await.unwrap(), publishes);
    }
}

#[actix_web::test]
async fn tcp_closes_as_soon_as_the_close_handshake_is_done() {
    let hub = start(&demo_config(""));
    // Client-initiated: the server's answer, then its FIN at once (not after a second).
    for _ in 0..5 {
        let mut raw = raw_silent_client(hub.ws, "/ws").await;
        let mut close = frame_header(0x88, 2);
        close.extend_from_slice(&1000u16.to_be_bytes());
        let started = Instant::now();
        raw.write_all(&close).await.unwrap();
        let received = read_to_end(&mut raw).await;
        let took = started.elapsed();
        assert!(received.ends_with(&[0x88, 2, 0x03, 0xe8]), "{received:?}");
        assert!(took < Duration::from_millis(500), "FIN after {took:?}");
    }
    // Server-initiated (push API close), the client answering at once.
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let id = wait_for_connections(&hub, 1).await.remove(0);
    let started = Instant::now();
    let reply = post(&hub, &format!("/api/connections/{id}/close"), &json!({})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(expect_close(&mut ws).await.0, 1000);
    let end = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // An HTTP error answered with `Connection: close` ends the connection at once.
    let mut stream = TcpStream::connect(hub.ws).await.unwrap();
    stream
        .write_all(
            b"POST /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let reply = parse_reply(&read_to_end(&mut stream).await);
    assert_eq!(reply.status, 405);
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// A raw handshake request with these extra header lines; the status it gets.
async fn handshake_status(addr: std::net::SocketAddr, version: &str, headers: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws {version}\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[actix_web::test]
async fn handshakes_and_frames_are_checked_strictly() {
    let hub = start(&demo_config(""));
    let good = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    assert_eq!(handshake_status(hub.ws, "HTTP/1.1", good).await, 101);
    for key in ["", "YQ==", "!!!not-base64!!!"] {
        let header = format!("Sec-WebSocket-Key: {key}\r\n");
        assert_eq!(
            handshake_status(hub.ws, "HTTP/1.1", &header).await,
            400,
            "{key:?}"
        );
    }
    let twice = format!("{good}{good}");
    assert_eq!(handshake_status(hub.ws, "HTTP/1.1", &twice).await, 400);
    assert_eq!(handshake_status(hub.ws, "HTTP/1.0", good).await, 400);

    // A frame with RSV1 set gets close 1002, not a bare drop.
    let mut raw = raw_silent_client(hub.ws, "/ws").await;
    let mut frame = frame_header(0xc1, 1);
    frame.push(b'x');
    raw.write_all(&frame).await.unwrap();
    assert_eq!(read_close_code(&mut raw).await, 1002);
}

#[actix_web::test]
async fn a_flooding_publisher_is_stopped_and_its_readers_keep_everything() {
    let hub = start(&demo_config("max_messages_per_second = 500"));
    let subscribe =
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "c"}});
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut ws = connect(&hub.ws_url("/rpc")).await;
        call(&mut ws, subscribe.clone()).await;
        readers.push(actix_web::rt::spawn(async move {
            let mut count = 0usize;
            while let Some(Ok(msg)) = ws.next().await {
                if matches!(&msg, Message::Text(t) if t.contains("\"__type\":\"message\"")) {
                    count += 1;
                }
            }
            count
        }));
    }
    let mut flooder = connect(&hub.ws_url("/rpc")).await;
    call(&mut flooder, subscribe).await;
    // Batches of 100 send_data; past 500 per second the flooder is closed with 1008.
    let batch: Vec<_> = (0..100)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "send_data", "params": {"channel": "c", "data": {"n": i}}}))
        .collect();
    let text = serde_json::Value::Array(batch).to_string();
    let mut answered = 0;
    let code = loop {
        if flooder.send(Message::Text(text.clone())).await.is_err() {
            break expect_close(&mut flooder).await.0;
        }
        match tokio::time::timeout(WAIT, flooder.next()).await.unwrap() {
            Some(Ok(Message::Text(reply))) if reply.starts_with('[') => {
                assert!(!reply.contains("\"error\""), "{reply}");
                answered += 1
            }
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 1008);
    assert!((4..=6).contains(&answered), "{answered} batches answered");
    let stats = get(&hub, "/healthz").await.json;
    assert_eq!(
        stats["stalled_connections_closed"], 0,
        "no reader was cut off"
    );
    let mut hub = hub;
    assert!(hub.terminate().success());
    for reader in readers {
        assert_eq!(reader.await.unwrap(), answered * 100);
    }
}

#[actix_web::test]
async fn upgrades_beyond_the_connection_cap_get_503_and_the_push_api_still_answers() {
    let hub = start(
        "[server]\nmax_connections = 3\n[backend]\nkind = \"loopback\"\n\
         [[routes]]\npath = \"/ws\"\ndialect = \"raw\"\n",
    );
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&hub.ws_url("/ws")).await);
    }
    wait_for_connections(&hub, 3).await;
    let good = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    assert_eq!(handshake_status(hub.ws, "HTTP/1.1", good).await, 503);
    assert_eq!(get(&hub, "/healthz").await.status, 200);
    drop(open.pop());
    wait_for_connections(&hub, 2).await;
    assert_eq!(handshake_status(hub.ws, "HTTP/1.1", good).await, 101);
}

#[actix_web::test]
async fn a_paused_process_does_not_blame_its_clients() {
    let hub = start(&demo_config(
        "heartbeat_interval_ms = 100\nheartbeat_timeout_ms = 500",
    ));
    // Clients that answer pings (tungstenite answers while it reads).
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut ws = connect(&hub.ws_url("/ws")).await;
        clients.push(actix_web::rt::spawn(async move {
            let mut closed = None;
            let until = Instant::now() + Duration::from_secs(4);
            while let Ok(Some(msg)) = tokio::time::timeout_at(until.into(), ws.next()).await {
                if let Ok(Message::Close(frame)) = msg {
                    closed = Some(frame);
                    break;
                }
            }
            closed
        }));
    }
    wait_for_connections(&hub, 5).await;
    let pid = hub.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    // Two timeouts after the pause, every client is still there.
    actix_web::rt::time::sleep(Duration::from_millis(1000)).await;
    wait_for_connections(&hub, 5).await;
    assert!(!hub.log().contains("heartbeat timeout"), "{}", hub.log());
    for client in clients {
        assert_eq!(client.await.unwrap(), None, "a live client was closed");
    }
}

#[actix_web::test]
async fn memory_is_given_back_after_big_messages_and_a_load_that_left() {
    let hub = start(&demo_config(""));
    let baseline = hub.rss_kib();
    // 40 clients each send a 1 MB batch of invalid requests (once answered with 56x its size)
    // and echo a 1 MB binary message, then stay connected without sending anything more.
    let batch = format!("[{}0]", "0,".repeat(499_999));
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut rpc = connect(&hub.ws_url("/rpc")).await;
        rpc.send(Message::Text(batch.clone())).await.unwrap();
        let reply = next_data(&mut rpc).await;
        let Message::Text(reply) = reply else {
            panic!("{reply:?}")
        };
        assert!(
            reply.len() < 1024,
            "a bounded reply, not {} bytes",
            reply.len()
        );
        let mut echo = connect(&hub.ws_url("/ws")).await;
        echo.send(Message::Binary(vec![7; 1_000_000]))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut echo).await,
            Message::Binary(vec![7; 1_000_000])
        );
        clients.push((rpc, echo));
    }
    // Idle connections do not keep their largest message's buffers.
    let held = hub.rss_kib().saturating_sub(baseline);
    assert!(held < 24 * 1024, "80 idle connections hold {held} KiB");
    drop(clients);
    wait_for_connections(&hub, 0).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = hub.rss_kib().saturating_sub(baseline);
        if left < 16 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS still {left} KiB above its start after the load left"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn a_connection_that_closes_at_once_is_still_registered_and_counted() {
    let hub = start(&demo_config(""));
    for _ in 0..20 {
        // The close frame follows the handshake at once, before the session could have
        // heard back from the hub.
        let mut raw = raw_silent_client(hub.ws, "/ws").await;
        let mut close = frame_header(0x88, 2);
        close.extend_from_slice(&1000u16.to_be_bytes());
        raw.write_all(&close).await.unwrap();
        read_to_end(&mut raw).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = get(&hub, "/healthz").await.json;
        if stats["connections_closed"] == 20 {
            assert_eq!(stats["connections_opened"], 20);
            assert_eq!(stats["connections"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_cut_off_client_that_reads_again_at_once_is_told_1008() {
    let hub = start(&demo_config("outbound_queue_bytes = 65536"));
    let mut stalled = small_buffer_client(&hub, "/rpc").await;
    let subscribe =
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "c"}});
    call(&mut stalled, subscribe).await;
    publish_until_dropped(&hub, "c").await;
    // What was queued and not yet in the kernel is dropped, so the close frame gets through.
    assert_eq!(expect_close(&mut stalled).await.0, 1008);
}
