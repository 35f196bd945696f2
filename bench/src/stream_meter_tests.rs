//! Golden streams (`bench/tests/data/stream_meter/*.sse`) in both dialects,
//! compact as the providers send them and as other valid JSON writers do
//! (Python's `json.dumps` spacing, pretty-printed over several `data:`
//! lines, keys in any order, escapes, CRLF), each read whole, split in two
//! at every byte and fed byte by byte.

use super::*;
use crate::alloc_count::allocations;

/// What a reader of the report would see for one stream.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Seen {
    events: u64,
    token_events: u64,
    /// Inter-token gaps reported: one per token event after the first.
    gaps: u64,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    done: bool,
    error: bool,
}

fn seen(m: &StreamMeter, gaps: u64) -> Seen {
    Seen {
        events: m.events,
        token_events: m.token_events,
        gaps,
        input_tokens: m.input_tokens,
        output_tokens: m.output_tokens,
        done: m.done,
        error: m.error,
    }
}

fn read_in(m: &mut StreamMeter, pieces: &[&[u8]]) -> Seen {
    m.reset();
    let now = Instant::now();
    let mut gaps = 0;
    for p in pieces {
        m.feed(p, now, &mut |_| gaps += 1);
    }
    seen(m, gaps)
}

/// Every two-way split, and byte by byte, read as `want`.
fn golden(api: Api, input: &[u8], want: Seen) {
    let mut m = StreamMeter::new(api);
    for cut in 0..=input.len() {
        let (a, b) = input.split_at(cut);
        assert_eq!(read_in(&mut m, &[a, b]), want, "split at byte {cut}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(read_in(&mut m, &bytes), want, "byte by byte");
}

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../tests/data/stream_meter/", $name, ".sse")).as_slice()
    };
}

const OPENAI_CHAT_COMPACT: &[u8] = fixture!("openai_chat_compact");
const OPENAI_CHAT_SPACED_CRLF: &[u8] = fixture!("openai_chat_spaced_crlf");
const OPENAI_CHAT_PRETTY: &[u8] = fixture!("openai_chat_pretty");
const OPENAI_COMPLETIONS_SPACED: &[u8] = fixture!("openai_completions_spaced");
const OPENAI_ERROR_SPACED: &[u8] = fixture!("openai_error_spaced");
const ANTHROPIC_COMPACT: &[u8] = fixture!("anthropic_compact");
const ANTHROPIC_PRETTY_CRLF: &[u8] = fixture!("anthropic_pretty_crlf");
const ANTHROPIC_ERROR_SPACED: &[u8] = fixture!("anthropic_error_spaced");

/// 20 content tokens, then the usage chunk with `"choices":[]`, then
/// `[DONE]`.
const OPENAI_CHAT: Seen = Seen {
    events: 24,
    token_events: 20,
    gaps: 19,
    input_tokens: Some(7),
    output_tokens: Some(20),
    done: true,
    error: false,
};

/// Thinking (2 deltas and a signature), text (3, escaped), a tool call
/// (`partial_json` empty, then 2 fragments): 7 token events.
const ANTHROPIC: Seen = Seen {
    events: 19,
    token_events: 7,
    gaps: 6,
    input_tokens: Some(25),
    output_tokens: Some(30),
    done: true,
    error: false,
};

/// As DeepSeek sends it: 2 `reasoning_content` deltas (with `"content":null`)
/// before the 20 content tokens, two of them escaped (`"\""`, `"\u0041"`).
#[test]
fn openai_chat_compact() {
    golden(
        Api::Openai,
        OPENAI_CHAT_COMPACT,
        Seen {
            events: 26,
            token_events: 22,
            gaps: 21,
            input_tokens: Some(12),
            output_tokens: Some(22),
            done: true,
            error: false,
        },
    );
}

