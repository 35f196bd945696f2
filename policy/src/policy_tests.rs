use super::*;
use crate::config::PolicyEntry;
use crate::ActorFields;

/// The vendor-neutral example, verbatim apart from the leading `- `.
pub(crate) const SEED_YAML: &str = "
- ai_runtime_policy:
    actor_scope:
      team: support-platform
      environment: production
    model_access:
      allowed_models:
        - gpt-4o
        - claude-sonnet-4
      fallback_model: gpt-4o-mini
    budgets:
      requests_per_minute: 600
      tokens_per_day: 2000000
      monthly_spend_usd: 5000
    tools:
      allowed:
        - billing.read_renewal_status
        - ticket.create_case
      denied:
        - billing.update_payment_method
        - account.delete_user
    audit:
      log_prompts: metadata_only
      log_tool_calls: true
      log_policy_decisions: true
";

pub(crate) fn actor(team: &str, env: &str) -> Actor {
    Actor::new(ActorFields {
        key_id: "sg-AAAAAAAA".into(),
        team: Some(team.into()),
        tenant: Some("acme".into()),
        app: Some("helpdesk".into()),
        environment: Some(env.into()),
    })
}

fn set(yaml: &str) -> PolicySet {
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(yaml).unwrap();
    PolicySet::compile(&entries).unwrap()
}

#[test]
fn seed_example_deserializes() {
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(SEED_YAML).unwrap();
    assert_eq!(entries.len(), 1);
    let p = &entries[0].ai_runtime_policy;
    assert_eq!(p.actor_scope.team.as_deref(), Some("support-platform"));
    let b = p.budgets.as_ref().unwrap();
    assert_eq!(b.requests_per_minute, Some(600));
    assert_eq!(b.tokens_per_day, Some(2_000_000));
    assert_eq!(b.monthly_spend_usd.unwrap().micros(), 5_000_000_000);
    assert_eq!(
        p.audit.unwrap().log_prompts,
        Some(PromptLogging::MetadataOnly)
    );
    let s = PolicySet::compile(&entries).unwrap();
    assert_eq!(s.policies()[0].name, "policy[0]");
    assert_eq!(
        s.policies()[0].scope_key,
        "team=support-platform,environment=production"
    );

    // The same from JSON.
    let json = serde_json::json!([{ "ai_runtime_policy": {
        "actor_scope": { "team": "support-platform", "environment": "production" },
        "budgets": { "monthly_spend_usd": "5000.50" }
    }}]);
    let entries: Vec<PolicyEntry> = serde_json::from_value(json).unwrap();
    let b = entries[0].ai_runtime_policy.budgets.as_ref().unwrap();
    assert_eq!(b.monthly_spend_usd.unwrap().micros(), 5_000_500_000);
}

#[test]
fn unknown_fields_are_errors() {
    let typo = SEED_YAML.replace("tokens_per_day", "tokens_per_dya");
    assert!(serde_yaml_ng::from_str::<Vec<PolicyEntry>>(&typo).is_err());
    let no_scope = "- ai_runtime_policy:\n    budgets: {requests_per_minute: 1}\n";
    assert!(serde_yaml_ng::from_str::<Vec<PolicyEntry>>(no_scope).is_err());
    let bad_level = SEED_YAML.replace("metadata_only", "everything");
    assert!(serde_yaml_ng::from_str::<Vec<PolicyEntry>>(&bad_level).is_err());
}

#[test]
fn compile_errors() {
    let glob_fallback =
        "- ai_runtime_policy:\n    actor_scope: {}\n    model_access: {fallback_model: 'gpt-*'}\n";
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(glob_fallback).unwrap();
    assert!(matches!(
        PolicySet::compile(&entries),
        Err(PolicyError::FallbackIsGlob { .. })
    ));
    let empty = "- ai_runtime_policy:\n    actor_scope: {team: ''}\n";
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(empty).unwrap();
    assert!(matches!(
        PolicySet::compile(&entries),
        Err(PolicyError::EmptyScopeField { .. })
    ));
    let dup = "- ai_runtime_policy: {name: a, actor_scope: {}}\n- ai_runtime_policy: {name: a, actor_scope: {}}\n";
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(dup).unwrap();
    assert!(matches!(
        PolicySet::compile(&entries),
        Err(PolicyError::DuplicateName(_))
    ));
}

#[test]
fn scope_matching() {
    let s = set(SEED_YAML);
    assert_eq!(
        s.resolve(&actor("support-platform", "production"))
            .policies()
            .len(),
        1
    );
    assert_eq!(
        s.resolve(&actor("support-platform", "staging"))
            .policies()
            .len(),
        0
    );
    assert_eq!(s.resolve(&actor("sales", "production")).policies().len(), 0);
    let no_env = Actor::new(ActorFields {
        environment: None,
        ..(*actor("support-platform", "production")).clone()
    });
    assert_eq!(s.resolve(&no_env).policies().len(), 0);
}

