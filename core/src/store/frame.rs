//! The one on-disk format of the store: an append-only file of framed
//! records.
//!
//! ```text
//! frame = len: u32 LE | crc: u32 LE | payload: [u8; len]
//! crc   = crc32 (IEEE, `crc32fast`) of the 4 length bytes, then the payload
//! ```
//!
//! The payload is one record as JSON (`serde_json`). JSON rather than a
//! compact binary form because the logs are small (a usage record is about
//! 150 bytes, and compaction bounds the file), a human can read them with
//! `strings`, and serde's enum tags give forward compatibility for free.
//!
//! **Replay** ([`decode`]) keeps every record up to the first frame that is
//! short (fewer bytes left than the header or its length claims), claims an
//! impossible length (0 or more than [`MAX_PAYLOAD`]), or fails its CRC.
//! Everything from that frame on is dropped: a crash mid-`write()` can only
//! damage the tail, and after a damaged frame its length can't be trusted,
//! so there is no safe way to find the next one. A corrupt frame in the
//! middle therefore also ends replay there (documented choice); the dropped
//! bytes are saved beside the log ([`replay_file`]) instead of being lost.
//!
//! A frame whose CRC is right but whose payload does not parse (a record
//! kind written by a newer version) is skipped and counted, never a reason
//! to stop or truncate.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes before each payload: length and CRC.
pub const HEADER_LEN: usize = 8;

/// Longest payload a frame may claim; anything longer is corruption.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// Appends one framed record to `out`; on error `out` is left as it was.
pub fn encode<T: Serialize>(record: &T, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = serde_json::to_writer(&mut *out, record) {
        out.truncate(start);
        return Err(e);
    }
    let len = u32::try_from(out.len() - start - HEADER_LEN).unwrap_or(u32::MAX);
    if len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(serde::ser::Error::custom("record larger than 1 MiB"));
    }
    let len_bytes = len.to_le_bytes();
    out[start..start + 4].copy_from_slice(&len_bytes);
    let crc = crc(&len_bytes, &out[start + HEADER_LEN..]);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn crc(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_bytes);
    h.update(payload);
    h.finalize()
}

/// Why replay stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes left than the header or the frame's length.
    Short,
    /// A length of 0 or above [`MAX_PAYLOAD`].
    BadLength,
    /// The CRC does not match.
    BadCrc,
}

/// What replay found.
#[derive(Debug)]
pub struct Replayed<T> {
    pub records: Vec<T>,
    /// Length of the intact prefix: where the next record belongs.
    pub valid_len: u64,
    /// Bytes after the intact prefix (0 when the whole input was intact).
    pub dropped_bytes: u64,
    /// Set when `dropped_bytes > 0`.
    pub damage: Option<Damage>,
    /// Intact frames whose payload this version does not understand.
    pub skipped: u64,
}

/// Decodes the intact prefix of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Replayed<T> {
    let mut records = Vec::new();
    let mut skipped = 0;
    let mut pos = 0usize;
    let damage = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break None;
        }
        let Some((header, body)) = rest.split_first_chunk::<HEADER_LEN>() else {
            break Some(Damage::Short);
        };
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let len = u32::from_le_bytes(len_bytes);
        let want = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_PAYLOAD {
            break Some(Damage::BadLength);
        }
        let len = len as usize;
        let Some(payload) = body.get(..len) else {
            break Some(Damage::Short);
        };
        if crc(&len_bytes, payload) != want {
            break Some(Damage::BadCrc);
        }
        match serde_json::from_slice(payload) {
            Ok(r) => records.push(r),
            Err(_) => skipped += 1,
        }
        pos += HEADER_LEN + len;
    };
    Replayed {
        records,
        valid_len: pos as u64,
        dropped_bytes: (bytes.len() - pos) as u64,
        damage,
        skipped,
    }
}

/// Whether replaying a file may repair it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Truncate the file to its intact prefix, saving the dropped bytes to
    /// `<file>.dropped-<offset>` first. Only for the file's one writer,
    /// holding its lock.
    Truncate,
    /// Leave the file as it is (a reader while someone else may append).
    ReadOnly,
}

/// Replays a log file; a missing file is an empty log. With
/// [`Repair::Truncate`] the file afterwards ends at `valid_len`, so the
/// next append follows the last intact record.
pub fn replay_file<T: DeserializeOwned>(path: &Path, repair: Repair) -> io::Result<Replayed<T>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let replayed = decode(&bytes);
    if replayed.dropped_bytes > 0 && repair == Repair::Truncate {
        let start = usize::try_from(replayed.valid_len).unwrap_or(bytes.len());
        let aside = dropped_path(path, replayed.valid_len);
        write_new(&aside, &bytes[start..])?;
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(replayed.valid_len)?;
        f.sync_all()?;
        log::warn!(
            "{}: dropped {} damaged bytes at offset {} ({:?}), saved to {}",
            path.display(),
            replayed.dropped_bytes,
            replayed.valid_len,
            replayed.damage,
            aside.display()
        );
    }
    if replayed.skipped > 0 {
        log::warn!(
            "{}: skipped {} records of unknown kind (written by a newer version?)",
            path.display(),
            replayed.skipped
        );
    }
    Ok(replayed)
}

/// Where [`Repair::Truncate`] saves the bytes it drops.
pub fn dropped_path(path: &Path, offset: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".dropped-{offset}"));
    PathBuf::from(name)
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = create_private(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Opens a log for appending, creating it readable by its owner only (it
/// holds key hashes and spend).
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Creates (or empties) a file readable by its owner only.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

/// Makes a rename or a file creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
