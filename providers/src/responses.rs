//! OpenAI's Responses API (`POST /v1/responses`) in front of upstreams that
//! speak chat: the request's items become chat messages, a chat answer
//! becomes a `response` object, and a chat stream becomes the Responses
//! event sequence (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`,
//! ..., `response.completed`), numbered by `sequence_number`.
//!
//! Every other provider already translates from chat, so one translation
//! here serves them all. Items chat cannot carry are refused by name
//! (hosted tools, item references).
//!
//! Reasoning: `reasoning.effort` asks a Claude upstream for extended
//! thinking, and each thinking block comes back as a `reasoning` item, its
//! thinking as the summary text (streamed as
//! `response.reasoning_summary_text.delta`) and its signature in
//! `encrypted_content`, marked as Claude's ([`THINKING`],
//! [`REDACTED_THINKING`]). Sent back as input, such items become the
//! signed blocks again, so a tool-using turn continues with its thinking.
//! Reasoning items from elsewhere (OpenAI's own) mean nothing to another
//! provider and are dropped.

use crate::chat::{
    self, ChatChunk, ChatRequest, ChatResponse, ChatUsage, Content, ContentPart, FunctionCall,
    FunctionDef, ImageUrl, Message, NamedToolChoice, Role, StreamOptions, ThinkingBlock, Tool,
    ToolCall, ToolChoice, ToolName,
};
use crate::{upstream_json, Summary, TranslateError, Usage, MAX_EVENT_BYTES};
use serde_json::{json, Map, Value};
use shardgate_proto::sse::{write_event, SseEvent, SseFramer};

/// What every `response` object of one answer shares: its id, model and
/// time, and the request fields a response echoes (`instructions`,
/// `tools`, `text`, `previous_response_id`, ...).
#[derive(Debug, Clone)]
pub struct ResponseCtx {
    pub id: String,
    pub model: String,
    pub created_at: u64,
    pub echo: Map<String, Value>,
}

/// The request fields a `response` echoes, with the API's defaults.
pub fn echo_fields(req: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    let get = |k: &str| req.get(k).cloned().unwrap_or(Value::Null);
    for k in [
        "instructions",
        "max_output_tokens",
        "previous_response_id",
        "temperature",
        "top_p",
        "user",
        "reasoning",
        "prompt_cache_key",
    ] {
        m.insert(k.to_owned(), get(k));
    }
    m.insert(
        "metadata".into(),
        req.get("metadata").cloned().unwrap_or_else(|| json!({})),
    );
    m.insert(
        "tools".into(),
        req.get("tools").cloned().unwrap_or_else(|| json!([])),
    );
    m.insert(
        "tool_choice".into(),
        req.get("tool_choice")
            .cloned()
            .unwrap_or_else(|| json!("auto")),
    );
    m.insert(
        "parallel_tool_calls".into(),
        req.get("parallel_tool_calls")
            .cloned()
            .unwrap_or(Value::Bool(true)),
    );
    m.insert(
        "text".into(),
        req.get("text")
            .cloned()
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
    );
    m.insert(
        "store".into(),
        req.get("store").cloned().unwrap_or(Value::Bool(true)),
    );
    m.insert("truncation".into(), json!("disabled"));
    m
}

fn invalid(msg: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(msg.into())
}

/// The request's `input` as items (a string is one user message).
pub fn input_items(req: &Value) -> Result<Vec<Value>, TranslateError> {
    match req.get("input") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![
            json!({"type": "message", "role": "user", "content": s}),
        ]),
        Some(Value::Array(items)) => Ok(items.clone()),
        Some(_) => Err(invalid("`input` must be a string or an array of items")),
    }
}

