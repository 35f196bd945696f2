//! The properties the fuzz targets in `fuzz/` check, shared with
//! `tests/fuzz_corpus.rs` so that `cargo test` replays the seed corpora on
//! stable Rust.
//!
//! Each function takes arbitrary bytes and panics (through `assert!`) when a
//! property is broken; returning normally means the input is fine, including
//! inputs the translators rightly reject.
//!
//! A stream translator is fed its input whole, split in two at a point taken
//! from the first byte, and (up to [`BYTEWISE_MAX`] bytes) byte by byte,
//! stopping at the first error as the gateway does, then finished. For every
//! feeding:
//! - no panic; byte-identical output, the same first error and the same
//!   [`Summary`] as the whole feeding;
//! - the output is well-formed SSE: every event ends with a blank line, none
//!   is comment-only, every payload is JSON (OpenAI: or `[DONE]`);
//! - nothing follows the end of the client's stream (OpenAI: `[DONE]` or an
//!   error event; Anthropic: `message_stop` or `error`), and when every feed
//!   succeeded `finish` has ended it; a cut stream ends with an error and
//!   its usage is marked estimated;
//! - OpenAI output: the first chunk carries the role, one chunk at most the
//!   `finish_reason` (the summary's, and always before `[DONE]`), and tool
//!   call fragments follow their call's start;
//! - Responses output keeps the Responses event order: `response.created`
//!   then `response.in_progress` first, `sequence_number` 0, 1, 2...,
//!   items added, delta'd and done one at a time at output indexes 0, 1,
//!   2... (deltas naming the open item), and one final `response.completed`,
//!   `response.incomplete` or (after an `error` event) `response.failed`;
//! - Anthropic output keeps the Messages event order: one `message_start`
//!   first, content blocks started, delta'd and stopped one at a time with
//!   indexes 0, 1, 2..., `message_delta` after the last block, then
//!   `message_stop`; `message_delta` has the summary's stop reason.

use serde_json::Value;
use shardgate_proto::sse::SseFramer;

use crate::anthropic::{AnthropicToOpenAi, OpenAiToAnthropic};
use crate::bedrock::BedrockToOpenAi;
use crate::eventstream::{self, Decoder, EventStreamError, HeaderValue};
use crate::gemini::GeminiToOpenAi;
use crate::{ReplyCtx, StreamTranslator, Summary, TranslateError};

/// Inputs up to this size are also fed byte by byte.
pub const BYTEWISE_MAX: usize = 4096;

/// Message size limit of the decoder under test (small, so that the limit
/// itself is reached).
const EVENTSTREAM_LIMIT: usize = 1024;

/// Anthropic SSE in, OpenAI chunks out.
pub fn anthropic_stream(data: &[u8]) {
    translator(data, data, Client::OpenAi, |ctx| {
        StreamTranslator::Anthropic(AnthropicToOpenAi::new(ctx))
    });
}

/// Gemini SSE in, OpenAI chunks out.
pub fn gemini_stream(data: &[u8]) {
    translator(data, data, Client::OpenAi, |ctx| {
        StreamTranslator::Gemini(GeminiToOpenAi::new(ctx))
    });
}

/// OpenAI chunks in, Responses events out.
pub fn chat_to_responses_stream(data: &[u8]) {
    translator(data, data, Client::Responses, |ctx| {
        StreamTranslator::ChatToResponses(Box::new(crate::responses::ChatToResponses::new(
            crate::responses::ResponseCtx {
                id: "resp_fuzz".to_owned(),
                model: ctx.model,
                created_at: ctx.created,
                echo: crate::responses::echo_fields(&Value::Null),
            },
        )))
    });
}

/// OpenAI chunks in, Anthropic SSE out.
pub fn openai_to_anthropic_stream(data: &[u8]) {
    translator(data, data, Client::Anthropic, |ctx| {
        StreamTranslator::OpenAiToAnthropic(OpenAiToAnthropic::new(ctx))
    });
}

/// Bedrock event-stream in, OpenAI chunks out. `data` is fed twice: as the
/// raw byte stream, and as lines turned into messages with valid CRCs (see
/// [`messages_from_lines`]) so that mutations reach the translator rather
/// than stop at the CRC check.
pub fn bedrock_stream(data: &[u8]) {
    let bedrock = |ctx| StreamTranslator::Bedrock(BedrockToOpenAi::new(ctx));
    translator(data, data, Client::OpenAi, bedrock);
    translator(data, &messages_from_lines(data), Client::OpenAi, bedrock);
}

