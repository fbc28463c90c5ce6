//! Starting the hub binary on free ports, and small clients for its WebSocket and HTTP sides.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `switchboard` process with its bound addresses and captured log.
pub struct HubProcess {
    child: Child,
    /// The WebSocket listener.
    pub ws: SocketAddr,
    /// The push-API listener.
    pub push: SocketAddr,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// Start the hub with `config` (TOML), on free ports: WebSockets on 127.0.0.1, push API on
/// 127.0.0.2 (a separate listener).
pub fn start(config: &str) -> HubProcess {
    start_with_args(
        config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
    )
}

/// Start the hub with `config` and these extra flags.
pub fn start_with_args(config: &str, args: &[&str]) -> HubProcess {
    start_with_env(config, args, &[])
}

/// Start the hub with `config`, these extra flags and these environment variables.
pub fn start_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> HubProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env("RUST_LOG", "info,actix_server=warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn switchboard");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening websocket=").nth(1) {
                let mut parts = rest.split(" push=");
                let ws: SocketAddr = parts.next().unwrap().trim().parse().unwrap();
                let push: SocketAddr = parts.next().unwrap().trim().parse().unwrap();
                let _ = tx.send((ws, push));
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let (ws, push) = match rx.recv_timeout(WAIT) {
        Ok(addrs) => addrs,
        Err(_) => {
            let _ = child.kill();
            panic!("hub did not start; log:\n{}", log.lock().unwrap());
        }
    };
    HubProcess {
        child,
        ws,
        push,
        log,
        _dir: dir,
    }
}

impl HubProcess {
    /// `ws://` URL of a route.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    /// `http://` URL on the WebSocket listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.ws, path)
    }

    /// `http://` URL on the push API.
    pub fn push_url(&self, path: &str) -> String {
        format!("http://{}{}", self.push, path)
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the hub logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < WAIT,
                "log never contained {needle:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the hub process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }

    /// Send SIGTERM and wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.wait_exit()
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < WAIT,
                "hub did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the binary with a config and flags and return (exit code, stderr), expecting it to exit.
pub fn run_to_exit(config: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run switchboard");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Open a WebSocket.
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// The next text or binary message (pings and pongs skipped).
pub async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// The next text message, parsed as JSON.
pub async fn next_json(ws: &mut Ws) -> Value {
    match next_data(ws).await {
        Message::Text(text) => serde_json::from_str(&text).expect("JSON text"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Read until the server's close frame; returns its code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for the close frame");
        match msg {
            // Like a browser, answer the close at once (tungstenite queues the answer until
            // the socket is polled again).
            Some(Ok(Message::Close(Some(frame)))) => {
                let _ = ws.flush().await;
                return (u16::from(frame.code), frame.reason.into_owned());
            }
            Some(Ok(Message::Close(None))) => {
                let _ = ws.flush().await;
                return (1005, String::new());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("read error before the close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Send a JSON-RPC request (or anything JSON) and read the reply.
pub async fn call(ws: &mut Ws, request: Value) -> Value {
    ws.send(Message::Text(request.to_string()))
        .await
        .expect("send");
    next_json(ws).await
}

/// Send a text frame.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.to_owned())).await.expect("send");
}

/// A close code as tungstenite names it.
pub fn code(code: u16) -> tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode {
    code.into()
}

/// A client that performs the WebSocket handshake by hand and then never writes: a dead peer
/// whose TCP stack is still up. Returns the stream positioned after the handshake.
pub async fn raw_silent_client(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("read handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A WebSocket client with a 4 KiB receive buffer, for tests that stop reading from it: the
/// hub's backlog for it fills after a few kilobytes.
pub async fn small_buffer_client(hub: &HubProcess, path: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(hub.ws).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(hub.ws_url(path), stream)
        .await
        .unwrap();
    ws
}

/// Read a raw stream to its end (bounded) and return everything received.
pub async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("the server never closed the connection")
        .expect("read");
    received
}

/// The bytes of an unmasked server close frame with this code and reason.
pub fn close_frame_bytes(code: u16, reason: &str) -> Vec<u8> {
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame
}

/// An HTTP response as the tests look at it.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body parsed as JSON (Null when it is not JSON).
    pub json: Value,
    /// The content type.
    pub content_type: String,
    /// The raw body.
    pub body: Vec<u8>,
}

/// An HTTP request with an optional bearer token and body.
pub async fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    let client = awc::Client::builder().timeout(WAIT).finish();
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut response = match body {
        Some(body) => request
            .insert_header(("Content-Type", "application/json"))
            .send_body(body.to_owned())
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}")),
        None => request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}")),
    };
    let body = response
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .expect("read body")
        .to_vec();
    Reply {
        status: response.status().as_u16(),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        content_type: response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body,
    }
}

/// Send `head` (request line and headers, without the blank line; `Connection: close` is
/// added) and `body` over a plain TCP connection, so every header is exactly what the test
/// says (`Host` included), and read the whole reply.
pub async fn raw_http(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{head}\r\nConnection: close\r\n");
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.expect("write request");
    parse_reply(&read_to_end(&mut stream).await)
}

/// Parse a raw HTTP/1.1 response (not chunked).
pub fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Reply {
        status,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        content_type,
        body,
    }
}

/// POST a JSON body to the push API.
pub async fn post(hub: &HubProcess, path: &str, body: &Value) -> Reply {
    http("POST", &hub.push_url(path), None, Some(&body.to_string())).await
}

/// GET from the push API.
pub async fn get(hub: &HubProcess, path: &str) -> Reply {
    http("GET", &hub.push_url(path), None, None).await
}

/// The ids of the hub's connections, from the push API.
pub async fn connection_ids(hub: &HubProcess) -> Vec<String> {
    let reply = get(hub, "/api/connections").await;
    assert_eq!(reply.status, 200);
    reply.json["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Wait until the hub lists exactly `n` connections; returns their ids.
pub async fn wait_for_connections(hub: &HubProcess, n: usize) -> Vec<String> {
    let start = Instant::now();
    loop {
        let ids = connection_ids(hub).await;
        if ids.len() == n {
            return ids;
        }
        assert!(
            start.elapsed() < WAIT,
            "expected {n} connections, hub lists {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The demo config: loopback echo on /ws, JSON-RPC on /rpc, with `extra` appended to [limits].
pub fn demo_config(limits: &str) -> String {
    format!(
        r#"
[server]
page = true
shutdown_timeout_ms = 3000

[limits]
{limits}

[backend]
kind = "loopback"

[[routes]]
path = "/ws"
dialect = "raw"

[[routes]]
path = "/rpc"
dialect = "jsonrpc"
"#
    )
}

/// Publish 32 KiB messages to `channel` until the push API reports one dropped delivery (a
/// subscriber that does not read was cut off); panics if none is within 2000 publishes.
pub async fn publish_until_dropped(hub: &HubProcess, channel: &str) {
    let payload = "x".repeat(32 * 1024);
    for _ in 0..2000 {
        let reply = post(
            hub,
            "/api/publish",
            &json!({"channel": channel, "data": {"p": payload}}),
        )
        .await;
        if reply.json["dropped"] == 1 {
            return;
        }
    }
    panic!("no subscriber of {channel} was ever cut off");
}
