//! Reading one request off a connection: its head within the head timeout,
//! then its body within the body timeout and the body size limit. Every wait
//! has a deadline and every buffer a bound.

use super::conn::{ClientConn, ClientStream};
use super::respond::CONTINUE_100;
use crate::error::GatewayError;
use crate::io::{with_idle_timeout, with_timeout, Filled, ReadBuf};
use crate::shard::Shard;
use shardgate_proto::chunked::{ChunkedDecoder, ChunkedLimits};
use shardgate_proto::h1::{parse_request, BodyFraming, HeadLimits, RequestHead};
use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

/// A request read in full, borrowed from the connection's read buffer where
/// it arrived: the head at its front, a `Content-Length` body right after
/// it. Only a chunked body, decoded, is a copy (and its head with it).
/// `head`'s spans index into `head_buf`.
pub struct Request<'a> {
    pub head: RequestHead,
    pub head_buf: Cow<'a, [u8]>,
    pub body: Cow<'a, [u8]>,
    /// Bytes of the read buffer this request occupies, consumed once it has
    /// been answered.
    pub(super) consumed: usize,
}

impl Request<'_> {
    /// The same request with another body (a guardrail's redaction).
    pub fn with_body(&self, body: Vec<u8>) -> Request<'_> {
        Request {
            head: self.head.clone(),
            head_buf: Cow::Borrowed(&self.head_buf),
            body: Cow::Owned(body),
            consumed: self.consumed,
        }
    }

    pub fn path(&self) -> &[u8] {
        self.head.path(&self.head_buf)
    }

    /// The request target's query, after `?` (empty without one).
    pub fn query(&self) -> &[u8] {
        let target = self.head.target(&self.head_buf);
        target
            .iter()
            .position(|&b| b == b'?')
            .map_or(&[][..], |q| &target[q + 1..])
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(&self.head_buf, name)
    }

    /// Values of the first headers named each of `names`, in one pass.
    pub fn headers_named<const N: usize>(&self, names: [&str; N]) -> [Option<&[u8]>; N] {
        self.head.headers_named(&self.head_buf, names)
    }

    /// A header the client meant for the upstream: absent when its
    /// `Connection` names it (hop-by-hop, RFC 9110 §7.6.1). Every header
    /// forwarded from a client is read through this.
    pub fn end_to_end_header(&self, name: &str) -> Option<&[u8]> {
        self.head.end_to_end_header(&self.head_buf, name)
    }
}

/// A header value as text. Values are nearly always ASCII, which is
/// checked a word at a time; std's UTF-8 decoder cost ~120 instructions a
/// short value, five values a request on `/mcp`.
pub fn header_text(value: &[u8]) -> Option<&str> {
    if value.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(value) })
    } else {
        std::str::from_utf8(value).ok()
    }
}

pub enum HeadRead {
    /// A head, left at the front of the read buffer.
    Head(RequestHead),
    /// The client closed, went idle past the keep-alive timeout, or the shard
    /// is draining: end the connection without a response.
    Closed,
    /// A response is owed (400, 408, 431...), then the connection closes.
    Error(GatewayError),
}

pub async fn read_head(shard: &Shard, conn: &mut ClientConn, rbuf: &mut ReadBuf) -> HeadRead {
    let l = &shard.config.limits;
    let limits = HeadLimits {
        max_head_bytes: l.max_head_bytes,
        max_headers: l.max_headers,
    };
    if rbuf.is_empty() {
        if shard.draining() {
            return HeadRead::Closed;
        }
        // Shutdown ends this wait too (`Shard::begin_shutdown`).
        let first = with_idle_timeout(
            l.idle_timeout,
            rbuf.fill(&mut conn.stream, 4096, l.max_head_bytes),
        )
        .await;
        match first {
            Ok(Some(Filled::Bytes(_))) => {}
            _ => return HeadRead::Closed,
        }
    }
    // Nearly always the head arrived whole with the first read: no deadline.
    match parse_request(rbuf.data(), &limits) {
        Ok(Some(head)) => return HeadRead::Head(head),
        Ok(None) => {}
        Err(e) => return HeadRead::Error(e.into()),
    }
    // One deadline for the rest of the head.
    let read = with_timeout(l.head_timeout, async {
        loop {
            match rbuf.fill(&mut conn.stream, 4096, l.max_head_bytes).await {
                Ok(Some(Filled::Bytes(_))) => {}
                Ok(None) => {
                    return Ok(HeadRead::Error(GatewayError::BadHead(
                        shardgate_proto::h1::H1Error::HeadTooLarge,
                    )))
                }
                Ok(Some(Filled::Eof)) | Err(_) => return Ok(HeadRead::Closed),
            }
            match parse_request(rbuf.data(), &limits) {
                Ok(Some(head)) => return Ok(HeadRead::Head(head)),
                Ok(None) => {}
                Err(e) => return Ok(HeadRead::Error(e.into())),
            }
        }
    })
    .await;
    read.unwrap_or(HeadRead::Error(GatewayError::RequestTimeout))
}

