//! MCP over Streamable HTTP, as far as a gateway needs it: the JSON-RPC
//! envelope, the two protocol eras and their headers, and the errors. Pure:
//! the endpoint and the upstream clients in core do the IO.
//!
//! Two eras share one endpoint:
//! - the handshake era (2025-03-26, 2025-06-18, 2025-11-25): `initialize`
//!   opens a session named by `Mcp-Session-Id`;
//! - 2026-07-28, stateless: every request carries its version and the
//!   client's capabilities in `params._meta`, mirrored in the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers, and the
//!   server answers `server/discover`.

mod names;
mod params;
pub use names::{decode_header_value, encode_header_value, expose, split_exposed};
pub use params::Params;

use serde_json::{Map, Value};
use std::borrow::Cow;

/// The stateless revision.
pub const MODERN_VERSION: &str = "2026-07-28";
/// Handshake-era revisions the gateway negotiates, newest first.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// `_meta` keys of the modern envelope.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC and MCP error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// An upstream server failed, timed out or is unreachable.
    pub const CONNECTION_CLOSED: i64 = -32000;
    pub const REQUEST_TIMEOUT: i64 = -32001;
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

/// Which protocol a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `initialize` and sessions; the version negotiated at `initialize`.
    Handshake,
    /// 2026-07-28: per-request envelope, no session.
    Modern,
}

impl Era {
    pub fn label(self) -> &'static str {
        match self {
            Era::Handshake => "handshake",
            Era::Modern => "modern",
        }
    }
}

/// A JSON-RPC error to send back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The HTTP status the error travels with (as the SDK's servers send
    /// it); errors from a tool or an upstream go with 200.
    pub fn http_status(&self) -> u16 {
        match self.code {
            code::PARSE_ERROR
            | code::INVALID_REQUEST
            | code::INVALID_PARAMS
            | code::HEADER_MISMATCH
            | code::UNSUPPORTED_PROTOCOL_VERSION => 400,
            code::METHOD_NOT_FOUND => 404,
            _ => 200,
        }
    }

    /// `-32022` naming the versions the gateway speaks.
    pub fn unsupported_version(asked: &str) -> Self {
        let mut supported: Vec<Value> = HANDSHAKE_VERSIONS
            .iter()
            .rev()
            .map(|v| Value::from(*v))
            .collect();
        supported.push(MODERN_VERSION.into());
        RpcError::new(
            code::UNSUPPORTED_PROTOCOL_VERSION,
            format!("unsupported protocol version `{asked}`"),
        )
        .with_data(serde_json::json!({ "supported": supported, "requested": asked }))
    }

    pub fn to_value(&self) -> Value {
        let mut e = Map::new();
        e.insert("code".into(), self.code.into());
        e.insert("message".into(), self.message.clone().into());
        if let Some(d) = &self.data {
            e.insert("data".into(), d.clone());
        }
        Value::Object(e)
    }
}

/// One message from a client, as the endpoint sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// `None` for a notification.
    pub id: Option<Value>,
    pub method: String,
    /// Always an object (an absent `params` is an empty one).
    pub params: Params,
}

/// What a POST body held.
#[derive(Debug, Clone, PartialEq)]
pub enum Posted {
    Message(Inbound),
    /// A response from the client (to a server-to-client request); the
    /// gateway sends none, so it is acknowledged and dropped.
    Response,
}

/// Parses a POSTed body: one JSON-RPC request, notification or response.
/// Batches are refused (2025-06-18 removed them and no current client
/// sends them). The error's `id` is what could be read of the message's.
///
/// A well-formed request is read by a scan ([`read_message`]); anything
/// else (a response, an error, an odd spelling) by a tree, which also
/// words the errors.
pub fn parse_posted(body: &[u8]) -> Result<Posted, (Value, RpcError)> {
    match read_message(body) {
        Some(m) => Ok(Posted::Message(m)),
        None => parse_tree(body),
    }
}

