//! `shardgate-bench compare`: the same load against several targets,
//! interleaved round-robin for several rounds (a noisy machine drifts; the
//! interleaving spreads the drift over every target so ratios stay fair),
//! with CPU time per request for targets that name a pid.

use crate::args::TargetSpec;
use crate::error::BenchError;
use crate::loadgen::{run_load, LoadConfig};
use crate::machine::MachineInfo;
use crate::report::{ErrorCounts, Percentiles, Stats};
use crate::shards::ShardPlan;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub targets: Vec<TargetSpec>,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: Vec<usize>,
    pub shards: ShardPlan,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u32,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub shape: crate::workload::Shape,
    pub ramp_up: Duration,
    /// Trust settings for `https://` targets.
    pub tls: crate::tls::TlsOptions,
}

/// One target at one concurrency level, over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub url: String,
    pub model: String,
    pub pid: Option<u32>,
    pub rps_rounds: Vec<f64>,
    pub rps_median: f64,
    /// `rps_median` over the first target's.
    pub ratio: f64,
    /// Percentiles over every request of every round (merged histograms).
    pub latency_us: Percentiles,
    pub ttft_us: Option<Percentiles>,
    /// p50 latency minus the first target's.
    pub added_p50_us: i64,
    pub added_p99_us: i64,
    /// CPU of `pid` over all rounds' windows per successful request.
    pub cpu_us_per_request: Option<f64>,
    /// The same, in cores (CPU seconds per wall second).
    pub cpu_cores: Option<f64>,
    /// The load generator's own CPU, in cores (is it the bottleneck?).
    pub loadgen_cpu_cores: Option<f64>,
    pub requests: u64,
    pub errors: ErrorCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub connections: usize,
    pub targets: Vec<TargetResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub machine: MachineInfo,
    pub rounds: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub loadgen_shards: usize,
    pub loadgen_pinned: bool,
    pub stream: bool,
    pub max_tokens: u32,
    pub levels: Vec<LevelResult>,
}

/// Accumulates one target's rounds.
struct Acc {
    rps: Vec<f64>,
    stats: Stats,
    cpu_us: u64,
    cpu_known: bool,
    loadgen_cores: Vec<f64>,
    requests: u64,
    seconds: f64,
}

pub fn run_compare(
    cfg: &CompareConfig,
    mut progress: impl FnMut(&str),
) -> Result<CompareReport, BenchError> {
    if cfg.targets.is_empty() {
        return Err(BenchError::Usage(
            "compare needs at least one --target".into(),
        ));
    }
    let mut levels = Vec::with_capacity(cfg.connections.len());
    for &connections in &cfg.connections {
        let mut accs: Vec<Acc> = Vec::with_capacity(cfg.targets.len());
        for _ in &cfg.targets {
            accs.push(Acc {
                rps: Vec::new(),
                stats: Stats::new()?,
                cpu_us: 0,
                cpu_known: true,
                loadgen_cores: Vec::new(),
                requests: 0,
                seconds: 0.0,
            });
        }
        for round in 0..cfg.rounds.max(1) {
            for (t, acc) in cfg.targets.iter().zip(accs.iter_mut()) {
                let load = load_config(cfg, t, connections);
                let (report, stats) = run_load(&load, t.pid.as_slice())?;
                progress(&format!(
                    "round {}/{} c={} {:<10} {:>10.1} req/s  p50 {:.3}ms  p99 {:.3}ms  errors {}{}",
                    round + 1,
                    cfg.rounds.max(1),
                    connections,
                    t.name,
                    report.requests_per_second,
                    report.latency_us.p50 as f64 / 1000.0,
                    report.latency_us.p99 as f64 / 1000.0,
                    report.errors_total,
                    report
                        .watched_cpu_us_per_request
                        .map(|c| format!("  cpu {c:.1}us/req"))
                        .unwrap_or_default(),
                ));
                acc.rps.push(report.requests_per_second);
                acc.stats.merge(&stats)?;
                acc.requests += report.requests;
                acc.seconds += report.duration_s;
                match report.watched_cpu_us {
                    Some(us) => acc.cpu_us += us,
                    None => acc.cpu_known = false,
                }
                if let Some(c) = report.loadgen_cpu_cores {
                    acc.loadgen_cores.push(c);
                }
            }
        }
        let mut results: Vec<TargetResult> = cfg
            .targets
            .iter()
            .zip(accs)
            .map(|(t, acc)| {
                let cpu = (t.pid.is_some() && acc.cpu_known).then_some(acc.cpu_us);
                TargetResult {
                    name: t.name.clone(),
                    url: t.url.to_string(),
                    model: t.model.clone().unwrap_or_else(|| cfg.model.clone()),
                    pid: t.pid,
                    rps_median: median(&acc.rps),
                    rps_rounds: acc.rps,
                    ratio: 1.0,
                    latency_us: Percentiles::of(&acc.stats.latency),
                    ttft_us: cfg.stream.then(|| Percentiles::of(&acc.stats.ttft)),
                    added_p50_us: 0,
                    added_p99_us: 0,
                    cpu_us_per_request: cpu
                        .filter(|_| acc.requests > 0)
                        .map(|us| us as f64 / acc.requests as f64),
                    cpu_cores: cpu
                        .filter(|_| acc.seconds > 0.0)
                        .map(|us| us as f64 / 1e6 / acc.seconds),
                    loadgen_cpu_cores: (!acc.loadgen_cores.is_empty())
                        .then(|| median(&acc.loadgen_cores)),
                    requests: acc.requests,
                    errors: acc.stats.errors.clone(),
                }
            })
            .collect();
        if let Some(first) = results.first().cloned() {
            for r in &mut results {
                r.ratio = if first.rps_median > 0.0 {
                    r.rps_median / first.rps_median
                } else {
                    0.0
                };
                r.added_p50_us = r.latency_us.p50 as i64 - first.latency_us.p50 as i64;
                r.added_p99_us = r.latency_us.p99 as i64 - first.latency_us.p99 as i64;
            }
        }
        levels.push(LevelResult {
            connections,
            targets: results,
        });
    }
    Ok(CompareReport {
        machine: MachineInfo::collect(),
        rounds: cfg.rounds.max(1),
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        loadgen_shards: cfg.shards.count,
        loadgen_pinned: cfg.shards.pin,
        stream: cfg.stream,
        max_tokens: cfg.max_tokens,
        levels,
    })
}

