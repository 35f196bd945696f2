//! Which target a route tries first, by its strategy, from what this
//! shard has seen of each target: requests in flight and an EWMA of the
//! time to an answer's head; and each target's circuit breaker. Shard-local,
//! no locks; the figures are keyed by the target's `provider/model`, so
//! they outlive config reloads.
//!
//! **Breakers.** A target's circuit opens after `breaker_failures`
//! failures in a row that say it is unhealthy (connect errors, timeouts,
//! 5xx), for `breaker_open_for` or as long as its `Retry-After` said. The
//! shard that opens it tells every other over the mesh, so all avoid it
//! within a message's time. Open targets go last in every route's order
//! (tried only when nothing healthy is left); once the time is up, one
//! request probes the target (half-open): an answer closes the circuit, a
//! failure opens it again.
//!
//! The choice itself ([`pick`]) is a pure function of those figures and a
//! random source, so its properties are unit-tested.

use crate::config::{ModelRoute, Strategy, Target};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// Weight of a new sample in the latency EWMA.
const ALPHA: f64 = 0.2;

#[derive(Debug, Default, Clone, Copy)]
struct Live {
    inflight: u32,
    /// Microseconds to the answer's head; 0 before the first sample.
    ewma_us: f64,
    /// Unhealthy failures in a row.
    failures: u32,
    /// Open until then (half-open after it, until an answer closes it).
    open_until: Option<Instant>,
    /// The half-open probe is out.
    probing: bool,
}

/// How an attempt ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// An answer's head came.
    Answered,
    /// A failure that says the target is unhealthy; open for `open_for`
    /// when it trips (its `Retry-After`, when it gave one).
    Unhealthy { open_for: Option<Duration> },
    /// Nothing about the target (the client left, a 4xx).
    Neutral,
}

pub struct Balancer {
    live: RefCell<FxHashMap<String, Live>>,
    rng: Cell<u64>,
    /// Targets whose circuit is not closed: while 0, orders are not
    /// checked for open circuits.
    not_closed: Cell<usize>,
}

/// What [`pick`] knows of one target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub weight: u32,
    pub inflight: u32,
    /// 0: never measured (tried first, to learn it).
    pub ewma_us: f64,
    /// The request's expected cost there, micro-dollars.
    pub price: u64,
}

/// The index of the target to try first among `targets` (non-empty).
pub fn pick(strategy: Strategy, targets: &[Figures], rand: &mut impl FnMut() -> u64) -> usize {
    let n = targets.len();
    if n <= 1 {
        return 0;
    }
    let mut two = || ((rand() % n as u64) as usize, (rand() % n as u64) as usize);
    match strategy {
        Strategy::Priority => 0,
        Strategy::Weighted => {
            let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
            if total == 0 {
                return 0;
            }
            let mut at = rand() % total;
            for (i, t) in targets.iter().enumerate() {
                let w = u64::from(t.weight);
                if at < w {
                    return i;
                }
                at -= w;
            }
            0
        }
        Strategy::LeastInflight => {
            let (a, b) = two();
            if targets[b].inflight < targets[a].inflight {
                b
            } else {
                a
            }
        }
        // Sampling with replacement: sometimes both draws are the slower
        // target, so it keeps getting a little traffic and a recovery is
        // seen.
        Strategy::LowestLatency => {
            let (a, b) = two();
            let score = |t: &Figures| t.ewma_us * f64::from(t.inflight + 1);
            if score(&targets[b]) < score(&targets[a]) {
                b
            } else {
                a
            }
        }
        Strategy::Cheapest => targets
            .iter()
            .enumerate()
            .min_by_key(|(i, t)| (t.price, *i))
            .map_or(0, |(i, _)| i),
    }
}

impl Balancer {
    pub fn new(seed: u64) -> Self {
        Balancer {
            live: RefCell::new(FxHashMap::default()),
            rng: Cell::new(seed | 1),
            not_closed: Cell::new(0),
        }
    }