/// A request or notification read without building a tree: the members
/// found by a scan, `id` and `method` parsed, `params` kept as text. None
/// for anything that is not plainly one (the tree decides those).
fn read_message(body: &[u8]) -> Option<Inbound> {
    let text = std::str::from_utf8(body).ok()?;
    let scanned = crate::json::top_level_members_with(body, "params").ok()?;
    // What serde_json might refuse (a lone surrogate, a number past f64's
    // range) is for the tree to judge: the gateway must not forward what
    // its own checks could not read.
    if scanned.unusual {
        return None;
    }
    let members = scanned.members;
    let field = |key| crate::json::last_named(body, &members, key);
    if field("jsonrpc")? != b"\"2.0\"" {
        return None;
    }
    let id = match field("id") {
        None => None,
        Some(raw) => {
            let id: Value = serde_json::from_slice(raw).ok()?;
            if !(id.is_string() || id.is_i64() || id.is_u64()) {
                return None;
            }
            Some(id)
        }
    };
    let method: String = serde_json::from_slice(field("method")?).ok()?;
    let params = match (field("params"), scanned.nested) {
        (None | Some(b"null"), _) => Params::default(),
        // A name written twice is left to the tree, which keeps the last:
        // an upstream reading the first must not see what was not checked.
        (Some(_), Some(nested)) if repeats_a_name(&body[nested.value.clone()], &nested.members) => {
            return None
        }
        (Some(_), Some(nested)) => Params::scanned(text.get(nested.value)?, nested.members),
        // Not an object: the tree words the error.
        (Some(_), None) => return None,
    };
    Some(Inbound { id, method, params })
}

/// Whether two of `members` (of the object `raw`) have the same name.
/// Params hold a handful of members, so pairs are compared.
fn repeats_a_name(raw: &[u8], members: &[crate::json::Member]) -> bool {
    members.iter().enumerate().any(|(i, a)| {
        members[i + 1..]
            .iter()
            .any(|b| a.key_escaped || b.key_escaped || raw[a.key.clone()] == raw[b.key.clone()])
    })
}

/// [`parse_posted`] by way of a tree.
fn parse_tree(body: &[u8]) -> Result<Posted, (Value, RpcError)> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Value::Null,
            RpcError::new(code::PARSE_ERROR, format!("the body is not JSON: {e}")),
        )
    })?;
    let Value::Object(mut obj) = v else {
        let what = if v.is_array() {
            "batches are not supported: send one message per request"
        } else {
            "a JSON-RPC message is an object"
        };
        return Err((Value::Null, RpcError::new(code::INVALID_REQUEST, what)));
    };
    let id = obj.remove("id");
    let bad = |id: &Option<Value>, msg: &str| {
        (
            id.clone().unwrap_or(Value::Null),
            RpcError::new(code::INVALID_REQUEST, msg),
        )
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad(&id, "`jsonrpc` must be \"2.0\""));
    }
    if let Some(i) = &id {
        if !(i.is_string() || i.is_i64() || i.is_u64()) {
            return Err(bad(&None, "`id` must be a string or an integer"));
        }
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(bad(&id, "`method` must be a string")),
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            return Ok(Posted::Response)
        }
        None => return Err(bad(&id, "`method` is missing")),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Params::default(),
        Some(Value::Object(p)) => Params::from_map(p),
        Some(_) => return Err(bad(&id, "`params` must be an object")),
    };
    Ok(Posted::Message(Inbound { id, method, params }))
}

/// [`parse_posted`] always by way of the tree (for tests and the fuzz
/// target, which check that the scan reads what the tree reads).
#[doc(hidden)]
pub fn parse_posted_by_tree(body: &[u8]) -> Result<Posted, (Value, RpcError)> {
    parse_tree(body)
}

