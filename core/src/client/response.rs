use super::UpstreamConn;
use crate::deadline::Idle;
use crate::io::{with_timeout, Filled, ReadBuf};
use shardgate_proto::chunked::{ChunkedDecoder, ChunkedLimits};
use shardgate_proto::h1::{parse_response, HeadLimits, Method, ResponseFraming, ResponseHead};
use std::io;
use std::time::Duration;

/// Why reading an upstream response failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("timed out")]
    Timeout,
    #[error("connection closed before the response ended")]
    Eof { any_bytes: bool },
    #[error("{0}")]
    Io(io::Error),
    #[error("malformed response: {0}")]
    Protocol(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            ReadError::Timeout
        } else {
            ReadError::Io(e)
        }
    }
}

/// The parts of an upstream response head the gateway uses. The head bytes
/// are consumed from the connection buffer once this is built.
#[derive(Debug)]
pub struct UpstreamHead {
    pub status: u16,
    pub framing: ResponseFraming,
    pub keep_alive: bool,
    /// For the gateway to read (is the answer a stream?); relayed only when
    /// `content_type_end_to_end`.
    pub content_type: Option<Box<[u8]>>,
    /// The upstream's `Connection` does not name `content-type` (RFC 9110
    /// §7.6.1: a field it names is for the gateway alone).
    pub content_type_end_to_end: bool,
    pub retry_after: Option<Box<[u8]>>,
    /// On an error status, how long the upstream asked to be left alone
    /// (see [`super::wait_hint`]).
    pub wait_hint: Option<Duration>,
}

impl UpstreamHead {
    pub fn is_event_stream(&self) -> bool {
        content_type_is(self.content_type.as_deref(), EVENT_STREAM)
    }

    /// What relaying a successful answer needs of its head: its framing and
    /// keep-alive go to the body's reader, and its waits only matter to
    /// failures.
    pub fn into_answer(self) -> AnswerHead {
        AnswerHead {
            status: self.status,
            content_type: self.content_type,
            content_type_end_to_end: self.content_type_end_to_end,
        }
    }
}

/// The part of a head an answer is relayed by. Small on purpose: an answer
/// moves a few times on its way to the relay, and each move is a copy.
#[derive(Debug)]
pub struct AnswerHead {
    pub status: u16,
    /// Relayed only when `content_type_end_to_end`.
    pub content_type: Option<Box<[u8]>>,
    pub content_type_end_to_end: bool,
}

impl AnswerHead {
    pub fn is_event_stream(&self) -> bool {
        content_type_is(self.content_type.as_deref(), EVENT_STREAM)
    }

    /// AWS event-stream (Bedrock's ConverseStream).
    pub fn is_aws_event_stream(&self) -> bool {
        content_type_is(
            self.content_type.as_deref(),
            b"application/vnd.amazon.eventstream",
        )
    }
}

const EVENT_STREAM: &[u8] = b"text/event-stream";

/// The media type is `want`, parameters and ASCII case aside.
fn content_type_is(content_type: Option<&[u8]>, want: &[u8]) -> bool {
    content_type
        .is_some_and(|ct| ct.len() >= want.len() && ct[..want.len()].eq_ignore_ascii_case(want))
}

fn keep(head: &ResponseHead, buf: &[u8], name: &str) -> Option<Box<[u8]>> {
    head.header(buf, name).map(Box::from)
}

/// Reads the response head (skipping 1xx interim responses) within `wait`:
/// one deadline for the whole head, registered only if a read has to wait.
pub async fn read_response_head(
    conn: &mut UpstreamConn,
    wait: Duration,
    method: Method,
) -> Result<UpstreamHead, ReadError> {
    read_response_head_with(conn, wait, method, |_, _| {}).await
}

/// [`read_response_head`], handing the final head to `also` before its
/// bytes are consumed: for callers that read headers the model path does
/// not (MCP's `Mcp-Session-Id`).
pub async fn read_response_head_with(
    conn: &mut UpstreamConn,
    wait: Duration,
    method: Method,
    mut also: impl FnMut(&ResponseHead, &[u8]),
) -> Result<UpstreamHead, ReadError> {
    let limits = HeadLimits::default();
    let mut any_bytes = !conn.rbuf.is_empty();
    let read = with_timeout(wait, async {
        loop {
            if !conn.rbuf.is_empty() {
                match parse_response(conn.rbuf.data(), &limits, method) {
                    Ok(Some(head)) => {
                        let buf = conn.rbuf.data();
                        let parsed = UpstreamHead {
                            status: head.status,
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                            content_type: keep(&head, buf, "content-type"),
                            content_type_end_to_end: !head.connection_names_fields
                                || head.end_to_end_header(buf, "content-type").is_some(),
                            retry_after: keep(&head, buf, "retry-after"),
                            wait_hint: (head.status >= 400)
                                .then(|| {
                                    super::wait_hint::wait_hint(
                                        head.status,
                                        |name| head.header(buf, name),
                                        std::time::SystemTime::now(),
                                    )
                                })
                                .flatten(),
                        };
                        if head.is_informational() {
                            conn.rbuf.consume(head.head_len);
                            continue;
                        }
                        also(&head, buf);
                        conn.rbuf.consume(head.head_len);
                        return Ok(Ok(parsed));
                    }
                    Ok(None) => {}
                    Err(e) => return Ok(Err(ReadError::Protocol(e.to_string()))),
                }
            }
            let c = &mut **conn;
            match c
                .rbuf
                .fill(&mut c.stream, 4096, limits.max_head_bytes)
                .await?
            {
                Some(Filled::Bytes(_)) => any_bytes = true,
                Some(Filled::Eof) => return Ok(Err(ReadError::Eof { any_bytes })),
                None => return Ok(Err(ReadError::Protocol("response head too large".into()))),
            }
        }
    })
    .await;
    read.unwrap_or_else(|e| Err(e.into()))
}

