//! The dialects' usage taps and readers, on answers as providers write them.

use super::anthropic::stream_usage as anthropic_stream_usage;
use super::openai::has_no_choices;
use super::*;

fn usage_of_body(d: ClientDialect, body: &[u8]) -> Option<Usage> {
    d.rules().usage_of_body(body)
}

/// A stream as a Python server writes it: `json.dumps` spacing.
const PRETTY_USAGE: &[u8] = b"data: {\"id\": \"c1\", \"choices\": [ ], \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 5, \"total_tokens\": 8}}";

#[test]
fn a_spaced_usage_only_chunk_is_withheld_from_clients_that_did_not_ask() {
    let mut tap = Tap::new(ClientDialect::OpenAi, false, false);
    let content =
        b"data: {\"id\": \"c1\", \"choices\": [{\"index\": 0, \"delta\": {\"content\": \"Hi\"}}]}";
    assert!(tap.relay(content));
    assert!(!tap.relay(PRETTY_USAGE));
    assert_eq!(tap.usage.and_then(|u| u.completion_tokens), Some(5));
    assert_eq!(tap.events, 1);
}

#[test]
fn usage_alongside_choices_is_relayed_and_asked_usage_always_is() {
    let mut tap = Tap::new(ClientDialect::OpenAi, false, false);
    let both = b"data: {\"choices\": [{\"delta\": {}}], \"usage\": {\"prompt_tokens\": 3}}";
    assert!(tap.relay(both));
    let mut asked = Tap::new(ClientDialect::OpenAi, true, false);
    assert!(asked.relay(PRETTY_USAGE));
}

#[test]
fn no_choices_is_structural() {
    assert!(has_no_choices(br#"{"choices":[],"usage":{}}"#));
    assert!(has_no_choices(b"{\"choices\" :\n [\n ] , \"usage\": {}}"));
    assert!(has_no_choices(br#"{"usage":{}}"#));
    assert!(!has_no_choices(br#"{"choices":[{}],"usage":{}}"#));
    assert!(!has_no_choices(br#"{"x":{"choices":[]},"choices":[1]}"#));
}

/// An Anthropic stream's usage-bearing events, as the API sends them:
/// input (with cache reads and writes) at the start, output at the end.
const MESSAGE_START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":10,\"output_tokens\":1}}}";
const MESSAGE_DELTA: &[u8] = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}";

fn anthropic_delta(text: &str) -> Vec<u8> {
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}",
        serde_json::Value::from(text)
    )
    .into_bytes()
}

#[test]
fn an_anthropic_stream_merges_input_from_its_start_and_output_from_its_end() {
    let mut usage = None;
    anthropic_stream_usage(json_of_event(MESSAGE_START), &mut usage);
    let started = usage.unwrap();
    // Cache reads and writes are input too.
    assert_eq!(started.prompt_tokens, Some(135));
    assert_eq!(started.cached_tokens, Some(100));
    assert_eq!(started.completion_tokens, Some(1));
    anthropic_stream_usage(json_of_event(MESSAGE_DELTA), &mut usage);
    let u = usage.unwrap();
    assert_eq!(u.prompt_tokens, Some(135), "kept from message_start");
    assert_eq!(u.cached_tokens, Some(100));
    assert_eq!(
        u.completion_tokens,
        Some(15),
        "the delta's count is the total"
    );
    assert_eq!(u.total_tokens, Some(150));
    // Newer API versions repeat the input in message_delta: it wins.
    let delta =
        br#"{"type":"message_delta","delta":{},"usage":{"input_tokens":30,"output_tokens":16}}"#;
    anthropic_stream_usage(delta, &mut usage);
    let u = usage.unwrap();
    assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(30), Some(16)));
    assert_eq!(u.total_tokens, Some(46));
}

#[test]
fn anthropic_events_other_than_start_and_delta_leave_usage_alone() {
    let mut usage = None;
    for json in [
        &br#"{"type":"content_block_delta","usage":{"output_tokens":99}}"#[..],
        br#"{"type":"message_delta","usage":"not an object"}"#,
        br#"{"type":"message_start"}"#,
        b"{not json",
    ] {
        anthropic_stream_usage(json, &mut usage);
        assert_eq!(usage, None, "{}", String::from_utf8_lossy(json));
    }
}

#[test]
fn the_anthropic_tap_counts_content_events_and_sees_the_end() {
    let mut tap = Tap::new(ClientDialect::Anthropic, false, false);
    assert!(tap.relay(MESSAGE_START));
    for text in ["Hel", "lo", "say \"message_stop\" and \"usage\""] {
        assert!(tap.relay(&anthropic_delta(text)), "relayed to the client");
    }
    assert!(!tap.ended, "quoted text is not the end marker");
    assert!(tap.relay(MESSAGE_DELTA));
    assert!(!tap.ended);
    assert!(tap.relay(b"event: message_stop\ndata: {\"type\":\"message_stop\"}"));
    assert!(tap.ended);
    assert_eq!(tap.events, 3);
    let u = tap.usage.unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens),
        (Some(135), Some(15))
    );
}

#[test]
fn the_openai_tap_sees_done_and_counts_only_content_chunks() {
    let mut tap = Tap::new(ClientDialect::OpenAi, true, false);
    let content = b"data: {\"choices\":[{\"delta\":{\"content\":\"[DONE] is just text\"}}]}";
    assert!(tap.relay(content));
    assert!(!tap.ended, "[DONE] inside an event's JSON is content");
    assert!(tap.relay(PRETTY_USAGE));
    assert!(tap.relay(b"data: [DONE]"));
    assert!(tap.ended);
    assert_eq!(tap.events, 1);
    assert_eq!(tap.usage.and_then(|u| u.total_tokens), Some(8));
}

#[test]
fn the_responses_tap_reads_usage_from_the_final_event_and_keeps_it_only_when_asked() {
    let delta = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}";
    let done = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":7,\"input_tokens_details\":{\"cached_tokens\":2},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":1},\"total_tokens\":10}},\"sequence_number\":9}";
    for keep in [false, true] {
        let mut tap = Tap::new(ClientDialect::Responses, false, keep);
        assert!(tap.relay(delta));
        assert!(tap.relay(done));
        assert!(tap.ended);
        assert_eq!(tap.events, 1);
        let u = tap.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (Some(7), Some(3), Some(2), Some(1))
        );
        assert_eq!(
            tap.response.map(|r| r["id"].clone()),
            keep.then(|| serde_json::json!("resp_1"))
        );
    }
}

