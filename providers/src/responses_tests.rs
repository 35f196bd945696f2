use serde_json::{json, Value};
use shardgate_proto::testing::for_each_split;

use super::*;

fn ctx() -> ResponseCtx {
    ResponseCtx {
        id: "resp_1".into(),
        model: "demo".into(),
        created_at: 7,
        echo: echo_fields(&json!({"instructions": "be brief"})),
    }
}

/// `(event name, payload)` of each Responses SSE event.
fn events(out: &[u8]) -> Vec<(String, Value)> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, serde_json::from_str(&data).unwrap())
        })
        .collect()
}

fn chat_sse(chunks: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

#[test]
fn request_items_become_chat_messages() {
    let req = json!({
        "model": "demo",
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}, {"type": "input_image", "image_url": "https://x/y.png"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        "max_output_tokens": 50,
        "stream": true,
    });
    let prior =
        [json!({"role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]})];
    let chat = to_chat(&req, &prior).unwrap();
    let v = serde_json::to_value(&chat).unwrap();
    assert_eq!(
        v["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        v["messages"][1],
        json!({"role": "assistant", "content": "earlier"})
    );
    assert_eq!(
        v["messages"][2]["content"][1]["image_url"]["url"],
        "https://x/y.png"
    );
    // Both calls on one assistant message, then the tool's answer.
    assert_eq!(v["messages"][3]["tool_calls"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["messages"][4],
        json!({"role": "tool", "content": "sunny", "tool_call_id": "c1"})
    );
    assert_eq!(v["messages"].as_array().unwrap().len(), 5);
    assert_eq!(v["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(v["tool_choice"]["function"]["name"], "get_weather");
    assert_eq!(v["response_format"]["json_schema"]["name"], "w");
    assert_eq!(v["max_completion_tokens"], 50);
    assert_eq!(v["stream_options"]["include_usage"], true);
}

#[test]
fn refusals_name_what_cannot_be_carried() {
    let bad = [
        (json!({"model": "m", "input": 5}), "`input`"),
        (
            json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
            "`web_search` tool",
        ),
        (
            json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
            "input[0]: items of type `item_reference`",
        ),
        (
            json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]}),
            "input[0]: a message needs a role",
        ),
        (json!({"model": "m", "input": []}), "`input` is empty"),
        (json!({"input": "x"}), "`model`"),
    ];
    for (req, want) in bad {
        let e = to_chat(&req, &[]).unwrap_err().to_string();
        assert!(e.contains(want), "{req}: {e}");
    }
}

#[test]
fn a_whole_answer_becomes_a_response() {
    let chat: ChatResponse = serde_json::from_value(json!({
        "id": "x", "model": "m", "created": 1,
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "checking",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": 6}, "completion_tokens_details": {"reasoning_tokens": 2}}
    }))
    .unwrap();
    let r = from_chat(&chat, &ctx());
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["instructions"], "be brief");
    assert_eq!(r["output"][0]["content"][0]["text"], "checking");
    assert_eq!(r["output"][1]["type"], "function_call");
    assert_eq!(r["output"][1]["call_id"], "c1");
    assert_eq!(r["usage"]["input_tokens"], 10);
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 6);
    assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 2);
    assert_eq!(r["usage"]["total_tokens"], 14);
}

#[test]
fn a_cut_off_answer_is_incomplete() {
    let chat: ChatResponse = serde_json::from_value(json!({
        "id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "length",
        "message": {"role": "assistant", "content": "abc"}}]
    }))
    .unwrap();
    let r = from_chat(&chat, &ctx());
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
}

/// Text, then two tool calls, then usage: the full event sequence, the
/// same for every split of the input.
#[test]
fn a_stream_becomes_the_event_sequence_at_every_split() {
    let input = chat_sse(&[
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}}),
    ]);
    let mut first: Option<Vec<u8>> = None;
    for_each_split(&input, |pieces| {
        let mut t = ChatToResponses::new(ctx());
        let mut out = Vec::new();
        for p in pieces {
            t.on_bytes(p, &mut out).unwrap();
        }
        let summary = t.finish(&mut out);
        assert!(!summary.cut);
        assert_eq!(summary.usage.output_tokens, Some(9));
        match &first {
            None => first = Some(out),
            Some(f) => assert_eq!(f, &out),
        }
    });
    let ev = events(first.as_ref().unwrap());
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in ev.iter().enumerate() {
        assert_eq!(data["type"], *name);
        assert_eq!(data["sequence_number"], i);
    }
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(done["output"][2]["call_id"], "c2");
    assert_eq!(done["usage"]["output_tokens"], 9);
    // Item ids are the same from `added` to `done`.
    assert_eq!(ev[2].1["item"]["id"], ev[8].1["item"]["id"]);
    assert_eq!(ev[4].1["item_id"], ev[2].1["item"]["id"]);
}

