//! Anthropic Messages API, both ways.
//!
//! Upstream (OpenAI client, Anthropic provider): [`from_openai`] builds the
//! Messages request, [`ChatResponse::from_anthropic`] maps the response
//! back, [`AnthropicToOpenAi`] translates the SSE stream.
//!
//! Inbound (Anthropic client on `POST /v1/messages`, any provider behind the
//! OpenAI model): [`ChatRequest::from_anthropic`], [`from_openai_response`]
//! and [`OpenAiToAnthropic`] for the stream, [`error_from_openai`] for
//! errors.
//!
//! Mapping rules: system and developer messages become the top-level
//! `system`; consecutive messages of one role are merged (Anthropic wants
//! alternating turns); tool results go into a user turn as `tool_result`
//! blocks; `max_tokens` is required, so a default fills it in; temperature
//! is clamped to Anthropic's 0..=1.

use serde_json::Value;
use shardgate_proto::anthropic as a;
use shardgate_proto::sse::{write_event, SseEvent, SseFramer};

use crate::chat::{
    self, ChatChunk, ChatRequest, ChatResponse, ChatUsage, ChunkWriter, Content, ContentPart,
    Image, ReplyCtx, Role, ToolChoice, ToolMode,
};
use crate::errors::{openai_error, KnownSecrets};
use crate::{
    json_body, upstream_json, Dialect, PrepareCtx, Provider, StreamTranslator, Summary,
    TranslateError, UpstreamRequest, Usage, MAX_EVENT_BYTES,
};

/// Base URL the paths below are relative to.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";
pub const API_VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Anthropic as an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicProvider {
    /// `anthropic-version` header.
    pub version: String,
    /// `max_tokens` when the client gave none.
    pub default_max_tokens: u64,
}

impl Default for AnthropicProvider {
    fn default() -> Self {
        Self {
            version: API_VERSION.to_owned(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

impl Provider for AnthropicProvider {
    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }

    fn prepare(
        &self,
        req: &ChatRequest,
        ctx: &PrepareCtx<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let body = from_openai(req, ctx.model, self.default_max_tokens)?;
        let key = ctx
            .api_key
            .ok_or(TranslateError::MissingCredentials("Anthropic API key"))?;
        Ok(UpstreamRequest {
            path: "/messages".to_owned(),
            headers: vec![
                ("x-api-key".to_owned(), key.to_owned()),
                ("anthropic-version".to_owned(), self.version.clone()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            body: json_body(&body)?,
        })
    }

    fn response_to_openai(
        &self,
        body: &[u8],
        ctx: &ReplyCtx,
    ) -> Result<(Vec<u8>, Usage), TranslateError> {
        let resp: a::MessagesResponse = upstream_json(body)?;
        let (chat, usage) = ChatResponse::from_anthropic(&resp, ctx);
        Ok((json_body(&chat)?, usage))
    }

    fn error_to_openai(&self, status: u16, body: &[u8], known: &KnownSecrets) -> Vec<u8> {
        match serde_json::from_slice::<a::ErrorResponse>(body) {
            Ok(e) => openai_error(status, &e.error.message, Some(&e.error.kind), known),
            Err(_) => openai_error(status, "", None, known),
        }
    }

    fn stream_translator(&self, ctx: ReplyCtx, known: &KnownSecrets) -> Option<StreamTranslator> {
        Some(StreamTranslator::Anthropic(
            AnthropicToOpenAi::new(ctx).redacting(known.clone()),
        ))
    }
}

// ---------------------------------------------------------------------------
// OpenAI request -> Anthropic request

/// The Messages request for an OpenAI chat request, sent as `model`.
pub fn from_openai(
    req: &ChatRequest,
    model: &str,
    default_max_tokens: u64,
) -> Result<a::MessagesRequest, TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported("n > 1"));
    }
    // Each system message's text, with the cache breakpoint of its last
    // part, if any.
    let mut system: Vec<(String, Option<Value>)> = Vec::new();
    let mut turns: Vec<(a::Role, Vec<a::ContentBlock>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                match &m.content {
                    // Split by part only where a part marks a breakpoint: a
                    // message's text otherwise goes as it always did.
                    Some(Content::Parts(parts)) if marks_cache(parts) => {
                        for p in parts {
                            if let ContentPart::Text {
                                text,
                                cache_control,
                            } = p
                            {
                                system.push((text.clone(), cache_control.clone()));
                            }
                        }
                    }
                    _ => {
                        if let Some(text) = m.text_content() {
                            system.push((text, None));
                        }
                    }
                }
                continue;
            }
            Role::User => (a::Role::User, user_blocks(m.content.as_ref())?),
            Role::Assistant => (a::Role::Assistant, assistant_blocks(m)?),
            Role::Tool => {
                let id = m.tool_call_id.clone().ok_or_else(|| {
                    TranslateError::Invalid("tool message without tool_call_id".into())
                })?;
                let block = a::ContentBlock::ToolResult {
                    tool_use_id: id,
                    content: Some(a::ToolResultContent::Text(
                        m.text_content().unwrap_or_default(),
                    )),
                    is_error: None,
                };
                (a::Role::User, vec![block])
            }
        };
        push_merged(&mut turns, role, blocks);
    }
    let messages = turns
        .into_iter()
        .filter(|(_, blocks)| !blocks.is_empty())
        .map(|(role, blocks)| a::Message {
            role,
            content: simplify(blocks),
        })
        .collect();

