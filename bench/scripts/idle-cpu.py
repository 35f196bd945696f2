#!/usr/bin/env python3
"""CPU a running server uses while its keep-alive client connections idle.

Opens N connections to HOST:PORT, sends one request on each (so each is a
served keep-alive connection, not just an accepted socket), keeps them all
open and quiet, and reports the CPU time (user + system, from /proc) the
server's process used over the window. An idle gateway should use none.

  python3 bench/scripts/idle-cpu.py --addr 127.0.0.1:8080 --pid PID \
      [--connections 100] [--seconds 10] [--path /v1/chat/completions --model demo]
"""
import argparse
import json
import os
import socket
import time


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--model", default="demo")
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    body = json.dumps(
        {"model": a.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ).encode()
    req = (
        f"POST {a.path} HTTP/1.1\r\nhost: {a.addr}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    socks = []
    for _ in range(a.connections):
        s = socket.create_connection((host, int(port)))
        s.sendall(req)
        s.recv(65536)
        socks.append(s)
    time.sleep(1.0)
    hz = os.sysconf("SC_CLK_TCK")
    t0 = cpu_ticks(a.pid)
    time.sleep(a.seconds)
    used = (cpu_ticks(a.pid) - t0) / hz
    print(
        f"{a.connections} idle keep-alive connections, {a.seconds:.0f} s: "
        f"{used * 1000:.0f} ms of CPU ({100 * used / a.seconds:.2f}% of a core)"
    )
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
