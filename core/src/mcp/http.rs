//! Streamable HTTP to one upstream MCP server: a POST of one message, and
//! its answer read as JSON or as an event stream, message by message. The
//! connection comes from the shard's pool and goes back to it only when
//! the answer was read to its end.

use crate::client::{read_response_head_with, BodyReader, BodyStep, Endpoint, UpstreamConn};
use crate::config::mcp::McpHttp;
use crate::io::write_all_timeout;
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use serde_json::Value;
use shardgate_proto::h1::Method;
use shardgate_proto::sse::SseFramer;
use std::collections::VecDeque;
use std::time::Duration;

/// An answer larger than this is refused (per message, and for a JSON
/// body).
pub const MAX_MESSAGE: usize = 8 << 20;

/// Why an exchange with an upstream failed, in words for the JSON-RPC
/// error that names the server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer in time")]
    Timeout,
    #[error("{0}")]
    Protocol(String),
    /// The upstream does not know the session (it expired or the server
    /// restarted).
    #[error("the upstream session ended")]
    SessionGone,
    /// An HTTP error status without a JSON-RPC error in its body.
    #[error("answered HTTP {0}")]
    Status(u16),
}

/// One POST to send.
pub struct Post<'a> {
    pub body: &'a [u8],
    /// `Mcp-Method` and `Mcp-Name` (modern servers), and the version
    /// header.
    pub method: &'a str,
    pub name: Option<&'a str>,
    pub version: Option<&'a str>,
    pub session: Option<&'a str>,
    /// `Mcp-Param-*` headers, for modern servers.
    pub param_headers: &'a [(String, Vec<u8>)],
}

/// What came back.
pub enum Answer {
    /// 202: a notification or response was taken.
    Accepted,
    /// The messages of the answer, as they arrive.
    Messages(Box<Messages>),
}

/// The messages of one answer: a JSON body (one) or an event stream.
pub struct Messages {
    /// The session the upstream named in its head (an `initialize`'s).
    pub session: Option<String>,
    /// HTTP status (a JSON-RPC error may come with 4xx).
    pub status: u16,
    body: Body,
    queue: VecDeque<Value>,
    slot: usize,
    keep_alive: bool,
}

enum Body {
    Json {
        conn: Option<UpstreamConn>,
        reader: BodyReader,
    },
    Events {
        conn: Option<UpstreamConn>,
        reader: BodyReader,
        framer: SseFramer,
    },
    Done,
}

/// An HTTP server as a shard reaches it: its endpoint in the shard's pool,
/// and the part of every request's head that never changes (request line,
/// `Host`, `Origin`, media types, credentials, static headers), rendered
/// once.
pub struct Target {
    pub ep: Endpoint,
    head: Box<[u8]>,
}

impl Target {
    pub fn new(ep: Endpoint, server: &McpHttp) -> Self {
        let head = head_prefix(&ep, server).into_boxed_slice();
        Target { ep, head }
    }
}

/// Sends `post` to `target`; a pooled connection that turns out closed is
/// replaced once by a fresh one.
pub async fn post(
    shard: &Shard,
    target: &Target,
    post: &Post<'_>,
    wait: Duration,
) -> Result<Answer, HttpError> {
    let ep = &target.ep;
    let bytes = request_bytes(&target.head, post);
    let mut fresh = false;
    loop {
        let mut up = if fresh {
            shard.pool.connect(ep).await
        } else {
            shard.pool.checkout(ep).await
        }
        .map_err(|e| HttpError::Connect(e.to_string()))?;
        let sent = async {
            write_all_timeout(&mut up.stream, &bytes, wait).await?;
            up.stream.flush().await
        }
        .await;
        let mut session = None;
        let head = match sent {
            Ok(()) => read_response_head_with(&mut up, wait, Method::Post, |h, buf| {
                session = h
                    .header(buf, "mcp-session-id")
                    .map(|v| String::from_utf8_lossy(v).into_owned());
            })
            .await
            .map_err(Some),
            Err(_) => Err(None),
        };
        let head = match head {
            Ok(h) => h,
            Err(e) => {
                let before_any_byte = match &e {
                    None => true,
                    Some(crate::client::ReadError::Eof { any_bytes }) => !any_bytes,
                    Some(_) => false,
                };
                if up.reused && before_any_byte && !fresh {
                    fresh = true;
                    continue;
                }
                return Err(match e {
                    Some(crate::client::ReadError::Timeout) => HttpError::Timeout,
                    Some(other) => HttpError::Protocol(other.to_string()),
                    None => HttpError::Connect("the connection broke while sending".into()),
                });
            }
        };
        let reader = BodyReader::new(head.framing);
        if head.status == 202 || (head.status == 200 && reader.is_done()) {
            if reader.is_done() && head.keep_alive {
                shard.pool.checkin(ep.slot, up);
            }
            return Ok(Answer::Accepted);
        }
        if head.status == 404 && post.session.is_some() {
            return Err(HttpError::SessionGone);
        }
        let json = head
            .content_type
            .as_deref()
            .is_some_and(|c| c.len() >= 16 && c[..16].eq_ignore_ascii_case(b"application/json"));
        let body = if head.is_event_stream() && head.status < 300 {
            Body::Events {
                conn: Some(up),
                reader,
                framer: SseFramer::new(MAX_MESSAGE),
            }
        } else if json {
            Body::Json {
                conn: Some(up),
                reader,
            }
        } else {
            return Err(HttpError::Status(head.status));
        };
        return Ok(Answer::Messages(Box::new(Messages {
            session,
            status: head.status,
            body,
            queue: VecDeque::new(),
            slot: ep.slot,
            keep_alive: head.keep_alive,
        })));
    }
}