    let tools = match &req.tools {
        None => None,
        Some(tools) => Some(
            tools
                .iter()
                .map(|t| {
                    let f = t
                        .function
                        .as_ref()
                        .ok_or(TranslateError::Unsupported("non-function tools"))?;
                    Ok(a::Tool {
                        name: f.name.clone(),
                        description: f.description.clone(),
                        input_schema: f.parameters.clone().unwrap_or_else(empty_schema),
                        cache_control: t.cache_control.clone(),
                    })
                })
                .collect::<Result<Vec<_>, TranslateError>>()?,
        ),
    };
    let disable_parallel = req.parallel_tool_calls.map(|p| !p).filter(|d| *d);
    let tool_choice = match req.tool_choice.as_ref().map(ToolChoice::mode).transpose()? {
        None => disable_parallel.map(|d| a::ToolChoice::Auto {
            disable_parallel_tool_use: Some(d),
        }),
        Some(ToolMode::Auto) => Some(a::ToolChoice::Auto {
            disable_parallel_tool_use: disable_parallel,
        }),
        Some(ToolMode::None) => Some(a::ToolChoice::None),
        Some(ToolMode::Required) => Some(a::ToolChoice::Any {
            disable_parallel_tool_use: disable_parallel,
        }),
        Some(ToolMode::Named(name)) => Some(a::ToolChoice::Tool {
            name: name.to_owned(),
            disable_parallel_tool_use: disable_parallel,
        }),
    };

    let thinking = req.thinking_to_send().cloned();
    let budget = thinking
        .as_ref()
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64);
    // With thinking, the API takes no temperature, a `top_p` of 0.95 or
    // more, no forced tool, and `max_tokens` above the budget.
    let (temperature, top_p, tool_choice) = if thinking.is_some() {
        let choice = match tool_choice {
            Some(a::ToolChoice::Any {
                disable_parallel_tool_use,
            })
            | Some(a::ToolChoice::Tool {
                disable_parallel_tool_use,
                ..
            }) => Some(a::ToolChoice::Auto {
                disable_parallel_tool_use,
            }),
            other => other,
        };
        (None, req.top_p.filter(|p| *p >= 0.95), choice)
    } else {
        (
            req.temperature.map(|t| t.clamp(0.0, 1.0)),
            req.top_p,
            tool_choice,
        )
    };
    let max_tokens = req
        .max_output_tokens()
        .unwrap_or_else(|| default_max_tokens + budget.unwrap_or(0));
    Ok(a::MessagesRequest {
        model: model.to_owned(),
        messages,
        system: system_of(system),
        max_tokens,
        stop_sequences: req.stop_sequences(),
        stream: req.stream.filter(|s| *s),
        temperature,
        top_p,
        top_k: None,
        tools,
        tool_choice,
        metadata: req.user.clone().map(|u| a::Metadata { user_id: Some(u) }),
        thinking,
    })
}

fn marks_cache(parts: &[ContentPart]) -> bool {
    parts.iter().any(|p| {
        matches!(
            p,
            ContentPart::Text {
                cache_control: Some(_),
                ..
            }
        )
    })
}

/// The system prompt: one string, unless a part marks a cache breakpoint
/// (then one text block per part, each with its own marker).
fn system_of(parts: Vec<(String, Option<Value>)>) -> Option<a::System> {
    if parts.is_empty() {
        return None;
    }
    if parts.iter().all(|(_, c)| c.is_none()) {
        let texts: Vec<String> = parts.into_iter().map(|(t, _)| t).collect();
        return Some(a::System::Text(texts.join("\n\n")));
    }
    Some(a::System::Blocks(
        parts
            .into_iter()
            .map(|(text, cache_control)| a::ContentBlock::Text {
                text,
                cache_control,
            })
            .collect(),
    ))
}

