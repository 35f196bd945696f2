//! Stored turns in the cluster's Redis, from the store thread: blocking
//! calls with a timeout on each, a connection made again at most once a
//! second after a failure. Every call's failure is the caller's cue to
//! fall back on this node's own turns.

use super::StoredTurn;
use crate::cluster::store::{connect, Conn};
use crate::config::cluster::RedisConfig;
use std::time::{Duration, Instant};

/// A failed connect is not tried again sooner.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub struct SharedTurns {
    cfg: RedisConfig,
    con: Option<Conn>,
    failed_at: Option<Instant>,
}

/// Redis did not answer (or not with a turn).
pub struct Unavailable;

/// What Redis holds under a turn's name.
pub enum Held {
    Turn(Box<StoredTurn>),
    /// Deleted (on any node): kept as a marker until the turn would have
    /// expired, so no node's own copy serves it again.
    Deleted,
    Missing,
}

/// The marker a delete leaves.
const DELETED: &[u8] = b"{\"deleted\":true}";

impl SharedTurns {
    pub fn new(cfg: RedisConfig) -> Self {
        SharedTurns {
            cfg,
            con: None,
            failed_at: None,
        }
    }

    fn name(&self, id: &str) -> String {
        format!("{}turn:{id}", self.cfg.prefix)
    }

    fn call<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Unavailable> {
        if self.con.is_none() {
            if self
                .failed_at
                .is_some_and(|t| t.elapsed() < RECONNECT_AFTER)
            {
                return Err(Unavailable);
            }
            match connect(&self.cfg) {
                Ok(c) => self.con = Some(c),
                Err(e) => {
                    log::warn!("stored responses: redis: {e}");
                    self.failed_at = Some(Instant::now());
                    return Err(Unavailable);
                }
            }
        }
        let con = self.con.as_mut().ok_or(Unavailable)?;
        cmd.query(con).map_err(|e| {
            log::warn!("stored responses: redis: {e}");
            self.con = None;
            self.failed_at = Some(Instant::now());
            Unavailable
        })
    }

    /// What Redis holds for turn `id`.
    pub fn get(&mut self, id: &str) -> Result<Held, Unavailable> {
        let value: Option<Vec<u8>> = self.call(redis::cmd("GET").arg(self.name(id)))?;
        match value {
            None => Ok(Held::Missing),
            Some(v) if v == DELETED => Ok(Held::Deleted),
            Some(v) => serde_json::from_slice(&v)
                .map(|t| Held::Turn(Box::new(t)))
                .map_err(|_| Unavailable),
        }
    }

    /// Stores `turn` until it expires; true once Redis has it.
    pub fn put(&mut self, turn: &StoredTurn, now_ms: u64) -> bool {
        let ttl = turn.expires_at_ms.saturating_sub(now_ms);
        if ttl == 0 {
            return true;
        }
        let Ok(value) = serde_json::to_vec(turn) else {
            return false;
        };
        let name = self.name(&turn.id);
        let stored: Result<(), _> =
            self.call(redis::cmd("SET").arg(name).arg(value).arg("PX").arg(ttl));
        stored.is_ok()
    }

    /// Marks turn `id` deleted for every node until `until_ms`.
    pub fn delete(&mut self, id: &str, until_ms: u64, now_ms: u64) {
        let ttl = until_ms.saturating_sub(now_ms).max(1);
        let name = self.name(id);
        let marked: Result<(), _> =
            self.call(redis::cmd("SET").arg(name).arg(DELETED).arg("PX").arg(ttl));
        let _ = marked;
    }
}
