//! Serde shapes of the policy section of the gateway config. YAML parsing
//! happens in core; these types only derive `Deserialize`, with
//! `deny_unknown_fields` everywhere so a typo is an error, not a silently
//! ignored rule.
//!
//! The chosen shape is a **list of `ai_runtime_policy` entries**, so the
//! vendor-neutral example reads verbatim, each entry prefixed with `- `:
//!
//! ```yaml
//! policies:
//!   - ai_runtime_policy:
//!       actor_scope:
//!         team: support-platform
//!         environment: production
//!       model_access:
//!         allowed_models:
//!           - gpt-4o
//!           - claude-sonnet-4
//!         fallback_model: gpt-4o-mini
//!       budgets:
//!         requests_per_minute: 600
//!         tokens_per_day: 2000000
//!         monthly_spend_usd: 5000
//!       tools:
//!         allowed:
//!           - billing.read_renewal_status
//!           - ticket.create_case
//!         denied:
//!           - billing.update_payment_method
//!           - account.delete_user
//!       audit:
//!         log_prompts: metadata_only
//!         log_tool_calls: true
//!         log_policy_decisions: true
//! ```
//!
//! Core owns the `policies:` key of its config; its value deserializes as
//! `Vec<PolicyEntry>` and goes to [`crate::PolicySet::compile`]. Every
//! section but `actor_scope` is optional; `actor_scope: {}` applies to
//! every key.

use serde::{Deserialize, Serialize};

use crate::money::Usd;

/// One list item: `- ai_runtime_policy: {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    pub ai_runtime_policy: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Optional label for audit records; defaults to `policy[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    pub actor_scope: ActorScope,
    #[serde(default)]
    pub model_access: Option<ModelAccess>,
    #[serde(default)]
    pub budgets: Option<Budgets>,
    #[serde(default)]
    pub tools: Option<ToolRules>,
    #[serde(default)]
    pub audit: Option<AuditSpec>,
    /// Checks (named in the config's `guardrails:`) on this actor's
    /// prompts, answers and tool calls.
    #[serde(default)]
    pub guardrails: Option<crate::guardrails::GuardrailAttach>,
    /// The response cache for this actor's requests: `false` keeps them
    /// out of it on every route; `true` (or `{ttl, scope}`) opts them in on
    /// routes without a `cache:` of their own.
    #[serde(default)]
    pub cache: Option<CacheOptIn>,
}

/// Whose requests share a response cache entry. An entry is never served
/// to a caller outside the scope it was stored under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheScope {
    /// Callers of one tenant (a key without a tenant: that key alone).
    #[default]
    Tenant,
    /// Callers of one team (a key without a team: that key alone).
    Team,
    /// One key.
    Key,
    /// Every caller: only for answers no caller's data went into.
    Global,
}

impl CacheScope {
    pub fn label(self) -> &'static str {
        match self {
            CacheScope::Tenant => "tenant",
            CacheScope::Team => "team",
            CacheScope::Key => "key",
            CacheScope::Global => "global",
        }
    }
}

/// What a caller's policies say of the response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheWord {
    /// Nothing: the route decides.
    Silent,
    /// Never from or into the cache.
    Out,
    /// Cached on routes without their own `cache:`, for `ttl` (the
    /// default when none) in `scope`.
    In {
        ttl: Option<std::time::Duration>,
        scope: CacheScope,
    },
}

/// A policy's word on the response cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CacheOptIn {
    Switch(bool),
    Settings(CacheOptInSettings),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOptInSettings {
    /// How long an answer is kept (`10m`); default 10 minutes.
    #[serde(default)]
    pub ttl: Option<String>,
    /// `tenant` (default), `team`, `key` or `global`.
    #[serde(default)]
    pub scope: CacheScope,
}

/// Which actors a policy applies to: every field given must equal the
/// actor's (exact, case-sensitive); absent fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorScope {
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAccess {
    /// Globs (`*`, `?`). Empty or absent: this policy does not restrict
    /// models.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Served instead of a model that is not allowed. Counts as allowed by
    /// the policy that names it.
    #[serde(default)]
    pub fallback_model: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Calendar month, UTC.
    #[serde(default)]
    pub monthly_spend_usd: Option<Usd>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRules {
    /// Globs. Non-empty: a tool must match one of them.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Globs. A tool matching one is denied, whatever `allowed` says.
    #[serde(default)]
    pub denied: Vec<String>,
    /// Non-empty: a tool must have one of these scopes (`[read]`: may read
    /// data but not modify it). A tool of unknown scope counts as `write`.
    #[serde(default)]
    pub scopes: Vec<ToolScope>,
    /// What happens to a denied tool call in a model's answer.
    #[serde(default)]
    pub on_denied_tool_call: Option<OnDeniedToolCall>,
}

/// What a tool may do, from the gateway's config or (untrusted) the
/// server's annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolScope {
    Read,
    Write,
}

impl ToolScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolScope::Read => "read",
            ToolScope::Write => "write",
        }
    }
}

/// What the gateway does with a tool call a model returned that the
/// caller's policy denies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDeniedToolCall {
    /// The answer becomes an error (403, or an error event in a stream).
    #[default]
    Refuse,
    /// The call is removed from the answer.
    Strip,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    #[serde(default)]
    pub log_prompts: Option<PromptLogging>,
    #[serde(default)]
    pub log_tool_calls: Option<bool>,
    #[serde(default)]
    pub log_policy_decisions: Option<bool>,
}

/// How much of a prompt the audit log may hold. Ordered from least to most
/// revealing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PromptLogging {
    None,
    #[default]
    MetadataOnly,
    Full,
}

/// A pricing override in config, USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// Exact model name, or a glob.
    pub model: String,
    pub input_per_million_usd: Usd,
    pub output_per_million_usd: Usd,
    /// Defaults to the input price (no caching discount).
    #[serde(default)]
    pub cached_input_per_million_usd: Option<Usd>,
    /// Tokens written to the prompt cache; defaults to the input price.
    #[serde(default)]
    pub cache_write_input_per_million_usd: Option<Usd>,
}
