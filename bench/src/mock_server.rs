//! `shardgate-bench mock`: a mock OpenAI inference server over real TCP.
//!
//! It is the upstream for gateway tests and benchmarks, so it must be cheap:
//! per connection one read buffer and two output buffers, reused across
//! requests; JSON rendered by `shardgate_proto::mock` straight into them.
//! Behaviour (latency, failures, cuts) is chosen by the request's model name
//! through `shardgate_proto::mock::behaviour`.
//!
//! HTTP/1.1 only: keep-alive, pipelining answered in order, Content-Length
//! request bodies (chunked request bodies get 411), non-streaming answers
//! with Content-Length, streams as chunked `text/event-stream` with one HTTP
//! chunk per SSE event.

use crate::error::BenchError;
use crate::shards::{spawn_shard, ShardPlan};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde::Deserialize;
use shardgate_proto::mock::{self as m, Behaviour, ChunkKind};
use std::borrow::Cow;
use std::cell::Cell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest request head plus body the mock accepts.
const MAX_REQUEST: usize = 16 << 20;
/// Initial per-connection read buffer.
const READ_BUF: usize = 16 << 10;
/// Default embedding width when the request names no `dimensions`.
const DEFAULT_DIMS: usize = 16;

/// What `shardgate-bench mock` was asked to do.
#[derive(Debug, Clone)]
pub struct MockConfig {
    pub listen: SocketAddr,
    pub shards: ShardPlan,
    pub instances: usize,
    pub require_key: Option<String>,
    pub defaults: Behaviour,
}

/// Per-shard, read-only settings shared by its connections.
struct Shared {
    /// `Bearer KEY` when a key is required.
    expected_auth: Option<Vec<u8>>,
    defaults: Behaviour,
    shard: usize,
    next_id: Cell<u64>,
}

