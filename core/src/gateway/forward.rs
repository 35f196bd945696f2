//! Sending a request to an HTTP upstream: [`plan`] builds the bytes (the
//! provider's key replaces anything the client sent), a keep-alive race on a
//! pooled connection is retried once on a fresh one, and [`relay`] brings
//! the answer back.

use super::{plan, relay};
use super::{Attempt, Call};
use crate::client::{read_response_head, UpstreamConn, UpstreamHead};
use crate::config::{HttpProvider, Provider, Target};
use crate::error::GatewayError;
use crate::io::write_all_timeout;
use crate::server::{ClientConn, Outcome};
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use shardgate_proto::h1::Method;

pub async fn forward(
    call: &Call<'_>,
    conn: &mut ClientConn,
    target: &Target,
    provider: &Provider,
    http: &HttpProvider,
) -> Attempt {
    let shard = call.shard;
    let Some(Some(ep)) = shard.endpoints.get(target.provider) else {
        return Attempt::Failed(GatewayError::UpstreamConnect {
            provider: provider.name.clone(),
            reason: "no endpoint".into(),
        });
    };
    let (bytes, reply) = match plan::build(call, target, http, &ep.authority) {
        Ok(x) => x,
        Err(e) => return Attempt::Failed(e),
    };
    // The client may leave while the upstream thinks: racing the exchange with
    // the client's close drops the upstream connection, which cancels it.
    let exchange = futures_lite::future::or(
        async { Some(exchange(shard, target.provider, &provider.name, bytes.bytes()).await) },
        async {
            conn.closed().await;
            None
        },
    )
    .await;
    // The request is not sent again past its head: a long stream must not
    // hold a copy of its prompt for its whole life.
    drop(bytes);
    let (up, head) = match exchange {
        None => return Attempt::Done(Outcome::CLOSE),
        Some(Err(e)) => return Attempt::Failed(e),
        Some(Ok(x)) => x,
    };
    if head.status >= 300 {
        return relay::upstream_error(shard, up, head, target.provider, &provider.name, http).await;
    }
    let streamed = call.facts.stream && (head.is_event_stream() || head.is_aws_event_stream());
    let answer = relay::Answer {
        up,
        head,
        provider: target.provider,
        name: &provider.name,
        served_by: &target.served_by,
        wire: &http.wire,
        secrets: &http.secrets,
        reply,
        client: call.client,
        model: &target.model,
        call,
    };
    if streamed {
        // Boxed: a stream's relay state (framer, translators) would size
        // every request's future, moved into its box per request, by ~2 KiB.
        Box::pin(relay::stream(shard, conn, answer, call.rid)).await
    } else {
        relay::full(shard, conn, answer, call.rid).await
    }
}

/// Sends the request and reads the response head. A pooled connection that
/// fails before any response byte (the peer closed it while idle) is replaced
/// by a fresh one, once.
async fn exchange(
    shard: &Shard,
    provider: usize,
    name: &str,
    bytes: &[u8],
) -> Result<(UpstreamConn, UpstreamHead), GatewayError> {
    let Some(Some(ep)) = shard.endpoints.get(provider) else {
        return Err(GatewayError::UpstreamConnect {
            provider: name.to_owned(),
            reason: "no endpoint".into(),
        });
    };
    let settings = shard.pool.settings();
    let mut fresh = false;
    loop {
        let mut up = if fresh {
            shard.pool.connect(ep).await
        } else {
            shard.pool.checkout(provider, ep).await
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
            Ok(()) => read_response_head(&mut up, settings.first_byte_timeout, Method::Post)
                .await
                .map_err(Some),
            Err(_) => Err(None),
        };
        match result {
            Ok(head) => return Ok((up, head)),
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
                    Some(crate::client::ReadError::Timeout) => GatewayError::UpstreamTimeout {
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
