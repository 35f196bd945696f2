//! The Gemini dialect: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse` (every SSE `data` a whole
//! `GenerateContentResponse`, `finishReason` on the last, `usageMetadata` on
//! each), `:embedContent` and `:batchEmbedContents`; errors as
//! `{"error":{"code","message","status"}}`. The model comes from the path.

use super::answer::{Facts, Generation, Stop};
use super::tools::{self, ToolOffer};
use super::wire::{data_event, json_str, num};
use serde::de::IgnoredAny;
use serde::Deserialize;
use shardgate_proto::mock as m;
use std::borrow::Cow;

/// Embedding width when the request names no `outputDimensionality`
/// (the OpenAI mock's default, so both give the same vectors).
const DEFAULT_DIMS: usize = 16;

/// The operation after the `:` in `models/{model}:{op}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Generate,
    /// `streamGenerateContent`; `sse` when the query has `alt=sse`.
    Stream {
        sse: bool,
    },
    Embed,
    BatchEmbed,
}

impl Op {
    pub fn parse(op: &str, query: &str) -> Option<Op> {
        Some(match op {
            "generateContent" => Op::Generate,
            "streamGenerateContent" => Op::Stream {
                sse: query.split('&').any(|kv| kv == "alt=sse"),
            },
            "embedContent" => Op::Embed,
            "batchEmbedContents" => Op::BatchEmbed,
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    #[serde(borrow, default)]
    contents: Option<Vec<Content<'a>>>,
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow, default)]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(default)]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    function_response: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    #[serde(borrow, default)]
    function_declarations: Option<Vec<Named<'a>>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    #[serde(borrow, default)]
    function_calling_config: Option<CallingConfig<'a>>,
}

#[derive(Deserialize)]
struct CallingConfig<'a> {
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

pub fn facts(body: &[u8], stream: bool) -> Result<Facts<'_>, &'static str> {
    let req: GenerateRequest<'_> =
        serde_json::from_slice(body).map_err(|_| "Invalid JSON payload received.")?;
    let tools = ToolOffer {
        first: req
            .tools
            .into_iter()
            .flatten()
            .flat_map(|t| t.function_declarations.into_iter().flatten())
            .map(|d| d.name)
            .next(),
        choice_none: req
            .tool_config
            .and_then(|c| c.function_calling_config)
            .and_then(|c| c.mode)
            .is_some_and(|mode| mode.eq_ignore_ascii_case("none")),
        last_is_result: req
            .contents
            .as_ref()
            .and_then(|c| c.last())
            .is_some_and(|c| c.parts.iter().any(|p| p.function_response.is_some())),
    };
    Ok(Facts {
        model: None,
        stream,
        max_tokens: req.generation_config.and_then(|c| c.max_output_tokens),
        include_usage: true,
        tool: tools.decide(),
    })
}

fn finish_reason(g: &Generation<'_>) -> &'static str {
    match g.stop {
        Stop::Length => "MAX_TOKENS",
        Stop::End | Stop::Tool => "STOP",
    }
}

/// One `GenerateContentResponse` whose only part is `part`, with usage
/// counting `output` tokens so far and, when `finish`, the finish reason.
fn response(
    out: &mut Vec<u8>,
    g: &Generation<'_>,
    id: &str,
    output: u64,
    finish: bool,
    part: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"candidates\":[{\"content\":{\"parts\":[");
    part(out);
    out.extend_from_slice(b"],\"role\":\"model\"}");
    if finish {
        out.extend_from_slice(b",\"finishReason\":\"");
        out.extend_from_slice(finish_reason(g).as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":");
    num(out, g.prompt_tokens);
    out.extend_from_slice(b",\"candidatesTokenCount\":");
    num(out, output);
    out.extend_from_slice(b",\"totalTokenCount\":");
    num(out, g.prompt_tokens + output);
    out.extend_from_slice(b"},\"modelVersion\":");
    json_str(out, &g.model);
    out.extend_from_slice(b",\"responseId\":");
    json_str(out, id);
    out.push(b'}');
}

fn text_part(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"{\"text\":");
    json_str(out, text);
    out.push(b'}');
}

fn call_part(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b"{\"functionCall\":{\"name\":");
    json_str(out, name);
    out.extend_from_slice(b",\"args\":");
    let mut args = String::new();
    tools::arguments(&mut args);
    out.extend_from_slice(args.as_bytes());
    out.extend_from_slice(b"}}");
}

pub fn body(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    let output = g.output_tokens() as u64;
    response(out, g, id, output, true, |out| match &g.tool {
        Some(name) => call_part(out, name),
        None => {
            let mut text = String::new();
            m::text(g.tokens, &mut text);
            text_part(out, &text);
        }
    });
}

/// Piece i: token i (the last with the finish reason), or the whole call.
pub fn piece(g: &Generation<'_>, id: &str, i: usize, out: &mut Vec<u8>) {
    let last = i + 1 == g.pieces();
    let output = if g.tool.is_some() {
        g.output_tokens() as u64
    } else {
        i as u64 + 1
    };
    data_event(out, |out| {
        response(out, g, id, output, last, |out| match &g.tool {
            Some(name) => call_part(out, name),
            None => text_part(out, m::token(i)),
        })
    });
}

/// An empty answer still needs one record carrying the finish reason.
pub fn close(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    if g.pieces() == 0 {
        data_event(out, |out| {
            response(out, g, id, 0, true, |out| text_part(out, ""))
        });
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EmbedRequest<'a> {
    #[serde(borrow)]
    content: Content<'a>,
    #[serde(default)]
    output_dimensionality: Option<usize>,
}

#[derive(Deserialize)]
struct BatchEmbedRequest<'a> {
    #[serde(borrow)]
    requests: Vec<EmbedRequest<'a>>,
}

/// `{"embedding":{"values":[..]}}` or `{"embeddings":[{"values":[..]},..]}`,
/// with the vectors the OpenAI mock gives for the same texts.
pub fn embed_body(body: &[u8], batch: bool, out: &mut Vec<u8>) -> Result<(), &'static str> {
    let requests = if batch {
        serde_json::from_slice::<BatchEmbedRequest<'_>>(body)
            .map_err(|_| "Invalid JSON payload received.")?
            .requests
    } else {
        vec![serde_json::from_slice::<EmbedRequest<'_>>(body)
            .map_err(|_| "Invalid JSON payload received.")?]
    };
    out.extend_from_slice(if batch {
        b"{\"embeddings\":["
    } else {
        b"{\"embedding\":"
    });
    let mut scratch = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let text: String = r
            .content
            .parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect();
        let dims = r.output_dimensionality.unwrap_or(DEFAULT_DIMS).min(65536);
        scratch.clear();
        m::embeddings(&mut scratch, "m", &[text.as_str()], dims);
        let v: serde_json::Value =
            serde_json::from_slice(&scratch).map_err(|_| "mock embedding")?;
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"values\":");
        let _ = serde_json::to_writer(&mut *out, &v["data"][0]["embedding"]);
        out.push(b'}');
    }
    out.extend_from_slice(if batch { b"]}" } else { b"}" });
    Ok(())
}

/// Google's canonical status name for an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 | 411 | 413 | 431 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 | 405 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// `{"error":{"code":..,"message":..,"status":..}}`.
pub fn error_body(out: &mut Vec<u8>, status: u16, message: &str) {
    out.extend_from_slice(b"{\"error\":{\"code\":");
    num(out, u64::from(status));
    out.extend_from_slice(b",\"message\":");
    json_str(out, message);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status_name(status).as_bytes());
    out.extend_from_slice(b"\"}}");
}
