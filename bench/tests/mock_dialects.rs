//! The mock's Anthropic, Gemini and Bedrock dialects and its tool calls over
//! real TCP: exact texts, usage, event order, error bodies. Streams are also
//! fed through the gateway's own translators (`shardgate_providers`), so a
//! mismatch between what the mock sends and what the gateway expects fails
//! here first. Counts and contents only: no timing assertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{named_events, post, post_with, request, sse_events, text, Mock};
use serde_json::{json, Value};
use shardgate_providers::eventstream::Decoder;
use shardgate_providers::{anthropic, bedrock, gemini, ReplyCtx, StreamTranslator, Summary};

const ANTHROPIC: [(&str, &str); 1] = [("anthropic-version", "2023-06-01")];
const TOOL_ARGS: &str = r#"{"query":" lorem ipsum dolor"}"#;

fn ctx() -> ReplyCtx {
    ReplyCtx {
        id: "chatcmpl-gw".into(),
        model: "client-model".into(),
        created: 1,
        include_usage: true,
    }
}

/// Runs a provider stream through the gateway's translator; returns the
/// OpenAI text, the tool-call arguments, and the summary.
fn translate(mut t: StreamTranslator, body: &[u8]) -> (String, String, Summary) {
    let mut out = Vec::new();
    // Byte by byte: the translators must not care how the body is split.
    for b in body {
        t.on_bytes(std::slice::from_ref(b), &mut out).unwrap();
    }
    let summary = t.finish(&mut out);
    let (mut content, mut args) = (String::new(), String::new());
    for e in sse_events(&out) {
        if e == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&e).unwrap();
        let delta = &v["choices"][0]["delta"];
        if let Some(c) = delta["content"].as_str() {
            content.push_str(c);
        }
        if let Some(a) = delta["tool_calls"][0]["function"]["arguments"].as_str() {
            args.push_str(a);
        }
    }
    (content, args, summary)
}

