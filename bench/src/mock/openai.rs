//! The OpenAI dialect: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`; its request facts, bodies, stream chunks
//! and error JSON. Text bodies come from `shardgate_proto::mock`; tool-call
//! bodies are rendered here.

use super::answer::{ErrorCause, Facts, Generation};
use super::tools::{self, ToolOffer};
use super::wire::{data_event, json_str, num};
use serde::Deserialize;
use shardgate_proto::mock::{self as m, ChunkKind};
use std::borrow::Cow;

/// Default embedding width when the request names no `dimensions`.
const DEFAULT_DIMS: usize = 16;

/// The fixed `/v1/models` answer.
pub const MODELS: &[u8] = br#"{"object":"list","data":[{"id":"mock-1","object":"model","created":0,"owned_by":"shardgate-bench"}]}"#;

#[derive(Deserialize)]
struct GenerateRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow, default)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct Function<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
}

/// Facts of a chat or legacy completion request.
pub fn facts(body: &[u8]) -> Result<Facts<'_>, &'static str> {
    let req: GenerateRequest<'_> =
        serde_json::from_slice(body).map_err(|_| "invalid JSON request body")?;
    let tools = ToolOffer {
        first: req
            .tools
            .into_iter()
            .flatten()
            .find_map(|t| t.function.map(|f| f.name)),
        choice_none: req.tool_choice.as_ref().and_then(|c| c.as_str()) == Some("none"),
        last_is_result: req
            .messages
            .as_ref()
            .and_then(|m| m.last())
            .and_then(|m| m.role.as_deref())
            == Some("tool"),
    };
    Ok(Facts {
        model: req.model,
        stream: req.stream.unwrap_or(false),
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        tool: tools.decide(),
    })
}

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: EmbeddingsInput<'a>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingsInput<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

/// A parsed embeddings request: model, inputs, width.
pub struct Embeddings<'a> {
    pub model: Cow<'a, str>,
    pub inputs: Vec<Cow<'a, str>>,
    pub dims: usize,
}

pub fn embeddings_request(body: &[u8]) -> Result<Embeddings<'_>, &'static str> {
    let req: EmbeddingsRequest<'_> =
        serde_json::from_slice(body).map_err(|_| "invalid embeddings request body")?;
    Ok(Embeddings {
        model: req.model.unwrap_or(Cow::Borrowed("mock-embed")),
        inputs: match req.input {
            EmbeddingsInput::One(s) => vec![s],
            EmbeddingsInput::Many(v) => v,
        },
        dims: req.dimensions.unwrap_or(DEFAULT_DIMS).min(65536),
    })
}

pub fn embeddings_body(e: &Embeddings<'_>, out: &mut Vec<u8>) {
    let inputs: Vec<&str> = e.inputs.iter().map(|s| s.as_ref()).collect();
    m::embeddings(out, &e.model, &inputs, e.dims);
}

fn finish_reason(g: &Generation<'_>) -> &'static str {
    match g.stop {
        super::answer::Stop::End => "stop",
        super::answer::Stop::Length => "length",
        super::answer::Stop::Tool => "tool_calls",
    }
}

/// `{"id":..,"object":..,"created":..,"model":..` (object left open).
fn header(out: &mut Vec<u8>, id: &str, object: &str, g: &Generation<'_>) {
    out.extend_from_slice(b"{\"id\":");
    json_str(out, id);
    out.extend_from_slice(b",\"object\":\"");
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(b"\",\"created\":");
    num(out, g.created);
    out.extend_from_slice(b",\"model\":");
    json_str(out, &g.model);
}

/// The `tool_calls` array of a non-streaming message.
fn tool_calls(out: &mut Vec<u8>, name: &str) {
    let mut args = String::new();
    tools::arguments(&mut args);
    out.extend_from_slice(
        b"[{\"id\":\"call_mock_0\",\"type\":\"function\",\"function\":{\"name\":",
    );
    json_str(out, name);
    out.extend_from_slice(b",\"arguments\":");
    json_str(out, &args);
    out.extend_from_slice(b"}}]");
}

/// Non-streaming chat completion.
pub fn chat_body(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    let Some(name) = &g.tool else {
        m::chat_completion(
            out,
            id,
            &g.model,
            g.created,
            g.prompt_tokens,
            g.tokens,
            finish_reason(g),
        );
        return;
    };
    header(out, id, "chat.completion", g);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":",
    );
    tool_calls(out, name);
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],");
    usage(out, g.prompt_tokens, g.output_tokens() as u64);
    out.push(b'}');
}

