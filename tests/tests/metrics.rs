//! `GET /metrics` on the admin listener: Prometheus text with every shard's
//! counts merged at the scrape (each shard counts its own requests with no
//! lock; the scrape asks the others over the shard mesh). What it says
//! matches what the clients saw: requests by endpoint and status, upstream
//! attempts by target and outcome, tokens per attempt (OpenTelemetry's
//! `gen_ai_client_token_usage`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;

const CONFIG: &str = "shards: 2\nauth: none\nadmin: { token: s3cret-admin-token-0123 }\n\
    listeners:\n  - { address: 127.0.0.1:0 }\n  - { address: 127.0.0.1:0, role: admin }\n\
    providers:\n  local: { kind: mock, output_tokens: 3 }\n\
    models:\n  local: { targets: [ { provider: local, model: mock-1 } ] }\n  \
    failover: { targets: [ { provider: local, model: mock-503 }, { provider: local, model: mock-1 } ] }\n";

fn chat(model: &str) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
    )
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_scrape_merges_every_shard_and_matches_what_clients_saw() {
    let gw = start_gateway_in(tempfile::tempdir().unwrap(), CONFIG, 2, &[]);
    let (api, admin) = (gw.addrs[0], gw.addrs[1]);
    // One connection per request: the kernel spreads them over both shards.
    for _ in 0..20 {
        let mut c = connect(api);
        c.send(&chat("local"));
        assert_eq!(c.read_response().status, 200);
    }
    for _ in 0..2 {
        let mut c = connect(api);
        c.send(&chat("failover"));
        assert_eq!(c.read_response().status, 200);
    }
    let mut c = connect(api);
    c.send(&chat("no-such-model"));
    assert_eq!(c.read_response().status, 404);
    c.send(&get("/nowhere"));
    assert_eq!(c.read_response().status, 404);

    let mut c = connect(admin);
    c.send(b"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret-admin-token-0123\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));

    // Both shards answered the scrape, whichever took the traffic.
    assert_eq!(value("shardgate_metrics_shards_missing"), 0.0);
    assert!(sample(&text, "shardgate_open_connections{shard=\"0\"}").is_some());
    assert!(sample(&text, "shardgate_open_connections{shard=\"1\"}").is_some());

    let chat_ep = "endpoint=\"/v1/chat/completions\"";
    assert_eq!(
        value(&format!(
            "shardgate_requests_total{{{chat_ep},code=\"200\"}}"
        )),
        22.0
    );
    assert_eq!(
        value(&format!(
            "shardgate_requests_total{{{chat_ep},code=\"404\"}}"
        )),
        1.0
    );
    assert_eq!(
        value("shardgate_requests_total{endpoint=\"other\",code=\"404\"}"),
        1.0
    );
    assert_eq!(
        value("shardgate_request_errors_total{reason=\"model_not_found\"}"),
        1.0
    );
    assert_eq!(
        value(&format!(
            "shardgate_request_duration_seconds_count{{{chat_ep}}}"
        )),
        23.0
    );

    assert_eq!(
        value("shardgate_upstream_attempts_total{provider=\"local\",model=\"mock-503\",outcome=\"failed\"}"),
        2.0
    );
    assert_eq!(
        value("shardgate_upstream_attempts_total{provider=\"local\",model=\"mock-1\",outcome=\"answered\"}"),
        22.0
    );
    let out = "gen_ai_provider_name=\"local\",gen_ai_response_model=\"mock-1\",gen_ai_token_type=\"output\"";
    assert_eq!(
        value(&format!("gen_ai_client_token_usage_sum{{{out}}}")),
        66.0
    );
    assert_eq!(
        value(&format!("gen_ai_client_token_usage_count{{{out}}}")),
        22.0
    );
    assert_eq!(
        value(&format!(
            "gen_ai_client_token_usage_bucket{{{out},le=\"4\"}}"
        )),
        22.0,
        "3 tokens each fall in the le=4 bucket"
    );
    assert_eq!(
        value(&format!(
            "gen_ai_client_token_usage_bucket{{{out},le=\"1\"}}"
        )),
        0.0
    );
}

#[test]
fn tool_calls_and_the_audit_writer_are_counted() {
    let config = CONFIG.replace(
        "auth: none\n",
        "auth: none\naudit: { fsync: always }\n\
         policies:\n  - ai_runtime_policy: { name: p, actor_scope: {}, tools: { denied: ['delete_*'] } }\n",
    ) + "  bad: { targets: [ { provider: local, model: mock-call-delete_all } ] }\n  \
           good: { targets: [ { provider: local, model: mock-call-search } ] }\n";
    let gw = start_gateway_in(tempfile::tempdir().unwrap(), &config, 2, &[]);
    let (api, admin) = (gw.addrs[0], gw.addrs[1]);
    let mut c = connect(api);
    c.send(&chat("bad"));
    assert_eq!(c.read_response().status, 403);
    for _ in 0..2 {
        c.send(&chat("good"));
        assert_eq!(c.read_response().status, 200);
    }
    // The shards hand their audit events over within 10 ms.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut c = connect(admin);
    c.send(b"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret-admin-token-0123\r\n\r\n");
    let text = c.read_response().text();
    let calls = |decision: &str| {
        sample(
            &text,
            &format!("shardgate_tool_calls_total{{server=\"-\",source=\"model_answer\",decision=\"{decision}\"}}"),
        )
    };
    assert_eq!(calls("refused"), Some(1.0), "{text}");
    assert_eq!(calls("allowed"), Some(2.0), "{text}");
    // Three requests and three tool calls, and each file's start line.
    let events = sample(&text, "shardgate_audit_events_total").unwrap();
    assert!(events >= 6.0, "{text}");
    assert_eq!(
        sample(&text, "shardgate_audit_dropped_events_total"),
        Some(0.0)
    );
}