/// A chat request for a Responses request: `prior` are the items of the
/// turns before it (a stored conversation), then its own `input`.
pub fn to_chat(req: &Value, prior: &[Value]) -> Result<ChatRequest, TranslateError> {
    let obj = req
        .as_object()
        .ok_or_else(|| invalid("the request body must be a JSON object"))?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`model` is required"))?
        .to_owned();
    let mut messages = Vec::new();
    match obj.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message::text(Role::System, s.clone())),
        Some(_) => return Err(invalid("`instructions` must be a string")),
    }
    let own = input_items(req)?;
    for (i, item) in prior.iter().chain(own.iter()).enumerate() {
        push_item(&mut messages, item).map_err(|e| match e {
            TranslateError::Invalid(m) => invalid(format!("input[{i}]: {m}")),
            e => e,
        })?;
    }
    if messages.is_empty() {
        return Err(invalid("`input` is empty"));
    }
    let tools = match obj.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(ts)) if ts.is_empty() => None,
        Some(Value::Array(ts)) => Some(
            ts.iter()
                .enumerate()
                .map(|(i, t)| tool(i, t))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(invalid("`tools` must be an array")),
    };
    let tool_choice = match obj.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(ToolChoice::Mode(m.clone())),
        Some(v) => match (
            v.get("type").and_then(Value::as_str),
            v.get("name").and_then(Value::as_str),
        ) {
            (Some("function"), Some(name)) => Some(ToolChoice::Named(NamedToolChoice {
                kind: "function".into(),
                function: ToolName {
                    name: name.to_owned(),
                },
            })),
            _ => {
                return Err(invalid(
                    "`tool_choice` must be a mode or {\"type\":\"function\",\"name\":...}",
                ))
            }
        },
    };
    let response_format = match obj.get("text").and_then(|t| t.get("format")) {
        None | Some(Value::Null) => None,
        Some(f) => match f.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(json!({"type": "json_object"})),
            Some("json_schema") => {
                let mut schema = Map::new();
                for k in ["name", "schema", "strict", "description"] {
                    if let Some(v) = f.get(k) {
                        schema.insert(k.to_owned(), v.clone());
                    }
                }
                Some(json!({"type": "json_schema", "json_schema": schema}))
            }
            _ => {
                return Err(invalid(
                    "`text.format.type` must be text, json_object or json_schema",
                ))
            }
        },
    };
    let num = |k: &str| obj.get(k).and_then(Value::as_f64);
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let max_output_tokens = obj.get("max_output_tokens").and_then(Value::as_u64);
    let thinking = thinking_for(obj.get("reasoning"), max_output_tokens)?;
    Ok(ChatRequest {
        model,
        messages,
        max_tokens: None,
        max_completion_tokens: max_output_tokens,
        temperature: num("temperature"),
        top_p: num("top_p"),
        stop: None,
        stream: stream.then_some(true),
        stream_options: stream.then_some(StreamOptions {
            include_usage: Some(true),
        }),
        tools,
        tool_choice,
        parallel_tool_calls: obj.get("parallel_tool_calls").and_then(Value::as_bool),
        user: obj
            .get("user")
            .or_else(|| obj.get("safety_identifier"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        n: None,
        seed: None,
        presence_penalty: None,
        frequency_penalty: None,
        response_format,
        thinking,
    })
}

/// Prefixes of a `reasoning` item's `encrypted_content` that carry a
/// Claude thinking block's signature, or a redacted block's data.
pub const THINKING: &str = "anthropic.thinking:";
pub const REDACTED_THINKING: &str = "anthropic.redacted_thinking:";

/// Claude's extended thinking for `reasoning.effort`, with the budgets
/// LiteLLM gives the same efforts (Claude takes 1,024 at least). At most
/// half of `max_output_tokens`, which must leave room for the answer: a
/// limit too small for that asks for no thinking (rather than an
/// upstream 400). `minimal` and `none` ask for none.
fn thinking_for(
    reasoning: Option<&Value>,
    max_output_tokens: Option<u64>,
) -> Result<Option<Value>, TranslateError> {
    const MIN_BUDGET: u64 = 1024;
    let effort = match reasoning {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(r)) => match r.get("effort") {
            None | Some(Value::Null) => "medium",
            Some(Value::String(e)) => e.as_str(),
            Some(_) => return Err(invalid("`reasoning.effort` must be a string")),
        },
        Some(_) => return Err(invalid("`reasoning` must be an object")),
    };
    let budget: u64 = match effort {
        "none" | "minimal" => return Ok(None),
        "low" => MIN_BUDGET,
        "medium" => 2048,
        "high" | "xhigh" => 4096,
        other => {
            return Err(invalid(format!(
                "`reasoning.effort` `{other}` is not one of none, minimal, low, medium, high"
            )))
        }
    };
    let budget = match max_output_tokens {
        Some(max) if max / 2 < MIN_BUDGET => return Ok(None),
        Some(max) => budget.min(max / 2),
        None => budget,
    };
    Ok(Some(json!({"type": "enabled", "budget_tokens": budget})))
}

