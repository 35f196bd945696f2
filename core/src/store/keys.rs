//! `keys.log`: the key table as a log of puts and revocations.
//!
//! Written by `shardgate keys` ([`KeysEditor`]), possibly while a gateway
//! runs: under an exclusive `keys.lock` the editor repairs a torn tail,
//! appends each record with one `write()`, and fsyncs before it says done.
//! The gateway replays it at start and then tails it ([`KeysWatcher`]) from
//! its main thread, re-reading the (small) file under a shared lock when
//! its length, mtime or inode changed.

use super::frame::{self, Repair};
use super::lock::FileLock;
use super::{DataDir, StoreError};
use serde::{Deserialize, Serialize};
use shardgate_policy::KeyRecord;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

/// How often the gateway should call [`KeysWatcher::poll`]: a key created
/// or revoked while it runs takes effect within about this long.
pub const KEYS_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often `keys.log` is looked at when change notices do arrive: only a
/// safety net.
pub const KEYS_FALLBACK_POLL: Duration = Duration::from_secs(5);

/// One record of `keys.log`. Keys and usage have separate record types (and
/// files) so the usage channel can't carry a key change, and the other way
/// round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum KeyLogRecord {
    /// A new key (or, for an existing key id, its replacement). Holds the
    /// hash, never the secret.
    KeyPut { key: KeyRecord },
    /// The key stops authenticating.
    KeyRevoked { key_id: String, at_ms: u64 },
}

/// The key table a log describes: the latest put per key id, with
/// revocations applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTable {
    by_id: BTreeMap<String, KeyRecord>,
}

impl KeyTable {
    pub fn apply(&mut self, r: &KeyLogRecord) {
        match r {
            KeyLogRecord::KeyPut { key } => {
                self.by_id.insert(key.key_id.clone(), key.clone());
            }
            KeyLogRecord::KeyRevoked { key_id, .. } => {
                if let Some(k) = self.by_id.get_mut(key_id) {
                    k.revoked = true;
                }
            }
        }
    }

    pub fn get(&self, key_id: &str) -> Option<&KeyRecord> {
        self.by_id.get(key_id)
    }

    /// All keys, sorted by key id.
    pub fn records(&self) -> Vec<KeyRecord> {
        self.by_id.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn from_records(records: &[KeyLogRecord]) -> Self {
        let mut t = KeyTable::default();
        for r in records {
            t.apply(r);
        }
        t
    }
}

/// Exclusive write access to `keys.log` (the CLI). Holds `keys.lock` until
/// dropped.
#[derive(Debug)]
pub struct KeysEditor {
    dir: DataDir,
    table: KeyTable,
    _lock: FileLock,
}

impl KeysEditor {
    /// Creates the data directory if needed, waits for `keys.lock`, and
    /// replays the log, cutting a torn tail so the next append follows the
    /// last intact record.
    pub fn open(dir: DataDir) -> Result<Self, StoreError> {
        dir.create()?;
        let lock_path = dir.keys_lock();
        let lock = FileLock::exclusive(&lock_path).map_err(StoreError::io(&lock_path))?;
        let path = dir.keys_log();
        let replayed = frame::replay_file::<KeyLogRecord>(&path, Repair::Truncate)
            .map_err(StoreError::io(&path))?;
        Ok(KeysEditor {
            table: KeyTable::from_records(&replayed.records),
            dir,
            _lock: lock,
        })
    }

    pub fn table(&self) -> &KeyTable {
        &self.table
    }

    /// Appends one record with a single `write()` and fsyncs it (and, for a
    /// new file, the directory) before returning.
    pub fn append(&mut self, record: &KeyLogRecord) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        frame::encode(record, &mut buf)?;
        let path = self.dir.keys_log();
        let created = !path.exists();
        let mut f = frame::open_append(&path).map_err(StoreError::io(&path))?;
        f.write_all(&buf)
            .and_then(|()| f.sync_data())
            .map_err(StoreError::io(&path))?;
        if created {
            frame::sync_dir(self.dir.root()).map_err(StoreError::io(self.dir.root()))?;
        }
        self.table.apply(record);
        Ok(())
    }
}

