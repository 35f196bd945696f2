//! `shardgate-bench run`: a closed-loop HTTP/1.1 load generator.
//!
//! One glommio shard per core; connections split across shards; each
//! connection is a keep-alive loop sending the same prebuilt request bytes
//! and reading the whole response (Content-Length, chunked or until close)
//! with the tool's own parser (`crate::http`). Per-shard histograms, merged
//! at the end. Steady state allocates nothing per request.
//!
//! Timeline: `begin` (connections open, requests flow) → `begin + warmup`
//! (measurement starts) → `+ duration` (measurement ends, shards stop).
//! A request counts when it completes inside the measurement window;
//! failures count whenever they happen before its end, warmup included.

use crate::args::HttpUrl;
use crate::error::BenchError;
use crate::http::{parse_response_head, ChunkedDecoder, Framing, Malformed, SseCounter};
use crate::machine;
use crate::shards::{spawn_shard, ShardPlan};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Highest latency the histograms track (longer values are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;
const READ_BUF: usize = 64 << 10;
/// A request still unanswered this long when the window closes is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(1);

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub url: HttpUrl,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub shards: ShardPlan,
    pub model: String,
    pub stream: bool,
    pub max_tokens: u32,
    pub api_key: Option<String>,
    /// Connect timeout, and longest wait for any single read.
    pub timeout: Duration,
}

/// Failures by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    /// Unparsable response head or framing.
    pub malformed: u64,
    /// Connection reset or closed before the response was complete.
    pub io: u64,
    /// A 200 event stream that ended without `data: [DONE]`.
    pub incomplete_stream: u64,
    /// Non-2xx responses by status code.
    pub status: BTreeMap<u16, u64>,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.timeout
            + self.malformed
            + self.io
            + self.incomplete_stream
            + self.status.values().sum::<u64>()
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.malformed += o.malformed;
        self.io += o.io;
        self.incomplete_stream += o.incomplete_stream;
        for (k, v) in &o.status {
            *self.status.entry(*k).or_default() += v;
        }
    }

    pub fn describe(&self) -> String {
        if self.total() == 0 {
            return "none".to_string();
        }
        let mut parts = Vec::new();
        for (name, n) in [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("malformed", self.malformed),
            ("io", self.io),
            ("incomplete_stream", self.incomplete_stream),
        ] {
            if n > 0 {
                parts.push(format!("{name}={n}"));
            }
        }
        for (code, n) in &self.status {
            parts.push(format!("status_{code}={n}"));
        }
        parts.join(" ")
    }
}

/// What one shard measured.
#[derive(Debug, Clone)]
pub struct Stats {
    pub latency: Histogram<u64>,
    pub ttft: Histogram<u64>,
    pub ok: u64,
    pub sse_events: u64,
    pub errors: ErrorCounts,
    /// Requests unanswered when the window closed that had been waiting
    /// for over [`STUCK_AFTER`] (a hung server shows here, not as errors).
    pub stuck: u64,
}

impl Stats {
    pub fn new() -> Result<Self, BenchError> {
        let h = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(BenchError::runtime);
        Ok(Stats {
            latency: h()?,
            ttft: h()?,
            ok: 0,
            sse_events: 0,
            errors: ErrorCounts::default(),
            stuck: 0,
        })
    }

