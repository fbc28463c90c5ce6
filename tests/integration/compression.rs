//! permessage-deflate (RFC 7692) over real sockets, with a client written here: the handshake
//! by hand (with the offer under test) and frames compressed and inflated with flate2, so the
//! test sees every header bit and every compressed byte the hub sends.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// The four bytes a sync flush ends with, which the wire leaves out.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A config with a plain `/ws` echo route and compressing routes with the given extra keys.
fn config(limits: &str, routes: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        "[server]\npage = false\n\n[limits]\n{limits}\n\n[backend]\nkind = \"loopback\"\n\n\
         [[routes]]\npath = \"/ws\"\ndialect = \"raw\"\n"
    );
    for (path, dialect, keys) in routes {
        text.push_str(&format!(
            "\n[[routes]]\npath = \"{path}\"\ndialect = \"{dialect}\"\ncompression = true\n{keys}\n"
        ));
    }
    text
}

/// One frame from the hub.
#[derive(Debug)]
struct ServerFrame {
    /// RSV1: the message is compressed.
    rsv1: bool,
    /// The opcode.
    opcode: u8,
    /// The payload as sent.
    payload: Vec<u8>,
}

/// A WebSocket client with permessage-deflate done by hand.
struct Client {
    stream: TcpStream,
    /// The 101 answer's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
    /// Inflates what the hub compressed.
    inflater: Decompress,
}

impl Client {
    /// Connect to `path`, offering `offer` (a whole `Sec-WebSocket-Extensions` value).
    async fn connect(hub: &HubProcess, path: &str, offer: Option<&str>) -> Client {
        Self::connect_with_window(hub, path, offer, 15).await
    }

    /// Connect, and inflate the hub's messages with a window of `inflate_bits` only: a hub
    /// that used a larger window than agreed makes inflating fail.
    async fn connect_with_window(
        hub: &HubProcess,
        path: &str,
        offer: Option<&str>,
        inflate_bits: u8,
    ) -> Client {
        let mut stream = TcpStream::connect(hub.ws).await.expect("connect");
        let extension = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             {extension}\r\n",
            hub.ws
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::time::timeout(WAIT, stream.read_exact(&mut byte))
                .await
                .expect("handshake answer")
                .expect("read handshake");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        Client {
            stream,
            extensions,
            inflater: Decompress::new_with_window_bits(false, inflate_bits),
        }
    }

    /// Send one frame: `first` is FIN|RSV1|opcode, the payload is masked.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Send a binary message compressed with `compressor` (RSV1 set).
    async fn send_compressed(&mut self, compressor: &mut Compress, message: &[u8]) {
        let payload = compress(compressor, message);
        self.send_frame(0x80 | 0x40 | 0x2, &payload).await;
    }

    /// The next frame from the hub, whole.
    async fn frame(&mut self) -> ServerFrame {
        let mut head = [0u8; 2];
        self.read(&mut head).await;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.read(&mut n).await;
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                self.read(&mut n).await;
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        self.read(&mut payload).await;
        ServerFrame {
            rsv1: head[0] & 0x40 != 0,
            opcode: head[0] & 0x0f,
            payload,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) {
        tokio::time::timeout(WAIT, self.stream.read_exact(buf))
            .await
            .expect("a frame from the hub")
            .expect("read");
    }

    /// The next data frame (pings are skipped), and its message inflated if it is compressed.
    async fn message(&mut self) -> (ServerFrame, Vec<u8>) {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x9 || frame.opcode == 0xa {
                continue;
            }
            let message = if frame.rsv1 {
                inflate(&mut self.inflater, &frame.payload)
            } else {
                frame.payload.clone()
            };
            return (frame, message);
        }
    }

    /// The close code the hub sends next (data frames before it are skipped).
    async fn close_code(&mut self) -> u16 {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }
}

/// Compress one message as RFC 7692 puts it on the wire.
fn compress(compressor: &mut Compress, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1024);
    let start = compressor.total_in();
    loop {
        let done = (compressor.total_in() - start) as usize;
        compressor
            .compress_vec(&message[done..], &mut out, FlushCompress::Sync)
            .unwrap();
        if (compressor.total_in() - start) as usize == message.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// Inflate one message from the wire (its tail put back).
fn inflate(inflater: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(payload.len() * 8 + 1024);
    let start = inflater.total_in();
    loop {
        let done = (inflater.total_in() - start) as usize;
        inflater
            .decompress_vec(&input[done..], &mut out, FlushDecompress::Sync)
            .expect("the hub's compressed data inflates with the agreed window");
        if (inflater.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity());
    }
}

/// `n` bytes of text that compresses well but not to nothing.
fn text(n: usize, seed: u32) -> Vec<u8> {
    const WORDS: [&str; 6] = [
        "hub ", "channel ", "frame ", "socket ", "window ", "deflate ",
    ];
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        out.extend_from_slice(WORDS[(state >> 16) as usize % WORDS.len()].as_bytes());
    }
    out.truncate(n);
    out
}

