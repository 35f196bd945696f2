//! The dialects a client can speak, each behind [`Dialect`]: how its
//! request becomes the chat request a translated upstream gets, how answers
//! (whole, streamed, and errors) are rendered for it from OpenAI chat, and
//! how usage is read from its own answers when they pass through as they
//! came. One file per dialect; a new one is a file implementing the trait,
//! a [`ClientDialect`] variant and its route.
//!
//! What stays outside: the stages that judge an answer in the client's
//! dialect keep their own readers of it (`tool_guard`, the guardrails'
//! stream checks, the cache's capture), and the upstream side's dialects
//! are the providers' (`shardgate_providers`).

mod anthropic;
mod openai;
mod responses;

use super::Call;
use crate::error::GatewayError;
use shardgate_proto::openai::Usage;
use shardgate_providers::{
    ChatRequest, ChatResponse, KnownSecrets, ReplyCtx, StreamTranslator, TranslateError,
};

/// The dialect of the API the client called. OpenAI's is the default: a
/// request whose head could not be read is answered in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientDialect {
    #[default]
    OpenAi,
    Anthropic,
    /// OpenAI's Responses API (`/v1/responses`): OpenAI's error shape, its
    /// own answers and stream events.
    Responses,
}

impl ClientDialect {
    /// What this dialect's requests, answers, errors and streams look like.
    pub fn rules(self) -> &'static dyn Dialect {
        match self {
            ClientDialect::OpenAi => &openai::OpenAi,
            ClientDialect::Anthropic => &anthropic::Anthropic,
            ClientDialect::Responses => &responses::Responses,
        }
    }

    /// An error body in this dialect.
    pub fn error_body(self, err: &GatewayError) -> Vec<u8> {
        self.rules().error_body(err)
    }
}

/// What rendering an answer for the client knows of it: its request (what
/// a Responses answer echoes), its id, and the model that served it.
pub struct Render<'a> {
    pub rid: &'a str,
    pub request: &'a [u8],
    pub model: &'a str,
    pub include_usage: bool,
}

impl Render<'_> {
    /// What translators need to render an answer in `dialect`. Answers name
    /// the model that served them, as pass-through answers do.
    pub fn reply_ctx(&self, dialect: ClientDialect) -> ReplyCtx {
        let rules = dialect.rules();
        ReplyCtx {
            id: rules.reply_id(self.rid),
            model: self.model.to_owned(),
            created: super::unix_now(),
            // Streams that end with their usage always ask for it.
            include_usage: self.include_usage || rules.streams_end_with_usage(),
        }
    }
}

