use super::*;
use crate::config::{StoreConfig, StoreFsync};
use crate::store::Store;
use futures_lite::future::block_on;
use shardgate_policy::{issue_key, KeyOwner, KeyRecord, Period};

const MIN: &str = "listen: 127.0.0.1:0\nmodels: { demo: { targets: [ { provider: local, model: m } ] } }\nproviders: { local: { kind: mock } }\n";

const BODY: &[u8] =
    br#"{"model":"gpt-4o","messages":[{"role":"user","content":"How many tokens is this?"}]}"#;

/// One budget for everyone, keys off: `budgets` is the YAML flow mapping of
/// the policy's budgets.
fn budget(budgets: &str) -> String {
    format!("auth: none\npolicies: [ {{ ai_runtime_policy: {{ actor_scope: {{}}, budgets: {budgets} }} }} ]\n")
}

/// A shard's admission as `Shard::new` builds it, from `yaml` added to a
/// minimal config and the key table `keys`.
struct Gate {
    adm: Admission,
    /// Its usage writer and data directory, alive as long as it is.
    _store: Store,
    _dir: tempfile::TempDir,
}

fn gate(yaml: &str, keys: Vec<KeyRecord>) -> Gate {
    let config = Config::parse(&format!("{MIN}{yaml}"), &|_| None).unwrap();
    let policies = PolicySet::compile(&config.policies).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig {
        dir: dir.path().to_owned(),
        fsync: StoreFsync::Always,
        ..StoreConfig::default()
    })
    .unwrap();
    let persist = Persist {
        tx: store.usage.sender(),
        restored: Arc::new(crate::store::UsageState::default()),
    };
    let keys = Rc::new(KeyStore::from_records(keys).unwrap());
    Gate {
        adm: Admission::new(&config, policies, keys, persist),
        _store: store,
        _dir: dir,
    }
}

/// A chat request's head, with `Authorization: Bearer <key>` when given.
fn head(key: Option<&str>) -> Vec<u8> {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{auth}Content-Length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes()
}

/// Admits `BODY` for `model` with `max_output_tokens`, as the gateway does
/// (the alias is its own tokenizer model).
fn admit_as(
    g: &Gate,
    key: Option<&str>,
    model: &str,
    max_output_tokens: Option<u64>,
    tools: &[String],
) -> Result<Ticket, Refusal> {
    let head = head(key);
    let req = Request::parsed(&head, BODY);
    block_on(
        g.adm
            .admit(&req, model, |m| m.to_owned(), max_output_tokens, tools),
    )
}

fn admit(g: &Gate, max_output_tokens: Option<u64>) -> Result<Ticket, Refusal> {
    admit_as(g, None, "gpt-4o", max_output_tokens, &[])
}

