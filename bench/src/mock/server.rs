//! Listening, the per-connection HTTP/1.1 loop, deciding each answer and the
//! paced stream driver. Dialect specifics live in the sibling modules.

use super::answer::{self, Dialect, ErrorCause, ErrorStyle, Generation};
use super::gemini::Op;
use super::head::{parse_request_head, HeadError, Keys, RequestHead, Route};
use super::inject::Injection;
use super::wire::{self, frame_chunk, write_head, write_stream_head, LAST_CHUNK};
use super::{anthropic, bedrock, gemini, mcp, openai, responses};
use crate::arrivals::Rng;
use crate::error::BenchError;
use crate::shards::{spawn_shard, ShardPlan};
use crate::tls::{ServerStream, Stream};
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use shardgate_proto::mock::{self as m, Behaviour};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest request head plus body the mock accepts.
const MAX_REQUEST: usize = 16 << 20;
/// Initial per-connection read buffer.
const READ_BUF: usize = 16 << 10;
/// Longest a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `shardgate-bench mock` was asked to do.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub listen: SocketAddr,
    /// Serve TLS on every port with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub shards: ShardPlan,
    pub instances: usize,
    pub require_key: Option<String>,
    pub defaults: Behaviour,
    pub injection: Injection,
    /// Seeds each shard's random draws (shard i: `seed + i`).
    pub seed: u64,
}

/// Requests seen per model name, for `-first-N` behaviours: shared by the
/// mock's shards (a retry may come on another connection), lock-free. Names
/// are hashed into a fixed table; tests give each such name a unique tag,
/// so two names sharing a slot is not a concern.
#[derive(Clone)]
struct SeenNames(Arc<[std::sync::atomic::AtomicU32]>);

impl Default for SeenNames {
    fn default() -> Self {
        SeenNames(
            (0..4096)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
        )
    }
}

