//! `audit:`: the tamper-evident audit log. Absent: no audit file.

use super::store::parse_fsync;
use super::{field, ByteSize, ConfigError, Dur, Secret, SecretRef, StoreFsync};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Where `audit.log` and its rotated files live.
    pub dir: PathBuf,
    pub fsync: StoreFsync,
    /// The HMAC key's secret; without it a key is generated once in `dir`.
    pub key: Option<Secret>,
    /// The file is rotated past this size...
    pub max_file_bytes: u64,
    /// ...or this age.
    pub max_file_age: Duration,
    /// Rotated files kept; older ones are removed.
    pub keep_files: usize,
    pub on_backpressure: Backpressure,
    /// Events waiting for the writer, at most.
    pub queue: usize,
}

/// What happens when the writer falls behind (a full or slow disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// Events are dropped, counted and logged; requests go on.
    Drop,
    /// New requests are refused with 503 until the writer catches up.
    Block,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    dir: Option<PathBuf>,
    fsync: Option<String>,
    key: Option<SecretRef>,
    max_file_bytes: Option<ByteSize>,
    max_file_age: Option<Dur>,
    keep_files: Option<usize>,
    on_backpressure: Option<Backpressure>,
    queue: Option<usize>,
}

pub(super) fn validate(
    raw: Option<RawAudit>,
    store_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AuditConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let key = match raw.key {
        Some(k) => {
            let k = k.resolve(env).map_err(|m| field("audit.key", m))?;
            if k.expose().len() < 16 {
                return Err(field(
                    "audit.key",
                    "is shorter than 16 characters: use a random secret",
                ));
            }
            Some(k)
        }
        None => None,
    };
    let max_file_bytes = raw.max_file_bytes.map_or(64 << 20, |b| b.0);
    if max_file_bytes < 4096 {
        return Err(field("audit.max_file_bytes", "must be at least 4KiB"));
    }
    let queue = raw.queue.unwrap_or(1 << 16);
    if queue == 0 {
        return Err(field("audit.queue", "must be at least 1"));
    }
    Ok(Some(AuditConfig {
        dir: raw.dir.unwrap_or_else(|| store_dir.join("audit")),
        fsync: parse_fsync("audit.fsync", raw.fsync.as_deref())?,
        key,
        max_file_bytes,
        max_file_age: raw
            .max_file_age
            .map_or(Duration::from_secs(24 * 3600), |d| d.0),
        keep_files: raw.keep_files.unwrap_or(30),
        on_backpressure: raw.on_backpressure.unwrap_or(Backpressure::Drop),
        queue,
    }))
}
