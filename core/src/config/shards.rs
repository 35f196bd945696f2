//! `shards:` and `cpus:`: how many shards, pinned to which CPUs.

use super::{field, ConfigError};
use crate::placement::{self, parse_cpu_list, Machine, Placement, ShardCount};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub(super) enum RawShards {
    #[default]
    #[serde(skip)]
    Unset,
    Count(usize),
    Word(String),
}

/// `cpus: 3` is read by YAML as a number, `cpus: 2-5,8` as a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawCpus {
    One(usize),
    List(String),
}

/// The shard count (`auto` follows the allowed CPUs and the cgroup quota)
/// and their CPUs, each of which must be in the process's allowed set.
pub(super) fn validate(
    shards: RawShards,
    cpus: Option<&RawCpus>,
    machine: &Machine,
) -> Result<Placement, ConfigError> {
    let count = match shards {
        RawShards::Unset => ShardCount::Auto,
        RawShards::Word(w) if w == "auto" => ShardCount::Auto,
        RawShards::Word(w) => {
            return Err(field("shards", format!("`{w}`: use `auto` or a number")))
        }
        RawShards::Count(0) => return Err(field("shards", "must be at least 1")),
        RawShards::Count(n) if n > 1024 => {
            return Err(field("shards", format!("{n} is more than 1024")))
        }
        RawShards::Count(n) => ShardCount::Fixed(n),
    };
    let cpus = match cpus {
        None => None,
        Some(RawCpus::One(cpu)) => Some(vec![*cpu]),
        Some(RawCpus::List(list)) => {
            Some(parse_cpu_list(list).map_err(|e| field("cpus", e.to_string()))?)
        }
    };
    placement::resolve(count, cpus.as_deref(), machine).map_err(|e| field("cpus", e.to_string()))
}
