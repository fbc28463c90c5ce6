#!/usr/bin/env python3
"""Run every benchmark scenario against Switchboard and its peers, and write BENCHMARKS.md.

    python3 bench/run.py              # everything, 3 runs per cell
    python3 bench/run.py --quick      # one short run each, small counts, into a temporary
                                      # directory: checks the setup, keeps the results
    python3 bench/run.py --only fanout  # one scenario again; the others' results are kept
    python3 bench/run.py --only memory --runs 1

Scenarios: idle, echo, relay, fanout, memory, cluster (bench/cluster.py's cells: 6 hubs x
19,000 connections over one redis-server, and sockudo with its Redis adapter). Peers: Node `ws` hub (bench/peers/node-hub),
sockudo (Pusher protocol, from crates.io), Pushpin and websocketd (Debian).

Installs what it needs from the package registries (Debian: pushpin, websocketd, nodejs, npm,
protobuf-compiler; npm: ws; crates.io: sockudo, built with `cargo install`, a long compile the
first time), builds the release binaries (`cargo build --release --workspace`), then for each
scenario and server starts a fresh server, drives it with `target/release/loadgen`, stops it.
Every run's raw result, with the machine's load while it ran, is appended to
bench/results/latest.jsonl (rewritten each full run; a --quick run writes its own in a
temporary directory). A run measured in a noisy window (steal or other processes' CPU above
NOISY_*) is run once more and the quieter kept.

Servers listen on --port-base..+99 (default 34000), reserved in ip_local_reserved_ports for
the run so that no client socket can hold them; before a server starts and after it stops the
harness waits for the previous run's sockets on those ports to be gone. Every loadgen run is
bounded (its phases, a 60 s drain at most, and LOADGEN_TIMEOUT here).
Needs root for apt-get and the sysctls (both best effort).
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402  (the cluster scenario's cells)
from machine import (LIVE, NOISY_OTHER_CORES, NOISY_STEAL_PCT, Load,  # noqa: E402
                     tree_rss_kib)
from sockudo import SOCKUDO_APP, SOCKUDO_KEY, SOCKUDO_SECRET, sockudo_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HUB = os.path.join(TARGET, "release", "switchboard")
LOADGEN = os.path.join(TARGET, "release", "loadgen")
NODE_HUB = os.path.join(ROOT, "bench", "peers", "node-hub")
RESULTS = os.path.join(ROOT, "bench", "results", "latest.jsonl")

# Every server port is PORT_BASE + an offset (--port-base, default 34000). The harness reserves
# PORT_BASE..PORT_BASE+99 in net.ipv4.ip_local_reserved_ports for the run, so that no client
# socket (the widened ephemeral range holds tens of thousands) can be given a port the next
# server must bind.
PORT_BASE = 34000
PORT_SPAN = 100
CLUSTER_PORTS = "35000-35999"  # bench/cluster.py's redis-server, hubs and sockudo instances
OFFSETS = {"backend": 0, "pushpin_push_in": 60, "pushpin_publish": 61, "pushpin_push_sub": 62,
           "pushpin_command": 63, "sockudo": 70, "hub_ws": 80, "hub_push": 81, "node": 90,
           "websocketd": 95, "pushpin": 99}


def port(name):
    return PORT_BASE + OFFSETS[name]


# sockudo: Pusher-protocol server in Rust, built from crates.io with its local (single node)
# drivers only; one app with a known id, key and secret, its limits raised above any run's.
SOCKUDO_VERSION = "5.2.0"
SOCKUDO_INSTALL = ["cargo", "install", "sockudo", "--version", SOCKUDO_VERSION,
                   "--no-default-features", "--features", "local"]

SUBSCRIBE_RPC = '{"jsonrpc":"2.0","method":"subscribe","params":{"channel":"bench"},"id":1}'


def log(*parts):
    print("==>", *parts, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    log("$", " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


def install():
    """Peers from Debian's packages and npm; the binaries from this repo."""
    missing = [p for p, exe in [("pushpin", "pushpin"), ("websocketd", "websocketd"),
                                ("nodejs", "node"), ("npm", "npm")] if not shutil.which(exe)]
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh(["apt-get", "update", "-qq"], env=env)
        sh(["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=subprocess.DEVNULL)
    if not os.path.isdir(os.path.join(NODE_HUB, "node_modules", "ws")):
        sh(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_HUB)
    if sockudo_version() != SOCKUDO_VERSION:
        log(f"sockudo {SOCKUDO_VERSION} is not installed: building it from crates.io with "
            f"`{' '.join(SOCKUDO_INSTALL)}` (a long compile: about 30-60 minutes on 2 cores; "
            "it needs Debian's protobuf-compiler, installed first if missing)")
        if not shutil.which("protoc"):
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            sh(["apt-get", "install", "-y", "-qq", "protobuf-compiler"], env=env,
               stdout=subprocess.DEVNULL)
        sh(SOCKUDO_INSTALL)
    # The cluster scenario's peer: sockudo with its Redis adapter, a second build kept apart
    # (the crate's features are fixed at build time).
    if not os.path.exists(os.path.join(cluster.SOCKUDO_REDIS_ROOT, "bin", "sockudo")):
        log("sockudo with its Redis adapter is not installed: building it (another long compile)")
        sh(["cargo", "install", "sockudo", "--version", SOCKUDO_VERSION, "--no-default-features",
            "--features", cluster.SOCKUDO_REDIS_FEATURES, "--root", cluster.SOCKUDO_REDIS_ROOT])
    sh(["cargo", "build", "--release", "--workspace"], cwd=ROOT)


def sockudo_exe():
    return shutil.which("sockudo") or os.path.expanduser("~/.cargo/bin/sockudo")


def sockudo_version():
    """The installed sockudo's version, or None."""
    try:
        out = subprocess.run([sockudo_exe(), "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def read_sysctl(name):
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def write_sysctl(name, value):
    try:
        with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
            # A newline, so that an empty value (no reserved ports) is written too.
            f.write(value + "\n")
        return True
    except OSError as e:
        log(f"cannot set {name} ({e})")
        return False


RESERVED_BEFORE = None


def prepare_ports():
    """Widen the ephemeral range for 19k client connections, and keep the servers' ports out of
    it: PORT_BASE..PORT_BASE+99 are added to ip_local_reserved_ports (restored at exit)."""
    global RESERVED_BEFORE
    write_sysctl("net.ipv4.ip_local_port_range", "10000 65000")
    RESERVED_BEFORE = read_sysctl("net.ipv4.ip_local_reserved_ports")
    ours = f"{PORT_BASE}-{PORT_BASE + PORT_SPAN - 1},{CLUSTER_PORTS}"
    merged = ",".join(x for x in [RESERVED_BEFORE, ours] if x)
    if RESERVED_BEFORE is not None and write_sysctl("net.ipv4.ip_local_reserved_ports", merged):
        atexit.register(write_sysctl, "net.ipv4.ip_local_reserved_ports", RESERVED_BEFORE)
    else:
        log(f"ports {ours} are not reserved: a client socket may hold a server's port")


TCP_TIME_WAIT = "06"
TCP_LISTEN = "0A"


def tcp_sockets():
    """(local port, remote port, state) of every TCP socket, from /proc/net/tcp and tcp6."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    out.append((int(parts[1].rsplit(":", 1)[1], 16),
                                int(parts[2].rsplit(":", 1)[1], 16), parts[3]))
        except OSError:
            pass
    return out


def wait_sockets_gone(ports, timeout=60.0):
    """Wait until no TCP socket but those in TIME_WAIT uses any of `ports`, locally or remotely:
    the previous run's connections are gone and nothing holds a port the next server binds.
    (TIME_WAIT does not stop a server from binding: every server here sets SO_REUSEADDR.)"""
    ports = set(ports)
    deadline = time.time() + timeout
    while True:
        busy = [s for s in tcp_sockets() if s[2] != TCP_TIME_WAIT
                and (s[0] in ports or s[1] in ports)]
        if not busy or time.time() > deadline:
            if busy:
                log(f"{len(busy)} sockets still use ports {sorted(ports)} after {timeout:.0f}s")
            return len(busy)
        time.sleep(0.25)


def wait_port(port, host="127.0.0.1", timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")




class Server:
    """A process group started for one run and stopped after it."""

    def __init__(self, name, cmd, port, cwd=None, extra_ports=(), env=None):
        self.name, self.cmd, self.port, self.cwd = name, cmd, port, cwd
        self.extra_ports = extra_ports
        self.env = env
        self.proc = None

    def __enter__(self):
        # Nothing but TIME_WAIT may be left on the ports this server binds.
        wait_sockets_gone((self.port, *self.extra_ports))
        self.logfile = tempfile.NamedTemporaryFile(prefix=f"bench-{self.name}-", suffix=".log",
                                                   delete=False)
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=None if self.env is None else dict(os.environ, **self.env))
        LIVE[self.proc.pid] = self.name
        try:
            for port in (self.port, *self.extra_ports):
                wait_port(port)
        except RuntimeError:
            self.__exit__(None, None, None)
            raise
        time.sleep(0.5)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if self.proc:
            LIVE.pop(self.proc.pid, None)
        # The previous run's sockets are gone before the next run starts.
        wait_sockets_gone((self.port, *self.extra_ports))


def switchboard(config):
    """The hub with bench/configs/CONFIG, its ports moved to this run's (the files hold the
    default --port-base)."""
    text = open(os.path.join(ROOT, "bench", "configs", config)).read()
    for name in ("hub_ws", "hub_push", "backend"):
        text = text.replace(f"127.0.0.1:{34000 + OFFSETS[name]}", f"127.0.0.1:{port(name)}")
    path = os.path.join(tempfile.gettempdir(), f"bench-switchboard-{PORT_BASE}-{config}")
    with open(path, "w") as f:
        f.write(text)
    return Server("switchboard", [HUB, "--config", path],
                  port('hub_ws'), extra_ports=(port('hub_push'),))


def sockudo():
    """sockudo with its local drivers (see sockudo_env)."""
    env = sockudo_env(port("sockudo"))
    # Its own empty directory: sockudo reads config/config.toml from the working directory.
    return Server("sockudo", [sockudo_exe()], port("sockudo"),
                  cwd=tempfile.mkdtemp(prefix="bench-sockudo-"), env=env)


def sockudo_ws(channel):
    """loadgen's flags for a Pusher-protocol client of sockudo's app; subscribed to `channel`
    unless it is empty."""
    return ["--url", f"ws://127.0.0.1:{port('sockudo')}/app/{SOCKUDO_KEY}?protocol=7",
            "--pusher", channel]


def node_hub():
    return Server("node-ws", ["node", "hub.js", str(port('node'))], port('node'), cwd=NODE_HUB)


def websocketd():
    return Server("websocketd", ["websocketd", f"--port={port('websocketd')}", "--address=127.0.0.1",
                                 "--loglevel=error", "cat"], port('websocketd'))


def backend():
    return Server("mock-backend", [LOADGEN, "backend", "--listen", f"127.0.0.1:{port('backend')}"],
                  port('backend'))


PUSHPIN_DIR = None


def pushpin():
    """Pushpin from its Debian package, in WebSocket-over-HTTP mode in front of the mock
    backend. Its default publish rate limits (message_rate=2500/s, message_hwm=25000) are
    raised so that fan-out to 19k subscribers is not throttled by configuration."""
    global PUSHPIN_DIR
    PUSHPIN_DIR = tempfile.mkdtemp(prefix="bench-pushpin-")
    run = os.path.join(PUSHPIN_DIR, "run")
    os.makedirs(run)
    os.makedirs(os.path.join(PUSHPIN_DIR, "log"))
    with open(os.path.join(PUSHPIN_DIR, "routes"), "w") as f:
        f.write(f"* 127.0.0.1:{port('backend')},over_http\n")
    replace = {
        "include": "include=/usr/lib/pushpin/internal.conf",
        "rundir": f"rundir={run}",
        "logdir": f"logdir={os.path.join(PUSHPIN_DIR, 'log')}",
        "http_port": f"http_port={port('pushpin')}",
        "routesfile": f"routesfile={os.path.join(PUSHPIN_DIR, 'routes')}",
        "services": "services=condure,zurl,pushpin-proxy,pushpin-handler",
        "message_rate": "message_rate=1000000",
        "message_hwm": "message_hwm=10000000",
        "log_level": "log_level=1",
        "push_in_spec": f"push_in_spec=tcp://127.0.0.1:{port('pushpin_push_in')}",
        "push_in_sub_specs": f"push_in_sub_specs=tcp://127.0.0.1:{port('pushpin_push_sub')}",
        "push_in_http_port": f"push_in_http_port={port('pushpin_publish')}",
        "command_spec": f"command_spec=tcp://127.0.0.1:{port('pushpin_command')}",
    }
    lines = []
    for line in open("/etc/pushpin/pushpin.conf"):
        key = line.split("=", 1)[0].strip()
        lines.append(replace.get(key, line.rstrip("\n")) if "=" in line and not line.startswith("#")
                     else line.rstrip("\n"))
        if line.strip() == "[proxy]":
            # The proxy reaches the backend through the zurl the runner starts.
            lines += [f"zurl_out_specs=ipc://{run}/pushpin-zurl-in",
                      f"zurl_out_stream_specs=ipc://{run}/pushpin-zurl-in-stream",
                      f"zurl_in_specs=ipc://{run}/pushpin-zurl-out"]
    config = os.path.join(PUSHPIN_DIR, "pushpin.conf")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Server("pushpin", ["pushpin", "--config", config, "--merge-output", "--loglevel=1"],
                  port('pushpin'), extra_ports=(port('pushpin_publish'),))


LOADGEN_TIMEOUT = 900  # seconds one loadgen run may take at most


def loadgen(mode, args, key, label, during=None):
    """One loadgen run; its JSON result, tagged with the scenario key and the machine's load
    while it ran. `during(proc)`, if given, runs while loadgen does (a profiler)."""
    cmd = [LOADGEN, mode, *args, "--label", label]
    log("$", " ".join(cmd))
    load = Load()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    if during:
        during(proc)
    try:
        stdout, _ = proc.communicate(timeout=LOADGEN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"loadgen did not finish within {LOADGEN_TIMEOUT}s")
    if proc.returncode != 0 or not stdout.strip():
        raise RuntimeError(f"loadgen exited with status {proc.returncode} (its stderr is above)")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["key"] = key
    result["rev"] = REV
    result["date"] = RUN_STARTED
    result["load"] = load.done()
    result["command"] = "loadgen " + " ".join(
        a if " " not in a and "{" not in a else "'" + a + "'" for a in [mode, *args])
    return result


class Bench:
    def __init__(self, runs, quick):
        self.runs, self.quick = runs, quick
        self.results = {}  # key -> server label -> [result]
        self.errors = {}  # (key, label) -> message
        self.rerun_noisy = True
        self.deadline = float("inf")  # time.time() after which no further run starts
        self.profile_rate = 40000
        self.durations = {}  # scenario -> seconds it took in this run

    def once(self, key, label, start, mode, args, rss, during):
        with start() as server:
            extra = ["--rss-of", str(server.pid)] if rss else []
            rss_start = tree_rss_kib(server.pid)
            result = loadgen(mode, args + extra, key, label,
                             during=during and (lambda proc: during(server, proc)))
            # Every client has gone: what the server still holds of the load.
            time.sleep(3)
            result["rss_start_kib"] = rss_start
            result["rss_left_kib"] = tree_rss_kib(server.pid)
        return result

    def repeat(self, key, label, start, mode, args, rss=False, runs=None, during=None):
        """`runs` times: start the server(s) fresh, run loadgen, keep the result. A run measured
        in a noisy window (see NOISY_*) is run once more, and the quieter of the two is kept."""
        for _ in range(runs or self.runs):
            if time.time() > self.deadline:
                log(f"{key} {label}: skipped, the run's --deadline has passed")
                self.errors.setdefault((key, label), "not run: the run's --deadline had passed")
                return
            try:
                result = self.once(key, label, start, mode, args, rss, during)
                if result["load"]["noisy"] and self.rerun_noisy:
                    log(f"{key} {label}: noisy window ({result['load']}), running it once more")
                    again = self.once(key, label, start, mode, args, rss, during)
                    first = result
                    result = min([first, again], key=lambda r: (r["load"]["noisy"],
                                                                r["load"]["other_cores"]))
                    result["load"]["rerun_of"] = {k: first["load"][k] for k in
                                                  ("steal_pct", "other_cores", "noisy")}
                    result["load"]["rerun"] = True
            except Exception as e:  # a peer that cannot run the scenario is reported, not fatal
                log(f"{key} {label}: {e}")
                self.errors[(key, label)] = str(e)
                return
            with open(RESULTS, "a") as f:
                f.write(json.dumps(result) + "\n")
            self.results.setdefault(key, {}).setdefault(label, []).append(result)

    def conns(self, n):
        return min(n, 2000) if self.quick else n

    def secs(self, s):
        return min(s, 3) if self.quick else s

    def idle(self):
        for n in (1000, 5000, 19000):
            n = self.conns(n)
            key = f"idle-{n}"
            common = ["--conns", str(n), "--hold", "1"]
            self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "idle",
                        ["--url", f"ws://127.0.0.1:{port('hub_ws')}/ws", "--connect-rate", "30000"] + common,
                        rss=True)
            self.repeat(key, "node-ws", node_hub, "idle",
                        ["--url", f"ws://127.0.0.1:{port('node')}/echo", "--connect-rate", "30000"]
                        + common, rss=True)
            self.repeat(key, "sockudo", sockudo, "idle", sockudo_ws("") + ["--connect-rate", "30000"]
                        + common, rss=True)
            self.repeat(key, "pushpin", with_backend(pushpin), "idle",
                        ["--url", f"ws://127.0.0.1:{port('pushpin')}/echo", "--connect-rate", "500",
                         "--connect-timeout", "30"] + common, rss=True)

    def echo(self):
        n = self.conns(1000)
        key = f"echo-closed-{n}"
        args = ["--conns", str(n), "--rate", "0", "--secs", str(self.secs(10))]
        self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "echo",
                    ["--url", f"ws://127.0.0.1:{port('hub_ws')}/ws", "--connect-rate", "10000"] + args)
        self.repeat(key, "node-ws", node_hub, "echo",
                    ["--url", f"ws://127.0.0.1:{port('node')}/echo", "--connect-rate", "10000"] + args)
        # websocketd starts a process (here `cat`) per connection; 1,000 is what it holds here.
        self.repeat(key, "websocketd", websocketd, "echo",
                    ["--url", f"ws://127.0.0.1:{port('websocketd')}/", "--connect-rate", "1000"] + args)
        n = self.conns(19000)
        key = f"echo-1ps-{n}"
        args = ["--conns", str(n), "--connect-rate", "10000", "--rate", "1",
                "--secs", str(self.secs(20))]
        self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "echo",
                    ["--url", f"ws://127.0.0.1:{port('hub_ws')}/ws"] + args)
        self.repeat(key, "node-ws", node_hub, "echo",
                    ["--url", f"ws://127.0.0.1:{port('node')}/echo"] + args)

    def fanout_cell(self, key, common, pushpin_runs=None, peers=None, rss=False):
        """One fan-out cell for every peer that has a publish API."""
        peers = peers or ["switchboard", "node-ws", "sockudo", "pushpin"]
        if "switchboard" in peers:
            self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "fanout",
                        ["--url", f"ws://127.0.0.1:{port('hub_ws')}/rpc", "--connect-rate", "10000",
                         "--subscribe", SUBSCRIBE_RPC, "--await-ack",
                         "--publish-url", f"http://127.0.0.1:{port('hub_push')}/api/publish",
                         "--header", "Content-Type: application/json",
                         "--publish-body", '{"channel":"bench","data":"{payload}"}'] + common, rss=rss)
        if "node-ws" in peers:
            self.repeat(key, "node-ws", node_hub, "fanout",
                        ["--url", f"ws://127.0.0.1:{port('node')}/sub", "--connect-rate", "10000",
                         "--publish-url", f"http://127.0.0.1:{port('node')}/publish",
                         "--publish-body", "{payload}"] + common, rss=rss)
        if "sockudo" in peers:
            self.repeat(key, "sockudo", sockudo, "fanout",
                        sockudo_ws("bench") + ["--await-ack", "--connect-rate", "10000",
                         "--publish-url",
                         f"http://127.0.0.1:{port('sockudo')}/apps/{SOCKUDO_APP}/events",
                         "--pusher-auth", f"{SOCKUDO_KEY}:{SOCKUDO_SECRET}",
                         "--header", "Content-Type: application/json",
                         "--publish-body", '{"name":"bench","channel":"bench","data":"{payload}"}']
                        + common, rss=rss)
        if "pushpin" in peers:
            # 250/s: at 500/s, subscribing connections saturate both cores (pushpin-handler,
            # zurl, pushpin-proxy) and one connect in six fails with 502.
            self.repeat(key, "pushpin", with_backend(pushpin), "fanout",
                        ["--url", f"ws://127.0.0.1:{port('pushpin')}/fanout", "--connect-rate", "250",
                         "--connect-timeout", "60",
                         "--publish-url", f"http://127.0.0.1:{port('pushpin_publish')}/publish/",
                         "--publish-body",
                         '{"items":[{"channel":"bench","formats":{"ws-message":{"content":"{payload}"}}}]}']
                        + common, runs=pushpin_runs, rss=rss)

    def memory(self):
        """Memory per connection after traffic: 10 publications of 4 KiB to 19k subscribers
        (500 ms apart), and one of 64 KiB to 5k, read again 5 s later, connections still open."""
        n = self.conns(19000)
        self.fanout_cell(f"mem4k-{n}", ["--conns", str(n), "--probes", "10",
                                        "--probe-interval-ms", "500", "--size", "4096",
                                        "--rate", "0", "--quiet-secs", "0.5"],
                         rss=True,
                         # Pushpin's fan-out at 19k fails (see the fan-out tables).
                         peers=["switchboard", "node-ws", "sockudo"])
        n = self.conns(5000)
        self.fanout_cell(f"mem64k-{n}", ["--conns", str(n), "--probes", "1", "--size", "65536",
                                         "--rate", "0", "--quiet-secs", "0.5",
                                         "--rss-again-after", "5"],
                         pushpin_runs=1, rss=True)

    def cluster(self):
        """bench/cluster.py's cells: several hubs over one redis-server, and sockudo with its
        Redis adapter; --quick: 2 nodes x 500."""
        args = cluster.parser(quick=self.quick).parse_args([])
        for cell, label, fn in cluster.cells(args):
            key = f"cluster-{cell}"
            if time.time() > self.deadline:
                self.errors.setdefault((key, label), "not run: the run's --deadline had passed")
                continue
            log(f"cluster: {cell} {label}")
            try:
                result = fn()
            except Exception as e:  # a peer that cannot run the cell is reported, not fatal
                log(f"{key} {label}: {e}")
                self.errors[(key, label)] = str(e)
                continue
            result.update({"key": key, "label": label, "rev": REV, "date": RUN_STARTED})
            with open(RESULTS, "a") as f:
                f.write(json.dumps(result) + "\n")
            self.results.setdefault(key, {}).setdefault(label, []).append(result)

    def relay(self):
        n = self.conns(19000)
        key = f"relay-seed-{n}"
        args = ["--conns", str(n), "--rate", "0.1", "--secs", str(self.secs(60))]
        self.repeat(key, "switchboard", with_backend(lambda: switchboard("relay.toml")), "echo",
                    ["--url", f"ws://127.0.0.1:{port('hub_ws')}/{{n}}", "--connect-rate", "4000"] + args)
        self.repeat(key, "pushpin", with_backend(pushpin), "echo",
                    ["--url", f"ws://127.0.0.1:{port('pushpin')}/echo", "--connect-rate", "500",
                     "--connect-timeout", "30"] + args)
        n = self.conns(1000)
        key = f"relay-max-{n}"
        steps = "10000,20000,30000,35000,40000,45000,50000,55000,60000,70000"
        self.repeat(key, "switchboard", with_backend(lambda: switchboard("relay.toml")), "echo",
                    ["--url", f"ws://127.0.0.1:{port('hub_ws')}/{{n}}", "--conns", str(n),
                     "--connect-rate", "4000", "--steps", steps, "--secs", str(self.secs(5))])
        # Where the hub's time goes at a fixed rate near the limit: perf samples the hub for
        # PROFILE_SECS in the middle of one 12 s step; the top entries go to the report.
        rate = self.profile_rate
        self.repeat(f"relay-profile-{n}", "switchboard",
                    with_backend(lambda: switchboard("relay.toml")), "echo",
                    ["--url", f"ws://127.0.0.1:{port('hub_ws')}/{{n}}", "--conns", str(n),
                     "--connect-rate", "4000", "--steps", str(rate), "--max-p99-ms", "100000",
                     "--secs", str(self.secs(12))], runs=1, during=profile_hub)
        self.repeat(key, "pushpin", with_backend(pushpin), "echo",
                    ["--url", f"ws://127.0.0.1:{port('pushpin')}/echo", "--conns", str(n),
                     "--connect-rate", "500", "--steps", "250,500,1000,2000,4000,8000",
                     "--secs", str(self.secs(5))])

    def fanout(self):
        for n in (1000, 19000):
            n = self.conns(n)
            # At 19k subscribers Pushpin's publish endpoint times out and almost every publish
            # fails (seen in every attempt), so that cell is run once rather than spend a
            # quarter of an hour failing.
            self.fanout_cell(f"fanout-{n}", ["--conns", str(n), "--probes", "10",
                                             "--probe-interval-ms", "500", "--rate", "25",
                                             "--secs", str(self.secs(10))],
                             pushpin_runs=1 if n > 5000 else None)


PROFILE_SECS = 8


def profile_hub(server, loadgen_proc):
    """Sample the hub with perf while loadgen runs (after its connections are up); write the
    top entries (self time) by thread and by symbol to bench/results/relay-profile.txt."""
    if not shutil.which("perf"):
        log("perf not found (Debian's linux-perf): no profile")
        return
    data = os.path.join(tempfile.gettempdir(), f"bench-relay-{server.pid}.perf")
    # 1,000 connections at 4,000/s, then the step starts: begin sampling 2 s into it.
    time.sleep(0.25 + 2.0 + 2.0)
    rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "999", "-g", "-p",
                          str(server.pid), "-o", data, "--", "sleep", str(PROFILE_SECS)],
                         capture_output=True, text=True)
    if rec.returncode != 0:
        log(f"perf record failed: {rec.stderr.strip()[-300:]}")
        return
    sections = []
    for title, sort in [("by thread", "tid"), ("by binary (kernel, hub, libc)", "dso"),
                        ("by symbol (self time)", "dso,symbol")]:
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "--sort", sort, "-g", "none", "--percent-limit", "0.7"],
                             capture_output=True, text=True)
        rows = [re.sub(r"(\s+-)+\s*$", "", l.rstrip()) for l in rep.stdout.splitlines()
                if l.strip() and not l.startswith("#")]
        sections.append((title, rows[:25]))
    os.remove(data)
    path = os.path.join(os.path.dirname(RESULTS), "relay-profile.txt")
    with open(path, "w") as f:
        f.write(f"perf record -e cpu-clock -F 999 -g -p HUB -- sleep {PROFILE_SECS}, during "
                f"`{' '.join(loadgen_proc.args[1:])}`\n")
        for title, rows in sections:
            f.write(f"\n{title}:\n" + "\n".join(rows) + "\n")
    log(f"wrote {path}")


class with_backend:
    """Start the mock backend, then the server in front of it."""

    def __init__(self, server):
        self.server = server

    def __call__(self):
        return self

    def __enter__(self):
        self.backend = backend().__enter__()
        try:
            self.front = self.server().__enter__()
        except Exception:
            self.backend.__exit__(None, None, None)
            raise
        return self.front

    def __exit__(self, *exc):
        self.front.__exit__(*exc)
        self.backend.__exit__(*exc)


# ---------------------------------------------------------------------------------------------
# The report

def pick(result, path):
    for part in path.split("."):
        if result is None:
            return None
        if part.isdigit() or part == "-1":
            result = result[int(part)] if result else None
        else:
            result = result.get(part)
    return result


def best_step(result, limit_us=20000):
    """The highest step that kept p99 within the limit and lost nothing."""
    ok = [s for s in result.get("steps", []) if s["p99_us"] <= limit_us and s["lost"] == 0
          and s["answered"] > 0]
    return max(ok, key=lambda s: s["msgs_per_s"]) if ok else None


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float) and v < 100 and v != int(v):
        return f"{v:.2f}{unit}"
    return f"{round(v):,}{unit}"


def stat(values, unit=""):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a", None
    med = statistics.median(values)
    if len(values) == 1:
        return f"{fmt(med, unit)}", med
    return f"{fmt(med, unit)} ({fmt(min(values), unit)}-{fmt(max(values), unit)})", med


def ratio(ours, theirs, lower_is_better=False):
    """Switchboard / peer, from the same run (for memory and latency below 1 is better)."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


def table(bench, key, columns, headline, lower_is_better=False):
    """Rows: servers; columns: (title, function of a result); headline: the column the
    Switchboard/peer ratio is computed on."""
    per_server = bench.results.get(key, {})
    out = ["| server | runs | " + " | ".join(t for t, _ in columns)
           + f" | Switchboard / this peer ({headline}) | other load, cores | steal % |",
           "|---|---|" + "---|" * len(columns) + "---|---|---|"]
    ours = None
    rows = []
    for label in PEERS:
        if (key, label) in bench.errors and label not in per_server:
            rows.append((label, f"| {label} | 0 | could not run: {bench.errors[(key, label)]} "
                                + "| " * len(columns) + "| | |"))
            continue
        results = per_server.get(label)
        if not results:
            continue
        cells, head = [], None
        for title, fn in columns:
            text, med = stat([fn(r) for r in results], "")
            cells.append(text)
            if title == headline:
                head = med
        if label == "switchboard":
            ours = head
        load_cells = [stat([pick(r, "load.other_cores") for r in results])[0],
                      stat([pick(r, "load.steal_pct") for r in results])[0]]
        reruns = sum(1 for r in results if pick(r, "load.rerun"))
        if reruns:
            load_cells[0] += f" ({reruns} rerun{'s' if reruns > 1 else ''})"
        if any(pick(r, "load.noisy") for r in results):
            load_cells[0] += " **noisy**"
        rows.append((label, head, cells + load_cells, len(results)))
    for row in rows:
        if isinstance(row[1], str):
            out.append(row[1])
            continue
        label, head, cells, n = row
        r = "-" if label == "switchboard" else ratio(ours, head, lower_is_better)
        k = len(columns)
        out.append(f"| {label} | {n} | " + " | ".join(cells[:k]) + f" | {r} | "
                   + " | ".join(cells[k:]) + " |")
    # One line per distinct command, servers in table order; the PID an idle run reads differs per run.
    commands = list(dict.fromkeys(
        re.sub(r"--rss-of \d+", "--rss-of PID", r["command"])
        for label in PEERS
        for r in per_server.get(label, [])))
    return "\n".join(out) + "\n\nCommands (server started fresh for each run):\n" + "\n".join(
        f"- `{c}`" for c in commands) + "\n"


MEASURED_REV = None  # --rev: the commit that results without a "rev" field were measured at
MEASURED_AT = None  # --measured-at: when results without a "date" field were measured
RUN_STARTED = None  # this run's start, recorded in every result
REV = None  # this run's commit, recorded in every result
RUN_ARGS = ""  # this run's command-line flags, for the report
SCENARIOS = ["idle", "echo", "relay", "fanout", "memory", "cluster"]
PEERS = ["switchboard", "node-ws", "sockudo", "pushpin", "websocketd", "sockudo-redis"]


def scenario_of(key):
    """The scenario (--only name) a result key belongs to."""
    head = key.split("-")[0]
    return "memory" if head.startswith("mem") else head


def versions():
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return "not found"
    ws = "not installed"
    try:
        ws = json.load(open(os.path.join(NODE_HUB, "node_modules", "ws", "package.json")))["version"]
    except Exception:
        pass
    rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    # Only changes to what the measured binaries are built from count (not this report).
    dirty = run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--",
                 "src", "Cargo.toml", "Cargo.lock", "bench/loadgen", "bench/configs"])
    return {
        "switchboard": rev + (" (with uncommitted changes)" if dirty else ""),
        "node": run(["node", "--version"]),
        "ws": ws,
        "pushpin": run(["dpkg-query", "-W", "-f=${Version}", "pushpin"]),
        "websocketd": run(["dpkg-query", "-W", "-f=${Version}", "websocketd"]),
        "sockudo": sockudo_version() or "not installed",
    }


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    return (f"{os.cpu_count()} cores ({cpu}), {int(mem) / 1048576:.0f} GiB, Linux "
            f"{platform.release()}; load generator, servers and mock backend share these cores")


START, END = "<!-- bench/run.py: generated from here -->", "<!-- bench/run.py: generated to here -->"


def median_of(bench, key, label, fn):
    values = [fn(r) for r in bench.results.get(key, {}).get(label, [])]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def per_conn_growth(r, at):
    """KiB per connection that the server's RSS at `at` is above its RSS with the same
    connections open and idle (before any publish)."""
    if r.get(at) is None or not r.get("rss_after_kib") or not r.get("connected"):
        return None
    return (r[at] - r["rss_after_kib"]) / r["connected"]


def measures(bench):
    """The goals, as (measure, goal, unit, key, function of a result, bound, lower is better)."""
    n19, n1, n5 = bench.conns(19000), bench.conns(1000), bench.conns(5000)
    return [
        ("RSS per idle connection at 19k", "<= 4 KiB", "KiB", f"idle-{n19}",
         lambda r: r["rss_per_conn_kib"], 4, True),
        ("RSS per connection after 10 publications of 4 KiB (19k)", "<= 5 KiB", "KiB",
         f"mem4k-{n19}", lambda r: r.get("rss_per_conn_after_latency_kib"), 5, True),
        ("growth after one 64 KiB message per connection (5k), at once", "-", "KiB",
         f"mem64k-{n5}", lambda r: per_conn_growth(r, "rss_after_latency_kib"), None, True),
        ("... and 5 s later (buffers released?)", "<= 2 KiB", "KiB", f"mem64k-{n5}",
         lambda r: per_conn_growth(r, "rss_later_kib"), 2, True),
        ("publish -> last delivery, 19k subscribers", "<= 60 ms", "ms", f"fanout-{n19}",
         lambda r: pick(r, "latency.last_delivery_ms_median"), 60, True),
        ("publish -> last delivery, 1k subscribers", "<= 3 ms", "ms", f"fanout-{n1}",
         lambda r: pick(r, "latency.last_delivery_ms_median"), 3, True),
        ("deliveries/s, 19k subscribers x 25 publishes/s offered", ">= 475,000/s", "/s",
         f"fanout-{n19}", lambda r: pick(r, "throughput.deliveries_per_s"), 475000, False),
        ("... deliveries missing or publishes not made", "0", "", f"fanout-{n19}",
         lambda r: (pick(r, "throughput.missing") or 0) + (pick(r, "throughput.publish_errors") or 0),
         0, True),
        ("connect rate, 19k ramp", ">= 25,000/s", "/s", f"idle-{n19}",
         lambda r: r["connect_rate"], 25000, False),
        ("echo closed loop, 1k connections", ">= 200,000 msgs/s", "msgs/s", f"echo-closed-{n1}",
         lambda r: pick(r, "steps.0.msgs_per_s"), 200000, False),
        ("relay round trips with p99 <= 20 ms (1k connections)", ">= 50,000/s", "/s",
         f"relay-max-{n1}", lambda r: (best_step(r) or {}).get("msgs_per_s", 0)
         if r.get("steps") else None, 50000, False),
    ]


def targets(bench, us_to_ms):
    """The goals against this run's medians: Switchboard's, and every peer's beside it as
    Switchboard / peer from the same run (the cluster cells have their own table)."""
    peers = [p for p in PEERS[1:] if p != "sockudo-redis"]
    out = ["### Goals, side by side", "",
           "Medians; in brackets Switchboard / that peer, from the same run (below 1 is better "
           "for memory and latency, above 1 for rates).", "",
           "| measure | goal | Switchboard | met | " + " | ".join(peers) + " |",
           "|---|---|---|---|" + "---|" * len(peers)]
    for name, goal, unit, key, fn, bound, lower in measures(bench):
        ours = median_of(bench, key, "switchboard", fn)
        if ours is None and key not in bench.results:
            continue
        met = "-" if bound is None or ours is None else (
            "yes" if (ours <= bound if lower else ours >= bound) else "**no**")
        cells = []
        for peer in peers:
            theirs = median_of(bench, key, peer, fn)
            cells.append("-" if theirs is None else
                         f"{fmt(theirs)} ({ratio(ours, theirs)})" if ours is not None else fmt(theirs))
        out.append(f"| {name} | {goal} | {fmt(ours)} {unit} | {met} | " + " | ".join(cells) + " |")
    return out + [""]


def measured(bench):
    """When and at which commit the results were measured, with their scenarios."""
    runs = {}
    for key, per_server in bench.results.items():
        for rs in per_server.values():
            for r in rs:
                when = (r.get("date") or MEASURED_AT or "unknown date",
                        r.get("rev") or MEASURED_REV or "unknown commit")
                runs.setdefault(when, set()).add(scenario_of(key))
    return "; ".join(f"{', '.join(s for s in SCENARIOS if s in scen)}: run of {date}, Switchboard {rev}"
                     for (date, rev), scen in sorted(runs.items()))


def load_summary(bench):
    """The machine's load over the run, and how its cells' windows were judged."""
    rs = [r for per in bench.results.values() for rl in per.values() for r in rl if r.get("load")]
    if not rs:
        return "not recorded."
    other = [r["load"]["other_cores"] for r in rs]
    steal = [r["load"]["steal_pct"] for r in rs]
    la = [x for r in rs for x in (r["load"]["loadavg_start"][0], r["load"]["loadavg_end"][0])]
    noisy = sum(1 for r in rs if r["load"]["noisy"])
    reruns = sum(1 for r in rs if r["load"].get("rerun"))
    whole = getattr(bench, "run_load", None)
    head = (f"over the whole run loadavg {whole['loadavg_start'][0]:.2f} -> "
            f"{whole['loadavg_end'][0]:.2f}, steal {whole['steal_pct']:.1f} %, other processes "
            f"{whole['other_cores']:.2f} cores; " if whole else "")
    return (head + f"per run (each table's last two columns): other processes {min(other):.2f}-"
            f"{max(other):.2f} cores (median {statistics.median(other):.2f}), steal "
            f"{min(steal):.1f}-{max(steal):.1f} % (median {statistics.median(steal):.1f}), 1-minute "
            f"loadavg {min(la):.2f}-{max(la):.2f}. Other processes' load is the machine's busy CPU "
            "time (/proc/stat) minus the measured servers' and the load generator's (/proc/PID/stat, "
            "getrusage); a run is noisy when steal exceeds "
            f"{NOISY_STEAL_PCT:.0f} % or other processes kept more than {NOISY_OTHER_CORES} cores busy, "
            f"and a noisy run is run once more, keeping the quieter: {reruns} of {len(rs)} runs were "
            f"rerun, {noisy} kept runs are still noisy (marked).")


def load_results():
    """Rebuild a Bench from bench/results/latest.jsonl (for --report-only)."""
    bench = Bench(0, False)
    for line in open(RESULTS):
        r = json.loads(line)
        if r.get("discarded"):
            continue
        bench.results.setdefault(r["key"], {}).setdefault(r["label"], []).append(r)
    bench.quick = any(k.endswith("-2000") for k in bench.results)
    return bench


def cluster_section(bench):
    """The "Cluster" table: one row per cell and server, Switchboard / sockudo-redis where both
    ran the cell."""
    cells = [k for k in ("cluster-hold", "cluster-latency", "cluster-crash")
             if k in bench.results or any(key == k for key, _ in bench.errors)]
    if not cells:
        return []
    ms = lambda us: None if us is None else us / 1000.0  # noqa: E731

    def per_ms(r):
        """Deliveries per millisecond of one publish to everyone (subscribers / last delivery)."""
        last = pick(r, "latency.last_delivery_ms_median")
        return r["connected"] / last if last and r.get("connected") else None

    rows = {
        "cluster-hold": [
            ("(a) KiB per connection, all nodes", lambda r: r.get("rss_per_conn_kib"), True),
            ("(c) last delivery ms, median", lambda r: pick(r, "latency.last_delivery_ms_median"), None),
            ("(c) last delivery ms, max", lambda r: pick(r, "latency.last_delivery_ms_max"), None),
            ("(c) subscribers reached per ms", per_ms, False),
            ("(c) missing deliveries", lambda r: pick(r, "latency.missing"), None),
            ("connected (failed)", lambda r: f"{fmt(r.get('connected'))} ({fmt(r.get('failed'))})", None),
            ("connects/s", lambda r: r.get("connect_rate"), None),
        ],
        "cluster-latency": [
            ("(b) delivery p50 ms at 100 publishes/s", lambda r: ms(pick(r, "throughput.delivery_p50_us")), True),
            ("(b) delivery p99 ms at 100 publishes/s", lambda r: ms(pick(r, "throughput.delivery_p99_us")), True),
            ("(b) missing deliveries, publishes failed", lambda r: f"{fmt(pick(r, 'throughput.missing'))}, "
             f"{fmt(pick(r, 'throughput.publish_errors'))}", None),
            ("one publish at a time: last delivery ms (10 probes)",
             lambda r: pick(r, "latency.last_delivery_ms_median"), True),
            ("other connections held meanwhile", lambda r: r.get("held"), None),
        ],
        "cluster-crash": [
            ("(d) first notice s after SIGKILL", lambda r: r.get("first_notice_s"), None),
            ("(d) last notice s after SIGKILL", lambda r: r.get("last_notice_s"), None),
            ("(d) notices (distinct connections)",
             lambda r: f"{fmt(r.get('notices'))} ({fmt(r.get('connections_noticed'))})", None),
        ],
    }
    shape = {
        "cluster-hold": lambda r: f"{r['nodes']} x {fmt(r['per_node'])} subscribers, publish on node 1",
        "cluster-latency": lambda r: f"{fmt(r['subscribers'])} subscribers on node {r['nodes']}, "
                                     f"publish on node 1, {r['nodes']} nodes",
        "cluster-crash": lambda r: f"{fmt(r['connections'])} SocketDock connections on node 1 of {r['nodes']}",
    }
    servers = ["switchboard", "sockudo-redis"]
    out = ["### Cluster: several processes over one redis-server", "",
           "Switchboard: hubs with `[cluster]` (bench/cluster.py, ports 35000-35999), sockudo "
           f"{SOCKUDO_VERSION} built with `--features local,redis` and `ADAPTER_DRIVER=redis` (the "
           "app and limits of the sockudo row above), both over one redis-server on this machine, "
           "with the load generator on the same cores. (a) RSS of every server process after all "
           "connections are open (2 s of settling) minus before, per connection; (c) 5 publishes "
           "5 s apart (1 s with --quick) on node 1, each to every subscriber of every node, time to the last delivery; "
           "(b) the 100 publishes/s phase (10 s) to the subscribers of the last node, per-delivery "
           "latency, while the other connections are held open and subscribed to another channel "
           "(100/s to all 114,000 would be 11.4 million deliveries/s, beyond two cores); (d) SIGKILL "
           "of node 1, `lease_ms` 10000, `reap_interval_ms` 1000. Goals: (b) p99 <= 10 ms; (d) every "
           "notice within 30 s. Switchboard / sockudo-redis is "
           "computed where both measured the cell (for (c) on subscribers reached per ms, since "
           "the populations differ).", "",
           "| cell | measure | " + " | ".join(servers) + " | Switchboard / sockudo-redis | "
           "loadavg before -> after | other load, cores | steal % |",
           "|---|---|" + "---|" * len(servers) + "---|---|---|---|"]
    for key in cells:
        per = bench.results.get(key, {})
        first = {s: per[s][0] for s in servers if per.get(s)}
        said = set()  # servers whose error is in an earlier row of this cell
        for title, fn, lower in rows[key]:
            vals = {s: fn(r) for s, r in first.items()}
            cells_ = []
            for s in servers:
                if s in first:
                    cells_.append(vals[s] if isinstance(vals[s], str) else fmt(vals[s]))
                elif (key, s) in bench.errors and s not in said:
                    cells_.append(f"could not run: {bench.errors[(key, s)]}")
                    said.add(s)
                else:
                    cells_.append("-")
            a, b = vals.get("switchboard"), vals.get("sockudo-redis")
            r = (ratio(a, b) if lower is not None and not isinstance(a, str)
                 and not isinstance(b, str) else "-")
            loads = [pick(x, "load") or {} for x in first.values()]
            la = ", ".join(f"{l.get('loadavg_start', [None])[0]} -> {l.get('loadavg_end', [None])[0]}"
                           for l in loads)
            other = ", ".join(fmt(l.get("other_cores")) + (" **noisy**" if l.get("noisy") else "")
                              for l in loads)
            steal = ", ".join(fmt(l.get("steal_pct")) for l in loads)
            label = "; ".join(f"{s}: {shape[key](x)}" for s, x in first.items()) or key
            out.append(f"| {label} | {title} | " + " | ".join(cells_) + f" | {r} | {la} | {other} | {steal} |")
            label = ""
    pid = re.compile(r"--rss-of \d+( --rss-of \d+)*")
    commands = [f"- {s} {key[8:]}: `{pid.sub('--rss-of PID...', r['command'])}`"
                for key in cells for s in servers for r in bench.results.get(key, {}).get(s, [])]
    return out + ["", "Load columns: per server in the order of the columns. Commands:", *commands, ""]


def report(bench, started, elapsed):
    v = versions()
    # Runs per cell as the results hold them (a partial run may have used another --runs).
    runs = max((len(rs) for per_server in bench.results.values() for rs in per_server.values()),
               default=0)
    us_to_ms = lambda x: None if x is None else x / 1000.0  # noqa: E731
    parts = [START, "",
             f"Written {started:%Y-%m-%d %H:%M} UTC"
             + (f" after {elapsed / 60:.0f} minutes" if elapsed is not None else "") + " by "
             f"`python3 bench/run.py{RUN_ARGS}`"
             f" ({runs} run{'s' if runs > 1 else ''} per cell; cells are the median, "
             "with min-max in brackets). Peers were measured in the same run as Switchboard.", "",
             f"- Measured: {measured(bench)}.",
             f"- Machine: {machine()}.",
             f"- Switchboard release build; Node.js {v['node']} with ws {v['ws']}; "
             f"sockudo {v['sockudo']} (crates.io, `--no-default-features --features local`); "
             f"Pushpin {v['pushpin']} (Debian); websocketd {v['websocketd']} (Debian).",
             f"- Machine load: {load_summary(bench)}",
             "- sockudo: one app configured through its environment (id, key, secret), its "
             "limits raised (connections 100 -> 100,000 per app, backend events 100 -> 1,000,000/s, "
             "event payload 100 KiB -> 1 MiB), rate limiter and metrics listener off; Pusher protocol "
             "7, subscribe with `pusher:subscribe`, publish through its signed HTTP events API.",
             "- Pushpin: WebSocket-over-HTTP in front of the mock backend, its publish rate limits raised "
             "(message_rate 2500 -> 1000000/s, message_hwm 25000 -> 10000000), log level 1. Its connect "
             "rate is held at 500/s (250/s for fan-out, where each connect also subscribes): above that "
             "its calls to the backend start failing (502).",
             f"- Raw results of every run: {os.path.relpath(RESULTS, ROOT) if RESULTS.startswith(ROOT) else RESULTS}.", ""]

    parts.extend(targets(bench, us_to_ms))

    def section(title, text, key, columns, headline, lower=False):
        if key in bench.results or any(k == key for k, _ in bench.errors):
            parts.extend([f"### {title}", "", text, "", table(bench, key, columns, headline, lower), ""])

    # Round-trip columns of a single-step echo run.
    latency = [(f"{name} ms", lambda r, q=q: us_to_ms(pick(r, f"steps.0.{q}_us")))
               for name, q in [("p50", "p50"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max")]]
    latency.append(("lost", lambda r: pick(r, "steps.0.lost")))
    order = ["idle", "echo-closed", "echo-1ps", "relay-seed", "relay-max", "relay-profile",
             "fanout", "mem4k", "mem64k"]
    for key in sorted({k for k in bench.results.keys() | {k for k, _ in bench.errors}
                       if not k.startswith("cluster-")},
                      key=lambda k: (order.index(k.rsplit("-", 1)[0]), int(k.rsplit("-", 1)[1]))):
        kind = key.rsplit("-", 1)
        n = int(kind[1])
        if key.startswith("idle-"):
            section(f"Idle: {n:,} connections", "Server RSS (with its child processes) per open "
                    "connection, after all are open and 2 s of settling; connect rate over the whole ramp.",
                    key, [("KiB per connection", lambda r: r["rss_per_conn_kib"]),
                          ("connects/s", lambda r: r["connect_rate"]),
                          ("failed", lambda r: r["failed"])], "KiB per connection", lower=True)
        elif key.startswith("echo-closed-"):
            section(f"Echo, closed loop: {n:,} connections", "Each connection sends 32 bytes and the next "
                    "as soon as the echo arrives.", key,
                    [("msgs/s", lambda r: pick(r, "steps.0.msgs_per_s"))] + latency, "msgs/s")
        elif key.startswith("echo-1ps-"):
            section(f"Echo, open loop: {n:,} connections x 1 msg/s", "Sends at fixed times, spread evenly; "
                    "round trip of each.", key,
                    [("answered/s", lambda r: pick(r, "steps.0.msgs_per_s"))] + latency
                    + [("connects/s", lambda r: r["connect_rate"])], "p99 ms", lower=True)
        elif key.startswith("relay-seed-"):
            section(f"Relay, the seed's scenario: {n:,} connections, 1 msg per 10 s each, 60 s",
                    "Client -> server -> mock backend (HTTP) -> answer relayed back; Switchboard in ws2api "
                    "format, Pushpin in WebSocket-over-HTTP.", key,
                    [("connects/s", lambda r: r["connect_rate"]),
                     ("failed", lambda r: r["failed"]),
                     ("answered/s", lambda r: pick(r, "steps.0.msgs_per_s")),
                     ("p50 ms", lambda r: us_to_ms(pick(r, "steps.0.p50_us"))),
                     ("p99 ms", lambda r: us_to_ms(pick(r, "steps.0.p99_us"))),
                     ("max ms", lambda r: us_to_ms(pick(r, "steps.0.max_us"))),
                     ("lost", lambda r: pick(r, "steps.0.lost")),
                     ("connections closed", lambda r: pick(r, "steps.0.closed"))], "answered/s")
        elif key.startswith("relay-max-"):
            section(f"Relay, maximum sustained: {n:,} connections", "Open-loop steps of rising total rate, "
                    "5 s each; the figure is the highest step with p99 <= 20 ms and nothing lost.", key,
                    [("relayed msgs/s", lambda r: (best_step(r) or {}).get("msgs_per_s")),
                     ("p99 ms at that rate", lambda r: us_to_ms((best_step(r) or {}).get("p99_us"))),
                     ("first failing step (msgs/s offered)",
                      lambda r: next((s["target_rate"] for s in r["steps"] if s is not best_step(r)
                                      and (s["p99_us"] > 20000 or s["lost"] > 0)), None))],
                    "relayed msgs/s")
        elif key.startswith("relay-profile-"):
            rs = bench.results.get(key, {}).get("switchboard", [])
            path = os.path.join(os.path.dirname(RESULTS), "relay-profile.txt")
            if rs and os.path.exists(path):
                r = rs[0]
                step = (r.get("steps") or [{}])[0]
                prof = open(path).read().rstrip("\n").split("\n")
                parts.extend([f"### Relay profile: where the hub's time goes at {fmt(step.get('target_rate'))} "
                              "round trips/s offered", "",
                              f"One {fmt(step.get('secs'))} s step at that rate: {fmt(step.get('msgs_per_s'))} "
                              f"answered/s, p99 {fmt(us_to_ms(step.get('p99_us')))} ms, lost {fmt(step.get('lost'))} "
                              f"(other load {fmt(pick(r, 'load.other_cores'))} cores, steal "
                              f"{fmt(pick(r, 'load.steal_pct'))} %). perf samples the hub's threads for "
                              f"{PROFILE_SECS} s in the middle of it; entries at 0.7 % or more of the "
                              f"samples (the whole list: {os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}):", "",
                              "```", *prof[:2], *[l for l in prof[2:]][:40], "```", ""])
        elif key.startswith("mem4k-"):
            section(f"Memory after traffic: {n:,} subscribers, 10 publications of 4 KiB",
                    "Every connection subscribed, then 10 publishes of 4 KiB, 500 ms apart, each "
                    "delivered to every subscriber; server RSS (with its child processes) read with the "
                    "connections still open, once every delivery has arrived (0.5 s after the last), minus "
                    "its RSS before the first connection, per connection.", key,
                    [("KiB per connection after", lambda r: r.get("rss_per_conn_after_latency_kib")),
                     ("KiB per connection idle (same run, before publishing)", lambda r: r.get("rss_per_conn_kib")),
                     ("missing", lambda r: pick(r, "latency.missing")),
                     ("publishes failed", lambda r: pick(r, "latency.publish_errors")),
                     ("last delivery ms", lambda r: pick(r, "latency.last_delivery_ms_median"))],
                    "KiB per connection after", lower=True)
        elif key.startswith("mem64k-"):
            section(f"Memory after one large message: {n:,} subscribers, one publication of 64 KiB",
                    "Every connection subscribed, one publish of 64 KiB delivered to all; growth of the "
                    "server's RSS per connection over its RSS with the same connections idle, read 0.5 s "
                    "after the last delivery and again 5 s later (connections still open): a server "
                    "that keeps a buffer the size of the largest message per connection shows about 64 "
                    "KiB in both.", key,
                    [("growth KiB per connection, at once", lambda r: per_conn_growth(r, "rss_after_latency_kib")),
                     ("growth 5 s later", lambda r: per_conn_growth(r, "rss_later_kib")),
                     ("KiB per connection idle", lambda r: r.get("rss_per_conn_kib")),
                     ("missing", lambda r: pick(r, "latency.missing")),
                     ("publishes failed", lambda r: pick(r, "latency.publish_errors")),
                     ("last delivery ms", lambda r: pick(r, "latency.last_delivery_ms_median"))],
                    "growth 5 s later", lower=True)
        elif key.startswith("fanout-"):
            section(f"Fan-out: {n:,} subscribers on one channel", "Latency: 10 publishes 500 ms apart, "
                    "time from publish to the last subscriber's receipt. Throughput: 25 publishes/s for 10 s, "
                    "deliveries received per second from the first publish to the last receipt. The "
                    "publisher makes one HTTP publish at a time and waits for its answer; what it could not "
                    "make within the phase and 5 s more counts as not made. Missing: deliveries that had not "
                    "arrived when nothing more had come for 3 s (at most 60 s after the phase). Held after the "
                    "load left: server RSS 3 s after every subscriber has gone, minus its RSS at start.", key,
                    [("last delivery ms", lambda r: pick(r, "latency.last_delivery_ms_median")),
                     ("worst last delivery ms", lambda r: pick(r, "latency.last_delivery_ms_max")),
                     ("deliveries/s", lambda r: pick(r, "throughput.deliveries_per_s")),
                     ("missing", lambda r: (pick(r, "latency.missing") or 0)
                      + (pick(r, "throughput.missing") or 0)),
                     ("subscribers closed", lambda r: (pick(r, "latency.closed") or 0)
                      + (pick(r, "throughput.closed") or 0)),
                     ("publishes failed or not made", lambda r: (pick(r, "latency.publish_errors") or 0)
                      + (pick(r, "throughput.publish_errors") or 0)),
                     ("subscribed", lambda r: r["connected"]),
                     ("connects/s", lambda r: r["connect_rate"]),
                     ("MiB held after the load left", lambda r: None
                      if r.get("rss_left_kib") is None or r.get("rss_start_kib") is None
                      else (r["rss_left_kib"] - r["rss_start_kib"]) / 1024)],
                    # At 1k subscribers every server keeps up with what is offered (25k/s), so the
                    # comparison is the latency; at 19k it is what each sustains.
                    "last delivery ms" if n < 5000 else "deliveries/s", lower=n < 5000)
    parts.extend(cluster_section(bench))
    parts.append(END)
    generated = "\n".join(parts)
    path = bench.out
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    if START in text and END in text:
        text = text[:text.index(START)] + generated + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + generated + "\n"
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")


def main():
    # bench/cluster.py imports this file as `run`: the same module, not a second copy.
    sys.modules.setdefault("run", sys.modules[__name__])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small counts, short phases, one run")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios: {','.join(SCENARIOS)}")
    parser.add_argument("--port-base", type=int, default=34000,
                        help="servers listen on PORT_BASE..PORT_BASE+99 (reserved for the run)")
    parser.add_argument("--deadline", type=float, default=180,
                        help="minutes after which no further run starts (what is left is "
                        "reported as not run); default 180")
    parser.add_argument("--no-rerun", action="store_true",
                        help="keep runs measured in a noisy window instead of running them again")
    parser.add_argument("--profile-rate", type=int, default=40000,
                        help="relay round trips/s offered while the hub is profiled")
    parser.add_argument("--out", help="the report to write (default BENCHMARKS.md; with --quick, "
                        "a temporary directory)")
    parser.add_argument("--no-install", action="store_true", help="skip apt/npm/cargo")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from bench/results/latest.jsonl without running")
    parser.add_argument("--rev", help="the commit that earlier results without a recorded commit "
                        "were measured at")
    parser.add_argument("--measured-at", help="when earlier results without a recorded date were "
                        "measured (e.g. '2026-11-23 14:45 UTC')")
    args = parser.parse_args()
    global REV, MEASURED_REV, MEASURED_AT, RUN_STARTED, RESULTS, PORT_BASE
    MEASURED_REV, MEASURED_AT = args.rev, args.measured_at
    PORT_BASE = args.port_base
    global RUN_ARGS
    RUN_ARGS = "".join(" " + (a if " " not in a else f"'{a}'") for a in sys.argv[1:])
    only = [name.strip() for name in args.only.split(",")]
    unknown = [name for name in only if name not in SCENARIOS]
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    out = args.out or os.path.join(ROOT, "BENCHMARKS.md")
    if args.quick:
        # Small-count figures must not replace the measured ones.
        scratch = tempfile.mkdtemp(prefix="bench-quick-")
        RESULTS = os.path.join(scratch, "latest.jsonl")
        out = args.out or os.path.join(scratch, "BENCHMARKS.md")
    if args.report_only:
        bench = load_results()
        bench.out = out
        report(bench, datetime.datetime.now(datetime.timezone.utc), None)
        return
    runs = args.runs or (1 if args.quick else 3)
    if not args.no_install:
        install()
    prepare_ports()
    REV = versions()["switchboard"]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    if set(only) != set(SCENARIOS) and os.path.exists(RESULTS):
        # A partial run replaces its scenarios' results and keeps the others.
        kept = [line for line in open(RESULTS) if scenario_of(json.loads(line)["key"]) not in only]
        with open(RESULTS, "w") as f:
            f.writelines(kept)
        bench = load_results()
        bench.runs, bench.quick = runs, args.quick
    else:
        open(RESULTS, "w").close()
        bench = Bench(runs, args.quick)
    bench.out = out
    bench.rerun_noisy = not args.no_rerun
    bench.profile_rate = args.profile_rate
    started = datetime.datetime.now(datetime.timezone.utc)
    RUN_STARTED = f"{started:%Y-%m-%d %H:%M} UTC"
    t0 = time.time()
    bench.deadline = t0 + args.deadline * 60
    whole = Load()
    for name in only:
        t = time.time()
        getattr(bench, name)()
        log(f"{name}: {(time.time() - t) / 60:.1f} minutes")
        bench.run_load = whole.done()
        report(bench, started, time.time() - t0)
    report(bench, started, time.time() - t0)


if __name__ == "__main__":
    main()
