//! An owner shard on a node lease: the cluster level of the hierarchy.
//!
//! With a cluster store, a bucket's owner shard no longer holds the limit:
//! the store does, and the owner holds a [`LocalQuota`] leased from it for
//! the whole node (its `Want`s go to the store, not to a shard). The owner
//! admits its own requests from that lease and carves its shards' leases
//! out of it, so every request the node admits was granted by the store.
//! The owner's counters still count what the node used, for headers and
//! persistence, but they decide nothing: the store's window is the only
//! one that binds, and the store's clock (not the node's) places it.
//!
//! A shard's lease carries the node lease's window and expiry, never more:
//! quota cannot outlive the grant it was cut from.

use super::{Lease, LeaseManager, LocalQuota, Quota, Take, ToOwner};
use crate::counters::{LimitKind, Reservation};
use crate::policy::Limits;
use crate::window::Timestamp;

impl LeaseManager<LocalQuota> {
    /// Admits a request on the owner from the node lease; `out` collects
    /// what to tell the store (a refill when low).
    pub fn admit_on_lease(
        &mut self,
        r: &Reservation,
        now: Timestamp,
        out: &mut Vec<ToOwner>,
    ) -> Take {
        let need = Quota::of(r);
        let t = self.upstream.try_take(need, now, out);
        if t == Take::Admitted {
            self.record(need, now);
        }
        t
    }

    /// Answers a shard's `Want` from the node lease (a refill is asked of
    /// the store when that leaves it low). A short grant is `exhausted`
    /// only when the store said so.
    pub fn grant_on_lease(&mut self, want: Quota, now: Timestamp, out: &mut Vec<ToOwner>) -> Lease {
        let got = self.upstream.take_upto(want, now, out);
        self.record(got, now);
        let (window_start, expires_at) = self.upstream.lease_window(now).unwrap_or((now, now));
        Lease {
            requests: got.requests,
            tokens: got.tokens,
            window_start,
            day_start: crate::window::Period::Day.start(now),
            expires_at,
            spend_used_micros: self.counters.used(LimitKind::MonthlySpend, now),
            // The store's remainder and what the node lease still holds.
            owner_left: self
                .upstream
                .owner_left(now)
                .saturating_add(self.upstream.remaining(now)),
            exhausted: (got.requests < want.requests || got.tokens < want.tokens)
                && self.upstream.is_exhausted(now),
        }
    }

    /// Handles a shard's message; returns the lease to send back for a
    /// `Want`. Usage is counted here and passed on to the store.
    pub fn on_message_on_lease(
        &mut self,
        msg: ToOwner,
        now: Timestamp,
        out: &mut Vec<ToOwner>,
    ) -> Option<(usize, Lease)> {
        match msg {
            ToOwner::Want { shard, want } => Some((shard, self.grant_on_lease(want, now, out))),
            ToOwner::Return {
                unused,
                window_start,
                day_start,
                ..
            } => {
                self.give_back(unused, window_start, day_start, now, out);
                None
            }
            ToOwner::Usage {
                extra_tokens,
                spend_micros,
                ..
            } => {
                self.count_usage(extra_tokens, spend_micros, now);
                out.push(msg);
                None
            }
        }
    }

    /// Quota a shard (or a refused request) gives back: into the node lease
    /// while it is the one of that window, else on to the store, which
    /// would otherwise count it as used for the rest of the window.
    ///
    /// `window_start` is the minute the quota was taken in, in either
    /// clock (see [`super::same_window`]).
    pub fn give_back(
        &mut self,
        unused: Quota,
        window_start: Timestamp,
        day_start: Timestamp,
        now: Timestamp,
        out: &mut Vec<ToOwner>,
    ) {
        let local_window = crate::window::Period::Minute.start(window_start);
        self.unrecord(unused, local_window, day_start, now);
        if !self.upstream.absorb(unused, window_start, now) {
            out.push(ToOwner::Return {
                shard: 0,
                unused,
                window_start,
                day_start,
            });
        }
    }

    /// A grant from the store. Its spend figure is the whole cluster's, so
    /// the month's spend here is at least that.
    pub fn on_node_grant(&mut self, lease: Lease, now: Timestamp, out: &mut Vec<ToOwner>) {
        let used = self.counters.used(LimitKind::MonthlySpend, now);
        if lease.spend_used_micros > used {
            self.counters
                .add(LimitKind::MonthlySpend, lease.spend_used_micros - used, now);
        }
        self.upstream.on_grant(lease, now, out);
    }

    /// The node lease (its refill size, whether it is exhausted).
    pub fn node(&self) -> &LocalQuota {
        &self.upstream
    }

    pub fn node_mut(&mut self) -> &mut LocalQuota {
        &mut self.upstream
    }

    /// The bucket as the node sees the cluster: each limit minus what the
    /// store and the node lease had left at the last grant, and the larger
    /// of the cluster's and the node's own spend.
    pub fn cluster_view(&self, limits: &Limits, now: Timestamp) -> crate::counters::Counters {
        let mut c = self.upstream.view(limits, now);
        let mine = self.counters.used(LimitKind::MonthlySpend, now);
        let seen = c.used(LimitKind::MonthlySpend, now);
        if mine > seen {
            c.add(LimitKind::MonthlySpend, mine - seen, now);
        }
        c
    }

    fn count_usage(&mut self, extra_tokens: u64, spend_micros: u64, now: Timestamp) {
        self.counters
            .add(LimitKind::TokensPerMinute, extra_tokens, now);
        self.counters
            .add(LimitKind::TokensPerDay, extra_tokens, now);
        self.counters
            .add(LimitKind::MonthlySpend, spend_micros, now);
    }
}
