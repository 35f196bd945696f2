//! `shardgate-bench run`: an LLM-aware HTTP/1.1 load generator, closed loop
//! by default, open loop at a target rate with `--rate`.
//!
//! One glommio shard per core; connections split across shards; each
//! connection is a keep-alive loop cycling through prebuilt request bytes
//! (`crate::workload`) and reading the whole response (Content-Length,
//! chunked or until close) with the tool's own parser (`crate::http`).
//! Streams go through a [`StreamMeter`] for TTFT (first token event),
//! inter-token latency, time per output token, output tokens per second and
//! usage. Per-shard histograms, merged at the end. Steady state allocates
//! nothing per request.
//!
//! Open loop (`crate::arrivals`): latency and TTFT are measured from each
//! request's INTENDED send time, so a stall is charged to every request it
//! delayed (no coordinated omission); `service` is measured from the actual
//! send. Closed loop: both from the actual send.
//!
//! Timeline: `begin` (connections open, requests flow) → `begin + warmup`
//! (measurement starts) → `+ duration` (measurement ends, shards stop).
//! A request counts when it completes inside the measurement window (open
//! loop: and was due inside it); failures count whenever they happen before
//! its end, warmup included.

use crate::args::HttpUrl;
use crate::arrivals::Schedule;
use crate::error::BenchError;
use crate::http::{parse_response_head, ChunkedDecoder, Framing, Malformed};
use crate::machine;
use crate::progress::{self, Progress, ShardProgress};
use crate::shards::{spawn_shard, ShardPlan};
use crate::stream_meter::StreamMeter;
use crate::workload::{self, Api, OpenLoop, Shape};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Highest latency the histograms track (longer values are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;
const READ_BUF: usize = 64 << 10;
/// Open loop: arrivals due within this are released together.
const ARRIVAL_SLACK: Duration = Duration::from_micros(50);
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
    /// API shape, prompts, open loop.
    pub shape: Shape,
    /// Draw the live progress line (only if stderr is a terminal).
    pub progress: bool,
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
    /// A 200 event stream that ended without its end marker (`[DONE]`,
    /// `message_stop`).
    pub incomplete_stream: u64,
    /// An error event inside a 200 stream.
    pub stream_error: u64,
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
            + self.stream_error
            + self.status.values().sum::<u64>()
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.malformed += o.malformed;
        self.io += o.io;
        self.incomplete_stream += o.incomplete_stream;
        self.stream_error += o.stream_error;
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
            ("stream_error", self.stream_error),
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

/// What one shard measured. Times in microseconds.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Open loop: from the intended send time; closed: from the send.
    pub latency: Histogram<u64>,
    /// From the actual send (recorded in open loop only).
    pub service: Histogram<u64>,
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
    /// CPU time of `watch_pid` in the window, when one was given.
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

/// Runs one load and blocks until it is done. With `watch_pid`, also
/// measures that process's CPU time over the measurement window.
pub fn run_load(
    cfg: &LoadConfig,
    watch_pid: Option<u32>,
) -> Result<(LoadReport, Stats), BenchError> {
    let work = workload::build(cfg)?;
    let requests = Arc::new(work.requests);
    let shards = cfg.shards.count.clamp(1, cfg.connections.max(1));
    let begin = Instant::now();
    let window_start = begin + cfg.warmup;
    let window_end = window_start + cfg.duration;
    let mut handles = Vec::with_capacity(shards);
    let mut progress = Vec::with_capacity(shards);
    let mut first_conn = 0;
    for shard in 0..shards {
        // Spread connections evenly; the first shards take the remainder.
        let conns = cfg.connections / shards + usize::from(shard < cfg.connections % shards);
        let shard_progress = Arc::new(ShardProgress::default());
        progress.push(shard_progress.clone());
        let ctx = ConnCtx {
            addr: cfg.url.addr,
            requests: requests.clone(),
            api: work.api,
            stream: cfg.stream,
            timeout: cfg.timeout,
            window_start,
            window_end,
            open_loop: cfg.shape.open_loop,
            arrivals: cfg.shape.open_loop.map(|o| {
                let mut s = Schedule::new(o.rate, shards, shard, o.arrivals, cfg.shape.seed);
                let first = begin + s.first(shard, shards);
                (s, first)
            }),
            first_conn,
            progress: shard_progress,
        };
        first_conn += conns;
        let h = spawn_shard("load", cfg.shards, shard, move || run_shard(ctx, conns))?;
        handles.push(h);
    }

    // The main thread samples CPU counters at the window's edges and
    // redraws the progress line in between.
    let total = cfg.warmup + cfg.duration;
    let mut line = Progress::new(
        progress,
        begin,
        cfg.warmup,
        total,
        cfg.progress && progress::stderr_is_tty(),
    );
    let mut cpu0 = None;
    let mut own0 = None;
    let mut sampled = false;
    loop {
        let now = Instant::now();
        if !sampled && now >= window_start {
            cpu0 = watch_pid.and_then(machine::process_cpu_time);
            own0 = machine::own_cpu_time();
            sampled = true;
        }
        if now >= window_end {
            break;
        }
        let edge = if sampled { window_end } else { window_start };
        sleep_until(edge.min(now + progress::PERIOD));
        line.draw();
    }
    let cpu1 = watch_pid.and_then(machine::process_cpu_time);
    let own1 = machine::own_cpu_time();
    line.clear();

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
    let open = cfg.shape.open_loop;
    let streams = cfg.stream;
    let pt = &work.prompt_tokens;
    let report = LoadReport {
        url: cfg.url.to_string(),
        api: work.api,
        model: cfg.model.clone(),
        stream: cfg.stream,
        mode: if open.is_some() { "open" } else { "closed" },
        rate: open.map(|o| o.rate),
        arrivals: open.map(|o| o.arrivals),
        latency_from: if open.is_some() {
            "intended send time"
        } else {
            "send"
        },
        connections: cfg.connections,
        shards,
        pinned: cfg.shards.pin,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        requests: stats.ok,
        requests_per_second: stats.ok as f64 / secs,
        latency_us: Percentiles::of(&stats.latency),
        service_us: open.map(|_| Percentiles::of(&stats.service)),
        ttft_us: streams.then(|| Percentiles::of(&stats.ttft)),
        itl_us: streams.then(|| Percentiles::of(&stats.itl)),
        tpot_us: streams.then(|| Percentiles::of(&stats.tpot)),
        request_tokens_per_s: streams.then(|| Percentiles::of(&stats.tokens_per_s)),
        sse_events_per_request: (streams && stats.ok > 0)
            .then(|| stats.sse_events as f64 / stats.ok as f64),
        token_events_total: stats.token_events,
        output_tokens_total: stats.output_tokens,
        input_tokens_total: stats.input_tokens,
        output_tokens_per_second: stats.output_tokens as f64 / secs,
        prompt_tokens: (!pt.is_empty()).then(|| PromptTokens {
            min: pt.iter().copied().min().unwrap_or(0),
            mean: pt.iter().sum::<usize>() as f64 / pt.len() as f64,
            max: pt.iter().copied().max().unwrap_or(0),
        }),
        errors_total: stats.errors.total(),
        errors: stats.errors.clone(),
        stuck_at_end: stats.stuck,
        unsent_at_end: open.map(|_| stats.unsent),
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

/// Read-only settings for every connection of a shard.
struct ConnCtx {
    addr: std::net::SocketAddr,
    /// Cycled through, each connection from its own offset.
    requests: Arc<Vec<Vec<u8>>>,
    api: Api,
    stream: bool,
    timeout: Duration,
    window_start: Instant,
    window_end: Instant,
    open_loop: Option<OpenLoop>,
    /// Open loop: this shard's arrival sequence and its first arrival.
    arrivals: Option<(Schedule, Instant)>,
    /// Index of this shard's first connection over all shards.
    first_conn: usize,
    progress: Arc<ShardProgress>,
}

/// Open loop: releases each arrival into the shard's queue when it is due
/// (all that are due at once if the timer fires late); a free connection
/// takes the oldest. Stops at the window's end.
async fn release_arrivals(
    mut schedule: Schedule,
    mut next: Instant,
    end: Instant,
    queue: LocalSender<Instant>,
    released: Rc<Cell<u64>>,
) {
    loop {
        // Arrivals due within the slack go now: tiny timers cost more than
        // they are worth (and an early send is still measured from its
        // intended time).
        let now = Instant::now() + ARRIVAL_SLACK;
        while next <= now {
            if next >= end || queue.try_send(next).is_err() {
                return;
            }
            released.set(released.get() + 1);
            next += schedule.gap();
        }
        if next >= end {
            return;
        }
        glommio::timer::sleep(next - now).await;
    }
}

/// Where a connection's next request comes from in an open loop.
struct Arrivals {
    queue: LocalReceiver<Instant>,
    /// Arrivals taken by connections (released - taken = not yet sent).
    taken: Cell<u64>,
}

async fn run_shard(mut ctx: ConnCtx, conns: usize) -> Result<Stats, BenchError> {
    let released = Rc::new(Cell::new(0u64));
    let arrivals = ctx.arrivals.take().map(|(schedule, first)| {
        let (tx, rx) = local_channel::new_unbounded();
        glommio::spawn_local(release_arrivals(
            schedule,
            first,
            ctx.window_end,
            tx,
            released.clone(),
        ))
        .detach();
        Rc::new(Arrivals {
            queue: rx,
            taken: Cell::new(0),
        })
    });
    let ctx = Rc::new(ctx);
    let stats = Rc::new(RefCell::new(Stats::new()?));
    // When each connection's current request was sent (None = idle).
    let started: Vec<Rc<Cell<Option<Instant>>>> =
        (0..conns).map(|_| Rc::new(Cell::new(None))).collect();
    let tasks: Vec<_> = started
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let index = ctx.first_conn + i;
            glommio::spawn_local(connection_loop(
                ctx.clone(),
                stats.clone(),
                st.clone(),
                index,
                arrivals.clone(),
            ))
        })
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
    if let Some(a) = &arrivals {
        stats.unsent = released.get().saturating_sub(a.taken.get());
    }
    Ok(stats)
}

/// A successfully read response (stream facts are in the meter).
struct Outcome {
    status: u16,
    /// When the first body byte arrived.
    first_byte: Option<Instant>,
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

/// Per-connection scratch kept across requests.
struct Scratch {
    meter: StreamMeter,
    /// Inter-token gaps of the current request, in microseconds.
    gaps: Vec<u64>,
}

async fn connection_loop(
    ctx: Rc<ConnCtx>,
    stats: Rc<RefCell<Stats>>,
    started: Rc<Cell<Option<Instant>>>,
    index: usize,
    arrivals: Option<Rc<Arrivals>>,
) {
    let mut buf = vec![0u8; READ_BUF];
    let mut scratch = Scratch {
        meter: StreamMeter::new(ctx.api),
        gaps: Vec::with_capacity(256),
    };
    let n_requests = ctx.requests.len().max(1);
    let mut next_request = index % n_requests;
    while Instant::now() < ctx.window_end {
        let stream = match TcpStream::connect_timeout(ctx.addr, ctx.timeout).await {
            Ok(s) => s,
            Err(_) => {
                if Instant::now() < ctx.window_end {
                    stats.borrow_mut().errors.connect += 1;
                    ctx.progress.add(&ctx.progress.errors, 1);
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
            // Open loop: a free connection takes the oldest due arrival.
            let intended = match &arrivals {
                Some(a) => match a.queue.recv().await {
                    Some(t) => {
                        a.taken.set(a.taken.get() + 1);
                        Some(t)
                    }
                    None => return,
                },
                None => None,
            };
            let t0 = Instant::now();
            if t0 >= ctx.window_end {
                return;
            }
            // Open loop: measured from when the request should have gone.
            let from = intended.unwrap_or(t0).min(t0);
            started.set(Some(t0));
            scratch.meter.reset();
            scratch.gaps.clear();
            let request = ctx.requests.get(next_request).map_or(&[][..], |r| &r[..]);
            next_request = (next_request + 1) % n_requests;
            let result = one_request(&mut conn, &ctx, request, &mut scratch).await;
            let t1 = Instant::now();
            if t1 >= ctx.window_end {
                return;
            }
            started.set(None);
            let mut s = stats.borrow_mut();
            match result {
                Ok(o) => {
                    let close = o.close;
                    record(&mut s, &ctx, &o, &scratch, from, t0, t1);
                    if close {
                        break;
                    }
                }
                Err(f) => {
                    match f {
                        Failure::Timeout => s.errors.timeout += 1,
                        Failure::Malformed => s.errors.malformed += 1,
                        Failure::Io => s.errors.io += 1,
                    }
                    ctx.progress.add(&ctx.progress.errors, 1);
                    break;
                }
            }
        }
    }
}

/// Counts one complete response: `from` is what latency is measured from
/// (intended or actual send), `t0` the actual send, `t1` the end.
fn record(
    s: &mut Stats,
    ctx: &ConnCtx,
    o: &Outcome,
    scratch: &Scratch,
    from: Instant,
    t0: Instant,
    t1: Instant,
) {
    let m = &scratch.meter;
    let success = (200..300).contains(&o.status);
    let metered = ctx.stream && o.event_stream;
    let p = &ctx.progress;
    if !success {
        *s.errors.status.entry(o.status).or_default() += 1;
        p.add(&p.errors, 1);
        return;
    }
    if metered && m.error {
        s.errors.stream_error += 1;
        p.add(&p.errors, 1);
        return;
    }
    if metered && !m.done {
        s.errors.incomplete_stream += 1;
        p.add(&p.errors, 1);
        return;
    }
    p.add(&p.completed, 1);
    // Closed loop: what completes in the window. Open loop: what was due
    // in it, so a backlog left by the warmup is not counted as throughput.
    let counted_at = if ctx.open_loop.is_some() { from } else { t1 };
    if counted_at < ctx.window_start {
        return;
    }
    s.ok += 1;
    s.latency.saturating_record(micros(t1 - from));
    if ctx.open_loop.is_some() {
        s.service.saturating_record(micros(t1 - t0));
    }
    if !ctx.stream {
        return;
    }
    s.sse_events += m.events;
    s.token_events += m.token_events;
    let output = m.output_tokens.unwrap_or(m.token_events);
    s.output_tokens += output;
    s.input_tokens += m.input_tokens.unwrap_or(0);
    p.add(&p.tokens, output);
    if let Some(first) = m.first_token.or(o.first_byte) {
        s.ttft
            .saturating_record(micros(first.saturating_duration_since(from)));
    }
    for &gap in &scratch.gaps {
        s.itl.saturating_record(gap.max(1));
    }
    if let (Some(first), Some(last)) = (m.first_token, m.last_token) {
        if m.token_events >= 2 {
            let per = last.saturating_duration_since(first) / (m.token_events - 1) as u32;
            s.tpot.saturating_record(micros(per));
        }
    }
    let secs = (t1 - from).as_secs_f64();
    if output > 0 && secs > 0.0 {
        s.tokens_per_s
            .saturating_record(((output as f64 / secs).round() as u64).max(1));
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
async fn one_request(
    conn: &mut Conn<'_>,
    ctx: &ConnCtx,
    request: &[u8],
    scratch: &mut Scratch,
) -> Result<Outcome, Failure> {
    conn.stream.write_all(request).await?;
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
        event_stream: head.event_stream,
        close: head.close,
    };
    let count_sse = ctx.stream && head.event_stream;
    let Scratch { meter, gaps } = scratch;
    let mut on_gap = |d: Duration| gaps.push(micros(d));
    let mut now = Instant::now();
    if conn.start < conn.end && head.framing != Framing::None {
        outcome.first_byte = Some(now);
    }
    match head.framing {
        Framing::None => {}
        Framing::Length(mut remaining) => loop {
            let take = ((conn.end - conn.start) as u64).min(remaining) as usize;
            if count_sse {
                meter.feed(&conn.buf[conn.start..conn.start + take], now, &mut on_gap);
            }
            conn.start += take;
            remaining -= take as u64;
            if remaining == 0 {
                break;
            }
            if !conn.fill().await? {
                return Err(Failure::Io);
            }
            now = Instant::now();
            outcome.first_byte.get_or_insert(now);
        },
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let mut got_data = false;
                let used = decoder.feed(&conn.buf[conn.start..conn.end], |data| {
                    got_data = true;
                    if count_sse {
                        meter.feed(data, now, &mut on_gap);
                    }
                })?;
                conn.start += used;
                if got_data && outcome.first_byte.is_none() {
                    outcome.first_byte = Some(now);
                }
                if decoder.is_done() {
                    break;
                }
                if !conn.fill().await? {
                    return Err(Failure::Io);
                }
                now = Instant::now();
            }
        }
        Framing::UntilClose => {
            loop {
                if count_sse {
                    meter.feed(&conn.buf[conn.start..conn.end], now, &mut on_gap);
                }
                conn.start = conn.end;
                if !conn.fill().await? {
                    break;
                }
                now = Instant::now();
                outcome.first_byte.get_or_insert(now);
            }
            outcome.close = true;
        }
    }
    Ok(outcome)
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
