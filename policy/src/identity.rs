//! Virtual API keys: issuing, hashing, parsing from headers, and looking a
//! presented key up to an [`Actor`].
//!
//! A key is `sg-` followed by 32 base62 characters (about 190 bits). The
//! gateway stores only its SHA-256 (hex in files) and its key id, the first
//! 8 characters after `sg-` (`sg-Ab3dE9xQ`), which is shown in logs and
//! dashboards; it reveals ~48 of the key's ~190 bits. Randomness is an
//! input: this crate has no RNG.
//!
//! Lookup is by key id (not secret), then the stored hash is compared to
//! the presented key's hash in constant time. Unknown, revoked, expired and
//! malformed keys all give the same [`AuthError`].

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::window::Timestamp;

/// Prefix of every key the gateway issues.
pub const KEY_PREFIX: &str = "sg-";
/// Number of base62 characters after the prefix.
pub const KEY_SECRET_LEN: usize = 32;
/// Length of the display key id, counting the prefix (`sg-` + 8).
pub const KEY_ID_LEN: usize = KEY_PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The one authentication failure. Rendered as 401 at the edge; it never
/// says whether the key was unknown, revoked, expired or malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid API key")]
pub struct AuthError;

/// Who is calling, as far as policy is concerned: [`ActorFields`] behind
/// a shared handle. A key's actor is made once, when the key is loaded;
/// each request clones the handle, not its strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actor(Arc<Made>);

#[derive(Debug, PartialEq, Eq, Hash)]
struct Made {
    fields: ActorFields,
    /// `fields` as the audit's JSON object; a function of `fields`.
    json: Box<str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ActorFields {
    pub key_id: String,
    pub team: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
    pub environment: Option<String>,
}

impl Actor {
    pub fn new(fields: ActorFields) -> Self {
        use shardgate_proto::json::write_json_string;
        let mut json = Vec::with_capacity(96);
        json.extend_from_slice(b"{\"key_id\":");
        write_json_string(&mut json, &fields.key_id);
        for (key, v) in [
            (&b",\"team\":"[..], &fields.team),
            (b",\"tenant\":", &fields.tenant),
            (b",\"app\":", &fields.app),
            (b",\"environment\":", &fields.environment),
        ] {
            json.extend_from_slice(key);
            match v {
                Some(v) => write_json_string(&mut json, v),
                None => json.extend_from_slice(b"null"),
            }
        }
        json.push(b'}');
        // Only whole UTF-8 strings and ASCII went in.
        let json = String::from_utf8(json).unwrap_or_default().into_boxed_str();
        Actor(Arc::new(Made { fields, json }))
    }

    /// The actor as one JSON object (`key_id`, `team`, `tenant`, `app`,
    /// `environment`; null where unset), escaped when the actor was made:
    /// what the audit log writes for every request.
    pub fn json(&self) -> &str {
        &self.0.json
    }
}

impl Deref for Actor {
    type Target = ActorFields;

    fn deref(&self) -> &ActorFields {
        &self.0.fields
    }
}

/// SHA-256 of a key's full text. Equality is constant time.
#[derive(Clone, Copy)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
        }
        Some(KeyHash(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for KeyHash {}

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({})", self.to_hex())
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// A freshly issued key. `secret` is shown to the user once and then
/// dropped; `record` is what the key store keeps.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub secret: String,
    pub record: KeyRecord,
}

/// What the key store keeps for each key (one line of its file, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub key_id: String,
    pub hash: KeyHash,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds; the key is invalid at and after this instant.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
}

impl KeyRecord {
    pub fn actor(&self) -> Actor {
        Actor::new(ActorFields {
            key_id: self.key_id.clone(),
            team: self.team.clone(),
            tenant: self.tenant.clone(),
            app: self.app.clone(),
            environment: self.environment.clone(),
        })
    }

    /// Not revoked and not expired at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        !self.revoked && self.expires_ms.is_none_or(|e| now.as_unix_ms() < e)
    }
}

/// Who a new key is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOwner {
    pub team: Option<String>,
    pub tenant: Option<String>,
    pub app: Option<String>,
    pub environment: Option<String>,
}

/// Issues a key from 32 bytes of caller-supplied randomness (from the OS
/// CSPRNG in core). The bytes are read as one 256-bit number and written in
/// base 62; its low 32 digits are the secret (bias below 2^-60).
pub fn issue_key(
    random: &[u8; 32],
    owner: KeyOwner,
    now: Timestamp,
    expires: Option<Timestamp>,
) -> IssuedKey {
    let mut n = *random;
    let mut digits = [0u8; KEY_SECRET_LEN];
    for d in digits.iter_mut().rev() {
        // Long division of the big-endian number `n` by 62.
        let mut rem: u32 = 0;
        for byte in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*byte);
            *byte = (cur / 62) as u8; // cur < 62 * 256, so the quotient fits
            rem = cur % 62;
        }
        *d = BASE62[rem as usize];
    }
    let mut secret = String::with_capacity(KEY_PREFIX.len() + KEY_SECRET_LEN);
    secret.push_str(KEY_PREFIX);
    secret.extend(digits.iter().map(|&b| char::from(b)));
    let record = KeyRecord {
        key_id: secret[..KEY_ID_LEN].to_owned(),
        hash: KeyHash::of(&secret),
        team: owner.team,
        tenant: owner.tenant,
        app: owner.app,
        environment: owner.environment,
        created_ms: now.as_unix_ms(),
        expires_ms: expires.map(Timestamp::as_unix_ms),
        revoked: false,
    };
    IssuedKey { secret, record }
}

