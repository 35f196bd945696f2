//! Amazon Bedrock Converse API: `POST /model/{modelId}/converse` and
//! `/converse-stream` on `bedrock-runtime.{region}.amazonaws.com`, signed
//! with SigV4 (service `bedrock`) or, given an API key, `Authorization:
//! Bearer`. The stream body is an AWS event-stream ([`crate::eventstream`]).
//!
//! Mapping rules follow the Anthropic ones (Converse mirrors Messages):
//! system messages become `system`, consecutive roles merge, tool results
//! are `toolResult` blocks in a user turn. Images must be inline (data
//! URLs); Converse takes no image URLs. `tool_choice: "none"` drops the
//! tools unless the history uses them (Converse has no "none").

use serde::Deserialize;
use shardgate_proto::bedrock as b;

use crate::anthropic::parse_arguments;
use crate::chat::{
    self, ChatRequest, ChatResponse, ChunkWriter, Content, ContentPart, Image, ReplyCtx, Role,
    ToolMode,
};
use crate::errors::KnownSecrets;
use crate::eventstream::{Decoder, Message};
use crate::sigv4::{self, Credentials};
use crate::{
    json_body, upstream_json, Dialect, PrepareCtx, Provider, StreamTranslator, Summary,
    TranslateError, UpstreamRequest, Usage, MAX_EVENT_BYTES,
};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BedrockProvider {
    pub region: String,
    /// SigV4 credentials; without them `PrepareCtx::api_key` is sent as a
    /// Bedrock API key (Bearer).
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// The `Host` the request goes to when it is not the regional AWS
    /// endpoint (a VPC endpoint, a proxy, a test server): SigV4 signs the
    /// host, so it must be the one actually sent.
    #[serde(default)]
    pub endpoint_host: Option<String>,
}

impl BedrockProvider {
    /// `bedrock-runtime.{region}.amazonaws.com`; the default base URL is
    /// `https://` + this.
    pub fn default_host(region: &str) -> String {
        format!("bedrock-runtime.{region}.amazonaws.com")
    }

    /// The host that is signed and sent.
    pub fn host(&self) -> String {
        self.endpoint_host
            .clone()
            .unwrap_or_else(|| Self::default_host(&self.region))
    }
}

impl Provider for BedrockProvider {
    fn dialect(&self) -> Dialect {
        Dialect::Bedrock
    }

    fn prepare(
        &self,
        req: &ChatRequest,
        ctx: &PrepareCtx<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        // Converse refuses a checkpoint for a model without prompt caching,
        // and `thinking` or earlier turns' thinking blocks for a model that
        // is not Claude: those go, the request stays valid. Claude gets its
        // blocks back as `reasoningContent`.
        let claude = ctx.model.contains("anthropic.claude");
        let no_points = req.has_cache_markers() && !takes_cache_points(ctx.model);
        let no_thinking = req.thinking.is_some() && !claude;
        let no_blocks = req.has_thinking_blocks() && !claude;
        let body = if no_points || no_thinking || no_blocks {
            let mut plain = req.clone();
            if no_points {
                plain.strip_cache_markers();
            }
            if no_thinking {
                plain.thinking = None;
            }
            if no_blocks {
                plain.strip_thinking_blocks();
            }
            json_body(&from_openai(&plain)?)?
        } else {
            json_body(&from_openai(req)?)?
        };
        let op = if req.is_stream() {
            "converse-stream"
        } else {
            "converse"
        };
        let path = format!("/model/{}/{op}", sigv4::uri_encode(ctx.model, false));
        let accept = if req.is_stream() {
            "application/vnd.amazon.eventstream"
        } else {
            "application/json"
        };
        let mut headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("accept".to_owned(), accept.to_owned()),
        ];
        match (&self.credentials, ctx.api_key) {
            (Some(creds), _) => {
                let signed = sigv4::sign(
                    &sigv4::Request {
                        method: "POST",
                        host: &self.host(),
                        path: &path,
                        query: "",
                        headers: &headers,
                        payload_sha256: &sigv4::sha256_hex(&body),
                    },
                    &sigv4::Scope {
                        region: &self.region,
                        service: "bedrock",
                        now_unix: ctx.now_unix,
                    },
                    creds,
                );
                headers.extend(signed);
            }
            (None, Some(key)) => {
                headers.push(("authorization".to_owned(), format!("Bearer {key}")))
            }
            (None, None) => return Err(TranslateError::MissingCredentials("AWS credentials")),
        }
        Ok(UpstreamRequest {
            path,
            headers,
            body,
        })
    }

    fn response_to_openai(
        &self,
        body: &[u8],
        ctx: &ReplyCtx,
    ) -> Result<(Vec<u8>, Usage), TranslateError> {
        let resp: b::ConverseResponse = upstream_json(body)?;
        let (chat, usage) = ChatResponse::from_bedrock(&resp, ctx);
        Ok((json_body(&chat)?, usage))
    }

    fn error_to_openai(&self, status: u16, body: &[u8], known: &KnownSecrets) -> Vec<u8> {
        let message = serde_json::from_slice::<b::ErrorResponse>(body)
            .map(|e| e.message)
            .unwrap_or_default();
        crate::errors::openai_error(status, &message, None, known)
    }

    fn stream_translator(&self, ctx: ReplyCtx, known: &KnownSecrets) -> Option<StreamTranslator> {
        Some(StreamTranslator::Bedrock(
            BedrockToOpenAi::new(ctx).redacting(known.clone()),
        ))
    }
}