fn compressor(bits: u8) -> Compress {
    Compress::new_with_window_bits(Compression::default(), false, bits)
}

#[actix_web::test]
async fn compression_is_negotiated_only_on_routes_that_enable_it() {
    let hub = start(&config("", &[("/deflate", "raw", "")]));
    let message = text(4000, 1);
    let offer = Some("permessage-deflate; client_max_window_bits");

    // A route without `compression`: no extension, and the echo is plain.
    let mut plain = Client::connect(&hub, "/ws", offer).await;
    assert_eq!(plain.extensions, None);
    plain.send_frame(0x82, &message).await;
    let (frame, echo) = plain.message().await;
    assert!(!frame.rsv1);
    assert_eq!(echo, message);
    // RSV1 there is a protocol error.
    plain
        .send_compressed(&mut compressor(15), b"not negotiated")
        .await;
    assert_eq!(plain.close_code().await, 1002);

    // The compressing route with Chromium's offer: accepted with the route's defaults.
    let mut client = Client::connect(&hub, "/deflate", offer).await;
    assert_eq!(
        client.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15")
    );
    client.send_compressed(&mut compressor(15), &message).await;
    let (frame, echo) = client.message().await;
    assert!(frame.rsv1, "the echo is compressed");
    assert!(frame.payload.len() < message.len() / 2);
    assert_eq!(echo, message);

    // The same route, no offer: nothing negotiated, frames plain, RSV1 refused.
    let mut bare = Client::connect(&hub, "/deflate", None).await;
    assert_eq!(bare.extensions, None);
    bare.send_frame(0x82, &message).await;
    let (frame, echo) = bare.message().await;
    assert!(!frame.rsv1);
    assert_eq!(echo, message);
    bare.send_compressed(&mut compressor(15), &message).await;
    assert_eq!(bare.close_code().await, 1002);

    // An offer the hub cannot honour (an 8-bit server window) is declined, not narrowed
    // into a lie: the connection still opens, uncompressed.
    let eight = Client::connect(
        &hub,
        "/deflate",
        Some("permessage-deflate; server_max_window_bits=8"),
    )
    .await;
    assert_eq!(eight.extensions, None);
}

