#!/usr/bin/env python3
"""Run every benchmark scenario against Switchboard and its peers, and write BENCHMARKS.md.

    python3 bench/run.py              # everything, 3 runs each (about an hour)
    python3 bench/run.py --quick      # one short run each, small counts, into a temporary
                                      # directory: checks the setup, keeps the results
    python3 bench/run.py --only fanout  # one scenario again; the others' results are kept

Installs what it needs from the package registries (Debian: pushpin, websocketd, nodejs, npm;
npm: ws), builds the release binaries (`cargo build --release --workspace`), then for each
scenario and server starts a fresh server, drives it with `target/release/loadgen`, stops it.
Every run's raw result is appended to bench/results/latest.jsonl (rewritten each full run;
a --quick run writes its own in a temporary directory).
Needs root for apt-get and for widening net.ipv4.ip_local_port_range (both best effort).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
HUB = os.path.join(TARGET, "release", "switchboard")
LOADGEN = os.path.join(TARGET, "release", "loadgen")
NODE_HUB = os.path.join(ROOT, "bench", "peers", "node-hub")
RESULTS = os.path.join(ROOT, "bench", "results", "latest.jsonl")

HUB_WS, HUB_PUSH = 18080, 18081
NODE_PORT = 18090
WEBSOCKETD_PORT = 18095
PUSHPIN_PORT, PUSHPIN_PUBLISH = 17999, 5561
BACKEND = "127.0.0.1:19000"

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
    sh(["cargo", "build", "--release", "--workspace"], cwd=ROOT)
    try:
        subprocess.run(["sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        pass


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

    def __init__(self, name, cmd, port, cwd=None, extra_ports=()):
        self.name, self.cmd, self.port, self.cwd = name, cmd, port, cwd
        self.extra_ports = extra_ports
        self.proc = None

    def __enter__(self):
        self.logfile = tempfile.NamedTemporaryFile(prefix=f"bench-{self.name}-", suffix=".log",
                                                   delete=False)
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, stdout=self.logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True)
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
        # Let the kernel finish the closed sockets before the next run.
        time.sleep(1.0)


def switchboard(config):
    return Server("switchboard", [HUB, "--config", os.path.join(ROOT, "bench", "configs", config)],
                  HUB_WS, extra_ports=(HUB_PUSH,))


def node_hub():
    return Server("node-ws", ["node", "hub.js", str(NODE_PORT)], NODE_PORT, cwd=NODE_HUB)


def websocketd():
    return Server("websocketd", ["websocketd", f"--port={WEBSOCKETD_PORT}", "--address=127.0.0.1",
                                 "--loglevel=error", "cat"], WEBSOCKETD_PORT)


def backend():
    return Server("mock-backend", [LOADGEN, "backend", "--listen", BACKEND],
                  int(BACKEND.rsplit(":", 1)[1]))


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
        f.write(f"* {BACKEND},over_http\n")
    replace = {
        "include": "include=/usr/lib/pushpin/internal.conf",
        "rundir": f"rundir={run}",
        "logdir": f"logdir={os.path.join(PUSHPIN_DIR, 'log')}",
        "http_port": f"http_port={PUSHPIN_PORT}",
        "routesfile": f"routesfile={os.path.join(PUSHPIN_DIR, 'routes')}",
        "services": "services=condure,zurl,pushpin-proxy,pushpin-handler",
        "message_rate": "message_rate=1000000",
        "message_hwm": "message_hwm=10000000",
        "log_level": "log_level=1",
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
                  PUSHPIN_PORT, extra_ports=(PUSHPIN_PUBLISH,))


def loadgen(mode, args, key, label):
    """One loadgen run; its JSON result, tagged with the scenario key."""
    cmd = [LOADGEN, mode, *args, "--label", label]
    log("$", " ".join(cmd))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=900)
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"loadgen exited with status {out.returncode} (its stderr is above)")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["key"] = key
    result["rev"] = REV
    result["date"] = RUN_STARTED
    result["command"] = "loadgen " + " ".join(
        a if " " not in a and "{" not in a else "'" + a + "'" for a in [mode, *args])
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def tree_rss_kib(pid):
    """VmRSS of a process and all its descendants, in KiB (None when it cannot be read)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total or None


