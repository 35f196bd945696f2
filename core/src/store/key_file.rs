//! A 32-byte secret key the gateway makes once and keeps in a file of its
//! own (MCP session sealing, the audit log's HMAC): drawn from the OS's
//! random source, written owner-only to a temporary file, synced and
//! renamed into place, so a crash leaves either no key or the whole key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The key at `path`, made the first time (its directory too).
pub fn load_or_create(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
            replace_private(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Replaces `path` with `bytes`, owner-only: written to `<path>.tmp`,
/// synced, renamed into place, so a crash leaves the old file or the new
/// one whole.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