fn load_config(cfg: &CompareConfig, t: &TargetSpec, connections: usize) -> LoadConfig {
    LoadConfig {
        url: t.url.clone(),
        connections,
        duration: cfg.duration,
        warmup: cfg.warmup,
        shards: cfg.shards,
        model: t.model.clone().unwrap_or_else(|| cfg.model.clone()),
        stream: cfg.stream,
        max_tokens: cfg.max_tokens,
        api_key: t.api_key.clone().or_else(|| cfg.api_key.clone()),
        timeout: cfg.timeout,
        shape: cfg.shape.clone(),
        ramp_up: cfg.ramp_up,
        progress: false,
        tls: cfg.tls.clone(),
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The side-by-side table.
pub fn render_table(r: &CompareReport) -> String {
    let mut out = String::new();
    out.push_str(&format!("{}\n", r.machine.one_line()));
    out.push_str(&format!(
        "load: {} shard{} ({}), {} round{} interleaved, warmup {:.1}s + {:.1}s per run, stream={} max_tokens={}\n",
        r.loadgen_shards,
        if r.loadgen_shards == 1 { "" } else { "s" },
        if r.loadgen_pinned { "pinned" } else { "unpinned" },
        r.rounds,
        if r.rounds == 1 { "" } else { "s" },
        r.warmup_s,
        r.duration_s,
        r.stream,
        r.max_tokens,
    ));
    for level in &r.levels {
        out.push_str(&format!("\nconnections={}\n", level.connections));
        out.push_str(&format!(
            "{:<12} {:>11} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8}\n",
            "target",
            "req/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "+p50 us",
            "cpu us/req",
            "cpu cores",
            "errors"
        ));
        for t in &level.targets {
            out.push_str(&format!(
                "{:<12} {:>11.1} {:>7.3} {:>9.3} {:>9.3} {:>10} {:>10} {:>9} {:>8}\n",
                t.name,
                t.rps_median,
                t.ratio,
                t.latency_us.p50 as f64 / 1000.0,
                t.latency_us.p99 as f64 / 1000.0,
                t.added_p50_us,
                t.cpu_us_per_request
                    .map_or_else(|| "-".to_string(), |c| format!("{c:.1}")),
                t.cpu_cores
                    .map_or_else(|| "-".to_string(), |c| format!("{c:.2}")),
                t.errors.total(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn table_renders() {
        let t = TargetResult {
            name: "direct".into(),
            url: "http://127.0.0.1:1/".into(),
            model: "mock-1".into(),
            pid: None,
            rps_rounds: vec![1.0],
            rps_median: 1000.0,
            ratio: 1.0,
            latency_us: Percentiles {
                p50: 1500,
                p99: 3000,
                ..Percentiles::default()
            },
            ttft_us: None,
            added_p50_us: 0,
            added_p99_us: 0,
            cpu_us_per_request: Some(12.34),
            cpu_cores: Some(0.5),
            loadgen_cpu_cores: None,
            requests: 10,
            errors: ErrorCounts::default(),
        };
        let r = CompareReport {
            machine: MachineInfo::collect(),
            rounds: 3,
            duration_s: 5.0,
            warmup_s: 1.0,
            loadgen_shards: 1,
            loadgen_pinned: false,
            stream: false,
            max_tokens: 16,
            levels: vec![LevelResult {
                connections: 64,
                targets: vec![t],
            }],
        };
        let table = render_table(&r);
        assert!(table.contains("connections=64"));
        assert!(table.contains("direct"));
        assert!(table.contains("12.3"));
        assert!(serde_json::to_string(&r)
            .unwrap()
            .contains("\"rps_median\":1000.0"));
    }
}
