use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::counters::Settlement;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const T0: Timestamp = Timestamp(1_704_067_200_000); // 2024-01-01T00:00:00Z

#[test]
fn owner_shard_is_stable_and_spread() {
    assert_eq!(owner_shard("sg-AAAAAAAA", 0), 0);
    assert_eq!(owner_shard("sg-AAAAAAAA", 1), 0);
    // FNV-1a of "a" is 0xaf63dc4c8601ec8c.
    assert_eq!(
        owner_shard("a", 1 << 20),
        (0xaf63_dc4c_8601_ec8c_u64 % (1 << 20)) as usize
    );
    let mut hits = [0usize; 4];
    for i in 0..4000 {
        hits[owner_shard(&format!("key_id=sg-{i:08}"), 4)] += 1;
    }
    assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
}

#[test]
fn grants_never_exceed_what_is_left() {
    let limits = Limits {
        requests_per_minute: Some(10),
        tokens_per_minute: Some(1000),
        ..Limits::default()
    };
    let mut lm = LeaseManager::new(limits, T0);
    let a = lm.grant(
        Quota {
            requests: 6,
            tokens: 600,
        },
        T0,
    );
    assert_eq!((a.requests, a.tokens), (6, 600));
    assert_eq!(a.expires_at, T0.plus_ms(60_000));
    let b = lm.grant(
        Quota {
            requests: 6,
            tokens: 600,
        },
        T0,
    );
    assert_eq!((b.requests, b.tokens), (4, 400));
    let c = lm.grant(
        Quota {
            requests: 1,
            tokens: 1,
        },
        T0,
    );
    assert_eq!((c.requests, c.tokens), (0, 0));
    assert!(!lm.admit(&Reservation::new(1, 0, T0), T0));
    // A return inside the window frees quota again.
    lm.on_message(
        ToOwner::Return {
            shard: 1,
            unused: Quota {
                requests: 2,
                tokens: 200,
            },
            window_start: a.window_start,
            day_start: a.day_start,
        },
        T0,
    );
    assert_eq!(
        lm.available(T0),
        Quota {
            requests: 2,
            tokens: 200
        }
    );
    // Next minute: full again.
    assert_eq!(
        lm.available(T0.plus_ms(60_000)),
        Quota {
            requests: 10,
            tokens: 1000
        }
    );
}

#[test]
fn local_quota_lifecycle() {
    let mut lq = LocalQuota::new(
        1,
        Quota {
            requests: 4,
            tokens: 400,
        },
        Quota {
            requests: 1,
            tokens: 100,
        },
    );
    let mut out = Vec::new();
    let one = Quota {
        requests: 1,
        tokens: 100,
    };
    assert_eq!(lq.try_take(one, T0, &mut out), Take::WaitForGrant);
    assert_eq!(
        out,
        vec![ToOwner::Want {
            shard: 1,
            want: Quota {
                requests: 4,
                tokens: 400
            }
        }]
    );
    out.clear();
    // No duplicate Want while one is in flight.
    assert_eq!(lq.try_take(one, T0, &mut out), Take::WaitForGrant);
    assert!(out.is_empty());
    let mut lm = LeaseManager::new(
        Limits {
            requests_per_minute: Some(5),
            ..Limits::default()
        },
        T0,
    );
    let lease = lm.grant(
        Quota {
            requests: 4,
            tokens: 400,
        },
        T0,
    );
    lq.on_grant(lease, T0, &mut out);
    for _ in 0..3 {
        assert_eq!(lq.try_take(one, T0, &mut out), Take::Admitted);
    }
    // Below low water: asks to top the lease up to the refill (1 request
    // and 100 tokens are left), not for a whole refill more.
    assert_eq!(
        out,
        vec![ToOwner::Want {
            shard: 1,
            want: Quota {
                requests: 3,
                tokens: 300
            }
        }]
    );
    let more = lm.on_message(out.remove(0), T0).unwrap();
    assert_eq!(more.1.requests, 1);
    lq.on_grant(more.1, T0, &mut out);
    assert_eq!(lq.remaining(T0).requests, 2);
    // Expiry returns the unused part.
    let later = T0.plus_ms(61_000);
    lq.expire(later, &mut out);
    assert_eq!(
        out,
        vec![ToOwner::Return {
            shard: 1,
            unused: Quota {
                requests: 2,
                tokens: 400
            },
            window_start: T0,
            day_start: T0,
        }]
    );
    out.clear();
    // A zero grant marks the window exhausted: no Want storm.
    let mut lm = LeaseManager::new(
        Limits {
            requests_per_minute: Some(0),
            ..Limits::default()
        },
        later,
    );
    assert_eq!(lq.try_take(one, later, &mut out), Take::WaitForGrant);
    let (_, zero) = lm.on_message(out.remove(0), later).unwrap();
    lq.on_grant(zero, later, &mut out);
    let until = Period::Minute.end(Period::Minute.start(later));
    assert_eq!(lq.try_take(one, later, &mut out), Take::Exhausted { until });
    assert!(out.is_empty());
    // A grant arriving after its window ended goes straight back.
    let stale = Lease {
        requests: 3,
        tokens: 0,
        window_start: T0,
        day_start: T0,
        expires_at: T0.plus_ms(60_000),
        spend_used_micros: 0,
        owner_left: Quota::ZERO,
        exhausted: false,
    };
    lq.on_grant(stale, later, &mut out);
    assert!(matches!(
        out[0],
        ToOwner::Return {
            unused: Quota { requests: 3, .. },
            ..
        }
    ));
}

