#!/usr/bin/env python3
"""Hub RSS per permessage-deflate connection: idle, and after a few compressed publications.

Starts target/release/switchboard with one JSON-RPC route (compression as MODE says), opens N
connections that offer permessage-deflate (the `websockets` client's default offer, as a
browser's: `permessage-deflate; client_max_window_bits`), spread over source addresses
127.0.0.2-127.0.0.250. Each subscribes to one channel (a compressed message the hub inflates)
and the hub's RSS is read; then PUBLICATIONS publications of about 4 KiB of JSON are pushed
through the push API, every client waits for all of them, and RSS is read again, and once
more after 2.5 heartbeat intervals (2 s here) without traffic. Each figure is the hub's RSS
above what it had before the first client connected, divided by N.

MODE:
  shared    compression = true with the route defaults (no context takeover on either side:
            one compressor per worker, each publication compressed once per worker and shared)
  takeover  compression = true, server_no_context_takeover = false and
            client_no_context_takeover = false (a compressor and an inflater per connection)
  plain     compression = false (the same load uncompressed, for comparison)

Bounded: N <= 19000 (one process's open-files cap), a 300 s deadline.

Usage: python3 bench/compression_rss.py [N] [MODE] [PUBLICATIONS]
       (needs: pip install websockets)
"""
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "switchboard")

ROUTE_KEYS = {
    "shared": "compression = true\n",
    "takeover": "compression = true\nserver_no_context_takeover = false\n"
                "client_no_context_takeover = false\n",
    "plain": "",
}


# A short heartbeat, so that the idle check that drops a connection's own compressor (after
# a heartbeat interval without use) runs within the measurement.
HEARTBEAT_MS = 2000


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


def healthz(push):
    with urllib.request.urlopen(f"http://{push}/healthz", timeout=5) as r:
        return json.load(r)["connections"]


def publish(push, body):
    request = urllib.request.Request(
        f"http://{push}/api/publish", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def story(i):
    """About 4 KiB of JSON-friendly text that compresses like real messages (not to nothing)."""
    words = ["hub", "channel", "frame", "socket", "window", "deflate", "publish", "worker"]
    state, out = 2654435761 + i, []
    while sum(len(w) + 1 for w in out) < 4096:
        state = (state * 1103515245 + 12345) % 2**31
        out.append(words[state % len(words)] + str(state % 97))
    return " ".join(out)


async def settle(pid, seconds=3.0):
    """RSS once jemalloc's background purge has had a moment."""
    await asyncio.sleep(seconds)
    return rss_kib(pid)


async def run(n, mode, publications):
    ws_port, push_port = free_port(), free_port()
    ws, push = f"127.0.0.1:{ws_port}", f"127.0.0.1:{push_port}"
    config = (
        "[server]\npage = false\n\n[limits]\nmax_messages_per_second = 100000\n"
        f"heartbeat_interval_ms = {HEARTBEAT_MS}\n\n"
        "[backend]\nkind = \"loopback\"\n\n"
        f"[[routes]]\npath = \"/rpc\"\ndialect = \"jsonrpc\"\n{ROUTE_KEYS[mode]}"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
        config_path = f.name
    hub = subprocess.Popen(
        [BIN, "--config", config_path, "--listen", ws, "--push-listen", push,
         "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    conns, readers = [], []
    try:
        while True:
            try:
                healthz(push)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
        base = await settle(hub.pid, 1.0)
        for i in range(n):
            source = (f"127.0.0.{2 + i % 249}", 0)
            conns.append(await websockets.connect(
                f"ws://{ws}/rpc", ping_interval=None, max_size=None, local_addr=source,
                compression=None if mode == "plain" else "deflate"))
        extensions = conns[0].response.headers.get("Sec-WebSocket-Extensions", "-")
        # Each client subscribes (a message the client compresses, the hub inflates).
        request = {"jsonrpc": "2.0", "id": 1, "method": "subscribe",
                   "params": {"channel": "bench", "padding": "x" * 200}}
        await asyncio.gather(*(c.send(json.dumps(request)) for c in conns))
        await asyncio.gather(*(c.recv() for c in conns))
        if time.time() > deadline:
            raise RuntimeError("deadline passed while connecting")
        idle = await settle(hub.pid)

        received = [0] * n

        async def read(i, c):
            while received[i] < publications:
                await c.recv()
                received[i] += 1

        readers = [asyncio.create_task(read(i, c)) for i, c in enumerate(conns)]
        for p in range(publications):
            reply = publish(push, {"channel": "bench", "data": {"n": p, "story": story(p)}})
            if reply["reached"] != n:
                raise RuntimeError(f"publication {p} reached {reply['reached']} of {n}")
        await asyncio.wait_for(asyncio.gather(*readers), max(1.0, deadline - time.time()))
        after = await settle(hub.pid)
        # Two more heartbeat intervals without traffic: kept compressors are dropped.
        quiet = await settle(hub.pid, 2.5 * HEARTBEAT_MS / 1000)
        return base, idle, after, quiet, extensions
    finally:
        for r in readers:
            r.cancel()
        for c in conns:
            c.transport.abort()
        hub.terminate()
        hub.wait(timeout=30)
        os.unlink(config_path)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    mode = sys.argv[2] if len(sys.argv) > 2 else "shared"
    publications = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    if not 1 <= n <= 19000:
        sys.exit("N must be 1..19000")
    if mode not in ROUTE_KEYS:
        sys.exit(f"MODE must be one of {', '.join(ROUTE_KEYS)}")
    base, idle, after, quiet, extensions = asyncio.run(run(n, mode, publications))
    print(f"mode {mode}, {n} connections, agreed: {extensions}")
    print(f"hub RSS: {base} KiB before, {idle} KiB with {n} subscribed connections, "
          f"{after} KiB after {publications} publications of ~4 KiB to each, "
          f"{quiet} KiB after {2.5 * HEARTBEAT_MS / 1000:.0f} s more without traffic")
    print(f"per connection: idle {(idle - base) / n:.2f} KiB, "
          f"after the publications {(after - base) / n:.2f} KiB, "
          f"quiet again {(quiet - base) / n:.2f} KiB")


if __name__ == "__main__":
    main()
