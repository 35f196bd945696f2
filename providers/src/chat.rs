//! The typed OpenAI chat model used between dialects: the parsed
//! `chat/completions` request, the non-streaming response, and a writer for
//! streamed `chat.completion.chunk` events.
//!
//! Only translation across dialects goes through these types; OpenAI to
//! OpenAI is byte pass-through in `core`. Unknown request members are
//! dropped by design: they have no meaning to another dialect.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shardgate_proto::json::write_json_string;

use crate::{Summary, TranslateError, Usage};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// Anthropic's extended thinking (`{"type": "enabled", "budget_tokens":
    /// N}`), as Anthropic's OpenAI compatibility documents it for chat:
    /// passed to Anthropic and Bedrock Claude targets, dropped for others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
}

impl ChatRequest {
    /// `max_completion_tokens`, or else the older `max_tokens`.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Extended thinking to ask a Claude model for: none when the
    /// conversation has a tool call of the assistant's without the signed
    /// thinking blocks that made it (Claude refuses such a turn; a client
    /// that kept `thinking_blocks` sends them back).
    pub fn thinking_to_send(&self) -> Option<&Value> {
        let unsigned_calls = self.messages.iter().any(|m| {
            m.role == Role::Assistant
                && m.tool_calls.as_ref().is_some_and(|c| !c.is_empty())
                && m.thinking_blocks.as_ref().is_none_or(Vec::is_empty)
        });
        self.thinking.as_ref().filter(|_| !unsigned_calls)
    }

    /// Whether any message carries thinking blocks.
    pub fn has_thinking_blocks(&self) -> bool {
        self.messages.iter().any(|m| m.thinking_blocks.is_some())
    }

    /// Removes every message's thinking blocks (for an upstream with no
    /// place for them), and the assistant turns that held nothing else (a
    /// turn cut while thinking): an empty turn is refused upstream. Tool
    /// calls are then unsigned, so [`Self::thinking_to_send`] turns
    /// thinking off.
    pub fn strip_thinking_blocks(&mut self) {
        self.messages.retain_mut(|m| {
            let had = m.thinking_blocks.take().is_some();
            !(had && m.content.is_none() && m.tool_calls.is_none())
        });
    }

    /// Whether any part or tool marks a prompt-cache breakpoint.
    pub fn has_cache_markers(&self) -> bool {
        let in_parts = self.messages.iter().any(|m| match &m.content {
            Some(Content::Parts(parts)) => parts.iter().any(|p| {
                matches!(
                    p,
                    ContentPart::Text {
                        cache_control: Some(_),
                        ..
                    }
                )
            }),
            _ => false,
        });
        in_parts
            || self
                .tools
                .iter()
                .flatten()
                .any(|t| t.cache_control.is_some())
    }

