//! The mock's injected randomness over real TCP: `--error-rate` fails
//! requests in each dialect's own error shape, `--cut-rate` cuts streams
//! short, and model-name behaviours still win. Counts only, no timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{post, post_with, request, Mock};

const CHAT: &str = r#"{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn every_request_fails_at_error_rate_one_in_each_dialect() {
    let mock = Mock::start(&["--error-rate", "1", "--error-status", "429"]);
    let r = request(&mock, &post("/v1/chat/completions", CHAT, None));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let anthropic =
        r#"{"model":"mock-1","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = request(
        &mock,
        &post_with(
            "/v1/messages",
            anthropic,
            &[("anthropic-version", "2023-06-01")],
        ),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["type"], "error");
    // A model-name behaviour is an exact request: it wins.
    let named = r#"{"model":"mock-500","messages":[]}"#;
    assert_eq!(
        request(&mock, &post("/v1/chat/completions", named, None)).status,
        500
    );
}

#[test]
fn error_rate_is_a_share_of_requests() {
    let mock = Mock::start(&["--error-rate", "0.5", "--seed", "7"]);
    let n = 200;
    let failed = (0..n)
        .filter(|_| request(&mock, &post("/v1/chat/completions", CHAT, None)).status == 503)
        .count();
    assert!(
        (60..140).contains(&failed),
        "{failed} of {n} failed at rate 0.5"
    );
}

#[test]
fn every_stream_is_cut_at_cut_rate_one() {
    let mock = Mock::start(&["--cut-rate", "1", "--output-tokens", "8"]);
    let body = r#"{"model":"mock-1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..5 {
        let mut s = mock.connect();
        use std::io::{Read, Write};
        s.write_all(&post("/v1/chat/completions", body, None))
            .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap(); // the mock closes a cut stream
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.contains("[DONE]"),
            "a cut stream must not end cleanly: {text}"
        );
    }
    // Not streamed: never cut.
    let r = request(&mock, &post("/v1/chat/completions", CHAT, None));
    assert_eq!(r.status, 200);
}
