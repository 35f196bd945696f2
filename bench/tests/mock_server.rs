//! The mock server binary over real TCP, checked with a plain blocking
//! `std::net::TcpStream`, and `run` against it. Counts and contents only: no
//! timing assertions.
// A test crate: its helpers may fail loudly (clippy only exempts `#[test]`
// functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{post, read_response, request, sse_events, Mock, BIN};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;

#[test]
fn non_stream_chat_echoes_model_and_usage() {
    let mock = Mock::start(&[]);
    let r = request(
        &mock,
        &post(
            "/v1/chat/completions",
            r#"{"model":"mock-tokens-7","messages":[{"role":"user","content":"hi"}]}"#,
            None,
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "mock-tokens-7");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let mut text = String::new();
    shardgate_proto::mock::text(7, &mut text);
    assert_eq!(v["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], 7);
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(v["usage"]["total_tokens"], prompt + 7);
}

#[test]
fn stream_chat_events_in_order_with_usage() {
    let mock = Mock::start(&["--output-tokens", "4"]);
    let r = request(
        &mock,
        &post(
            "/v1/chat/completions",
            r#"{"model":"mock-1","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
            None,
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body);
    // role, 4 content, finish, usage, [DONE]
    assert_eq!(events.len(), 8, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..7]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "mock-1");
        assert_eq!(c["id"], chunks[0]["id"]);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for (i, c) in chunks[1..5].iter().enumerate() {
        assert_eq!(
            c["choices"][0]["delta"]["content"],
            shardgate_proto::mock::token(i)
        );
        assert!(c["usage"].is_null());
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], serde_json::json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);

    // Without include_usage: no usage chunk and no "usage" keys.
    let r = request(
        &mock,
        &post(
            "/v1/chat/completions",
            r#"{"model":"mock-tokens-2","stream":true}"#,
            None,
        ),
    );
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events.iter().all(|e| !e.contains("usage")));
}

#[test]
fn failures_by_model_name() {
    let mock = Mock::start(&[]);
    let r = request(
        &mock,
        &post("/v1/chat/completions", r#"{"model":"mock-429"}"#, None),
    );
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"].is_string());
    let r = request(
        &mock,
        &post(
            "/v1/completions",
            r#"{"model":"mock-503","prompt":"x"}"#,
            None,
        ),
    );
    assert_eq!(r.status, 503);

    // Stream cut after 3 content chunks: EOF without the last chunk.
    let mut s = mock.connect();
    s.write_all(&post(
        "/v1/chat/completions",
        r#"{"model":"mock-cut-after-3","stream":true}"#,
        None,
    ))
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let text = String::from_utf8(all).unwrap();
    assert_eq!(text.matches("\"content\":\" ").count(), 3, "{text}");
    assert!(!text.contains("[DONE]"));
    assert!(!text.ends_with("0\r\n\r\n"));
}

#[test]
fn require_key_rejects_other_keys() {
    let mock = Mock::start(&["--require-key", "upstream-key"]);
    let body = r#"{"model":"mock-1","messages":[]}"#;
    for auth in [None, Some("Bearer client-key"), Some("upstream-key")] {
        let r = request(&mock, &post("/v1/chat/completions", body, auth));
        assert_eq!(r.status, 401);
        assert_eq!(
            r.body,
            br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
        );
    }
    let r = request(
        &mock,
        &post("/v1/chat/completions", body, Some("Bearer upstream-key")),
    );
    assert_eq!(r.status, 200);
    let r = request(&mock, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    let mock = Mock::start(&[]);
    let mut s = mock.connect();
    let mut pending = Vec::new();
    for model in ["mock-tokens-1", "mock-tokens-2"] {
        s.write_all(&post(
            "/v1/chat/completions",
            &format!(r#"{{"model":"{model}"}}"#),
            None,
        ))
        .unwrap();
        let r = read_response(&mut s, &mut pending);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["model"], model);
    }
    // Three pipelined requests in one write, answered in order.
    let mut batch = post("/v1/embeddings", r#"{"model":"e","input":["a","b"]}"#, None);
    batch.extend(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n");
    batch.extend(post(
        "/v1/chat/completions",
        r#"{"model":"mock-tokens-3","stream":true}"#,
        None,
    ));
    s.write_all(&batch).unwrap();
    let r = read_response(&mut s, &mut pending);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = read_response(&mut s, &mut pending);
    assert_eq!(r.json()["data"][0]["id"], "mock-1");
    let r = read_response(&mut s, &mut pending);
    assert_eq!(sse_events(&r.body).len(), 6);
    assert!(pending.is_empty());
}

#[test]
fn run_against_mock_reports_json() {
    let mock = Mock::start(&["--require-key", "k"]);
    for stream in [false, true] {
        let url = format!("http://127.0.0.1:{}/v1/chat/completions", mock.port);
        let mut args = vec![
            "run",
            "--url",
            &url,
            "--connections",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--shards",
            "1",
            "--api-key",
            "k",
            "--model",
            "mock-1",
            "--json",
        ];
        if stream {
            args.push("--stream");
        }
        let out = Command::new(BIN).args(&args).output().expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["errors_total"], 0, "{v}");
        assert_eq!(v["connections"], 4);
        assert!(v["machine"]["nproc"].as_u64().unwrap() >= 1);
        if stream {
            // role + 16 content + finish + usage + [DONE]
            assert_eq!(v["sse_events_per_request"], 20.0, "{v}");
            assert!(v["ttft_us"]["p50"].as_u64().unwrap() > 0);
        } else {
            assert!(v["ttft_us"].is_null());
        }
    }
}
