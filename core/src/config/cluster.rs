//! `cluster:`: several gateway nodes sharing limits, budgets and keys
//! through Redis. Absent: one node, embedded store only.

use super::{field, ConfigError, Dur, Secret, SecretRef};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub redis: RedisConfig,
    pub on_unavailable: OnUnavailable,
    /// This node's name in the cluster (live-node count, logs). Default:
    /// the host name and process id.
    pub node: Option<String>,
    /// The longest a request waits for the store's grant before it is
    /// answered without one (503 under `deny`).
    pub deadline: Duration,
    /// How long a node lease lasts at most: the staleness of the cluster's
    /// spend seen by a node, and the period of a busy scope's store calls.
    pub lease_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URL; a password in it is kept as a
    /// secret like `password`.
    pub url: Secret,
    pub password: Option<Secret>,
    /// Prefixed to every key and channel, so clusters can share a Redis.
    pub prefix: String,
    /// Connect, read and write timeout of one store call: past it the
    /// store counts as unavailable until a reconnect succeeds.
    pub timeout: Duration,
    pub mode: RedisMode,
}

/// One Redis (or a proxy in front of many), or a Redis Cluster: `url` is
/// then one seed node, and the client follows the cluster's slot map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    #[default]
    Standalone,
    Cluster,
}

/// What a node does while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Fail closed: limited requests get a 503 until the store is back.
    Deny,
    /// Each node enforces its share of every limit (the limit divided by
    /// the live nodes last seen), with an alarm metric and log line.
    Local,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    redis: RawRedis,
    on_unavailable: Option<OnUnavailable>,
    node: Option<String>,
    deadline: Option<Dur>,
    lease_ttl: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: SecretRef,
    password: Option<SecretRef>,
    prefix: Option<String>,
    timeout: Option<Dur>,
    mode: Option<RedisMode>,
}

pub(super) fn validate(
    raw: Option<RawCluster>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let url = raw
        .redis
        .url
        .resolve(env)
        .map_err(|m| field("cluster.redis.url", m))?;
    let scheme_ok = url.expose().starts_with("redis://") || url.expose().starts_with("rediss://");
    if !scheme_ok || url::Url::parse(url.expose()).is_err() {
        return Err(field(
            "cluster.redis.url",
            "must be a redis:// or rediss:// URL",
        ));
    }
    let password = match raw.redis.password {
        Some(p) => Some(
            p.resolve(env)
                .map_err(|m| field("cluster.redis.password", m))?,
        ),
        None => None,
    };
    let prefix = raw.redis.prefix.unwrap_or_else(|| "shardgate:".to_owned());
    if prefix.contains(['{', '}', ' ']) {
        return Err(field(
            "cluster.redis.prefix",
            "may not contain braces or spaces (keys use hash tags)",
        ));
    }
    let nonzero =
        |d: Option<Dur>, default: Duration, name: &str| -> Result<Duration, ConfigError> {
            let d = d.map_or(default, |d| d.0);
            if d.is_zero() {
                return Err(field(name, "must be more than 0"));
            }
            Ok(d)
        };
    let timeout = nonzero(
        raw.redis.timeout,
        Duration::from_millis(100),
        "cluster.redis.timeout",
    )?;
    let deadline = nonzero(raw.deadline, Duration::from_millis(10), "cluster.deadline")?;
    let lease_ttl = nonzero(raw.lease_ttl, Duration::from_secs(1), "cluster.lease_ttl")?;
    if lease_ttl > Duration::from_secs(60) {
        return Err(field(
            "cluster.lease_ttl",
            "may be at most 60s (one window)",
        ));
    }
    if let Some(n) = &raw.node {
        if n.is_empty() || n.len() > 128 || n.contains(char::is_whitespace) {
            return Err(field(
                "cluster.node",
                "must be 1 to 128 characters without spaces",
            ));
        }
    }
    Ok(Some(ClusterConfig {
        redis: RedisConfig {
            url,
            password,
            prefix,
            timeout,
            mode: raw.redis.mode.unwrap_or_default(),
        },
        on_unavailable: raw.on_unavailable.unwrap_or(OnUnavailable::Deny),
        node: raw.node,
        deadline,
        lease_ttl,
    }))
}
