#!/usr/bin/env python3
"""Heap profile of the hub holding N idle WebSocket connections (valgrind massif).

Starts target/release/switchboard under `valgrind --tool=massif` with the demo config on free
ports, opens N idle connections to /ws, waits until the hub lists them, stops the hub with
SIGTERM (massif writes its profile on exit) and prints the top allocation sites of the peak
snapshot. Bounded: N <= 5000 (massif is slow) and a 300 s deadline.

Usage: python3 bench/heap_profile.py [N]   (needs: valgrind, pip install websockets)
Output: target/massif.out.hub, read further with `ms_print target/massif.out.hub`.
"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "switchboard")
OUT = os.path.join(ROOT, "target", "massif.out.hub")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connections(push):
    with urllib.request.urlopen(f"http://{push}/healthz", timeout=5) as r:
        return json.load(r)["connections"]


async def run(n):
    ws, push = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    hub = subprocess.Popen(
        ["valgrind", "--tool=massif", f"--massif-out-file={OUT}", "--threshold=0.5", BIN,
         "--config", os.path.join(ROOT, "config.toml"), "--listen", ws, "--push-listen", push,
         "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while True:
            try:
                connections(push)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        clients = [await websockets.connect(f"ws://{ws}/ws", ping_interval=None) for _ in range(n)]
        while connections(push) < n:
            if time.time() > deadline:
                raise RuntimeError("hub never listed all connections")
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
    finally:
        hub.terminate()
        hub.wait(timeout=120)
    for c in clients:
        c.transport.abort()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    if not 1 <= n <= 5000:
        sys.exit("N must be 1..5000")
    asyncio.run(run(n))
    report = subprocess.run(["ms_print", OUT], capture_output=True, text=True, check=True).stdout
    lines = report.splitlines()
    peak = next(i for i, line in enumerate(lines) if "(peak)" in line)
    peak_id = lines[peak].split("(peak)")[0].split(",")[-1].strip()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(peak_id + " "))
    print(lines[start])
    for line in lines[start + 1:]:
        if line.startswith("->"):
            print(line[:160])
        if line.strip() and line.split()[0].isdigit() and not line.startswith(("->", "|")):
            break
    print(f"peak snapshot for {n} idle connections; full profile: ms_print {OUT}")


if __name__ == "__main__":
    main()
