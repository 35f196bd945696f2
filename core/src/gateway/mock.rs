//! The built-in `mock` provider: answers in-process with deterministic text,
//! paced by its configured time to first token and token rate, so the
//! default config works with no keys and no network. The model name can pick
//! a behaviour (`mock-429`, `mock-tokens-50-ttft-200ms`, ...), which lets
//! failover be exercised without an upstream.
//!
//! Memory per answer is bounded like a relayed one's, whatever
//! `output_tokens` says: a stream is generated as it is written, at most
//! [`WRITE_BATCH`] bytes at a time, each write under the client write
//! timeout (a client that does not read holds one batch, not the answer);
//! a whole answer larger than `upstream.max_response_bytes` is refused as a
//! real upstream's would be.

use super::egress::{ClientDialect, StreamEgress};
use super::{Api, Attempt, Call};
use crate::client::ReadError;
use crate::config::{MockProvider, Target};
use crate::error::GatewayError;
use crate::server::{respond, ClientConn, Outcome};
use glommio::timer::sleep;
use shardgate_proto::anthropic as a;
use shardgate_proto::mock::{self, Behaviour, ChunkKind};
use shardgate_proto::openai::{error_body, Usage};
use shardgate_providers::KnownSecrets;
use std::time::Duration;

/// Stream bytes generated before they are written: large enough that a
/// fast stream costs few writes, small enough that a client that does not
/// read pins little memory.
pub const WRITE_BATCH: usize = 16 * 1024;

