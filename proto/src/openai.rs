//! The OpenAI API shapes the gateway needs to look inside: the few request
//! facts that drive policy and routing, the usage numbers that settle a
//! request, and the error body clients expect.
//!
//! Facts come from one structural scan of the body
//! ([`top_level_members`], which pass-through patching reuses) and reading
//! just the members that matter; nested values (`tools`, `stream_options`)
//! are parsed alone with simd-json ([`crate::json::tape`]), never the whole
//! body (`messages` is most of it). Usage is read from the answer's end,
//! where providers put it ([`crate::json::visit_last_member`], or else
//! [`crate::json::members_rev`]).
//!
//! Invariants: types are checked, not coerced (`"stream": "true"` is an
//! error, not `false`); JSON `null` is treated as absent for optional fields,
//! as the OpenAI API does; usage that is absent is `None`, never zero. A
//! field the gateway decides on (model, tools, stream...) may appear only
//! once: parsers disagree on which duplicate wins (most take the last), and
//! the gateway must judge the request the upstream will read.

use simd_json::prelude::*;

use std::borrow::Cow;

use crate::json::tape::{Array, JsonParser, Object, Value};
use crate::json::{
    find_top_level, key_bytes, members_fwd, top_level_members, visit_last_member,
    write_json_string, JsonError, LastMember, Member,
};
use memchr::memmem;
use std::sync::LazyLock;

/// What the gateway needs to know about a chat/completions-style request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens`, or else the older `max_tokens` (or the
    /// Responses API's `max_output_tokens`).
    pub max_tokens: Option<u64>,
    /// `tools[].function.name` (or Anthropic's `tools[].name`), in order.
    pub tool_names: Vec<String>,
    /// `encoding_format: "base64"` (embeddings).
    pub base64_embeddings: bool,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FactsError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body is not a JSON object")]
    NotAnObject,
    #[error("request has no `model`")]
    MissingModel,
    /// The field name, as the client wrote it (`tools[].function.name`).
    #[error("`{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("`{0}` appears more than once")]
    DuplicateKey(&'static str),
}

/// The top-level members facts are read from, each at most once.
const DECIDING_KEYS: [&str; 8] = [
    "model",
    "stream",
    "stream_options",
    "max_completion_tokens",
    "max_tokens",
    "tools",
    "encoding_format",
    "max_output_tokens",
];

/// The request facts, and the body's top-level members (for patching).
/// `parser` parses the nested members that need it.
pub fn extract_facts(
    body: &[u8],
    parser: &mut JsonParser,
) -> Result<(RequestFacts, Vec<Member>), FactsError> {
    let members = top_level_members(body).map_err(|e| match e {
        // Tell "not JSON" from "JSON, but not an object" (rare: parse it).
        JsonError::NotAnObject => match parser.parse(body, |_| ()) {
            Ok(()) => FactsError::NotAnObject,
            Err(e) => FactsError::InvalidJson(e.to_string()),
        },
        e => FactsError::InvalidJson(e.to_string()),
    })?;
    // The scan checks the grammar, not the encoding (std again only to say
    // where it breaks).
    if simdutf8::basic::from_utf8(body).is_err() {
        let e = std::str::from_utf8(body).err();
        return Err(FactsError::InvalidJson(
            e.map_or_else(String::new, |e| e.to_string()),
        ));
    }
    let mut values: [Option<&[u8]>; DECIDING_KEYS.len()] = [None; DECIDING_KEYS.len()];
    for m in &members {
        let Some(key) = key_bytes(body, m) else {
            continue;
        };
        if let Some(i) = DECIDING_KEYS.iter().position(|k| k.as_bytes() == &*key) {
            if values[i].replace(&body[m.value.clone()]).is_some() {
                return Err(FactsError::DuplicateKey(DECIDING_KEYS[i]));
            }
        }
    }
    // Absent and JSON null read alike.
    let [model, stream, stream_options, max_completion_tokens, max_tokens, tools, encoding_format, max_output_tokens] =
        values.map(|v| v.filter(|v| *v != b"null"));
    let model = match model {
        None => return Err(FactsError::MissingModel),
        Some(v) => raw_string(v)
            .ok_or(FactsError::WrongType("model"))?
            .into_owned(),
    };
    let stream = stream
        .map(|v| raw_bool(v).ok_or(FactsError::WrongType("stream")))
        .transpose()?
        .unwrap_or(false);
    let include_usage = match stream_options {
        None => false,
        Some(v) => parse_nested(parser, v, |options| {
            let options = options
                .as_object()
                .ok_or(FactsError::WrongType("stream_options"))?;
            Ok(opt_bool(
                field(&options, "include_usage"),
                "stream_options.include_usage",
            )?
            .unwrap_or(false))
        })?,
    };
    let count = |v: Option<&[u8]>, name| {
        v.map(|v| raw_count(v).ok_or(FactsError::WrongType(name)))
            .transpose()
    };
    let max_completion_tokens = count(max_completion_tokens, "max_completion_tokens")?;
    let max_tokens = count(max_tokens, "max_tokens")?;
    let max_output_tokens = count(max_output_tokens, "max_output_tokens")?;
    let tool_names = match tools {
        None => Vec::new(),
        Some(v) => parse_nested(parser, v, |tools| {
            tool_names(&tools.as_array().ok_or(FactsError::WrongType("tools"))?)
        })?,
    };
    let base64_embeddings = encoding_format.and_then(raw_string).as_deref() == Some("base64");

    let facts = RequestFacts {
        model,
        stream,
        include_usage,
        max_tokens: max_completion_tokens.or(max_tokens).or(max_output_tokens),
        tool_names,
        base64_embeddings,
    };
    Ok((facts, members))
}