/// Whether `item` is a `reasoning` item carrying one of Claude's thinking
/// blocks: meaningless to OpenAI, which cannot open its `encrypted_content`
/// and refuses the request.
pub fn is_claude_reasoning(item: &Value) -> bool {
    item.get("type").and_then(Value::as_str) == Some("reasoning") && claude_sealed(item).is_some()
}

/// An item's `encrypted_content` when it carries Claude's thinking.
fn claude_sealed(item: &Value) -> Option<&str> {
    item.get("encrypted_content")
        .and_then(Value::as_str)
        .filter(|c| c.starts_with(THINKING) || c.starts_with(REDACTED_THINKING))
}

/// A `reasoning` item as the thinking block it carries, when it carries
/// one of Claude's.
fn thinking_of_item(item: &Value) -> Option<ThinkingBlock> {
    let sealed = claude_sealed(item)?;
    if let Some(data) = sealed.strip_prefix(REDACTED_THINKING) {
        return Some(ThinkingBlock::RedactedThinking {
            data: data.to_owned(),
        });
    }
    let signature = sealed.strip_prefix(THINKING)?;
    let thinking = match item.get("summary") {
        Some(Value::Array(parts)) => parts.iter().filter_map(text_of).collect(),
        _ => String::new(),
    };
    Some(ThinkingBlock::Thinking {
        thinking,
        signature: Some(signature.to_owned()),
    })
}

/// A `reasoning` item for a thinking block; `id` by its output index.
fn reasoning_item(id: &str, block: &ThinkingBlock) -> Value {
    let (summary, sealed) = match block {
        ThinkingBlock::Thinking {
            thinking,
            signature,
        } => (
            json!([{"type": "summary_text", "text": thinking}]),
            signature.as_deref().map(|s| format!("{THINKING}{s}")),
        ),
        ThinkingBlock::RedactedThinking { data } => {
            (json!([]), Some(format!("{REDACTED_THINKING}{data}")))
        }
    };
    let mut item = json!({"type": "reasoning", "id": id, "summary": summary});
    if let Some(sealed) = sealed {
        item["encrypted_content"] = json!(sealed);
    }
    item
}

fn tool(i: usize, t: &Value) -> Result<Tool, TranslateError> {
    match t.get("type").and_then(Value::as_str) {
        Some("function") => {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("tools[{i}].name is required")))?;
            Ok(Tool {
                kind: "function".into(),
                function: Some(FunctionDef {
                    name: name.to_owned(),
                    description: t.get("description").and_then(Value::as_str).map(str::to_owned),
                    parameters: t.get("parameters").cloned().filter(|p| !p.is_null()),
                    strict: t.get("strict").and_then(Value::as_bool),
                }),
                cache_control: None,
            })
        }
        Some(other) => Err(TranslateError::Invalid(format!(
            "tools[{i}]: the `{other}` tool is not available through this provider (function tools are)"
        ))),
        None => Err(invalid(format!("tools[{i}].type is required"))),
    }
}

/// An assistant message holding thinking and nothing yet: the turn the
/// next assistant items belong to.
fn thinking_only(m: &Message) -> bool {
    m.role == Role::Assistant
        && m.thinking_blocks.is_some()
        && m.content.is_none()
        && m.tool_calls.is_none()
}

fn text_of(v: &Value) -> Option<&str> {
    v.get("text").and_then(Value::as_str)
}