/// Shard 1 holding a lease of 4 requests and 1000 tokens, granted at `T0`
/// by an owner with `limits`.
fn leased_at_t0(limits: Limits) -> (LocalQuota, LeaseManager, Vec<ToOwner>) {
    let lease = Quota {
        requests: 4,
        tokens: 1000,
    };
    let mut lq = LocalQuota::new(1, lease, Quota::ZERO);
    let mut lm = LeaseManager::new(limits, T0);
    let mut out = Vec::new();
    lq.on_grant(lm.grant(lease, T0), T0, &mut out);
    (lq, lm, out)
}

#[test]
fn local_quota_settles_refunds_and_reports() {
    let (mut lq, mut lm, mut out) = leased_at_t0(Limits {
        tokens_per_minute: Some(5000),
        ..Limits::default()
    });
    let r = Reservation::new(300, 200, T0);
    assert_eq!(lq.try_take(Quota::of(&r), T0, &mut out), Take::Admitted);
    assert_eq!(lq.remaining(T0).tokens, 500);
    lq.settle(&r, 100, 9, T0, &mut out);
    assert_eq!(lq.remaining(T0).tokens, 900);
    assert_eq!(
        out,
        vec![ToOwner::Usage {
            shard: 1,
            extra_tokens: 0,
            spend_micros: 9
        }]
    );
    out.clear();
    lq.settle(&r, 800, 0, T0, &mut out);
    assert_eq!(
        out,
        vec![ToOwner::Usage {
            shard: 1,
            extra_tokens: 300,
            spend_micros: 0
        }]
    );
    lm.on_message(out[0], T0);
    assert_eq!(lm.counters().used(LimitKind::TokensPerMinute, T0), 1300);
}

#[test]
fn a_reservation_settled_after_its_minute_gives_its_unused_tokens_back_to_the_day() {
    let (mut lq, mut lm, mut out) = leased_at_t0(Limits {
        tokens_per_day: Some(10_000),
        ..Limits::default()
    });
    let r = Reservation::new(100, 500, T0);
    assert_eq!(lq.try_take(Quota::of(&r), T0, &mut out), Take::Admitted);
    // The answer comes after the minute: its lease has ended.
    let later = T0.plus_ms(70_000);
    lq.expire(later, &mut out);
    lq.settle(&r, 150, 0, later, &mut out);
    for msg in out.drain(..) {
        lm.on_message(msg, later);
    }
    // The day counts what was used (150), not the reservation (600) or the
    // lease (1000).
    assert_eq!(lm.counters().used(LimitKind::TokensPerDay, later), 150);
}

