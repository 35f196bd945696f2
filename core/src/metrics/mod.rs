//! Metrics. Each shard counts what its requests' records say
//! ([`ShardStats::observe`], fed only by [`RequestEnd`]), with no lock and
//! nothing shared. A scrape asks every other shard for a snapshot over the
//! shard mesh and merges them (`admin.rs`), then renders Prometheus text.
//!
//! Labels have bounded cardinality: endpoints and error labels come from
//! fixed sets, provider and model names from config, teams from the key
//! table. Nothing a client writes becomes a label.

mod model;
mod status;

use crate::record::{AttemptOutcome, RequestEnd};
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use std::fmt::Write as _;

/// Request durations are kept in microseconds, up to an hour, to two
/// significant figures.
const MAX_MICROS: u64 = 3_600_000_000;

/// `le` bounds of the request duration histograms, in seconds.
const DURATION_BOUNDS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// `le` bounds of the token histograms (OpenTelemetry's advice for
/// `gen_ai.client.token.usage`).
const TOKEN_BOUNDS: [u64; 14] = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
];

/// A guardrail check's name, stage and verdict.
type GuardKey = (String, &'static str, &'static str);

/// One shard's counts since it started.
#[derive(Clone, Default)]
pub struct ShardStats {
    /// Requests by endpoint and status (0: nothing was answered).
    requests: Vec<((&'static str, u16), u64)>,
    /// Requests that failed, by error label.
    errors: Vec<(&'static str, u64)>,
    /// Request duration by endpoint.
    durations: Vec<(&'static str, Duration)>,
    /// By `provider/model`.
    /// Fx, not SipHash: keys come from config, not from clients, and this
    /// is looked up once per attempt.
    targets: FxHashMap<String, TargetStats>,
    /// Open client connections and requests in flight, per shard id (one
    /// entry in a shard's own snapshot; merged snapshots keep each shard's).
    open_connections: Vec<(usize, usize)>,
    in_flight: Vec<(usize, usize)>,
    /// Tool calls by server (from config; `-` for calls in model answers),
    /// where they were seen, and the decision.
    tool_calls: Vec<((String, &'static str, &'static str), u64)>,
    /// Guardrail checks by check, stage and verdict: how many ran, and
    /// their time in microseconds.
    guardrails: Vec<(GuardKey, (u64, u64))>,
    /// Audit events dropped because the writer was behind.
    audit_dropped: u64,
    /// The audit writer's totals (events, bytes, errors), when there is one
    /// (process-wide: taken once, from the scraping shard).
    audit_writer: Option<(u64, u64, u64)>,
    /// Targets whose circuit is not closed, and its state: in a merge, the
    /// worst any shard reports (`open` over `half_open`). `None` until a
    /// serving shard's snapshot is in.
    circuits: Option<Vec<(String, &'static str)>>,
    /// Requests, tokens and spend by team (`""`: no team): one lookup a
    /// request for all of them.
    teams: FxHashMap<String, Usage>,
    /// Requests and spend by key id (ids come from the key table).
    keys: FxHashMap<String, KeyUsage>,
    /// The latest refusals (401, 403, 429), newest last.
    denials: std::collections::VecDeque<Denial>,
    /// Each target's latency figure and requests in flight, as the serving
    /// shards' balancers see them (merged: the mean of the shards'
    /// figures, the sum of their requests in flight).
    latency: Option<Vec<LatencyFigure>>,
    /// By model call: alias, provider, team; the GenAI histograms.
    model: model::ModelStats,
    /// The response cache: requests by route and result (hit, miss,
    /// bypass), tokens hits saved (input, output), and what is kept (entries,
    /// bytes, evictions; each shard's own, summed when merged).
    cache: Vec<((String, &'static str), u64)>,
    cache_saved: (u64, u64),
    /// Lookups in the shared tier by what it answered.
    cache_shared: Vec<(&'static str, u64)>,
    cache_kept: (u64, u64, u64),
}

/// One target's latency as one or more shards see it.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyFigure {
    pub target: String,
    /// The sum of the shards' EWMAs (microseconds) that have a sample...
    ewma_sum_us: f64,
    /// ...and how many they are.
    shards_sampled: u32,
    pub in_flight: u32,
}

impl LatencyFigure {
    /// The mean of the shards' figures, microseconds (0 before a sample).
    pub fn ewma_us(&self) -> f64 {
        if self.shards_sampled == 0 {
            0.0
        } else {
            self.ewma_sum_us / f64::from(self.shards_sampled)
        }
    }
}

/// How many refusals the status view keeps per shard.
const DENIALS_KEPT: usize = 20;

#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Charged, in micro-dollars.
    pub spend_micros: u64,
}

#[derive(Clone, Default, Debug)]
struct KeyUsage {
    team: Option<String>,
    requests: u64,
    spend_micros: u64,
}

/// One refused request, for the status page.
#[derive(Clone, Debug, serde::Serialize)]
struct Denial {
    unix_ms: u64,
    request_id: String,
    key_id: Option<String>,
    team: Option<String>,
    status: u16,
    reason: &'static str,
    model: Option<String>,
}

#[derive(Clone)]
struct Duration {
    micros: Histogram<u64>,
    sum_micros: u64,
}

#[derive(Clone, Default)]
struct TargetStats {
    provider: String,
    model: String,
    answered: u64,
    failed: u64,
    /// Hedges' losers.
    cancelled: u64,
    input_tokens: Buckets,
    output_tokens: Buckets,
}

/// A fixed-bucket histogram (counts per [`TOKEN_BOUNDS`] bucket, and one
/// past the last).
#[derive(Clone, Default)]
struct Buckets {
    counts: [u64; TOKEN_BOUNDS.len() + 1],
    sum: u64,
}

impl Buckets {
    fn record(&mut self, v: u64) {
        let i = TOKEN_BOUNDS.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    fn merge(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(other.sum);
    }
}

impl std::fmt::Debug for ShardStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.requests.iter().map(|r| r.1).sum();
        write!(f, "ShardStats({total} requests)")
    }
}

impl ShardStats {
    /// Counts one request from its record.
    pub fn observe(&mut self, end: &RequestEnd<'_, '_>, team: Option<&str>) {
        let t = end.trail;
        bump(&mut self.requests, (t.endpoint, end.status.unwrap_or(0)), 1);
        if let Some(label) = end.error {
            bump(&mut self.errors, label, 1);
        }
        let micros = end.ended.duration_since(end.started).as_micros() as u64;
        let i = match self.durations.iter().position(|d| d.0.same(&t.endpoint)) {
            Some(i) => i,
            None => {
                let Ok(micros) = Histogram::new_with_bounds(1, MAX_MICROS, 2) else {
                    return;
                };
                let fresh = Duration {
                    micros,
                    sum_micros: 0,
                };
                self.durations.push((t.endpoint, fresh));
                self.durations.len() - 1
            }
        };
        let durations = &mut self.durations[i].1;
        durations
            .micros
            .saturating_record(micros.clamp(1, MAX_MICROS));
        durations.sum_micros = durations.sum_micros.saturating_add(micros);
        for a in &t.attempts {
            let target = &a.target.served_by;
            let stats = match self.targets.get_mut(target.as_str()) {
                Some(s) => s,
                None => self.targets.entry(target.clone()).or_insert_with(|| {
                    let (provider, model) = target.split_once('/').unwrap_or(("", target));
                    TargetStats {
                        provider: escape(provider),
                        model: escape(model),
                        ..TargetStats::default()
                    }
                }),
            };
            match a.outcome {
                AttemptOutcome::Answered => stats.answered += 1,
                AttemptOutcome::Failed(_) | AttemptOutcome::ClientLeft => stats.failed += 1,
                // A hedge's loser did not fail: another answer came first.
                AttemptOutcome::Cancelled => stats.cancelled += 1,
            }
            if let Some(u) = a.metered.as_ref().and_then(|m| m.usage) {
                if let Some(n) = u.prompt_tokens {
                    stats.input_tokens.record(n);
                }
                if let Some(n) = u.completion_tokens {
                    stats.output_tokens.record(n);
                }
            }
        }
        self.model.observe(end, team, micros);
        // The status view is about client traffic: operators' own requests
        // (scrapes, the page's polls) stay out of it.
        if operator_endpoint(t.endpoint) {
            return;
        }
        let (input, output) = t
            .attempts
            .iter()
            .filter_map(|a| a.metered.as_ref()?.usage)
            .fold((0, 0), |(i, o), u| {
                (
                    i + u.prompt_tokens.unwrap_or(0),
                    o + u.completion_tokens.unwrap_or(0),
                )
            });
        let usage = match self.teams.get_mut(team.unwrap_or("")) {
            Some(u) => u,
            None => self.teams.entry(team.unwrap_or("").to_owned()).or_default(),
        };
        usage.requests += 1;
        usage.input_tokens += input;
        usage.output_tokens += output;
        usage.spend_micros += t.cost_micros;
        if let Some(actor) = &t.actor {
            let k = match self.keys.get_mut(actor.key_id.as_str()) {
                Some(k) => k,
                None => self
                    .keys
                    .entry(actor.key_id.clone())
                    .or_insert_with(|| KeyUsage {
                        team: actor.team.clone(),
                        ..KeyUsage::default()
                    }),
            };
            k.requests += 1;
            k.spend_micros += t.cost_micros;
        }
        if let (Some(status @ (401 | 403 | 429)), Some(reason)) = (end.status, end.error) {
            if self.denials.len() == DENIALS_KEPT {
                self.denials.pop_front();
            }
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.denials.push_back(Denial {
                unix_ms,
                request_id: end.rid.to_owned(),
                key_id: t.actor.as_ref().map(|a| a.key_id.clone()),
                team: team.map(str::to_owned),
                status,
                reason,
                model: t.alias.clone(),
            });
        }
    }

    /// This shard's counts, with its open connections, to send to a scrape.
    pub fn snapshot(&self, shard: usize, open_connections: usize, in_flight: usize) -> ShardStats {
        let mut s = self.clone();
        s.open_connections = vec![(shard, open_connections)];
        s.in_flight = vec![(shard, in_flight)];
        s
    }

    /// One tool call: `server` from config (`-` for a model answer's).
    pub fn tool_call(&mut self, server: &str, source: &'static str, decision: &'static str) {
        match self
            .tool_calls
            .iter_mut()
            .find(|((s, so, d), _)| s == server && *so == source && *d == decision)
        {
            Some((_, n)) => *n += 1,
            None => self
                .tool_calls
                .push(((server.to_owned(), source, decision), 1)),
        }
    }

    /// A request's guardrail verdicts.
    pub fn guardrails(&mut self, records: &[crate::guardrails::GuardRecord]) {
        for r in records {
            let key = |(c, s, v): &(String, &str, &str)| {
                *c == r.check && *s == r.stage && *v == r.verdict
            };
            match self.guardrails.iter_mut().find(|(k, _)| key(k)) {
                Some((_, (n, us))) => {
                    *n += 1;
                    *us += r.latency_us;
                }
                None => self
                    .guardrails
                    .push(((r.check.clone(), r.stage, r.verdict), (1, r.latency_us))),
            }
        }
    }

    /// How the response cache served a request to route `alias`.
    pub fn cache(&mut self, alias: &str, note: &crate::record::CacheNote) {
        match self
            .cache
            .iter_mut()
            .find(|((a, r), _)| a == alias && *r == note.result)
        {
            Some((_, n)) => *n += 1,
            None => self.cache.push(((alias.to_owned(), note.result), 1)),
        }
        if let Some(r) = note.shared {
            bump(&mut self.cache_shared, r, 1);
        }
        if let Some(u) = &note.saved {
            self.cache_saved.0 += u.prompt_tokens.unwrap_or(0);
            self.cache_saved.1 += u.completion_tokens.unwrap_or(0);
        }
    }

    /// What this shard's cache keeps (entries, bytes, evictions so far).
    pub fn set_cache_kept(&mut self, kept: (u64, u64, u64)) {
        self.cache_kept = kept;
    }

    /// The circuits that are not closed, set on a serving shard's snapshot.
    pub fn set_circuits(&mut self, circuits: Vec<(String, &'static str)>) {
        self.circuits = Some(circuits);
    }

    /// The balancer's latency figures (target, EWMA in microseconds, 0
    /// before a sample, and requests in flight), set on a serving shard's
    /// snapshot.
    pub fn set_latency(&mut self, latency: Vec<(String, f64, u32)>) {
        let figures = latency
            .into_iter()
            .map(|(target, ewma_us, in_flight)| LatencyFigure {
                target,
                ewma_sum_us: ewma_us,
                shards_sampled: u32::from(ewma_us > 0.0),
                in_flight,
            })
            .collect();
        self.latency = Some(figures);
    }

    /// The audit log's counts, set on a snapshot.
    pub fn set_audit(&mut self, dropped: u64, writer: Option<(u64, u64, u64)>) {
        self.audit_dropped = dropped;
        self.audit_writer = writer;
    }

    /// Adds another shard's snapshot.
    pub fn merge(&mut self, other: &ShardStats) {
        for &(key, n) in &other.requests {
            bump(&mut self.requests, key, n);
        }
        for &(label, n) in &other.errors {
            bump(&mut self.errors, label, n);
        }
        for (endpoint, d) in &other.durations {
            match self.durations.iter_mut().find(|x| x.0 == *endpoint) {
                Some((_, mine)) => {
                    let _ = mine.micros.add(&d.micros);
                    mine.sum_micros = mine.sum_micros.saturating_add(d.sum_micros);
                }
                None => self.durations.push((endpoint, d.clone())),
            }
        }
        for (name, t) in &other.targets {
            let mine = self
                .targets
                .entry(name.clone())
                .or_insert_with(|| TargetStats {
                    provider: t.provider.clone(),
                    model: t.model.clone(),
                    ..TargetStats::default()
                });
            mine.answered += t.answered;
            mine.failed += t.failed;
            mine.cancelled += t.cancelled;
            mine.input_tokens.merge(&t.input_tokens);
            mine.output_tokens.merge(&t.output_tokens);
        }
        self.open_connections
            .extend_from_slice(&other.open_connections);
        self.in_flight.extend_from_slice(&other.in_flight);
        for (key, n) in &other.tool_calls {
            match self.tool_calls.iter_mut().find(|(k, _)| k == key) {
                Some((_, mine)) => *mine += n,
                None => self.tool_calls.push((key.clone(), *n)),
            }
        }
        for (key, (n, us)) in &other.guardrails {
            match self.guardrails.iter_mut().find(|(k, _)| k == key) {
                Some((_, (mine, my_us))) => {
                    *mine += n;
                    *my_us += us;
                }
                None => self.guardrails.push((key.clone(), (*n, *us))),
            }
        }
        for (team, u) in &other.teams {
            let mine = self.teams.entry(team.clone()).or_default();
            mine.requests += u.requests;
            mine.input_tokens += u.input_tokens;
            mine.output_tokens += u.output_tokens;
            mine.spend_micros += u.spend_micros;
        }
        for (key, u) in &other.keys {
            let mine = self.keys.entry(key.clone()).or_insert_with(|| KeyUsage {
                team: u.team.clone(),
                ..KeyUsage::default()
            });
            mine.requests += u.requests;
            mine.spend_micros += u.spend_micros;
        }
        for (key, n) in &other.cache {
            match self.cache.iter_mut().find(|(k, _)| k == key) {
                Some((_, mine)) => *mine += n,
                None => self.cache.push((key.clone(), *n)),
            }
        }
        for &(r, n) in &other.cache_shared {
            bump(&mut self.cache_shared, r, n);
        }
        self.cache_saved.0 += other.cache_saved.0;
        self.cache_saved.1 += other.cache_saved.1;
        self.cache_kept.0 += other.cache_kept.0;
        self.cache_kept.1 += other.cache_kept.1;
        self.cache_kept.2 += other.cache_kept.2;
        self.denials.extend(other.denials.iter().cloned());
        self.model.merge(&other.model);
        if let Some(theirs) = &other.latency {
            let mine = self.latency.get_or_insert_with(Vec::new);
            for f in theirs {
                match mine.iter_mut().find(|m| m.target == f.target) {
                    Some(m) => {
                        m.ewma_sum_us += f.ewma_sum_us;
                        m.shards_sampled += f.shards_sampled;
                        m.in_flight += f.in_flight;
                    }
                    None => mine.push(f.clone()),
                }
            }
        }
        self.audit_dropped += other.audit_dropped;
        if let Some(theirs) = &other.circuits {
            let mine = self.circuits.get_or_insert_with(Vec::new);
            for (target, state) in theirs {
                match mine.iter_mut().find(|m| m.0 == *target) {
                    Some(m) if *state == "open" => m.1 = "open",
                    Some(_) => {}
                    None => mine.push((target.clone(), state)),
                }
            }
        }
        if self.audit_writer.is_none() {
            self.audit_writer = other.audit_writer;
        }
    }

    /// Prometheus text exposition (version 0.0.4). `missing`: shards that
    /// did not answer the scrape in time (their counts are absent).
    pub fn render(&self, missing: usize) -> String {
        let mut out = String::with_capacity(4096);
        let mut requests = self.requests.clone();
        requests.sort();
        out.push_str("# HELP shardgate_requests_total Requests by endpoint and status (0: no answer was sent).\n# TYPE shardgate_requests_total counter\n");
        for ((endpoint, code), n) in &requests {
            let _ = writeln!(
                out,
                "shardgate_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
            );
        }
        let mut errors = self.errors.clone();
        errors.sort();
        out.push_str("# HELP shardgate_request_errors_total Requests that failed, by reason (refusals, upstream failures, streams cut).\n# TYPE shardgate_request_errors_total counter\n");
        for (label, n) in &errors {
            let _ = writeln!(
                out,
                "shardgate_request_errors_total{{reason=\"{label}\"}} {n}"
            );
        }
        let mut durations: Vec<_> = self.durations.iter().collect();
        durations.sort_by_key(|d| d.0);
        out.push_str("# HELP shardgate_request_duration_seconds Time from a request's head to its end, by endpoint.\n# TYPE shardgate_request_duration_seconds histogram\n");
        for (endpoint, d) in durations {
            for le in DURATION_BOUNDS {
                let n = d.micros.count_between(0, (le * 1e6) as u64);
                let _ = writeln!(
                    out,
                    "shardgate_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {n}"
                );
            }
            let total = d.micros.len();
            let _ = writeln!(
                out,
                "shardgate_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {total}\n\
                 shardgate_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {}\n\
                 shardgate_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {total}",
                d.sum_micros as f64 / 1e6
            );
        }
        let mut targets: Vec<_> = self.targets.values().collect();
        targets.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        out.push_str("# HELP shardgate_upstream_attempts_total Upstream attempts by target and outcome.\n# TYPE shardgate_upstream_attempts_total counter\n");
        for t in &targets {
            for (outcome, n) in [
                ("answered", t.answered),
                ("failed", t.failed),
                ("cancelled", t.cancelled),
            ] {
                let _ = writeln!(
                    out,
                    "shardgate_upstream_attempts_total{{provider=\"{}\",model=\"{}\",outcome=\"{outcome}\"}} {n}",
                    t.provider, t.model
                );
            }
        }
        out.push_str("# HELP gen_ai_client_token_usage Tokens per upstream attempt (OpenTelemetry GenAI).\n# TYPE gen_ai_client_token_usage histogram\n");
        for t in &targets {
            for (kind, b) in [("input", &t.input_tokens), ("output", &t.output_tokens)] {
                let labels = format!(
                    "gen_ai_provider_name=\"{}\",gen_ai_response_model=\"{}\",gen_ai_token_type=\"{kind}\"",
                    t.provider, t.model
                );
                let mut cumulative = 0;
                for (le, n) in TOKEN_BOUNDS.iter().zip(b.counts) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "gen_ai_client_token_usage_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                    );
                }
                let count: u64 = b.counts.iter().sum();
                let _ = writeln!(
                    out,
                    "gen_ai_client_token_usage_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                     gen_ai_client_token_usage_sum{{{labels}}} {}\n\
                     gen_ai_client_token_usage_count{{{labels}}} {count}",
                    b.sum
                );
            }
        }
        // Teams that were charged (a team with no priced request has no
        // series).
        let mut spend: Vec<_> = self
            .teams
            .iter()
            .filter(|(_, u)| u.spend_micros > 0)
            .map(|(team, u)| (team, u.spend_micros))
            .collect();
        spend.sort();
        out.push_str("# HELP shardgate_spend_micros_total Spend charged, in micro-dollars, by team.\n# TYPE shardgate_spend_micros_total counter\n");
        for (team, n) in spend {
            let _ = writeln!(
                out,
                "shardgate_spend_micros_total{{team=\"{}\"}} {n}",
                escape(team)
            );
        }
        let mut open = self.open_connections.clone();
        open.sort();
        out.push_str("# HELP shardgate_open_connections Client connections open, by shard.\n# TYPE shardgate_open_connections gauge\n");
        for (shard, n) in open {
            let _ = writeln!(out, "shardgate_open_connections{{shard=\"{shard}\"}} {n}");
        }
        let mut in_flight = self.in_flight.clone();
        in_flight.sort_unstable();
        out.push_str("# HELP shardgate_requests_in_flight Requests being handled, by shard.\n# TYPE shardgate_requests_in_flight gauge\n");
        for (shard, n) in in_flight {
            let _ = writeln!(out, "shardgate_requests_in_flight{{shard=\"{shard}\"}} {n}");
        }
        let mut tools = self.tool_calls.clone();
        tools.sort();
        out.push_str("# HELP shardgate_tool_calls_total Tool calls by server (`-`: in a model's answer), where they were seen and the decision.\n# TYPE shardgate_tool_calls_total counter\n");
        for ((server, source, decision), n) in tools {
            let _ = writeln!(
                out,
                "shardgate_tool_calls_total{{server=\"{}\",source=\"{source}\",decision=\"{decision}\"}} {n}",
                escape(&server)
            );
        }
        let mut rails = self.guardrails.clone();
        rails.sort();
        out.push_str("# HELP shardgate_guardrail_checks_total Guardrail checks run, by check, stage (input, output) and verdict (pass, block, redact, log).\n# TYPE shardgate_guardrail_checks_total counter\n");
        for ((check, stage, verdict), (n, _)) in &rails {
            let _ = writeln!(
                out,
                "shardgate_guardrail_checks_total{{check=\"{}\",stage=\"{stage}\",verdict=\"{verdict}\"}} {n}",
                escape(check)
            );
        }
        out.push_str("# HELP shardgate_guardrail_seconds_total Time spent in guardrail checks, by check, stage and verdict.\n# TYPE shardgate_guardrail_seconds_total counter\n");
        for ((check, stage, verdict), (_, us)) in &rails {
            let _ = writeln!(
                out,
                "shardgate_guardrail_seconds_total{{check=\"{}\",stage=\"{stage}\",verdict=\"{verdict}\"}} {:.6}",
                escape(check),
                *us as f64 / 1e6
            );
        }
        let mut cache = self.cache.clone();
        cache.sort();
        out.push_str("# HELP shardgate_cache_requests_total Requests to routes with a response cache, by route and result (hit, miss, bypass).\n# TYPE shardgate_cache_requests_total counter\n");
        for ((alias, result), n) in &cache {
            let _ = writeln!(
                out,
                "shardgate_cache_requests_total{{model=\"{}\",result=\"{result}\"}} {n}",
                escape(alias)
            );
        }
        if !self.cache_shared.is_empty() {
            let mut shared = self.cache_shared.clone();
            shared.sort_unstable();
            out.push_str("# HELP shardgate_cache_shared_lookups_total Lookups in the response cache's shared tier (the cluster's Redis) after a miss on the shard, by result (hit, miss, unavailable).\n# TYPE shardgate_cache_shared_lookups_total counter\n");
            for (result, n) in shared {
                let _ = writeln!(
                    out,
                    "shardgate_cache_shared_lookups_total{{result=\"{result}\"}} {n}"
                );
            }
        }
        let (input, output) = self.cache_saved;
        let (entries, bytes, evictions) = self.cache_kept;
        let _ = write!(
            out,
            "# HELP shardgate_cache_saved_tokens_total Tokens cache hits did not use upstream, by type.\n# TYPE shardgate_cache_saved_tokens_total counter\n\
             shardgate_cache_saved_tokens_total{{type=\"input\"}} {input}\n\
             shardgate_cache_saved_tokens_total{{type=\"output\"}} {output}\n\
             # HELP shardgate_cache_entries Answers the response cache keeps, all shards.\n# TYPE shardgate_cache_entries gauge\n\
             shardgate_cache_entries {entries}\n\
             # HELP shardgate_cache_bytes Memory the response cache's entries take, all shards.\n# TYPE shardgate_cache_bytes gauge\n\
             shardgate_cache_bytes {bytes}\n\
             # HELP shardgate_cache_evictions_total Entries dropped to stay within the cache's bounds.\n# TYPE shardgate_cache_evictions_total counter\n\
             shardgate_cache_evictions_total {evictions}\n"
        );
        out.push_str("# HELP shardgate_circuit_open Targets whose circuit breaker is open (1) or half-open (0.5); closed ones are not listed.\n# TYPE shardgate_circuit_open gauge\n");
        let mut circuits = self.circuits.clone().unwrap_or_default();
        circuits.sort();
        for (target, state) in circuits {
            let v = if state == "open" { "1" } else { "0.5" };
            let _ = writeln!(
                out,
                "shardgate_circuit_open{{target=\"{}\",state=\"{state}\"}} {v}",
                escape(&target)
            );
        }
        if let Some((events, bytes, errors)) = self.audit_writer {
            let _ = writeln!(
                out,
                "# HELP shardgate_audit_events_total Audit events written.\n# TYPE shardgate_audit_events_total counter\nshardgate_audit_events_total {events}\n\
                 # HELP shardgate_audit_bytes_total Audit bytes written.\n# TYPE shardgate_audit_bytes_total counter\nshardgate_audit_bytes_total {bytes}\n\
                 # HELP shardgate_audit_write_errors_total Failed audit writes, fsyncs and rotations.\n# TYPE shardgate_audit_write_errors_total counter\nshardgate_audit_write_errors_total {errors}\n\
                 # HELP shardgate_audit_dropped_events_total Audit events dropped while the writer was behind.\n# TYPE shardgate_audit_dropped_events_total counter\nshardgate_audit_dropped_events_total {}",
                self.audit_dropped
            );
        }
        self.model.render(&mut out, escape);
        let _ = writeln!(
            out,
            "# HELP shardgate_metrics_shards_missing Shards that did not answer this scrape in time.\n# TYPE shardgate_metrics_shards_missing gauge\nshardgate_metrics_shards_missing {missing}"
        );
        out
    }
}

/// Operators' endpoints, on admin listeners or the probes on any.
fn operator_endpoint(endpoint: &str) -> bool {
    matches!(endpoint, "/" | "/metrics" | "/healthz" | "/readyz") || endpoint.starts_with("/admin")
}

/// Adds `n` to `key`'s count: a few keys each, so a scan beats a hash.
fn bump<K: Label>(counts: &mut Vec<(K, u64)>, key: K, n: u64) {
    match counts.iter_mut().find(|c| c.0.same(&key)) {
        Some(c) => c.1 += n,
        None => counts.push((key, n)),
    }
}

/// A label key. Labels are `&'static str`s from fixed tables, so the same
/// label is nearly always the same pointer: that is compared before the
/// bytes.
trait Label {
    fn same(&self, other: &Self) -> bool;
}

impl Label for &'static str {
    fn same(&self, other: &Self) -> bool {
        std::ptr::eq(*self, *other) || self == other
    }
}

impl Label for (&'static str, u16) {
    fn same(&self, other: &Self) -> bool {
        self.1 == other.1 && self.0.same(&other.0)
    }
}

/// A label value as the text format needs it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The node thread's figures (one set per process, not per shard).
pub fn render_cluster(out: &mut String, g: &crate::cluster::Gauges) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        out,
        "# HELP shardgate_cluster_store_up Whether the cluster store (Redis) answers: 0 is the alarm.\n# TYPE shardgate_cluster_store_up gauge\nshardgate_cluster_store_up {}\n\
         # HELP shardgate_cluster_live_nodes Gateway nodes the store saw in the last 5 s.\n# TYPE shardgate_cluster_live_nodes gauge\nshardgate_cluster_live_nodes {}\n\
         # HELP shardgate_cluster_store_calls_total Calls this node made to the store.\n# TYPE shardgate_cluster_store_calls_total counter\nshardgate_cluster_store_calls_total {}\n\
         # HELP shardgate_cluster_local_grants_total Node leases granted from this node's share while the store was unreachable.\n# TYPE shardgate_cluster_local_grants_total counter\nshardgate_cluster_local_grants_total {}\n\
         # HELP shardgate_cluster_refused_total Node leases refused while the store was unreachable (on_unavailable: deny).\n# TYPE shardgate_cluster_refused_total counter\nshardgate_cluster_refused_total {}",
        u8::from(g.up.load(Relaxed)),
        g.live_nodes.load(Relaxed),
        g.store_calls.load(Relaxed),
        g.local_grants.load(Relaxed),
        g.refused.load(Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(circuits: &[(&str, &'static str)], latency: &[(&str, f64, u32)]) -> ShardStats {
        let mut s = ShardStats::default();
        s.set_circuits(
            circuits
                .iter()
                .map(|(t, c)| ((*t).to_owned(), *c))
                .collect(),
        );
        s.set_latency(
            latency
                .iter()
                .map(|(t, us, n)| ((*t).to_owned(), *us, *n))
                .collect(),
        );
        s
    }

    /// The ops executor's snapshot has no target view: a merge reports what
    /// every serving shard saw, not the first to answer.
    #[test]
    fn a_merge_takes_each_targets_worst_circuit_and_mean_latency() {
        let mut merged = ShardStats::default();
        assert!(merged.circuits.is_none() && merged.latency.is_none());
        merged.merge(&serving(
            &[("a", "half_open")],
            &[("a", 1000.0, 1), ("b", 0.0, 0)],
        ));
        merged.merge(&serving(
            &[("a", "open"), ("b", "half_open")],
            &[("a", 3000.0, 2), ("b", 500.0, 1)],
        ));
        merged.merge(&serving(&[], &[("a", 2000.0, 0)]));
        let mut circuits = merged.circuits.clone().unwrap_or_default();
        circuits.sort();
        assert_eq!(
            circuits,
            [("a".to_owned(), "open"), ("b".to_owned(), "half_open")]
        );
        let latency = merged.latency.clone().unwrap_or_default();
        let a = latency
            .iter()
            .find(|f| f.target == "a")
            .map(|f| (f.ewma_us(), f.in_flight));
        let b = latency
            .iter()
            .find(|f| f.target == "b")
            .map(|f| (f.ewma_us(), f.in_flight));
        assert_eq!(a, Some((2000.0, 3)));
        // A shard with no sample yet does not pull the mean to 0.
        assert_eq!(b, Some((500.0, 1)));
    }
}
