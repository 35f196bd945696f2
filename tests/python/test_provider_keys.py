"""Provider credentials managed by the gateway and encrypted at rest: set
through the admin API or `shardgate providers set-key` (stdin), in effect
without a restart, listed by their last four characters only, never
logged, echoed or written in the clear, and kept across a change of the
key-encryption key (KEK) with no failed request and no wipe.

The mock upstream wants its key: the config names a wrong one, so a
request succeeds only with the stored key.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx2
import openai
import pytest
import yaml

from conftest import GATEWAY_LINE, REQUEST_TIMEOUT, Gateway, Proc, Upstream, binary, gateway_config, write_config

ADMIN_TOKEN = "provider-keys-admin-token-0123456789"
OLD_KEK = "old-key-encryption-secret-0123456789"
NEW_KEK = "new-key-encryption-secret-9876543210"


def config(upstream: Upstream, tmp: Path, kek_env: str = "SG_KEK", previous: bool = False) -> Path:
    cfg = gateway_config(upstream)
    # Only the provider under test: the others would read the upstream key
    # from the environment, which this test keeps it out of.
    cfg["providers"] = {"up": cfg["providers"]["up"]}
    cfg["models"] = {"demo": cfg["models"]["demo"]}
    cfg["providers"]["up"]["api_key"] = "sk-wrong-key-from-the-file"
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    del cfg["listen"]
    cfg["admin"] = {"token": ADMIN_TOKEN}
    cfg["audit"] = {"fsync": "always"}
    cfg["store"] = {"dir": str(tmp / "data"), "kek": "${" + kek_env + "}"}
    if previous:
        cfg["store"]["kek_previous"] = ["${SG_KEK_OLD}"]
    return write_config(tmp / "gateway.yaml", cfg)


def start(path: Path, log: Path, env: dict[str, str]) -> tuple[Gateway, str]:
    proc = Proc("keys-gateway", [str(binary("shardgate")), "serve", "--config", str(path), "--no-pin"], log, env=env)
    m = proc.wait_line(GATEWAY_LINE)
    a = proc.wait_line(GATEWAY_LINE)
    return Gateway(proc, m.group(1), int(m.group(2)), int(m.group(3)), path), f"http://{a.group(1)}:{a.group(2)}"


def cli(path: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary("shardgate")), "providers", *args, "--config", str(path)],
        input=stdin, capture_output=True, text=True, timeout=30, env={**os.environ, **env},
    )


def admin(url: str, method: str, path: str, body: dict | None = None) -> httpx2.Response:
    return httpx2.request(method, url + path, json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                          timeout=10, trust_env=False)


def ask(gw: Gateway) -> int:
    r = httpx2.post(gw.url + "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
                    timeout=REQUEST_TIMEOUT, trust_env=False)
    return r.status_code


def test_a_key_set_through_the_admin_api_serves_at_once_and_never_shows(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    path = config(mock_upstream, tmp_path)
    env = {"SG_KEK": OLD_KEK}
    gw, url = start(path, tmp_path / "gateway.log", env)
    answers: list[str] = []
    try:
        assert ask(gw) == 401  # the file's key is wrong
        r = admin(url, "PUT", "/admin/providers/up/key", {"api_key": upstream_key})
        answers.append(r.text)
        assert r.status_code == 200, r.text
        assert r.json()["last4"] == upstream_key[-4:]
        assert ask(gw) == 200  # no restart
        listing = admin(url, "GET", "/admin/providers")
        answers.append(listing.text)
        [row] = listing.json()["data"]
        assert row["provider"] == "up" and row["last4"] == upstream_key[-4:]
        assert set(row) == {"provider", "field", "last4", "kek_id", "set_at_ms", "rotated_at_ms"}
        r = admin(url, "PUT", "/admin/providers/nope/key", {"api_key": "sk-x"})
        assert r.status_code == 404
        r = admin(url, "PUT", "/admin/providers/up/key", {"key": upstream_key})
        answers.append(r.text)
        assert r.status_code == 400 and upstream_key not in r.text
        # Removed: the file's (wrong) key applies again.
        assert admin(url, "DELETE", "/admin/providers/up/key").status_code == 200
        assert ask(gw) == 401
        assert admin(url, "PUT", "/admin/providers/up/key", {"api_key": upstream_key}).status_code == 200
        assert ask(gw) == 200
    finally:
        assert gw.stop() == 0
    # Nowhere in the clear: data directory (store, audit), the log, answers.
    for f in (tmp_path / "data").rglob("*"):
        if f.is_file():
            assert upstream_key.encode() not in f.read_bytes(), f
    assert upstream_key not in (tmp_path / "gateway.log").read_text()
    assert all(upstream_key not in a for a in answers)
    audit = "".join(f.read_text() for f in (tmp_path / "data" / "audit").glob("audit*.log"))
    assert '"provider_key_set"' in audit


def test_the_cli_reads_stdin_and_a_running_gateway_takes_it(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    path = config(mock_upstream, tmp_path)
    env = {"SG_KEK": OLD_KEK}
    gw, _ = start(path, tmp_path / "gateway.log", env)
    try:
        assert ask(gw) == 401
        r = cli(path, env, "set-key", "up", stdin=upstream_key + "\n")
        assert r.returncode == 0, r.stderr
        assert upstream_key not in r.stdout + r.stderr
        deadline = time.monotonic() + 5
        while ask(gw) != 200:
            assert time.monotonic() < deadline, "the stored key did not take effect"
            time.sleep(0.2)
        r = cli(path, env, "list", "--json")
        assert json.loads(r.stdout)[0]["last4"] == upstream_key[-4:] and upstream_key not in r.stdout
        assert cli(path, env, "set-key", "ghost", stdin="sk-x").returncode == 1
    finally:
        assert gw.stop() == 0


def test_the_kek_rotates_under_load_with_no_failed_request(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    path = config(mock_upstream, tmp_path)
    old = {"SG_KEK": OLD_KEK}
    assert cli(path, old, "set-key", "up", stdin=upstream_key).returncode == 0
    # The gateway runs with the new KEK and the old one still accepted.
    both = {"SG_KEK": NEW_KEK, "SG_KEK_OLD": OLD_KEK}
    path = config(mock_upstream, tmp_path, previous=True)
    gw, url = start(path, tmp_path / "gateway.log", both)
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx2.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as h:
            while not stop.is_set():
                r = h.post(gw.url + "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
                statuses.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        before = json.loads(cli(path, both, "list", "--json").stdout)[0]["kek_id"]
        r = cli(path, both, "rotate-kek")
        assert r.returncode == 0 and "re-wrapped 1" in r.stdout, r.stdout + r.stderr
        after = json.loads(cli(path, both, "list", "--json").stdout)[0]["kek_id"]
        assert after != before
        time.sleep(1.5)  # the gateway reloads on the file's change
        assert admin(url, "POST", "/admin/reload").status_code == 200
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
        assert gw.stop() == 0
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    # The old KEK can go now.
    path = config(mock_upstream, tmp_path)
    gw, _ = start(path, tmp_path / "gateway-2.log", {"SG_KEK": NEW_KEK})
    try:
        assert ask(gw) == 200
    finally:
        assert gw.stop() == 0


def test_a_wrong_kek_is_refused_naming_the_record_and_nothing_is_lost(tmp_path: Path, mock_upstream: Upstream, upstream_key: str):
    path = config(mock_upstream, tmp_path)
    assert cli(path, {"SG_KEK": OLD_KEK}, "set-key", "up", stdin=upstream_key).returncode == 0
    stored = (tmp_path / "data" / "provider_keys.json").read_bytes()
    r = subprocess.run([str(binary("shardgate")), "serve", "--config", str(path), "--no-pin"],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "SG_KEK": "not-the-key-encryption-secret-at-all"})
    assert r.returncode != 0
    assert "store.kek" in r.stderr and "`up`" in r.stderr, r.stderr
    assert upstream_key not in r.stderr
    assert (tmp_path / "data" / "provider_keys.json").read_bytes() == stored
    # With the right KEK it serves.
    gw, _ = start(path, tmp_path / "gateway.log", {"SG_KEK": OLD_KEK})
    try:
        assert ask(gw) == 200
    finally:
        assert gw.stop() == 0
