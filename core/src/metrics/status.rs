//! The status page's view of the merged counts (`GET /admin/status`).

use super::{operator_endpoint, Denial, ShardStats, DENIALS_KEPT};
use hdrhistogram::Histogram;

impl ShardStats {
    /// The status page's figures (`GET /admin/status`), from merged
    /// snapshots: totals, latency percentiles, usage by team, targets, the
    /// top keys by spend and the latest refusals.
    pub fn status_json(&self, missing: usize) -> serde_json::Value {
        use serde_json::json;
        let client = |endpoint: &str| !operator_endpoint(endpoint);
        let requests: u64 = self
            .requests
            .iter()
            .filter(|r| client(r.0 .0))
            .map(|r| r.1)
            .sum();
        let mut by_status: Vec<(u16, u64)> = Vec::new();
        for &((_, status), n) in self.requests.iter().filter(|r| client(r.0 .0)) {
            match by_status.iter_mut().find(|(s, _)| *s == status) {
                Some((_, m)) => *m += n,
                None => by_status.push((status, n)),
            }
        }
        by_status.sort_unstable();
        let errors: u64 = by_status
            .iter()
            .filter(|(s, _)| *s >= 400)
            .map(|(_, n)| n)
            .sum();
        let mut all: Option<Histogram<u64>> = None;
        for (_, d) in self.durations.iter().filter(|d| client(d.0)) {
            match &mut all {
                Some(h) => {
                    let _ = h.add(&d.micros);
                }
                None => all = Some(d.micros.clone()),
            }
        }
        let ms = |q: f64| {
            all.as_ref()
                .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3)
        };
        let usd = |micros: u64| micros as f64 / 1e6;
        let mut teams: Vec<_> = self.teams.iter().collect();
        teams.sort_by(|a, b| a.0.cmp(b.0));
        let teams: Vec<_> = teams
            .into_iter()
            .map(|(team, u)| {
                json!({
                    "team": team,
                    "requests": u.requests,
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "spend_usd": usd(u.spend_micros),
                })
            })
            .collect();
        let circuits = self.circuits.as_deref().unwrap_or(&[]);
        let latency = self.latency.as_deref().unwrap_or(&[]);
        let mut targets: Vec<_> = self.targets.iter().collect();
        targets.sort_by(|a, b| a.0.cmp(b.0));
        let targets: Vec<_> = targets
            .into_iter()
            .map(|(name, t)| {
                let circuit = circuits
                    .iter()
                    .find(|c| &c.0 == name)
                    .map_or("closed", |c| c.1);
                let figures = latency.iter().find(|l| &l.target == name);
                json!({
                    "target": name,
                    "answered": t.answered,
                    "failed": t.failed,
                    "cancelled": t.cancelled,
                    "circuit": circuit,
                    "latency_ms": figures.map(|f| f.ewma_us() / 1e3),
                    "in_flight": figures.map(|f| f.in_flight),
                })
            })
            .collect();
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_by(|a, b| b.1.spend_micros.cmp(&a.1.spend_micros).then(a.0.cmp(b.0)));
        let top_keys: Vec<_> = keys
            .into_iter()
            .take(10)
            .map(|(id, k)| {
                json!({
                    "key_id": id,
                    "team": k.team,
                    "requests": k.requests,
                    "spend_usd": usd(k.spend_micros),
                })
            })
            .collect();
        let mut denials: Vec<&Denial> = self.denials.iter().collect();
        denials.sort_by_key(|d| std::cmp::Reverse(d.unix_ms));
        denials.truncate(DENIALS_KEPT);
        json!({
            "requests": requests,
            "errors": errors,
            "by_status": by_status.iter().map(|(s, n)| json!({"status": s, "count": n})).collect::<Vec<_>>(),
            "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99) },
            "open_connections": self.open_connections.iter().map(|c| c.1).sum::<usize>(),
            "teams": teams,
            "targets": targets,
            "top_keys": top_keys,
            "denials": denials,
            "shards_missing": missing,
        })
    }
}
