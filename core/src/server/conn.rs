//! One client connection, start to end: read a request (head, then body),
//! hand it to the gateway, repeat while keep-alive holds. Requests are
//! handled one at a time, so pipelined requests are answered in order.

use super::request::{read_body, read_head, HeadRead, Request};
use super::respond::{self, HeadOnly};
use crate::error::GatewayError;
use crate::io::{write_all_timeout, MaybeTls, ReadBuf};
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

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
}

impl ClientConn {
    /// Writes (part of) the response to the current request: every final
    /// response goes through here, so a HEAD request gets its head alone.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
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

    /// Resolves when the client has gone (closed or broken its connection).
    /// Bytes it sends meanwhile, such as a pipelined next request, are kept.
    /// Used to cancel upstream work nobody will read.
    pub async fn closed(&mut self) {
        // Small reads into the future itself: most requests end without the
        // client sending a byte, and then nothing is allocated.
        let mut chunk = [0u8; 512];
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

fn client_subject(stream: &ClientStream) -> Option<String> {
    match stream {
        MaybeTls::Tls(s) => {
            let der = s.get_ref().1.peer_certificates()?.first()?;
            crate::tls::client_subject(der)
        }
        MaybeTls::Plain(_) => None,
    }
}

pub async fn serve(shard: Rc<Shard>, stream: ClientStream, peer: SocketAddr) {
    let limits = &shard.config.limits;
    let mut conn = ClientConn {
        client_subject: client_subject(&stream),
        stream,
        peer,
        write_timeout: limits.write_timeout,
        pending: Vec::new(),
        max_pending: limits.max_head_bytes + limits.max_body_bytes,
        head_only: HeadOnly::Off,
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
                conn.head_only = HeadOnly::Off;
                log::debug!("shard {} {}: {}", shard.id, peer, e.label());
                let _ = conn.write(&respond::error(&e, "", true)).await;
                break;
            }
        };
        let request_id = shard.request_id();
        let dialect = crate::gateway::dialect_of_path(head.path(rbuf.data()));
        let req = match read_body(&shard, &mut conn, &mut rbuf, head).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("shard {} {}: {}", shard.id, peer, e.label());
                let response = crate::gateway::error_response(dialect, &e, &request_id, &[], true);
                let _ = conn.write(&response).await;
                break;
            }
        };
        let (keep_alive, consumed) = (req.head.keep_alive, req.consumed);
        let outcome = handle_boxed(&shard, &mut conn, req, &request_id).await;
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

/// The per-request future is boxed so an idle connection's task stays small:
/// only the connection loop's state lives between requests.
async fn handle_boxed(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    req: Request<'_>,
    rid: &str,
) -> Outcome {
    Box::pin(crate::gateway::handle(shard, conn, req, rid)).await
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

/// Writes an error response, closing the connection when the error leaves the
/// request stream in an unknown state.
pub async fn send_error(
    conn: &mut ClientConn,
    err: &GatewayError,
    rid: &str,
    close: bool,
) -> Outcome {
    if conn.write(&respond::error(err, rid, close)).await.is_err() || close {
        return Outcome::CLOSE;
    }
    Outcome::KEEP
}
