//! The Bedrock Converse dialect: `POST /model/{modelId}/converse` (JSON) and
//! `/converse-stream` (`application/vnd.amazon.eventstream` frames built by
//! `shardgate_providers::eventstream::encode`, each with `:event-type`,
//! `:content-type: application/json` and `:message-type: event`); errors as
//! `{"message":..}` with an `x-amzn-ErrorType` header. The model id comes
//! from the path, percent-decoded.

use super::answer::{Facts, Generation, Stop};
use super::tools::{self, ToolOffer};
use super::wire::{json_str, num};
use serde::de::IgnoredAny;
use serde::Deserialize;
use shardgate_proto::mock as m;
use shardgate_providers::eventstream;
use std::borrow::Cow;

/// Id of the mock's tool call.
pub const TOOL_ID: &str = "tooluse_mock_0";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseRequest<'a> {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    inference_config: Option<InferenceConfig>,
    #[serde(borrow, default)]
    tool_config: Option<ToolConfig<'a>>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Vec<Block>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Block {
    #[serde(default)]
    tool_result: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    #[serde(default)]
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ToolConfig<'a> {
    #[serde(borrow, default)]
    tools: Vec<Tool<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tool<'a> {
    #[serde(borrow, default)]
    tool_spec: Option<Named<'a>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

pub fn facts(body: &[u8], stream: bool) -> Result<Facts<'_>, &'static str> {
    let req: ConverseRequest<'_> = serde_json::from_slice(body)
        .map_err(|_| "Malformed input request, please reformat your input and try again.")?;
    let tools = ToolOffer {
        first: req
            .tool_config
            .and_then(|c| c.tools.into_iter().find_map(|t| t.tool_spec))
            .map(|t| t.name),
        // Converse has no "none" tool choice.
        choice_none: false,
        last_is_result: req
            .messages
            .as_ref()
            .and_then(|m| m.last())
            .is_some_and(|m| m.content.iter().any(|b| b.tool_result.is_some())),
    };
    Ok(Facts {
        model: None,
        stream,
        max_tokens: req.inference_config.and_then(|c| c.max_tokens),
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

fn usage(out: &mut Vec<u8>, g: &Generation<'_>) {
    let output = g.output_tokens() as u64;
    out.extend_from_slice(b"{\"inputTokens\":");
    num(out, g.prompt_tokens);
    out.extend_from_slice(b",\"outputTokens\":");
    num(out, output);
    out.extend_from_slice(b",\"totalTokens\":");
    num(out, g.prompt_tokens + output);
    out.push(b'}');
}

fn tool_use(out: &mut Vec<u8>, name: &str, with_input: bool) {
    out.extend_from_slice(b"{\"toolUseId\":\"");
    out.extend_from_slice(TOOL_ID.as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    json_str(out, name);
    if with_input {
        out.extend_from_slice(b",\"input\":");
        let mut args = String::new();
        tools::arguments(&mut args);
        out.extend_from_slice(args.as_bytes());
    }
    out.push(b'}');
}

pub fn body(g: &Generation<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"output\":{\"message\":{\"role\":\"assistant\",\"content\":[");
    match &g.tool {
        Some(name) => {
            out.extend_from_slice(b"{\"toolUse\":");
            tool_use(out, name, true);
            out.push(b'}');
        }
        None => {
            let mut text = String::new();
            m::text(g.tokens, &mut text);
            out.extend_from_slice(b"{\"text\":");
            json_str(out, &text);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]}},\"stopReason\":\"");
    out.extend_from_slice(stop_reason(g).as_bytes());
    out.extend_from_slice(b"\",\"usage\":");
    usage(out, g);
    out.extend_from_slice(b",\"metrics\":{\"latencyMs\":");
    num(out, g.latency_ms());
    out.extend_from_slice(b"}}");
}

/// One event-stream frame of `event_type` whose payload `payload` writes.
fn event(out: &mut Vec<u8>, event_type: &str, payload: impl FnOnce(&mut Vec<u8>)) {
    let mut p = Vec::with_capacity(128);
    payload(&mut p);
    out.extend_from_slice(&eventstream::encode(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        &p,
    ));
}

/// `messageStart`, and `contentBlockStart` naming the tool for a call.
pub fn open(g: &Generation<'_>, out: &mut Vec<u8>) {
    event(out, "messageStart", |p| {
        p.extend_from_slice(b"{\"role\":\"assistant\"}")
    });
    if let Some(name) = &g.tool {
        event(out, "contentBlockStart", |p| {
            p.extend_from_slice(b"{\"contentBlockIndex\":0,\"start\":{\"toolUse\":");
            tool_use(p, name, false);
            p.extend_from_slice(b"}}");
        });
    }
}

/// `contentBlockDelta` with token i, or with input fragment i.
pub fn piece(g: &Generation<'_>, i: usize, out: &mut Vec<u8>) {
    event(out, "contentBlockDelta", |p| {
        p.extend_from_slice(b"{\"contentBlockIndex\":0,\"delta\":");
        if g.tool.is_some() {
            p.extend_from_slice(b"{\"toolUse\":{\"input\":");
            json_str(p, tools::fragment(i));
            p.push(b'}');
        } else {
            p.extend_from_slice(b"{\"text\":");
            json_str(p, m::token(i));
        }
        p.extend_from_slice(b"}}");
    });
}

/// `contentBlockStop`, `messageStop`, `metadata` (usage, latency).
pub fn close(g: &Generation<'_>, elapsed_ms: u64, out: &mut Vec<u8>) {
    event(out, "contentBlockStop", |p| {
        p.extend_from_slice(b"{\"contentBlockIndex\":0}")
    });
    event(out, "messageStop", |p| {
        p.extend_from_slice(b"{\"stopReason\":\"");
        p.extend_from_slice(stop_reason(g).as_bytes());
        p.extend_from_slice(b"\"}");
    });
    event(out, "metadata", |p| {
        p.extend_from_slice(b"{\"usage\":");
        usage(p, g);
        p.extend_from_slice(b",\"metrics\":{\"latencyMs\":");
        num(p, elapsed_ms);
        p.extend_from_slice(b"}}");
    });
}

/// The exception name Bedrock sends for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 411 | 413 | 431 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 | 405 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// `{"message":..}`; returns the `x-amzn-ErrorType` header.
pub fn error_body(out: &mut Vec<u8>, status: u16, message: &str) -> (&'static str, &'static str) {
    out.extend_from_slice(b"{\"message\":");
    json_str(out, message);
    out.push(b'}');
    ("x-amzn-errortype", error_type(status))
}
