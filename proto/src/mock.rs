//! Deterministic mock completions, shared by the gateway's built-in mock
//! provider and the `shardgate-bench mock` upstream server.
//!
//! What it is for: the same model name gives the same behaviour and the same
//! bytes everywhere, so end-to-end tests and benchmarks can pick a behaviour
//! (`mock-429`, `mock-ttft-200ms`, `mock-cut-after-3`, ...) without config and
//! compare outputs byte for byte.
//!
//! What it must never do: IO, clocks or randomness. Time (`created`) and ids
//! are arguments; pacing (ttft, tokens per second) is described by
//! [`Behaviour`] and carried out by the caller.
//!
//! Invariants: every renderer appends exactly one JSON document (or one SSE
//! event) to the caller's buffer and never allocates a second buffer; strings
//! that come from the caller (ids, model names, inputs) are JSON-escaped, the
//! fixed word list needs no escaping.

/// The fixed word list the mock text cycles through. Every entry is plain
/// ASCII with a leading space, so it needs no JSON escaping.
const WORDS: [&str; 64] = [
    " lorem",
    " ipsum",
    " dolor",
    " sit",
    " amet",
    " consectetur",
    " adipiscing",
    " elit",
    " sed",
    " do",
    " eiusmod",
    " tempor",
    " incididunt",
    " ut",
    " labore",
    " et",
    " dolore",
    " magna",
    " aliqua",
    " enim",
    " ad",
    " minim",
    " veniam",
    " quis",
    " nostrud",
    " exercitation",
    " ullamco",
    " laboris",
    " nisi",
    " aliquip",
    " ex",
    " ea",
    " commodo",
    " consequat",
    " duis",
    " aute",
    " irure",
    " in",
    " reprehenderit",
    " voluptate",
    " velit",
    " esse",
    " cillum",
    " fugiat",
    " nulla",
    " pariatur",
    " excepteur",
    " sint",
    " occaecat",
    " cupidatat",
    " non",
    " proident",
    " sunt",
    " culpa",
    " qui",
    " officia",
    " deserunt",
    " mollit",
    " anim",
    " id",
    " est",
    " laborum",
    " the",
    " end",
];

