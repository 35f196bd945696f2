//! Stored Responses turns (`store: true`, the API's default), kept by one
//! thread of their own: in memory for lookups, and in `responses.log` in
//! `store.dir` (framed records, as the other logs) so they survive a
//! restart.
//!
//! Shards send a turn as they answer and ask for one when a request names
//! it, over one crossbeam channel; replies come back on each shard's
//! waking channel. The channel is one FIFO queue, so a turn put before its
//! answer leaves the gateway is there for any request sent after the
//! client has that answer, on any shard: no acknowledgement is needed,
//! and nothing on the request path waits on a disk.
//!
//! A turn holds only its own items (its input and output) and the id of
//! the turn before it; the conversation is that chain, walked back on
//! lookup, so a long conversation costs memory once, not once per turn.
//! Turns expire after `store.responses_ttl`; past `responses_max_bytes`
//! the oldest go first. A chain with a link gone (expired, evicted,
//! deleted) cannot be continued.
//!
//! With `cluster:`, the cluster's Redis holds every node's turns too
//! (`<prefix>turn:<id>`, with Redis's own expiry) and is asked first: a
//! turn made on one node continues, reads and deletes on any other. A put
//! is acknowledged only once Redis has it, so a follow-up sent the moment
//! an answer arrives finds its turn on every node. While Redis cannot be
//! reached, each node serves the turns it made itself (from memory and
//! its log), as without a cluster.

mod shared;

use super::frame::{self, Repair};
use crate::handoff::{Receiver, Sender};
use crate::runtime::WakingSender;
use crossbeam::channel::RecvTimeoutError;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The log, in `store.dir`.
pub const LOG: &str = "responses.log";

/// One stored turn. Its items and response are kept as the JSON they
/// came as: a turn is put on every Responses request and read only when
/// one continues it, so it is parsed on that read, not built into a tree
/// (and serialized from one) on every put.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredTurn {
    pub id: String,
    /// The key that made it (`anonymous` without keys): only it may read,
    /// continue or delete it.
    pub owner: String,
    pub expires_at_ms: u64,
    /// The turn it continued.
    pub prev: Option<String>,
    /// This turn's input items, a JSON array (instructions are not carried
    /// over, as the API specifies); its output items are the response's
    /// `output`.
    pub input: Box<RawValue>,
    /// The `response` object as the client received it.
    pub response: Box<RawValue>,
    /// The provider that served it: a follow-up to the same OpenAI
    /// provider names the turn by id (that provider kept it too); any
    /// other gets the conversation.
    pub provider: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Put { turn: StoredTurn },
    Delete { id: String },
}

/// A [`Record`] as read back. Not the enum itself: serde reads an
/// internally tagged enum through a buffer that cannot hold raw JSON.
#[derive(Deserialize)]
struct RecordIn {
    t: RecordKind,
    turn: Option<StoredTurn>,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RecordKind {
    Put,
    Delete,
}

impl RecordIn {
    fn record(self) -> Option<Record> {
        match (self.t, self.turn, self.id) {
            (RecordKind::Put, Some(turn), _) => Some(Record::Put { turn }),
            (RecordKind::Delete, _, Some(id)) => Some(Record::Delete { id }),
            _ => None,
        }
    }
}

/// [`Record::Put`] written from a borrowed turn (no copy to serialize it).
#[derive(Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum RecordRef<'a> {
    Put { turn: &'a StoredTurn },
}

/// While busy, the thread takes what has queued once per this, rather
/// than being woken by every turn a shard sends: a lookup waits at most
/// this long under load, and an idle gateway's thread sleeps until asked.
const BATCH: Duration = Duration::from_millis(1);

/// What a shard asks. `token` comes back with the reply to `shard`.
#[derive(Debug)]
pub enum Ask {
    Put(Box<StoredTurn>),
    /// A put the shard waits for (with a cluster: until Redis has it).
    PutAcked {
        turn: Box<StoredTurn>,
        shard: usize,
        token: u64,
    },
    /// The conversation up to and including turn `id`.
    History {
        id: String,
        owner: String,
        shard: usize,
        token: u64,
    },
    Get {
        id: String,
        owner: String,
        shard: usize,
        token: u64,
    },
    Delete {
        id: String,
        owner: String,
        shard: usize,
        token: u64,
    },
}

/// A conversation found: its items in order, and the provider of its last
/// turn.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub items: Vec<Value>,
    pub provider: Option<String>,
}