/// Binds every instance on every shard, prints one
/// `mock listening on ADDR` line per instance, then serves forever.
pub fn serve(cfg: MockConfig) -> Result<(), BenchError> {
    let addrs = listen_addrs(cfg.listen, cfg.instances);
    let mut handles = Vec::with_capacity(cfg.shards.count);
    let mut bound: Option<Vec<SocketAddr>> = None;
    for shard in 0..cfg.shards.count.max(1) {
        // Shard 0 binds first (learning ephemeral ports); the others bind
        // the same ports, SO_REUSEPORT spreading connections.
        let want = bound.clone().unwrap_or_else(|| addrs.clone());
        let (tx, rx) = mpsc::channel::<Result<Vec<SocketAddr>, String>>();
        let shared = Shared {
            expected_auth: cfg
                .require_key
                .as_ref()
                .map(|k| format!("Bearer {k}").into_bytes()),
            defaults: cfg.defaults,
            shard,
            next_id: Cell::new(0),
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
            Ok(stream) => {
                glommio::spawn_local(serve_connection(stream, shared.clone())).detach();
            }
            // Out of descriptors or similar: back off instead of spinning.
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Chat,
    Completions,
    Embeddings,
    Models,
    Health,
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestHead {
    route: Route,
    /// `true` for POST, `false` for GET/HEAD; others are rejected.
    post: bool,
    method_ok: bool,
    head_len: usize,
    content_length: usize,
    chunked: bool,
    close: bool,
    authorized: bool,
    expect_continue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadError {
    Malformed,
    BadLength,
}

/// Parses one request head at the start of `buf`; `Ok(None)` = need more.
fn parse_request_head(
    buf: &[u8],
    expected_auth: Option<&[u8]>,
) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let route = match path {
        "/v1/chat/completions" | "/chat/completions" => Route::Chat,
        "/v1/completions" | "/completions" => Route::Completions,
        "/v1/embeddings" | "/embeddings" => Route::Embeddings,
        "/v1/models" | "/models" => Route::Models,
        "/healthz" | "/health" => Route::Health,
        _ => Route::NotFound,
    };
    let post = method == "POST";
    let method_ok = match route {
        Route::Chat | Route::Completions | Route::Embeddings => post,
        Route::Models | Route::Health => method == "GET" || method == "HEAD",
        Route::NotFound => true,
    };
    let http10 = req.version == Some(0);
    let mut close = http10;
    let mut content_length = None;
    let mut chunked = false;
    let mut authorization: Option<&[u8]> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or(HeadError::BadLength)?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::BadLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for t in h.value.split(|&b| b == b',').map(|t| t.trim_ascii()) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let authorized = match expected_auth {
        None => true,
        Some(_) if route == Route::Health => true,
        Some(expected) => authorization == Some(expected),
    };
    Ok(Some(RequestHead {
        route,
        post,
        method_ok,
        head_len,
        content_length: content_length.unwrap_or(0),
        chunked,
        close,
        authorized,
        expect_continue,
    }))
}

/// Per-connection buffers, reused for every request.
struct Buffers {
    /// Responses waiting to be written (pipelined answers are batched).
    out: Vec<u8>,
    /// One rendered JSON body or SSE event before framing.
    scratch: Vec<u8>,
    id: String,
}

async fn serve_connection(mut stream: TcpStream, shared: Rc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; READ_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let mut bufs = Buffers {
        out: Vec::with_capacity(READ_BUF),
        scratch: Vec::with_capacity(4096),
        id: String::with_capacity(32),
    };
    let mut continued = false;
    loop {
        // Answer every complete request already buffered before reading.
        let parsed = parse_request_head(&buf[start..end], shared.expected_auth.as_deref());
        let head = match parsed {
            Ok(Some(head)) => head,
            Ok(None) => {
                if start == end {
                    start = 0;
                    end = 0;
                }
                if end - start >= MAX_REQUEST {
                    error_response(
                        &mut bufs,
                        431,
                        "request head too large",
                        "invalid_request_error",
                        true,
                    );
                    let _ = stream.write_all(&bufs.out).await;
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
                error_response(&mut bufs, 400, msg, "invalid_request_error", true);
                let _ = stream.write_all(&bufs.out).await;
                return;
            }
        };
        if head.chunked {
            error_response(
                &mut bufs,
                411,
                "chunked request bodies are not supported",
                "invalid_request_error",
                true,
            );
            let _ = stream.write_all(&bufs.out).await;
            return;
        }
        let total = head.head_len + head.content_length;
        if total > MAX_REQUEST {
            error_response(
                &mut bufs,
                413,
                "request too large",
                "invalid_request_error",
                true,
            );
            let _ = stream.write_all(&bufs.out).await;
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
        let body = &buf[start + head.head_len..start + total];
        let mark = bufs.out.len();
        let plan = respond(&head, body, &shared, &mut bufs);
        let close = head.close;
        match plan {
            Plan::Ready => {}
            Plan::Delayed(delay) => {
                // Earlier pipelined answers go now; this one after the delay.
                if stream.write_all(&bufs.out[..mark]).await.is_err() {
                    return;
                }
                glommio::timer::sleep(delay).await;
                bufs.out.drain(..mark);
            }
            Plan::Stream(s) => {
                if !stream_response(&mut stream, &mut bufs, &s, close).await {
                    return;
                }
            }
            Plan::CloseAfterHead => {
                let _ = stream.write_all(&bufs.out).await;
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
    stream: &mut TcpStream,
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

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = stream.write_all(out).await.is_ok();
    out.clear();
    ok
}

async fn drain_until_eof(stream: &mut TcpStream, buf: &mut [u8]) {
    while let Ok(n) = stream.read(buf).await {
        if n == 0 {
            break;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Chat,
    Legacy,
}

/// A streaming answer, carried out by [`stream_response`].
#[derive(Debug, Clone)]
struct StreamPlan<'a> {
    dialect: Dialect,
    model: Cow<'a, str>,
    created: u64,
    prompt_tokens: u64,
    tokens: usize,
    finish: &'static str,
    include_usage: bool,
    behaviour: Behaviour,
}

enum Plan<'a> {
    /// The whole answer is in `out`.
    Ready,
    /// The whole answer is in `out` after the earlier bytes, but may only be
    /// sent after this delay.
    Delayed(Duration),
    Stream(StreamPlan<'a>),
    /// `out` holds a head promising a body that never comes: send and close.
    CloseAfterHead,
    /// Never answer.
    Hang,
}

#[derive(Deserialize)]
struct GenerateRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: EmbeddingsInput<'a>,
    #[serde(default)]
    dimensions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingsInput<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decides the answer to one complete request and renders what can be
/// rendered now into `bufs.out`.
fn respond<'a>(
    head: &RequestHead,
    body: &'a [u8],
    shared: &Shared,
    bufs: &mut Buffers,
) -> Plan<'a> {
    let close = head.close;
    if !head.method_ok {
        error_response(
            bufs,
            405,
            "method not allowed",
            "invalid_request_error",
            close,
        );
        return Plan::Ready;
    }
    if head.route == Route::NotFound {
        error_response(bufs, 404, "unknown path", "invalid_request_error", close);
        return Plan::Ready;
    }
    if !head.authorized {
        auth_error(bufs, close);
        return Plan::Ready;
    }
    match head.route {
        Route::Health => {
            bufs.scratch.clear();
            bufs.scratch.extend_from_slice(b"ok\n");
            finish_response(bufs, 200, "text/plain", close);
            Plan::Ready
        }
        Route::Models => {
            bufs.scratch.clear();
            bufs.scratch.extend_from_slice(
                br#"{"object":"list","data":[{"id":"mock-1","object":"model","created":0,"owned_by":"shardgate-bench"}]}"#,
            );
            finish_response(bufs, 200, "application/json", close);
            Plan::Ready
        }
        Route::Embeddings => {
            let req: EmbeddingsRequest<'_> = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(_) => {
                    error_response(
                        bufs,
                        400,
                        "invalid embeddings request body",
                        "invalid_request_error",
                        close,
                    );
                    return Plan::Ready;
                }
            };
            let model = req.model.as_deref().unwrap_or("mock-embed");
            let b = m::behaviour(model, shared.defaults);
            if let Some(plan) = failure_plan(&b, bufs, close) {
                return plan;
            }
            let inputs: Vec<&str> = match &req.input {
                EmbeddingsInput::One(s) => vec![s.as_ref()],
                EmbeddingsInput::Many(v) => v.iter().map(|s| s.as_ref()).collect(),
            };
            bufs.scratch.clear();
            m::embeddings(
                &mut bufs.scratch,
                model,
                &inputs,
                req.dimensions.unwrap_or(DEFAULT_DIMS).min(65536),
            );
            finish_response(bufs, 200, "application/json", close);
            delayed(&b, 0)
        }
        Route::Chat | Route::Completions => {
            let req: GenerateRequest<'a> = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(_) => {
                    error_response(
                        bufs,
                        400,
                        "invalid JSON request body",
                        "invalid_request_error",
                        close,
                    );
                    return Plan::Ready;
                }
            };
            let model = req.model.unwrap_or(Cow::Borrowed("mock-1"));
            let b = m::behaviour(&model, shared.defaults);
            if let Some(plan) = failure_plan(&b, bufs, close) {
                return plan;
            }
            let dialect = if head.route == Route::Chat {
                Dialect::Chat
            } else {
                Dialect::Legacy
            };
            let limit = req.max_completion_tokens.or(req.max_tokens);
            let (tokens, finish) = match limit {
                Some(max) if (max as usize) < b.output_tokens => (max as usize, "length"),
                _ => (b.output_tokens, "stop"),
            };
            let prompt_tokens = m::estimate_tokens(body.len());
            let created = unix_now();
            next_id(shared, dialect, &mut bufs.id);
            if req.stream.unwrap_or(false) {
                return Plan::Stream(StreamPlan {
                    dialect,
                    model,
                    created,
                    prompt_tokens,
                    tokens,
                    finish,
                    include_usage: req
                        .stream_options
                        .and_then(|o| o.include_usage)
                        .unwrap_or(false),
                    behaviour: b,
                });
            }
            bufs.scratch.clear();
            match dialect {
                Dialect::Chat => m::chat_completion(
                    &mut bufs.scratch,
                    &bufs.id,
                    &model,
                    created,
                    prompt_tokens,
                    tokens,
                    finish,
                ),
                Dialect::Legacy => m::completion(
                    &mut bufs.scratch,
                    &bufs.id,
                    &model,
                    created,
                    prompt_tokens,
                    tokens,
                    finish,
                ),
            }
            if b.cut_after.is_some() {
                // Promise the body, then close without it.
                write_head(
                    &mut bufs.out,
                    200,
                    "application/json",
                    bufs.scratch.len(),
                    close,
                );
                return Plan::CloseAfterHead;
            }
            finish_response(bufs, 200, "application/json", close);
            delayed(&b, tokens)
        }
        Route::NotFound => Plan::Ready,
    }
}

/// Non-streaming answers take ttft plus generation time at `tps`.
fn delayed(b: &Behaviour, tokens: usize) -> Plan<'static> {
    let mut ms = b.ttft_ms;
    if let Some(tps) = b.tokens_per_second {
        ms += (tokens as u64).saturating_mul(1000) / u64::from(tps.max(1));
    }
    if ms == 0 {
        Plan::Ready
    } else {
        Plan::Delayed(Duration::from_millis(ms))
    }
}

fn failure_plan(b: &Behaviour, bufs: &mut Buffers, close: bool) -> Option<Plan<'static>> {
    if b.hang {
        return Some(Plan::Hang);
    }
    let status = b.fail_status?;
    let (kind, code, message) = match status {
        429 => (
            "rate_limit_error",
            "rate_limit_exceeded",
            "Rate limit reached (mock)",
        ),
        400..=499 => ("invalid_request_error", "mock_error", "Mock client error"),
        503 => (
            "server_error",
            "overloaded",
            "The server is overloaded (mock)",
        ),
        _ => (
            "server_error",
            "server_error",
            "The server had an error (mock)",
        ),
    };
    openai_error(&mut bufs.scratch, message, kind, Some(code));
    finish_response(bufs, status, "application/json", close);
    Some(Plan::Ready)
}

fn next_id(shared: &Shared, dialect: Dialect, id: &mut String) {
    use std::fmt::Write as _;
    let n = shared.next_id.get();
    shared.next_id.set(n + 1);
    id.clear();
    let prefix = match dialect {
        Dialect::Chat => "chatcmpl-mock",
        Dialect::Legacy => "cmpl-mock",
    };
    let _ = write!(id, "{prefix}{}x{n}", shared.shard);
}

/// Streams one answer: waits ttft, then head + role chunk, content chunks
/// paced at tps, finish (+ usage) and `[DONE]`. Returns `false` when the
/// connection must close: write error, or a cut after `cut_after` content
/// chunks.
async fn stream_response(
    stream: &mut TcpStream,
    bufs: &mut Buffers,
    plan: &StreamPlan<'_>,
    close: bool,
) -> bool {
    let Buffers { out, scratch, id } = bufs;
    let id = id.as_str();
    let b = &plan.behaviour;
    if b.ttft_ms > 0 {
        // Earlier pipelined answers go before the wait.
        if !flush(stream, out).await {
            return false;
        }
        glommio::timer::sleep(Duration::from_millis(b.ttft_ms)).await;
    }
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n",
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if plan.dialect == Dialect::Chat {
        scratch.clear();
        m::chat_chunk_event(
            scratch,
            id,
            &plan.model,
            plan.created,
            ChunkKind::Role,
            plan.include_usage,
        );
        frame_chunk(out, scratch);
    }
    let interval = b
        .tokens_per_second
        .map(|tps| Duration::from_secs_f64(1.0 / f64::from(tps.max(1))));
    let started = Instant::now();
    for i in 0..plan.tokens {
        if b.cut_after == Some(i) {
            let _ = stream.write_all(out).await;
            return false;
        }
        if let Some(interval) = interval {
            // Token i is due at started + i * interval; the first goes at once.
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
        match plan.dialect {
            Dialect::Chat => m::chat_chunk_event(
                scratch,
                id,
                &plan.model,
                plan.created,
                ChunkKind::Content(m::token(i)),
                plan.include_usage,
            ),
            Dialect::Legacy => {
                m::completion_chunk_event(scratch, id, &plan.model, plan.created, m::token(i), None)
            }
        }
        frame_chunk(out, scratch);
        // One write per event, as a real provider produces them.
        if !flush(stream, out).await {
            return false;
        }
    }
    if b.cut_after.is_some_and(|n| n >= plan.tokens) {
        let _ = stream.write_all(out).await;
        return false;
    }
    scratch.clear();
    match plan.dialect {
        Dialect::Chat => {
            m::chat_chunk_event(
                scratch,
                id,
                &plan.model,
                plan.created,
                ChunkKind::Finish(plan.finish),
                plan.include_usage,
            );
            frame_chunk(out, scratch);
            if plan.include_usage {
                scratch.clear();
                let usage = ChunkKind::Usage {
                    prompt_tokens: plan.prompt_tokens,
                    completion_tokens: plan.tokens as u64,
                };
                m::chat_chunk_event(scratch, id, &plan.model, plan.created, usage, true);
                frame_chunk(out, scratch);
            }
        }
        Dialect::Legacy => {
            m::completion_chunk_event(
                scratch,
                id,
                &plan.model,
                plan.created,
                "",
                Some(plan.finish),
            );
            frame_chunk(out, scratch);
        }
    }
    frame_chunk(out, m::DONE_EVENT);
    out.extend_from_slice(b"0\r\n\r\n");
    flush(stream, out).await
}

/// One HTTP chunk (RFC 9112 §7.1): hex size, CRLF, data, CRLF.
fn frame_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Mock",
    }
}