/// Appends one input item as chat messages.
fn push_item(messages: &mut Vec<Message>, item: &Value) -> Result<(), TranslateError> {
    let kind = item.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                Some("developer") => Role::Developer,
                _ => {
                    return Err(invalid(
                        "a message needs a role: user, assistant, system or developer",
                    ))
                }
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Content::Text(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut out = Vec::with_capacity(parts.len());
                    for p in parts {
                        out.push(match p.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text" | "text") => ContentPart::Text {
                                text: text_of(p).unwrap_or_default().to_owned(),
                                cache_control: None,
                            },
                            Some("refusal") => ContentPart::Text {
                                text: p.get("refusal").and_then(Value::as_str).unwrap_or_default().to_owned(),
                                cache_control: None,
                            },
                            Some("input_image") => {
                                let url = match p.get("image_url") {
                                    Some(Value::String(u)) => u.clone(),
                                    Some(v) => v.get("url").and_then(Value::as_str).unwrap_or_default().to_owned(),
                                    None => return Err(invalid("input_image needs an image_url (file ids are not available through this provider)")),
                                };
                                ContentPart::ImageUrl {
                                    image_url: ImageUrl {
                                        url,
                                        detail: p.get("detail").and_then(Value::as_str).map(str::to_owned),
                                    },
                                }
                            }
                            Some(other) => {
                                return Err(TranslateError::Invalid(format!(
                                    "content part `{other}` is not available through this provider"
                                )))
                            }
                            None => return Err(invalid("a content part needs a type")),
                        });
                    }
                    // Assistant turns are plain text in chat.
                    if role == Role::Assistant {
                        Content::Text(
                            out.iter()
                                .filter_map(|p| match p {
                                    ContentPart::Text { text, .. } => Some(text.as_str()),
                                    _ => None,
                                })
                                .collect(),
                        )
                    } else {
                        Content::Parts(out)
                    }
                }
                _ => {
                    return Err(invalid(
                        "a message's content must be a string or an array of parts",
                    ))
                }
            };
            // An answer's text joins the thinking that preceded it.
            match messages.last_mut() {
                Some(m) if role == Role::Assistant && thinking_only(m) => m.content = Some(content),
                _ => messages.push(Message {
                    role,
                    content: Some(content),
                    name: None,
                    tool_calls: None,
                    tool_call_id: None,
                    thinking_blocks: None,
                }),
            }
        }
        Some("function_call") => {
            let field = |k: &str| {
                item.get(k)
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::Invalid(format!("a function_call needs `{k}`")))
            };
            let call = ToolCall {
                id: field("call_id")?.to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: field("name")?.to_owned(),
                    arguments: field("arguments")?.to_owned(),
                },
            };
            // Calls of one turn share the assistant message that made them.
            match messages.last_mut() {
                Some(m) if m.role == Role::Assistant && m.tool_call_id.is_none() => {
                    m.tool_calls.get_or_insert_with(Vec::new).push(call)
                }
                _ => messages.push(Message {
                    role: Role::Assistant,
                    content: None,
                    name: None,
                    tool_calls: Some(vec![call]),
                    tool_call_id: None,
                    thinking_blocks: None,
                }),
            }
        }
        Some("function_call_output") => {
            let call_id = item
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a function_call_output needs `call_id`"))?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts.iter().filter_map(text_of).collect(),
                _ => return Err(invalid("a function_call_output needs `output`")),
            };
            messages.push(Message {
                role: Role::Tool,
                content: Some(Content::Text(output)),
                name: None,
                tool_calls: None,
                tool_call_id: Some(call_id.to_owned()),
                thinking_blocks: None,
            });
        }
        // Claude's thinking starts (or continues) the assistant turn it
        // preceded; other reasoning is dropped (see the module).
        Some("reasoning") => {
            if let Some(block) = thinking_of_item(item) {
                match messages.last_mut() {
                    Some(m) if thinking_only(m) => {
                        m.thinking_blocks.get_or_insert_with(Vec::new).push(block)
                    }
                    _ => messages.push(Message {
                        role: Role::Assistant,
                        content: None,
                        name: None,
                        tool_calls: None,
                        tool_call_id: None,
                        thinking_blocks: Some(vec![block]),
                    }),
                }
            }
        }
        Some(other) => {
            return Err(TranslateError::Invalid(format!(
                "items of type `{other}` are not available through this provider"
            )))
        }
    }
    Ok(())
}

