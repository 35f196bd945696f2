use super::stream::StreamGuard;
use super::*;
use crate::gateway::ClientDialect;
use shardgate_policy::guardrails::GuardrailSpec;

fn rails(action: &str) -> Guardrails {
    let yaml = format!(
        "- {{name: codes, regex: ['ACME-\\d{{4}}'], action: {action}}}\n- {{name: words, deny_words: [falcon], action: log}}"
    );
    let specs: Vec<GuardrailSpec> = serde_yaml_ng::from_str(&yaml).unwrap();
    Guardrails::compile(&specs).unwrap()
}

#[test]
fn a_redacted_prompt_keeps_everything_but_the_match() {
    let g = rails("redact");
    let body = br#"{"model":"m","messages":[{"role":"user","content":"code ACME-1234 for Falcon"},{"role":"user","content":[{"type":"text","text":"and ACME-9999"}]}],"temperature":0}"#;
    let mut records = Vec::new();
    let Verdict::Redacted(out) = check_body(&g, &[0, 1], Stage::Input, body, &mut records) else {
        panic!("not redacted")
    };
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["messages"][0]["content"],
        "code [REDACTED:codes] for Falcon"
    );
    assert_eq!(
        v["messages"][1]["content"][0]["text"],
        "and [REDACTED:codes]"
    );
    assert_eq!(v["temperature"], 0);
    let verdicts: Vec<(&str, &str, Vec<&str>)> = records
        .iter()
        .map(|r| (r.check.as_str(), r.verdict, r.found.clone()))
        .collect();
    assert_eq!(
        verdicts,
        vec![
            ("codes", "redact", vec!["regex"]),
            ("words", "log", vec!["deny_word"])
        ]
    );
    // Ids and roles are not prose: a match there is not looked at.
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi","name":"ACME-1234"}]}"#;
    assert!(matches!(
        check_body(&g, &[0], Stage::Input, body, &mut records),
        Verdict::Pass
    ));
}

#[test]
fn only_signed_thinking_is_left_as_it_came() {
    let g = rails("redact");
    let body = br#"{"model":"m","input":[
        {"role":"user","content":"ACME-1111","encrypted_content":"x","signature":"y"},
        {"type":"reasoning","summary":[{"type":"summary_text","text":"ACME-2222"}],"encrypted_content":"anthropic.thinking:sig"},
        {"type":"reasoning","summary":[{"type":"summary_text","text":"ACME-3333"}],"encrypted_content":"gAAAA"},
        {"role":"assistant","content":"ok","thinking_blocks":[{"type":"thinking","thinking":"ACME-4444","signature":"s"}]}]}"#;
    let mut records = Vec::new();
    let Verdict::Redacted(out) = check_body(&g, &[0], Stage::Input, body, &mut records) else {
        panic!("not redacted")
    };
    let v: Value = serde_json::from_slice(&out).unwrap();
    // A key any client can add exempts nothing.
    assert_eq!(v["input"][0]["content"], "[REDACTED:codes]");
    // Claude's signed thinking goes back as it came; other reasoning is prose.
    assert_eq!(v["input"][1]["summary"][0]["text"], "ACME-2222");
    assert_eq!(v["input"][2]["summary"][0]["text"], "[REDACTED:codes]");
    assert_eq!(v["input"][3]["thinking_blocks"][0]["thinking"], "ACME-4444");
}

#[test]
fn a_blocking_match_names_the_check() {
    let g = rails("block");
    let body = br#"{"choices":[{"message":{"role":"assistant","content":"see ACME-4321"}}]}"#;
    let mut records = Vec::new();
    match check_body(&g, &[0], Stage::Output, body, &mut records) {
        Verdict::Blocked(e) => {
            assert_eq!(e.status(), 400);
            assert!(e.to_string().contains("`codes`"), "{e}");
            let v: Value = serde_json::from_slice(&e.openai_body()).unwrap();
            assert_eq!(v["error"]["code"], "guardrail:codes");
        }
        _ => panic!("not blocked"),
    }
}

fn chunk(event: &str) -> Vec<u8> {
    let mut out = Vec::new();
    shardgate_proto::chunked::encode_chunk_header(event.len(), &mut out);
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// The text of the chat chunks in `out` (chunked), in order.
fn texts(out: &[u8]) -> String {
    let mut at = 0;
    let mut text = String::new();
    while let Some((data, next, last)) = shardgate_proto::chunked::next_chunk(out, at) {
        if last {
            break;
        }
        for line in data
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"data: {"))
        {
            let v: Value = serde_json::from_slice(&line[6..]).unwrap();
            if let Some(t) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(t);
            }
            if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                text.push_str(t);
            }
        }
        at = next;
    }
    text
}

fn ev(t: &str) -> Vec<u8> {
    let mut e = b"data: {\"choices\":[{\"delta\":{\"content\":".to_vec();
    shardgate_proto::json::write_json_string(&mut e, t);
    e.extend_from_slice(b"}}]}\n\n");
    chunk(std::str::from_utf8(&e).unwrap())
}

