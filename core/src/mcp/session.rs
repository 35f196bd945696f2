//! Legacy-era session IDs that carry their own state. A session's requests
//! may land on any shard, or on another gateway process with the same key,
//! so no shard keeps a session table: the ID the client holds is the
//! session, sealed with AEAD (ChaCha20-Poly1305) so it can be neither read
//! nor forged. It names the caller's key (another key's request with it is
//! refused), its expiry, and each upstream server's own session ID.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Binds a sealed ID to its purpose and format version.
const AAD: &[u8] = b"shardgate mcp session v1";
/// The file in `store.dir` holding the generated key.
pub const KEY_FILE: &str = "mcp-session.key";
/// Longer IDs are refused before any decryption is tried.
const MAX_ID_LEN: usize = 8 * 1024;

/// What a session ID holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// The key id of the caller who opened it.
    pub key: String,
    /// The protocol version agreed with the client.
    pub pv: String,
    /// One per upstream server that took part, by name.
    pub up: Vec<UpstreamSession>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamSession {
    pub server: String,
    /// The upstream's `Mcp-Session-Id`, when it gave one.
    pub id: Option<String>,
    /// The version it speaks with the gateway.
    pub pv: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// Not one of ours: altered, another key's, or garbage.
    #[error("unknown session")]
    Unknown,
    #[error("session expired")]
    Expired,
}

pub struct SessionKey(LessSafeKey);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

impl SessionKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        // A 32-byte key is always valid for ChaCha20-Poly1305.
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).unwrap_or_else(|_| unreachable_key());
        SessionKey(LessSafeKey::new(key))
    }

    /// A key for this process alone.
    pub fn ephemeral() -> Self {
        let mut bytes = [0u8; 32];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No OS randomness at all: a key derived from the time and pid
            // is still unguessable enough for sessions that live only as
            // long as the process, over servers there are none of.
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            return Self::from_secret(&seed);
        }
        Self::from_bytes(&bytes)
    }

    /// The key derived from a configured secret (SHA-256 of its text).
    pub fn from_secret(secret: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self::from_bytes(&bytes)
    }

    /// The key kept in `dir`, made (from the OS's random source, written
    /// owner-only, synced) the first time.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        crate::store::key_file::load_or_create(&dir.join(KEY_FILE)).map(|k| Self::from_bytes(&k))
    }

    /// The ID for `session`: printable ASCII (base64url), as the spec asks.
    pub fn seal(&self, session: &Session) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // The OS random source does not fail once the process has started
        // (the key was made or read from it); a zero nonce would still be
        // unique per key only by luck, so fall back to the clock's nanos.
        if getrandom::getrandom(&mut nonce).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            nonce.copy_from_slice(&t.to_le_bytes()[..NONCE_LEN]);
        }
        let mut data = serde_json::to_vec(session).unwrap_or_default();
        let sealed = self.0.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut data,
        );
        if sealed.is_err() {
            return String::new();
        }
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The session `id` names, if this key sealed it, it has not expired
    /// at `now` (Unix seconds), and it belongs to `key_id`.
    pub fn open(&self, id: &str, key_id: &str, now: u64) -> Result<Session, SessionError> {
        if id.len() > MAX_ID_LEN {
            return Err(SessionError::Unknown);
        }
        let mut raw = URL_SAFE_NO_PAD
            .decode(id.as_bytes())
            .map_err(|_| SessionError::Unknown)?;
        if raw.len() < NONCE_LEN {
            return Err(SessionError::Unknown);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut raw[NONCE_LEN..],
            )
            .map_err(|_| SessionError::Unknown)?;
        let session: Session = serde_json::from_slice(plain).map_err(|_| SessionError::Unknown)?;
        if session.key != key_id {
            return Err(SessionError::Unknown);
        }
        if session.exp <= now {
            return Err(SessionError::Expired);
        }
        Ok(session)
    }
}

#[cold]
fn unreachable_key() -> UnboundKey {
    // Only reachable if ring rejected a 32-byte ChaCha20 key, which it
    // never does; abort rather than run with no key.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            exp: 2_000,
            key: "k1".into(),
            pv: "2025-11-25".into(),
            up: vec![UpstreamSession {
                server: "billing".into(),
                id: Some("abc".into()),
                pv: "2025-06-18".into(),
            }],
        }
    }

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let key = SessionKey::from_secret("0123456789abcdef-test");
        let id = key.seal(&session());
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(key.open(&id, "k1", 1_000), Ok(session()));
        // Another caller's key id, expiry, another gateway key, a flipped bit.
        assert_eq!(key.open(&id, "k2", 1_000), Err(SessionError::Unknown));
        assert_eq!(key.open(&id, "k1", 2_000), Err(SessionError::Expired));
        let other = SessionKey::from_secret("another-secret-0123456");
        assert_eq!(other.open(&id, "k1", 1_000), Err(SessionError::Unknown));
        let mut bytes = id.into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert_eq!(key.open(&forged, "k1", 1_000), Err(SessionError::Unknown));
        assert_eq!(
            key.open("not-a-session", "k1", 1_000),
            Err(SessionError::Unknown)
        );
    }

    #[test]
    fn generated_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = SessionKey::load_or_create(dir.path()).unwrap();
        let id = a.seal(&session());
        let b = SessionKey::load_or_create(dir.path()).unwrap();
        assert_eq!(b.open(&id, "k1", 1_000), Ok(session()));
    }
}
