//! Provider credentials the gateway stores (set through the admin API or
//! `shardgate providers set-key`), encrypted at rest with envelope
//! encryption.
//!
//! Each record has a data key of its own (32 random bytes) that encrypts
//! its credential with AES-256-GCM; the data key is stored wrapped
//! (AES-256-GCM again) by the key-encryption key, the KEK, derived with
//! HKDF-SHA256 from the secret in `store.kek` (an env var, a file, a
//! systemd credential file). Associated data binds each ciphertext to its
//! place: the credential to its provider and field, the wrapped data key
//! to those and the KEK's id, so a record copied to another provider or
//! field does not decrypt. Each record names its KEK's id, so the KEK can
//! change with no wipe: with the new KEK in `store.kek` and the old one in
//! `store.kek_previous`, every record still opens, and `shardgate
//! providers rotate-kek` re-wraps each data key under the new KEK (the
//! credentials themselves are not re-encrypted).
//!
//! The file, `provider_keys.json` in `store.dir`, is replaced whole
//! (written to a temporary file, synced, renamed, the directory synced)
//! under `provider_keys.lock`, so a crash leaves the old or the new set,
//! and the CLI and a running gateway never interleave. Nothing here logs
//! or returns a plaintext except [`open`]; errors name the record, never
//! its content.

