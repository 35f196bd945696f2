//! Which target a route tries first, by its strategy, from what this
//! shard has seen of each target: requests in flight and an EWMA of the
//! time to an answer's head. Shard-local, no locks; the figures are keyed
//! by the target's `provider/model`, so they outlive config reloads.
//!
//! The choice itself ([`pick`]) is a pure function of those figures and a
//! random source, so its properties are unit-tested.

use crate::config::{ModelRoute, Strategy, Target};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// Weight of a new sample in the latency EWMA.
const ALPHA: f64 = 0.2;

#[derive(Debug, Default, Clone, Copy)]
struct Live {
    inflight: u32,
    /// Microseconds to the answer's head; 0 before the first sample.
    ewma_us: f64,
}

pub struct Balancer {
    live: RefCell<FxHashMap<String, Live>>,
    rng: Cell<u64>,
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

    /// An attempt at `t` starts (only routes that balance track this).
    pub fn started(&self, t: &Target) {
        let mut live = self.live.borrow_mut();
        match live.get_mut(&t.served_by) {
            Some(l) => l.inflight += 1,
            None => {
                live.insert(
                    t.served_by.clone(),
                    Live {
                        inflight: 1,
                        ewma_us: 0.0,
                    },
                );
            }
        }
    }

    /// It ended; `head` is how long its answer's head took, when it came.
    pub fn ended(&self, t: &Target, head: Option<Duration>) {
        if let Some(l) = self.live.borrow_mut().get_mut(&t.served_by) {
            l.inflight = l.inflight.saturating_sub(1);
            if let Some(h) = head {
                let us = h.as_secs_f64() * 1e6;
                l.ewma_us = if l.ewma_us == 0.0 {
                    us
                } else {
                    ALPHA * us + (1.0 - ALPHA) * l.ewma_us
                };
            }
        }
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