impl Inbound {
    /// The version a modern request names in `_meta`, if any.
    pub fn meta_version(&self) -> Option<Cow<'_, str>> {
        self.params.get_nested_str("_meta", META_VERSION)
    }

    /// `params.name` of `tools/call` and `prompts/get`, `params.uri` of
    /// `resources/read`: what `Mcp-Name` must repeat, and what policy
    /// decides on.
    pub fn target_name(&self) -> Option<Cow<'_, str>> {
        self.params.get_str(name_param(&self.method)?)
    }
}

/// The param that names what a method acts on, for methods that have one.
pub fn name_param(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

/// The era of a request, from its envelope and headers: `_meta` with a
/// version, or the modern `MCP-Protocol-Version`, make it modern.
pub fn era_of(msg: &Inbound, version_header: Option<&str>) -> Era {
    if version_header == Some(MODERN_VERSION) || msg.meta_version().is_some() {
        Era::Modern
    } else {
        Era::Handshake
    }
}

/// The modern envelope's checks: a version the gateway speaks, in `_meta`
/// and in `MCP-Protocol-Version` alike, and `Mcp-Method` / `Mcp-Name`
/// repeating the body.
pub fn check_modern(
    msg: &Inbound,
    version_header: Option<&str>,
    method_header: Option<&str>,
    name_header: Option<&str>,
) -> Result<(), RpcError> {
    let mismatch = |what: String| RpcError::new(code::HEADER_MISMATCH, what);
    let meta = msg.meta_version();
    let meta = meta.as_deref();
    let version = match (meta, version_header) {
        (Some(m), Some(h)) if m != h => {
            return Err(mismatch(format!(
                "MCP-Protocol-Version `{h}` does not match _meta's `{m}`"
            )))
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => MODERN_VERSION,
    };
    if version != MODERN_VERSION {
        return Err(RpcError::unsupported_version(version));
    }
    if meta.is_none() {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            format!("a {MODERN_VERSION} request carries `_meta` with `{META_VERSION}`"),
        ));
    }
    match method_header {
        None => return Err(mismatch("the Mcp-Method header is missing".into())),
        Some(m) if m != msg.method => {
            return Err(mismatch(format!(
                "Mcp-Method `{m}` does not match the body's `{}`",
                msg.method
            )))
        }
        Some(_) => {}
    }
    if let Some(body_name) = msg.target_name().as_deref() {
        match name_header.map(decode_header_value) {
            None => return Err(mismatch("the Mcp-Name header is missing".into())),
            Some(None) => return Err(mismatch("the Mcp-Name header is malformed".into())),
            Some(Some(n)) if n != body_name => {
                return Err(mismatch(format!(
                    "Mcp-Name `{n}` does not match the body's `{body_name}`"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The version to answer a handshake-era `initialize` with: the client's,
/// when the gateway speaks it, else the newest it does.
pub fn negotiate(asked: Option<&str>) -> &'static str {
    asked
        .and_then(|a| HANDSHAKE_VERSIONS.iter().find(|v| **v == a).copied())
        .unwrap_or(HANDSHAKE_VERSIONS[0])
}

/// A JSON-RPC response body.
pub fn response(id: &Value, result: Value) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// A JSON-RPC error body.
pub fn error_response(id: &Value, err: &RpcError) -> Value {
    serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": err.to_value() })
}

/// Shapes a result for a client of `era`: modern results say what they
/// are (`resultType`), and lists how they may be cached. Results that
/// already do are left alone.
pub fn fit_result(result: &mut Value, era: Era, is_list: bool) {
    let Value::Object(r) = result else {
        return;
    };
    match era {
        Era::Modern => {
            r.entry("resultType").or_insert_with(|| "complete".into());
            if is_list {
                r.entry("cacheScope").or_insert_with(|| "private".into());
                r.entry("ttlMs").or_insert_with(|| 0.into());
            }
        }
        Era::Handshake => {
            for k in ["resultType", "cacheScope", "ttlMs"] {
                r.remove(k);
            }
        }
    }
}

#[cfg(test)]
#[path = "mcp_tests.rs"]
mod tests;
