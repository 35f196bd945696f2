//! The Anthropic Messages dialect: `POST /v1/messages`, streaming as
//! `message_start`, `content_block_start`, `ping`, `content_block_delta`s,
//! `content_block_stop`, `message_delta` (stop reason, output tokens),
//! `message_stop`; errors as `{"type":"error","error":{"type","message"}}`.

use super::answer::{Facts, Generation, Stop};
use super::tools::{self, ToolOffer};
use super::wire::{json_str, named_event, num};
use serde::de::IgnoredAny;
use serde::Deserialize;
use shardgate_proto::mock as m;
use std::borrow::Cow;

/// Id of the mock's tool call.
pub const TOOL_ID: &str = "toolu_mock_0";

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(borrow, default)]
    tools: Option<Vec<Named<'a>>>,
    #[serde(borrow, default)]
    tool_choice: Option<Typed<'a>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Typed<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Blocks(#[serde(borrow)] Vec<Typed<'a>>),
    Text(IgnoredAny),
}

pub fn facts(body: &[u8]) -> Result<Facts<'_>, &'static str> {
    let req: MessagesRequest<'_> =
        serde_json::from_slice(body).map_err(|_| "invalid JSON request body")?;
    let last_is_result = match req.messages.as_ref().and_then(|m| m.last()) {
        Some(Message {
            content: Some(Content::Blocks(blocks)),
        }) => blocks.iter().any(|b| b.kind == "tool_result"),
        _ => false,
    };
    let tools = ToolOffer {
        first: req.tools.and_then(|t| t.into_iter().next()).map(|t| t.name),
        choice_none: req.tool_choice.is_some_and(|c| c.kind == "none"),
        last_is_result,
    };
    Ok(Facts {
        model: req.model,
        stream: req.stream.unwrap_or(false),
        max_tokens: req.max_tokens,
        include_usage: true,
        tool: tools.decide(),
    })
}

fn stop_reason(g: &Generation<'_>) -> &'static str {
    match g.stop {
        Stop::End => "end_turn",
        Stop::Length => "max_tokens",
        Stop::Tool => "tool_use",
    }
}

/// `{"input_tokens":N,"output_tokens":M,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}`
fn usage(out: &mut Vec<u8>, input: u64, output: u64) {
    out.extend_from_slice(b"{\"input_tokens\":");
    num(out, input);
    out.extend_from_slice(b",\"output_tokens\":");
    num(out, output);
    out.extend_from_slice(b",\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}");
}

/// The message object up to and excluding `content`.
fn message_head(out: &mut Vec<u8>, g: &Generation<'_>, id: &str) {
    out.extend_from_slice(b"{\"id\":");
    json_str(out, id);
    out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    json_str(out, &g.model);
}

pub fn body(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    message_head(out, g, id);
    out.extend_from_slice(b",\"content\":[");
    match &g.tool {
        Some(name) => {
            out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":\"");
            out.extend_from_slice(TOOL_ID.as_bytes());
            out.extend_from_slice(b"\",\"name\":");
            json_str(out, name);
            out.extend_from_slice(b",\"input\":");
            let mut args = String::new();
            tools::arguments(&mut args);
            out.extend_from_slice(args.as_bytes());
            out.push(b'}');
        }
        None => {
            let mut text = String::new();
            m::text(g.tokens, &mut text);
            out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
            json_str(out, &text);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"],\"stop_reason\":\"");
    out.extend_from_slice(stop_reason(g).as_bytes());
    out.extend_from_slice(b"\",\"stop_sequence\":null,\"usage\":");
    usage(out, g.prompt_tokens, g.output_tokens() as u64);
    out.push(b'}');
}

/// `message_start` (output tokens 1, as Anthropic sends), the content
/// block's start and a `ping`.
pub fn open(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    named_event(out, "message_start", |out| {
        out.extend_from_slice(b"{\"type\":\"message_start\",\"message\":");
        message_head(out, g, id);
        out.extend_from_slice(
            b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":",
        );
        usage(out, g.prompt_tokens, 1);
        out.extend_from_slice(b"}}");
    });
    named_event(out, "content_block_start", |out| {
        out.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":");
        match &g.tool {
            Some(name) => {
                out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":\"");
                out.extend_from_slice(TOOL_ID.as_bytes());
                out.extend_from_slice(b"\",\"name\":");
                json_str(out, name);
                out.extend_from_slice(b",\"input\":{}}");
            }
            None => out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"\"}"),
        }
        out.push(b'}');
    });
    named_event(out, "ping", |out| {
        out.extend_from_slice(b"{\"type\":\"ping\"}")
    });
}

/// A `text_delta` with token i, or an `input_json_delta` with fragment i.
pub fn piece(g: &Generation<'_>, i: usize, out: &mut Vec<u8>) {
    named_event(out, "content_block_delta", |out| {
        out.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":");
        if g.tool.is_some() {
            out.extend_from_slice(b"{\"type\":\"input_json_delta\",\"partial_json\":");
            json_str(out, tools::fragment(i));
        } else {
            out.extend_from_slice(b"{\"type\":\"text_delta\",\"text\":");
            json_str(out, m::token(i));
        }
        out.extend_from_slice(b"}}");
    });
}

/// `content_block_stop`, `message_delta`, `message_stop`.
pub fn close(g: &Generation<'_>, out: &mut Vec<u8>) {
    named_event(out, "content_block_stop", |out| {
        out.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":0}");
    });
    named_event(out, "message_delta", |out| {
        out.extend_from_slice(b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
        out.extend_from_slice(stop_reason(g).as_bytes());
        out.extend_from_slice(b"\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":");
        num(out, g.output_tokens() as u64);
        out.extend_from_slice(b"}}");
    });
    named_event(out, "message_stop", |out| {
        out.extend_from_slice(b"{\"type\":\"message_stop\"}");
    });
}

/// `{"type":"error","error":{"type":..,"message":..}}`.
pub fn error_body(out: &mut Vec<u8>, status: u16, message: &str) {
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":\"");
    out.extend_from_slice(shardgate_providers::anthropic::anthropic_error_type(status).as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    json_str(out, message);
    out.extend_from_slice(b"}}");
}
