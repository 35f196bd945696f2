//! OpenAI's chat completions, completions and embeddings: the dialect every
//! answer starts in, so its answers and streams pass as they are.

use super::{json_of_event, needle, Dialect, Render, Tap};
use crate::error::GatewayError;
use crate::gateway::{plan::client_json, Api, Call};
use shardgate_proto::json::find_top_level;
use shardgate_proto::openai::{extract_usage, Usage};
use shardgate_providers::{ChatRequest, KnownSecrets, StreamTranslator, TranslateError};

pub struct OpenAi;

needle!(DONE = b"[DONE]");

impl Dialect for OpenAi {
    fn chat_request(&self, call: &Call<'_>) -> Option<Result<ChatRequest, GatewayError>> {
        (call.api == Api::ChatCompletions).then(|| client_json(&call.req.body))
    }

    fn reply_id(&self, rid: &str) -> String {
        format!("chatcmpl-{rid}")
    }

    /// Its streams carry usage only when the client asks for it.
    fn streams_end_with_usage(&self) -> bool {
        false
    }

    fn error_body(&self, err: &GatewayError) -> Vec<u8> {
        err.openai_body()
    }

    fn error_event(&self, err: &GatewayError, event: &mut Vec<u8>) {
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&err.openai_body());
        event.extend_from_slice(b"\n\n");
    }

    fn success_body(&self, openai: Vec<u8>, _: &Render<'_>) -> Result<Vec<u8>, TranslateError> {
        Ok(openai)
    }

    fn stream_from_openai(&self, _: &Render<'_>, _: &KnownSecrets) -> Option<StreamTranslator> {
        None
    }

    fn usage_of_body(&self, body: &[u8]) -> Option<Usage> {
        extract_usage(body)
    }

    fn tap(&self, tap: &mut Tap, raw: &[u8]) -> bool {
        let json = json_of_event(raw);
        if json.is_empty() && DONE.find(raw).is_some() {
            tap.ended = true;
            return true;
        }
        if let Some(u) = extract_usage(json) {
            tap.usage = Some(u);
            // The usage-only chunk OpenAI sends last has no choices.
            if !tap.client_wants_usage && has_no_choices(json) {
                return false;
            }
        } else {
            tap.events += 1;
        }
        true
    }

    /// The Responses API's shape (`/v1/responses/input_tokens`).
    fn count_answer(&self, n: u64) -> serde_json::Value {
        serde_json::json!({ "object": "response.input_tokens", "input_tokens": n })
    }
}

/// Whether a chunk's `choices` is absent or an empty array, however the
/// upstream spaced it (`"choices": [ ]` from Python servers): a usage-only
/// chunk, which clients that index `choices[0]` must not see unasked.
pub(super) fn has_no_choices(json: &[u8]) -> bool {
    let Some(range) = find_top_level(json, "choices") else {
        return true;
    };
    let mut inner = json[range].iter().filter(|b| !b.is_ascii_whitespace());
    matches!(
        (inner.next(), inner.next(), inner.next()),
        (Some(b'['), Some(b']'), None)
    )
}
