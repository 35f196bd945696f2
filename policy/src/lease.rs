//! Cross-shard quota leases: the pure part.
//!
//! Every budget bucket has one owner shard, `owner_shard(scope_key,
//! shards)`, which holds its authoritative [`Counters`] inside a
//! [`LeaseManager`]. Requests on the owner are admitted against the
//! counters directly. Another shard holds a [`LocalQuota`]: a slice of the
//! current minute's requests and tokens leased from the owner, from which
//! it admits requests with no message on the request path. When its lease
//! runs low it emits a [`ToOwner::Want`]; the owner answers with a
//! [`Lease`]; an expired lease's unused tokens go back in a
//! [`ToOwner::Return`]. This module only produces and consumes those
//! messages as values; core moves them over glommio's channels.
//!
//! # Overshoot bound
//!
//! **Requests and reserved tokens: zero over the limit, per window.** The
//! owner never grants or admits more than the window has left
//! (`granted + admitted_locally <= limit` at every instant of its ledger),
//! a lease is valid only inside the minute window it was carved from
//! (`expires_at` = that window's end, checked against the admitting shard's
//! `now`), and a non-owner admits only from its lease. So the requests
//! admitted with timestamps in one window never exceed the limit, whatever
//! the message delays and interleavings; `lease_overshoot_is_zero` in the
//! tests checks this with 2 shards × 64 clients against 100 rpm.
//!
//! The price of that bound is under-admission: quota leased to a shard that
//! doesn't use it before the window ends is lost for that minute (at most
//! `refill` per non-owner shard). Keep `refill` small relative to the limit
//! (`LocalQuota::suggested_refill`: limit / (4 × shards)).
//!
//! What remains over the limit, and why:
//! - **Tokens beyond the reservation.** A reservation holds the prompt
//!   estimate plus max output tokens; settlement charges real usage. Output can't exceed
//!   max tokens, so the only excess is the prompt estimate's error (zero for
//!   OpenAI models counted with their own encoding, a few percent for other
//!   providers' tokenizers approximated with cl100k). Non-owners report such
//!   excess to the owner with [`ToOwner::Usage`].
//! - **Monthly spend.** Spend is charged after the call and checked as
//!   `used < limit` before it, against the owner's counters (a non-owner
//!   sees a snapshot carried by each lease, and the owner announces the
//!   spend to every shard when it reaches the limit:
//!   [`LeaseManager::newly_spent`]). A non-owner admits nothing before it
//!   has a snapshot of the month. The overshoot is at most the cost of the
//!   requests in flight when the limit is crossed, plus those admitted on
//!   non-owners while the announcement is on its way (one message).
//!
//! # Hierarchy
//!
//! [`QuotaSource`] is what a lease is carved from. A [`LeaseManager`] is one
//! (it hands out what its counters have left) and takes another as its
//! upstream: by default [`Unlimited`], later a node-level lease from Redis
//! held in a [`LocalQuota`] (which also implements `QuotaSource`), so the
//! owner can itself run on a lease from a higher level with the same code.

use crate::counters::{Counters, LimitKind, Reservation};
use crate::policy::Limits;
use crate::window::{Period, Timestamp};

/// The shard that owns a bucket's counters: FNV-1a (64-bit) of `id` modulo
/// `shards`. Stable across processes and builds (unlike std's `Hasher`), so
/// every shard computes the same owner. `shards == 0` gives 0.
pub fn owner_shard(id: &str, shards: usize) -> usize {
    if shards == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Whether two minute-window starts name the same window. Within one
/// node they are equal; a node lease's window is the cluster store's
/// minute in this node's clock, off the node's own minute by the clocks'
/// difference, so starts under half a minute apart are one window.
pub fn same_window(a: Timestamp, b: Timestamp) -> bool {
    a.0.abs_diff(b.0) < 30_000
}

/// An amount of requests and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub tokens: u64,
}

impl Quota {
    pub const ZERO: Quota = Quota {
        requests: 0,
        tokens: 0,
    };

    pub fn of(r: &Reservation) -> Self {
        Quota {
            requests: r.requests,
            tokens: r.tokens(),
        }
    }

    pub fn min(self, o: Quota) -> Quota {
        Quota {
            requests: self.requests.min(o.requests),
            tokens: self.tokens.min(o.tokens),
        }
    }

    pub fn covers(self, need: Quota) -> bool {
        self.requests >= need.requests && self.tokens >= need.tokens
    }

