//! Counts by model call: requests by alias, provider, status and team;
//! tokens and cost by model and team; the OpenTelemetry GenAI server
//! histograms (request duration, time to first token, time per output
//! token); and the gateway's own overhead (its time to a first byte less
//! the upstream's).
//!
//! Only requests that reached a route are counted here, so every alias is
//! one from config; providers and models come from config, teams from the
//! key table. Series are keyed by their label values joined in a scratch
//! string, so a request allocates nothing once its series exists; and a
//! request with the labels of the one before it (most, on a busy shard)
//! finds its series by comparing two names, without building a key or
//! hashing it.

use crate::record::{AttemptOutcome, RequestEnd};
use rustc_hash::FxHashMap;
use std::fmt::Write as _;

/// `le` bounds, in microseconds, of the GenAI request duration and time to
/// first token (OpenTelemetry's advice for `gen_ai.server.request.duration`,
/// 0.01 s to 81.92 s). Integers: a bucket is found without floats.
const SECONDS: [u64; 14] = [
    10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 2_560_000, 5_120_000,
    10_240_000, 20_480_000, 40_960_000, 81_920_000,
];
/// `le` bounds in microseconds of the time per output token (0.01 s to 2.5 s).
const PER_TOKEN: [u64; 13] = [
    10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 400_000, 500_000, 750_000,
    1_000_000, 2_500_000,
];
/// `le` bounds in microseconds of the gateway's overhead (10 µs to 0.1 s).
const OVERHEAD: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000,
];

/// Field separator in series keys: no label value holds it.
const SEP: char = '\u{1f}';

#[derive(Clone, Default)]
pub struct ModelStats {
    /// One series per `operation SEP alias SEP provider SEP model SEP
    /// status SEP team`: one lookup per request. Each metric's label set
    /// is a projection of these, summed at render.
    series: Vec<Series>,
    /// Each key, and where its series is in `series`.
    index: FxHashMap<String, usize>,
    /// The last request's labels and series.
    last: Option<Last>,
    overhead: Seconds<{ OVERHEAD.len() + 1 }>,
    scratch: String,
}

/// A request's labels as it has them, and its series. The target's
/// `provider/model` and its model's length stand for the provider and the
/// model ([`provider_of`] splits them so); the operation is one of a fixed
/// set of constants.
#[derive(Clone)]
struct Last {
    op: &'static str,
    alias: String,
    served_by: String,
    model_len: usize,
    status: u16,
    /// Empty for no team.
    team: String,
    at: usize,
}

impl Last {
    fn is(
        &self,
        op: &str,
        alias: &str,
        target: &crate::config::Target,
        status: u16,
        team: &str,
    ) -> bool {
        std::ptr::eq(self.op, op)
            && self.status == status
            && self.model_len == target.model.len()
            && self.alias == alias
            && self.served_by == target.served_by
            && self.team == team
    }
}

#[derive(Clone, Default)]
struct Series {
    requests: u64,
    input: u64,
    output: u64,
    cached: u64,
    cost_micros: u64,
    duration: Seconds<{ SECONDS.len() + 1 }>,
    ttft: Seconds<{ SECONDS.len() + 1 }>,
    per_token: Seconds<{ PER_TOKEN.len() + 1 }>,
}

/// A series key's fields.
struct Labels<'k> {
    op: &'k str,
    alias: &'k str,
    provider: &'k str,
    model: &'k str,
    status: &'k str,
    team: &'k str,
}

impl<'k> Labels<'k> {
    fn parse(key: &'k str) -> Option<Self> {
        let mut f = key.split(SEP);
        Some(Labels {
            op: f.next()?,
            alias: f.next()?,
            provider: f.next()?,
            model: f.next()?,
            status: f.next()?,
            team: f.next()?,
        })
    }
}

/// Counts per bucket (the last past every bound) and their sum, in
/// microseconds; rendered in seconds.
#[derive(Clone, Copy)]
struct Seconds<const N: usize> {
    counts: [u64; N],
    sum_micros: u64,
}

impl<const N: usize> Default for Seconds<N> {
    fn default() -> Self {
        Seconds {
            counts: [0; N],
            sum_micros: 0,
        }
    }
}

