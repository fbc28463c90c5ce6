//! Several hub processes as one hub over a real redis-server that each test starts on a free
//! port (timings shortened through `[cluster]`): one channel space across nodes and dialects,
//! push by id and close through any node, duplicate ws2api ids across nodes, cluster-wide
//! listings, crash notices after SIGKILL, a node cut off from Redis (through a TCP proxy the
//! test controls) or paused past its lease, a Redis restart, and a node without `[cluster]`.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::dialects::FOUR_ROUTES;
use crate::harness::*;
use crate::mock_backend::MockBackend;
use crate::relay::{socketdock_config, ws2api_config};

/// A redis-server of the test's own, without persistence (a restart loses its data).
struct Redis {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < WAIT, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// One command over RESP; the reply's first line.
    async fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr()).await.unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of Redis that the test can cut (every connection through it is
/// dropped and new ones are refused until it is restored) or freeze (the connections open
/// now stay open and carry nothing more; new ones work).
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped to freeze the connections opened before.
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let epochs = epoch.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let flag = flag.clone();
                let frozen = Frozen {
                    epochs: epochs.clone(),
                    born: epochs.load(Ordering::SeqCst),
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pipe(cr, sw, flag.clone(), frozen.clone()));
                    let down = tokio::spawn(pipe(sr, cw, flag, frozen));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { addr, cut, epoch }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Stop carrying anything on the connections open now, without closing them.
    fn freeze(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether a proxied connection was opened before the last freeze.
#[derive(Clone)]
struct Frozen {
    epochs: Arc<std::sync::atomic::AtomicU64>,
    born: u64,
}

impl Frozen {
    fn now(&self) -> bool {
        self.epochs.load(Ordering::SeqCst) != self.born
    }
}

/// Copy one direction of a proxied connection until it ends or the proxy is cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    frozen: Frozen,
) {
    let mut buf = vec![0u8; 16384];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await;
        if cut.load(Ordering::SeqCst) {
            return;
        }
        match read {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return,
            // Swallowed: the connection stays open and silent.
            Ok(Ok(_)) if frozen.now() => continue,
            Ok(Ok(n)) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The `[cluster]` section of a test node, with short timings.
fn cluster_section(redis: SocketAddr, node: &str, prefix: &str) -> String {
    format!(
        r#"
[cluster]
url = "redis://{redis}"
node = "{node}"
key_prefix = "{prefix}"
lease_ms = 3200
reap_interval_ms = 100
request_timeout_ms = 800
unsubscribe_delay_ms = 100
probe_interval_ms = 300
"#
    )
}

fn prefix() -> String {
    format!("t{}", free_port())
}

/// Start `n` nodes with `base` config on one Redis.
fn nodes(base: &str, redis: SocketAddr, n: usize, prefix: &str) -> Vec<HubProcess> {
    (0..n)
        .map(|i| {
            start(&format!(
                "{base}{}",
                cluster_section(redis, &format!("n{i}"), prefix)
            ))
        })
        .collect()
}

/// Wait until every node sees `n` nodes with fresh heartbeats and is connected.
async fn wait_for_cluster(hubs: &[&HubProcess], n: usize) {
    let start = Instant::now();
    loop {
        let mut ready = true;
        for hub in hubs {
            let health = get(hub, "/healthz").await.json;
            ready &= health["cluster"]["state"] == "connected"
                && health["cluster"]["nodes"].as_array().map_or(0, Vec::len) == n;
        }
        if ready {
            return;
        }
        assert!(
            start.elapsed() < WAIT * 2,
            "the cluster of {n} never formed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until this node itself holds `n` connections (listings are cluster-wide).
async fn wait_local(hub: &HubProcess, n: u64) {
    let start = Instant::now();
    while get(hub, "/healthz").await.json["connections"] != n {
        assert!(start.elapsed() < WAIT, "node never held {n} connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send `sig` (`-KILL`, `-STOP`, `-CONT`) to a hub process.
fn signal(hub: &HubProcess, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &hub.pid().to_string()])
        .status()
        .unwrap()
        .success());
}

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Read text messages until one equals `marker` (as JSON `{"marker": true}` inside any
/// dialect's envelope); the ones before it.
async fn until_marker(ws: &mut Ws) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = next_json(ws).await;
        let text = message.to_string();
        if text.contains("\"marker\"") {
            return seen;
        }
        seen.push(message);
    }
}

/// The `n` field of every message, in order (whatever the dialect's envelope).
fn ns(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| {
            m.get("n")
                .or_else(|| m.get("body").and_then(|b| b.get("n")))
                .and_then(Value::as_u64)
        })
        .collect()
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_publish_on_any_node_reaches_every_nodes_subscribers_once() {
    let redis = Redis::start();
    let prefix = prefix();
    let hubs = nodes(FOUR_ROUTES, redis.addr(), 3, &prefix);
    wait_for_cluster(&hubs.iter().collect::<Vec<_>>(), 3).await;

    // On each node: a raw client (broadcasts only), a JSON-RPC client in `chat` and in
    // `org.fedora.build` exactly, an AWX client in `jobs-summary`, a fedmsg client with the
    // prefix `org.fedora.` (so its node is reached through both a channel and a pattern).
    let mut clients = Vec::new();
    for hub in &hubs {
        let raw = connect(&hub.ws_url("/ws")).await;
        let mut topics = connect(&hub.ws_url("/topics")).await;
        topics
            .send(Message::Text(
                json!({"topic": "__topic_subscribe__", "body": "org.fedora.*"}).to_string(),
            ))
            .await
            .unwrap();
        let mut groups = connect(&hub.ws_url("/websocket/")).await;
        let reply = call(&mut groups, json!({"groups": {"jobs": ["summary"]}})).await;
        assert_eq!(reply["groups_current"], json!(["jobs-summary"]));
        let mut json_rpc = connect(&hub.ws_url("/rpc")).await;
        for (i, channel) in ["chat", "org.fedora.build"].iter().enumerate() {
            let reply = call(
                &mut json_rpc,
                rpc(i as u64, "subscribe", json!({"channel": channel})),
            )
            .await;
            assert_eq!(reply["result"], "subscribed");
        }
        clients.push((raw, json_rpc, groups, topics));
    }
    // The fedmsg subscription has no acknowledgement: the presence listing shows it applied
    // (the JSON-RPC subscriptions after it waited for every node's Redis subscription).
    let start = Instant::now();
    loop {
        let listed = get(&hubs[0], "/api/connections").await.json;
        let prefixes = listed["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["prefixes"] == json!(["org.fedora."]))
            .count();
        if prefixes == 3 {
            assert_eq!(listed["cluster"]["partial"], false);
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "fedmsg subscriptions never listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each node publishes to each kind of channel, and broadcasts.
    let mut n = 0;
    for hub in &hubs {
        for channel in ["chat", "jobs-summary", "org.fedora.build"] {
            n += 1;
            let reply = post(
                hub,
                "/api/publish",
                &json!({"channel": channel, "data": {"n": n}}),
            )
            .await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json["cluster"]["published"], true, "{}", reply.json);
            assert!(
                reply.json["cluster"]["other_nodes"].as_u64().unwrap() >= 2,
                "{}",
                reply.json
            );
        }
        n += 1;
        let reply = post(hub, "/api/broadcast", &json!({"data": {"n": n}})).await;
        assert_eq!(reply.json["cluster"]["published"], true);
    }
    // RocketWS's backend port and a client's own publish work the same way.
    n += 1;
    let emitted = http(
        "POST",
        &hubs[1].push_url("/"),
        None,
        Some(&rpc(1, "emit", json!({"channel": "chat", "data": {"n": n}})).to_string()),
    )
    .await;
    assert_eq!(emitted.status, 200);
    n += 1;
    // (Its reply, "emitted: 0" as the sender is left out and nobody else is local, comes
    // among the deliveries it is reading.)
    send_text(
        &mut clients[2].1,
        &rpc(9, "send_data", json!({"channel": "chat", "data": {"n": n}})).to_string(),
    )
    .await;
    // Order per publisher: a run of publishes from one node arrives in order everywhere.
    let run: Vec<u64> = (100..120).collect();
    for k in &run {
        post(
            &hubs[0],
            "/api/publish",
            &json!({"channel": "chat", "data": {"n": k}}),
        )
        .await;
    }
    for hub in &hubs {
        post(hub, "/api/broadcast", &json!({"data": {"marker": true}})).await;
    }

    for (node, (raw, json_rpc, groups, topics)) in clients.iter_mut().enumerate() {
        let broadcasts = ns(&until_marker(raw).await);
        assert_eq!(broadcasts, vec![4, 8, 12], "raw client on node {node}");
        let messages = until_marker(json_rpc).await;
        if node == 2 {
            assert!(
                messages.iter().any(|m| m["result"] == "emitted: 0"),
                "{messages:?}"
            );
        }
        let got = ns(&messages);
        // The JSON-RPC client is in `chat` and in `org.fedora.build` (3, 7, 11).
        let mut want = Vec::new();
        for k in [1, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14] {
            if k == 14 && node == 2 {
                continue;
            }
            want.push(k);
        }
        want.extend(&run);
        let in_run: Vec<u64> = got.iter().copied().filter(|k| *k >= 100).collect();
        assert_eq!(
            in_run, run,
            "node {node}: one publisher's run arrives in order"
        );
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, want, "JSON-RPC client on node {node}: each once");
        assert_eq!(
            ns(&until_marker(groups).await),
            vec![2, 4, 6, 8, 10, 12],
            "AWX client on node {node}"
        );
        assert_eq!(
            ns(&until_marker(topics).await),
            vec![3, 4, 7, 8, 11, 12],
            "fedmsg client on node {node}: prefix and channel subscriptions de-duplicated"
        );
    }
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn push_by_id_and_close_work_through_any_node_and_duplicate_ids_are_decided_once() {
    let redis = Redis::start();
    let backend = MockBackend::start();
    let prefix = prefix();
    let hubs = nodes(&ws2api_config(&backend, ""), redis.addr(), 2, &prefix);
    wait_for_cluster(&[&hubs[0], &hubs[1]], 2).await;
    let mut client = connect(&hubs[0].ws_url("/dev-1")).await;
    wait_for_connections(&hubs[0], 1).await;

    // ws2api's push path and the native API, through the node that does not hold it.
    let pushed = http(
        "POST",
        &hubs[1].push_url("/dev-1"),
        None,
        Some("through n1"),
    )
    .await;
    assert_eq!((pushed.status, pushed.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(
        next_data(&mut client).await,
        Message::Text("through n1".into())
    );
    let sent = post(
        &hubs[1],
        "/api/connections/dev-1/send",
        &json!({"text": "native"}),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.json);
    assert_eq!(next_data(&mut client).await, Message::Text("native".into()));

    // An id no node holds is 404 on every node, in both APIs.
    let unknown = http("POST", &hubs[1].push_url("/nobody"), None, Some("x")).await;
    assert_eq!(
        (unknown.status, unknown.body.as_slice()),
        (404, &b"not found"[..])
    );
    let unknown = post(
        &hubs[0],
        "/api/connections/nobody/send",
        &json!({"text": "x"}),
    )
    .await;
    assert_eq!(unknown.status, 404);

    // The same id connects to the other node: the newer one wins (4001 for the older, no
    // disconnect notice), and pushes reach the newer one from either node.
    let mut newer = connect(&hubs[1].ws_url("/dev-1")).await;
    assert_eq!(expect_close(&mut client).await.0, 4001);
    let pushed = http(
        "POST",
        &hubs[0].push_url("/dev-1"),
        None,
        Some("to the newer"),
    )
    .await;
    assert_eq!(pushed.status, 200);
    assert_eq!(
        next_data(&mut newer).await,
        Message::Text("to the newer".into())
    );

    // Close through the node that does not hold it: the client sees the code, the backend
    // one DELETE for the newer connection's end (the replaced one sent none).
    let closed = post(
        &hubs[0],
        "/api/connections/dev-1/close",
        &json!({"code": 4100, "reason": "bye"}),
    )
    .await;
    assert_eq!(closed.status, 200, "{}", closed.json);
    assert_eq!(expect_close(&mut newer).await, (4100, "bye".into()));
    drop(newer);
    let received = backend
        .wait_for("the DELETE of dev-1", |r| {
            r.iter().any(|r| r.method == "DELETE")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deletes = backend
        .received()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == "/api/dev-1")
        .count();
    assert_eq!(deletes, 1, "{received:#?}");
    let gone = post(
        &hubs[1],
        "/api/connections/dev-1/send",
        &json!({"text": "x"}),
    )
    .await;
    assert_eq!(gone.status, 404, "{}", gone.json);
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn listings_and_counts_cover_the_cluster_and_say_when_partial() {
    let redis = Redis::start();
    let prefix = prefix();
    let mut hubs = nodes(FOUR_ROUTES, redis.addr(), 3, &prefix);
    wait_for_cluster(&hubs.iter().collect::<Vec<_>>(), 3).await;
    let mut clients = Vec::new();
    for (i, hub) in hubs.iter().enumerate() {
        for _ in 0..=i {
            let mut ws = connect(&hub.ws_url("/rpc")).await;
            call(&mut ws, rpc(1, "subscribe", json!({"channel": "room"}))).await;
            clients.push(ws);
        }
    }
    let listed = get(&hubs[1], "/api/connections").await.json;
    assert_eq!(
        listed["connections"].as_array().unwrap().len(),
        6,
        "{listed}"
    );
    assert_eq!(listed["cluster"]["nodes"], 3);
    assert_eq!(listed["cluster"]["partial"], false);
    let on_n2 = listed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node"] == "n2")
        .count();
    assert_eq!(on_n2, 3);
    let channels = get(&hubs[0], "/api/channels").await.json;
    assert_eq!(
        channels["channels"],
        json!([{"name": "room", "subscribers": 6}])
    );
    let presence = get(&hubs[2], "/api/presence?channel=room").await.json;
    assert_eq!(presence["subscribers"], 6);
    assert_eq!(presence["connections"].as_array().unwrap().len(), 6);
    let total = http(
        "POST",
        &hubs[0].push_url("/"),
        None,
        Some(&rpc(1, "total_subscribers", json!({"channel": "room"})).to_string()),
    )
    .await;
    assert_eq!(total.json["result"], 6);
    let available = http(
        "POST",
        &hubs[0].push_url("/"),
        None,
        Some(&rpc(2, "available_channels", json!({})).to_string()),
    )
    .await;
    assert_eq!(available.json["result"], json!(["room"]));
    // Health counts this node's connections, and the cluster's from the heartbeats (each
    // with its age): they catch up within a heartbeat.
    let start = Instant::now();
    loop {
        let health = get(&hubs[0], "/healthz").await.json;
        assert_eq!(health["status"], "ok");
        assert_eq!(health["connections"], 1, "this node's own count");
        if health["cluster"]["connections"] == 6 {
            assert!(health["cluster"]["nodes"][0]["age_ms"].is_u64());
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "heartbeats never counted 6: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The operator CLI against any node sees the whole cluster.
    let url = format!("http://{}", hubs[1].push);
    let cli = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["--push-url", &url, "connections"])
        .env_remove("SWITCHBOARD_PUSH_URL")
        .env_remove("SWITCHBOARD_TOKEN")
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&cli.stdout).expect("the CLI prints JSON");
    assert_eq!(
        listed["connections"].as_array().unwrap().len(),
        6,
        "{listed}"
    );

    // A node that cannot answer (paused) makes the listing partial, naming it.
    let pid = hubs[2].pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let listed = get(&hubs[0], "/api/connections").await.json;
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert_eq!(listed["cluster"]["partial"], true, "{listed}");
    assert_eq!(listed["cluster"]["missing"], json!(["n2"]));
    assert_eq!(listed["connections"].as_array().unwrap().len(), 3);
    // A node that shuts down leaves the cluster: listings are whole again at once.
    assert!(hubs[2].terminate().success());
    let listed = get(&hubs[0], "/api/connections").await.json;
    assert_eq!(listed["cluster"]["partial"], false, "{listed}");
    assert_eq!(listed["cluster"]["nodes"], 2);
    assert_eq!(listed["connections"].as_array().unwrap().len(), 3);
}

/// The SocketDock disconnect notices received, by connection id.
fn notices(backend: &MockBackend) -> Vec<(String, String, Instant)> {
    backend
        .received()
        .into_iter()
        .filter(|r| r.path == "/sd/disconnect")
        .map(|r| {
            (
                r.json()["connection_id"].as_str().unwrap().to_owned(),
                r.header("switchboard-notice-id")
                    .unwrap_or_default()
                    .to_owned(),
                r.at,
            )
        })
        .collect()
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_killed_nodes_connections_get_exactly_one_notice_each_from_a_survivor() {
    let redis = Redis::start();
    let backend = MockBackend::start();
    let prefix = prefix();
    let mut hubs = nodes(&socketdock_config(&backend), redis.addr(), 3, &prefix);
    wait_for_cluster(&hubs.iter().collect::<Vec<_>>(), 3).await;
    let mut doomed = Vec::new();
    for _ in 0..50 {
        doomed.push(connect(&hubs[0].ws_url("/ws")).await);
    }
    wait_local(&hubs[0], 50).await;
    let ids = wait_for_connections(&hubs[0], 50).await;
    // SocketDock's push path works through another node too.
    let pushed = http(
        "POST",
        &hubs[2].push_url(&format!("/socket/{}/send", ids[0])),
        None,
        Some("via n2"),
    )
    .await;
    assert_eq!(pushed.status, 200);
    let mut got_push = false;
    for ws in &mut doomed {
        if let Ok(Some(Ok(Message::Binary(bytes)))) =
            tokio::time::timeout(Duration::from_millis(20), futures_util::StreamExt::next(ws)).await
        {
            got_push |= bytes == b"via n2";
        }
    }
    assert!(got_push, "the pushed frame reached its connection on n0");
    // One connection on a survivor closes normally: its own node sends its one notice.
    let mut survivor = connect(&hubs[1].ws_url("/ws")).await;
    wait_local(&hubs[1], 1).await;
    survivor.close(None).await.unwrap();
    backend
        .wait_for("the survivor's own notice", |r| {
            r.iter().any(|r| r.path == "/sd/disconnect")
        })
        .await;

    signal(&hubs[0], "-KILL");
    backend
        .wait_for("51 notices", |r| {
            r.iter().filter(|r| r.path == "/sd/disconnect").count() >= 51
        })
        .await;
    // Give a second reaper every chance to send a copy.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = notices(&backend);
    let mut reaped: Vec<String> = got.iter().map(|(id, _, _)| id.clone()).collect();
    reaped.sort();
    let mut want = ids.clone();
    let survivor_id = got[0].0.clone();
    want.push(survivor_id);
    want.sort();
    assert_eq!(reaped, want, "exactly one notice per connection");
    assert!(
        got.iter().all(|(_, notice, _)| !notice.is_empty()),
        "every notice has an id"
    );
    let reapers =
        hubs[1].log().matches("dead run").count() + hubs[2].log().matches("dead run").count();
    assert_eq!(reapers, 50, "the notices came from the survivors");
    hubs[0].wait_exit();
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_node_restarted_under_its_name_sends_its_previous_runs_notices_at_once() {
    let redis = Redis::start();
    let backend = MockBackend::start();
    let prefix = prefix();
    // A lease far longer than the test: only the restart can explain the notices.
    let config = format!(
        "{}{}",
        socketdock_config(&backend),
        cluster_section(redis.addr(), "phoenix", &prefix)
            .replace("lease_ms = 3200", "lease_ms = 60000")
    );
    let mut first = start(&config);
    wait_for_cluster(&[&first], 1).await;
    // A second live process under the same name is refused.
    let (code, log) = run_to_exit(
        &config,
        &["--listen", "127.0.0.1:0", "--push-listen", "127.0.0.2:0"],
    );
    assert_eq!(code, Some(3), "{log}");
    assert!(
        log.contains("another running process uses cluster.node"),
        "{log}"
    );
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&first.ws_url("/ws")).await);
    }
    let ids = wait_for_connections(&first, 5).await;
    signal(&first, "-KILL");
    first.wait_exit();
    let second = start(&config);
    backend
        .wait_for("5 notices from the restarted node", |r| {
            r.iter().filter(|r| r.path == "/sd/disconnect").count() >= 5
        })
        .await;
    let mut got: Vec<String> = notices(&backend).into_iter().map(|(id, _, _)| id).collect();
    got.sort();
    assert_eq!(got, ids);
    assert_eq!(second.log().matches("dead run").count(), 5);
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_node_cut_off_past_its_lease_closes_its_sockets_before_any_survivor_notices() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let backend = MockBackend::start();
    let prefix = prefix();
    let base = socketdock_config(&backend);
    let cut = start(&format!(
        "{base}{}",
        cluster_section(proxy.addr, "cut", &prefix)
    ));
    let other = start(&format!(
        "{base}{}",
        cluster_section(redis.addr(), "other", &prefix)
    ));
    wait_for_cluster(&[&cut, &other], 2).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&cut.ws_url("/ws")).await);
    }
    wait_for_connections(&cut, 5).await;

    proxy.set_cut(true);
    let mut closed_at = Vec::new();
    for ws in &mut clients {
        assert_eq!(expect_close(ws).await.0, 1012);
        closed_at.push(Instant::now());
    }
    let last_close = *closed_at.iter().max().unwrap();
    backend
        .wait_for("5 notices from the survivor", |r| {
            r.iter().filter(|r| r.path == "/sd/disconnect").count() >= 5
        })
        .await;
    let got = notices(&backend);
    assert_eq!(got.len(), 5);
    assert!(
        got.iter().all(|(_, _, at)| *at > last_close),
        "every socket was closed before the first notice"
    );
    assert_eq!(
        other.log().matches("dead run").count(),
        5,
        "sent by the survivor"
    );
    let health = get(&cut, "/healthz").await.json;
    assert_ne!(health["status"], "ok", "{health}");

    // Back on Redis, the node joins again under a new run and serves again.
    proxy.set_cut(false);
    wait_for_cluster(&[&cut, &other], 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(notices(&backend).len(), 5, "no second notice once back");
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn notices_a_reaper_claimed_but_died_before_delivering_are_sent_by_the_next_reaper() {
    let redis = Redis::start();
    let backend = MockBackend::start();
    let prefix = prefix();
    let mut hubs = nodes(&socketdock_config(&backend), redis.addr(), 3, &prefix);
    wait_for_cluster(&hubs.iter().collect::<Vec<_>>(), 3).await;
    let mut doomed = Vec::new();
    for _ in 0..5 {
        doomed.push(connect(&hubs[0].ws_url("/ws")).await);
    }
    let mut ids = wait_for_connections(&hubs[0], 5).await;
    ids.sort();

    // The application is down: the reaper claims the dead node's run but cannot deliver.
    backend.set_outage(true);
    signal(&hubs[0], "-KILL");
    hubs[0].wait_exit();
    let start = Instant::now();
    let reaper = loop {
        if let Some(i) = (1..3).find(|&i| hubs[i].log().matches("dead run").count() == 5) {
            break i;
        }
        assert!(
            start.elapsed() < WAIT * 2,
            "no survivor claimed the dead run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    backend
        .wait_for("the reaper's first tries", |r| {
            r.iter().any(|r| r.path == "/sd/disconnect" && r.failed)
        })
        .await;
    let tried: std::collections::HashMap<String, String> = notices(&backend)
        .into_iter()
        .map(|(id, notice, _)| (id, notice))
        .collect();
    // The reaper dies before any notice got through; then the application is back.
    signal(&hubs[reaper], "-KILL");
    hubs[reaper].wait_exit();
    backend.set_outage(false);

    let delivered = |r: &[crate::mock_backend::Received]| {
        let mut ids: Vec<String> = r
            .iter()
            .filter(|r| r.path == "/sd/disconnect" && !r.failed)
            .map(|r| r.json()["connection_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let got = backend
        .wait_for("the notices delivered by the last survivor", |r| {
            delivered(r).len() >= 5
        })
        .await;
    assert_eq!(
        delivered(&got),
        ids,
        "every connection of the first dead node"
    );
    let survivor = 3 - reaper;
    assert_eq!(
        hubs[survivor].log().matches("dead run").count(),
        5,
        "sent by the survivor that reaped the reaper"
    );
    // The same notice ids as the dead reaper's tries: a backend that saw one drops the copy.
    for r in got
        .iter()
        .filter(|r| r.path == "/sd/disconnect" && !r.failed)
    {
        let id = r.json()["connection_id"].as_str().unwrap().to_owned();
        if let Some(first) = tried.get(&id) {
            assert_eq!(r.header("switchboard-notice-id"), Some(first.as_str()));
        }
    }
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_reaper_holds_off_for_a_lease_after_its_own_outage() {
    // A lease long enough that a one-second cut-off never fences the watcher.
    let lease = Duration::from_millis(4000);
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let backend = MockBackend::start();
    let prefix = prefix();
    let base = socketdock_config(&backend);
    let section = |addr: SocketAddr, node: &str| {
        cluster_section(addr, node, &prefix).replace("lease_ms = 3200", "lease_ms = 4000")
    };
    let watcher = start(&format!("{base}{}", section(proxy.addr, "watcher")));
    let mut doomed = start(&format!("{base}{}", section(redis.addr(), "doomed")));
    wait_for_cluster(&[&watcher, &doomed], 2).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&doomed.ws_url("/ws")).await);
    }
    let ids = wait_for_connections(&doomed, 5).await;
    let mut bystander = connect(&watcher.ws_url("/ws")).await;
    wait_local(&watcher, 1).await;

    // The watcher loses Redis and, meanwhile, the other node dies: by the time the watcher is
    // back, the dead node's lease has expired or is about to.
    proxy.set_cut(true);
    signal(&doomed, "-KILL");
    doomed.wait_exit();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.set_cut(false);
    let restored = Instant::now();

    backend
        .wait_for("5 notices from the watcher", |r| {
            r.iter().filter(|r| r.path == "/sd/disconnect").count() >= 5
        })
        .await;
    let got = notices(&backend);
    let first = got.iter().map(|(_, _, at)| *at).min().unwrap();
    // Without the hold-off the dead run is reaped as soon as its lease expires (at most a
    // lease after the kill, before `restored + lease`); with it, no earlier than a lease of
    // renewals after the watcher's own outage ended.
    assert!(
        first >= restored + lease,
        "the first notice came {:?} after Redis was back, before a whole lease ({lease:?})",
        first - restored
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut noticed: Vec<String> = notices(&backend).into_iter().map(|(id, _, _)| id).collect();
    noticed.sort();
    assert_eq!(
        noticed, ids,
        "exactly one notice per connection of the dead node"
    );
    assert_eq!(watcher.log().matches("dead run").count(), 5);
    // The watcher itself never fenced: its own client is still served.
    assert!(!watcher.log().contains("fenced"), "{}", watcher.log());
    bystander.send(Message::Ping(vec![1])).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut bystander))
            .await
            .expect("an answer to the ping")
            .expect("the connection is open")
            .unwrap();
        match message {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], &[1]);
                break;
            }
            Message::Close(close) => panic!("the watcher closed its client: {close:?}"),
            _ => {}
        }
    }
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_node_paused_past_its_lease_closes_the_sockets_that_were_reaped() {
    let redis = Redis::start();
    let backend = MockBackend::start();
    let prefix = prefix();
    let hubs = nodes(&socketdock_config(&backend), redis.addr(), 2, &prefix);
    wait_for_cluster(&[&hubs[0], &hubs[1]], 2).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&hubs[0].ws_url("/ws")).await);
    }
    wait_for_connections(&hubs[0], 3).await;
    signal(&hubs[0], "-STOP");
    backend
        .wait_for("3 notices while paused", |r| {
            r.iter().filter(|r| r.path == "/sd/disconnect").count() >= 3
        })
        .await;
    signal(&hubs[0], "-CONT");
    for ws in &mut clients {
        assert_eq!(
            expect_close(ws).await.0,
            1012,
            "reaped while paused: closed on waking"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(notices(&backend).len(), 3, "one notice each, the reaper's");
    hubs[0].wait_for_log("fenced").await;
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_subscription_that_silently_stops_delivering_is_caught_by_the_probe() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.addr()).await;
    let prefix = prefix();
    // A lease long enough that the frozen command connection is replaced before it matters.
    let section = |addr, node| {
        cluster_section(addr, node, &prefix).replace("lease_ms = 3200", "lease_ms = 12000")
    };
    let quiet = start(&format!("{FOUR_ROUTES}{}", section(proxy.addr, "quiet")));
    let other = start(&format!("{FOUR_ROUTES}{}", section(redis.addr(), "other")));
    wait_for_cluster(&[&quiet, &other], 2).await;
    let mut listener = connect(&quiet.ws_url("/rpc")).await;
    call(
        &mut listener,
        rpc(1, "subscribe", json!({"channel": "news"})),
    )
    .await;

    // The TCP connections stay up but carry nothing: only the probe can tell.
    proxy.freeze();
    let start = Instant::now();
    loop {
        let health = get(&quiet, "/healthz").await.json;
        let cluster = &health["cluster"];
        if cluster["probes_failed"].as_u64().unwrap_or(0) >= 1 && cluster["state"] == "connected" {
            assert!(cluster["gaps"].as_u64().unwrap() >= 1, "{health}");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the probe never caught it: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = post(
        &other,
        "/api/publish",
        &json!({"channel": "news", "data": {"n": 7}}),
    )
    .await;
    assert_eq!(reply.json["cluster"]["published"], true);
    assert_eq!(next_json(&mut listener).await["n"], 7, "delivering again");
}

/// Wait until `/readyz` answers `status`.
async fn wait_for_readyz(hub: &HubProcess, status: u16) {
    let start = Instant::now();
    loop {
        let reply = get(hub, "/readyz").await;
        if reply.status == status {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "/readyz never answered {status}: {} {}",
            reply.status,
            reply.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_redis_restart_is_survived_reported_and_seen_in_healthz() {
    let mut redis = Redis::start();
    let port = redis.port;
    let prefix = prefix();
    let hubs = nodes(FOUR_ROUTES, redis.addr(), 2, &prefix);
    wait_for_cluster(&[&hubs[0], &hubs[1]], 2).await;
    let mut far = connect(&hubs[1].ws_url("/rpc")).await;
    call(&mut far, rpc(1, "subscribe", json!({"channel": "news"}))).await;
    let mut near = connect(&hubs[0].ws_url("/rpc")).await;
    call(&mut near, rpc(1, "subscribe", json!({"channel": "news"}))).await;

    redis.kill();
    // While it is down: local delivery goes on, the publisher is told it stayed local, and
    // health says so.
    let start = Instant::now();
    loop {
        let health = get(&hubs[0], "/healthz").await.json;
        if health["status"] == "degraded" {
            assert_eq!(health["cluster"]["subscribed"], false, "{health}");
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "healthz never said the cluster was lost: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = post(
        &hubs[0],
        "/api/publish",
        &json!({"channel": "news", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(reply.json["reached"], 1);
    assert_eq!(reply.json["cluster"]["published"], false, "{}", reply.json);
    assert_eq!(next_json(&mut near).await["n"], 1);
    let unreachable = post(
        &hubs[0],
        "/api/connections/nobody/send",
        &json!({"text": "x"}),
    )
    .await;
    assert_eq!(
        unreachable.status, 503,
        "an id the cluster might hold: {}",
        unreachable.json
    );

    // A load balancer sends new clients elsewhere meanwhile; liveness stays 200.
    wait_for_readyz(&hubs[0], 503).await;
    let ready = get(&hubs[0], "/readyz").await.json;
    assert_eq!(ready["reasons"], json!(["broker_down"]), "{ready}");
    assert_eq!(get(&hubs[0], "/healthz").await.status, 200);

    let _redis = Redis::start_on(port);
    wait_for_cluster(&[&hubs[0], &hubs[1]], 2).await;
    wait_for_readyz(&hubs[0], 200).await;
    // Delivery resumes (the far node subscribed again), and the gap was counted.
    let reply = post(
        &hubs[0],
        "/api/publish",
        &json!({"channel": "news", "data": {"n": 2}}),
    )
    .await;
    assert_eq!(reply.json["cluster"]["published"], true, "{}", reply.json);
    assert_eq!(
        next_json(&mut far).await["n"],
        2,
        "the publish made while Redis was down never arrives; the next does"
    );
    assert_eq!(next_json(&mut near).await["n"], 2);
    let health = get(&hubs[1], "/healthz").await.json;
    assert!(health["cluster"]["gaps"].as_u64().unwrap() >= 1, "{health}");
    // The same figures in the metrics, for a scraper.
    let scraped = String::from_utf8(get(&hubs[1], "/metrics").await.body).unwrap();
    let sample = |name: &str| -> f64 {
        scraped
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{scraped}"))
    };
    assert!(sample("switchboard_cluster_gaps_total") >= 1.0);
    assert_eq!(sample("switchboard_cluster_connected"), 1.0);
    assert_eq!(sample("switchboard_cluster_nodes"), 2.0);
    let health = get(&hubs[0], "/healthz").await.json;
    assert!(
        health["cluster"]["publishes_failed"].as_u64().unwrap() >= 1,
        "{health}"
    );
}

#[actix_web::test]
#[cfg_attr(missing_redis_server, ignore = "redis-server is not installed")]
async fn a_node_without_a_cluster_url_never_connects_to_redis() {
    let redis = Redis::start();
    let before = redis.command(&["INFO", "stats"]).await;
    let connections = |info: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let hub = start(&format!(
        "{FOUR_ROUTES}\n[cluster]\nkey_prefix = \"unused\"\n"
    ));
    let mut ws = connect(&hub.ws_url("/rpc")).await;
    call(&mut ws, rpc(1, "subscribe", json!({"channel": "c"}))).await;
    let reply = post(&hub, "/api/publish", &json!({"channel": "c", "data": 1})).await;
    assert!(reply.json.get("cluster").is_none());
    assert!(get(&hub, "/healthz").await.json.get("cluster").is_none());
    let after = redis.command(&["INFO", "stats"]).await;
    // Each INFO is one connection of the test's own.
    assert_eq!(connections(&after), connections(&before) + 1);
}
