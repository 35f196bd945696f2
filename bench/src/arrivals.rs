//! When requests are sent: a closed loop (each connection sends its next
//! request as soon as the previous answer is complete) or an open loop at a
//! target rate with constant or Poisson (exponential) gaps.
//!
//! Open loop: every shard owns an equal share of the rate as one arrival
//! sequence. Each arrival is released into the shard's queue when it is due
//! and the oldest queued arrival goes out on the next free connection.
//! Latency is measured from the arrival (intended) time, so a stalled
//! server is charged for every request it delayed, not just the one it was
//! serving (no coordinated omission); requests queue only when every
//! connection is busy, as they would in front of a real client pool.
//! Poisson sequences per shard add up to a Poisson process of the whole
//! rate.
//!
//! Pure: the random source is a seeded splitmix64, time is an argument.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced sends.
    Constant,
    /// Exponentially distributed gaps (a Poisson process).
    Poisson,
}

/// A small deterministic PRNG (splitmix64): reproducible load, no crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The send schedule of one connection in an open loop.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Mean gap between this connection's sends.
    mean_gap: Duration,
    arrivals: Arrivals,
    rng: Rng,
}

impl Schedule {
    /// Connection `index` of `connections` sharing `rate` requests/s.
    pub fn new(rate: f64, connections: usize, index: usize, arrivals: Arrivals, seed: u64) -> Self {
        let per_conn = (rate / connections.max(1) as f64).max(1e-9);
        Schedule {
            mean_gap: Duration::from_secs_f64(1.0 / per_conn),
            arrivals,
            rng: Rng::new(seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f)),
        }
    }

    /// Offset of the first send from the start: constant schedules are
    /// staggered so connections don't fire together.
    pub fn first(&mut self, index: usize, connections: usize) -> Duration {
        match self.arrivals {
            Arrivals::Constant => self
                .mean_gap
                .mul_f64(index as f64 / connections.max(1) as f64),
            Arrivals::Poisson => self.gap(),
        }
    }

    /// The gap to the next arrival.
    pub fn gap(&mut self) -> Duration {
        match self.arrivals {
            Arrivals::Constant => self.mean_gap,
            Arrivals::Poisson => {
                let u = 1.0 - self.rng.unit(); // (0, 1]
                self.mean_gap.mul_f64(-u.ln())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_gaps_and_stagger() {
        let mut s = Schedule::new(100.0, 4, 1, Arrivals::Constant, 1);
        assert_eq!(s.gap(), Duration::from_millis(40));
        assert_eq!(s.first(1, 4), Duration::from_millis(10));
    }

    #[test]
    fn poisson_mean_is_the_rate() {
        let mut s = Schedule::new(1000.0, 1, 0, Arrivals::Poisson, 7);
        let n = 20_000;
        let total: Duration = (0..n).map(|_| s.gap()).sum();
        let mean_ms = total.as_secs_f64() * 1000.0 / n as f64;
        assert!((0.95..1.05).contains(&mean_ms), "{mean_ms}");
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((0.9..1.1).contains(&var), "{var}");
    }
}
