"""Extended thinking and reasoning summaries through the gateway, with the
official SDKs, against an Anthropic upstream that thinks when asked.

The upstream answers a request that asks for `thinking` with a signed
thinking block first (signature `sig-<n>`, n counting its calls); it calls
`get_weather` until the conversation has a tool result, then answers in
text. It keeps every request it got, so a test sees what reached Claude:
the budget asked for, and whether a turn's signed thinking came back as
it was (Claude refuses a tool-using turn whose thinking is missing or
altered).
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import httpx2
import openai
import pytest

from conftest import REQUEST_TIMEOUT, Upstream, UpstreamHandler, gateway_config, start_gateway, write_config

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
CHAT_TOOLS = [{"type": "function", "function": {k: v for k, v in TOOLS[0].items() if k != "type"}}]


class Thinking(UpstreamHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.path.endswith("/responses"):
            return self.openai_responses(body)
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests.append(body)  # type: ignore[attr-defined]
            n = len(self.server.requests)  # type: ignore[attr-defined]
        thought = f"thought {n}: the user wants the weather"
        blocks = []
        if body.get("thinking"):
            blocks.append({"type": "thinking", "thinking": thought, "signature": f"sig-{n}"})
        answered = any(isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
                       for m in body["messages"])
        if answered:
            blocks.append({"type": "text", "text": "It is 18C and sunny in Paris."})
            stop = "end_turn"
        else:
            blocks.append({"type": "tool_use", "id": f"toolu_{n}", "name": "get_weather", "input": {"city": "Paris"}})
            stop = "tool_use"
        msg = {"id": f"msg_{n}", "type": "message", "role": "assistant", "model": body["model"], "content": blocks,
               "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 20}}
        if not body.get("stream"):
            return self.send(200, "application/json", json.dumps(msg).encode())
        events = [("message_start", {"type": "message_start", "message": {
            **msg, "content": [], "stop_reason": None, "usage": {"input_tokens": 30, "output_tokens": 1}}})]
        for i, b in enumerate(blocks):
            if b["type"] == "thinking":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {"type": "thinking", "thinking": ""}}))
                for piece in (thought[:10], thought[10:]):
                    events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                           "delta": {"type": "thinking_delta", "thinking": piece}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "signature_delta", "signature": b["signature"]}}))
            elif b["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {"type": "text", "text": ""}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                       "delta": {"type": "text_delta", "text": b["text"]}}))
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": {**b, "input": {}}}))
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": json.dumps(b["input"])}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events += [
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 20}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.send(200, "text/event-stream",
                  "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in events).encode())

    def openai_responses(self, body: dict) -> None:
        """OpenAI's own Responses API: kept apart, answered in text."""
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.openai.append(body)  # type: ignore[attr-defined]
            n = len(self.server.openai)  # type: ignore[attr-defined]
        out = {"id": f"resp_openai{n}", "object": "response", "created_at": 1, "model": body["model"],
               "status": "completed", "error": None, "incomplete_details": None, "output": [
                   {"type": "message", "id": f"msg_o{n}", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": "From OpenAI.", "annotations": []}]}],
               "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
               "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}}
        self.send(200, "application/json", json.dumps(out).encode())


@pytest.fixture(scope="module")
def claude():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Thinking)
    srv.daemon_threads = True
    srv.requests = []  # type: ignore[attr-defined]
    srv.openai = []  # type: ignore[attr-defined]
    srv.lock = threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, mock_upstream: Upstream, upstream_key: str, claude):
    d = tmp_path_factory.mktemp("reasoning")
    cfg = gateway_config(mock_upstream)
    cfg["providers"]["thinking-claude"] = {
        "kind": "anthropic", "base_url": f"http://127.0.0.1:{claude.server_address[1]}", "api_key": "sk-ant-think"}
    cfg["models"]["thinker"] = {"targets": [{"provider": "thinking-claude", "model": "claude-sonnet-4-5"}]}
    cfg["providers"]["real-openai"] = {
        "kind": "openai", "base_url": f"http://127.0.0.1:{claude.server_address[1]}/v1", "api_key": "sk-openai"}
    cfg["models"]["gpt"] = {"targets": [{"provider": "real-openai", "model": "gpt-5"}]}
    gw = start_gateway("reasoning-gateway", write_config(d / "gateway.yaml", cfg), d / "gateway.log", upstream_key)
    yield gw
    assert gw.stop() == 0


@pytest.fixture
def client(gw):
    with openai.OpenAI(api_key="unused", base_url=gw.base_url, max_retries=0, timeout=REQUEST_TIMEOUT,
                       http_client=httpx2.Client(trust_env=False)) as c:
        yield c


def last_request(claude) -> dict:
    with claude.lock:
        return claude.requests[-1]


def sent_back_thinking(request: dict) -> list[dict]:
    """The thinking blocks of the request's assistant turns, as Claude got them."""
    return [b for m in request["messages"] if m["role"] == "assistant" and isinstance(m["content"], list)
            for b in m["content"] if b["type"] in ("thinking", "redacted_thinking")]


def test_reasoning_summaries_come_back_and_continue_a_tool_call(client: openai.OpenAI, claude):
    first = client.responses.create(model="thinker", input="Weather in Paris?", tools=TOOLS, store=False,
                                    reasoning={"effort": "medium", "summary": "auto"})
    assert last_request(claude)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    kinds = [item.type for item in first.output]
    assert kinds == ["reasoning", "function_call"]
    reasoning = first.output[0]
    n = len(claude.requests)
    assert reasoning.summary[0].text == f"thought {n}: the user wants the weather"
    assert reasoning.encrypted_content == f"anthropic.thinking:sig-{n}"
    call = first.output[1]
    # Stateless: the whole conversation goes back, the reasoning item with it.
    second = client.responses.create(
        model="thinker", tools=TOOLS, store=False, reasoning={"effort": "medium"},
        input=[{"role": "user", "content": "Weather in Paris?"}, *[i.model_dump(exclude_none=True) for i in first.output],
               {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}])
    got = last_request(claude)
    assert got["thinking"]["type"] == "enabled", "thinking stays on: the signed block came back"
    assert sent_back_thinking(got) == [
        {"type": "thinking", "thinking": f"thought {n}: the user wants the weather", "signature": f"sig-{n}"}]
    assert second.output_text == "It is 18C and sunny in Paris."
    assert [i.type for i in second.output] == ["reasoning", "message"]


def test_streamed_reasoning_summaries_and_a_stored_turn_continued_by_id(client: openai.OpenAI, claude):
    deltas: list[str] = []
    with client.responses.stream(model="thinker", input="Weather in Paris?", tools=TOOLS,
                                 reasoning={"effort": "high"}) as s:
        for event in s:
            if event.type == "response.reasoning_summary_text.delta":
                deltas.append(event.delta)
        first = s.get_final_response()
    n = len(claude.requests)
    assert "".join(deltas) == f"thought {n}: the user wants the weather"
    assert claude.requests[-1]["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert [i.type for i in first.output] == ["reasoning", "function_call"]
    assert first.output[0].summary[0].text == "".join(deltas)
    call = first.output[1]
    # The gateway kept the turn: the follow-up names it, and Claude gets the
    # thinking that made the call.
    second = client.responses.create(
        model="thinker", tools=TOOLS, previous_response_id=first.id, reasoning={"effort": "high"},
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}])
    assert sent_back_thinking(last_request(claude)) == [
        {"type": "thinking", "thinking": f"thought {n}: the user wants the weather", "signature": f"sig-{n}"}]
    assert second.output_text == "It is 18C and sunny in Paris."


