//! What the gateway answers as one MCP server made of many: the shared
//! capabilities, lists merged across servers under prefixed names and
//! filtered by the caller's tool policy, and a call routed to its server.

use super::upstream::{annotated_scope, Via};
use super::McpShard;
use crate::config::{McpConfig, McpServer};
use crate::shard::Shard;
use serde_json::{json, Map, Value};
use shardgate_policy::{Resolved, ToolScope, ToolVerdict};
use shardgate_proto::mcp::{self as wire, code, expose, split_exposed, Era, RpcError};
use std::collections::HashMap;
use std::time::Duration;

/// The longest a list waits for any one server: a slow server drops out
/// of the list rather than holding it.
const LIST_WAIT: Duration = Duration::from_secs(10);

/// Gateway-specific JSON-RPC codes (the implementation-defined range).
pub mod codes {
    /// The caller's policy refuses this tool, prompt or resource.
    pub const FORBIDDEN: i64 = -32003;
    /// The caller's request budget is spent.
    pub const RATE_LIMITED: i64 = -32029;
}

/// What the gateway can do, the same in both eras: tools, prompts and
/// resources, without subscriptions or change notifications (those would
/// need a stream per client the gateway does not hold).
fn capabilities() -> Value {
    json!({
        "tools": {"listChanged": false},
        "prompts": {"listChanged": false},
        "resources": {"listChanged": false, "subscribe": false},
    })
}

/// `server/discover`'s result.
pub fn discover() -> Value {
    let mut versions: Vec<Value> = wire::HANDSHAKE_VERSIONS
        .iter()
        .rev()
        .map(|v| Value::from(*v))
        .collect();
    versions.push(wire::MODERN_VERSION.into());
    json!({
        "supportedVersions": versions,
        "capabilities": capabilities(),
        "cacheScope": "private",
        "ttlMs": 0,
        "resultType": "complete",
        "_meta": { wire::META_SERVER_INFO: super::stdio::gateway_info() },
    })
}

/// `initialize`'s result at `version`.
pub fn initialize(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": capabilities(),
        "serverInfo": super::stdio::gateway_info(),
    })
}

/// The list methods: the field holding the items, and the one holding
/// each item's name (prefixed with its server's).
pub fn list_fields(method: &str) -> Option<(&'static str, &'static str)> {
    match method {
        "tools/list" => Some(("tools", "name")),
        "prompts/list" => Some(("prompts", "name")),
        "resources/list" => Some(("resources", "uri")),
        "resources/templates/list" => Some(("resourceTemplates", "uriTemplate")),
        _ => None,
    }
}

/// Whether any applicable policy limits tools by scope (only then must a
/// tool's scope be known).
pub fn needs_scopes(resolved: Option<&Resolved<'_>>) -> bool {
    resolved.is_some_and(|r| r.policies().iter().any(|p| !p.tool_scopes.is_empty()))
}

/// The scope of `tool` (its server's name for it): config first, then the
/// server's annotations.
pub fn scope_of(server: &McpServer, tool: &str, annotated: Option<ToolScope>) -> Option<ToolScope> {
    server.tools.get(tool).and_then(|o| o.scope).or(annotated)
}

/// One merged list, with what it left out.
pub struct Listed {
    pub result: Value,
    /// Servers that failed to answer (their items are missing).
    pub failed: Vec<String>,
    /// Items the caller's policy hid.
    pub hidden: usize,
}

/// Every server's items of `method`, prefixed, in config order (each
/// server's own order within), without what the policy hides.
pub async fn list<'s>(
    mcp: &McpShard,
    shard: &Shard,
    cfg: &McpConfig,
    method: &str,
    resolved: Option<&Resolved<'_>>,
    via_of: &dyn Fn(&str) -> Via<'s>,
    era: Era,
) -> Listed {
    let Some((field, name_field)) = list_fields(method) else {
        return Listed {
            result: Value::Null,
            failed: Vec::new(),
            hidden: 0,
        };
    };
    let fetches = cfg
        .servers
        .iter()
        .enumerate()
        .map(|(idx, s)| {
            let via = via_of(&s.name);
            let wait = s.timeout.min(LIST_WAIT);
            mcp.list_all(shard, idx, s, method, field, via, wait)
        })
        .collect();
    let answers = super::join_all(fetches).await;
    let mut items = Vec::new();
    let mut failed = Vec::new();
    let mut hidden = 0;
    for ((idx, server), answer) in cfg.servers.iter().enumerate().zip(answers) {
        let list = match answer {
            Ok(l) => l,
            Err(e) => {
                log::warn!("mcp {method}: {}", e.message);
                failed.push(server.name.clone());
                continue;
            }
        };
        let mut scopes = HashMap::new();
        for mut item in list {
            let Some(own) = item
                .get(name_field)
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let exposed = expose(&server.name, &own);
            let scope = match field {
                "tools" => {
                    let annotated = annotated_scope(&item);
                    scopes.insert(own.clone(), annotated);
                    scope_of(server, &own, annotated)
                }
                _ => Some(ToolScope::Read),
            };
            if let Some(r) = resolved {
                if !r.decide_tool(&exposed, scope).is_allowed() {
                    hidden += 1;
                    continue;
                }
            }
            item[name_field] = exposed.into();
            items.push(item);
        }
        if field == "tools" {
            mcp.remember_scopes(idx, scopes);
        }
    }
    let mut result = Map::new();
    result.insert(field.into(), Value::Array(items));
    let mut result = Value::Object(result);
    wire::fit_result(&mut result, era, true);
    Listed {
        result,
        failed,
        hidden,
    }
}

/// The server a call goes to, and its own name for what is called.
pub fn route<'c>(
    cfg: &'c McpConfig,
    exposed: &'c str,
) -> Result<(usize, &'c McpServer, &'c str), RpcError> {
    let unknown = || RpcError::new(code::INVALID_PARAMS, format!("unknown name `{exposed}`"));
    let (server, own) = split_exposed(exposed).ok_or_else(unknown)?;
    let idx = cfg
        .servers
        .iter()
        .position(|s| s.name == server)
        .ok_or_else(unknown)?;
    Ok((idx, &cfg.servers[idx], own))
}

/// The error for a call the policy refused, naming the rule.
pub fn refused(what: &str, exposed: &str, verdict: &ToolVerdict<'_>) -> RpcError {
    let (policy, rule) = match verdict {
        ToolVerdict::Refused { policy, rule } => (*policy, rule.describe()),
        ToolVerdict::Allowed => ("", String::new()),
    };
    RpcError::new(codes::FORBIDDEN, format!("{what} `{exposed}` is {verdict}"))
        .with_data(json!({"policy": policy, "rule": rule}))
}
