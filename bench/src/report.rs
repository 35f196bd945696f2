//! What a load run measured and how it is shown: failures by kind, the
//! per-shard histograms (merged at the end), the report printed by `run`
//! (a text table, `--json`, `--markdown`), always with the machine, pinning,
//! build profile and git revision beside the figures.

use crate::error::BenchError;
use crate::machine;
use crate::workload::Api;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Highest latency the histograms track (longer values are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// A request still unanswered this long when the window closes is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

/// Failures by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    /// The TLS handshake failed (untrusted certificate, wrong name, no
    /// common protocol) or timed out.
    pub tls_handshake: u64,
    pub timeout: u64,
    /// Unparsable response head or framing.
    pub malformed: u64,
    /// Connection reset or closed before the response was complete.
    pub io: u64,
    /// A 200 event stream that ended without its end marker (`[DONE]`,
    /// `message_stop`).
    pub incomplete_stream: u64,
    /// An error event inside a 200 stream.
    pub stream_error: u64,
    /// Non-2xx responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Why the first failed TLS handshake failed (`invalid peer
    /// certificate: UnknownIssuer`, a timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_tls_error: Option<String>,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.tls_handshake
            + self.timeout
            + self.malformed
            + self.io
            + self.incomplete_stream
            + self.stream_error
            + self.status.values().sum::<u64>()
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.tls_handshake += o.tls_handshake;
        self.timeout += o.timeout;
        self.malformed += o.malformed;
        self.io += o.io;
        self.incomplete_stream += o.incomplete_stream;
        self.stream_error += o.stream_error;
        for (k, v) in &o.status {
            *self.status.entry(*k).or_default() += v;
        }
        if self.first_tls_error.is_none() {
            self.first_tls_error.clone_from(&o.first_tls_error);
        }
    }

    pub fn describe(&self) -> String {
        if self.total() == 0 {
            return "none".to_string();
        }
        let mut parts = Vec::new();
        for (name, n) in [
            ("connect", self.connect),
            ("tls_handshake", self.tls_handshake),
            ("timeout", self.timeout),
            ("malformed", self.malformed),
            ("io", self.io),
            ("incomplete_stream", self.incomplete_stream),
            ("stream_error", self.stream_error),
        ] {
            if n > 0 {
                parts.push(format!("{name}={n}"));
            }
        }
        for (code, n) in &self.status {
            parts.push(format!("status_{code}={n}"));
        }
        if let Some(why) = &self.first_tls_error {
            parts.push(format!("[first tls_handshake error: {why}]"));
        }
        parts.join(" ")
    }
}

/// What one shard measured. Times in microseconds.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Open loop: from the intended send time; closed: from the send.
    pub latency: Histogram<u64>,
    /// From the actual send (recorded in open loop only).
    pub service: Histogram<u64>,
    /// Opening a connection: TCP connect plus, for https, the TLS
    /// handshake. Every connection opened before the window's end (warmup
    /// included); never part of request latency.
    pub connect: Histogram<u64>,
    /// To the first token event (or first body byte without one).
    pub ttft: Histogram<u64>,
    /// Gaps between consecutive token events.
    pub itl: Histogram<u64>,
    /// Per request: (last token - first token) / (token events - 1).
    pub tpot: Histogram<u64>,
    /// Per request: output tokens / latency, in tokens per second.
    pub tokens_per_s: Histogram<u64>,
    pub ok: u64,
    pub sse_events: u64,
    pub token_events: u64,
    /// Usage's output tokens (token events where a stream gave no usage).
    pub output_tokens: u64,
    pub input_tokens: u64,
    pub errors: ErrorCounts,
    /// Requests unanswered when the window closed that had been waiting
    /// for over [`STUCK_AFTER`] (a hung server shows here, not as errors).
    pub stuck: u64,
    /// Open loop: arrivals due but not yet sent when the window closed
    /// (every connection was busy).
    pub unsent: u64,
}

impl Stats {
    pub fn new() -> Result<Self, BenchError> {
        let h = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(BenchError::runtime);
        Ok(Stats {
            latency: h()?,
            service: h()?,
            connect: h()?,
            ttft: h()?,
            itl: h()?,
            tpot: h()?,
            tokens_per_s: h()?,
            ok: 0,
            sse_events: 0,
            token_events: 0,
            output_tokens: 0,
            input_tokens: 0,
            errors: ErrorCounts::default(),
            stuck: 0,
            unsent: 0,
        })
    }

