//! `store:`: where the embedded store lives, how often it is synced, and
//! the keys that seal stored provider credentials.

use super::units::{ByteSize, Dur};
use super::{
    field, ConfigError, SecretRef, StoreConfig, StoreFsync, DEFAULT_RESPONSES_TTL,
    DEFAULT_STORE_DIR,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    dir: Option<PathBuf>,
    /// `always`, `never`, or a group-commit interval such as `100ms`.
    fsync: Option<String>,
    responses_ttl: Option<Dur>,
    responses_max_bytes: Option<ByteSize>,
    /// The key-encryption key of stored provider credentials (a secret
    /// reference), and earlier ones still accepted while rotating.
    kek: Option<SecretRef>,
    #[serde(default)]
    kek_previous: Vec<SecretRef>,
}

impl RawStore {
    /// The `store` section alone, validated (for `shardgate keys`, which must
    /// not need the providers' secrets).
    pub(super) fn validate(&self) -> Result<StoreConfig, ConfigError> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_DIR));
        if dir.as_os_str().is_empty() {
            return Err(field("store.dir", "is empty"));
        }
        let fsync = parse_fsync("store.fsync", self.fsync.as_deref())?;
        let responses_ttl = self.responses_ttl.map_or(DEFAULT_RESPONSES_TTL, |d| d.0);
        if responses_ttl.is_zero() {
            return Err(field("store.responses_ttl", "must be more than 0"));
        }
        Ok(StoreConfig {
            dir,
            fsync,
            responses_ttl,
            responses_max_bytes: self.responses_max_bytes.map_or(256 << 20, |b| b.0),
        })
    }

    /// The configured KEKs (for stored provider credentials).
    pub(super) fn keks(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::store::provider_keys::Keks, ConfigError> {
        use crate::store::provider_keys::{Kek, Keks};
        let derive = |path: String, r: &SecretRef| {
            let secret = r.resolve(env).map_err(|m| field(path.clone(), m))?;
            Kek::derive(secret.expose()).map_err(|e| field(path, e.to_string()))
        };
        Ok(Keks {
            current: match &self.kek {
                Some(r) => Some(derive("store.kek".into(), r)?),
                None => None,
            },
            previous: self
                .kek_previous
                .iter()
                .enumerate()
                .map(|(i, r)| derive(format!("store.kek_previous[{i}]"), r))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// `always`, `never`, or a group-commit interval (100ms when unset).
pub(crate) fn parse_fsync(path: &str, v: Option<&str>) -> Result<StoreFsync, ConfigError> {
    Ok(match v.map(str::trim) {
        None => StoreFsync::Interval(Duration::from_millis(100)),
        Some("always") => StoreFsync::Always,
        Some("never") => StoreFsync::Never,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => {
                return Err(field(path, "interval must be more than 0 (or `always`)"))
            }
            Ok(d) if d > Duration::from_secs(60) => {
                return Err(field(path, format!("`{s}` is more than 60s")))
            }
            Ok(d) => StoreFsync::Interval(d),
            Err(_) => {
                return Err(field(
                    path,
                    format!("`{s}`: use `always`, `never` or an interval like 100ms"),
                ))
            }
        },
    })
}
