//! `shardgate-bench run`: an LLM-aware HTTP/1.1 load generator, closed loop
//! by default, open loop at a target rate with `--rate`.
//!
//! One glommio shard per core; connections split across shards; each
//! connection is a keep-alive loop cycling through prebuilt request bytes
//! (`crate::workload`) and reading the whole response (Content-Length,
//! chunked or until close) with the tool's own parser (`crate::http`).
//! `https://` targets: each connection does its TLS handshake
//! (`crate::tls`) right after the TCP connect, before its first request;
//! connect time (TCP + TLS) is its own histogram, outside request latency,
//! and a failed handshake is its own error kind.
//! Streams go through a [`StreamMeter`] for TTFT (first token event),
//! inter-token latency, time per output token, output tokens per second and
//! usage. Per-shard histograms, merged at the end. In steady state the
//! tool's own code allocates nothing per request; glommio allocates about
//! ten times for each read that has to wait, and over TLS rustls one buffer
//! per record each way (`loadgen_tests.rs` counts them).
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
use crate::report::{LoadReport, Percentiles, PromptTokens, Stats, STUCK_AFTER};
use crate::shards::{spawn_shard, ShardPlan};
use crate::stream_meter::StreamMeter;
use crate::tls::{ClientStream, ClientTls, Stream, TlsOptions};
use crate::workload::{self, Api, OpenLoop, Shape};
use futures_lite::AsyncReadExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const READ_BUF: usize = 64 << 10;
/// Open loop: arrivals due within this are released together.
const ARRIVAL_SLACK: Duration = Duration::from_micros(50);

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
    /// Connect timeout, TLS handshake timeout, and longest wait for any
    /// single read.
    pub timeout: Duration,
    /// API shape, prompts, open loop.
    pub shape: Shape,
    /// Connections open one after another, evenly over this time, rather
    /// than all at once: closed-loop streams of equal length started
    /// together stay in step (every connection's tokens and completions in
    /// the same instant), which turns a steady load into bursts and makes
    /// a window's completions a multiple of the connection count.
    pub ramp_up: Duration,
    /// Draw the live progress line (only if stderr is a terminal).
    pub progress: bool,
    /// Trust settings for `https://` URLs.
    pub tls: TlsOptions,
}

/// Runs one load and blocks until it is done. With `watch` pids, also
/// measures their CPU time together over the measurement window (a
/// gateway is one process; nginx is one per worker).
pub fn run_load(cfg: &LoadConfig, watch: &[u32]) -> Result<(LoadReport, Stats), BenchError> {
    let work = workload::build(cfg)?;
    let tls = if cfg.url.tls {
        Some(ClientTls::new(&cfg.tls, &cfg.url.server_name)?)
    } else {
        None
    };
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
            tls: tls.clone(),
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
            ramp: (!cfg.ramp_up.is_zero()).then(|| {
                let step = cfg.ramp_up / u32::try_from(cfg.connections.max(1)).unwrap_or(u32::MAX);
                (begin, step)
            }),
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
    let mut busy0 = None;
    let own_cpus = machine::allowed_cpus();
    let mut sampled = false;
    loop {
        let now = Instant::now();
        if !sampled && now >= window_start {
            cpu0 = cpu_of(watch);
            own0 = machine::own_cpu_time();
            busy0 = machine::cpus_ticks(&own_cpus);
            sampled = true;
        }
        if now >= window_end {
            break;
        }
        let edge = if sampled { window_end } else { window_start };
        sleep_until(edge.min(now + progress::PERIOD));
        line.draw();
    }
    let cpu1 = cpu_of(watch);
    let own1 = machine::own_cpu_time();
    let busy1 = machine::cpus_ticks(&own_cpus);
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
        connect_us: Percentiles::of(&stats.connect),
        connections_opened: stats.connect.len(),
        tls: cfg.url.tls.then(|| cfg.tls.verification()),
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
        loadgen_cpus: machine::format_cpu_list(&own_cpus),
        loadgen_cpus_busy: busy0.zip(busy1).and_then(|(a, b)| a.busy_share_until(b)),
        watched_cpu_us,
        watched_cpu_us_per_request: watched_cpu_us
            .filter(|_| stats.ok > 0)
            .map(|us| us as f64 / stats.ok as f64),
        machine: machine::MachineInfo::collect(),
    };
    Ok((report, stats))
}

/// The CPU time of every process in `pids` together; none if `pids` is
/// empty or one of them can't be read (it exited).
fn cpu_of(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|&pid| machine::process_cpu_time(pid))
        .sum::<Option<Duration>>()
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
    /// `https://`: the handshake each connection does after connecting.
    tls: Option<ClientTls>,
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
    /// Connection `i` (over all shards) opens at `begin + i * step`.
    ramp: Option<(Instant, Duration)>,
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
    if let Some((begin, step)) = ctx.ramp {
        let at = begin + step * u32::try_from(index).unwrap_or(u32::MAX);
        let now = Instant::now();
        if at > now {
            glommio::timer::sleep((at - now).min(ctx.window_end.saturating_duration_since(now)))
                .await;
        }
    }
    while Instant::now() < ctx.window_end {
        let connecting = Instant::now();
        let stream = match open(&ctx).await {
            Ok(s) => s,
            Err(kind) => {
                if Instant::now() < ctx.window_end {
                    let mut s = stats.borrow_mut();
                    match kind {
                        OpenError::Connect => s.errors.connect += 1,
                        OpenError::Handshake(why) => {
                            s.errors.tls_handshake += 1;
                            s.errors.first_tls_error.get_or_insert(why);
                        }
                        OpenError::Io => s.errors.io += 1,
                    }
                    ctx.progress.add(&ctx.progress.errors, 1);
                }
                // Don't spin on a refusing port or a failing handshake.
                glommio::timer::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let opened = Instant::now();
        if opened < ctx.window_end {
            stats
                .borrow_mut()
                .connect
                .saturating_record(micros(opened - connecting));
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

/// Why a connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenError {
    Connect,
    /// The TLS handshake failed or timed out, and why (rustls's words).
    Handshake(String),
    Io,
}

/// Connects (and with TLS, handshakes) within the timeout; the read
/// timeout then bounds every read of the connection's requests.
async fn open(ctx: &ConnCtx) -> Result<ClientStream, OpenError> {
    let tcp = TcpStream::connect_timeout(ctx.addr, ctx.timeout)
        .await
        .map_err(|_| OpenError::Connect)?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(ctx.timeout))
        .map_err(|_| OpenError::Io)?;
    let Some(tls) = &ctx.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let timeout = ctx.timeout;
    let handshake = async {
        tls.connect(tcp)
            .await
            .map_err(|e| OpenError::Handshake(e.to_string()))
    };
    let deadline = async {
        glommio::timer::sleep(timeout).await;
        Err(OpenError::Handshake(format!(
            "no handshake within {}",
            humantime::format_duration(timeout)
        )))
    };
    let tls_stream = futures_lite::future::or(handshake, deadline).await?;
    Ok(Stream::Tls(Box::new(tls_stream)))
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
    let output = m.output_tokens.unwrap_or(m.token_events);
    p.add(&p.tokens, output);
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
    s.output_tokens += output;
    s.input_tokens += m.input_tokens.unwrap_or(0);
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
    stream: ClientStream,
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
    conn.stream.send(request).await?;
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

#[cfg(test)]
#[path = "loadgen_tests.rs"]
mod tests;