/// Parses one member's value (already checked by the scan) on its own.
fn parse_nested<R>(
    parser: &mut JsonParser,
    value: &[u8],
    read: impl FnOnce(Value<'_, '_>) -> Result<R, FactsError>,
) -> Result<R, FactsError> {
    parser
        .parse(value, read)
        .map_err(|e| FactsError::InvalidJson(e.to_string()))?
}

/// A JSON string's value; borrowed unless it has escapes.
fn raw_string(v: &[u8]) -> Option<Cow<'_, str>> {
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(v).ok().map(Cow::Owned)
}

fn raw_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// A non-negative integer literal (no sign, fraction or exponent) that
/// fits u64: plain digits, as every client and provider writes counts.
/// Anything else (null, a fraction, a string, an overflow) is `None`.
fn raw_count(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// `tools[].function.name` (OpenAI) or `tools[].name` (Anthropic). Tools
/// with neither (built-in tools such as web search) are skipped.
fn tool_names(tools: &Array<'_, '_>) -> Result<Vec<String>, FactsError> {
    let mut names = Vec::with_capacity(tools.len());
    for tool in tools.iter() {
        let tool = tool.as_object().ok_or(FactsError::WrongType("tools[]"))?;
        match field(&tool, "function") {
            // Anthropic's tools carry their name at the top level.
            None => {
                if let Some(name) = field(&tool, "name").and_then(string) {
                    names.push(name.to_owned());
                }
            }
            Some(function) => {
                let function = function
                    .as_object()
                    .ok_or(FactsError::WrongType("tools[].function"))?;
                let name = field(&function, "name").and_then(string);
                names.push(
                    name.ok_or(FactsError::WrongType("tools[].function.name"))?
                        .to_owned(),
                );
            }
        }
    }
    Ok(names)
}

/// `{"error":{"message":..,"type":..,"param":..,"code":..}}` with param/code
/// as JSON null when None.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.len() + kind.len());
    out.extend_from_slice(b"{\"error\":{\"message\":");
    write_json_string(&mut out, message);
    out.extend_from_slice(b",\"type\":");
    write_json_string(&mut out, kind);
    out.extend_from_slice(b",\"param\":");
    write_optional_string(&mut out, param);
    out.extend_from_slice(b",\"code\":");
    write_optional_string(&mut out, code);
    out.extend_from_slice(b"}}");
    out
}

fn write_optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Usage numbers in an OpenAI response body or final stream chunk
/// (`usage.prompt_tokens`, `completion_tokens`, `total_tokens`,
/// `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`). Absent is None, not zero.
/// `cache_write_tokens` is the part of `prompt_tokens` written to the
/// provider's prompt cache (Anthropic's `cache_creation_input_tokens`),
/// which no OpenAI body carries: it comes from the providers' own usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
}

impl Usage {
    /// Adds `other`'s figures (a second attempt's usage): a figure absent
    /// from both stays absent.
    ///
    /// ```
    /// use shardgate_proto::openai::Usage;
    /// let mut a = Usage { prompt_tokens: Some(3), completion_tokens: Some(4), total_tokens: Some(7), ..Usage::default() };
    /// a.add(&Usage { prompt_tokens: Some(10), completion_tokens: Some(5), ..Usage::default() });
    /// assert_eq!((a.prompt_tokens, a.completion_tokens, a.total_tokens), (Some(13), Some(9), Some(22)));
    /// assert_eq!(a.cached_tokens, None);
    /// ```
    pub fn add(&mut self, other: &Usage) {
        fn sum(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
            }
        }
        // A total left out by one side is its prompt plus completion, not
        // nothing: settlement prefers the total when there is one.
        let total = |u: &Usage| {
            u.total_tokens
                .or_else(|| sum(u.prompt_tokens, u.completion_tokens))
        };
        self.total_tokens = sum(total(self), total(other));
        self.prompt_tokens = sum(self.prompt_tokens, other.prompt_tokens);
        self.completion_tokens = sum(self.completion_tokens, other.completion_tokens);
        self.cached_tokens = sum(self.cached_tokens, other.cached_tokens);
        self.reasoning_tokens = sum(self.reasoning_tokens, other.reasoning_tokens);
        self.cache_write_tokens = sum(self.cache_write_tokens, other.cache_write_tokens);
    }
}

