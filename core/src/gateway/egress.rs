//! The client's side of a reply: everything the gateway answers is produced
//! in OpenAI's shape (by the upstream, a translator or the mock) and leaves
//! here in the dialect the client spoke. For OpenAI clients that is the
//! identity, so OpenAI streams stay zero-copy; Anthropic clients
//! (`/v1/messages`) get Messages bodies and Messages stream events.

use crate::error::GatewayError;
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_providers::anthropic::{self, OpenAiToAnthropic};
use shardgate_providers::{
    ChatResponse, KnownSecrets, ReplyCtx, StreamTranslator, Summary, TranslateError,
};

/// The dialect of the API the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDialect {
    OpenAi,
    Anthropic,
}

impl ClientDialect {
    /// An error body in this dialect.
    pub fn error_body(self, err: &GatewayError) -> Vec<u8> {
        match self {
            ClientDialect::OpenAi => err.openai_body(),
            ClientDialect::Anthropic => {
                anthropic::error_from_openai(err.status(), &err.openai_body())
            }
        }
    }

    /// A successful non-streamed OpenAI `chat.completion` body in this
    /// dialect.
    pub fn success_body(self, openai: Vec<u8>) -> Result<Vec<u8>, TranslateError> {
        match self {
            ClientDialect::OpenAi => Ok(openai),
            ClientDialect::Anthropic => {
                let chat: ChatResponse = serde_json::from_slice(&openai)
                    .map_err(|e| TranslateError::UpstreamJson(e.to_string()))?;
                let (msg, _) = anthropic::from_openai_response(&chat)?;
                serde_json::to_vec(&msg).map_err(|e| TranslateError::Invalid(e.to_string()))
            }
        }
    }
}

/// Turns a stream of OpenAI SSE bytes into the client's stream, one HTTP
/// chunk per call.
pub struct StreamEgress {
    dialect: ClientDialect,
    to_client: Option<StreamTranslator>,
    scratch: Vec<u8>,
}

impl StreamEgress {
    /// Events reach the client as they are (the upstream, translator or mock
    /// already speaks the client's dialect).
    pub fn identity(dialect: ClientDialect) -> Self {
        Self {
            dialect,
            to_client: None,
            scratch: Vec::new(),
        }
    }

    /// OpenAI events in, events of `dialect` out; error events translated
    /// on the way are redacted of `known`, the credentials of the upstream
    /// the events come from.
    pub fn from_openai(dialect: ClientDialect, ctx: &ReplyCtx, known: &KnownSecrets) -> Self {
        let to_client = match dialect {
            ClientDialect::OpenAi => None,
            ClientDialect::Anthropic => Some(StreamTranslator::OpenAiToAnthropic(
                OpenAiToAnthropic::new(ctx.clone()).redacting(known.clone()),
            )),
        };
        Self {
            dialect,
            to_client,
            scratch: Vec::new(),
        }
    }

    /// True when events reach the client unchanged.
    pub fn is_identity(&self) -> bool {
        self.to_client.is_none()
    }

    /// Ends the client's stream with an error event in its dialect and the
    /// last chunk: the stream ends with a word about why, never a silent cut.
    pub fn fail(self, err: &GatewayError, out: &mut Vec<u8>) {
        let mut event = Vec::with_capacity(256);
        if self.dialect == ClientDialect::Anthropic {
            event.extend_from_slice(b"event: error\n");
        }
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&self.dialect.error_body(err));
        event.extend_from_slice(b"\n\n");
        push_chunk(out, &event);
        out.extend_from_slice(LAST_CHUNK);
    }

    /// Appends `sse` (whole events, or any bytes when translating) to `out`
    /// as one chunk in the client's dialect; nothing when it translates to
    /// nothing.
    pub fn push(&mut self, openai_sse: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        match &mut self.to_client {
            None => {
                push_chunk(out, openai_sse);
                Ok(())
            }
            Some(t) => {
                self.scratch.clear();
                let r = t.on_bytes(openai_sse, &mut self.scratch);
                push_chunk(out, &self.scratch);
                r
            }
        }
    }

    /// The client-side translator's summary of a stream that ends early,
    /// its closing events dropped (an error event follows instead).
    pub fn abandon(&mut self) -> Option<Summary> {
        self.to_client.take().map(|t| t.finish(&mut Vec::new()))
    }

    /// Ends the client's stream (the translator's closing events, then the
    /// last chunk). `summary` is the upstream side's, when there was a
    /// translator there; this side's is used otherwise.
    pub fn finish(self, out: &mut Vec<u8>) -> Option<Summary> {
        let summary = self.to_client.map(|t| {
            let mut tail = Vec::new();
            let s = t.finish(&mut tail);
            push_chunk(out, &tail);
            s
        });
        out.extend_from_slice(LAST_CHUNK);
        summary
    }
}

/// Appends `data` as one HTTP chunk (nothing for empty data: an empty chunk
/// would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    encode_chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(CHUNK_END);
}