/// The stream that read as 0 tokens: `json.dumps` spacing, `usage` before
/// `choices`, `"choices": [ ]`, CRLF, a comment and an `id:` line.
#[test]
fn openai_chat_spaced_crlf() {
    golden(Api::Openai, OPENAI_CHAT_SPACED_CRLF, OPENAI_CHAT);
}

/// Pretty-printed over several `data:` lines: 2 reasoning deltas, 2
/// content deltas (one `"\n\n"`), a tool call whose first `arguments` is
/// empty and 3 fragments that are not.
#[test]
fn openai_chat_pretty() {
    golden(
        Api::Openai,
        OPENAI_CHAT_PRETTY,
        Seen {
            events: 12,
            token_events: 7,
            gaps: 6,
            input_tokens: Some(40),
            output_tokens: Some(9),
            done: true,
            error: false,
        },
    );
}

/// Legacy completions: `choices[].text`; the final empty `text` is no token.
#[test]
fn openai_completions_spaced() {
    golden(
        Api::Openai,
        OPENAI_COMPLETIONS_SPACED,
        Seen {
            events: 8,
            token_events: 5,
            gaps: 4,
            input_tokens: Some(3),
            output_tokens: Some(5),
            done: true,
            error: false,
        },
    );
}

/// Three tokens, then `data: {"error": {...}}` and no `[DONE]`.
#[test]
fn openai_error_spaced() {
    golden(
        Api::Openai,
        OPENAI_ERROR_SPACED,
        Seen {
            events: 4,
            token_events: 3,
            gaps: 2,
            input_tokens: None,
            output_tokens: None,
            done: false,
            error: true,
        },
    );
}

#[test]
fn anthropic_compact() {
    golden(Api::Anthropic, ANTHROPIC_COMPACT, ANTHROPIC);
}

/// The same events pretty-printed, every object's keys reversed (`type`
/// last), CRLF.
#[test]
fn anthropic_pretty_crlf() {
    golden(Api::Anthropic, ANTHROPIC_PRETTY_CRLF, ANTHROPIC);
}

/// Two thinking deltas and a signature (no token), then an `error` event.
#[test]
fn anthropic_error_spaced() {
    golden(
        Api::Anthropic,
        ANTHROPIC_ERROR_SPACED,
        Seen {
            events: 5,
            token_events: 2,
            gaps: 1,
            input_tokens: Some(25),
            output_tokens: Some(1),
            done: false,
            error: true,
        },
    );
}

/// LF, CRLF and lone CR line ends (all three are SSE) read alike.
#[test]
fn every_line_end_reads_the_same() {
    let cases = [
        (Api::Openai, OPENAI_CHAT_COMPACT),
        (Api::Openai, OPENAI_CHAT_SPACED_CRLF),
        (Api::Openai, OPENAI_CHAT_PRETTY),
        (Api::Anthropic, ANTHROPIC_PRETTY_CRLF),
        (Api::Anthropic, ANTHROPIC_ERROR_SPACED),
    ];
    for (api, input) in cases {
        let lf = String::from_utf8(input.to_vec())
            .unwrap()
            .replace("\r\n", "\n");
        let mut m = StreamMeter::new(api);
        let want = read_in(&mut m, &[lf.as_bytes()]);
        assert!(want.done || want.error);
        for eol in ["\r\n", "\r"] {
            let input = lf.replace('\n', eol);
            let bytes: Vec<&[u8]> = input.as_bytes().chunks(1).collect();
            assert_eq!(read_in(&mut m, &bytes), want, "{eol:?}");
            assert_eq!(read_in(&mut m, &[input.as_bytes()]), want, "{eol:?}");
        }
    }
}