#[test]
fn owner_on_an_upstream_lease() {
    // A node-level lease (say, from Redis) held in a LocalQuota caps the
    // owner: 10 rpm locally, but only 4 granted from above.
    let mut node = LocalQuota::new(0, Quota::ZERO, Quota::ZERO);
    let mut out = Vec::new();
    let mut cluster = LeaseManager::new(
        Limits {
            requests_per_minute: Some(4),
            ..Limits::default()
        },
        T0,
    );
    node.on_grant(
        cluster.grant(
            Quota {
                requests: 100,
                tokens: 1 << 40,
            },
            T0,
        ),
        T0,
        &mut out,
    );
    let mut lm = LeaseManager::with_upstream(
        Limits {
            requests_per_minute: Some(10),
            ..Limits::default()
        },
        T0,
        node,
    );
    let r = Reservation::new(0, 0, T0);
    let admitted = (0..10).filter(|_| lm.admit(&r, T0)).count();
    assert_eq!(admitted, 4);
    assert_eq!(
        lm.grant(
            Quota {
                requests: 5,
                tokens: 0
            },
            T0
        )
        .requests,
        0
    );
}

/// Whose event is next in the simulation.
#[derive(Debug, Clone, Copy)]
struct Admitted {
    window: Timestamp,
    reserved: u64,
    charged: Option<u64>,
}

/// The overshoot proof: 2 shards × 64 clients against 100 rpm (and 20k
/// tpm), with randomly interleaved requests, settlements, message
/// deliveries and clock steps, for several seeds. Every minute window must
/// admit at most 100 requests and charge at most 20k tokens: the
/// documented bound is zero over the limit.
#[test]
fn lease_overshoot_is_zero() {
    const SHARDS: usize = 2;
    const CLIENTS: u64 = 64;
    const RPM: u64 = 100;
    const TPM: u64 = 20_000;
    let limits = Limits {
        requests_per_minute: Some(RPM),
        tokens_per_minute: Some(TPM),
        ..Limits::default()
    };
    for seed in [1u64, 7, 42, 0x5eed, 0xdead_beef] {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut now = T0.plus_ms(rng.below(60_000));
        let end = now.plus_ms(10 * 60_000);
        let owner = 0usize;
        let mut lm = LeaseManager::new(limits, now);
        let (refill, low) = LocalQuota::suggested_refill(&limits, SHARDS);
        let mut local = LocalQuota::new(1, refill, low);
        let mut to_owner: VecDeque<ToOwner> = VecDeque::new();
        let mut to_shard1: VecDeque<Lease> = VecDeque::new();
        let mut admitted: Vec<Admitted> = Vec::new();
        // In flight: (index into admitted, shard, reservation).
        let mut in_flight: Vec<(usize, usize, Reservation)> = Vec::new();
        let mut out = Vec::new();
        let mut attempts = 0u64;
        while now < end {
            match rng.below(100) {
                0..=54 => {
                    // Client `c` on shard `s` sends a request.
                    let s = rng.below(SHARDS as u64) as usize;
                    let _client = rng.below(CLIENTS);
                    attempts += 1;
                    let r = Reservation::new(20 + rng.below(200), 10 + rng.below(100), now);
                    let ok = if s == owner {
                        lm.admit(&r, now)
                    } else {
                        let t = local.try_take(Quota::of(&r), now, &mut out);
                        to_owner.extend(out.drain(..));
                        t == Take::Admitted
                    };
                    if ok {
                        admitted.push(Admitted {
                            window: Period::Minute.start(now),
                            reserved: r.tokens(),
                            charged: None,
                        });
                        in_flight.push((admitted.len() - 1, s, r));
                    }
                }
                55..=69 if !in_flight.is_empty() => {
                    // A response completes with real usage <= reservation.
                    let i = rng.below(in_flight.len() as u64) as usize;
                    let (idx, s, r) = in_flight.swap_remove(i);
                    let actual = rng.below(r.tokens() + 1);
                    let charged = if s == owner {
                        let st = Settlement {
                            tokens: actual,
                            spend_micros: 0,
                            estimated: false,
                        };
                        lm.counters_mut().settle(&r, &st, now)
                    } else {
                        local.settle(&r, actual, 0, now, &mut out);
                        to_owner.extend(out.drain(..));
                        actual
                    };
                    admitted[idx].charged = Some(charged);
                }
                70..=79 => {
                    if let Some(msg) = to_owner.pop_front() {
                        if let Some((_, lease)) = lm.on_message(msg, now) {
                            to_shard1.push_back(lease);
                        }
                    }
                }
                80..=89 => {
                    if let Some(lease) = to_shard1.pop_front() {
                        local.on_grant(lease, now, &mut out);
                        to_owner.extend(out.drain(..));
                    }
                }
                _ => now = now.plus_ms(rng.below(1500)),
            }
        }
        let mut per_window: BTreeMap<Timestamp, (u64, u64)> = BTreeMap::new();
        for a in &admitted {
            let e = per_window.entry(a.window).or_default();
            e.0 += 1;
            e.1 += a.charged.unwrap_or(a.reserved);
        }
        assert!(per_window.len() >= 10, "seed {seed}: {per_window:?}");
        for (w, (reqs, tokens)) in &per_window {
            assert!(
                *reqs <= RPM,
                "seed {seed}: window {w:?} admitted {reqs} requests"
            );
            assert!(
                *tokens <= TPM,
                "seed {seed}: window {w:?} charged {tokens} tokens"
            );
        }
        // Liveness: under steady overload most of each inner window's quota
        // is used (the loss is bounded by one stranded lease per shard).
        let inner: Vec<u64> = per_window
            .values()
            .skip(1)
            .take(per_window.len() - 2)
            .map(|v| v.0)
            .collect();
        let min = inner.iter().copied().min().unwrap_or(0);
        assert!(min >= RPM - refill.requests - 20, "seed {seed}: {inner:?}");
        assert!(
            attempts > admitted.len() as u64,
            "seed {seed}: not overloaded"
        );
    }
}

