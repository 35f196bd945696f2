//! The OpenAI API shapes the gateway needs to look inside: the few request
//! facts that drive policy and routing, the usage numbers that settle a
//! request, and the error body clients expect.
//!
//! Facts come from one simd-json pass (a tape, see [`crate::json::tape`])
//! with buffers the caller keeps between requests.
//!
//! Invariants: types are checked, not coerced (`"stream": "true"` is an
//! error, not `false`); JSON `null` is treated as absent for optional fields,
//! as the OpenAI API does; usage that is absent is `None`, never zero. A
//! field the gateway decides on (model, tools, stream...) may appear only
//! once: parsers disagree on which duplicate wins (most take the last), and
//! the gateway must judge the request the upstream will read.

use simd_json::prelude::*;

use crate::json::tape::{Array, JsonParser, Object, Value};
use crate::json::write_json_string;

/// What the gateway needs to know about a chat/completions-style request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens`, or else the older `max_tokens`.
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
const DECIDING_KEYS: [&str; 7] = [
    "model",
    "stream",
    "stream_options",
    "max_completion_tokens",
    "max_tokens",
    "tools",
    "encoding_format",
];

/// Reads the request facts in one simd-json pass with `parser`'s buffers.
pub fn extract_facts(body: &[u8], parser: &mut JsonParser) -> Result<RequestFacts, FactsError> {
    parser
        .parse(body, |root| {
            let obj = root.as_object().ok_or(FactsError::NotAnObject)?;
            let mut seen = [false; DECIDING_KEYS.len()];
            for (key, _) in obj.iter() {
                if let Some(i) = DECIDING_KEYS.iter().position(|k| *k == key) {
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(FactsError::DuplicateKey(DECIDING_KEYS[i]));
                    }
                }
            }
            facts_of(&obj)
        })
        .map_err(|e| FactsError::InvalidJson(e.to_string()))?
}

fn facts_of(obj: &Object<'_, '_>) -> Result<RequestFacts, FactsError> {
    let model = match field(obj, "model") {
        None => return Err(FactsError::MissingModel),
        Some(v) => string(v).ok_or(FactsError::WrongType("model"))?.to_owned(),
    };
    let stream = opt_bool(field(obj, "stream"), "stream")?.unwrap_or(false);
    let include_usage = match field(obj, "stream_options") {
        None => false,
        Some(options) => {
            let options = options
                .as_object()
                .ok_or(FactsError::WrongType("stream_options"))?;
            opt_bool(
                field(&options, "include_usage"),
                "stream_options.include_usage",
            )?
            .unwrap_or(false)
        }
    };
    let max_completion_tokens =
        opt_count(field(obj, "max_completion_tokens"), "max_completion_tokens")?;
    let max_tokens = opt_count(field(obj, "max_tokens"), "max_tokens")?;
    let tool_names = match field(obj, "tools") {
        None => Vec::new(),
        Some(tools) => tool_names(&tools.as_array().ok_or(FactsError::WrongType("tools"))?)?,
    };
    let base64_embeddings = field(obj, "encoding_format").and_then(string) == Some("base64");

    Ok(RequestFacts {
        model,
        stream,
        include_usage,
        max_tokens: max_completion_tokens.or(max_tokens),
        tool_names,
        base64_embeddings,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
}

/// None if there's no usage object (or usage is null), or `json` is not a
/// JSON object. A number of the wrong type reads as absent: usage is
/// accounting, and one odd field must not lose the others.
///
/// Stream chunks without usage are skipped before parsing (a byte search for
/// `"usage"`), so calling this on every chunk is cheap.
pub fn extract_usage(json: &[u8], parser: &mut JsonParser) -> Option<Usage> {
    memchr::memmem::find(json, b"\"usage\"")?;
    parser
        .parse(json, |root| {
            let usage = field(&root.as_object()?, "usage")?.as_object()?;
            let nested = |outer: &str, inner: &str| {
                count(field(&field(&usage, outer)?.as_object()?, inner)?)
            };
            Some(Usage {
                prompt_tokens: field(&usage, "prompt_tokens").and_then(count),
                completion_tokens: field(&usage, "completion_tokens").and_then(count),
                total_tokens: field(&usage, "total_tokens").and_then(count),
                cached_tokens: nested("prompt_tokens_details", "cached_tokens"),
                reasoning_tokens: nested("completion_tokens_details", "reasoning_tokens"),
            })
        })
        .ok()?
}

/// A member, with JSON null read as absent.
fn field<'t, 'i>(obj: &Object<'t, 'i>, key: &str) -> Option<Value<'t, 'i>> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_bool(v: Option<Value<'_, '_>>, name: &'static str) -> Result<Option<bool>, FactsError> {
    v.map(|v| v.as_bool().ok_or(FactsError::WrongType(name)))
        .transpose()
}

fn opt_count(v: Option<Value<'_, '_>>, name: &'static str) -> Result<Option<u64>, FactsError> {
    v.map(|v| count(v).ok_or(FactsError::WrongType(name)))
        .transpose()
}

fn string<'i>(v: Value<'_, 'i>) -> Option<&'i str> {
    v.into_string()
}

/// A non-negative integer.
fn count(v: Value<'_, '_>) -> Option<u64> {
    v.as_u64()
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