/// True if `key` has the shape of a gateway key (`sg-` + 32 base62).
pub fn is_well_formed(key: &str) -> bool {
    key.len() == KEY_PREFIX.len() + KEY_SECRET_LEN
        && key.starts_with(KEY_PREFIX)
        && key.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(u8::is_ascii_alphanumeric)
}

/// The presented credential from the raw values of `Authorization` and
/// `x-api-key` (either may be absent). `Authorization` must use the
/// `Bearer` scheme (case-insensitive). If both headers are present they
/// must carry the same key, so a request can't be judged on one and billed
/// to the other. Whitespace around values is ignored. The result is not
/// yet checked against the store.
pub fn parse_credential<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
) -> Result<&'a str, AuthError> {
    let bearer = match authorization {
        Some(v) => {
            let v = trim(v);
            if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
                return Err(AuthError);
            }
            Some(trim(&v[7..]))
        }
        None => None,
    };
    let api_key = x_api_key.map(trim);
    let raw = match (bearer, api_key) {
        (Some(a), Some(b)) if a != b => return Err(AuthError),
        (Some(a), _) => a,
        (None, Some(b)) => b,
        (None, None) => return Err(AuthError),
    };
    let s = std::str::from_utf8(raw).map_err(|_| AuthError)?;
    if s.is_empty() {
        return Err(AuthError);
    }
    Ok(s)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Errors building a key store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyStoreError {
    #[error("duplicate key id `{0}` (issue the new key again with fresh randomness)")]
    DuplicateKeyId(String),
    #[error("key id `{0}` is not `sg-` + 8 base62 characters")]
    BadKeyId(String),
}

/// The in-memory key table of one shard. Core loads it from disk and swaps
/// it whole on reload; this type never does IO.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    by_id: HashMap<String, Entry>,
}

/// A key and the actor every request with it is made by (made once).
#[derive(Debug, Clone)]
struct Entry {
    record: KeyRecord,
    actor: Actor,
}

impl KeyStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_records(
        records: impl IntoIterator<Item = KeyRecord>,
    ) -> Result<Self, KeyStoreError> {
        let mut store = KeyStore::new();
        for r in records {
            store.insert(r)?;
        }
        Ok(store)
    }

    pub fn insert(&mut self, record: KeyRecord) -> Result<(), KeyStoreError> {
        let id = &record.key_id;
        if id.len() != KEY_ID_LEN
            || !id.starts_with(KEY_PREFIX)
            || !id.as_bytes()[KEY_PREFIX.len()..]
                .iter()
                .all(u8::is_ascii_alphanumeric)
        {
            return Err(KeyStoreError::BadKeyId(id.clone()));
        }
        if self.by_id.contains_key(id) {
            return Err(KeyStoreError::DuplicateKeyId(id.clone()));
        }
        let actor = record.actor();
        self.by_id.insert(id.clone(), Entry { record, actor });
        Ok(())
    }

    /// Marks a key revoked; returns false if there is no such key id.
    pub fn revoke(&mut self, key_id: &str) -> bool {
        match self.by_id.get_mut(key_id) {
            Some(e) => {
                e.record.revoked = true;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, key_id: &str) -> Option<&KeyRecord> {
        self.by_id.get(key_id).map(|e| &e.record)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The actor for a presented key, or [`AuthError`].
    pub fn authenticate(&self, presented: &str, now: Timestamp) -> Result<Actor, AuthError> {
        if !is_well_formed(presented) {
            return Err(AuthError);
        }
        let hash = KeyHash::of(presented);
        self.lookup(&presented[..KEY_ID_LEN], &hash, now)
    }

    /// Whether a key with this id is known (live or not).
    pub fn contains(&self, key_id: &str) -> bool {
        self.by_id.contains_key(key_id)
    }

    /// The actor for a key id and a presented key's hash. The hash is
    /// compared in constant time; an unknown id still costs one compare.
    pub fn lookup(&self, key_id: &str, hash: &KeyHash, now: Timestamp) -> Result<Actor, AuthError> {
        const NOT_A_HASH: KeyHash = KeyHash([0u8; 32]);
        let entry = self.by_id.get(key_id);
        let stored = entry.map_or(&NOT_A_HASH, |e| &e.record.hash);
        let hash_ok = stored == hash;
        match entry {
            Some(e) if hash_ok && e.record.is_live(now) => Ok(e.actor.clone()),
            _ => Err(AuthError),
        }
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
