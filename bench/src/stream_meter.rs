//! Reads an LLM token stream as it arrives: splits SSE events across any
//! read boundaries and, per API, tells token events (a text, reasoning or
//! tool-argument delta) from the rest, timestamps the first and every
//! following token event (TTFT, inter-token latency), and picks up the
//! usage numbers and the end marker.
//!
//! Each event's data is parsed as JSON (serde_json into the few fields
//! that matter), so any valid JSON reads the same: spaces and newlines
//! between tokens, any key order, escaped strings, pretty-printed events
//! over several `data:` lines, LF, CRLF or CR line ends. A token event is
//! one whose delta carries a non-empty string (its JSON text is not `""`:
//! `"\""` and `"\u0041"` are tokens).
//!
//! OpenAI: `data: [DONE]` ends the stream; a chunk with a non-empty
//! `choices[].delta.content` (or `reasoning_content`, `reasoning`,
//! `refusal`, `tool_calls[].function.arguments`) or `choices[].text`
//! (legacy completions) is a token event; a top-level `usage` object gives
//! prompt/completion tokens wherever it sits among the keys; a top-level
//! `error` is a failure. Anthropic: a `content_block_delta` whose delta has
//! a non-empty `text`, `partial_json` or `thinking` is a token event,
//! `message_start.message.usage` carries input tokens, `message_delta.usage`
//! output tokens, `message_stop` ends it, `error` is a failure. The
//! event's kind is its JSON `type`, else its SSE `event:` name.
//!
//! Sans-IO: one meter per connection, `reset` between requests, buffers
//! reused. Parsing borrows from the event's bytes and keeps no strings, so
//! it allocates nothing, except serde_json's scratch buffer for an event
//! whose token string holds an escape.

