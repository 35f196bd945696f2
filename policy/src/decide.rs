//! The decision: may this request go upstream, to which model, holding
//! what reservation.

use crate::counters::{Counters, LimitKind, Reservation};
use crate::policy::{Limits, Resolved};
use crate::window::{format_reset, Timestamp};

/// Output tokens reserved when the request sets no `max_tokens` /
/// `max_completion_tokens`. Settlement releases what is not used.
pub const DEFAULT_OUTPUT_RESERVATION: u64 = 4096;

/// The facts of a request that policy looks at, extracted by core in one
/// pass over the body.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub model: &'a str,
    /// From `estimate_prompt_tokens` when
    /// [`Resolved::needs_token_estimate`], else 0.
    pub estimated_prompt_tokens: u64,
    pub max_output_tokens: Option<u64>,
    pub tool_names: &'a [&'a str],
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    #[error("model `{model}` is not allowed for this key")]
    ModelNotAllowed { model: String },
    #[error("tool `{tool}` is not allowed for this key")]
    ToolDenied { tool: String },
    #[error("rate limit reached for {kind} (limit {limit}); retry in {retry_after_ms} ms")]
    RateLimited {
        kind: LimitKind,
        limit: u64,
        retry_after_ms: u64,
    },
    #[error(
        "budget exhausted: {kind} (limit {limit}, used {used}); resets in {retry_after_ms} ms"
    )]
    BudgetExhausted {
        kind: LimitKind,
        limit: u64,
        used: u64,
        retry_after_ms: u64,
    },
}

impl DenyReason {
    /// 403 for access rules, 429 for limits and budgets.
    pub fn http_status(&self) -> u16 {
        match self {
            DenyReason::ModelNotAllowed { .. } | DenyReason::ToolDenied { .. } => 403,
            DenyReason::RateLimited { .. } | DenyReason::BudgetExhausted { .. } => 429,
        }
    }

    /// Low-cardinality label for metrics and the error `code` field.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::ModelNotAllowed { .. } => "model_not_allowed",
            DenyReason::ToolDenied { .. } => "tool_not_allowed",
            DenyReason::RateLimited { .. } => "rate_limit_exceeded",
            DenyReason::BudgetExhausted { .. } => "insufficient_quota",
        }
    }

    /// Seconds for a `retry-after` header (rounded up), for 429s.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            DenyReason::RateLimited { retry_after_ms, .. }
            | DenyReason::BudgetExhausted { retry_after_ms, .. } => {
                Some(retry_after_ms.div_ceil(1000))
            }
            _ => None,
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow {
        /// The model to send upstream.
        model: &'a str,
        /// True if `model` is the fallback rather than the requested one.
        fell_back: bool,
        /// To commit on the owner (or take from a lease) and settle later.
        reservation: Reservation,
    },
    Deny(DenyReason),
}

/// Decides one request. `counters[i]` are the counters of
/// `resolved.buckets()[i]` (a missing entry counts as unused). Order of
/// checks: model (403), tools (403), then every budget of every bucket
/// (429). Among several exceeded limits the one that resets last is
/// reported, since retrying before then cannot succeed.
///
/// Pure and allocation-free on the allow path. It does not change the
/// counters: the caller commits the reservation, on the same shard with no
/// await in between.
pub fn decide<'a>(
    resolved: &Resolved<'a>,
    facts: &RequestFacts<'a>,
    counters: &[Counters],
    now: Timestamp,
) -> Decision<'a> {
    let Some((model, fell_back)) = resolved.choose_model(facts.model) else {
        return Decision::Deny(DenyReason::ModelNotAllowed {
            model: facts.model.to_owned(),
        });
    };
    if let Some(tool) = facts.tool_names.iter().find(|t| !resolved.tool_allowed(t)) {
        return Decision::Deny(DenyReason::ToolDenied {
            tool: (*tool).to_owned(),
        });
    }
    let reservation = Reservation::new(
        facts.estimated_prompt_tokens,
        facts
            .max_output_tokens
            .unwrap_or(DEFAULT_OUTPUT_RESERVATION),
        now,
    );
    // Built only if some bucket has no counters yet: computing window starts
    // (calendar month included) is not free on the hot path.
    let fresh = std::cell::OnceCell::new();
    let mut worst: Option<DenyReason> = None;
    for (i, bucket) in resolved.buckets().iter().enumerate() {
        let c = counters
            .get(i)
            .unwrap_or_else(|| fresh.get_or_init(|| Counters::new(now)));
        if let Some(reason) = check_bucket(&bucket.limits, c, &reservation, now) {
            let later = match (&worst, &reason) {
                (None, _) => true,
                (Some(w), r) => retry_ms(r) > retry_ms(w),
            };
            if later {
                worst = Some(reason);
            }
        }
    }
    match worst {
        Some(reason) => Decision::Deny(reason),
        None => Decision::Allow {
            model,
            fell_back,
            reservation,
        },
    }
}