#[test]
fn specificity_order() {
    let scopes = [
        ActorScope {
            environment: Some("p".into()),
            ..Default::default()
        },
        ActorScope {
            tenant: Some("t".into()),
            ..Default::default()
        },
        ActorScope {
            team: Some("t".into()),
            ..Default::default()
        },
        ActorScope {
            team: Some("t".into()),
            environment: Some("p".into()),
            ..Default::default()
        },
        ActorScope {
            app: Some("a".into()),
            ..Default::default()
        },
        ActorScope {
            key_id: Some("k".into()),
            ..Default::default()
        },
    ];
    let ranks: Vec<Specificity> = scopes.iter().map(Specificity::of).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
    assert!(Specificity::of(&ActorScope::default()) < ranks[0]);
    // More fields break ties within a rank.
    let team_tenant = ActorScope {
        team: Some("t".into()),
        tenant: Some("x".into()),
        ..Default::default()
    };
    assert!(Specificity::of(&team_tenant) > ranks[2]);
    assert!(Specificity::of(&team_tenant) < ranks[3]);
}

const LAYERED: &str = "
- ai_runtime_policy:
    name: tenant
    actor_scope: {tenant: acme}
    model_access:
      allowed_models: ['gpt-4o*', 'claude-*']
      fallback_model: claude-3-5-haiku
    budgets: {requests_per_minute: 1000, tokens_per_minute: 50000, monthly_spend_usd: 20000}
    tools:
      denied: ['*.delete_*']
    audit: {log_prompts: full, log_tool_calls: false}
- ai_runtime_policy:
    name: team
    actor_scope: {team: support-platform, environment: production}
    model_access:
      allowed_models: [gpt-4o, claude-sonnet-4]
      fallback_model: gpt-4o-mini
    budgets: {requests_per_minute: 600, tokens_per_day: 2000000}
    tools:
      allowed: ['billing.read_*', 'ticket.*']
      denied: [billing.update_payment_method]
    audit: {log_prompts: metadata_only, log_policy_decisions: true}
- ai_runtime_policy:
    name: team-strict
    actor_scope: {environment: production, team: support-platform}
    budgets: {requests_per_minute: 300, tokens_per_minute: 10000}
- ai_runtime_policy:
    name: key
    actor_scope: {key_id: sg-AAAAAAAA}
    budgets: {requests_per_minute: 5}
    tools:
      allowed: ['ticket.create_case', 'billing.read_renewal_status', 'ticket.delete_case']
";

#[test]
fn budgets_every_limit_applies_strictest_per_scope() {
    let s = set(LAYERED);
    let r = s.resolve(&actor("support-platform", "production"));
    let names: Vec<&str> = r.policies().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["key", "team", "team-strict", "tenant"]);
    let buckets = r.buckets();
    assert_eq!(buckets.len(), 3, "{buckets:?}");
    let key = buckets
        .iter()
        .find(|b| b.scope_key == "key_id=sg-AAAAAAAA")
        .unwrap();
    assert_eq!(key.limits.requests_per_minute, Some(5));
    let team = buckets
        .iter()
        .find(|b| b.scope_key == "team=support-platform,environment=production")
        .unwrap();
    // Same scope written in another field order: one bucket, strictest wins.
    assert_eq!(team.limits.requests_per_minute, Some(300));
    assert_eq!(team.limits.tokens_per_minute, Some(10_000));
    assert_eq!(team.limits.tokens_per_day, Some(2_000_000));
    let tenant = buckets
        .iter()
        .find(|b| b.scope_key == "tenant=acme")
        .unwrap();
    assert_eq!(tenant.limits.monthly_spend_micros, Some(20_000_000_000));
    assert!(r.needs_token_estimate());
}

#[test]
fn models_every_list_and_fallback_from_most_specific() {
    let s = set(LAYERED);
    let r = s.resolve(&actor("support-platform", "production"));
    assert_eq!(r.choose_model("gpt-4o"), Some(("gpt-4o", false)));
    assert_eq!(
        r.choose_model("claude-sonnet-4"),
        Some(("claude-sonnet-4", false))
    );
    // gpt-4o-2024-08-06 passes the tenant glob but not the team list.
    assert_eq!(
        r.choose_model("gpt-4o-2024-08-06"),
        Some(("gpt-4o-mini", true))
    );
    // The team fallback (most specific) is chosen over the tenant's, and the
    // tenant list (gpt-4o*) accepts it.
    assert_eq!(r.fallback_model(), Some("gpt-4o-mini"));
    assert_eq!(
        r.choose_model("gemini-2.5-pro"),
        Some(("gpt-4o-mini", true))
    );
    // In staging only the tenant policy applies: its own fallback.
    let r = s.resolve(&actor("support-platform", "staging"));
    assert_eq!(
        r.choose_model("gemini-2.5-pro"),
        Some(("claude-3-5-haiku", true))
    );
    assert_eq!(r.choose_model("gpt-4o-mini"), Some(("gpt-4o-mini", false)));
}