use crate::workload::Api;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct StreamMeter {
    api: Api,
    /// A line split across reads.
    line: Vec<u8>,
    /// The last line ended with `\r`: a `\n` that comes next ends nothing.
    after_cr: bool,
    /// The current event's `event:` name and `data:` lines.
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// Data events seen.
    pub events: u64,
    pub token_events: u64,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    pub done: bool,
    /// An error event arrived inside the stream.
    pub error: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl StreamMeter {
    pub fn new(api: Api) -> Self {
        StreamMeter {
            api,
            line: Vec::with_capacity(256),
            after_cr: false,
            event: Vec::with_capacity(32),
            data: Vec::with_capacity(512),
            has_data: false,
            events: 0,
            token_events: 0,
            first_token: None,
            last_token: None,
            done: false,
            error: false,
            input_tokens: None,
            output_tokens: None,
        }
    }

    /// Ready for the next response, keeping the buffers.
    pub fn reset(&mut self) {
        self.line.clear();
        self.after_cr = false;
        self.event.clear();
        self.data.clear();
        self.has_data = false;
        self.events = 0;
        self.token_events = 0;
        self.first_token = None;
        self.last_token = None;
        self.done = false;
        self.error = false;
        self.input_tokens = None;
        self.output_tokens = None;
    }

    /// Feeds body bytes that arrived at `now`; `on_gap` gets the time since
    /// the previous token event for every token event after the first.
    pub fn feed(&mut self, mut input: &[u8], now: Instant, on_gap: &mut impl FnMut(Duration)) {
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        while !input.is_empty() {
            let Some(end) = input.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line.extend_from_slice(input);
                return;
            };
            if self.line.is_empty() {
                self.on_line(&input[..end], now, on_gap);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&input[..end]);
                self.on_line(&line, now, on_gap);
                line.clear();
                self.line = line;
            }
            let mut next = end + 1;
            if input[end] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            input = &input[next..];
        }
    }

    /// One line of the event stream (WHATWG HTML, "Interpreting an event
    /// stream"): a blank line dispatches, `:` starts a comment, and a field
    /// without a colon has an empty value.
    fn on_line(&mut self, line: &[u8], now: Instant, on_gap: &mut impl FnMut(Duration)) {
        if line.is_empty() {
            self.dispatch(now, on_gap);
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return,
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, now: Instant, on_gap: &mut impl FnMut(Duration)) {
        if self.has_data {
            self.events += 1;
            let token = match self.api {
                // Responses API events are named (`event:` lines).
                Api::Openai if self.event.starts_with(b"response.") || self.event == b"error" => {
                    self.responses_event()
                }
                // MCP events are progress and the response: each counts.
                Api::Openai | Api::Mcp => self.openai_event(),
                Api::Anthropic => self.anthropic_event(),
            };
            if token {
                self.token_events += 1;
                if let Some(prev) = self.last_token {
                    on_gap(now.saturating_duration_since(prev));
                }
                self.first_token.get_or_insert(now);
                self.last_token = Some(now);
            }
        }
        self.event.clear();
        self.data.clear();
        self.has_data = false;
    }

    fn openai_event(&mut self) -> bool {
        if self.data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return false;
        }
        let Ok(e) = serde_json::from_slice::<OpenAiEvent>(&self.data) else {
            return false;
        };
        if e.error.is_some() {
            self.error = true;
        }
        if let Some(u) = e.usage {
            self.input_tokens = u.prompt_tokens.or(self.input_tokens);
            self.output_tokens = u.completion_tokens.or(self.output_tokens);
        }
        e.choices.0
    }

    /// A Responses event: deltas are tokens; the final event carries the
    /// usage and ends the stream.
    fn responses_event(&mut self) -> bool {
        match self.event.as_slice() {
            b"response.output_text.delta" | b"response.function_call_arguments.delta" => true,
            b"response.completed" | b"response.incomplete" => {
                if let Ok(e) = serde_json::from_slice::<ResponsesDone>(&self.data) {
                    if let Some(u) = e.response.usage {
                        self.input_tokens = u.input_tokens.or(self.input_tokens);
                        self.output_tokens = u.output_tokens.or(self.output_tokens);
                    }
                }
                self.done = true;
                false
            }
            b"response.failed" | b"error" => {
                self.error = true;
                false
            }
            _ => false,
        }
    }

    fn anthropic_event(&mut self) -> bool {
        let by_name = Kind::of(&self.event);
        let Ok(e) = serde_json::from_slice::<AnthropicEvent>(&self.data) else {
            match by_name {
                Kind::MessageStop => self.done = true,
                Kind::Error => self.error = true,
                _ => {}
            }
            return false;
        };
        match e.kind.unwrap_or(by_name) {
            Kind::ContentBlockDelta => return e.delta.is_some_and(|d| d.0),
            Kind::MessageStart => {
                if let Some(u) = e.message.and_then(|m| m.usage) {
                    self.input_tokens = u.input_tokens.or(self.input_tokens);
                    self.output_tokens = u.output_tokens.or(self.output_tokens);
                }
            }
            Kind::MessageDelta => {
                if let Some(u) = e.usage {
                    self.input_tokens = u.input_tokens.or(self.input_tokens);
                    self.output_tokens = u.output_tokens.or(self.output_tokens);
                }
            }
            Kind::MessageStop => self.done = true,
            Kind::Error => self.error = true,
            Kind::Other => {}
        }
        false
    }
}

/// `response.completed`: its usage.
#[derive(Deserialize)]
struct ResponsesDone {
    response: ResponsesUsageOf,
}

#[derive(Deserialize)]
struct ResponsesUsageOf {
    #[serde(default)]
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// An OpenAI data event: a chat or completions chunk, the usage chunk, or
/// an error. Unknown keys are skipped without being kept.
#[derive(Deserialize)]
struct OpenAiEvent {
    #[serde(default)]
    choices: AnyChoiceToken,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Some choice of `choices` carries a token (walked without collecting).
#[derive(Default)]
struct AnyChoiceToken(bool);

impl<'de> Deserialize<'de> for AnyChoiceToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyOf::<OpenAiChoice>::default())
            .map(AnyChoiceToken)
    }
}

#[derive(Deserialize)]
struct OpenAiChoice {
    #[serde(default)]
    delta: Option<OpenAiDelta>,
    /// Legacy completions.
    #[serde(default)]
    text: NonEmpty,
}

impl HasToken for OpenAiChoice {
    fn has_token(&self) -> bool {
        self.text.0 || self.delta.as_ref().is_some_and(OpenAiDelta::has_token)
    }
}

