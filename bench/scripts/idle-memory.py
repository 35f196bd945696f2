#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, for a running server.

Opens N connections to HOST:PORT, sends one request on each (so each is a
served keep-alive connection, not just an accepted socket), keeps them all
open, and reports the server's resident memory growth divided by N.

  python3 bench/scripts/idle-memory.py --addr 127.0.0.1:8080 --pid PID --connections 10000
"""
import argparse
import json
import os
import resource
import socket
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--path", default="/healthz")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.addr.rsplit(":", 1)
    req = f"GET {a.path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()

    # Warm up allocator arenas and the server's first-use paths.
    warm = [socket.create_connection((host, int(port))) for _ in range(64)]
    for s in warm:
        s.sendall(req)
        s.recv(4096)
    for s in warm:
        s.close()
    time.sleep(0.5)

    before = rss_kib(a.pid)
    conns = []
    for _ in range(a.connections):
        s = socket.create_connection((host, int(port)))
        s.sendall(req)
        data = s.recv(4096)
        if not data.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"unexpected response: {data[:80]!r}")
        conns.append(s)
    time.sleep(1.0)
    after = rss_kib(a.pid)
    per_conn = (after - before) * 1024 / a.connections
    out = {
        "connections": a.connections,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_idle_connection": round(per_conn),
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.connections} idle keep-alive connections: RSS {before} KiB -> {after} KiB, "
              f"{per_conn / 1024:.2f} KiB per connection")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
