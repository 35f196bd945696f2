"""Guardrails through the real gateway with the official SDKs: checks a
policy attaches to prompts and answers, with each action (block, redact,
log), streamed and not, and their verdicts in the audit log and metrics.

The upstream here is an echo server: it answers with the last user message
it received, so what the provider saw is what the client reads back (a
redacted prompt comes back redacted), and an answer can be made to carry
any text (for output checks). Streams arrive in three events, so a match
split across events is what output checks must catch.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from conftest import REQUEST_TIMEOUT, Upstream, create_key, gateway_config, start_gateway, stream_text_until_error, write_config

CARD = "4111 1111 1111 1111"  # a test Visa number: passes Luhn
NOT_A_CARD = "4111 1111 1111 1112"  # fails Luhn
EMAIL = "jane.doe@example.com"
ADMIN_TOKEN = "guardrails-admin-token-0123456789"


def last_user_text(body: dict) -> str:
    for m in reversed(body.get("messages", [])):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return ""


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def send_sse(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append(body)  # type: ignore[attr-defined]
        text = last_user_text(body)
        if text.startswith("callone:") and body.get("stream"):
            # The whole call in the chunk that finishes the answer (as some
            # upstreams send it).
            args = json.dumps({"query": text[len("callone:"):].strip()})
            chunk = {"id": "e1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                         {"index": 0, "id": "call_1", "type": "function",
                          "function": {"name": "lookup", "arguments": args}}]}, "finish_reason": "tool_calls"}]}
            data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            return self.send_sse(data)
        if text.startswith("call:") and body.get("stream"):
            # A tool call whose arguments stream three characters at a time.
            args = json.dumps({"query": text[len("call:"):].strip()})
            head = {"id": "e1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}]},
                "finish_reason": None}]}]
            events += [{**head, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": args[i:i + 3]}}]}, "finish_reason": None}]}
                for i in range(0, len(args), 3)]
            events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
            data = ("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode()
            return self.send_sse(data)
        if body.get("stream"):
            third = max(1, len(text) // 3)
            parts = [text[:third], text[third : 2 * third], text[2 * third :]]
            events = [
                {"id": "e1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": p}, "finish_reason": None}]}
                for p in parts
            ]
            events.append({"id": "e1", "object": "chat.completion.chunk", "created": 1, "model": body["model"],
                           "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})
            payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            data = payload.encode()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            # Three writes apart, as a model's tokens arrive.
            for i in range(0, len(data), max(1, len(data) // 3)):
                self.wfile.write(data[i : i + max(1, len(data) // 3)])
                self.wfile.flush()
                time.sleep(0.01)
            return
        out = {"id": "e1", "object": "chat.completion", "created": 1, "model": body["model"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def echo():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    srv.seen = []  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


class Hook(BaseHTTPRequestHandler):
    """A remote guardrail: `/deny` refuses texts saying "forbidden",
    `/redact` masks the word "secret" (and wants its bearer token),
    `/slow` answers after 3 s."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append((self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        texts = body["texts"]
        if self.path == "/slow":
            time.sleep(3)
            reply = {"action": "allow"}
        elif self.path == "/deny":
            bad = any("forbidden" in t for t in texts)
            reply = {"action": "deny", "reason": "says forbidden"} if bad else {"action": "allow"}
        elif self.headers.get("authorization") != "Bearer hook-secret":
            reply = {"action": "deny"}
        else:
            reply = {"action": "redact", "texts": [t.replace("secret", "[MASKED]") for t in texts]}
        data = json.dumps(reply).encode()
        try:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway gave up on a slow answer


