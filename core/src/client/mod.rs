//! Outbound HTTP/1.1 to providers: a per-shard keep-alive pool per provider,
//! plain or TLS connections, request writing and response reading with a
//! deadline on every wait.
//!
//! Invariants: a connection goes back to the pool only after its response
//! was read to the end with keep-alive allowed; a pooled connection is probed
//! before reuse and dropped if the peer closed it or sent anything unasked.

mod pool;
mod response;
pub mod wait_hint;

pub use pool::{Endpoint, Pool};
pub use response::{
    read_response_head, read_response_head_with, AnswerHead, BodyReader, BodyStep, ReadError,
    UpstreamHead,
};

use crate::io::{MaybeTls, ReadBuf};
use glommio::net::TcpStream;
use std::io;
use std::time::Instant;

pub type UpstreamStream = MaybeTls<futures_rustls::client::TlsStream<TcpStream>>;

/// Read buffer size an upstream connection starts with and returns to when
/// pooled. A response head and most answers fit; a paced stream's events
/// are a few hundred bytes each, and thousands of streams each hold one.
pub const UPSTREAM_BUFFER: usize = 4096;

/// An upstream connection. Boxed: it moves by value through every attempt
/// (pool, exchange, answer, relay, back to the pool), and inline each move
/// copied its 184 bytes, about nine times a request; boxed, it is
/// allocated once, when the connection is opened.
pub struct UpstreamConn(Box<Connection>);

impl std::ops::Deref for UpstreamConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for UpstreamConn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl From<Connection> for UpstreamConn {
    fn from(c: Connection) -> Self {
        UpstreamConn(Box::new(c))
    }
}

pub struct Connection {
    pub stream: UpstreamStream,
    pub rbuf: ReadBuf,
    /// Served a request before: a failure before any response byte may be the
    /// keep-alive race, and the request may be sent again on a fresh one.
    pub reused: bool,
    /// On the shard's coarse clock ([`crate::deadline::coarse_now`]).
    idle_since: Instant,
}

impl UpstreamConn {
    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    /// True when the peer has neither closed the connection nor sent bytes
    /// nobody asked for (either makes reuse unsafe).
    ///
    /// glommio keeps a read-readiness poll armed on a socket after a partial
    /// read, so an idle connection normally has one: while it has not fired,
    /// the peer sent nothing and did not close as of the last reactor pass
    /// (the window nginx's keep-alive close handler has too), and no syscall
    /// is needed. A fired poll is not proof of bytes or a close: when the
    /// last response came in two writes and one read took both, the second
    /// write's event can be reaped after that read, announcing bytes already
    /// consumed (a stream's last event and its end, sent back to back, do
    /// this to about one stream in fourteen). So a fired poll, like no poll,
    /// is settled by a `MSG_PEEK` probe, as nginx's handler peeks on every
    /// event: dropping such a connection cost a new connection, a TLS
    /// handshake to a real provider, on the next request.
    fn looks_reusable(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        match self.tcp().read_poll_pending() {
            Some(true) => true,
            Some(false) | None => self.probe_idle(),
        }
    }

    fn probe_idle(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut byte = [0u8; 1];
        // SAFETY: recv on a valid open fd into a 1-byte stack buffer; MSG_PEEK
        // leaves any data in the socket, MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                self.tcp().as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

#[cfg(test)]
#[path = "reuse_tests.rs"]
mod tests;