/// Reads the key table without changing anything (`keys list`). A missing
/// directory or log is an empty table.
pub fn read_keys(dir: &DataDir) -> Result<KeyTable, StoreError> {
    if !dir.root().exists() {
        return Ok(KeyTable::default());
    }
    let lock_path = dir.keys_lock();
    let _lock = FileLock::shared(&lock_path).map_err(StoreError::io(&lock_path))?;
    let path = dir.keys_log();
    let replayed = frame::replay_file::<KeyLogRecord>(&path, Repair::ReadOnly)
        .map_err(StoreError::io(&path))?;
    Ok(KeyTable::from_records(&replayed.records))
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> io::Result<Option<Stamp>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tails `keys.log` for the gateway. Not for shards: [`KeysWatcher::poll`]
/// reads a file and may wait on `keys.lock` for the few milliseconds a CLI
/// append takes; call it from the main thread on each of
/// [`KeysWatcher::changes`]' notices, and every [`KEYS_POLL_INTERVAL`] as a
/// fallback (filesystems without inotify events, such as network ones).
#[derive(Debug)]
pub struct KeysWatcher {
    dir: DataDir,
    seen: Option<Stamp>,
}

impl KeysWatcher {
    /// Replays and repairs `keys.log` under the exclusive lock (a CLI killed
    /// mid-append may have left a torn tail): the table, the bytes dropped,
    /// and a watcher that reports changes after this point.
    pub(super) fn open(dir: DataDir) -> Result<(Vec<KeyRecord>, u64, KeysWatcher), StoreError> {
        let lock_path = dir.keys_lock();
        let _lock = FileLock::exclusive(&lock_path).map_err(StoreError::io(&lock_path))?;
        let path = dir.keys_log();
        let replayed = frame::replay_file::<KeyLogRecord>(&path, Repair::Truncate)
            .map_err(StoreError::io(&path))?;
        let seen = stamp(&path).map_err(StoreError::io(&path))?;
        let table = KeyTable::from_records(&replayed.records);
        Ok((
            table.records(),
            replayed.dropped_bytes,
            KeysWatcher { dir, seen },
        ))
    }

    /// A message each time `keys.log` may have changed (a `shardgate keys`
    /// append closed it, or it was replaced), from a thread blocked on
    /// inotify: a key created or revoked reaches the shards within
    /// milliseconds, and nothing polls while nothing changes. Spurious
    /// messages are harmless ([`KeysWatcher::poll`] compares stamps).
    pub fn changes(&self) -> io::Result<crossbeam::channel::Receiver<()>> {
        use inotify::{Inotify, WatchMask};
        let mut inotify = Inotify::init()?;
        inotify.watches().add(
            &self.dir.root,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE,
        )?;
        let (tx, rx) = crossbeam::channel::bounded(1);
        std::thread::Builder::new()
            .name("sg-keys-watch".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                        return;
                    };
                    let ours = events.into_iter().any(|e| {
                        e.name
                            .is_some_and(|n| n == std::ffi::OsStr::new(super::KEYS_LOG))
                    });
                    // Full means a notice is already waiting: one is enough.
                    if ours
                        && matches!(
                            tx.try_send(()),
                            Err(crossbeam::channel::TrySendError::Disconnected(()))
                        )
                    {
                        return;
                    }
                }
            })?;
        Ok(rx)
    }

    /// The whole new key table if `keys.log` changed since the last call
    /// (or since open), else `None`. Cheap when nothing changed: one
    /// `stat`.
    pub fn poll(&mut self) -> Result<Option<Vec<KeyRecord>>, StoreError> {
        let path = self.dir.keys_log();
        let now = stamp(&path).map_err(StoreError::io(&path))?;
        if now == self.seen {
            return Ok(None);
        }
        let lock_path = self.dir.keys_lock();
        let _lock = FileLock::shared(&lock_path).map_err(StoreError::io(&lock_path))?;
        // Stamp again under the lock: what is read below is this version.
        let now = stamp(&path).map_err(StoreError::io(&path))?;
        let replayed = frame::replay_file::<KeyLogRecord>(&path, Repair::ReadOnly)
            .map_err(StoreError::io(&path))?;
        self.seen = now;
        Ok(Some(KeyTable::from_records(&replayed.records).records()))
    }
}