fn header<'h>(headers: &'h [(&'static str, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// `x-ratelimit-remaining-tokens` of a ticket, as a number.
fn remaining_tokens(t: &Ticket) -> u64 {
    header(&t.headers, "x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What settlement has recorded for `key_id` and not yet persisted.
fn recorded(g: &Gate, key_id: &str) -> Option<UsageTotals> {
    g.adm.pending.borrow().get(key_id).copied()
}

fn usage(prompt: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
        total_tokens: Some(prompt + completion),
        ..Usage::default()
    }
}

/// Runs `f` until it starts and ends in the same UTC minute (three tries):
/// budgets count per minute, and a window that rolled over in between
/// would reset the very counts the test looks at.
fn within_one_minute<T>(f: impl Fn() -> T) -> T {
    for _ in 0..3 {
        let start = now();
        let out = f();
        if Period::Minute.start(start) == Period::Minute.start(now()) {
            return out;
        }
    }
    panic!("three minute boundaries in a row");
}

#[test]
fn open_admission_lets_anyone_in_and_records_them_as_anonymous() {
    let g = gate("auth: none\n", vec![]);
    assert!(g.adm.is_open());
    let t = admit(&g, Some(100)).unwrap();
    assert!(t.headers.is_empty());
    assert!(t.fallback.is_none());
    assert_eq!(t.prompt_estimate(), 0, "nothing is reserved");
    let u = usage(1000, 500);
    // gpt-4o: $2.50 in, $10 out per million.
    assert_eq!(g.adm.settle_all(&t, [("gpt-4o", Some(&u), false)]), 7_500);
    assert_eq!(
        recorded(&g, ANONYMOUS),
        Some(UsageTotals {
            requests: 1,
            input_tokens: 1000,
            output_tokens: 500,
            spend_micros: 7_500,
        })
    );
}

#[test]
fn with_keys_only_a_live_key_gets_in_and_its_usage_is_its_own() {
    let issued = issue_key(&[7; 32], KeyOwner::default(), now(), None);
    let g = gate("", vec![issued.record.clone()]);
    assert!(!g.adm.is_open());
    let wrong = issue_key(&[8; 32], KeyOwner::default(), now(), None).secret;
    for key in [None, Some(wrong.as_str()), Some("not-a-key")] {
        let r = admit_as(&g, key, "gpt-4o", None, &[]);
        assert!(matches!(r, Err(Refusal::Unauthorized)), "{key:?}: {r:?}");
    }
    let t = admit_as(&g, Some(&issued.secret), "gpt-4o", None, &[]).unwrap();
    g.adm.settle_all(&t, []);
    assert_eq!(
        recorded(&g, &issued.record.key_id).map(|u| u.requests),
        Some(1)
    );
    assert_eq!(recorded(&g, ANONYMOUS), None);
}

#[test]
fn the_request_over_the_per_minute_limit_is_refused_with_headers_and_a_retry_after() {
    let (a, b, c) = within_one_minute(|| {
        let g = gate(&budget("{ requests_per_minute: 2 }"), vec![]);
        let a = admit(&g, None).map(|t| t.headers);
        let b = admit(&g, None).map(|t| t.headers);
        (a, b, admit(&g, None))
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(header(&a, "x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(header(&a, "x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(header(&b, "x-ratelimit-remaining-requests"), Some("0"));
    assert!(header(&a, "x-ratelimit-reset-requests").is_some());
    assert_eq!(
        header(&a, "x-ratelimit-limit-tokens"),
        None,
        "no token budget"
    );
    let Err(Refusal::Denied {
        reason, headers, ..
    }) = c
    else {
        panic!("the third request went through: {c:?}");
    };
    assert_eq!(reason.http_status(), 429);
    let DenyReason::RateLimited {
        kind,
        limit,
        retry_after_ms,
    } = reason
    else {
        panic!("{reason:?}");
    };
    assert_eq!((kind, limit), (LimitKind::RequestsPerMinute, 2));
    assert!((1..=60_000).contains(&retry_after_ms), "{retry_after_ms}");
    let secs = reason.retry_after_secs().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
}

#[test]
fn a_model_outside_the_allowed_list_is_served_by_the_fallback_or_forbidden() {
    let access = |fallback: &str| {
        format!("auth: none\npolicies: [ {{ ai_runtime_policy: {{ actor_scope: {{}}, model_access: {{ allowed_models: [gpt-4o-mini] {fallback} }}, tools: {{ denied: ['shell.*'] }} }} }} ]\n")
    };
    let g = gate(&access(", fallback_model: gpt-4o-mini"), vec![]);
    let t = admit(&g, None).unwrap();
    assert_eq!(t.fallback.as_deref(), Some("gpt-4o-mini"));
    let t = admit_as(&g, None, "gpt-4o-mini", None, &[]).unwrap();
    assert_eq!(t.fallback, None, "an allowed model is served as asked");

    let g = gate(&access(""), vec![]);
    let r = admit(&g, None);
    let Err(Refusal::Denied { reason, .. }) = r else {
        panic!("{r:?}");
    };
    assert_eq!(reason.http_status(), 403);
    assert_eq!(reason.retry_after_secs(), None, "waiting will not help");
    let tools = ["files.read".to_owned(), "shell.exec".to_owned()];
    let r = admit_as(&g, None, "gpt-4o-mini", None, &tools);
    let Err(Refusal::Denied { reason, .. }) = r else {
        panic!("{r:?}");
    };
    assert_eq!(
        reason,
        DenyReason::ToolDenied {
            tool: "shell.exec".into()
        }
    );
}

#[test]
fn settlement_charges_every_attempt_at_its_own_models_price() {
    let g = gate("auth: none\n", vec![]);
    let t = admit(&g, None).unwrap();
    let u = usage(1000, 500);
    // Alternating models: the one-entry price memo must follow each one.
    let cost = g.adm.settle_all(
        &t,
        [
            ("gpt-4o", Some(&u), false),
            ("gpt-4o-mini", Some(&u), false),
            ("gpt-4o", Some(&u), false),
        ],
    );
    // 7_500 each at gpt-4o; gpt-4o-mini ($0.15 / $0.60): 150 + 300.
    assert_eq!(cost, 7_500 + 450 + 7_500);
    assert_eq!(
        recorded(&g, ANONYMOUS),
        Some(UsageTotals {
            requests: 1,
            input_tokens: 3000,
            output_tokens: 1500,
            spend_micros: cost,
        })
    );
    // A second request adds to the same key's totals.
    g.adm.settle_all(&t, [("gpt-4o-mini", Some(&u), false)]);
    assert_eq!(recorded(&g, ANONYMOUS).map(|u| u.requests), Some(2));
    assert_eq!(
        recorded(&g, ANONYMOUS).map(|u| u.spend_micros),
        Some(cost + 450)
    );
}

#[test]
fn reported_usage_replaces_the_token_reservation() {
    let (first, second) = within_one_minute(|| {
        let g = gate(&budget("{ tokens_per_minute: 100000 }"), vec![]);
        let t = admit(&g, Some(1000)).unwrap();
        let first = (t.prompt_estimate(), remaining_tokens(&t));
        g.adm
            .settle_all(&t, [("gpt-4o", Some(&usage(20, 10)), false)]);
        (first, remaining_tokens(&admit(&g, Some(1000)).unwrap()))
    });
    let (prompt, after_first) = first;
    assert!(prompt > 0, "a token budget needs a prompt estimate");
    let reserved = prompt + 1000;
    assert_eq!(after_first, 100_000 - reserved);
    assert_eq!(second, 100_000 - 30 - reserved);
}

#[test]
fn an_attempt_without_usage_is_charged_its_reservation() {
    let (prompt, cost, remaining) = within_one_minute(|| {
        let g = gate(&budget("{ tokens_per_minute: 100000 }"), vec![]);
        let t = admit(&g, Some(1000)).unwrap();
        let cost = g.adm.settle_all(&t, [("gpt-4o", None, true)]);
        let next = admit(&g, Some(1000)).unwrap();
        (t.prompt_estimate(), cost, remaining_tokens(&next))
    });
    let reserved = prompt + 1000;
    // The whole reservation at gpt-4o's prices, rounded up.
    assert_eq!(
        cost,
        (prompt * 2_500_000 + 1000 * 10_000_000).div_ceil(1_000_000)
    );
    assert_eq!(remaining, 100_000 - 2 * reserved, "nothing given back");
}

#[test]
fn a_request_no_attempt_answered_gives_its_reservation_back_and_still_counts() {
    let (prompt, cost, remaining, totals) = within_one_minute(|| {
        let g = gate(&budget("{ tokens_per_minute: 100000 }"), vec![]);
        let t = admit(&g, Some(1000)).unwrap();
        let cost = g.adm.settle_all(&t, []);
        let next = admit(&g, Some(1000)).unwrap();
        let totals = recorded(&g, ANONYMOUS);
        (t.prompt_estimate(), cost, remaining_tokens(&next), totals)
    });
    assert_eq!(cost, 0);
    assert_eq!(remaining, 100_000 - (prompt + 1000), "only the next one's");
    assert_eq!(
        totals,
        Some(UsageTotals {
            requests: 1,
            ..UsageTotals::default()
        })
    );
}

#[test]
fn a_refused_take_names_the_requests_limit_else_the_minutes_tokens_else_the_days() {
    let now = Timestamp(1_795_500_000_000);
    let r = Reservation::new(10, 100, now);
    let kind = |l: Limits| match limit_reason(&l, &r, now, now.0 + 5_000) {
        DenyReason::RateLimited { kind, limit, .. } => (kind, limit),
        other => panic!("{other:?}"),
    };
    let all = Limits {
        requests_per_minute: Some(5),
        tokens_per_minute: Some(500),
        tokens_per_day: Some(9000),
        monthly_spend_micros: None,
    };
    assert_eq!(kind(all), (LimitKind::RequestsPerMinute, 5));
    let no_rpm = Limits {
        requests_per_minute: None,
        ..all
    };
    assert_eq!(kind(no_rpm), (LimitKind::TokensPerMinute, 500));
    let day_only = Limits {
        tokens_per_day: Some(9000),
        ..Limits::default()
    };
    assert_eq!(kind(day_only), (LimitKind::TokensPerDay, 9000));
}

#[test]
fn a_refused_take_never_says_retry_now() {
    let now = Timestamp(1_795_500_000_000);
    let r = Reservation::new(10, 100, now);
    let limits = Limits {
        requests_per_minute: Some(1),
        ..Limits::default()
    };
    let retry = |until: u64| limit_reason(&limits, &r, now, until);
    // A window that already ended (a late clock) still asks for a wait.
    for until in [now.0, now.0 - 1] {
        let reason = retry(until);
        assert!(
            matches!(
                reason,
                DenyReason::RateLimited {
                    retry_after_ms: 1,
                    ..
                }
            ),
            "{reason:?}"
        );
        assert_eq!(reason.retry_after_secs(), Some(1));
    }
    assert_eq!(
        retry(now.0 + 1_001).retry_after_secs(),
        Some(2),
        "rounded up"
    );
}

#[test]
fn a_bell_wakes_every_waiter_and_a_waiter_that_gave_up_leaves_no_waker() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    let bell = Bell::default();
    let mut cx = Context::from_waker(Waker::noop());

    // Rung after the wait was made: ready without waiting.
    let rung = bell.next_ring();
    bell.ring();
    assert!(pin!(rung).poll(&mut cx).is_ready());

    let mut a = pin!(bell.next_ring());
    let mut b = pin!(bell.next_ring());
    assert!(a.as_mut().poll(&mut cx).is_pending());
    assert!(b.as_mut().poll(&mut cx).is_pending());
    // Polled again before a ring: still one waker each.
    assert!(a.as_mut().poll(&mut cx).is_pending());
    assert_eq!(bell.waiters.borrow().len(), 2);
    bell.ring();
    assert!(bell.waiters.borrow().is_empty());
    assert!(a.as_mut().poll(&mut cx).is_ready());
    assert!(b.as_mut().poll(&mut cx).is_ready());

    // A wait dropped before any ring (its deadline won) takes its waker out.
    {
        let mut c = pin!(bell.next_ring());
        assert!(c.as_mut().poll(&mut cx).is_pending());
        assert_eq!(bell.waiters.borrow().len(), 1);
    }
    assert!(bell.waiters.borrow().is_empty());
}
