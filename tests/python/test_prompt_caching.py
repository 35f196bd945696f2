"""Prompt caching across dialects through the real gateway: the cache
breakpoints a client marks reach a provider that has them, and cache reads
and writes are each counted once and priced at their own prices.

The upstream here is an Anthropic Messages server that records what it
was sent and reports a prompt-cache read and write in its usage, whole and
streamed.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import yaml

from conftest import REQUEST_TIMEOUT, Upstream, gateway_config, start_gateway, write_config

# Anthropic's figures: `input_tokens` excludes the cache's.
USAGE = {"input_tokens": 9, "output_tokens": 4, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 50}
# At $1 / $2 per M in/out, $0.10 per M read from the cache and $1.25 per M
# written: 9 × 1 + 50 × 0.1 + 100 × 1.25 + 4 × 2 = 147 micro-dollars.
COST = 147


class Messages(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append(body)  # type: ignore[attr-defined]
        msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
               "content": [{"type": "text", "text": "cached answer"}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": USAGE}
        if body.get("stream"):
            start = {**msg, "content": [], "stop_reason": None, "usage": {**USAGE, "output_tokens": 1}}
            events = [
                ("message_start", {"type": "message_start", "message": start}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "cached answer"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 4}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            data = "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in events).encode()
            ctype = "text/event-stream"
        else:
            data = json.dumps(msg).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mock_upstream: Upstream, upstream_key: str):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Messages)
    srv.daemon_threads = True
    srv.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    d = tmp_path_factory.mktemp("prompt-caching")
    cfg = gateway_config(mock_upstream)
    cfg["providers"]["claude-up"] = {"kind": "anthropic", "base_url": f"http://127.0.0.1:{srv.server_address[1]}",
                                     "api_key": "sk-ant-test"}
    cfg["models"]["claude-cacheable"] = {"targets": [{"provider": "claude-up", "model": "claude-count"}]}
    cfg["pricing"] = [{"model": "claude-count", "input_per_million_usd": 1, "output_per_million_usd": 2,
                       "cached_input_per_million_usd": 0.1, "cache_write_input_per_million_usd": 1.25}]
    cfg["audit"] = {"fsync": "always"}
    path = write_config(d / "gateway.yaml", cfg)
    audit = Path(yaml.safe_load(path.read_text())["store"]["dir"]) / "audit" / "audit.log"
    gw = start_gateway("prompt-caching-gateway", path, d / "gateway.log", upstream_key)
    yield gw, srv, audit
    assert gw.stop() == 0
    srv.shutdown()


def record_of(audit: Path, rid: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if audit.exists():
            for line in audit.read_text().splitlines():
                e = json.loads(line)
                if e.get("request_id") == rid:
                    return e
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {rid}")


def test_chat_cache_breakpoints_reach_an_anthropic_upstream(setup):
    gw, srv, _ = setup
    c = openai.OpenAI(api_key="unused", base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                      http_client=httpx2.Client(trust_env=False))
    marker = {"type": "ephemeral"}
    c.chat.completions.create(
        model="claude-cacheable",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "The handbook ...", "cache_control": marker}]},
            {"role": "user", "content": [{"type": "text", "text": "A long document ...", "cache_control": marker},
                                         {"type": "text", "text": "What does it say?"}]},
        ],
        tools=[{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}},
                "cache_control": marker}],
    )
    sent = srv.seen[-1]
    assert sent["system"] == [{"type": "text", "text": "The handbook ...", "cache_control": marker}]
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "A long document ...", "cache_control": marker},
        {"type": "text", "text": "What does it say?"},
    ]
    assert sent["tools"][0]["cache_control"] == marker


def test_cache_reads_and_writes_are_priced_once_each_in_every_dialect(setup):
    gw, _, audit = setup
    c = openai.OpenAI(api_key="unused", base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                      http_client=httpx2.Client(trust_env=False))
    a = anthropic.Anthropic(api_key="unused", base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    msgs = [{"role": "user", "content": "hi"}]
    rids = []
    r = c.chat.completions.with_raw_response.create(model="claude-cacheable", messages=msgs)
    # OpenAI's prompt_tokens counts the cache's tokens too.
    assert r.parse().usage.prompt_tokens == 159
    assert r.parse().usage.prompt_tokens_details.cached_tokens == 50
    rids.append(r.headers["x-request-id"])
    with c.chat.completions.with_streaming_response.create(
            model="claude-cacheable", messages=msgs, stream=True, stream_options={"include_usage": True}) as s:
        rids.append(s.headers["x-request-id"])
        usage = [ch.usage for ch in s.parse() if ch.usage]
    assert usage[-1].prompt_tokens == 159
    r = a.messages.with_raw_response.create(model="claude-cacheable", max_tokens=20, messages=msgs)
    # The Anthropic client gets Anthropic's own figures back.
    assert r.parse().usage.cache_creation_input_tokens == 100 and r.parse().usage.input_tokens == 9
    rids.append(r.headers["x-request-id"])
    with a.messages.with_streaming_response.create(model="claude-cacheable", max_tokens=20, messages=msgs,
                                                    stream=True) as s:
        rids.append(s.headers["x-request-id"])
        for _ in s.iter_lines():
            pass
    for rid in rids:
        e = record_of(audit, rid)
        [attempt] = e["attempts"]
        assert (attempt["input_tokens"], attempt["cached_tokens"], attempt["cache_write_tokens"]) == (159, 50, 100), e
        assert e["cost_micros"] == COST, e
