//! Cost of one routing decision (the order a route's targets are tried
//! in), per strategy, on a shard's balancer with three targets.
//!
//! `cargo run --release -p shardgate-core --example route_bench`

// A benchmark measures time; the request path reads the coarse clock.
#![allow(clippy::disallowed_methods)]
use shardgate_core::config::route::{RetryPolicy, RouteTimeouts};
use shardgate_core::config::{BreakerSettings, ModelRoute, Strategy, Target};
use shardgate_core::gateway::balance::Balancer;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn main() {
    let targets: Vec<Target> = (0..3)
        .map(|i| Target {
            provider: i,
            model: format!("model-{i}"),
            served_by: format!("p{i}/model-{i}"),
            model_json: Vec::new(),
            weight: i as u32 + 1,
            context_window: None,
            head_lines: Vec::new(),
        })
        .collect();
    let b = Balancer::new(42);
    for t in &targets {
        let now = Instant::now();
        b.started(t, now);
        let ok = shardgate_core::gateway::balance::Health::Answered;
        b.ended(
            t,
            Some(Duration::from_millis(50)),
            ok,
            now,
            &BreakerSettings {
                failures: 5,
                error_percent: None,
                window: Duration::from_secs(10),
                min_calls: 20,
                open_for: Duration::from_secs(30),
            },
        );
    }
    for strategy in [
        Strategy::Priority,
        Strategy::Weighted,
        Strategy::LeastInflight,
        Strategy::LowestLatency,
        Strategy::Cheapest,
    ] {
        let route = ModelRoute {
            targets: targets.clone(),
            strategy,
            fallback: Vec::new(),
            alias_line: Vec::new(),
            retry: RetryPolicy::default(),
            timeouts: RouteTimeouts {
                connect: Duration::from_secs(5),
                first_token: Duration::from_secs(60),
                idle: Duration::from_secs(60),
                total: None,
            },
            hedge: None,
            cache: None,
        };
        let n = 1_000_000u32;
        let t = Instant::now();
        let mut sum = 0usize;
        for _ in 0..n {
            sum += black_box(&b).order(black_box(&route), |t| t.provider as u64)[0];
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("{strategy:?}: {ns:.0} ns per decision (checksum {sum})");
    }
}