#[test]
fn a_stream_cut_before_its_end_fails_with_an_estimate() {
    let mut t = ChatToResponses::new(ctx());
    let mut out = Vec::new();
    t.on_bytes(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n",
        &mut out,
    )
    .unwrap();
    let summary = t.finish(&mut out);
    assert!(summary.cut && summary.usage.estimated);
    let ev = events(&out);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[names.len() - 2..], ["error", "response.failed"]);
    assert_eq!(ev.last().unwrap().1["response"]["status"], "failed");
}

#[test]
fn an_upstream_error_event_fails_the_response() {
    let mut t = ChatToResponses::new(ctx());
    let mut out = Vec::new();
    t.on_bytes(
        b"data: {\"error\":{\"message\":\"overloaded\",\"code\":\"server_error\"}}\n\n",
        &mut out,
    )
    .unwrap();
    let summary = t.finish(&mut out);
    assert!(!summary.cut);
    let ev = events(&out);
    assert_eq!(ev[2].0, "error");
    assert_eq!(ev[2].1["message"], "overloaded");
    assert_eq!(ev[3].1["response"]["error"]["code"], "server_error");
}

#[test]
fn reasoning_effort_becomes_a_thinking_budget_that_leaves_room_for_the_answer() {
    let budget = |reasoning: Value, max: Option<u64>| {
        thinking_for(Some(&reasoning), max).map(|t| t.map(|t| t["budget_tokens"].as_u64().unwrap()))
    };
    assert_eq!(budget(json!({"effort": "low"}), None).unwrap(), Some(1024));
    assert_eq!(
        budget(json!({"summary": "auto"}), None).unwrap(),
        Some(2048)
    );
    assert_eq!(budget(json!({"effort": "high"}), None).unwrap(), Some(4096));
    assert_eq!(
        budget(json!({"effort": "high"}), Some(5000)).unwrap(),
        Some(2500)
    );
    assert_eq!(budget(json!({"effort": "low"}), Some(2047)).unwrap(), None);
    assert_eq!(budget(json!({"effort": "minimal"}), None).unwrap(), None);
    assert_eq!(thinking_for(Some(&Value::Null), None).unwrap(), None);
    assert!(budget(json!({"effort": "huge"}), None).is_err());
    assert!(budget(json!("high"), None).is_err());
}

#[test]
fn only_claudes_reasoning_items_become_thinking_blocks() {
    let ours = json!({"type": "reasoning", "summary": [{"type": "summary_text", "text": "a"}, {"type": "summary_text", "text": "b"}],
        "encrypted_content": format!("{THINKING}sig")});
    assert_eq!(
        thinking_of_item(&ours),
        Some(ThinkingBlock::Thinking {
            thinking: "ab".into(),
            signature: Some("sig".into())
        })
    );
    let redacted = json!({"type": "reasoning", "summary": [], "encrypted_content": format!("{REDACTED_THINKING}data")});
    assert_eq!(
        thinking_of_item(&redacted),
        Some(ThinkingBlock::RedactedThinking {
            data: "data".into()
        })
    );
    for other in [
        json!({"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"}),
        json!({"type": "reasoning", "summary": []}),
    ] {
        assert_eq!(thinking_of_item(&other), None);
    }
    // Each block goes out as one item and comes back as the same block.
    for block in [
        thinking_of_item(&ours).unwrap(),
        thinking_of_item(&redacted).unwrap(),
    ] {
        assert_eq!(
            thinking_of_item(&reasoning_item("rs_1", &block)),
            Some(block)
        );
    }
}

/// Reasoning from chat servers: LiteLLM's chunks repeat the text in the
/// block that carries the signature; DeepSeek's and vLLM's have text only.
/// Each becomes one reasoning item with the text once, whole or streamed.
#[test]
fn reasoning_from_chat_servers_is_one_item_with_its_text_once() {
    let run = |chunks: &[Value]| {
        let mut t = ChatToResponses::new(ctx());
        let mut out = Vec::new();
        t.on_bytes(&chat_sse(chunks), &mut out).unwrap();
        t.finish(&mut out);
        let done = events(&out)
            .into_iter()
            .rev()
            .find(|(n, _)| n == "response.completed")
            .unwrap();
        done.1["response"]["output"].clone()
    };
    let litellm = run(&[
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": "hmm", "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "s1"}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}),
    ]);
    assert_eq!(litellm[0]["summary"][0]["text"], "hmm");
    assert_eq!(litellm[0]["encrypted_content"], format!("{THINKING}s1"));
    assert_eq!(litellm[1]["type"], "message");
    let deepseek = run(&[
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}),
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": "m"}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}),
    ]);
    assert_eq!(deepseek[0]["summary"][0]["text"], "hmm");
    assert!(deepseek[0].get("encrypted_content").is_none());
    let whole: ChatResponse = serde_json::from_value(json!({
        "id": "x", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": "hi", "reasoning_content": "hmm"}}]
    }))
    .unwrap();
    let r = from_chat(&whole, &ctx());
    assert_eq!(r["output"][0], deepseek[0]);
    assert_eq!(r["output"][1]["id"], deepseek[1]["id"]);
}