@pytest.fixture(scope="module")
def hook():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    srv.daemon_threads = True
    srv.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mock_upstream: Upstream, upstream_key: str, echo, hook):
    d = tmp_path_factory.mktemp("guardrails")
    hook_url = f"http://127.0.0.1:{hook.server_address[1]}"
    cfg = gateway_config(mock_upstream)
    del cfg["auth"]
    cfg["providers"]["echo"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{echo.server_address[1]}/v1", "api_key": "sk-echo"}
    cfg["models"]["echo"] = {"targets": [{"provider": "echo", "model": "echo-1"}]}
    cfg["models"]["caller"] = {"targets": [{"provider": "local", "model": "mock-tokens-3-call-lookup"}]}
    cfg["guardrails"] = [
        {"name": "pii-redact", "pii": ["email", "credit_card"], "action": "redact"},
        {"name": "pii-block", "pii": "all", "action": "block"},
        {"name": "codenames", "regex": [r"(?i)project\s+falcon"], "action": "block"},
        {"name": "watch", "deny_words": ["lorem", "dolor sit"], "action": "log"},
        {"name": "lorem-redact", "regex": ["ipsum"], "action": "redact"},
        {"name": "mock-args", "deny_words": ["mock"], "action": "redact"},
        {"name": "hook-deny", "webhook": {"url": f"{hook_url}/deny", "timeout": "2s"}},
        {"name": "hook-redact", "webhook": {"url": f"{hook_url}/redact", "headers": {"authorization": "${HOOK_TOKEN}"}}},
        {"name": "hook-slow-open", "webhook": {"url": f"{hook_url}/slow", "timeout": "200ms", "on_error": "fail_open"}},
        {"name": "hook-slow-closed", "webhook": {"url": f"{hook_url}/slow", "timeout": "200ms", "on_error": "fail_closed"}},
        {"name": "hook-par-deny", "webhook": {"url": f"{hook_url}/deny", "timeout": "2s", "parallel": True}},
        {"name": "hook-out-deny", "webhook": {"url": f"{hook_url}/deny", "timeout": "2s"}},
        {"name": "hook-out-redact", "webhook": {"url": f"{hook_url}/redact", "headers": {"authorization": "${HOOK_TOKEN}"}}},
        {"name": "hook-par-slow", "webhook": {"url": f"{hook_url}/slow", "timeout": "200ms", "parallel": True}},
    ]
    cfg["policies"] = [
        {"ai_runtime_policy": {"actor_scope": {"team": "in-redact"}, "guardrails": {"input": ["pii-redact", "codenames"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "in-block"}, "guardrails": {"input": ["pii-block"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "out"}, "guardrails": {"output": ["pii-block", "watch"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "out-redact"}, "guardrails": {"output": ["pii-redact", "lorem-redact", "watch"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "tools"}, "guardrails": {"tool_calls": ["mock-args"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "tools-block"}, "guardrails": {"tool_calls": ["pii-block"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "hook-a"}, "guardrails": {"input": ["hook-redact", "hook-slow-open"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "hook-b"}, "guardrails": {"input": ["hook-slow-closed"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "hook-c"}, "guardrails": {"input": ["hook-deny"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "hook-par"}, "guardrails": {"input": ["pii-redact", "hook-par-deny"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "hook-par-slow"}, "guardrails": {"input": ["hook-par-slow"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "hook-out"}, "guardrails": {"output": ["pii-redact", "hook-out-deny", "hook-out-redact"]}}},
    ]
    cfg["listeners"] = [{"address": "127.0.0.1:0"}, {"address": "127.0.0.1:0", "role": "admin"}]
    del cfg["listen"]
    cfg["admin"] = {"token": ADMIN_TOKEN}
    cfg["audit"] = {"fsync": "always"}
    path = write_config(d / "gateway.yaml", cfg)
    audit_path = Path(__import__("yaml").safe_load(path.read_text())["store"]["dir"]) / "audit"
    keys = {t: create_key(path, t)["secret"] for t in ("in-redact", "in-block", "out", "out-redact", "tools", "hook-a", "hook-b", "hook-c",
                                                    "hook-par", "hook-par-slow", "tools-block", "hook-out")}
    os.environ["HOOK_TOKEN"] = "Bearer hook-secret"
    try:
        gw = start_gateway("guardrails-gateway", path, d / "gateway.log", upstream_key)
    finally:
        del os.environ["HOOK_TOKEN"]
    m = gw.proc.wait_line(__import__("conftest").GATEWAY_LINE)
    admin = f"http://{m.group(1)}:{m.group(2)}"
    yield gw, keys, echo, admin, audit_path
    assert gw.stop() == 0


def oai(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                         http_client=httpx2.Client(trust_env=False))


def test_a_redacted_prompt_reaches_the_provider_redacted(setup):
    gw, keys, echo, _, _ = setup
    with oai(gw, keys["in-redact"]) as c:
        r = c.chat.completions.create(model="echo", messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Mail {EMAIL}, card {CARD}, not {NOT_A_CARD}."},
        ])
    said = r.choices[0].message.content
    assert said == f"Mail [REDACTED:email], card [REDACTED:credit_card], not {NOT_A_CARD}."
    assert EMAIL not in json.dumps(echo.seen[-1]) and CARD not in json.dumps(echo.seen[-1])
    # The rest of the request went as it was.
    assert echo.seen[-1]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_blocked_prompt_is_a_400_naming_the_check_in_each_dialect(setup):
    gw, keys, echo, _, _ = setup
    before = len(echo.seen)
    with oai(gw, keys["in-redact"]) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "status of Project Falcon?"}])
    assert e.value.code == "guardrail:codenames"
    assert "codenames" in e.value.message and "Falcon" not in e.value.message
    with oai(gw, keys["in-block"]) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"my card is {CARD}"}], stream=True)
    assert e.value.code == "guardrail:pii-block"
    a = anthropic.Anthropic(api_key=keys["in-block"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    with pytest.raises(anthropic.BadRequestError) as e:
        a.messages.create(model="echo", max_tokens=50, messages=[{"role": "user", "content": f"reach me at {EMAIL}"}])
    assert e.value.body["type"] == "error" and "pii-block" in e.value.body["error"]["message"]
    assert len(echo.seen) == before, "a blocked prompt never reaches the provider"
    # A clean prompt passes.
    with oai(gw, keys["in-block"]) as c:
        assert c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello"}]).choices[0].message.content == "hello"


def test_what_the_checks_cannot_follow_is_refused(setup):
    gw, keys, echo, _, _ = setup
    before = len(echo.seen)
    # A lone surrogate escape: JSON the gateway relays, but no strict parser
    # reads; it must not carry a prompt past the checks.
    raw = b'{"model":"echo","user":"\\udc00","messages":[{"role":"user","content":"status of Project Falcon?"}]}'
    r = httpx2.post(gw.url + "/v1/chat/completions", content=raw, timeout=REQUEST_TIMEOUT, trust_env=False,
                    headers={"authorization": f"Bearer {keys['in-redact']}", "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "Falcon" not in r.text
    assert len(echo.seen) == before
    # Log probabilities would repeat a redacted answer token by token.
    with oai(gw, keys["out-redact"]) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="echo", logprobs=True, messages=[{"role": "user", "content": "hi"}])
    assert e.value.param == "logprobs"


def test_an_answer_is_redacted_streamed_or_not(setup):
    gw, keys, _, _, _ = setup
    with oai(gw, keys["out-redact"]) as c:
        r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"write to {EMAIL}"}])
        assert r.choices[0].message.content == "write to [REDACTED:email]"
        # The built-in mock's lorem text, through a regex check.
        r = c.chat.completions.create(model="short", messages=[{"role": "user", "content": "hi"}])
        assert "ipsum" not in r.choices[0].message.content
        assert "[REDACTED:lorem-redact]" in r.choices[0].message.content
        # Streamed: the same text, the match replaced, whatever the events.
        long = "The rest of this answer is long enough to be released while the stream runs. " * 3
        stream = c.chat.completions.create(model="echo", stream=True,
                                           messages=[{"role": "user", "content": f"{long}write to {EMAIL} now"}])
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text == f"{long}write to [REDACTED:email] now"
    a = anthropic.Anthropic(api_key=keys["out-redact"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    m = a.messages.create(model="echo", max_tokens=50, messages=[{"role": "user", "content": f"card {CARD} ok"}])
    assert m.content[0].text == "card [REDACTED:credit_card] ok"
    with a.messages.stream(model="echo", max_tokens=50, messages=[{"role": "user", "content": f"card {CARD} ok"}]) as s:
        assert "".join(s.text_stream) == "card [REDACTED:credit_card] ok"


def test_a_card_split_across_three_stream_events_ends_the_stream(setup):
    gw, keys, _, _, _ = setup
    with oai(gw, keys["out"]) as c:
        stream = c.chat.completions.create(model="echo", stream=True,
                                           messages=[{"role": "user", "content": f"pay with {CARD} today"}])
        text = ""
        with pytest.raises(openai.APIError) as e:
            for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
    assert "pii-block" in str(e.value.message), e.value
    # Held back until judged: not one digit of the card reached the client.
    assert "4111" not in text, text
    # A clean stream is relayed whole.
    with oai(gw, keys["out"]) as c:
        stream = c.chat.completions.create(model="echo", stream=True, messages=[{"role": "user", "content": "nothing to see here"}])
        assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "nothing to see here"


def test_tool_call_arguments_in_an_answer_are_checked(setup):
    gw, keys, _, _, _ = setup
    with oai(gw, keys["tools"]) as c:
        r = c.chat.completions.create(model="caller", messages=[{"role": "user", "content": "look it up"}])
    [call] = r.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"query": "[REDACTED:mock-args]"}
    a = anthropic.Anthropic(api_key=keys["tools"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    m = a.messages.create(model="caller", max_tokens=50, messages=[{"role": "user", "content": "look it up"}])
    [use] = [b for b in m.content if b.type == "tool_use"]
    assert use.input == {"query": "[REDACTED:mock-args]"}


def streamed_call(stream) -> tuple[str, str]:
    """The name and arguments of the one tool call in a chat stream, as an
    SDK user accumulates them."""
    name, args = "", ""
    for ch in stream:
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            assert tc.index == 0
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
    return name, args


def test_tool_call_arguments_in_a_streamed_answer_are_checked_whole(setup):
    gw, keys, _, _, _ = setup
    # The word the check redacts arrives split over three deltas.
    with oai(gw, keys["tools"]) as c:
        stream = c.chat.completions.create(model="echo", stream=True, messages=[
            {"role": "user", "content": "call: a mock value"}])
        name, args = streamed_call(stream)
    assert name == "lookup"
    assert json.loads(args) == {"query": "a [REDACTED:mock-args] value"}
    # A call that comes whole in the finishing chunk: judged, and sent in
    # its own start (after its id and name), not after the finish.
    r = httpx2.post(gw.base_url + "/chat/completions", timeout=REQUEST_TIMEOUT, trust_env=False,
                    headers={"authorization": f"Bearer {keys['tools']}"},
                    json={"model": "echo", "stream": True, "messages": [{"role": "user", "content": "callone: mock it"}]})
    chunks = [json.loads(l[6:]) for l in r.text.splitlines() if l.startswith("data: {")]
    calls = [(i, tc) for i, ch in enumerate(chunks) for c in ch["choices"] for tc in (c["delta"].get("tool_calls") or [])]
    finish_at = [i for i, ch in enumerate(chunks) for c in ch["choices"] if c.get("finish_reason")]
    [(at, call)] = [(i, tc) for i, tc in calls if tc["function"].get("arguments")]
    assert call["id"] == "call_1" and call["function"]["name"] == "lookup", chunks
    assert at <= finish_at[0], chunks
    assert json.loads(call["function"]["arguments"]) == {"query": "[REDACTED:mock-args] it"}
    # The built-in mock's call (one delta), and the Anthropic dialect.
    with oai(gw, keys["tools"]) as c:
        _, args = streamed_call(c.chat.completions.create(model="caller", stream=True, messages=[
            {"role": "user", "content": "look it up"}]))
    assert json.loads(args) == {"query": "[REDACTED:mock-args]"}
    a = anthropic.Anthropic(api_key=keys["tools"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    for model, prompt, want in (("echo", "call: a mock value", "a [REDACTED:mock-args] value"),
                                ("caller", "look it up", "[REDACTED:mock-args]")):
        with a.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": prompt}]) as s:
            final = s.get_final_message()
        [use] = [b for b in final.content if b.type == "tool_use"]
        assert use.input == {"query": want}
    # Responses, streamed: the arguments in every event that carries them.
    with oai(gw, keys["tools"]) as c:
        with c.responses.stream(model="caller", input="look it up") as s:
            events = list(s)
            final = s.get_final_response()
    [call] = [o for o in final.output if o.type == "function_call"]
    assert json.loads(call.arguments) == {"query": "[REDACTED:mock-args]"}
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"query": "[REDACTED:mock-args]"}
    # A blocking check ends the stream before any of the arguments.
    with oai(gw, keys["tools-block"]) as c:
        stream = c.chat.completions.create(model="echo", stream=True, messages=[
            {"role": "user", "content": f"call: mail {EMAIL}"}])
        with pytest.raises(openai.APIError) as e:
            streamed_call(stream)
    assert "pii-block" in str(e.value)


def test_webhooks_redact_and_deny_and_fail_as_configured(setup, hook):
    gw, keys, echo, _, _ = setup
    with oai(gw, keys["hook-a"]) as c:
        started = time.monotonic()
        r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "tell me the secret"}])
        took = time.monotonic() - started
    # Redacted by one hook; the other timed out at 200 ms and fails open.
    assert r.choices[0].message.content == "tell me the [MASKED]"
    assert took < 2, took
    path, headers, body = [x for x in hook.seen if x[0] == "/redact"][-1]
    assert headers["authorization"] == "Bearer hook-secret"
    assert body["check"] == "hook-redact" and body["stage"] == "input"
    assert body["actor"]["team"] == "hook-a" and body["request_id"] == r._request_id
    assert "tell me the secret" in body["texts"]
    with oai(gw, keys["hook-b"]) as c:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "anything"}])
        assert time.monotonic() - started < 2
    assert e.value.status_code == 503 and e.value.code == "guardrail_unavailable"
    with oai(gw, keys["hook-c"]) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "this is forbidden"}])
        assert e.value.code == "guardrail:hook-deny"
        assert c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "fine"}]).choices[0].message.content == "fine"


