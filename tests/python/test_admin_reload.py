"""`POST /admin/reload`: a valid config is current on every shard when the
answer comes, an invalid one is refused naming its field while the old one
serves on, and reloads under a mixed load of streams and plain requests
fail nothing and cut no stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx2
import openai
import pytest

from conftest import GATEWAY_LINE, REQUEST_TIMEOUT, Upstream, gateway_config, start_gateway, write_config

TOKEN = "reload-admin-token-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


def config(upstream: Upstream, extra: dict | None = None) -> dict:
    cfg = gateway_config(upstream, extra_models=extra)
    del cfg["listen"]
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    cfg["admin"] = {"token": TOKEN}
    cfg["models"]["paced"] = {"targets": [{"provider": "up", "model": "mock-tokens-20-tps-100"}]}
    return cfg


@pytest.fixture
def setup(tmp_path: Path, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    path = write_config(tmp_path / "gateway.yaml", config(mock_upstream))
    gw = start_gateway("gateway-reload", path, logs_dir / "gateway-reload.log", upstream_key)
    m = gw.proc.wait_line(GATEWAY_LINE)
    yield gw, f"http://{m.group(1)}:{m.group(2)}", path
    assert gw.stop() == 0


def reload(admin: str, token: str = TOKEN) -> httpx2.Response:
    return httpx2.post(f"{admin}/admin/reload", headers={"authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT)


def status_on_fresh_connections(gw, model: str, n: int = 8) -> set[int]:
    seen = set()
    for _ in range(n):
        with httpx2.Client(trust_env=False) as c:  # a new connection: any shard
            r = c.post(f"{gw.base_url}/chat/completions", json={"model": model, "messages": MESSAGES},
                       headers={"connection": "close"}, timeout=REQUEST_TIMEOUT)
        seen.add(r.status_code)
    return seen


def test_a_valid_config_is_current_everywhere_when_the_answer_comes(setup, mock_upstream: Upstream):
    gw, admin, path = setup
    assert status_on_fresh_connections(gw, "added") == {404}
    write_config(path, config(mock_upstream, {"added": [("local", "mock-1")]}))
    r = reload(admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"reloaded": True, "generation": 2}
    assert status_on_fresh_connections(gw, "added") == {200}


def test_an_invalid_config_is_refused_naming_the_field_and_the_old_one_serves(setup, mock_upstream: Upstream):
    gw, admin, path = setup
    bad = config(mock_upstream, {"added": [("local", "mock-1")]})
    bad["models"]["added"]["strategy"] = "fastest"
    write_config(path, bad)
    r = reload(admin)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "config_refused" and "models.added.strategy" in err["message"]
    assert status_on_fresh_connections(gw, "demo") == {200}
    assert status_on_fresh_connections(gw, "added") == {404}


def test_reload_needs_the_admin_token(setup):
    _, admin, _ = setup
    assert reload(admin, "not-the-admin-token-0000").status_code == 401
    assert httpx2.post(f"{admin}/admin/reload", timeout=REQUEST_TIMEOUT).status_code == 401


def test_ten_reloads_under_load_fail_nothing_and_cut_no_stream(setup, mock_upstream: Upstream):
    gw, admin, path = setup
    stop = threading.Event()
    failures: list[str] = []
    done = {"plain": 0, "stream": 0}

    def work(stream: bool):
        c = openai.OpenAI(api_key="sk-x", base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                          http_client=httpx2.Client(trust_env=False))
        while not stop.is_set():
            try:
                if stream:
                    chunks = list(c.chat.completions.create(model="paced", messages=MESSAGES, stream=True))
                    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
                    if len(text.split()) != 20 or finish != ["stop"]:
                        failures.append(f"stream cut: {len(text.split())} words, finish {finish}")
                    done["stream"] += 1
                else:
                    r = c.chat.completions.create(model="demo", messages=MESSAGES)
                    if not r.choices[0].message.content:
                        failures.append("empty answer")
                    done["plain"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            time.sleep(0.15)
            extra = {"added": [("local", "mock-1")]} if i % 2 == 0 else None
            write_config(path, config(mock_upstream, extra))
            r = reload(admin)
            assert r.status_code == 200, r.text
    finally:
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures[:5]
    assert done["stream"] >= 4 and done["plain"] >= 10, done
