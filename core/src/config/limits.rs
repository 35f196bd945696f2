//! `limits:`: what one client connection may send, and how long it may
//! take.

use super::units::{dur, positive, size, ByteSize, Dur};
use super::{field, ConfigError, Limits};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_head_bytes: Option<ByteSize>,
    max_headers: Option<usize>,
    max_body_bytes: Option<ByteSize>,
    head_timeout: Option<Dur>,
    body_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    write_timeout: Option<Dur>,
    drain_timeout: Option<Dur>,
    max_connections_per_shard: Option<usize>,
}

pub(super) fn validate(l: RawLimits) -> Result<Limits, ConfigError> {
    let limits = Limits {
        max_head_bytes: size(l.max_head_bytes, ByteSize::kib(32)),
        max_headers: l.max_headers.unwrap_or(100),
        max_body_bytes: size(l.max_body_bytes, ByteSize::mib(16)),
        head_timeout: dur(l.head_timeout, Duration::from_secs(10)),
        body_timeout: dur(l.body_timeout, Duration::from_secs(60)),
        idle_timeout: dur(l.idle_timeout, Duration::from_secs(75)),
        write_timeout: dur(l.write_timeout, Duration::from_secs(30)),
        drain_timeout: dur(l.drain_timeout, Duration::from_secs(30)),
        max_connections_per_shard: l.max_connections_per_shard.unwrap_or(100_000),
    };
    if limits.max_head_bytes < 1024 {
        return Err(field("limits.max_head_bytes", "must be at least 1KiB"));
    }
    if !(1..=1000).contains(&limits.max_headers) {
        return Err(field("limits.max_headers", "must be between 1 and 1000"));
    }
    positive(
        "limits",
        &[
            ("head_timeout", limits.head_timeout),
            ("body_timeout", limits.body_timeout),
            ("idle_timeout", limits.idle_timeout),
            ("write_timeout", limits.write_timeout),
        ],
    )?;
    Ok(limits)
}