    /// Removes prompt-cache breakpoints, for a provider without them:
    /// true when there were any.
    pub fn strip_cache_markers(&mut self) -> bool {
        let mut any = false;
        for m in &mut self.messages {
            if let Some(Content::Parts(parts)) = &mut m.content {
                for p in parts {
                    if let ContentPart::Text { cache_control, .. } = p {
                        any |= cache_control.take().is_some();
                    }
                }
            }
        }
        for t in self.tools.iter_mut().flatten() {
            any |= t.cache_control.take().is_some();
        }
        any
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// `stop` as a list (absent or empty is None).
    pub fn stop_sequences(&self) -> Option<Vec<String>> {
        match &self.stop {
            None => None,
            Some(Stop::One(s)) => Some(vec![s.clone()]),
            Some(Stop::Many(v)) if v.is_empty() => None,
            Some(Stop::Many(v)) => Some(v.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// An assistant turn's extended thinking, sent back as it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_blocks: Option<Vec<ThinkingBlock>>,
}

/// A block of a Claude model's extended thinking in the chat shape, where
/// LiteLLM and other OpenAI-compatible servers carry it (`thinking_blocks`
/// on an assistant message, in an answer and in stream deltas): a turn
/// that continues tool calls sends the signed blocks back, and Claude
/// checks the signature against the thinking, so both travel unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingBlock {
    Thinking {
        thinking: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

impl Message {
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            thinking_blocks: None,
        }
    }

    /// The text of the content's text parts, concatenated (None if there
    /// is no content).
    pub fn text_content(&self) -> Option<String> {
        match self.content.as_ref()? {
            Content::Text(s) => Some(s.clone()),
            Content::Parts(parts) => Some(
                parts
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text, .. } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// The content as a list of parts.
    pub fn parts(&self) -> Vec<ContentPart> {
        match self {
            Content::Text(s) => vec![ContentPart::Text {
                text: s.clone(),
                cache_control: None,
            }],
            Content::Parts(p) => p.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text {
        text: String,
        /// A prompt-cache breakpoint after this part (Anthropic's
        /// `cache_control`, in the chat shape LiteLLM and others accept):
        /// kept for providers with prompt caching, dropped for others.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    ImageUrl {
        image_url: ImageUrl,
    },
    /// `input_audio`, `file`, `refusal` ...: not translatable.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An image reference split into what the other dialects want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image<'a> {
    /// `data:<media type>;base64,<data>`.
    Base64 {
        media_type: &'a str,
        data: &'a str,
    },
    Url(&'a str),
}

impl ImageUrl {
    /// Data URLs must be base64 (RFC 2397 allows percent-encoding, which no
    /// provider takes).
    pub fn parse(&self) -> Result<Image<'_>, crate::TranslateError> {
        let Some(rest) = self.url.strip_prefix("data:") else {
            return Ok(Image::Url(&self.url));
        };
        let (meta, data) = rest
            .split_once(',')
            .ok_or(crate::TranslateError::Unsupported("data URL without ','"))?;
        let media_type = meta
            .strip_suffix(";base64")
            .ok_or(crate::TranslateError::Unsupported("data URL not base64"))?;
        Ok(Image::Base64 { media_type, data })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

impl ToolCall {
    /// A function call with its arguments as JSON text.
    pub(crate) fn function(id: String, name: String, arguments: &Value) -> Self {
        ToolCall {
            id,
            kind: function_type(),
            function: FunctionCall {
                name,
                arguments: arguments.to_string(),
            },
        }
    }
}

fn function_type() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    /// A prompt-cache breakpoint after the tools up to this one (see
    /// [`ContentPart::Text`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

impl Tool {
    pub fn function(name: &str, description: Option<String>, parameters: Value) -> Self {
        Tool {
            kind: function_type(),
            function: Some(FunctionDef {
                name: name.to_owned(),
                description,
                parameters: Some(parameters),
                strict: None,
            }),
            cache_control: None,
        }
    }
}

/// `"auto" | "none" | "required"` or `{"type":"function","function":{"name":..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedToolChoice {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: ToolName,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolName {
    pub name: String,
}

/// What a tool choice asks of the model, dialect-neutral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode<'a> {
    Auto,
    None,
    Required,
    Named(&'a str),
}

impl ToolChoice {
    pub fn mode(&self) -> Result<ToolMode<'_>, crate::TranslateError> {
        match self {
            ToolChoice::Mode(m) => match m.as_str() {
                "auto" => Ok(ToolMode::Auto),
                "none" => Ok(ToolMode::None),
                "required" => Ok(ToolMode::Required),
                _ => Err(crate::TranslateError::Invalid(format!(
                    "unknown tool_choice {m:?}"
                ))),
            },
            ToolChoice::Named(n) => Ok(ToolMode::Named(&n.function.name)),
        }
    }

    pub fn from_mode(mode: ToolMode<'_>) -> Self {
        match mode {
            ToolMode::Auto => ToolChoice::Mode("auto".to_owned()),
            ToolMode::None => ToolChoice::Mode("none".to_owned()),
            ToolMode::Required => ToolChoice::Mode("required".to_owned()),
            ToolMode::Named(name) => ToolChoice::Named(NamedToolChoice {
                kind: function_type(),
                function: ToolName {
                    name: name.to_owned(),
                },
            }),
        }
    }
}

/// Non-streaming `chat.completion` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ChatUsage>,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

impl ChatResponse {
    /// A translated answer: `choices` under the reply's id, model and time.
    pub(crate) fn translated(ctx: &ReplyCtx, choices: Vec<Choice>, usage: &Usage) -> Self {
        ChatResponse {
            id: ctx.id.clone(),
            object: completion_object(),
            created: ctx.created,
            model: ctx.model.clone(),
            choices,
            usage: ChatUsage::from_usage(usage),
        }
    }
}

impl Choice {
    /// One assistant choice of a translated answer. `content` is null only
    /// when the answer is tool calls and nothing else (`has_text` false), as
    /// OpenAI sends it.
    pub(crate) fn assistant(
        index: u32,
        text: String,
        has_text: bool,
        calls: Vec<ToolCall>,
        finish_reason: &str,
    ) -> Self {
        Choice {
            index,
            message: ResponseMessage {
                role: Role::Assistant,
                content: (has_text || calls.is_empty()).then_some(text),
                tool_calls: (!calls.is_empty()).then_some(calls),
                refusal: None,
                reasoning_content: None,
                thinking_blocks: None,
            },
            finish_reason: Some(finish_reason.to_owned()),
            logprobs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The model's thinking as text (the `reasoning_content` of DeepSeek,
    /// vLLM and LiteLLM), and as the blocks to send back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_blocks: Option<Vec<ThinkingBlock>>,
}

impl ResponseMessage {
    /// Sets the answer's thinking: the blocks, and their text as
    /// `reasoning_content` (redacted blocks have none). No blocks, no
    /// change.
    pub(crate) fn with_thinking(&mut self, blocks: Vec<ThinkingBlock>) {
        if blocks.is_empty() {
            return;
        }
        let text: String = blocks
            .iter()
            .filter_map(|b| match b {
                ThinkingBlock::Thinking { thinking, .. } => Some(thinking.as_str()),
                ThinkingBlock::RedactedThinking { .. } => None,
            })
            .collect();
        self.reasoning_content = Some(text);
        self.thinking_blocks = Some(blocks);
    }
}

/// OpenAI's usage object. `prompt_tokens` includes cached tokens;
/// `completion_tokens` includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionTokensDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl ChatUsage {
    /// None when neither input nor output is known: an OpenAI usage object
    /// with made-up zeros would read as exact. The total saturates.
    pub fn from_usage(u: &Usage) -> Option<Self> {
        if u.input_tokens.is_none() && u.output_tokens.is_none() {
            return None;
        }
        let prompt = u.input_tokens.unwrap_or(0);
        let completion = u.output_tokens.unwrap_or(0);
        Some(ChatUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: u.cached_input_tokens.map(|c| PromptTokensDetails {
                cached_tokens: Some(c),
            }),
            completion_tokens_details: u.reasoning_tokens.map(|r| CompletionTokensDetails {
                reasoning_tokens: Some(r),
            }),
        })
    }

    pub fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: Some(self.prompt_tokens),
            output_tokens: Some(self.completion_tokens),
            cached_input_tokens: self.prompt_tokens_details.and_then(|d| d.cached_tokens),
            cache_write_tokens: None,
            reasoning_tokens: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens),
            estimated: false,
        }
    }
}

/// A streamed `chat.completion.chunk`, as read by the OpenAI to Anthropic
/// stream translator.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChatChunk {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<ChatUsage>,
    /// An in-stream error (`{"error":{...}}`).
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: ChunkDelta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ChunkDelta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// A piece of the model's thinking.
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// Where a thinking block's signature arrives (a block with empty
    /// `thinking`), and a redacted block whole.
    #[serde(default)]
    pub thinking_blocks: Option<Vec<ThinkingBlock>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// Identity of the response being produced: the gateway's id for it, the
/// model name the client sees, and its creation time (unix seconds, from the
/// caller's clock: this crate never reads one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCtx {
    pub id: String,
    pub model: String,
    pub created: u64,
    /// The client asked `stream_options.include_usage`: end the stream with
    /// a usage chunk.
    pub include_usage: bool,
}

/// Writes `chat.completion.chunk` SSE events. The invariant part of every
/// chunk (`id`, `object`, `created`, `model`) is rendered once.
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    /// `data: {"id":..,"object":"chat.completion.chunk","created":..,"model":..,`
    head: Vec<u8>,
}

impl ChunkWriter {
    pub fn new(ctx: &ReplyCtx) -> Self {
        let mut head = Vec::with_capacity(96 + ctx.id.len() + ctx.model.len());
        head.extend_from_slice(b"data: {\"id\":");
        write_json_string(&mut head, &ctx.id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(ctx.created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        write_json_string(&mut head, &ctx.model);
        head.push(b',');
        Self { head }
    }

    fn open_choice(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":{");
    }

    fn close_choice(out: &mut Vec<u8>, finish_reason: Option<&str>) {
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(r) => write_json_string(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// The first chunk: `{"role":"assistant","content":""}`.
    pub fn role(&self, out: &mut Vec<u8>) {
        self.open_choice(out);
        out.extend_from_slice(b"\"role\":\"assistant\",\"content\":\"\"");
        Self::close_choice(out, None);
    }

    pub fn content(&self, out: &mut Vec<u8>, text: &str) {
        self.open_choice(out);
        out.extend_from_slice(b"\"content\":");
        write_json_string(out, text);
        Self::close_choice(out, None);
    }

    /// A piece of the model's thinking (`reasoning_content`).
    pub fn reasoning(&self, out: &mut Vec<u8>, text: &str) {
        self.open_choice(out);
        out.extend_from_slice(b"\"reasoning_content\":");
        write_json_string(out, text);
        Self::close_choice(out, None);
    }

    /// A thinking block's signature (on a block with empty `thinking`), or
    /// a redacted block whole.
    pub fn thinking_block(&self, out: &mut Vec<u8>, block: &ThinkingBlock) {
        self.open_choice(out);
        out.extend_from_slice(b"\"thinking_blocks\":[");
        // A plain enum of strings: serializing it cannot fail.
        let _ = serde_json::to_writer(&mut *out, block);
        out.push(b']');
        Self::close_choice(out, None);
    }

    /// The first delta of a tool call: index, id, type, name, empty arguments.
    pub fn tool_call_start(&self, out: &mut Vec<u8>, index: u32, id: &str, name: &str) {
        self.tool_call(out, index, Some((id, name)), "");
    }

    /// A fragment of a tool call's arguments.
    pub fn tool_call_arguments(&self, out: &mut Vec<u8>, index: u32, fragment: &str) {
        self.tool_call(out, index, None, fragment);
    }

    /// A whole tool call in one delta (providers that send calls complete).
    pub fn tool_call(
        &self,
        out: &mut Vec<u8>,
        index: u32,
        start: Option<(&str, &str)>,
        arguments: &str,
    ) {
        self.open_choice(out);
        out.extend_from_slice(b"\"tool_calls\":[{\"index\":");
        out.extend_from_slice(index.to_string().as_bytes());
        if let Some((id, name)) = start {
            out.extend_from_slice(b",\"id\":");
            write_json_string(out, id);
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            write_json_string(out, name);
            out.extend_from_slice(b",\"arguments\":");
        } else {
            out.extend_from_slice(b",\"function\":{\"arguments\":");
        }
        write_json_string(out, arguments);
        out.extend_from_slice(b"}}]");
        Self::close_choice(out, None);
    }

    /// The chunk with an empty delta and the finish reason.
    pub fn finish(&self, out: &mut Vec<u8>, finish_reason: &str) {
        self.open_choice(out);
        Self::close_choice(out, Some(finish_reason));
    }

    /// The `stream_options.include_usage` chunk: no choices, the usage.
    /// Skipped when no usage is known.
    pub fn usage(&self, out: &mut Vec<u8>, usage: &Usage) {
        let Some(usage) = ChatUsage::from_usage(usage) else {
            return;
        };
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"\"choices\":[],\"usage\":");
        // Serializing plain integers and options cannot fail.
        let _ = serde_json::to_writer(&mut *out, &usage);
        out.extend_from_slice(b"}\n\n");
    }

    pub fn done(out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// An in-stream error event: `data: {"error":{...}}`.
    pub fn error(out: &mut Vec<u8>, message: &str, kind: &str, code: Option<&str>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&shardgate_proto::openai::error_body(
            message, kind, None, code,
        ));
        out.extend_from_slice(b"\n\n");
    }
}

/// Rough output-token estimate for a cut stream: about four bytes of text
/// per token.
pub(crate) fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// How a translated stream ended, for [`end_stream`].
pub(crate) struct StreamEnd<'a> {
    pub usage: Usage,
    /// The upstream did not finish properly: its usage is only a lower bound.
    pub estimated: bool,
    /// The upstream stopped mid-answer: the client gets an error event.
    pub cut: bool,
    pub sent_bytes: usize,
    pub finish_reason: Option<&'a str>,
    pub unknown_events: u64,
}

/// The end every stream translator shares: an unfinished stream's output
/// count is raised to what was relayed (about four bytes a token) and marked
/// estimated, and a cut stream ends with an error event, never silently.
pub(crate) fn end_stream(out: &mut Vec<u8>, end: StreamEnd<'_>) -> Summary {
    let mut usage = end.usage;
    if end.estimated {
        usage.estimated = true;
        let estimate = estimate_tokens(end.sent_bytes);
        usage.output_tokens = Some(usage.output_tokens.unwrap_or(0).max(estimate));
    }
    if end.cut {
        ChunkWriter::error(
            out,
            "upstream stream ended before completion",
            "server_error",
            Some("upstream_cut"),
        );
    }
    Summary {
        usage,
        finish_reason: end.finish_reason.map(str::to_owned),
        unknown_events: end.unknown_events,
        cut: end.cut,
    }
}

/// Feeds raw SSE bytes through `framer` to a per-event handler, stopping at
/// the handler's first error: the one loop every SSE stream translator needs.
pub(crate) fn feed_sse(
    framer: &mut shardgate_proto::sse::SseFramer,
    input: &[u8],
    out: &mut Vec<u8>,
    mut on_event: impl FnMut(
        shardgate_proto::sse::SseEvent<'_>,
        &mut Vec<u8>,
    ) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    let mut err = None;
    let framed = framer.feed(input, |ev| {
        if err.is_none() {
            if let Err(e) = on_event(ev, out) {
                err = Some(e);
            }
        }
    });
    // The first error wins, whatever the split (see `BedrockToOpenAi`).
    if let Some(e) = err {
        return Err(e);
    }
    framed.map_err(|e| TranslateError::Framing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_proto::sse::SseFramer;
    use shardgate_proto::testing::for_each_split;

    #[test]
    fn total_tokens_saturate() {
        let u = ChatUsage::from_usage(&Usage {
            input_tokens: Some(u64::MAX),
            output_tokens: Some(1),
            ..Usage::default()
        });
        assert_eq!(u.map(|u| u.total_tokens), Some(u64::MAX));
    }

    /// An event the handler rejects, then one over the framer's limit: the
    /// handler's error is reported however the input is split.
    #[test]
    fn feed_sse_reports_the_first_error() {
        let input = b"data: bad\n\ndata: 0123456789012345678901234567890123456789\n\n";
        for_each_split(input, |pieces| {
            let mut framer = SseFramer::new(32);
            let mut out = Vec::new();
            let err = pieces
                .iter()
                .find_map(|p| {
                    feed_sse(&mut framer, p, &mut out, |_, _| {
                        Err(TranslateError::UpstreamJson("bad".into()))
                    })
                    .err()
                })
                .unwrap();
            assert_eq!(err, TranslateError::UpstreamJson("bad".into()));
        });
    }
}
