"""The official `openai` SDK against the real gateway, as a user would use it.

Every model alias is backed by the mock upstream (`shardgate-bench mock`,
which demands the upstream key) or by the gateway's built-in mock provider.
The SDK sends a different key, so every success also proves the gateway
injected the provider key instead of forwarding the client's.
"""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

import mocktext
from conftest import ALIASES, CLIENT_KEY, LOCAL_TOKENS, UPSTREAM_TOKENS, Upstream, stream_text_until_error

MESSAGES = [{"role": "user", "content": "Say something deterministic."}]


def chat(client: openai.OpenAI, model: str, **kw):
    """A non-streaming chat completion with its raw response (for headers)."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kw)
    return raw, raw.parse()


# ------------------------------------------------------------------ models


def test_models_lists_the_aliases_and_no_upstream_names(client: openai.OpenAI):
    models = client.models.list()
    ids = sorted(m.id for m in models)
    assert ids == sorted(ALIASES)
    for m in models:
        assert m.object == "model"
        assert not m.id.startswith("mock-"), m.id


# ------------------------------------------------------------ chat, no stream


def test_chat_completion_through_upstream(client: openai.OpenAI):
    raw, completion = chat(client, "demo")
    assert raw.status_code == 200
    assert raw.headers["x-shardgate-target"] == "up/mock-1"
    assert raw.headers.get("x-request-id")
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == mocktext.text(UPSTREAM_TOKENS)
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == UPSTREAM_TOKENS
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + UPSTREAM_TOKENS


def test_client_key_is_not_forwarded_upstream(client: openai.OpenAI, mock_upstream: Upstream):
    # The upstream itself refuses the client's key...
    with httpx2.Client(trust_env=False, timeout=30) as direct:
        r = direct.post(
            f"{mock_upstream.base_url}/chat/completions",
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
            json={"model": "mock-1", "messages": MESSAGES},
        )
    assert r.status_code == 401
    # ...yet the same key through the gateway gets an answer from it.
    raw, completion = chat(client, "demo")
    assert raw.headers["x-shardgate-target"] == "up/mock-1"
    assert completion.choices[0].message.content == mocktext.text(UPSTREAM_TOKENS)


def test_alias_maps_to_its_upstream_model(client: openai.OpenAI):
    raw, completion = chat(client, "short")
    assert raw.headers["x-shardgate-target"] == "up/mock-tokens-5"
    assert completion.choices[0].message.content == mocktext.text(5)
    assert completion.usage.completion_tokens == 5


def test_max_tokens_reaches_the_upstream(client: openai.OpenAI):
    _, completion = chat(client, "demo", max_tokens=3)
    assert completion.choices[0].message.content == mocktext.text(3)
    assert completion.choices[0].finish_reason == "length"


def test_builtin_mock_provider(client: openai.OpenAI):
    raw, completion = chat(client, "local")
    assert raw.headers["x-shardgate-target"] == "local/mock-1"
    assert completion.choices[0].message.content == mocktext.text(LOCAL_TOKENS)
    assert completion.choices[0].finish_reason == "stop"


def test_each_response_has_its_own_request_id(client: openai.OpenAI):
    ids = {chat(client, "demo")[0].headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3, ids


def test_concurrent_requests_across_shards(async_client_factory):
    async def run():
        async with async_client_factory() as aclient:
            calls = [
                aclient.chat.completions.create(model=("demo", "short", "local")[i % 3], messages=MESSAGES)
                for i in range(12)
            ]
            return await asyncio.gather(*calls)

    results = asyncio.run(run())
    expected = (mocktext.text(UPSTREAM_TOKENS), mocktext.text(5), mocktext.text(LOCAL_TOKENS))
    for i, completion in enumerate(results):
        assert completion.choices[0].message.content == expected[i % 3]


# ------------------------------------------------------------------ failover


def test_failover_to_the_next_target(client: openai.OpenAI):
    raw, completion = chat(client, "failover")
    assert raw.status_code == 200
    assert raw.headers["x-shardgate-target"] == "up/mock-1"
    assert completion.choices[0].message.content == mocktext.text(UPSTREAM_TOKENS)


def test_failover_when_streaming(client: openai.OpenAI):
    stream = client.chat.completions.create(model="failover", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == mocktext.text(UPSTREAM_TOKENS)


# -------------------------------------------------------------------- errors


def test_unknown_model_is_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    err = info.value
    assert err.status_code == 404
    assert err.body == {
        "message": "The model `no-such-model` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert err.code == "model_not_found"
    assert err.request_id  # x-request-id on errors too


def test_invalid_json_is_a_bad_request(client: openai.OpenAI):
    # The SDK's low-level post, with a body no SDK method would produce.
    with pytest.raises(openai.BadRequestError) as info:
        client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            content=b'{"model": "demo", "messages": [',
            options={"headers": {"content-type": "application/json"}},
        )
    assert info.value.status_code == 400
    assert info.value.body["type"] == "invalid_request_error"


def test_missing_model_is_a_bad_request(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/chat/completions", cast_to=ChatCompletion, body={"messages": MESSAGES})
    assert info.value.status_code == 400


def test_upstream_500_is_passed_on(client: openai.OpenAI):
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="broken", messages=MESSAGES)
    err = info.value
    assert err.status_code == 500
    assert err.body["message"] == "The server had an error (mock)"
    assert err.body["type"] == "server_error"


def test_upstream_429_is_passed_on(client: openai.OpenAI):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=MESSAGES)
    err = info.value
    assert err.status_code == 429
    assert err.body["message"] == "Rate limit reached (mock)"
    assert err.code == "rate_limit_exceeded"
    # The provider's Retry-After reaches the client, whose SDK waits that long.
    assert err.response.headers["retry-after"] == "1"


def test_upstream_error_when_streaming_is_raised_before_any_chunk(client: openai.OpenAI):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=MESSAGES, stream=True)


def test_body_over_the_limit_is_rejected(client: openai.OpenAI):
    huge = "x" * (1024 * 1024 + 1)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="demo", messages=[{"role": "user", "content": huge}])
    assert info.value.status_code == 413
    assert isinstance(info.value.body, dict) and info.value.body.get("message")


# ----------------------------------------------------------------- streaming


def test_stream_with_usage(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="demo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks, "no chunk"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mocktext.text(UPSTREAM_TOKENS)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    assert with_usage[0] is chunks[-1]
    assert with_usage[0].choices == []
    assert with_usage[0].usage.completion_tokens == UPSTREAM_TOKENS


def test_stream_without_usage(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(model="short", messages=MESSAGES, stream=True)
    assert raw.headers["x-shardgate-target"] == "up/mock-tokens-5"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == mocktext.text(5)
    assert all(c.usage is None for c in chunks)


def test_stream_from_builtin_mock(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="local", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == mocktext.text(LOCAL_TOKENS)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == LOCAL_TOKENS


def test_upstream_dying_mid_stream_raises_an_api_error(client: openai.OpenAI):
    stream = client.chat.completions.create(model="cut", messages=MESSAGES, stream=True)
    text, error = stream_text_until_error(stream)
    assert error.message
    assert text == mocktext.text(3)


# ---------------------------------------------------------------- embeddings


def test_embeddings_one_vector_per_input(client: openai.OpenAI):
    inputs = ["alpha", "beta", "gamma"]
    raw = client.embeddings.with_raw_response.create(model="demo", input=inputs)
    assert raw.headers["x-shardgate-target"] == "up/mock-1"
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1, 2]
    for inp, d in zip(inputs, result.data):
        assert d.embedding == pytest.approx(mocktext.embedding(inp), abs=2e-6)


def test_embeddings_single_input_and_dimensions(client: openai.OpenAI):
    result = client.embeddings.create(model="demo", input="hello", dimensions=8)
    assert len(result.data) == 1
    assert result.data[0].embedding == pytest.approx(mocktext.embedding("hello", 8), abs=2e-6)


# ---------------------------------------------------------- legacy completions


def test_legacy_completion(client: openai.OpenAI):
    raw = client.completions.with_raw_response.create(model="demo", prompt="Once upon a time")
    assert raw.headers["x-shardgate-target"] == "up/mock-1"
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.choices[0].text == mocktext.text(UPSTREAM_TOKENS)
    assert completion.choices[0].finish_reason == "stop"


def test_legacy_completion_stream(client: openai.OpenAI):
    stream = client.completions.create(model="short", prompt="Once upon a time", stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == mocktext.text(5)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_legacy_completion_from_builtin_mock(client: openai.OpenAI):
    completion = client.completions.create(model="local", prompt="Once upon a time", max_tokens=4)
    assert completion.choices[0].text == mocktext.text(4)
    assert completion.choices[0].finish_reason == "length"
