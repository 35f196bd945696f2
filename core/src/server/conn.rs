//! One client connection, start to end: read a request (head, then body),
//! hand it to the gateway, repeat while keep-alive holds. Requests are
//! handled one at a time, so pipelined requests are answered in order.

use super::request::{read_body, read_head, HeadRead, Request};
use super::respond::HeadOnly;
use super::Router;
use crate::io::{write_all_timeout, MaybeTls, ReadBuf};
use crate::record::{RequestEnd, Trail};
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

pub type ClientStream = MaybeTls<futures_rustls::server::TlsStream<TcpStream>>;

/// Read buffer size a connection starts with and returns to when idle.
pub const IDLE_BUFFER: usize = 4096;

pub struct ClientConn {
    pub stream: ClientStream,
    pub peer: SocketAddr,
    /// Subject of the client certificate verified at the TLS handshake
    /// (listeners with `client_ca`), for identity.
    pub client_subject: Option<String>,
    write_timeout: Duration,
    /// Bytes the client sent while its request was being answered (a
    /// pipelined next request), read by `closed`; they join the read buffer
    /// once the request that borrows it is done.
    pending: Vec<u8>,
    /// How many bytes `pending` may hold.
    max_pending: usize,
    /// What of the current response may go out (all of it, or its head
    /// alone for a HEAD request); set once a request's head is read.
    head_only: HeadOnly,
    /// The current response as written so far, for the request's record.
    answered: Answered,
}

/// What the client has been sent for the current request: read off the
/// bytes themselves, so every path that answers is recorded.
#[derive(Debug, Default, Clone, Copy)]
struct Answered {
    status: Option<u16>,
    first_byte: Option<Instant>,
    error: Option<&'static str>,
}

