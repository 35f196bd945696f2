//! The one thread that writes `usage.log`.
//!
//! Shards hold a [`UsageSender`] and only `send` on an unbounded
//! [`crate::handoff`] channel (crossbeam, lock-free; never blocks, never
//! does IO; the writer sleeps on it without spinning). The writer thread
//! waits for a record, drains everything else already queued, encodes the
//! batch into one buffer and writes it with one `write()`. So every record
//! reaches the page cache (and survives `kill -9`) within one batch, and
//! `store.fsync` only decides when the batch is made durable: after each
//! batch (`always`), at most an interval after the first unsynced write
//! (group commit), or never (left to the kernel).
//!
//! The writer keeps the folded [`UsageState`] in memory. When the log grows
//! past [`COMPACT_AT`] (and twice its last snapshot), it writes the state
//! as a fresh log to `usage.log.tmp`, fsyncs it, renames it over
//! `usage.log` and fsyncs the directory; a crash at any point leaves either
//! the old or the new log, each whole.
//!
//! A failed write (disk full, say) cuts the file back to its last good
//! length, so a partial batch never hides the records appended after it;
//! the state in memory still has the lost records, and the writer retries
//! a compaction (which writes them all) every [`RETRY_AFTER_ERROR`] until
//! one succeeds.

use super::frame;
use super::lock::FileLock;
use super::usage::{UsageRecord, UsageState};
use super::{DataDir, StoreError};
use crate::config::StoreFsync;
use crate::handoff::{self, Receiver, Sender};
use crossbeam::channel::{self, RecvTimeoutError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::thread::JoinHandle;
use std::time::Instant;

/// `usage.log` size that triggers compaction.
pub const COMPACT_AT: u64 = 8 << 20;

/// How long after a failed write or compaction the writer tries again to
/// persist its whole state by compaction.
pub const RETRY_AFTER_ERROR: std::time::Duration = std::time::Duration::from_secs(5);

/// A batch ends once its buffer passes this size, even if more records are
/// queued, so one batch never holds unbounded memory and fsyncs and
/// compactions still happen under a flood.
const MAX_BATCH_BYTES: usize = 1 << 20;

enum Msg {
    Record(UsageRecord),
    /// Write and fsync everything sent before, then answer.
    Sync(channel::Sender<Result<(), String>>),
    /// Write and fsync everything sent before, then stop.
    Shutdown,
}

/// A shard's handle to the writer. Cheap to clone; `send` never blocks.
#[derive(Debug, Clone)]
pub struct UsageSender {
    tx: Sender<Msg>,
}

impl UsageSender {
    /// Queues a record. False once the writer has shut down (the record is
    /// dropped: shutdown happens after shards stopped).
    pub fn send(&self, record: UsageRecord) -> bool {
        self.tx.send(Msg::Record(record)).is_ok()
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Record(r) => write!(f, "Record({r:?})"),
            Msg::Sync(_) => f.write_str("Sync"),
            Msg::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// What the writer did, returned by [`UsageWriter::shutdown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub records: u64,
    pub batches: u64,
    pub fsyncs: u64,
    pub compactions: u64,
    /// Failed writes, fsyncs, encodings and compactions (each logged).
    pub errors: u64,
}

/// The writer thread. Call [`UsageWriter::shutdown`] at the end of drain;
/// dropping it does the same, ignoring the result.
#[derive(Debug)]
pub struct UsageWriter {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<WriterStats>>,
}

impl UsageWriter {
    /// Starts the thread on a log already replayed and repaired to
    /// `len` bytes; `gate` (the data directory's `gateway.lock`) is held
    /// until the thread ends.
    pub(super) fn start(
        dir: DataDir,
        state: UsageState,
        len: u64,
        fsync: StoreFsync,
        compact_at: u64,
        gate: FileLock,
    ) -> Result<UsageWriter, StoreError> {
        let path = dir.usage_log();
        let created = !path.exists();
        let file = frame::open_append(&path).map_err(StoreError::io(&path))?;
        if created {
            frame::sync_dir(dir.root()).map_err(StoreError::io(dir.root()))?;
        }
        let (tx, rx) = handoff::unbounded();
        let mut w = Writer {
            dir,
            file,
            len,
            snapshot_len: 0,
            state,
            fsync,
            compact_at,
            buf: Vec::with_capacity(64 * 1024),
            unsynced_since: None,
            stats: WriterStats::default(),
            errors_acked: 0,
            retry_at: None,
            _gate: gate,
        };
        let thread = std::thread::Builder::new()
            .name("sg-usage-writer".into())
            .spawn(move || {
                crate::placement::background_thread("usage writer");
                w.run(&rx)
            })
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(UsageWriter {
            tx,
            thread: Some(thread),
        })
    }

    /// A sender for one shard.
    pub fn sender(&self) -> UsageSender {
        UsageSender {
            tx: self.tx.clone(),
        }
    }

    /// Blocks until every record sent before this call is written and
    /// fsynced (for tests and orderly checkpoints; not for shards).
    pub fn sync(&self) -> Result<(), StoreError> {
        let (ack, done) = channel::bounded(1);
        self.tx
            .send(Msg::Sync(ack))
            .map_err(|_| StoreError::WriterGone)?;
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Io {
                path: std::path::PathBuf::from("usage.log"),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Writes and fsyncs everything sent before, stops the thread and
    /// releases the data directory. Call after shards have stopped: records
    /// sent later are dropped.
    pub fn shutdown(mut self) -> Result<WriterStats, StoreError> {
        self.stop().ok_or(StoreError::WriterGone)
    }

    fn stop(&mut self) -> Option<WriterStats> {
        let thread = self.thread.take()?;
        let _ = self.tx.send(Msg::Shutdown);
        thread.join().ok()
    }
}

impl Drop for UsageWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer {
    dir: DataDir,
    file: File,
    /// Bytes of the log known to be whole.
    len: u64,
    /// Size of the last snapshot written by compaction.
    snapshot_len: u64,
    state: UsageState,
    fsync: StoreFsync,
    compact_at: u64,
    buf: Vec<u8>,
    /// When the oldest write not yet fsynced happened.
    unsynced_since: Option<Instant>,
    stats: WriterStats,
    /// `stats.errors` as last reported to a [`UsageWriter::sync`].
    errors_acked: u64,
    /// Set when records are in memory but not in the log: compact then.
    retry_at: Option<Instant>,
    _gate: FileLock,
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Msg>) -> WriterStats {
        let mut acks = Vec::new();
        // Set by Shutdown (or all senders gone): drain what is queued, then
        // sync and return.
        let mut stopping = false;
        loop {
            let first = if stopping {
                rx.try_recv().ok()
            } else {
                match (self.fsync, self.unsynced_since) {
                    (StoreFsync::Interval(every), Some(since)) => {
                        match rx.recv_until(Some(since + every)) {
                            Ok(m) => Some(m),
                            Err(RecvTimeoutError::Timeout) => {
                                self.sync();
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => None,
                        }
                    }
                    _ => rx.recv_until(None).ok(),
                }
            };
            stopping |= first.is_none();
            let mut next = first;
            while let Some(m) = next {
                match m {
                    Msg::Record(r) => self.take(&r),
                    Msg::Sync(ack) => acks.push(ack),
                    Msg::Shutdown => stopping = true,
                }
                // End the batch at a bound: fsync and compaction run between
                // batches, also when senders never let the queue run dry.
                if self.buf.len() >= MAX_BATCH_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.write_batch();
            let done = stopping && rx.is_empty();
            // Under steady load the deadline above may never time out: the
            // interval is also checked after every batch.
            let interval_due = match (self.fsync, self.unsynced_since) {
                (StoreFsync::Interval(every), Some(since)) => since.elapsed() >= every,
                _ => false,
            };
            let must_sync =
                done || !acks.is_empty() || self.fsync == StoreFsync::Always || interval_due;
            if must_sync && self.unsynced_since.is_some() {
                self.sync();
            }
            if !acks.is_empty() {
                let new_errors = self.stats.errors - self.errors_acked;
                self.errors_acked = self.stats.errors;
                let result = if new_errors == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{new_errors} write errors since the last sync (logged)"
                    ))
                };
                for ack in acks.drain(..) {
                    let _ = ack.send(result.clone());
                }
            }
            let too_big = self.len > self.compact_at.max(self.snapshot_len.saturating_mul(2));
            let retry = self.retry_at.is_some_and(|at| at <= Instant::now());
            if too_big || retry || (done && self.retry_at.is_some()) {
                self.compact();
            }
            if done {
                return self.stats;
            }
        }
    }

    fn take(&mut self, r: &UsageRecord) {
        if let Err(e) = frame::encode(r, &mut self.buf) {
            self.stats.errors += 1;
            log::error!("usage record not written: {e}");
            return;
        }
        self.state.apply(r);
        self.stats.records += 1;
    }

    fn write_batch(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.stats.batches += 1;
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                if self.unsynced_since.is_none() {
                    self.unsynced_since = Some(Instant::now());
                }
            }
            Err(e) => {
                self.stats.errors += 1;
                log::error!(
                    "{}: write of {} bytes failed: {e} (kept in memory; retrying by compaction)",
                    self.dir.usage_log().display(),
                    self.buf.len()
                );
                // Cut a partial write so later appends stay readable.
                if let Err(e) = self.file.set_len(self.len) {
                    log::error!("{}: cannot cut back: {e}", self.dir.usage_log().display());
                }
                self.retry_at
                    .get_or_insert_with(|| Instant::now() + RETRY_AFTER_ERROR);
            }
        }
        self.buf.clear();
    }

    fn sync(&mut self) {
        self.unsynced_since = None;
        self.stats.fsyncs += 1;
        if let Err(e) = self.file.sync_data() {
            self.stats.errors += 1;
            log::error!("{}: fsync failed: {e}", self.dir.usage_log().display());
        }
    }

    fn compact(&mut self) {
        let tmp = self.dir.usage_tmp();
        match self.write_snapshot() {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                self.snapshot_len = len;
                self.unsynced_since = None;
                self.retry_at = None;
                self.stats.compactions += 1;
            }
            Err(e) => {
                self.stats.errors += 1;
                log::error!("{}: compaction failed: {e}", tmp.display());
                let _ = std::fs::remove_file(&tmp);
                self.retry_at = Some(Instant::now() + RETRY_AFTER_ERROR);
            }
        }
    }

    /// Writes the state to `usage.log.tmp` and renames it over `usage.log`;
    /// the returned handle appends to the new log.
    fn write_snapshot(&mut self) -> std::io::Result<(File, u64)> {
        let mut buf = Vec::new();
        for r in self.state.snapshot() {
            frame::encode(&r, &mut buf).map_err(std::io::Error::other)?;
        }
        let tmp = self.dir.usage_tmp();
        let mut file = frame::create_private(&tmp)?;
        file.write_all(&buf)?;
        file.sync_all()?;
        // Reopened for appending before the rename: the handle follows the
        // file, so there is no moment without a log to write to.
        let file = OpenOptions::new().append(true).open(&tmp)?;
        std::fs::rename(&tmp, self.dir.usage_log())?;
        frame::sync_dir(self.dir.root())?;
        Ok((file, buf.len() as u64))
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