    /// xorshift64*: enough to spread load, cheap, shard-local.
    fn next(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The order to try `route`'s targets in: the strategy's pick first,
    /// then the others in config order. `price` is the request's expected
    /// cost at a target (only asked under `cheapest`).
    pub fn order(
        &self,
        route: &ModelRoute,
        price: impl Fn(&Target) -> u64,
    ) -> SmallVec<[usize; 4]> {
        let n = route.targets.len();
        let first = if n <= 1 || route.strategy == Strategy::Priority {
            0
        } else {
            let live = self.live.borrow();
            let figures: SmallVec<[Figures; 4]> = route
                .targets
                .iter()
                .map(|t| {
                    let l = live.get(&t.served_by).copied().unwrap_or_default();
                    Figures {
                        weight: t.weight,
                        inflight: l.inflight,
                        ewma_us: l.ewma_us,
                        price: if route.strategy == Strategy::Cheapest {
                            price(t)
                        } else {
                            0
                        },
                    }
                })
                .collect();
            drop(live);
            pick(route.strategy, &figures, &mut || self.next())
        };
        let mut order = SmallVec::with_capacity(n);
        order.push(first);
        order.extend((0..n).filter(|&i| i != first));
        order
    }

    /// An attempt at `t` starts. A half-open target's first attempt is
    /// its probe.
    pub fn started(&self, t: &Target, now: Instant) {
        let mut live = self.live.borrow_mut();
        match live.get_mut(&t.served_by) {
            Some(l) => {
                l.inflight += 1;
                if l.open_until.is_some_and(|u| u <= now) {
                    l.probing = true;
                }
            }
            None => {
                live.insert(
                    t.served_by.clone(),
                    Live {
                        inflight: 1,
                        ..Live::default()
                    },
                );
            }
        }
    }

    /// It ended; `head` is how long its answer's head took, when it came.
    /// Returns when the target's circuit is open until, if this attempt
    /// opened it (for the other shards to hear of).
    pub fn ended(
        &self,
        t: &Target,
        head: Option<Duration>,
        health: Health,
        now: Instant,
        failures_to_open: u32,
        open_for: Duration,
    ) -> Option<Instant> {
        let mut live = self.live.borrow_mut();
        let l = live.get_mut(&t.served_by)?;
        l.inflight = l.inflight.saturating_sub(1);
        if let Some(h) = head {
            let us = h.as_secs_f64() * 1e6;
            l.ewma_us = if l.ewma_us == 0.0 {
                us
            } else {
                ALPHA * us + (1.0 - ALPHA) * l.ewma_us
            };
        }
        match health {
            Health::Answered => {
                l.failures = 0;
                l.probing = false;
                if l.open_until.take().is_some() {
                    self.not_closed.set(self.not_closed.get().saturating_sub(1));
                    log::info!("target {}: circuit closed", t.served_by);
                }
                None
            }
            Health::Unhealthy { open_for: said } => {
                l.failures += 1;
                let half_open_failed = l.probing;
                l.probing = false;
                if !half_open_failed
                    && (l.failures < failures_to_open || l.open_until.is_some_and(|u| u > now))
                {
                    return None;
                }
                let until = now + said.unwrap_or(open_for);
                if l.open_until.replace(until).is_none() {
                    self.not_closed.set(self.not_closed.get() + 1);
                }
                log::warn!(
                    "target {}: circuit open for {:?} after {} failures in a row",
                    t.served_by,
                    until.saturating_duration_since(now),
                    l.failures
                );
                Some(until)
            }
            Health::Neutral => {
                l.probing = false;
                None
            }
        }
    }

    /// Another shard opened `target`'s circuit until `until`.
    pub fn open_from_peer(&self, target: &str, until: Instant) {
        let mut live = self.live.borrow_mut();
        let l = live.entry(target.to_owned()).or_default();
        if l.open_until.is_none() {
            self.not_closed.set(self.not_closed.get() + 1);
        }
        if l.open_until.is_none_or(|u| u < until) {
            l.open_until = Some(until);
        }
    }

    /// Whether `t` is avoided now: open, or half-open with its probe out.
    pub fn avoided(&self, t: &Target, now: Instant) -> bool {
        self.live
            .borrow()
            .get(&t.served_by)
            .is_some_and(|l| match l.open_until {
                Some(u) if u > now => true,
                Some(_) => l.probing,
                None => false,
            })
    }

    /// Whether any circuit is not closed (else no order needs checking).
    pub fn any_not_closed(&self) -> bool {
        self.not_closed.get() > 0
    }

    /// The targets whose circuit is not closed (for `/metrics`).
    pub fn circuits(&self, now: Instant) -> Vec<(String, &'static str)> {
        self.live
            .borrow()
            .iter()
            .filter_map(|(k, l)| {
                let state = match l.open_until {
                    None => return None,
                    Some(u) if u > now => "open",
                    Some(_) => "half_open",
                };
                Some((k.clone(), state))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let b = Balancer::new(seed);
        move || b.next()
    }

    #[test]
    fn weighted_choice_matches_its_weights() {
        let t = [
            Figures {
                weight: 3,
                ..Figures::default()
            },
            Figures {
                weight: 1,
                ..Figures::default()
            },
            Figures {
                weight: 0,
                ..Figures::default()
            },
        ];
        let mut r = rng(7);
        let n = 40_000;
        let mut counts = [0u32; 3];
        for _ in 0..n {
            counts[pick(Strategy::Weighted, &t, &mut r)] += 1;
        }
        // 3:1, within 5 standard deviations of a binomial(n, 0.75).
        let share = f64::from(counts[0]) / f64::from(n);
        let sd = (0.75 * 0.25 / f64::from(n)).sqrt();
        assert!((share - 0.75).abs() < 5.0 * sd, "{counts:?}");
        assert_eq!(counts[2], 0);
    }

    #[test]
    fn lowest_latency_favours_the_faster_and_keeps_probing_the_slower() {
        let t = [
            Figures {
                ewma_us: 300_000.0,
                ..Figures::default()
            },
            Figures {
                ewma_us: 50_000.0,
                ..Figures::default()
            },
        ];
        let mut r = rng(11);
        let n = 10_000;
        let slow = (0..n)
            .filter(|_| pick(Strategy::LowestLatency, &t, &mut r) == 0)
            .count();
        // Both draws land on the slow one a quarter of the time.
        assert!(slow > n / 8 && slow < n * 3 / 8, "{slow}");
    }

    fn target(name: &str) -> Target {
        Target {
            provider: 0,
            model: name.into(),
            served_by: format!("p/{name}"),
            model_json: Vec::new(),
            weight: 1,
            context_window: None,
            head_lines: Vec::new(),
        }
    }

    #[test]
    fn a_circuit_opens_after_failures_in_a_row_then_one_probe_closes_it() {
        let b = Balancer::new(1);
        let (t, ok) = (target("flaky"), target("fine"));
        let t0 = Instant::now();
        let open_for = Duration::from_secs(30);
        let fail = |at| {
            b.started(&t, at);
            b.ended(
                &t,
                None,
                Health::Unhealthy { open_for: None },
                at,
                3,
                open_for,
            )
        };
        assert_eq!(fail(t0), None);
        // A neutral failure (a 4xx) neither counts nor resets.
        b.started(&t, t0);
        b.ended(&t, None, Health::Neutral, t0, 3, open_for);
        assert_eq!(fail(t0), None);
        assert_eq!(fail(t0), Some(t0 + open_for));
        assert!(b.avoided(&t, t0) && !b.avoided(&ok, t0));
        let mut order: SmallVec<[usize; 4]> = SmallVec::from_slice(&[0, 1]);
        let pair = [t.clone(), ok.clone()];
        let healthy: Vec<usize> = order
            .drain(..)
            .filter(|&i| !b.avoided(&pair[i], t0))
            .collect();
        assert_eq!(healthy, vec![1]);
        // Half-open once the time is up: one probe goes, others wait on it.
        let later = t0 + open_for;
        assert!(!b.avoided(&t, later));
        b.started(&t, later);
        assert!(b.avoided(&t, later));
        assert_eq!(
            b.ended(
                &t,
                Some(Duration::from_millis(5)),
                Health::Answered,
                later,
                3,
                open_for
            ),
            None
        );
        assert!(!b.avoided(&t, later) && !b.any_not_closed());
        // A failed probe opens it again at once.
        for _ in 0..3 {
            fail(later);
        }
        let again = later + open_for;
        b.started(&t, again);
        assert_eq!(
            b.ended(
                &t,
                None,
                Health::Unhealthy {
                    open_for: Some(Duration::from_secs(2))
                },
                again,
                3,
                open_for
            ),
            Some(again + Duration::from_secs(2))
        );
    }

    #[test]
    fn least_inflight_and_cheapest_pick_what_they_say() {
        let t = [
            Figures {
                inflight: 9,
                price: 5,
                ..Figures::default()
            },
            Figures {
                inflight: 0,
                price: 2,
                ..Figures::default()
            },
        ];
        let mut r = rng(3);
        let busy = (0..1000)
            .filter(|_| pick(Strategy::LeastInflight, &t, &mut r) == 0)
            .count();
        assert!(busy < 400, "{busy}");
        assert_eq!(pick(Strategy::Cheapest, &t, &mut r), 1);
        assert_eq!(pick(Strategy::Priority, &t, &mut r), 0);
    }
}
