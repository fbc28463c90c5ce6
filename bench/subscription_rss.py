#!/usr/bin/env python3
"""Hub RSS with N JSON-RPC connections that each subscribe until refused.

Starts a switchboard binary (default target/release/switchboard) with one `jsonrpc` route, opens
N connections, records the hub's VmRSS, then has every connection subscribe to up to M channels
of L bytes each (names unique per connection, so nothing is shared; with --shared every
connection takes the same names), counts the subscriptions the
hub accepted, records VmRSS again and prints the cost per connection. Standard library only: a
minimal WebSocket client (masked text frames out, unmasked frames in).

Usage: python3 bench/subscription_rss.py [--bin PATH] [--conns N] [--subs M] [--len L]
           [--shared] [--limits 'max_channels = 1000000']   (--limits is appended to [limits])
"""
import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("handshake: connection closed")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"handshake: {head[:80]!r}")

    def send(self, text):
        payload = text.encode()
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_text(self):
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            if b0 & 0x0F == 1:
                return payload.decode()
            if b0 & 0x0F == 8:
                raise RuntimeError(f"closed by the hub: {payload!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "switchboard"))
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--subs", type=int, default=1024)
    ap.add_argument("--len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--limits", default="")
    ap.add_argument("--shared", action="store_true",
                    help="every connection subscribes to the same names (channels shared)")
    args = ap.parse_args()

    ws_port, push_port = free_port(), free_port()
    config = f"""
[server]
page = false

[limits]
heartbeat_interval_ms = 600000
heartbeat_timeout_ms = 1200000
{args.limits}

[[routes]]
path = "/rpc"
dialect = "jsonrpc"
"""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
    hub = subprocess.Popen(
        [args.bin, "--config", f.name, "--listen", f"127.0.0.1:{ws_port}",
         "--push-listen", f"127.0.0.1:{push_port}", "--log-level", "warn"],
        stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{push_port}/healthz", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        clients = [Client(ws_port) for _ in range(args.conns)]
        time.sleep(0.5)
        before = rss_kib(hub.pid)
        accepted = refused = 0
        messages = set()
        for c, client in enumerate(clients):
            for start in range(0, args.subs, args.batch):
                batch = []
                for i in range(start, min(start + args.batch, args.subs)):
                    owner = 0 if args.shared else c
                    name = f"{owner:05d}-{i:05d}-".ljust(args.len, "x")
                    batch.append({"jsonrpc": "2.0", "id": i, "method": "subscribe",
                                  "params": {"channel": name}})
                client.send(json.dumps(batch))
                reply = json.loads(client.recv_text())
                for item in reply if isinstance(reply, list) else [reply]:
                    if item.get("result") == "subscribed":
                        accepted += 1
                    else:
                        refused += 1
                        messages.add(item["error"]["message"])
        time.sleep(0.5)
        after = rss_kib(hub.pid)
        print(json.dumps({
            "bin": args.bin, "conns": args.conns, "subs_asked": args.subs,
            "name_bytes": args.len, "shared": args.shared, "limits": args.limits,
            "accepted_per_conn": accepted / args.conns, "refused": refused,
            "errors": sorted(messages),
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": round((after - before) / args.conns, 1),
        }))
        for client in clients:
            client.sock.close()
    finally:
        hub.terminate()
        hub.wait(timeout=10)
        os.unlink(f.name)


if __name__ == "__main__":
    main()