/// The e2e policy of tests/python/test_policy.py, run on 2 shards: a
/// non-owner shard is served from a lease, its lease's window ends, and the
/// next request to that shard must still be decided on its merits. The view
/// `decide` gets from a lease of an ended window used to count the whole
/// limit as used ("budget exhausted: tokens_per_day (limit 2000000, used
/// 2000000)"), and since `decide` refused before `try_take` could ask the
/// owner for a new lease, the shard refused the bucket for good.
#[test]
fn a_non_owner_whose_lease_ended_asks_again_instead_of_refusing() {
    use crate::config::PolicyEntry;
    use crate::decide::{decide, Decision, DenyReason, RequestFacts};
    use crate::policy::PolicySet;

    let yaml = "
- ai_runtime_policy:
    actor_scope: {team: support-platform, environment: production}
    budgets: {requests_per_minute: 1000, tokens_per_day: 2000000, monthly_spend_usd: 5000}
";
    let entries: Vec<PolicyEntry> = serde_yaml_ng::from_str(yaml).unwrap();
    let set = PolicySet::compile(&entries).unwrap();
    let actor = crate::policy::tests::actor("support-platform", "production");
    let resolved = set.resolve(&actor);
    let [bucket] = resolved.buckets() else {
        panic!("one bucket")
    };
    let limits = bucket.limits;
    let facts = RequestFacts {
        model: "demo",
        estimated_prompt_tokens: 12,
        max_output_tokens: None,
        tool_names: &[],
    };
    let t = T0.plus_ms(11 * 3_600_000 + 50_000); // 11:00:50Z
    let mut owner = LeaseManager::new(limits, t);
    let (refill, low) = LocalQuota::suggested_refill(&limits, 2);
    let mut lq = LocalQuota::new(1, refill, low);
    let mut out = Vec::new();

    // One request on shard 1, as core runs it: decide on the view (fresh
    // counters while the slot is not open yet), take from the lease (first
    // asking the owner), settle small real usage.
    let mut serve = |lq: &mut LocalQuota, owner: &mut LeaseManager, now: Timestamp, open: bool| {
        let views = [if open {
            lq.view(&limits, now)
        } else {
            Counters::new(now)
        }];
        let r = match decide(&resolved, &facts, &views, now) {
            Decision::Allow { reservation, .. } => reservation,
            Decision::Deny(reason) => return Err(reason),
        };
        let mut take = lq.try_take(Quota::of(&r), now, &mut out);
        while let Some(msg) = out.pop() {
            if let Some((_, lease)) = owner.on_message(msg, now) {
                lq.on_grant(lease, now, &mut out);
            }
            if take == Take::WaitForGrant {
                take = lq.try_take(Quota::of(&r), now, &mut out);
            }
        }
        assert_eq!(take, Take::Admitted);
        lq.settle(&r, 17, 30, now, &mut out);
        while let Some(msg) = out.pop() {
            owner.on_message(msg, now);
        }
        Ok(())
    };

    for i in 0..5 {
        serve(&mut lq, &mut owner, t.plus_ms(i * 1000), i > 0).unwrap();
    }
    // The next minute (and any time after it): the lease of 11:00 has ended.
    for later in [t.plus_ms(15_000), t.plus_ms(3_600_000)] {
        let views = [lq.view(&limits, later)];
        assert_eq!(views[0].used(LimitKind::TokensPerDay, later), 0);
        match decide(&resolved, &facts, &views, later) {
            Decision::Allow { .. } => {}
            Decision::Deny(DenyReason::BudgetExhausted { kind, used, .. }) => {
                panic!("{kind} refused as used {used} after 5 small requests")
            }
            Decision::Deny(reason) => panic!("{reason}"),
        }
        serve(&mut lq, &mut owner, later, true).unwrap();
    }
    // The ended leases went back: the owner counts only real usage for the
    // day, and what the current lease holds.
    let day = owner
        .counters()
        .used(LimitKind::TokensPerDay, t.plus_ms(3_600_000));
    assert_eq!(day, 7 * 17 + lq.remaining(t.plus_ms(3_600_000)).tokens);

    // A spend snapshot from last month says nothing about this one.
    let next_month = Period::Month.end(Period::Month.start(t));
    let views = [lq.view(&limits, next_month)];
    assert_eq!(views[0].used(LimitKind::MonthlySpend, next_month), 0);
}