impl Messages {
    /// The next message, waiting at most `wait` for bytes; `None` once the
    /// answer ended.
    pub async fn next(
        &mut self,
        shard: &Shard,
        wait: Duration,
    ) -> Result<Option<Value>, HttpError> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            match &mut self.body {
                Body::Done => return Ok(None),
                Body::Json { conn, reader } => {
                    let Some(c) = conn.as_mut() else {
                        return Ok(None);
                    };
                    let body = reader
                        .read_to_end(c, wait, MAX_MESSAGE)
                        .await
                        .map_err(read_error)?;
                    let v: Value = serde_json::from_slice(&body)
                        .map_err(|e| HttpError::Protocol(format!("the answer is not JSON: {e}")))?;
                    if let Some(c) = conn.take() {
                        if self.keep_alive {
                            shard.pool.checkin(self.slot, c);
                        }
                    }
                    self.body = Body::Done;
                    return Ok(Some(v));
                }
                Body::Events {
                    conn,
                    reader,
                    framer,
                } => {
                    let Some(c) = conn.as_mut() else {
                        return Ok(None);
                    };
                    let queue = &mut self.queue;
                    let mut bad: Option<HttpError> = None;
                    let step = reader
                        .step(c, wait, &mut |data| {
                            let fed = framer.feed(data, |ev| {
                                if ev.is_comment_only() {
                                    return;
                                }
                                let data = ev.data();
                                if data.is_empty() {
                                    return;
                                }
                                match serde_json::from_slice::<Value>(&data) {
                                    Ok(v) => queue.push_back(v),
                                    Err(e) => {
                                        bad = Some(HttpError::Protocol(format!(
                                            "an event is not JSON: {e}"
                                        )))
                                    }
                                }
                            });
                            if let Err(e) = fed {
                                bad = Some(HttpError::Protocol(e.to_string()));
                            }
                        })
                        .await
                        .map_err(read_error)?;
                    if let Some(e) = bad {
                        return Err(e);
                    }
                    if step == BodyStep::End {
                        if let Some(c) = conn.take() {
                            if self.keep_alive {
                                shard.pool.checkin(self.slot, c);
                            }
                        }
                        self.body = Body::Done;
                    }
                }
            }
        }
    }

    /// A 200 JSON answer's body as it came, unread as JSON; `None` when
    /// the answer is not one (read it with [`Messages::next`]).
    pub async fn raw_json(
        &mut self,
        shard: &Shard,
        wait: Duration,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        if self.status != 200 || !self.queue.is_empty() {
            return Ok(None);
        }
        let Body::Json { conn, reader } = &mut self.body else {
            return Ok(None);
        };
        let Some(c) = conn.as_mut() else {
            return Ok(None);
        };
        let body = reader
            .read_to_end(c, wait, MAX_MESSAGE)
            .await
            .map_err(read_error)?;
        if let Some(c) = conn.take() {
            if self.keep_alive {
                shard.pool.checkin(self.slot, c);
            }
        }
        self.body = Body::Done;
        Ok(Some(body))
    }

    /// Whether the answer is an event stream (it may carry notifications
    /// before its response).
    pub fn is_stream(&self) -> bool {
        matches!(self.body, Body::Events { .. })
    }
}