impl<const N: usize> Seconds<N> {
    fn record(&mut self, bounds: &[u64], micros: u64) {
        let i = bounds.partition_point(|&b| b < micros);
        self.counts[i] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[u64]) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (le, n) in bounds.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{comma}le=\"{le}\"}} {cumulative}"
            );
        }
        let total: u64 = self.counts.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {total}");
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum_micros as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{braced} {total}");
    }
}

/// The GenAI operation an endpoint performs (`gen_ai.operation.name`).
fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "/v1/embeddings" => "embeddings",
        "/v1/completions" => "text_completion",
        _ => "chat",
    }
}

/// `provider` of a target's `provider/model`.
fn provider_of(t: &crate::config::Target) -> &str {
    let by = t.served_by.as_str();
    by.get(..by.len().saturating_sub(t.model.len() + 1))
        .unwrap_or(by)
}

impl ModelStats {
    /// Counts one request that reached a route.
    /// `micros`: the request's duration, as the caller worked it out.
    pub fn observe(&mut self, end: &RequestEnd<'_, '_>, team: Option<&str>, micros: u64) {
        let t = end.trail;
        let (Some(alias), Some(last)) = (t.alias.as_deref(), t.attempts.last()) else {
            return;
        };
        let served = t
            .attempts
            .iter()
            .find(|a| a.outcome == AttemptOutcome::Answered)
            .unwrap_or(last);
        let provider = provider_of(served.target);
        let status = end.status.unwrap_or(0);
        let team = team.unwrap_or("");
        let op = operation(t.endpoint);
        let at = match &self.last {
            Some(last) if last.is(op, alias, served.target, status, team) => last.at,
            _ => {
                let at = self.slot([op, alias, provider, &served.target.model], status, team);
                self.last = Some(Last {
                    op,
                    alias: alias.to_owned(),
                    served_by: served.target.served_by.clone(),
                    model_len: served.target.model.len(),
                    status,
                    team: team.to_owned(),
                    at,
                });
                at
            }
        };
        let series = &mut self.series[at];
        series.requests += 1;
        series.cost_micros += t.cost_micros;
        let mut others = false;
        for a in &t.attempts {
            let Some(u) = a.metered.as_ref().and_then(|m| m.usage) else {
                continue;
            };
            if !std::ptr::eq(a.target, served.target) {
                others = true;
                continue;
            }
            series.input += u.prompt_tokens.unwrap_or(0);
            series.output += u.completion_tokens.unwrap_or(0);
            series.cached += u.cached_tokens.unwrap_or(0);
        }
        if served.outcome == AttemptOutcome::Answered {
            let us = |d: std::time::Duration| d.as_micros() as u64;
            series.duration.record(&SECONDS, micros);
            if let Some(first) = end.first_byte {
                let to_first = us(first.saturating_duration_since(end.started));
                series.ttft.record(&SECONDS, to_first);
                let output = served
                    .metered
                    .as_ref()
                    .and_then(|m| m.usage)
                    .and_then(|u| u.completion_tokens)
                    .unwrap_or(0);
                if output > 1 {
                    let decode = micros.saturating_sub(to_first);
                    series.per_token.record(&PER_TOKEN, decode / (output - 1));
                }
                // The gateway's share of the time to a first byte: before
                // its first attempt went out, and from the answer's head to
                // the client's first byte (failed attempts and backoff are
                // upstream time, not the gateway's).
                if let (Some(head), Some(first_attempt)) = (served.head_at, t.attempts.first()) {
                    let before = us(first_attempt.started.saturating_duration_since(end.started));
                    let after = us(first.saturating_duration_since(head));
                    self.overhead.record(&OVERHEAD, before + after);
                }
            }
        }
        // Rare: other attempts that used tokens (a failover after an
        // answer started upstream, a hedge's loser), each on its own model.
        if others {
            for a in t
                .attempts
                .iter()
                .filter(|a| !std::ptr::eq(a.target, served.target))
            {
                let Some(u) = a.metered.as_ref().and_then(|m| m.usage) else {
                    continue;
                };
                let provider = provider_of(a.target);
                let fields = [operation(t.endpoint), alias, provider, &a.target.model];
                let at = self.slot(fields, status, team);
                let s = &mut self.series[at];
                s.input += u.prompt_tokens.unwrap_or(0);
                s.output += u.completion_tokens.unwrap_or(0);
                s.cached += u.cached_tokens.unwrap_or(0);
            }
        }
    }