#[derive(Debug)]
pub enum Reply {
    History {
        token: u64,
        found: Option<History>,
        /// The id is another key's: refused whoever the provider (an
        /// OpenAI provider would otherwise continue it by id).
        foreign: bool,
    },
    Get {
        token: u64,
        response: Option<Box<RawValue>>,
    },
    Deleted {
        token: u64,
        found: bool,
    },
    /// The turn of a `PutAcked` is stored (`shared`: in Redis too).
    Stored {
        token: u64,
        shared: bool,
    },
}

impl Reply {
    pub fn token(&self) -> u64 {
        match self {
            Reply::History { token, .. }
            | Reply::Get { token, .. }
            | Reply::Deleted { token, .. }
            | Reply::Stored { token, .. } => *token,
        }
    }
}

/// Limits of the store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Live turns' bytes (as serialized) kept at most; the oldest go first.
    pub max_bytes: u64,
}

/// The store thread's handle: `ask` is what shards send on.
pub struct Conversations {
    pub ask: Sender<Ask>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Loads `responses.log` from `dir` (compacting it) and starts the thread;
/// with `redis` (a cluster's), turns are shared through it.
pub fn start(
    dir: &Path,
    limits: Limits,
    shards: Vec<WakingSender<Reply>>,
    redis: Option<crate::config::cluster::RedisConfig>,
) -> std::io::Result<Conversations> {
    std::fs::create_dir_all(dir)?;
    let mut state = State::load(dir, limits)?;
    state.shared = redis.map(shared::SharedTurns::new);
    let (tx, rx) = crate::handoff::unbounded();
    std::thread::Builder::new()
        .name("sg-responses".into())
        .spawn(move || state.run(rx, shards))?;
    Ok(Conversations { ask: tx })
}

struct State {
    path: PathBuf,
    file: std::fs::File,
    file_bytes: u64,
    turns: HashMap<String, (StoredTurn, u64)>,
    /// Ids in the order they were put (oldest first), for eviction.
    order: VecDeque<String>,
    live_bytes: u64,
    limits: Limits,
    pending: Vec<u8>,
    /// The cluster's Redis, asked first when there is one.
    shared: Option<shared::SharedTurns>,
}

impl State {
    fn load(dir: &Path, limits: Limits) -> std::io::Result<State> {
        let path = dir.join(LOG);
        let replayed = frame::replay_file::<RecordIn>(&path, Repair::Truncate)?;
        let now = now_ms();
        let mut turns: HashMap<String, StoredTurn> = HashMap::new();
        let mut order = Vec::new();
        for r in replayed.records.into_iter().filter_map(RecordIn::record) {
            match r {
                Record::Put { turn } => {
                    order.push(turn.id.clone());
                    turns.insert(turn.id.clone(), turn);
                }
                Record::Delete { id } => {
                    turns.remove(&id);
                }
            }
        }
        // Compacted: the live turns, oldest first, in a new file.
        let tmp = dir.join(format!("{LOG}.tmp"));
        let mut out = Vec::new();
        let mut state_turns = HashMap::new();
        let mut state_order = VecDeque::new();
        let mut live = 0;
        for id in order {
            let Some(turn) = turns.remove(&id) else {
                continue;
            };
            if turn.expires_at_ms <= now {
                continue;
            }
            let before = out.len();
            if frame::encode(&Record::Put { turn: turn.clone() }, &mut out).is_ok() {
                let size = (out.len() - before) as u64;
                live += size;
                state_order.push_back(id.clone());
                state_turns.insert(id, (turn, size));
            }
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        frame::sync_dir(dir)?;
        let file = frame::open_append(&path)?;
        let mut s = State {
            path,
            file,
            file_bytes: out.len() as u64,
            turns: state_turns,
            order: state_order,
            live_bytes: live,
            limits,
            pending: Vec::new(),
            shared: None,
        };
        s.evict();
        Ok(s)
    }

    fn run(&mut self, rx: Receiver<Ask>, shards: Vec<WakingSender<Reply>>) {
        let mut last_sweep = Instant::now();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(a) => Some(a),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            if let Some(a) = first {
                self.handle(a, &shards);
                // Busy: batches every `BATCH` until a round finds nothing,
                // one write each.
                loop {
                    let mut any = false;
                    while let Ok(a) = rx.try_recv() {
                        any = true;
                        self.handle(a, &shards);
                    }
                    self.flush();
                    if !any {
                        break;
                    }
                    #[allow(clippy::disallowed_methods)] // its own thread, not a shard
                    std::thread::sleep(BATCH);
                }
            }
            self.flush();
            if last_sweep.elapsed() >= Duration::from_secs(60) {
                last_sweep = Instant::now();
                self.sweep();
            }
        }
    }