#[test]
fn anthropic_messages() {
    let mock = Mock::start(&["--require-key", "ak"]);
    let auth = [ANTHROPIC[0], ("x-api-key", "ak")];
    let body =
        r#"{"model":"mock-tokens-5","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = request(&mock, &post_with("/v1/messages", body, &auth));
    assert_eq!(r.status, 200);
    let v = r.json();
    let input = v["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(input, (body.len() as u64).div_ceil(4));
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(
        v,
        json!({"id":id,"type":"message","role":"assistant","model":"mock-tokens-5",
            "content":[{"type":"text","text":text(5)}],"stop_reason":"end_turn","stop_sequence":null,
            "usage":{"input_tokens":input,"output_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}})
    );
    // max_tokens below the model's length.
    let r = request(
        &mock,
        &post_with(
            "/v1/messages",
            r#"{"model":"mock-tokens-5","max_tokens":2,"messages":[]}"#,
            &auth,
        ),
    );
    assert_eq!(r.json()["stop_reason"], "max_tokens");
    assert_eq!(r.json()["content"][0]["text"], text(2).as_str());

    // Stream.
    let body = r#"{"model":"mock-tokens-3","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = request(&mock, &post_with("/v1/messages", body, &auth));
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = named_events(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    assert_eq!(events[0].1["message"]["model"], "mock-tokens-3");
    assert_eq!(
        events[1].1["content_block"],
        json!({"type":"text","text":""})
    );
    for i in 0..3 {
        assert_eq!(
            events[3 + i].1["delta"],
            json!({"type":"text_delta","text":shardgate_proto::mock::token(i)})
        );
    }
    assert_eq!(
        events[7].1,
        json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}})
    );
    let t = StreamTranslator::Anthropic(anthropic::AnthropicToOpenAi::new(ctx()));
    let (content, args, summary) = translate(t, &r.body);
    assert_eq!(content, text(3));
    assert!(args.is_empty());
    assert_eq!(summary.finish_reason.as_deref(), Some("stop"));
    assert_eq!(summary.usage.output_tokens, Some(3));
    assert_eq!(
        summary.usage.input_tokens,
        Some((body.len() as u64).div_ceil(4))
    );
    assert!(!summary.cut && summary.unknown_events == 0);

    // Errors in Anthropic's shape.
    let r = request(
        &mock,
        &post_with("/v1/messages", r#"{"model":"mock-429"}"#, &auth),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let r = request(
        &mock,
        &post_with("/v1/messages", r#"{"model":"mock-529"}"#, &auth),
    );
    assert_eq!(
        (r.status, r.json()["error"]["type"].clone()),
        (529, json!("overloaded_error"))
    );
    let r = request(
        &mock,
        &post_with("/v1/messages", body, &[ANTHROPIC[0], ("x-api-key", "no")]),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = request(
        &mock,
        &post_with("/v1/messages", body, &[("x-api-key", "ak")]),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn anthropic_tool_calls() {
    let mock = Mock::start(&[]);
    let tools = r#""tools":[{"name":"search","description":"d","input_schema":{"type":"object"}},{"name":"other","input_schema":{}}]"#;
    let body = format!(
        r#"{{"model":"mock-1","max_tokens":50,{tools},"messages":[{{"role":"user","content":"q"}}]}}"#
    );
    let r = request(&mock, &post_with("/v1/messages", &body, &ANTHROPIC));
    let v = r.json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([{"type":"tool_use","id":"toolu_mock_0","name":"search","input":{"query":text(3)}}])
    );
    assert_eq!(v["usage"]["output_tokens"], 5);

    let body = body.replacen("\"max_tokens\"", "\"stream\":true,\"max_tokens\"", 1);
    let r = request(&mock, &post_with("/v1/messages", &body, &ANTHROPIC));
    let events = named_events(&r.body);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type":"tool_use","id":"toolu_mock_0","name":"search","input":{}})
    );
    let partial: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(partial, TOOL_ARGS);
    let t = StreamTranslator::Anthropic(anthropic::AnthropicToOpenAi::new(ctx()));
    let (content, args, summary) = translate(t, &r.body);
    assert_eq!((content.as_str(), args.as_str()), ("", TOOL_ARGS));
    assert_eq!(summary.finish_reason.as_deref(), Some("tool_calls"));

    // After a tool result: text.
    let body = format!(
        r#"{{"model":"mock-tokens-2","max_tokens":50,{tools},"messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_mock_0","content":"r"}}]}}]}}"#
    );
    let r = request(&mock, &post_with("/v1/messages", &body, &ANTHROPIC));
    assert_eq!(r.json()["content"][0]["text"], text(2).as_str());
}

#[test]
fn gemini_generate_content() {
    let mock = Mock::start(&["--require-key", "gk"]);
    let key = [("x-goog-api-key", "gk")];
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":100}}"#;
    let prompt = (body.len() as u64).div_ceil(4);
    let r = request(
        &mock,
        &post_with("/v1beta/models/mock-tokens-4:generateContent", body, &key),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        v["candidates"][0]["content"],
        json!({"parts":[{"text":text(4)}],"role":"model"})
    );
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(
        v["usageMetadata"],
        json!({"promptTokenCount":prompt,"candidatesTokenCount":4,"totalTokenCount":prompt + 4})
    );
    assert_eq!(v["modelVersion"], "mock-tokens-4");
    let body2 = r#"{"contents":[],"generationConfig":{"maxOutputTokens":1}}"#;
    let r = request(
        &mock,
        &post_with("/v1beta/models/mock-tokens-4:generateContent", body2, &key),
    );
    assert_eq!(r.json()["candidates"][0]["finishReason"], "MAX_TOKENS");

    let path = "/v1beta/models/mock-tokens-3:streamGenerateContent?alt=sse";
    let r = request(&mock, &post_with(path, body, &key));
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events: Vec<Value> = sse_events(&r.body)
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events.len(), 3);
    for (i, e) in events.iter().enumerate() {
        let c = &e["candidates"][0];
        assert_eq!(
            c["content"]["parts"][0]["text"],
            shardgate_proto::mock::token(i)
        );
        assert_eq!(c["finishReason"].as_str(), (i == 2).then_some("STOP"));
        assert_eq!(e["usageMetadata"]["candidatesTokenCount"], i + 1);
    }
    let t = StreamTranslator::Gemini(gemini::GeminiToOpenAi::new(ctx()));
    let (content, _, summary) = translate(t, &r.body);
    assert_eq!(content, text(3));
    assert_eq!(summary.finish_reason.as_deref(), Some("stop"));
    assert_eq!(summary.usage.output_tokens, Some(3));
    assert_eq!(summary.usage.input_tokens, Some(prompt));
    assert!(!summary.cut && summary.unknown_events == 0);

    // Key in the query; errors in Google's shape.
    let r = request(
        &mock,
        &post("/v1beta/models/mock-1:generateContent?key=gk", body, None),
    );
    assert_eq!(r.status, 200);
    let r = request(
        &mock,
        &post_with("/v1beta/models/mock-429:generateContent", body, &key),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], 429);
    assert_eq!(r.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    let r = request(
        &mock,
        &post("/v1beta/models/mock-1:generateContent", body, None),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");

    // Embeddings.
    let r = request(
        &mock,
        &post_with(
            "/v1beta/models/e:embedContent",
            r#"{"content":{"parts":[{"text":"x"}]},"outputDimensionality":8}"#,
            &key,
        ),
    );
    assert_eq!(r.json()["embedding"]["values"].as_array().unwrap().len(), 8);
}

#[test]
fn gemini_tool_calls() {
    let mock = Mock::start(&[]);
    let body = r#"{"contents":[{"role":"user","parts":[{"text":"q"}]}],"tools":[{"functionDeclarations":[{"name":"lookup","parameters":{"type":"object"}}]}]}"#;
    let r = request(
        &mock,
        &post("/v1beta/models/mock-1:generateContent", body, None),
    );
    let v = r.json();
    assert_eq!(
        v["candidates"][0]["content"]["parts"],
        json!([{"functionCall":{"name":"lookup","args":{"query":text(3)}}}])
    );
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 5);

    let r = request(
        &mock,
        &post(
            "/v1beta/models/mock-1:streamGenerateContent?alt=sse",
            body,
            None,
        ),
    );
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 1);
    let t = StreamTranslator::Gemini(gemini::GeminiToOpenAi::new(ctx()));
    let (content, args, summary) = translate(t, &r.body);
    assert_eq!(content, "");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"query":text(3)})
    );
    assert_eq!(summary.finish_reason.as_deref(), Some("tool_calls"));
}

