//! OpenAI's Responses dialect: `POST /v1/responses`, streaming as
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! (for text) `response.content_part.added`, one `response.output_text.delta`
//! or `response.function_call_arguments.delta` per piece, the item's
//! `.done` events, then `response.completed` (or `response.incomplete`)
//! with the usage; errors in OpenAI's shape.

use super::answer::{Facts, Generation, Stop};
use super::tools::{self, ToolOffer};
use super::wire::{json_str, named_event, num};
use serde::Deserialize;
use shardgate_proto::mock as m;
use std::borrow::Cow;

/// Call id of the mock's function call.
pub const CALL_ID: &str = "call_mock_0";

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(borrow, default)]
    tools: Option<Vec<Named<'a>>>,
    #[serde(default)]
    tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

pub fn facts(body: &[u8]) -> Result<Facts<'_>, &'static str> {
    let req: ResponsesRequest<'_> =
        serde_json::from_slice(body).map_err(|_| "invalid JSON request body")?;
    let last_is_result = req
        .input
        .as_ref()
        .and_then(|i| i.as_array())
        .and_then(|items| items.last())
        .and_then(|last| last.get("type"))
        .is_some_and(|t| t == "function_call_output");
    let tools = ToolOffer {
        first: req
            .tools
            .and_then(|t| t.into_iter().next())
            .and_then(|t| t.name),
        choice_none: req.tool_choice.as_ref().is_some_and(|c| c == "none"),
        last_is_result,
    };
    Ok(Facts {
        model: req.model,
        stream: req.stream.unwrap_or(false),
        max_tokens: req.max_output_tokens,
        include_usage: true,
        tool: tools.decide(),
    })
}

fn item_id(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    out.extend_from_slice(if g.tool.is_some() { b"fc_" } else { b"msg_" });
    out.extend_from_slice(id.as_bytes());
    out.push(b'"');
}

fn text_of(g: &Generation<'_>) -> String {
    let mut text = String::new();
    m::text(g.tokens, &mut text);
    text
}

