//! The embedded, crash-safe store the gateway owns: no database needed to
//! start. Keys, per-key usage and spend, and budget window counters live in
//! two append-only logs in one data directory (`store.dir`):
//!
//! | file | written by | records |
//! |---|---|---|
//! | `keys.log` | `shardgate keys` (CLI), under `keys.lock` | [`KeyLogRecord`] |
//! | `usage.log` | the gateway's one writer thread, under `gateway.lock` | [`UsageRecord`] |
//!
//! Both use the framing of [`frame`] (length, CRC, JSON payload). Replay keeps
//! the intact prefix and cuts a torn tail, so usage and spend survive
//! restarts, `kill -9` (a record is `write()`n as soon as the writer sees
//! it) and, per `store.fsync`, power loss.
//!
//! **How serve uses it**
//!
//! ```ignore
//! let store = Store::open(&cfg.store)?;            // before shards start
//! let keys = KeyStore::from_records(store.recovered.keys.clone());
//! // per bucket, on its owner shard:
//! let counters = store.recovered.usage.restore_counters(bucket, now);
//! let tx = store.usage.sender();                   // clone one per shard
//! tx.send(UsageRecord::usage(key_id, now, totals));  // request path: no lock, no IO
//! // main thread, every KEYS_POLL_INTERVAL:
//! if let Some(records) = store.keys.poll()? { /* swap KeyStore on shards */ }
//! // after drain, once shards have stopped:
//! store.usage.shutdown()?;                         // writes and fsyncs everything sent
//! ```
//!
//! **Invariants:** one gateway per data directory (`gateway.lock`, held by
//! the writer thread); the request path only ever sends on a channel;
//! `keys.log` is appended one `write()` per record under an exclusive lock
//! and read under a shared one, so a reader never sees half a record;
//! compaction replaces `usage.log` by rename, never in place.
//!
//! **Must never:** store a key's secret (only its SHA-256), block a shard,
//! or truncate a log it does not own (readers use [`frame::Repair::ReadOnly`]).

pub mod conversations;
pub mod frame;
pub mod key_file;
pub mod keys;
pub mod lock;
pub mod provider_keys;
pub mod usage;
pub mod writer;

pub use keys::{
    read_keys, KeyLogRecord, KeyTable, KeysEditor, KeysWatcher, KEYS_FALLBACK_POLL,
    KEYS_POLL_INTERVAL,
};
pub use usage::{read_usage, CounterState, UsageRecord, UsageState, UsageTotals};
pub use writer::{UsageSender, UsageWriter, WriterStats, COMPACT_AT};

use crate::config::StoreConfig;
use lock::FileLock;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("data directory {0} is in use by another gateway (gateway.lock is held)")]
    InUse(PathBuf),
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the usage writer thread has stopped")]
    WriterGone,
}

impl StoreError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The key log's file name in the data directory.
const KEYS_LOG: &str = "keys.log";

/// The file names inside a data directory, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn keys_log(&self) -> PathBuf {
        self.root.join(KEYS_LOG)
    }
    pub fn keys_lock(&self) -> PathBuf {
        self.root.join("keys.lock")
    }
    pub fn usage_log(&self) -> PathBuf {
        self.root.join("usage.log")
    }
    /// Where compaction writes the next `usage.log` before renaming it.
    pub fn usage_tmp(&self) -> PathBuf {
        self.root.join("usage.log.tmp")
    }
    pub fn gateway_lock(&self) -> PathBuf {
        self.root.join("gateway.lock")
    }

    /// Creates the directory (and parents) if missing.
    pub fn create(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.root).map_err(StoreError::io(&self.root))
    }
}

/// What the logs held at start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The key table (revoked and expired keys included: the key store
    /// refuses them at authentication), sorted by key id.
    pub keys: Vec<shardgate_policy::KeyRecord>,
    /// Window counters and per-key usage totals.
    pub usage: UsageState,
    /// Damaged bytes cut from the tail of each log (saved beside it).
    pub keys_dropped_bytes: u64,
    pub usage_dropped_bytes: u64,
}

/// The open store of a running gateway.
#[derive(Debug)]
pub struct Store {
    /// The usage writer thread; hand a [`UsageSender`] to each shard.
    pub usage: UsageWriter,
    /// The state at start.
    pub recovered: Recovered,
    /// Tails `keys.log` for keys created or revoked while serving.
    pub keys: KeysWatcher,
}

impl Store {
    /// Opens (creating) the data directory, takes `gateway.lock`, replays
    /// and repairs both logs, and starts the usage writer thread. Fails
    /// with [`StoreError::InUse`] if another gateway holds the directory.
    pub fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        Self::open_with(cfg, COMPACT_AT)
    }

    /// [`Store::open`] with a compaction threshold (tests use small ones).
    pub fn open_with(cfg: &StoreConfig, compact_at: u64) -> Result<Store, StoreError> {
        let dir = DataDir::new(&cfg.dir);
        dir.create()?;
        let gate = lock_gateway(&dir)?;

        let (keys, keys_dropped_bytes, watcher) = KeysWatcher::open(dir.clone())?;

        // A compaction cut short by a crash leaves its half-written file;
        // the old usage.log is still whole, so the leftover is only removed.
        let tmp = dir.usage_tmp();
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StoreError::io(&tmp)(e));
            }
            _ => {}
        }
        let usage_path = dir.usage_log();
        let replayed = frame::replay_file::<UsageRecord>(&usage_path, frame::Repair::Truncate)
            .map_err(StoreError::io(&usage_path))?;
        let mut usage = UsageState::default();
        for r in &replayed.records {
            usage.apply(r);
        }
        let writer = UsageWriter::start(
            dir,
            usage.clone(),
            replayed.valid_len,
            cfg.fsync,
            compact_at,
            gate,
        )?;
        Ok(Store {
            usage: writer,
            recovered: Recovered {
                keys,
                usage,
                keys_dropped_bytes,
                usage_dropped_bytes: replayed.dropped_bytes,
            },
            keys: watcher,
        })
    }
}

/// Takes `gateway.lock`, waiting up to [`GATEWAY_LOCK_WAIT`]: a gateway
/// that is restarting may still be exiting, and a lock can outlive its
/// owner briefly in a child between `fork` and `exec`.
#[allow(clippy::disallowed_methods)] // sleeps on the main thread at start, never on a shard
fn lock_gateway(dir: &DataDir) -> Result<FileLock, StoreError> {
    let path = dir.gateway_lock();
    let deadline = std::time::Instant::now() + GATEWAY_LOCK_WAIT;
    loop {
        if let Some(l) = FileLock::try_exclusive(&path).map_err(StoreError::io(&path))? {
            return Ok(l);
        }
        if std::time::Instant::now() >= deadline {
            return Err(StoreError::InUse(dir.root().to_owned()));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How long [`Store::open`] waits for another process to let go of the
/// data directory.
pub const GATEWAY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
