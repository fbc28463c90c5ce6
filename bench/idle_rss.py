#!/usr/bin/env python3
"""Hub RSS with N idle WebSocket connections.

Starts target/release/switchboard (demo config, loopback echo), records its RSS, opens N
connections to /ws spread over source addresses 127.0.0.2-127.0.0.250 (so ports do not run
out), waits until the hub lists them all, records RSS again and prints the per-connection cost.
Bounded: N <= 19000 (one process's open-files cap) and a 120 s deadline.

Usage: python3 bench/idle_rss.py [N] [RUNS]   (needs: pip install websockets)
"""
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "switchboard")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def count_connections(push):
    with urllib.request.urlopen(f"http://{push}/healthz", timeout=5) as r:
        return json.load(r)["connections"]


async def run_once(n):
    ws_port, push_port = free_port(), free_port()
    ws, push = f"127.0.0.1:{ws_port}", f"127.0.0.1:{push_port}"
    hub = subprocess.Popen(
        [BIN, "--config", os.path.join(ROOT, "config.toml"), "--listen", ws,
         "--push-listen", push, "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                count_connections(push)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        base = rss_kib(hub.pid)
        conns = []
        started = time.time()
        for i in range(n):
            source = (f"127.0.0.{2 + i % 249}", 0)
            conns.append(await websockets.connect(
                f"ws://{ws}/ws", ping_interval=None, max_size=None, local_addr=source))
        elapsed = time.time() - started
        while count_connections(push) < n:
            if time.time() > deadline:
                raise RuntimeError("hub never listed all connections")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        loaded = rss_kib(hub.pid)
        for c in conns:
            c.transport.abort()
        return base, loaded, elapsed
    finally:
        hub.terminate()
        hub.wait(timeout=30)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    if not 1 <= n <= 19000:
        sys.exit("N must be 1..19000")
    per_conn = []
    for run in range(runs):
        base, loaded, elapsed = asyncio.run(run_once(n))
        per = (loaded - base) / n
        per_conn.append(per)
        print(f"run {run + 1}: base {base} KiB, with {n} idle connections {loaded} KiB, "
              f"{per:.2f} KiB/connection (client connect loop {n / elapsed:.0f}/s)")
    print(f"median over {runs} runs: {statistics.median(per_conn):.2f} KiB/connection "
          f"(min {min(per_conn):.2f}, max {max(per_conn):.2f}) at {n} idle connections")


if __name__ == "__main__":
    main()
