"""The exact response cache through the real gateway with the official SDKs.

The upstream here counts: every answer says which call it was ("answer 7
to: ..."), so a hit is told from a fresh answer by its text as well as by
`x-shardgate-cache`, and the upstream's own count says whether the gateway
called it. It speaks OpenAI chat (at /v1/chat/completions) and Anthropic
Messages (at /v1/messages), whole and streamed, so answers can be kept from
one dialect and mode and replayed in another.

The gateway runs one shard: entries live on the shard that made them, and a
test that wants a hit must reach the same one.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest
import yaml

from conftest import GATEWAY_LINE, REQUEST_TIMEOUT, Upstream, UpstreamHandler, binary, gateway_config, start_gateway, write_config

ADMIN_TOKEN = "cache-admin-token-0123456789abcdef"


def prompt_of(body: dict) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else "".join(p.get("text", "") for p in c)
    return ""


class Counting(UpstreamHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.calls += 1  # type: ignore[attr-defined]
            n = self.server.calls  # type: ignore[attr-defined]
        # Long prompts ask for long answers (the memory bound's flood).
        text = f"answer {n} to: {prompt_of(body)}"
        if self.path.endswith("/messages"):
            return self.anthropic(body, text)
        if self.path.endswith("/embeddings"):
            out = {"object": "list", "model": body["model"], "usage": {"prompt_tokens": 2, "total_tokens": 2},
                   "data": [{"object": "embedding", "index": 0, "embedding": [float(n), 0.5]}]}
            return self.send(200, "application/json", json.dumps(out).encode())
        usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        if body.get("stream"):
            head = {"id": f"up-{n}", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            words = text.split(" ")
            events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
            events += [{**head, "choices": [{"index": 0, "delta": {"content": w + (" " if i < len(words) - 1 else "")},
                                             "finish_reason": None}]} for i, w in enumerate(words)]
            events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            events.append({**head, "choices": [], "usage": usage})
            data = ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()
            return self.send(200, "text/event-stream", data)
        out = {"id": f"up-{n}", "object": "chat.completion", "created": 1, "model": body["model"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": usage}
        self.send(200, "application/json", json.dumps(out).encode())

    def anthropic(self, body: dict, text: str) -> None:
        # Prompts about thinking get a thinking block first (signed: a next
        # turn must send it back as it was).
        thinking = "think" in text
        blocks = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}] if thinking else []
        msg = {"id": "msg_up", "type": "message", "role": "assistant", "model": body["model"],
               "content": blocks + [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
               "usage": {"input_tokens": 9, "output_tokens": 4}}
        if not body.get("stream"):
            return self.send(200, "application/json", json.dumps(msg).encode())
        start = {**msg, "content": [], "stop_reason": None, "usage": {"input_tokens": 9, "output_tokens": 0}}
        events = [("message_start", {"type": "message_start", "message": start})]
        i = 0
        if thinking:
            events += [
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "thinking", "thinking": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "signature_delta", "signature": "sig"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ]
            i = 1
        events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                               "content_block": {"type": "text", "text": ""}}))
        for w in re.findall(r"\S+\s*", text):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "text_delta", "text": w}}))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": i}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 4}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        data = "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in events).encode()
        self.send(200, "text/event-stream", data)


@pytest.fixture(scope="module")
def upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Counting)
    srv.daemon_threads = True
    srv.calls = 0  # type: ignore[attr-defined]
    srv.lock = threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def make_key(config: Path, tenant: str, team: str) -> str:
    args = [str(binary("shardgate")), "keys", "create", "--team", team, "--tenant", tenant, "--json",
            "--config", str(config)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["secret"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mock_upstream: Upstream, upstream_key: str, upstream):
    d = tmp_path_factory.mktemp("cache")
    base = f"http://127.0.0.1:{upstream.server_address[1]}"
    cfg = gateway_config(mock_upstream)
    del cfg["auth"]
    cfg["shards"] = 1
    cfg["providers"]["counting"] = {"kind": "openai", "base_url": f"{base}/v1", "api_key": "sk-counting"}
    cfg["providers"]["counting-anthropic"] = {"kind": "anthropic", "base_url": base, "api_key": "sk-ant-counting"}
    target = [{"provider": "counting", "model": "count-1"}]
    cfg["models"]["cached"] = {"targets": target, "cache": {"ttl": "10m"}}
    cfg["models"]["shared"] = {"targets": target, "cache": {"scope": "global"}}
    cfg["models"]["by-team"] = {"targets": target, "cache": {"scope": "team"}}
    cfg["models"]["uncached"] = {"targets": target}
    cfg["models"]["tiny"] = {"targets": target, "cache": {"max_bytes": "64KiB"}}
    cfg["models"]["brief"] = {"targets": target, "cache": {"ttl": "1s"}}
    cfg["models"]["claude-cached"] = {"targets": [{"provider": "counting-anthropic", "model": "claude-count"}],
                                      "cache": {"sampled": True}}
    cfg["models"]["embed-cached"] = {"targets": target, "cache": {}}
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    del cfg["listen"]
    cfg["admin"] = {"token": ADMIN_TOKEN}
    cfg["audit"] = {"fsync": "always"}
    cfg["policies"] = [
        {"ai_runtime_policy": {"actor_scope": {"team": "nocache"}, "cache": False}},
        {"ai_runtime_policy": {"actor_scope": {"team": "optin"}, "cache": {"ttl": "5m", "scope": "key"}}},
    ]
    path = write_config(d / "gateway.yaml", cfg)
    audit_dir = Path(yaml.safe_load(path.read_text())["store"]["dir"]) / "audit"
    keys = {
        "a1": make_key(path, "tenant-a", "one"),
        "a2": make_key(path, "tenant-a", "two"),
        "b": make_key(path, "tenant-b", "one"),
        "out": make_key(path, "tenant-a", "nocache"),
        "in": make_key(path, "tenant-a", "optin"),
    }
    gw = start_gateway("cache-gateway", path, d / "gateway.log", upstream_key)
    m = gw.proc.wait_line(GATEWAY_LINE)
    admin = f"http://{m.group(1)}:{m.group(2)}"
    yield gw, keys, admin, audit_dir
    assert gw.stop() == 0


def oai(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                         http_client=httpx2.Client(trust_env=False))


def ask(c: openai.OpenAI, prompt: str, model: str = "cached", **kw):
    """A deterministic chat request: its raw response (headers, bytes)."""
    kw.setdefault("temperature", 0)
    return c.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw)


def streamed(c: openai.OpenAI, prompt: str, model: str = "cached", **kw) -> tuple[str, str]:
    """A streamed request's cache header and text, read by the SDK."""
    kw.setdefault("temperature", 0)
    with c.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True, **kw) as r:
        header = r.headers.get("x-shardgate-cache")
        text = "".join(ch.choices[0].delta.content or "" for ch in r.parse() if ch.choices)
    return header, text