/// The Responses `usage` object for chat usage (cached tokens are part of
/// `input_tokens`, reasoning tokens part of `output_tokens`, in both APIs).
pub fn usage_json(u: Option<&ChatUsage>) -> Value {
    let Some(u) = u else {
        return Value::Null;
    };
    let usage = u.to_usage();
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens.unwrap_or(0)},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens.unwrap_or(0)},
        "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens),
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// `status` and `incomplete_details` for a chat finish reason.
fn status_of(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn response_object(
    ctx: &ResponseCtx,
    status: &str,
    output: Vec<Value>,
    usage: Value,
    incomplete: Value,
) -> Value {
    let mut m = ctx.echo.clone();
    m.insert("id".into(), json!(ctx.id));
    m.insert("object".into(), json!("response"));
    m.insert("created_at".into(), json!(ctx.created_at));
    m.insert("model".into(), json!(ctx.model));
    m.insert("status".into(), json!(status));
    m.insert("error".into(), Value::Null);
    m.insert("incomplete_details".into(), incomplete);
    m.insert("output".into(), Value::Array(output));
    m.insert("usage".into(), usage);
    Value::Object(m)
}

/// The `response` object for a whole chat answer.
pub fn from_chat(chat: &ChatResponse, ctx: &ResponseCtx) -> Value {
    let mut output = Vec::new();
    let choice = chat.choices.iter().find(|c| c.index == 0);
    // Item ids as a stream of the same answer names them: by output index.
    if let Some(c) = choice {
        // Thinking without blocks (DeepSeek's and vLLM's `reasoning_content`)
        // is one unsigned item, as a stream of the same answer makes it.
        let unsigned = match (&c.message.thinking_blocks, &c.message.reasoning_content) {
            (None, Some(text)) if !text.is_empty() => Some(ThinkingBlock::Thinking {
                thinking: text.clone(),
                signature: None,
            }),
            _ => None,
        };
        for block in c.message.thinking_blocks.iter().flatten().chain(&unsigned) {
            output.push(reasoning_item(
                &format!("rs_{}_{}", ctx.id, output.len()),
                block,
            ));
        }
        if let Some(text) = c.message.content.as_deref().filter(|t| !t.is_empty()) {
            output.push(message_item(
                &format!("msg_{}_{}", ctx.id, output.len()),
                text,
                "completed",
            ));
        }
        for call in c.message.tool_calls.iter().flatten() {
            output.push(call_item(
                &format!("fc_{}_{}", ctx.id, output.len()),
                &call.id,
                &call.function.name,
                &call.function.arguments,
                "completed",
            ));
        }
    }
    let (status, incomplete) = status_of(choice.and_then(|c| c.finish_reason.as_deref()));
    response_object(
        ctx,
        status,
        output,
        usage_json(chat.usage.as_ref()),
        incomplete,
    )
}

/// The item being streamed.
#[derive(Debug)]
enum Open {
    None,
    /// A thinking block: its text so far; closed by its signature, or by
    /// the next item.
    Reasoning(ThinkingBlock),
    Message {
        text: String,
    },
    Call {
        chat_index: u32,
        call_id: String,
        name: String,
        args: String,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Open,
    Done,
    Failed,
}

/// OpenAI chat chunks in, Responses events out.
#[derive(Debug)]
pub struct ChatToResponses {
    framer: SseFramer,
    s: State,
}

#[derive(Debug)]
struct State {
    ctx: ResponseCtx,
    seq: u64,
    started: bool,
    open: Open,
    /// Items finished so far, in output order.
    output: Vec<Value>,
    finish_reason: Option<String>,
    usage: Option<ChatUsage>,
    phase: Phase,
    /// The upstream stream ended before its end.
    cut: bool,
    unknown: u64,
    sent_bytes: usize,
    /// The last `response` object: completed (or failed) when the stream
    /// ended.
    last: Option<Value>,
    /// The open item's id, once a delta has named it.
    open_id: String,
    /// The upstream's credentials, scrubbed from error messages.
    known: crate::KnownSecrets,
}

impl ChatToResponses {
    pub fn new(ctx: ResponseCtx) -> Self {
        ChatToResponses {
            framer: SseFramer::new(MAX_EVENT_BYTES),
            s: State {
                ctx,
                seq: 0,
                started: false,
                open: Open::None,
                output: Vec::new(),
                finish_reason: None,
                usage: None,
                phase: Phase::Open,
                cut: false,
                unknown: 0,
                sent_bytes: 0,
                last: None,
                open_id: String::new(),
                known: crate::KnownSecrets::default(),
            },
        }
    }

    pub fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let s = &mut self.s;
        chat::feed_sse(&mut self.framer, input, out, |ev, out| s.on_event(ev, out))
    }

    pub fn unknown_events(&self) -> u64 {
        self.s.unknown
    }

    /// Removes `known` (the upstream's credentials) from the messages of
    /// error events, besides anything shaped like a credential.
    pub fn redacting(mut self, known: crate::KnownSecrets) -> Self {
        self.s.known = known;
        self
    }

    /// The final `response` object, once the stream has ended.
    pub fn final_response(&self) -> Option<&Value> {
        self.s.last.as_ref()
    }

    /// Closes the stream (its closing events into `out`) and summarizes it.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Summary {
        self.close_stream(out);
        self.summary()
    }

    /// Writes the closing events, if the stream has not ended yet: the
    /// completion when the upstream said it finished, else an error.
    pub fn close_stream(&mut self, out: &mut Vec<u8>) {
        let _ = self.framer.finish();
        let s = &mut self.s;
        if s.phase == Phase::Open {
            if s.finish_reason.is_some() {
                s.end(out);
            } else {
                s.cut = true;
                s.fail(
                    out,
                    "upstream_cut",
                    "upstream stream ended before completion",
                );
            }
        }
    }

    pub fn summary(&self) -> Summary {
        let s = &self.s;
        let mut usage: Usage = s.usage.map(|u| u.to_usage()).unwrap_or_default();
        if s.cut {
            usage.estimated = true;
            let estimate = chat::estimate_tokens(s.sent_bytes);
            usage.output_tokens = Some(usage.output_tokens.unwrap_or(0).max(estimate));
        }
        Summary {
            usage,
            finish_reason: s.finish_reason.clone(),
            unknown_events: s.unknown,
            cut: s.cut,
        }
    }
}

