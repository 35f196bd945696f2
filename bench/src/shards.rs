//! Starting glommio executors, one per shard, optionally pinned.

use crate::error::BenchError;
use crate::machine::allowed_cpus;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use std::future::Future;

/// How many shards and where they run.
#[derive(Debug, Clone, Copy)]
pub struct ShardPlan {
    pub count: usize,
    /// Pin shard i to the i-th CPU this process may run on (wrapping);
    /// otherwise shards are unbound and inherit the process affinity
    /// (so `taskset` keeps working).
    pub pin: bool,
}

impl ShardPlan {
    /// Default shard count: every CPU this process may run on.
    pub fn default_count() -> usize {
        allowed_cpus().len().max(1)
    }
}

/// Spawns shard `index` of `plan` running `make()`'s future.
pub fn spawn_shard<G, F, T>(
    name: &str,
    plan: ShardPlan,
    index: usize,
    make: G,
) -> Result<ExecutorJoinHandle<T>, BenchError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let placement = if plan.pin {
        let cpus = allowed_cpus();
        Placement::Fixed(cpus.get(index % cpus.len().max(1)).copied().unwrap_or(0))
    } else {
        Placement::Unbound
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("{name}-{index}"))
        .spawn(make)
        .map_err(BenchError::runtime)
}