/// The `data: [DONE]` event that closes an OpenAI stream.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// The i-th token of the deterministic mock text: a short word with a leading
/// space, cycling through a fixed list of 64 words.
pub fn token(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// Appends the whole text of `n` tokens (the concatenation of `token(0..n)`).
pub fn text(n: usize, out: &mut String) {
    out.reserve(n * 8);
    for i in 0..n {
        out.push_str(token(i));
    }
}

/// Bytes of [`text`] for `n` tokens, without building it (to bound an
/// answer before producing it).
pub fn text_len(n: usize) -> usize {
    let whole: usize = WORDS.iter().map(|w| w.len()).sum();
    let rest: usize = WORDS[..n % WORDS.len()].iter().map(|w| w.len()).sum();
    (n / WORDS.len()).saturating_mul(whole).saturating_add(rest)
}

/// The OpenAI-worded refusal of a prompt over a `limit`-token context
/// window (`mock-ctx-N`).
pub fn context_length_message(limit: u64) -> String {
    format!("This model's maximum context length is {limit} tokens. Please reduce the length of the messages.")
}

/// Rough prompt-token estimate for the mock: `ceil(bytes / 4)`.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// Which chunk of a chat completion stream to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind<'a> {
    /// First chunk: `delta {role:"assistant",content:""}`.
    Role,
    /// A content chunk: `delta {content}`.
    Content(&'a str),
    /// Last choice chunk: `delta {}` and the finish reason.
    Finish(&'a str),
    /// A tool call starts: its id and name, arguments to follow.
    ToolStart(&'a str),
    /// The tool call's arguments (JSON text).
    ToolArgs(&'a str),
    /// The usage chunk sent after the finish chunk when the client asked for
    /// `stream_options.include_usage`: `choices: []` and the usage object.
    Usage {
        prompt_tokens: u64,
        completion_tokens: u64,
    },
}

/// Renders a non-streaming OpenAI `chat.completion` body whose content is
/// `text(completion_tokens)`.
pub fn chat_completion(
    out: &mut Vec<u8>,
    id: &str,
    model: &str,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: usize,
    finish_reason: &str,
) {
    let ids = (id, model, created);
    chat_body(
        out,
        ids,
        prompt_tokens,
        completion_tokens,
        None,
        finish_reason,
    );
}

/// The arguments the mock passes to the tool it calls.
pub const TOOL_ARGUMENTS: &str = "{\"query\":\"mock\"}";

/// A non-streaming `chat.completion` whose message has text
/// (`text(completion_tokens)`) and then calls `tool` with
/// [`TOOL_ARGUMENTS`]; it finishes with `tool_calls`.
pub fn chat_completion_calling(
    out: &mut Vec<u8>,
    id: &str,
    model: &str,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: usize,
    tool: &str,
) {
    let ids = (id, model, created);
    chat_body(
        out,
        ids,
        prompt_tokens,
        completion_tokens,
        Some(tool),
        "tool_calls",
    );
}

/// A `chat.completion` body: text, then a call of `tool` when there is one.
fn chat_body(
    out: &mut Vec<u8>,
    (id, model, created): (&str, &str, u64),
    prompt_tokens: u64,
    completion_tokens: usize,
    tool: Option<&str>,
    finish_reason: &str,
) {
    let tool_len = tool.map_or(0, |t| 100 + t.len());
    out.reserve(200 + id.len() + model.len() + tool_len + completion_tokens * 8);
    header(out, id, "chat.completion", created, model);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"",
    );
    push_text(out, completion_tokens);
    out.push(b'"');
    if let Some(tool) = tool {
        out.extend_from_slice(
            b",\"tool_calls\":[{\"id\":\"call_mock_0\",\"type\":\"function\",\"function\":{\"name\":",
        );
        push_str(out, tool);
        out.extend_from_slice(b",\"arguments\":");
        push_str(out, TOOL_ARGUMENTS);
        out.extend_from_slice(b"}}]");
    }
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
    push_str(out, finish_reason);
    out.extend_from_slice(b"}],");
    push_usage(out, prompt_tokens, completion_tokens as u64);
    out.push(b'}');
}

/// Appends one `data: {chat.completion.chunk}\n\n` SSE event. With
/// `usage_null` (the client asked for usage), choice chunks carry
/// `"usage":null` as OpenAI's do.
pub fn chat_chunk_event(
    out: &mut Vec<u8>,
    id: &str,
    model: &str,
    created: u64,
    kind: ChunkKind<'_>,
    usage_null: bool,
) {
    out.extend_from_slice(b"data: ");
    header(out, id, "chat.completion.chunk", created, model);
    match kind {
        ChunkKind::Usage {
            prompt_tokens,
            completion_tokens,
        } => {
            out.extend_from_slice(b",\"choices\":[],");
            push_usage(out, prompt_tokens, completion_tokens);
        }
        _ => {
            out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
            match kind {
                ChunkKind::Role => {
                    out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}");
                }
                ChunkKind::Content(content) => {
                    out.extend_from_slice(b"{\"content\":");
                    push_str(out, content);
                    out.push(b'}');
                }
                ChunkKind::ToolStart(name) => {
                    out.extend_from_slice(
                        b"{\"tool_calls\":[{\"index\":0,\"id\":\"call_mock_0\",\"type\":\"function\",\"function\":{\"name\":",
                    );
                    push_str(out, name);
                    out.extend_from_slice(b",\"arguments\":\"\"}}]}");
                }
                ChunkKind::ToolArgs(args) => {
                    out.extend_from_slice(
                        b"{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":",
                    );
                    push_str(out, args);
                    out.extend_from_slice(b"}}]}");
                }
                ChunkKind::Finish(_) | ChunkKind::Usage { .. } => out.extend_from_slice(b"{}"),
            }
            out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
            match kind {
                ChunkKind::Finish(reason) => push_str(out, reason),
                _ => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b"}]");
            if usage_null {
                out.extend_from_slice(b",\"usage\":null");
            }
        }
    }
    out.extend_from_slice(b"}\n\n");
}

/// Renders a legacy `/v1/completions` body (`object: "text_completion"`,
/// `choices[0].text`).
pub fn completion(
    out: &mut Vec<u8>,
    id: &str,
    model: &str,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: usize,
    finish_reason: &str,
) {
    out.reserve(200 + id.len() + model.len() + completion_tokens * 8);
    header(out, id, "text_completion", created, model);
    out.extend_from_slice(b",\"choices\":[{\"text\":\"");
    push_text(out, completion_tokens);
    out.extend_from_slice(b"\",\"index\":0,\"logprobs\":null,\"finish_reason\":");
    push_str(out, finish_reason);
    out.extend_from_slice(b"}],");
    push_usage(out, prompt_tokens, completion_tokens as u64);
    out.push(b'}');
}

/// Appends one legacy completion stream event:
/// `data: {"object":"text_completion","choices":[{"text":..}]}\n\n`.
pub fn completion_chunk_event(
    out: &mut Vec<u8>,
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    finish_reason: Option<&str>,
) {
    out.extend_from_slice(b"data: ");
    header(out, id, "text_completion", created, model);
    out.extend_from_slice(b",\"choices\":[{\"text\":");
    push_str(out, text);
    out.extend_from_slice(b",\"index\":0,\"logprobs\":null,\"finish_reason\":");
    match finish_reason {
        Some(reason) => push_str(out, reason),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}]}\n\n");
}