fn read_error(e: crate::client::ReadError) -> HttpError {
    match e {
        crate::client::ReadError::Timeout => HttpError::Timeout,
        other => HttpError::Protocol(other.to_string()),
    }
}

/// The request's bytes. The upstream's own `Host` and `Origin`: SDK
/// servers on loopback refuse others (DNS-rebinding protection).
fn head_prefix(ep: &Endpoint, server: &McpHttp) -> Vec<u8> {
    use shardgate_proto::h1::write_header;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"POST ");
    let path = if ep.base.path.is_empty() {
        "/"
    } else {
        ep.base.path.as_str()
    };
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // With its port even when it is the scheme's default: SDK servers on
    // loopback accept `127.0.0.1:<port>` and refuse a bare host (421).
    let host = host_with_port(ep);
    write_header(&mut out, "host", host.as_bytes());
    let scheme = if ep.base.tls { "https://" } else { "http://" };
    let mut origin = String::with_capacity(scheme.len() + host.len());
    origin.push_str(scheme);
    origin.push_str(&host);
    write_header(&mut out, "origin", origin.as_bytes());
    write_header(&mut out, "content-type", b"application/json");
    write_header(&mut out, "accept", b"application/json, text/event-stream");
    if let Some(t) = &server.bearer_token {
        let mut v = b"Bearer ".to_vec();
        v.extend_from_slice(t.expose().as_bytes());
        write_header(&mut out, "authorization", &v);
    }
    for (k, v) in &server.headers {
        write_header(&mut out, k, v.expose().as_bytes());
    }
    out
}

/// A request: the server's fixed head, then what this call adds.
fn request_bytes(head: &[u8], post: &Post<'_>) -> Vec<u8> {
    use shardgate_proto::h1::write_header;
    let mut out = Vec::with_capacity(head.len() + 256 + post.body.len());
    out.extend_from_slice(head);
    if let Some(s) = post.session {
        write_header(&mut out, "mcp-session-id", s.as_bytes());
    }
    if let Some(v) = post.version {
        write_header(&mut out, "mcp-protocol-version", v.as_bytes());
        if v == shardgate_proto::mcp::MODERN_VERSION {
            write_header(&mut out, "mcp-method", post.method.as_bytes());
            if let Some(n) = post.name {
                let n = shardgate_proto::mcp::encode_header_value(n);
                write_header(&mut out, "mcp-name", n.as_bytes());
            }
            for (k, v) in post.param_headers {
                write_header(&mut out, k, v);
            }
        }
    }
    shardgate_proto::h1::write_content_length(&mut out, post.body.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(post.body);
    out
}

/// `DELETE` of a session (its answer is read and dropped).
pub async fn delete(
    shard: &Shard,
    ep: &Endpoint,
    server: &McpHttp,
    session: &str,
    version: &str,
    wait: Duration,
) -> Result<(), HttpError> {
    use shardgate_proto::h1::write_header;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"DELETE ");
    let path = if ep.base.path.is_empty() {
        "/"
    } else {
        ep.base.path.as_str()
    };
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_header(&mut out, "host", host_with_port(ep).as_bytes());
    if let Some(t) = &server.bearer_token {
        let mut v = b"Bearer ".to_vec();
        v.extend_from_slice(t.expose().as_bytes());
        write_header(&mut out, "authorization", &v);
    }
    for (k, v) in &server.headers {
        write_header(&mut out, k, v.expose().as_bytes());
    }
    write_header(&mut out, "mcp-session-id", session.as_bytes());
    write_header(&mut out, "mcp-protocol-version", version.as_bytes());
    out.extend_from_slice(b"content-length: 0\r\n\r\n");
    let mut up = shard
        .pool
        .connect(ep)
        .await
        .map_err(|e| HttpError::Connect(e.to_string()))?;
    write_all_timeout(&mut up.stream, &out, wait)
        .await
        .map_err(|e| HttpError::Connect(e.to_string()))?;
    let head = crate::client::read_response_head(&mut up, wait, Method::Delete)
        .await
        .map_err(read_error)?;
    let mut reader = BodyReader::new(head.framing);
    let _ = reader.read_to_end(&mut up, wait, 64 * 1024).await;
    Ok(())
}

fn host_with_port(ep: &Endpoint) -> String {
    if ep.base.host.contains(':') {
        format!("[{}]:{}", ep.base.host, ep.base.port)
    } else {
        format!("{}:{}", ep.base.host, ep.base.port)
    }
}
