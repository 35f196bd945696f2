use super::*;
use crate::config::PolicyEntry;
use crate::counters::Settlement;
use crate::policy::PolicySet;
use crate::window::Timestamp;

const YAML: &str = "
- ai_runtime_policy:
    actor_scope: {team: support-platform, environment: production}
    model_access:
      allowed_models: [gpt-4o, claude-sonnet-4]
      fallback_model: gpt-4o-mini
    budgets:
      requests_per_minute: 3
      tokens_per_minute: 10000
      tokens_per_day: 25000
      monthly_spend_usd: 1.5
    tools:
      allowed: [billing.read_renewal_status, ticket.create_case]
      denied: [billing.update_payment_method, account.delete_user]
";

fn set() -> PolicySet {
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(YAML).unwrap();
    PolicySet::compile(&entries).unwrap()
}

fn actor() -> crate::Actor {
    crate::policy::tests::actor("support-platform", "production")
}

// 2024-01-01T00:00:30Z
const T0: Timestamp = Timestamp(1_704_067_230_000);

fn facts<'a>(model: &'a str, tools: &'a [&'a str]) -> RequestFacts<'a> {
    RequestFacts {
        model,
        estimated_prompt_tokens: 1000,
        max_output_tokens: Some(500),
        tool_names: tools,
    }
}

#[test]
fn allow_fallback_and_access_denials() {
    let s = set();
    let r = s.resolve(&actor());
    let c = [Counters::new(T0)];
    match decide(&r, &facts("gpt-4o", &["ticket.create_case"]), &c, T0) {
        Decision::Allow {
            model,
            fell_back,
            reservation,
        } => {
            assert_eq!((model, fell_back), ("gpt-4o", false));
            assert_eq!(reservation.requests, 1);
            assert_eq!(reservation.tokens(), 1500);
        }
        d => panic!("{d:?}"),
    }
    match decide(&r, &facts("gemini-2.5-pro", &[]), &c, T0) {
        Decision::Allow {
            model, fell_back, ..
        } => assert_eq!((model, fell_back), ("gpt-4o-mini", true)),
        d => panic!("{d:?}"),
    }
    let d = decide(
        &r,
        &facts("gpt-4o", &["ticket.create_case", "account.delete_user"]),
        &c,
        T0,
    );
    let Decision::Deny(reason) = d else {
        panic!("{d:?}")
    };
    assert_eq!(
        reason,
        DenyReason::ToolDenied {
            tool: "account.delete_user".into()
        }
    );
    assert_eq!(reason.http_status(), 403);
    assert_eq!(reason.retry_after_secs(), None);
    let d = decide(&r, &facts("gpt-4o", &["crm.lookup"]), &c, T0);
    assert!(matches!(d, Decision::Deny(DenyReason::ToolDenied { .. })));

    // No fallback at all: a plain 403.
    let no_fallback = YAML.replace("      fallback_model: gpt-4o-mini\n", "");
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(&no_fallback).unwrap();
    let s2 = PolicySet::compile(&entries).unwrap();
    let r2 = s2.resolve(&actor());
    let Decision::Deny(reason) = decide(&r2, &facts("o3", &[]), &c, T0) else {
        panic!()
    };
    assert_eq!(reason, DenyReason::ModelNotAllowed { model: "o3".into() });
    assert_eq!(reason.http_status(), 403);
    assert_eq!(reason.code(), "model_not_allowed");
}

fn allow(d: Decision<'_>) -> Reservation {
    match d {
        Decision::Allow { reservation, .. } => reservation,
        d => panic!("{d:?}"),
    }
}