/// The output item, complete (`done`) or as first added.
fn item(g: &Generation<'_>, id: &str, done: bool, out: &mut Vec<u8>) {
    let status: &[u8] = if done { b"completed" } else { b"in_progress" };
    match &g.tool {
        Some(name) => {
            out.extend_from_slice(b"{\"type\":\"function_call\",\"id\":");
            item_id(g, id, out);
            out.extend_from_slice(b",\"call_id\":\"");
            out.extend_from_slice(CALL_ID.as_bytes());
            out.extend_from_slice(b"\",\"name\":");
            json_str(out, name);
            out.extend_from_slice(b",\"arguments\":");
            let mut args = String::new();
            if done {
                tools::arguments(&mut args);
            }
            json_str(out, &args);
        }
        None => {
            out.extend_from_slice(b"{\"type\":\"message\",\"id\":");
            item_id(g, id, out);
            out.extend_from_slice(b",\"role\":\"assistant\",\"content\":[");
            if done {
                out.extend_from_slice(b"{\"type\":\"output_text\",\"annotations\":[],\"text\":");
                json_str(out, &text_of(g));
                out.push(b'}');
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status);
    out.extend_from_slice(b"\"}");
}

/// The `response` object: in progress (no output, no usage) or finished.
fn response(g: &Generation<'_>, id: &str, done: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":\"resp_");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",\"object\":\"response\",\"created_at\":");
    num(out, g.created);
    out.extend_from_slice(b",\"model\":");
    json_str(out, &g.model);
    let status: &[u8] = match (done, g.stop) {
        (false, _) => b"in_progress",
        (true, Stop::Length) => b"incomplete",
        (true, _) => b"completed",
    };
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status);
    out.extend_from_slice(b"\",\"error\":null,\"incomplete_details\":");
    if done && g.stop == Stop::Length {
        out.extend_from_slice(b"{\"reason\":\"max_output_tokens\"}");
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"output\":[");
    if done {
        item(g, id, true, out);
    }
    out.extend_from_slice(
        b"],\"parallel_tool_calls\":true,\"tool_choice\":\"auto\",\"tools\":[],\"usage\":",
    );
    if done {
        out.extend_from_slice(b"{\"input_tokens\":");
        num(out, g.prompt_tokens);
        out.extend_from_slice(
            b",\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":",
        );
        num(out, g.output_tokens() as u64);
        out.extend_from_slice(
            b",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":",
        );
        num(out, g.prompt_tokens + g.output_tokens() as u64);
        out.push(b'}');
    } else {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
}

pub fn body(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    response(g, id, true, out);
}

/// Each event carries its type and `sequence_number`; the opening ones
/// are numbered 0 to 3 (2 for a call), pieces from there.
fn event(out: &mut Vec<u8>, kind: &str, seq: usize, rest: impl FnOnce(&mut Vec<u8>)) {
    named_event(out, kind, |out| {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"sequence_number\":");
        num(out, seq as u64);
        rest(out);
        out.push(b'}');
    });
}

fn opening(g: &Generation<'_>) -> usize {
    if g.tool.is_some() {
        3
    } else {
        4
    }
}

pub fn open(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    for (seq, kind) in ["response.created", "response.in_progress"]
        .into_iter()
        .enumerate()
    {
        event(out, kind, seq, |out| {
            out.extend_from_slice(b",\"response\":");
            response(g, id, false, out);
        });
    }
    event(out, "response.output_item.added", 2, |out| {
        out.extend_from_slice(b",\"output_index\":0,\"item\":");
        item(g, id, false, out);
    });
    if g.tool.is_none() {
        event(out, "response.content_part.added", 3, |out| {
            out.extend_from_slice(b",\"item_id\":");
            item_id(g, id, out);
            out.extend_from_slice(
                b",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],\"text\":\"\"}",
            );
        });
    }
}

pub fn piece(g: &Generation<'_>, id: &str, i: usize, out: &mut Vec<u8>) {
    let seq = opening(g) + i;
    if g.tool.is_some() {
        event(out, "response.function_call_arguments.delta", seq, |out| {
            out.extend_from_slice(b",\"item_id\":");
            item_id(g, id, out);
            out.extend_from_slice(b",\"output_index\":0,\"delta\":");
            json_str(out, tools::fragment(i));
        });
    } else {
        event(out, "response.output_text.delta", seq, |out| {
            out.extend_from_slice(b",\"item_id\":");
            item_id(g, id, out);
            out.extend_from_slice(b",\"output_index\":0,\"content_index\":0,\"delta\":");
            json_str(out, m::token(i));
            out.extend_from_slice(b",\"logprobs\":[]");
        });
    }
}

pub fn close(g: &Generation<'_>, id: &str, out: &mut Vec<u8>) {
    let mut seq = opening(g) + g.pieces();
    let mut next = || {
        seq += 1;
        seq - 1
    };
    match &g.tool {
        Some(name) => {
            event(
                out,
                "response.function_call_arguments.done",
                next(),
                |out| {
                    out.extend_from_slice(b",\"item_id\":");
                    item_id(g, id, out);
                    out.extend_from_slice(b",\"output_index\":0,\"name\":");
                    json_str(out, name);
                    out.extend_from_slice(b",\"arguments\":");
                    let mut args = String::new();
                    tools::arguments(&mut args);
                    json_str(out, &args);
                },
            );
        }
        None => {
            let text = text_of(g);
            event(out, "response.output_text.done", next(), |out| {
                out.extend_from_slice(b",\"item_id\":");
                item_id(g, id, out);
                out.extend_from_slice(b",\"output_index\":0,\"content_index\":0,\"text\":");
                json_str(out, &text);
            });
            event(out, "response.content_part.done", next(), |out| {
                out.extend_from_slice(b",\"item_id\":");
                item_id(g, id, out);
                out.extend_from_slice(
                    b",\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"annotations\":[],\"text\":",
                );
                json_str(out, &text);
                out.push(b'}');
            });
        }
    }
    event(out, "response.output_item.done", next(), |out| {
        out.extend_from_slice(b",\"output_index\":0,\"item\":");
        item(g, id, true, out);
    });
    let kind = if g.stop == Stop::Length {
        "response.incomplete"
    } else {
        "response.completed"
    };
    event(out, kind, next(), |out| {
        out.extend_from_slice(b",\"response\":");
        response(g, id, true, out);
    });
}