/// An event-stream of one message per non-empty line of `data`, for
/// [`bedrock_stream`]. A line is `<type> <payload>`: an event of that
/// `:event-type` with that payload; `!<type>` makes an exception message
/// of that `:exception-type` instead, and a leading `~` breaks the
/// message's CRC.
pub fn messages_from_lines(data: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let (bad_crc, line) = match line.strip_prefix(b"~") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let type_len = line
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(line.len())
            .min(255);
        let (kind, payload) = line.split_at(type_len);
        let payload = payload.strip_prefix(b" ").unwrap_or(payload);
        let kind = String::from_utf8_lossy(kind);
        let headers = match kind.strip_prefix('!') {
            Some(exception) => vec![
                (":message-type", "exception"),
                (":exception-type", exception),
            ],
            None => vec![
                (":message-type", "event"),
                (":event-type", &*kind),
                (":content-type", "application/json"),
            ],
        };
        let mut message = eventstream::encode(&headers, payload);
        if bad_crc {
            if let Some(last) = message.last_mut() {
                *last ^= 0x01;
            }
        }
        stream.extend_from_slice(&message);
    }
    stream
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    OpenAi,
    Anthropic,
    Responses,
}

/// What one feeding of a translator left.
#[derive(Debug, PartialEq)]
struct Fed {
    out: Vec<u8>,
    error: Option<TranslateError>,
    summary: Summary,
}

/// Checks the translator `make` builds over `stream`, the split point taken
/// from the fuzz input `data`. The client asks for the usage chunk; without
/// it (which only drops that chunk) the whole feeding is checked too.
fn translator(
    data: &[u8],
    stream: &[u8],
    client: Client,
    make: impl Fn(ReplyCtx) -> StreamTranslator,
) {
    let ctx = |include_usage| ReplyCtx {
        id: "chatcmpl-fuzz".to_owned(),
        model: "fuzz-model".to_owned(),
        created: 1_700_000_000,
        include_usage,
    };
    check_output(&feed(make(ctx(false)), &[stream]), client);
    let run = |pieces: &[&[u8]]| feed(make(ctx(true)), pieces);
    let whole = run(&[stream]);
    check_output(&whole, client);
    if let Some(&first) = data.first() {
        let (a, b) = stream.split_at(split_point(first, stream.len()));
        assert_eq!(run(&[a, b]), whole, "split at {}", a.len());
    }
    if stream.len() <= BYTEWISE_MAX {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
    }
}

/// A split point anywhere in `len` bytes, from one byte of the input.
fn split_point(seed: u8, len: usize) -> usize {
    len * usize::from(seed) / 255
}

fn feed(mut t: StreamTranslator, pieces: &[&[u8]]) -> Fed {
    let mut out = Vec::new();
    let mut error = None;
    for piece in pieces {
        if let Err(e) = t.on_bytes(piece, &mut out) {
            // The stream is broken: the gateway stops feeding.
            error = Some(e);
            break;
        }
    }
    let unknown = t.unknown_events();
    let summary = t.finish(&mut out);
    assert_eq!(summary.unknown_events, unknown);
    Fed {
        out,
        error,
        summary,
    }
}

/// One event of the translator's output: its `event:` type and its data.
type OutEvent = (Option<String>, Vec<u8>);

fn check_output(fed: &Fed, client: Client) {
    assert!(
        fed.out.is_empty() || fed.out.ends_with(b"\n\n"),
        "output does not end with a blank line"
    );
    let mut framer = SseFramer::new(usize::MAX);
    let mut events: Vec<OutEvent> = Vec::new();
    let framed = framer.feed(&fed.out, |ev| {
        assert!(!ev.is_comment_only(), "empty event in the output");
        let kind = ev
            .event_type()
            .map(|t| String::from_utf8_lossy(t).into_owned());
        events.push((kind, ev.data().into_owned()));
    });
    assert!(framed.is_ok(), "output framing: {framed:?}");
    assert!(framer.finish().is_none(), "output ends inside an event");
    let ended_with_error = match client {
        Client::OpenAi => check_openai(&events, fed.error.is_none(), &fed.summary),
        Client::Anthropic => check_anthropic(&events, fed.error.is_none(), &fed.summary),
        Client::Responses => check_responses(&events, fed.error.is_none()),
    };
    if fed.summary.cut {
        assert!(ended_with_error, "a cut stream must end with an error");
        assert!(fed.summary.usage.estimated, "a cut stream's usage is exact");
    }
}

