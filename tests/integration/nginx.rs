//! The hub behind a real nginx, configured from the shipped `deploy/nginx.conf` (only the
//! upstream address, the listen port and the read timeout are rewritten), and with the shipped
//! `deploy/production.toml` as the hub config where it fits. Checks WebSocket upgrades and the
//! relay through the proxy, the client's real address reaching the backend, the push-API guards,
//! and that the hub's pings keep an idle connection open past nginx's `proxy_read_timeout`.
//!
//! Needs the `nginx` binary (Debian package `nginx`). Without it the tests are reported as
//! ignored (see build.rs), except under CI (`CI=true`), where they fail.

use std::net::{SocketAddr, TcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::harness::*;
use crate::mock_backend::MockBackend;

/// The shipped files, read at test time.
const NGINX_SITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");
const PRODUCTION_TOML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/production.toml");

/// The client's source address for the proxied connections (any 127/8 address is loopback).
const CLIENT_IP: &str = "127.0.0.5";

/// The nginx binary: /usr/sbin/nginx or the first `nginx` on PATH. Without it the tests are
/// ignored (build.rs), or fail under CI.
fn nginx_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("nginx"));
    std::iter::once(PathBuf::from("/usr/sbin/nginx"))
        .chain(on_path)
        .find(|path| path.is_file())
        .expect("nginx not found (looked in /usr/sbin and on PATH): apt-get install -y nginx")
}

/// Replace `from`, which must occur exactly once in the shipped config, by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{NGINX_SITE} must contain `{from}` exactly once (the nginx tests rewrite it)"
    );
    text.replace(from, to)
}

/// A running nginx in front of one hub, with everything it writes in a temp dir.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Start nginx with the shipped site config, proxying to `upstream`, with
    /// `proxy_read_timeout` set to `read_timeout` (an nginx time such as `1s`).
    fn start(binary: &Path, upstream: SocketAddr, read_timeout: &str) -> Self {
        let site = std::fs::read_to_string(NGINX_SITE).expect("read deploy/nginx.conf");
        let site = replace_once(&site, "127.0.0.1:8080", &upstream.to_string());
        let site = replace_once(
            &site,
            "proxy_read_timeout 75s;",
            &format!("proxy_read_timeout {read_timeout};"),
        );
        // The port is picked free and released just before nginx binds it; retry if another
        // process took it in between.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let site = replace_once(&site, "listen 80;", &format!("listen {addr};"));
            match Self::try_start(binary, &site, addr) {
                Ok(nginx) => return nginx,
                Err(error) if error.contains("Address already in use") => last_error = error,
                Err(error) => panic!("{error}"),
            }
        }
        panic!("nginx could not bind a free port: {last_error}");
    }

    fn try_start(binary: &Path, site: &str, addr: SocketAddr) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().display().to_string();
        // A whole nginx.conf with every path in the temp dir, so it runs without root paths.
        let config = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