    fn reply(shards: &[WakingSender<Reply>], shard: usize, r: Reply) {
        if let Some(s) = shards.get(shard) {
            let _ = s.send(r);
        }
    }

    /// Turn `id` whoever owns it: from Redis when there is one and it
    /// answers, else this node's own (also when Redis lacks a turn this
    /// node stored while Redis was away). A turn deleted on any node is
    /// gone here too.
    fn find(&mut self, id: &str) -> Option<StoredTurn> {
        if let Some(s) = &mut self.shared {
            match s.get(id) {
                Ok(shared::Held::Turn(t)) => return Some(*t),
                Ok(shared::Held::Deleted) => {
                    self.remove(id);
                    return None;
                }
                Ok(shared::Held::Missing) | Err(shared::Unavailable) => {}
            }
        }
        self.turns.get(id).map(|(t, _)| t.clone())
    }

    fn handle(&mut self, ask: Ask, shards: &[WakingSender<Reply>]) {
        let now = now_ms();
        match ask {
            Ask::Put(turn) => {
                if let Some(s) = &mut self.shared {
                    s.put(&turn, now);
                }
                self.put(*turn);
            }
            Ask::PutAcked { turn, shard, token } => {
                let shared = match &mut self.shared {
                    Some(s) => s.put(&turn, now),
                    None => false,
                };
                self.put(*turn);
                Self::reply(shards, shard, Reply::Stored { token, shared });
            }
            Ask::History {
                id,
                owner,
                shard,
                token,
            } => {
                let (found, foreign) = self.history(&id, &owner, now);
                Self::reply(
                    shards,
                    shard,
                    Reply::History {
                        token,
                        found,
                        foreign,
                    },
                );
            }
            Ask::Get {
                id,
                owner,
                shard,
                token,
            } => {
                let response = self
                    .find(&id)
                    .filter(|t| t.owner == owner && t.expires_at_ms > now)
                    .map(|t| t.response);
                Self::reply(shards, shard, Reply::Get { token, response });
            }
            Ask::Delete {
                id,
                owner,
                shard,
                token,
            } => {
                let turn = self
                    .find(&id)
                    .filter(|t| t.owner == owner && t.expires_at_ms > now);
                let found = turn.is_some();
                if let Some(t) = turn {
                    if let Some(s) = &mut self.shared {
                        s.delete(&id, t.expires_at_ms, now);
                    }
                    self.remove(&id);
                    let _ = frame::encode(&Record::Delete { id }, &mut self.pending);
                }
                Self::reply(shards, shard, Reply::Deleted { token, found });
            }
        }
    }

