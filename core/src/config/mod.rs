//! Gateway configuration: YAML, validated strictly at start. Every error names
//! the field it is about (`providers.openai.base_url: ...`), unknown fields are
//! refused, and secrets are resolved here once and never printed.
//!
//! Two layers: `raw` mirrors the file (what serde reads), `Config` is the
//! validated form the gateway runs on, where references are already resolved
//! (a model's target points at a provider by index, not by a name that might
//! not exist).

mod admin;
pub mod audit;
pub mod cache;
pub mod cluster;
pub mod guardrails;
mod limits;
mod listeners;
pub mod mcp;
mod policies;
mod provider;
mod raw;
pub mod route;
mod secret;
mod shards;
mod store;
mod units;
mod upstream;

pub use mcp::{McpConfig, McpServer, McpTransport};
pub use route::{ModelRoute, Strategy, Target};
pub use secret::{Secret, SecretRef};
pub use units::{parse_size, ByteSize, Dur};

use shardgate_providers as providers;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config used when none is given: a mock model so a newcomer can curl
/// the gateway at once, with no API keys.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Field { path: String, message: String },
}

fn field(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    /// Required when a listener has the admin role.
    pub admin: Option<AdminConfig>,
    pub shards: usize,
    /// The CPUs shards are pinned to (unless `--no-pin`).
    pub placement: crate::placement::Placement,
    pub limits: Limits,
    pub upstream: UpstreamSettings,
    pub providers: Vec<Provider>,
    /// Gateway model aliases, sorted by name (for `/v1/models`).
    pub models: BTreeMap<String, ModelRoute>,
    pub auth: AuthMode,
    /// `- ai_runtime_policy:` entries, already checked to compile.
    pub policies: Vec<shardgate_policy::PolicyEntry>,
    /// The `guardrails:` checks, compiled (policies attach them by name;
    /// each shard's generation holds its own copy).
    pub guardrails: std::sync::Arc<shardgate_policy::guardrails::Guardrails>,
    /// The KEKs of stored provider credentials (`store.kek`).
    pub provider_keks: std::sync::Arc<crate::store::provider_keys::Keks>,
    /// Each guardrail check's webhook, by check index.
    pub guardrail_webhooks: Vec<Option<guardrails::WebhookConfig>>,
    /// Price overrides on top of the built-in table.
    pub pricing: Vec<shardgate_policy::PriceSpec>,
    pub store: StoreConfig,
    /// The MCP servers behind `/mcp`.
    pub mcp: McpConfig,
    /// The audit log, when configured.
    pub audit: Option<audit::AuditConfig>,
    /// Limits, budgets and keys shared with other nodes through Redis.
    pub cluster: Option<cluster::ClusterConfig>,
}

/// Who may call the model APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A gateway virtual key (`shardgate keys create`) on every request:
    /// the default.
    Keys,
    /// Anyone who can connect (local development, or a gateway behind
    /// another authenticating proxy). Policies with an empty `actor_scope`
    /// still apply to everyone.
    None,
}

/// Where the embedded store keeps keys and usage (`store:` in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Holds `keys.log`, `usage.log` and their lock files. A relative path is
    /// relative to the working directory, like every path in config.
    pub dir: PathBuf,
    pub fsync: StoreFsync,
    /// How long a stored Responses turn (`store: true`) can be continued
    /// or read back.
    pub responses_ttl: Duration,
    /// Stored turns kept at most (bytes, as stored); the oldest go first.
    pub responses_max_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from(DEFAULT_STORE_DIR),
            fsync: StoreFsync::Interval(Duration::from_millis(100)),
            responses_ttl: DEFAULT_RESPONSES_TTL,
            responses_max_bytes: 256 << 20,
        }
    }
}

/// 30 days, as OpenAI keeps stored responses.
pub const DEFAULT_RESPONSES_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// When the usage writer calls fsync. Every record is written (reaches the
/// page cache, so it survives `kill -9`) as soon as the writer sees it; this
/// only decides how much a power loss or kernel crash can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFsync {
    /// After every batch.
    Always,
    /// At most this long after a write (group commit). The default, 100ms.
    Interval(Duration),
    /// Leave it to the kernel.
    Never,
}

/// Default `store.dir`.
pub const DEFAULT_STORE_DIR: &str = "shardgate-data";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub role: ListenerRole,
}

/// The admin listeners' settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `Authorization: Bearer` for every admin endpoint but the probes.
    pub token: Secret,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerRole {
    /// The model APIs (OpenAI and Anthropic), with health and readiness.
    #[default]
    Api,
    /// Operators' endpoints only (health and readiness today): probes and
    /// operators on their own port, usually loopback, apart from client
    /// traffic.
    Admin,
    /// The MCP endpoint (`/mcp`) alone, with health and readiness: agents'
    /// tool traffic on a port of its own.
    Mcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// Limits on everything a client can make the gateway hold or wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections_per_shard: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// From the request sent to the upstream's response head.
    pub first_byte_timeout: Duration,
    /// Longest silence between two reads of a response body or stream.
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_upstream: usize,
    pub max_response_bytes: usize,
    pub max_event_bytes: usize,
    pub dns_ttl: Duration,
    pub breaker: BreakerSettings,
    /// A stream whose client left is read on (not relayed) for at most
    /// this long, to its final usage, so its spend is exact rather than
    /// estimated (zero: never).
    pub drain_after_disconnect: Duration,
    /// Streams drained at once per shard, at most (more are cut at once,
    /// their usage estimated).
    pub max_drains: usize,
}

