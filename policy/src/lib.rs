//! Policy decisions for Shardgate: identity, model access, limits, budgets,
//! tool rules and pricing.
//!
//! **Must never:** do IO, read a clock (time is an argument: [`Timestamp`]
//! in unix milliseconds), hold an RNG (key randomness is an argument),
//! spawn or await, or use floats for money.
//!
//! **Invariants:** money is integer micro-dollars ([`Usd`]); windows are
//! fixed and aligned to UTC minute/day/calendar month ([`Window`]); an
//! owner shard never leases more than a window has left ([`lease`]), so
//! admitted requests never exceed a limit within a window; authentication
//! failures are indistinguishable ([`AuthError`]).
//!
//! One request, as core drives it:
//!
//! 1. [`parse_credential`] → [`KeyStore::authenticate`] → [`Actor`] (401 on
//!    [`AuthError`]).
//! 2. [`PolicySet::resolve`] → [`Resolved`] (cacheable per key id).
//! 3. If [`Resolved::needs_token_estimate`]: [`estimate_prompt_tokens`].
//! 4. [`decide`] with the counters of [`Resolved::buckets`] → [`Decision`]:
//!    `Deny` renders [`DenyReason::http_status`] plus
//!    [`RateLimitHeaders`]; `Allow` gives the model (maybe the fallback) and
//!    a [`Reservation`].
//! 5. Commit the reservation: on a bucket's owner shard
//!    ([`owner_shard`]) with [`LeaseManager::admit`], elsewhere with
//!    [`LocalQuota::try_take`].
//! 6. After the call: [`PricingTable::cost_micros`] →
//!    [`Settlement::from_usage`] → [`Counters::settle`] on the owner, or
//!    [`LocalQuota::settle`] on other shards.
//!
//! How several policies combine is documented on [`policy`].
#![forbid(unsafe_code)]

pub mod config;
pub mod counters;
pub mod decide;
pub mod glob;
pub mod guardrails;
pub mod identity;
pub mod lease;
pub mod money;
pub mod policy;
pub mod pricing;
pub mod tokens;
pub mod tools;
pub mod window;

pub use config::{
    ActorScope, AuditSpec, Budgets, CacheOptIn, CacheOptInSettings, CacheScope, CacheWord,
    ModelAccess, OnDeniedToolCall, PolicyEntry, PolicySpec, PriceSpec, PromptLogging, ToolRules,
    ToolScope,
};
pub use counters::{Counters, LimitKind, Reservation, Settlement};
pub use decide::{
    decide, Decision, DenyReason, HeaderGroup, RateLimitHeaders, RequestFacts,
    DEFAULT_OUTPUT_RESERVATION,
};
pub use glob::{Glob, Patterns};
pub use identity::{
    is_well_formed, issue_key, parse_credential, Actor, ActorFields, AuthError, IssuedKey, KeyHash,
    KeyOwner, KeyRecord, KeyStore, KeyStoreError, KEY_ID_LEN,
};
pub use lease::{
    owner_shard, same_window, Lease, LeaseManager, LocalQuota, Quota, QuotaSource, Take, ToOwner,
    Unlimited,
};
pub use money::{MoneyError, Usd};
pub use policy::{Bucket, EffectiveAudit, Limits, Policy, PolicyError, PolicySet, Resolved};
pub use pricing::{Price, PricingTable, DEFAULT_PRICES};
pub use tokens::{estimate_prompt_tokens, tokenizer_for_model, warm_up, Encoding, Tokenizer};
pub use tools::{ToolRule, ToolVerdict};
pub use window::{format_reset, Period, Timestamp, Window};