class Bench:
    def __init__(self, runs, quick):
        self.runs, self.quick = runs, quick
        self.results = {}  # key -> server label -> [result]
        self.errors = {}  # (key, label) -> message

    def repeat(self, key, label, start, mode, args, rss=False, runs=None):
        """`runs` times: start the server(s) fresh, run loadgen, keep the result."""
        for _ in range(runs or self.runs):
            try:
                with start() as server:
                    extra = ["--rss-of", str(server.pid)] if rss else []
                    rss_start = tree_rss_kib(server.pid)
                    result = loadgen(mode, args + extra, key, label)
                    # Every client has gone: what the server still holds of the load.
                    time.sleep(3)
                    result["rss_start_kib"] = rss_start
                    result["rss_left_kib"] = tree_rss_kib(server.pid)
            except Exception as e:  # a peer that cannot run the scenario is reported, not fatal
                log(f"{key} {label}: {e}")
                self.errors[(key, label)] = str(e)
                return
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
                        ["--url", f"ws://127.0.0.1:{HUB_WS}/ws", "--connect-rate", "30000"] + common,
                        rss=True)
            self.repeat(key, "node-ws", node_hub, "idle",
                        ["--url", f"ws://127.0.0.1:{NODE_PORT}/echo", "--connect-rate", "30000"]
                        + common, rss=True)
            self.repeat(key, "pushpin", with_backend(pushpin), "idle",
                        ["--url", f"ws://127.0.0.1:{PUSHPIN_PORT}/echo", "--connect-rate", "500",
                         "--connect-timeout", "30"] + common, rss=True)

    def echo(self):
        n = self.conns(1000)
        key = f"echo-closed-{n}"
        args = ["--conns", str(n), "--rate", "0", "--secs", str(self.secs(10))]
        self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "echo",
                    ["--url", f"ws://127.0.0.1:{HUB_WS}/ws", "--connect-rate", "10000"] + args)
        self.repeat(key, "node-ws", node_hub, "echo",
                    ["--url", f"ws://127.0.0.1:{NODE_PORT}/echo", "--connect-rate", "10000"] + args)
        # websocketd starts a process (here `cat`) per connection; 1,000 is what it holds here.
        self.repeat(key, "websocketd", websocketd, "echo",
                    ["--url", f"ws://127.0.0.1:{WEBSOCKETD_PORT}/", "--connect-rate", "1000"] + args)
        n = self.conns(19000)
        key = f"echo-1ps-{n}"
        args = ["--conns", str(n), "--connect-rate", "10000", "--rate", "1",
                "--secs", str(self.secs(20))]
        self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "echo",
                    ["--url", f"ws://127.0.0.1:{HUB_WS}/ws"] + args)
        self.repeat(key, "node-ws", node_hub, "echo",
                    ["--url", f"ws://127.0.0.1:{NODE_PORT}/echo"] + args)

    def relay(self):
        n = self.conns(19000)
        key = f"relay-seed-{n}"
        args = ["--conns", str(n), "--rate", "0.1", "--secs", str(self.secs(60))]
        self.repeat(key, "switchboard", with_backend(lambda: switchboard("relay.toml")), "echo",
                    ["--url", f"ws://127.0.0.1:{HUB_WS}/{{n}}", "--connect-rate", "4000"] + args)
        self.repeat(key, "pushpin", with_backend(pushpin), "echo",
                    ["--url", f"ws://127.0.0.1:{PUSHPIN_PORT}/echo", "--connect-rate", "500",
                     "--connect-timeout", "30"] + args)
        n = self.conns(1000)
        key = f"relay-max-{n}"
        steps = "5000,10000,15000,20000,25000,30000,35000,40000"
        self.repeat(key, "switchboard", with_backend(lambda: switchboard("relay.toml")), "echo",
                    ["--url", f"ws://127.0.0.1:{HUB_WS}/{{n}}", "--conns", str(n),
                     "--connect-rate", "4000", "--steps", steps, "--secs", str(self.secs(5))])
        self.repeat(key, "pushpin", with_backend(pushpin), "echo",
                    ["--url", f"ws://127.0.0.1:{PUSHPIN_PORT}/echo", "--conns", str(n),
                     "--connect-rate", "500", "--steps", "250,500,1000,2000,4000,8000",
                     "--secs", str(self.secs(5))])

    def fanout(self):
        for n in (1000, 19000):
            n = self.conns(n)
            key = f"fanout-{n}"
            common = ["--conns", str(n), "--probes", "10", "--probe-interval-ms", "500",
                      "--rate", "25", "--secs", str(self.secs(10))]
            self.repeat(key, "switchboard", lambda: switchboard("hub.toml"), "fanout",
                        ["--url", f"ws://127.0.0.1:{HUB_WS}/rpc", "--connect-rate", "10000",
                         "--subscribe", SUBSCRIBE_RPC, "--await-ack",
                         "--publish-url", f"http://127.0.0.1:{HUB_PUSH}/api/publish",
                         "--header", "Content-Type: application/json",
                         "--publish-body", '{"channel":"bench","data":"{payload}"}'] + common)
            self.repeat(key, "node-ws", node_hub, "fanout",
                        ["--url", f"ws://127.0.0.1:{NODE_PORT}/sub", "--connect-rate", "10000",
                         "--publish-url", f"http://127.0.0.1:{NODE_PORT}/publish",
                         "--publish-body", "{payload}"] + common)
            # 250/s: at 500/s, subscribing connections saturate both cores (pushpin-handler,
            # zurl, pushpin-proxy) and one connect in six fails with 502. At 19k subscribers
            # Pushpin's publish endpoint times out and almost every publish fails (seen in every
            # attempt), so that cell is run once rather than spend a quarter of an hour failing.
            self.repeat(key, "pushpin", with_backend(pushpin), "fanout",
                        ["--url", f"ws://127.0.0.1:{PUSHPIN_PORT}/fanout", "--connect-rate", "250",
                         "--connect-timeout", "60",
                         "--publish-url", f"http://127.0.0.1:{PUSHPIN_PUBLISH}/publish/",
                         "--publish-body",
                         '{"items":[{"channel":"bench","formats":{"ws-message":{"content":"{payload}"}}}]}']
                        + common, runs=1 if n > 5000 else None)


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
    if ours is None or theirs in (None, 0) or ours == 0:
        return "n/a"
    r = theirs / ours if lower_is_better else ours / theirs
    return f"{r:.2f}x"