    pub fn saturating_sub(self, o: Quota) -> Quota {
        Quota {
            requests: self.requests.saturating_sub(o.requests),
            tokens: self.tokens.saturating_sub(o.tokens),
        }
    }

    pub fn saturating_add(self, o: Quota) -> Quota {
        Quota {
            requests: self.requests.saturating_add(o.requests),
            tokens: self.tokens.saturating_add(o.tokens),
        }
    }

    pub fn is_zero(self) -> bool {
        self == Quota::ZERO
    }
}

/// A slice of one minute window's quota, valid until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub requests: u64,
    pub tokens: u64,
    /// Start of the minute window it was carved from.
    pub window_start: Timestamp,
    /// Start of the day window its tokens count against.
    pub day_start: Timestamp,
    /// End of that minute window.
    pub expires_at: Timestamp,
    /// The owner's monthly spend when granting, for non-owners' spend check.
    pub spend_used_micros: u64,
    /// What the owner still had unleased right after this grant: with the
    /// lease's own remainder, a non-owner's estimate of the window's
    /// remaining quota (for `x-ratelimit-remaining-*`; never for admission).
    pub owner_left: Quota,
    /// The source has nothing left for this window: ask no more until it
    /// ends. A short grant without it (an owner waiting on its own lease
    /// from the cluster) only means "ask again".
    pub exhausted: bool,
}

impl Lease {
    pub fn quota(&self) -> Quota {
        Quota {
            requests: self.requests,
            tokens: self.tokens,
        }
    }
}

/// Messages a non-owner shard sends to a bucket's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToOwner {
    /// Please lease me up to `want`.
    Want { shard: usize, want: Quota },
    /// Unused quota of a lease that ended or was replaced.
    Return {
        shard: usize,
        unused: Quota,
        window_start: Timestamp,
        day_start: Timestamp,
    },
    /// Settled usage beyond what was leased (tokens) and spend.
    Usage {
        shard: usize,
        extra_tokens: u64,
        spend_micros: u64,
    },
}

/// Where quota comes from.
pub trait QuotaSource {
    /// Takes up to `want` for the minute window containing `now`; never
    /// more than the source has left. Partial grants are fine.
    fn acquire(&mut self, want: Quota, now: Timestamp) -> Quota;
    /// Gives back quota acquired in the minute window that started at
    /// `window_start` (tokens also count against the day of `day_start`).
    fn release(
        &mut self,
        unused: Quota,
        window_start: Timestamp,
        day_start: Timestamp,
        now: Timestamp,
    );
}

/// A source with no limit: the top of the hierarchy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl QuotaSource for Unlimited {
    fn acquire(&mut self, want: Quota, _now: Timestamp) -> Quota {
        want
    }
    fn release(&mut self, _: Quota, _: Timestamp, _: Timestamp, _: Timestamp) {}
}

/// The owner shard's ledger for one bucket.
#[derive(Debug, Clone)]
pub struct LeaseManager<U: QuotaSource = Unlimited> {
    limits: Limits,
    counters: Counters,
    upstream: U,
    /// The month whose spend was last announced as reaching the limit
    /// ([`LeaseManager::newly_spent`]).
    spent_announced: Option<Timestamp>,
}

impl LeaseManager<Unlimited> {
    pub fn new(limits: Limits, now: Timestamp) -> Self {
        LeaseManager::with_upstream(limits, now, Unlimited)
    }
}

impl<U: QuotaSource> LeaseManager<U> {
    pub fn with_upstream(limits: Limits, now: Timestamp, upstream: U) -> Self {
        LeaseManager {
            limits,
            counters: Counters::new(now),
            upstream,
            spent_announced: None,
        }
    }

    /// The month's start and spend the first time (per month and limit)
    /// the spend reaches the monthly limit; `None` otherwise.
    ///
    /// What the owner tells the other shards at once: a shard's own view
    /// of the spend comes with its leases, and a lease can last the whole
    /// minute (always, for a bucket with no request limit), so without
    /// this a spent budget would keep being admitted elsewhere until then.
    pub fn newly_spent(&mut self, now: Timestamp) -> Option<(Timestamp, u64)> {
        let limit = self.limits.monthly_spend_micros?;
        let used = self.counters.used(LimitKind::MonthlySpend, now);
        let month = Period::Month.start(now);
        if used < limit || self.spent_announced == Some(month) {
            return None;
        }
        self.spent_announced = Some(month);
        Some((month, used))
    }