#[test]
fn a_match_split_across_events_is_blocked_before_any_of_it_is_sent() {
    let g = rails("block");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::OpenAi, false);
    // As the relay does: each write's bytes, then cleared.
    let mut sent = Vec::new();
    let mut out = Vec::new();
    for part in ["The code is AC", "ME-1", "2", "3"] {
        out.extend(ev(part));
        guard.filter(&g, &mut out, 0).unwrap();
        sent.extend_from_slice(&out);
        out.clear();
    }
    out.extend(ev("4, and more"));
    let e = guard.filter(&g, &mut out, 0).unwrap_err();
    assert!(matches!(e, GatewayError::Guardrail { .. }));
    assert!(out.is_empty(), "the completing chunk is cut");
    // Held back: nothing of the match (nor the text just before it,
    // inside the window) reached the client.
    assert!(!texts(&sent).contains("AC"), "{}", texts(&sent));
    let mut records = Vec::new();
    guard.records(&g, &mut records);
    assert_eq!(records[0].verdict, "block");
}

#[test]
fn a_redacted_stream_says_the_same_with_the_match_replaced() {
    let g = rails("redact");
    let mut guard = StreamGuard::new(&g, vec![0, 1], ClientDialect::OpenAi, false);
    let long = "x".repeat(100);
    let mut sent = Vec::new();
    for part in [
        "Hello ",
        "AC",
        "ME-",
        "12",
        "34 and ",
        &long,
        " then ACME-5678",
        " falcon.",
    ] {
        let mut out = ev(part);
        guard.filter(&g, &mut out, 0).unwrap();
        sent.extend_from_slice(&out);
    }
    // The finish: what is held goes out before it.
    let mut out = chunk("data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    out.extend_from_slice(b"0\r\n\r\n");
    guard.filter(&g, &mut out, 0).unwrap();
    assert!(out.ends_with(b"0\r\n\r\n"));
    sent.extend_from_slice(&out);
    assert_eq!(
        texts(&sent),
        format!("Hello [REDACTED:codes] and {long} then [REDACTED:codes] falcon.")
    );
    let finish = sent
        .windows(13)
        .position(|w| w == b"finish_reason")
        .unwrap();
    let last_text = sent.windows(8).rposition(|w| w == b"REDACTED").unwrap();
    assert!(last_text < finish, "held text goes out before the finish");
    let mut records = Vec::new();
    guard.records(&g, &mut records);
    let v: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.check.as_str(), r.verdict))
        .collect();
    assert_eq!(v, vec![("codes", "redact"), ("words", "log")]);
}

#[test]
fn log_only_checks_pass_the_bytes_as_they_came() {
    let g = rails("log");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::OpenAi, false);
    let mut out = ev("ACME-1234");
    let before = out.clone();
    guard.filter(&g, &mut out, 0).unwrap();
    assert_eq!(out, before);
    let mut records = Vec::new();
    guard.records(&g, &mut records);
    assert_eq!(records[0].verdict, "log");
}

#[test]
fn escaped_and_anthropic_deltas_are_read() {
    let g = rails("block");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::Anthropic, false);
    let mut out = chunk("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\\\"ACME-\"}}\n\n");
    guard.filter(&g, &mut out, 0).unwrap();
    out.clear();
    out.extend(chunk("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"7777\\\"\"}}\n\n"));
    assert!(guard.filter(&g, &mut out, 0).is_err());
}

#[test]
fn spaced_json_as_python_servers_write_it_is_read() {
    let g = rails("redact");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::OpenAi, false);
    let mut out = chunk("data: {\"choices\": [{\"delta\": {\"role\": \"assistant\", \"content\" : \"code ACME-1234.\"}}]}\n\n");
    out.extend(chunk(
        "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"stop\"}]}\n\n",
    ));
    guard.filter(&g, &mut out, 0).unwrap();
    assert_eq!(texts(&out), "code [REDACTED:codes].");
}

#[test]
fn an_event_between_parts_of_a_match_does_not_release_it() {
    let g = rails("block");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::OpenAi, false);
    let mut sent = Vec::new();
    // A content-filter chunk with an empty delta, and a comment, between
    // the halves.
    for e in [
        ev("code ACME-"),
        chunk("data: {\"choices\":[{\"delta\":{}}]}\n\n"),
        chunk(": keep-alive\n\n"),
    ] {
        let mut out = e;
        guard.filter(&g, &mut out, 0).unwrap();
        sent.extend_from_slice(&out);
    }
    let mut out = ev("1234");
    assert!(guard.filter(&g, &mut out, 0).is_err());
    assert!(!texts(&sent).contains("ACME"), "{}", texts(&sent));
}

#[test]
fn held_text_goes_out_when_the_stream_ends_without_a_finish() {
    let g = rails("redact");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::OpenAi, false);
    let mut out = ev("cut after ACME-1234 and");
    guard.filter(&g, &mut out, 0).unwrap();
    let mut sent = out;
    let mut end = b"0\r\n\r\n".to_vec();
    guard.filter(&g, &mut end, 0).unwrap();
    assert!(end.ends_with(b"0\r\n\r\n"));
    sent.extend_from_slice(&end);
    assert_eq!(texts(&sent), "cut after [REDACTED:codes] and");
}

#[test]
fn legacy_completions_chunks_are_read() {
    let g = rails("redact");
    let mut guard = StreamGuard::new(&g, vec![0], ClientDialect::OpenAi, true);
    let mut out = chunk(
        "data: {\"choices\":[{\"index\":0,\"text\":\"see ACME-4242\",\"finish_reason\":null}]}\n\n",
    );
    out.extend(chunk(
        "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n",
    ));
    guard.filter(&g, &mut out, 0).unwrap();
    let text: String = String::from_utf8_lossy(&out).into_owned();
    assert!(
        text.contains("[REDACTED:codes]") && !text.contains("4242"),
        "{text}"
    );
}
