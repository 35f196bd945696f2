use serde_json::{json, Value};
use shardgate_proto::testing::for_each_split;

use super::*;

fn ctx(include_usage: bool) -> ReplyCtx {
    ReplyCtx {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        created: 1,
        include_usage,
    }
}

fn request(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

/// The JSON payloads of an OpenAI SSE stream (without `[DONE]`).
fn chunks(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn consecutive_roles_merge_and_tool_results_join_the_user_turn() {
    let req = request(json!({
        "model": "x",
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                {"id": "t2", "type": "function", "function": {"name": "g", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "t1", "content": "one"},
            {"role": "tool", "tool_call_id": "t2", "content": "two"},
            {"role": "system", "content": "late system"},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": "d"}
        ]
    }));
    let out = from_openai(&req, "claude", 10).unwrap();
    let v = serde_json::to_value(&out).unwrap();
    assert_eq!(v["system"], "late system");
    let roles: Vec<_> = out.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            a::Role::User,
            a::Role::Assistant,
            a::Role::User,
            a::Role::Assistant
        ]
    );
    assert_eq!(
        v["messages"][0]["content"],
        json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    );
    assert_eq!(v["messages"][1]["content"][1]["input"], json!({}));
    assert_eq!(v["messages"][2]["content"][0]["tool_use_id"], "t1");
    assert_eq!(v["messages"][2]["content"][1]["tool_use_id"], "t2");
    assert_eq!(v["messages"][3]["content"].as_array().unwrap().len(), 2);
    assert_eq!(out.max_tokens, 10);
}

#[test]
fn tool_choice_modes() {
    for (choice, expected) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (json!("required"), json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let req = request(json!({"model": "x", "messages": [], "tool_choice": choice}));
        let out = serde_json::to_value(from_openai(&req, "c", 1).unwrap()).unwrap();
        assert_eq!(out["tool_choice"], expected);
    }
    let bad = request(json!({"model": "x", "messages": [], "tool_choice": "sometimes"}));
    assert!(matches!(
        from_openai(&bad, "c", 1),
        Err(TranslateError::Invalid(_))
    ));
}

#[test]
fn invalid_tool_arguments_are_rejected() {
    let req = request(json!({"model": "x", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
    ]}));
    assert!(matches!(
        from_openai(&req, "c", 1),
        Err(TranslateError::Invalid(_))
    ));
}

fn anthropic_sse(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let name = e["type"].as_str().unwrap();
        write_event(&mut out, Some(name), e.to_string().as_bytes());
    }
    out
}

