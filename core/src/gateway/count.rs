//! Token counting: `POST /v1/messages/count_tokens` (Anthropic's shape) and
//! `POST /v1/responses/input_tokens` (OpenAI's), for a model alias the
//! caller may use. Answered by the gateway's tokenizer (tiktoken, the
//! route's first target's encoding), so every answer carries
//! `x-shardgate-estimated: true`: a provider's own count can differ, most
//! for non-OpenAI models. Nothing is charged, nothing goes upstream.

use super::{send_error, ClientDialect};
use crate::error::GatewayError;
use crate::generation::Generation;
use crate::server::{respond, ClientConn, Outcome, Request};
use crate::shard::Shard;

pub async fn count(
    shard: &Shard,
    generation: &Generation,
    conn: &mut ClientConn,
    req: &Request<'_>,
    dialect: ClientDialect,
    rid: &str,
) -> Outcome {
    let model = match serde_json::from_slice::<serde_json::Value>(&req.body) {
        Ok(v) => v.get("model").and_then(|m| m.as_str()).map(str::to_owned),
        Err(e) => {
            let e = GatewayError::BadRequest {
                message: format!("request body is not valid JSON: {e}"),
                param: None,
            };
            return send_error(conn, dialect, &e, rid, &[], false).await;
        }
    };
    let Some(model) = model else {
        let e = GatewayError::BadRequest {
            message: "request has no `model`".into(),
            param: Some("model"),
        };
        return send_error(conn, dialect, &e, rid, &[], false).await;
    };
    let config = &generation.config;
    let Some(route) = config.models.get(&model) else {
        let e = GatewayError::ModelNotFound(model);
        return send_error(conn, dialect, &e, rid, &[], false).await;
    };
    match shard
        .admission
        .visible_models(req, std::iter::once(model.as_str()))
    {
        Ok(allowed) if !allowed.is_empty() => {}
        Ok(_) => {
            let e = GatewayError::Policy(shardgate_policy::DenyReason::ModelNotAllowed { model });
            return send_error(conn, dialect, &e, rid, &[], false).await;
        }
        Err(_) => {
            return send_error(conn, dialect, &GatewayError::Unauthorized, rid, &[], false).await;
        }
    }
    let upstream_model = route.targets.first().map_or(model.as_str(), |t| &t.model);
    let texts = crate::admission::prompt_texts(&req.body);
    let n =
        shardgate_policy::estimate_prompt_tokens(upstream_model, texts.iter().map(String::as_str));
    let body = dialect.rules().count_answer(n);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let headers: [(&str, &[u8]); 1] = [("x-shardgate-estimated", b"true")];
    match conn
        .write(&respond::full(
            200,
            b"application/json",
            &headers,
            &bytes,
            rid,
            false,
        ))
        .await
    {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}