#[test]
fn an_events_json_is_what_lies_between_its_outer_braces() {
    let v: serde_json::Value = serde_json::from_slice(json_of_event(MESSAGE_DELTA)).unwrap();
    assert_eq!(
        v["usage"]["output_tokens"], 15,
        "the event: line is not part of it"
    );
    assert_eq!(
        json_of_event(b"data: {\"a\":{\"b\":1}}\n\n"),
        br#"{"a":{"b":1}}"#
    );
    assert!(json_of_event(b"data: [DONE]").is_empty());
    assert!(json_of_event(b": keep-alive").is_empty());
    assert!(json_of_event(b"data: }{").is_empty());
}

#[test]
fn a_whole_openai_body_reports_its_top_level_usage_only() {
    let body = br#"{"id":"c","choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":999}}"}}],
        "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}"#;
    let u = usage_of_body(ClientDialect::OpenAi, body).unwrap();
    assert_eq!(u.prompt_tokens, Some(12));
    assert_eq!(u.completion_tokens, Some(3));
    assert_eq!(u.total_tokens, Some(15));
    assert_eq!(u.cached_tokens, Some(4));
    let quoted_only =
        br#"{"choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":999}}"}}]}"#;
    assert_eq!(usage_of_body(ClientDialect::OpenAi, quoted_only), None);
}

#[test]
fn a_whole_anthropic_body_counts_cache_reads_and_writes_as_input() {
    let body = br#"{"id":"msg_1","type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":{"usage":{"input_tokens":999}}}],
        "usage":{"input_tokens":20,"cache_read_input_tokens":300,"cache_creation_input_tokens":5,"output_tokens":7}}"#;
    let u = usage_of_body(ClientDialect::Anthropic, body).unwrap();
    assert_eq!(u.prompt_tokens, Some(325));
    assert_eq!(u.cached_tokens, Some(300));
    assert_eq!(u.completion_tokens, Some(7));
    assert_eq!(u.total_tokens, Some(332));
    assert_eq!(
        usage_of_body(ClientDialect::Anthropic, br#"{"type":"message"}"#),
        None
    );
}

#[test]
fn openai_usage_totals_whatever_figures_there_are() {
    let u = |input, output| shardgate_providers::Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: Some(2),
        reasoning_tokens: Some(1),
        cache_write_tokens: None,
        ..shardgate_providers::Usage::default()
    };
    let both = openai_usage(&u(Some(10), Some(5)));
    assert_eq!(both.total_tokens, Some(15));
    assert_eq!(
        (both.cached_tokens, both.reasoning_tokens),
        (Some(2), Some(1))
    );
    assert_eq!(openai_usage(&u(None, Some(5))).total_tokens, Some(5));
    assert_eq!(openai_usage(&u(Some(10), None)).total_tokens, Some(10));
    assert_eq!(openai_usage(&u(None, None)).total_tokens, None);
}

#[test]
fn each_dialect_names_its_answers_and_ends_a_failed_stream_its_own_way() {
    let ids: Vec<String> = [
        ClientDialect::OpenAi,
        ClientDialect::Anthropic,
        ClientDialect::Responses,
    ]
    .iter()
    .map(|d| d.rules().reply_id("a1-b2"))
    .collect();
    assert_eq!(ids, ["chatcmpl-a1-b2", "msg_a1_b2", "resp_a1_b2"]);

    let err = GatewayError::UpstreamTimeout {
        provider: "p".into(),
    };
    let event = |d: ClientDialect| {
        let mut e = Vec::new();
        d.rules().error_event(&err, &mut e);
        let text = String::from_utf8(e).unwrap();
        assert!(text.ends_with("\n\n"), "{text}");
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let named = text.starts_with("event: error\n");
        (
            named,
            serde_json::from_str::<serde_json::Value>(data).unwrap(),
        )
    };
    let (named, openai) = event(ClientDialect::OpenAi);
    assert!(!named && openai["error"]["message"].is_string(), "{openai}");
    let (named, anthropic) = event(ClientDialect::Anthropic);
    assert!(named && anthropic["type"] == "error", "{anthropic}");
    assert_eq!(anthropic["error"]["type"], "api_error");
    let (named, responses) = event(ClientDialect::Responses);
    assert!(named && responses["type"] == "error", "{responses}");
    assert_eq!(responses["code"], err.label());
}

#[test]
fn a_token_count_answers_in_the_shape_of_the_api_asked() {
    assert_eq!(
        ClientDialect::Anthropic.rules().count_answer(7),
        serde_json::json!({ "input_tokens": 7 })
    );
    assert_eq!(
        ClientDialect::OpenAi.rules().count_answer(7)["object"],
        "response.input_tokens"
    );
}