impl ClientConn {
    /// Writes (part of) the response to the current request: every final
    /// response goes through here, so a HEAD request gets its head alone.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.answered.status.is_none() {
            self.answered.status = status_of(bytes);
            self.answered.first_byte = Some(Instant::now());
        }
        let bytes = self.head_only.filter(bytes);
        if bytes.is_empty() {
            return Ok(());
        }
        self.write_interim(bytes).await
    }

    /// Writes bytes as they are: interim (1xx) responses, which a HEAD
    /// request gets like any other before its final response.
    pub async fn write_interim(&mut self, bytes: &[u8]) -> io::Result<()> {
        write_all_timeout(&mut self.stream, bytes, self.write_timeout).await?;
        if self.stream.is_tls() {
            crate::io::with_timeout(self.write_timeout, self.stream.flush()).await?;
        }
        Ok(())
    }

    /// Records why the current request failed: the error answered, or one
    /// that cut a stream under way (the last one noted counts).
    pub fn note_error(&mut self, label: &'static str) {
        self.answered.error = Some(label);
    }

    /// Resolves when the client has gone (closed or broken its connection).
    /// Bytes it sends meanwhile, such as a pipelined next request, are kept.
    /// Used to cancel upstream work nobody will read.
    pub async fn closed(&mut self) {
        // Small reads into the future itself: most requests end without the
        // client sending a byte, and then nothing is allocated. Small, too,
        // because this future lives in every request's state (each stream's)
        // while a pipelined next request is rare: it takes a few reads.
        let mut chunk = [0u8; 128];
        loop {
            if self.pending.len() >= self.max_pending {
                return std::future::pending().await;
            }
            let room = chunk.len().min(self.max_pending - self.pending.len());
            match futures_lite::io::AsyncReadExt::read(&mut self.stream, &mut chunk[..room]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The status code of a response's first bytes (`HTTP/1.1 200 ...`).
fn status_of(bytes: &[u8]) -> Option<u16> {
    match bytes.get(9..12)? {
        &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_digit) => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn client_subject(stream: &ClientStream) -> Option<String> {
    match stream {
        MaybeTls::Tls(s) => {
            let der = s.get_ref().1.peer_certificates()?.first()?;
            crate::tls::client_subject(der)
        }
        MaybeTls::Plain(_) => None,
    }
}

pub async fn serve<R: Router>(
    shard: Rc<Shard>,
    router: &R,
    stream: ClientStream,
    peer: SocketAddr,
) {
    let limits = &shard.config.limits;
    let mut conn = ClientConn {
        client_subject: client_subject(&stream),
        stream,
        peer,
        write_timeout: limits.write_timeout,
        pending: Vec::new(),
        max_pending: limits.max_head_bytes + limits.max_body_bytes,
        head_only: HeadOnly::Off,
        answered: Answered::default(),
    };
    if let Some(subject) = &conn.client_subject {
        log::debug!("shard {} {peer}: client certificate {subject}", shard.id);
    }
    // Requests are read here and borrowed by the handler from here: no copy
    // of a head or body is made to answer them.
    let mut rbuf = ReadBuf::with_capacity(IDLE_BUFFER);
    loop {
        let head = match read_head(&shard, &mut conn, &mut rbuf).await {
            HeadRead::Head(h) => {
                conn.head_only = HeadOnly::for_method(h.method);
                h
            }
            HeadRead::Closed => break,
            HeadRead::Error(e) => {
                let started = Instant::now();
                conn.answered = Answered::default();
                conn.head_only = HeadOnly::Off;
                log::debug!("shard {} {}: {}", shard.id, peer, e.label());
                router
                    .refuse(&mut conn, R::Dialect::default(), &e, "")
                    .await;
                record(&shard, &conn, "", &Trail::default(), started);
                break;
            }
        };
        let started = Instant::now();
        conn.answered = Answered::default();
        let request_id = shard.request_id();
        let (endpoint, dialect) = router.classify(head.path(rbuf.data()));
        let req = match read_body(&shard, &mut conn, &mut rbuf, head).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("shard {} {}: {}", shard.id, peer, e.label());
                router.refuse(&mut conn, dialect, &e, &request_id).await;
                let trail = Trail {
                    endpoint,
                    ..Trail::default()
                };
                record(&shard, &conn, &request_id, &trail, started);
                break;
            }
        };
        let (keep_alive, consumed) = (req.head.keep_alive, req.consumed);
        // Boxed, so that an idle connection's task stays small; built in
        // a block the shard reuses (see `boxed`).
        let outcome = crate::boxed::pin_pooled!(
            shard.futures,
            handle_recorded(
                &shard,
                router,
                &mut conn,
                req,
                &request_id,
                endpoint,
                started,
            )
        )
        .await;
        if !keep_alive || !outcome.keep_alive || shard.draining() {
            break;
        }
        rbuf.consume(consumed);
        if !conn.pending.is_empty() {
            rbuf.extend(&conn.pending);
            conn.pending = Vec::new();
        }
        rbuf.shrink_idle(IDLE_BUFFER);
    }
    let _ = conn.stream.close().await;
}

/// Handles a request; its trail lives in the request's future, and its
/// record is made at its end. The connection loop boxes this future, so an
/// idle connection's task stays small: only the loop's state lives between
/// requests. An async block, not an async fn: a function's arguments are
/// kept twice in its future (as captured and as moved into its locals),
/// and a stream holds this future for its whole life.
#[allow(clippy::manual_async_fn)]
fn handle_recorded<'a, R: Router>(
    shard: &'a Rc<Shard>,
    router: &'a R,
    conn: &'a mut ClientConn,
    req: Request<'a>,
    rid: &'a str,
    endpoint: &'static str,
    started: Instant,
) -> impl std::future::Future<Output = Outcome> + 'a {
    async move {
        let generation = shard.generation();
        let _in_flight = InFlight::enter(&shard.requests_in_flight);
        let mut trail = Trail {
            endpoint,
            ..Trail::default()
        };
        if shard.audit.is_some() {
            trail.trace_id = crate::record::trace_id(req.header("traceparent"));
        }
        let outcome = router
            .handle(shard, &generation, conn, req, rid, &mut trail)
            .await;
        record(shard, conn, rid, &trail, started);
        outcome
    }
}

/// Counts a request in flight while it lives (a dropped request future
/// leaves the count too).
struct InFlight<'a>(&'a std::cell::Cell<usize>);

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::cell::Cell<usize>) -> Self {
        count.set(count.get() + 1);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The request's one record, built from what the client was sent and
/// what the handler learned.
fn record(shard: &Shard, conn: &ClientConn, rid: &str, trail: &Trail<'_>, started: Instant) {
    let a = conn.answered;
    let end = RequestEnd {
        rid,
        status: a.status,
        error: a.error,
        trail,
        started,
        first_byte: a.first_byte,
        ended: Instant::now(),
    };
    let team = trail.actor.as_ref().and_then(|a| a.team.as_deref());
    {
        let mut stats = shard.stats.borrow_mut();
        stats.observe(&end, team);
        if !trail.guardrails.is_empty() {
            stats.guardrails(&trail.guardrails);
        }
        if let (Some(note), Some(alias)) = (&trail.cache, &trail.alias) {
            stats.cache(alias, note);
        }
    }
    end.log();
    if let Some(audit) = &shard.audit {
        audit.request(&end, trail.trace_id.as_deref());
    }
}

/// What the handler left the connection fit for.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub keep_alive: bool,
}

impl Outcome {
    pub const KEEP: Outcome = Outcome { keep_alive: true };
    pub const CLOSE: Outcome = Outcome { keep_alive: false };
}
