//! The built-in `mock` provider: an upstream that lives in the process.
//! It answers with deterministic OpenAI-shaped text, paced by its configured
//! time to first token and token rate, so the default config works with no
//! keys and no network. The model name can pick a behaviour (`mock-429`,
//! `mock-tokens-50-ttft-200ms`, `mock-cut-after-3`, ...), which lets failover
//! be exercised without an upstream.
//!
//! It is an [`Answer`] like any upstream's: a head, then a body source the
//! relay reads, frames, taps for usage and translates into the client's
//! dialect exactly as it does an HTTP upstream's. So whatever the request
//! path does to answers (routing, metering, guardrails, caching) applies to
//! the mock without a second implementation.
//!
//! Memory per answer is bounded like a relayed one's, whatever
//! `output_tokens` says: a stream is generated as it is read, at most
//! [`WRITE_BATCH`] bytes at a time; a whole answer larger than
//! `upstream.max_response_bytes` is refused as a real upstream's would be.

use super::attempt::Waits;
use super::relay::{Answer, Source};
use super::{Api, Call};
use crate::client::{BodyStep, ReadError};
use crate::config::{MockProvider, Target};
use crate::error::GatewayError;
use glommio::timer::sleep;
use shardgate_proto::mock::{self, Behaviour, ChunkKind};
use shardgate_proto::openai::error_body;
use std::time::Duration;

/// Stream bytes generated per read: large enough that a fast stream costs
/// few writes, small enough that a client that does not read pins little
/// memory.
pub const WRITE_BATCH: usize = 16 * 1024;