impl State {
    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut body: Map<String, Value>) {
        body.insert("type".into(), json!(kind));
        body.insert("sequence_number".into(), json!(self.seq));
        self.seq += 1;
        let data = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        write_event(out, Some(kind), &data);
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = response_object(
            &self.ctx,
            "in_progress",
            Vec::new(),
            Value::Null,
            Value::Null,
        );
        self.emit(
            out,
            "response.created",
            Self::obj(json!({"response": r.clone()})),
        );
        self.emit(
            out,
            "response.in_progress",
            Self::obj(json!({"response": r})),
        );
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    fn message_id(&self) -> String {
        format!("msg_{}_{}", self.ctx.id, self.output.len())
    }

    fn call_id(&self) -> String {
        format!("fc_{}_{}", self.ctx.id, self.output.len())
    }

    fn reasoning_id(&self) -> String {
        format!("rs_{}_{}", self.ctx.id, self.output.len())
    }

    /// Opens a reasoning item for `block` (closing what was open).
    fn open_reasoning(&mut self, out: &mut Vec<u8>, block: ThinkingBlock) {
        self.close_item(out);
        let (id, idx) = (self.reasoning_id(), self.output_index());
        self.emit(
            out,
            "response.output_item.added",
            Self::obj(json!({
                "output_index": idx,
                "item": {"type": "reasoning", "id": id, "summary": []},
            })),
        );
        if matches!(block, ThinkingBlock::Thinking { .. }) {
            self.emit(
                out,
                "response.reasoning_summary_part.added",
                Self::obj(json!({
                    "item_id": id, "output_index": idx, "summary_index": 0,
                    "part": {"type": "summary_text", "text": ""},
                })),
            );
        }
        self.open = Open::Reasoning(block);
    }

    /// A piece of thinking: into the open thinking block, or a new one.
    fn reasoning(&mut self, out: &mut Vec<u8>, text: &str) {
        let open = matches!(
            self.open,
            Open::Reasoning(ThinkingBlock::Thinking {
                signature: None,
                ..
            })
        );
        if !open {
            self.open_reasoning(
                out,
                ThinkingBlock::Thinking {
                    thinking: String::new(),
                    signature: None,
                },
            );
        }
        self.sent_bytes += text.len();
        if let Open::Reasoning(ThinkingBlock::Thinking { thinking, .. }) = &mut self.open {
            thinking.push_str(text);
        }
        self.delta(out, REASONING_DELTA, text);
    }

    /// A thinking block's signature (ending it), or a redacted block.
    /// `text_sent`: the same delta carried the text as `reasoning_content`
    /// too (LiteLLM's chunks do), so the block's own copy is not added.
    fn thinking_block(&mut self, out: &mut Vec<u8>, block: &ThinkingBlock, text_sent: bool) {
        match block {
            ThinkingBlock::Thinking {
                thinking,
                signature,
            } => {
                if !thinking.is_empty() && !text_sent {
                    self.reasoning(out, thinking);
                }
                let Some(sig) = signature else {
                    return;
                };
                if !matches!(self.open, Open::Reasoning(ThinkingBlock::Thinking { .. })) {
                    self.open_reasoning(
                        out,
                        ThinkingBlock::Thinking {
                            thinking: String::new(),
                            signature: None,
                        },
                    );
                }
                if let Open::Reasoning(ThinkingBlock::Thinking { signature, .. }) = &mut self.open {
                    *signature = Some(sig.clone());
                }
                self.close_item(out);
            }
            ThinkingBlock::RedactedThinking { .. } => {
                self.open_reasoning(out, block.clone());
                self.close_item(out);
            }
        }
    }

    /// A text or arguments delta of the open item, written straight into
    /// `out` (the events a stream is mostly made of: no JSON tree each).
    fn delta(&mut self, out: &mut Vec<u8>, kind: &str, delta: &str) {
        use shardgate_proto::json::write_json_string;
        use std::io::Write;
        if self.open_id.is_empty() {
            self.open_id = match self.open {
                Open::Message { .. } => self.message_id(),
                Open::Reasoning(_) => self.reasoning_id(),
                _ => self.call_id(),
            };
        }
        let text = kind == TEXT_DELTA;
        let _ = write!(
            out,
            "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":{},\"item_id\":",
            self.seq
        );
        self.seq += 1;
        write_json_string(out, &self.open_id);
        let _ = write!(out, ",\"output_index\":{}", self.output.len());
        if text {
            out.extend_from_slice(b",\"content_index\":0");
        } else if kind == REASONING_DELTA {
            out.extend_from_slice(b",\"summary_index\":0");
        }
        out.extend_from_slice(b",\"delta\":");
        write_json_string(out, delta);
        if text {
            out.extend_from_slice(b",\"logprobs\":[]");
        }
        out.extend_from_slice(b"}\n\n");
    }

    fn close_item(&mut self, out: &mut Vec<u8>) {
        self.open_id.clear();
        let idx = self.output_index();
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Reasoning(block) => {
                let id = self.reasoning_id();
                if let ThinkingBlock::Thinking { thinking, .. } = &block {
                    self.emit(out, "response.reasoning_summary_text.done", Self::obj(json!({
                        "item_id": id, "output_index": idx, "summary_index": 0, "text": thinking,
                    })));
                    self.emit(
                        out,
                        "response.reasoning_summary_part.done",
                        Self::obj(json!({
                            "item_id": id, "output_index": idx, "summary_index": 0,
                            "part": {"type": "summary_text", "text": thinking},
                        })),
                    );
                }
                let item = reasoning_item(&id, &block);
                self.emit(
                    out,
                    "response.output_item.done",
                    Self::obj(json!({"output_index": idx, "item": item.clone()})),
                );
                self.output.push(item);
            }
            Open::Message { text } => {
                let id = self.message_id();
                self.emit(out, "response.output_text.done", Self::obj(json!({
                    "item_id": id, "output_index": idx, "content_index": 0, "text": text, "logprobs": [],
                })));
                self.emit(out, "response.content_part.done", Self::obj(json!({
                    "item_id": id, "output_index": idx, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []},
                })));
                let item = message_item(&id, &text, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    Self::obj(json!({"output_index": idx, "item": item.clone()})),
                );
                self.output.push(item);
            }
            Open::Call {
                call_id,
                name,
                args,
                ..
            } => {
                let id = self.call_id();
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    Self::obj(json!({
                        "item_id": id, "output_index": idx, "name": name, "arguments": args,
                    })),
                );
                let item = call_item(&id, &call_id, &name, &args, "completed");
                self.emit(
                    out,
                    "response.output_item.done",
                    Self::obj(json!({"output_index": idx, "item": item.clone()})),
                );
                self.output.push(item);
            }
        }
    }

    fn on_event(&mut self, ev: SseEvent<'_>, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.phase != Phase::Open || ev.is_comment_only() {
            return Ok(());
        }
        if ev.is_done() {
            self.end(out);
            return Ok(());
        }
        let data = ev.data();
        if data.is_empty() {
            return Ok(());
        }
        let chunk: ChatChunk = upstream_json(&data)?;
        self.start(out);
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            let code = error
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("upstream_error");
            let (code, message) = (code.to_owned(), crate::redact_secrets(message, &self.known));
            self.fail(out, &code, &message);
            return Ok(());
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            let reasoning = choice
                .delta
                .reasoning_content
                .as_deref()
                .filter(|t| !t.is_empty());
            if let Some(text) = reasoning {
                self.reasoning(out, text);
            }
            for block in choice.delta.thinking_blocks.iter().flatten() {
                self.thinking_block(out, block, reasoning.is_some());
            }
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                if !matches!(self.open, Open::Message { .. }) {
                    self.close_item(out);
                    let (id, idx) = (self.message_id(), self.output_index());
                    self.emit(out, "response.output_item.added", Self::obj(json!({
                        "output_index": idx,
                        "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []},
                    })));
                    self.emit(out, "response.content_part.added", Self::obj(json!({
                        "item_id": id, "output_index": idx, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                    })));
                    self.open = Open::Message {
                        text: String::new(),
                    };
                }
                self.sent_bytes += text.len();
                if let Open::Message { text: t } = &mut self.open {
                    t.push_str(text);
                }
                self.delta(out, TEXT_DELTA, text);
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let function = call.function.clone().unwrap_or_default();
                let same = matches!(&self.open, Open::Call { chat_index, .. } if *chat_index == call.index);
                if call.id.is_some() || !same {
                    self.close_item(out);
                    let (id, idx) = (self.call_id(), self.output_index());
                    let call_id = call.id.clone().unwrap_or_default();
                    let name = function.name.clone().unwrap_or_default();
                    self.emit(
                        out,
                        "response.output_item.added",
                        Self::obj(json!({
                            "output_index": idx,
                            "item": call_item(&id, &call_id, &name, "", "in_progress"),
                        })),
                    );
                    self.open = Open::Call {
                        chat_index: call.index,
                        call_id,
                        name,
                        args: String::new(),
                    };
                }
                if let Some(args) = function.arguments.filter(|a| !a.is_empty()) {
                    self.sent_bytes += args.len();
                    if let Open::Call { args: a, .. } = &mut self.open {
                        a.push_str(&args);
                    }
                    self.delta(out, ARGS_DELTA, &args);
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
        Ok(())
    }

    /// Closes the open item and completes the response.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close_item(out);
        let (status, incomplete) = status_of(self.finish_reason.as_deref());
        let r = response_object(
            &self.ctx,
            status,
            self.output.clone(),
            usage_json(self.usage.as_ref()),
            incomplete,
        );
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, Self::obj(json!({"response": r.clone()})));
        self.last = Some(r);
        self.finish_reason.get_or_insert_with(|| "stop".to_owned());
        self.phase = Phase::Done;
    }

    /// Ends the stream with an `error` event and the failed response.
    fn fail(&mut self, out: &mut Vec<u8>, code: &str, message: &str) {
        self.start(out);
        self.emit(
            out,
            "error",
            Self::obj(json!({"code": code, "message": message, "param": null})),
        );
        let mut r = response_object(
            &self.ctx,
            "failed",
            self.output.clone(),
            usage_json(self.usage.as_ref()),
            Value::Null,
        );
        r["error"] = json!({"code": code, "message": message});
        self.emit(
            out,
            "response.failed",
            Self::obj(json!({"response": r.clone()})),
        );
        self.last = Some(r);
        self.phase = Phase::Failed;
    }
}

const TEXT_DELTA: &str = "response.output_text.delta";
const REASONING_DELTA: &str = "response.reasoning_summary_text.delta";
const ARGS_DELTA: &str = "response.function_call_arguments.delta";

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
