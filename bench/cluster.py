#!/usr/bin/env python3
"""Benchmark several Switchboard nodes over one redis-server (the `[cluster]` section), and
sockudo with its Redis adapter beside them.

    python3 bench/run.py --only cluster             # the cells, in bench/results/latest.jsonl
                                                    # and BENCHMARKS.md's "Cluster" table
    python3 bench/cluster.py                        # the same cells, printed as JSON lines
    python3 bench/cluster.py --nodes 2 --per-node 500 --lat-subs 100 --crash 500   # quick

Cells, each on fresh processes (release binaries, `cargo build --release --workspace`):
- hold: --nodes x --per-node JSON-RPC subscribers of channel "bench", all open at once (one
  loadgen `fanout` over every node's URL, --await-ack, --rss-of every hub): (a) RSS per
  connection over all hubs, (c) --probes publishes on node 1, 5 s apart, each to every
  subscriber, time to the last delivery (median and max).
- latency: (b) cross-node publish -> delivery at 100 publishes/s: --lat-subs subscribers of
  channel "lat" on the last node, the publishes POSTed to the first node, while the rest of the
  --nodes x --per-node connections are held (subscribed to "bench") by idle loadgens, so that the
  nodes carry the whole population. (Every publish goes to --lat-subs subscribers: 100/s to all
  114,000 would be 11.4 million deliveries/s.)
- crash: (d) --crash SocketDock connections on the first node, then SIGKILL of that node: the
  time until a survivor has sent every disconnect notice (a small HTTP receiver counts them).
- sockudo-redis: the hold and latency cells against --sockudo-nodes sockudo processes with
  ADAPTER_DRIVER=redis on the same redis-server (binary: $SOCKUDO_REDIS, built with
  `cargo install sockudo --no-default-features --features local,redis`), at --sockudo-per-node.

Ports 35000-35999 on 127.0.0.1. Needs redis-server on PATH. Each result carries the machine's
load while it ran (bench/run.py's Load: loadavg at both ends, steal, other processes' CPU).
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  (Load, tree_rss_kib, LIVE)
import sockudo  # noqa: E402  (the app and environment of sockudo)

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HUB = os.path.join(TARGET, "release", "switchboard")
LOADGEN = os.path.join(TARGET, "release", "loadgen")
RESULTS = os.path.join(ROOT, "bench", "results", "cluster.jsonl")
REDIS_PORT = 35000
NOTICE_PORT = 35001
WS_BASE, PUSH_BASE, SOCKUDO_BASE = 35100, 35200, 35300
SUBSCRIBE_RPC = '{"jsonrpc":"2.0","method":"subscribe","params":{"channel":"%s"},"id":1}'
# sockudo built with its Redis adapter (`--features local,redis`); see sockudo_redis_exe().
SOCKUDO_REDIS_FEATURES = "local,redis"
LOADGEN_TIMEOUT = 1800


def log(*parts):
    print("==>", *parts, file=sys.stderr, flush=True)


# Where bench/run.py's install step builds it (`cargo install --root`), kept out of git.
SOCKUDO_REDIS_ROOT = os.path.join(ROOT, "bench", ".tools", "sockudo-redis")


def sockudo_redis_exe():
    """The sockudo binary with the Redis adapter: $SOCKUDO_REDIS, else the one bench/run.py
    installs under bench/.tools/sockudo-redis, else `sockudo-redis` on PATH."""
    installed = os.path.join(SOCKUDO_REDIS_ROOT, "bin", "sockudo")
    return (os.environ.get("SOCKUDO_REDIS")
            or (installed if os.path.exists(installed) else None)
            or shutil.which("sockudo-redis"))


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


class Redis:
    """A redis-server on REDIS_PORT, no persistence."""

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxclients", "10000"], stdout=subprocess.DEVNULL)
        machine.LIVE[self.proc.pid] = "redis-server"
        wait_port(REDIS_PORT)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        machine.LIVE.pop(self.proc.pid, None)


class Cluster:
    """A redis-server and `nodes` hubs on it, stopped on exit."""

    def __init__(self, nodes, backend=""):
        self.nodes = nodes
        self.backend = backend
        self.dir = tempfile.mkdtemp(prefix="sb-cluster-")

    def urls(self, nodes=None, path="/rpc"):
        return [f"ws://127.0.0.1:{WS_BASE + i}{path}" for i in (nodes or range(self.nodes))]

    def publish_args(self, node, channel):
        return ["--publish-url", f"http://127.0.0.1:{PUSH_BASE + node}/api/publish",
                "--header", "Content-Type: application/json",
                "--publish-body", '{"channel":"%s","data":"{payload}"}' % channel]

    def subscribe_args(self, channel):
        return ["--subscribe", SUBSCRIBE_RPC % channel, "--await-ack"]

    def __enter__(self):
        self.redis = Redis().__enter__()
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
            hub = subprocess.Popen([HUB, "--config", config], stderr=open(config + ".log", "w"),
                                   env=dict(os.environ, RUST_LOG="warn"))
            machine.LIVE[hub.pid] = f"switchboard-{i}"
            self.hubs.append(hub)
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

    @property
    def pids(self):
        return [h.pid for h in self.hubs]

    def __exit__(self, *exc):
        for hub in self.hubs:
            if hub.poll() is None:
                hub.send_signal(signal.SIGTERM)
        for hub in self.hubs:
            try:
                hub.wait(timeout=15)
            except subprocess.TimeoutExpired:
                hub.kill()
                hub.wait()
            machine.LIVE.pop(hub.pid, None)
        self.redis.__exit__(*exc)


class SockudoCluster:
    """A redis-server and `nodes` sockudo processes with ADAPTER_DRIVER=redis on it: the app,
    limits and drivers of bench/run.py's single sockudo, the adapter and cache on Redis."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.exe = sockudo_redis_exe()
        if not self.exe or not os.path.exists(self.exe):
            raise RuntimeError("no sockudo with the Redis adapter: set SOCKUDO_REDIS to a sockudo "
                               f"built with --features {SOCKUDO_REDIS_FEATURES}")

    def urls(self, nodes=None, path=None):
        return [f"ws://127.0.0.1:{SOCKUDO_BASE + i}/app/{sockudo.SOCKUDO_KEY}?protocol=7"
                for i in (nodes or range(self.nodes))]

    def publish_args(self, node, channel):
        return ["--publish-url",
                f"http://127.0.0.1:{SOCKUDO_BASE + node}/apps/{sockudo.SOCKUDO_APP}/events",
                "--pusher-auth", f"{sockudo.SOCKUDO_KEY}:{sockudo.SOCKUDO_SECRET}",
                "--header", "Content-Type: application/json",
                "--publish-body", '{"name":"bench","channel":"%s","data":"{payload}"}' % channel]

    def subscribe_args(self, channel):
        return ["--pusher", channel, "--await-ack"]

    def __enter__(self):
        self.redis = Redis().__enter__()
        self.procs, self.logs = [], []
        for i in range(self.nodes):
            env = sockudo.sockudo_env(SOCKUDO_BASE + i)
            # A Redis adapter needs the Redis cache too: sockudo refuses to start otherwise
            # ("clustered Ably compatibility and idempotency require cache.driver=redis").
            env.update({"ADAPTER_DRIVER": "redis", "CACHE_DRIVER": "redis",
                        "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/",
                        "DATABASE_REDIS_HOST": "127.0.0.1", "DATABASE_REDIS_PORT": str(REDIS_PORT),
                        "INSTANCE_PROCESS_ID": f"bench-{i}"})
            self.logs.append(os.path.join(tempfile.gettempdir(), f"bench-sockudo-redis-{i}.log"))
            logf = open(self.logs[-1], "w")
            proc = subprocess.Popen([self.exe], cwd=tempfile.mkdtemp(prefix="bench-sockudo-"),
                                    env=dict(os.environ, **env), stdout=logf,
                                    stderr=subprocess.STDOUT)
            machine.LIVE[proc.pid] = f"sockudo-redis-{i}"
            self.procs.append(proc)
        for i, proc in enumerate(self.procs):
            deadline = time.time() + 60
            while True:
                if proc.poll() is not None:
                    self.__exit__(None, None, None)
                    with open(self.logs[i]) as f:
                        tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
                    raise RuntimeError(f"sockudo {i} exited with {proc.returncode}: {tail[0]}")
                try:
                    socket.create_connection(("127.0.0.1", SOCKUDO_BASE + i), timeout=0.5).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        self.__exit__(None, None, None)
                        raise RuntimeError(f"sockudo {i}: nothing listens on {SOCKUDO_BASE + i}")
                    time.sleep(0.1)
        time.sleep(1)
        return self

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def __exit__(self, *exc):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            machine.LIVE.pop(proc.pid, None)
        self.redis.__exit__(*exc)