fn json(data: &[u8]) -> Value {
    let parsed = serde_json::from_slice::<Value>(data);
    assert!(
        parsed.is_ok(),
        "payload is not JSON ({parsed:?}): {}",
        String::from_utf8_lossy(data)
    );
    parsed.unwrap_or_default()
}

/// OpenAI chunks: returns whether the stream ended with an error event.
/// Beyond the framing: the first chunk carries the role, at most one
/// `finish_reason` (the summary's) and one before `[DONE]`, and tool-call
/// fragments only for calls started (with an id) before.
fn check_openai(events: &[OutEvent], must_end: bool, summary: &Summary) -> bool {
    let mut end = None;
    let mut chunks = 0;
    let mut finish: Option<String> = None;
    let mut calls: Vec<u64> = Vec::new();
    for (kind, data) in events {
        assert!(end.is_none(), "event after the end of the stream");
        assert!(kind.is_none(), "OpenAI chunk with an event type {kind:?}");
        if data.as_slice() == b"[DONE]" {
            end = Some(false);
            continue;
        }
        let chunk = json(data);
        if chunk.get("error").is_some() {
            end = Some(true);
            continue;
        }
        assert_eq!(chunk["object"], "chat.completion.chunk");
        let choices = chunk["choices"].as_array();
        assert!(choices.is_some(), "chunk without choices");
        if chunks == 0 {
            assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
        }
        chunks += 1;
        for choice in choices.into_iter().flatten() {
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert_eq!(finish, None, "a second finish_reason");
                finish = Some(reason.to_owned());
            }
            let delta_calls = choice["delta"]["tool_calls"].as_array();
            for call in delta_calls.into_iter().flatten() {
                let index = call["index"].as_u64();
                assert!(index.is_some(), "tool call without an index");
                let index = index.unwrap_or_default();
                if call.get("id").is_some() {
                    assert!(!calls.contains(&index), "tool call {index} started twice");
                    calls.push(index);
                } else {
                    assert!(calls.contains(&index), "fragment of unstarted call {index}");
                }
            }
        }
    }
    if must_end {
        assert!(end.is_some(), "stream not ended by [DONE] or an error");
    }
    if end == Some(false) {
        assert!(finish.is_some(), "[DONE] without a finish_reason");
    }
    if finish.is_some() {
        assert_eq!(finish, summary.finish_reason, "finish_reason differs");
    }
    end == Some(true)
}

/// Anthropic events: returns whether the stream ended with an error event.
/// `message_delta` carries the summary's stop reason.
/// Responses events: returns whether the stream ended failed.
fn check_responses(events: &[OutEvent], must_end: bool) -> bool {
    let mut end = None;
    let mut open: Option<(u64, String)> = None;
    let mut next_index = 0u64;
    let mut errored = false;
    for (i, (kind, data)) in events.iter().enumerate() {
        assert!(end.is_none(), "event after the end of the stream");
        let kind = kind.as_deref().unwrap_or("");
        let event = json(data);
        assert_eq!(event["type"], kind, "event type and payload type differ");
        assert_eq!(
            event["sequence_number"], i as u64,
            "sequence numbers out of order"
        );
        match (i, kind) {
            (0, k) => assert_eq!(k, "response.created", "first event"),
            (1, k) => assert_eq!(k, "response.in_progress", "second event"),
            (_, k @ ("response.created" | "response.in_progress")) => {
                assert_eq!(i, 0, "{k} again");
            }
            (_, "response.output_item.added") => {
                assert!(open.is_none(), "item added while one is open");
                assert_eq!(
                    event["output_index"], next_index,
                    "output index out of order"
                );
                let id = event["item"]["id"].as_str().unwrap_or_default().to_owned();
                open = Some((next_index, id));
            }
            (_, "response.output_item.done") => {
                let (idx, id) = open.take().unwrap_or_default();
                assert_eq!(event["output_index"], idx, "done outside its item");
                assert_eq!(event["item"]["id"], id.as_str(), "done names another item");
                next_index += 1;
            }
            (_, "response.completed" | "response.incomplete") => {
                assert!(open.is_none(), "{kind} with an item open");
                assert!(!errored, "{kind} after an error");
                let output = event["response"]["output"].as_array().map_or(0, Vec::len);
                assert_eq!(output as u64, next_index, "{kind} lists other items");
                end = Some(false);
            }
            (_, "error") => errored = true,
            (_, "response.failed") => {
                assert!(errored, "response.failed without an error event");
                end = Some(true);
            }
            (_, _) => {
                assert!(open.is_some(), "{kind} outside an item");
                let id = open.as_ref().map_or("", |(_, id)| id.as_str());
                assert_eq!(event["item_id"], id, "{kind} names another item");
            }
        }
    }
    if must_end && !events.is_empty() {
        assert!(end.is_some(), "the stream did not end");
    }
    end.unwrap_or(false)
}