def table(bench, key, columns, headline, lower_is_better=False):
    """Rows: servers; columns: (title, function of a result); headline: the column the
    Switchboard/peer ratio is computed on."""
    per_server = bench.results.get(key, {})
    out = ["| server | runs | " + " | ".join(t for t, _ in columns)
           + f" | Switchboard vs this peer ({headline}) |",
           "|---|---|" + "---|" * len(columns) + "---|"]
    ours = None
    rows = []
    for label in ["switchboard", "node-ws", "pushpin", "websocketd"]:
        if (key, label) in bench.errors and label not in per_server:
            rows.append((label, f"| {label} | 0 | could not run: {bench.errors[(key, label)]} "
                                + "| " * len(columns) + "|"))
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
        rows.append((label, head, cells, len(results)))
    for row in rows:
        if isinstance(row[1], str):
            out.append(row[1])
            continue
        label, head, cells, n = row
        r = "-" if label == "switchboard" else ratio(ours, head, lower_is_better)
        out.append(f"| {label} | {n} | " + " | ".join(cells) + f" | {r} |")
    # One line per distinct command, servers in table order; the PID an idle run reads differs per run.
    commands = list(dict.fromkeys(
        re.sub(r"--rss-of \d+", "--rss-of PID", r["command"])
        for label in ["switchboard", "node-ws", "pushpin", "websocketd"]
        for r in per_server.get(label, [])))
    return "\n".join(out) + "\n\nCommands (server started fresh for each run):\n" + "\n".join(
        f"- `{c}`" for c in commands) + "\n"


MEASURED_REV = None  # --rev: the commit that results without a "rev" field were measured at
MEASURED_AT = None  # --measured-at: when results without a "date" field were measured
RUN_STARTED = None  # this run's start, recorded in every result
REV = None  # this run's commit, recorded in every result
SCENARIOS = ["idle", "echo", "relay", "fanout"]


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


def targets(bench, us_to_ms):
    """Issue 5's targets against this run's Switchboard medians."""
    n19, n1 = bench.conns(19000), bench.conns(1000)
    rows = [
        ("idle memory at 19k", "<= 5 KiB per connection", "KiB",
         median_of(bench, f"idle-{n19}", "switchboard", lambda r: r["rss_per_conn_kib"]), 5, True),
        ("connect rate (19k ramp)", ">= 15,000/s", "/s",
         median_of(bench, f"idle-{n19}", "switchboard", lambda r: r["connect_rate"]), 15000, False),
        ("echo 19k x 1 msg/s: p99", "<= 1 ms", "ms",
         median_of(bench, f"echo-1ps-{n19}", "switchboard",
                   lambda r: us_to_ms(pick(r, "steps.0.p99_us"))), 1, True),
        ("echo closed loop at 1k", ">= 100,000 msgs/s", "msgs/s",
         median_of(bench, f"echo-closed-{n1}", "switchboard",
                   lambda r: pick(r, "steps.0.msgs_per_s")), 100000, False),
        ("relay, sustained with p99 <= 20 ms", ">= 25,000 round trips/s", "msgs/s",
         median_of(bench, f"relay-max-{n1}", "switchboard",
                   lambda r: (best_step(r) or {}).get("msgs_per_s")), 25000, False),
        ("relay seed scenario: ramp", ">= 4,000 connects/s", "/s",
         median_of(bench, f"relay-seed-{n19}", "switchboard", lambda r: r["connect_rate"]), 4000, False),
        ("fan-out 19k: publish -> last delivery", "<= 60 ms", "ms",
         median_of(bench, f"fanout-{n19}", "switchboard",
                   lambda r: pick(r, "latency.last_delivery_ms_median")), 60, True),
        ("fan-out 19k: sustained deliveries", ">= 400,000/s", "/s",
         median_of(bench, f"fanout-{n19}", "switchboard",
                   lambda r: pick(r, "throughput.deliveries_per_s")), 400000, False),
    ]
    out = ["### Targets", "", "| target | goal | Switchboard (median) | met |", "|---|---|---|---|"]
    for name, goal, unit, value, bound, lower in rows:
        if value is None:
            continue
        met = value <= bound if lower else value >= bound
        out.append(f"| {name} | {goal} | {fmt(value)} {unit} | {'yes' if met else '**no**'} |")
    return out + [""]


