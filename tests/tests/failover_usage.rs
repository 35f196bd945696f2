//! Every attempt a request made is paid for. A provider that answers (and
//! bills its tokens) with a body the gateway cannot use fails over to the
//! next target; the caller is charged for both answers, not only the one it
//! received.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the broken provider says it used.
const BILLED_IN: u64 = 11;
const BILLED_OUT: u64 = 13;

/// An OpenAI-dialect provider whose answers carry usage but no usable
/// choices: an Anthropic client's answer cannot be made from them.
fn billing_but_broken_provider() -> SocketAddr {
    spawn_provider(|mut s| {
        let mut buf = Vec::new();
        while read_upstream_request(&mut s, &mut buf).is_some() {
            let body = format!(
                r#"{{"id":"x","object":"chat.completion","model":"broken-1","choices":"not a list","usage":{{"prompt_tokens":{BILLED_IN},"completion_tokens":{BILLED_OUT},"total_tokens":{}}}}}"#,
                BILLED_IN + BILLED_OUT
            );
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if s.write_all(head.as_bytes()).is_err() || s.write_all(body.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_failover_after_a_billed_but_unusable_answer_charges_both_attempts() {
    let broken = billing_but_broken_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let created = keys_json(
        &data,
        &["create", "--team", "t", "--tenant", "acme", "--json"],
    );
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let config = format!(
        "listen: 127.0.0.1:0\nshards: 1\nstore: {{ dir: {} }}\n\
         providers:\n  broken: {{ kind: openai, base_url: \"http://{broken}/v1\", api_key: k }}\n  \
         local: {{ kind: mock, output_tokens: 5 }}\n\
         models:\n  claude: {{ targets: [ {{ provider: broken, model: broken-1 }}, {{ provider: local, model: mock-1 }} ] }}\n\
         pricing:\n  - {{ model: \"*\", input_per_million_usd: 1, output_per_million_usd: 2 }}\n",
        data.display()
    );
    let gw = start_gateway_in(dir, &config, 1, &[]);
    let body =
        r#"{"model":"claude","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}"#;
    let mut c = connect(gw.addr());
    let auth = format!("x-api-key: {secret}\r\nanthropic-version: 2023-06-01\r\n");
    c.send(&with_header(post("/v1/messages", body), &auth));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["type"], "message");
    let (mock_in, mock_out) = (
        answer["usage"]["input_tokens"].as_u64().unwrap(),
        answer["usage"]["output_tokens"].as_u64().unwrap(),
    );
    assert_eq!(mock_out, 5);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mtd = loop {
        let list = keys_json(&data, &["list", "--json"]);
        let row = list
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == key_id.as_str())
            .unwrap()
            .clone();
        if row["month_to_date"]["requests"] == 1 || Instant::now() > deadline {
            break row["month_to_date"].clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(mtd["requests"], 1, "{mtd}");
    assert_eq!(mtd["input_tokens"], BILLED_IN + mock_in, "{mtd}");
    assert_eq!(mtd["output_tokens"], BILLED_OUT + mock_out, "{mtd}");
    assert_eq!(
        mtd["spend_micros"],
        (BILLED_IN + mock_in) + 2 * (BILLED_OUT + mock_out),
        "{mtd}"
    );
}