#[test]
fn tool_call_argument_fragments_reassemble_over_every_split() {
    let fragments = ["", "{\"loc", "ation\": \"Par", "is, \\\"FR\\\"\"", "}"];
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "c", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t0", "name": "first", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "weather", "input": {}}}),
    ];
    for f in fragments {
        events.push(json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": f}}));
    }
    events.push(json!({"type": "content_block_stop", "index": 1}));
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}));
    events.push(json!({"type": "message_stop"}));
    let input = anthropic_sse(&events);

    for_each_split(&input, |pieces| {
        let mut t = AnthropicToOpenAi::new(ctx(true));
        let mut out = Vec::new();
        for p in pieces {
            t.on_bytes(p, &mut out).unwrap();
        }
        let summary = t.finish(&mut out);
        let mut args: Vec<String> = vec![String::new(); 2];
        let mut ids = Vec::new();
        for c in chunks(&out) {
            for call in c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = call["index"].as_u64().unwrap() as usize;
                if let Some(id) = call["id"].as_str() {
                    ids.push((i, id.to_owned()));
                }
                args[i].push_str(call["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(ids, [(0, "t0".to_owned()), (1, "t1".to_owned())]);
        assert_eq!(args[0], "{}");
        let parsed: Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(parsed, json!({"location": "Paris, \"FR\""}));
        assert_eq!(summary.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(summary.usage.output_tokens, Some(7));
        assert!(out.ends_with(b"data: [DONE]\n\n"));
    });
}

#[test]
fn usage_chunk_only_when_asked() {
    let input = anthropic_sse(&[
        json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "c", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "message_stop"}),
    ]);
    for include in [false, true] {
        let mut t = AnthropicToOpenAi::new(ctx(include));
        let mut out = Vec::new();
        t.on_bytes(&input, &mut out).unwrap();
        let _ = t.finish(&mut out);
        let has_usage = chunks(&out).iter().any(|c| c.get("usage").is_some());
        assert_eq!(has_usage, include);
    }
}

#[test]
fn malformed_known_event_is_an_error_unknown_is_counted() {
    let mut t = AnthropicToOpenAi::new(ctx(false));
    let mut out = Vec::new();
    t.on_bytes(b"event: x\ndata: {\"type\":\"brand_new\"}\n\n", &mut out)
        .unwrap();
    assert_eq!(t.unknown_events(), 1);
    let r = t.on_bytes(b"data: {\"type\":\"content_block_delta\"}\n\n", &mut out);
    assert!(matches!(r, Err(TranslateError::UpstreamJson(_))));
}

#[test]
fn errors_never_leak_keys() {
    let p = AnthropicProvider::default();
    let key = "sk-ant-api03-AAAABBBBCCCCDDDD";
    let bodies = [
        format!(
            r#"{{"type":"error","error":{{"type":"authentication_error","message":"invalid x-api-key {key}"}}}}"#
        ),
        format!(
            r#"{{"type":"error","error":{{"type":"invalid_request_error","message":"bad"}},"request":{{"headers":{{"x-api-key":"{key}","Authorization":"Bearer {key}"}}}}}}"#
        ),
        format!("<html>x-api-key: {key}</html>"),
    ];
    for body in bodies {
        let out = p.error_to_openai(401, body.as_bytes(), &Default::default());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains(key), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    let out = error_from_openai(
        401,
        format!(r#"{{"error":{{"message":"Incorrect API key provided: {key}"}}}}"#).as_bytes(),
    );
    assert!(!String::from_utf8_lossy(&out).contains(key));
}

#[test]
fn inbound_stream_closes_without_done_and_reports_cut() {
    let body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
    let mut t = OpenAiToAnthropic::new(ctx(false));
    let mut out = Vec::new();
    t.on_bytes(body, &mut out).unwrap();
    let s = t.finish(&mut out);
    assert!(!s.cut);
    assert!(String::from_utf8_lossy(&out)
        .ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    let body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello there\"}}]}\n\n";
    let mut t = OpenAiToAnthropic::new(ctx(false));
    let mut out = Vec::new();
    t.on_bytes(body, &mut out).unwrap();
    let s = t.finish(&mut out);
    assert!(s.cut && s.usage.estimated);
    assert_eq!(s.usage.output_tokens, Some(3));
    assert!(String::from_utf8_lossy(&out).contains("event: error\n"));
}

#[test]
fn inbound_request_round_trips_through_openai_and_back() {
    let anth: a::MessagesRequest = serde_json::from_value(json!({
        "model": "c", "max_tokens": 100,
        "system": "sys",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"}]}
        ]
    }))
    .unwrap();
    let chat = ChatRequest::from_anthropic(&anth).unwrap();
    let back = from_openai(&chat, "c", 1).unwrap();
    assert_eq!(back.system, Some(a::System::Text("sys".into())));
    assert_eq!(back.messages, anth.messages);
    assert_eq!(back.max_tokens, 100);
}

#[test]
fn usage_sums_saturate() {
    let u = usage(&a::Usage {
        input_tokens: Some(u64::MAX),
        cache_read_input_tokens: Some(1),
        ..a::Usage::default()
    });
    assert_eq!(u.input_tokens, Some(u64::MAX));
}