def test_a_parallel_webhook_holds_the_answer_until_its_verdict(setup, hook):
    gw, keys, echo, _, audit_path = setup
    before = len(echo.seen)
    refused = []
    with oai(gw, keys["hook-par"]) as c:
        # The prompt goes upstream while the hook decides (redacted first by
        # the in-process check); the hook's deny replaces the answer, whole
        # or streamed, before any of it reaches the client.
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                r = c.chat.completions.create(model="echo", stream=stream, messages=[
                    {"role": "user", "content": f"this is forbidden, mail {EMAIL}"}])
                if stream:
                    list(r)
            assert e.value.code == "guardrail:hook-par-deny"
            refused.append(e.value.response.headers["x-request-id"])
        assert len(echo.seen) == before + 2, "a parallel hook does not stop the prompt going upstream"
        assert EMAIL not in json.dumps(echo.seen[-1])
        sent = [x for x in hook.seen if x[0] == "/deny"][-1][2]
        assert sent["check"] == "hook-par-deny" and "[REDACTED:email]" in sent["texts"][0]
        # An allowed prompt's answer is released, streamed or not.
        assert c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "fine"}]).choices[0].message.content == "fine"
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="echo", stream=True, messages=[{"role": "user", "content": "all fine"}]) if ch.choices)
        assert text == "all fine"
    # The model answered the refused prompts all the same: what it used
    # is charged, from the provider's own usage.
    def record(rid: str) -> dict | None:
        for f in sorted(audit_path.glob("audit*.log")):
            for line in f.read_text().splitlines():
                e = json.loads(line)
                if e.get("request_id") == rid:
                    return e
        return None

    for rid in refused:
        deadline = time.monotonic() + 10
        while (e := record(rid)) is None:
            assert time.monotonic() < deadline, "no audit record"
            time.sleep(0.1)
        [attempt] = e["attempts"]
        assert (attempt["input_tokens"], attempt["output_tokens"], attempt["estimated"]) == (10, 3, False), e
    # A hook that times out fails closed: the held answer is refused.
    with oai(gw, keys["hook-par-slow"]) as c:
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "anything"}])
    assert e.value.status_code == 503 and e.value.code == "guardrail_unavailable"


