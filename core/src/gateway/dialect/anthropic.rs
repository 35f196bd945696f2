//! Anthropic's Messages API (`/v1/messages`).

use super::{json_of_event, needle, openai_usage, rewrite_answer, Dialect, Render, Tap};
use crate::error::GatewayError;
use crate::gateway::{plan::client_json, Call};
use shardgate_proto::anthropic as a;
use shardgate_proto::json::find_top_level;
use shardgate_proto::openai::{mentions_usage, Usage};
use shardgate_providers::anthropic::{self, OpenAiToAnthropic};
use shardgate_providers::{ChatRequest, KnownSecrets, StreamTranslator, TranslateError};

pub struct Anthropic;

needle!(MESSAGE_STOP = b"\"message_stop\"");
needle!(CONTENT_DELTA = b"\"content_block_delta\"");

impl Dialect for Anthropic {
    fn chat_request(&self, call: &Call<'_>) -> Option<Result<ChatRequest, GatewayError>> {
        Some(
            client_json::<a::MessagesRequest>(&call.req.body).and_then(|msg| {
                ChatRequest::from_anthropic(&msg)
                    .map_err(|e| crate::gateway::plan::translate_error(e, &call.facts.model))
            }),
        )
    }

    fn check_shape(&self, call: &Call<'_>) -> Result<(), GatewayError> {
        client_json::<a::MessagesRequest>(&call.req.body).map(drop)
    }

    fn reply_id(&self, rid: &str) -> String {
        format!("msg_{}", rid.replace('-', "_"))
    }

    fn error_body(&self, err: &GatewayError) -> Vec<u8> {
        anthropic::error_from_openai(err.status(), &err.openai_body())
    }

    fn error_event(&self, err: &GatewayError, event: &mut Vec<u8>) {
        event.extend_from_slice(b"event: error\ndata: ");
        event.extend_from_slice(&self.error_body(err));
        event.extend_from_slice(b"\n\n");
    }

    fn success_body(&self, openai: Vec<u8>, _: &Render<'_>) -> Result<Vec<u8>, TranslateError> {
        rewrite_answer(&openai, |chat| {
            anthropic::from_openai_response(chat).map(|(msg, _)| msg)
        })
    }

    fn stream_from_openai(
        &self,
        to: &Render<'_>,
        known: &KnownSecrets,
    ) -> Option<StreamTranslator> {
        let ctx = to.reply_ctx(super::ClientDialect::Anthropic);
        Some(StreamTranslator::OpenAiToAnthropic(
            OpenAiToAnthropic::new(ctx).redacting(known.clone()),
        ))
    }

    fn usage_of_body(&self, body: &[u8]) -> Option<Usage> {
        let usage = &body[find_top_level(body, "usage")?];
        let u: a::Usage = serde_json::from_slice(usage).ok()?;
        Some(openai_usage(&anthropic::usage(&u)))
    }

    fn tap(&self, tap: &mut Tap, raw: &[u8]) -> bool {
        let json = json_of_event(raw);
        if MESSAGE_STOP.find(json).is_some() {
            tap.ended = true;
        } else if mentions_usage(json) {
            stream_usage(json, &mut tap.usage);
        } else if CONTENT_DELTA.find(json).is_some() {
            tap.events += 1;
        }
        true
    }

    fn count_answer(&self, n: u64) -> serde_json::Value {
        serde_json::json!({ "input_tokens": n })
    }
}

/// Usage from Anthropic's `message_start` (input) and `message_delta`
/// (output, and input again in newer API versions).
pub(super) fn stream_usage(json: &[u8], usage: &mut Option<Usage>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let u = match v.get("type").and_then(|t| t.as_str()) {
        Some("message_start") => v.pointer("/message/usage"),
        Some("message_delta") => v.get("usage"),
        _ => None,
    };
    let Some(u) = u.and_then(|u| serde_json::from_value::<a::Usage>(u.clone()).ok()) else {
        return;
    };
    let new = openai_usage(&anthropic::usage(&u));
    let cur = usage.get_or_insert_with(Usage::default);
    cur.prompt_tokens = new.prompt_tokens.or(cur.prompt_tokens);
    cur.cached_tokens = new.cached_tokens.or(cur.cached_tokens);
    cur.cache_write_tokens = new.cache_write_tokens.or(cur.cache_write_tokens);
    cur.completion_tokens = new.completion_tokens.or(cur.completion_tokens);
    cur.total_tokens = match (cur.prompt_tokens, cur.completion_tokens) {
        (None, None) => None,
        (p, c) => Some(p.unwrap_or(0) + c.unwrap_or(0)),
    };
}
