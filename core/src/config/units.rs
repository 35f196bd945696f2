//! Sizes and durations written with units in config (`64KiB`, `30s`), so a
//! reader never has to guess whether a number is bytes or kilobytes.

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A byte size: a plain integer (bytes) or a number with a unit
/// (`B`, `KiB`, `MiB`, `GiB`, and the decimal `KB`, `MB`, `GB`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (like 64KiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .map(ByteSize)
        .ok_or_else(|| format!("`{s}` is too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map_err(D::Error::custom),
        }
    }
}

/// A duration written with a unit (`250ms`, `30s`, `5m`); a bare number is
/// refused so that nobody wonders whether it was seconds or milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| D::Error::custom(format!("`{s}` is not a duration (like 30s): {e}")))
    }
}

/// A duration setting, or its default when unset.
pub(super) fn dur(v: Option<Dur>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

/// Each of a section's durations is more than 0; the first that is not is
/// named (`section.name`).
pub(super) fn positive(
    section: &str,
    durations: &[(&str, Duration)],
) -> Result<(), super::ConfigError> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((name, _)) => Err(super::field(
            format!("{section}.{name}"),
            "must be more than 0",
        )),
        None => Ok(()),
    }
}

/// A size setting in bytes, or its default when unset.
pub(super) fn size(v: Option<ByteSize>, default: ByteSize) -> usize {
    v.unwrap_or(default).as_usize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(ByteSize(65536)));
        assert_eq!(parse_size("10"), Ok(ByteSize(10)));
        assert_eq!(parse_size("2 MiB"), Ok(ByteSize(2 << 20)));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        let d: Dur = serde_yaml_ng::from_str("250ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        assert!(serde_yaml_ng::from_str::<Dur>("30").is_err());
    }
}