    /// The chain ending at `id`, oldest turn first; None when any link is
    /// gone or another key's. Also whether `id` itself is another key's.
    fn history(&mut self, id: &str, owner: &str, now: u64) -> (Option<History>, bool) {
        let mut chain: Vec<StoredTurn> = Vec::new();
        let mut at = Some(id.to_owned());
        while let Some(i) = at {
            let Some(t) = self.find(&i) else {
                return (None, false);
            };
            if t.owner != owner {
                // Only the named turn's owner says whose it is.
                return (None, chain.is_empty());
            }
            if t.expires_at_ms <= now || chain.len() >= 100_000 {
                return (None, false);
            }
            at = t.prev.clone();
            chain.push(t);
        }
        let provider = chain.first().and_then(|t| t.provider.clone());
        let mut items = Vec::new();
        for t in chain.iter().rev() {
            items.extend(t.input_items());
            items.extend(t.output_items());
        }
        (Some(History { items, provider }), false)
    }

    fn put(&mut self, turn: StoredTurn) {
        let before = self.pending.len();
        if let Err(e) = frame::encode(&RecordRef::Put { turn: &turn }, &mut self.pending) {
            // Kept in memory only (over the record limit): lost on restart.
            log::warn!("response {} kept in memory only: {e}", turn.id);
        }
        let size = ((self.pending.len() - before) as u64).max(256);
        let id = turn.id.clone();
        if self.turns.contains_key(&id) {
            self.remove(&id);
            self.order.retain(|o| *o != id);
        }
        self.turns.insert(id.clone(), (turn, size));
        self.order.push_back(id);
        self.live_bytes += size;
        self.evict();
    }

    fn remove(&mut self, id: &str) {
        if let Some((_, size)) = self.turns.remove(id) {
            self.live_bytes = self.live_bytes.saturating_sub(size);
        }
    }

    /// Oldest turns out until the live ones fit.
    fn evict(&mut self) {
        while self.live_bytes > self.limits.max_bytes {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            self.remove(&id);
        }
    }

    /// Expired turns out of memory (the next compaction drops them from
    /// disk).
    fn sweep(&mut self) {
        let now = now_ms();
        let expired: Vec<String> = self
            .turns
            .iter()
            .filter(|(_, (t, _))| t.expires_at_ms <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
        self.order.retain(|id| self.turns.contains_key(id));
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => self.file_bytes += self.pending.len() as u64,
            Err(e) => log::error!(
                "{}: {e}; stored responses since the last write are in memory only",
                self.path.display()
            ),
        }
        self.pending.clear();
        if self.file_bytes > (64 << 20).max(2 * self.live_bytes) {
            self.compact();
        }
    }

    /// Rewrites the log with the live turns only.
    fn compact(&mut self) {
        let mut out = Vec::new();
        for id in &self.order {
            if let Some((t, _)) = self.turns.get(id) {
                let _ = frame::encode(&RecordRef::Put { turn: t }, &mut out);
            }
        }
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let tmp = dir.join(format!("{LOG}.tmp"));
        let done = (|| -> std::io::Result<std::fs::File> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            frame::sync_dir(&dir)?;
            frame::open_append(&self.path)
        })();
        match done {
            Ok(f) => {
                self.file = f;
                self.file_bytes = out.len() as u64;
            }
            Err(e) => log::error!("{}: compaction failed: {e}", self.path.display()),
        }
    }
}

impl StoredTurn {
    /// Its input items (none if what was kept is not an array).
    pub fn input_items(&self) -> Vec<Value> {
        serde_json::from_str(self.input.get()).unwrap_or_default()
    }

    /// Its response's `output` items (none if there are none).
    pub fn output_items(&self) -> Vec<Value> {
        #[derive(Deserialize)]
        struct Output {
            output: Option<Value>,
        }
        match serde_json::from_str::<Output>(self.response.get()) {
            Ok(Output {
                output: Some(Value::Array(items)),
            }) => items,
            _ => Vec::new(),
        }
    }
}