def admin_get(admin: str, path: str) -> httpx2.Response:
    return httpx2.get(f"{admin}{path}", headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                      timeout=REQUEST_TIMEOUT, trust_env=False)


def metric(admin: str, name: str) -> float:
    text = admin_get(admin, "/metrics").text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_a_hit_returns_the_same_bytes_without_calling_the_provider(setup, upstream):
    gw, keys, _, _ = setup
    with oai(gw, keys["a1"]) as c:
        first = ask(c, "what is 2+2?")
        calls = upstream.calls
        second = ask(c, "what is 2+2?")
    assert first.headers["x-shardgate-cache"] == "miss"
    assert second.headers["x-shardgate-cache"] == "hit"
    assert upstream.calls == calls, "a hit makes no upstream call"
    assert second.http_response.content == first.http_response.content
    assert second.parse().choices[0].message.content.endswith("to: what is 2+2?")
    # Other prompts and other sampling are other entries.
    with oai(gw, keys["a1"]) as c:
        assert ask(c, "what is 3+3?").headers["x-shardgate-cache"] == "miss"
        assert ask(c, "what is 2+2?", max_tokens=9).headers["x-shardgate-cache"] == "miss"
        # A seed makes a request deterministic too; delivery fields do not
        # change the key.
        assert ask(c, "seeded", temperature=1, seed=4).headers["x-shardgate-cache"] == "miss"
        assert ask(c, "seeded", temperature=1, seed=4, user="someone").headers["x-shardgate-cache"] == "hit"