    /// Where the series with these labels is, made when new.
    fn slot(&mut self, fields: [&str; 4], status: u16, team: &str) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        let at = self.find_or_add(series_key(&mut scratch, fields, status, team));
        self.scratch = scratch;
        at
    }

    fn find_or_add(&mut self, key: &str) -> usize {
        if let Some(&at) = self.index.get(key) {
            return at;
        }
        self.series.push(Series::default());
        self.index.insert(key.to_owned(), self.series.len() - 1);
        self.series.len() - 1
    }

    pub fn merge(&mut self, other: &ModelStats) {
        for (k, &from) in &other.index {
            let o = &other.series[from];
            let at = self.find_or_add(k);
            let s = &mut self.series[at];
            s.requests += o.requests;
            s.input += o.input;
            s.output += o.output;
            s.cached += o.cached;
            s.cost_micros += o.cost_micros;
            s.duration.merge(&o.duration);
            s.ttft.merge(&o.ttft);
            s.per_token.merge(&o.per_token);
        }
        self.overhead.merge(&other.overhead);
    }

    /// Prometheus text for these series; label values are escaped by
    /// `escape`.
    pub fn render(&self, out: &mut String, escape: impl Fn(&str) -> String) {
        use std::collections::BTreeMap;
        let series: Vec<(Labels<'_>, &Series)> = self
            .index
            .iter()
            .filter_map(|(k, &at)| Some((Labels::parse(k)?, &self.series[at])))
            .collect();
        let mut requests: BTreeMap<[String; 4], u64> = BTreeMap::new();
        let mut usage: BTreeMap<[String; 2], [u64; 4]> = BTreeMap::new();
        let mut genai: BTreeMap<[String; 4], Series> = BTreeMap::new();
        for (l, s) in &series {
            if s.requests > 0 {
                *requests
                    .entry([l.alias, l.provider, status_label(l.status), l.team].map(&escape))
                    .or_default() += s.requests;
            }
            let u = usage.entry([l.model, l.team].map(&escape)).or_default();
            for (sum, v) in u
                .iter_mut()
                .zip([s.input, s.output, s.cached, s.cost_micros])
            {
                *sum += v;
            }
            if s.duration.total() > 0 {
                let g = genai
                    .entry([l.op, l.provider, l.alias, l.model].map(&escape))
                    .or_default();
                g.duration.merge(&s.duration);
                g.ttft.merge(&s.ttft);
                g.per_token.merge(&s.per_token);
            }
        }
        out.push_str("# HELP shardgate_model_requests_total Requests that reached a route, by alias, the provider that answered (or last failed), status and team.\n# TYPE shardgate_model_requests_total counter\n");
        for ([alias, provider, status, team], n) in &requests {
            let _ = writeln!(
                out,
                "shardgate_model_requests_total{{alias=\"{alias}\",provider=\"{provider}\",status=\"{status}\",team=\"{team}\"}} {n}"
            );
        }
        out.push_str("# HELP shardgate_tokens_total Tokens by upstream model, team and type (cached: input tokens served from the provider's cache).\n# TYPE shardgate_tokens_total counter\n");
        for ([model, team], u) in &usage {
            for (kind, n) in [("input", u[0]), ("output", u[1]), ("cached", u[2])] {
                let _ = writeln!(
                    out,
                    "shardgate_tokens_total{{model=\"{model}\",team=\"{team}\",type=\"{kind}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP shardgate_cost_micros_total Cost charged, in micro-dollars, by the upstream model that answered and team.\n# TYPE shardgate_cost_micros_total counter\n");
        for ([model, team], u) in &usage {
            let _ = writeln!(
                out,
                "shardgate_cost_micros_total{{model=\"{model}\",team=\"{team}\"}} {}",
                u[3]
            );
        }
        let labels: Vec<(String, &Series)> = genai
            .iter()
            .map(|([op, provider, request, response], g)| {
                (
                    format!("gen_ai_operation_name=\"{op}\",gen_ai_provider_name=\"{provider}\",gen_ai_request_model=\"{request}\",gen_ai_response_model=\"{response}\""),
                    g,
                )
            })
            .collect();
        let name = "gen_ai_server_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a request's head to its end (OpenTelemetry GenAI).\n# TYPE {name} histogram");
        for (l, g) in &labels {
            g.duration.render(out, name, l, &SECONDS);
        }
        let name = "gen_ai_server_time_to_first_token_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a request's head to its answer's first byte (OpenTelemetry GenAI).\n# TYPE {name} histogram");
        for (l, g) in &labels {
            g.ttft.render(out, name, l, &SECONDS);
        }
        let name = "gen_ai_server_time_per_output_token_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time per output token after the first (OpenTelemetry GenAI).\n# TYPE {name} histogram"
        );
        for (l, g) in &labels {
            g.per_token.render(out, name, l, &PER_TOKEN);
        }
        let name = "shardgate_gateway_overhead_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} The gateway's time to an answer's first byte less the upstream's time to its head.\n# TYPE {name} histogram"
        );
        self.overhead.render(out, name, "", &OVERHEAD);
    }
}

