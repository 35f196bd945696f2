//! Byte streams and buffers shared by the inbound server and the upstream
//! client: a plain-or-TLS stream, a read buffer that grows only as far as a
//! limit allows, and deadline helpers.

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use crate::deadline::{with_idle_timeout, with_timeout};

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
    use super::{Filled, ReadBuf};
    use futures_lite::future::block_on;
    use futures_lite::io::AsyncRead;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A peer that always has more to send: each read fills the whole room
    /// offered with a running byte count, so a test can see both how much
    /// room `fill` offered and that bytes keep their order.
    #[derive(Default)]
    struct Flood {
        sent: usize,
        reads: usize,
    }

    impl AsyncRead for Flood {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            for b in buf.iter_mut() {
                *b = self.sent as u8;
                self.sent += 1;
            }
            self.reads += 1;
            Poll::Ready(Ok(buf.len()))
        }
    }

    fn counting(from: usize, n: usize) -> Vec<u8> {
        (from..from + n).map(|i| i as u8).collect()
    }

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

    #[test]
    fn consuming_more_than_is_buffered_empties_it_and_rewinds_to_the_front() {
        let mut b = ReadBuf::with_capacity(8);
        b.extend(b"abc");
        b.consume(99);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        // The next bytes land at the front: no room is lost to the old data.
        b.extend(b"12345678");
        assert_eq!(b.data(), b"12345678");
        assert_eq!(b.buf.len(), 8);
    }

    #[test]
    fn shrink_idle_frees_a_grown_buffer_only_once_it_is_empty() {
        let mut b = ReadBuf::with_capacity(4);
        b.extend(&[7; 64]);
        b.consume(60);
        b.shrink_idle(4);
        assert_eq!(b.data(), &[7; 4], "unread bytes survive");
        assert_eq!(b.buf.len(), 64);
        b.consume(4);
        b.shrink_idle(4);
        assert_eq!(b.buf.len(), 4);
        // Already small: a larger `keep` does not grow it.
        b.shrink_idle(16);
        assert_eq!(b.buf.len(), 4);
    }

    #[test]
    fn fill_stops_at_max_and_never_grows_the_buffer_past_it() {
        let mut b = ReadBuf::default();
        let mut peer = Flood::default();
        let max = 10_000;
        while let Some(filled) = block_on(b.fill(&mut peer, 4096, max)).unwrap() {
            assert!(matches!(filled, Filled::Bytes(n) if n > 0));
        }
        assert_eq!(b.len(), max);
        assert_eq!(b.buf.len(), max);
        assert_eq!(b.data(), counting(0, max));
        // Full: refused without reading.
        let reads = peer.reads;
        assert_eq!(block_on(b.fill(&mut peer, 1, max)).unwrap(), None);
        assert_eq!(peer.reads, reads);
    }

    #[test]
    fn fill_offers_at_least_4_kib_however_little_is_wanted() {
        let mut b = ReadBuf::default();
        let mut peer = Flood::default();
        assert_eq!(
            block_on(b.fill(&mut peer, 1, 1 << 20)).unwrap(),
            Some(Filled::Bytes(4096))
        );
        // But never more than `max` leaves room for.
        let mut b = ReadBuf::default();
        b.extend(b"ab");
        assert_eq!(
            block_on(b.fill(&mut peer, 4096, 10)).unwrap(),
            Some(Filled::Bytes(8))
        );
        assert_eq!(b.len(), 10);
    }

    #[test]
    fn fill_reuses_the_room_of_consumed_bytes_before_growing() {
        let mut b = ReadBuf::with_capacity(8192);
        b.extend(&counting(0, 8000));
        b.consume(7990);
        let mut peer = Flood {
            sent: 8000,
            reads: 0,
        };
        block_on(b.fill(&mut peer, 4096, 1 << 20)).unwrap();
        assert_eq!(b.buf.len(), 8192, "moved to the front, not grown");
        assert_eq!(b.data(), counting(7990, 8192));
    }

    #[test]
    fn fill_reports_the_peer_closing_and_keeps_what_was_buffered() {
        let mut b = ReadBuf::with_capacity(16);
        let mut peer = futures_lite::io::Cursor::new(b"last words".to_vec());
        assert_eq!(
            block_on(b.fill(&mut peer, 16, 1024)).unwrap(),
            Some(Filled::Bytes(10))
        );
        assert_eq!(
            block_on(b.fill(&mut peer, 16, 1024)).unwrap(),
            Some(Filled::Eof)
        );
        assert_eq!(b.data(), b"last words");
    }
}
