//! The OpenAI API shapes the gateway needs to look inside: the few request
//! facts that drive policy and routing, the usage numbers that settle a
//! request, and the error body clients expect.
//!
//! Facts come from one simd-json pass over a scratch copy of the body:
//! simd-json parses in place (it unescapes strings into its input), and the
//! original bytes must stay intact for pass-through. The scratch buffer is
//! the caller's, reused across requests, so the copy does not allocate once
//! it has grown.
//!
//! Invariants: types are checked, not coerced (`"stream": "true"` is an
//! error, not `false`); JSON `null` is treated as absent for optional fields,
//! as the OpenAI API does; usage that is absent is `None`, never zero.

use simd_json::{BorrowedValue as Value, StaticNode};

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
}

type Object<'v> = simd_json::value::borrowed::Object<'v>;

/// Reads the request facts in one simd-json pass over `scratch`, which is
/// cleared and filled from `body` (reused across requests to avoid an
/// allocation).
pub fn extract_facts(body: &[u8], scratch: &mut Vec<u8>) -> Result<RequestFacts, FactsError> {
    scratch.clear();
    scratch.extend_from_slice(body);
    let value = simd_json::to_borrowed_value(scratch)
        .map_err(|e| FactsError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = &value else {
        return Err(FactsError::NotAnObject);
    };

    let model = match field(obj, "model") {
        None => return Err(FactsError::MissingModel),
        Some(Value::String(s)) => s.to_string(),
        Some(_) => return Err(FactsError::WrongType("model")),
    };
    let stream = opt_bool(field(obj, "stream"), "stream")?.unwrap_or(false);
    let include_usage = match field(obj, "stream_options") {
        None => false,
        Some(Value::Object(options)) => opt_bool(
            field(options, "include_usage"),
            "stream_options.include_usage",
        )?
        .unwrap_or(false),
        Some(_) => return Err(FactsError::WrongType("stream_options")),
    };
    let max_completion_tokens =
        opt_count(field(obj, "max_completion_tokens"), "max_completion_tokens")?;
    let max_tokens = opt_count(field(obj, "max_tokens"), "max_tokens")?;
    let tool_names = match field(obj, "tools") {
        None => Vec::new(),
        Some(Value::Array(tools)) => tool_names(tools)?,
        Some(_) => return Err(FactsError::WrongType("tools")),
    };

    let base64_embeddings = matches!(
        field(obj, "encoding_format"),
        Some(Value::String(f)) if f == "base64"
    );

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
fn tool_names(tools: &[Value<'_>]) -> Result<Vec<String>, FactsError> {
    let mut names = Vec::with_capacity(tools.len());
    for tool in tools {
        let Value::Object(tool) = tool else {
            return Err(FactsError::WrongType("tools[]"));
        };
        match field(tool, "function") {
            // Anthropic's tools carry their name at the top level.
            None => {
                if let Some(Value::String(name)) = field(tool, "name") {
                    names.push(name.to_string());
                }
            }
            Some(Value::Object(function)) => match field(function, "name") {
                Some(Value::String(name)) => names.push(name.to_string()),
                _ => return Err(FactsError::WrongType("tools[].function.name")),
            },
            Some(_) => return Err(FactsError::WrongType("tools[].function")),
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
pub fn extract_usage(json: &[u8], scratch: &mut Vec<u8>) -> Option<Usage> {
    if !json.windows(7).any(|w| w == b"\"usage\"") {
        return None;
    }
    scratch.clear();
    scratch.extend_from_slice(json);
    let value = simd_json::to_borrowed_value(scratch).ok()?;
    let Value::Object(obj) = &value else {
        return None;
    };
    let Some(Value::Object(usage)) = field(obj, "usage") else {
        return None;
    };
    let nested = |outer: &str, inner: &str| match field(usage, outer) {
        Some(Value::Object(details)) => count(field(details, inner)),
        _ => None,
    };
    Some(Usage {
        prompt_tokens: count(field(usage, "prompt_tokens")),
        completion_tokens: count(field(usage, "completion_tokens")),
        total_tokens: count(field(usage, "total_tokens")),
        cached_tokens: nested("prompt_tokens_details", "cached_tokens"),
        reasoning_tokens: nested("completion_tokens_details", "reasoning_tokens"),
    })
}

/// A member, with JSON null read as absent.
fn field<'o, 'v>(obj: &'o Object<'v>, key: &str) -> Option<&'o Value<'v>> {
    match obj.get(key) {
        None | Some(Value::Static(StaticNode::Null)) => None,
        some => some,
    }
}

fn opt_bool(v: Option<&Value<'_>>, name: &'static str) -> Result<Option<bool>, FactsError> {
    match v {
        None => Ok(None),
        Some(Value::Static(StaticNode::Bool(b))) => Ok(Some(*b)),
        Some(_) => Err(FactsError::WrongType(name)),
    }
}

fn opt_count(v: Option<&Value<'_>>, name: &'static str) -> Result<Option<u64>, FactsError> {
    match v {
        None => Ok(None),
        Some(v) => count(Some(v)).map(Some).ok_or(FactsError::WrongType(name)),
    }
}

/// A non-negative integer.
fn count(v: Option<&Value<'_>>) -> Option<u64> {
    match v? {
        Value::Static(StaticNode::U64(n)) => Some(*n),
        Value::Static(StaticNode::I64(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

#[cfg(test)]
#[path = "openai_tests.rs"]
mod tests;