/// Decodes an event-stream body, checking both CRCs of every frame.
fn bedrock_events(body: &[u8]) -> Vec<(String, Value)> {
    let mut d = Decoder::new(1 << 20);
    let mut events = Vec::new();
    d.feed(body, |m| {
        assert_eq!(m.header(":message-type"), Some("event"));
        assert_eq!(m.header(":content-type"), Some("application/json"));
        let name = m.header(":event-type").unwrap().to_owned();
        events.push((name, serde_json::from_slice(m.payload).unwrap()));
    })
    .unwrap();
    assert_eq!(d.pending(), 0);
    events
}

#[test]
fn bedrock_converse() {
    let mock = Mock::start(&["--require-key", "bk"]);
    let sig = [("authorization", "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00")];
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":100}}"#;
    let prompt = (body.len() as u64).div_ceil(4);
    let path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0-tokens-4/converse";
    let r = request(&mock, &post_with(path, body, &sig));
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        v["output"],
        json!({"message":{"role":"assistant","content":[{"text":text(4)}]}})
    );
    assert_eq!(v["stopReason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"inputTokens":prompt,"outputTokens":4,"totalTokens":prompt + 4})
    );
    assert!(v["metrics"]["latencyMs"].is_u64());
    let bearer = [("authorization", "Bearer bk")];
    let r = request(
        &mock,
        &post_with(&path.replace("-tokens-4", "-tokens-9"), body, &bearer),
    );
    assert_eq!(r.json()["usage"]["outputTokens"], 9);

    let r = request(
        &mock,
        &post_with("/model/mock-tokens-3/converse-stream", body, &sig),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let events = bedrock_events(&r.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "messageStart",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockDelta",
            "contentBlockStop",
            "messageStop",
            "metadata"
        ]
    );
    assert_eq!(events[0].1, json!({"role":"assistant"}));
    for i in 0..3 {
        assert_eq!(
            events[1 + i].1,
            json!({"contentBlockIndex":0,"delta":{"text":shardgate_proto::mock::token(i)}})
        );
    }
    assert_eq!(events[5].1, json!({"stopReason":"end_turn"}));
    assert_eq!(
        events[6].1["usage"],
        json!({"inputTokens":prompt,"outputTokens":3,"totalTokens":prompt + 3})
    );
    let t = StreamTranslator::Bedrock(bedrock::BedrockToOpenAi::new(ctx()));
    let (content, _, summary) = translate(t, &r.body);
    assert_eq!(content, text(3));
    assert_eq!(summary.finish_reason.as_deref(), Some("stop"));
    assert_eq!(summary.usage.output_tokens, Some(3));
    assert_eq!(summary.usage.input_tokens, Some(prompt));
    assert!(!summary.cut && summary.unknown_events == 0);

    // Errors: Bedrock's JSON and header; auth required.
    let r = request(&mock, &post_with("/model/mock-429/converse", body, &sig));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-amzn-errortype"), Some("ThrottlingException"));
    assert!(r.json()["message"].is_string());
    let r = request(&mock, &post("/model/mock-1/converse", body, None));
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-amzn-errortype"), Some("AccessDeniedException"));
}