{site}
}}
"#
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config).expect("write nginx.conf");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let mut nginx = Self { child, addr, dir };
        // Ready when the port accepts connections; failed if the process exits first.
        let start = Instant::now();
        loop {
            if let Some(status) = nginx.child.try_wait().expect("try_wait") {
                return Err(format!("nginx exited with {status}: {}", nginx.logs()));
            }
            if StdTcpStream::connect(addr).is_ok() {
                return Ok(nginx);
            }
            if start.elapsed() > WAIT {
                return Err(format!("nginx never listened on {addr}: {}", nginx.logs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// nginx's stderr and error log, for failure messages.
    fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "stderr:\n{}\nerror.log:\n{}",
            read("stderr.log").unwrap_or_default(),
            read("error.log").unwrap_or_default()
        )
    }

    /// `http://` URL through the proxy.
    fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open a WebSocket through nginx from the source address [`CLIENT_IP`], with extra headers.
async fn connect_via(nginx: &Nginx, path: &str, headers: &[(&'static str, &str)]) -> Ws {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{CLIENT_IP}:0").parse().unwrap())
        .expect("bind the client's source address");
    let stream = tokio::time::timeout(WAIT, socket.connect(nginx.addr))
        .await
        .expect("connect to nginx timed out")
        .expect("connect to nginx");
    let mut request = format!("ws://{}{}", nginx.addr, path)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header value"));
    }
    let (ws, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("handshake through nginx timed out")
    .unwrap_or_else(|e| panic!("handshake through nginx: {e}; {}", nginx.logs()));
    assert_eq!(response.status().as_u16(), 101);
    ws
}

/// The production config with the backend URLs pointed at `backend`.
fn production_config(backend: &MockBackend) -> String {
    let config = std::fs::read_to_string(PRODUCTION_TOML).expect("read deploy/production.toml");
    assert!(config.contains("http://127.0.0.1:9000/"));
    config.replace("http://127.0.0.1:9000", &backend.url(""))
}

/// The production config's push token.
fn production_token() -> String {
    let config = std::fs::read_to_string(PRODUCTION_TOML).expect("read deploy/production.toml");
    let config: toml::Value = config.parse().expect("production.toml is TOML");
    config["push"]["token"]
        .as_str()
        .expect("push.token")
        .to_owned()
}

#[actix_web::test]
#[cfg_attr(missing_nginx, ignore = "nginx is not installed")]
async fn relay_and_client_address_through_nginx() {
    let binary = nginx_binary();

    // (a) ws2api relay: the upgrade passes nginx, the connect check and each frame reach the
    // backend, and its answer comes back through the proxy.
    let backend = MockBackend::start();
    let ws2api = format!(
        r#"
[server]
page = false
trusted_proxies = ["127.0.0.1"]

[backend]
kind = "http"
format = "ws2api"
url = "{}"

[[routes]]
path = "/{{id}}"
dialect = "raw"
"#,
        backend.url("/api")
    );
    let hub = start(&ws2api);
    let nginx = Nginx::start(&binary, hub.ws, "75s");
    let mut ws = connect_via(&nginx, "/client-1", &[]).await;
    backend
        .wait_for("the connect check", |r| {
            r.iter()
                .any(|r| r.method == "GET" && r.path == "/api/client-1")
        })
        .await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Text("re:hello".into()));
    ws.send(Message::Binary(vec![0, 159, 255])).await.unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::Binary(b"re:\x00\x9f\xff".to_vec())
    );
    let listed = get(&hub, "/api/connections").await;
    assert_eq!(listed.json["connections"][0]["remote"], CLIENT_IP);
    ws.close(None).await.unwrap();
    drop((nginx, hub));

    // (b) The shipped production config (SocketDock format, trusted_proxies = 127.0.0.1) on one
    // shared listener, so the push API is behind nginx too and the guards are exercised.
    let hub = start_with_args(
        &production_config(&backend),
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.1:0"],
    );
    assert_eq!(
        hub.ws, hub.push,
        "the push API shares the WebSocket listener"
    );
    let nginx = Nginx::start(&binary, hub.ws, "75s");
    // A client that forges X-Forwarded-For: nginx appends the real peer, and the hub takes the
    // last entry that is not a trusted proxy.
    let mut ws = connect_via(&nginx, "/ws", &[("x-forwarded-for", "6.6.6.6")]).await;
    let notice = backend.first_json("/socketdock/connect").await;
    let meta = &notice["meta"];
    assert_eq!(meta["remote"], CLIENT_IP, "{notice:#}");
    assert_eq!(
        meta["headers"]["x-forwarded-for"],
        format!("6.6.6.6, {CLIENT_IP}")
    );
    assert_eq!(meta["headers"]["x-real-ip"], CLIENT_IP);
    assert_eq!(meta["headers"]["host"], nginx.addr.ip().to_string());
    let id = meta["connection_id"].as_str().unwrap().to_owned();

    ws.send(Message::Text("via nginx".into())).await.unwrap();
    let message = backend.first_json("/socketdock/message").await;
    assert_eq!(message["message"], "via nginx");
    assert_eq!(message["meta"]["connection_id"], id);

    // Push paths: reachable on the hub's own address, refused through nginx.
    let token = production_token();
    let send = format!("/socket/{id}/send");
    let direct = http("POST", &hub.push_url(&send), Some(&token), Some("pushed")).await;
    assert_eq!(direct.status, 200);
    assert_eq!(
        next_data(&mut ws).await,
        Message::Binary(b"pushed".to_vec())
    );
    let proxied = http("POST", &nginx.http_url(&send), Some(&token), Some("no")).await;
    assert_eq!(proxied.status, 404);
    let direct = http("GET", &hub.push_url("/api/connections"), Some(&token), None).await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.json["connections"][0]["remote"], CLIENT_IP);
    for path in ["/api/connections", "/healthz"] {
        let proxied = http("GET", &nginx.http_url(path), Some(&token), None).await;
        assert_eq!(proxied.status, 404, "{path} through nginx");
        assert!(
            proxied.json.is_null(),
            "{path}: nginx's own 404 page, not the hub's JSON: {}",
            proxied.json
        );
    }
    // Anything but GET is refused before it reaches the hub.
    let proxied = http("POST", &nginx.http_url("/ws"), Some(&token), Some("x")).await;
    assert_eq!(proxied.status, 403);
}

/// Read (and so answer pings) for `period`; returns how many pings arrived. Panics if the
/// connection ends or data arrives.
async fn idle(ws: &mut Ws, period: Duration) -> usize {
    let until = tokio::time::Instant::now() + period;
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return pings,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("the idle connection got {other:?}"),
        }
    }
}