    /// Authoritative counters (leased quota counts as used); pass them to
    /// `decide` on the owner.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn set_limits(&mut self, limits: Limits) {
        if limits.monthly_spend_micros != self.limits.monthly_spend_micros {
            self.spent_announced = None;
        }
        self.limits = limits;
    }

    /// What the current windows have left.
    pub fn available(&self, now: Timestamp) -> Quota {
        let left = |limit: Option<u64>, kind| match limit {
            Some(l) => l.saturating_sub(self.counters.used(kind, now)),
            None => u64::MAX,
        };
        Quota {
            requests: left(
                self.limits.requests_per_minute,
                LimitKind::RequestsPerMinute,
            ),
            tokens: left(self.limits.tokens_per_minute, LimitKind::TokensPerMinute)
                .min(left(self.limits.tokens_per_day, LimitKind::TokensPerDay)),
        }
    }

    /// Takes `q` back out of the windows that started at `minute` and
    /// `day` (when they are still current).
    fn unrecord(&mut self, q: Quota, minute: Timestamp, day: Timestamp, now: Timestamp) {
        let c = &mut self.counters;
        c.release(LimitKind::RequestsPerMinute, q.requests, minute, now);
        c.release(LimitKind::TokensPerMinute, q.tokens, minute, now);
        c.release(LimitKind::TokensPerDay, q.tokens, day, now);
    }

    fn record(&mut self, q: Quota, now: Timestamp) {
        self.counters
            .add(LimitKind::RequestsPerMinute, q.requests, now);
        self.counters.add(LimitKind::TokensPerMinute, q.tokens, now);
        self.counters.add(LimitKind::TokensPerDay, q.tokens, now);
    }

    /// Admits a request on the owner itself, all or nothing.
    pub fn admit(&mut self, r: &Reservation, now: Timestamp) -> bool {
        let need = Quota::of(r);
        if !self.available(now).covers(need) {
            return false;
        }
        let got = self.upstream.acquire(need, now);
        if got != need {
            let (m, d) = (Period::Minute.start(now), Period::Day.start(now));
            self.upstream.release(got, m, d, now);
            return false;
        }
        self.record(need, now);
        true
    }

    /// Answers a [`ToOwner::Want`]: a lease of at most `want`, carved out of
    /// what is left (possibly zero).
    pub fn grant(&mut self, want: Quota, now: Timestamp) -> Lease {
        let got = self.acquire(want, now);
        let window_start = Period::Minute.start(now);
        Lease {
            requests: got.requests,
            tokens: got.tokens,
            window_start,
            day_start: Period::Day.start(now),
            expires_at: Period::Minute.end(window_start),
            spend_used_micros: self.counters.used(LimitKind::MonthlySpend, now),
            owner_left: self.available(now),
            exhausted: got.requests == 0 && want.requests > 0,
        }
    }

    /// Handles a message; returns the lease to send back for a `Want`.
    pub fn on_message(&mut self, msg: ToOwner, now: Timestamp) -> Option<(usize, Lease)> {
        match msg {
            ToOwner::Want { shard, want } => Some((shard, self.grant(want, now))),
            ToOwner::Return {
                unused,
                window_start,
                day_start,
                ..
            } => {
                self.release(unused, window_start, day_start, now);
                None
            }
            ToOwner::Usage {
                extra_tokens,
                spend_micros,
                ..
            } => {
                self.counters
                    .add(LimitKind::TokensPerMinute, extra_tokens, now);
                self.counters
                    .add(LimitKind::TokensPerDay, extra_tokens, now);
                self.counters
                    .add(LimitKind::MonthlySpend, spend_micros, now);
                None
            }
        }
    }
}

impl<U: QuotaSource> QuotaSource for LeaseManager<U> {
    fn acquire(&mut self, want: Quota, now: Timestamp) -> Quota {
        let local = want.min(self.available(now));
        let got = self.upstream.acquire(local, now);
        self.record(got, now);
        got
    }

    fn release(
        &mut self,
        unused: Quota,
        window_start: Timestamp,
        day_start: Timestamp,
        now: Timestamp,
    ) {
        self.unrecord(unused, window_start, day_start, now);
        self.upstream.release(unused, window_start, day_start, now);
    }
}