fn empty_schema() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// Appends blocks to the last turn when it has the same role, else opens a
/// new turn.
fn push_merged<R: PartialEq, B>(turns: &mut Vec<(R, Vec<B>)>, role: R, blocks: Vec<B>) {
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// One text block without extras is sent as a plain string.
fn simplify(blocks: Vec<a::ContentBlock>) -> a::Content {
    if let [a::ContentBlock::Text {
        text,
        cache_control: None,
    }] = blocks.as_slice()
    {
        return a::Content::Text(text.clone());
    }
    a::Content::Blocks(blocks)
}

fn user_blocks(content: Option<&Content>) -> Result<Vec<a::ContentBlock>, TranslateError> {
    let Some(content) = content else {
        return Ok(Vec::new());
    };
    content
        .parts()
        .into_iter()
        .map(|part| match part {
            ContentPart::Text {
                text,
                cache_control,
            } => Ok(a::ContentBlock::Text {
                text,
                cache_control,
            }),
            ContentPart::ImageUrl { image_url } => {
                let source = match image_url.parse()? {
                    Image::Base64 { media_type, data } => a::ImageSource::Base64 {
                        media_type: media_type.to_owned(),
                        data: data.to_owned(),
                    },
                    Image::Url(url) => a::ImageSource::Url {
                        url: url.to_owned(),
                    },
                };
                Ok(a::ContentBlock::Image { source })
            }
            ContentPart::Other => Err(TranslateError::Unsupported(
                "content parts other than text and image_url",
            )),
        })
        .collect()
}

fn assistant_blocks(m: &chat::Message) -> Result<Vec<a::ContentBlock>, TranslateError> {
    // A turn's thinking comes first, as Claude wrote it.
    let mut blocks: Vec<a::ContentBlock> = m
        .thinking_blocks
        .iter()
        .flatten()
        .map(|b| match b {
            chat::ThinkingBlock::Thinking {
                thinking,
                signature,
            } => a::ContentBlock::Thinking {
                thinking: thinking.clone(),
                signature: signature.clone(),
            },
            chat::ThinkingBlock::RedactedThinking { data } => {
                a::ContentBlock::RedactedThinking { data: data.clone() }
            }
        })
        .collect();
    if let Some(text) = m.text_content().filter(|t| !t.is_empty()) {
        blocks.push(a::ContentBlock::Text {
            text,
            cache_control: None,
        });
    }
    for call in m.tool_calls.iter().flatten() {
        blocks.push(a::ContentBlock::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input: parse_arguments(&call.function.arguments)?,
        });
    }
    Ok(blocks)
}

/// Tool-call arguments (JSON text) as an object; empty text is `{}`.
pub(crate) fn parse_arguments(arguments: &str) -> Result<Value, TranslateError> {
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_str(arguments)
        .map_err(|e| TranslateError::Invalid(format!("tool call arguments are not JSON: {e}")))
}

// ---------------------------------------------------------------------------
// Anthropic response -> OpenAI response

/// Anthropic `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// The common usage record for Anthropic usage numbers (whose
/// `input_tokens` excludes cache reads and writes). The sum saturates: an
/// absurd count must neither panic nor wrap to a small bill.
pub fn usage(u: &a::Usage) -> Usage {
    let parts = [
        u.input_tokens,
        u.cache_read_input_tokens,
        u.cache_creation_input_tokens,
    ];
    let input = parts.iter().any(Option::is_some).then(|| {
        parts
            .iter()
            .flatten()
            .fold(0u64, |a, &b| a.saturating_add(b))
    });
    Usage {
        input_tokens: input,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cache_read_input_tokens,
        cache_write_tokens: u.cache_creation_input_tokens,
        reasoning_tokens: None,
        estimated: false,
    }
}

impl ChatResponse {
    pub fn from_anthropic(resp: &a::MessagesResponse, ctx: &ReplyCtx) -> (ChatResponse, Usage) {
        let mut text = String::new();
        let mut has_text = false;
        let mut calls = Vec::new();
        let mut thinking = Vec::new();
        for block in &resp.content {
            if let Some(t) = thinking_block(block) {
                thinking.push(t);
                continue;
            }
            match block {
                a::ContentBlock::Text { text: t, .. } => {
                    has_text = true;
                    text.push_str(t);
                }
                a::ContentBlock::ToolUse { id, name, input } => {
                    calls.push(chat::ToolCall::function(id.clone(), name.clone(), input))
                }
                _ => {}
            }
        }
        let usage = usage(&resp.usage);
        let reason = finish_reason(resp.stop_reason.as_deref().unwrap_or("end_turn"));
        let mut choice = chat::Choice::assistant(0, text, has_text, calls, reason);
        choice.message.with_thinking(thinking);
        let chat = ChatResponse::translated(ctx, vec![choice], &usage);
        (chat, usage)
    }
}

