//! Compiled policies, and resolving the set that applies to one actor.
//!
//! # How policies combine
//!
//! A policy applies to an actor when every field of its `actor_scope`
//! equals the actor's (`actor_scope: {}` applies to everyone). When several
//! apply, they combine so that no policy can loosen another:
//!
//! - **Budgets: every limit applies.** Each budget is counted in a bucket
//!   of its own scope: a team policy's `requests_per_minute: 600` is 600 for
//!   the whole team, counted across all of the team's keys, while a key
//!   policy's limit counts that key alone. A request must fit in every
//!   bucket. Policies with the *same* scope share one bucket, and for each
//!   budget the strictest (smallest) value wins.
//! - **Models: every allow list must agree.** A model is allowed if every
//!   applicable policy that has a non-empty `allowed_models` matches it
//!   (globs), counting each policy's own `fallback_model` as allowed by that
//!   policy. A policy with no list does not restrict models.
//! - **Fallback: the most specific policy wins.** If the requested model is
//!   not allowed, the `fallback_model` of the most specific applicable
//!   policy that has one is served instead, provided every allow list
//!   accepts it; otherwise the request is denied.
//! - **Tools: deny wins.** A tool is denied if any applicable policy's
//!   `denied` matches it, or if any applicable policy with a non-empty
//!   `allowed` list does not match it.
//! - **Audit: the most private prompt setting, the most complete metadata.**
//!   `log_prompts` is the least revealing value among the policies that set
//!   it (`none` < `metadata_only` < `full`; default `metadata_only`), since
//!   "don't keep prompts" is usually a legal obligation. `log_tool_calls`
//!   and `log_policy_decisions` are on if any policy turns them on.
//!
//! **Specificity**, from most to least specific: a scope naming a `key_id`;
//! else one naming an `app`; else `team` with `environment`; else `team`;
//! else `tenant`; else `environment`; else the empty scope. Between equal
//! ranks, the scope naming more fields is more specific, and then the
//! policy listed first in the config wins.

use crate::config::{
    ActorScope, AuditSpec, OnDeniedToolCall, PolicyEntry, PromptLogging, ToolScope,
};
use crate::glob::Patterns;
use crate::identity::Actor;
use crate::tools::ToolVerdict;

/// Budget limits of one bucket. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub monthly_spend_micros: Option<u64>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// Strictest of both, per budget.
    pub fn tighten(&mut self, other: &Limits) {
        fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        self.requests_per_minute = min(self.requests_per_minute, other.requests_per_minute);
        self.tokens_per_minute = min(self.tokens_per_minute, other.tokens_per_minute);
        self.tokens_per_day = min(self.tokens_per_day, other.tokens_per_day);
        self.monthly_spend_micros = min(self.monthly_spend_micros, other.monthly_spend_micros);
    }

    pub fn limits_tokens(&self) -> bool {
        self.tokens_per_minute.is_some() || self.tokens_per_day.is_some()
    }
}

/// Rank used to pick the fallback model; larger is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    rank: u8,
    fields: u8,
}

impl Specificity {
    pub fn of(scope: &ActorScope) -> Self {
        let rank = if scope.key_id.is_some() {
            6
        } else if scope.app.is_some() {
            5
        } else if scope.team.is_some() && scope.environment.is_some() {
            4
        } else if scope.team.is_some() {
            3
        } else if scope.tenant.is_some() {
            2
        } else if scope.environment.is_some() {
            1
        } else {
            0
        };
        let fields = [
            &scope.team,
            &scope.tenant,
            &scope.environment,
            &scope.app,
            &scope.key_id,
        ]
        .iter()
        .filter(|f| f.is_some())
        .count() as u8;
        Specificity { rank, fields }
    }
}