/// Result of [`LocalQuota::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Taken from the lease; go ahead.
    Admitted,
    /// Not enough lease, and a `Want` is on its way: core may wait for the
    /// grant (bounded) and try once more, or answer 429.
    WaitForGrant,
    /// The owner had nothing left for this window: 429 until `until`.
    Exhausted { until: Timestamp },
}

/// A non-owner shard's lease on one bucket.
#[derive(Debug, Clone)]
pub struct LocalQuota {
    shard: usize,
    refill: Quota,
    low_water: Quota,
    lease: Option<Lease>,
    want_in_flight: bool,
    exhausted_until: Option<Timestamp>,
    /// The owner's monthly spend at the last grant, and that grant's month:
    /// kept when the lease ends, so a shard between leases still sees
    /// the spend (a budget already spent stays refused).
    spend: Option<(Timestamp, u64)>,
    /// Ask for a new grant this long (ms) before the lease expires, so a
    /// lease that ends early (a node's lease from the cluster) is renewed
    /// before a request has to wait for it. 0: only when low.
    renew_before_ms: u64,
}

impl LocalQuota {
    /// `refill` is how much to ask for at a time; a new `Want` goes out
    /// when the lease falls to `low_water` or below (or cannot cover a
    /// request). At most one `Want` is in flight.
    pub fn new(shard: usize, refill: Quota, low_water: Quota) -> Self {
        LocalQuota {
            shard,
            refill,
            low_water,
            lease: None,
            want_in_flight: false,
            exhausted_until: None,
            spend: None,
            renew_before_ms: 0,
        }
    }

    /// Renew the lease `ms` before it expires (see the field).
    pub fn renew_before(mut self, ms: u64) -> Self {
        self.renew_before_ms = ms;
        self
    }

    /// A new refill size from now on (a node sizes its cluster lease to
    /// its recent rate).
    pub fn set_refill(&mut self, refill: Quota, low_water: Quota) {
        self.refill = refill;
        self.low_water = low_water;
    }

    pub fn refill(&self) -> Quota {
        self.refill
    }

    /// The source did not answer a `Want` (the cluster store is down or
    /// late): the next shortfall may ask again.
    pub fn want_failed(&mut self) {
        self.want_in_flight = false;
    }

    /// Whether the source said it has nothing left for the window at `now`.
    pub fn is_exhausted(&self, now: Timestamp) -> bool {
        self.exhausted_until.is_some_and(|u| now < u)
    }

    /// The current lease's window start and expiry.
    pub fn lease_window(&self, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
        self.current(now).map(|l| (l.window_start, l.expires_at))
    }

    /// limit / (4 × shards), at least 1, per budget; low water a quarter of
    /// that.
    pub fn suggested_refill(limits: &Limits, shards: usize) -> (Quota, Quota) {
        let div = 4 * shards.max(1) as u64;
        let part = |l: Option<u64>| l.map_or(u64::MAX / 4, |l| (l / div).max(1));
        let tokens = part(limits.tokens_per_minute).min(part(limits.tokens_per_day));
        let refill = Quota {
            requests: part(limits.requests_per_minute),
            tokens,
        };
        let low = Quota {
            requests: refill.requests / 4,
            tokens: refill.tokens / 4,
        };
        (refill, low)
    }

    /// The lease, if it is one of the minute window current at `now`.
    fn current(&self, now: Timestamp) -> Option<&Lease> {
        self.lease
            .as_ref()
            .filter(|l| now >= l.window_start && now < l.expires_at)
    }

    /// Whether a lease is held (current or ended but not yet returned by
    /// [`LocalQuota::expire`]).
    pub fn holds_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// What is left of the current lease at `now`.
    pub fn remaining(&self, now: Timestamp) -> Quota {
        self.current(now).map_or(Quota::ZERO, Lease::quota)
    }

    /// What the owner had unleased at the last grant, while that grant's
    /// window lasts (an estimate for headers, never for admission).
    pub fn owner_left(&self, now: Timestamp) -> Quota {
        self.current(now).map_or(Quota::ZERO, |l| l.owner_left)
    }

    /// The owner's spend as of the last grant.
    pub fn spend_snapshot(&self) -> Option<u64> {
        self.spend.map(|(_, s)| s)
    }

    /// The owner's word that the month starting at `month` has `used`
    /// spent (see [`LeaseManager::newly_spent`]). A snapshot only grows
    /// within its month.
    pub fn note_spend(&mut self, month: Timestamp, used: u64) {
        self.spend = match self.spend {
            Some((m, s)) if m == month => Some((m, s.max(used))),
            Some((m, s)) if m > month => Some((m, s)),
            _ => Some((month, used)),
        };
    }