def test_only_deterministic_requests_are_kept(setup, upstream):
    gw, keys, _, _ = setup
    with oai(gw, keys["a1"]) as c:
        calls = upstream.calls
        for _ in range(2):
            r = c.chat.completions.with_raw_response.create(
                model="cached", messages=[{"role": "user", "content": "sampled"}])
            assert r.headers["x-shardgate-cache"] == "bypass"
        for _ in range(2):
            r = ask(c, "two choices", n=2)
            assert r.headers["x-shardgate-cache"] == "bypass"
        assert upstream.calls == calls + 4
        # A route without `cache:` says nothing of it.
        r = ask(c, "plain", model="uncached")
        assert "x-shardgate-cache" not in r.headers


def test_tenants_never_share_an_entry_unless_the_route_says_global(setup, upstream):
    gw, keys, _, _ = setup
    prompt = "the tenant's secret plan"
    with oai(gw, keys["a1"]) as a1, oai(gw, keys["a2"]) as a2, oai(gw, keys["b"]) as b:
        first = ask(a1, prompt).parse().choices[0].message.content
        # Another key of the same tenant shares it (scope: tenant)...
        r = ask(a2, prompt)
        assert r.headers["x-shardgate-cache"] == "hit"
        assert r.parse().choices[0].message.content == first
        # ...another tenant never does.
        r = ask(b, prompt)
        assert r.headers["x-shardgate-cache"] == "miss"
        assert r.parse().choices[0].message.content != first
        assert ask(b, prompt).headers["x-shardgate-cache"] == "hit"
        # `scope: team`: a team is its tenant's (tenant-a's team "one" and
        # tenant-b's team "one" are two teams).
        first = ask(a1, prompt, model="by-team").parse().choices[0].message.content
        assert ask(a1, prompt, model="by-team").headers["x-shardgate-cache"] == "hit"
        assert ask(a2, prompt, model="by-team").headers["x-shardgate-cache"] == "miss"
        r = ask(b, prompt, model="by-team")
        assert r.headers["x-shardgate-cache"] == "miss"
        assert r.parse().choices[0].message.content != first
        # `scope: global` is shared by everyone.
        shared = ask(a1, prompt, model="shared").parse().choices[0].message.content
        r = ask(b, prompt, model="shared")
        assert r.headers["x-shardgate-cache"] == "hit"
        assert r.parse().choices[0].message.content == shared


def test_no_cache_refreshes_the_entry_and_no_store_leaves_it(setup, upstream):
    gw, keys, _, _ = setup
    with oai(gw, keys["a1"]) as c:
        old = ask(c, "refresh me").parse().choices[0].message.content
        calls = upstream.calls
        r = ask(c, "refresh me", extra_headers={"cache-control": "no-cache"})
        assert r.headers["x-shardgate-cache"] == "bypass"
        assert upstream.calls == calls + 1
        new = r.parse().choices[0].message.content
        assert new != old
        r = ask(c, "refresh me")
        assert r.headers["x-shardgate-cache"] == "hit"
        assert r.parse().choices[0].message.content == new
        r = ask(c, "refresh me", extra_headers={"cache-control": "no-store"})
        assert r.headers["x-shardgate-cache"] == "bypass"
        assert r.parse().choices[0].message.content not in (old, new)
        assert ask(c, "refresh me").parse().choices[0].message.content == new
        # Never stored: asked again, it is still a miss.
        ask(c, "never kept", extra_headers={"cache-control": "no-store"})
        assert ask(c, "never kept").headers["x-shardgate-cache"] == "miss"


def test_a_streaming_client_replays_a_whole_answer_and_the_reverse(setup, upstream):
    gw, keys, _, _ = setup
    with oai(gw, keys["a1"]) as c:
        whole = ask(c, "first whole").parse().choices[0].message.content
        calls = upstream.calls
        header, text = streamed(c, "first whole", stream_options={"include_usage": True})
        assert (header, text) == ("hit", whole)
        header, text = streamed(c, "first streamed")
        assert header == "miss" and text.startswith("answer ")
        calls = upstream.calls
        r = ask(c, "first streamed")
        assert r.headers["x-shardgate-cache"] == "hit"
        parsed = r.parse()
        assert parsed.choices[0].message.content == text
        assert parsed.usage.completion_tokens == 5, "the kept answer keeps its usage"
        assert streamed(c, "first streamed") == ("hit", text)
        assert upstream.calls == calls