/// A key's three-digit status as a label (`0` when nothing was answered).
fn status_label(digits: &str) -> &str {
    match digits.trim_start_matches('0') {
        "" => "0",
        s => s,
    }
}

/// `fields SEP... status SEP team` in `scratch`, without `fmt` (this runs
/// per request).
fn series_key<'s>(scratch: &'s mut String, fields: [&str; 4], status: u16, team: &str) -> &'s str {
    scratch.clear();
    for f in fields {
        scratch.push_str(f);
        scratch.push(SEP);
    }
    let digits = [status / 100 % 10, status / 10 % 10, status % 10];
    for d in digits {
        scratch.push(char::from(b'0' + d as u8));
    }
    scratch.push(SEP);
    scratch.push_str(team);
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Target;
    use crate::record::{AttemptRecord, Trail};
    use std::time::Instant;

    fn target(provider: &str, model: &str) -> Target {
        Target {
            provider: 0,
            model: model.into(),
            served_by: format!("{provider}/{model}"),
            model_json: Vec::new(),
            weight: 1,
            context_window: None,
            head_lines: Vec::new(),
        }
    }

    /// Counts one answered chat request.
    fn count(
        stats: &mut ModelStats,
        alias: &str,
        target: &Target,
        status: u16,
        team: Option<&str>,
    ) {
        let now = Instant::now();
        let mut trail = Trail {
            endpoint: "/v1/chat/completions",
            alias: Some(alias.to_owned()),
            ..Trail::default()
        };
        trail.attempts.push(AttemptRecord {
            target,
            outcome: AttemptOutcome::Answered,
            started: now,
            head_at: Some(now),
            ended: now,
            metered: None,
        });
        let end = RequestEnd {
            rid: "r",
            status: Some(status),
            error: None,
            trail: &trail,
            started: now,
            first_byte: Some(now),
            ended: now,
        };
        stats.observe(&end, team, 10);
    }

    /// Each series' labels (`|`-joined) and requests.
    fn requests(stats: &ModelStats) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = stats
            .index
            .iter()
            .map(|(k, &at)| (k.replace(SEP, "|"), stats.series[at].requests))
            .collect();
        v.sort();
        v
    }

    /// A request reuses the last one's series only when every label is the
    /// same; the provider and model are told apart even where their joined
    /// name is the same.
    #[test]
    fn each_label_set_counts_in_its_own_series() {
        let (a, split, other) = (target("p/x", "y"), target("p", "x/y"), target("q", "m"));
        let mut stats = ModelStats::default();
        count(&mut stats, "demo", &a, 200, None);
        count(&mut stats, "demo", &a, 200, None);
        count(&mut stats, "demo", &split, 200, None);
        count(&mut stats, "demo", &a, 200, Some("t"));
        count(&mut stats, "demo", &a, 200, None);
        count(&mut stats, "demo", &a, 429, None);
        count(&mut stats, "other", &a, 200, None);
        count(&mut stats, "demo", &other, 200, None);
        count(&mut stats, "demo", &a, 200, None);
        assert_eq!(
            requests(&stats),
            [
                ("chat|demo|p/x|y|200|", 4),
                ("chat|demo|p/x|y|200|t", 1),
                ("chat|demo|p/x|y|429|", 1),
                ("chat|demo|p|x/y|200|", 1),
                ("chat|demo|q|m|200|", 1),
                ("chat|other|p/x|y|200|", 1),
            ]
            .map(|(k, n)| (k.to_owned(), n))
        );
        let mut merged = ModelStats::default();
        merged.merge(&stats);
        merged.merge(&stats);
        let doubled: Vec<(String, u64)> = requests(&stats)
            .into_iter()
            .map(|(k, n)| (k, 2 * n))
            .collect();
        assert_eq!(requests(&merged), doubled);
    }
}