/// Appends the usage-only last event of a legacy completion stream (what
/// `stream_options.include_usage` asks for): `choices` empty, `usage` set.
pub fn completion_usage_event(
    out: &mut Vec<u8>,
    id: &str,
    model: &str,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
) {
    out.extend_from_slice(b"data: ");
    header(out, id, "text_completion", created, model);
    out.extend_from_slice(b",\"choices\":[],");
    push_usage(out, prompt_tokens, completion_tokens);
    out.extend_from_slice(b"}\n\n");
}

/// Renders a `/v1/embeddings` body: one embedding per input, `dims`
/// deterministic floats derived from a hash of the input's bytes, normalized
/// to unit length.
pub fn embeddings(out: &mut Vec<u8>, model: &str, inputs: &[&str], dims: usize) {
    out.reserve(100 + model.len() + inputs.len() * (40 + dims * 12));
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    let mut prompt_tokens = 0u64;
    for (index, input) in inputs.iter().enumerate() {
        prompt_tokens += estimate_tokens(input.len());
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"object\":\"embedding\",\"index\":");
        push_u64(out, index as u64);
        out.extend_from_slice(b",\"embedding\":[");
        push_vector(out, input.as_bytes(), dims);
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"],\"model\":");
    push_str(out, model);
    out.extend_from_slice(b",\"usage\":{\"prompt_tokens\":");
    push_u64(out, prompt_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, prompt_tokens);
    out.extend_from_slice(b"}}");
}

/// How the mock answers, chosen by the request's model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// Completion length in tokens.
    pub output_tokens: usize,
    /// Delay before the first byte of the answer (streaming: before the
    /// first chunk; non-streaming: before the response).
    pub ttft_ms: u64,
    /// Pacing of content chunks while streaming; `None` = as fast as possible.
    pub tokens_per_second: Option<u32>,
    /// Fail with this HTTP status and an OpenAI error JSON.
    pub fail_status: Option<u16>,
    /// Streaming: drop the connection after this many content chunks,
    /// without `[DONE]`. Non-streaming: close right after the head.
    pub cut_after: Option<usize>,
    /// Never answer.
    pub hang: bool,
    /// Refuse, with the dialect's context-length error, a prompt of more
    /// than this many tokens ([`estimate_tokens`] of the body).
    pub context_limit: Option<u64>,
    /// `fail_status` applies to the first this-many requests for the model
    /// name only (per mock shard); later ones are answered.
    pub fail_first: Option<u32>,
    /// A 429/503 says to wait this long, in the dialect's own rate-limit
    /// headers (else `Retry-After: 1`).
    pub wait_ms: Option<u64>,
    /// Chat: after its text, the answer calls a tool named by the rest of
    /// the model name from this byte on (`mock-call-get_weather`), and
    /// finishes with `tool_calls`.
    pub call_tool_at: Option<usize>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            output_tokens: 16,
            ttft_ms: 0,
            tokens_per_second: None,
            fail_status: None,
            cut_after: None,
            hang: false,
            call_tool_at: None,
            context_limit: None,
            fail_first: None,
            wait_ms: None,
        }
    }
}