#[derive(Deserialize)]
struct OpenAiDelta {
    #[serde(default)]
    content: NonEmpty,
    /// Reasoning text as DeepSeek, vLLM and others stream it.
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
    #[serde(default)]
    refusal: NonEmpty,
    #[serde(default)]
    tool_calls: AnyToolArguments,
    /// The pre-tools function call.
    #[serde(default)]
    function_call: Option<OpenAiFunction>,
}

impl OpenAiDelta {
    fn has_token(&self) -> bool {
        self.content.0
            || self.reasoning_content.0
            || self.reasoning.0
            || self.refusal.0
            || self.tool_calls.0
            || self.function_call.as_ref().is_some_and(|f| f.arguments.0)
    }
}

#[derive(Default)]
struct AnyToolArguments(bool);

impl<'de> Deserialize<'de> for AnyToolArguments {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(AnyOf::<OpenAiToolCall>::default())
            .map(AnyToolArguments)
    }
}

#[derive(Deserialize)]
struct OpenAiToolCall {
    #[serde(default)]
    function: Option<OpenAiFunction>,
}

impl HasToken for OpenAiToolCall {
    fn has_token(&self) -> bool {
        self.function.as_ref().is_some_and(|f| f.arguments.0)
    }
}

#[derive(Deserialize)]
struct OpenAiFunction {
    #[serde(default)]
    arguments: NonEmpty,
}

/// An Anthropic data event; which fields matter depends on its kind.
#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(default, rename = "type")]
    kind: Option<Kind>,
    /// `message_start`.
    #[serde(default)]
    message: Option<AnthropicMessage>,
    /// `message_delta`.
    #[serde(default)]
    usage: Option<AnthropicUsage>,
    /// `content_block_delta`: whether it carries a token.
    #[serde(default)]
    delta: Option<AnthropicDelta>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// `text_delta`, `input_json_delta` and `thinking_delta` carry tokens;
/// `signature_delta` and a `message_delta`'s delta don't.
struct AnthropicDelta(bool);

impl<'de> Deserialize<'de> for AnthropicDelta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(default)]
            text: NonEmpty,
            #[serde(default)]
            partial_json: NonEmpty,
            #[serde(default)]
            thinking: NonEmpty,
        }
        let f = Option::<Fields>::deserialize(d)?;
        Ok(AnthropicDelta(f.is_some_and(|f| {
            f.text.0 || f.partial_json.0 || f.thinking.0
        })))
    }
}

/// The Anthropic event kinds the meter acts on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    MessageStart,
    MessageDelta,
    ContentBlockDelta,
    MessageStop,
    Error,
    Other,
}

impl Kind {
    fn of(name: &[u8]) -> Kind {
        match name {
            b"message_start" => Kind::MessageStart,
            b"message_delta" => Kind::MessageDelta,
            b"content_block_delta" => Kind::ContentBlockDelta,
            b"message_stop" => Kind::MessageStop,
            b"error" => Kind::Error,
            _ => Kind::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Kind, E> {
                Ok(Kind::of(v.as_bytes()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string that is not empty; any other value (null, a number, an array
/// of content parts) is skipped and counts as no token.
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!v.is_empty()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<NonEmpty, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(false))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<NonEmpty, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(NonEmpty(false))
            }
        }
        d.deserialize_any(V)
    }
}

trait HasToken {
    fn has_token(&self) -> bool;
}

/// Visits an array of `T` and says whether any element has a token,
/// without collecting them; `null` or any other value is no token.
struct AnyOf<T>(std::marker::PhantomData<T>);

impl<T> Default for AnyOf<T> {
    fn default() -> Self {
        AnyOf(std::marker::PhantomData)
    }
}

impl<'de, T: Deserialize<'de> + HasToken> Visitor<'de> for AnyOf<T> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<bool, A::Error> {
        let mut any = false;
        while let Some(t) = s.next_element::<T>()? {
            any |= t.has_token();
        }
        Ok(any)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<bool, A::Error> {
        while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
#[path = "stream_meter_tests.rs"]
mod tests;