#[actix_web::test]
async fn context_takeover_and_window_bits_are_honoured() {
    let hub = start(&config(
        "",
        &[
            (
                "/takeover",
                "raw",
                "server_no_context_takeover = false\nclient_no_context_takeover = false\n\
                 server_max_window_bits = 10\nclient_max_window_bits = 11\ncompression_level = 6",
            ),
            ("/fresh", "raw", ""),
        ],
    ));
    // Shorter than the 10-bit window, so the second echo can refer to all of the first.
    let message = text(700, 2);

    // Context takeover on both sides, a 10-bit server window, an 11-bit client window.
    let mut client = Client::connect_with_window(
        &hub,
        "/takeover",
        Some("permessage-deflate; client_max_window_bits"),
        10,
    )
    .await;
    assert_eq!(
        client.extensions.as_deref(),
        Some("permessage-deflate; server_max_window_bits=10; client_max_window_bits=11")
    );
    // The client keeps its context too: its second message refers to the first.
    let mut ours = compressor(11);
    let mut sizes = Vec::new();
    for _ in 0..2 {
        client.send_compressed(&mut ours, &message).await;
        let (frame, echo) = client.message().await;
        assert!(frame.rsv1);
        assert_eq!(echo, message, "inflated with a 10-bit window");
        sizes.push(frame.payload.len());
    }
    assert!(
        sizes[1] * 4 < sizes[0],
        "the second echo refers to the first: {sizes:?}"
    );

    // The client asks for no server context and a 9-bit window: each echo stands alone.
    let mut narrow = Client::connect_with_window(
        &hub,
        "/takeover",
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9"),
        9,
    )
    .await;
    assert_eq!(
        narrow.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
    );
    let mut sizes = Vec::new();
    for _ in 0..2 {
        narrow.send_compressed(&mut compressor(15), &message).await;
        let (frame, echo) = narrow.message().await;
        assert_eq!(echo, message, "inflated with a 9-bit window");
        // Each echo inflates with a fresh inflater as well.
        let mut fresh = Decompress::new_with_window_bits(false, 9);
        assert_eq!(inflate(&mut fresh, &frame.payload), message);
        sizes.push(frame.payload.len());
    }
    assert_eq!(sizes[0], sizes[1]);

    // The default route: no context on either side, so every client message is compressed
    // from scratch, and fragments of a compressed message are joined before inflating.
    let mut fresh = Client::connect(&hub, "/fresh", Some("permessage-deflate")).await;
    assert_eq!(
        fresh.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let compressed = compress(&mut compressor(15), &message);
    let (head, tail) = compressed.split_at(compressed.len() / 3);
    fresh.send_frame(0x40 | 0x1, head).await;
    fresh.send_frame(0x80, tail).await;
    let (frame, echo) = fresh.message().await;
    assert_eq!(frame.opcode, 0x1, "a text message stays text");
    assert_eq!(echo, message);
    // RSV1 on a continuation frame is a protocol error.
    fresh.send_frame(0x40 | 0x1, head).await;
    fresh.send_frame(0x80 | 0x40, tail).await;
    assert_eq!(fresh.close_code().await, 1002);
}

#[actix_web::test]
async fn small_messages_go_out_plain_and_publications_compressed() {
    let hub = start(&config(
        "",
        &[
            ("/deflate", "raw", "compression_threshold = 200"),
            ("/rpc", "jsonrpc", "compression_threshold = 200"),
        ],
    ));
    let mut client = Client::connect(&hub, "/deflate", Some("permessage-deflate")).await;
    for (size, compressed) in [(199, false), (200, true), (5000, true)] {
        let message = text(size, 3);
        client.send_compressed(&mut compressor(15), &message).await;
        let (frame, echo) = client.message().await;
        assert_eq!(frame.rsv1, compressed, "{size} bytes");
        assert_eq!(echo, message);
    }

    // A publication reaches two compressing subscribers compressed, and a plain one plain.
    let mut subscribers = Vec::new();
    for offer in [Some("permessage-deflate"), Some("permessage-deflate"), None] {
        let mut subscriber = Client::connect(&hub, "/rpc", offer).await;
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"channel": "news"}});
        subscriber
            .send_frame(0x81, request.to_string().as_bytes())
            .await;
        let (_, reply) = subscriber.message().await;
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["result"], "subscribed");
        subscribers.push(subscriber);
    }
    let story = String::from_utf8(text(6000, 4)).unwrap();
    let reply = post(
        &hub,
        "/api/publish",
        &json!({"channel": "news", "data": {"story": story}}),
    )
    .await;
    assert_eq!(reply.json["reached"], 3);
    let mut wire_sizes = Vec::new();
    for (i, subscriber) in subscribers.iter_mut().enumerate() {
        let (frame, message) = subscriber.message().await;
        assert_eq!(frame.rsv1, i < 2, "subscriber {i}");
        let delivery = String::from_utf8(message).unwrap();
        assert!(delivery.contains(&story), "subscriber {i}: {delivery:.80}");
        wire_sizes.push(frame.payload.len());
    }
    assert_eq!(wire_sizes[0], wire_sizes[1]);
    assert!(wire_sizes[0] < wire_sizes[2] / 2, "{wire_sizes:?}");
}

#[actix_web::test]
async fn a_decompression_bomb_is_refused_with_1009_and_neighbours_carry_on() {
    let limit = 256 * 1024;
    let hub = start(&config(
        &format!("max_message_size = {limit}"),
        &[("/deflate", "raw", "")],
    ));
    let offer = Some("permessage-deflate");
    let mut neighbour = Client::connect(&hub, "/deflate", offer).await;
    let message = text(2000, 5);
    neighbour
        .send_compressed(&mut compressor(15), &message)
        .await;
    assert_eq!(neighbour.message().await.1, message);

    // 64 MiB of zeros: about 64 KiB on the wire, well within the frame limit.
    let bomb = compress(
        &mut Compress::new_with_window_bits(Compression::best(), false, 15),
        &vec![0u8; 64 << 20],
    );
    assert!(bomb.len() < limit);
    let before = hub.rss_kib();
    let mut bomber = Client::connect(&hub, "/deflate", offer).await;
    bomber.send_frame(0x80 | 0x40 | 0x2, &bomb).await;
    assert_eq!(bomber.close_code().await, 1009);
    let grown = hub.rss_kib().saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "the hub grew by {grown} KiB inflating a 64 MiB bomb with a {limit}-byte limit"
    );
    // Exactly the limit, inflated, still passes; the neighbour never noticed.
    let mut full = Client::connect(&hub, "/deflate", offer).await;
    let largest = text(limit, 6);
    full.send_compressed(&mut compressor(15), &largest).await;
    assert_eq!(full.message().await.1, largest);
    neighbour
        .send_compressed(&mut compressor(15), &message)
        .await;
    assert_eq!(neighbour.message().await.1, message);
}