/// One compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub scope: ActorScope,
    /// Canonical text of the scope (`team=a,environment=b`), naming its
    /// budget bucket; hash it with [`crate::owner_shard`].
    pub scope_key: String,
    pub specificity: Specificity,
    pub allowed_models: Patterns,
    pub fallback_model: Option<String>,
    pub limits: Limits,
    pub tools_allowed: Patterns,
    pub tools_denied: Patterns,
    /// Empty: any scope.
    pub tool_scopes: Vec<ToolScope>,
    pub on_denied_tool_call: Option<OnDeniedToolCall>,
    pub audit: AuditSpec,
    pub guardrails: crate::guardrails::GuardrailAttach,
    /// Its word on the response cache, its time read at compile.
    pub cache: crate::config::CacheWord,
}

impl Policy {
    pub fn applies_to(&self, actor: &Actor) -> bool {
        fn ok(want: &Option<String>, have: Option<&str>) -> bool {
            match want {
                None => true,
                Some(w) => have == Some(w.as_str()),
            }
        }
        let s = &self.scope;
        ok(&s.key_id, Some(&actor.key_id))
            && ok(&s.team, actor.team.as_deref())
            && ok(&s.tenant, actor.tenant.as_deref())
            && ok(&s.environment, actor.environment.as_deref())
            && ok(&s.app, actor.app.as_deref())
    }

    /// Allowed by this policy alone: no list, or the list matches, or it is
    /// this policy's fallback.
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty()
            || self.allowed_models.matches(model)
            || self.fallback_model.as_deref() == Some(model)
    }
}

