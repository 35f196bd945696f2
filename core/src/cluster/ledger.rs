//! What this node has taken from each scope, kept by the node thread: so a
//! store that lost its state (restarted without persistence) can be told
//! again, and what was used while it was unreachable can be added once it
//! is back. Also the `local` fallback: each node's share of each limit.

use shardgate_policy::{Lease, LeaseManager, Limits, Period, Quota, Timestamp};
use std::collections::HashMap;

/// One node's net use of one scope's current windows (store time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Share {
    pub minute: u64,
    pub requests: u64,
    pub tokens: u64,
    pub day: u64,
    pub day_tokens: u64,
    pub month: u64,
    pub spend: u64,
}

impl Share {
    /// Moves the windows to those of `now`, dropping what ended.
    fn roll(&mut self, now: Timestamp) {
        let (m, d, mo) = (
            Period::Minute.start(now).0,
            Period::Day.start(now).0,
            Period::Month.start(now).0,
        );
        if self.minute != m {
            (self.minute, self.requests, self.tokens) = (m, 0, 0);
        }
        if self.day != d {
            (self.day, self.day_tokens) = (d, 0);
        }
        if self.month != mo {
            (self.month, self.spend) = (mo, 0);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.tokens == 0 && self.day_tokens == 0 && self.spend == 0
    }
}

/// Per scope: everything this node took (`all`), and the part the store
/// has not seen (`unsynced`: taken while it was unreachable).
#[derive(Default)]
pub struct Ledger {
    all: HashMap<String, Share>,
    unsynced: HashMap<String, Share>,
    /// The `local` fallback's ledgers, one per scope, on each node's share.
    fallback: HashMap<String, LeaseManager>,
}

impl Ledger {
    fn both(&mut self, scope: &str, synced: bool, now: Timestamp, f: impl Fn(&mut Share)) {
        let apply = |m: &mut HashMap<String, Share>| {
            let s = match m.get_mut(scope) {
                Some(s) => s,
                None => m.entry(scope.to_owned()).or_default(),
            };
            s.roll(now);
            f(s);
        };
        apply(&mut self.all);
        if !synced {
            apply(&mut self.unsynced);
        }
    }

    /// `q` taken in the windows of `now` (store time).
    pub fn took(&mut self, scope: &str, q: Quota, synced: bool, now: Timestamp) {
        self.both(scope, synced, now, |s| {
            s.requests += q.requests;
            s.tokens = s.tokens.saturating_add(q.tokens);
            s.day_tokens = s.day_tokens.saturating_add(q.tokens);
        });
    }

    /// `q` given back from the minute that started at `minute`.
    pub fn gave_back(&mut self, scope: &str, q: Quota, minute: u64, synced: bool, now: Timestamp) {
        self.both(scope, synced, now, |s| {
            if s.minute == minute {
                s.requests = s.requests.saturating_sub(q.requests);
                s.tokens = s.tokens.saturating_sub(q.tokens);
                s.day_tokens = s.day_tokens.saturating_sub(q.tokens);
            }
        });
    }

    pub fn used(
        &mut self,
        scope: &str,
        extra_tokens: u64,
        spend: u64,
        synced: bool,
        now: Timestamp,
    ) {
        self.both(scope, synced, now, |s| {
            s.tokens = s.tokens.saturating_add(extra_tokens);
            s.day_tokens = s.day_tokens.saturating_add(extra_tokens);
            s.spend = s.spend.saturating_add(spend);
        });
    }

    /// Everything this node has counted in still-current windows.
    pub fn all(&mut self, now: Timestamp) -> Vec<(String, Share)> {
        drain_current(self.all.iter_mut(), now)
    }

    /// What the store has not seen (left in place: see
    /// [`Ledger::forget_unsynced`]).
    pub fn unsynced(&mut self, now: Timestamp) -> Vec<(String, Share)> {
        drain_current(self.unsynced.iter_mut(), now)
    }

    /// The store now has `scope`'s unsynced use.
    pub fn forget_unsynced(&mut self, scope: &str) {
        self.unsynced.remove(scope);
    }

    /// What the store has not seen, emptied.
    pub fn take_unsynced(&mut self, now: Timestamp) -> Vec<(String, Share)> {
        let out = drain_current(self.unsynced.iter_mut(), now);
        self.unsynced.clear();
        out
    }

    /// A lease from this node's share of `limits` (each limit divided by
    /// `live_nodes`), while the store is unreachable, in the node's clock.
    pub fn fallback_grant(
        &mut self,
        scope: &str,
        limits: &Limits,
        live_nodes: u64,
        want: Quota,
        now: Timestamp,
        ttl_ms: u64,
    ) -> Lease {
        let share = share_of(limits, live_nodes);
        let lm = self
            .fallback
            .entry(scope.to_owned())
            .or_insert_with(|| LeaseManager::new(share, now));
        lm.set_limits(share);
        let mut lease = lm.grant(want, now);
        lease.expires_at = Timestamp(lease.expires_at.0.min(now.0 + ttl_ms));
        lease
    }

    pub fn fallback_release(
        &mut self,
        scope: &str,
        q: Quota,
        minute: Timestamp,
        day: Timestamp,
        now: Timestamp,
    ) {
        use shardgate_policy::QuotaSource;
        if let Some(lm) = self.fallback.get_mut(scope) {
            lm.release(q, minute, day, now);
        }
    }
}

fn drain_current<'a>(
    it: impl Iterator<Item = (&'a String, &'a mut Share)>,
    now: Timestamp,
) -> Vec<(String, Share)> {
    it.filter_map(|(k, s)| {
        s.roll(now);
        (!s.is_empty()).then(|| (k.clone(), *s))
    })
    .collect()
}

/// Each limit divided by `nodes`, rounded down but at least 1.
pub fn share_of(limits: &Limits, nodes: u64) -> Limits {
    let n = nodes.max(1);
    let part = |l: Option<u64>| l.map(|l| (l / n).max(1));
    Limits {
        requests_per_minute: part(limits.requests_per_minute),
        tokens_per_minute: part(limits.tokens_per_minute),
        tokens_per_day: part(limits.tokens_per_day),
        monthly_spend_micros: limits.monthly_spend_micros.map(|l| (l / n).max(1)),
    }
}
