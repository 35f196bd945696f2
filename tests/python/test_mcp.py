"""The MCP gateway, driven by the official `mcp` SDK on both sides.

Servers: `MCPServer`s from the SDK (`mcp_server.py`), one over Streamable
HTTP with event streams and sessions (`billing`), one over Streamable HTTP
with JSON answers and no sessions (`tickets`), one over stdio (`files`),
and one configured but down (`ghost`). Clients: `mcp.Client` in
`mode="auto"` (which lands on 2026-07-28) and `mode="legacy"` (the
handshake era), with virtual keys from `shardgate keys create`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import REQUEST_TIMEOUT, Upstream, create_key, gateway_config, start_gateway, write_config

HERE = Path(__file__).resolve().parent
SERVER = HERE / "mcp_server.py"
MODES = {"auto": "2026-07-28", "legacy": "2025-11-25"}

POLICIES = [
    {
        "ai_runtime_policy": {
            "name": "support",
            "actor_scope": {"team": "support"},
            "tools": {"allowed": ["billing.*", "tickets.*", "files.*", "legacy.*", "ghost.*"], "denied": ["billing.update_*"]},
            "audit": {"log_prompts": "metadata_only", "log_tool_calls": True},
        }
    },
    {"ai_runtime_policy": {"name": "readers", "actor_scope": {"team": "readers"}, "tools": {"scopes": ["read"]}}},
    {"ai_runtime_policy": {"name": "none", "actor_scope": {"team": "no-tools"}, "tools": {"denied": ["*"]}}},
    {"ai_runtime_policy": {"name": "tiny", "actor_scope": {"team": "tiny"}, "budgets": {"requests_per_minute": 3}}},
    {"ai_runtime_policy": {"name": "guarded", "actor_scope": {"team": "guarded"}, "guardrails": {"tool_calls": ["no-cards", "mask-mail"]}}},
]
GUARDRAILS = [
    {"name": "no-cards", "pii": ["credit_card"], "action": "block"},
    {"name": "mask-mail", "pii": ["email"], "action": "redact"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http_server(name: str, logs: Path, events: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = open(logs / f"mcp-{name}.log", "wb")
    env = {**os.environ, "MCP_TEST_EVENTS": str(events)}
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), name, "--port", str(port), *flags], stdout=log, stderr=log, env=env
    )
    deadline = time.monotonic() + 30
    while True:  # ready once it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"mcp server {name} did not start: {(logs / f'mcp-{name}.log').read_text()}")
            time.sleep(0.1)


class Setup:
    def __init__(self, gw, cfg: Path, events: Path, keys: dict[str, str]):
        self.gw, self.cfg, self.events, self.keys = gw, cfg, events, keys

    @property
    def url(self) -> str:
        return f"{self.gw.url}/mcp"

    def events_text(self) -> str:
        return self.events.read_text() if self.events.exists() else ""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    tmp = tmp_path_factory.mktemp("mcp")
    events = tmp / "events.log"
    billing, billing_port = start_http_server("billing", logs_dir, events)
    tickets, tickets_port = start_http_server("tickets", logs_dir, events, "--json", "--stateless")
    legacy, legacy_port = start_http_server("legacy", logs_dir, events, "--legacy-only")
    cfg = gateway_config(mock_upstream)
    del cfg["auth"]  # keys required
    cfg["policies"] = POLICIES
    cfg["guardrails"] = GUARDRAILS
    cfg["mcp_servers"] = {
        "billing": {"url": f"http://127.0.0.1:{billing_port}/mcp", "timeout": "20s"},
        "tickets": {"url": f"http://127.0.0.1:{tickets_port}/mcp"},
        "legacy": {"url": f"http://127.0.0.1:{legacy_port}/mcp"},
        "files": {"command": sys.executable, "args": [str(SERVER), "files", "--stdio"], "env": {"MCP_TEST_EVENTS": str(events)}},
        "ghost": {"url": f"http://127.0.0.1:{free_port()}/mcp", "timeout": "2s"},
    }
    path = write_config(tmp / "gateway.yaml", cfg)
    keys = {team: create_key(path, team)["secret"] for team in ("support", "readers", "no-tools", "tiny", "guarded")}
    gw = start_gateway("gateway-mcp", path, logs_dir / "gateway-mcp.log", upstream_key)
    try:
        yield Setup(gw, path, events, keys)
    finally:
        rc = gw.stop()
        for p in (billing, tickets, legacy):
            p.terminate()
            p.wait(10)
        assert rc == 0, gw.proc.log_tail()


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


async def with_client(url: str, key: str, mode: str, body):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=REQUEST_TIMEOUT) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as c:
            return await body(c)


@pytest.mark.parametrize("mode", MODES)
def test_lists_merge_every_live_server_under_prefixed_names(setup, mode):
    async def body(c):
        assert c.protocol_version == MODES[mode]
        tools = {t.name for t in (await c.list_tools()).tools}
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        resources = {str(r.uri) for r in (await c.list_resources()).resources}
        return tools, prompts, resources

    tools, prompts, resources = run(with_client, setup.url, setup.keys["support"], mode, body)
    for server in ("billing", "tickets", "files", "legacy"):
        assert {f"{server}.echo", f"{server}.slow", f"{server}.whoami"} <= tools
        assert f"{server}.greet" in prompts
        assert f"{server}.resource://hello" in resources
    # Denied by the support policy: invisible. The dead server: absent.
    assert not any(t.startswith("billing.update_") for t in tools)
    assert "tickets.update_record" in tools
    assert not any(t.startswith("ghost.") for t in tools)


@pytest.mark.parametrize("mode", MODES)
def test_calls_reach_each_server_in_its_transport(setup, mode):
    async def body(c):
        out = {}
        for server in ("billing", "tickets", "files", "legacy"):
            r = await c.call_tool(f"{server}.echo", {"text": f"hi {server}"})
            assert not r.is_error
            out[server] = r.content[0].text
        g = await c.get_prompt("tickets.greet", {"who": "Ann"})
        rr = await c.read_resource("files.resource://hello")
        return out, g.messages[0].content.text, rr.contents[0].text

    out, greeting, hello = run(with_client, setup.url, setup.keys["support"], mode, body)
    assert out == {s: f"hi {s}" for s in ("billing", "tickets", "files", "legacy")}
    assert greeting == "Hello, Ann!"
    assert hello == "hello from files"


@pytest.mark.parametrize("mode", MODES)
def test_denied_call_says_which_rule_refused_it(setup, mode):
    async def body(c):
        with pytest.raises(MCPError) as e:
            await c.call_tool("billing.update_record", {"record": "r1", "value": "x"})
        return str(e.value)

    msg = run(with_client, setup.url, setup.keys["support"], mode, body)
    assert "billing.update_record" in msg and "support" in msg and "billing.update_*" in msg


@pytest.mark.parametrize("mode", MODES)
def test_tool_call_arguments_pass_the_callers_guardrails(setup, mode):
    async def body(c):
        r = await c.call_tool("billing.echo", {"text": "write to jane.doe@example.com"})
        with pytest.raises(MCPError) as e:
            await c.call_tool("billing.echo", {"text": "card 4111 1111 1111 1111"})
        clean = await c.call_tool("billing.echo", {"text": "nothing here"})
        return r.content[0].text, str(e.value), clean.content[0].text

    masked, refused, clean = run(with_client, setup.url, setup.keys["guarded"], mode, body)

    async def results(c):
        # What tools return passes the same checks (JSON and event-stream
        # servers both).
        out = []
        for server in ("billing", "tickets"):
            r = await c.call_tool(f"{server}.contact", {})
            out.append(r.content[0].text)
            with pytest.raises(MCPError) as e:
                await c.call_tool(f"{server}.card_on_file", {})
            out.append(str(e.value))
        return out

    got = run(with_client, setup.url, setup.keys["guarded"], mode, results)
    assert got[0] == got[2] == "write to [REDACTED:email] today"
    assert "no-cards" in got[1] and "no-cards" in got[3] and "4111" not in got[1] + got[3]
    # The server saw (and echoed) the redacted arguments.
    assert masked == "write to [REDACTED:email]"
    assert "no-cards" in refused and "4111" not in refused
    assert clean == "nothing here"
    assert "4111 1111 1111 1111" not in setup.events_text()


def test_read_only_scope_hides_and_refuses_writes(setup):
    async def body(c):
        tools = {t.name for t in (await c.list_tools()).tools}
        ok = await c.call_tool("tickets.echo", {"text": "read"})
        with pytest.raises(MCPError) as e:
            await c.call_tool("tickets.update_record", {"record": "r1", "value": "x"})
        return tools, ok.content[0].text, str(e.value)

    tools, ok, refused = run(with_client, setup.url, setup.keys["readers"], "auto", body)
    assert "tickets.echo" in tools and "tickets.slow" in tools
    assert not any(t.endswith(".update_record") for t in tools)
    # No annotations at all: unknown scope, not read.
    assert not any(t.endswith(".whoami") for t in tools)
    assert ok == "read"
    assert "tools.scopes" in refused and "readers" in refused


def test_a_caller_with_no_tools_gets_an_empty_list(setup):
    async def body(c):
        return (await c.list_tools()).tools

    assert run(with_client, setup.url, setup.keys["no-tools"], "auto", body) == []


def test_no_or_unknown_key_is_401(setup):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/list"}
    for auth in ({}, {"authorization": "Bearer sk-unknown-0123456789"}):
        r = httpx2.post(setup.url, json=body, headers={**headers, **auth}, timeout=REQUEST_TIMEOUT)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == -32600 and "key" in r.json()["error"]["message"]

    async def body_fn(c):
        await c.list_tools()

    with pytest.raises(Exception):
        run(with_client, setup.url, "sk-unknown-0123456789", "auto", body_fn)


def test_modern_headers_must_match_the_body(setup):
    key = setup.keys["support"]
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    msg = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "billing.echo", "arguments": {"text": "x"}, "_meta": meta}}
    base = {"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream", "mcp-protocol-version": "2026-07-28"}
    r = httpx2.post(setup.url, json=msg, headers={**base, "mcp-method": "tools/call", "mcp-name": "billing.other"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32020 and r.json()["id"] == 7
    old = {**msg, "params": {**msg["params"], "_meta": {"io.modelcontextprotocol/protocolVersion": "2030-01-01"}}}
    r = httpx2.post(setup.url, json=old, headers={**base, "mcp-protocol-version": "2030-01-01", "mcp-method": "tools/call", "mcp-name": "billing.echo"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32022
    assert "2026-07-28" in r.json()["error"]["data"]["supported"]
    unknown = {"jsonrpc": "2.0", "id": 8, "method": "nope/nothing", "params": {"_meta": meta}}
    r = httpx2.post(setup.url, json=unknown, headers={**base, "mcp-method": "nope/nothing"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 404 and r.json()["error"]["code"] == -32601
    r = httpx2.post(setup.url, content=b"{not json", headers={**base, "content-type": "application/json"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700


def legacy_initialize(url: str, key: str) -> str:
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx2.post(url, json=init, headers={"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["protocolVersion"] == "2025-11-25"
    return r.headers["mcp-session-id"]


def legacy_call(url: str, key: str, session: str, rid: int, name: str = "billing.echo") -> httpx2.Response:
    msg = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": {"text": f"n{rid}"}}}
    headers = {
        "authorization": f"Bearer {key}",
        "accept": "application/json, text/event-stream",
        "mcp-session-id": session,
        "mcp-protocol-version": "2025-11-25",
        "connection": "close",
    }
    return httpx2.post(url, json=msg, headers=headers, timeout=REQUEST_TIMEOUT)


def result_of(r: httpx2.Response) -> dict:
    if r.headers["content-type"].startswith("text/event-stream"):
        datas = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        return json.loads(datas[-1])
    return r.json()


def test_a_legacy_session_serves_requests_on_every_shard(setup):
    key = setup.keys["support"]
    session = legacy_initialize(setup.url, key)
    shards = set()
    for i in range(2, 60):
        r = legacy_call(setup.url, key, session, i)
        assert r.status_code == 200, r.text
        assert result_of(r)["result"]["content"][0]["text"] == f"n{i}"
        # Request ids name the shard: <process>-<shard>-<n>.
        shards.add(r.headers["x-request-id"].split("-")[1])
        if len(shards) == 2:
            break
    assert shards == {"0", "1"}


def test_a_forged_or_foreign_session_is_404(setup):
    key = setup.keys["support"]
    session = legacy_initialize(setup.url, key)
    forged = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
    r = legacy_call(setup.url, key, forged, 2)
    assert r.status_code == 404
    # A session is its key's: another key presenting it is refused too.
    r = legacy_call(setup.url, setup.keys["readers"], session, 3)
    assert r.status_code == 404
    missing = legacy_call(setup.url, key, "", 4)
    assert missing.status_code in (400, 404)


@pytest.mark.parametrize("mode", MODES)
def test_progress_is_relayed_as_it_happens(setup, mode):
    async def body(c):
        seen = {}
        for server in ("billing", "files", "legacy"):
            got = []

            async def progress(p, total, message):
                got.append((p, total, message))

            r = await c.call_tool(f"{server}.slow", {"steps": 3}, progress_callback=progress)
            assert r.content[0].text == "done 3"
            seen[server] = got
        return seen

    seen = run(with_client, setup.url, setup.keys["support"], mode, body)
    for server, got in seen.items():
        assert [p for p, _, _ in got] == [1, 2, 3], server
        assert got[-1][2] == "step 3"


def wait_for(pred, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("server", ["billing", "files", "legacy"])
def test_cancellation_reaches_the_server(setup, server, mode):
    """2026-07-28 clients cancel by closing the request's stream, legacy
    ones by `notifications/cancelled` (which may reach another shard than
    the call's); either way the server's handler is cancelled, whatever its
    transport and era."""
    tag = f"cancel-{server}-{mode}-{time.monotonic_ns()}"

    async def body(c):
        with anyio.move_on_after(30):
            async with anyio.create_task_group() as tg:

                async def call():
                    await c.call_tool(f"{server}.sleepy", {"tag": tag, "seconds": 30})

                tg.start_soon(call)
                started = await anyio.to_thread.run_sync(lambda: wait_for(lambda: f"start {tag}" in setup.events_text()))
                assert started, "the call never reached the server"
                tg.cancel_scope.cancel()

    run(with_client, setup.url, setup.keys["support"], mode, body)
    assert wait_for(lambda: f"cancelled {tag}" in setup.events_text()), setup.events_text()


def test_a_killed_stdio_server_is_restarted(setup):
    async def whoami(c):
        return (await c.call_tool("files.whoami", {})).content[0].text

    first = run(with_client, setup.url, setup.keys["support"], "auto", whoami)
    name, pid = first.split()
    os.kill(int(pid), signal.SIGKILL)

    async def after(c):
        # Calls made while it is down fail with an error naming it, and
        # never hang; once restarted it answers again.
        deadline = time.monotonic() + 20
        errors = []
        while time.monotonic() < deadline:
            try:
                return (await c.call_tool("files.whoami", {})).content[0].text, errors
            except MCPError as e:
                errors.append(str(e))
                await anyio.sleep(0.1)
        raise AssertionError(f"not restarted: {errors}")

    second, errors = run(with_client, setup.url, setup.keys["support"], "auto", after)
    assert second.split()[0] == "files" and second.split()[1] != pid
    assert all("files" in e for e in errors)


def test_a_down_server_fails_alone_with_an_error_naming_it(setup):
    async def body(c):
        with pytest.raises(MCPError) as e:
            await c.call_tool("ghost.echo", {"text": "x"})
        ok = await c.call_tool("billing.echo", {"text": "still here"})
        return str(e.value), ok.content[0].text

    err, ok = run(with_client, setup.url, setup.keys["support"], "auto", body)
    assert "ghost" in err
    assert ok == "still here"


def test_tool_calls_count_against_requests_per_minute(setup):
    async def body(c):
        outcomes = []
        for i in range(5):
            try:
                await c.call_tool("tickets.echo", {"text": str(i)})
                outcomes.append("ok")
            except MCPError as e:
                outcomes.append(str(e))
        return outcomes

    # Windows are UTC minutes: start early enough in one to finish in it.
    left = 60 - (time.time() % 60)
    if left < 10:
        time.sleep(left + 0.05)
    outcomes = run(with_client, setup.url, setup.keys["tiny"], "auto", body)
    # Three a minute: the fourth and fifth are refused.
    assert outcomes[:3] == ["ok"] * 3, outcomes
    assert all("rate limit" in o for o in outcomes[3:]), outcomes


def test_every_tool_call_is_recorded(setup):
    log = setup.gw.proc.log_path.read_text()
    records = [json.loads(line.split("tool_call] ", 1)[1]) for line in log.splitlines() if "tool_call] " in line]
    assert records, "no tool call records"
    refused = [r for r in records if r["decision"] == "refused"]
    assert refused and refused[0]["rule"].startswith("tools.")
    for r in records:
        assert r["actor"]["key_id"] and r["actor"]["team"]
        assert r["source"] == "mcp" and r["era"] in ("modern", "handshake")
        # metadata_only: a digest of the arguments, never the arguments.
        if r["arguments"] is not None:
            assert set(r["arguments"]) == {"sha256"}
    assert not any("sk-" in line for line in log.splitlines() if "tool_call] " in line)


def test_a_body_over_the_limit_is_a_json_rpc_error(setup):
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "billing.echo", "arguments": {"text": "x" * (2 << 20)}}}
    r = httpx2.post(setup.url, json=big, headers={"authorization": f"Bearer {setup.keys['support']}", "accept": "application/json"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 413
    assert r.json()["jsonrpc"] == "2.0" and r.json()["error"]["code"] == -32600