fn heartbeat_config(interval_ms: u64, timeout_ms: u64) -> String {
    demo_config(&format!(
        "heartbeat_interval_ms = {interval_ms}\nheartbeat_timeout_ms = {timeout_ms}"
    ))
}

#[actix_web::test]
#[cfg_attr(missing_nginx, ignore = "nginx is not installed")]
async fn hub_pings_keep_idle_connections_open_through_nginx() {
    let binary = nginx_binary();

    // Pings every 200 ms against a 1 s proxy_read_timeout: 3 s idle, and still open.
    let hub = start(&heartbeat_config(200, 2000));
    let nginx = Nginx::start(&binary, hub.ws, "1s");
    let mut ws = connect_via(&nginx, "/ws", &[]).await;
    let pings = idle(&mut ws, Duration::from_secs(3)).await;
    assert!(pings >= 5, "only {pings} pings in 3 s");
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::Text("still here".into()));
    ws.close(None).await.unwrap();

    // The contrast: pings every 5 s are too rare, and nginx cuts the idle connection after
    // about 1 s (a TCP close, without a WebSocket close frame).
    let quiet_hub = start(&heartbeat_config(5000, 20000));
    let quiet_nginx = Nginx::start(&binary, quiet_hub.ws, "1s");
    let mut ws = connect_via(&quiet_nginx, "/ws", &[]).await;
    let opened = Instant::now();
    // No frame at all is expected: the first event must be the end of the stream.
    let end = match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("nginx never closed the idle connection")
    {
        None => "end of stream".to_owned(),
        Some(Err(error)) => format!("error: {error}"),
        Some(Ok(Message::Ping(_))) => panic!("a ping arrived before nginx's timeout"),
        Some(Ok(Message::Close(frame))) => panic!("the hub closed the connection: {frame:?}"),
        Some(Ok(other)) => panic!("unexpected {other:?}"),
    };
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?} ({end}); expected about 1 s"
    );
    assert!(
        quiet_nginx.logs().contains("timed out"),
        "nginx's log should name the timeout: {}",
        quiet_nginx.logs()
    );
}
