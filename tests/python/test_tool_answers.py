"""Tool calls in model answers, checked against the caller's tool policy,
through the official `openai` and `anthropic` SDKs, streaming and not.

The built-in mock model `mock-...-call-NAME` answers with some text and
then a call of tool NAME (its name in one chunk, its arguments in the next,
as models stream them). A `refuse` policy turns an answer calling a denied
tool into a 403 (or an error event ending the stream) with nothing of the
call delivered; a `strip` policy removes the call and finishes with `stop`
and a note.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from conftest import (
    REQUEST_TIMEOUT,
    Upstream,
    create_key,
    gateway_config,
    start_gateway,
    stream_text_until_error,
    write_config,
)

MODELS = {
    "call-ok": [("local", "mock-tokens-3-call-search_docs")],
    "call-bad": [("local", "mock-tokens-3-call-delete_account")],
    # Paced: its text and its call reach the gateway in separate reads.
    "call-bad-slow": [("local", "mock-tokens-3-tps-50-call-delete_account")],
}
POLICIES = [
    {
        "ai_runtime_policy": {
            "name": "careful",
            "actor_scope": {"team": "refusers"},
            "tools": {"denied": ["delete_*"]},
            "audit": {"log_tool_calls": True},
        }
    },
    {
        "ai_runtime_policy": {
            "name": "guarded",
            "actor_scope": {"team": "guarded"},
            "tools": {"denied": ["delete_*"]},
            "guardrails": {"output": ["no-latin"]},
        }
    },
    {
        "ai_runtime_policy": {
            "name": "tidy",
            "actor_scope": {"team": "strippers"},
            "tools": {"denied": ["delete_*"], "on_denied_tool_call": "strip"},
            "audit": {"log_policy_decisions": True},
        }
    },
]
MESSAGES = [{"role": "user", "content": "Do the thing."}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    cfg = gateway_config(mock_upstream, extra_models=MODELS)
    del cfg["auth"]
    cfg["policies"] = POLICIES
    cfg["guardrails"] = [{"name": "no-latin", "regex": ["ipsum"], "action": "redact"}]
    path = write_config(tmp_path_factory.mktemp("tool-answers") / "gateway.yaml", cfg)
    keys = {t: create_key(path, t)["secret"] for t in ("refusers", "strippers", "guarded")}
    gw = start_gateway("gateway-tool-answers", path, logs_dir / "gateway-tool-answers.log", upstream_key)
    yield gw, keys
    assert gw.stop() == 0


def oai(gw, key) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT, http_client=httpx2.Client(trust_env=False))


def anth(gw, key) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=gw.url, max_retries=0, timeout=REQUEST_TIMEOUT, http_client=httpx2.Client(trust_env=False))


def test_an_allowed_tool_call_passes_in_both_dialects(setup):
    gw, keys = setup
    r = oai(gw, keys["refusers"]).chat.completions.create(model="call-ok", messages=MESSAGES)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.tool_calls[0].function.name == "search_docs"
    with oai(gw, keys["refusers"]).chat.completions.stream(model="call-ok", messages=MESSAGES) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.name == "search_docs"
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"query": "mock"}
    m = anth(gw, keys["refusers"]).messages.create(model="call-ok", max_tokens=64, messages=MESSAGES)
    assert m.stop_reason == "tool_use" and [b.name for b in m.content if b.type == "tool_use"] == ["search_docs"]


def test_refuse_openai(setup):
    gw, keys = setup
    c = oai(gw, keys["refusers"])
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="call-bad", messages=MESSAGES)
    assert "delete_account" in str(e.value)
    # Streamed: text before the call arrives, then an error event; no part
    # of the denied call ever does.
    seen_tools = []
    with pytest.raises(openai.APIError) as e:
        for chunk in c.chat.completions.create(model="call-bad", messages=MESSAGES, stream=True):
            for ch in chunk.choices:
                seen_tools.extend(ch.delta.tool_calls or [])
    assert "delete_account" in str(e.value)
    assert seen_tools == []


def test_refuse_anthropic(setup):
    gw, keys = setup
    c = anth(gw, keys["refusers"])
    with pytest.raises(anthropic.PermissionDeniedError):
        c.messages.create(model="call-bad", max_tokens=64, messages=MESSAGES)
    kinds = []
    with pytest.raises(anthropic.APIError):
        with c.messages.stream(model="call-bad", max_tokens=64, messages=MESSAGES) as s:
            for event in s:
                if event.type == "content_block_start":
                    kinds.append(event.content_block.type)
    assert "tool_use" not in kinds


def test_text_before_a_refused_call_still_passes_the_output_guardrails(setup):
    """The mock says " lorem ipsum dolor" before its denied call: the
    stream ends with the refusal, and the text that went out before it was
    redacted like any other."""
    gw, keys = setup
    c = oai(gw, keys["guarded"])
    for model in ("call-bad", "call-bad-slow"):
        stream = c.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        text, err = stream_text_until_error(stream)
        assert "delete_account" in str(err), model
        assert "lorem" in text and "dolor" in text, (model, text)
        assert "ipsum" not in text and "[REDACTED" in text, (model, text)


def test_strip_openai(setup):
    gw, keys = setup
    c = oai(gw, keys["strippers"])
    r = c.chat.completions.create(model="call-bad", messages=MESSAGES)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
    assert "delete_account" in r.choices[0].message.content
    with c.chat.completions.stream(model="call-bad", messages=MESSAGES) as s:
        final = s.get_final_completion()
    assert not final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "stop"
    assert "delete_account" in final.choices[0].message.content


def test_strip_anthropic(setup):
    gw, keys = setup
    c = anth(gw, keys["strippers"])
    m = c.messages.create(model="call-bad", max_tokens=64, messages=MESSAGES)
    assert m.stop_reason == "end_turn"
    assert all(b.type == "text" for b in m.content)
    assert "delete_account" in m.content[-1].text
    with c.messages.stream(model="call-bad", max_tokens=64, messages=MESSAGES) as s:
        final = s.get_final_message()
    assert final.stop_reason == "end_turn"
    assert all(b.type == "text" for b in final.content)
    assert any("delete_account" in b.text for b in final.content)


def test_each_model_tool_call_is_recorded(setup):
    gw, _ = setup
    log = gw.proc.log_path.read_text()
    records = [json.loads(line.split("tool_call] ", 1)[1]) for line in log.splitlines() if "tool_call] " in line]
    decisions = {(r["tool"], r["decision"]) for r in records if r["source"] == "model_answer"}
    assert ("search_docs", "allowed") in decisions
    assert ("delete_account", "refused") in decisions
    assert ("delete_account", "stripped") in decisions
    for r in records:
        assert r["rule"] in (None, "tools.denied: delete_*")
        assert r["actor"]["team"] in ("refusers", "strippers", "guarded")