/// When a target's circuit opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// It opens after this many failures in a row that say the target is
    /// unhealthy (connect errors, timeouts, 5xx)...
    pub failures: u32,
    /// ...or when this share of its calls (percent) failed so within one
    /// `window`, once it has had `min_calls` there (`None`: only in a row)...
    pub error_percent: Option<u8>,
    pub window: Duration,
    pub min_calls: u32,
    /// ...for this long, or as long as its `Retry-After` said; then one
    /// request probes it (half-open).
    pub open_for: Duration,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
}

/// Built once per config; a boxed HTTP provider would cost a pointer
/// chase on every request for the few bytes a mock provider would save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// An HTTP upstream speaking one of the dialects in [`Wire`].
    Http(HttpProvider),
    /// Answers in-process with deterministic text.
    Mock(MockProvider),
}

#[derive(Debug, Clone)]
pub struct HttpProvider {
    pub base: BaseUrl,
    pub api_key: Option<Secret>,
    /// Every credential sent to this upstream (`api_key`, the AWS key id,
    /// secret key and session token): what its error answers are scrubbed
    /// of before anything of them reaches a client or a log.
    pub secrets: providers::KnownSecrets,
    /// Extra CA certificates trusted for this upstream (besides webpki roots).
    pub ca_file: Option<PathBuf>,
    pub wire: Wire,
    pub health_check: Option<HealthCheck>,
}

/// An active health check: `GET path` (base_url's path included) every
/// `interval`, answered within `timeout`. A 5xx, no answer or no
/// connection count as the provider's targets failing, in the same
/// breakers as calls; any other answer (a 401 too: the server is up) is
/// not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// How a provider is spoken to. OpenAI and Azure share the client's dialect
/// (bodies pass through with only `model` patched); the others are
/// translated by `shardgate-providers`.
#[derive(Debug, Clone)]
pub enum Wire {
    /// OpenAI or an OpenAI-compatible preset (`deepseek`, `vllm`, ...).
    OpenAi(providers::openai::OpenAiCompatible),
    Azure(providers::azure::AzureProvider),
    Anthropic(providers::anthropic::AnthropicProvider),
    Gemini(providers::gemini::GeminiProvider),
    Bedrock(providers::bedrock::BedrockProvider),
}

impl Wire {
    /// The translation layer for this wire.
    pub fn provider(&self) -> &dyn providers::Provider {
        match self {
            Wire::OpenAi(p) => p,
            Wire::Azure(p) => p,
            Wire::Anthropic(p) => p,
            Wire::Gemini(p) => p,
            Wire::Bedrock(p) => p,
        }
    }

    pub fn dialect(&self) -> providers::Dialect {
        self.provider().dialect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash, e.g. `/v1`.
    pub path: String,
}

impl BaseUrl {
    /// The Host header value: the port is included only when not the default.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct MockProvider {
    pub output_tokens: usize,
    pub ttft: Duration,
    /// `None` streams as fast as possible.
    pub tokens_per_second: Option<u32>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &|k| std::env::var(k).ok())
    }

    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Self::parse_on(text, env, &crate::placement::Machine::current())
    }

    /// [`Config::parse`] on the given machine's CPUs (for tests).
    pub fn parse_on(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        machine: &crate::placement::Machine,
    ) -> Result<Config, ConfigError> {
        parse_raw(text)?.validate(env, machine)
    }

    /// Only the `store` section of a config file (the whole file is still
    /// checked for shape and unknown fields), without resolving secrets: for
    /// `shardgate keys`, which runs without the providers' API keys.
    pub fn load_store(path: &Path) -> Result<StoreConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_store(&text)
    }

    pub fn parse_store(text: &str) -> Result<StoreConfig, ConfigError> {
        parse_raw(text)?.store()
    }

    /// What `shardgate providers` needs of a config file: the store, the
    /// KEKs, and the providers' names (their secrets are not resolved).
    pub fn load_provider_store(
        path: &Path,
    ) -> Result<(StoreConfig, crate::store::provider_keys::Keks, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw = parse_raw(&text)?;
        let keks = raw.keks(&|k| std::env::var(k).ok())?;
        Ok((raw.store()?, keks, raw.provider_names()))
    }

    /// The `audit:` section alone (for `shardgate audit`, which needs no
    /// provider secret).
    pub fn load_audit(path: &Path) -> Result<Option<audit::AuditConfig>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        parse_raw(&text)?.audit(&|k| std::env::var(k).ok())
    }
}

fn parse_raw(text: &str) -> Result<raw::RawConfig, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "config".to_owned()
        } else {
            path
        };
        let mut message = e.into_inner().to_string();
        // The YAML library prefixes its own (shorter) path; ours is enough.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') && path.starts_with(prefix) {
                message = rest.to_owned();
            }
        }
        field(path, message)
    })?;
    Ok(raw)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

impl Config {
    /// The settings a running gateway cannot take from a reload, where
    /// `new` differs from `self`: sockets are bound, shards pinned and the
    /// store locked at start, and each connection keeps the limits it
    /// started with.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listeners != new.listeners {
            changed.push("listen / listeners");
        }
        if self.placement != new.placement {
            changed.push("shards / cpus");
        }
        if self.limits != new.limits {
            changed.push("limits");
        }
        if self.upstream != new.upstream {
            changed.push("upstream");
        }
        if self.store != new.store {
            changed.push("store");
        }
        // stdio servers are the process's children, and the session key
        // seals sessions that clients hold: both live as long as the process.
        if self.mcp != new.mcp {
            changed.push("mcp / mcp_servers");
        }
        // The writer thread and its open file are the process's.
        if self.audit != new.audit {
            changed.push("audit");
        }
        // The store connection and its leases are the process's.
        if self.cluster != new.cluster {
            changed.push("cluster");
        }
        changed
    }
}
