//! Reads an LLM token stream as it arrives: splits SSE events across any
//! read boundaries and, per API, tells token events (a text, reasoning or
//! tool-argument delta) from the rest, timestamps the first and every
//! following token event (TTFT, inter-token latency), and picks up the
//! usage numbers and the end marker.
//!
//! OpenAI: `data: [DONE]` ends the stream; a chunk with a non-empty
//! `"content"`, `"text"` or `"arguments"` string is a token event; the
//! usage chunk gives prompt/completion tokens. Anthropic: `content_block_delta`
//! is a token event, `message_start` carries input tokens, `message_delta`
//! output tokens, `message_stop` ends it, `error` is a failure.
//!
//! Sans-IO and allocation-free in steady state: one meter per connection,
//! `reset` between requests, buffers reused. Only usage events are parsed
//! as JSON (once or twice per request).

use crate::workload::Api;
use serde::Deserialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct StreamMeter {
    api: Api,
    /// A line split across reads.
    line: Vec<u8>,
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
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    if self.line.is_empty() {
                        self.on_line(&input[..nl], now, on_gap);
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&input[..nl]);
                        self.on_line(&line, now, on_gap);
                        line.clear();
                        self.line = line;
                    }
                    input = &input[nl + 1..];
                }
                None => {
                    self.line.extend_from_slice(input);
                    return;
                }
            }
        }
    }

    fn on_line(&mut self, line: &[u8], now: Instant, on_gap: &mut impl FnMut(Duration)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(now, on_gap);
        } else if let Some(v) = line.strip_prefix(b"data:") {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data
                .extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
            self.has_data = true;
        } else if let Some(v) = line.strip_prefix(b"event:") {
            self.event.clear();
            self.event
                .extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
        }
    }

    fn dispatch(&mut self, now: Instant, on_gap: &mut impl FnMut(Duration)) {
        if self.has_data {
            self.events += 1;
            let token = match self.api {
                Api::Openai => self.openai_event(),
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
        let d = &self.data[..];
        if d == b"[DONE]" {
            self.done = true;
            return false;
        }
        if d.starts_with(b"{\"error\"") {
            self.error = true;
            return false;
        }
        if find(d, b"\"usage\":{").is_some() {
            if let Ok(u) = serde_json::from_slice::<OpenAiUsageChunk>(d) {
                if let Some(u) = u.usage {
                    self.input_tokens = u.prompt_tokens.or(self.input_tokens);
                    self.output_tokens = u.completion_tokens.or(self.output_tokens);
                }
            }
        }
        [&b"\"content\":\""[..], b"\"text\":\"", b"\"arguments\":\""]
            .iter()
            .any(|key| nonempty_string_after(d, key))
    }

    fn anthropic_event(&mut self) -> bool {
        match &self.event[..] {
            b"content_block_delta" => true,
            b"message_start" => {
                if let Ok(s) = serde_json::from_slice::<AnthropicStart>(&self.data) {
                    self.input_tokens = s.message.usage.input_tokens;
                    self.output_tokens = s.message.usage.output_tokens;
                }
                false
            }
            b"message_delta" => {
                if let Ok(u) = serde_json::from_slice::<AnthropicDelta>(&self.data) {
                    if let Some(n) = u.usage.output_tokens {
                        self.output_tokens = Some(n);
                    }
                }
                false
            }
            b"message_stop" => {
                self.done = true;
                false
            }
            b"error" => {
                self.error = true;
                false
            }
            _ => false,
        }
    }
}

/// `key` occurs in `d` followed by a string that isn't empty.
fn nonempty_string_after(d: &[u8], key: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = find(&d[from..], key) {
        let after = from + i + key.len();
        if d.get(after).is_some_and(|&b| b != b'"') {
            return true;
        }
        from = after;
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
            None => return None,
        }
    }
    None
}

#[derive(Deserialize)]
struct OpenAiUsageChunk {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct AnthropicStart {
    message: AnthropicMessage,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: AnthropicUsage,
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct AnthropicDelta {
    #[serde(default)]
    usage: AnthropicUsage,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" a\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\":\"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" a\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" b\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" c\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":3}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    /// Every two-way split, and byte by byte, give the same result.
    fn over_splits(api: Api, input: &str, check: impl Fn(&StreamMeter, u64)) {
        let input = input.as_bytes();
        let now = Instant::now();
        let mut m = StreamMeter::new(api);
        for cut in 0..=input.len() {
            m.reset();
            let mut gaps = 0;
            m.feed(&input[..cut], now, &mut |_| gaps += 1);
            m.feed(&input[cut..], now, &mut |_| gaps += 1);
            check(&m, gaps);
        }
        m.reset();
        let mut gaps = 0;
        for b in input {
            m.feed(std::slice::from_ref(b), now, &mut |_| gaps += 1);
        }
        check(&m, gaps);
    }

    #[test]
    fn openai_stream() {
        over_splits(Api::Openai, OPENAI, |m, gaps| {
            assert_eq!(m.events, 6);
            assert_eq!(m.token_events, 2);
            assert_eq!(gaps, 1);
            assert!(m.done && !m.error);
            assert_eq!((m.input_tokens, m.output_tokens), (Some(7), Some(2)));
        });
    }

    #[test]
    fn anthropic_stream() {
        over_splits(Api::Anthropic, ANTHROPIC, |m, gaps| {
            assert_eq!(m.events, 9);
            assert_eq!(m.token_events, 3);
            assert_eq!(gaps, 2);
            assert!(m.done && !m.error);
            assert_eq!((m.input_tokens, m.output_tokens), (Some(9), Some(3)));
        });
        let mut m = StreamMeter::new(Api::Anthropic);
        m.feed(
            b"event: error\r\ndata: {\"type\":\"error\"}\r\n\r\n",
            Instant::now(),
            &mut |_| {},
        );
        assert!(m.error && !m.done);
    }

    #[test]
    fn substrings() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert!(nonempty_string_after(
            br#"{"content":"","text":"x"}"#,
            b"\"text\":\""
        ));
        assert!(!nonempty_string_after(
            br#"{"content":""}"#,
            b"\"content\":\""
        ));
        assert!(nonempty_string_after(
            br#"{"content":"","content":"y"}"#,
            b"\"content\":\""
        ));
    }
}