// ---------------------------------------------------------------------------
// OpenAI request -> Converse request

/// Whether Bedrock takes prompt-cache checkpoints (`cachePoint`) for
/// `model` (an id or an inference profile): Amazon Nova, and Anthropic's
/// Claude models from 3.5 Haiku and 3.7 Sonnet on (not Claude 2, Instant,
/// 3 or 3.5 Sonnet).
pub fn takes_cache_points(model: &str) -> bool {
    const WITHOUT: &[&str] = &[
        "claude-v2",
        "claude-instant",
        "claude-3-haiku",
        "claude-3-sonnet",
        "claude-3-opus",
        "claude-3-5-sonnet",
    ];
    model.contains("amazon.nova")
        || (model.contains("anthropic.claude") && !WITHOUT.iter().any(|w| model.contains(w)))
}

pub fn from_openai(req: &ChatRequest) -> Result<b::ConverseRequest, TranslateError> {
    if req.n.is_some_and(|n| n > 1) {
        return Err(TranslateError::Unsupported("n > 1"));
    }
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<b::ContentBlock>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                match &m.content {
                    // Split by part only where a part marks a checkpoint.
                    Some(Content::Parts(parts))
                        if parts.iter().any(|p| {
                            matches!(
                                p,
                                ContentPart::Text {
                                    cache_control: Some(_),
                                    ..
                                }
                            )
                        }) =>
                    {
                        for p in parts {
                            if let ContentPart::Text {
                                text,
                                cache_control,
                            } = p
                            {
                                system.push(b::SystemBlock {
                                    text: Some(text.clone()),
                                    ..b::SystemBlock::default()
                                });
                                if cache_control.is_some() {
                                    system.push(b::SystemBlock {
                                        cache_point: Some(b::CachePoint::default_point()),
                                        ..b::SystemBlock::default()
                                    });
                                }
                            }
                        }
                    }
                    _ => {
                        if let Some(text) = m.text_content() {
                            system.push(b::SystemBlock {
                                text: Some(text),
                                ..b::SystemBlock::default()
                            });
                        }
                    }
                }
                continue;
            }
            Role::User => {
                let mut blocks = Vec::new();
                for part in m.content.as_ref().map(Content::parts).unwrap_or_default() {
                    // Anthropic's cache breakpoint is Converse's checkpoint
                    // after the block.
                    let marked = matches!(
                        part,
                        ContentPart::Text {
                            cache_control: Some(_),
                            ..
                        }
                    );
                    blocks.push(user_block(part)?);
                    if marked {
                        blocks.push(b::ContentBlock {
                            cache_point: Some(b::CachePoint::default_point()),
                            ..b::ContentBlock::default()
                        });
                    }
                }
                ("user", blocks)
            }
            Role::Assistant => {
                // A turn's thinking comes first, as Claude wrote it.
                let mut blocks: Vec<b::ContentBlock> = m
                    .thinking_blocks
                    .iter()
                    .flatten()
                    .map(reasoning_block)
                    .collect();
                if let Some(text) = m.text_content().filter(|t| !t.is_empty()) {
                    blocks.push(text_block(text));
                }
                for call in m.tool_calls.iter().flatten() {
                    blocks.push(b::ContentBlock {
                        tool_use: Some(b::ToolUseBlock {
                            tool_use_id: call.id.clone(),
                            name: call.function.name.clone(),
                            input: parse_arguments(&call.function.arguments)?,
                        }),
                        ..b::ContentBlock::default()
                    });
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = m.tool_call_id.clone().ok_or_else(|| {
                    TranslateError::Invalid("tool message without tool_call_id".into())
                })?;
                let block = b::ContentBlock {
                    tool_result: Some(b::ToolResultBlock {
                        tool_use_id: id,
                        content: vec![b::ToolResultContent {
                            text: Some(m.text_content().unwrap_or_default()),
                            json: None,
                        }],
                        status: None,
                    }),
                    ..b::ContentBlock::default()
                };
                ("user", vec![block])
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let uses_tools = turns
        .iter()
        .flat_map(|(_, blocks)| blocks)
        .any(|b| b.tool_use.is_some() || b.tool_result.is_some());
    let messages = turns
        .into_iter()
        .filter(|(_, blocks)| !blocks.is_empty())
        .map(|(role, content)| b::Message {
            role: role.to_owned(),
            content,
        })
        .collect();

    let mode = req.tool_choice.as_ref().map(|c| c.mode()).transpose()?;
    let tool_config = match &req.tools {
        Some(tools) if !tools.is_empty() && (mode != Some(ToolMode::None) || uses_tools) => {
            let mut specs = Vec::with_capacity(tools.len());
            for t in tools {
                let f = t
                    .function
                    .as_ref()
                    .ok_or(TranslateError::Unsupported("non-function tools"))?;
                specs.push(b::Tool {
                    tool_spec: Some(b::ToolSpec {
                        name: f.name.clone(),
                        description: f.description.clone(),
                        input_schema: b::InputSchema {
                            json: f.parameters.clone().unwrap_or_else(
                                || serde_json::json!({"type": "object", "properties": {}}),
                            ),
                        },
                    }),
                    cache_point: None,
                });
                if t.cache_control.is_some() {
                    specs.push(b::Tool {
                        tool_spec: None,
                        cache_point: Some(b::CachePoint::default_point()),
                    });
                }
            }
            let tools = specs;
            let thinking = req.thinking_to_send().is_some();
            let tool_choice = match mode {
                None | Some(ToolMode::None) => None,
                Some(ToolMode::Auto) => Some(b::ToolChoice::Auto {}),
                // Thinking takes no forced tool.
                Some(ToolMode::Required | ToolMode::Named(_)) if thinking => {
                    Some(b::ToolChoice::Auto {})
                }
                Some(ToolMode::Required) => Some(b::ToolChoice::Any {}),
                Some(ToolMode::Named(name)) => Some(b::ToolChoice::Tool {
                    name: name.to_owned(),
                }),
            };
            Some(b::ToolConfig { tools, tool_choice })
        }
        _ => None,
    };
    // With thinking, Claude takes no temperature and a `top_p` of 0.95
    // or more.
    let thinking = req.thinking_to_send().is_some();
    let config = b::InferenceConfig {
        max_tokens: req.max_output_tokens(),
        temperature: req.temperature.filter(|_| !thinking),
        top_p: req.top_p.filter(|p| !thinking || *p >= 0.95),
        stop_sequences: req.stop_sequences(),
    };
    Ok(b::ConverseRequest {
        messages,
        system,
        inference_config: (config != b::InferenceConfig::default()).then_some(config),
        tool_config,
        // Claude on Bedrock takes `thinking` among its own fields.
        additional_model_request_fields: req
            .thinking_to_send()
            .map(|t| serde_json::json!({ "thinking": t })),
    })
}

/// A chat thinking block as Converse's `reasoningContent`.
fn reasoning_block(t: &chat::ThinkingBlock) -> b::ContentBlock {
    let reasoning = match t {
        chat::ThinkingBlock::Thinking {
            thinking,
            signature,
        } => b::ReasoningContent {
            reasoning_text: Some(b::ReasoningText {
                text: thinking.clone(),
                signature: signature.clone(),
            }),
            redacted_content: None,
        },
        chat::ThinkingBlock::RedactedThinking { data } => b::ReasoningContent {
            reasoning_text: None,
            redacted_content: Some(data.clone()),
        },
    };
    b::ContentBlock {
        reasoning_content: Some(reasoning),
        ..b::ContentBlock::default()
    }
}

/// Converse's `reasoningContent` as a chat thinking block.
fn thinking_block(r: &b::ReasoningContent) -> Option<chat::ThinkingBlock> {
    match (&r.reasoning_text, &r.redacted_content) {
        (Some(t), _) => Some(chat::ThinkingBlock::Thinking {
            thinking: t.text.clone(),
            signature: t.signature.clone(),
        }),
        (None, Some(data)) => Some(chat::ThinkingBlock::RedactedThinking { data: data.clone() }),
        (None, None) => None,
    }
}

fn text_block(text: String) -> b::ContentBlock {
    b::ContentBlock {
        text: Some(text),
        ..b::ContentBlock::default()
    }
}

fn user_block(part: ContentPart) -> Result<b::ContentBlock, TranslateError> {
    match part {
        ContentPart::Text { text, .. } => Ok(text_block(text)),
        ContentPart::ImageUrl { image_url } => match image_url.parse()? {
            Image::Base64 { media_type, data } => {
                let format = match media_type {
                    "image/png" => "png",
                    "image/jpeg" | "image/jpg" => "jpeg",
                    "image/gif" => "gif",
                    "image/webp" => "webp",
                    _ => {
                        return Err(TranslateError::Unsupported(
                            "image type other than png, jpeg, gif, webp",
                        ))
                    }
                };
                Ok(b::ContentBlock {
                    image: Some(b::ImageBlock {
                        format: format.to_owned(),
                        source: b::ImageSource {
                            bytes: data.to_owned(),
                        },
                    }),
                    ..b::ContentBlock::default()
                })
            }
            Image::Url(_) => Err(TranslateError::Unsupported(
                "image URLs (Converse takes inline images only)",
            )),
        },
        ContentPart::Other => Err(TranslateError::Unsupported(
            "content parts other than text and image_url",
        )),
    }
}

// ---------------------------------------------------------------------------
// Converse response -> OpenAI response

/// Converse `stopReason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// Converse usage (whose `inputTokens` excludes cache reads and writes).
/// The sum saturates, as in [`crate::anthropic::usage`].
pub fn usage(u: &b::TokenUsage) -> Usage {
    let parts = [
        u.input_tokens,
        u.cache_read_input_tokens,
        u.cache_write_input_tokens,
    ];
    Usage {
        input_tokens: parts.iter().any(Option::is_some).then(|| {
            parts
                .iter()
                .flatten()
                .fold(0u64, |a, &b| a.saturating_add(b))
        }),
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cache_read_input_tokens,
        cache_write_tokens: u.cache_write_input_tokens,
        reasoning_tokens: None,
        estimated: false,
    }
}

impl ChatResponse {
    pub fn from_bedrock(resp: &b::ConverseResponse, ctx: &ReplyCtx) -> (ChatResponse, Usage) {
        let mut text = String::new();
        let mut calls = Vec::new();
        let mut thinking = Vec::new();
        for block in resp.output.message.iter().flat_map(|m| &m.content) {
            if let Some(t) = block.reasoning_content.as_ref().and_then(thinking_block) {
                thinking.push(t);
            }
            if let Some(t) = &block.text {
                text.push_str(t);
            }
            if let Some(tool) = &block.tool_use {
                calls.push(chat::ToolCall::function(
                    tool.tool_use_id.clone(),
                    tool.name.clone(),
                    &tool.input,
                ));
            }
        }
        let usage = resp.usage.as_ref().map(usage).unwrap_or_default();
        let reason = finish_reason(resp.stop_reason.as_deref().unwrap_or("end_turn"));
        let has_text = !text.is_empty();
        let mut choice = chat::Choice::assistant(0, text, has_text, calls, reason);
        choice.message.with_thinking(thinking);
        let chat = ChatResponse::translated(ctx, vec![choice], &usage);
        (chat, usage)
    }
}

// ---------------------------------------------------------------------------
// ConverseStream -> OpenAI stream

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Done,
    Failed,
}