fn retry_ms(r: &DenyReason) -> u64 {
    match r {
        DenyReason::RateLimited { retry_after_ms, .. }
        | DenyReason::BudgetExhausted { retry_after_ms, .. } => *retry_after_ms,
        _ => 0,
    }
}

fn check_bucket(
    limits: &Limits,
    c: &Counters,
    r: &Reservation,
    now: Timestamp,
) -> Option<DenyReason> {
    let mut worst: Option<DenyReason> = None;
    let mut consider = |reason: DenyReason| {
        if worst
            .as_ref()
            .is_none_or(|w| retry_ms(&reason) > retry_ms(w))
        {
            worst = Some(reason);
        }
    };
    let checks = [
        (
            LimitKind::RequestsPerMinute,
            limits.requests_per_minute,
            r.requests,
        ),
        (
            LimitKind::TokensPerMinute,
            limits.tokens_per_minute,
            r.tokens(),
        ),
        (LimitKind::TokensPerDay, limits.tokens_per_day, r.tokens()),
    ];
    for (kind, limit, want) in checks {
        let Some(limit) = limit else { continue };
        let used = c.used(kind, now);
        if used.saturating_add(want) > limit {
            let retry_after_ms = c.reset_in_ms(kind, now);
            consider(if kind == LimitKind::TokensPerDay {
                DenyReason::BudgetExhausted {
                    kind,
                    limit,
                    used,
                    retry_after_ms,
                }
            } else {
                DenyReason::RateLimited {
                    kind,
                    limit,
                    retry_after_ms,
                }
            });
        }
    }
    if let Some(limit) = limits.monthly_spend_micros {
        let kind = LimitKind::MonthlySpend;
        let used = c.used(kind, now);
        if used >= limit {
            consider(DenyReason::BudgetExhausted {
                kind,
                limit,
                used,
                retry_after_ms: c.reset_in_ms(kind, now),
            });
        }
    }
    worst
}

/// One `limit / remaining / reset` triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderGroup {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// OpenAI-style rate-limit headers, for allowed and denied responses alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub requests: Option<HeaderGroup>,
    pub tokens: Option<HeaderGroup>,
}

impl RateLimitHeaders {
    /// From the counters as they stand at `now` (after committing an allowed
    /// request's reservation). Across buckets, the one with the least
    /// remaining is reported. Tokens report `tokens_per_minute`, or
    /// `tokens_per_day` if no bucket has a per-minute limit.
    pub fn compute(resolved: &Resolved<'_>, counters: &[Counters], now: Timestamp) -> Self {
        let fresh = std::cell::OnceCell::new();
        let pick = |kind: LimitKind, limit_of: fn(&Limits) -> Option<u64>| {
            let mut best: Option<HeaderGroup> = None;
            for (i, b) in resolved.buckets().iter().enumerate() {
                let Some(limit) = limit_of(&b.limits) else {
                    continue;
                };
                let c = counters
                    .get(i)
                    .unwrap_or_else(|| fresh.get_or_init(|| Counters::new(now)));
                let g = HeaderGroup {
                    limit,
                    remaining: limit.saturating_sub(c.used(kind, now)),
                    reset_ms: c.reset_in_ms(kind, now),
                };
                if best.is_none_or(|b| g.remaining < b.remaining) {
                    best = Some(g);
                }
            }
            best
        };
        RateLimitHeaders {
            requests: pick(LimitKind::RequestsPerMinute, |l| l.requests_per_minute),
            tokens: pick(LimitKind::TokensPerMinute, |l| l.tokens_per_minute)
                .or_else(|| pick(LimitKind::TokensPerDay, |l| l.tokens_per_day)),
        }
    }

    /// `(name, value)` pairs, requests first; absent groups are omitted.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let count = |n: u64| itoa::Buffer::new().format(n).to_owned();
        let mut out = Vec::with_capacity(6);
        if let Some(g) = self.requests {
            out.push(("x-ratelimit-limit-requests", count(g.limit)));
            out.push(("x-ratelimit-remaining-requests", count(g.remaining)));
            out.push(("x-ratelimit-reset-requests", format_reset(g.reset_ms)));
        }
        if let Some(g) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", count(g.limit)));
            out.push(("x-ratelimit-remaining-tokens", count(g.remaining)));
            out.push(("x-ratelimit-reset-tokens", format_reset(g.reset_ms)));
        }
        out
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
