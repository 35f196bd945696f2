//! OpenAI's Responses API (`/v1/responses`): OpenAI's error shape, its own
//! answers and stream events. A turn that continues a stored conversation
//! is translated with the conversation's earlier turns before it.

use super::{json_of_event, needle, rewrite_answer, Dialect, Render, Tap};
use crate::error::GatewayError;
use crate::gateway::{conversation::Turn, plan::client_json, Call};
use shardgate_proto::json::find_top_level;
use shardgate_proto::openai::{extract_responses_usage, Usage};
use shardgate_providers::responses::{self, echo_fields, ChatToResponses, ResponseCtx};
use shardgate_providers::{ChatRequest, KnownSecrets, StreamTranslator, TranslateError};

pub struct Responses;

needle!(COMPLETED = b"\"response.completed\"");
needle!(INCOMPLETE = b"\"response.incomplete\"");
needle!(FAILED = b"\"response.failed\"");
needle!(DELTA = b".delta\"");

impl Dialect for Responses {
    fn chat_request(&self, call: &Call<'_>) -> Option<Result<ChatRequest, GatewayError>> {
        Some(chat_request(call))
    }

    fn check_shape(&self, call: &Call<'_>) -> Result<(), GatewayError> {
        chat_request(call).map(drop)
    }

    fn reply_id(&self, rid: &str) -> String {
        format!("resp_{}", rid.replace('-', "_"))
    }

    fn error_body(&self, err: &GatewayError) -> Vec<u8> {
        err.openai_body()
    }

    /// The Responses `error` event: its own shape, not an error body.
    fn error_event(&self, err: &GatewayError, event: &mut Vec<u8>) {
        let e = serde_json::json!({
            "type": "error",
            "code": err.label(),
            "message": err.to_string(),
            "param": null,
            "sequence_number": 0,
        });
        event.extend_from_slice(b"event: error\ndata: ");
        event.extend_from_slice(e.to_string().as_bytes());
        event.extend_from_slice(b"\n\n");
    }

    fn success_body(&self, openai: Vec<u8>, to: &Render<'_>) -> Result<Vec<u8>, TranslateError> {
        let ctx = response_ctx(to);
        rewrite_answer(&openai, |chat| Ok(responses::from_chat(chat, &ctx)))
    }

    fn stream_from_openai(
        &self,
        to: &Render<'_>,
        known: &KnownSecrets,
    ) -> Option<StreamTranslator> {
        Some(StreamTranslator::ChatToResponses(Box::new(
            ChatToResponses::new(response_ctx(to)).redacting(known.clone()),
        )))
    }

    fn usage_of_body(&self, body: &[u8]) -> Option<Usage> {
        extract_responses_usage(body)
    }

    fn tap(&self, tap: &mut Tap, raw: &[u8]) -> bool {
        let json = json_of_event(raw);
        let last = COMPLETED.find(json).is_some()
            || INCOMPLETE.find(json).is_some()
            || FAILED.find(json).is_some();
        if last {
            tap.ended = true;
            if let Some(r) = find_top_level(json, "response").map(|r| &json[r]) {
                tap.usage = extract_responses_usage(r).or(tap.usage);
                if tap.keep_response {
                    tap.response = serde_json::from_slice(r).ok();
                }
            }
        } else if DELTA.find(json).is_some() {
            tap.events += 1;
        }
        true
    }

    fn count_answer(&self, n: u64) -> serde_json::Value {
        super::openai::OpenAi.count_answer(n)
    }
}

/// The request as chat, after the conversation it continues.
fn chat_request(call: &Call<'_>) -> Result<ChatRequest, GatewayError> {
    let req: serde_json::Value = client_json(&call.req.body)?;
    let turn = call.turn.as_deref();
    if let Some(e) = turn.and_then(Turn::unresolved) {
        return Err(e);
    }
    let prior = turn.map_or(&[][..], |t| t.prior());
    responses::to_chat(&req, prior).map_err(|e| GatewayError::BadRequest {
        message: e.to_string(),
        param: None,
    })
}

/// What a Responses answer shares across its objects and events: its id,
/// the model that served it, and the request fields it echoes.
fn response_ctx(to: &Render<'_>) -> ResponseCtx {
    let request = serde_json::from_slice(to.request).unwrap_or(serde_json::Value::Null);
    ResponseCtx {
        id: Responses.reply_id(to.rid),
        model: to.model.to_owned(),
        created_at: crate::gateway::unix_now(),
        echo: echo_fields(&request),
    }
}
