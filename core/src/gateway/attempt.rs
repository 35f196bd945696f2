//! One attempt at one target, up to the answer's head: [`plan`] builds the
//! bytes (the provider's key replaces anything the client sent), a
//! keep-alive race on a pooled connection is retried once on a fresh one,
//! and an error status is read to its end and classified. The built-in mock
//! answers here too, in-process, with a head and a body source like any
//! upstream's.
//!
//! Nothing here sees the client connection: what to do with a failure
//! (another target, the same one later, or an answer) is the route's call,
//! and writing the answer is the relay's. Two attempts can therefore race,
//! and a retry is decided before a byte reaches the client.

use super::relay::{Answer, Source};
use super::route::Failure;
use super::{mock, plan, Call};
use crate::client::{
    read_response_head, BodyReader, Endpoint, ReadError, UpstreamConn, UpstreamHead,
};
use crate::config::{HttpProvider, Provider, ProviderKind, Target, Wire};
use crate::error::GatewayError;
use crate::io::write_all_timeout;
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use shardgate_proto::h1::Method;
use std::time::Duration;

/// Error bodies are small; a provider sending megabytes of error is cut.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long one attempt may wait at each step: its route's timeouts, the
/// first token's cut to what is left of the request's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub connect: Duration,
    pub first_token: Duration,
    /// Between two reads of the answer (stream events), once it started.
    pub idle: Duration,
}

/// Sends `call` to `target` and waits for the head of a successful answer.
/// A failure carries how the route may go on from it.
///
/// The HTTP exchange is this function's own body, not a second async fn
/// it awaits: the answer is returned through one future, not copied out
/// of two.
pub async fn send_until_head<'a>(
    call: &'a Call<'a>,
    target: &'a Target,
    provider: &'a Provider,
    waits: Waits,
) -> Result<Answer<'a>, Failure> {
    let http = match &provider.kind {
        // Boxed: the mock's state would otherwise size every request's
        // future, HTTP ones included.
        ProviderKind::Mock(m) => {
            return Box::pin(mock::start(call, &provider.name, m, target, waits))
                .await
                .map_err(Failure::classify)
        }
        ProviderKind::Http(h) => h,
    };
    let shard = call.shard;
    let Some(Some(ep)) = call.generation.endpoints.get(target.provider) else {
        return Err(Failure::classify(GatewayError::UpstreamConnect {
            provider: provider.name.clone(),
            reason: "no endpoint".into(),
        }));
    };
    let (bytes, reply) = plan::build(call, target, http, &ep.authority)?;
    let exchanged = exchange(shard, ep, &provider.name, bytes.bytes(), waits).await;
    // The request is not sent again past its head: a long stream must not
    // hold a copy of its prompt for its whole life.
    drop(bytes);
    let (up, head) = exchanged?;
    if head.status >= 300 {
        let wait = head.wait_hint;
        let error = upstream_error(shard, up, head, ep.slot, &provider.name, http).await;
        return Err(Failure::classify(error).asked_to_wait(wait));
    }
    Ok(Answer {
        source: Source::http(up, &head, ep.slot),
        head: head.into_answer(),
        name: &provider.name,
        alias_line: b"",
        target_lines: &target.head_lines,
        http: Some(http),
        reply,
        client: call.client,
        model: &target.model,
        call,
        idle: waits.idle,
    })
}

/// Sends the request and reads the response head. A pooled connection that
/// fails before any response byte (the peer closed it while idle) is replaced
/// by a fresh one, once.
async fn exchange(
    shard: &Shard,
    ep: &Endpoint,
    name: &str,
    bytes: &[u8],
    waits: Waits,
) -> Result<(UpstreamConn, UpstreamHead), GatewayError> {
    let settings = shard.pool.settings();
    let mut fresh = false;
    loop {
        let mut up = if fresh {
            shard.pool.connect_within(ep, waits.connect).await
        } else {
            shard.pool.checkout_within(ep, waits.connect).await
        }
        .map_err(|e| GatewayError::UpstreamConnect {
            provider: name.to_owned(),
            reason: e.to_string(),
        })?;
        let sent = async {
            write_all_timeout(&mut up.stream, bytes, settings.read_timeout).await?;
            up.stream.flush().await
        }
        .await;
        let result = match sent {
            Ok(()) => read_response_head(&mut up, waits.first_token, Method::Post)
                .await
                .map_err(Some),
            Err(_) => Err(None),
        };
        match result {
            Ok(head) => return Ok((up, head)),
            Err(e) => {
                let before_any_byte = match &e {
                    None => true,
                    Some(ReadError::Eof { any_bytes }) => !any_bytes,
                    Some(_) => false,
                };
                if up.reused && before_any_byte && !fresh {
                    fresh = true;
                    continue;
                }
                return Err(match e {
                    Some(ReadError::Timeout) => GatewayError::UpstreamTimeout {
                        provider: name.to_owned(),
                    },
                    Some(other) => GatewayError::UpstreamProtocol {
                        provider: name.to_owned(),
                        reason: other.to_string(),
                    },
                    None => GatewayError::UpstreamConnect {
                        provider: name.to_owned(),
                        reason: "the connection broke while sending the request".into(),
                    },
                });
            }
        }
    }
}

/// An error status from the upstream: its (bounded) body is read so the
/// connection can be reused and the message passed on.
async fn upstream_error(
    shard: &Shard,
    mut up: UpstreamConn,
    head: UpstreamHead,
    slot: usize,
    name: &str,
    http: &HttpProvider,
) -> GatewayError {
    let mut reader = BodyReader::new(head.framing);
    let wait = shard.pool.settings().read_timeout;
    let body = reader
        .read_to_end(&mut up, wait, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    if reader.is_done() && head.keep_alive {
        shard.pool.checkin(slot, up);
    }
    // Every upstream error leaves here OpenAI-shaped (or as the body of an
    // OpenAI-dialect upstream, which the error type wraps when it is not an
    // OpenAI error object), with the credentials sent to this upstream and
    // anything that looks like a credential redacted from every string.
    let secrets = &http.secrets;
    let body = match &http.wire {
        Wire::OpenAi(_) | Wire::Azure(_) => {
            shardgate_providers::redact_json_secrets(&body, secrets)
        }
        other => other
            .provider()
            .error_to_openai(head.status, &body, secrets),
    };
    GatewayError::UpstreamStatus {
        provider: name.to_owned(),
        status: head.status,
        body,
        // What the upstream said, or else its wait in whole seconds (from
        // `retry-after-ms` or a rate-limit reset): SDKs read only this.
        retry_after: head
            .retry_after
            .as_deref()
            .and_then(crate::error::RetryAfter::parse)
            .or_else(|| {
                // Only an overload's: a 400 is not to be retried.
                let wait = head
                    .wait_hint
                    .filter(|_| matches!(head.status, 429 | 503))?;
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                crate::error::RetryAfter::parse(secs.to_string().as_bytes())
            }),
    }
}
