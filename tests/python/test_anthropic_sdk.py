"""The official `anthropic` SDK against the gateway's `/v1/messages`.

The same Anthropic client reaches every kind of backend: the gateway's
built-in mock (`local`), an OpenAI-dialect upstream (`demo`, translated both
ways) and the dialect upstreams of the mock fleet (see DIALECT_ALIASES),
streaming and not. Texts and token counts are compared with what the
deterministic mock says, so a translation that drops or reorders a byte fails.
"""

from __future__ import annotations

import anthropic
import httpx2
import pytest

import mocktext
from conftest import CLIENT_KEY, DIALECT_ALIASES, LOCAL_TOKENS, REQUEST_TIMEOUT, UPSTREAM_TOKENS, Gateway

MESSAGES = [{"role": "user", "content": "Say something deterministic."}]

# alias -> expected completion length; every backend kind the gateway has.
BACKENDS = {"local": LOCAL_TOKENS, "demo": UPSTREAM_TOKENS, **{a: UPSTREAM_TOKENS for a in DIALECT_ALIASES}}


@pytest.fixture(scope="module")
def claude(gateway: Gateway):
    with anthropic.Anthropic(
        api_key=CLIENT_KEY,
        base_url=gateway.url,
        max_retries=0,
        timeout=REQUEST_TIMEOUT,
        http_client=httpx2.Client(trust_env=False),
    ) as c:
        yield c


@pytest.mark.parametrize("alias", sorted(BACKENDS))
def test_message(claude: anthropic.Anthropic, alias: str):
    msg = claude.messages.create(model=alias, max_tokens=256, messages=MESSAGES)
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.model == "mock-1"  # the served model; every backend here runs mock-1
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == mocktext.text(BACKENDS[alias])
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == BACKENDS[alias]
    assert msg.usage.input_tokens > 0


@pytest.mark.parametrize("alias", sorted(BACKENDS))
def test_stream(claude: anthropic.Anthropic, alias: str):
    kinds = []
    with claude.messages.stream(model=alias, max_tokens=256, messages=MESSAGES) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert "content_block_delta" in kinds
    assert kinds[-1] == "message_stop"
    assert final.content[0].text == mocktext.text(BACKENDS[alias])
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == BACKENDS[alias]


def test_max_tokens_stops_with_max_tokens(claude: anthropic.Anthropic):
    msg = claude.messages.create(model="demo", max_tokens=3, messages=MESSAGES)
    assert msg.content[0].text == mocktext.text(3)
    assert msg.stop_reason == "max_tokens"


def test_system_prompt_and_multi_turn_are_accepted(claude: anthropic.Anthropic):
    msg = claude.messages.create(
        model="demo",
        max_tokens=64,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": [{"type": "text", "text": "three"}]},
        ],
    )
    assert msg.content[0].text == mocktext.text(UPSTREAM_TOKENS)


def test_unknown_model_is_anthropics_not_found(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=16, messages=MESSAGES)
    assert e.value.status_code == 404
    assert "no-such-model" in str(e.value)
    assert e.value.body["type"] == "error"


def test_upstream_rate_limit_is_anthropics_rate_limit_error(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.RateLimitError) as e:
        claude.messages.create(model="limited", max_tokens=16, messages=MESSAGES)
    assert e.value.status_code == 429
    assert e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.response.headers["retry-after"] == "1"


def test_malformed_body_is_anthropic_shaped_400(gateway: Gateway):
    with httpx2.Client(base_url=gateway.url, timeout=REQUEST_TIMEOUT, trust_env=False) as h:
        r = h.post("/v1/messages", json={"model": "demo", "max_tokens": 8, "messages": "not a list"})
        assert r.status_code == 400
        body = r.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert "messages" in body["error"]["message"]


def test_malformed_body_to_the_builtin_mock_is_refused_too(gateway: Gateway):
    with httpx2.Client(base_url=gateway.url, timeout=REQUEST_TIMEOUT, trust_env=False) as h:
        r = h.post("/v1/messages", json={"model": "local", "max_tokens": 8})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert "messages" in r.json()["error"]["message"]
