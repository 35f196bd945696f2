//! The built-in `mock` provider: answers in-process with deterministic text,
//! paced by its configured time to first token and token rate, so the
//! default config works with no keys and no network. The model name can pick
//! a behaviour (`mock-429`, `mock-tokens-50-ttft-200ms`, ...), which lets
//! failover be exercised without an upstream.

use super::{Api, Attempt};
use crate::config::{MockProvider, Target};
use crate::error::GatewayError;
use crate::server::{respond, ClientConn, Outcome, Request};
use glommio::timer::sleep;
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_proto::mock::{self, Behaviour, ChunkKind};
use shardgate_proto::openai::{error_body, RequestFacts};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[allow(clippy::too_many_arguments)]
pub async fn serve(
    conn: &mut ClientConn,
    req: &Request,
    facts: &RequestFacts,
    api: Api,
    provider: &str,
    cfg: &MockProvider,
    target: &Target,
    rid: &str,
) -> Attempt {
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
        });
    }
    if b.hang {
        conn.closed().await;
        return Attempt::Done(Outcome::CLOSE);
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prompt_tokens = mock::estimate_tokens(req.body.len());
    let limit = facts.max_tokens.map_or(usize::MAX, |m| m as usize);
    let n = b.output_tokens.min(limit);
    let finish = if n < b.output_tokens {
        "length"
    } else {
        "stop"
    };
    let served_by = format!("{provider}/{}", target.model);
    let extra: [(&str, &[u8]); 1] = [("x-shardgate-target", served_by.as_bytes())];
    let id = format!("chatcmpl-{rid}");

    if api == Api::Embeddings {
        let inputs = embedding_inputs(&req.body);
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut body = Vec::new();
        mock::embeddings(&mut body, &facts.model, &refs, 16);
        return send_json(conn, &extra, &body, rid).await;
    }

    let pace = b
        .tokens_per_second
        .map(|t| Duration::from_secs_f64(1.0 / f64::from(t.max(1))));
    if b.ttft_ms > 0 {
        sleep(Duration::from_millis(b.ttft_ms)).await;
    }
    if !facts.stream {
        if let Some(p) = pace {
            sleep(p * n as u32).await;
        }
        let mut body = Vec::new();
        match api {
            Api::Completions => mock::completion(
                &mut body,
                &id,
                &facts.model,
                created,
                prompt_tokens,
                n,
                finish,
            ),
            _ => mock::chat_completion(
                &mut body,
                &id,
                &facts.model,
                created,
                prompt_tokens,
                n,
                finish,
            ),
        }
        return send_json(conn, &extra, &body, rid).await;
    }

    if conn
        .write(&respond::stream_head(200, rid, &extra))
        .await
        .is_err()
    {
        return Attempt::Done(Outcome::CLOSE);
    }
    let usage_null = facts.include_usage;
    let mut event = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(1024);
    let chat = api == Api::ChatCompletions;
    if chat {
        mock::chat_chunk_event(
            &mut event,
            &id,
            &facts.model,
            created,
            ChunkKind::Role,
            usage_null,
        );
        push_chunk(&mut out, &mut event);
    }
    for i in 0..n {
        if b.cut_after == Some(i) {
            let _ = conn.write(&out).await;
            return Attempt::Done(Outcome::CLOSE);
        }
        if let Some(p) = pace {
            if !out.is_empty() {
                if conn.write(&out).await.is_err() {
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
                &facts.model,
                created,
                ChunkKind::Content(mock::token(i)),
                usage_null,
            );
        } else {
            mock::completion_chunk_event(
                &mut event,
                &id,
                &facts.model,
                created,
                mock::token(i),
                None,
            );
        }
        push_chunk(&mut out, &mut event);
    }
    if chat {
        mock::chat_chunk_event(
            &mut event,
            &id,
            &facts.model,
            created,
            ChunkKind::Finish(finish),
            usage_null,
        );
    } else {
        mock::completion_chunk_event(&mut event, &id, &facts.model, created, "", Some(finish));
    }
    push_chunk(&mut out, &mut event);
    if facts.include_usage && chat {
        let usage = ChunkKind::Usage {
            prompt_tokens,
            completion_tokens: n as u64,
        };
        mock::chat_chunk_event(&mut event, &id, &facts.model, created, usage, false);
        push_chunk(&mut out, &mut event);
    }
    event.extend_from_slice(mock::DONE_EVENT);
    push_chunk(&mut out, &mut event);
    out.extend_from_slice(LAST_CHUNK);
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

fn push_chunk(out: &mut Vec<u8>, event: &mut Vec<u8>) {
    encode_chunk_header(event.len(), out);
    out.extend_from_slice(event);
    out.extend_from_slice(CHUNK_END);
    event.clear();
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
