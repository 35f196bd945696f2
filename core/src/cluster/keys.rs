//! Keys across nodes. The store keeps every key record (hashes only, never
//! a secret) in one hash, `<prefix>keys`, and a change is announced on the
//! channel of the same name. A node pushes what changed in its own
//! `keys.log` and appends what another node changed to it, after which the
//! usual `keys.log` watch makes it current on every shard. So a key made or
//! revoked on one node works, or stops working, on all of them within
//! milliseconds of the notice.
//!
//! A revocation wins over a put of the same key id, whichever node saw
//! which first.

use super::store::Store;
use super::ToNode;
use crate::config::cluster::RedisConfig;
use crate::store::{DataDir, KeyLogRecord, KeysEditor};
use redis::Commands;
use shardgate_policy::KeyRecord;
use std::collections::HashMap;
use std::time::Duration;

pub struct KeySync {
    dir: DataDir,
    /// Each key as the store has it, as far as this node knows.
    known: HashMap<String, KeyRecord>,
    /// This node's own table, as its `keys.log` last said.
    local: HashMap<String, KeyRecord>,
}

fn merged(a: &KeyRecord, b: &KeyRecord) -> KeyRecord {
    if b.revoked && !a.revoked {
        b.clone()
    } else {
        a.clone()
    }
}

impl KeySync {
    pub fn new(dir: DataDir, local: Vec<KeyRecord>) -> Self {
        KeySync {
            dir,
            known: HashMap::new(),
            local: local.into_iter().map(|r| (r.key_id.clone(), r)).collect(),
        }
    }

    fn hash(store: &Store) -> String {
        format!("{}keys", store.prefix())
    }

    /// After a (re)connect: adopt what the store has, push what it lacks.
    pub fn resync(&mut self, store: &mut Store) -> redis::RedisResult<()> {
        let hash = Self::hash(store);
        let all: HashMap<String, String> = store.con().hgetall(&hash)?;
        self.known.clear();
        for (id, json) in all {
            match serde_json::from_str::<KeyRecord>(&json) {
                Ok(r) => {
                    self.known.insert(id, r);
                }
                Err(e) => log::warn!("cluster: key {id} in the store is unreadable: {e}"),
            }
        }
        self.adopt_known();
        let ours: Vec<KeyRecord> = self.local.values().cloned().collect();
        self.push(store, ours)
    }

    /// This node's `keys.log` changed: push what differs from the store.
    pub fn local_changed(
        &mut self,
        store: Option<&mut Store>,
        records: Vec<KeyRecord>,
    ) -> redis::RedisResult<()> {
        self.local = records
            .iter()
            .map(|r| (r.key_id.clone(), r.clone()))
            .collect();
        match store {
            Some(s) => self.push(s, records),
            None => Ok(()),
        }
    }

    fn push(&mut self, store: &mut Store, records: Vec<KeyRecord>) -> redis::RedisResult<()> {
        let hash = Self::hash(store);
        for r in records {
            let out = match self.known.get(&r.key_id) {
                Some(k) if *k == merged(k, &r) => continue,
                Some(k) => merged(k, &r),
                None => r,
            };
            let json = serde_json::to_string(&out).map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Client, "key record", e.to_string()))
            })?;
            let con = store.con();
            let () = con.hset(&hash, &out.key_id, json)?;
            let _: i64 = con.publish(&hash, &out.key_id)?;
            self.known.insert(out.key_id.clone(), out);
        }
        Ok(())
    }

    /// Another node announced a change of `key_id`.
    pub fn notice(&mut self, store: &mut Store, key_id: &str) -> redis::RedisResult<()> {
        let hash = Self::hash(store);
        let json: Option<String> = store.con().hget(&hash, key_id)?;
        if let Some(r) = json.and_then(|j| serde_json::from_str::<KeyRecord>(&j).ok()) {
            self.known.insert(key_id.to_owned(), r);
            self.adopt_known();
        }
        Ok(())
    }

    /// Appends to `keys.log` each store record that differs from (and wins
    /// over) this node's.
    fn adopt_known(&mut self) {
        let mut changed = Vec::new();
        for (id, theirs) in &self.known {
            match self.local.get(id) {
                Some(ours) if merged(ours, theirs) == *ours => {}
                _ => changed.push(theirs.clone()),
            }
        }
        if changed.is_empty() {
            return;
        }
        let mut editor = match KeysEditor::open(self.dir.clone()) {
            Ok(e) => e,
            Err(e) => {
                log::error!("cluster: cannot open keys.log for keys from other nodes: {e}");
                return;
            }
        };
        for r in changed {
            match editor.append(&KeyLogRecord::KeyPut { key: r.clone() }) {
                Ok(()) => {
                    log::info!(
                        "cluster: key {} {} by another node",
                        r.key_id,
                        if r.revoked { "revoked" } else { "added" }
                    );
                    self.local.insert(r.key_id.clone(), r);
                }
                Err(e) => log::error!("cluster: key {} not written to keys.log: {e}", r.key_id),
            }
        }
    }
}

/// Listens on the keys channel on a connection of its own (a subscribed
/// connection can do nothing else) and hands each notice to the node
/// thread; reconnects with backoff, asking for a resync after each
/// reconnect since notices sent meanwhile are lost.
pub fn spawn_listener(
    cfg: RedisConfig,
    to_node: crate::handoff::Sender<ToNode>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sg-cluster-keys".into())
        .spawn(move || {
            let channel = format!("{}keys", cfg.prefix);
            let mut backoff = Duration::from_millis(100);
            loop {
                let listened = listen(&cfg, &channel, &to_node);
                if to_node.send(ToNode::Resync).is_err() {
                    return;
                }
                if let Err(e) = listened {
                    log::debug!("cluster: key notices: {e}");
                }
                #[allow(clippy::disallowed_methods)] // the listener's own thread, not a shard
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        })
        .map(drop)
}

fn listen(
    cfg: &RedisConfig,
    channel: &str,
    to_node: &crate::handoff::Sender<ToNode>,
) -> redis::RedisResult<()> {
    let mut con = super::store::open(cfg)?;
    con.set_read_timeout(None)?;
    let mut ps = con.as_pubsub();
    ps.subscribe(channel)?;
    let _ = to_node.send(ToNode::Resync);
    loop {
        let msg = ps.get_message()?;
        let id: String = msg.get_payload()?;
        if to_node.send(ToNode::KeyNotice(id)).is_err() {
            return Ok(());
        }
    }
}