/// One event each: is it a token event?
#[test]
fn tokens_are_non_empty_strings() {
    let openai = [
        (r#"{"choices":[{"delta":{"content":"\""}}]}"#, true),
        (r#"{"choices":[{"delta":{"content":"\u0041"}}]}"#, true),
        (r#"{"choices":[{"delta":{"content":" "}}]}"#, true),
        (
            r#"{ "choices" : [ { "delta" : { "content" : "x" } } ] }"#,
            true,
        ),
        (
            r#"{"choices":[{"index":1,"delta":{}},{"delta":{"content":"x"}}]}"#,
            true,
        ),
        (r#"{"choices":[{"delta":{"refusal":"no"}}]}"#, true),
        (r#"{"choices":[{"delta":{"reasoning":"hm"}}]}"#, true),
        (
            r#"{"choices":[{"delta":{"function_call":{"arguments":"{"}}}]}"#,
            true,
        ),
        (r#"{"choices":[{"delta":{"content":""}}]}"#, false),
        (r#"{"choices":[{"delta":{"content":null}}]}"#, false),
        (r#"{"choices":[{"delta":{"role":"assistant"}}]}"#, false),
        (
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"f","arguments":""}}]}}]}"#,
            false,
        ),
        (r#"{"choices":[{"delta":{"content":"x"}}"#, false),
        (r#"{"choices":null,"usage":{"prompt_tokens":1}}"#, false),
        (r#"{"id":"content: \"x\"","choices":[]}"#, false),
    ];
    let mut m = StreamMeter::new(Api::Openai);
    for (data, token) in openai {
        let event = format!("data: {data}\n\n");
        assert_eq!(
            read_in(&mut m, &[event.as_bytes()]).token_events,
            token as u64,
            "{data}"
        );
    }
    let anthropic = [
        (
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"\u0041"}}"#,
            true,
        ),
        (
            r#"{"delta":{"thinking":"a","type":"thinking_delta"},"type":"content_block_delta"}"#,
            true,
        ),
        (
            r#"{"type":"content_block_delta","delta":{"type":"input_json_delta","partial_json":""}}"#,
            false,
        ),
        (
            r#"{"type":"content_block_delta","delta":{"type":"signature_delta","signature":"s"}}"#,
            false,
        ),
        (
            r#"{"type":"content_block_start","content_block":{"type":"text","text":"x"}}"#,
            false,
        ),
    ];
    let mut m = StreamMeter::new(Api::Anthropic);
    for (data, token) in anthropic {
        let event = format!("event: content_block_delta\ndata: {data}\n\n");
        assert_eq!(
            read_in(&mut m, &[event.as_bytes()]).token_events,
            token as u64,
            "{data}"
        );
    }
}

/// Without `event:` lines the JSON `type` says what an Anthropic event is;
/// an `error` event whose data is not JSON is still an error.
#[test]
fn anthropic_kind_from_type_or_name() {
    let mut m = StreamMeter::new(Api::Anthropic);
    let s = read_in(
        &mut m,
        &[
            b"data: {\"type\": \"message_delta\", \"usage\": {\"output_tokens\": 4}}\n\n\
            data: {\"type\": \"message_stop\"}\n\n",
        ],
    );
    assert_eq!((s.output_tokens, s.done), (Some(4), true));
    let s = read_in(&mut m, &[b"event: error\ndata: overloaded\n\n"]);
    assert!(s.error && !s.done);
}

/// Once the buffers have grown, a stream without escapes costs no
/// allocation; an escaped token string costs serde_json's scratch buffer
/// (one allocation, and one more if it grows).
#[test]
fn reading_allocates_only_for_escapes() {
    for (api, input, escaped_events) in [
        (Api::Openai, OPENAI_CHAT_SPACED_CRLF, 0),
        (Api::Openai, OPENAI_COMPLETIONS_SPACED, 0),
        (Api::Openai, OPENAI_CHAT_COMPACT, 2),
        (Api::Anthropic, ANTHROPIC_COMPACT, 5),
    ] {
        let mut m = StreamMeter::new(api);
        read_in(&mut m, &[input]);
        let before = allocations();
        let s = read_in(&mut m, &[input]);
        let n = allocations() - before;
        assert!(s.done);
        assert!(
            n <= 2 * escaped_events,
            "{n} allocations, {escaped_events} escaped events"
        );
    }
}