/// What one step of body reading produced.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyStep {
    /// Some data was handed out; more may follow.
    Data,
    /// The body ended; the connection may be reused if the head allowed it.
    End,
}

/// Reads a response body by its framing, handing out slices of the
/// connection's buffer (no copy here).
#[derive(Debug)]
pub struct BodyReader {
    framing: ResponseFraming,
    remaining: u64,
    chunked: Option<ChunkedDecoder>,
    done: bool,
    /// Each read's limit: one deadline moved back per read, not one
    /// registered per read (a stream reads once an event).
    idle: Idle,
}

impl BodyReader {
    pub fn new(framing: ResponseFraming) -> Self {
        let (remaining, done) = match framing {
            ResponseFraming::Length(n) => (n, n == 0),
            ResponseFraming::Empty => (0, true),
            _ => (0, false),
        };
        let chunked = matches!(framing, ResponseFraming::Chunked)
            .then(|| ChunkedDecoder::new(ChunkedLimits::default()));
        Self {
            framing,
            remaining,
            chunked,
            done,
            idle: Idle::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Hands buffered body bytes to `on_data`; reads from the socket (within
    /// `wait`) only when nothing is buffered. Returns `End` once the body is
    /// complete.
    pub async fn step(
        &mut self,
        conn: &mut UpstreamConn,
        wait: Duration,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<BodyStep, ReadError> {
        loop {
            if self.done {
                return Ok(BodyStep::End);
            }
            if self.drain_buffered(&mut conn.rbuf, on_data)? {
                return Ok(if self.done {
                    BodyStep::End
                } else {
                    BodyStep::Data
                });
            }
            if self.done {
                return Ok(BodyStep::End);
            }
            // 4 KiB of room, not more: a paced stream's reads are small, and a
            // buffer grown for bulk reads would be held by every open stream.
            let c = &mut **conn;
            match self
                .idle
                .wait(wait, c.rbuf.fill(&mut c.stream, 4096, 1 << 20))
                .await?
            {
                Some(Filled::Bytes(_)) => {}
                Some(Filled::Eof) => {
                    if matches!(self.framing, ResponseFraming::UntilClose) {
                        self.done = true;
                        return Ok(BodyStep::End);
                    }
                    return Err(ReadError::Eof { any_bytes: true });
                }
                None => return Err(ReadError::Protocol("chunk line too long".into())),
            }
        }
    }

    /// Hands out what `rbuf` holds of the body, consuming it (and nothing
    /// past the body's end). Returns whether any data was handed out.
    fn drain_buffered(
        &mut self,
        rbuf: &mut ReadBuf,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<bool, ReadError> {
        // Nothing buffered changes no state (`new` settled the bodies that
        // are done before any byte): a stream's every step starts here with
        // an empty buffer, before its read.
        if rbuf.is_empty() {
            return Ok(false);
        }
        let mut gave = false;
        match self.framing {
            ResponseFraming::Length(_) => {
                let n = (rbuf.len() as u64).min(self.remaining) as usize;
                if n > 0 {
                    on_data(&rbuf.data()[..n]);
                    rbuf.consume(n);
                    self.remaining -= n as u64;
                    gave = true;
                }
                self.done = self.remaining == 0;
            }
            ResponseFraming::UntilClose => {
                let n = rbuf.len();
                if n > 0 {
                    on_data(rbuf.data());
                    rbuf.consume(n);
                    gave = true;
                }
            }
            ResponseFraming::Chunked => {
                let Some(dec) = self.chunked.as_mut() else {
                    return Ok(false);
                };
                loop {
                    let d = dec
                        .decode(rbuf.data())
                        .map_err(|e| ReadError::Protocol(e.to_string()))?;
                    if !d.data.is_empty() {
                        on_data(&rbuf.data()[d.data.clone()]);
                        gave = true;
                    }
                    rbuf.consume(d.consumed);
                    if dec.is_done() {
                        self.done = true;
                        break;
                    }
                    if d.consumed == 0 || rbuf.is_empty() {
                        break;
                    }
                }
            }
            ResponseFraming::Empty => self.done = true,
        }
        Ok(gave)
    }

    /// Reads the whole remaining body into a vector of at most `max` bytes.
    pub async fn read_to_end(
        &mut self,
        conn: &mut UpstreamConn,
        wait: Duration,
        max: usize,
    ) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        if let ResponseFraming::Length(n) = self.framing {
            if n as usize > max {
                return Err(ReadError::TooLarge(max));
            }
            body.reserve(n as usize);
        }
        let mut too_large = false;
        loop {
            let step = self
                .step(conn, wait, &mut |d| {
                    if body.len() + d.len() > max {
                        too_large = true;
                    } else {
                        body.extend_from_slice(d);
                    }
                })
                .await?;
            if too_large {
                return Err(ReadError::TooLarge(max));
            }
            if step == BodyStep::End {
                return Ok(body);
            }
        }
    }
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
