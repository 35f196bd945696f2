//! The response cache's shared tier: with `cluster:`, kept answers also
//! go to the cluster's Redis, so a prompt answered on one node is a hit
//! on every node (and on every shard of it), not only on the shard that
//! made it.
//!
//! Shards never touch Redis. A lookup that misses the shard's own entries
//! asks one of a few worker threads (`sg-cache-N`, each with its own
//! connection and a timeout on every call) and waits for the answer at
//! most `cluster.redis.timeout`; a Redis that is slow or gone makes a miss,
//! never an error. Stores are sent and not waited for.
//!
//! Names: `<prefix>cache:<generation>:<key as hex>`, with Redis's own
//! expiry (the route's `ttl`). A purge bumps `<prefix>cache:gen`: every
//! lookup reads it (so no entry of an older generation is served once the
//! purge is done), a store is made only under the generation its lookup
//! saw, and one worker per node watches it (every second) and tells the
//! node's shards, which drop their own entries.
//! Shared entries are not enumerated, so with a cluster any purge drops
//! every entry on every node: dropping more than asked is safe, less never.
//! Values are `<header JSON>\n<answer>`; the header names the scope the
//! entry was stored under, checked again on read.

use super::entries::Entry;
use super::key::Key;
use crate::cluster::store::{connect, Conn};
use crate::config::cluster::RedisConfig;
use crate::runtime::{waking_channel, WakingSender};
use crossbeam::channel::{Receiver, Sender};
use shardgate_proto::openai::Usage;
use std::time::{Duration, Instant};

/// How often a worker reads the purge generation again.
const GENERATION_EVERY: Duration = Duration::from_secs(1);

/// A failed connect is not tried again sooner (a lookup then misses at
/// once instead of waiting on a dead store).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Asks queued at most: past it a lookup misses at once and a store is
/// dropped (a slow Redis must not grow the gateway's memory).
const QUEUE: usize = 1024;

/// What a lookup learned from the shared tier.
#[derive(Debug)]
pub enum Found {
    Entry(Entry),
    /// None under the purge generation it read (which its store must find
    /// unchanged).
    Missing(u64),
    /// Redis was slow, gone, or answered what is not an entry.
    Unavailable,
}

enum Ask {
    Get {
        key: Key,
        scope: String,
        /// A lookup not begun by then has been given up on.
        deadline: Instant,
        reply: WakingSender<Found>,
    },
    Put {
        key: Key,
        value: Vec<u8>,
        ttl: Duration,
        generation: u64,
    },
    Purge {
        reply: WakingSender<bool>,
    },
}

/// The shards' end (cloned into each).
#[derive(Clone)]
pub struct SharedCache {
    tx: Sender<Ask>,
    wait: Duration,
}

impl SharedCache {
    /// Starts `threads` workers on `cfg`'s Redis. The first also watches
    /// the purge generation, and tells every shard (`shards`) when another
    /// node purged: their own entries go too.
    pub fn start(
        cfg: &RedisConfig,
        threads: usize,
        shards: Vec<WakingSender<u64>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam::channel::bounded(QUEUE);
        let mut shards = Some(shards);
        for i in 0..threads.max(1) {
            let rx: Receiver<Ask> = rx.clone();
            let cfg = cfg.clone();
            let watch = shards.take();
            std::thread::Builder::new()
                .name(format!("sg-cache-{i}"))
                .spawn(move || Worker::new(cfg, watch).run(&rx))?;
        }
        Ok(SharedCache {
            tx,
            wait: cfg.timeout,
        })
    }

    /// The entry kept under `key` for `scope`, if any, waiting at most the
    /// store's timeout.
    pub async fn get(&self, key: Key, scope: &str) -> Found {
        let (reply, rx) = waking_channel();
        let ask = Ask::Get {
            key,
            scope: scope.to_owned(),
            deadline: Instant::now() + self.wait,
            reply,
        };
        if self.tx.try_send(ask).is_err() {
            return Found::Unavailable;
        }
        let answer = futures_lite::future::or(async { rx.recv().await }, async {
            glommio::timer::sleep(self.wait).await;
            None
        });
        answer.await.unwrap_or(Found::Unavailable)
    }

