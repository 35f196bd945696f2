"""The Responses API (`POST /v1/responses`) through the official `openai`
SDK, against each upstream kind the standard config has (OpenAI, Anthropic,
Gemini and Bedrock dialects of the mock fleet, and the built-in mock; the
OpenAI one, `demo`, is passed through to the mock's own `/v1/responses`):
`responses.create`, `responses.stream`, function tools across turns, tool
policies on answers, and refusals in the API's own error shape.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import openai
import pytest

from conftest import (
    CLIENT_KEY,
    REQUEST_TIMEOUT,
    Gateway,
    Upstream,
    create_key,
    gateway_config,
    start_gateway,
    write_config,
)

ALIASES = ("demo", "claude", "gemini", "bedrock", "local")
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.mark.parametrize("alias", ALIASES)
def test_create_returns_a_response_with_text_and_usage(client: openai.OpenAI, alias: str):
    r = client.responses.create(model=alias, input="Say something.", instructions="Be brief.", max_output_tokens=40)
    assert r.object == "response"
    assert r.id.startswith("resp_")
    assert r.status == "completed"
    if alias != "demo":
        # Translated answers echo the request as OpenAI's do ("demo" is
        # passed through to the mock, which does not echo).
        assert r.instructions == "Be brief."
    assert r.output_text.strip()
    [msg] = [o for o in r.output if o.type == "message"]
    assert msg.role == "assistant" and msg.content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


@pytest.mark.parametrize("alias", ALIASES)
def test_stream_delivers_the_event_sequence_and_the_final_response(client: openai.OpenAI, alias: str):
    seen = []
    deltas = []
    with client.responses.stream(model=alias, input=[{"role": "user", "content": "Count."}]) as stream:
        for event in stream:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert seen[:2] == ["response.created", "response.in_progress"]
    assert seen[-1] == "response.completed"
    for t in ("response.output_item.added", "response.content_part.added", "response.output_text.done", "response.output_item.done"):
        assert t in seen, seen
    assert final.status == "completed"
    assert final.output_text == "".join(deltas) and deltas
    assert final.usage.output_tokens > 0


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI):
    r = client.responses.create(model="demo", input="Write a lot.", max_output_tokens=3)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


@pytest.fixture(scope="module")
def tools_gateway(tmp_path_factory, logs_dir: Path, mock_upstream: Upstream, upstream_key: str):
    models = {
        "weather": [("local", "mock-tokens-3-call-get_weather")],
        "weather-claude": [("anthropic", "mock-tokens-3-call-get_weather")],
        "danger": [("local", "mock-tokens-3-call-delete_account")],
        "passthrough": [("up", "mock-1")],
    }
    cfg = gateway_config(mock_upstream, extra_models=models)
    del cfg["auth"]
    cfg["policies"] = [
        {"ai_runtime_policy": {"actor_scope": {"team": "careful"}, "tools": {"denied": ["delete_*"]}}},
        {"ai_runtime_policy": {"actor_scope": {"team": "tidy"}, "tools": {"denied": ["delete_*"], "on_denied_tool_call": "strip"}}},
    ]
    path = write_config(tmp_path_factory.mktemp("responses-tools") / "gateway.yaml", cfg)
    keys = {t: create_key(path, t)["secret"] for t in ("careful", "tidy")}
    gw = start_gateway("gateway-responses-tools", path, logs_dir / "gateway-responses-tools.log", upstream_key)
    yield gw, keys
    assert gw.stop() == 0


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key, base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT, http_client=httpx2.Client(trust_env=False)
    )


@pytest.mark.parametrize("alias", ["weather", "weather-claude"])
def test_function_calls_across_turns(tools_gateway, alias: str):
    gw, keys = tools_gateway
    with sdk(gw, keys["careful"]) as c:
        first = c.responses.create(model=alias, input="Weather in Paris?", tools=TOOLS)
        [call] = [o for o in first.output if o.type == "function_call"]
        assert call.name == "get_weather"
        json.loads(call.arguments)
        # The next turn carries the call and its output, as agent loops do.
        second = c.responses.create(
            model=alias,
            tools=TOOLS,
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"},
            ],
        )
        assert second.status == "completed"

        # Streamed: the call's arguments arrive as deltas and add up.
        args = []
        with c.responses.stream(model=alias, input="Weather?", tools=TOOLS) as stream:
            for event in stream:
                if event.type == "response.function_call_arguments.delta":
                    args.append(event.delta)
            final = stream.get_final_response()
        [call] = [o for o in final.output if o.type == "function_call"]
        assert "".join(args) == call.arguments


def test_a_denied_tool_call_in_an_answer_is_refused_or_stripped(tools_gateway):
    gw, keys = tools_gateway
    with sdk(gw, keys["careful"]) as c:
        with pytest.raises(openai.PermissionDeniedError) as e:
            c.responses.create(model="danger", input="Clean up.")
        assert "delete_account" in e.value.message
    with sdk(gw, keys["tidy"]) as c:
        r = c.responses.create(model="danger", input="Clean up.")
        assert not [o for o in r.output if o.type == "function_call"]
        assert "delete_account" in r.output_text
        with c.responses.stream(model="danger", input="Clean up.") as stream:
            types = [e.type for e in stream]
            final = stream.get_final_response()
        assert "response.function_call_arguments.delta" not in types
        assert not [o for o in final.output if o.type == "function_call"]


def test_bad_requests_get_400_in_openai_shape(client: openai.OpenAI):
    # What only OpenAI's own API has is refused, by name, for the others.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="claude", input=[{"type": "item_reference", "id": "x"}])
    assert "item_reference" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="gemini", input="x", tools=[{"type": "web_search"}])
    assert "web_search" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")


def test_a_three_turn_conversation_through_anthropic_continues_at_once(client: openai.OpenAI):
    """Each turn names the one before; the second is sent the moment the
    first stream ends. The upstream sees the whole conversation: the prompt
    grows turn by turn (the mock counts the prompt it receives)."""
    with client.responses.stream(model="claude", input="My name is Ada.") as stream:
        for _ in stream:
            pass
        first = stream.get_final_response()
    t0 = time.monotonic()
    second = client.responses.create(model="claude", input="What is my name?", previous_response_id=first.id)
    sent_within = time.monotonic() - t0
    third = client.responses.create(model="claude", input="And again?", previous_response_id=second.id)
    assert second.previous_response_id == first.id
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    print(f"second turn answered {sent_within * 1000:.0f} ms after the first ended")
    # Read back as stored.
    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text


def test_tool_calls_across_turns_with_previous_response_id(tools_gateway):
    gw, keys = tools_gateway
    with sdk(gw, keys["careful"]) as c:
        first = c.responses.create(model="weather-claude", input="Weather in Paris?", tools=TOOLS)
        [call] = [o for o in first.output if o.type == "function_call"]
        second = c.responses.create(
            model="weather-claude",
            tools=TOOLS,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
        assert second.status == "completed"
    # Another key's responses are not there for it, whatever serves it:
    # an OpenAI provider (passed through) would otherwise continue it by id.
    with sdk(gw, keys["careful"]) as c:
        theirs = c.responses.create(model="passthrough", input="secret plans")
    with sdk(gw, keys["tidy"]) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(first.id)
        for model, prev in (("weather", first.id), ("passthrough", theirs.id)):
            with pytest.raises(openai.BadRequestError) as e:
                other.responses.create(model=model, input="x", previous_response_id=prev)
            assert e.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize("alias", ["local", "claude"])
def test_delete_and_store_false_leave_nothing_to_continue(client: openai.OpenAI, alias: str):
    r = client.responses.create(model=alias, input="Remember this.")
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=alias, input="x", previous_response_id=r.id)
    assert "not found" in e.value.message and e.value.body["param"] == "previous_response_id"
    unstored = client.responses.create(model=alias, input="Forget this.", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=alias, input="x", previous_response_id="resp_never_made")


def test_a_conversation_moves_between_openai_passthrough_and_other_providers(client: openai.OpenAI):
    """A turn served by the OpenAI provider (passed through as it came) is
    continued on Anthropic, whose request carries the whole conversation,
    and back: the OpenAI provider then gets the conversation in `input`,
    since the turn it continues was served elsewhere."""
    with client.responses.stream(model="demo", input="My name is Ada.") as stream:
        for _ in stream:
            pass
        first = stream.get_final_response()
    assert first.usage.output_tokens > 0
    second = client.responses.create(model="claude", input="What is my name?", previous_response_id=first.id)
    third = client.responses.create(model="demo", input="Again?", previous_response_id=second.id)
    assert first.usage.input_tokens < second.usage.input_tokens
    assert second.usage.input_tokens < third.usage.input_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text


def test_stored_turns_survive_a_restart(private_gateway, tmp_path: Path, upstream_key: str):
    gw = private_gateway()
    with gw.client() as c:
        first = c.responses.create(model="claude", input="Remember: 42.")
    assert gw.stop() == 0
    again = start_gateway("restarted-gateway", gw.config_path, tmp_path / "restarted.log", upstream_key)
    try:
        with again.client() as c:
            assert c.responses.retrieve(first.id).output_text == first.output_text
            follow = c.responses.create(model="local", input="And?", previous_response_id=first.id)
            assert follow.status == "completed"
    finally:
        assert again.stop() == 0