/// One client dialect. Every answer the gateway renders starts as OpenAI
/// chat (from the upstream, a provider's translator or the mock); the
/// methods turn it into this dialect.
pub trait Dialect: Sync {
    /// The request as the OpenAI chat request a translated upstream is
    /// prepared from; `None` when this request has no chat form (OpenAI's
    /// completions and embeddings).
    fn chat_request(&self, call: &Call<'_>) -> Option<Result<ChatRequest, GatewayError>>;

    /// Refuses a request the mock answers whose body an upstream of this
    /// dialect would refuse (the mock does not translate it).
    fn check_shape(&self, _call: &Call<'_>) -> Result<(), GatewayError> {
        Ok(())
    }

    /// The id of an answer rendered for request `rid`.
    fn reply_id(&self, rid: &str) -> String;

    /// Whether this dialect's streams end with their usage, so upstreams
    /// are always asked for it.
    fn streams_end_with_usage(&self) -> bool {
        true
    }

    /// An error response's body.
    fn error_body(&self, err: &GatewayError) -> Vec<u8>;

    /// Appends the SSE event that ends a failed stream with `err`.
    fn error_event(&self, err: &GatewayError, event: &mut Vec<u8>);

    /// A successful whole OpenAI `chat.completion` body in this dialect.
    fn success_body(&self, openai: Vec<u8>, to: &Render<'_>) -> Result<Vec<u8>, TranslateError>;

    /// The translator from OpenAI chat chunks to this dialect's stream;
    /// `None` when they reach the client as they are. Error events
    /// translated on the way are redacted of `known`.
    fn stream_from_openai(&self, to: &Render<'_>, known: &KnownSecrets)
        -> Option<StreamTranslator>;

    /// The usage a whole answer in this dialect reports.
    fn usage_of_body(&self, body: &[u8]) -> Option<Usage>;

    /// Reads one event of a stream in this dialect relayed as it came;
    /// false if the client must not see it.
    fn tap(&self, tap: &mut Tap, raw: &[u8]) -> bool;

    /// The answer to a token count of `n` input tokens.
    fn count_answer(&self, n: u64) -> serde_json::Value;
}

/// Watches a stream relayed as it came for usage without re-serializing
/// it: only events that mention what the dialect marks usage with are
/// parsed. For OpenAI streams the gateway asked for the usage chunk itself
/// when the client did not, and that chunk is withheld from such clients.
pub struct Tap {
    client: ClientDialect,
    client_wants_usage: bool,
    pub usage: Option<Usage>,
    /// The stream's end marker was seen (`[DONE]`, `message_stop`).
    pub ended: bool,
    /// Content events relayed: the output estimate of a cut stream.
    pub events: u64,
    /// Whether a Responses stream's final `response` object is wanted (a
    /// turn to keep, output webhooks to judge it): only then is that event
    /// parsed whole.
    keep_response: bool,
    /// A Responses stream's final `response` object (what a stored turn
    /// keeps): read from its last event, the one event parsed whole.
    pub response: Option<serde_json::Value>,
}

impl Tap {
    pub fn new(client: ClientDialect, client_wants_usage: bool, keep_response: bool) -> Self {
        Tap {
            client,
            client_wants_usage,
            usage: None,
            ended: false,
            events: 0,
            keep_response,
            response: None,
        }
    }

    /// Looks at one event; false if the client must not see it.
    pub fn relay(&mut self, raw: &[u8]) -> bool {
        self.client.rules().tap(self, raw)
    }
}

/// The JSON of a one-line `data:` event (empty when there is none).
pub fn json_of_event(raw: &[u8]) -> &[u8] {
    match (
        raw.iter().position(|&b| b == b'{'),
        raw.iter().rposition(|&b| b == b'}'),
    ) {
        (Some(a), Some(b)) if a < b => &raw[a..=b],
        _ => &[],
    }
}

/// The providers' usage record in the OpenAI shape policy prices.
pub fn openai_usage(u: &shardgate_providers::Usage) -> Usage {
    Usage {
        prompt_tokens: u.input_tokens,
        completion_tokens: u.output_tokens,
        total_tokens: match (u.input_tokens, u.output_tokens) {
            (None, None) => None,
            (p, c) => Some(p.unwrap_or(0) + c.unwrap_or(0)),
        },
        cached_tokens: u.cached_input_tokens,
        reasoning_tokens: u.reasoning_tokens,
        cache_write_tokens: u.cache_write_tokens,
    }
}

/// A whole OpenAI chat answer read, made into this dialect's answer by
/// `make`, and written: what every dialect that renders answers does.
fn rewrite_answer<T: serde::Serialize>(
    openai: &[u8],
    make: impl FnOnce(&ChatResponse) -> Result<T, TranslateError>,
) -> Result<Vec<u8>, TranslateError> {
    let chat: ChatResponse =
        serde_json::from_slice(openai).map_err(|e| TranslateError::UpstreamJson(e.to_string()))?;
    serde_json::to_vec(&make(&chat)?).map_err(|e| TranslateError::Invalid(e.to_string()))
}

/// A searcher for `needle`, built once, not per event.
macro_rules! needle {
    ($name:ident = $bytes:expr) => {
        static $name: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new($bytes));
    };
}
pub(crate) use needle;

#[cfg(test)]
mod dialect_tests;