/// Two nodes, each an owner on a node lease from one store (a plain
/// `LeaseManager` standing in for the cluster store), each with a second
/// shard leasing from its owner; random interleavings of requests,
/// returns and grants. The store's limit is never exceeded, and with
/// enough demand the whole limit is used.
#[test]
fn node_leases_never_exceed_the_store_limit() {
    let limits = Limits {
        requests_per_minute: Some(100),
        ..Limits::default()
    };
    for seed in 1..40u64 {
        let mut rng = Rng(seed);
        let mut store = LeaseManager::new(limits, T0);
        let refill = Quota {
            requests: 7,
            tokens: 1 << 40,
        };
        let low = Quota {
            requests: 2,
            tokens: 1 << 38,
        };
        let mut owners: Vec<LeaseManager<LocalQuota>> = (0..2)
            .map(|_| {
                LeaseManager::with_upstream(
                    limits,
                    T0,
                    LocalQuota::new(0, refill, low).renew_before(0),
                )
            })
            .collect();
        let mut shards: Vec<LocalQuota> = (0..2)
            .map(|_| {
                LocalQuota::new(
                    1,
                    Quota {
                        requests: 3,
                        tokens: 1 << 40,
                    },
                    Quota::ZERO,
                )
            })
            .collect();
        // Messages in flight: (node, to_store?, msg) and grants back.
        let mut to_store: VecDeque<(usize, ToOwner)> = VecDeque::new();
        let mut to_owner: VecDeque<(usize, ToOwner)> = VecDeque::new();
        let mut admitted = 0u64;
        let now = T0.plus_ms(1000);
        let r = Reservation::new(0, 0, now);
        for _ in 0..2000 {
            let node = rng.below(2) as usize;
            let mut out = Vec::new();
            match rng.below(4) {
                0 => {
                    if owners[node].admit_on_lease(&r, now, &mut out) == Take::Admitted {
                        admitted += 1;
                    }
                    to_store.extend(out.drain(..).map(|m| (node, m)));
                }
                1 => {
                    if shards[node].try_take(Quota::of(&r), now, &mut out) == Take::Admitted {
                        admitted += 1;
                    }
                    to_owner.extend(out.drain(..).map(|m| (node, m)));
                }
                2 => {
                    if let Some((n, msg)) = to_store.pop_front() {
                        if let Some((_, lease)) = store.on_message(msg, now) {
                            owners[n].on_node_grant(lease, now, &mut out);
                            to_store.extend(out.drain(..).map(|m| (n, m)));
                        }
                    }
                }
                _ => {
                    if let Some((n, msg)) = to_owner.pop_front() {
                        if let Some((_, lease)) = owners[n].on_message_on_lease(msg, now, &mut out)
                        {
                            to_store.extend(out.drain(..).map(|m| (n, m)));
                            shards[n].on_grant(lease, now, &mut out);
                            to_owner.extend(out.drain(..).map(|m| (n, m)));
                        }
                        to_store.extend(out.drain(..).map(|m| (n, m)));
                    }
                }
            }
            assert!(admitted <= 100, "seed {seed}: {admitted} admitted");
        }
        assert!(admitted >= 90, "seed {seed}: only {admitted} admitted");
    }
}

