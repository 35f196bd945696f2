//! Golden fixtures: `tests/fixtures/<provider>/<case>/`.
//!
//! Each case holds `case.json` (context: models, key, clock, status) and any
//! of these pairs, each checked when both files are present:
//! - `client_request.json` -> `upstream_request.json` (path, headers, body)
//! - `upstream_response.json` -> `client_response.json` (+ `usage.json`)
//! - `upstream_response.sse` / `.bin` -> `client_response.sse` (+
//!   `usage.json`), over every two-way split and byte by byte
//! - `upstream_error.json` -> `client_error.json`
//!
//! `SHARDGATE_BLESS=1 cargo test -p shardgate-providers --test golden`
//! rewrites the expected files from the current output (review the diff).
// Test-only helper code outside #[test] fns: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use shardgate_proto::testing::for_each_split;
use shardgate_providers::anthropic::{self, AnthropicProvider, OpenAiToAnthropic};
use shardgate_providers::azure::AzureProvider;
use shardgate_providers::bedrock::BedrockProvider;
use shardgate_providers::gemini::GeminiProvider;
use shardgate_providers::openai::OpenAiCompatible;
use shardgate_providers::responses;
use shardgate_providers::{
    ChatRequest, ChatResponse, PrepareCtx, Provider, ReplyCtx, StreamTranslator, Summary, Usage,
};

#[derive(serde::Deserialize)]
struct Case {
    upstream_model: String,
    client_model: String,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    include_usage: bool,
    #[serde(default)]
    now_unix: u64,
    #[serde(default)]
    status: Option<u16>,
    /// For providers configured per case (Azure api-version, presets).
    #[serde(default)]
    provider: Value,
}

const CREATED: u64 = 1_700_000_000;
const ID: &str = "chatcmpl-golden";

fn bless() -> bool {
    std::env::var_os("SHARDGATE_BLESS").is_some()
}

fn read(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok()
}

fn json(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn check_json(dir: &Path, name: &str, actual: &Value) {
    let path = dir.join(name);
    if bless() {
        let mut text = serde_json::to_vec_pretty(actual).unwrap();
        text.push(b'\n');
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = json(&std::fs::read(&path).unwrap(), &path.display().to_string());
    assert_eq!(
        actual,
        &expected,
        "{}: got\n{}",
        path.display(),
        serde_json::to_string_pretty(actual).unwrap()
    );
}

fn check_bytes(dir: &Path, name: &str, actual: &[u8]) {
    let path = dir.join(name);
    if bless() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(actual),
        String::from_utf8_lossy(&expected),
        "{}",
        path.display()
    );
}

enum Kind {
    Upstream(Box<dyn Fn(&Case) -> ProviderBox>),
    AnthropicInbound,
    /// A Responses client (`/v1/responses`) on an upstream of this kind:
    /// through chat both ways.
    ResponsesTo(Box<dyn Fn(&Case) -> ProviderBox>),
}

/// The providers under test, as trait objects only here in the test.
type ProviderBox = Box<dyn Provider>;

fn kind(provider_dir: &str) -> Kind {
    match provider_dir {
        "anthropic" => Kind::Upstream(Box::new(|_| Box::new(AnthropicProvider::default()))),
        "anthropic-inbound" => Kind::AnthropicInbound,
        "gemini" => Kind::Upstream(Box::new(|_| Box::new(GeminiProvider::default()))),
        "azure" => Kind::Upstream(Box::new(|c| {
            Box::new(serde_json::from_value::<AzureProvider>(c.provider.clone()).unwrap())
        })),
        "openai-compatible" => Kind::Upstream(Box::new(|c| {
            let name = c.provider["preset"].as_str().unwrap();
            Box::new(OpenAiCompatible::from_preset(name).unwrap())
        })),
        "bedrock" => Kind::Upstream(Box::new(|c| {
            Box::new(serde_json::from_value::<BedrockProvider>(c.provider.clone()).unwrap())
        })),
        "responses-to-anthropic" => {
            Kind::ResponsesTo(Box::new(|_| Box::new(AnthropicProvider::default())))
        }
        "responses-to-gemini" => {
            Kind::ResponsesTo(Box::new(|_| Box::new(GeminiProvider::default())))
        }
        "responses-to-bedrock" => Kind::ResponsesTo(Box::new(|c| {
            Box::new(serde_json::from_value::<BedrockProvider>(c.provider.clone()).unwrap())
        })),
        other => panic!("unknown fixture provider {other}"),
    }
}

fn reply_ctx(case: &Case) -> ReplyCtx {
    ReplyCtx {
        id: ID.to_owned(),
        model: case.client_model.clone(),
        created: CREATED,
        include_usage: case.include_usage,
    }
}

fn usage_json(usage: &Usage) -> Value {
    serde_json::to_value(usage).unwrap()
}

/// A stream translation under test: one translator, or, with `client`,
/// the upstream's translator into chat, then chat into the client's
/// dialect, as the gateway chains them for a Responses client. The
/// summary (what is metered) is the upstream's.
struct Stream {
    wire: StreamTranslator,
    client: Option<StreamTranslator>,
    mid: Vec<u8>,
}

impl Stream {
    fn one(t: StreamTranslator) -> Self {
        Stream {
            wire: t,
            client: None,
            mid: Vec::new(),
        }
    }

    fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match &mut self.client {
            None => self.wire.on_bytes(input, out).unwrap(),
            Some(client) => {
                self.mid.clear();
                self.wire.on_bytes(input, &mut self.mid).unwrap();
                client.on_bytes(&self.mid, out).unwrap();
            }
        }
    }

    fn finish(mut self, out: &mut Vec<u8>) -> Summary {
        match self.client {
            None => self.wire.finish(out),
            Some(mut client) => {
                self.mid.clear();
                let summary = self.wire.finish(&mut self.mid);
                client.on_bytes(&self.mid, out).unwrap();
                client.finish(out);
                summary
            }
        }
    }
}