fn scope_key(scope: &ActorScope) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("key_id", &scope.key_id),
        ("tenant", &scope.tenant),
        ("team", &scope.team),
        ("app", &scope.app),
        ("environment", &scope.environment),
    ] {
        if let Some(v) = value {
            parts.push(format!("{name}={v}"));
        }
    }
    if parts.is_empty() {
        "*".to_owned()
    } else {
        parts.join(",")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{policy}: actor_scope.{field} is empty")]
    EmptyScopeField { policy: String, field: &'static str },
    #[error("{policy}: fallback_model `{model}` must be a model name, not a glob")]
    FallbackIsGlob { policy: String, model: String },
    #[error("two policies are named `{0}`")]
    DuplicateName(String),
    #[error("{policy}: cache.ttl `{ttl}`: a duration above 0 and at most 30 days (like 10m)")]
    CacheTtl { policy: String, ttl: String },
}

/// The longest a policy may have answers kept.
const MAX_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A policy's `cache:` as it applies.
fn cache_word(
    policy: &str,
    spec: Option<&crate::config::CacheOptIn>,
) -> Result<crate::config::CacheWord, PolicyError> {
    use crate::config::{CacheOptIn, CacheWord};
    Ok(match spec {
        None => CacheWord::Silent,
        Some(CacheOptIn::Switch(false)) => CacheWord::Out,
        Some(CacheOptIn::Switch(true)) => CacheWord::In {
            ttl: None,
            scope: Default::default(),
        },
        Some(CacheOptIn::Settings(s)) => {
            let ttl = match &s.ttl {
                None => None,
                Some(t) => match humantime::parse_duration(t.trim()) {
                    Ok(d) if !d.is_zero() && d <= MAX_CACHE_TTL => Some(d),
                    _ => {
                        return Err(PolicyError::CacheTtl {
                            policy: policy.to_owned(),
                            ttl: t.clone(),
                        })
                    }
                },
            };
            CacheWord::In {
                ttl,
                scope: s.scope,
            }
        }
    })
}

/// Every policy of the config, compiled. Cheap to clone per shard.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    pub fn compile(entries: &[PolicyEntry]) -> Result<Self, PolicyError> {
        let mut policies: Vec<Policy> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let spec = &entry.ai_runtime_policy;
            let name = spec.name.clone().unwrap_or_else(|| format!("policy[{i}]"));
            if policies.iter().any(|p| p.name == name) {
                return Err(PolicyError::DuplicateName(name));
            }
            let s = &spec.actor_scope;
            for (field, value) in [
                ("team", &s.team),
                ("tenant", &s.tenant),
                ("environment", &s.environment),
                ("app", &s.app),
                ("key_id", &s.key_id),
            ] {
                if value.as_deref().is_some_and(str::is_empty) {
                    return Err(PolicyError::EmptyScopeField {
                        policy: name,
                        field,
                    });
                }
            }
            let access = spec.model_access.clone().unwrap_or_default();
            if let Some(f) = &access.fallback_model {
                if f.contains(['*', '?']) || f.is_empty() {
                    return Err(PolicyError::FallbackIsGlob {
                        policy: name,
                        model: f.clone(),
                    });
                }
            }
            let budgets = spec.budgets.clone().unwrap_or_default();
            let tools = spec.tools.clone().unwrap_or_default();
            policies.push(Policy {
                scope_key: scope_key(s),
                specificity: Specificity::of(s),
                scope: s.clone(),
                allowed_models: Patterns::new(&access.allowed_models),
                fallback_model: access.fallback_model,
                limits: Limits {
                    requests_per_minute: budgets.requests_per_minute,
                    tokens_per_minute: budgets.tokens_per_minute,
                    tokens_per_day: budgets.tokens_per_day,
                    monthly_spend_micros: budgets.monthly_spend_usd.map(|u| u.micros()),
                },
                tools_allowed: Patterns::new(&tools.allowed),
                tools_denied: Patterns::new(&tools.denied),
                tool_scopes: tools.scopes,
                on_denied_tool_call: tools.on_denied_tool_call,
                audit: spec.audit.unwrap_or_default(),
                guardrails: spec.guardrails.clone().unwrap_or_default(),
                cache: cache_word(&name, spec.cache.as_ref())?,
                name,
            });
        }
        Ok(PolicySet { policies })
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policies that apply to `actor`, combined as the module docs say.
    /// Depends only on the actor, so core may cache it per key id until the
    /// next config reload.
    pub fn resolve(&self, actor: &Actor) -> Resolved<'_> {
        let mut applicable: Vec<&Policy> = self
            .policies
            .iter()
            .filter(|p| p.applies_to(actor))
            .collect();
        // Stable: equal specificity keeps config order.
        applicable.sort_by_key(|p| std::cmp::Reverse(p.specificity));
        let mut buckets: Vec<Bucket<'_>> = Vec::new();
        for p in &applicable {
            if p.limits.is_unlimited() {
                continue;
            }
            match buckets.iter_mut().find(|b| b.scope_key == p.scope_key) {
                Some(b) => b.limits.tighten(&p.limits),
                None => buckets.push(Bucket {
                    scope_key: &p.scope_key,
                    limits: p.limits,
                }),
            }
        }
        let mut audit = EffectiveAudit::default();
        let mut prompts: Option<PromptLogging> = None;
        for p in &applicable {
            if let Some(l) = p.audit.log_prompts {
                prompts = Some(prompts.map_or(l, |cur| cur.min(l)));
            }
            audit.log_tool_calls |= p.audit.log_tool_calls.unwrap_or(false);
            audit.log_policy_decisions |= p.audit.log_policy_decisions.unwrap_or(false);
        }
        audit.log_prompts = prompts.unwrap_or_default();
        Resolved {
            applicable,
            buckets,
            audit,
        }
    }
}

/// A budget bucket: the counters of one scope, and its combined limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket<'a> {
    /// Names the counters; core keys its counter tables by this and routes
    /// to `owner_shard(scope_key, shards)`.
    pub scope_key: &'a str,
    pub limits: Limits,
}

/// Audit settings after combination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EffectiveAudit {
    pub log_prompts: PromptLogging,
    pub log_tool_calls: bool,
    pub log_policy_decisions: bool,
}

/// The policies that apply to one actor, most specific first.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    applicable: Vec<&'a Policy>,
    buckets: Vec<Bucket<'a>>,
    audit: EffectiveAudit,
}

impl<'a> Resolved<'a> {
    /// Most specific first.
    pub fn policies(&self) -> &[&'a Policy] {
        &self.applicable
    }

    /// Budget buckets; `decide` takes counters in this order.
    pub fn buckets(&self) -> &[Bucket<'a>] {
        &self.buckets
    }

    pub fn audit(&self) -> EffectiveAudit {
        self.audit
    }