/// Ids the gateway makes, and OpenAI's: `resp_` and letters, digits, `_`.
pub fn valid_id(id: &str) -> bool {
    id.starts_with("resp_")
        && id.len() <= 256
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn turn(id: &str, prev: Option<&str>, owner: &str, expires: u64) -> StoredTurn {
        StoredTurn {
            id: id.into(),
            owner: owner.into(),
            expires_at_ms: expires,
            prev: prev.map(str::to_owned),
            input: serde_json::value::to_raw_value(&json!([{"role": "user", "content": id}]))
                .unwrap(),
            response: serde_json::value::to_raw_value(
                &json!({"id": id, "output": [{"role": "assistant", "content": format!("{id}!")}]}),
            )
            .unwrap(),
            provider: Some("p".into()),
        }
    }

    fn contents(h: &History) -> Vec<&str> {
        h.items
            .iter()
            .filter_map(|i| i["content"].as_str())
            .collect()
    }

    #[test]
    fn chains_walk_back_for_their_owner_and_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let far = now_ms() + 3_600_000;
        let limits = Limits { max_bytes: 1 << 20 };
        let mut s = State::load(d.path(), limits).unwrap();
        s.put(turn("resp_a", None, "k", far));
        s.put(turn("resp_b", Some("resp_a"), "k", far));
        s.put(turn("resp_c", Some("resp_b"), "k", far));
        s.put(turn("resp_x", None, "k", 1));
        let h = s.history("resp_c", "k", now_ms()).0.unwrap();
        assert_eq!(
            contents(&h),
            ["resp_a", "resp_a!", "resp_b", "resp_b!", "resp_c", "resp_c!"]
        );
        assert_eq!(s.history("resp_c", "other", now_ms()), (None, true));
        assert!(s.history("resp_x", "k", now_ms()).0.is_none(), "expired");
        s.remove("resp_b");
        let _ = frame::encode(
            &Record::Delete {
                id: "resp_b".into(),
            },
            &mut s.pending,
        );
        assert!(
            s.history("resp_c", "k", now_ms()).0.is_none(),
            "a link is gone"
        );
        s.flush();
        drop(s);
        let mut s = State::load(d.path(), limits).unwrap();
        assert!(s.history("resp_a", "k", now_ms()).0.is_some());
        assert!(!s.turns.contains_key("resp_b"));
        assert!(!s.turns.contains_key("resp_x"));
    }

    /// A log written before turns were kept as raw JSON (records made from
    /// trees) reads the same: the bytes of a record did not change.
    #[test]
    fn a_log_from_before_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let far = now_ms() + 3_600_000;
        let mut log = Vec::new();
        for record in [
            json!({"t": "put", "turn": {"id": "resp_old", "owner": "k", "expires_at_ms": far, "prev": null,
                "input": [{"role": "user", "content": "hi"}],
                "response": {"id": "resp_old", "output": [{"role": "assistant", "content": "hello"}]},
                "provider": "p"}}),
            json!({"t": "put", "turn": {"id": "resp_gone", "owner": "k", "expires_at_ms": far, "prev": null,
                "input": [], "response": {"id": "resp_gone"}, "provider": null}}),
            json!({"t": "delete", "id": "resp_gone"}),
        ] {
            frame::encode(&record, &mut log).unwrap();
        }
        std::fs::write(d.path().join(LOG), &log).unwrap();
        let mut s = State::load(d.path(), Limits { max_bytes: 1 << 20 }).unwrap();
        let h = s.history("resp_old", "k", now_ms()).0.unwrap();
        assert_eq!(contents(&h), ["hi", "hello"]);
        assert_eq!(h.provider.as_deref(), Some("p"));
        assert!(!s.turns.contains_key("resp_gone"));
    }

    #[test]
    fn the_oldest_go_first_past_the_byte_limit() {
        let d = tempfile::tempdir().unwrap();
        let far = now_ms() + 3_600_000;
        let mut s = State::load(d.path(), Limits { max_bytes: 2000 }).unwrap();
        for i in 0..40 {
            s.put(turn(&format!("resp_{i}"), None, "k", far));
        }
        assert!(s.live_bytes <= 2000);
        assert!(!s.turns.contains_key("resp_0"));
        assert!(s.turns.contains_key("resp_39"));
    }

    #[test]
    fn ids_are_the_apis() {
        assert!(valid_id("resp_abc_123"));
        for bad in ["../x", "resp_a/b", "x", "resp_a.json", ""] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