    /// The bucket's counters as this shard can tell them, for `decide` and
    /// the rate-limit headers (admission itself only takes from the lease).
    ///
    /// While a lease of the current window is held: each limit minus what
    /// the lease and the owner (at the grant) had left. Without one (none
    /// granted yet, or its window has ended) this shard knows nothing of the
    /// current window, so nothing counts as used and `try_take` asks the
    /// owner. Counting the unknown as all used would make `decide` refuse
    /// before `try_take` could ask, and so refuse the bucket for good. The
    /// spend snapshot holds for the month of its grant.
    pub fn view(&self, limits: &Limits, now: Timestamp) -> Counters {
        let mut c = Counters::new(now);
        if let Some(l) = self.current(now) {
            let left = l.quota().saturating_add(l.owner_left);
            let used = |limit: Option<u64>, left: u64| limit.map_or(0, |l| l.saturating_sub(left));
            c.add(
                LimitKind::RequestsPerMinute,
                used(limits.requests_per_minute, left.requests),
                now,
            );
            c.add(
                LimitKind::TokensPerMinute,
                used(limits.tokens_per_minute, left.tokens),
                now,
            );
            c.add(
                LimitKind::TokensPerDay,
                used(limits.tokens_per_day, left.tokens),
                now,
            );
        }
        if let Some((month, spend)) = self.spend {
            if month == Period::Month.start(now) {
                c.add(LimitKind::MonthlySpend, spend, now);
            }
        }
        c
    }

