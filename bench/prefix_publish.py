#!/usr/bin/env python3
"""What a publish costs as the number of distinct topic prefixes grows (topics dialect).

Starts target/release/switchboard with a /topics route, subscribes one connection to K
distinct prefixes ("p0.", "p1.", ...), then times publishes through the push API over one
keep-alive HTTP connection: to a topic that matches one prefix, and to one that matches none.
Prints the median and p99 round trip per publish for each K. If the hub scanned every prefix,
the cost would grow with K; with the prefix index it stays flat.

Usage: python3 bench/prefix_publish.py [PUBLISHES] [RUNS]   (needs: pip install websockets)
"""
import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "switchboard")
CONFIG = """
[server]
page = false
[[routes]]
path = "/topics"
dialect = "topics"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def push(conn, path, body=None):
    conn.request("POST" if body is not None else "GET", path,
                 body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return json.loads(response.read())


async def measure(prefixes, publishes):
    ws_port, push_port = free_port(), free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CONFIG)
    hub = subprocess.Popen([BIN, "--config", f.name, "--listen", f"127.0.0.1:{ws_port}",
                            "--push-listen", f"127.0.0.1:{push_port}", "--log-level", "warn"])
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", push_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", push_port, timeout=30)
        async with websockets.connect(f"ws://127.0.0.1:{ws_port}/topics", max_size=None) as ws:
            for i in range(prefixes):
                await ws.send(json.dumps({"topic": "__topic_subscribe__", "body": f"p{i}.*"}))
            while prefixes:
                listed = push(conn, "/api/connections")["connections"]
                if listed and len(listed[0]["prefixes"]) == prefixes:
                    break
                if time.time() > deadline:
                    raise RuntimeError("subscriptions never applied")
                await asyncio.sleep(0.1)
            results = {}
            for label, topic in (("matching", "p1.news.x"), ("non-matching", "zzz.other")):
                times = []
                for _ in range(publishes):
                    start = time.perf_counter()
                    reply = push(conn, "/api/publish", {"channel": topic, "data": 1})
                    times.append(time.perf_counter() - start)
                    if label == "matching" and prefixes > 1:
                        assert reply["reached"] == 1, reply
                        await ws.recv()
                times.sort()
                results[label] = (statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6)
            return results
    finally:
        hub.terminate()
        hub.wait(timeout=30)
        os.unlink(f.name)


def main():
    publishes = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"{publishes} publishes per case, median of {runs} runs (round trip through the push API)")
    for prefixes in (0, 10_000, 100_000):
        medians = {"matching": [], "non-matching": []}
        p99s = {"matching": [], "non-matching": []}
        for _ in range(runs):
            for label, (median, p99) in asyncio.run(measure(prefixes, publishes)).items():
                medians[label].append(median)
                p99s[label].append(p99)
        for label in ("matching", "non-matching"):
            print(f"prefixes={prefixes:>6} {label:>12}: median {statistics.median(medians[label]):7.1f} us"
                  f" (runs {min(medians[label]):.1f}-{max(medians[label]):.1f}),"
                  f" p99 {statistics.median(p99s[label]):7.1f} us")


if __name__ == "__main__":
    main()