/// None if there's no usage object (or usage is null), or `json` is not a
/// JSON object. A number of the wrong type reads as absent: usage is
/// accounting, and one odd field must not lose the others. Of duplicate
/// keys the last counts, as most JSON readers take it.
///
/// Read from the end of the answer ([`visit_last_member`]), where usage sits, and
/// without validating: the answer is relayed as it came, and the client
/// validates it. Stream chunks without usage are skipped by a byte search for
/// `"usage"` first, so calling this on every chunk is cheap.
pub fn extract_usage(json: &[u8]) -> Option<Usage> {
    usage_named(json, &CHAT_USAGE)
}

/// [`extract_usage`] for a Responses object or its final event's `response`
/// (`usage.input_tokens`, `output_tokens`, `total_tokens`,
/// `input_tokens_details.cached_tokens`,
/// `output_tokens_details.reasoning_tokens`): the same figures under
/// the Responses API's names, read the same way, without building a tree.
/// A usage naming neither input nor output tokens reads as absent, so the
/// stream it ends is settled from what was relayed.
pub fn extract_responses_usage(json: &[u8]) -> Option<Usage> {
    usage_named(json, &RESPONSES_USAGE)
        .filter(|u| u.prompt_tokens.is_some() || u.completion_tokens.is_some())
}

/// Where one API keeps the usage figures: the members of its `usage`
/// object, in [`Usage`]'s order (prompt, completion, total, the details
/// object holding cached tokens, the details object holding reasoning
/// tokens).
struct UsageNames {
    prompt: &'static [u8],
    completion: &'static [u8],
    total: &'static [u8],
    prompt_details: &'static [u8],
    completion_details: &'static [u8],
}

const CHAT_USAGE: UsageNames = UsageNames {
    prompt: b"prompt_tokens",
    completion: b"completion_tokens",
    total: b"total_tokens",
    prompt_details: b"prompt_tokens_details",
    completion_details: b"completion_tokens_details",
};

const RESPONSES_USAGE: UsageNames = UsageNames {
    prompt: b"input_tokens",
    completion: b"output_tokens",
    total: b"total_tokens",
    prompt_details: b"input_tokens_details",
    completion_details: b"output_tokens_details",
};

/// OpenAI's answers and final chunks end with usage, so the first
/// `"usage"` a byte search finds is read as the object's last member first
/// ([`visit_last_member`]), which reads only the usage object; usage found
/// anywhere else (Anthropic's and the Responses API's sit mid-object, and
/// usage may be mentioned before it) is found by walking back over the
/// members.
fn usage_named(json: &[u8], names: &UsageNames) -> Option<Usage> {
    // Every chunk of a stream that asked for usage but the last ends so
    // (OpenAI's spelling): absent, known without searching the chunk.
    if json.trim_ascii_end().ends_with(NULL_USAGE_LAST) {
        return None;
    }
    let at = USAGE_KEY.find(json)?;
    let mut u = Usage::default();
    match visit_last_member(json, at, b"usage", |key, value| {
        read_usage_member(&mut u, key, value, names);
    }) {
        Some(LastMember::Object) => return Some(u),
        Some(LastMember::Other) => return None,
        None => {}
    }
    let usage = &json[find_top_level(json, "usage")?];
    if usage.first() != Some(&b'{') {
        return None;
    }
    let mut u = Usage::default();
    for m in members_fwd(usage) {
        if let Some(key) = key_bytes(usage, &m) {
            read_usage_member(&mut u, &key, &usage[m.value], names);
        }
    }
    Some(u)
}

/// Members are read first first, so of duplicate keys the last is kept.
fn read_usage_member(u: &mut Usage, key: &[u8], value: &[u8], names: &UsageNames) {
    if key == names.prompt {
        u.prompt_tokens = raw_count(value);
    } else if key == names.completion {
        u.completion_tokens = raw_count(value);
    } else if key == names.total {
        u.total_tokens = raw_count(value);
    } else if key == names.prompt_details {
        u.cached_tokens = nested(value, "cached_tokens");
    } else if key == names.completion_details {
        u.reasoning_tokens = nested(value, "reasoning_tokens");
    }
}

/// A last member that says usage is absent. The comma makes it a key of
/// the object the closing brace ends, and nothing follows that brace.
const NULL_USAGE_LAST: &[u8] = b",\"usage\":null}";

/// `"usage"`, searched for in every stream event; the searcher is built
/// once.
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// Whether `json` holds the string `"usage"` anywhere: the cheap test that
/// lets stream events without usage (nearly all, in every dialect) skip
/// looking for it.
pub fn mentions_usage(json: &[u8]) -> bool {
    USAGE_KEY.find(json).is_some()
}

/// `inner` of the object `outer` (null or another type reads as absent).
fn nested(outer: &[u8], inner: &str) -> Option<u64> {
    find_top_level(outer, inner).and_then(|r| raw_count(&outer[r]))
}

/// A member, with JSON null read as absent.
fn field<'t, 'i>(obj: &Object<'t, 'i>, key: &str) -> Option<Value<'t, 'i>> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_bool(v: Option<Value<'_, '_>>, name: &'static str) -> Result<Option<bool>, FactsError> {
    v.map(|v| v.as_bool().ok_or(FactsError::WrongType(name)))
        .transpose()
}

fn string<'i>(v: Value<'_, 'i>) -> Option<&'i str> {
    v.into_string()
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