/// Reads the behaviour out of a model name such as `mock-tokens-7`,
/// `mock-ttft-200ms`, `mock-tps-50`, `mock-429`, `mock-cut-after-3`,
/// `mock-hang`, `mock-ctx-100` (a context window of 100 tokens),
/// `mock-503-first-2-<tag>` (the first two requests fail),
/// `mock-429-wait-300ms`, or combinations like
/// `mock-tokens-20-ttft-50ms-tps-1000`.
///
/// The name is split on `-`; a key (`tokens`, `ttft`, `tps`, `cut-after`,
/// `ctx`, `first`, `wait`)
/// takes the next part as its value, a bare number from 400 to 599 is a
/// failure status, `hang` hangs. Unknown parts (and keys whose value does not
/// parse) are ignored; whatever the name doesn't set comes from `defaults`.
/// `tps-0` means unlimited. Durations accept `ms`, `s` or a bare number of
/// milliseconds.
pub fn behaviour(model: &str, defaults: Behaviour) -> Behaviour {
    let mut b = defaults;
    let mut parts = model.split('-').peekable();
    while let Some(part) = parts.next() {
        match part {
            "tokens" => {
                if let Some(n) = parts.peek().and_then(|v| v.parse::<usize>().ok()) {
                    b.output_tokens = n;
                    parts.next();
                }
            }
            "ttft" => {
                if let Some(ms) = parts.peek().and_then(|v| parse_millis(v)) {
                    b.ttft_ms = ms;
                    parts.next();
                }
            }
            "tps" => {
                if let Some(n) = parts.peek().and_then(|v| v.parse::<u32>().ok()) {
                    b.tokens_per_second = if n == 0 { None } else { Some(n) };
                    parts.next();
                }
            }
            "cut" => {
                if parts.peek() == Some(&"after") {
                    parts.next();
                    if let Some(n) = parts.peek().and_then(|v| v.parse::<usize>().ok()) {
                        b.cut_after = Some(n);
                        parts.next();
                    }
                }
            }
            "hang" => b.hang = true,
            "ctx" => {
                if let Some(n) = parts.peek().and_then(|v| v.parse::<u64>().ok()) {
                    b.context_limit = Some(n);
                    parts.next();
                }
            }
            "first" => {
                if let Some(n) = parts.peek().and_then(|v| v.parse::<u32>().ok()) {
                    b.fail_first = Some(n);
                    parts.next();
                }
            }
            "wait" => {
                if let Some(ms) = parts.peek().and_then(|v| parse_millis(v)) {
                    b.wait_ms = Some(ms);
                    parts.next();
                }
            }
            "call" => {
                // The rest of the name, dashes and all, is the tool's.
                let at = part.as_ptr() as usize - model.as_ptr() as usize + "call-".len();
                if at < model.len() {
                    b.call_tool_at = Some(at);
                }
                break;
            }
            _ => {
                if part.len() == 3 {
                    if let Ok(status) = part.parse::<u16>() {
                        if (400..=599).contains(&status) {
                            b.fail_status = Some(status);
                        }
                    }
                }
            }
        }
    }
    b
}

/// `200ms` → 200, `2s` → 2000, `150` → 150.
fn parse_millis(v: &str) -> Option<u64> {
    if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().ok()
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse::<u64>().ok().and_then(|s| s.checked_mul(1000))
    } else {
        v.parse().ok()
    }
}