    /// Keeps `entry` for every node, for `ttl`, if the purge generation is
    /// still `generation` (what its lookup saw); not waited for.
    pub fn put(&self, key: Key, entry: &Entry, ttl: Duration, generation: u64) {
        let value = encode(entry);
        let _ = self.tx.try_send(Ask::Put {
            key,
            value,
            ttl,
            generation,
        });
    }

    /// Drops every shared entry; false when Redis did not confirm in time.
    pub async fn purge(&self) -> bool {
        let (reply, rx) = waking_channel();
        if self.tx.try_send(Ask::Purge { reply }).is_err() {
            return false;
        }
        let answer = futures_lite::future::or(async { rx.recv().await }, async {
            glommio::timer::sleep(self.wait).await;
            None
        });
        answer.await.unwrap_or(false)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    served_by: String,
    scope: String,
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
}

fn encode(e: &Entry) -> Vec<u8> {
    let u = e.usage.unwrap_or_default();
    let header = Header {
        served_by: e.served_by.clone(),
        scope: e.scope.clone(),
        input: u.prompt_tokens,
        output: u.completion_tokens,
        cached: u.cached_tokens,
    };
    let mut v = serde_json::to_vec(&header).unwrap_or_default();
    v.push(b'\n');
    v.extend_from_slice(&e.answer);
    v
}

/// The entry in `value`, if it was stored under `scope`; it lives on the
/// shard until `expires`.
fn decode(value: &[u8], scope: &str, expires: Instant) -> Option<Entry> {
    let nl = value.iter().position(|&b| b == b'\n')?;
    let h: Header = serde_json::from_slice(&value[..nl]).ok()?;
    if h.scope != scope {
        return None;
    }
    let usage = (h.input.is_some() || h.output.is_some()).then(|| Usage {
        prompt_tokens: h.input,
        completion_tokens: h.output,
        total_tokens: Some(h.input.unwrap_or(0) + h.output.unwrap_or(0)),
        cached_tokens: h.cached,
        reasoning_tokens: None,
        cache_write_tokens: None,
    });
    Some(Entry {
        answer: value[nl + 1..].to_vec(),
        usage,
        served_by: h.served_by,
        scope: h.scope,
        expires,
    })
}

fn hex(key: &Key) -> String {
    use std::fmt::Write as _;
    key.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

struct Worker {
    cfg: RedisConfig,
    con: Option<Conn>,
    failed_at: Option<Instant>,
    generation: u64,
    generation_read: Option<Instant>,
    /// The watcher's: every shard, and the generation they last heard of.
    shards: Option<Vec<WakingSender<u64>>>,
    announced: Option<u64>,
}

impl Worker {
    fn new(cfg: RedisConfig, shards: Option<Vec<WakingSender<u64>>>) -> Self {
        Worker {
            cfg,
            con: None,
            failed_at: None,
            generation: 0,
            generation_read: None,
            shards,
            announced: None,
        }
    }

    fn run(mut self, rx: &Receiver<Ask>) {
        use crossbeam::channel::RecvTimeoutError;
        loop {
            let ask = match rx.recv_timeout(GENERATION_EVERY) {
                Ok(ask) => ask,
                Err(RecvTimeoutError::Timeout) => {
                    self.watch();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            match ask {
                Ask::Get {
                    key,
                    scope,
                    deadline,
                    reply,
                } => {
                    let found = if Instant::now() >= deadline {
                        Found::Unavailable
                    } else {
                        self.get(&key, &scope)
                    };
                    let _ = reply.send(found);
                }
                Ask::Put {
                    key,
                    value,
                    ttl,
                    generation,
                } => self.put(&key, &value, ttl, generation),
                Ask::Purge { reply } => {
                    let done = self.purge();
                    let _ = reply.send(done);
                }
            }
            self.watch();
        }
    }

    /// The watcher: a purge generation that moved (any node's purge) is
    /// announced to every shard, which drops its own entries. Read at most
    /// once a second.
    fn watch(&mut self) {
        if self.shards.is_none() {
            return;
        }
        // Lookups read the generation too: whatever read it last, a moved
        // one is announced; Redis is asked again only when no one has for
        // a second.
        let fresh = self
            .generation_read
            .is_some_and(|t| t.elapsed() < GENERATION_EVERY);
        let g = if fresh {
            self.generation
        } else {
            match self.generation() {
                Some(g) => g,
                None => return,
            }
        };
        if self.announced.is_some_and(|a| a != g) {
            for s in self.shards.iter().flatten() {
                let _ = s.send(g);
            }
        }
        self.announced = Some(g);
    }

    /// The connection, made again when the last one failed (at most once
    /// per [`RECONNECT_AFTER`]).
    fn con(&mut self) -> Option<&mut Conn> {
        if self.con.is_none() {
            if self
                .failed_at
                .is_some_and(|t| t.elapsed() < RECONNECT_AFTER)
            {
                return None;
            }
            match connect(&self.cfg) {
                Ok(c) => {
                    self.con = Some(c);
                    self.failed_at = None;
                }
                Err(e) => {
                    log::warn!("response cache: redis: {e}");
                    self.failed_at = Some(Instant::now());
                    return None;
                }
            }
        }
        self.con.as_mut()
    }

    /// Runs `cmd`; a failure drops the connection.
    fn call<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Option<T> {
        let con = self.con()?;
        match cmd.query::<T>(con) {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!("response cache: redis: {e}");
                self.con = None;
                self.failed_at = Some(Instant::now());
                None
            }
        }
    }

    fn generation_key(&self) -> String {
        format!("{}cache:gen", self.cfg.prefix)
    }

    /// The purge generation as Redis has it now.
    fn generation(&mut self) -> Option<u64> {
        let g: Option<u64> = self.call(redis::cmd("GET").arg(self.generation_key()))?;
        self.generation = g.unwrap_or(0);
        self.generation_read = Some(Instant::now());
        Some(self.generation)
    }

    fn name(&self, key: &Key, generation: u64) -> String {
        format!("{}cache:{generation}:{}", self.cfg.prefix, hex(key))
    }

    fn get(&mut self, key: &Key, scope: &str) -> Found {
        let Some(generation) = self.generation() else {
            return Found::Unavailable;
        };
        let name = self.name(key, generation);
        let got: Option<(Option<Vec<u8>>, i64)> =
            self.call(redis::cmd("EVAL").arg(GET_WITH_TTL).arg(1).arg(&name));
        match got {
            None => Found::Unavailable,
            Some((None, _)) => Found::Missing(generation),
            Some((Some(v), ttl_ms)) => {
                let left = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
                match decode(&v, scope, crate::deadline::coarse_now() + left) {
                    Some(e) => Found::Entry(e),
                    None => Found::Unavailable,
                }
            }
        }
    }

    fn put(&mut self, key: &Key, value: &[u8], ttl: Duration, generation: u64) {
        // Not under a generation a purge has ended since its lookup.
        if self.generation() != Some(generation) {
            return;
        }
        let name = self.name(key, generation);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: Option<()> = self.call(redis::cmd("SET").arg(name).arg(value).arg("PX").arg(ms));
    }

    fn purge(&mut self) -> bool {
        let g: Option<u64> = self.call(redis::cmd("INCR").arg(self.generation_key()));
        if let Some(g) = g {
            self.generation = g;
            self.generation_read = Some(Instant::now());
        }
        g.is_some()
    }
}

/// An entry and its time left, in one call.
const GET_WITH_TTL: &str =
    "return {redis.call('GET', KEYS[1]) or false, redis.call('PTTL', KEYS[1])}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_only_under_its_scope() {
        let e = Entry {
            answer: b"{\"id\":\"x\"}\n{}".to_vec(),
            usage: Some(Usage {
                prompt_tokens: Some(3),
                completion_tokens: Some(4),
                total_tokens: Some(7),
                ..Usage::default()
            }),
            served_by: "p/m".into(),
            scope: "tenant:a".into(),
            expires: Instant::now(),
        };
        let v = encode(&e);
        let later = Instant::now() + Duration::from_secs(9);
        let back = decode(&v, "tenant:a", later).unwrap();
        assert_eq!(back.answer, e.answer);
        assert_eq!(back.usage, e.usage);
        assert_eq!((back.served_by.as_str(), back.expires), ("p/m", later));
        assert!(decode(&v, "tenant:b", later).is_none());
        assert!(decode(b"not an entry", "tenant:a", later).is_none());
        assert_eq!(hex(&[0xab; 32]).len(), 64);
    }
}
