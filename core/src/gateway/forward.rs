//! Sending a request to an OpenAI-dialect upstream: the client's body passes
//! through with only `model` rewritten to the upstream's name, the provider's
//! key replaces anything the client sent, and a keep-alive race on a pooled
//! connection is retried once on a fresh one.

use super::relay;
use super::{Api, Attempt};
use crate::client::{read_response_head, UpstreamConn, UpstreamHead};
use crate::config::{HttpProvider, Provider, Target};
use crate::error::GatewayError;
use crate::io::write_all_timeout;
use crate::server::{ClientConn, Outcome, Request};
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use shardgate_proto::h1::{write_content_length, write_header, Method};
use shardgate_proto::json::{patch_object, top_level_members, write_json_string, Edit};
use shardgate_proto::openai::RequestFacts;
use std::rc::Rc;

#[allow(clippy::too_many_arguments)]
pub async fn forward(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    req: &Request,
    facts: &RequestFacts,
    api: Api,
    target: &Target,
    provider: &Provider,
    http: &HttpProvider,
    rid: &str,
) -> Attempt {
    let Some(Some(ep)) = shard.endpoints.get(target.provider) else {
        return Attempt::Failed(GatewayError::UpstreamConnect {
            provider: provider.name.clone(),
            reason: "no endpoint".into(),
        });
    };
    let bytes = match upstream_request(req, facts, api, target, http, &ep.authority, rid) {
        Ok(b) => b,
        Err(e) => return Attempt::Failed(e),
    };
    // The client may leave while the upstream thinks: racing the exchange with
    // the client's close drops the upstream connection, which cancels it.
    let exchange = futures_lite::future::or(
        async { Some(exchange(shard, target.provider, &provider.name, &bytes).await) },
        async {
            conn.closed().await;
            None
        },
    )
    .await;
    let (up, head) = match exchange {
        None => return Attempt::Done(Outcome::CLOSE),
        Some(Err(e)) => return Attempt::Failed(e),
        Some(Ok(x)) => x,
    };
    if head.status >= 300 {
        return relay::upstream_error(shard, up, head, target.provider, &provider.name).await;
    }
    let streamed = facts.stream && head.is_event_stream();
    let answer = relay::Answer {
        up,
        head,
        provider: target.provider,
        name: &provider.name,
        served_by: format!("{}/{}", provider.name, target.model),
    };
    if streamed {
        relay::stream(shard, conn, answer, rid).await
    } else {
        relay::full(shard, conn, answer, rid).await
    }
}

/// Request head and body for the upstream, built in one buffer.
fn upstream_request(
    req: &Request,
    facts: &RequestFacts,
    api: Api,
    target: &Target,
    http: &HttpProvider,
    authority: &str,
    rid: &str,
) -> Result<Vec<u8>, GatewayError> {
    let members = top_level_members(&req.body).map_err(|e| GatewayError::BadBody(e.to_string()))?;
    let mut model = Vec::with_capacity(target.model.len() + 2);
    write_json_string(&mut model, &target.model);
    let body = patch_object(
        &req.body,
        &members,
        &[Edit::Set {
            key: "model",
            value: &model,
        }],
    );
    let mut out = Vec::with_capacity(384 + body.len());
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(http.base.path.as_bytes());
    out.extend_from_slice(api.upstream_suffix().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_header(&mut out, "host", authority.as_bytes());
    if let Some(key) = &http.api_key {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(key.expose().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    write_header(&mut out, "content-type", b"application/json");
    let accept: &[u8] = if facts.stream {
        b"text/event-stream"
    } else {
        b"application/json"
    };
    write_header(&mut out, "accept", accept);
    write_header(
        &mut out,
        "user-agent",
        concat!("shardgate/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    write_header(&mut out, "x-request-id", rid.as_bytes());
    write_content_length(&mut out, body.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Ok(out)
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
