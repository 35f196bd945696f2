//! Randomness the mock fleet can inject, so it behaves like a fleet rather
//! than one perfectly regular server: a time to first token drawn from a
//! distribution, a share of requests failing, a share of streams cut short.
//! Model-name behaviours (`mock-ttft-200ms`, `mock-503`, `mock-cut-after-3`)
//! still win: they are how a test asks for one exact behaviour.
//!
//! Sampling is seeded per shard (`--seed`), so a run is reproducible.

use crate::arrivals::Rng;
use shardgate_proto::mock::Behaviour;
use std::time::Duration;

/// Time to first token: fixed or drawn per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TtftDist {
    Fixed(Duration),
    Normal {
        mean: Duration,
        sd: Duration,
    },
    Uniform {
        lo: Duration,
        hi: Duration,
    },
    /// Exponential with this mean: long tails, like queueing in a real fleet.
    Exponential {
        mean: Duration,
    },
}

impl TtftDist {
    pub fn sample_ms(&self, rng: &mut Rng) -> u64 {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let v = match self {
            TtftDist::Fixed(d) => ms(d),
            TtftDist::Normal { mean, sd } => ms(mean) + ms(sd) * rng.normal(),
            TtftDist::Uniform { lo, hi } => ms(lo) + (ms(hi) - ms(lo)) * rng.unit(),
            TtftDist::Exponential { mean } => -ms(mean) * (1.0 - rng.unit()).ln(),
        };
        v.round().max(0.0) as u64
    }
}

/// `200ms`, `normal:200ms,50ms`, `uniform:100ms,300ms`, `exp:200ms`.
pub fn parse_ttft(s: &str) -> Result<TtftDist, String> {
    let bad = || {
        format!("{s:?}: expected DURATION, normal:MEAN,SD, uniform:MIN,MAX or exp:MEAN (e.g. normal:200ms,50ms)")
    };
    let dur = |v: &str| crate::args::parse_duration(v.trim()).map_err(|_| bad());
    let pair = |v: &str| -> Result<(Duration, Duration), String> {
        let (a, b) = v.split_once(',').ok_or_else(bad)?;
        Ok((dur(a)?, dur(b)?))
    };
    if let Some(v) = s.strip_prefix("normal:") {
        let (mean, sd) = pair(v)?;
        Ok(TtftDist::Normal { mean, sd })
    } else if let Some(v) = s.strip_prefix("uniform:") {
        let (lo, hi) = pair(v)?;
        if hi < lo {
            return Err(bad());
        }
        Ok(TtftDist::Uniform { lo, hi })
    } else if let Some(v) = s.strip_prefix("exp:") {
        Ok(TtftDist::Exponential { mean: dur(v)? })
    } else {
        Ok(TtftDist::Fixed(dur(s)?))
    }
}

/// A probability in [0, 1].
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?}: expected a fraction between 0 and 1")),
    }
}

/// What the mock injects, from the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injection {
    pub ttft: TtftDist,
    /// Share of requests answered with `error_status` (in the dialect's own
    /// error JSON).
    pub error_rate: f64,
    pub error_status: u16,
    /// Share of streamed answers cut after a random number of tokens.
    pub cut_rate: f64,
}

impl Default for Injection {
    fn default() -> Self {
        Injection {
            ttft: TtftDist::Fixed(Duration::ZERO),
            error_rate: 0.0,
            error_status: 503,
            cut_rate: 0.0,
        }
    }
}

impl Injection {
    /// The defaults of one request: `base` with its ttft drawn. Model-name
    /// behaviours are applied on top of these by the caller.
    pub fn defaults(&self, base: Behaviour, rng: &mut Rng) -> Behaviour {
        Behaviour {
            ttft_ms: self.ttft.sample_ms(rng),
            ..base
        }
    }

    /// Failures drawn for one request whose behaviour is `b` (after the
    /// model name): never replaces a failure or cut the name asked for.
    pub fn failures(&self, mut b: Behaviour, stream: bool, rng: &mut Rng) -> Behaviour {
        if b.fail_status.is_none() && self.error_rate > 0.0 && rng.unit() < self.error_rate {
            b.fail_status = Some(self.error_status);
        }
        if stream
            && b.cut_after.is_none()
            && self.cut_rate > 0.0
            && b.output_tokens > 0
            && rng.unit() < self.cut_rate
        {
            b.cut_after = Some((rng.next_u64() % b.output_tokens as u64) as usize);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_refuses_nonsense() {
        let ms = Duration::from_millis;
        assert_eq!(parse_ttft("150ms"), Ok(TtftDist::Fixed(ms(150))));
        assert_eq!(
            parse_ttft("normal:200ms,50ms"),
            Ok(TtftDist::Normal {
                mean: ms(200),
                sd: ms(50)
            })
        );
        assert_eq!(
            parse_ttft("uniform:100ms,300ms"),
            Ok(TtftDist::Uniform {
                lo: ms(100),
                hi: ms(300)
            })
        );
        assert_eq!(
            parse_ttft("exp:80ms"),
            Ok(TtftDist::Exponential { mean: ms(80) })
        );
        for bad in ["uniform:300ms,100ms", "normal:200ms", "soon", "exp:"] {
            assert!(parse_ttft(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("1.5").is_err() && parse_rate("x").is_err());
    }

    #[test]
    fn samples_follow_their_distribution() {
        let mut rng = Rng::new(7);
        let n = 20_000;
        let mean = |d: TtftDist, rng: &mut Rng| {
            (0..n).map(|_| d.sample_ms(rng) as f64).sum::<f64>() / n as f64
        };
        let ms = Duration::from_millis;
        let m = mean(
            TtftDist::Normal {
                mean: ms(200),
                sd: ms(50),
            },
            &mut rng,
        );
        assert!((195.0..205.0).contains(&m), "{m}");
        let m = mean(
            TtftDist::Uniform {
                lo: ms(100),
                hi: ms(300),
            },
            &mut rng,
        );
        assert!((195.0..205.0).contains(&m), "{m}");
        let m = mean(TtftDist::Exponential { mean: ms(80) }, &mut rng);
        assert!((76.0..84.0).contains(&m), "{m}");
        for _ in 0..1000 {
            let v = TtftDist::Uniform {
                lo: ms(100),
                hi: ms(300),
            }
            .sample_ms(&mut rng);
            assert!((100..=300).contains(&v));
        }
    }

    #[test]
    fn failures_at_their_rate_and_never_over_the_model_name() {
        let mut rng = Rng::new(1);
        let inj = Injection {
            error_rate: 0.1,
            cut_rate: 0.5,
            ..Injection::default()
        };
        let base = Behaviour {
            output_tokens: 10,
            ..Behaviour::default()
        };
        let n = 10_000;
        let (mut errors, mut cuts) = (0, 0);
        for _ in 0..n {
            let b = inj.failures(base, true, &mut rng);
            errors += usize::from(b.fail_status == Some(503));
            if let Some(at) = b.cut_after {
                assert!(at < 10);
                cuts += 1;
            }
        }
        assert!((800..1200).contains(&errors), "{errors}");
        assert!((4500..5500).contains(&cuts), "{cuts}");
        // Not streamed: never cut. Named behaviours stay.
        assert_eq!(inj.failures(base, false, &mut rng).cut_after, None);
        let named = Behaviour {
            fail_status: Some(429),
            cut_after: Some(2),
            ..base
        };
        let always = Injection {
            error_rate: 1.0,
            cut_rate: 1.0,
            ..Injection::default()
        };
        let b = always.failures(named, true, &mut rng);
        assert_eq!((b.fail_status, b.cut_after), (Some(429), Some(2)));
    }
}
