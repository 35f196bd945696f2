//! One generated answer, dialect-independent: how many tokens or which tool
//! call, why it stopped, and its pacing; plus the dispatch to each dialect's
//! renderer for bodies, stream events and error JSON.

use super::{anthropic, bedrock, gemini, openai, responses, tools};
use shardgate_proto::mock::Behaviour;
use std::borrow::Cow;

/// Which API shape a request came in, and so its answer goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI `/v1/chat/completions`.
    Chat,
    /// OpenAI `/v1/completions`.
    Legacy,
    /// Anthropic `/v1/messages`.
    Anthropic,
    /// Gemini `models/{model}:generateContent` / `:streamGenerateContent`.
    Gemini,
    /// Bedrock `/model/{modelId}/converse` / `converse-stream`.
    Bedrock,
    /// OpenAI `/v1/responses`.
    Responses,
}

/// Which error JSON a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

impl Dialect {
    /// Prefix of the answer id.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Dialect::Chat => "chatcmpl-mock",
            Dialect::Legacy => "cmpl-mock",
            Dialect::Anthropic => "msg_mock",
            Dialect::Gemini => "mock-resp-",
            Dialect::Bedrock => "bedrock-mock",
            Dialect::Responses => "mock_",
        }
    }
}

/// Why an error is sent; dialects with error codes pick them by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCause {
    /// Malformed, unknown path, wrong method, too large.
    Request,
    /// Missing or wrong key.
    Auth,
    /// The model name asked for it (`mock-429`).
    Injected,
    /// The prompt is over the model name's context limit (`mock-ctx-N`).
    ContextLength,
}

/// What each provider says when a prompt does not fit (`limit` tokens,
/// `prompt` asked).
pub fn context_length_message(style: ErrorStyle, limit: u64, prompt: u64) -> String {
    match style {
        ErrorStyle::OpenAi => format!(
            "This model's maximum context length is {limit} tokens. However, your messages resulted in {prompt} tokens. Please reduce the length of the messages."
        ),
        ErrorStyle::Anthropic => format!("prompt is too long: {prompt} tokens > {limit} maximum"),
        ErrorStyle::Gemini => format!(
            "The input token count ({prompt}) exceeds the maximum number of tokens allowed ({limit})."
        ),
        ErrorStyle::Bedrock => "Input is too long for requested model.".to_owned(),
    }
}

/// The headers with which `style`'s provider says to wait `wait` before
/// the next request (the requests limit ran out).
pub fn wait_headers(
    style: ErrorStyle,
    wait: std::time::Duration,
    now: std::time::SystemTime,
) -> Vec<(&'static str, String)> {
    let ms = wait.as_millis();
    match style {
        ErrorStyle::OpenAi => vec![
            ("retry-after-ms", ms.to_string()),
            ("x-ratelimit-remaining-requests", "0".to_owned()),
            ("x-ratelimit-reset-requests", format!("{ms}ms")),
        ],
        ErrorStyle::Anthropic => vec![
            ("anthropic-ratelimit-requests-remaining", "0".to_owned()),
            (
                "anthropic-ratelimit-requests-reset",
                humantime::format_rfc3339_millis(now + wait).to_string(),
            ),
        ],
        ErrorStyle::Gemini | ErrorStyle::Bedrock => {
            vec![("retry-after", wait.as_secs().max(1).to_string())]
        }
    }
}

/// Message of an error asked for by the model name.
pub fn injected_message(status: u16) -> &'static str {
    match status {
        429 => "Rate limit reached (mock)",
        400..=499 => "Mock client error",
        503 => "The server is overloaded (mock)",
        _ => "The server had an error (mock)",
    }
}

/// Renders an error body in `style` into `out`; returns extra response
/// headers (Bedrock's `x-amzn-ErrorType`).
pub fn error_body(
    style: ErrorStyle,
    out: &mut Vec<u8>,
    status: u16,
    message: &str,
    cause: ErrorCause,
) -> Option<(&'static str, &'static str)> {
    out.clear();
    match style {
        ErrorStyle::OpenAi => openai::error_body(out, status, message, cause),
        ErrorStyle::Anthropic => anthropic::error_body(out, status, message),
        ErrorStyle::Gemini => gemini::error_body(out, status, message),
        ErrorStyle::Bedrock => return Some(bedrock::error_body(out, status, message)),
    }
    None
}

/// What a generation request says, as far as the mock cares.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// The tool to call, per [`tools`]' rule.
    pub tool: Option<Cow<'a, str>>,
}

/// Why the answer ended, named per dialect by its renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Natural end (`stop`, `end_turn`, `STOP`).
    End,
    /// Cut by max tokens (`length`, `max_tokens`, `MAX_TOKENS`).
    Length,
    /// A tool call (`tool_calls`, `tool_use`).
    Tool,
}

