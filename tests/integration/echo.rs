//! The demo echo route and the sample page.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[actix_web::test]
async fn echo_keeps_order_and_frame_kinds() {
    let hub = start(&demo_config("max_message_size = 1048576"));
    let mut ws = connect(&hub.ws_url("/ws")).await;
    let large: Vec<u8> = (0..900_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = Vec::new();
    for i in 0..200 {
        let msg = match i % 3 {
            0 => Message::Text(format!("text {i} ünïcödé")),
            1 => Message::Binary(vec![i as u8, 0, 255, 128]),
            _ => Message::Text(String::new()),
        };
        sent.push(msg.clone());
        ws.send(msg).await.unwrap();
    }
    ws.send(Message::Binary(large.clone())).await.unwrap();
    sent.push(Message::Binary(large));
    for expected in sent {
        assert_eq!(next_data(&mut ws).await, expected);
    }
}

#[actix_web::test]
async fn fragmented_messages_are_joined() {
    let hub = start(&demo_config("max_message_size = 65536"));
    let mut ws = connect(&hub.ws_url("/ws")).await;
    // "héllo wörld" split inside the two-byte 'é' to check UTF-8 across fragments.
    let text = "héllo wörld".as_bytes();
    let parts = [&text[..2], &text[2..7], &text[7..]];
    ws.send(Message::Frame(Frame::message(
        parts[0].to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping(b"in-between".to_vec()))
        .await
        .unwrap();
    ws.send(Message::Frame(Frame::message(
        parts[1].to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        parts[2].to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::Text("héllo wörld".into())
    );
    ws.send(Message::Frame(Frame::message(
        vec![1, 2],
        OpCode::Data(Data::Binary),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        vec![3],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Binary(vec![1, 2, 3]));
}

#[actix_web::test]
async fn oversized_and_invalid_utf8_messages_close_only_their_connection() {
    let hub = start(&demo_config("max_message_size = 65536"));
    let mut neighbour = connect(&hub.ws_url("/ws")).await;

    let mut big = connect(&hub.ws_url("/ws")).await;
    big.send(Message::Binary(vec![0; 65_537])).await.unwrap();
    assert_eq!(expect_close(&mut big).await.0, 1009);

    let mut big_fragments = connect(&hub.ws_url("/ws")).await;
    for fin in [false, true] {
        let frame = Frame::message(
            vec![b'a'; 40_000],
            OpCode::Data(if fin { Data::Continue } else { Data::Text }),
            fin,
        );
        let _ = big_fragments.send(Message::Frame(frame)).await;
    }
    assert_eq!(expect_close(&mut big_fragments).await.0, 1009);

    let mut bad_text = connect(&hub.ws_url("/ws")).await;
    bad_text
        .send(Message::Frame(Frame::message(
            vec![b'o', b'k', 0xff, 0xfe],
            OpCode::Data(Data::Text),
            true,
        )))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut bad_text).await.0, 1007);

    let mut bad_fragment = connect(&hub.ws_url("/ws")).await;
    bad_fragment
        .send(Message::Frame(Frame::message(
            b"fine".to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .unwrap();
    bad_fragment
        .send(Message::Frame(Frame::message(
            vec![0xc3, 0x28],
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut bad_fragment).await.0, 1007);

    neighbour
        .send(Message::Text("still here".into()))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut neighbour).await,
        Message::Text("still here".into())
    );
    let log = hub.log();
    assert!(
        log.contains("code=1009") && log.contains("code=1007"),
        "{log}"
    );
}

#[actix_web::test]
async fn client_pings_are_answered() {
    let hub = start(&demo_config(""));
    let mut ws = connect(&hub.ws_url("/ws")).await;
    ws.send(Message::Ping(b"are you there".to_vec()))
        .await
        .unwrap();
    loop {
        let next = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws));
        match next.await.expect("no pong in time").unwrap().unwrap() {
            Message::Pong(payload) => {
                assert_eq!(payload, b"are you there");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[actix_web::test]
async fn sample_page_is_served_as_html() {
    let hub = start(&demo_config(""));
    let reply = http("GET", &hub.http_url("/"), None, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, "text/html; charset=utf-8");
    let page = String::from_utf8(reply.body).unwrap();
    assert!(page.contains("<title>Switchboard"), "page title missing");
    assert!(page.contains("/rpc") && page.contains("/ws"));
}
