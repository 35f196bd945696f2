//! Provider adapters: one file per provider behind one small trait, turning the
//! gateway's OpenAI-shaped request into the provider's request and the
//! provider's response and stream back. Pure: no IO, no clock, no runtime.
//!
//! What it must never do: IO, clock reads (time is an argument: `now_unix`,
//! `created`), async, or put a credential into anything it returns other
//! than the upstream request's auth headers.
//!
//! Invariants:
//! - Translation goes through typed models ([`chat`] on the OpenAI side, the
//!   `shardgate_proto::{anthropic, gemini, bedrock}` wire types on the other)
//!   and only between different dialects; OpenAI to OpenAI is pass-through
//!   in `core`. Conversions are named `from_<dialect>`.
//! - Stream translators are sans-IO state machines fed raw upstream body
//!   bytes however the network split them; they give the same output for
//!   every split ([`shardgate_proto::testing::for_each_split`] in the tests).
//! - Usage that is absent is `None`, never zero; usage from a cut stream is
//!   marked `estimated`.
//! - Unknown stream events are dropped and counted, never fatal.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod chat;
mod errors;
pub mod eventstream;
pub mod gemini;
pub mod openai;
pub mod presets;
pub mod replay;
pub mod responses;
pub mod sigv4;
#[doc(hidden)]
pub mod testing;

pub use chat::{ChatRequest, ChatResponse, ReplyCtx};
pub use errors::{
    is_context_length_error, openai_error_type, redact_json_secrets, redact_secrets, KnownSecrets,
};

/// What a provider speaks on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

/// One usage record for every provider.
///
/// `input_tokens` counts every prompt token, including those read from or
/// written to a cache (OpenAI's `prompt_tokens`); `cached_input_tokens` and
/// `cache_write_tokens` are the parts of it served from and written to the
/// cache. `output_tokens` includes `reasoning_tokens`. Absent is None, not
/// zero; `estimated` when derived from a cut stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_input_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    #[serde(default)]
    pub estimated: bool,
}

/// What a finished stream leaves for settlement and audit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub usage: Usage,
    /// In the client's dialect (`stop`, `length`, `tool_calls`... for
    /// OpenAI; `end_turn`, `max_tokens`, `tool_use`... for Anthropic).
    pub finish_reason: Option<String>,
    /// Upstream events dropped because their type is unknown.
    pub unknown_events: u64,
    /// The upstream stream ended before its end marker.
    pub cut: bool,
}

/// What the gateway sends upstream: always a `POST` of `body` to `path`
/// (path and query, relative to the provider's base URL) with `headers`
/// added (auth, version, content type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Per-request inputs to [`Provider::prepare`].
#[derive(Debug, Clone, Copy)]
pub struct PrepareCtx<'a> {
    /// The upstream model name (Azure: the deployment; Bedrock: model id
    /// or inference profile).
    pub model: &'a str,
    /// The provider key, when the provider takes one.
    pub api_key: Option<&'a str>,
    /// Now, in unix seconds (SigV4 signs it).
    pub now_unix: u64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TranslateError {
    /// The client's request cannot be expressed (bad value, dangling
    /// reference).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A feature this provider or dialect has no equivalent for.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The client's body is not the JSON this dialect expects.
    #[error("request body: {0}")]
    ClientJson(String),
    /// The upstream's body is not the JSON its API documents.
    #[error("upstream body: {0}")]
    UpstreamJson(String),
    /// The upstream stream's framing is broken (event too large, bad CRC).
    #[error("upstream stream framing: {0}")]
    Framing(String),
    #[error("missing credentials: {0}")]
    MissingCredentials(&'static str),
}

/// One provider's translation: one impl per provider file.
pub trait Provider {
    fn dialect(&self) -> Dialect;

    /// The upstream request for a chat request (streaming when
    /// `req.stream` is true).
    fn prepare(
        &self,
        req: &ChatRequest,
        ctx: &PrepareCtx<'_>,
    ) -> Result<UpstreamRequest, TranslateError>;

    /// A non-streaming upstream body as an OpenAI `chat.completion` body.
    fn response_to_openai(
        &self,
        body: &[u8],
        ctx: &ReplyCtx,
    ) -> Result<(Vec<u8>, Usage), TranslateError>;

    /// An upstream error (status and body) as an OpenAI error body keeping
    /// the provider's message, with `known` (the credentials sent to this
    /// upstream) and anything that looks like a credential redacted.
    fn error_to_openai(&self, status: u16, body: &[u8], known: &KnownSecrets) -> Vec<u8>;

    /// The stream translator for this provider's streaming responses; None
    /// for OpenAI-dialect providers (pass-through). Error events it writes
    /// are redacted of `known` like [`Provider::error_to_openai`]'s.
    fn stream_translator(&self, ctx: ReplyCtx, known: &KnownSecrets) -> Option<StreamTranslator>;
}

/// A per-stream translator, static dispatch over the dialect pairs.
#[derive(Debug)]
pub enum StreamTranslator {
    /// Anthropic SSE in, OpenAI chunks out.
    Anthropic(anthropic::AnthropicToOpenAi),
    /// Gemini SSE in, OpenAI chunks out.
    Gemini(gemini::GeminiToOpenAi),
    /// Bedrock event-stream in, OpenAI chunks out.
    Bedrock(bedrock::BedrockToOpenAi),
    /// OpenAI chunks in, Anthropic SSE out (inbound `/v1/messages`).
    OpenAiToAnthropic(anthropic::OpenAiToAnthropic),
    /// OpenAI chunks in, Responses events out (inbound `/v1/responses`).
    ChatToResponses(Box<responses::ChatToResponses>),
}

impl StreamTranslator {
    /// Feeds raw upstream body bytes; appends translated SSE bytes to `out`.
    /// After an error the stream is broken: stop feeding.
    pub fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        match self {
            StreamTranslator::Anthropic(t) => t.on_bytes(input, out),
            StreamTranslator::Gemini(t) => t.on_bytes(input, out),
            StreamTranslator::Bedrock(t) => t.on_bytes(input, out),
            StreamTranslator::OpenAiToAnthropic(t) => t.on_bytes(input, out),
            StreamTranslator::ChatToResponses(t) => t.on_bytes(input, out),
        }
    }

    /// End of the upstream body: closes the client stream (end marker, or
    /// an error event when the upstream was cut) and returns the summary.
    pub fn finish(self, out: &mut Vec<u8>) -> Summary {
        match self {
            StreamTranslator::Anthropic(t) => t.finish(out),
            StreamTranslator::Gemini(t) => t.finish(out),
            StreamTranslator::Bedrock(t) => t.finish(out),
            StreamTranslator::OpenAiToAnthropic(t) => t.finish(out),
            StreamTranslator::ChatToResponses(t) => t.finish(out),
        }
    }

    /// Upstream events dropped so far because their type is unknown.
    pub fn unknown_events(&self) -> u64 {
        match self {
            StreamTranslator::Anthropic(t) => t.unknown_events(),
            StreamTranslator::Gemini(t) => t.unknown_events(),
            StreamTranslator::Bedrock(t) => t.unknown_events(),
            StreamTranslator::OpenAiToAnthropic(t) => t.unknown_events(),
            StreamTranslator::ChatToResponses(t) => t.unknown_events(),
        }
    }
}

/// Largest upstream SSE event or event-stream message accepted.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

fn json_body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, TranslateError> {
    serde_json::to_vec(value).map_err(|e| TranslateError::Invalid(e.to_string()))
}

fn upstream_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, TranslateError> {
    serde_json::from_slice(body).map_err(|e| TranslateError::UpstreamJson(e.to_string()))
}
