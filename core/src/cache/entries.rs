//! One shard's kept answers: per route, least recently used first out,
//! within the route's share of entries and bytes. Entries past their time
//! are dropped when found; all of them when the config generation changes.

use super::key::Key;
use crate::config::cache::CacheSettings;
use lru::LruCache;
use rustc_hash::FxHashMap;
use shardgate_proto::openai::Usage;
use std::rc::Rc;
use std::time::Instant;

/// A kept answer, as OpenAI chat (or embeddings) JSON: what the relay
/// replays to any client, whole or as a stream.
#[derive(Debug)]
pub struct Entry {
    pub answer: Vec<u8>,
    /// What it used when it was made: what a hit saves.
    pub usage: Option<Usage>,
    /// The target that made it (`provider/model`).
    pub served_by: String,
    /// The scope it was stored under (`tenant:acme`), for purges.
    pub scope: String,
    pub expires: Instant,
}

/// What an entry is taken to cost beyond its answer (the key, the list
/// links, the strings' headers).
const OVERHEAD: usize = 192;

impl Entry {
    fn bytes(&self) -> usize {
        self.answer.len() + self.served_by.len() + self.scope.len() + OVERHEAD
    }
}

struct RouteEntries {
    lru: LruCache<Key, Rc<Entry>>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// Which entries a purge drops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    /// A route's alias, or a target's upstream model or `provider/model`.
    pub model: Option<String>,
    /// A scope as stored (`tenant:acme`, `team:ml`, `key:k1`, `global`).
    pub scope: Option<String>,
}

#[derive(Default)]
pub struct ShardEntries {
    /// The config generation the entries were made under.
    generation: u64,
    routes: FxHashMap<String, RouteEntries>,
    evictions: u64,
    /// One more at every purge and every generation change: an answer
    /// whose lookup saw an older epoch is not kept (it may be what the
    /// purge meant to drop).
    epoch: u64,
}

impl ShardEntries {
    /// A newer generation drops every entry; an older one's requests
    /// neither read nor write.
    fn current(&mut self, generation: u64) -> bool {
        if generation > self.generation {
            self.clear(generation);
        }
        generation == self.generation
    }

    /// Drops every entry: the config is now `generation`.
    pub fn clear(&mut self, generation: u64) {
        self.routes.clear();
        self.generation = self.generation.max(generation);
        self.epoch += 1;
    }

    /// Drops every entry (another node purged the shared tier).
    pub fn drop_all(&mut self) {
        self.routes.clear();
        self.epoch += 1;
    }

    /// The epoch a lookup on `generation` notes for [`ShardEntries::put`].
    pub fn epoch(&mut self, generation: u64) -> u64 {
        self.current(generation);
        self.epoch
    }

    pub fn get(
        &mut self,
        generation: u64,
        route: &str,
        key: &Key,
        now: Instant,
    ) -> Option<Rc<Entry>> {
        if !self.current(generation) {
            return None;
        }
        let r = self.routes.get_mut(route)?;
        let e = r.lru.get(key)?;
        if e.expires > now {
            return Some(e.clone());
        }
        if let Some(gone) = r.lru.pop(key) {
            r.bytes -= gone.bytes();
        }
        None
    }