#[test]
fn requests_per_minute_then_reset() {
    let s = set();
    let r = s.resolve(&actor());
    let mut c = [Counters::new(T0)];
    let small = RequestFacts {
        estimated_prompt_tokens: 10,
        max_output_tokens: Some(10),
        ..facts("gpt-4o", &[])
    };
    for _ in 0..3 {
        let res = allow(decide(&r, &small, &c, T0));
        c[0].commit(&res, T0);
    }
    let Decision::Deny(reason) = decide(&r, &small, &c, T0) else {
        panic!()
    };
    assert_eq!(
        reason,
        DenyReason::RateLimited {
            kind: LimitKind::RequestsPerMinute,
            limit: 3,
            retry_after_ms: 30_000
        }
    );
    assert_eq!(reason.http_status(), 429);
    assert_eq!(reason.retry_after_secs(), Some(30));
    let h = RateLimitHeaders::compute(&r, &c, T0);
    assert_eq!(
        h.pairs(),
        vec![
            ("x-ratelimit-limit-requests", "3".to_owned()),
            ("x-ratelimit-remaining-requests", "0".to_owned()),
            ("x-ratelimit-reset-requests", "30s".to_owned()),
            ("x-ratelimit-limit-tokens", "10000".to_owned()),
            ("x-ratelimit-remaining-tokens", "9940".to_owned()),
            ("x-ratelimit-reset-tokens", "30s".to_owned()),
        ]
    );
    // Next minute: allowed again.
    let next = T0.plus_ms(30_000);
    assert!(matches!(
        decide(&r, &small, &c, next),
        Decision::Allow { .. }
    ));
    let h = RateLimitHeaders::compute(&r, &c, next);
    assert_eq!(h.requests.unwrap().remaining, 3);
    assert_eq!(h.requests.unwrap().reset_ms, 60_000);
}

#[test]
fn token_limits_minute_and_day() {
    let s = set();
    let r = s.resolve(&actor());
    let mut c = [Counters::new(T0)];
    let big = RequestFacts {
        estimated_prompt_tokens: 6000,
        max_output_tokens: Some(3000),
        ..facts("gpt-4o", &[])
    };
    let res = allow(decide(&r, &big, &c, T0));
    c[0].commit(&res, T0);
    let Decision::Deny(reason) = decide(&r, &big, &c, T0) else {
        panic!()
    };
    assert!(matches!(
        reason,
        DenyReason::RateLimited {
            kind: LimitKind::TokensPerMinute,
            ..
        }
    ));
    // Spread over minutes, the day budget (25k) runs out on the 3rd.
    let t1 = T0.plus_ms(60_000);
    let res = allow(decide(&r, &big, &c, t1));
    c[0].commit(&res, t1);
    let t2 = T0.plus_ms(120_000);
    let Decision::Deny(reason) = decide(&r, &big, &c, t2) else {
        panic!()
    };
    // Day budget exhausted: reported over the minute limit since it resets later.
    assert_eq!(
        reason,
        DenyReason::BudgetExhausted {
            kind: LimitKind::TokensPerDay,
            limit: 25_000,
            used: 18_000,
            retry_after_ms: 86_400_000 - 150_000,
        }
    );
    assert_eq!(reason.code(), "insufficient_quota");
    // Default output reservation when max tokens is absent.
    let no_max = RequestFacts {
        max_output_tokens: None,
        ..big
    };
    let res = Reservation::new(
        no_max.estimated_prompt_tokens,
        DEFAULT_OUTPUT_RESERVATION,
        t2,
    );
    assert_eq!(res.tokens(), 6000 + 4096);
}

#[test]
fn monthly_spend_blocks_when_used_up() {
    let s = set();
    let r = s.resolve(&actor());
    let mut c = [Counters::new(T0)];
    let f = RequestFacts {
        estimated_prompt_tokens: 10,
        max_output_tokens: Some(10),
        ..facts("gpt-4o", &[])
    };
    let res = allow(decide(&r, &f, &c, T0));
    c[0].commit(&res, T0);
    let settled = Settlement {
        tokens: 20,
        spend_micros: 1_500_000,
        estimated: false,
    };
    c[0].settle(&res, &settled, T0);
    let Decision::Deny(reason) = decide(&r, &f, &c, T0) else {
        panic!()
    };
    assert!(matches!(
        reason,
        DenyReason::BudgetExhausted {
            kind: LimitKind::MonthlySpend,
            limit: 1_500_000,
            used: 1_500_000,
            ..
        }
    ));
    // February 2024 starts 31 days minus 30 s later.
    let feb = Timestamp(1_706_745_600_000);
    assert!(matches!(decide(&r, &f, &c, feb), Decision::Allow { .. }));
}