/// A bucket with only a spend limit: the owner says once per month when
/// the limit is reached, and a shard whose lease lasts the minute takes
/// that word over its older snapshot (it would otherwise keep admitting
/// until the lease ends).
#[test]
fn a_spent_month_is_announced_once_and_overrides_older_snapshots() {
    let limits = Limits {
        monthly_spend_micros: Some(1_000),
        ..Limits::default()
    };
    let t = T0;
    let mut owner = LeaseManager::new(limits, t);
    let (refill, low) = LocalQuota::suggested_refill(&limits, 2);
    let mut lq = LocalQuota::new(1, refill, low);
    let mut out = Vec::new();
    assert_eq!(
        lq.try_take(
            Quota {
                requests: 1,
                tokens: 10
            },
            t,
            &mut out
        ),
        Take::WaitForGrant
    );
    let grant = owner.grant(
        Quota {
            requests: 1,
            tokens: 10,
        }
        .saturating_add(refill),
        t,
    );
    lq.on_grant(grant, t, &mut out);
    assert_eq!(lq.view(&limits, t).used(LimitKind::MonthlySpend, t), 0);

    owner.counters_mut().add(LimitKind::MonthlySpend, 999, t);
    assert_eq!(owner.newly_spent(t), None);
    owner.counters_mut().add(LimitKind::MonthlySpend, 2, t);
    let month = Period::Month.start(t);
    assert_eq!(owner.newly_spent(t), Some((month, 1_001)));
    assert_eq!(owner.newly_spent(t.plus_ms(1)), None, "announced once");

    // The lease still covers requests; the view now says the month is spent.
    let later = t.plus_ms(10);
    lq.note_spend(month, 1_001);
    assert!(lq.remaining(later).requests > 0);
    assert_eq!(
        lq.view(&limits, later).used(LimitKind::MonthlySpend, later),
        1_001
    );
    // An older, smaller word changes nothing; last month's neither.
    lq.note_spend(month, 500);
    lq.note_spend(Timestamp(month.0 - 1), 5);
    assert_eq!(lq.spend_snapshot(), Some(1_001));

    // A new limit is announced afresh when reached.
    owner.set_limits(Limits {
        monthly_spend_micros: Some(2_000),
        ..limits
    });
    assert_eq!(owner.newly_spent(later), None);
    owner
        .counters_mut()
        .add(LimitKind::MonthlySpend, 1_000, later);
    assert_eq!(owner.newly_spent(later), Some((month, 2_001)));
}