#[test]
fn bedrock_tool_calls() {
    let mock = Mock::start(&[]);
    let body = r#"{"messages":[{"role":"user","content":[{"text":"q"}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"weather","inputSchema":{"json":{"type":"object"}}}}]}}"#;
    let r = request(&mock, &post("/model/mock-1/converse", body, None));
    let v = r.json();
    assert_eq!(v["stopReason"], "tool_use");
    assert_eq!(
        v["output"]["message"]["content"],
        json!([{"toolUse":{"toolUseId":"tooluse_mock_0","name":"weather","input":{"query":text(3)}}}])
    );
    let r = request(&mock, &post("/model/mock-1/converse-stream", body, None));
    let events = bedrock_events(&r.body);
    assert_eq!(
        events[1],
        (
            "contentBlockStart".to_owned(),
            json!({"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"tooluse_mock_0","name":"weather"}}})
        )
    );
    let input: String = events
        .iter()
        .filter(|(n, _)| n == "contentBlockDelta")
        .map(|(_, d)| d["delta"]["toolUse"]["input"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(input, TOOL_ARGS);
    let t = StreamTranslator::Bedrock(bedrock::BedrockToOpenAi::new(ctx()));
    let (_, args, summary) = translate(t, &r.body);
    assert_eq!(args, TOOL_ARGS);
    assert_eq!(summary.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(summary.usage.output_tokens, Some(5));
}

#[test]
fn openai_tool_calls() {
    let mock = Mock::start(&[]);
    let body = r#"{"model":"mock-1","tools":[{"type":"function","function":{"name":"calc","parameters":{}}}],"messages":[{"role":"user","content":"q"}]}"#;
    let r = request(&mock, &post("/v1/chat/completions", body, None));
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role":"assistant","content":null,"tool_calls":[{"id":"call_mock_0","type":"function","function":{"name":"calc","arguments":TOOL_ARGS}}]})
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let body = body.replacen(
        "{\"model\":\"mock-1\",",
        r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"#,
        1,
    );
    let r = request(&mock, &post("/v1/chat/completions", &body, None));
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let start = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(start["id"], "call_mock_0");
    assert_eq!(start["function"]["name"], "calc");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, TOOL_ARGS);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 5);

    // After a tool result: text again.
    let body = r#"{"model":"mock-tokens-2","tools":[{"type":"function","function":{"name":"calc"}}],"messages":[{"role":"tool","tool_call_id":"call_mock_0","content":"4"}]}"#;
    let r = request(&mock, &post("/v1/chat/completions", body, None));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        text(2).as_str()
    );
}

#[test]
fn cut_after_in_other_dialects() {
    use std::io::{Read, Write};
    let mock = Mock::start(&[]);
    let mut s = mock.connect();
    s.write_all(&post(
        "/model/mock-cut-after-2/converse-stream",
        r#"{"messages":[]}"#,
        None,
    ))
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    // Head, then the chunked frames of messageStart and two deltas only.
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut body = Vec::new();
    let mut rest = &all[at..];
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..i]).unwrap(), 16).unwrap();
        body.extend_from_slice(&rest[i + 2..i + 2 + size]);
        rest = &rest[i + 2 + size + 2..];
    }
    let names: Vec<String> = bedrock_events(&body).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["messageStart", "contentBlockDelta", "contentBlockDelta"]
    );
    let t = StreamTranslator::Bedrock(bedrock::BedrockToOpenAi::new(ctx()));
    let (content, _, summary) = translate(t, &body);
    assert_eq!(content, text(2));
    assert!(summary.cut);
}