#[test]
fn fallback_must_pass_every_list() {
    let yaml = "
- ai_runtime_policy:
    actor_scope: {tenant: acme}
    model_access: {allowed_models: ['claude-*']}
- ai_runtime_policy:
    actor_scope: {team: support-platform}
    model_access: {allowed_models: [claude-sonnet-4], fallback_model: gpt-4o-mini}
";
    let s = set(yaml);
    let r = s.resolve(&actor("support-platform", "production"));
    assert_eq!(
        r.choose_model("claude-sonnet-4"),
        Some(("claude-sonnet-4", false))
    );
    assert_eq!(r.choose_model("gpt-4o"), None);
}

#[test]
fn tools_deny_wins_and_every_allow_list() {
    let s = set(LAYERED);
    let r = s.resolve(&actor("support-platform", "production"));
    assert!(r.tool_allowed("ticket.create_case"));
    assert!(r.tool_allowed("billing.read_renewal_status"));
    // Allowed by key and team lists but denied by the tenant glob.
    assert!(!r.tool_allowed("ticket.delete_case"));
    // Denied by the team (and not in the key's list either).
    assert!(!r.tool_allowed("billing.update_payment_method"));
    // Allowed by the team glob but not by the key's list.
    assert!(!r.tool_allowed("ticket.update_case"));
    // Without the key policy, the team glob suffices.
    let other_key = Actor::new(ActorFields {
        key_id: "sg-BBBBBBBB".into(),
        ..(*actor("support-platform", "production")).clone()
    });
    let r = s.resolve(&other_key);
    assert!(r.tool_allowed("ticket.update_case"));
    assert!(!r.tool_allowed("account.delete_user"));
    assert!(!r.tool_allowed("crm.lookup"));
}

#[test]
fn audit_combination() {
    let s = set(LAYERED);
    let a = s.resolve(&actor("support-platform", "production")).audit();
    assert_eq!(a.log_prompts, PromptLogging::MetadataOnly);
    assert!(a.log_policy_decisions);
    assert!(!a.log_tool_calls);
    let a = s.resolve(&actor("support-platform", "staging")).audit();
    assert_eq!(a.log_prompts, PromptLogging::Full);
    let outsider = Actor::new(ActorFields {
        tenant: Some("other".into()),
        ..(*actor("x", "y")).clone()
    });
    let a = s.resolve(&outsider).audit();
    assert_eq!(a, EffectiveAudit::default());
}

#[test]
fn a_policy_cache_word_is_read_at_compile_and_out_wins() {
    use crate::config::{CacheScope, CacheWord};
    let s = set("
- ai_runtime_policy: {name: in, actor_scope: {team: a}, cache: {ttl: 5m, scope: key}}
- ai_runtime_policy: {name: out, actor_scope: {team: a, app: x}, cache: false}
- ai_runtime_policy: {name: plain, actor_scope: {team: b}, cache: true}
");
    let actor = |team: &str, app: Option<&str>| {
        Actor::new(ActorFields {
            key_id: "k".into(),
            team: Some(team.into()),
            tenant: None,
            app: app.map(Into::into),
            environment: None,
        })
    };
    let five = Some(std::time::Duration::from_secs(300));
    assert_eq!(
        s.resolve(&actor("a", None)).cache(),
        CacheWord::In {
            ttl: five,
            scope: CacheScope::Key
        }
    );
    assert_eq!(s.resolve(&actor("a", Some("x"))).cache(), CacheWord::Out);
    assert_eq!(
        s.resolve(&actor("b", None)).cache(),
        CacheWord::In {
            ttl: None,
            scope: CacheScope::Tenant
        }
    );
    assert_eq!(s.resolve(&actor("c", None)).cache(), CacheWord::Silent);
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(
        "- ai_runtime_policy: {name: bad, actor_scope: {}, cache: {ttl: 0s}}",
    )
    .unwrap();
    assert!(matches!(
        PolicySet::compile(&entries),
        Err(PolicyError::CacheTtl { .. })
    ));
}