/// Runs a translator over every split of `input`; all outputs must agree.
fn run_stream(make: &dyn Fn() -> Stream, input: &[u8]) -> (Vec<u8>, Summary) {
    let mut first: Option<(Vec<u8>, Summary)> = None;
    for_each_split(input, |pieces| {
        let mut t = make();
        let mut out = Vec::new();
        for piece in pieces {
            t.on_bytes(piece, &mut out);
        }
        let summary = t.finish(&mut out);
        match &first {
            None => first = Some((out, summary)),
            Some((o, s)) => {
                assert_eq!(
                    String::from_utf8_lossy(o),
                    String::from_utf8_lossy(&out),
                    "output differs for split {:?}",
                    pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
                );
                assert_eq!(s, &summary);
            }
        }
    });
    first.unwrap()
}

fn run_case(provider_dir: &str, dir: &Path) -> usize {
    let case: Case = serde_json::from_slice(&read(dir, "case.json").unwrap()).unwrap();
    let kind = kind(provider_dir);
    let mut checks = 0;

    if let (Some(req), true) = (
        read(dir, "client_request.json"),
        dir.join("upstream_request.json").exists(),
    ) {
        let actual = match &kind {
            Kind::Upstream(make) => {
                let provider = make(&case);
                let req_bytes = req.clone();
                let req: ChatRequest = serde_json::from_slice(&req).unwrap();
                let ctx = PrepareCtx {
                    model: &case.upstream_model,
                    api_key: case.api_key.as_deref(),
                    now_unix: case.now_unix,
                };
                let up = provider.prepare(&req, &ctx).unwrap();
                // Byte-stable: the same request, read again, gives the same
                // upstream bytes (provider prefix caches key on them).
                let again: ChatRequest = serde_json::from_slice(&req_bytes).unwrap();
                let again = provider.prepare(&again, &ctx).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&up.body),
                    String::from_utf8_lossy(&again.body),
                    "{}: the same request gave other upstream bytes",
                    dir.display()
                );
                serde_json::json!({
                    "path": up.path,
                    "headers": up.headers,
                    "body": json(&up.body, "upstream body"),
                })
            }
            Kind::AnthropicInbound => {
                let req = serde_json::from_slice(&req).unwrap();
                serde_json::to_value(ChatRequest::from_anthropic(&req).unwrap()).unwrap()
            }
            Kind::ResponsesTo(make) => {
                let provider = make(&case);
                let ctx = PrepareCtx {
                    model: &case.upstream_model,
                    api_key: case.api_key.as_deref(),
                    now_unix: case.now_unix,
                };
                let prepare = || {
                    let v: Value = serde_json::from_slice(&req).unwrap();
                    let chat = responses::to_chat(&v, &[]).unwrap();
                    provider.prepare(&chat, &ctx).unwrap()
                };
                let (up, again) = (prepare(), prepare());
                assert_eq!(up.body, again.body, "{}: not byte-stable", dir.display());
                serde_json::json!({
                    "path": up.path,
                    "headers": up.headers,
                    "body": json(&up.body, "upstream body"),
                })
            }
        };
        check_json(dir, "upstream_request.json", &actual);
        checks += 1;
    }

    if let (Some(body), true) = (
        read(dir, "upstream_response.json"),
        dir.join("client_response.json").exists(),
    ) {
        let (actual, usage) = match &kind {
            Kind::Upstream(make) => {
                let (out, usage) = make(&case)
                    .response_to_openai(&body, &reply_ctx(&case))
                    .unwrap();
                (json(&out, "client response"), usage)
            }
            Kind::AnthropicInbound => {
                let resp: ChatResponse = serde_json::from_slice(&body).unwrap();
                let (msg, usage) = anthropic::from_openai_response(&resp).unwrap();
                (serde_json::to_value(msg).unwrap(), usage)
            }
            Kind::ResponsesTo(make) => {
                let (out, usage) = make(&case)
                    .response_to_openai(&body, &reply_ctx(&case))
                    .unwrap();
                let chat: ChatResponse = serde_json::from_slice(&out).unwrap();
                let ctx = responses::ResponseCtx {
                    id: "resp_golden".into(),
                    model: case.client_model.clone(),
                    created_at: CREATED,
                    echo: responses::echo_fields(&Value::Null),
                };
                (
                    serde_json::to_value(responses::from_chat(&chat, &ctx)).unwrap(),
                    usage,
                )
            }
        };
        check_json(dir, "client_response.json", &actual);
        check_json(dir, "usage.json", &usage_json(&usage));
        checks += 1;
    }

    let stream_input =
        read(dir, "upstream_response.sse").or_else(|| read(dir, "upstream_response.bin"));
    if let Some(input) = stream_input {
        let make: Box<dyn Fn() -> Stream> = match &kind {
            Kind::Upstream(make) => {
                let provider = make(&case);
                let ctx = reply_ctx(&case);
                Box::new(move || {
                    Stream::one(
                        provider
                            .stream_translator(ctx.clone(), &Default::default())
                            .unwrap(),
                    )
                })
            }
            Kind::AnthropicInbound => {
                let ctx = reply_ctx(&case);
                Box::new(move || {
                    Stream::one(StreamTranslator::OpenAiToAnthropic(OpenAiToAnthropic::new(
                        ctx.clone(),
                    )))
                })
            }
            Kind::ResponsesTo(make) => {
                let provider = make(&case);
                let ctx = reply_ctx(&case);
                let client_model = case.client_model.clone();
                Box::new(move || {
                    let wire = provider
                        .stream_translator(ctx.clone(), &Default::default())
                        .unwrap();
                    let client = StreamTranslator::ChatToResponses(Box::new(
                        responses::ChatToResponses::new(responses::ResponseCtx {
                            id: "resp_golden".into(),
                            model: client_model.clone(),
                            created_at: CREATED,
                            echo: responses::echo_fields(&Value::Null),
                        }),
                    ));
                    Stream {
                        wire,
                        client: Some(client),
                        mid: Vec::new(),
                    }
                })
            }
        };
        let (out, summary) = run_stream(&*make, &input);
        check_bytes(dir, "client_response.sse", &out);
        check_json(dir, "usage.json", &usage_json(&summary.usage));
        let summary_json = serde_json::json!({
            "finish_reason": summary.finish_reason,
            "unknown_events": summary.unknown_events,
            "cut": summary.cut,
        });
        check_json(dir, "summary.json", &summary_json);
        checks += 1;
    }

    if let Some(body) = read(dir, "upstream_error.json") {
        let status = case.status.expect("error cases need a status");
        let out = match &kind {
            Kind::Upstream(make) => make(&case).error_to_openai(status, &body, &Default::default()),
            Kind::AnthropicInbound => anthropic::error_from_openai(status, &body),
            Kind::ResponsesTo(make) => {
                make(&case).error_to_openai(status, &body, &Default::default())
            }
        };
        if let Some(key) = &case.api_key {
            assert!(!String::from_utf8_lossy(&out).contains(key.as_str()));
        }
        check_json(dir, "client_error.json", &json(&out, "client error"));
        checks += 1;
    }
    checks
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn golden_fixtures() {
    let mut cases = 0;
    let mut checks = 0;
    let mut providers: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    providers.sort();
    for provider in providers {
        let name = provider.file_name().unwrap().to_str().unwrap().to_owned();
        let mut dirs: Vec<_> = std::fs::read_dir(&provider)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        for dir in dirs {
            let n = run_case(&name, &dir);
            assert!(n > 0, "{}: no fixture pair found", dir.display());
            checks += n;
            cases += 1;
        }
    }
    eprintln!("golden: {cases} cases, {checks} checks");
    assert!(cases >= 5);
}
