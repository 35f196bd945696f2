//! Remote guardrail checks: the prompt's texts POSTed to an HTTP endpoint,
//! whose reply allows, denies or redacts them.
//!
//! One exchange on a pooled connection of the shard, bounded as a whole
//! by the check's `timeout` (connect, send, head and body together). A
//! failure of any kind is the check's `on_error`: `fail_open` lets the
//! request on (recorded as `error`), `fail_closed` refuses it with a 503.

use crate::client::{read_response_head, BodyReader, Endpoint};
use crate::config::Secret;
use crate::io::write_all_timeout;
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use serde::Deserialize;
use shardgate_policy::guardrails::FailMode;
use shardgate_proto::h1::{write_header, Method};
use std::time::{Duration, Instant};

/// A reply larger than this is a failure.
const MAX_REPLY: usize = 4 << 20;

/// One webhook check, ready to call from a shard.
pub struct Webhook {
    pub ep: Endpoint,
    pub timeout: Duration,
    pub on_error: FailMode,
    /// Runs while the model answers, its answer held until the verdict.
    pub parallel: bool,
    /// Written as they are after the fixed headers.
    pub headers: Vec<(String, Secret)>,
}

/// What a webhook said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Allow,
    Deny {
        reason: Option<String>,
    },
    /// One text for each sent, in order.
    Redact(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("answered something that is not a verdict: {0}")]
    Reply(String),
}

impl WebhookError {
    /// What a client may be told: no detail of the webhook's answer (it
    /// could echo the prompt).
    pub fn summary(&self) -> String {
        match self {
            WebhookError::Connect(_) => "cannot connect".into(),
            WebhookError::Timeout(d) => format!("no answer within {d:?}"),
            WebhookError::Status(s) => format!("answered HTTP {s}"),
            WebhookError::Reply(_) => "answered something that is not a verdict".into(),
        }
    }
}

#[derive(Deserialize)]
struct Wire {
    action: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    texts: Option<Vec<String>>,
}

/// Calls `hook` with `body` (the JSON the module docs name); `sent` is how
/// many texts it carries (a `redact` reply must give as many back).
pub async fn call(
    shard: &Shard,
    hook: &Webhook,
    body: &[u8],
    sent: usize,
) -> Result<Reply, WebhookError> {
    if hook.ep.base.tls && hook.ep.tls.is_none() {
        // Never in the clear what was meant for TLS.
        return Err(WebhookError::Connect("no TLS configuration".into()));
    }
    // One bound on the whole exchange, whatever step waits.
    futures_lite::future::or(exchange(shard, hook, body, sent), async {
        glommio::timer::sleep(hook.timeout).await;
        Err(WebhookError::Timeout(hook.timeout))
    })
    .await
}

async fn exchange(
    shard: &Shard,
    hook: &Webhook,
    body: &[u8],
    sent: usize,
) -> Result<Reply, WebhookError> {
    let started = Instant::now();
    let left = || hook.timeout.saturating_sub(started.elapsed());
    let request = request_bytes(hook, body);
    let mut up = shard
        .pool
        .checkout(&hook.ep)
        .await
        .map_err(|e| WebhookError::Connect(e.to_string()))?;
    let sent_ok = async {
        write_all_timeout(&mut up.stream, &request, left()).await?;
        up.stream.flush().await
    }
    .await;
    if sent_ok.is_err() {
        return Err(WebhookError::Connect(
            "the connection broke while sending".into(),
        ));
    }
    let head = read_response_head(&mut up, left(), Method::Post)
        .await
        .map_err(|e| match e {
            crate::client::ReadError::Timeout => WebhookError::Timeout(hook.timeout),
            other => WebhookError::Reply(other.to_string()),
        })?;
    let mut reader = BodyReader::new(head.framing);
    let bytes = reader
        .read_to_end(&mut up, left(), MAX_REPLY)
        .await
        .map_err(|e| match e {
            crate::client::ReadError::Timeout => WebhookError::Timeout(hook.timeout),
            other => WebhookError::Reply(other.to_string()),
        })?;
    if head.keep_alive {
        shard.pool.checkin(hook.ep.slot, up);
    }
    if head.status != 200 {
        return Err(WebhookError::Status(head.status));
    }
    parse_reply(&bytes, sent)
}

fn parse_reply(bytes: &[u8], sent: usize) -> Result<Reply, WebhookError> {
    let w: Wire = serde_json::from_slice(bytes).map_err(|e| WebhookError::Reply(e.to_string()))?;
    match w.action.as_str() {
        "allow" => Ok(Reply::Allow),
        "deny" => Ok(Reply::Deny {
            reason: w.reason.map(|r| r.chars().take(200).collect()),
        }),
        "redact" => match w.texts {
            Some(t) if t.len() == sent => Ok(Reply::Redact(t)),
            Some(t) => Err(WebhookError::Reply(format!(
                "`redact` gave {} texts for {sent}",
                t.len()
            ))),
            None => Err(WebhookError::Reply("`redact` without `texts`".into())),
        },
        other => Err(WebhookError::Reply(format!(
            "`action` is `{}`, not allow, deny or redact",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

fn request_bytes(hook: &Webhook, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"POST ");
    let path = if hook.ep.base.path.is_empty() {
        "/"
    } else {
        hook.ep.base.path.as_str()
    };
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_header(&mut out, "host", hook.ep.authority.as_bytes());
    write_header(&mut out, "content-type", b"application/json");
    write_header(&mut out, "accept", b"application/json");
    write_header(
        &mut out,
        "content-length",
        body.len().to_string().as_bytes(),
    );
    for (k, v) in &hook.headers {
        write_header(&mut out, k, v.expose().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_strictly() {
        assert_eq!(
            parse_reply(br#"{"action":"allow"}"#, 1).unwrap(),
            Reply::Allow
        );
        assert_eq!(
            parse_reply(br#"{"action":"deny","reason":"toxic"}"#, 1).unwrap(),
            Reply::Deny {
                reason: Some("toxic".into())
            }
        );
        assert_eq!(
            parse_reply(br#"{"action":"redact","texts":["a","b"]}"#, 2).unwrap(),
            Reply::Redact(vec!["a".into(), "b".into()])
        );
        for bad in [
            &br#"{"action":"redact","texts":["a"]}"#[..],
            br#"{"action":"maybe"}"#,
            br#"{"verdict":"allow"}"#,
            b"not json",
        ] {
            assert!(
                parse_reply(bad, 2).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
