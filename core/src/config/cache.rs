//! A route's response cache (`models.<alias>.cache`): how long an answer
//! is kept, whose requests may share it, and the memory it may take.

use super::{field, ByteSize, ConfigError, Dur};
use serde::Deserialize;
use std::time::Duration;

pub use shardgate_policy::CacheScope;

/// The gateway-wide bounds are split evenly over the shards, each of which
/// keeps its own entries (nothing shared on the request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub scope: CacheScope,
    /// The gateway's whole bound, all shards together.
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Answers to sampled requests are kept too (not only temperature 0 or
    /// a seed): for callers that accept a repeated answer, and for
    /// dialects that no longer let a caller ask for determinism (Anthropic
    /// API 2026-10-21 refuses `temperature`).
    pub sampled: bool,
    /// Entries also go to the cluster's Redis for every node (default:
    /// whenever `cluster:` is configured; `true` without it is refused).
    pub shared: Option<bool>,
}

impl CacheSettings {
    /// Whether entries are shared, given a cluster.
    pub fn shares(&self) -> bool {
        self.shared != Some(false)
    }

    /// One shard's share of the bounds (at least one entry and 1 KiB).
    pub fn per_shard(&self, shards: usize) -> (usize, usize) {
        let n = shards.max(1);
        (
            (self.max_entries / n).max(1),
            (self.max_bytes / n).max(1024),
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    ttl: Option<Dur>,
    #[serde(default)]
    scope: CacheScope,
    max_entries: Option<usize>,
    max_bytes: Option<ByteSize>,
    #[serde(default)]
    sampled: bool,
    shared: Option<bool>,
}

/// The longest an answer may be kept.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn build(path: &str, raw: RawCache) -> Result<CacheSettings, ConfigError> {
    let ttl = raw.ttl.map_or(Duration::from_secs(600), |d| d.0);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(field(
            format!("{path}.ttl"),
            "must be more than 0 and at most 30 days",
        ));
    }
    let max_entries = raw.max_entries.unwrap_or(10_000);
    if max_entries == 0 {
        return Err(field(format!("{path}.max_entries"), "must be more than 0"));
    }
    let max_bytes = raw.max_bytes.map_or(64 << 20, ByteSize::as_usize);
    if max_bytes < 64 * 1024 {
        return Err(field(format!("{path}.max_bytes"), "must be at least 64KiB"));
    }
    Ok(CacheSettings {
        ttl,
        scope: raw.scope,
        max_entries,
        max_bytes,
        sampled: raw.sampled,
        shared: raw.shared,
    })
}
