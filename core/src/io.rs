//! Byte streams and buffers shared by the inbound server and the upstream
//! client: a plain-or-TLS stream, a read buffer that grows only as far as a
//! limit allows, and deadline helpers.

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use crate::deadline::with_timeout;

/// A TCP stream, optionally wrapped in TLS. `T` is the rustls stream type of
/// the side (server or client).
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

impl<T> MaybeTls<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_close(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// Unconsumed bytes read from a stream: `buf[start..end]`. The vector stays
/// initialised up to its length, so reads go straight into it without zeroing
/// per read; consumed bytes are dropped by moving the rest to the front only
/// when room is needed, so a pipelined burst is not copied once per request.
#[derive(Debug, Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What a read into a [`ReadBuf`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Filled {
    Bytes(usize),
    Eof,
}

impl ReadBuf {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: vec![0; n],
            start: 0,
            end: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends bytes read elsewhere.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.make_room(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// At least `n` bytes free after the data: the data moves to the front
    /// first, and the buffer grows only if that is not enough.
    fn make_room(&mut self, n: usize) {
        if self.buf.len() - self.end >= n {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < n {
            self.buf.resize(self.end + n, 0);
        }
    }

    /// Drops capacity beyond `keep` while empty, so an idle connection that
    /// once carried a large request goes back to costing little.
    pub fn shrink_idle(&mut self, keep: usize) {
        if self.is_empty() && self.buf.len() > keep {
            self.buf = vec![0; keep];
        }
    }

    /// Reads once from `stream`, making room for at least `want` more bytes
    /// (at least 4 KiB) without letting the unconsumed data exceed `max`.
    /// Returns `Ok(None)` when the buffer already holds `max` bytes.
    pub async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        want: usize,
        max: usize,
    ) -> io::Result<Option<Filled>> {
        let len = self.len();
        if len >= max {
            return Ok(None);
        }
        self.make_room(want.max(4096).min(max - len));
        let n = futures_lite::io::AsyncReadExt::read(stream, &mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(Some(if n == 0 {
            Filled::Eof
        } else {
            Filled::Bytes(n)
        }))
    }
}

/// Writes all of `bytes` within `dur`.
pub async fn write_all_timeout<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    dur: Duration,
) -> io::Result<()> {
    with_timeout(dur, stream.write_all(bytes)).await
}

#[cfg(test)]
mod tests {
    use super::ReadBuf;

    #[test]
    fn extend_keeps_unconsumed_bytes_in_order_and_grows_when_needed() {
        let mut b = ReadBuf::with_capacity(8);
        b.extend(b"abcdef");
        b.consume(4);
        // Room only after moving "ef" to the front.
        b.extend(b"ghijkl");
        assert_eq!(b.data(), b"efghijkl");
        // No room at all: grows.
        b.extend(b"mnop");
        assert_eq!(b.data(), b"efghijklmnop");
        b.consume(12);
        assert!(b.is_empty());
        b.extend(b"q");
        assert_eq!(b.data(), b"q");
    }
}