fn write_head(out: &mut Vec<u8>, status: u16, content_type: &str, len: usize, close: bool) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {len}\r\n",
        reason(status)
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends head + `bufs.scratch` as a complete response to `bufs.out`.
fn finish_response(bufs: &mut Buffers, status: u16, content_type: &str, close: bool) {
    write_head(
        &mut bufs.out,
        status,
        content_type,
        bufs.scratch.len(),
        close,
    );
    bufs.out.extend_from_slice(&bufs.scratch);
}

/// `{"error":{"message":..,"type":..,"param":null,"code":..}}` into `out`,
/// keys in OpenAI's order.
fn openai_error(out: &mut Vec<u8>, message: &str, kind: &str, code: Option<&str>) {
    out.clear();
    out.extend_from_slice(b"{\"error\":{\"message\":");
    let _ = serde_json::to_writer(&mut *out, message);
    out.extend_from_slice(b",\"type\":");
    let _ = serde_json::to_writer(&mut *out, kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    let _ = serde_json::to_writer(&mut *out, &code);
    out.extend_from_slice(b"}}");
}

fn error_response(bufs: &mut Buffers, status: u16, message: &str, kind: &str, close: bool) {
    openai_error(&mut bufs.scratch, message, kind, None);
    finish_response(bufs, status, "application/json", close);
}

fn auth_error(bufs: &mut Buffers, close: bool) {
    openai_error(
        &mut bufs.scratch,
        "Incorrect API key provided",
        "invalid_request_error",
        Some("invalid_api_key"),
    );
    finish_response(bufs, 401, "application/json", close);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(key: Option<&str>) -> Shared {
        Shared {
            expected_auth: key.map(|k| format!("Bearer {k}").into_bytes()),
            defaults: Behaviour::default(),
            shard: 0,
            next_id: Cell::new(0),
        }
    }

    fn bufs() -> Buffers {
        Buffers {
            out: Vec::new(),
            scratch: Vec::new(),
            id: String::new(),
        }
    }

    fn head(raw: &[u8], key: Option<&[u8]>) -> RequestHead {
        parse_request_head(raw, key).unwrap().unwrap()
    }

    /// Splits `out` into (status, body) of one Content-Length response.
    fn split_response(out: &[u8]) -> (u16, serde_json::Value) {
        let h = crate::http::parse_response_head(out).unwrap().unwrap();
        let body = &out[h.len..];
        assert_eq!(h.framing, crate::http::Framing::Length(body.len() as u64));
        (h.status, serde_json::from_slice(body).unwrap())
    }

    #[test]
    fn request_heads() {
        let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nAuthorization: Bearer k\r\n\r\n";
        let h = head(raw, Some(b"Bearer k"));
        assert_eq!(h.route, Route::Chat);
        assert!(h.post && h.method_ok && h.authorized && !h.close && !h.chunked);
        assert_eq!(h.content_length, 12);
        assert_eq!(h.head_len, raw.len());
        assert!(!head(raw, Some(b"Bearer other")).authorized);
        for cut in 0..raw.len() {
            assert_eq!(parse_request_head(&raw[..cut], None), Ok(None));
        }

        let h = head(b"GET /healthz HTTP/1.0\r\n\r\n", Some(b"Bearer k"));
        assert_eq!(h.route, Route::Health);
        assert!(h.authorized && h.close && h.method_ok);
        let h = head(
            b"GET /v1/models?x=1 HTTP/1.1\r\nconnection: close\r\n\r\n",
            Some(b"Bearer k"),
        );
        assert_eq!(h.route, Route::Models);
        assert!(!h.authorized && h.close);
        let h = head(b"GET /v1/chat/completions HTTP/1.1\r\n\r\n", None);
        assert!(!h.method_ok);
        let h = head(b"POST /v1/embeddings HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n", None);
        assert!(h.chunked && h.expect_continue);
        assert_eq!(
            head(b"GET /nope HTTP/1.1\r\n\r\n", None).route,
            Route::NotFound
        );
        assert_eq!(
            parse_request_head(b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n", None),
            Err(HeadError::BadLength)
        );
        assert_eq!(
            parse_request_head(b"\x01\x02 / HTTP/1.1\r\n\r\n", None),
            Err(HeadError::Malformed)
        );
    }

    fn respond_to(
        path: &str,
        body: &str,
        key: Option<&str>,
        auth: Option<&str>,
    ) -> (Buffers, Option<StreamPlan<'static>>, bool) {
        let mut raw = format!("POST {path} HTTP/1.1\r\ncontent-length: {}\r\n", body.len());
        if let Some(a) = auth {
            raw.push_str(&format!("authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        let sh = shared(key);
        let h = head(raw.as_bytes(), sh.expected_auth.as_deref());
        let body: &'static [u8] = Box::leak(body.as_bytes().to_vec().into_boxed_slice());
        let mut b = bufs();
        let plan = respond(&h, body, &sh, &mut b);
        let (stream, delayed) = match plan {
            Plan::Stream(s) => (Some(s), false),
            Plan::Delayed(_) => (None, true),
            _ => (None, false),
        };
        (b, stream, delayed)
    }

    #[test]
    fn chat_non_stream_echoes_model() {
        let (b, stream, _) = respond_to(
            "/v1/chat/completions",
            r#"{"model":"mock-tokens-3","messages":[{"role":"user","content":"hi"}]}"#,
            None,
            None,
        );
        assert!(stream.is_none());
        let (status, v) = split_response(&b.out);
        assert_eq!(status, 200);
        assert_eq!(v["model"], "mock-tokens-3");
        assert_eq!(v["choices"][0]["message"]["content"], " lorem ipsum dolor");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn max_tokens_truncates_with_length() {
        let (b, _, _) = respond_to(
            "/v1/completions",
            r#"{"model":"m","prompt":"x","max_tokens":2}"#,
            None,
            None,
        );
        let (_, v) = split_response(&b.out);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], " lorem ipsum");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
    }

    #[test]
    fn failures_auth_and_errors() {
        let (b, _, _) = respond_to(
            "/v1/chat/completions",
            r#"{"model":"mock-429"}"#,
            None,
            None,
        );
        let (status, v) = split_response(&b.out);
        assert_eq!(status, 429);
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");

        let (b, _, _) = respond_to(
            "/v1/chat/completions",
            r#"{"model":"m"}"#,
            Some("k"),
            Some("Bearer client"),
        );
        let (status, v) = split_response(&b.out);
        assert_eq!(status, 401);
        assert_eq!(
            v,
            serde_json::json!({"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})
        );
        let (b, _, _) = respond_to(
            "/v1/chat/completions",
            r#"{"model":"m"}"#,
            Some("k"),
            Some("Bearer k"),
        );
        assert_eq!(split_response(&b.out).0, 200);

        let (b, _, _) = respond_to("/v1/chat/completions", "{not json", None, None);
        let (status, v) = split_response(&b.out);
        assert_eq!(status, 400);
        assert!(v["error"]["message"].is_string());

        let (b, _, _) = respond_to("/nope", "{}", None, None);
        assert_eq!(split_response(&b.out).0, 404);
    }

    #[test]
    fn stream_and_delay_plans() {
        let (b, stream, _) = respond_to(
            "/v1/chat/completions",
            r#"{"model":"mock-tokens-5-tps-10","stream":true,"stream_options":{"include_usage":true},"max_tokens":4}"#,
            None,
            None,
        );
        assert!(b.out.is_empty());
        let s = stream.unwrap();
        assert_eq!(s.dialect, Dialect::Chat);
        assert_eq!(s.tokens, 4);
        assert_eq!(s.finish, "length");
        assert!(s.include_usage);
        assert_eq!(s.behaviour.tokens_per_second, Some(10));

        let (_, stream, delayed) = respond_to(
            "/v1/chat/completions",
            r#"{"model":"mock-ttft-5ms"}"#,
            None,
            None,
        );
        assert!(stream.is_none());
        assert!(delayed);
    }

    #[test]
    fn embeddings_inputs() {
        for (body, n) in [
            (r#"{"model":"e","input":"hello"}"#, 1),
            (r#"{"model":"e","input":["a","b","c"],"dimensions":4}"#, 3),
        ] {
            let (b, _, _) = respond_to("/v1/embeddings", body, None, None);
            let (status, v) = split_response(&b.out);
            assert_eq!(status, 200);
            assert_eq!(v["data"].as_array().unwrap().len(), n);
            assert_eq!(v["model"], "e");
        }
        let (b, _, _) = respond_to(
            "/v1/embeddings",
            r#"{"model":"e","input":[1,2]}"#,
            None,
            None,
        );
        assert_eq!(split_response(&b.out).0, 400);
    }

    #[test]
    fn chunk_framing_and_addrs() {
        let mut out = Vec::new();
        frame_chunk(&mut out, &[b'x'; 300]);
        assert!(out.starts_with(b"12c\r\nxxx"));
        assert!(out.ends_with(b"x\r\n"));
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let ports: Vec<u16> = listen_addrs(a, 3).iter().map(|a| a.port()).collect();
        assert_eq!(ports, vec![9000, 9001, 9002]);
        let z: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(listen_addrs(z, 2), vec![z, z]);
    }
}
