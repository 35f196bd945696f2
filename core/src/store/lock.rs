//! Advisory whole-file locks (`flock(2)`) between processes sharing a data
//! directory: the `shardgate keys` CLI and a running gateway.
//!
//! A lock lives on its own small file (`keys.lock`, `gateway.lock`), never on
//! a log, so it survives a log being replaced by rename. The lock is
//! released when [`FileLock`] is dropped (or the process dies, even by
//! `kill -9`: the kernel drops it with the descriptor).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A held lock. Dropping it unlocks.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for an exclusive lock (writers).
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        lock(path, libc::LOCK_EX)
    }

    /// Waits for a shared lock (readers that must not see half a write).
    pub fn shared(path: &Path) -> io::Result<FileLock> {
        lock(path, libc::LOCK_SH)
    }

    /// An exclusive lock if nobody holds one, else `Ok(None)`.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        match lock(path, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn lock(path: &Path, op: libc::c_int) -> io::Result<FileLock> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    loop {
        // SAFETY: flock(2) on a descriptor we own for the call's duration.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(FileLock { _file: file });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = FileLock::exclusive(&p).unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process conflicts just like another process would.
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
        let a = FileLock::shared(&p).unwrap();
        let _b = FileLock::shared(&p).unwrap();
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(a);
    }
}