    /// Drops an expired lease, returning its unused quota.
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<ToOwner>) {
        if let Some(l) = self.lease {
            if now >= l.expires_at {
                self.lease = None;
                if !l.quota().is_zero() {
                    out.push(ToOwner::Return {
                        shard: self.shard,
                        unused: l.quota(),
                        window_start: l.window_start,
                        day_start: l.day_start,
                    });
                }
            }
        }
        if self.exhausted_until.is_some_and(|u| now >= u) {
            self.exhausted_until = None;
        }
    }

    /// Admits a request needing `need` from the lease if it can; asks the
    /// owner for more (into `out`) when low or short.
    pub fn try_take(&mut self, need: Quota, now: Timestamp, out: &mut Vec<ToOwner>) -> Take {
        self.expire(now, out);
        let admitted = match &mut self.lease {
            Some(l) if now >= l.window_start && l.quota().covers(need) => {
                l.requests -= need.requests;
                l.tokens -= need.tokens;
                true
            }
            _ => false,
        };
        if let Some(until) = self.exhausted_until {
            return if admitted {
                Take::Admitted
            } else {
                Take::Exhausted { until }
            };
        }
        let low = !admitted || self.is_low(now);
        if low {
            self.ask(need, now, out);
        }
        if admitted {
            Take::Admitted
        } else {
            Take::WaitForGrant
        }
    }

    /// The lease is at or below low water, or about to expire.
    fn is_low(&self, now: Timestamp) -> bool {
        let left = self.remaining(now);
        left.requests <= self.low_water.requests
            || left.tokens <= self.low_water.tokens
            || self.lease.is_some_and(|l| {
                // A lease ending with its window is not renewed early: the
                // next window's comes when this one ends.
                let ends_early = l.expires_at.0 < l.window_start.0.saturating_add(60_000);
                self.renew_before_ms > 0
                    && ends_early
                    && now.0.saturating_add(self.renew_before_ms) >= l.expires_at.0
            })
    }

    /// Queues a `Want` topping the lease up to `refill` (at least `need`),
    /// unless one is in flight.
    fn ask(&mut self, need: Quota, now: Timestamp, out: &mut Vec<ToOwner>) {
        let left = self.remaining(now);
        if !self.want_in_flight {
            self.want_in_flight = true;
            // A top-up to `refill`, not a whole `refill` more: asking for
            // tokens because requests ran low would strand tokens in this
            // lease that the owner's day counts as used.
            out.push(ToOwner::Want {
                shard: self.shard,
                want: Quota {
                    requests: self
                        .refill
                        .requests
                        .saturating_sub(left.requests)
                        .max(need.requests),
                    tokens: self
                        .refill
                        .tokens
                        .saturating_sub(left.tokens)
                        .max(need.tokens),
                },
            });
        }
    }

    /// Takes up to `want` from the lease (partial is fine) and asks for more
    /// when that leaves it low: how an owner running on a node lease carves
    /// its shards' leases.
    pub fn take_upto(&mut self, want: Quota, now: Timestamp, out: &mut Vec<ToOwner>) -> Quota {
        self.expire(now, out);
        let got = want.min(self.remaining(now));
        if let Some(l) = &mut self.lease {
            l.requests -= got.requests;
            l.tokens -= got.tokens;
        }
        if self.exhausted_until.is_none() && (got != want || self.is_low(now)) {
            self.ask(want.saturating_sub(got), now, out);
        }
        got
    }

    /// Takes a grant from the owner. A grant for a window that has already
    /// ended goes straight back; one for the current window is added to the
    /// lease. A zero-request grant means the owner is out for this window:
    /// no more `Want`s until it ends.
    pub fn on_grant(&mut self, lease: Lease, now: Timestamp, out: &mut Vec<ToOwner>) {
        self.want_in_flight = false;
        // Merged, not replaced: a grant that waited in a ring may be older
        // than the owner's announcement of a spent month.
        self.note_spend(
            Period::Month.start(lease.day_start),
            lease.spend_used_micros,
        );
        self.expire(now, out);
        if now >= lease.expires_at {
            if !lease.quota().is_zero() {
                out.push(ToOwner::Return {
                    shard: self.shard,
                    unused: lease.quota(),
                    window_start: lease.window_start,
                    day_start: lease.day_start,
                });
            }
            return;
        }
        if lease.exhausted && self.refill.requests > 0 {
            self.exhausted_until = Some(lease.expires_at);
        }
        self.lease = Some(match self.lease {
            Some(cur) if cur.window_start == lease.window_start => Lease {
                requests: cur.requests + lease.requests,
                tokens: cur.tokens.saturating_add(lease.tokens),
                ..lease
            },
            _ => lease,
        });
    }

    /// After settlement on this shard: tokens reserved but not used go back
    /// into the lease while its window lasts, and to the owner otherwise
    /// (the minute is over, but the owner's day still counts them); usage
    /// beyond the reservation and spend are reported to the owner.
    pub fn settle(
        &mut self,
        r: &Reservation,
        charged_tokens: u64,
        spend_micros: u64,
        now: Timestamp,
        out: &mut Vec<ToOwner>,
    ) {
        let reserved = r.tokens();
        if charged_tokens < reserved {
            let unused = reserved - charged_tokens;
            match &mut self.lease {
                Some(l) if same_window(l.window_start, r.minute_start) && now < l.expires_at => {
                    l.tokens = l.tokens.saturating_add(unused);
                }
                _ => out.push(ToOwner::Return {
                    shard: self.shard,
                    unused: Quota {
                        requests: 0,
                        tokens: unused,
                    },
                    window_start: r.minute_start,
                    day_start: r.day_start,
                }),
            }
        }
        let extra = charged_tokens.saturating_sub(reserved);
        if extra > 0 || spend_micros > 0 {
            out.push(ToOwner::Usage {
                shard: self.shard,
                extra_tokens: extra,
                spend_micros,
            });
        }
    }
}

impl LocalQuota {
    /// Takes `unused` back into the lease if it is still the lease of
    /// `window_start` and current; false when it is not (the caller must
    /// pass it on, or the source keeps counting it).
    pub fn absorb(&mut self, unused: Quota, window_start: Timestamp, now: Timestamp) -> bool {
        match &mut self.lease {
            Some(l) if same_window(l.window_start, window_start) && now < l.expires_at => {
                l.requests += unused.requests;
                l.tokens = l.tokens.saturating_add(unused.tokens);
                true
            }
            _ => false,
        }
    }
}

impl QuotaSource for LocalQuota {
    /// Partial takes from the held lease; never asks for more by itself
    /// (the holder refills it on its own schedule).
    fn acquire(&mut self, want: Quota, now: Timestamp) -> Quota {
        let got = want.min(self.remaining(now));
        if let Some(l) = &mut self.lease {
            l.requests -= got.requests;
            l.tokens -= got.tokens;
        }
        got
    }

    fn release(&mut self, unused: Quota, window_start: Timestamp, _day: Timestamp, now: Timestamp) {
        self.absorb(unused, window_start, now);
    }
}

#[path = "lease_node.rs"]
mod node;

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