    pub fn merge(&mut self, o: &Stats) -> Result<(), BenchError> {
        self.latency.add(&o.latency).map_err(BenchError::runtime)?;
        self.ttft.add(&o.ttft).map_err(BenchError::runtime)?;
        self.ok += o.ok;
        self.sse_events += o.sse_events;
        self.errors.merge(&o.errors);
        self.stuck += o.stuck;
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
    pub model: String,
    pub stream: bool,
    pub connections: usize,
    pub shards: usize,
    pub pinned: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Successful requests completed inside the measurement window.
    pub requests: u64,
    pub requests_per_second: f64,
    pub latency_us: Percentiles,
    /// Time from sending the request to the first body byte; streams only.
    pub ttft_us: Option<Percentiles>,
    pub sse_events_per_request: Option<f64>,
    pub errors: ErrorCounts,
    pub errors_total: u64,
    /// Requests unanswered for over a second when the window closed.
    pub stuck_at_end: u64,
    /// CPU time the load generator itself used in the window, in cores.
    pub loadgen_cpu_cores: Option<f64>,
    /// CPU time of `watch_pid` in the window, when one was given.
    pub watched_cpu_us: Option<u64>,
    pub watched_cpu_us_per_request: Option<f64>,
    pub machine: machine::MachineInfo,
}

/// Runs one load and blocks until it is done. With `watch_pid`, also
/// measures that process's CPU time over the measurement window.
pub fn run_load(
    cfg: &LoadConfig,
    watch_pid: Option<u32>,
) -> Result<(LoadReport, Stats), BenchError> {
    let request = build_request(cfg);
    let shards = cfg.shards.count.clamp(1, cfg.connections.max(1));
    let begin = Instant::now();
    let window_start = begin + cfg.warmup;
    let window_end = window_start + cfg.duration;
    let mut handles = Vec::with_capacity(shards);
    for shard in 0..shards {
        // Spread connections evenly; the first shards take the remainder.
        let conns = cfg.connections / shards + usize::from(shard < cfg.connections % shards);
        let ctx = ConnCtx {
            addr: cfg.url.addr,
            request: request.clone(),
            stream: cfg.stream,
            timeout: cfg.timeout,
            window_start,
            window_end,
        };
        let h = spawn_shard("load", cfg.shards, shard, move || run_shard(ctx, conns))?;
        handles.push(h);
    }

    sleep_until(window_start);
    let cpu0 = watch_pid.and_then(machine::process_cpu_time);
    let own0 = machine::own_cpu_time();
    sleep_until(window_end);
    let cpu1 = watch_pid.and_then(machine::process_cpu_time);
    let own1 = machine::own_cpu_time();

    let mut stats = Stats::new()?;
    for h in handles {
        let shard_stats = h.join().map_err(BenchError::runtime)??;
        stats.merge(&shard_stats)?;
    }

    let secs = cfg.duration.as_secs_f64().max(1e-9);
    let watched_cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_micros() as u64),
        _ => None,
    };
    let report = LoadReport {
        url: cfg.url.to_string(),
        model: cfg.model.clone(),
        stream: cfg.stream,
        connections: cfg.connections,
        shards,
        pinned: cfg.shards.pin,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        requests: stats.ok,
        requests_per_second: stats.ok as f64 / secs,
        latency_us: Percentiles::of(&stats.latency),
        ttft_us: cfg.stream.then(|| Percentiles::of(&stats.ttft)),
        sse_events_per_request: (cfg.stream && stats.ok > 0)
            .then(|| stats.sse_events as f64 / stats.ok as f64),
        errors_total: stats.errors.total(),
        errors: stats.errors.clone(),
        stuck_at_end: stats.stuck,
        loadgen_cpu_cores: match (own0, own1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / secs),
            _ => None,
        },
        watched_cpu_us,
        watched_cpu_us_per_request: watched_cpu_us
            .filter(|_| stats.ok > 0)
            .map(|us| us as f64 / stats.ok as f64),
        machine: machine::MachineInfo::collect(),
    };
    Ok((report, stats))
}