/// Answers `call` as the mock model `target.model`, in the client's dialect
/// (the mock renders OpenAI; the egress translates for Anthropic clients).
pub async fn serve(
    call: &Call<'_>,
    conn: &mut ClientConn,
    provider: &str,
    cfg: &MockProvider,
    target: &Target,
) -> Attempt {
    let (req, facts, api, rid) = (call.req, call.facts, call.api, call.rid);
    let client = call.client;
    if client == ClientDialect::Anthropic {
        // Held to the same shape an upstream would demand.
        if let Err(e) = super::plan::client_json::<a::MessagesRequest>(&req.body) {
            return Attempt::Failed(e);
        }
    }
    let defaults = Behaviour {
        output_tokens: cfg.output_tokens,
        ttft_ms: cfg.ttft.as_millis() as u64,
        tokens_per_second: cfg.tokens_per_second,
        fail_status: None,
        cut_after: None,
        hang: false,
    };
    let b = mock::behaviour(&target.model, defaults);
    if let Some(status) = b.fail_status {
        return Attempt::Failed(GatewayError::UpstreamStatus {
            provider: provider.to_owned(),
            status,
            body: error_body(
                &format!("mock failure {status} for {}", target.model),
                if status == 429 {
                    "rate_limit_error"
                } else {
                    "server_error"
                },
                None,
                None,
            ),
            // As the bench mock and real providers do on overload.
            retry_after: matches!(status, 429 | 503)
                .then(|| crate::error::RetryAfter::parse(b"1"))
                .flatten(),
        });
    }
    if b.hang {
        conn.closed().await;
        return Attempt::Done(Outcome::CLOSE);
    }
    let ctx = call.reply_ctx(&target.model);
    let created = ctx.created;
    let prompt_tokens = mock::estimate_tokens(req.body.len());
    let limit = facts.max_tokens.map_or(usize::MAX, |m| m as usize);
    let n = b.output_tokens.min(limit);
    let finish = if n < b.output_tokens {
        "length"
    } else {
        "stop"
    };
    let extra = call.extra(&target.served_by);
    let usage = |completion: u64| Usage {
        prompt_tokens: Some(prompt_tokens),
        completion_tokens: Some(completion),
        total_tokens: Some(prompt_tokens + completion),
        ..Usage::default()
    };
    let id = ctx.id.clone();

    if api == Api::Embeddings {
        let inputs = embedding_inputs(&req.body);
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut body = Vec::new();
        mock::embeddings(&mut body, &ctx.model, &refs, 16);
        call.meter(&target.model, Some(usage(0)), false);
        return send_json(conn, &extra, &body, rid).await;
    }

    let pace = b
        .tokens_per_second
        .map(|t| Duration::from_secs_f64(1.0 / f64::from(t.max(1))));
    if b.ttft_ms > 0 {
        sleep(Duration::from_millis(b.ttft_ms)).await;
    }
    if !facts.stream {
        let max = call.shard.pool.settings().max_response_bytes;
        if mock::text_len(n) > max {
            return Attempt::Failed(GatewayError::UpstreamProtocol {
                provider: provider.to_owned(),
                reason: ReadError::TooLarge(max).to_string(),
            });
        }
        if let Some(p) = pace {
            sleep(p * n as u32).await;
        }
        let mut body = Vec::new();
        match api {
            Api::Completions => mock::completion(
                &mut body,
                &id,
                &ctx.model,
                created,
                prompt_tokens,
                n,
                finish,
            ),
            _ => mock::chat_completion(
                &mut body,
                &id,
                &ctx.model,
                created,
                prompt_tokens,
                n,
                finish,
            ),
        }
        let body = match client.success_body(body) {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Failed(GatewayError::UpstreamTranslate {
                    provider: provider.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        call.meter(&target.model, Some(usage(n as u64)), false);
        return send_json(conn, &extra, &body, rid).await;
    }

    if conn
        .write(&respond::stream_head(200, rid, &extra))
        .await
        .is_err()
    {
        return Attempt::Done(Outcome::CLOSE);
    }
    let include_usage = ctx.include_usage;
    let usage_null = include_usage;
    let mut egress = StreamEgress::from_openai(client, &ctx, &KnownSecrets::default());
    let mut push_chunk = |out: &mut Vec<u8>, event: &mut Vec<u8>| {
        // The mock's own OpenAI events always translate.
        let _ = egress.push(event, out);
        event.clear();
    };
    let mut event = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(WRITE_BATCH + 1024);
    let chat = api != Api::Completions;
    if chat {
        mock::chat_chunk_event(
            &mut event,
            &id,
            &ctx.model,
            created,
            ChunkKind::Role,
            usage_null,
        );
        push_chunk(&mut out, &mut event);
    }
    for i in 0..n {
        if b.cut_after == Some(i) {
            call.meter(&target.model, Some(usage(i as u64)), true);
            let _ = conn.write(&out).await;
            return Attempt::Done(Outcome::CLOSE);
        }
        if let Some(p) = pace {
            if !out.is_empty() {
                if conn.write(&out).await.is_err() {
                    call.meter(&target.model, Some(usage(i as u64)), true);
                    return Attempt::Done(Outcome::CLOSE);
                }
                out.clear();
            }
            sleep(p).await;
        }
        if chat {
            mock::chat_chunk_event(
                &mut event,
                &id,
                &ctx.model,
                created,
                ChunkKind::Content(mock::token(i)),
                usage_null,
            );
        } else {
            mock::completion_chunk_event(
                &mut event,
                &id,
                &ctx.model,
                created,
                mock::token(i),
                None,
            );
        }
        push_chunk(&mut out, &mut event);
        if out.len() >= WRITE_BATCH {
            if conn.write(&out).await.is_err() {
                call.meter(&target.model, Some(usage(i as u64 + 1)), true);
                return Attempt::Done(Outcome::CLOSE);
            }
            out.clear();
        }
    }
    if chat {
        mock::chat_chunk_event(
            &mut event,
            &id,
            &ctx.model,
            created,
            ChunkKind::Finish(finish),
            usage_null,
        );
    } else {
        mock::completion_chunk_event(&mut event, &id, &ctx.model, created, "", Some(finish));
    }
    push_chunk(&mut out, &mut event);
    if include_usage && chat {
        let usage = ChunkKind::Usage {
            prompt_tokens,
            completion_tokens: n as u64,
        };
        mock::chat_chunk_event(&mut event, &id, &ctx.model, created, usage, false);
        push_chunk(&mut out, &mut event);
    }
    event.extend_from_slice(mock::DONE_EVENT);
    push_chunk(&mut out, &mut event);
    egress.finish(&mut out);
    call.meter(&target.model, Some(usage(n as u64)), false);
    done(conn.write(&out).await)
}

/// A complete 200 JSON answer.
async fn send_json(
    conn: &mut ClientConn,
    extra: &[(&str, &[u8])],
    body: &[u8],
    rid: &str,
) -> Attempt {
    done(
        conn.write(&respond::full(
            200,
            b"application/json",
            extra,
            body,
            rid,
            false,
        ))
        .await,
    )
}

fn done(written: std::io::Result<()>) -> Attempt {
    Attempt::Done(match written {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    })
}

/// The `input` of an embeddings request as strings (token arrays count as
/// one input each).
fn embedding_inputs(body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match v.get("input") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => vec![String::new()],
    }
}