def loadgen(mode, args):
    """One loadgen run to its end: its JSON result, with the machine's load while it ran and
    the command."""
    cmd = [LOADGEN, mode, *args]
    log("$", " ".join(cmd))
    load = machine.Load()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=LOADGEN_TIMEOUT,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = load.done()
    result["command"] = "loadgen " + " ".join(
        a if " " not in a and "{" not in a else "'" + a + "'" for a in [mode, *args])
    return result


class Holder:
    """A background `loadgen idle` holding connections open until stopped; entered once every
    connection is open (its "connected N of M" line)."""

    def __init__(self, args):
        self.cmd = [LOADGEN, "idle", *args, "--hold", "3600"]

    def __enter__(self):
        log("$", " ".join(self.cmd), "&")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        machine.LIVE[self.proc.pid] = "loadgen-holder"
        connected = threading.Event()
        self.line = None

        def drain():
            for line in self.proc.stderr:
                if line.startswith("connected ") and not connected.is_set():
                    self.line = line.strip()
                    log("holder:", self.line)
                    connected.set()
            connected.set()

        threading.Thread(target=drain, daemon=True).start()
        if not connected.wait(600) or self.proc.poll() is not None:
            self.__exit__()
            raise RuntimeError(f"the holder did not connect: {self.line}")
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        machine.LIVE.pop(self.proc.pid, None)