/// The main thread waits for the window edges to sample CPU counters; it
/// is not a shard, so blocking it is fine.
#[allow(clippy::disallowed_methods)]
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The request every connection sends, built once. The body follows the
/// URL's path: chat completions, legacy completions or embeddings; `GET`
/// for `/models` and health paths.
pub fn build_request(cfg: &LoadConfig) -> Vec<u8> {
    let path = cfg.url.path.split('?').next().unwrap_or("");
    let get = path.ends_with("/models") || path.ends_with("/healthz") || path == "/";
    let body = if get {
        None
    } else if path.ends_with("/embeddings") {
        Some(serde_json::json!({
            "model": cfg.model,
            "input": "The quick brown fox jumps over the lazy dog.",
        }))
    } else {
        let mut body = if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
            serde_json::json!({
                "model": cfg.model,
                "prompt": "Say hello in one short sentence.",
                "max_tokens": cfg.max_tokens,
            })
        } else {
            serde_json::json!({
                "model": cfg.model,
                "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                "max_tokens": cfg.max_tokens,
            })
        };
        if cfg.stream {
            body["stream"] = true.into();
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        Some(body)
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\nuser-agent: shardgate-bench\r\n",
        if get { "GET" } else { "POST" },
        cfg.url.path,
        cfg.url.host
    );
    if let Some(key) = &cfg.api_key {
        req.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    if !get {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    if cfg.stream {
        req.push_str("accept: text/event-stream\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

/// Read-only settings for every connection of a shard.
struct ConnCtx {
    addr: std::net::SocketAddr,
    request: Vec<u8>,
    stream: bool,
    timeout: Duration,
    window_start: Instant,
    window_end: Instant,
}

async fn run_shard(ctx: ConnCtx, conns: usize) -> Result<Stats, BenchError> {
    let ctx = Rc::new(ctx);
    let stats = Rc::new(RefCell::new(Stats::new()?));
    // When each connection's current request was sent (None = idle).
    let started: Vec<Rc<Cell<Option<Instant>>>> =
        (0..conns).map(|_| Rc::new(Cell::new(None))).collect();
    let tasks: Vec<_> = started
        .iter()
        .map(|st| glommio::spawn_local(connection_loop(ctx.clone(), stats.clone(), st.clone())))
        .collect();
    let all = async {
        for t in tasks {
            t.await;
        }
    };
    // Connections stop starting requests at the window's end; one still in
    // flight then doesn't count, so there is no reason to wait for it.
    let deadline = async {
        let now = Instant::now();
        let end = ctx.window_end + Duration::from_millis(20);
        if end > now {
            glommio::timer::sleep(end - now).await;
        }
    };
    futures_lite::future::or(all, deadline).await;
    let mut stats = stats.borrow().clone();
    stats.stuck = started
        .iter()
        .filter_map(|st| st.get())
        .filter(|&t0| ctx.window_end.saturating_duration_since(t0) >= STUCK_AFTER)
        .count() as u64;
    Ok(stats)
}

/// A successfully read response.
struct Outcome {
    status: u16,
    /// When the first body byte arrived.
    first_byte: Option<Instant>,
    sse_events: u64,
    done: bool,
    event_stream: bool,
    close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Timeout,
    Malformed,
    Io,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            Failure::Timeout
        } else {
            Failure::Io
        }
    }
}

impl From<Malformed> for Failure {
    fn from(_: Malformed) -> Self {
        Failure::Malformed
    }
}

async fn connection_loop(
    ctx: Rc<ConnCtx>,
    stats: Rc<RefCell<Stats>>,
    started: Rc<Cell<Option<Instant>>>,
) {
    let mut buf = vec![0u8; READ_BUF];
    while Instant::now() < ctx.window_end {
        let stream = match TcpStream::connect_timeout(ctx.addr, ctx.timeout).await {
            Ok(s) => s,
            Err(_) => {
                if Instant::now() < ctx.window_end {
                    stats.borrow_mut().errors.connect += 1;
                }
                // Don't spin on a refusing port.
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if stream.set_read_timeout(Some(ctx.timeout)).is_err() {
            stats.borrow_mut().errors.io += 1;
            continue;
        }
        let mut conn = Conn {
            stream,
            buf: &mut buf,
            start: 0,
            end: 0,
        };
        loop {
            let t0 = Instant::now();
            if t0 >= ctx.window_end {
                return;
            }
            started.set(Some(t0));
            let result = one_request(&mut conn, &ctx).await;
            let t1 = Instant::now();
            if t1 >= ctx.window_end {
                return;
            }
            started.set(None);
            let mut s = stats.borrow_mut();
            match result {
                Ok(o) => {
                    let success = (200..300).contains(&o.status);
                    let complete = !(ctx.stream && success && o.event_stream && !o.done);
                    if !success {
                        *s.errors.status.entry(o.status).or_default() += 1;
                    } else if !complete {
                        s.errors.incomplete_stream += 1;
                    } else if t1 >= ctx.window_start {
                        s.ok += 1;
                        s.latency.saturating_record(micros(t1 - t0));
                        if ctx.stream {
                            s.sse_events += o.sse_events;
                            if let Some(fb) = o.first_byte {
                                s.ttft
                                    .saturating_record(micros(fb.saturating_duration_since(t0)));
                            }
                        }
                    }
                    if o.close {
                        break;
                    }
                }
                Err(f) => {
                    match f {
                        Failure::Timeout => s.errors.timeout += 1,
                        Failure::Malformed => s.errors.malformed += 1,
                        Failure::Io => s.errors.io += 1,
                    }
                    break;
                }
            }
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

/// A connection and its read buffer; `buf[start..end]` is unread.
struct Conn<'a> {
    stream: TcpStream,
    buf: &'a mut Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn<'_> {
    /// Reads more bytes; `Ok(false)` on EOF.
    async fn fill(&mut self) -> Result<bool, Failure> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                // Only a response head can need this much unread data.
                return Err(Failure::Malformed);
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n > 0)
    }
}

/// Sends the request and reads one whole response.
async fn one_request(conn: &mut Conn<'_>, ctx: &ConnCtx) -> Result<Outcome, Failure> {
    conn.stream.write_all(&ctx.request).await?;
    let head = loop {
        if let Some(head) = parse_response_head(&conn.buf[conn.start..conn.end])? {
            break head;
        }
        if !conn.fill().await? {
            return Err(Failure::Io);
        }
    };
    conn.start += head.len;
    let mut outcome = Outcome {
        status: head.status,
        first_byte: None,
        sse_events: 0,
        done: false,
        event_stream: head.event_stream,
        close: head.close,
    };
    let count_sse = ctx.stream && head.event_stream;
    let mut sse = SseCounter::new();
    if conn.start < conn.end && head.framing != Framing::None {
        outcome.first_byte = Some(Instant::now());
    }
    match head.framing {
        Framing::None => {}
        Framing::Length(mut remaining) => loop {
            let take = ((conn.end - conn.start) as u64).min(remaining) as usize;
            if count_sse {
                sse.feed(&conn.buf[conn.start..conn.start + take]);
            }
            conn.start += take;
            remaining -= take as u64;
            if remaining == 0 {
                break;
            }
            if !conn.fill().await? {
                return Err(Failure::Io);
            }
            outcome.first_byte.get_or_insert_with(Instant::now);
        },
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let mut got_data = false;
                let used = decoder.feed(&conn.buf[conn.start..conn.end], |data| {
                    got_data = true;
                    if count_sse {
                        sse.feed(data);
                    }
                })?;
                conn.start += used;
                if got_data && outcome.first_byte.is_none() {
                    outcome.first_byte = Some(Instant::now());
                }
                if decoder.is_done() {
                    break;
                }
                if !conn.fill().await? {
                    return Err(Failure::Io);
                }
            }
        }
        Framing::UntilClose => {
            loop {
                if count_sse {
                    sse.feed(&conn.buf[conn.start..conn.end]);
                }
                conn.start = conn.end;
                if !conn.fill().await? {
                    break;
                }
                outcome.first_byte.get_or_insert_with(Instant::now);
            }
            outcome.close = true;
        }
    }
    outcome.sse_events = sse.data_events;
    outcome.done = sse.done;
    Ok(outcome)
}

/// Human-readable report lines.
pub fn print_report(r: &LoadReport) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "shardgate-bench run: {} model={} stream={}",
        r.url, r.model, r.stream
    );
    println!("{}", r.machine.one_line());
    println!(
        "load: {} connections on {} shard{} ({}), warmup {:.1}s, duration {:.1}s",
        r.connections,
        r.shards,
        if r.shards == 1 { "" } else { "s" },
        if r.pinned { "pinned" } else { "unpinned" },
        r.warmup_s,
        r.duration_s
    );
    println!(
        "requests: {} ok, {:.1} req/s",
        r.requests, r.requests_per_second
    );
    let l = &r.latency_us;
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        l.mean / 1000.0
    );
    if let Some(t) = &r.ttft_us {
        println!(
            "ttft ms:    p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(t.p50),
            ms(t.p90),
            ms(t.p99),
            ms(t.p999),
            ms(t.max)
        );
    }
    if let Some(e) = r.sse_events_per_request {
        println!("sse data events/request: {e:.1}");
    }
    println!("errors: {} ({})", r.errors_total, r.errors.describe());
    if r.stuck_at_end > 0 {
        println!(
            "unanswered for over {}s at the end: {}",
            STUCK_AFTER.as_secs(),
            r.stuck_at_end
        );
    }
    if let Some(c) = r.loadgen_cpu_cores {
        println!("loadgen cpu: {c:.2} cores");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_url;

    fn cfg(url: &str, stream: bool, key: Option<&str>) -> LoadConfig {
        LoadConfig {
            url: parse_url(url).unwrap(),
            connections: 4,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            shards: ShardPlan {
                count: 1,
                pin: false,
            },
            model: "demo".into(),
            stream,
            max_tokens: 16,
            api_key: key.map(str::to_string),
            timeout: Duration::from_secs(5),
        }
    }

    fn split(req: &[u8]) -> (String, serde_json::Value) {
        let text = std::str::from_utf8(req).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut headers);
        assert!(r.parse(req).unwrap().is_complete());
        let cl = r
            .headers
            .iter()
            .find(|h| h.name == "content-length")
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(cl.unwrap_or(0), body.len());
        let v = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(body).unwrap()
        };
        (head.to_string(), v)
    }

    #[test]
    fn chat_request() {
        let (head, v) = split(&build_request(&cfg(
            "http://127.0.0.1:1/v1/chat/completions",
            false,
            Some("k"),
        )));
        assert!(head.starts_with("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:1\r\n"));
        assert!(head.contains("authorization: Bearer k"));
        assert_eq!(v["model"], "demo");
        assert_eq!(v["max_tokens"], 16);
        assert!(v["messages"].is_array());
        assert!(v.get("stream").is_none());

        let (head, v) = split(&build_request(&cfg(
            "http://127.0.0.1:1/v1/chat/completions",
            true,
            None,
        )));
        assert!(!head.contains("authorization"));
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn other_requests() {
        let (_, v) = split(&build_request(&cfg(
            "http://127.0.0.1:1/v1/completions",
            false,
            None,
        )));
        assert!(v["prompt"].is_string());
        let (_, v) = split(&build_request(&cfg(
            "http://127.0.0.1:1/v1/embeddings",
            false,
            None,
        )));
        assert!(v["input"].is_string());
        let (head, v) = split(&build_request(&cfg(
            "http://127.0.0.1:1/healthz",
            false,
            None,
        )));
        assert!(head.starts_with("GET /healthz HTTP/1.1"));
        assert!(v.is_null());
    }

    #[test]
    fn error_counts() {
        let mut a = ErrorCounts::default();
        assert_eq!(a.describe(), "none");
        a.timeout = 2;
        a.status.insert(429, 3);
        let mut b = ErrorCounts::default();
        b.status.insert(429, 1);
        b.io = 1;
        a.merge(&b);
        assert_eq!(a.total(), 7);
        assert_eq!(a.describe(), "timeout=2 io=1 status_429=4");
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
}