    pub fn merge(&mut self, o: &Stats) -> Result<(), BenchError> {
        for (a, b) in [
            (&mut self.latency, &o.latency),
            (&mut self.service, &o.service),
            (&mut self.connect, &o.connect),
            (&mut self.ttft, &o.ttft),
            (&mut self.itl, &o.itl),
            (&mut self.tpot, &o.tpot),
            (&mut self.tokens_per_s, &o.tokens_per_s),
        ] {
            a.add(b).map_err(BenchError::runtime)?;
        }
        self.ok += o.ok;
        self.sse_events += o.sse_events;
        self.token_events += o.token_events;
        self.output_tokens += o.output_tokens;
        self.input_tokens += o.input_tokens;
        self.errors.merge(&o.errors);
        self.stuck += o.stuck;
        self.unsent += o.unsent;
        Ok(())
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The result of one run, as printed by `run --json`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub api: Api,
    pub model: String,
    pub stream: bool,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open loop: the target rate and arrival process.
    pub rate: Option<f64>,
    pub arrivals: Option<crate::arrivals::Arrivals>,
    /// What `latency_us` and `ttft_us` are measured from.
    pub latency_from: &'static str,
    pub connections: usize,
    pub shards: usize,
    pub pinned: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Successful requests completed inside the measurement window.
    pub requests: u64,
    pub requests_per_second: f64,
    pub latency_us: Percentiles,
    /// Opening a connection (TCP connect + TLS handshake for https), over
    /// every connection opened before the window's end, warmup included.
    pub connect_us: Percentiles,
    pub connections_opened: u64,
    /// https: how the server's certificate was checked.
    pub tls: Option<&'static str>,
    /// Open loop: latency from the actual send (the server's share).
    pub service_us: Option<Percentiles>,
    /// To the first token event (first body byte if none); streams only.
    pub ttft_us: Option<Percentiles>,
    /// Inter-token latency: gaps between token events; streams only.
    pub itl_us: Option<Percentiles>,
    /// Time per output token after the first, per request; streams only.
    pub tpot_us: Option<Percentiles>,
    /// Output tokens per second of each request (tokens / latency).
    pub request_tokens_per_s: Option<Percentiles>,
    pub sse_events_per_request: Option<f64>,
    pub token_events_total: u64,
    pub output_tokens_total: u64,
    pub input_tokens_total: u64,
    /// All output tokens over the window.
    pub output_tokens_per_second: f64,
    /// Synthetic prompts: their cl100k_base token counts (min, mean, max).
    pub prompt_tokens: Option<PromptTokens>,
    pub errors: ErrorCounts,
    pub errors_total: u64,
    /// Requests unanswered for over a second when the window closed.
    pub stuck_at_end: u64,
    /// Open loop: requests due but never sent (all connections busy).
    pub unsent_at_end: Option<u64>,
    /// CPU time the load generator itself used in the window, in cores.
    pub loadgen_cpu_cores: Option<f64>,
    /// The CPUs the load generator may run on (its affinity).
    pub loadgen_cpus: String,
    /// How busy those CPUs were in the window, 0 to 1, whatever ran there
    /// (a mock sharing them included). Near 1, requests wait for those
    /// CPUs: the latency is theirs as much as the target's.
    pub loadgen_cpus_busy: Option<f64>,
    /// CPU time (utime + stime from /proc/PID/stat) of the watched
    /// processes together in the window, when some were given.
    pub watched_cpu_us: Option<u64>,
    pub watched_cpu_us_per_request: Option<f64>,
    pub machine: machine::MachineInfo,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokens {
    pub min: usize,
    pub mean: f64,
    pub max: usize,
}

/// The percentile rows of a report: (label, values, unit divisor, unit).
fn rows(r: &LoadReport) -> Vec<(&'static str, Percentiles, f64)> {
    let mut rows = vec![("latency ms", r.latency_us, 1000.0)];
    let opt = [
        ("service ms", r.service_us, 1000.0),
        ("ttft ms", r.ttft_us, 1000.0),
        ("itl ms", r.itl_us, 1000.0),
        ("tpot ms", r.tpot_us, 1000.0),
        ("tok/s per request", r.request_tokens_per_s, 1.0),
    ];
    rows.extend(opt.into_iter().filter_map(|(l, p, d)| p.map(|p| (l, p, d))));
    let connect = if r.tls.is_some() {
        "connect+tls ms"
    } else {
        "connect ms"
    };
    rows.push((connect, r.connect_us, 1000.0));
    rows
}

/// The lines above the table: what ran, where, how much.
fn summary_lines(r: &LoadReport) -> Vec<String> {
    let mut lines = vec![
        format!(
            "shardgate-bench run: {} api={} model={} stream={}",
            r.url,
            match r.api {
                Api::Openai => "openai",
                Api::Anthropic => "anthropic",
                Api::Mcp => "mcp",
            },
            r.model,
            r.stream
        ),
        r.machine.one_line(),
    ];
    let mode = match (r.rate, r.arrivals) {
        (Some(rate), Some(a)) => format!(
            "open loop at {rate} req/s ({}), up to {} connections; latency from the intended send time",
            match a {
                crate::arrivals::Arrivals::Constant => "constant",
                crate::arrivals::Arrivals::Poisson => "poisson",
            },
            r.connections
        ),
        _ => format!("closed loop, {} connections", r.connections),
    };
    lines.push(format!(
        "load: {mode}; {} shard{} ({}), warmup {:.1}s, duration {:.1}s",
        r.shards,
        if r.shards == 1 { "" } else { "s" },
        if r.pinned { "pinned" } else { "unpinned" },
        r.warmup_s,
        r.duration_s
    ));
    if let Some(tls) = r.tls {
        lines.push(format!(
            "tls: {tls}; {} connections opened, each handshake outside request latency",
            r.connections_opened
        ));
    }
    lines.push(format!(
        "requests: {} ok, {:.1} req/s; errors: {} ({})",
        r.requests,
        r.requests_per_second,
        r.errors_total,
        r.errors.describe()
    ));
    if r.stream {
        lines.push(format!(
            "tokens: {} out ({:.1}/s), {} in; {:.1} SSE events/request",
            r.output_tokens_total,
            r.output_tokens_per_second,
            r.input_tokens_total,
            r.sse_events_per_request.unwrap_or(0.0)
        ));
    }
    if let Some(p) = r.prompt_tokens {
        lines.push(format!(
            "prompt tokens (cl100k_base): min {} mean {:.1} max {}",
            p.min, p.mean, p.max
        ));
    }
    if let Some(n) = r.unsent_at_end.filter(|&n| n > 0) {
        lines.push(format!(
            "open loop fell behind: {n} requests due but unsent at the end (add --connections)"
        ));
    }
    if r.stuck_at_end > 0 {
        lines.push(format!(
            "unanswered for over {}s at the end: {}",
            STUCK_AFTER.as_secs(),
            r.stuck_at_end
        ));
    }
    if let Some(c) = r.loadgen_cpu_cores {
        lines.push(format!("loadgen cpu: {c:.2} cores"));
    }
    if let Some(b) = r.loadgen_cpus_busy {
        lines.push(format!(
            "loadgen cpus ({}) busy: {:.1}%",
            r.loadgen_cpus,
            b * 100.0
        ));
    }
    if let Some(us) = r.watched_cpu_us {
        lines.push(format!(
            "watched cpu: {:.2} cores, {} us/request",
            us as f64 / 1e6 / r.duration_s.max(1e-9),
            r.watched_cpu_us_per_request
                .map_or_else(|| "-".to_string(), |c| format!("{c:.1}"))
        ));
    }
    lines
}

/// The human report: summary lines and a percentile table.
pub fn render_text(r: &LoadReport) -> String {
    let mut out = summary_lines(r).join("\n");
    out.push_str(&format!(
        "\n{:<18}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
        "", "p50", "p90", "p99", "p99.9", "max", "mean"
    ));
    for (label, p, div) in rows(r) {
        let f = |v: f64| format!("{:>10.3}", v / div);
        out.push_str(&format!(
            "{label:<18}{}{}{}{}{}{}\n",
            f(p.p50 as f64),
            f(p.p90 as f64),
            f(p.p99 as f64),
            f(p.p999 as f64),
            f(p.max as f64),
            f(p.mean)
        ));
    }
    out
}

/// The report as Markdown: the summary as a list, the table as a table.
pub fn render_markdown(r: &LoadReport) -> String {
    let mut out = String::new();
    for line in summary_lines(r) {
        out.push_str(&format!("- {line}\n"));
    }
    out.push_str("\n| metric | p50 | p90 | p99 | p99.9 | max | mean |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (label, p, div) in rows(r) {
        out.push_str(&format!(
            "| {label} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            p.p50 as f64 / div,
            p.p90 as f64 / div,
            p.p99 as f64 / div,
            p.p999 as f64 / div,
            p.max as f64 / div,
            p.mean / div
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_counts() {
        let mut a = ErrorCounts::default();
        assert_eq!(a.describe(), "none");
        a.timeout = 2;
        a.tls_handshake = 1;
        a.status.insert(429, 3);
        let mut b = ErrorCounts::default();
        b.status.insert(429, 1);
        b.io = 1;
        b.first_tls_error = Some("invalid peer certificate: UnknownIssuer".into());
        a.merge(&b);
        assert_eq!(a.total(), 8);
        assert_eq!(
            a.describe(),
            "tls_handshake=1 timeout=2 io=1 status_429=4 \
             [first tls_handshake error: invalid peer certificate: UnknownIssuer]"
        );
    }

    #[test]
    fn stats_merge_and_percentiles() {
        let mut a = Stats::new().unwrap();
        for v in 1..=100 {
            a.latency.record(v).unwrap();
        }
        a.ok = 100;
        let mut b = Stats::new().unwrap();
        b.latency.record(1000).unwrap();
        b.ok = 1;
        a.merge(&b).unwrap();
        let p = Percentiles::of(&a.latency);
        assert_eq!(a.ok, 101);
        assert_eq!(p.p50, 51);
        assert_eq!(p.max, 1000);
        assert_eq!(Percentiles::of(&Stats::new().unwrap().ttft).p99, 0);
    }

    fn report(open: bool, stream: bool) -> LoadReport {
        let p = Percentiles {
            p50: 1500,
            p90: 2000,
            p99: 3000,
            p999: 4000,
            max: 5000,
            mean: 1600.0,
        };
        LoadReport {
            url: "http://127.0.0.1:1/v1/messages".into(),
            api: Api::Anthropic,
            model: "m".into(),
            stream,
            mode: if open { "open" } else { "closed" },
            rate: open.then_some(100.0),
            arrivals: open.then_some(crate::arrivals::Arrivals::Poisson),
            latency_from: "send",
            connections: 8,
            shards: 1,
            pinned: false,
            duration_s: 1.0,
            warmup_s: 0.0,
            requests: 10,
            requests_per_second: 10.0,
            latency_us: p,
            connect_us: p,
            connections_opened: 8,
            tls: open.then_some("verified (webpki roots)"),
            service_us: open.then_some(p),
            ttft_us: stream.then_some(p),
            itl_us: stream.then_some(p),
            tpot_us: stream.then_some(p),
            request_tokens_per_s: stream.then_some(p),
            sse_events_per_request: stream.then_some(9.0),
            token_events_total: 30,
            output_tokens_total: 30,
            input_tokens_total: 50,
            output_tokens_per_second: 30.0,
            prompt_tokens: Some(PromptTokens {
                min: 5,
                mean: 5.0,
                max: 5,
            }),
            errors: ErrorCounts::default(),
            errors_total: 0,
            stuck_at_end: 0,
            unsent_at_end: open.then_some(3),
            loadgen_cpu_cores: Some(0.5),
            loadgen_cpus: "0".into(),
            loadgen_cpus_busy: Some(0.975),
            watched_cpu_us: None,
            watched_cpu_us_per_request: None,
            machine: machine::MachineInfo::collect(),
        }
    }

    #[test]
    fn renders_text_and_markdown() {
        let text = render_text(&report(true, true));
        assert!(text.contains("api=anthropic"), "{text}");
        assert!(text.contains("open loop at 100 req/s (poisson)"), "{text}");
        assert!(text.contains("3 requests due but unsent"), "{text}");
        assert!(text.contains("machine: nproc="), "{text}");
        assert!(text.contains("loadgen cpus (0) busy: 97.5%"), "{text}");
        for row in [
            "latency ms",
            "service ms",
            "ttft ms",
            "itl ms",
            "tpot ms",
            "tok/s per request",
            "connect+tls ms",
        ] {
            assert!(text.contains(row), "{row}: {text}");
        }
        assert!(text.contains("     1.500     2.000     3.000     4.000     5.000     1.600"));

        let md = render_markdown(&report(false, false));
        assert!(md.contains("- load: closed loop, 8 connections"), "{md}");
        assert!(
            md.contains("| latency ms | 1.500 | 2.000 | 3.000 | 4.000 | 5.000 | 1.600 |"),
            "{md}"
        );
        assert!(!md.contains("ttft"), "{md}");
        assert!(md.contains("| connect ms |"), "{md}");
        assert!(!md.contains("tls:"), "{md}");
        assert!(text.contains("tls: verified (webpki roots); 8 connections opened"));
        assert!(md.contains("profile="), "{md}");
    }
}