/// Bedrock event-stream in, OpenAI `chat.completion.chunk` SSE out.
#[derive(Debug)]
pub struct BedrockToOpenAi {
    decoder: Decoder,
    state: BedrockState,
}

#[derive(Debug)]
struct BedrockState {
    w: ChunkWriter,
    include_usage: bool,
    started: bool,
    /// (content block index, OpenAI tool-call index).
    tools: Vec<(u32, u32)>,
    usage: Option<b::TokenUsage>,
    finish_reason: Option<&'static str>,
    phase: Phase,
    unknown: u64,
    sent_bytes: usize,
    known: KnownSecrets,
}

fn payload<'a, T: Deserialize<'a>>(m: &Message<'a>) -> Result<T, TranslateError> {
    upstream_json(m.payload)
}

impl BedrockToOpenAi {
    pub fn new(ctx: ReplyCtx) -> Self {
        Self {
            decoder: Decoder::new(MAX_EVENT_BYTES),
            state: BedrockState {
                w: ChunkWriter::new(&ctx),
                include_usage: ctx.include_usage,
                started: false,
                tools: Vec::new(),
                usage: None,
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
        let mut err = None;
        let framed = self.decoder.feed(input, |m| {
            if err.is_none() {
                if let Err(e) = state.on_message(&m, out) {
                    err = Some(e);
                }
            }
        });
        // The first error wins: a broken message after it must not replace
        // it, or the error would depend on where the network split the body.
        if let Some(e) = err {
            return Err(e);
        }
        framed.map_err(|e| TranslateError::Framing(e.to_string()))
    }

    pub fn unknown_events(&self) -> u64 {
        self.state.unknown
    }

    pub fn finish(self, out: &mut Vec<u8>) -> Summary {
        let mut s = self.state;
        let stopped = s.phase == Phase::Open && s.finish_reason.is_some();
        if stopped {
            // messageStop came but no metadata: close the stream anyway.
            s.end(out);
        }
        chat::end_stream(
            out,
            chat::StreamEnd {
                usage: s.usage.as_ref().map(usage).unwrap_or_default(),
                estimated: s.phase != Phase::Done || s.usage.is_none(),
                cut: s.phase == Phase::Open,
                sent_bytes: s.sent_bytes,
                finish_reason: s.finish_reason,
                unknown_events: s.unknown,
            },
        )
    }
}

impl BedrockState {
    fn on_message(&mut self, m: &Message<'_>, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.phase != Phase::Open {
            return Ok(());
        }
        match m.header(":message-type") {
            Some("event") => {}
            Some("exception") | Some("error") => {
                let kind = m
                    .header(":exception-type")
                    .or_else(|| m.header(":error-code"))
                    .unwrap_or("internalServerException");
                let message = serde_json::from_slice::<b::ErrorResponse>(m.payload)
                    .map(|e| e.message)
                    .ok()
                    .or_else(|| m.header(":error-message").map(str::to_owned))
                    .unwrap_or_default();
                let status = match kind {
                    "throttlingException" => 429,
                    "validationException" => 400,
                    "serviceUnavailableException" => 503,
                    _ => 500,
                };
                ChunkWriter::error(
                    out,
                    &crate::redact_secrets(&message, &self.known),
                    crate::openai_error_type(status),
                    Some(kind),
                );
                self.phase = Phase::Failed;
                return Ok(());
            }
            _ => {
                self.unknown += 1;
                return Ok(());
            }
        }
        match m.header(":event-type") {
            Some("messageStart") => self.start(out),
            Some("contentBlockStart") => {
                let ev: b::ContentBlockStartEvent = payload(m)?;
                self.start(out);
                if let Some(tool) = ev.start.tool_use {
                    let index = self.tools.len() as u32;
                    self.tools.push((ev.content_block_index, index));
                    self.sent_bytes += tool.name.len();
                    self.w
                        .tool_call_start(out, index, &tool.tool_use_id, &tool.name);
                }
            }
            Some("contentBlockDelta") => {
                let ev: b::ContentBlockDeltaEvent = payload(m)?;
                self.start(out);
                if let Some(text) = ev.delta.text.as_deref().filter(|t| !t.is_empty()) {
                    self.sent_bytes += text.len();
                    self.w.content(out, text);
                } else if let Some(tool) = ev.delta.tool_use.filter(|t| !t.input.is_empty()) {
                    let index = self
                        .tools
                        .iter()
                        .find(|(block, _)| *block == ev.content_block_index)
                        .map(|(_, i)| *i);
                    if let Some(index) = index {
                        self.sent_bytes += tool.input.len();
                        self.w.tool_call_arguments(out, index, &tool.input);
                    }
                } else if let Some(r) = ev.delta.reasoning_content {
                    if let Some(text) = r.text.as_deref().filter(|t| !t.is_empty()) {
                        self.sent_bytes += text.len();
                        self.w.reasoning(out, text);
                    }
                    if let Some(signature) = r.signature {
                        let block = chat::ThinkingBlock::Thinking {
                            thinking: String::new(),
                            signature: Some(signature),
                        };
                        self.w.thinking_block(out, &block);
                    }
                    if let Some(data) = r.redacted_content {
                        let block = chat::ThinkingBlock::RedactedThinking { data };
                        self.w.thinking_block(out, &block);
                    }
                } else if ev.delta.text.is_none() {
                    self.unknown += 1;
                }
            }
            Some("contentBlockStop") => {}
            Some("messageStop") => {
                let ev: b::MessageStopEvent = payload(m)?;
                self.start(out);
                if self.finish_reason.is_none() {
                    let reason = finish_reason(ev.stop_reason.as_deref().unwrap_or("end_turn"));
                    self.finish_reason = Some(reason);
                    self.w.finish(out, reason);
                }
            }
            Some("metadata") => {
                let ev: b::MetadataEvent = payload(m)?;
                if ev.usage.is_some() {
                    self.usage = ev.usage;
                }
                if self.finish_reason.is_some() {
                    self.end(out);
                }
            }
            _ => self.unknown += 1,
        }
        Ok(())
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.w.role(out);
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            if let Some(u) = &self.usage {
                self.w.usage(out, &usage(u));
            }
        }
        ChunkWriter::done(out);
        self.phase = Phase::Done;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_points_go_only_to_models_that_take_them() {
        assert!(takes_cache_points(
            "us.anthropic.claude-sonnet-4-20250514-v1:0"
        ));
        assert!(takes_cache_points(
            "anthropic.claude-3-7-sonnet-20250219-v1:0"
        ));
        assert!(takes_cache_points(
            "anthropic.claude-3-5-haiku-20241022-v1:0"
        ));
        assert!(takes_cache_points("amazon.nova-pro-v1:0"));
        assert!(!takes_cache_points(
            "anthropic.claude-3-5-sonnet-20240620-v1:0"
        ));
        assert!(!takes_cache_points("anthropic.claude-v2:1"));
        assert!(!takes_cache_points("meta.llama3-1-70b-instruct-v1:0"));
    }

    use super::*;
    use crate::eventstream::encode;
    use shardgate_proto::testing::for_each_split;

    #[test]
    fn usage_sums_saturate() {
        let u = usage(&b::TokenUsage {
            input_tokens: Some(u64::MAX),
            cache_read_input_tokens: Some(1),
            ..Default::default()
        });
        assert_eq!(u.input_tokens, Some(u64::MAX));
    }

    /// A message the translator rejects, then one with a broken CRC: the
    /// first error is reported however the body is split (the whole body
    /// used to report the CRC error, a split between the two the JSON one).
    #[test]
    fn the_first_error_wins_over_a_later_broken_message() {
        let event = |kind: &str, payload: &[u8]| {
            encode(
                &[(":message-type", "event"), (":event-type", kind)],
                payload,
            )
        };
        let mut body = event("messageStart", br#"{"role":"assistant"}"#);
        body.extend_from_slice(&event("contentBlockDelta", b"not json"));
        let mut broken = event("contentBlockStop", b"{}");
        if let Some(last) = broken.last_mut() {
            *last ^= 1;
        }
        body.extend_from_slice(&broken);
        for_each_split(&body, |pieces| {
            let ctx = ReplyCtx {
                id: "c".into(),
                model: "m".into(),
                created: 1,
                include_usage: false,
            };
            let mut t = BedrockToOpenAi::new(ctx);
            let mut out = Vec::new();
            let err = pieces
                .iter()
                .find_map(|p| t.on_bytes(p, &mut out).err())
                .unwrap();
            assert!(matches!(err, TranslateError::UpstreamJson(_)), "{err:?}");
        });
    }
}