/// Provider, path, body template (`TOOLS` marks where tools go), headers.
type Case<'a> = (
    &'a dyn shardgate_providers::Provider,
    String,
    String,
    &'a [(&'a str, &'a str)],
);

/// Non-streaming bodies and error bodies of every dialect through the
/// gateway's own converters.
#[test]
fn non_stream_bodies_translate_with_the_gateway_providers() {
    use shardgate_providers::anthropic::AnthropicProvider;
    use shardgate_providers::bedrock::BedrockProvider;
    use shardgate_providers::gemini::GeminiProvider;

    let mock = Mock::start(&[]);
    let anthropic = AnthropicProvider::default();
    let gemini = GeminiProvider::default();
    let bedrock = BedrockProvider {
        region: "us-east-1".into(),
        credentials: None,
        endpoint_host: None,
    };
    let tools_a = r#""tools":[{"name":"f","input_schema":{}}],"#;
    let tools_g = r#""tools":[{"functionDeclarations":[{"name":"f"}]}],"#;
    let tools_b =
        r#""toolConfig":{"tools":[{"toolSpec":{"name":"f","inputSchema":{"json":{}}}}]},"#;
    let cases: [Case<'_>; 3] = [
        (
            &anthropic,
            "/v1/messages".to_owned(),
            r#"{"model":"mock-tokens-4","max_tokens":9,TOOLS"messages":[{"role":"user","content":"x"}]}"#.to_owned(),
            &ANTHROPIC,
        ),
        (
            &gemini,
            "/v1beta/models/mock-tokens-4:generateContent".to_owned(),
            r#"{TOOLS"contents":[{"role":"user","parts":[{"text":"x"}]}]}"#.to_owned(),
            &[],
        ),
        (
            &bedrock,
            "/model/mock-tokens-4/converse".to_owned(),
            r#"{TOOLS"messages":[{"role":"user","content":[{"text":"x"}]}]}"#.to_owned(),
            &[],
        ),
    ];
    for ((provider, path, template, headers), tools) in
        cases.into_iter().zip([tools_a, tools_g, tools_b])
    {
        for with_tools in [false, true] {
            let body = template.replace("TOOLS", if with_tools { tools } else { "" });
            let r = request(&mock, &post_with(&path, &body, headers));
            assert_eq!(r.status, 200, "{path}");
            let (chat, usage) = provider.response_to_openai(&r.body, &ctx()).unwrap();
            let v: Value = serde_json::from_slice(&chat).unwrap();
            let choice = &v["choices"][0];
            if with_tools {
                assert_eq!(choice["finish_reason"], "tool_calls", "{path} {v}");
                let call = &choice["message"]["tool_calls"][0]["function"];
                assert_eq!(call["name"], "f");
                let args: Value =
                    serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
                assert_eq!(args, json!({"query":text(3)}));
                assert_eq!(usage.output_tokens, Some(5));
            } else {
                assert_eq!(choice["finish_reason"], "stop", "{path} {v}");
                assert_eq!(choice["message"]["content"], text(4).as_str());
                assert_eq!(usage.output_tokens, Some(4));
            }
            assert_eq!(
                usage.input_tokens,
                Some((body.len() as u64).div_ceil(4)),
                "{path}"
            );
        }
        // An injected 429 keeps its message through the error converter.
        let failing = path.replace("mock-tokens-4", "mock-429");
        let body = template
            .replace("TOOLS", "")
            .replace("mock-tokens-4", "mock-429");
        let r = request(&mock, &post_with(&failing, &body, headers));
        assert_eq!(r.status, 429);
        let e: Value =
            serde_json::from_slice(&provider.error_to_openai(429, &r.body, &Default::default()))
                .unwrap();
        assert_eq!(
            e["error"]["message"], "Rate limit reached (mock)",
            "{path} {e}"
        );
    }
}
