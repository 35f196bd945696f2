//! Stored Responses turns (`store: true`, the API's default): one file per
//! response, `responses/<id>.json` in `store.dir`, holding the
//! conversation up to and including that turn, so a follow-up naming it in
//! `previous_response_id` can be served by any shard, through any upstream.
//!
//! A turn is written (temporary file, then rename: a reader sees all of it
//! or nothing) before the answer that names it is sent, so a follow-up
//! sent the moment the answer arrives finds it. Blocking: call it from
//! `spawn_blocking`, never on a shard.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One stored turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTurn {
    pub id: String,
    /// The key that made it (`anonymous` without keys): only it may read,
    /// continue or delete it.
    pub owner: String,
    pub expires_at_ms: u64,
    /// Every item of the conversation so far: earlier turns' inputs and
    /// outputs, then this turn's input and output (instructions are not
    /// carried over, as the API specifies).
    pub items: Vec<Value>,
    /// The `response` object as the client received it.
    pub response: Value,
    /// The provider that served it: a follow-up to the same OpenAI
    /// provider names the turn by id (the provider kept it too); any other
    /// gets the conversation.
    #[serde(default)]
    pub provider: Option<String>,
}

/// Ids are the gateway's own (`resp_` and letters, digits, `_`); anything
/// else names no file.
pub fn valid_id(id: &str) -> bool {
    id.starts_with("resp_")
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn path_of(dir: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| dir.join("responses").join(format!("{id}.json")))
}

pub fn save(dir: &Path, turn: &StoredTurn) -> io::Result<()> {
    let path = path_of(dir, &turn.id).ok_or_else(|| io::Error::other("invalid response id"))?;
    let parent = dir.join("responses");
    std::fs::create_dir_all(&parent)?;
    let tmp = parent.join(format!(".{}.tmp", turn.id));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(turn).map_err(io::Error::other)?)?;
    drop(f);
    std::fs::rename(&tmp, &path)
}

/// The turn `id` of `owner`, unless it expired (then removed) or belongs
/// to someone else (both read as absent).
pub fn load(dir: &Path, id: &str, owner: &str, now_ms: u64) -> io::Result<Option<StoredTurn>> {
    let Some(path) = path_of(dir, id) else {
        return Ok(None);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let turn: StoredTurn = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
    if turn.expires_at_ms <= now_ms {
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    Ok((turn.owner == owner).then_some(turn))
}

/// Removes `owner`'s turn `id`; false when there was none of theirs.
pub fn delete(dir: &Path, id: &str, owner: &str, now_ms: u64) -> io::Result<bool> {
    match load(dir, id, owner, now_ms)? {
        Some(_) => {
            if let Some(path) = path_of(dir, id) {
                std::fs::remove_file(path)?;
            }
            Ok(true)
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn(id: &str, owner: &str, expires: u64) -> StoredTurn {
        StoredTurn {
            id: id.into(),
            owner: owner.into(),
            expires_at_ms: expires,
            items: vec![json!({"role": "user", "content": "hi"})],
            response: json!({"id": id}),
            provider: None,
        }
    }

    #[test]
    fn saved_turns_load_for_their_owner_until_they_expire() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), &turn("resp_a", "k1", 1000)).unwrap();
        assert_eq!(
            load(d.path(), "resp_a", "k1", 10).unwrap(),
            Some(turn("resp_a", "k1", 1000))
        );
        assert_eq!(load(d.path(), "resp_a", "k2", 10).unwrap(), None);
        assert!(!delete(d.path(), "resp_a", "k2", 10).unwrap());
        assert_eq!(load(d.path(), "resp_a", "k1", 1000).unwrap(), None);
        assert!(!d.path().join("responses/resp_a.json").exists());
        save(d.path(), &turn("resp_b", "k1", 1000)).unwrap();
        assert!(delete(d.path(), "resp_b", "k1", 10).unwrap());
        assert_eq!(load(d.path(), "resp_b", "k1", 10).unwrap(), None);
    }

    #[test]
    fn ids_never_name_a_path_outside() {
        for bad in ["../x", "resp_../../etc", "resp_a/b", "x", "resp_a.json"] {
            assert!(!valid_id(bad), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path(), "resp_../x", "k", 0).unwrap(), None);
    }
}