fn check_anthropic(events: &[OutEvent], must_end: bool, summary: &Summary) -> bool {
    let mut end = None;
    let mut started = false;
    let mut open: Option<u64> = None;
    let mut next_index = 0;
    let mut delta_sent = false;
    for (kind, data) in events {
        assert!(end.is_none(), "event after the end of the stream");
        let kind = kind.as_deref().unwrap_or("");
        let event = json(data);
        assert_eq!(event["type"], kind, "event type and payload type differ");
        let index = event["index"].as_u64();
        match kind {
            "error" => end = Some(true),
            "message_start" => {
                assert!(!started, "second message_start");
                started = true;
            }
            _ => {
                assert!(started, "{kind} before message_start");
                assert!(
                    !delta_sent || kind == "message_stop",
                    "{kind} after message_delta"
                );
                match kind {
                    "content_block_start" => {
                        assert_eq!(open, None, "block started while one is open");
                        assert_eq!(index, Some(next_index), "block index out of order");
                        open = index;
                    }
                    "content_block_delta" => {
                        assert!(open.is_some() && index == open, "delta outside its block");
                    }
                    "content_block_stop" => {
                        assert!(open.is_some() && index == open, "stop outside its block");
                        open = None;
                        next_index += 1;
                    }
                    "message_delta" => {
                        assert_eq!(open, None, "message_delta with a block open");
                        let reason = event["delta"]["stop_reason"].as_str();
                        assert_eq!(reason, summary.finish_reason.as_deref());
                        delta_sent = true;
                    }
                    "message_stop" => {
                        assert!(delta_sent, "message_stop without message_delta");
                        end = Some(false);
                    }
                    other => assert_eq!(other, "ping", "unexpected event"),
                }
            }
        }
    }
    if must_end {
        assert!(end.is_some(), "stream not ended by message_stop or error");
    }
    end == Some(true)
}

/// The event-stream decoder over arbitrary bytes, whole, split and byte by
/// byte: no panic, the same messages and the same first error; every single
/// byte changed in a decoded message makes it a CRC error; a message with
/// only string headers is exactly what `encode` makes of it; and `encode`
/// then decode round-trips headers and payload taken from the input.
pub fn eventstream(data: &[u8]) {
    let whole = decode(&[data]);
    if let Some(&first) = data.first() {
        let (a, b) = data.split_at(split_point(first, data.len()));
        assert_eq!(decode(&[a, b]), whole, "split at {}", a.len());
    }
    if data.len() <= BYTEWISE_MAX {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(decode(&bytes), whole, "byte by byte");
    }
    if let (messages, Ok(pending)) = &whole {
        check_decoded(data, messages, *pending);
    }
    round_trip(data);
}

/// A decoded message: headers (name, value as Debug text, the value of a
/// string header), payload.
type Decoded = (Vec<(String, String, Option<String>)>, Vec<u8>);

fn decode(pieces: &[&[u8]]) -> (Vec<Decoded>, Result<usize, EventStreamError>) {
    let mut decoder = Decoder::new(EVENTSTREAM_LIMIT);
    let mut messages = Vec::new();
    for piece in pieces {
        let fed = decoder.feed(piece, |m| {
            let headers = m
                .headers
                .iter()
                .map(|(n, v)| {
                    let string = match v {
                        HeaderValue::String(s) => Some((*s).to_owned()),
                        _ => None,
                    };
                    ((*n).to_owned(), format!("{v:?}"), string)
                })
                .collect();
            messages.push((headers, m.payload.to_vec()));
        });
        if let Err(e) = fed {
            return (messages, Err(e));
        }
    }
    (messages, Ok(decoder.pending()))
}

fn be32(b: &[u8]) -> usize {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a) as usize
}

