"""Token counting with the official SDKs: Anthropic's
`messages.count_tokens` and OpenAI's `responses.input_tokens.count`,
answered by the gateway's tokenizer for a model alias and marked
estimated; nothing is charged and nothing goes upstream."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import pytest

from conftest import REQUEST_TIMEOUT


@pytest.fixture
def claude(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-x", base_url=gateway.url, max_retries=0, timeout=REQUEST_TIMEOUT,
                               http_client=httpx2.Client(trust_env=False))


def test_anthropic_count_tokens_grows_with_the_prompt(claude):
    short = claude.messages.with_raw_response.count_tokens(
        model="claude", messages=[{"role": "user", "content": "hi"}])
    assert short.headers["x-shardgate-estimated"] == "true"
    n_short = short.parse().input_tokens
    long = claude.messages.count_tokens(
        model="claude", system="You are terse.",
        messages=[{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 20}])
    assert 0 < n_short < long.input_tokens
    # About 9 tokens per repetition; the estimate is within reason.
    assert 150 < long.input_tokens < 400, long.input_tokens


def test_openai_responses_input_tokens(client):
    r = client.responses.input_tokens.with_raw_response.count(model="demo", input="hello there")
    assert r.headers["x-shardgate-estimated"] == "true"
    counted = r.parse()
    assert counted.object == "response.input_tokens" and counted.input_tokens > 0
    more = client.responses.input_tokens.count(
        model="demo", instructions="Answer in French.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello there, how are you today?"}]}])
    assert more.input_tokens > counted.input_tokens


def test_unknown_models_and_bad_bodies_are_refused_in_each_shape(claude, client, gateway):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model="no-such-model", input="hi")
    r = httpx2.post(f"{gateway.url}/v1/messages/count_tokens", content=b"{not json", timeout=REQUEST_TIMEOUT)
    assert r.status_code == 400 and r.json()["type"] == "error"
    r = httpx2.post(f"{gateway.url}/v1/responses/input_tokens", json={"input": "hi"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