    /// Keeps `entry` under `key`, evicting the least recently used until
    /// the route's share holds, and hands it back to serve, with whether it
    /// was kept. An entry larger than the whole share, or looked up before
    /// a purge or reload, is not.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        generation: u64,
        epoch: u64,
        route: &str,
        settings: &CacheSettings,
        shards: usize,
        key: Key,
        mut entry: Entry,
    ) -> (Rc<Entry>, bool) {
        entry.answer.shrink_to_fit();
        let entry = Rc::new(entry);
        let (max_entries, max_bytes) = settings.per_shard(shards);
        let size = entry.bytes();
        if !self.current(generation) || epoch != self.epoch || size > max_bytes {
            return (entry, false);
        }
        let r = self
            .routes
            .entry(route.to_owned())
            .or_insert_with(|| RouteEntries {
                lru: LruCache::unbounded(),
                bytes: 0,
                max_entries,
                max_bytes,
            });
        if let Some(old) = r.lru.put(key, entry.clone()) {
            r.bytes -= old.bytes();
        }
        r.bytes += size;
        while r.bytes > r.max_bytes || r.lru.len() > r.max_entries {
            let Some((_, gone)) = r.lru.pop_lru() else {
                break;
            };
            r.bytes -= gone.bytes();
            self.evictions += 1;
        }
        (entry, true)
    }

    /// Drops the entries `purge` names; how many.
    pub fn purge(&mut self, purge: &Purge) -> usize {
        self.epoch += 1;
        let mut dropped = 0;
        for (alias, r) in &mut self.routes {
            let doomed: Vec<Key> = r
                .lru
                .iter()
                .filter(|(_, e)| {
                    purge.scope.as_deref().is_none_or(|s| s == e.scope)
                        && purge
                            .model
                            .as_deref()
                            .is_none_or(|m| m == alias || names(m, &e.served_by))
                })
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                if let Some(gone) = r.lru.pop(&k) {
                    r.bytes -= gone.bytes();
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Entries, their bytes, and evictions so far.
    pub fn totals(&self) -> (u64, u64, u64) {
        let entries = self.routes.values().map(|r| r.lru.len() as u64).sum();
        let bytes = self.routes.values().map(|r| r.bytes as u64).sum();
        (entries, bytes, self.evictions)
    }
}

/// `model` names the target `served_by` (`provider/model`): whole, or
/// its upstream model.
fn names(model: &str, served_by: &str) -> bool {
    model == served_by || served_by.split_once('/').is_some_and(|(_, m)| m == model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cache::CacheScope;
    use std::time::Duration;

    fn settings(max_entries: usize, max_bytes: usize) -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(60),
            scope: CacheScope::Tenant,
            max_entries,
            max_bytes,
            sampled: false,
            shared: None,
        }
    }

    fn entry(n: usize, scope: &str, expires: Instant) -> Entry {
        Entry {
            answer: vec![b'x'; n],
            usage: None,
            served_by: "p/m".into(),
            scope: scope.into(),
            expires,
        }
    }

    #[test]
    fn bytes_stay_within_the_share_evicting_the_least_recently_used() {
        let mut c = ShardEntries::default();
        let later = Instant::now() + Duration::from_secs(60);
        let s = settings(1000, 4 * 1024);
        for i in 0..100u8 {
            let e = c.epoch(1);
            c.put(1, e, "r", &s, 1, [i; 32], entry(500, "t", later));
            assert!(c.totals().1 <= 4 * 1024);
        }
        let (entries, _, evictions) = c.totals();
        assert_eq!(entries + evictions, 100);
        // The newest survive; the oldest went first.
        assert!(c.get(1, "r", &[99; 32], Instant::now()).is_some());
        assert!(c.get(1, "r", &[0; 32], Instant::now()).is_none());
        // Too large for the share: not kept at all.
        let e = c.epoch(1);
        c.put(1, e, "r", &s, 1, [200; 32], entry(8 * 1024, "t", later));
        assert!(c.get(1, "r", &[200; 32], Instant::now()).is_none());
    }

    #[test]
    fn expired_entries_and_older_generations_are_not_served() {
        let mut c = ShardEntries::default();
        let s = settings(10, 1 << 20);
        let now = Instant::now();
        let e = c.epoch(1);
        c.put(1, e, "r", &s, 1, [1; 32], entry(10, "t", now));
        assert!(c.get(1, "r", &[1; 32], now).is_none());
        assert_eq!(c.totals().0, 0);
        let e = c.epoch(1);
        c.put(
            1,
            e,
            "r",
            &s,
            1,
            [2; 32],
            entry(10, "t", now + Duration::from_secs(5)),
        );
        assert!(c.get(1, "r", &[2; 32], now).is_some());
        // A reload: everything goes.
        assert!(c.get(2, "r", &[2; 32], now).is_none());
        assert_eq!(c.totals().0, 0);
        let e = c.epoch(1);
        c.put(
            1,
            e,
            "r",
            &s,
            1,
            [3; 32],
            entry(10, "t", now + Duration::from_secs(5)),
        );
        assert_eq!(c.totals().0, 0);
    }

    #[test]
    fn a_purge_drops_only_what_it_names() {
        let mut c = ShardEntries::default();
        let s = settings(10, 1 << 20);
        let later = Instant::now() + Duration::from_secs(60);
        let e = c.epoch(1);
        c.put(1, e, "a", &s, 1, [1; 32], entry(10, "tenant:x", later));
        let e = c.epoch(1);
        c.put(1, e, "a", &s, 1, [2; 32], entry(10, "tenant:y", later));
        let e = c.epoch(1);
        c.put(1, e, "b", &s, 1, [3; 32], entry(10, "tenant:x", later));
        let by_scope = Purge {
            model: None,
            scope: Some("tenant:x".into()),
        };
        assert_eq!(c.purge(&by_scope), 2);
        let by_model = Purge {
            model: Some("a".into()),
            scope: None,
        };
        assert_eq!(c.purge(&by_model), 1);
        assert_eq!(c.totals().0, 0);
        // An answer looked up before a purge is not kept after it.
        let before = c.epoch(1);
        c.purge(&Purge::default());
        c.put(1, before, "a", &s, 1, [4; 32], entry(10, "tenant:x", later));
        assert_eq!(c.totals().0, 0);
    }
}
