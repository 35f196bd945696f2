"""One `openai` SDK, every provider dialect: the gateway translates OpenAI
chat requests to Anthropic Messages, Gemini generateContent and Bedrock
Converse (SigV4-signed), and their answers and streams (SSE and AWS
event-stream) back, over real TCP to the mock fleet speaking each dialect.

Texts, tool calls and usage are compared with what the deterministic mock
answers, so a translation that loses, reorders or duplicates anything fails.
"""

from __future__ import annotations

import json

import openai
import pytest

import mocktext
from conftest import DIALECT_ALIASES, UPSTREAM_TOKENS, stream_text_until_error

MESSAGES = [{"role": "user", "content": "Say something deterministic."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "other", "parameters": {"type": "object", "properties": {}}},
    },
]
# What the mock calls: the first tool offered, with this argument.
TOOL_ARGS = {"query": mocktext.text(3)}

dialects = pytest.mark.parametrize("alias", DIALECT_ALIASES)


@dialects
def test_chat(client: openai.OpenAI, alias: str):
    raw = client.chat.completions.with_raw_response.create(model=alias, messages=MESSAGES)
    completion = raw.parse()
    assert raw.headers["x-shardgate-target"] == f"{ {'claude': 'anthropic'}.get(alias, alias)}/mock-1"
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == mocktext.text(UPSTREAM_TOKENS)
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == UPSTREAM_TOKENS
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + UPSTREAM_TOKENS


@dialects
def test_chat_max_tokens_is_length(client: openai.OpenAI, alias: str):
    completion = client.chat.completions.create(model=alias, messages=MESSAGES, max_tokens=4)
    assert completion.choices[0].message.content == mocktext.text(4)
    assert completion.choices[0].finish_reason == "length"


@dialects
def test_stream(client: openai.OpenAI, alias: str):
    stream = client.chat.completions.create(
        model=alias, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    # Incremental: one delta per upstream token, not one blob at the end.
    assert len(deltas) == UPSTREAM_TOKENS
    assert "".join(deltas) == mocktext.text(UPSTREAM_TOKENS)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == UPSTREAM_TOKENS


@dialects
def test_stream_without_usage_has_none(client: openai.OpenAI, alias: str):
    chunks = list(client.chat.completions.create(model=alias, messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == mocktext.text(UPSTREAM_TOKENS)
    assert all(c.usage is None for c in chunks)


@dialects
def test_tool_call(client: openai.OpenAI, alias: str):
    completion = client.chat.completions.create(model=alias, messages=MESSAGES, tools=TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments) == TOOL_ARGS
    assert calls[0].id


@dialects
def test_streamed_tool_call(client: openai.OpenAI, alias: str):
    chunks = list(client.chat.completions.create(model=alias, messages=MESSAGES, tools=TOOLS, stream=True))
    name, args, ids = "", "", set()
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            assert tc.index == 0
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
    assert name == "lookup"
    assert len(ids) == 1
    assert json.loads(args) == TOOL_ARGS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


@dialects
def test_tool_result_turn_gets_text(client: openai.OpenAI, alias: str):
    first = client.chat.completions.create(model=alias, messages=MESSAGES, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": "lookup", "arguments": call.function.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "forty-two"},
    ]
    second = client.chat.completions.create(model=alias, messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == mocktext.text(UPSTREAM_TOKENS)


@dialects
def test_provider_rate_limit_is_the_sdks_rate_limit_error(client: openai.OpenAI, alias: str):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=f"{alias}-limited", messages=MESSAGES)
    assert e.value.status_code == 429
    message = str(e.value)
    assert "mock" in message.lower(), message  # the provider's own message is kept
    assert "sk-upstream" not in message
    # Each provider's Retry-After reaches the client.
    assert e.value.response.headers["retry-after"] == "1"


def test_gemini_embeddings(client: openai.OpenAI):
    out = client.embeddings.create(model="gemini-embed", input=["alpha", "beta"])
    assert [d.index for d in out.data] == [0, 1]
    assert all(len(d.embedding) > 0 for d in out.data)
    assert out.data[0].embedding != out.data[1].embedding


def test_legacy_completions_to_a_chat_only_dialect_is_a_clear_400(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="claude", prompt="hi")
    assert "/v1/completions" in str(e.value)


def test_azure_deployment_chat_stream_and_embeddings(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(model="azure-chat", messages=MESSAGES)
    assert raw.headers["x-shardgate-target"] == "azure/mock-1"
    assert raw.parse().choices[0].message.content == mocktext.text(UPSTREAM_TOKENS)
    chunks = list(client.chat.completions.create(model="azure-chat", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == mocktext.text(UPSTREAM_TOKENS)
    emb = client.embeddings.create(model="azure-embed", input=["alpha", "beta"])
    assert [d.index for d in emb.data] == [0, 1]
    assert emb.data[0].embedding == pytest.approx(mocktext.embedding("alpha"), abs=1e-6)


@dialects
def test_translated_stream_cut_by_the_upstream_ends_with_an_error(client: openai.OpenAI, alias: str):
    stream = client.chat.completions.create(model=f"{alias}-cut", messages=MESSAGES, stream=True)
    text, _ = stream_text_until_error(stream)
    # The error comes after exactly what the upstream sent.
    assert text == mocktext.text(3)


@pytest.mark.parametrize("alias", DIALECT_ALIASES)
def test_cut_stream_to_an_anthropic_client_ends_with_an_error_event(gateway, alias: str):
    import anthropic
    import httpx2

    from conftest import CLIENT_KEY, REQUEST_TIMEOUT

    with anthropic.Anthropic(
        api_key=CLIENT_KEY, base_url=gateway.url, max_retries=0, timeout=REQUEST_TIMEOUT,
        http_client=httpx2.Client(trust_env=False),
    ) as c:
        text = []
        with pytest.raises(anthropic.APIError) as info:
            with c.messages.stream(model=f"{alias}-cut", max_tokens=64, messages=MESSAGES) as s:
                for t in s.text_stream:
                    text.append(t)
        assert not isinstance(info.value, anthropic.APIConnectionError), repr(info.value)
        assert "".join(text) == mocktext.text(3)
