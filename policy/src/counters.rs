//! Usage counters of one budget bucket, and the reservation/settlement
//! cycle.
//!
//! Before the upstream call, [`crate::decide`] produces a [`Reservation`]:
//! 1 request and `prompt estimate + max output tokens` tokens. The shard
//! that owns the bucket [`Counters::commit`]s it (on other shards it is
//! taken from a lease, see [`crate::lease`]). After the call,
//! [`Counters::settle`] replaces the reserved tokens with the real usage and
//! adds the cost. Spend is not reserved: it is checked (`used < limit`)
//! before the call and charged after.

use shardgate_proto::openai::Usage;

use crate::window::{Period, Timestamp, Window};

/// What a request holds between decision and settlement. All buckets share
/// UTC-aligned windows, so one set of window starts serves all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub minute_start: Timestamp,
    pub day_start: Timestamp,
}

impl Reservation {
    pub fn new(prompt_tokens: u64, output_tokens: u64, now: Timestamp) -> Self {
        Reservation {
            requests: 1,
            prompt_tokens,
            output_tokens,
            minute_start: Period::Minute.start(now),
            day_start: Period::Day.start(now),
        }
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.output_tokens)
    }
}

/// Real usage after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub tokens: u64,
    pub spend_micros: u64,
    /// True when usage is not the provider's word: a cut stream, or a
    /// response without usage. Estimated settlements never release reserved
    /// tokens (the provider may bill the whole generation).
    pub estimated: bool,
}

impl Settlement {
    /// From the provider's usage if any. Tokens are `total_tokens`, else
    /// `prompt + completion`, else (no usage) the reservation itself, which
    /// marks the settlement estimated. `spend_micros` is computed by the
    /// caller with [`crate::PricingTable::cost_micros`].
    pub fn from_usage(
        reservation: &Reservation,
        usage: Option<&Usage>,
        spend_micros: u64,
        estimated: bool,
    ) -> Self {
        let tokens = usage.and_then(|u| {
            u.total_tokens
                .or(match (u.prompt_tokens, u.completion_tokens) {
                    (None, None) => None,
                    (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
                })
        });
        Settlement {
            tokens: tokens.unwrap_or_else(|| reservation.tokens()),
            spend_micros,
            estimated: estimated || tokens.is_none(),
        }
    }
}

/// Which budget a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    MonthlySpend,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::RequestsPerMinute,
        LimitKind::TokensPerMinute,
        LimitKind::TokensPerDay,
        LimitKind::MonthlySpend,
    ];

    /// The inverse of [`LimitKind::as_str`].
    pub fn parse(s: &str) -> Option<LimitKind> {
        LimitKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::RequestsPerMinute => "requests_per_minute",
            LimitKind::TokensPerMinute => "tokens_per_minute",
            LimitKind::TokensPerDay => "tokens_per_day",
            LimitKind::MonthlySpend => "monthly_spend",
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The counters of one bucket: requests and tokens in the current minute,
/// tokens in the current day, spend (micro-dollars) in the current month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    requests_minute: Window,
    tokens_minute: Window,
    tokens_day: Window,
    spend_month: Window,
}

impl Counters {
    pub fn new(now: Timestamp) -> Self {
        Counters {
            requests_minute: Window::new(Period::Minute, now),
            tokens_minute: Window::new(Period::Minute, now),
            tokens_day: Window::new(Period::Day, now),
            spend_month: Window::new(Period::Month, now),
        }
    }

    pub fn window(&self, kind: LimitKind) -> &Window {
        match kind {
            LimitKind::RequestsPerMinute => &self.requests_minute,
            LimitKind::TokensPerMinute => &self.tokens_minute,
            LimitKind::TokensPerDay => &self.tokens_day,
            LimitKind::MonthlySpend => &self.spend_month,
        }
    }

    fn window_mut(&mut self, kind: LimitKind) -> &mut Window {
        match kind {
            LimitKind::RequestsPerMinute => &mut self.requests_minute,
            LimitKind::TokensPerMinute => &mut self.tokens_minute,
            LimitKind::TokensPerDay => &mut self.tokens_day,
            LimitKind::MonthlySpend => &mut self.spend_month,
        }
    }

    /// Used in the window current at `now` (0 once it has ended).
    pub fn used(&self, kind: LimitKind, now: Timestamp) -> u64 {
        self.window(kind).used_at(now)
    }

    pub fn reset_in_ms(&self, kind: LimitKind, now: Timestamp) -> u64 {
        self.window(kind).reset_in_ms(now)
    }

    pub fn rollover(&mut self, now: Timestamp) {
        self.requests_minute.rollover(now);
        self.tokens_minute.rollover(now);
        self.tokens_day.rollover(now);
        self.spend_month.rollover(now);
    }

    /// Adds `n` to one window (used by lease grants and usage reports).
    pub fn add(&mut self, kind: LimitKind, n: u64, now: Timestamp) {
        self.window_mut(kind).add(n, now);
    }

    /// Removes up to `n` from the window of `kind` that started at `start`,
    /// if it is still current.
    pub fn release(&mut self, kind: LimitKind, n: u64, start: Timestamp, now: Timestamp) {
        self.window_mut(kind).release(n, start, now);
    }

    /// Counts a reservation that `decide` allowed.
    pub fn commit(&mut self, r: &Reservation, now: Timestamp) {
        self.requests_minute.add(r.requests, now);
        self.tokens_minute.add(r.tokens(), now);
        self.tokens_day.add(r.tokens(), now);
    }

    /// Replaces the reservation's tokens with the settled ones and adds the
    /// spend. Returns the tokens charged.
    ///
    /// Exact settlement: charged = actual tokens. Estimated: charged =
    /// max(actual, reserved). In a window that is still the reservation's,
    /// its count becomes `used - reserved + charged` (never below zero); in a
    /// window that has rolled over since, only `charged - reserved` (if
    /// positive) is added to the new window, since the old one is gone.
    pub fn settle(&mut self, r: &Reservation, s: &Settlement, now: Timestamp) -> u64 {
        let reserved = r.tokens();
        let charged = if s.estimated {
            s.tokens.max(reserved)
        } else {
            s.tokens
        };
        for (w, start) in [
            (&mut self.tokens_minute, r.minute_start),
            (&mut self.tokens_day, r.day_start),
        ] {
            w.rollover(now);
            if w.start() == start {
                w.release(reserved, start, now);
                w.add(charged, now);
            } else {
                w.add(charged.saturating_sub(reserved), now);
            }
        }
        self.spend_month.add(s.spend_micros, now);
        charged
    }
}