/// Starts the mock's answer to `call` as the model `target.model`: waits its
/// time to first token, then hands back the head (or the failure the model
/// name asked for).
pub async fn start<'a>(
    call: &'a Call<'a>,
    provider: &'a str,
    cfg: &MockProvider,
    target: &'a Target,
    waits: Waits,
) -> Result<Answer<'a>, GatewayError> {
    let (req, facts) = (call.req, call.facts);
    // Held to the same shape an upstream would demand.
    call.client.rules().check_shape(call)?;
    let defaults = Behaviour {
        output_tokens: cfg.output_tokens,
        ttft_ms: cfg.ttft.as_millis() as u64,
        tokens_per_second: cfg.tokens_per_second,
        ..Behaviour::default()
    };
    let b = mock::behaviour(&target.model, defaults);
    if b.context_limit
        .is_some_and(|limit| mock::estimate_tokens(req.body.len()) > limit)
    {
        return Err(GatewayError::UpstreamStatus {
            provider: provider.to_owned(),
            status: 400,
            body: error_body(
                &mock::context_length_message(b.context_limit.unwrap_or_default()),
                "invalid_request_error",
                None,
                Some("context_length_exceeded"),
            ),
            retry_after: None,
        });
    }
    if let Some(status) = b.fail_status {
        return Err(GatewayError::UpstreamStatus {
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
    // No head comes before the attempt's first-token deadline: it applies
    // as it would to an upstream.
    let ttft = Duration::from_millis(b.ttft_ms);
    if b.hang || ttft > waits.first_token {
        sleep(waits.first_token).await;
        return Err(GatewayError::UpstreamTimeout {
            provider: provider.to_owned(),
        });
    }
    if !ttft.is_zero() {
        sleep(ttft).await;
    }
    let ctx = call.reply_ctx(&target.model);
    let n = b
        .output_tokens
        .min(facts.max_tokens.map_or(usize::MAX, |m| m as usize));
    let kind = match call.api {
        Api::Embeddings => Kind::Embeddings,
        Api::Completions => Kind::Completion,
        Api::ChatCompletions | Api::Messages | Api::Responses => Kind::Chat,
    };
    let tool = b
        .call_tool_at
        .filter(|_| kind == Kind::Chat)
        .map(|at| target.model[at..].to_owned());
    let body = MockBody {
        tool,
        kind: match call.api {
            Api::Embeddings => Kind::Embeddings,
            Api::Completions => Kind::Completion,
            Api::ChatCompletions | Api::Messages | Api::Responses => Kind::Chat,
        },
        finish: if n < b.output_tokens {
            "length"
        } else if b.call_tool_at.is_some() && kind == Kind::Chat {
            "tool_calls"
        } else {
            "stop"
        },
        prompt_tokens: mock::estimate_tokens(req.body.len()),
        usage_null: ctx.include_usage,
        id: ctx.id,
        model: ctx.model,
        created: ctx.created,
        n,
        pace: b
            .tokens_per_second
            .map(|t| Duration::from_secs_f64(1.0 / f64::from(t.max(1)))),
        cut_after: b.cut_after,
        stage: Stage::Start,
        buf: Vec::new(),
        request: if call.api == Api::Embeddings {
            req.body.to_vec()
        } else {
            Vec::new()
        },
    };
    let streamed = facts.stream && body.kind != Kind::Embeddings;
    let names = (
        provider,
        target.model.as_str(),
        target.head_lines.as_slice(),
    );
    Ok(Answer::in_process(
        call,
        Source::Mock(Box::new(body)),
        streamed,
        names,
        waits.idle,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
    Embeddings,
}

/// How far a stream has been generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    /// The next token to generate.
    Token(usize),
    Done,
}

/// The mock's answer body, generated as it is read. Streams always end with
/// the usage chunk, as an upstream asked for it does: the relay withholds
/// it from clients that did not ask, and meters from it.
pub struct MockBody {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    /// Tokens to generate.
    n: usize,
    finish: &'static str,
    /// Chunks carry `"usage":null` (the client asked for usage).
    usage_null: bool,
    /// Between tokens, when paced.
    pace: Option<Duration>,
    /// The stream breaks before this token.
    cut_after: Option<usize>,
    stage: Stage,
    buf: Vec<u8>,
    /// An embeddings request's body (its inputs are embedded).
    request: Vec<u8>,
    /// Chat: the tool the answer calls after its text.
    tool: Option<String>,
}

impl MockBody {
    /// The next stretch of a stream: one token when paced, else up to
    /// [`WRITE_BATCH`] bytes; `End` with the last of it.
    pub async fn step(&mut self, on_data: &mut dyn FnMut(&[u8])) -> Result<BodyStep, ReadError> {
        self.buf.clear();
        loop {
            match self.stage {
                Stage::Start => {
                    if self.kind == Kind::Chat {
                        self.chunk(ChunkKind::Role);
                    }
                    self.stage = Stage::Token(0);
                }
                Stage::Token(i) if i == self.n => {
                    self.finish_stream();
                    self.stage = Stage::Done;
                    on_data(&self.buf);
                    return Ok(BodyStep::End);
                }
                Stage::Token(i) => {
                    if self.cut_after == Some(i) {
                        if self.buf.is_empty() {
                            return Err(ReadError::Eof { any_bytes: true });
                        }
                        break;
                    }
                    if let Some(p) = self.pace {
                        if !self.buf.is_empty() {
                            break;
                        }
                        sleep(p).await;
                    }
                    match self.kind {
                        Kind::Chat => self.chunk(ChunkKind::Content(mock::token(i))),
                        _ => self.completion_chunk(mock::token(i), None),
                    }
                    self.stage = Stage::Token(i + 1);
                    if self.buf.len() >= WRITE_BATCH {
                        break;
                    }
                }
                Stage::Done => return Ok(BodyStep::End),
            }
        }
        on_data(&self.buf);
        Ok(BodyStep::Data)
    }

    /// The whole answer, after the time its tokens take.
    pub async fn read_to_end(&mut self, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        if self.kind == Kind::Embeddings {
            let inputs = embedding_inputs(&self.request);
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            mock::embeddings(&mut body, &self.model, &refs, 16);
            return Ok(body);
        }
        if mock::text_len(self.n) > max {
            return Err(ReadError::TooLarge(max));
        }
        if let Some(p) = self.pace {
            sleep(p * self.n as u32).await;
        }
        if let Some(tool) = &self.tool {
            mock::chat_completion_calling(
                &mut body,
                &self.id,
                &self.model,
                self.created,
                self.prompt_tokens,
                self.n,
                tool,
            );
            return Ok(body);
        }
        let render = match self.kind {
            Kind::Completion => mock::completion,
            _ => mock::chat_completion,
        };
        render(
            &mut body,
            &self.id,
            &self.model,
            self.created,
            self.prompt_tokens,
            self.n,
            self.finish,
        );
        Ok(body)
    }

    fn chunk(&mut self, kind: ChunkKind<'_>) {
        let (id, model) = (&self.id, &self.model);
        let usage_null = self.usage_null && !matches!(kind, ChunkKind::Usage { .. });
        mock::chat_chunk_event(&mut self.buf, id, model, self.created, kind, usage_null);
    }

    fn completion_chunk(&mut self, text: &str, finish: Option<&str>) {
        let (id, model) = (&self.id, &self.model);
        mock::completion_chunk_event(&mut self.buf, id, model, self.created, text, finish);
    }

    /// The finish chunk, the usage chunk and `[DONE]`.
    fn finish_stream(&mut self) {
        let (prompt_tokens, completion_tokens) = (self.prompt_tokens, self.n as u64);
        match self.kind {
            Kind::Chat => {
                if let Some(tool) = self.tool.take() {
                    // The name first, its arguments in a chunk of their
                    // own, as models stream them.
                    self.chunk(ChunkKind::ToolStart(&tool));
                    self.chunk(ChunkKind::ToolArgs(mock::TOOL_ARGUMENTS));
                }
                self.chunk(ChunkKind::Finish(self.finish));
                self.chunk(ChunkKind::Usage {
                    prompt_tokens,
                    completion_tokens,
                });
            }
            _ => {
                self.completion_chunk("", Some(self.finish));
                let (id, model) = (&self.id, &self.model);
                mock::completion_usage_event(
                    &mut self.buf,
                    id,
                    model,
                    self.created,
                    prompt_tokens,
                    completion_tokens,
                );
            }
        }
        self.buf.extend_from_slice(mock::DONE_EVENT);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(kind: Kind, n: usize, pace: Option<Duration>, cut_after: Option<usize>) -> MockBody {
        MockBody {
            kind,
            id: "chatcmpl-1".into(),
            model: "mock-1".into(),
            created: 1,
            prompt_tokens: 4,
            n,
            finish: "stop",
            usage_null: false,
            pace,
            cut_after,
            stage: Stage::Start,
            buf: Vec::new(),
            request: Vec::new(),
            tool: None,
        }
    }

    /// Every step's bytes, and how the body ended.
    fn drain(mut b: MockBody) -> (Vec<Vec<u8>>, Result<(), ReadError>) {
        glommio::LocalExecutor::default().run(async move {
            let mut steps = Vec::new();
            loop {
                let mut got = Vec::new();
                match b.step(&mut |d| got.extend_from_slice(d)).await {
                    Ok(BodyStep::Data) => steps.push(got),
                    Ok(BodyStep::End) => {
                        steps.push(got);
                        return (steps, Ok(()));
                    }
                    Err(e) => return (steps, Err(e)),
                }
            }
        })
    }

    fn events(steps: &[Vec<u8>]) -> Vec<String> {
        let all: Vec<u8> = steps.concat();
        String::from_utf8(all)
            .unwrap_or_default()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_stream_ends_with_its_usage_chunk_then_done() {
        let (steps, end) = drain(body(Kind::Chat, 3, None, None));
        assert!(end.is_ok());
        let ev = events(&steps);
        // Role, three tokens, finish, usage, [DONE].
        assert_eq!(ev.len(), 7, "{ev:?}");
        assert!(ev[5].contains(r#""choices":[]"#) && ev[5].contains(r#""completion_tokens":3"#));
        assert_eq!(ev[6], "data: [DONE]");
        // Unpaced, it all fits one batch.
        assert_eq!(steps.len(), 1);
    }

    #[test]
    fn a_paced_stream_hands_out_a_token_at_a_time() {
        let (steps, _) = drain(body(Kind::Chat, 3, Some(Duration::from_millis(1)), None));
        // Role, then each token (the last with the stream's end).
        assert_eq!(steps.len(), 4);
    }

    #[test]
    fn a_cut_stream_breaks_after_its_tokens_as_a_dropped_upstream_would() {
        let (steps, end) = drain(body(Kind::Chat, 10, None, Some(3)));
        assert!(matches!(end, Err(ReadError::Eof { any_bytes: true })));
        let ev = events(&steps);
        assert_eq!(ev.len(), 4, "role and three tokens: {ev:?}");
    }

    #[test]
    fn a_long_stream_comes_in_bounded_batches() {
        let (steps, end) = drain(body(Kind::Completion, 20_000, None, None));
        assert!(end.is_ok());
        assert!(steps.len() > 1);
        assert!(steps.iter().all(|s| s.len() < WRITE_BATCH + 1024));
        let ev = events(&steps);
        assert!(ev[ev.len() - 2].contains(r#""completion_tokens":20000"#));
    }
}