impl SeenNames {
    /// How many requests came for `model` before this one.
    fn count(&self, model: &str) -> u32 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        model.hash(&mut h);
        let slot = (h.finish() % self.0.len() as u64) as usize;
        self.0[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Per-shard settings shared by its connections.
struct Shared {
    keys: Keys,
    tls: Option<futures_rustls::TlsAcceptor>,
    defaults: Behaviour,
    injection: Injection,
    rng: RefCell<Rng>,
    shard: usize,
    next_id: Cell<u64>,
    seen: SeenNames,
}

impl Shared {
    /// One request's behaviour: the defaults (with a drawn ttft), then the
    /// model name's behaviours, then drawn failures the name didn't ask for.
    fn behaviour(&self, model: &str, stream: bool) -> Behaviour {
        let mut rng = self.rng.borrow_mut();
        let defaults = self.injection.defaults(self.defaults, &mut rng);
        let mut b = m::behaviour(model, defaults);
        if let Some(n) = b.fail_first {
            if self.seen.count(model) >= n {
                b.fail_status = None;
            }
        }
        self.injection.failures(b, stream, &mut rng)
    }
}

/// Binds every instance on every shard, prints one
/// `mock listening on ADDR` line per instance, then serves forever.
pub fn serve(cfg: MockConfig) -> Result<(), BenchError> {
    let addrs = listen_addrs(cfg.listen, cfg.instances);
    let mut handles = Vec::with_capacity(cfg.shards.count);
    let mut bound: Option<Vec<SocketAddr>> = None;
    let seen = SeenNames::default();
    for shard in 0..cfg.shards.count.max(1) {
        // Shard 0 binds first (learning ephemeral ports); the others bind
        // the same ports, SO_REUSEPORT spreading connections.
        let want = bound.clone().unwrap_or_else(|| addrs.clone());
        let (tx, rx) = mpsc::channel::<Result<Vec<SocketAddr>, String>>();
        let shared = Shared {
            keys: Keys::new(cfg.require_key.as_deref()),
            tls: cfg.tls.clone().map(futures_rustls::TlsAcceptor::from),
            defaults: cfg.defaults,
            injection: cfg.injection,
            rng: RefCell::new(Rng::new(cfg.seed.wrapping_add(shard as u64))),
            shard,
            next_id: Cell::new(0),
            seen: seen.clone(),
        };
        let handle = spawn_shard("mock", cfg.shards, shard, move || {
            run_shard(want, tx, shared)
        })?;
        let got = rx
            .recv()
            .map_err(|_| BenchError::Runtime(format!("mock shard {shard} died while binding")))?
            .map_err(|e| {
                BenchError::io(format!("bind (shard {shard})"), std::io::Error::other(e))
            })?;
        bound = Some(got);
        handles.push(handle);
    }
    let mut stdout = std::io::stdout().lock();
    for addr in bound.unwrap_or_default() {
        writeln!(stdout, "mock listening on {addr}")
            .and_then(|()| stdout.flush())
            .map_err(|e| BenchError::io("stdout", e))?;
    }
    drop(stdout);
    for h in handles {
        h.join().map_err(BenchError::runtime)?;
    }
    Ok(())
}

/// Tests: one mock shard on its own executor thread, on an ephemeral port
/// of 127.0.0.1, serving until the test process exits.
#[cfg(test)]
pub(crate) fn spawn_for_tests(
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<SocketAddr, BenchError> {
    let plan = ShardPlan {
        count: 1,
        pin: false,
    };
    let shared = Shared {
        keys: Keys::new(None),
        tls: tls.map(futures_rustls::TlsAcceptor::from),
        defaults: Behaviour::default(),
        injection: Injection::default(),
        rng: RefCell::new(Rng::new(0)),
        shard: 0,
        next_id: Cell::new(0),
        seen: SeenNames::default(),
    };
    let (tx, rx) = mpsc::channel();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // The handle is dropped: the thread is detached and lives on.
    spawn_shard("mock-test", plan, 0, move || {
        run_shard(vec![listen], tx, shared)
    })?;
    let bound = rx
        .recv()
        .map_err(BenchError::runtime)?
        .map_err(BenchError::Runtime)?;
    bound
        .first()
        .copied()
        .ok_or_else(|| BenchError::Runtime("no address".into()))
}

/// `--instances K`: consecutive ports from the listen port, or K ephemeral
/// ports when the listen port is 0.
fn listen_addrs(listen: SocketAddr, instances: usize) -> Vec<SocketAddr> {
    (0..instances.max(1))
        .map(|i| {
            let mut a = listen;
            if listen.port() != 0 {
                a.set_port(listen.port().saturating_add(i as u16));
            }
            a
        })
        .collect()
}

async fn run_shard(
    addrs: Vec<SocketAddr>,
    ready: mpsc::Sender<Result<Vec<SocketAddr>, String>>,
    shared: Shared,
) {
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut bound = Vec::with_capacity(addrs.len());
    for addr in addrs {
        match TcpListener::bind(addr).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((local, l)) => {
                bound.push(local);
                listeners.push(l);
            }
            Err(e) => {
                let _ = ready.send(Err(format!("{addr}: {e}")));
                return;
            }
        }
    }
    let _ = ready.send(Ok(bound));
    let shared = Rc::new(shared);
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| glommio::spawn_local(accept_loop(l, shared.clone())))
        .collect();
    for t in tasks {
        t.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Rc<Shared>) {
    loop {
        match listener.accept().await {
            Ok(tcp) => {
                glommio::spawn_local(accept_connection(tcp, shared.clone())).detach();
            }
            // Out of descriptors or similar: back off instead of spinning.
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Per-connection buffers, reused for every request.
struct Buffers {
    /// Responses waiting to be written (pipelined answers are batched).
    out: Vec<u8>,
    /// One rendered JSON body or stream event before framing.
    scratch: Vec<u8>,
    id: String,
}

impl Buffers {
    fn new() -> Buffers {
        Buffers {
            out: Vec::with_capacity(READ_BUF),
            scratch: Vec::with_capacity(4096),
            id: String::with_capacity(32),
        }
    }
}

/// With TLS, the handshake first (a client that fails or stalls it is
/// dropped); then the HTTP/1.1 loop.
async fn accept_connection(tcp: TcpStream, shared: Rc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let stream = match &shared.tls {
        None => Stream::Plain(tcp),
        Some(acceptor) => {
            let handshake = async { acceptor.accept(tcp).await.ok() };
            let deadline = async {
                glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
                None
            };
            match futures_lite::future::or(handshake, deadline).await {
                Some(s) => Stream::Tls(Box::new(s)),
                None => return,
            }
        }
    };
    serve_connection(stream, shared).await;
}

async fn serve_connection(mut stream: ServerStream, shared: Rc<Shared>) {
    let mut buf = vec![0u8; READ_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let mut bufs = Buffers::new();
    let mut continued = false;
    loop {
        // Answer every complete request already buffered before reading.
        let head = match parse_request_head(&buf[start..end], &shared.keys) {
            Ok(Some(head)) => head,
            Ok(None) => {
                if start == end {
                    start = 0;
                    end = 0;
                }
                if end - start >= MAX_REQUEST {
                    let style = ErrorStyle::OpenAi;
                    error_response(&mut bufs, style, 431, "request head too large", true);
                    let _ = stream.send(&bufs.out).await;
                    return;
                }
                if !flush(&mut stream, &mut bufs.out).await {
                    return;
                }
                match read_more(&mut stream, &mut buf, &mut start, &mut end).await {
                    Some(_) => continue,
                    None => return,
                }
            }
            Err(e) => {
                let msg = match e {
                    HeadError::Malformed => "malformed request head",
                    HeadError::BadLength => "invalid content-length",
                };
                error_response(&mut bufs, ErrorStyle::OpenAi, 400, msg, true);
                let _ = stream.send(&bufs.out).await;
                return;
            }
        };
        let style = head.route.error_style();
        if head.chunked {
            let msg = "chunked request bodies are not supported";
            error_response(&mut bufs, style, 411, msg, true);
            let _ = stream.send(&bufs.out).await;
            return;
        }
        let total = head.head_len + head.content_length;
        if total > MAX_REQUEST {
            error_response(&mut bufs, style, 413, "request too large", true);
            let _ = stream.send(&bufs.out).await;
            return;
        }
        if end - start < total {
            if head.expect_continue && !continued {
                continued = true;
                bufs.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            if !flush(&mut stream, &mut bufs.out).await {
                return;
            }
            if read_more(&mut stream, &mut buf, &mut start, &mut end)
                .await
                .is_none()
            {
                return;
            }
            continue;
        }
        continued = false;
        let request = &buf[start..start + total];
        let mark = bufs.out.len();
        let received = Instant::now();
        let plan = respond(&head, request, &shared, &mut bufs);
        let close = head.close;
        match plan {
            Plan::Ready => {}
            Plan::Delayed(delay) => {
                // Earlier pipelined answers go now; this one after the delay.
                if stream.send(&bufs.out[..mark]).await.is_err() {
                    return;
                }
                glommio::timer::sleep(delay).await;
                bufs.out.drain(..mark);
            }
            Plan::Stream(g) => {
                if !stream_response(&mut stream, &mut bufs, &g, close, received).await {
                    return;
                }
            }
            Plan::CloseAfterHead => {
                let _ = stream.send(&bufs.out).await;
                return;
            }
            Plan::Hang => {
                let _ = flush(&mut stream, &mut bufs.out).await;
                drain_until_eof(&mut stream, &mut buf).await;
                return;
            }
        }
        start += total;
        if close {
            let _ = flush(&mut stream, &mut bufs.out).await;
            return;
        }
    }
}

/// Reads more bytes after `end`, compacting or growing the buffer as needed.
/// `None` on EOF or error.
async fn read_more(
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    start: &mut usize,
    end: &mut usize,
) -> Option<usize> {
    if *end == buf.len() {
        if *start > 0 {
            buf.copy_within(*start..*end, 0);
            *end -= *start;
            *start = 0;
        } else {
            let grown = (buf.len() * 2).min(MAX_REQUEST + READ_BUF);
            buf.resize(grown, 0);
        }
    }
    match stream.read(&mut buf[*end..]).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            *end += n;
            Some(n)
        }
    }
}

async fn flush(stream: &mut ServerStream, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = stream.send(out).await.is_ok();
    out.clear();
    ok
}

async fn drain_until_eof(stream: &mut ServerStream, buf: &mut [u8]) {
    while let Ok(n) = stream.read(buf).await {
        if n == 0 {
            break;
        }
    }
}

enum Plan<'a> {
    /// The whole answer is in `out`.
    Ready,
    /// The whole answer is in `out` after the earlier bytes, but may only be
    /// sent after this delay.
    Delayed(Duration),
    Stream(Generation<'a>),
    /// `out` holds a head promising a body that never comes: send and close.
    CloseAfterHead,
    /// Never answer.
    Hang,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends head + `bufs.scratch` as a complete response to `bufs.out`.
fn finish_response(bufs: &mut Buffers, status: u16, content_type: &str, close: bool) {
    let len = bufs.scratch.len();
    write_head(&mut bufs.out, status, content_type, len, close, &[]);
    bufs.out.extend_from_slice(&bufs.scratch);
}

/// An error answer in `style`'s JSON, for a protocol-level cause.
fn error_response(bufs: &mut Buffers, style: ErrorStyle, status: u16, msg: &str, close: bool) {
    error_with_cause(bufs, style, status, msg, ErrorCause::Request, close);
}

fn error_with_cause(
    bufs: &mut Buffers,
    style: ErrorStyle,
    status: u16,
    message: &str,
    cause: ErrorCause,
    close: bool,
) {
    let dialect_header = answer::error_body(style, &mut bufs.scratch, status, message, cause);
    let extra: Vec<(&str, &str)> = dialect_header.into_iter().collect();
    error_head(bufs, status, &extra, close);
}

/// An injected failure. An overload (429, 503) says when to come back, as
/// providers do: `Retry-After: 1`, or with `wait` the dialect's own
/// headers (OpenAI's `retry-after-ms` and rate-limit reset, Anthropic's
/// reset time).
fn error_waiting(
    bufs: &mut Buffers,
    style: ErrorStyle,
    status: u16,
    message: &str,
    wait: Option<Duration>,
    close: bool,
) {
    let cause = ErrorCause::Injected;
    let dialect_header = answer::error_body(style, &mut bufs.scratch, status, message, cause);
    let mut owned: Vec<(&str, String)> = Vec::new();
    if matches!(status, 429 | 503) {
        match wait {
            None => owned.push(("retry-after", INJECTED_RETRY_AFTER.to_owned())),
            Some(w) => owned.extend(answer::wait_headers(style, w, std::time::SystemTime::now())),
        }
    }
    let extra: Vec<(&str, &str)> = dialect_header
        .into_iter()
        .chain(owned.iter().map(|(k, v)| (*k, v.as_str())))
        .collect();
    error_head(bufs, status, &extra, close);
}

/// The head of an error whose body is in `bufs.scratch`, then the body.
fn error_head(bufs: &mut Buffers, status: u16, extra: &[(&str, &str)], close: bool) {
    let len = bufs.scratch.len();
    write_head(&mut bufs.out, status, "application/json", len, close, extra);
    bufs.out.extend_from_slice(&bufs.scratch);
}

/// `Retry-After` (seconds) of an injected 429 or 503.
pub const INJECTED_RETRY_AFTER: &str = "1";

/// The auth failure each provider sends.
fn auth_error(bufs: &mut Buffers, style: ErrorStyle, close: bool) {
    let (status, message) = match style {
        ErrorStyle::OpenAi => (401, "Incorrect API key provided"),
        ErrorStyle::Anthropic => (401, "invalid x-api-key"),
        ErrorStyle::Gemini => (400, "API key not valid. Please pass a valid API key."),
        ErrorStyle::Bedrock => (
            403,
            "The security token included in the request is invalid.",
        ),
    };
    error_with_cause(bufs, style, status, message, ErrorCause::Auth, close);
}

/// Decides the answer to one complete request (`request` = head + body)
/// and renders what can be rendered now into `bufs.out`.
fn respond<'a>(
    head: &RequestHead,
    request: &'a [u8],
    shared: &Shared,
    bufs: &mut Buffers,
) -> Plan<'a> {
    let close = head.close;
    let style = head.route.error_style();
    if let Route::NotFound(_) = head.route {
        error_response(bufs, style, 404, "unknown path", close);
        return Plan::Ready;
    }
    if !head.method_ok {
        error_response(bufs, style, 405, "method not allowed", close);
        return Plan::Ready;
    }
    if !head.authorized {
        auth_error(bufs, style, close);
        return Plan::Ready;
    }
    let body = &request[head.head_len.min(request.len())..];
    let path_model = match &head.path_model {
        Some(r) => {
            let raw = request
                .get(r.clone())
                .and_then(|m| std::str::from_utf8(m).ok())
                .and_then(wire::percent_decode);
            match raw {
                Some(m) => Some(m),
                None => {
                    error_response(bufs, style, 400, "invalid model in path", close);
                    return Plan::Ready;
                }
            }
        }
        None => None,
    };
    let (dialect, facts) = match head.route {
        Route::Health => {
            bufs.scratch.clear();
            bufs.scratch.extend_from_slice(b"ok\n");
            finish_response(bufs, 200, "text/plain", close);
            return Plan::Ready;
        }
        Route::Models => {
            bufs.scratch.clear();
            bufs.scratch.extend_from_slice(openai::MODELS);
            finish_response(bufs, 200, "application/json", close);
            return Plan::Ready;
        }
        Route::Embeddings => return openai_embeddings(body, shared, bufs, close),
        Route::Mcp => {
            bufs.scratch.clear();
            let (status, session) = mcp::answer(body, &mut bufs.scratch);
            let len = bufs.scratch.len();
            let extra: &[(&str, &str)] = match session {
                Some(s) => &[("mcp-session-id", s)],
                None => &[],
            };
            write_head(&mut bufs.out, status, "application/json", len, close, extra);
            bufs.out.extend_from_slice(&bufs.scratch);
            return Plan::Ready;
        }
        Route::Gemini(op @ (Op::Embed | Op::BatchEmbed)) => {
            let model = path_model.unwrap_or(Cow::Borrowed("mock-embed"));
            let b = shared.behaviour(&model, false);
            if let Some(plan) = failure_plan(&b, style, body.len(), bufs, close) {
                return plan;
            }
            bufs.scratch.clear();
            if let Err(msg) = gemini::embed_body(body, op == Op::BatchEmbed, &mut bufs.scratch) {
                error_response(bufs, style, 400, msg, close);
                return Plan::Ready;
            }
            finish_response(bufs, 200, "application/json", close);
            return delayed(b.ttft_ms);
        }
        Route::Gemini(Op::Stream { sse: false }) => {
            let msg = "the mock streams only with alt=sse";
            error_response(bufs, style, 400, msg, close);
            return Plan::Ready;
        }
        Route::Messages if !head.anthropic_version => {
            let msg = "anthropic-version: header is required";
            error_response(bufs, style, 400, msg, close);
            return Plan::Ready;
        }
        Route::Chat => (Dialect::Chat, openai::facts(body)),
        Route::Completions => (Dialect::Legacy, openai::facts(body)),
        Route::Messages => (Dialect::Anthropic, anthropic::facts(body)),
        Route::Responses => (Dialect::Responses, responses::facts(body)),
        Route::Gemini(op) => (
            Dialect::Gemini,
            gemini::facts(body, matches!(op, Op::Stream { .. })),
        ),
        Route::Bedrock { stream } => (Dialect::Bedrock, bedrock::facts(body, stream)),
        Route::NotFound(_) => return Plan::Ready,
    };
    let mut facts = match facts {
        Ok(f) => f,
        Err(msg) => {
            error_response(bufs, style, 400, msg, close);
            return Plan::Ready;
        }
    };
    let model = path_model
        .or_else(|| facts.model.take())
        .unwrap_or(Cow::Borrowed("mock-1"));
    let b = shared.behaviour(&model, facts.stream);
    if let Some(plan) = failure_plan(&b, style, body.len(), bufs, close) {
        return plan;
    }
    let stream = facts.stream;
    let prompt_tokens = m::estimate_tokens(body.len());
    let g = Generation::new(dialect, facts, model, b, prompt_tokens, unix_now());
    next_id(shared, dialect, &mut bufs.id);
    if stream {
        return Plan::Stream(g);
    }
    bufs.scratch.clear();
    g.body(&bufs.id, &mut bufs.scratch);
    if b.cut_after.is_some() {
        // Promise the body, then close without it.
        let len = bufs.scratch.len();
        write_head(&mut bufs.out, 200, "application/json", len, close, &[]);
        return Plan::CloseAfterHead;
    }
    finish_response(bufs, 200, "application/json", close);
    delayed(g.latency_ms())
}

fn openai_embeddings(
    body: &[u8],
    shared: &Shared,
    bufs: &mut Buffers,
    close: bool,
) -> Plan<'static> {
    let style = ErrorStyle::OpenAi;
    let req = match openai::embeddings_request(body) {
        Ok(r) => r,
        Err(msg) => {
            error_response(bufs, style, 400, msg, close);
            return Plan::Ready;
        }
    };
    let b = shared.behaviour(&req.model, false);
    if let Some(plan) = failure_plan(&b, style, body.len(), bufs, close) {
        return plan;
    }
    bufs.scratch.clear();
    openai::embeddings_body(&req, &mut bufs.scratch);
    finish_response(bufs, 200, "application/json", close);
    delayed(b.ttft_ms)
}

fn delayed(ms: u64) -> Plan<'static> {
    if ms == 0 {
        Plan::Ready
    } else {
        Plan::Delayed(Duration::from_millis(ms))
    }
}

/// Hang, or fail with the status the model name asks for, in `style`: a
/// prompt over its context limit first (`body_len` bytes), then the
/// status.
fn failure_plan(
    b: &Behaviour,
    style: ErrorStyle,
    body_len: usize,
    bufs: &mut Buffers,
    close: bool,
) -> Option<Plan<'static>> {
    if b.hang {
        return Some(Plan::Hang);
    }
    let prompt = m::estimate_tokens(body_len);
    if let Some(limit) = b.context_limit.filter(|&l| prompt > l) {
        let message = answer::context_length_message(style, limit, prompt);
        error_with_cause(bufs, style, 400, &message, ErrorCause::ContextLength, close);
        return Some(Plan::Ready);
    }
    let status = b.fail_status?;
    let message = answer::injected_message(status);
    let wait = b.wait_ms.map(Duration::from_millis);
    error_waiting(bufs, style, status, message, wait, close);
    Some(Plan::Ready)
}

fn next_id(shared: &Shared, dialect: Dialect, id: &mut String) {
    use std::fmt::Write as _;
    let n = shared.next_id.get();
    shared.next_id.set(n + 1);
    id.clear();
    let _ = write!(id, "{}{}x{n}", dialect.id_prefix(), shared.shard);
}

/// Streams one answer: waits ttft, then head + opening events, the pieces
/// paced at tps, closing events. Returns `false` when the connection must
/// close: write error, or a cut after `cut_after` pieces.
async fn stream_response(
    stream: &mut ServerStream,
    bufs: &mut Buffers,
    g: &Generation<'_>,
    close: bool,
    received: Instant,
) -> bool {
    let Buffers { out, scratch, id } = bufs;
    let id = id.as_str();
    let b = &g.behaviour;
    if b.ttft_ms > 0 {
        // Earlier pipelined answers go before the wait.
        if !flush(stream, out).await {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(b.ttft_ms)).await;
    }
    write_stream_head(out, g.stream_content_type(), close);
    scratch.clear();
    g.stream_open(id, scratch);
    frame_chunk(out, scratch);
    let interval = b
        .tokens_per_second
        .map(|tps| Duration::from_secs_f64(1.0 / f64::from(tps.max(1))));
    let started = Instant::now();
    let pieces = g.pieces();
    for i in 0..pieces {
        if b.cut_after == Some(i) {
            let _ = stream.send(out).await;
            return false;
        }
        if let Some(interval) = interval {
            // Piece i is due at started + i * interval; the first goes at once.
            let due = started + interval.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                if !flush(stream, out).await {
                    return false;
                }
                glommio::timer::sleep(due - now).await;
            }
        }
        scratch.clear();
        g.stream_piece(id, i, scratch);
        frame_chunk(out, scratch);
        // One write per event, as a real provider produces them.
        if !flush(stream, out).await {
            return false;
        }
    }
    if b.cut_after.is_some_and(|n| n >= pieces) {
        let _ = stream.send(out).await;
        return false;
    }
    scratch.clear();
    g.stream_close(id, received.elapsed().as_millis() as u64, scratch);
    frame_chunk(out, scratch);
    out.extend_from_slice(LAST_CHUNK);
    flush(stream, out).await
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