def measured(bench):
    """When and at which commit the results were measured, with their scenarios."""
    runs = {}
    for key, per_server in bench.results.items():
        for rs in per_server.values():
            for r in rs:
                when = (r.get("date") or MEASURED_AT or "unknown date",
                        r.get("rev") or MEASURED_REV or "unknown commit")
                runs.setdefault(when, set()).add(key.split("-")[0])
    return "; ".join(f"{', '.join(s for s in SCENARIOS if s in scen)}: run of {date}, Switchboard {rev}"
                     for (date, rev), scen in sorted(runs.items()))


def load_results():
    """Rebuild a Bench from bench/results/latest.jsonl (for --report-only)."""
    bench = Bench(0, False)
    for line in open(RESULTS):
        r = json.loads(line)
        bench.results.setdefault(r["key"], {}).setdefault(r["label"], []).append(r)
    bench.quick = any(k.endswith("-2000") for k in bench.results)
    return bench


def report(bench, started, elapsed):
    v = versions()
    # Runs per cell as the results hold them (a partial run may have used another --runs).
    runs = max((len(rs) for per_server in bench.results.values() for rs in per_server.values()),
               default=0)
    us_to_ms = lambda x: None if x is None else x / 1000.0  # noqa: E731
    parts = [START, "",
             f"Written {started:%Y-%m-%d %H:%M} UTC"
             + (f" after {elapsed / 60:.0f} minutes" if elapsed is not None else "") + " by "
             f"`python3 bench/run.py{' --quick' if bench.quick else ''}`"
             f" ({runs} run{'s' if runs > 1 else ''} per cell; cells are the median, "
             "with min-max in brackets). Peers were measured in the same run as Switchboard.", "",
             f"- Measured: {measured(bench)}.",
             f"- Machine: {machine()}.",
             f"- Switchboard release build; Node.js {v['node']} with ws {v['ws']}; "
             f"Pushpin {v['pushpin']} (Debian); websocketd {v['websocketd']} (Debian).",
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
    order = ["idle", "echo-closed", "echo-1ps", "relay-seed", "relay-max", "fanout"]
    for key in sorted(bench.results.keys() | {k for k, _ in bench.errors},
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small counts, short phases, one run")
    parser.add_argument("--only", default="idle,echo,relay,fanout",
                        help="comma-separated scenarios: idle,echo,relay,fanout")
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
    global REV, MEASURED_REV, MEASURED_AT, RUN_STARTED, RESULTS
    MEASURED_REV, MEASURED_AT = args.rev, args.measured_at
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
    REV = versions()["switchboard"]
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    if set(only) != set(SCENARIOS) and os.path.exists(RESULTS):
        # A partial run replaces its scenarios' results and keeps the others.
        kept = [line for line in open(RESULTS) if json.loads(line)["key"].split("-")[0] not in only]
        with open(RESULTS, "w") as f:
            f.writelines(kept)
        bench = load_results()
        bench.runs, bench.quick = runs, args.quick
    else:
        open(RESULTS, "w").close()
        bench = Bench(runs, args.quick)
    bench.out = out
    started = datetime.datetime.now(datetime.timezone.utc)
    RUN_STARTED = f"{started:%Y-%m-%d %H:%M} UTC"
    t0 = time.time()
    for name in only:
        getattr(bench, name)()
        report(bench, started, time.time() - t0)
    report(bench, started, time.time() - t0)


if __name__ == "__main__":
    main()