// ---------------------------------------------------------------------------
// Anthropic stream -> OpenAI stream

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Done,
    Failed,
}

/// Anthropic SSE in, OpenAI `chat.completion.chunk` SSE out.
#[derive(Debug)]
pub struct AnthropicToOpenAi {
    framer: SseFramer,
    state: AnthropicState,
}

#[derive(Debug)]
struct AnthropicState {
    w: ChunkWriter,
    include_usage: bool,
    started: bool,
    /// (Anthropic block index, OpenAI tool-call index) of tool_use blocks.
    tools: Vec<(u32, u32)>,
    usage: a::Usage,
    finish_reason: Option<&'static str>,
    phase: Phase,
    unknown: u64,
    /// Text and argument bytes sent, for the estimate of a cut stream.
    sent_bytes: usize,
    known: KnownSecrets,
}

impl AnthropicToOpenAi {
    pub fn new(ctx: ReplyCtx) -> Self {
        Self {
            framer: SseFramer::new(MAX_EVENT_BYTES),
            state: AnthropicState {
                w: ChunkWriter::new(&ctx),
                include_usage: ctx.include_usage,
                started: false,
                tools: Vec::new(),
                usage: a::Usage::default(),
                finish_reason: None,
                phase: Phase::Open,
                unknown: 0,
                sent_bytes: 0,
                known: KnownSecrets::default(),
            },
        }
    }

    /// Removes `known` (the upstream's credentials) from the messages of
    /// error events, besides anything shaped like a credential.
    pub fn redacting(mut self, known: KnownSecrets) -> Self {
        self.state.known = known;
        self
    }

    pub fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let state = &mut self.state;
        crate::chat::feed_sse(&mut self.framer, input, out, |ev, out| {
            state.on_event(ev, out)
        })
    }

    pub fn unknown_events(&self) -> u64 {
        self.state.unknown
    }

    pub fn finish(mut self, out: &mut Vec<u8>) -> Summary {
        let _ = self.framer.finish();
        let s = self.state;
        chat::end_stream(
            out,
            chat::StreamEnd {
                usage: usage(&s.usage),
                // Cut or failed: the last output count seen is a lower bound.
                estimated: s.phase != Phase::Done,
                cut: s.phase == Phase::Open,
                sent_bytes: s.sent_bytes,
                finish_reason: s.finish_reason,
                unknown_events: s.unknown,
            },
        )
    }
}

impl AnthropicState {
    fn on_event(&mut self, ev: SseEvent<'_>, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.phase != Phase::Open || ev.is_comment_only() {
            return Ok(());
        }
        let data = ev.data();
        if data.is_empty() {
            return Ok(());
        }
        let event: a::StreamEvent = upstream_json(&data)?;
        match event {
            a::StreamEvent::MessageStart { message } => {
                merge_usage(&mut self.usage, &message.usage);
                self.start(out);
            }
            a::StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                self.start(out);
                match content_block {
                    a::ContentBlock::Text { text, .. } if !text.is_empty() => {
                        self.sent_bytes += text.len();
                        self.w.content(out, &text);
                    }
                    a::ContentBlock::ToolUse { id, name, .. } => {
                        let tool = self.tools.len() as u32;
                        self.tools.push((index, tool));
                        self.sent_bytes += name.len();
                        self.w.tool_call_start(out, tool, &id, &name);
                    }
                    a::ContentBlock::Thinking { thinking, .. } if !thinking.is_empty() => {
                        self.sent_bytes += thinking.len();
                        self.w.reasoning(out, &thinking);
                    }
                    a::ContentBlock::RedactedThinking { data } => {
                        self.w
                            .thinking_block(out, &chat::ThinkingBlock::RedactedThinking { data });
                    }
                    _ => {}
                }
            }
            a::StreamEvent::ContentBlockDelta { index, delta } => {
                self.start(out);
                match delta {
                    a::Delta::TextDelta { text } if !text.is_empty() => {
                        self.sent_bytes += text.len();
                        self.w.content(out, &text);
                    }
                    a::Delta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                        if let Some(&(_, tool)) = self.tools.iter().find(|(b, _)| *b == index) {
                            self.sent_bytes += partial_json.len();
                            self.w.tool_call_arguments(out, tool, &partial_json);
                        }
                    }
                    a::Delta::ThinkingDelta { thinking } if !thinking.is_empty() => {
                        self.sent_bytes += thinking.len();
                        self.w.reasoning(out, &thinking);
                    }
                    a::Delta::SignatureDelta { signature } => {
                        let block = chat::ThinkingBlock::Thinking {
                            thinking: String::new(),
                            signature: Some(signature),
                        };
                        self.w.thinking_block(out, &block);
                    }
                    a::Delta::Other => self.unknown += 1,
                    _ => {}
                }
            }
            a::StreamEvent::ContentBlockStop { .. } | a::StreamEvent::Ping => {}
            a::StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    merge_usage(&mut self.usage, &u);
                }
                if let (Some(reason), None) = (delta.stop_reason, self.finish_reason) {
                    self.start(out);
                    let reason = finish_reason(&reason);
                    self.finish_reason = Some(reason);
                    self.w.finish(out, reason);
                }
            }
            a::StreamEvent::MessageStop => {
                self.start(out);
                if self.finish_reason.is_none() {
                    self.finish_reason = Some("stop");
                    self.w.finish(out, "stop");
                }
                if self.include_usage {
                    self.w.usage(out, &usage(&self.usage));
                }
                ChunkWriter::done(out);
                self.phase = Phase::Done;
            }
            a::StreamEvent::Error { error } => {
                let message = crate::redact_secrets(&error.message, &self.known);
                let kind = match error.kind.as_str() {
                    "rate_limit_error" => "rate_limit_error",
                    "invalid_request_error" => "invalid_request_error",
                    _ => "server_error",
                };
                ChunkWriter::error(out, &message, kind, Some(&error.kind));
                self.phase = Phase::Failed;
            }
            a::StreamEvent::Unknown => self.unknown += 1,
        }
        Ok(())
    }

    /// The role chunk, once, before anything else.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.w.role(out);
        }
    }
}