#[test]
fn settlement_up_down_estimated_and_across_windows() {
    let mut c = Counters::new(T0);
    let r = Reservation::new(1000, 500, T0);
    c.commit(&r, T0);
    assert_eq!(c.used(LimitKind::TokensPerMinute, T0), 1500);
    // Down: 700 used, 800 released.
    let charged = c.settle(
        &r,
        &Settlement {
            tokens: 700,
            spend_micros: 42,
            estimated: false,
        },
        T0,
    );
    assert_eq!(charged, 700);
    assert_eq!(c.used(LimitKind::TokensPerMinute, T0), 700);
    assert_eq!(c.used(LimitKind::TokensPerDay, T0), 700);
    assert_eq!(c.used(LimitKind::MonthlySpend, T0), 42);
    assert_eq!(c.used(LimitKind::RequestsPerMinute, T0), 1);
    // Up: 1800 used against 1500 reserved.
    let r2 = Reservation::new(1000, 500, T0);
    c.commit(&r2, T0);
    c.settle(
        &r2,
        &Settlement {
            tokens: 1800,
            spend_micros: 0,
            estimated: false,
        },
        T0,
    );
    assert_eq!(c.used(LimitKind::TokensPerMinute, T0), 2500);
    // Estimated (cut stream): never released below the reservation.
    let r3 = Reservation::new(1000, 500, T0);
    c.commit(&r3, T0);
    let charged = c.settle(
        &r3,
        &Settlement {
            tokens: 300,
            spend_micros: 0,
            estimated: true,
        },
        T0,
    );
    assert_eq!(charged, 1500);
    assert_eq!(c.used(LimitKind::TokensPerMinute, T0), 4000);
    // Settled after the minute rolled over: the old minute is gone, only
    // the excess lands in the new one; the day still gets the exact delta.
    let r4 = Reservation::new(100, 100, T0);
    c.commit(&r4, T0);
    let later = T0.plus_ms(45_000);
    c.settle(
        &r4,
        &Settlement {
            tokens: 250,
            spend_micros: 0,
            estimated: false,
        },
        later,
    );
    assert_eq!(c.used(LimitKind::TokensPerMinute, later), 50);
    assert_eq!(c.used(LimitKind::TokensPerDay, later), 4000 + 250);
    // Never negative.
    let mut fresh = Counters::new(T0);
    fresh.settle(
        &r4,
        &Settlement {
            tokens: 0,
            spend_micros: 0,
            estimated: false,
        },
        T0,
    );
    assert_eq!(fresh.used(LimitKind::TokensPerDay, T0), 0);
}

#[test]
fn settlement_from_usage() {
    use shardgate_proto::openai::Usage;
    let r = Reservation::new(1000, 500, T0);
    let u = Usage {
        prompt_tokens: Some(900),
        completion_tokens: Some(100),
        ..Usage::default()
    };
    assert_eq!(
        Settlement::from_usage(&r, Some(&u), 7, false),
        Settlement {
            tokens: 1000,
            spend_micros: 7,
            estimated: false
        }
    );
    assert_eq!(
        Settlement::from_usage(&r, None, 0, false),
        Settlement {
            tokens: 1500,
            spend_micros: 0,
            estimated: true
        }
    );
    let cut = Usage {
        completion_tokens: Some(40),
        ..Usage::default()
    };
    assert_eq!(Settlement::from_usage(&r, Some(&cut), 0, true).tokens, 40);
}

#[test]
fn no_policy_means_allow_and_no_headers() {
    let s = set();
    let a = crate::Actor::new(crate::ActorFields {
        team: Some("other".into()),
        ..(*actor()).clone()
    });
    let r = s.resolve(&a);
    assert!(!r.needs_token_estimate());
    assert!(matches!(
        decide(&r, &facts("anything", &["x"]), &[], T0),
        Decision::Allow { .. }
    ));
    assert!(RateLimitHeaders::compute(&r, &[], T0).pairs().is_empty());
}