fn usage(out: &mut Vec<u8>, prompt: u64, completion: u64) {
    out.extend_from_slice(b"\"usage\":{\"prompt_tokens\":");
    num(out, prompt);
    out.extend_from_slice(b",\"completion_tokens\":");
    num(out, completion);
    out.extend_from_slice(b",\"total_tokens\":");
    num(out, prompt + completion);
    out.push(b'}');
}

/// Non-streaming legacy completion (text only: legacy completions have no
/// tools).
pub fn legacy_body(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    m::completion(
        out,
        id,
        &g.model,
        g.created,
        g.prompt_tokens,
        g.output_tokens(),
        finish_reason(g),
    );
}

/// A chat chunk whose delta is `delta` (raw JSON).
fn chat_delta_event(
    out: &mut Vec<u8>,
    g: &Generation<'_>,
    id: &str,
    delta: impl FnOnce(&mut Vec<u8>),
) {
    data_event(out, |out| {
        header(out, id, "chat.completion.chunk", g);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
        delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":null}]");
        if g.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.push(b'}');
    });
}

/// Chat stream: the role chunk, and for a tool call the chunk naming it.
pub fn chat_open(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    m::chat_chunk_event(
        out,
        id,
        &g.model,
        g.created,
        ChunkKind::Role,
        g.include_usage,
    );
    if let Some(name) = &g.tool {
        chat_delta_event(out, g, id, |out| {
            out.extend_from_slice(
                b"{\"tool_calls\":[{\"index\":0,\"id\":\"call_mock_0\",\"type\":\"function\",\"function\":{\"name\":",
            );
            json_str(out, name);
            out.extend_from_slice(b",\"arguments\":\"\"}}]}");
        });
    }
}

/// Chat stream: content token i, or argument fragment i.
pub fn chat_piece(g: &Generation<'_>, id: &str, i: usize, out: &mut Vec<u8>) {
    if g.tool.is_some() {
        chat_delta_event(out, g, id, |out| {
            out.extend_from_slice(b"{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":");
            json_str(out, tools::fragment(i));
            out.extend_from_slice(b"}}]}");
        });
    } else {
        let kind = ChunkKind::Content(m::token(i));
        m::chat_chunk_event(out, id, &g.model, g.created, kind, g.include_usage);
    }
}

/// Chat stream: finish chunk, usage chunk when asked, `[DONE]`.
pub fn chat_close(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    let finish = ChunkKind::Finish(finish_reason(g));
    m::chat_chunk_event(out, id, &g.model, g.created, finish, g.include_usage);
    if g.include_usage {
        let usage = ChunkKind::Usage {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.output_tokens() as u64,
        };
        m::chat_chunk_event(out, id, &g.model, g.created, usage, true);
    }
    out.extend_from_slice(m::DONE_EVENT);
}

pub fn legacy_piece(g: &Generation<'_>, id: &str, i: usize, out: &mut Vec<u8>) {
    m::completion_chunk_event(out, id, &g.model, g.created, m::token(i), None);
}

pub fn legacy_close(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    m::completion_chunk_event(out, id, &g.model, g.created, "", Some(finish_reason(g)));
    out.extend_from_slice(m::DONE_EVENT);
}

/// `{"error":{"message":..,"type":..,"param":null,"code":..}}`, keys in
/// OpenAI's order.
pub fn error_body(out: &mut Vec<u8>, status: u16, message: &str, cause: ErrorCause) {
    let (kind, code) = match cause {
        ErrorCause::Auth => ("invalid_request_error", Some("invalid_api_key")),
        ErrorCause::Request => ("invalid_request_error", None),
        ErrorCause::ContextLength => ("invalid_request_error", Some("context_length_exceeded")),
        ErrorCause::Injected => match status {
            429 => ("rate_limit_error", Some("rate_limit_exceeded")),
            400..=499 => ("invalid_request_error", Some("mock_error")),
            503 => ("server_error", Some("overloaded")),
            _ => ("server_error", Some("server_error")),
        },
    };
    out.extend_from_slice(b"{\"error\":{\"message\":");
    json_str(out, message);
    out.extend_from_slice(b",\"type\":");
    json_str(out, kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    match code {
        Some(c) => json_str(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
}