pub async fn read_body<'b>(
    shard: &Shard,
    conn: &mut ClientConn,
    rbuf: &'b mut ReadBuf,
    head: RequestHead,
) -> Result<Request<'b>, GatewayError> {
    let l = &shard.config.limits;
    let max = l.max_body_bytes;
    let head_len = head.head_len;
    let wants_body = head.framing != BodyFraming::Empty;
    if let BodyFraming::Length(n) = head.framing {
        if n > max as u64 {
            return Err(GatewayError::BodyTooLarge { limit: max });
        }
    }
    if wants_body && head.expect_continue && rbuf.len() == head_len {
        conn.write_interim(CONTINUE_100)
            .await
            .map_err(|_| GatewayError::RequestTimeout)?;
    }
    match head.framing {
        BodyFraming::Empty => Ok(Request {
            head,
            head_buf: Cow::Borrowed(&rbuf.data()[..head_len]),
            body: Cow::Borrowed(&[]),
            consumed: head_len,
        }),
        BodyFraming::Length(n) => {
            let end = head_len + n as usize;
            // Nearly always the body came with the head: no deadline.
            if rbuf.len() < end {
                within(l.body_timeout, async {
                    while rbuf.len() < end {
                        let want = end - rbuf.len();
                        fill_body(&mut conn.stream, rbuf, want, end).await?;
                    }
                    Ok(())
                })
                .await?;
            }
            let (head_buf, body) = rbuf.data()[..end].split_at(head_len);
            Ok(Request {
                head,
                head_buf: Cow::Borrowed(head_buf),
                body: Cow::Borrowed(body),
                consumed: end,
            })
        }
        // Rare, and decoded into a copy: the head is copied with it so the
        // raw chunks can leave the buffer as they are decoded.
        BodyFraming::Chunked => {
            let head_buf = rbuf.data()[..head_len].to_vec();
            rbuf.consume(head_len);
            let mut dec = ChunkedDecoder::new(ChunkedLimits::default());
            let mut body = Vec::new();
            within(l.body_timeout, async {
                loop {
                    let d = dec
                        .decode(rbuf.data())
                        .map_err(|e| GatewayError::BadBody(e.to_string()))?;
                    if body.len() + d.data.len() > max {
                        return Err(GatewayError::BodyTooLarge { limit: max });
                    }
                    body.extend_from_slice(&rbuf.data()[d.data.clone()]);
                    rbuf.consume(d.consumed);
                    if dec.is_done() {
                        return Ok(());
                    }
                    if d.consumed == 0 {
                        fill_body(&mut conn.stream, rbuf, 16384, 1 << 20).await?;
                    }
                }
            })
            .await?;
            Ok(Request {
                head,
                head_buf: Cow::Owned(head_buf),
                body: Cow::Owned(body),
                consumed: 0,
            })
        }
    }
}

/// `fut` within `limit` (one deadline for the whole body, registered only
/// if a read waits); a late body is a 408.
async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    let out = with_timeout(limit, async { Ok(fut.await) }).await;
    out.unwrap_or(Err(GatewayError::RequestTimeout))
}

async fn fill_body(
    stream: &mut ClientStream,
    rbuf: &mut ReadBuf,
    want: usize,
    max: usize,
) -> Result<(), GatewayError> {
    match rbuf.fill(stream, want, max).await {
        Ok(Some(Filled::Bytes(_))) => Ok(()),
        Ok(Some(Filled::Eof)) => Err(GatewayError::BadBody(
            "the connection closed before the body ended".into(),
        )),
        Ok(None) => Err(GatewayError::BadBody("chunk line too long".into())),
        Err(_) => Err(GatewayError::RequestTimeout),
    }
}

#[cfg(test)]
impl<'a> Request<'a> {
    /// A request as [`read_body`] hands one out, from a whole head and its
    /// body: for tests of what reads requests (admission) without a
    /// connection to read them from.
    pub(crate) fn parsed(head: &'a [u8], body: &'a [u8]) -> Self {
        let parsed = parse_request(head, &HeadLimits::default());
        let Ok(Some(parsed)) = parsed else {
            panic!("not a whole request head: {parsed:?}");
        };
        Request {
            head: parsed,
            head_buf: Cow::Borrowed(head),
            body: Cow::Borrowed(body),
            consumed: 0,
        }
    }
}