def test_webhooks_judge_answers_whole_or_streamed(setup, hook):
    gw, keys, _, _, _ = setup
    with oai(gw, keys["hook-out"]) as c:
        r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "the secret word"}])
        assert r.choices[0].message.content == "the [MASKED] word"
        sent = [x for x in hook.seen if x[0] == "/redact"][-1][2]
        assert sent["stage"] == "output" and sent["check"] == "hook-out-redact"
        # A stream is held whole until the hooks have answered, then sent
        # redacted, in the client's dialect.
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="echo", stream=True, messages=[{"role": "user", "content": "a secret kept"}]) if ch.choices)
        assert text == "a [MASKED] kept"
        # The in-process checks' redactions hold in what a hook's redaction
        # replays, and the hook saw the text as they left it.
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="echo", stream=True, messages=[{"role": "user", "content": f"secret {EMAIL}"}]) if ch.choices)
        assert text == "[MASKED] [REDACTED:email]"
        assert EMAIL not in json.dumps([x for x in hook.seen if x[0] == "/redact"][-1][2])
        assert "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="echo", stream=True, messages=[{"role": "user", "content": "nothing here"}]) if ch.choices) == "nothing here"
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "say forbidden"}])
        assert e.value.code == "guardrail:hook-out-deny" and "answer" in e.value.message
        # A refused stream says why, and none of the answer.
        received, err = stream_text_until_error(c.chat.completions.create(
            model="echo", stream=True, messages=[{"role": "user", "content": "say forbidden"}]))
        assert received == "" and "hook-out-deny" in str(err)
    a = anthropic.Anthropic(api_key=keys["hook-out"], base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                            http_client=httpx2.Client(trust_env=False))
    with a.messages.stream(model="echo", max_tokens=50, messages=[{"role": "user", "content": "one secret"}]) as s:
        assert "".join(s.text_stream) == "one [MASKED]"


