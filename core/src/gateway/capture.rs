//! A miss's answer, read for the response cache as it is relayed: as
//! OpenAI chat JSON whatever dialect it came in, whole or streamed
//! ([`crate::cache`] keeps it only once the client has it whole).

use super::dialect::ClientDialect;
use super::plan::Reply;
use super::relay::Answer;
use super::Call;
use crate::cache::Captured;
use crate::config::Wire;
use shardgate_proto::openai::Usage;
use shardgate_providers::replay::Assembler;
use shardgate_providers::StreamTranslator;

/// The OpenAI chat form of a whole answer in the client's own dialect
/// (`Reply::Same`): as it is for OpenAI clients, translated back for
/// Anthropic's.
pub fn same_dialect(
    call: &Call<'_>,
    client: ClientDialect,
    wire: Option<&Wire>,
    model: &str,
    body: &[u8],
) -> Option<Vec<u8>> {
    match client {
        ClientDialect::OpenAi => Some(body.to_vec()),
        ClientDialect::Anthropic => {
            let message: serde_json::Value = serde_json::from_slice(body).ok()?;
            if !anthropic_keeps(&message) {
                return None;
            }
            let ctx = call.reply_ctx(model);
            let provider = wire?.provider();
            provider.response_to_openai(body, &ctx).ok().map(|(b, _)| b)
        }
        ClientDialect::Responses => None,
    }
}

/// Whether an Anthropic message survives the round trip through OpenAI
/// chat a kept answer takes: text (without citations) and tool calls only,
/// ended otherwise than by a stop sequence. Thinking blocks (and their
/// signatures, which a next turn must send back), citations and server
/// tools' blocks would be lost, so such answers are not kept.
fn anthropic_keeps(message: &serde_json::Value) -> bool {
    let blocks_ok = message["content"]
        .as_array()
        .is_some_and(|blocks| blocks.iter().all(anthropic_block_keeps));
    blocks_ok && message["stop_reason"] != "stop_sequence"
}

fn anthropic_block_keeps(block: &serde_json::Value) -> bool {
    match block["type"].as_str() {
        Some("tool_use") => true,
        Some("text") => block
            .get("citations")
            .is_none_or(|c| c.is_null() || c.as_array().is_some_and(Vec::is_empty)),
        _ => false,
    }
}

/// The same for one event of an Anthropic stream: its blocks as they
/// start, no citation deltas, and how it ends.
fn anthropic_event_keeps(raw: &[u8]) -> bool {
    use memchr::memmem::find;
    if find(raw, b"citations_delta").is_some() {
        return false;
    }
    let start = find(raw, b"\"content_block_start\"").is_some();
    let end = find(raw, b"\"message_delta\"").is_some();
    if !start && !end {
        return true;
    }
    let (Some(open), Some(close)) = (
        raw.iter().position(|&b| b == b'{'),
        raw.iter().rposition(|&b| b == b'}'),
    ) else {
        return false;
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&raw[open..=close]) else {
        return false;
    };
    match event["type"].as_str() {
        Some("content_block_start") => anthropic_block_keeps(&event["content_block"]),
        Some("message_delta") => event["delta"]["stop_reason"] != "stop_sequence",
        _ => true,
    }
}

/// Hands a whole answer's OpenAI form, from provider `name`'s `model`, to
/// the call.
pub fn keep(call: &Call<'_>, name: &str, model: &str, openai: Vec<u8>, usage: Option<Usage>) {
    *call.captured.borrow_mut() = Some(Box::new(Captured {
        answer: openai,
        usage,
        served_by: format!("{name}/{model}"),
    }));
}

/// A streamed answer, assembled from its OpenAI chunks as they pass.
pub struct StreamCapture {
    /// Same-dialect streams in another dialect than OpenAI's pass the
    /// provider's translator first.
    side: Option<StreamTranslator>,
    mid: Vec<u8>,
    asm: Assembler,
    served_by: String,
}

impl StreamCapture {
    /// For a call that captures: `None` when it does not, or when the
    /// stream cannot be read as OpenAI chat.
    pub fn new(answer: &Answer<'_>) -> Option<Box<Self>> {
        // The cache's bound; for output webhooks (which judge the whole
        // answer) the response bound.
        let most = answer.call.shard.pool.settings().max_response_bytes;
        let limit = match (
            answer.call.capture_limit,
            answer.call.output_hooks.is_empty(),
        ) {
            (Some(l), true) => l,
            (Some(l), false) => l.max(most),
            (None, false) => most,
            (None, true) => return None,
        };
        let side = match (answer.reply, answer.client) {
            (Reply::Same, ClientDialect::OpenAi) | (Reply::FromOpenAi | Reply::FromWire, _) => None,
            (Reply::Same, ClientDialect::Anthropic) => {
                let ctx = answer.call.reply_ctx(answer.model);
                Some(
                    answer
                        .wire()?
                        .provider()
                        .stream_translator(ctx, answer.secrets())?,
                )
            }
            _ => return None,
        };
        Some(Box::new(StreamCapture {
            side,
            mid: Vec::new(),
            asm: Assembler::new(limit),
            served_by: format!("{}/{}", answer.name, answer.model),
        }))
    }

    /// Same-dialect events, or OpenAI chunks from a translator.
    pub fn feed(&mut self, bytes: &[u8]) {
        match &mut self.side {
            Some(_) if !anthropic_event_keeps(bytes) => {
                self.side = None;
                self.asm.give_up();
            }
            Some(t) => {
                self.mid.clear();
                if t.on_bytes(bytes, &mut self.mid).is_ok() {
                    self.asm.feed(&self.mid);
                } else {
                    self.side = None;
                    self.asm.give_up();
                }
            }
            None => self.asm.feed(bytes),
        }
    }

    /// The whole answer, when the stream ended properly.
    pub fn finish(mut self, usage: Option<Usage>) -> Option<Captured> {
        if let Some(t) = self.side.take() {
            self.mid.clear();
            t.finish(&mut self.mid);
            self.asm.feed(&self.mid);
        }
        let answer = serde_json::to_vec(&self.asm.finish()?).ok()?;
        Some(Captured {
            answer,
            usage,
            served_by: self.served_by,
        })
    }
}
