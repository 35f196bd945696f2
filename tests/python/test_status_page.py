"""The status page (`GET /` on the admin listener), rendered by a real
headless Chromium from Debian's packages: after the test's own requests,
the numbers the page shows (requests, errors, tokens and spend by team,
targets, top keys, recent denials) are the ones those requests make."""

from __future__ import annotations

import shutil
import time
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import httpx2
import pytest

from conftest import GATEWAY_LINE, REQUEST_TIMEOUT, Upstream, create_key, gateway_config, start_gateway, write_config

TOKEN = "status-admin-token-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
# $1000 per million input tokens, $2000 per million output: a visible spend.
PRICING = [{"model": "mock-*", "input_per_million_usd": 1000, "output_per_million_usd": 2000}]
POLICIES = [
    {"ai_runtime_policy": {"actor_scope": {"team": "ml"}, "model_access": {"allowed_models": ["demo"]}}},
    {"ai_runtime_policy": {"actor_scope": {"team": "ops"}, "budgets": {"requests_per_minute": 3}}},
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed (tests/run.sh installs Debian's package)", pytrace=False)
    return path


def render(url: str) -> str:
    """The page's DOM after its script ran for a few (virtual) seconds."""
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


class Dom(HTMLParser):
    """Text by element id, and table rows as {data-key: {data-field: text}}."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.rows: dict[str, dict[str, dict[str, str]]] = {}
        self.body: dict[str, str] = {}
        self._stack: list[tuple[str, dict]] = []
        self._table = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if tag == "table":
            self._table = a.get("id", "")
            self.rows.setdefault(self._table, {})
        if tag == "tr" and "data-key" in a:
            self.rows[self._table][a["data-key"]] = {}
            a["_row"] = a["data-key"]
        self._stack.append((tag, a))

    def handle_endtag(self, tag):
        while self._stack:
            t, _ = self._stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for tag, a in reversed(self._stack):
            if "id" in a and tag != "table":
                self.by_id[a["id"]] = self.by_id.get(a["id"], "") + data
                break
        field = next((a["data-field"] for _, a in reversed(self._stack) if "data-field" in a), None)
        row = next((a["_row"] for _, a in reversed(self._stack) if "_row" in a), None)
        if field and row is not None:
            cells = self.rows[self._table][row]
            cells[field] = cells.get(field, "") + data


def number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    cfg = gateway_config(mock_upstream)
    del cfg["auth"]
    del cfg["listen"]
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    cfg["admin"] = {"token": TOKEN}
    cfg["policies"] = POLICIES
    cfg["pricing"] = PRICING
    path = write_config(tmp_path_factory.mktemp("status-page") / "gateway.yaml", cfg)
    gw = start_gateway("gateway-status", path, logs_dir / "gateway-status.log", upstream_key)
    m = gw.proc.wait_line(GATEWAY_LINE)
    yield gw, f"http://{m.group(1)}:{m.group(2)}", path
    assert gw.stop() == 0


def test_the_page_shows_what_the_requests_did(setup):
    gw, admin, path = setup
    ml, ops = create_key(path, "ml"), create_key(path, "ops")
    sent = {"requests": 0, "errors": 0, "in": {"ml": 0, "ops": 0}, "out": {"ml": 0, "ops": 0}}

    def chat(key: str, model: str, team: str | None) -> int:
        r = httpx2.post(f"{gw.base_url}/chat/completions", json={"model": model, "messages": MESSAGES},
                        headers={"authorization": f"Bearer {key}"}, timeout=REQUEST_TIMEOUT)
        sent["requests"] += 1
        if r.status_code >= 400:
            sent["errors"] += 1
        elif team:
            u = r.json()["usage"]
            sent["in"][team] += u["prompt_tokens"]
            sent["out"][team] += u["completion_tokens"]
        return r.status_code

    assert [chat(ml["secret"], "demo", "ml") for _ in range(5)] == [200] * 5
    assert chat(ml["secret"], "short", "ml") == 403  # not an allowed model
    ops_statuses = []
    while 429 not in ops_statuses and len(ops_statuses) < 8:  # 3 a minute
        ops_statuses.append(chat(ops["secret"], "demo", "ops"))
    assert ops_statuses[-1] == 429 and set(ops_statuses[:-1]) == {200}, ops_statuses
    ops_ok = len(ops_statuses) - 1
    assert chat("sk-not-a-key-0000000000000000000000", "demo", None) == 401

    dom = Dom()
    dom.feed(render(f"{admin}/#token={TOKEN}"))
    assert dom.body.get("data-loaded") == "yes", dom.by_id.get("state")
    assert number(dom.by_id["requests"]) == sent["requests"] == 5 + 1 + len(ops_statuses) + 1
    assert number(dom.by_id["errors"]) == sent["errors"] == 3
    assert number(dom.by_id["rps"]) >= 0  # two polls apart: a rate, not a dash
    assert 0 < number(dom.by_id["p50"]) <= number(dom.by_id["p99"])

    teams = dom.rows["teams"]
    for team, requests in (("ml", 6), ("ops", len(ops_statuses))):
        row = teams[team]
        assert number(row["requests"]) == requests
        assert number(row["input_tokens"]) == sent["in"][team]
        assert number(row["output_tokens"]) == sent["out"][team]
        spend = (sent["in"][team] * 1000 + sent["out"][team] * 2000) / 1e6
        assert abs(number(row["spend_usd"]) - spend) < 1e-6, (row, spend)

    target = dom.rows["targets"]["up/mock-1"]
    assert number(target["answered"]) == 5 + ops_ok and number(target["failed"]) == 0
    assert target["circuit"] == "closed"

    keys = dom.rows["keys"]
    assert number(keys[ml["key_id"]]["requests"]) == 6 and keys[ml["key_id"]]["team"] == "ml"
    assert number(keys[ops["key_id"]]["requests"]) == len(ops_statuses)
    # Top by spend: ml spent on five answers, ops on fewer.
    assert list(keys)[:2] == [ml["key_id"], ops["key_id"]]

    denials = sorted(r["status"] for r in dom.rows["denials"].values())
    assert denials == ["401", "403", "429"]
    by_status = {r["status"]: r for r in dom.rows["denials"].values()}
    assert by_status["403"]["team"] == "ml" and by_status["403"]["model"] == "short"
    assert by_status["429"]["key_id"] == ops["key_id"]


def test_the_figures_need_the_token_and_the_page_holds_none(setup):
    _, admin, _ = setup
    assert httpx2.get(f"{admin}/admin/status", timeout=REQUEST_TIMEOUT).status_code == 401
    r = httpx2.get(f"{admin}/", timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    dom = Dom()
    dom.feed(render(f"{admin}/"))  # no token: the page asks for one
    assert dom.by_id["state"] == "admin token needed"
    assert dom.by_id["requests"] == "–"


def test_usage_per_key_team_and_tenant_for_a_month(setup):
    gw, admin, path = setup
    key = create_key(path, "billing")
    auth = {"authorization": f"Bearer {TOKEN}"}
    spent_in = spent_out = 0
    for _ in range(3):
        r = httpx2.post(f"{gw.base_url}/chat/completions", json={"model": "demo", "messages": MESSAGES},
                        headers={"authorization": f"Bearer {key['secret']}"}, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 200
        spent_in += r.json()["usage"]["prompt_tokens"]
        spent_out += r.json()["usage"]["completion_tokens"]
    want = {"requests": 3, "input_tokens": spent_in, "output_tokens": spent_out,
            "spend_micros": spent_in * 1000 + spent_out * 2000}
    deadline = time.monotonic() + 5
    while True:  # usage reaches the log within its group commit
        r = httpx2.get(f"{admin}/admin/usage?by=key", headers=auth, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 200
        rows = {row["key_id"]: row for row in r.json()["usage"]}
        row = rows.get(key["key_id"], {})
        if {k: row.get(k) for k in want} == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {k: row.get(k) for k in want} == want, row
    assert row["team"] == "billing" and row["tenant"] == "acme"
    by_team = {r["team"]: r for r in httpx2.get(f"{admin}/admin/usage?by=team", headers=auth,
                                                timeout=REQUEST_TIMEOUT).json()["usage"]}
    assert by_team["billing"]["requests"] == 3
    tenants = httpx2.get(f"{admin}/admin/usage?by=tenant", headers=auth, timeout=REQUEST_TIMEOUT).json()
    assert tenants["by"] == "tenant" and tenants["usage"][0]["tenant"] == "acme"
    assert tenants["usage"][0]["requests"] >= 3
    # Another month has none; nonsense is refused, and the token is needed.
    r = httpx2.get(f"{admin}/admin/usage?by=key&month=1999-01", headers=auth, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200 and r.json()["usage"] == []
    assert httpx2.get(f"{admin}/admin/usage?by=galaxy", headers=auth, timeout=REQUEST_TIMEOUT).status_code == 400
    assert httpx2.get(f"{admin}/admin/usage?month=soon", headers=auth, timeout=REQUEST_TIMEOUT).status_code == 400
    assert httpx2.get(f"{admin}/admin/usage", timeout=REQUEST_TIMEOUT).status_code == 401
    targets = httpx2.get(f"{admin}/admin/targets", headers=auth, timeout=REQUEST_TIMEOUT).json()["targets"]
    [up] = [t for t in targets if t["target"] == "up/mock-1"]
    # A lone target has no breaker or latency figure: nowhere else to go.
    assert up["circuit"] == "closed" and up["answered"] >= 3 and up["latency_ms"] is None
