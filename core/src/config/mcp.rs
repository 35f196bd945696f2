//! `mcp:` and `mcp_servers:`: the MCP servers the gateway's `/mcp` endpoint
//! aggregates, and how it reaches each. Validated here like the rest of the
//! config: every error names its field, secrets are resolved once.

use super::upstream::parse_base_url;
use super::{field, BaseUrl, ConfigError, Dur, Secret, SecretRef};
use serde::Deserialize;
use shardgate_policy::ToolScope;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Separates a server's name from its tool, prompt or resource in exposed
/// names (`billing.read_renewal_status`). Server names cannot contain it, so
/// the first one always ends the server's name, whatever its tools are
/// called.
pub const NAME_SEPARATOR: char = '.';

/// The validated MCP section. Empty `servers`: `/mcp` still answers, with
/// nothing to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpConfig {
    /// Config order, which is the order of merged lists.
    pub servers: Vec<McpServer>,
    /// Seals session IDs; without it a key is generated once in
    /// `store.dir`.
    pub session_key: Option<Secret>,
    /// How long a legacy session lives after it was opened.
    pub session_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpServer {
    /// `[A-Za-z0-9_-]+`: the prefix of everything it exposes.
    pub name: String,
    pub transport: McpTransport,
    /// The longest a call to this server may take (per tool: `tools.*.timeout`).
    pub timeout: Duration,
    /// Overrides by the server's own tool name.
    pub tools: BTreeMap<String, ToolOverride>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum McpTransport {
    Http(McpHttp),
    Stdio(McpStdio),
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpHttp {
    /// Scheme, host, port and the endpoint's path (`/mcp`).
    pub url: BaseUrl,
    /// Sent on every request to it (values may be secrets).
    pub headers: Vec<(String, Secret)>,
    pub bearer_token: Option<Secret>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct McpStdio {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

/// What the config says of one tool. Config overrides the server's
/// annotations, which are untrusted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ToolOverride {
    pub scope: Option<ToolScope>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    session_key: Option<SecretRef>,
    session_ttl: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcpServer {
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, SecretRef>,
    bearer_token: Option<SecretRef>,
    ca_file: Option<PathBuf>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    timeout: Option<Dur>,
    #[serde(default)]
    tools: BTreeMap<String, RawToolOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToolOverride {
    scope: Option<ToolScope>,
    timeout: Option<Dur>,
}

/// Headers the gateway sets itself on upstream MCP requests.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
];

pub(super) fn validate(
    raw: Option<RawMcp>,
    servers: BTreeMap<String, RawMcpServer>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<McpConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let session_key = match raw.session_key {
        Some(s) => {
            let key = s.resolve(env).map_err(|m| field("mcp.session_key", m))?;
            if key.expose().len() < 16 {
                return Err(field(
                    "mcp.session_key",
                    "is shorter than 16 characters: use a random secret",
                ));
            }
            Some(key)
        }
        None => None,
    };
    let mut out = Vec::with_capacity(servers.len());
    for (name, s) in servers {
        let path = format!("mcp_servers.{name}");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(field(
                path,
                "a server name is letters, digits, `_` and `-` (it prefixes its tools' names)",
            ));
        }
        let transport = match (s.url, s.command) {
            (Some(_), Some(_)) => {
                return Err(field(path, "has both `url` and `command`: pick one"))
            }
            (None, None) => {
                return Err(field(
                    path,
                    "needs `url` (Streamable HTTP) or `command` (stdio)",
                ))
            }
            (Some(url), None) => {
                if !s.args.is_empty() || !s.env.is_empty() || s.cwd.is_some() {
                    return Err(field(
                        path,
                        "`args`, `env` and `cwd` are for stdio servers (`command`)",
                    ));
                }
                let url = parse_base_url(&format!("{path}.url"), &url)?;
                let mut headers = Vec::with_capacity(s.headers.len());
                for (h, v) in s.headers {
                    let hpath = format!("{path}.headers.{h}");
                    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                        return Err(field(hpath, "is not a header name"));
                    }
                    if RESERVED_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                        return Err(field(hpath, "is set by the gateway"));
                    }
                    let v = v.resolve(env).map_err(|m| field(hpath.clone(), m))?;
                    if v.expose().bytes().any(|b| b == b'\r' || b == b'\n') {
                        return Err(field(hpath, "has a line break"));
                    }
                    headers.push((h, v));
                }
                let bearer_token = match s.bearer_token {
                    Some(t) => Some(
                        t.resolve(env)
                            .map_err(|m| field(format!("{path}.bearer_token"), m))?,
                    ),
                    None => None,
                };
                McpTransport::Http(McpHttp {
                    url,
                    headers,
                    bearer_token,
                    ca_file: s.ca_file,
                })
            }
            (None, Some(command)) => {
                if !s.headers.is_empty() || s.bearer_token.is_some() || s.ca_file.is_some() {
                    return Err(field(
                        path,
                        "`headers`, `bearer_token` and `ca_file` are for HTTP servers (`url`)",
                    ));
                }
                if command.trim().is_empty() {
                    return Err(field(format!("{path}.command"), "is empty"));
                }
                McpTransport::Stdio(McpStdio {
                    command,
                    args: s.args,
                    env: s.env.into_iter().collect(),
                    cwd: s.cwd,
                })
            }
        };
        let tools = s
            .tools
            .into_iter()
            .map(|(t, o)| {
                (
                    t,
                    ToolOverride {
                        scope: o.scope,
                        timeout: o.timeout.map(|d| d.0),
                    },
                )
            })
            .collect();
        out.push(McpServer {
            name,
            transport,
            timeout: s.timeout.map_or(Duration::from_secs(60), |d| d.0),
            tools,
        });
    }
    Ok(McpConfig {
        servers: out,
        session_key,
        session_ttl: raw
            .session_ttl
            .map_or(Duration::from_secs(24 * 3600), |d| d.0),
    })
}

impl McpServer {
    /// The longest a call of `tool` (the server's own name) may take.
    pub fn timeout_of(&self, tool: &str) -> Duration {
        self.tools
            .get(tool)
            .and_then(|o| o.timeout)
            .unwrap_or(self.timeout)
    }
}