/// `{"id":..,"object":..,"created":..,"model":..` (object left open).
fn header(out: &mut Vec<u8>, id: &str, object: &str, created: u64, model: &str) {
    out.extend_from_slice(b"{\"id\":");
    push_str(out, id);
    out.extend_from_slice(b",\"object\":\"");
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(b"\",\"created\":");
    push_u64(out, created);
    out.extend_from_slice(b",\"model\":");
    push_str(out, model);
}

fn push_usage(out: &mut Vec<u8>, prompt_tokens: u64, completion_tokens: u64) {
    out.extend_from_slice(b"\"usage\":{\"prompt_tokens\":");
    push_u64(out, prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    push_u64(out, completion_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    push_u64(out, prompt_tokens.saturating_add(completion_tokens));
    out.push(b'}');
}

/// The mock text, unquoted: the word list needs no escaping.
fn push_text(out: &mut Vec<u8>, n: usize) {
    for i in 0..n {
        out.extend_from_slice(token(i).as_bytes());
    }
}

/// Appends `s` as a quoted JSON string (RFC 8259 §7).
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let escape: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(c >> 4)]);
            out.push(HEX[usize::from(c & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Fixed-point decimal with 6 fractional digits for |v| <= 1 (the vector is
/// normalized), e.g. `-0.031250`.
fn push_unit(out: &mut Vec<u8>, v: f64) {
    let scaled = (v * 1_000_000.0).round() as i64;
    if scaled < 0 {
        out.push(b'-');
    }
    let abs = scaled.unsigned_abs();
    push_u64(out, abs / 1_000_000);
    out.push(b'.');
    let frac = abs % 1_000_000;
    let mut buf = [b'0'; 6];
    let mut f = frac;
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (f % 10) as u8;
        f /= 10;
    }
    out.extend_from_slice(&buf);
}

/// FNV-1a over the input, then splitmix64 to draw `dims` values in [-1, 1),
/// normalized to unit length; rendered comma-separated.
fn push_vector(out: &mut Vec<u8>, input: &[u8], dims: usize) {
    let mut seed = 0xcbf2_9ce4_8422_2325u64;
    for &b in input {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Two passes over the same generator: the first for the norm, the second
    // to render, so no scratch vector is needed.
    let draw = |state: &mut u64| -> f64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // 53 random bits → [0, 1) → [-1, 1).
        ((z >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut state = seed;
    let mut norm = 0.0f64;
    for _ in 0..dims {
        let v = draw(&mut state);
        norm += v * v;
    }
    let norm = norm.sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    let mut state = seed;
    for i in 0..dims {
        if i > 0 {
            out.push(b',');
        }
        push_unit(out, draw(&mut state) / norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(bytes)))
    }

    /// Strips `data: ` and the blank line of one SSE event and parses it.
    fn event_json(event: &[u8]) -> Value {
        let body = event
            .strip_prefix(b"data: ")
            .and_then(|e| e.strip_suffix(b"\n\n"))
            .unwrap_or_else(|| panic!("not one SSE event: {:?}", String::from_utf8_lossy(event)));
        assert!(!body.contains(&b'\n'), "event spans lines");
        json(body)
    }

    #[test]
    fn tokens_cycle_and_need_no_escaping() {
        assert_eq!(token(0), " lorem");
        assert_eq!(token(1), " ipsum");
        assert_eq!(token(64), token(0));
        assert_eq!(token(130), token(2));
        for w in WORDS {
            assert!(w.starts_with(' ') && w.len() > 1);
            assert!(w[1..].bytes().all(|b| b.is_ascii_lowercase()), "{w:?}");
        }
        let mut s = String::new();
        text(3, &mut s);
        assert_eq!(s, " lorem ipsum dolor");
        s.clear();
        text(0, &mut s);
        assert_eq!(s, "");
        text(100, &mut s);
        let expected: String = (0..100).map(token).collect();
        assert_eq!(s, expected);
    }

    #[test]
    fn text_len_is_the_texts_length() {
        for n in [0, 1, 63, 64, 65, 1000] {
            let mut s = String::new();
            text(n, &mut s);
            assert_eq!(text_len(n), s.len(), "{n}");
        }
        assert_eq!(text_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(4), 1);
        assert_eq!(estimate_tokens(5), 2);
        assert_eq!(estimate_tokens(400), 100);
    }

    #[test]
    fn chat_completion_fields() {
        let mut out = Vec::new();
        chat_completion(
            &mut out,
            "chatcmpl-1",
            "gpt-\"x\"",
            1_700_000_000,
            12,
            5,
            "stop",
        );
        let v = json(&out);
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["created"], 1_700_000_000u64);
        assert_eq!(v["model"], "gpt-\"x\"");
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 1);
        assert_eq!(choices[0]["index"], 0);
        assert_eq!(choices[0]["message"]["role"], "assistant");
        let mut expected = String::new();
        text(5, &mut expected);
        assert_eq!(choices[0]["message"]["content"], expected.as_str());
        assert_eq!(choices[0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 12);
        assert_eq!(v["usage"]["completion_tokens"], 5);
        assert_eq!(v["usage"]["total_tokens"], 17);
    }

    #[test]
    fn chat_completion_appends_and_handles_zero_tokens() {
        let mut out = b"prefix".to_vec();
        chat_completion(&mut out, "a", "m", 0, 0, 0, "length");
        assert!(out.starts_with(b"prefix{"));
        let v = json(&out[6..]);
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 0);
        assert_eq!(v["created"], 0);
    }

    #[test]
    fn chat_chunks_in_a_stream() {
        let (id, model, created) = ("chatcmpl-9", "mock-1", 42);
        for usage_null in [false, true] {
            let mut out = Vec::new();
            chat_chunk_event(&mut out, id, model, created, ChunkKind::Role, usage_null);
            let v = event_json(&out);
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["id"], id);
            assert_eq!(v["model"], model);
            assert_eq!(v["created"], created);
            assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(v["choices"][0]["delta"]["content"], "");
            assert!(v["choices"][0]["finish_reason"].is_null());
            assert_eq!(v.get("usage").is_some(), usage_null);
            if usage_null {
                assert!(v["usage"].is_null());
            }

            out.clear();
            let kind = ChunkKind::Content(token(1));
            chat_chunk_event(&mut out, id, model, created, kind, usage_null);
            let v = event_json(&out);
            assert_eq!(v["choices"][0]["delta"]["content"], " ipsum");
            assert!(v["choices"][0]["delta"].get("role").is_none());
            assert!(v["choices"][0]["finish_reason"].is_null());
            assert_eq!(v.get("usage").is_some(), usage_null);

            out.clear();
            let kind = ChunkKind::Finish("length");
            chat_chunk_event(&mut out, id, model, created, kind, usage_null);
            let v = event_json(&out);
            assert_eq!(v["choices"][0]["delta"], serde_json::json!({}));
            assert_eq!(v["choices"][0]["finish_reason"], "length");
            assert_eq!(v.get("usage").is_some(), usage_null);
        }
        let mut out = Vec::new();
        let kind = ChunkKind::Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
        };
        chat_chunk_event(&mut out, id, model, created, kind, true);
        let v = event_json(&out);
        assert_eq!(v["choices"], serde_json::json!([]));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert_eq!(v["usage"]["total_tokens"], 7);
    }

    #[test]
    fn content_chunk_escapes_caller_text() {
        let mut out = Vec::new();
        let tricky = "a\"b\\c\nd\re\tf\u{1}g\u{1f}h é 日本";
        chat_chunk_event(
            &mut out,
            "i\"d",
            "m\\",
            1,
            ChunkKind::Content(tricky),
            false,
        );
        let v = event_json(&out);
        assert_eq!(v["choices"][0]["delta"]["content"], tricky);
        assert_eq!(v["id"], "i\"d");
        assert_eq!(v["model"], "m\\");
    }

    #[test]
    fn json_string_escaping_round_trips() {
        let cases = [
            "",
            "plain",
            "\"",
            "\\",
            "\u{0}",
            "\u{7f}",
            "x\u{2028}y",
            "\r\n\t\u{8}\u{c}",
        ];
        for s in cases {
            let mut out = Vec::new();
            push_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn done_event() {
        assert_eq!(DONE_EVENT, b"data: [DONE]\n\n");
    }

    #[test]
    fn legacy_completion() {
        let mut out = Vec::new();
        completion(&mut out, "cmpl-1", "mock-1", 7, 2, 3, "stop");
        let v = json(&out);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["id"], "cmpl-1");
        assert_eq!(v["model"], "mock-1");
        assert_eq!(v["created"], 7);
        assert_eq!(v["choices"][0]["text"], " lorem ipsum dolor");
        assert_eq!(v["choices"][0]["index"], 0);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 5);

        out.clear();
        completion_chunk_event(&mut out, "cmpl-1", "mock-1", 7, " lorem", None);
        let v = event_json(&out);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], " lorem");
        assert!(v["choices"][0]["finish_reason"].is_null());

        out.clear();
        completion_chunk_event(&mut out, "cmpl-1", "mock-1", 7, "", Some("length"));
        let v = event_json(&out);
        assert_eq!(v["choices"][0]["text"], "");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn embeddings_are_deterministic_and_normalized() {
        let mut out = Vec::new();
        embeddings(&mut out, "embed-1", &["hello", "world", "hello"], 8);
        let v = json(&out);
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "embed-1");
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3);
        let vectors: Vec<Vec<f64>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| {
                assert_eq!(d["object"], "embedding");
                assert_eq!(d["index"], i);
                d["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        for vector in &vectors {
            assert_eq!(vector.len(), 8);
            let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
        assert_eq!(vectors[0], vectors[2]);
        assert_ne!(vectors[0], vectors[1]);
        // ceil(5/4) = 2 per input.
        assert_eq!(v["usage"]["prompt_tokens"], 6);
        assert_eq!(v["usage"]["total_tokens"], 6);

        let mut again = Vec::new();
        embeddings(&mut again, "embed-1", &["hello", "world", "hello"], 8);
        assert_eq!(out, again);
    }

    #[test]
    fn embeddings_edge_cases() {
        let mut out = Vec::new();
        embeddings(&mut out, "e", &[], 4);
        let v = json(&out);
        assert_eq!(v["data"], serde_json::json!([]));
        assert_eq!(v["usage"]["prompt_tokens"], 0);

        out.clear();
        embeddings(&mut out, "e", &["", "x"], 0);
        let v = json(&out);
        assert_eq!(v["data"][0]["embedding"], serde_json::json!([]));
        assert_eq!(v["data"][1]["embedding"], serde_json::json!([]));

        out.clear();
        embeddings(&mut out, "e", &[""], 1536);
        let v = json(&out);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1536);
    }

    #[test]
    fn unit_decimal_rendering() {
        for (v, s) in [
            (0.0, "0.000000"),
            (1.0, "1.000000"),
            (-1.0, "-1.000000"),
            (0.5, "0.500000"),
            (-0.031_25, "-0.031250"),
            (0.000_000_4, "0.000000"),
            (-0.000_000_4, "0.000000"),
        ] {
            let mut out = Vec::new();
            push_unit(&mut out, v);
            assert_eq!(std::str::from_utf8(&out).unwrap(), s, "{v}");
        }
        let mut out = Vec::new();
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn behaviour_from_model_names() {
        let d = Behaviour::default();
        assert_eq!(behaviour("mock-1", d), d);
        assert_eq!(behaviour("gpt-4o-mini", d), d);
        assert_eq!(behaviour("", d), d);
        assert_eq!(behaviour("mock-ttft-200ms", d).ttft_ms, 200);
        assert_eq!(behaviour("mock-ttft-2s", d).ttft_ms, 2000);
        assert_eq!(behaviour("mock-ttft-150", d).ttft_ms, 150);
        assert_eq!(behaviour("mock-tps-50", d).tokens_per_second, Some(50));
        assert_eq!(behaviour("mock-tokens-7", d).output_tokens, 7);
        for status in [429, 500, 503] {
            let b = behaviour(&format!("mock-{status}"), d);
            assert_eq!(b.fail_status, Some(status));
            assert_eq!(
                b,
                Behaviour {
                    fail_status: Some(status),
                    ..d
                }
            );
        }
        assert_eq!(behaviour("mock-cut-after-3", d).cut_after, Some(3));
        assert_eq!(behaviour("mock-ctx-100", d).context_limit, Some(100));
        let b = behaviour("mock-503-first-2-t9", d);
        assert_eq!((b.fail_status, b.fail_first), (Some(503), Some(2)));
        assert_eq!(behaviour("mock-429-wait-300ms", d).wait_ms, Some(300));
        assert!(behaviour("mock-hang", d).hang);
        assert_eq!(
            behaviour("mock-tokens-20-ttft-50ms-tps-1000", d),
            Behaviour {
                output_tokens: 20,
                ttft_ms: 50,
                tokens_per_second: Some(1000),
                ..d
            }
        );
        assert_eq!(
            behaviour("mock-cut-after-2-tokens-9-503", d),
            Behaviour {
                output_tokens: 9,
                cut_after: Some(2),
                fail_status: Some(503),
                ..d
            }
        );
    }

    #[test]
    fn behaviour_keeps_defaults_and_ignores_junk() {
        let d = Behaviour {
            output_tokens: 3,
            ttft_ms: 10,
            tokens_per_second: Some(5),
            fail_status: None,
            cut_after: None,
            ..Behaviour::default()
        };
        assert_eq!(behaviour("mock-1", d), d);
        assert_eq!(behaviour("mock-tps-0", d).tokens_per_second, None);
        // Keys without a parsable value are ignored, and the value part is
        // then read as an ordinary part.
        assert_eq!(behaviour("mock-tokens-x", d), d);
        assert_eq!(behaviour("mock-tokens", d), d);
        assert_eq!(behaviour("mock-ttft-fast", d), d);
        assert_eq!(behaviour("mock-cut-3", d), d);
        assert_eq!(behaviour("mock-cut-after", d), d);
        assert_eq!(behaviour("mock-tokens-429", d).output_tokens, 429);
        assert_eq!(behaviour("mock-tokens-429", d).fail_status, None);
        // Only three-digit 4xx/5xx parts are statuses.
        assert_eq!(behaviour("mock-200", d), d);
        assert_eq!(behaviour("mock-0429", d), d);
        assert_eq!(behaviour("mock-600", d), d);
        assert_eq!(behaviour("mock-ttft-99999999999999999999s", d), d);
        assert!(behaviour("--hang--", d).hang);
    }

    #[test]
    fn a_call_part_names_the_tool_with_the_rest_of_the_name() {
        let d = Behaviour::default();
        let name = "mock-tokens-3-call-delete-all_records";
        let b = behaviour(name, d);
        assert_eq!(b.output_tokens, 3);
        assert_eq!(
            b.call_tool_at.map(|at| &name[at..]),
            Some("delete-all_records")
        );
        assert_eq!(behaviour("mock-call", d).call_tool_at, None);
        let mut out = Vec::new();
        chat_completion_calling(&mut out, "c1", "m", 1, 2, 3, "t.x");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "t.x"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let mut ev = Vec::new();
        chat_chunk_event(&mut ev, "c1", "m", 1, ChunkKind::ToolStart("t.x"), false);
        chat_chunk_event(
            &mut ev,
            "c1",
            "m",
            1,
            ChunkKind::ToolArgs(TOOL_ARGUMENTS),
            false,
        );
        for line in ev
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"data: "))
        {
            let v: serde_json::Value = serde_json::from_slice(&line[6..]).unwrap();
            assert!(v["choices"][0]["delta"]["tool_calls"][0]["index"] == 0);
        }
    }
}
