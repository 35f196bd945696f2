"""Keys through the admin API: refused without the admin token; a key
issued there works on the very next request whichever shard it lands on,
and a revoked one is refused at once; every change is in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from conftest import GATEWAY_LINE, REQUEST_TIMEOUT, Upstream, gateway_config, start_gateway, write_config

TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    cfg = gateway_config(mock_upstream)
    del cfg["auth"]
    del cfg["listen"]
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    cfg["admin"] = {"token": TOKEN}
    cfg["audit"] = {"fsync": "always"}
    path = write_config(tmp_path_factory.mktemp("admin-keys") / "gateway.yaml", cfg)
    gw = start_gateway("gateway-admin-keys", path, logs_dir / "gateway-admin-keys.log", upstream_key)
    m = gw.proc.wait_line(GATEWAY_LINE)
    admin = f"http://{m.group(1)}:{m.group(2)}"
    yield gw, admin, path
    assert gw.stop() == 0


def chat(gw, key: str) -> int:
    # A new connection each time: the kernel spreads them over the shards.
    with httpx2.Client(trust_env=False) as c:
        r = c.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {key}", "connection": "close"},
            timeout=REQUEST_TIMEOUT,
        )
    return r.status_code


def test_the_admin_token_is_required(setup):
    _, admin, _ = setup
    for headers in ({}, {"authorization": "Bearer not-the-admin-token-000"}):
        r = httpx2.post(f"{admin}/admin/keys", json={"team": "t"}, headers=headers, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 401
        r = httpx2.get(f"{admin}/admin/keys", headers=headers, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 401


def test_an_issued_key_works_at_once_everywhere_and_a_revoked_one_stops(setup):
    gw, admin, path = setup
    auth = {"authorization": f"Bearer {TOKEN}"}
    r = httpx2.post(f"{admin}/admin/keys", json={"team": "ml", "environment": "prod"}, headers=auth, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["secret"].startswith("sg-") and made["team"] == "ml" and made["tenant"] is None
    # No waiting: every one of these lands on some shard right away.
    assert [chat(gw, made["secret"]) for _ in range(12)] == [200] * 12
    listed = httpx2.get(f"{admin}/admin/keys", headers=auth, timeout=REQUEST_TIMEOUT).json()["keys"]
    [row] = [k for k in listed if k["key_id"] == made["key_id"]]
    assert row["status"] == "active" and "secret" not in row and made["secret"] not in json.dumps(listed)
    r = httpx2.delete(f"{admin}/admin/keys/{made['key_id']}", headers=auth, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert [chat(gw, made["secret"]) for _ in range(12)] == [401] * 12
    r = httpx2.delete(f"{admin}/admin/keys/sg-NOSUCHKY", headers=auth, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 404
    r = httpx2.post(f"{admin}/admin/keys", json={"team": "ml", "colour": "red"}, headers=auth, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]

    import yaml

    import time

    audit_dir = Path(yaml.safe_load(path.read_text())["store"]["dir"]) / "audit"
    deadline = time.monotonic() + 10
    while True:  # the shard hands its events to the writer within 10 ms
        text = (audit_dir / "audit.log").read_text()
        actions = [json.loads(l) for l in text.splitlines() if '"kind":"admin"' in l]
        by_api = {(e["action"], e["detail"]["key_id"]) for e in actions if e["by"] == "admin API"}
        if ("key_revoked", made["key_id"]) in by_api or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ("key_created", made["key_id"]) in by_api and ("key_revoked", made["key_id"]) in by_api
    assert made["secret"] not in text


def test_a_key_made_with_the_cli_works_on_the_very_next_request(setup):
    """No waiting for the key log's watcher: a shard that meets a
    well-formed key it does not know re-reads the log before refusing."""
    import subprocess

    from conftest import binary

    gw, _, path = setup
    for _ in range(3):
        r = subprocess.run(
            [str(binary("shardgate")), "keys", "create", "--json", "--config", str(path)],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0, r.stderr
        secret = json.loads(r.stdout)["secret"]
        assert chat(gw, secret) == 200
    # A made-up key of the right shape is still a 401.
    assert chat(gw, "sg-ZZZZZZZZ" + "a" * 32) == 401
