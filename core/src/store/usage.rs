//! `usage.log`: budget window counters and per-key usage, and the state
//! they fold into.
//!
//! Two kinds of record, chosen so that replay is simple and compaction is a
//! snapshot in the same format:
//!
//! - [`UsageRecord::Counter`] is **absolute**: a bucket's count in one
//!   window, as its owner shard holds it. The latest (by window start, then
//!   log order) wins, so rewriting one is idempotent. A bucket has one owner
//!   shard, so its counter records arrive in order.
//! - [`UsageRecord::Usage`] is a **delta**: what settled requests of one key
//!   added in one calendar month (UTC). Any shard can send one for any key;
//!   replay sums them. Compaction writes one per key and month holding the
//!   total, which replays to the same state.

use super::frame::{self, Repair};
use super::{DataDir, StoreError};
use serde::{Deserialize, Serialize};
use shardgate_policy::{Counters, LimitKind, Period, Timestamp};
use std::collections::BTreeMap;

const KINDS: [LimitKind; 4] = LimitKind::ALL;

/// One record of `usage.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum UsageRecord {
    /// A bucket's count in the window of `kind` ([`LimitKind::as_str`])
    /// that starts at `window_start_ms`. Absolute; latest wins.
    Counter {
        bucket: String,
        kind: String,
        window_start_ms: u64,
        used: u64,
    },
    /// Usage a key added in the calendar month starting at
    /// `month_start_ms`. A delta; summed on replay.
    Usage {
        key_id: String,
        month_start_ms: u64,
        requests: u64,
        input_tokens: u64,
        output_tokens: u64,
        spend_micros: u64,
    },
}

impl UsageRecord {
    /// The count of one window of a bucket's [`Counters`] at `now`.
    pub fn counter(bucket: &str, kind: LimitKind, counters: &Counters, now: Timestamp) -> Self {
        let w = counters.window(kind);
        UsageRecord::Counter {
            bucket: bucket.to_owned(),
            kind: kind.as_str().to_owned(),
            window_start_ms: w.start_at(now).as_unix_ms(),
            used: w.used_at(now),
        }
    }

    /// Usage a key added at `now` (settled requests).
    pub fn usage(key_id: &str, now: Timestamp, added: UsageTotals) -> Self {
        UsageRecord::Usage {
            key_id: key_id.to_owned(),
            month_start_ms: Period::Month.start(now).as_unix_ms(),
            requests: added.requests,
            input_tokens: added.input_tokens,
            output_tokens: added.output_tokens,
            spend_micros: added.spend_micros,
        }
    }
}

/// A key's usage in one month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Micro-dollars.
    pub spend_micros: u64,
}

impl UsageTotals {
    pub fn add(&mut self, o: &UsageTotals) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.spend_micros = self.spend_micros.saturating_add(o.spend_micros);
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// A bucket's count in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    pub window_start_ms: u64,
    pub used: u64,
}

/// Everything `usage.log` describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageState {
    /// By (bucket, kind as written). Kinds this version does not know are
    /// kept, so compaction doesn't lose a newer version's counters.
    pub counters: BTreeMap<(String, String), CounterState>,
    /// By (key id, month start in unix ms).
    pub usage: BTreeMap<(String, u64), UsageTotals>,
}

impl UsageState {
    pub fn apply(&mut self, r: &UsageRecord) {
        match r {
            UsageRecord::Counter {
                bucket,
                kind,
                window_start_ms,
                used,
            } => {
                let new = CounterState {
                    window_start_ms: *window_start_ms,
                    used: *used,
                };
                let slot = self.counters.entry((bucket.clone(), kind.clone()));
                let cur = slot.or_insert(new);
                if new.window_start_ms >= cur.window_start_ms {
                    *cur = new;
                }
            }
            UsageRecord::Usage {
                key_id,
                month_start_ms,
                requests,
                input_tokens,
                output_tokens,
                spend_micros,
            } => {
                self.usage
                    .entry((key_id.clone(), *month_start_ms))
                    .or_default()
                    .add(&UsageTotals {
                        requests: *requests,
                        input_tokens: *input_tokens,
                        output_tokens: *output_tokens,
                        spend_micros: *spend_micros,
                    });
            }
        }
    }

    /// The last recorded count of a bucket's window of `kind`.
    pub fn counter(&self, bucket: &str, kind: LimitKind) -> Option<CounterState> {
        self.counters
            .get(&(bucket.to_owned(), kind.as_str().to_owned()))
            .copied()
    }

    /// A bucket's [`Counters`] at `now`, with every recorded window that is
    /// still current restored (ended windows start again from zero).
    pub fn restore_counters(&self, bucket: &str, now: Timestamp) -> Counters {
        let mut c = Counters::new(now);
        for kind in KINDS {
            if let Some(s) = self.counter(bucket, kind) {
                if s.window_start_ms == c.window(kind).start().as_unix_ms() {
                    c.add(kind, s.used, now);
                }
            }
        }
        c
    }

    /// A key's usage in the calendar month (UTC) that contains `now`.
    pub fn month_to_date(&self, key_id: &str, now: Timestamp) -> UsageTotals {
        self.in_month(key_id, now)
    }

    /// A key's usage in the calendar month (UTC) that contains `at`.
    pub fn in_month(&self, key_id: &str, at: Timestamp) -> UsageTotals {
        let month = Period::Month.start(at).as_unix_ms();
        self.usage
            .get(&(key_id.to_owned(), month))
            .copied()
            .unwrap_or_default()
    }

    /// The records a compacted log holds: replaying them gives this state.
    pub fn snapshot(&self) -> impl Iterator<Item = UsageRecord> + '_ {
        let counters = self
            .counters
            .iter()
            .map(|((bucket, kind), s)| UsageRecord::Counter {
                bucket: bucket.clone(),
                kind: kind.clone(),
                window_start_ms: s.window_start_ms,
                used: s.used,
            });
        let usage = self
            .usage
            .iter()
            .map(|((key_id, month), t)| UsageRecord::Usage {
                key_id: key_id.clone(),
                month_start_ms: *month,
                requests: t.requests,
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                spend_micros: t.spend_micros,
            });
        counters.chain(usage)
    }
}

/// Reads `usage.log` without changing it (`keys list`, while a gateway may
/// be appending): a missing log is an empty state, an incomplete tail is
/// left alone.
pub fn read_usage(dir: &DataDir) -> Result<UsageState, StoreError> {
    let path = dir.usage_log();
    let replayed = frame::replay_file::<UsageRecord>(&path, Repair::ReadOnly)
        .map_err(StoreError::io(&path))?;
    let mut s = UsageState::default();
    for r in &replayed.records {
        s.apply(r);
    }
    Ok(s)
}