fn check_decoded(data: &[u8], messages: &[Decoded], pending: usize) {
    // Messages lie back to back from the start, the pending bytes after.
    let mut frames = Vec::new();
    let mut at = 0;
    for _ in messages {
        let total = be32(&data[at..]);
        frames.push(&data[at..at + total]);
        at += total;
    }
    assert_eq!(at + pending, data.len());
    for (frame, (headers, payload)) in frames.iter().zip(messages) {
        let strings: Option<Vec<(&str, &str)>> = headers
            .iter()
            .map(|(n, _, s)| Some((n.as_str(), s.as_deref()?)))
            .collect();
        if let Some(strings) = strings {
            assert_eq!(eventstream::encode(&strings, payload), *frame);
        }
    }
    // Any one byte changed in the first message is caught by a CRC.
    if let (Some(frame), Some(&last)) = (frames.first(), data.last()) {
        let at = usize::from(data[0]) * 7 % frame.len();
        let mut bad = frame.to_vec();
        bad[at] ^= last | 1;
        let mut decoder = Decoder::new(EVENTSTREAM_LIMIT);
        let mut delivered = 0;
        let r = decoder.feed(&bad, |_| delivered += 1);
        let expected = if at < 12 {
            EventStreamError::PreludeCrc
        } else {
            EventStreamError::MessageCrc
        };
        assert_eq!(r, Err(expected), "byte {at} changed");
        assert_eq!(delivered, 0);
    }
}

/// Reads an input front to back; short at the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn byte(&mut self) -> usize {
        self.take(1).first().map_or(0, |&b| usize::from(b))
    }
}

/// Headers and payload from `data` (count, then per header a name length,
/// name, two value length bytes, value; the rest is the payload), encoded
/// and decoded again, whole and split.
fn round_trip(data: &[u8]) {
    let mut r = Reader(data);
    let count = r.byte() % 8;
    let mut headers = Vec::new();
    for _ in 0..count {
        let len = r.byte() % 64;
        let name = String::from_utf8_lossy(r.take(len)).into_owned();
        // At most 16 KiB, so that lossy decoding keeps it under 64 KiB.
        let len = (r.byte() << 8 | r.byte()) % (16 << 10);
        let value = String::from_utf8_lossy(r.take(len)).into_owned();
        headers.push((name, value));
    }
    let payload = r.0;
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let encoded = eventstream::encode(&refs, payload);
    let at = split_point(data.first().copied().unwrap_or(0), encoded.len());
    let (a, b) = encoded.split_at(at);
    for pieces in [&[&encoded[..]][..], &[a, b]] {
        let mut decoder = Decoder::new(usize::MAX);
        let mut seen = 0;
        for piece in pieces {
            let fed = decoder.feed(piece, |m| {
                seen += 1;
                let expected: Vec<(&str, HeaderValue<'_>)> = refs
                    .iter()
                    .map(|&(n, v)| (n, HeaderValue::String(v)))
                    .collect();
                assert_eq!(m.headers, expected);
                assert_eq!(m.payload, payload);
            });
            assert_eq!(fed, Ok(()));
        }
        assert_eq!(seen, 1);
        assert_eq!(decoder.pending(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ReplyCtx {
        ReplyCtx {
            id: "c".into(),
            model: "m".into(),
            created: 1,
            include_usage: false,
        }
    }

    #[test]
    fn lines_become_messages_the_translator_reads() {
        let stream = messages_from_lines(
            b"messageStart {}\n\ncontentBlockDelta {\"contentBlockIndex\":0,\"delta\":{\"text\":\"Hi\"}}\n~metadata {}\nmessageStop {}\n",
        );
        let fed = feed(
            StreamTranslator::Bedrock(BedrockToOpenAi::new(ctx())),
            &[&stream],
        );
        assert!(String::from_utf8_lossy(&fed.out).contains(r#""content":"Hi""#));
        assert!(matches!(fed.error, Some(TranslateError::Framing(_))));
        assert!(fed.summary.cut);
    }

    #[test]
    #[should_panic(expected = "event after the end")]
    fn an_openai_chunk_after_done_is_caught() {
        let events = [(None, b"[DONE]".to_vec()), (None, b"{}".to_vec())];
        check_openai(&events, true, &Summary::default());
    }

    #[test]
    #[should_panic(expected = "not ended")]
    fn an_unended_anthropic_stream_is_caught() {
        let start = br#"{"type":"message_start","message":{}}"#.to_vec();
        let events = [(Some("message_start".into()), start)];
        check_anthropic(&events, true, &Summary::default());
    }

    #[test]
    #[should_panic(expected = "delta outside its block")]
    fn an_anthropic_delta_outside_its_block_is_caught() {
        let events = [
            r#"{"type":"message_start","message":{}}"#,
            r#"{"type":"content_block_start","index":0}"#,
            r#"{"type":"content_block_delta","index":1}"#,
        ];
        let events: Vec<OutEvent> = events
            .iter()
            .map(|e| {
                let kind = json(e.as_bytes())["type"].as_str().map(str::to_owned);
                (kind, e.as_bytes().to_vec())
            })
            .collect();
        check_anthropic(&events, false, &Summary::default());
    }
}
