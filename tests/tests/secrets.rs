//! Provider credentials never reach a client or a log, whatever an upstream
//! echoes back: a fake provider repeats the key it received in every field
//! of its error (`message`, `param`, `code`, a `request.headers` member of
//! its own), and the keys have no recognisable shape (32 hex digits, plain
//! random letters), so only the gateway's knowledge of the exact value can
//! catch them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};

const OPENAI_KEY: &str = "5f0c2a9be13d47a8b6c0de21f9a3b774";
const AZURE_KEY: &str = "9e8d7c6b5a4f30211203f4a5b6c7d8e9";
const ANTHROPIC_KEY: &str = "QmVudGxleUZhcm1zUm9hZFRyaXBWYWxsZXk";
const GEMINI_KEY: &str = "Zx81Lq0Pw7Rt4Ys2Vb6Nm3Kj9Hg5Fd1Sa0Qe";
const BEDROCK_KEY: &str = "BedrockApiKeyWithoutAnyKnownPrefix42";

/// A provider that answers every request with an error repeating the
/// credential it was sent, in the error shape of the dialect its path
/// belongs to.
fn echoing_provider() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            std::thread::spawn(move || answer(stream.unwrap()));
        }
    });
    addr
}

fn answer(mut s: TcpStream) {
    let Some(req) = read_upstream_request(&mut s, &mut Vec::new()) else {
        return;
    };
    let path = req.head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let header = |name: &str| req.header(name).map(str::to_owned);
    let auth = header("authorization").unwrap_or_default();
    let key = ["api-key", "x-api-key", "x-goog-api-key"]
        .iter()
        .find_map(|h| header(h))
        .or_else(|| auth.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap_or_default();
    let message = format!("Incorrect API key provided: {key}. Header was {auth}");
    let (status, body) = if path.contains("/v1/messages") {
        (
            401,
            serde_json::json!({
                "type": "error",
                "error": {"type": "authentication_error", "message": message},
                "request": {"headers": {"x-api-key": key}},
            }),
        )
    } else if path.contains("enerateContent") {
        (
            400,
            serde_json::json!({
                "error": {"code": 400, "message": message, "status": key},
            }),
        )
    } else if path.contains("/converse") {
        (403, serde_json::json!({"message": message, "key": key}))
    } else {
        let status = if path.contains("/openai/deployments/") {
            400
        } else {
            401
        };
        (
            status,
            serde_json::json!({
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": key,
                    "code": key,
                },
                "request": {"headers": {"authorization": auth}},
            }),
        )
    };
    let body = body.to_string();
    let _ = write!(
        s,
        "HTTP/1.1 {status} Nope\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn gateway(upstream: SocketAddr) -> Proc {
    let cfg = format!(
        r#"listen: 127.0.0.1:0
shards: 1
auth: none
providers:
  oai: {{ kind: openai, base_url: "http://{upstream}/v1", api_key: "{OPENAI_KEY}" }}
  az: {{ kind: azure, base_url: "http://{upstream}", api_key: "{AZURE_KEY}", api_version: 2024-10-21 }}
  claude: {{ kind: anthropic, base_url: "http://{upstream}/v1", api_key: "{ANTHROPIC_KEY}" }}
  gem: {{ kind: gemini, base_url: "http://{upstream}/v1beta", api_key: "{GEMINI_KEY}" }}
  br: {{ kind: bedrock, region: us-east-1, base_url: "http://{upstream}", api_key: "{BEDROCK_KEY}" }}
models:
  oai: {{ targets: [ {{ provider: oai, model: gpt-4o }} ] }}
  az: {{ targets: [ {{ provider: az, model: my-deployment }} ] }}
  claude: {{ targets: [ {{ provider: claude, model: claude-x }} ] }}
  gem: {{ targets: [ {{ provider: gem, model: gemini-x }} ] }}
  br: {{ targets: [ {{ provider: br, model: anthropic.claude-x }} ] }}
"#
    );
    start_gateway_in(tempfile::tempdir().unwrap(), &cfg, 1, &[])
}

/// No run of [`WINDOW`] bytes of `key` is in `text`.
fn assert_no_piece(text: &str, key: &str, what: &str) {
    const WINDOW: usize = 8;
    for w in key.as_bytes().windows(WINDOW) {
        let w = std::str::from_utf8(w).unwrap();
        assert!(
            !text.contains(w),
            "{what}: `{w}` of the key leaked:\n{text}"
        );
    }
}

fn ask(gw: &Proc, path: &str, model: &str, stream: bool) -> Response {
    let mut c = connect(gw.addr());
    let body = format!(
        r#"{{"model":"{model}","max_tokens":16,"stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    c.send(&post(path, &body));
    c.read_response()
}

#[test]
fn echoed_provider_keys_never_reach_the_client_or_the_log() {
    let up = echoing_provider();
    let mut gw = gateway(up);
    let cases = [
        ("oai", OPENAI_KEY, 401),
        ("az", AZURE_KEY, 400),
        ("claude", ANTHROPIC_KEY, 401),
        ("gem", GEMINI_KEY, 400),
        ("br", BEDROCK_KEY, 403),
    ];
    for (model, key, status) in cases {
        for (path, stream) in [
            ("/v1/chat/completions", false),
            ("/v1/chat/completions", true),
            ("/v1/messages", false),
        ] {
            let what = format!("{model} {path} stream={stream}");
            let r = ask(&gw, path, model, stream);
            let text = r.text();
            assert_no_piece(&text, key, &what);
            assert_eq!(r.status, status, "{what}: {text}");
            let v = r.json();
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("Incorrect API key provided: [REDACTED]"),
                "{what}: the provider's message is kept, redacted: {text}"
            );
        }
    }
    gw.terminate();
    let log = gw.stderr();
    for (_, key, _) in cases {
        assert_no_piece(&log, key, "gateway log");
    }
}