/// One answer, ready to render in its dialect.
#[derive(Debug, Clone)]
pub struct Generation<'a> {
    pub dialect: Dialect,
    pub model: Cow<'a, str>,
    pub created: u64,
    pub prompt_tokens: u64,
    /// Text tokens (unused for a tool call).
    pub tokens: usize,
    /// Name of the tool called instead of text.
    pub tool: Option<Cow<'a, str>>,
    pub stop: Stop,
    pub include_usage: bool,
    pub behaviour: Behaviour,
}

impl<'a> Generation<'a> {
    pub fn new(
        dialect: Dialect,
        facts: Facts<'a>,
        model: Cow<'a, str>,
        behaviour: Behaviour,
        prompt_tokens: u64,
        created: u64,
    ) -> Self {
        let tool = if dialect == Dialect::Legacy {
            None
        } else {
            facts.tool
        };
        let (tokens, stop) = match (&tool, facts.max_tokens) {
            (Some(_), _) => (0, Stop::Tool),
            (None, Some(max)) if (max as usize) < behaviour.output_tokens => {
                (max as usize, Stop::Length)
            }
            (None, _) => (behaviour.output_tokens, Stop::End),
        };
        Generation {
            dialect,
            model,
            created,
            prompt_tokens,
            tokens,
            tool,
            stop,
            include_usage: facts.include_usage,
            behaviour,
        }
    }

    /// Output tokens reported in usage.
    pub fn output_tokens(&self) -> usize {
        if self.tool.is_some() {
            tools::OUTPUT_TOKENS
        } else {
            self.tokens
        }
    }

    /// Paced stream events between the opening and closing ones: one per
    /// text token or argument fragment (Gemini sends a call whole).
    pub fn pieces(&self) -> usize {
        match (&self.tool, self.dialect) {
            (Some(_), Dialect::Gemini) => 1,
            (Some(_), _) => tools::FRAGMENTS,
            (None, _) => self.tokens,
        }
    }

    /// Time a non-streaming answer takes: ttft plus generation at tps.
    pub fn latency_ms(&self) -> u64 {
        let b = &self.behaviour;
        let mut ms = b.ttft_ms;
        if let Some(tps) = b.tokens_per_second {
            ms += (self.output_tokens() as u64).saturating_mul(1000) / u64::from(tps.max(1));
        }
        ms
    }

    pub fn stream_content_type(&self) -> &'static str {
        match self.dialect {
            Dialect::Bedrock => "application/vnd.amazon.eventstream",
            _ => "text/event-stream",
        }
    }

    /// The whole non-streaming body.
    pub fn body(&self, id: &str, out: &mut Vec<u8>) {
        match self.dialect {
            Dialect::Chat => openai::chat_body(self, id, out),
            Dialect::Legacy => openai::legacy_body(self, id, out),
            Dialect::Anthropic => anthropic::body(self, id, out),
            Dialect::Gemini => gemini::body(self, id, out),
            Dialect::Bedrock => bedrock::body(self, out),
            Dialect::Responses => responses::body(self, id, out),
        }
    }

    /// Stream events before the first piece.
    pub fn stream_open(&self, id: &str, out: &mut Vec<u8>) {
        match self.dialect {
            Dialect::Chat => openai::chat_open(self, id, out),
            Dialect::Legacy | Dialect::Gemini => {}
            Dialect::Anthropic => anthropic::open(self, id, out),
            Dialect::Bedrock => bedrock::open(self, out),
            Dialect::Responses => responses::open(self, id, out),
        }
    }

    /// Stream event of piece `i` (`i < pieces()`).
    pub fn stream_piece(&self, id: &str, i: usize, out: &mut Vec<u8>) {
        match self.dialect {
            Dialect::Chat => openai::chat_piece(self, id, i, out),
            Dialect::Legacy => openai::legacy_piece(self, id, i, out),
            Dialect::Anthropic => anthropic::piece(self, i, out),
            Dialect::Gemini => gemini::piece(self, id, i, out),
            Dialect::Bedrock => bedrock::piece(self, i, out),
            Dialect::Responses => responses::piece(self, id, i, out),
        }
    }

    /// Stream events after the last piece; `elapsed_ms` since the request.
    pub fn stream_close(&self, id: &str, elapsed_ms: u64, out: &mut Vec<u8>) {
        match self.dialect {
            Dialect::Chat => openai::chat_close(self, id, out),
            Dialect::Legacy => openai::legacy_close(self, id, out),
            Dialect::Anthropic => anthropic::close(self, out),
            Dialect::Gemini => gemini::close(self, id, out),
            Dialect::Bedrock => bedrock::close(self, elapsed_ms, out),
            Dialect::Responses => responses::close(self, id, out),
        }
    }
}