def rss_pids(pids):
    out = []
    for pid in pids:
        out += ["--rss-of", str(pid)]
    return out


def hold(make, nodes, per_node, probes=5, connect_rate=10000, server="switchboard",
         probe_ms=5000):
    """(a) and (c): nodes x per_node subscribers of "bench" at once, then `probes` publishes on
    node 1, `probe_ms` apart (5 s: one publish to 114,000 took 2.7 s here, and publishes 1 s
    apart queued behind each other, which the last-delivery times then included)."""
    with make(nodes) as c:
        redis_before = machine.tree_rss_kib(c.redis.proc.pid)
        r = loadgen("fanout", ["--url", ",".join(c.urls()), "--conns", str(nodes * per_node),
                               "--connect-rate", str(connect_rate), "--connect-timeout", "60",
                               *c.subscribe_args("bench"), *c.publish_args(0, "bench"),
                               "--probes", str(probes), "--probe-interval-ms", str(probe_ms),
                               "--rate", "0", *rss_pids(c.pids), "--label", server])
        r["redis_rss_before_kib"] = redis_before
        r["redis_rss_after_kib"] = machine.tree_rss_kib(c.redis.proc.pid)
    r.update({"cell": "hold", "server": server, "nodes": nodes, "per_node": per_node,
              "publish_node": 0, "probe_interval_ms": probe_ms})
    return r


def latency(make, nodes, per_node, subs, rate=100, secs=10, held=True, connect_rate=10000,
            server="switchboard"):
    """(b): `subs` subscribers of "lat" on the last node, publishes at `rate`/s on the first;
    with `held`, the rest of nodes x per_node connections are held open (subscribed to "bench")
    meanwhile."""
    last = nodes - 1
    with make(nodes) as c:
        holders = []
        try:
            if held and nodes > 1 and per_node > 0:
                holders.append(Holder(["--url", ",".join(c.urls(range(last))),
                                       "--conns", str(last * per_node),
                                       "--connect-rate", str(connect_rate), "--connect-timeout",
                                       "60", *c.subscribe_args("bench"), "--label", "held"]))
            if held and per_node > subs:
                holders.append(Holder(["--url", c.urls([last])[0],
                                       "--conns", str(per_node - subs),
                                       "--connect-rate", str(connect_rate), "--connect-timeout",
                                       "60",
                                       *c.subscribe_args("bench"), "--label", "held-last"]))
            for h in holders:
                h.__enter__()
            held_lines = [h.line for h in holders]
            r = loadgen("fanout", ["--url", c.urls([last])[0], "--conns", str(subs),
                                   "--connect-rate", "5000", *c.subscribe_args("lat"),
                                   *c.publish_args(0, "lat"), "--probes", "10",
                                   "--probe-interval-ms", "200", "--rate", str(rate),
                                   "--secs", str(secs), "--label", server])
        finally:
            for h in reversed(holders):
                if hasattr(h, "proc"):
                    h.__exit__()
    held_count = sum(int(line.split()[1]) for line in held_lines if line) if held else 0
    r.update({"cell": "latency", "server": server, "nodes": nodes, "subscribers": subs,
              "publish_node": 0, "subscriber_node": last, "rate": rate,
              "held": held_count, "held_lines": held_lines})
    return r


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