/// Later numbers replace earlier ones; absent numbers keep them.
fn merge_usage(into: &mut a::Usage, from: &a::Usage) {
    into.input_tokens = from.input_tokens.or(into.input_tokens);
    into.output_tokens = from.output_tokens.or(into.output_tokens);
    into.cache_creation_input_tokens = from
        .cache_creation_input_tokens
        .or(into.cache_creation_input_tokens);
    into.cache_read_input_tokens = from
        .cache_read_input_tokens
        .or(into.cache_read_input_tokens);
}

// ---------------------------------------------------------------------------
// Inbound: Anthropic request -> OpenAI request

impl ChatRequest {
    /// An Anthropic Messages request as an OpenAI chat request. Streaming
    /// requests ask for the usage chunk, which the Anthropic stream needs
    /// for its final `message_delta`.
    pub fn from_anthropic(req: &a::MessagesRequest) -> Result<ChatRequest, TranslateError> {
        let mut messages = Vec::new();
        match &req.system {
            None => {}
            Some(a::System::Text(t)) => messages.push(chat::Message::text(Role::System, t)),
            Some(a::System::Blocks(blocks)) if !has_cache_marker(blocks) => {
                messages.push(chat::Message::text(Role::System, blocks_text(blocks)));
            }
            Some(a::System::Blocks(blocks)) => {
                // Each block a part, so its cache breakpoint stays where it was.
                let parts = blocks
                    .iter()
                    .filter_map(|b| match b {
                        a::ContentBlock::Text {
                            text,
                            cache_control,
                        } => Some(ContentPart::Text {
                            text: text.clone(),
                            cache_control: cache_control.clone(),
                        }),
                        _ => None,
                    })
                    .collect();
                messages.push(chat::Message {
                    content: Some(Content::Parts(parts)),
                    ..chat::Message::text(Role::System, "")
                });
            }
        }
        for m in &req.messages {
            let blocks = match &m.content {
                a::Content::Text(t) => vec![a::ContentBlock::Text {
                    text: t.clone(),
                    cache_control: None,
                }],
                a::Content::Blocks(b) => b.clone(),
            };
            match m.role {
                a::Role::User => user_from_anthropic(blocks, &mut messages)?,
                a::Role::Assistant => messages.push(assistant_from_anthropic(blocks)),
            }
        }
        let tools = req.tools.as_ref().map(|tools| {
            tools
                .iter()
                .map(|t| chat::Tool {
                    cache_control: t.cache_control.clone(),
                    ..chat::Tool::function(&t.name, t.description.clone(), t.input_schema.clone())
                })
                .collect()
        });
        let (tool_choice, parallel) = match &req.tool_choice {
            None => (None, None),
            Some(a::ToolChoice::Auto {
                disable_parallel_tool_use: d,
            }) => (Some(ToolMode::Auto), *d),
            Some(a::ToolChoice::Any {
                disable_parallel_tool_use: d,
            }) => (Some(ToolMode::Required), *d),
            Some(a::ToolChoice::Tool {
                name,
                disable_parallel_tool_use: d,
            }) => (Some(ToolMode::Named(name)), *d),
            Some(a::ToolChoice::None) => (Some(ToolMode::None), None),
        };
        let stream = req.stream == Some(true);
        Ok(ChatRequest {
            model: req.model.clone(),
            messages,
            max_tokens: Some(req.max_tokens),
            temperature: req.temperature,
            top_p: req.top_p,
            stop: req.stop_sequences.clone().map(chat::Stop::Many),
            stream: stream.then_some(true),
            stream_options: stream.then_some(chat::StreamOptions {
                include_usage: Some(true),
            }),
            tools,
            tool_choice: tool_choice.map(ToolChoice::from_mode),
            parallel_tool_calls: parallel.filter(|d| *d).map(|_| false),
            user: req.metadata.as_ref().and_then(|m| m.user_id.clone()),
            thinking: req.thinking.clone(),
            ..ChatRequest::default()
        })
    }
}