def test_without_reasoning_nothing_is_asked_and_no_reasoning_items_come_back(client: openai.OpenAI, claude):
    r = client.responses.create(model="thinker", input="Weather in Paris?", tools=TOOLS, store=False)
    assert "thinking" not in last_request(claude)
    assert [i.type for i in r.output] == ["function_call"]
    # Too small a budget to think in: no thinking rather than Claude's 400.
    client.responses.create(model="thinker", input="Weather?", tools=TOOLS, store=False,
                            max_output_tokens=1500, reasoning={"effort": "low"})
    assert "thinking" not in last_request(claude)


def test_a_reasoning_item_from_another_provider_is_not_sent_to_claude(client: openai.OpenAI, claude):
    client.responses.create(model="thinker", tools=TOOLS, store=False, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "reasoning", "id": "rs_openai", "summary": [{"type": "summary_text", "text": "OpenAI's own"}],
         "encrypted_content": "gAAAAB-opaque"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
    ])
    assert sent_back_thinking(last_request(claude)) == []


def test_chat_clients_get_the_thinking_and_send_it_back(client: openai.OpenAI, claude):
    for stream in (False, True):
        msgs = [{"role": "user", "content": "Weather in Paris?"}]
        extra = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
        if stream:
            reasoning, blocks, calls = "", [], {}
            for chunk in client.chat.completions.create(model="thinker", messages=msgs, tools=CHAT_TOOLS,
                                                        max_tokens=4096, extra_body=extra, stream=True):
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                blocks += (delta.model_extra or {}).get("thinking_blocks") or []
                for c in delta.tool_calls or []:
                    calls.setdefault(c.index, {"id": c.id, "type": "function",
                                               "function": {"name": c.function.name, "arguments": ""}})
                    calls[c.index]["function"]["arguments"] += c.function.arguments or ""
            signature = [b["signature"] for b in blocks if b.get("signature")]
            thinking = [{"type": "thinking", "thinking": reasoning, "signature": signature[0]}]
            tool_calls = list(calls.values())
        else:
            r = client.chat.completions.create(model="thinker", messages=msgs, tools=CHAT_TOOLS, max_tokens=4096,
                                               extra_body=extra)
            message = r.choices[0].message
            reasoning = message.model_extra["reasoning_content"]
            thinking = message.model_extra["thinking_blocks"]
            tool_calls = [c.model_dump() for c in message.tool_calls]
        n = len(claude.requests)
        assert reasoning == f"thought {n}: the user wants the weather"
        assert thinking == [{"type": "thinking", "thinking": reasoning, "signature": f"sig-{n}"}]
        msgs += [{"role": "assistant", "content": None, "tool_calls": tool_calls, "thinking_blocks": thinking},
                 {"role": "tool", "tool_call_id": tool_calls[0]["id"], "content": "18C"}]
        r = client.chat.completions.create(model="thinker", messages=msgs, tools=CHAT_TOOLS, max_tokens=4096,
                                           extra_body=extra)
        got = last_request(claude)
        assert got["thinking"] == {"type": "enabled", "budget_tokens": 1024}
        assert sent_back_thinking(got) == thinking
        assert r.choices[0].message.content == "It is 18C and sunny in Paris."


def test_claudes_reasoning_items_are_not_sent_to_openai(client: openai.OpenAI, claude):
    first = client.responses.create(model="thinker", input="Weather in Paris?", tools=TOOLS,
                                    reasoning={"effort": "low"})
    assert first.output[0].type == "reasoning"
    call = first.output[1]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}
    # Continued on OpenAI by id: the gateway sends the conversation it kept,
    # without the items OpenAI cannot open.
    r = client.responses.create(model="gpt", tools=TOOLS, previous_response_id=first.id, input=[output])
    assert r.output_text == "From OpenAI."
    sent = claude.openai[-1]
    assert "previous_response_id" not in sent
    assert [i.get("type", "message") for i in sent["input"]] == ["message", "function_call", "function_call_output"]
    # The client's own copy of the conversation, passed through: the same.
    items = [{"role": "user", "content": "Weather in Paris?"}, *[i.model_dump(exclude_none=True) for i in first.output],
             output]
    client.responses.create(model="gpt", tools=TOOLS, store=False, input=items)
    sent = claude.openai[-1]
    assert [i.get("type", "message") for i in sent["input"]] == ["message", "function_call", "function_call_output"]
    assert sent["model"] == "gpt-5"
