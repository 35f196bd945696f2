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
//! A circuit also opens when, within one `breaker_window`, at least
//! `breaker_error_percent` of a target's calls failed unhealthily (once it
//! had `breaker_min_calls` there): a target failing every other call never
//! fails five in a row, yet is no place to send traffic.
//!
//! For hedged routes whose threshold is their own p95, the balancer also
//! keeps each route's time to first token in a histogram.
//!
//! The choice itself ([`pick`]) is a pure function of those figures and a
//! random source, so its properties are unit-tested.

use crate::config::{BreakerSettings, ModelRoute, Strategy, Target};
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// `lowest_latency` sends one pick in this many to a random target.
const EXPLORE: u64 = 50;

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
    /// The error-rate window: when it began, its calls and unhealthy
    /// failures.
    window_start: Option<Instant>,
    window_calls: u32,
    window_failures: u32,
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
    /// Time to first token per hedged route (by alias), microseconds.
    ttft: RefCell<FxHashMap<String, RouteTtft>>,
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
        // The better of two distinct draws: with two targets, always the
        // faster. One pick in EXPLORE goes to a target drawn at random
        // instead, so every target keeps a trickle of traffic and a
        // recovered one is seen (1% of picks with two targets).
        Strategy::LowestLatency => {
            if rand().is_multiple_of(EXPLORE) {
                return (rand() % n as u64) as usize;
            }
            let a = (rand() % n as u64) as usize;
            let mut b = (rand() % (n as u64 - 1)) as usize;
            if b >= a {
                b += 1;
            }
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
            ttft: RefCell::new(FxHashMap::default()),
            rng: Cell::new(seed | 1),
            not_closed: Cell::new(0),
        }
    }

    /// A random draw (for jitter).
    pub fn random(&self) -> u64 {
        self.next()
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
        breaker: &BreakerSettings,
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
        let over_rate = match (breaker.error_percent, health) {
            (Some(percent), Health::Answered | Health::Unhealthy { .. }) => {
                if l.window_start
                    .is_none_or(|s| now.saturating_duration_since(s) >= breaker.window)
                {
                    l.window_start = Some(now);
                    l.window_calls = 0;
                    l.window_failures = 0;
                }
                l.window_calls += 1;
                if matches!(health, Health::Unhealthy { .. }) {
                    l.window_failures += 1;
                }
                l.window_calls >= breaker.min_calls
                    && u64::from(l.window_failures) * 100
                        >= u64::from(l.window_calls) * u64::from(percent)
            }
            _ => false,
        };
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
                let tripped = l.failures >= breaker.failures || over_rate;
                if !half_open_failed && (!tripped || l.open_until.is_some_and(|u| u > now)) {
                    return None;
                }
                // A new window starts with the circuit: the old one's
                // failures are what opened it.
                l.window_start = None;
                let open_for = said.map_or(breaker.open_for, |d| {
                    d.min(crate::gateway::route::MAX_ASKED_WAIT)
                });
                let until = now + open_for;
                if l.open_until.replace(until).is_none() {
                    self.not_closed.set(self.not_closed.get() + 1);
                }
                log::warn!(
                    "target {}: circuit open for {:?} ({} failures in a row)",
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

    /// The route's time to first token at the 95th percentile on this
    /// shard, once it has seen [`TTFT_MIN_SAMPLES`].
    pub fn ttft_p95(&self, alias: &str) -> Option<Duration> {
        let ttft = self.ttft.borrow();
        let r = ttft.get(alias)?;
        (r.hist.len() >= TTFT_MIN_SAMPLES).then_some(r.p95)
    }

    /// One of the route's first attempts took `took` to its head (or was
    /// cancelled after `took` by a hedge: a bound from below, which keeps
    /// the tail the hedge cut off in the figure).
    pub fn note_ttft(&self, alias: &str, took: Duration) {
        let mut ttft = self.ttft.borrow_mut();
        let r = match ttft.get_mut(alias) {
            Some(r) => r,
            None => match RouteTtft::new() {
                Some(new) => ttft.entry(alias.to_owned()).or_insert(new),
                None => return,
            },
        };
        let us = (took.as_micros() as u64).clamp(1, TTFT_MAX_US);
        let _ = r.hist.record(us);
        r.since_refresh += 1;
        // A quantile walks the histogram: recomputed every few samples.
        if r.since_refresh >= 16 || r.hist.len() == TTFT_MIN_SAMPLES {
            r.since_refresh = 0;
            r.p95 = Duration::from_micros(r.hist.value_at_quantile(0.95));
        }
        // A sliding view: old samples halve once there are many, so the
        // figure follows a fleet whose latency changes.
        if r.hist.len() >= TTFT_DECAY_AT {
            let old = r.hist.clone();
            r.hist.reset();
            for v in old.iter_recorded() {
                let _ = r
                    .hist
                    .record_n(v.value_iterated_to(), v.count_at_value() / 2);
            }
        }
    }

    /// Forgets every target `keep` does not name (after a reload), with
    /// its circuit.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut live = self.live.borrow_mut();
        live.retain(|k, _| keep(k));
        let open = live.values().filter(|l| l.open_until.is_some()).count();
        self.not_closed.set(open);
        self.ttft.borrow_mut().clear();
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

    /// Each target's latency EWMA (microseconds; 0 before a sample) and
    /// requests in flight (for the status page).
    pub fn figures(&self) -> Vec<(String, f64, u32)> {
        self.live
            .borrow()
            .iter()
            .map(|(k, l)| (k.clone(), l.ewma_us, l.inflight))
            .collect()
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

/// Samples a route's p95 needs before it is used.
pub const TTFT_MIN_SAMPLES: u64 = 20;
/// Samples at which a route's histogram halves its counts.
const TTFT_DECAY_AT: u64 = 4096;
/// Longest time to first token recorded (10 minutes), microseconds.
const TTFT_MAX_US: u64 = 600_000_000;

struct RouteTtft {
    hist: Histogram<u64>,
    p95: Duration,
    since_refresh: u32,
}

impl RouteTtft {
    fn new() -> Option<Self> {
        Some(RouteTtft {
            // Two significant figures over 1 µs..10 min: a few KiB a route.
            hist: Histogram::new_with_bounds(1, TTFT_MAX_US, 2).ok()?,
            p95: Duration::ZERO,
            since_refresh: 0,
        })
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
        // One pick in 50 is random: half of those, 1%, probe the slow one.
        assert!(slow > n / 400 && slow < n / 40, "{slow}");
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
        let breaker = BreakerSettings {
            failures: 3,
            error_percent: None,
            window: Duration::from_secs(10),
            min_calls: 20,
            open_for,
        };
        let fail = |at| {
            b.started(&t, at);
            b.ended(&t, None, Health::Unhealthy { open_for: None }, at, &breaker)
        };
        assert_eq!(fail(t0), None);
        // A neutral failure (a 4xx) neither counts nor resets.
        b.started(&t, t0);
        b.ended(&t, None, Health::Neutral, t0, &breaker);
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
                &breaker
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
                &breaker
            ),
            Some(again + Duration::from_secs(2))
        );
    }

    #[test]
    fn an_error_rate_over_the_window_opens_what_no_run_of_failures_would() {
        let b = Balancer::new(1);
        let t = target("every-other");
        let breaker = BreakerSettings {
            failures: 5,
            error_percent: Some(50),
            window: Duration::from_secs(10),
            min_calls: 10,
            open_for: Duration::from_secs(30),
        };
        let t0 = Instant::now();
        let mut opened = None;
        for i in 0..10 {
            b.started(&t, t0);
            let health = if i % 2 == 0 {
                Health::Unhealthy { open_for: None }
            } else {
                Health::Answered
            };
            if let Some(until) = b.ended(&t, None, health, t0, &breaker) {
                opened = Some((i, until));
            }
        }
        // Never two failures in a row, and only nine calls when the fifth
        // failed; the tenth call answered (an answer never trips it). The
        // next failure, at 6 of 11, opens it.
        assert_eq!(opened, None);
        b.started(&t, t0);
        let tripped = b.ended(&t, None, Health::Unhealthy { open_for: None }, t0, &breaker);
        assert_eq!(tripped, Some(t0 + breaker.open_for));
        // Without a rate, the same pattern never opens.
        let calm = Balancer::new(2);
        let only_runs = BreakerSettings {
            error_percent: None,
            ..breaker
        };
        for i in 0..40 {
            calm.started(&t, t0);
            let health = if i % 2 == 0 {
                Health::Unhealthy { open_for: None }
            } else {
                Health::Answered
            };
            assert_eq!(calm.ended(&t, None, health, t0, &only_runs), None);
        }
    }

    #[test]
    fn a_routes_ttft_p95_once_it_has_enough_samples() {
        let b = Balancer::new(1);
        for i in 1..TTFT_MIN_SAMPLES {
            b.note_ttft("r", Duration::from_millis(i));
        }
        assert_eq!(b.ttft_p95("r"), None);
        for i in 0..100 {
            b.note_ttft("r", Duration::from_millis(if i < 95 { 10 } else { 500 }));
        }
        let p95 = b.ttft_p95("r").unwrap();
        assert!(
            p95 >= Duration::from_millis(9) && p95 <= Duration::from_millis(501),
            "{p95:?}"
        );
        assert_eq!(b.ttft_p95("other"), None);
    }

    #[test]
    fn a_reload_forgets_targets_no_route_names() {
        let b = Balancer::new(1);
        let t0 = Instant::now();
        b.open_from_peer("p/gone", t0 + Duration::from_secs(60));
        b.open_from_peer("p/kept", t0 + Duration::from_secs(60));
        assert!(b.any_not_closed());
        b.retain(|t| t == "p/kept");
        assert_eq!(b.circuits(t0).len(), 1);
        assert!(b.any_not_closed());
        b.retain(|_| false);
        assert!(!b.any_not_closed() && b.circuits(t0).is_empty());
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