use super::lock::FileLock;
use crate::config::Secret;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE: &str = "provider_keys.json";
const LOCK: &str = "provider_keys.lock";
/// The only field stored so far.
pub const API_KEY: &str = "api_key";
/// A credential longer than this is refused (no provider's is near it).
pub const MAX_SECRET: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ProviderKeyError {
    #[error("no `store.kek` is configured: stored provider keys need a key-encryption key")]
    NoKek,
    #[error("{FILE}: the record of `{provider}` was sealed with KEK {kek_id}, which is neither `store.kek` nor in `store.kek_previous`")]
    UnknownKek { provider: String, kek_id: String },
    #[error("{FILE}: the record of `{provider}` does not decrypt with KEK {kek_id} (a wrong KEK, or the record was altered)")]
    Decrypt { provider: String, kek_id: String },
    #[error("{FILE}: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{FILE}: {0}")]
    Io(#[from] std::io::Error),
}

/// A key-encryption key and its id (which records name).
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl Kek {
    /// The KEK of a configured secret: HKDF-SHA256 of it, so a passphrase
    /// of any length gives a full 256-bit key. Its id is a digest of the
    /// key, not of the secret, and says nothing about either.
    pub fn derive(secret: &str) -> Result<Kek, ProviderKeyError> {
        if secret.len() < 16 {
            return Err(ProviderKeyError::Invalid(
                "a KEK secret is at least 16 characters: use a random one".into(),
            ));
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"shardgate kek v1");
        let prk = salt.extract(secret.as_bytes());
        let mut bytes = [0u8; 32];
        prk.expand(&[b"provider keys"], Len32)
            .and_then(|okm| okm.fill(&mut bytes))
            .map_err(|_| ProviderKeyError::Invalid("cannot derive the KEK".into()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let id = hex(&digest.as_ref()[..8]);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| ProviderKeyError::Invalid("cannot use the KEK".into()))?,
        );
        Ok(Kek { id, key })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

struct Len32;

impl ring::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The configured KEKs: the current one seals, any of them opens.
#[derive(Debug, Default)]
pub struct Keks {
    pub current: Option<Kek>,
    pub previous: Vec<Kek>,
}

impl Keks {
    fn find(&self, id: &str) -> Option<&Kek> {
        self.current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

/// One stored credential, as kept in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub provider: String,
    pub field: String,
    pub kek_id: String,
    /// The data key, wrapped: base64 of nonce then ciphertext and tag.
    pub dek: String,
    /// The credential: base64 of nonce then ciphertext and tag.
    pub value: String,
    /// The credential's last four characters, for operators to tell keys
    /// apart.
    pub last4: String,
    /// Unix milliseconds: when the credential was set, and when its data
    /// key was last wrapped (set or KEK rotation).
    pub set_at: u64,
    pub rotated_at: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dek_aad(provider: &str, field: &str, kek_id: &str) -> Vec<u8> {
    format!("shardgate dek\0{provider}\0{field}\0{kek_id}").into_bytes()
}

fn value_aad(provider: &str, field: &str) -> Vec<u8> {
    format!("shardgate secret\0{provider}\0{field}").into_bytes()
}

fn seal_with(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<String, ProviderKeyError> {
    let rng = SystemRandom::new();
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| ProviderKeyError::Invalid("no randomness for a nonce".into()))?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| ProviderKeyError::Invalid("cannot encrypt".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(base64::engine::general_purpose::STANDARD.encode(out))
}

/// `None` when it does not decrypt (or is not ours).
fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &str) -> Option<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ct) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = ct.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
    Some(plain.to_vec())
}

fn dek_key(dek: &[u8]) -> Option<LessSafeKey> {
    Some(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, dek).ok()?))
}

/// A new record for `plaintext`, sealed under the current KEK.
pub fn seal(
    keks: &Keks,
    provider: &str,
    field: &str,
    plaintext: &str,
    now_ms: u64,
) -> Result<Record, ProviderKeyError> {
    let kek = keks.current.as_ref().ok_or(ProviderKeyError::NoKek)?;
    if plaintext.is_empty() || plaintext.len() > MAX_SECRET {
        return Err(ProviderKeyError::Invalid(format!(
            "a credential is 1 to {MAX_SECRET} bytes"
        )));
    }
    if plaintext.bytes().any(|b| b.is_ascii_control()) {
        return Err(ProviderKeyError::Invalid(
            "a credential holds no control characters (a line break?)".into(),
        ));
    }
    let mut dek = [0u8; 32];
    SystemRandom::new()
        .fill(&mut dek)
        .map_err(|_| ProviderKeyError::Invalid("no randomness for a data key".into()))?;
    let dek_sealed = seal_with(&kek.key, &dek_aad(provider, field, &kek.id), &dek)?;
    let key = dek_key(&dek).ok_or_else(|| ProviderKeyError::Invalid("bad data key".into()))?;
    let value = seal_with(&key, &value_aad(provider, field), plaintext.as_bytes())?;
    // A short credential shows nothing of itself.
    let chars: Vec<char> = plaintext.chars().collect();
    let last4: String = if chars.len() >= 12 {
        chars[chars.len() - 4..].iter().collect()
    } else {
        String::new()
    };
    Ok(Record {
        provider: provider.to_owned(),
        field: field.to_owned(),
        kek_id: kek.id.clone(),
        dek: dek_sealed,
        value,
        last4,
        set_at: now_ms,
        rotated_at: now_ms,
    })
}

fn unwrap_dek(keks: &Keks, r: &Record) -> Result<Vec<u8>, ProviderKeyError> {
    let kek = keks
        .find(&r.kek_id)
        .ok_or_else(|| ProviderKeyError::UnknownKek {
            provider: r.provider.clone(),
            kek_id: r.kek_id.clone(),
        })?;
    open_with(&kek.key, &dek_aad(&r.provider, &r.field, &r.kek_id), &r.dek).ok_or_else(|| {
        ProviderKeyError::Decrypt {
            provider: r.provider.clone(),
            kek_id: r.kek_id.clone(),
        }
    })
}

/// The credential of `r`.
pub fn open(keks: &Keks, r: &Record) -> Result<Secret, ProviderKeyError> {
    let dek = unwrap_dek(keks, r)?;
    let fail = || ProviderKeyError::Decrypt {
        provider: r.provider.clone(),
        kek_id: r.kek_id.clone(),
    };
    let key = dek_key(&dek).ok_or_else(fail)?;
    let plain = open_with(&key, &value_aad(&r.provider, &r.field), &r.value).ok_or_else(fail)?;
    String::from_utf8(plain)
        .map(Secret::new)
        .map_err(|_| fail())
}

/// Re-wraps `r`'s data key under the current KEK; false when it already
/// is.
pub fn rewrap(keks: &Keks, r: &mut Record, now_ms: u64) -> Result<bool, ProviderKeyError> {
    let kek = keks.current.as_ref().ok_or(ProviderKeyError::NoKek)?;
    if r.kek_id == kek.id {
        return Ok(false);
    }
    let dek = unwrap_dek(keks, r)?;
    r.dek = seal_with(&kek.key, &dek_aad(&r.provider, &r.field, &kek.id), &dek)?;
    r.kek_id = kek.id.clone();
    r.rotated_at = now_ms;
    Ok(true)
}

/// The stored records (none when the file does not exist).
pub fn load(dir: &Path) -> Result<Vec<Record>, ProviderKeyError> {
    match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| ProviderKeyError::Corrupt(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Every stored credential, decrypted: provider name to credential. The
/// first record that does not open stops it (a gateway refuses to start
/// or reload on it, and nothing is changed on disk).
pub fn open_all(dir: &Path, keks: &Keks) -> Result<Vec<(String, Secret)>, ProviderKeyError> {
    let records = load(dir)?;
    if records.is_empty() {
        return Ok(Vec::new());
    }
    records
        .iter()
        .filter(|r| r.field == API_KEY)
        .map(|r| Ok((r.provider.clone(), open(keks, r)?)))
        .collect()
}

/// Adds (or replaces) `record` in the stored set, refusing when the KEKs
/// at hand do not open every record already there: a set sealed under a
/// KEK the gateway does not have would stop its next start.
pub fn put(dir: &Path, keks: &Keks, record: Record) -> Result<(), ProviderKeyError> {
    update(dir, |rs| {
        for r in rs.iter() {
            open(keks, r)?;
        }
        rs.retain(|r| !(r.provider == record.provider && r.field == record.field));
        rs.push(record);
        Ok(())
    })
}

/// Changes the stored set under the lock: `change` edits the records read
/// now, and what it leaves is written whole.
pub fn update<T>(
    dir: &Path,
    change: impl FnOnce(&mut Vec<Record>) -> Result<T, ProviderKeyError>,
) -> Result<T, ProviderKeyError> {
    std::fs::create_dir_all(dir)?;
    let _lock = FileLock::exclusive(&dir.join(LOCK))?;
    let mut records = load(dir)?;
    let out = change(&mut records)?;
    save(dir, &records)?;
    Ok(out)
}

fn save(dir: &Path, records: &[Record]) -> Result<(), ProviderKeyError> {
    let bytes =
        serde_json::to_vec_pretty(records).map_err(|e| ProviderKeyError::Corrupt(e.to_string()))?;
    super::key_file::replace_private(&dir.join(FILE), &bytes)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Unix milliseconds now: when a record is set or re-wrapped.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What listing shows of a record: never the credential.
pub fn listing(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "provider": r.provider,
        "field": r.field,
        "last4": r.last4,
        "kek_id": r.kek_id,
        "set_at_ms": r.set_at,
        "rotated_at_ms": r.rotated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keks(current: &str, previous: &[&str]) -> Keks {
        Keks {
            current: Some(Kek::derive(current).unwrap()),
            previous: previous.iter().map(|p| Kek::derive(p).unwrap()).collect(),
        }
    }

    #[test]
    fn a_sealed_key_opens_only_in_its_place_and_with_its_kek() {
        let k = keks("correct horse battery staple", &[]);
        let r = seal(&k, "openai", API_KEY, "sk-live-abcdef123456", 1).unwrap();
        assert_eq!(open(&k, &r).unwrap().expose(), "sk-live-abcdef123456");
        assert_eq!(r.last4, "3456");
        assert_eq!(seal(&k, "x", API_KEY, "short-key", 1).unwrap().last4, "");
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("abcdef123456"));
        // Moved to another provider: refused.
        let moved = Record {
            provider: "anthropic".into(),
            ..r.clone()
        };
        assert!(matches!(
            open(&k, &moved),
            Err(ProviderKeyError::Decrypt { .. })
        ));
        // Another KEK (same id claimed): refused, naming the record.
        let wrong = keks("a different secret entirely", &[]);
        let claimed = Record {
            kek_id: wrong.current.as_ref().unwrap().id().to_owned(),
            ..r.clone()
        };
        let e = open(&wrong, &claimed).unwrap_err();
        assert!(e.to_string().contains("`openai`"), "{e}");
        let e = open(&wrong, &r).unwrap_err();
        assert!(matches!(e, ProviderKeyError::UnknownKek { .. }), "{e}");
        assert!(Kek::derive("short").is_err());
    }

    #[test]
    fn rotation_rewraps_under_the_new_kek_and_the_old_one_can_go() {
        let old = keks("the old key-encryption secret", &[]);
        let mut r = seal(&old, "openai", API_KEY, "sk-1234567890", 1).unwrap();
        let both = keks(
            "the new key-encryption secret",
            &["the old key-encryption secret"],
        );
        assert_eq!(open(&both, &r).unwrap().expose(), "sk-1234567890");
        assert!(rewrap(&both, &mut r, 2).unwrap());
        assert!(!rewrap(&both, &mut r, 3).unwrap());
        let new_only = keks("the new key-encryption secret", &[]);
        assert_eq!(open(&new_only, &r).unwrap().expose(), "sk-1234567890");
        assert_eq!((r.set_at, r.rotated_at), (1, 2));
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let k = keks("correct horse battery staple", &[]);
        update(dir.path(), |rs| {
            rs.push(seal(&k, "a", API_KEY, "sk-aaaaaaaa", 1)?);
            Ok(())
        })
        .unwrap();
        let all = open_all(dir.path(), &k).unwrap();
        assert_eq!(all.len(), 1);
        // Another KEK cannot add to a set it cannot open.
        let other = keks("some other key-encryption secret", &[]);
        let r = seal(&other, "b", API_KEY, "sk-bbbbbbbbbbbb", 2).unwrap();
        assert!(matches!(
            put(dir.path(), &other, r),
            Err(ProviderKeyError::UnknownKek { .. })
        ));
        assert_eq!(open_all(dir.path(), &k).unwrap().len(), 1);
        assert_eq!(all[0].1.expose(), "sk-aaaaaaaa");
        let raw = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!raw.contains("sk-aaaaaaaa"));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
    }
}