fn has_cache_marker(blocks: &[a::ContentBlock]) -> bool {
    blocks.iter().any(|b| {
        matches!(
            b,
            a::ContentBlock::Text {
                cache_control: Some(_),
                ..
            }
        )
    })
}

fn blocks_text(blocks: &[a::ContentBlock]) -> String {
    blocks
        .iter()
        .filter_map(|b| match b {
            a::ContentBlock::Text { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A user turn: its tool results become `tool` messages (first, so they
/// follow the assistant's calls), the rest one user message.
fn user_from_anthropic(
    blocks: Vec<a::ContentBlock>,
    messages: &mut Vec<chat::Message>,
) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for block in blocks {
        match block {
            a::ContentBlock::Text {
                text,
                cache_control,
            } => parts.push(ContentPart::Text {
                text,
                cache_control,
            }),
            a::ContentBlock::Image { source } => {
                let url = match source {
                    a::ImageSource::Base64 { media_type, data } => {
                        format!("data:{media_type};base64,{data}")
                    }
                    a::ImageSource::Url { url } => url,
                };
                parts.push(ContentPart::ImageUrl {
                    image_url: chat::ImageUrl { url, detail: None },
                });
            }
            a::ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut text = match content {
                    None => String::new(),
                    Some(a::ToolResultContent::Text(t)) => t,
                    Some(a::ToolResultContent::Blocks(b)) => blocks_text(&b),
                };
                if is_error == Some(true) && !text.starts_with("Error") {
                    text.insert_str(0, "Error: ");
                }
                messages.push(chat::Message {
                    tool_call_id: Some(tool_use_id),
                    ..chat::Message::text(Role::Tool, text)
                });
            }
            a::ContentBlock::ToolUse { .. } => {
                return Err(TranslateError::Invalid(
                    "tool_use block in a user turn".into(),
                ))
            }
            _ => {}
        }
    }
    if !parts.is_empty() {
        let content = match parts.as_slice() {
            [ContentPart::Text {
                text,
                cache_control: None,
            }] => Content::Text(text.clone()),
            _ => Content::Parts(parts),
        };
        messages.push(chat::Message {
            content: Some(content),
            ..chat::Message::text(Role::User, "")
        });
    }
    Ok(())
}

fn assistant_from_anthropic(blocks: Vec<a::ContentBlock>) -> chat::Message {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut thinking = Vec::new();
    for block in blocks {
        if let Some(t) = thinking_block(&block) {
            thinking.push(t);
            continue;
        }
        match block {
            a::ContentBlock::Text { text: t, .. } => text.push_str(&t),
            a::ContentBlock::ToolUse { id, name, input } => calls.push(chat::ToolCall {
                id,
                kind: "function".to_owned(),
                function: chat::FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            _ => {}
        }
    }
    chat::Message {
        role: Role::Assistant,
        content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
        name: None,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        thinking_blocks: (!thinking.is_empty()).then_some(thinking),
    }
}

/// An Anthropic thinking block in the chat shape.
fn thinking_block(block: &a::ContentBlock) -> Option<chat::ThinkingBlock> {
    match block {
        a::ContentBlock::Thinking {
            thinking,
            signature,
        } => Some(chat::ThinkingBlock::Thinking {
            thinking: thinking.clone(),
            signature: signature.clone(),
        }),
        a::ContentBlock::RedactedThinking { data } => {
            Some(chat::ThinkingBlock::RedactedThinking { data: data.clone() })
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Inbound: OpenAI response -> Anthropic response

/// OpenAI `finish_reason` as an Anthropic `stop_reason`.
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic usage numbers for an OpenAI usage object (Anthropic's
/// `input_tokens` excludes cache reads).
fn usage_to_anthropic(u: Option<&ChatUsage>) -> a::Usage {
    let Some(u) = u else {
        return a::Usage {
            input_tokens: Some(0),
            output_tokens: Some(0),
            ..a::Usage::default()
        };
    };
    let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens);
    a::Usage {
        input_tokens: Some(u.prompt_tokens.saturating_sub(cached.unwrap_or(0))),
        output_tokens: Some(u.completion_tokens),
        cache_creation_input_tokens: None,
        cache_read_input_tokens: cached,
    }
}

/// An OpenAI `chat.completion` as an Anthropic Messages response.
pub fn from_openai_response(
    resp: &ChatResponse,
) -> Result<(a::MessagesResponse, Usage), TranslateError> {
    let choice = resp
        .choices
        .first()
        .ok_or_else(|| TranslateError::UpstreamJson("response without choices".into()))?;
    let mut content = Vec::new();
    if let Some(text) = choice.message.content.as_ref().filter(|t| !t.is_empty()) {
        content.push(a::ContentBlock::Text {
            text: text.clone(),
            cache_control: None,
        });
    }
    for call in choice.message.tool_calls.iter().flatten() {
        content.push(a::ContentBlock::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input: parse_arguments(&call.function.arguments)
                .map_err(|e| TranslateError::UpstreamJson(e.to_string()))?,
        });
    }
    let msg = a::MessagesResponse {
        id: resp.id.clone(),
        kind: "message".to_owned(),
        role: a::Role::Assistant,
        content,
        model: resp.model.clone(),
        stop_reason: Some(
            stop_reason(choice.finish_reason.as_deref().unwrap_or("stop")).to_owned(),
        ),
        stop_sequence: None,
        usage: usage_to_anthropic(resp.usage.as_ref()),
    };
    let usage = resp.usage.map(|u| u.to_usage()).unwrap_or_default();
    Ok((msg, usage))
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An Anthropic error body.
pub fn error_body(status: u16, message: &str) -> Vec<u8> {
    let body = a::ErrorResponse {
        kind: "error".to_owned(),
        error: a::ErrorBody {
            kind: anthropic_error_type(status).to_owned(),
            message: crate::redact_secrets(message, &KnownSecrets::default()),
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An OpenAI error body (from any OpenAI-dialect upstream) as an Anthropic
/// error body, keeping the message.
pub fn error_from_openai(status: u16, body: &[u8]) -> Vec<u8> {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("upstream returned HTTP {status}"));
    error_body(status, &message)
}

// ---------------------------------------------------------------------------
// Inbound: OpenAI stream -> Anthropic stream

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    None,
    Text,
    /// The OpenAI tool-call index the open tool_use block belongs to.
    Tool(u32),
}

/// OpenAI chunk SSE in, Anthropic Messages SSE out.
#[derive(Debug)]
pub struct OpenAiToAnthropic {
    framer: SseFramer,
    state: ToAnthropicState,
}

#[derive(Debug)]
struct ToAnthropicState {
    id: String,
    model: String,
    started: bool,
    block: Block,
    /// Index of the open block (or of the next one when none is open).
    next_index: u32,
    stop_reason: Option<&'static str>,
    usage: Option<ChatUsage>,
    phase: Phase,
    unknown: u64,
    sent_bytes: usize,
    known: KnownSecrets,
}

impl OpenAiToAnthropic {
    pub fn new(ctx: ReplyCtx) -> Self {
        Self {
            framer: SseFramer::new(MAX_EVENT_BYTES),
            state: ToAnthropicState {
                id: ctx.id,
                model: ctx.model,
                started: false,
                block: Block::None,
                next_index: 0,
                stop_reason: None,
                usage: None,
                phase: Phase::Open,
                unknown: 0,
                sent_bytes: 0,
                known: KnownSecrets::default(),
            },
        }
    }

    /// Removes `known` (the upstream's credentials) from the messages of
    /// error events, besides anything shaped like a credential.
    pub fn redacting(mut self, known: KnownSecrets) -> Self {
        self.state.known = known;
        self
    }

    pub fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let state = &mut self.state;
        crate::chat::feed_sse(&mut self.framer, input, out, |ev, out| {
            state.on_event(ev, out)
        })
    }

    pub fn unknown_events(&self) -> u64 {
        self.state.unknown
    }

    pub fn finish(mut self, out: &mut Vec<u8>) -> Summary {
        let _ = self.framer.finish();
        let mut s = self.state;
        let mut cut = false;
        if s.phase == Phase::Open {
            if s.stop_reason.is_some() {
                // Finished but without `[DONE]`: close normally.
                s.end(out);
            } else {
                cut = true;
                write_anthropic(
                    out,
                    &a::StreamEvent::Error {
                        error: a::ErrorBody {
                            kind: "api_error".to_owned(),
                            message: "upstream stream ended before completion".to_owned(),
                        },
                    },
                );
            }
        }
        let mut usage = s.usage.map(|u| u.to_usage()).unwrap_or_default();
        if cut {
            usage.estimated = true;
            let estimate = chat::estimate_tokens(s.sent_bytes);
            usage.output_tokens = Some(usage.output_tokens.unwrap_or(0).max(estimate));
        }
        Summary {
            usage,
            finish_reason: s.stop_reason.map(str::to_owned),
            unknown_events: s.unknown,
            cut,
        }
    }
}

fn write_anthropic(out: &mut Vec<u8>, event: &a::StreamEvent) {
    // Serializing these types (strings, numbers, JSON values) cannot fail.
    let data = serde_json::to_vec(event).unwrap_or_default();
    write_event(out, Some(event.name()), &data);
}

impl ToAnthropicState {
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
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            write_anthropic(
                out,
                &a::StreamEvent::Error {
                    error: a::ErrorBody {
                        kind: "api_error".to_owned(),
                        message: crate::redact_secrets(message, &self.known),
                    },
                },
            );
            self.phase = Phase::Failed;
            return Ok(());
        }
        self.start(out);
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                if self.block != Block::Text {
                    self.open(
                        out,
                        Block::Text,
                        a::ContentBlock::Text {
                            text: String::new(),
                            cache_control: None,
                        },
                    );
                }
                self.sent_bytes += text.len();
                self.delta(
                    out,
                    a::Delta::TextDelta {
                        text: text.to_owned(),
                    },
                );
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                let function = call.function.clone().unwrap_or_default();
                if call.id.is_some() || self.block != Block::Tool(call.index) {
                    self.open(
                        out,
                        Block::Tool(call.index),
                        a::ContentBlock::ToolUse {
                            id: call.id.clone().unwrap_or_default(),
                            name: function.name.clone().unwrap_or_default(),
                            input: Value::Object(Default::default()),
                        },
                    );
                }
                if let Some(args) = function.arguments.filter(|a| !a.is_empty()) {
                    self.sent_bytes += args.len();
                    self.delta(out, a::Delta::InputJsonDelta { partial_json: args });
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.stop_reason = Some(stop_reason(reason));
            }
        }
        Ok(())
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        write_anthropic(
            out,
            &a::StreamEvent::MessageStart {
                message: a::MessagesResponse {
                    id: self.id.clone(),
                    kind: "message".to_owned(),
                    role: a::Role::Assistant,
                    content: Vec::new(),
                    model: self.model.clone(),
                    stop_reason: None,
                    stop_sequence: None,
                    // Placeholders: the real counts come in message_delta.
                    usage: usage_to_anthropic(None),
                },
            },
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.block != Block::None {
            write_anthropic(
                out,
                &a::StreamEvent::ContentBlockStop {
                    index: self.next_index,
                },
            );
            self.next_index += 1;
            self.block = Block::None;
        }
    }

    fn open(&mut self, out: &mut Vec<u8>, block: Block, content_block: a::ContentBlock) {
        self.close(out);
        self.block = block;
        write_anthropic(
            out,
            &a::StreamEvent::ContentBlockStart {
                index: self.next_index,
                content_block,
            },
        );
    }

    fn delta(&mut self, out: &mut Vec<u8>, delta: a::Delta) {
        write_anthropic(
            out,
            &a::StreamEvent::ContentBlockDelta {
                index: self.next_index,
                delta,
            },
        );
    }

    /// Closes the message: open block, message_delta, message_stop.
    fn end(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close(out);
        let reason = *self.stop_reason.get_or_insert("end_turn");
        write_anthropic(
            out,
            &a::StreamEvent::MessageDelta {
                delta: a::MessageDelta {
                    stop_reason: Some(reason.to_owned()),
                    stop_sequence: None,
                },
                usage: Some(usage_to_anthropic(self.usage.as_ref())),
            },
        );
        write_anthropic(out, &a::StreamEvent::MessageStop);
        self.phase = Phase::Done;
    }
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
