//! Relaying an upstream's answer to the client.
//!
//! Same-dialect streams are relayed event by event as they arrive: the SSE
//! framer finds event boundaries by scanning bytes and hands out borrowed
//! slices, each event is forwarded as it was received (never re-serialized)
//! inside one chunk of the client's chunked response. Other streams go
//! through the provider's translator (fed raw bytes however the network
//! split them) and the client's egress; each read becomes one chunk. An upstream failure mid-stream
//! ends the client's stream with an error event and a proper last chunk; a
//! client that leaves mid-stream drops the upstream connection, cancelling
//! the generation.

use super::egress::{push_chunk, ClientDialect, StreamEgress};
use super::plan::Reply;
use super::Attempt;
use crate::client::{BodyReader, BodyStep, ReadError, UpstreamConn, UpstreamHead};
use crate::config::Wire;
use crate::error::GatewayError;
use crate::server::{respond, ClientConn, Outcome};
use crate::shard::Shard;
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_proto::sse::SseFramer;
use shardgate_providers::{gemini, ReplyCtx, StreamTranslator};

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
    pub wire: &'a Wire,
    pub reply: Reply,
    pub client: ClientDialect,
    pub ctx: ReplyCtx,
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
    wire: &Wire,
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
    // Every upstream error leaves here OpenAI-shaped (or as the raw body of
    // an OpenAI-dialect upstream, which the error type wraps when needed),
    // with anything that looks like a credential redacted.
    let body = match wire {
        Wire::OpenAi(_) | Wire::Azure(_) => shardgate_providers::redact_json_secrets(&body),
        other => other.provider().error_to_openai(head.status, &body),
    };
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
        wire,
        reply,
        client,
        ctx,
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
    let translated = match reply {
        Reply::Same => Ok(body),
        Reply::FromOpenAi => client.success_body(body),
        Reply::FromWire => wire
            .provider()
            .response_to_openai(&body, &ctx)
            .and_then(|(b, _usage)| client.success_body(b)),
        Reply::GeminiEmbeddings => gemini::embeddings_response(&body, &ctx.model),
    };
    let body = match translated {
        Ok(b) => b,
        Err(e) => {
            return Attempt::Failed(GatewayError::UpstreamTranslate {
                provider: name.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let content_type = match reply {
        Reply::Same => head.content_type.as_deref().unwrap_or(b"application/json"),
        _ => b"application/json",
    };
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

/// How stream bytes from the upstream become the client's.
enum Pipe {
    /// Same dialect: events relayed as they came, one chunk each.
    Same(SseFramer),
    /// The provider's translator (if its dialect is not OpenAI), then the
    /// client's egress. Boxed: one allocation per translated stream.
    Translate(Box<Translating>),
}

struct Translating {
    wire: Option<StreamTranslator>,
    egress: StreamEgress,
    mid: Vec<u8>,
}

impl Pipe {
    fn new(answer: &Answer<'_>, max_event_bytes: usize) -> Self {
        match answer.reply {
            Reply::Same | Reply::GeminiEmbeddings => Pipe::Same(SseFramer::new(max_event_bytes)),
            Reply::FromOpenAi => Pipe::Translate(Box::new(Translating {
                wire: None,
                egress: StreamEgress::from_openai(answer.client, &answer.ctx),
                mid: Vec::new(),
            })),
            Reply::FromWire => Pipe::Translate(Box::new(Translating {
                wire: answer.wire.provider().stream_translator(answer.ctx.clone()),
                egress: StreamEgress::from_openai(answer.client, &answer.ctx),
                mid: Vec::new(),
            })),
        }
    }

    /// Appends what `data` makes for the client to `out`.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Pipe::Same(framer) => framer
                .feed(data, |event| {
                    encode_chunk_header(event.raw.len(), out);
                    out.extend_from_slice(event.raw);
                    out.extend_from_slice(CHUNK_END);
                })
                .map_err(|e| e.to_string()),
            Pipe::Translate(t) => match &mut t.wire {
                Some(w) => {
                    t.mid.clear();
                    let r = w.on_bytes(data, &mut t.mid).map_err(|e| e.to_string());
                    t.egress.push(&t.mid, out).map_err(|e| e.to_string())?;
                    r
                }
                None => t.egress.push(data, out).map_err(|e| e.to_string()),
            },
        }
    }

    /// The upstream body ended: close the client's stream.
    fn finish(self, out: &mut Vec<u8>) {
        match self {
            Pipe::Same(mut framer) => {
                if let Some(rest) = framer.finish() {
                    // An unterminated last event: pass it on, terminated.
                    let mut tail = rest.to_vec();
                    tail.extend_from_slice(b"\n\n");
                    push_chunk(out, &tail);
                }
                out.extend_from_slice(LAST_CHUNK);
            }
            Pipe::Translate(t) => {
                let Translating {
                    wire,
                    mut egress,
                    mut mid,
                } = *t;
                if let Some(w) = wire {
                    mid.clear();
                    let _summary = w.finish(&mut mid);
                    let _ = egress.push(&mid, out);
                }
                let _ = egress.finish(out);
            }
        }
    }

    fn fail(self, err: &GatewayError, out: &mut Vec<u8>, client: ClientDialect) {
        match self {
            Pipe::Same(_) => StreamEgress::identity(client).fail(err, out),
            Pipe::Translate(t) => t.egress.fail(err, out),
        }
    }
}

/// An event stream, relayed as it arrives.
pub async fn stream(
    shard: &Shard,
    conn: &mut ClientConn,
    answer: Answer<'_>,
    rid: &str,
) -> Attempt {
    let settings = shard.pool.settings();
    let mut pipe = Pipe::new(&answer, settings.max_event_bytes);
    let Answer {
        mut up,
        head,
        provider,
        name,
        served_by,
        client,
        ..
    } = answer;
    let client_head = respond::stream_head(
        head.status,
        rid,
        &[("x-shardgate-target", served_by.as_bytes())],
    );
    if conn.write(&client_head).await.is_err() {
        return Attempt::Done(Outcome::CLOSE);
    }
    let mut reader = BodyReader::new(head.framing);
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut feed_error = None;
        let step = futures_lite::future::or(
            async {
                let mut on_data = |data: &[u8]| {
                    if feed_error.is_none() {
                        if let Err(e) = pipe.feed(data, &mut out) {
                            feed_error = Some(e);
                        }
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
            Some(Ok(_)) if feed_error.is_some() => Some(GatewayError::UpstreamProtocol {
                provider: name.to_owned(),
                reason: feed_error.unwrap_or_default(),
            }),
            Some(Ok(BodyStep::Data)) => None,
            Some(Ok(BodyStep::End)) => {
                pipe.finish(&mut out);
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
            pipe.fail(&err, &mut out, client);
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
