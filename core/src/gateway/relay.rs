//! Relaying an upstream's answer to the client.
//!
//! Streams are relayed event by event as they arrive: the SSE framer finds
//! event boundaries by scanning bytes and hands out borrowed slices, each
//! event is forwarded as it was received (never re-serialized) inside one
//! chunk of the client's chunked response. An upstream failure mid-stream
//! ends the client's stream with an error event and a proper last chunk; a
//! client that leaves mid-stream drops the upstream connection, cancelling
//! the generation.

use super::Attempt;
use crate::client::{BodyReader, BodyStep, ReadError, UpstreamConn, UpstreamHead};
use crate::error::GatewayError;
use crate::server::{respond, ClientConn, Outcome};
use crate::shard::Shard;
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_proto::sse::SseFramer;

/// An upstream's answer whose head has been read, with what relaying it
/// needs to know about where it came from.
pub struct Answer<'a> {
    pub up: UpstreamConn,
    pub head: UpstreamHead,
    /// Index of the provider, for returning the connection to its pool.
    pub provider: usize,
    pub name: &'a str,
    /// `provider/model`, sent as `x-shardgate-target`.
    pub served_by: String,
}

/// Error bodies are small; a provider sending megabytes of error is cut.
const MAX_ERROR_BODY: usize = 64 * 1024;

fn read_failed(provider: &str, e: ReadError) -> GatewayError {
    match e {
        ReadError::Timeout => GatewayError::UpstreamTimeout {
            provider: provider.to_owned(),
        },
        other => GatewayError::UpstreamProtocol {
            provider: provider.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// An error status from the upstream: read its (bounded) body so the
/// connection can be reused and the message passed on, and let the caller
/// decide between failover and answering.
pub async fn upstream_error(
    shard: &Shard,
    mut up: UpstreamConn,
    head: UpstreamHead,
    provider: usize,
    name: &str,
) -> Attempt {
    let mut reader = BodyReader::new(head.framing);
    let wait = shard.pool.settings().read_timeout;
    let body = reader
        .read_to_end(&mut up, wait, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    if reader.is_done() && head.keep_alive {
        shard.pool.checkin(provider, up);
    }
    Attempt::Failed(GatewayError::UpstreamStatus {
        provider: name.to_owned(),
        status: head.status,
        body,
    })
}

/// A whole (non-streamed) response: read it to the end within the response
/// size limit, then answer in one write.
pub async fn full(shard: &Shard, conn: &mut ClientConn, answer: Answer<'_>, rid: &str) -> Attempt {
    let Answer {
        mut up,
        head,
        provider,
        name,
        served_by,
    } = answer;
    let settings = shard.pool.settings();
    let mut reader = BodyReader::new(head.framing);
    let read = futures_lite::future::or(
        async {
            Some(
                reader
                    .read_to_end(&mut up, settings.read_timeout, settings.max_response_bytes)
                    .await,
            )
        },
        async {
            conn.closed().await;
            None
        },
    )
    .await;
    let body = match read {
        None => return Attempt::Done(Outcome::CLOSE),
        Some(Err(e)) => return Attempt::Failed(read_failed(name, e)),
        Some(Ok(b)) => b,
    };
    if head.keep_alive {
        shard.pool.checkin(provider, up);
    }
    let content_type = head.content_type.as_deref().unwrap_or(b"application/json");
    let bytes = respond::full(
        head.status,
        content_type,
        &[("x-shardgate-target", served_by.as_bytes())],
        &body,
        rid,
        false,
    );
    Attempt::Done(match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    })
}

/// An event stream, relayed as it arrives.
pub async fn stream(
    shard: &Shard,
    conn: &mut ClientConn,
    answer: Answer<'_>,
    rid: &str,
) -> Attempt {
    let Answer {
        mut up,
        head,
        provider,
        name,
        served_by,
    } = answer;
    let settings = shard.pool.settings();
    let client_head = respond::stream_head(
        head.status,
        rid,
        &[("x-shardgate-target", served_by.as_bytes())],
    );
    if conn.write(&client_head).await.is_err() {
        return Attempt::Done(Outcome::CLOSE);
    }
    let mut reader = BodyReader::new(head.framing);
    let mut framer = SseFramer::new(settings.max_event_bytes);
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut framing_error = None;
        let step = futures_lite::future::or(
            async {
                let mut on_data = |data: &[u8]| {
                    let res = framer.feed(data, |event| {
                        encode_chunk_header(event.raw.len(), &mut out);
                        out.extend_from_slice(event.raw);
                        out.extend_from_slice(CHUNK_END);
                    });
                    if let Err(e) = res {
                        framing_error = Some(e);
                    }
                };
                Some(
                    reader
                        .step(&mut up, settings.read_timeout, &mut on_data)
                        .await,
                )
            },
            async {
                conn.closed().await;
                None
            },
        )
        .await;
        let failure = match step {
            // The client left: dropping `up` closes the upstream connection.
            None => return Attempt::Done(Outcome::CLOSE),
            Some(Ok(_)) if framing_error.is_some() => Some(GatewayError::UpstreamProtocol {
                provider: name.to_owned(),
                reason: framing_error.map(|e| e.to_string()).unwrap_or_default(),
            }),
            Some(Ok(BodyStep::Data)) => None,
            Some(Ok(BodyStep::End)) => {
                if let Some(rest) = framer.finish() {
                    // An unterminated last event: pass it on, terminated.
                    let mut tail = rest.to_vec();
                    tail.extend_from_slice(b"\n\n");
                    encode_chunk_header(tail.len(), &mut out);
                    out.extend_from_slice(&tail);
                    out.extend_from_slice(CHUNK_END);
                }
                out.extend_from_slice(LAST_CHUNK);
                if head.keep_alive {
                    shard.pool.checkin(provider, up);
                }
                return Attempt::Done(match conn.write(&out).await {
                    Ok(()) => Outcome::KEEP,
                    Err(_) => Outcome::CLOSE,
                });
            }
            Some(Err(e)) => Some(read_failed(name, e)),
        };
        if let Some(err) = failure {
            log::info!("{rid}: stream from {name} failed: {err}");
            end_with_error(&mut out, &err);
            return Attempt::Done(match conn.write(&out).await {
                Ok(()) => Outcome::KEEP,
                Err(_) => Outcome::CLOSE,
            });
        }
        if !out.is_empty() {
            if conn.write(&out).await.is_err() {
                return Attempt::Done(Outcome::CLOSE);
            }
            out.clear();
        }
    }
}

/// Appends an OpenAI-style error event and the last chunk: the client's
/// stream ends with a word about why, never a silent cut.
pub fn end_with_error(out: &mut Vec<u8>, err: &GatewayError) {
    let mut event = Vec::with_capacity(256);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&err.openai_body());
    event.extend_from_slice(b"\n\n");
    encode_chunk_header(event.len(), out);
    out.extend_from_slice(&event);
    out.extend_from_slice(CHUNK_END);
    out.extend_from_slice(LAST_CHUNK);
}