def test_verdicts_are_audited_and_counted_without_the_text(setup):
    gw, keys, _, admin, audit_path = setup
    with oai(gw, keys["out"]) as c:
        c.chat.completions.create(model="short", messages=[{"role": "user", "content": "hi"}])
    metrics = httpx2.get(admin + "/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10, trust_env=False).text
    assert 'shardgate_guardrail_checks_total{check="watch",stage="output",verdict="log"}' in metrics
    assert 'shardgate_guardrail_checks_total{check="codenames",stage="input",verdict="block"}' in metrics
    assert 'shardgate_guardrail_checks_total{check="pii-redact",stage="input",verdict="redact"}' in metrics
    # The audit log: each check's verdict, never the matched text.
    def requests() -> list[dict]:
        out = []
        for f in sorted(audit_path.glob("audit*.log")):
            out += [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        return [e for e in out if e.get("kind") == "request" and e.get("guardrails")]

    deadline = time.monotonic() + 10
    while not any(g["check"] == "watch" for e in requests() for g in e["guardrails"]):
        assert time.monotonic() < deadline, "no audited guardrail verdicts"
        time.sleep(0.2)
    evs = requests()
    verdicts = {(g["check"], g["stage"], g["verdict"]) for e in evs for g in e["guardrails"]}
    assert {("codenames", "input", "block"), ("pii-redact", "input", "redact"), ("watch", "output", "log")} <= verdicts
    for e in evs:
        if any(g["verdict"] == "block" and g["stage"] == "input" for g in e["guardrails"]):
            assert e["status"] == 400 and e["decision"] == "deny_guardrail" and e["error"] == "guardrail_blocked"
        assert all(isinstance(g["latency_us"], int) for g in e["guardrails"])
    raw = "".join(f.read_text() for f in audit_path.glob("audit*.log"))
    assert EMAIL not in raw and CARD not in raw and "Falcon" not in raw
