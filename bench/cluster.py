#!/usr/bin/env python3
"""Benchmark several Switchboard nodes over one redis-server (the `[cluster]` section).

    python3 bench/cluster.py                       # 6 nodes, 19,000 connections per node
    python3 bench/cluster.py --nodes 2 --per-node 2000 --subs 1000 --crash 2000   # a quick run

Scenarios, each on fresh processes (release binaries, `cargo build --release --workspace`):
- idle: each node in turn holds --per-node idle JSON-RPC connections (loadgen `idle`), its RSS
  read before and after: memory per connection of a cluster node;
- latency: --subs subscribers on the last node, publishes POSTed to the first node at 100/s
  (loadgen `fanout`): cross-node publish -> delivery latency, p50/p99;
- crash: --crash SocketDock connections on the first node, then SIGKILL of that node: the time
  until a survivor has sent every disconnect notice (a small HTTP receiver counts them).

Results are appended as JSON lines to bench/results/cluster.jsonl and printed as a table.
Ports 35000-35999 on 127.0.0.1. Needs redis-server on PATH.
"""

import argparse
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HUB = os.path.join(TARGET, "release", "switchboard")
LOADGEN = os.path.join(TARGET, "release", "loadgen")
RESULTS = os.path.join(ROOT, "bench", "results", "cluster.jsonl")
REDIS_PORT = 35000
NOTICE_PORT = 35001
WS_BASE, PUSH_BASE = 35100, 35200
SUBSCRIBE_RPC = '{"jsonrpc":"2.0","method":"subscribe","params":{"channel":"bench"},"id":1}'


def log(*parts):
    print("==>", *parts, file=sys.stderr, flush=True)


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def healthz(i):
    url = f"http://127.0.0.1:{PUSH_BASE + i}/healthz"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)


class Cluster:
    """A redis-server and `nodes` hubs on it, stopped on exit."""

    def __init__(self, nodes, backend=""):
        self.nodes = nodes
        self.backend = backend
        self.dir = tempfile.mkdtemp(prefix="sb-cluster-")

    def __enter__(self):
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_port(REDIS_PORT)
        self.hubs = []
        for i in range(self.nodes):
            config = os.path.join(self.dir, f"node{i}.toml")
            with open(config, "w") as f:
                f.write(f"""
[server]
listen = "127.0.0.1:{WS_BASE + i}"
page = false
shutdown_timeout_ms = 5000

[push]
listen = "127.0.0.1:{PUSH_BASE + i}"

[limits]
max_subscriptions = 4

{self.backend}

[[routes]]
path = "/rpc"
dialect = "jsonrpc"

[[routes]]
path = "/ws"
dialect = "raw"

[cluster]
url = "redis://127.0.0.1:{REDIS_PORT}"
node = "bench-{i}"
""")
            self.hubs.append(subprocess.Popen([HUB, "--config", config],
                                              stderr=open(config + ".log", "w"),
                                              env=dict(os.environ, RUST_LOG="warn")))
        for i in range(self.nodes):
            wait_port(PUSH_BASE + i)
        deadline = time.time() + 30
        while time.time() < deadline:
            states = [healthz(i).get("cluster", {}) for i in range(self.nodes)]
            if all(s.get("state") == "connected" and len(s.get("nodes", [])) == self.nodes
                   for s in states):
                return self
            time.sleep(0.2)
        raise RuntimeError("the cluster did not form")

    def __exit__(self, *exc):
        for hub in self.hubs:
            if hub.poll() is None:
                hub.send_signal(signal.SIGTERM)
        for hub in self.hubs:
            try:
                hub.wait(timeout=15)
            except subprocess.TimeoutExpired:
                hub.kill()
        self.redis.kill()
        self.redis.wait()


def loadgen(mode, args):
    cmd = [LOADGEN, mode, *args]
    log("$", " ".join(cmd))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def record(result):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


