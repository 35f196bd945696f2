//! `policies:` and `guardrails:`: checked to compile together before any
//! shard starts, so a policy that does not compile stops the load instead
//! of leaving a shard open to everyone.

use super::guardrails::WebhookConfig;
use super::{field, ConfigError};
use shardgate_policy::guardrails::{GuardrailSpec, Guardrails};
use shardgate_policy::{PolicyEntry, PolicySet};

/// The compiled guardrails and each check's webhook, by check index.
pub(super) fn validate(
    policies: &[PolicyEntry],
    guardrails: &[GuardrailSpec],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Guardrails, Vec<Option<WebhookConfig>>), ConfigError> {
    let policy_set = PolicySet::compile(policies).map_err(|e| field("policies", e.to_string()))?;
    let guardrails =
        Guardrails::compile(guardrails).map_err(|e| field("guardrails", e.to_string()))?;
    guardrails
        .verify(&policy_set)
        .map_err(|e| field("policies", e.to_string()))?;
    let webhooks = super::guardrails::webhooks(&guardrails, env)?;
    Ok((guardrails, webhooks))
}