def crash(nodes, conns):
    """(d): `conns` SocketDock connections on node 1, SIGKILL of node 1, time to every notice."""
    Notices.count, Notices.ids, Notices.first, Notices.last = 0, set(), None, None
    server = Receiver(("127.0.0.1", NOTICE_PORT), Notices)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend = f"""
[backend]
kind = "http"
format = "socketdock"
url = "http://127.0.0.1:{NOTICE_PORT}/message"
disconnect_url = "http://127.0.0.1:{NOTICE_PORT}/disconnect"
"""
    load = machine.Load()
    try:
        with Cluster(nodes, backend) as cluster:
            args = ["--url", f"ws://127.0.0.1:{WS_BASE}/ws", "--conns", str(conns),
                    "--connect-rate", "5000"]
            with Holder(args):
                # Let the heartbeats and live-connection entries settle.
                time.sleep(3)
                killed = time.time()
                cluster.hubs[0].kill()
                deadline = killed + 120
                while len(Notices.ids) < conns and time.time() < deadline:
                    time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    return {"cell": "crash", "server": "switchboard", "nodes": nodes, "connections": conns,
            "notices": Notices.count, "connections_noticed": len(Notices.ids),
            "first_notice_s": round(Notices.first - killed, 3) if Notices.first else None,
            "last_notice_s": round(Notices.last - killed, 3) if Notices.last else None,
            "lease_ms": 10000, "reap_interval_ms": 1000, "load": load.done(),
            "command": "loadgen idle " + " ".join(args) + " (then SIGKILL of node 1)"}


def cells(args):
    """Every cell `args` asks for, as (cell, server, function returning its result)."""
    out = []
    if "hold" in args.cells:
        out.append(("hold", "switchboard",
                    lambda: hold(Cluster, args.nodes, args.per_node, args.probes,
                                 probe_ms=args.probe_ms)))
    if "latency" in args.cells:
        out.append(("latency", "switchboard",
                    lambda: latency(Cluster, args.nodes, args.per_node, args.lat_subs,
                                    held=not args.latency_alone)))
    if "crash" in args.cells:
        out.append(("crash", "switchboard", lambda: crash(args.nodes, args.crash)))
    if "sockudo-redis" in args.cells:
        out.append(("hold", "sockudo-redis", lambda: hold(
            SockudoCluster, args.sockudo_nodes, args.sockudo_per_node, args.probes,
            connect_rate=5000, server="sockudo-redis", probe_ms=args.probe_ms)))
        out.append(("latency", "sockudo-redis", lambda: latency(
            SockudoCluster, args.sockudo_nodes, args.sockudo_per_node, args.lat_subs,
            held=not args.latency_alone, connect_rate=5000, server="sockudo-redis")))
    return out


CELLS = ["hold", "latency", "crash", "sockudo-redis"]


def parser(quick=False):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2 if quick else 6)
    p.add_argument("--per-node", type=int, default=500 if quick else 19000)
    p.add_argument("--probes", type=int, default=5, help="publishes to everyone")
    p.add_argument("--probe-ms", type=int, default=1000 if quick else 5000,
                   help="milliseconds between those publishes")
    p.add_argument("--lat-subs", type=int, default=100 if quick else 1000,
                   help="subscribers of the 100 publishes/s latency cell (on the last node)")
    p.add_argument("--latency-alone", action="store_true",
                   help="the latency cell without the other connections held")
    p.add_argument("--crash", type=int, default=500 if quick else 19000)
    p.add_argument("--sockudo-nodes", type=int, default=2)
    p.add_argument("--sockudo-per-node", type=int, default=500 if quick else 19000,
                   help="connections per sockudo process (about 143 KiB each)")
    p.add_argument("--cells", default=",".join(CELLS), type=lambda s: s.split(","),
                   help=f"comma-separated: {','.join(CELLS)}")
    return p


def main():
    args = parser().parse_args()
    if not (os.path.exists(HUB) and os.path.exists(LOADGEN)):
        subprocess.run(["cargo", "build", "--release", "--workspace"], cwd=ROOT, check=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    for cell, server, fn in cells(args):
        log("cell", cell, server)
        try:
            result = fn()
        except Exception as e:  # a peer that cannot run is reported, not fatal
            log(f"{cell} {server}: {e}")
            result = {"cell": cell, "server": server, "error": str(e)}
        with open(RESULTS, "a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