def idle(args):
    with Cluster(args.nodes) as cluster:
        for i in range(args.nodes):
            result = loadgen("idle", ["--url", f"ws://127.0.0.1:{WS_BASE + i}/rpc",
                                      "--conns", str(args.per_node), "--connect-rate", "5000",
                                      "--hold", "2", "--rss-of", str(cluster.hubs[i].pid),
                                      "--label", f"bench-{i}"])
            record({"scenario": "idle", "node": i, "nodes": args.nodes,
                    "connections": result.get("connected"),
                    "rss_per_conn_kib": result.get("rss_per_conn_kib"),
                    "connect_per_s": result.get("connect_rate")})


def latency(args):
    last = args.nodes - 1
    with Cluster(args.nodes):
        result = loadgen("fanout", [
            "--url", f"ws://127.0.0.1:{WS_BASE + last}/rpc", "--conns", str(args.subs),
            "--connect-rate", "5000", "--subscribe", SUBSCRIBE_RPC, "--await-ack",
            "--publish-url", f"http://127.0.0.1:{PUSH_BASE}/api/publish",
            "--header", "Content-Type: application/json",
            "--publish-body", '{"channel":"bench","data":"{payload}"}',
            "--probes", "10", "--probe-interval-ms", "200", "--rate", "100", "--secs", "10",
            "--label", "cross-node"])
        record({"scenario": "latency", "nodes": args.nodes, "subscribers": args.subs,
                "publish_node": 0, "subscriber_node": last,
                "latency": result.get("latency"), "throughput": result.get("throughput")})


class Receiver(http.server.ThreadingHTTPServer):
    """A notice receiver with room for a burst of connections (socketserver's default
    backlog of 5 made the hub's notices time out)."""

    request_queue_size = 4096
    daemon_threads = True


class Notices(http.server.BaseHTTPRequestHandler):
    """Counts SocketDock disconnect notices, and the distinct connections they name (and
    answers every POST 200, keeping the connection alive)."""

    protocol_version = "HTTP/1.1"
    count = 0
    ids = set()
    first = None
    last = None
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/disconnect":
            with Notices.lock:
                Notices.count += 1
                Notices.ids.add(json.loads(body)["connection_id"])
                now = time.time()
                Notices.first = Notices.first or now
                Notices.last = now
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def crash(args):
    server = Receiver(("127.0.0.1", NOTICE_PORT), Notices)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend = f"""
[backend]
kind = "http"
format = "socketdock"
url = "http://127.0.0.1:{NOTICE_PORT}/message"
disconnect_url = "http://127.0.0.1:{NOTICE_PORT}/disconnect"
"""
    with Cluster(args.nodes, backend) as cluster:
        holder = subprocess.Popen(
            [LOADGEN, "idle", "--url", f"ws://127.0.0.1:{WS_BASE}/ws", "--conns",
             str(args.crash), "--connect-rate", "5000", "--hold", "600"],
            stdout=subprocess.DEVNULL)
        deadline = time.time() + 300
        while healthz(0)["connections"] < args.crash:
            if time.time() > deadline:
                raise RuntimeError("the connections did not open")
            time.sleep(0.2)
        # Let the heartbeats and live-connection entries settle.
        time.sleep(3)
        killed = time.time()
        cluster.hubs[0].kill()
        deadline = killed + 120
        while len(Notices.ids) < args.crash and time.time() < deadline:
            time.sleep(0.05)
        holder.kill()
        holder.wait()
        record({"scenario": "crash", "nodes": args.nodes, "connections": args.crash,
                "notices": Notices.count, "connections_noticed": len(Notices.ids),
                "first_notice_s": round(Notices.first - killed, 3) if Notices.first else None,
                "last_notice_s": round(Notices.last - killed, 3) if Notices.last else None,
                "lease_ms": 10000, "reap_interval_ms": 1000})
    server.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--per-node", type=int, default=19000)
    parser.add_argument("--subs", type=int, default=19000)
    parser.add_argument("--crash", type=int, default=19000)
    parser.add_argument("--only", choices=["idle", "latency", "crash"], action="append")
    args = parser.parse_args()
    if not (os.path.exists(HUB) and os.path.exists(LOADGEN)):
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT, check=True)
    for name in args.only or ["idle", "latency", "crash"]:
        log("scenario", name)
        {"idle": idle, "latency": latency, "crash": crash}[name](args)


if __name__ == "__main__":
    main()