def test_anthropic_clients_get_hits_in_their_own_dialect_streamed_or_not(setup, upstream):
    gw, keys, _, _ = setup
    a = anthropic.Anthropic(api_key=keys["a1"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    msgs = [{"role": "user", "content": "hello claude"}]
    # An Anthropic upstream on a route that keeps sampled answers (API
    # 2026-10-21 clients cannot send a temperature), and an OpenAI one
    # translated, asked with temperature 0 as 2023-06-01 clients can.
    for model, extra in (("claude-cached", None), ("cached", {"temperature": 0})):
        first = a.messages.with_raw_response.create(model=model, max_tokens=50, messages=msgs, extra_body=extra)
        assert first.headers["x-shardgate-cache"] == "miss"
        text = first.parse().content[0].text
        calls = upstream.calls
        again = a.messages.with_raw_response.create(model=model, max_tokens=50, messages=msgs, extra_body=extra)
        assert again.headers["x-shardgate-cache"] == "hit"
        assert again.parse().content[0].text == text
        with a.messages.stream(model=model, max_tokens=50, messages=msgs, extra_body=extra) as s:
            got = "".join(s.text_stream)
            final = s.get_final_message()
        assert got == text
        assert final.stop_reason == "end_turn"
        assert upstream.calls == calls
    # Sampled, on a route that keeps only deterministic answers: not kept.
    r = a.messages.with_raw_response.create(model="cached", max_tokens=50, messages=msgs)
    assert r.headers["x-shardgate-cache"] == "bypass"
    # A streamed Anthropic answer is kept too, and replayed whole.
    msgs = [{"role": "user", "content": "stream first"}]
    with a.messages.stream(model="claude-cached", max_tokens=50, messages=msgs) as s:
        got = "".join(s.text_stream)
    calls = upstream.calls
    r = a.messages.with_raw_response.create(model="claude-cached", max_tokens=50, messages=msgs)
    assert r.headers["x-shardgate-cache"] == "hit"
    assert r.parse().content[0].text == got
    assert upstream.calls == calls


def test_an_anthropic_answer_that_would_lose_its_thinking_is_not_kept(setup, upstream):
    gw, keys, _, _ = setup
    a = anthropic.Anthropic(api_key=keys["a1"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    for stream in (False, True):
        msgs = [{"role": "user", "content": f"think hard, streamed={stream}"}]
        for _ in range(2):
            if stream:
                with a.messages.stream(model="claude-cached", max_tokens=50, messages=msgs) as s:
                    assert s.response.headers["x-shardgate-cache"] == "miss"
                    final = s.get_final_message()
            else:
                r = a.messages.with_raw_response.create(model="claude-cached", max_tokens=50, messages=msgs)
                assert r.headers["x-shardgate-cache"] == "miss"
                final = r.parse()
            assert [b.type for b in final.content] == ["thinking", "text"]
            assert final.content[0].signature == "sig"


def test_a_policy_opts_its_callers_in_or_out(setup, upstream):
    gw, keys, _, _ = setup
    with oai(gw, keys["out"]) as c:
        calls = upstream.calls
        for _ in range(2):
            assert ask(c, "never for me").headers["x-shardgate-cache"] == "bypass"
        assert upstream.calls == calls + 2
    # Opted in on a route without a cache of its own, in the policy's scope
    # (the key: another key of the same tenant does not share it).
    with oai(gw, keys["in"]) as c:
        assert ask(c, "opted in", model="uncached").headers["x-shardgate-cache"] == "miss"
        assert ask(c, "opted in", model="uncached").headers["x-shardgate-cache"] == "hit"
    with oai(gw, keys["a1"]) as c:
        assert "x-shardgate-cache" not in ask(c, "opted in", model="uncached").headers


def test_embeddings_are_kept(setup, upstream):
    gw, keys, _, _ = setup
    with oai(gw, keys["a1"]) as c:
        first = c.embeddings.with_raw_response.create(model="embed-cached", input="embed me")
        calls = upstream.calls
        second = c.embeddings.with_raw_response.create(model="embed-cached", input="embed me")
    assert (first.headers["x-shardgate-cache"], second.headers["x-shardgate-cache"]) == ("miss", "hit")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert upstream.calls == calls


def test_a_hit_is_audited_with_the_tokens_it_saved_and_charged_nothing(setup, upstream):
    gw, keys, admin, audit_dir = setup
    with oai(gw, keys["b"]) as c:
        ask(c, "audit me")
        r = ask(c, "audit me")
    rid = r.headers["x-request-id"]
    record = None
    deadline = time.time() + 10
    while record is None and time.time() < deadline:
        for line in (audit_dir / "audit.log").read_text().splitlines():
            e = json.loads(line)
            if e.get("request_id") == rid:
                record = e
        time.sleep(0.1)
    assert record is not None, "the hit's record is in the audit log"
    assert record["cache"] == {"result": "hit", "saved_tokens": {"input": 12, "output": 5, "cached": 0}}
    assert record["cost_micros"] == 0 and record["tokens"]["input"] == 0
    assert record["attempts"] == []
    assert record["provider"] == "counting" and record["upstream_model"] == "count-1"
    text = admin_get(admin, "/metrics").text
    assert re.search(r'^shardgate_cache_requests_total\{model="cached",result="hit"\} [1-9]', text, re.M)
    assert metric(admin, 'shardgate_cache_saved_tokens_total{type="output"}') >= 5


def test_entries_expire_after_their_ttl(setup):
    gw, keys, _, _ = setup
    with oai(gw, keys["a1"]) as c:
        ask(c, "short-lived", model="brief")
        assert ask(c, "short-lived", model="brief").headers["x-shardgate-cache"] == "hit"
        time.sleep(1.5)
        assert ask(c, "short-lived", model="brief").headers["x-shardgate-cache"] == "miss"


def test_memory_stays_within_the_bound_under_a_flood_of_distinct_requests(setup):
    gw, keys, admin, _ = setup
    before = metric(admin, "shardgate_cache_bytes")
    with oai(gw, keys["a1"]) as c:
        for i in range(150):
            # Each answer repeats its ~1 KiB prompt.
            ask(c, f"flood {i} " + "x" * 1000, model="tiny")
            assert metric(admin, "shardgate_cache_bytes") <= before + 64 * 1024
    assert metric(admin, "shardgate_cache_evictions_total") > 0
    with oai(gw, keys["a1"]) as c:
        # The newest survive, the oldest went.
        assert ask(c, "flood 149 " + "x" * 1000, model="tiny").headers["x-shardgate-cache"] == "hit"
        assert ask(c, "flood 0 " + "x" * 1000, model="tiny").headers["x-shardgate-cache"] == "miss"


def test_the_admin_api_purges_by_model_or_scope_and_a_reload_drops_everything(setup):
    gw, keys, admin, _ = setup
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with oai(gw, keys["a1"]) as a, oai(gw, keys["b"]) as b:
        for c in (a, b):
            ask(c, "purge me")
            ask(c, "purge me", model="shared")
        r = httpx2.delete(f"{admin}/admin/cache", params={"model": "cached", "scope": "tenant:tenant-b"},
                          headers=auth, timeout=REQUEST_TIMEOUT, trust_env=False)
        assert r.status_code == 200, r.text
        assert r.json()["purged"] >= 1
        assert ask(b, "purge me").headers["x-shardgate-cache"] == "miss"
        assert ask(a, "purge me").headers["x-shardgate-cache"] == "hit"
        r = httpx2.delete(f"{admin}/admin/cache", params={"tenant": "x"}, headers=auth,
                          timeout=REQUEST_TIMEOUT, trust_env=False)
        assert r.status_code == 400 and "unknown parameter" in r.json()["error"]["message"]
        assert httpx2.delete(f"{admin}/admin/cache", timeout=REQUEST_TIMEOUT, trust_env=False).status_code == 401
        # A new config generation starts with nothing kept.
        r = httpx2.post(f"{admin}/admin/reload", headers=auth, timeout=REQUEST_TIMEOUT, trust_env=False)
        assert r.status_code == 200, r.text
        assert ask(a, "purge me").headers["x-shardgate-cache"] == "miss"
        assert ask(a, "purge me", model="shared").headers["x-shardgate-cache"] == "miss"