    /// The names of the checks to run on `stage`: every one an applicable
    /// policy attaches (each once, most specific policy's first).
    pub fn guardrails(&self, stage: crate::guardrails::Stage) -> Vec<&'a str> {
        use crate::guardrails::Stage;
        let mut names: Vec<&'a str> = Vec::new();
        for p in &self.applicable {
            let list = match stage {
                Stage::Input => &p.guardrails.input,
                Stage::Output => &p.guardrails.output,
                Stage::ToolCalls => &p.guardrails.tool_calls,
            };
            for n in list {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
        names
    }

    /// The applicable policies' word on the response cache: any `false`
    /// keeps the caller out; else the most specific opt-in, if any.
    pub fn cache(&self) -> crate::config::CacheWord {
        use crate::config::CacheWord;
        let mut word = CacheWord::Silent;
        for p in &self.applicable {
            match p.cache {
                CacheWord::Out => return CacheWord::Out,
                opt_in @ CacheWord::In { .. } if word == CacheWord::Silent => word = opt_in,
                _ => {}
            }
        }
        word
    }

    /// Whether any applicable policy attaches a check to any stage.
    pub fn has_guardrails(&self) -> bool {
        self.applicable.iter().any(|p| {
            let g = &p.guardrails;
            !(g.input.is_empty() && g.output.is_empty() && g.tool_calls.is_empty())
        })
    }

    /// True if some bucket limits tokens. Core estimates prompt tokens
    /// (`estimate_prompt_tokens`, which tokenizes) only when this is true,
    /// and passes 0 otherwise.
    pub fn needs_token_estimate(&self) -> bool {
        self.buckets.iter().any(|b| b.limits.limits_tokens())
    }

    /// Allowed by every applicable policy.
    pub fn model_allowed(&self, model: &str) -> bool {
        self.applicable.iter().all(|p| p.allows_model(model))
    }

    /// Fallback of the most specific policy that names one.
    pub fn fallback_model(&self) -> Option<&'a str> {
        self.applicable
            .iter()
            .find_map(|p| p.fallback_model.as_deref())
    }

    /// The model to serve and whether it is the fallback; None if neither
    /// the requested model nor the fallback is allowed.
    pub fn choose_model<'m>(&self, requested: &'m str) -> Option<(&'m str, bool)>
    where
        'a: 'm,
    {
        if self.model_allowed(requested) {
            return Some((requested, false));
        }
        let fallback = self.fallback_model()?;
        self.model_allowed(fallback).then_some((fallback, true))
    }

    /// True if `tool` may be called: no policy denies it, and every policy
    /// with an allow list allows it.
    pub fn tool_allowed(&self, tool: &str) -> bool {
        self.applicable.iter().all(|p| {
            !p.tools_denied.matches(tool)
                && (p.tools_allowed.is_empty() || p.tools_allowed.matches(tool))
        })
    }

    /// The verdict on calling `tool` (an exposed name), of scope `scope`
    /// (`None`: unknown, which counts as `write`), naming the policy and
    /// rule that refused it. Deny wins; then every allow list and scope
    /// list must accept it.
    pub fn decide_tool(&self, tool: &str, scope: Option<ToolScope>) -> ToolVerdict<'a> {
        crate::tools::decide(&self.applicable, tool, scope)
    }

    /// The verdict on a tool by name alone (allow and deny lists): for the
    /// tools a model calls, which are the client's own functions and have
    /// no scope the gateway could know.
    pub fn decide_tool_name(&self, tool: &str) -> ToolVerdict<'a> {
        crate::tools::decide_with(&self.applicable, tool, None)
    }

    /// Whether any applicable policy restricts tools at all.
    pub fn has_tool_rules(&self) -> bool {
        self.applicable.iter().any(|p| {
            !p.tools_allowed.is_empty() || !p.tools_denied.is_empty() || !p.tool_scopes.is_empty()
        })
    }

    /// What to do with a denied tool call in a model's answer: the most
    /// specific policy that says wins; `refuse` by default.
    pub fn on_denied_tool_call(&self) -> OnDeniedToolCall {
        self.applicable
            .iter()
            .find_map(|p| p.on_denied_tool_call)
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
pub(crate) mod tests;
