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

use super::capture::StreamCapture;
use super::dialect::{json_of_event, openai_usage, ClientDialect, Tap};
use super::egress::{push_chunk, StreamEgress};
use super::mock::MockBody;
use super::plan::Reply;
use super::route::Failure;
use super::Call;
use crate::client::{AnswerHead, BodyReader, BodyStep, ReadError, UpstreamConn, UpstreamHead};
use crate::config::{HttpProvider, Wire};
use crate::error::GatewayError;
use crate::guardrails::stream::StreamGuard;
use crate::guardrails::Verdict;
use crate::server::{respond, ClientConn, Outcome};
use crate::shard::Shard;
use shardgate_policy::guardrails::Stage;
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_proto::openai::Usage;
use shardgate_proto::sse::SseFramer;
use shardgate_providers::chat::ChatResponse;
use shardgate_providers::{gemini, KnownSecrets, StreamTranslator, TranslateError};
use std::time::Duration;

/// An answer whose head has been read, with what relaying it needs to
/// know about where it came from.
pub struct Answer<'a> {
    pub source: Source,
    pub head: AnswerHead,
    /// The provider's name.
    pub name: &'a str,
    /// `x-shardgate-model: <route>` (set by the route), and the lines
    /// naming the target: the answer's head carries both.
    pub alias_line: &'a [u8],
    pub target_lines: &'a [u8],
    /// The HTTP provider that answered: its wire, for [`Reply::FromWire`]
    /// answers, and the credentials sent to it, for scrubbing what it says
    /// on error paths. None for an answer made in the process (it speaks
    /// OpenAI and knows no secret).
    pub http: Option<&'a HttpProvider>,
    pub reply: Reply,
    pub client: ClientDialect,
    /// The upstream model (what is metered and priced).
    pub model: &'a str,
    pub call: &'a Call<'a>,
    /// The longest silence between two reads of the answer (its route's
    /// idle timeout).
    pub idle: Duration,
}

/// Nothing to scrub from what an answer made in the process says.
static NO_SECRETS: KnownSecrets = KnownSecrets::none();

impl<'a> Answer<'a> {
    /// The upstream's wire (None for an answer made in the process).
    pub fn wire(&self) -> Option<&'a Wire> {
        self.http.map(|h| &h.wire)
    }

    /// What to scrub from what the upstream says.
    pub fn secrets(&self) -> &'a KnownSecrets {
        self.http.map_or(&NO_SECRETS, |h| &h.secrets)
    }

    /// An answer made in the process (the mock's, a kept one): a 200 whose
    /// body `source` is OpenAI chat, whole or a stream, which the relay
    /// translates into the client's dialect as it does an upstream's.
    pub fn in_process(
        call: &'a Call<'a>,
        source: Source,
        streamed: bool,
        (name, model, target_lines): (&'a str, &'a str, &'a [u8]),
        idle: Duration,
    ) -> Self {
        let content_type: &[u8] = if streamed {
            b"text/event-stream"
        } else {
            b"application/json"
        };
        Answer {
            source,
            head: AnswerHead {
                status: 200,
                content_type: Some(content_type.into()),
                content_type_end_to_end: true,
            },
            name,
            alias_line: b"",
            target_lines,
            http: None,
            reply: match call.client {
                ClientDialect::OpenAi => Reply::Same,
                ClientDialect::Anthropic | ClientDialect::Responses => Reply::FromOpenAi,
            },
            client: call.client,
            model,
            call,
            idle,
        }
    }
}

/// Where an answer's body comes from.
pub enum Source {
    /// An upstream connection, read by the head's framing; back to the
    /// provider's pool once read to the end with keep-alive allowed.
    Http {
        up: UpstreamConn,
        reader: BodyReader,
        keep_alive: bool,
        /// The endpoint's stack in the pool.
        slot: usize,
    },
    /// The built-in mock, generated as it is read. Boxed: inline, it would
    /// double the size of every answer, which moves a few times per request.
    Mock(Box<MockBody>),
    /// A kept answer from the response cache.
    Cached(super::replay::ReplayBody),
    /// Read to its end and let go (an upstream connection back to its pool).
    Released,
}

impl Source {
    pub fn http(up: UpstreamConn, head: &UpstreamHead, slot: usize) -> Self {
        Source::Http {
            up,
            reader: BodyReader::new(head.framing),
            keep_alive: head.keep_alive,
            slot,
        }
    }

    /// Hands the next body bytes to `on_data` (waiting at most `wait` for
    /// an upstream's); `End` once the body is complete.
    async fn step(
        &mut self,
        wait: Duration,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<BodyStep, ReadError> {
        match self {
            Source::Http { up, reader, .. } => reader.step(up, wait, on_data).await,
            Source::Mock(m) => m.step(on_data).await,
            Source::Cached(c) => c.step(on_data),
            Source::Released => Ok(BodyStep::End),
        }
    }

    /// The whole remaining body, at most `max` bytes.
    async fn read_to_end(&mut self, wait: Duration, max: usize) -> Result<Vec<u8>, ReadError> {
        match self {
            Source::Http { up, reader, .. } => reader.read_to_end(up, wait, max).await,
            Source::Mock(m) => m.read_to_end(max).await,
            Source::Cached(c) => Ok(c.read_to_end()),
            Source::Released => Ok(Vec::new()),
        }
    }

    /// Body bytes read with the head: the first step hands them out
    /// without a wait.
    fn has_buffered(&self) -> bool {
        matches!(self, Source::Http { up, .. } if !up.rbuf.is_empty())
    }

    /// The body was read to its end: an upstream connection may serve again.
    fn finished(&mut self, shard: &Shard) {
        if let Source::Http {
            up,
            keep_alive: true,
            slot,
            ..
        } = std::mem::replace(self, Source::Released)
        {
            shard.pool.checkin(slot, up);
        }
    }
}

/// Writes `answer` to the client, whole or as a stream. A failure before
/// any byte was written comes back to the route, which may try elsewhere.
pub async fn deliver(conn: &mut ClientConn, answer: &mut Answer<'_>) -> Result<Outcome, Failure> {
    if let Some(hold) = &answer.call.hold {
        // Parallel webhooks have not released it yet: no byte goes out.
        if let Err(refused) = hold.wait().await {
            // The model answered all the same: what it used is charged.
            Box::pin(meter_unsent(answer)).await;
            return Err(Failure::classify(refused));
        }
    }
    let streamed = answer.call.facts.stream
        && (answer.head.is_event_stream() || answer.head.is_aws_event_stream());
    if streamed {
        // Boxed: a stream's relay state (framer, translators) would size
        // every request's future, moved into its box per request, by ~2 KiB.
        Ok(Box::pin(stream(conn, answer)).await)
    } else {
        full(conn, answer).await.map_err(Failure::classify)
    }
}

/// Meters an answer that will not be sent (a parallel webhook refused
/// it): read to its end (a stream within the drain's bounds) for the
/// provider's usage, else estimated.
async fn meter_unsent(answer: &mut Answer<'_>) {
    let call = answer.call;
    let shard = call.shard;
    let settings = shard.pool.settings();
    let streamed =
        call.facts.stream && (answer.head.is_event_stream() || answer.head.is_aws_event_stream());
    if streamed {
        let pipe = Pipe::new(answer, settings.max_event_bytes);
        match drain(&mut answer.source, pipe, answer.idle, shard).await {
            Ok((usage, cut, events)) => meter_stream(call, usage, cut, events),
            Err(mut pipe) => {
                let (usage, events) = pipe.abandon();
                meter_stream(call, usage, true, events);
            }
        }
        return;
    }
    let body = answer
        .source
        .read_to_end(answer.idle, settings.max_response_bytes)
        .await;
    let usage = body.ok().and_then(|body| {
        answer.source.finished(shard);
        match answer.reply {
            Reply::Same => answer.client.rules().usage_of_body(&body),
            Reply::FromOpenAi => ClientDialect::OpenAi.rules().usage_of_body(&body),
            Reply::FromWire => answer
                .wire()
                .and_then(|w| {
                    let ctx = call.reply_ctx(answer.model);
                    w.provider().response_to_openai(&body, &ctx).ok()
                })
                .map(|(_, u)| openai_usage(&u)),
            Reply::GeminiEmbeddings => None,
        }
    });
    meter_stream(call, usage, usage.is_none(), 0);
}

/// The error label of a request whose client left before its answer ended.
pub const CLIENT_LEFT: &str = "client_left";

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

/// A reason built from what the upstream sent (a JSON error quotes the
/// offending value, a translator's error its input): it becomes both the
/// client's message and a log line, so the upstream's credentials and
/// anything shaped like one are removed first.
fn upstream_reason(reason: &str, secrets: &KnownSecrets) -> String {
    shardgate_providers::redact_secrets(reason, secrets)
}

/// A whole (non-streamed) response: read it to the end within the response
/// size limit, then answer in one write.
async fn full(conn: &mut ClientConn, answer: &mut Answer<'_>) -> Result<Outcome, GatewayError> {
    let (wire, secrets) = (answer.wire(), answer.secrets());
    let Answer {
        source,
        head,
        name,
        alias_line,
        target_lines,
        reply,
        client,
        model,
        call,
        idle,
        ..
    } = answer;
    let client = *client;
    let (shard, rid) = (call.shard, call.rid);
    let settings = shard.pool.settings();
    let read = futures_lite::future::or(
        async { Some(source.read_to_end(*idle, settings.max_response_bytes).await) },
        async {
            conn.closed().await;
            None
        },
    )
    .await;
    let body = match read {
        None => {
            conn.note_error(CLIENT_LEFT);
            return Ok(Outcome::CLOSE);
        }
        Some(Err(e)) => return Err(read_failed(name, e)),
        Some(Ok(b)) => b,
    };
    source.finished(shard);
    let mut usage = None;
    // The answer's OpenAI form, for a miss the cache keeps.
    let capture = call.capture_limit.is_some() && head.status == 200;
    let mut openai = None;
    let translated = match reply {
        Reply::Same => {
            usage = client.rules().usage_of_body(&body);
            Ok(body)
        }
        Reply::FromOpenAi => {
            usage = ClientDialect::OpenAi.rules().usage_of_body(&body);
            if capture {
                openai = Some(body.clone());
            }
            client.rules().success_body(body, &call.render(model))
        }
        Reply::FromWire => match wire {
            Some(wire) => wire
                .provider()
                .response_to_openai(&body, &call.reply_ctx(model))
                .and_then(|(b, u)| {
                    usage = Some(openai_usage(&u));
                    if capture {
                        openai = Some(b.clone());
                    }
                    client.rules().success_body(b, &call.render(model))
                }),
            None => Err(TranslateError::Invalid("no wire to translate from".into())),
        },
        Reply::GeminiEmbeddings => {
            gemini::embeddings_response(&body, model, call.facts.base64_embeddings)
        }
    };
    call.meter(usage, usage.is_none());
    let mut body = match translated {
        Ok(b) => b,
        Err(e) => {
            return Err(GatewayError::UpstreamTranslate {
                provider: name.to_owned(),
                reason: upstream_reason(&e.to_string(), secrets),
            })
        }
    };
    if capture {
        let openai = match reply {
            Reply::Same => super::capture::same_dialect(call, client, wire, model, &body),
            Reply::GeminiEmbeddings => Some(body.clone()),
            Reply::FromOpenAi | Reply::FromWire => openai,
        };
        if let Some(o) = openai {
            super::capture::keep(call, name, model, o, usage);
        }
    }
    if head.status == 200 {
        match crate::guardrails::check_answer(
            &call.generation.guardrails,
            &call.output_checks,
            &call.tool_call_checks,
            &body,
            &mut call.guard_records.borrow_mut(),
        ) {
            Verdict::Pass => {}
            Verdict::Redacted(b) => body = b,
            Verdict::Blocked(e) => return Err(e),
        }
        if !call.output_hooks.is_empty() {
            // Boxed: a webhook's exchange inline would size every answer's
            // future for the few callers with output hooks.
            let asked = Box::pin(crate::guardrails::check_output_hooks(
                shard,
                call.generation,
                &call.output_hooks,
                &body,
                &call.hook_actor,
                rid,
                &call.guard_records,
            ))
            .await;
            match asked {
                Verdict::Pass => {}
                Verdict::Redacted(b) => body = b,
                Verdict::Blocked(e) => return Err(e),
            }
        }
    }
    // The tool policy judges (and audits) what the guardrails left.
    if let Some(guard) = &call.guard {
        if let Some(stripped) = guard.borrow_mut().check_body(&body)? {
            body = stripped;
        }
    }
    if call.turn.as_ref().is_some_and(|t| t.store) && head.status == 200 {
        // Checked as JSON and kept as it is, not built into a tree.
        if let Ok(response) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(&body) {
            super::conversation::commit(call, response, name).await;
        }
    }
    let content_type = match (reply, &head.content_type) {
        (Reply::Same, Some(ct)) if head.content_type_end_to_end => ct,
        _ => &b"application/json"[..],
    };
    let bytes = respond::full_with(
        head.status,
        content_type,
        &call.lines(alias_line, target_lines),
        &call.extra(),
        &body,
        rid,
        false,
    );
    Ok(match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    })
}

/// The client's side of a translated stream.
fn egress_for(answer: &Answer<'_>) -> StreamEgress {
    StreamEgress::from_openai(
        answer.client,
        &answer.call.render(answer.model),
        answer.secrets(),
    )
}

/// How stream bytes from the upstream become the client's.
enum Pipe {
    /// Same dialect: events relayed as they came, one chunk each, watched
    /// for usage.
    Same(SseFramer, Tap),
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
            Reply::Same | Reply::GeminiEmbeddings => Pipe::Same(
                SseFramer::new(max_event_bytes),
                Tap::new(
                    answer.client,
                    answer.call.facts.include_usage,
                    answer.call.turn.as_ref().is_some_and(|t| t.store)
                        || !answer.call.output_hooks.is_empty(),
                ),
            ),
            Reply::FromOpenAi => Pipe::Translate(Box::new(Translating {
                wire: None,
                egress: egress_for(answer),
                mid: Vec::new(),
            })),
            Reply::FromWire => Pipe::Translate(Box::new({
                let ctx = answer.call.reply_ctx(answer.model);
                Translating {
                    egress: egress_for(answer),
                    wire: answer
                        .wire()
                        .and_then(|w| w.provider().stream_translator(ctx, answer.secrets())),
                    mid: Vec::new(),
                }
            })),
        }
    }

    /// Appends what `data` makes for the client to `out`; a miss the
    /// cache keeps is read by `capture` on the way.
    fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        mut capture: Option<&mut StreamCapture>,
    ) -> Result<(), String> {
        match self {
            Pipe::Same(framer, tap) => framer
                .feed(data, |event| {
                    if let Some(c) = &mut capture {
                        c.feed(event.raw);
                    }
                    if tap.relay(event.raw) {
                        encode_chunk_header(event.raw.len(), out);
                        out.extend_from_slice(event.raw);
                        out.extend_from_slice(CHUNK_END);
                    }
                })
                .map_err(|e| e.to_string()),
            Pipe::Translate(t) => match &mut t.wire {
                Some(w) => {
                    t.mid.clear();
                    let r = w.on_bytes(data, &mut t.mid).map_err(|e| e.to_string());
                    if let Some(c) = capture {
                        c.feed(&t.mid);
                    }
                    t.egress.push(&t.mid, out).map_err(|e| e.to_string())?;
                    r
                }
                None => {
                    if let Some(c) = capture {
                        c.feed(data);
                    }
                    t.egress.push(data, out).map_err(|e| e.to_string())
                }
            },
        }
    }

    /// A stream that ends early (the client left, the upstream failed):
    /// the usage reported so far, else the translators' estimate from what
    /// was relayed (their closing events are dropped; `fail` may still
    /// follow), and the content events relayed by a same-dialect pipe.
    fn abandon(&mut self) -> (Option<Usage>, u64) {
        match self {
            Pipe::Same(_, tap) => (tap.usage, tap.events),
            Pipe::Translate(t) => {
                let mut discard = Vec::new();
                let summary = match t.wire.take() {
                    Some(w) => Some(w.finish(&mut discard)),
                    None => t.egress.abandon(),
                };
                let usage = summary
                    .filter(|s| s.usage.input_tokens.is_some() || s.usage.output_tokens.is_some())
                    .map(|s| openai_usage(&s.usage));
                (usage, 0)
            }
        }
    }

    /// The upstream body ended: close the client's stream. Returns the
    /// usage reported, whether the upstream ended before its end marker,
    /// and a Responses stream's final `response` object.
    fn finish(
        self,
        out: &mut Vec<u8>,
        capture: Option<&mut StreamCapture>,
    ) -> (Option<Usage>, bool, Option<serde_json::Value>) {
        match self {
            Pipe::Same(mut framer, mut tap) => {
                if let Some(rest) = framer.finish() {
                    // An unterminated last event: pass it on, terminated.
                    let mut tail = rest.to_vec();
                    tail.extend_from_slice(b"\n\n");
                    if let Some(c) = capture {
                        c.feed(&tail);
                    }
                    if tap.relay(&tail) {
                        push_chunk(out, &tail);
                    }
                }
                out.extend_from_slice(LAST_CHUNK);
                (tap.usage, !tap.ended, tap.response)
            }
            Pipe::Translate(t) => {
                let Translating {
                    wire,
                    mut egress,
                    mut mid,
                } = *t;
                let mut summary = None;
                if let Some(w) = wire {
                    mid.clear();
                    summary = Some(w.finish(&mut mid));
                    if let Some(c) = capture {
                        c.feed(&mid);
                    }
                    if let Err(e) = egress.push(&mid, out) {
                        // The closing events still reach the client; only
                        // their translation into its dialect fell short.
                        log::warn!("stream end could not be translated for the client: {e}");
                    }
                }
                let (egress_summary, response) = egress.finish_with_response(out);
                let s = summary.or(egress_summary).unwrap_or_default();
                let usage = (s.usage.input_tokens.is_some() || s.usage.output_tokens.is_some())
                    .then(|| openai_usage(&s.usage));
                (usage, s.cut || s.usage.estimated, response)
            }
        }
    }

    fn fail(self, err: &GatewayError, out: &mut Vec<u8>, client: ClientDialect) {
        match self {
            Pipe::Same(..) => StreamEgress::identity(client).fail(err, out),
            Pipe::Translate(t) => t.egress.fail(err, out),
        }
    }
}

/// Records a stream's usage. A stream that ended without the provider's
/// figures is settled from what was relayed: the prompt estimate and one
/// token per content event, marked estimated.
fn meter_stream(call: &Call<'_>, usage: Option<Usage>, cut: bool, events: u64) {
    let usage = usage.or_else(|| {
        (events > 0 || call.prompt_estimate > 0).then(|| Usage {
            prompt_tokens: Some(call.prompt_estimate),
            completion_tokens: Some(events),
            total_tokens: Some(call.prompt_estimate + events),
            ..Usage::default()
        })
    });
    call.meter(usage, cut || usage.is_none());
}

/// A stream's output guardrails; their records reach the call however
/// the stream ends.
struct GuardedStream<'c, 'a> {
    /// `output` checks on the text.
    guard: Option<StreamGuard>,
    /// `tool_calls` checks on each call's arguments.
    args: Option<crate::guardrails::tool_args::ToolArgs>,
    call: &'c Call<'a>,
}

impl GuardedStream<'_, '_> {
    fn filter(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let rails = &self.call.generation.guardrails;
        if let Some(g) = &mut self.guard {
            g.filter(rails, out, 0)?;
        }
        if let Some(a) = &mut self.args {
            a.filter(rails, out)?;
        }
        Ok(())
    }
}

impl Drop for GuardedStream<'_, '_> {
    fn drop(&mut self) {
        let rails = &self.call.generation.guardrails;
        let mut records = self.call.guard_records.borrow_mut();
        if let Some(g) = &mut self.guard {
            g.records(rails, &mut records);
        }
        if let Some(a) = &mut self.args {
            records.append(&mut a.records);
        }
    }
}

/// Reads a stream whose client left on to its end (nothing is relayed),
/// within `upstream.drain_after_disconnect` and while the shard drains
/// fewer than `upstream.max_drains`: its usage, whether it was cut, and
/// the content events it counted (an estimate's output). The pipe back
/// when it could not be read to its end (the caller estimates from what it
/// saw).
async fn drain(
    source: &mut Source,
    mut pipe: Pipe,
    idle: Duration,
    shard: &Shard,
) -> Result<(Option<Usage>, bool, u64), Pipe> {
    let settings = shard.pool.settings();
    let draining = &shard.draining_streams;
    if settings.drain_after_disconnect.is_zero() || draining.get() >= settings.max_drains {
        return Err(pipe);
    }
    draining.set(draining.get() + 1);
    struct Slot<'a>(&'a std::cell::Cell<usize>);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get().saturating_sub(1));
        }
    }
    let _slot = Slot(draining);
    let deadline = glommio::timer::sleep(settings.drain_after_disconnect);
    futures_lite::pin!(deadline);
    let mut scratch = Vec::new();
    loop {
        scratch.clear();
        let mut broken = false;
        let step = futures_lite::future::or(
            async {
                let mut on_data = |data: &[u8]| {
                    broken |= pipe.feed(data, &mut scratch, None).is_err();
                };
                Some(source.step(idle, &mut on_data).await)
            },
            async {
                // A stopping gateway does not wait for it.
                futures_lite::future::or(&mut deadline, shard.wait_shutdown()).await;
                None
            },
        )
        .await;
        match step {
            Some(Ok(BodyStep::Data)) if !broken => {}
            Some(Ok(BodyStep::End)) if !broken => break,
            _ => return Err(pipe),
        }
    }
    scratch.clear();
    let events = match &pipe {
        Pipe::Same(_, tap) => tap.events,
        Pipe::Translate(_) => 0,
    };
    let (usage, cut, _) = pipe.finish(&mut scratch, None);
    source.finished(shard);
    Ok((usage, cut, events))
}

/// A stream held for its output webhooks: what it would have sent, and
/// the egress a redacted answer is replayed through.
struct HookHold {
    held: Vec<u8>,
    egress: StreamEgress,
}

/// The output webhooks' verdict on a held stream, whose last read (and
/// end) is in `out`: `out` becomes what the client gets (all of it, the
/// redacted answer replayed as a stream, or the refusal). The answer is
/// judged as `openai` (the assembled chat answer, from which every dialect
/// is made), else as a Responses stream's final `response`. Returns the
/// Responses `response` to keep, or the refusal.
async fn judge_held(
    call: &Call<'_>,
    client: ClientDialect,
    mut hold: HookHold,
    out: &mut Vec<u8>,
    openai: Option<&crate::cache::Captured>,
    response: Option<serde_json::Value>,
) -> Result<Option<serde_json::Value>, GatewayError> {
    let refuse = |e: GatewayError, out: &mut Vec<u8>| {
        out.clear();
        StreamEgress::identity(client).fail(&e, out);
        Err(e)
    };
    // The hooks judge what the client would get: the in-process checks'
    // redactions applied first, as they were to the stream.
    let body = match (openai, &response) {
        (Some(c), _) => {
            let rails = &call.generation.guardrails;
            let mut scratch = Vec::new();
            match crate::guardrails::check_answer(
                rails,
                &call.output_checks,
                &call.tool_call_checks,
                &c.answer,
                &mut scratch,
            ) {
                Verdict::Pass => c.answer.clone(),
                Verdict::Redacted(b) => b,
                Verdict::Blocked(e) => return refuse(e, out),
            }
        }
        (None, Some(r)) => serde_json::to_vec(r).unwrap_or_default(),
        // Not readable as a whole answer: its text, as the events held it.
        (None, None) => {
            let mut text = held_text(&hold.held);
            text.push_str(&held_text(out));
            serde_json::to_vec(&serde_json::json!({ "content": [text] })).unwrap_or_default()
        }
    };
    let verdict = crate::guardrails::check_output_hooks(
        call.shard,
        call.generation,
        &call.output_hooks,
        &body,
        &call.hook_actor,
        call.rid,
        &call.guard_records,
    )
    .await;
    match verdict {
        Verdict::Pass => {
            hold.held.append(out);
            *out = hold.held;
            Ok(response)
        }
        Verdict::Blocked(e) => refuse(e, out),
        Verdict::Redacted(redacted) => {
            // Replayed from the chat answer, which the tool policy has not
            // judged in the client's dialect: with a tool policy, refused.
            let parsed = openai
                .filter(|_| call.guard.is_none())
                .and_then(|_| serde_json::from_slice::<ChatResponse>(&redacted).ok())
                .filter(shardgate_providers::replay::replayable);
            let Some(mut answer) = parsed else {
                // A passed-through Responses stream cannot be rewritten.
                let e = GatewayError::Guardrail {
                    check: String::new(),
                    stage: "answer",
                    found: "webhook",
                };
                return refuse(e, out);
            };
            if client == ClientDialect::OpenAi && !call.facts.include_usage {
                answer.usage = None;
            }
            let ctx = shardgate_providers::ReplyCtx {
                id: answer.id.clone(),
                model: answer.model.clone(),
                created: answer.created,
                include_usage: true,
            };
            let sse = shardgate_providers::replay::unroll(&answer, &ctx);
            out.clear();
            let HookHold { mut egress, .. } = hold;
            if egress.push(&sse, out).is_err() {
                let e = GatewayError::Guardrail {
                    check: String::new(),
                    stage: "answer",
                    found: "webhook",
                };
                return refuse(e, out);
            }
            let (_, replayed) = egress.finish_with_response(out);
            Ok(replayed.or(response))
        }
    }
}

/// The text deltas of chunk-encoded client events (any dialect): what a
/// held stream says, for webhooks when it cannot be read as one answer.
fn held_text(held: &[u8]) -> String {
    let mut text = String::new();
    let mut copy = held.to_vec();
    let _ = super::tool_guard::each_event(&mut copy, 0, |raw, _| {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json_of_event(raw)) else {
            return Ok(());
        };
        let mut take = |t: Option<&serde_json::Value>| {
            if let Some(s) = t.and_then(serde_json::Value::as_str) {
                text.push_str(s);
            }
        };
        match v.get("type").and_then(serde_json::Value::as_str) {
            Some("content_block_delta") => take(v.pointer("/delta/text")),
            Some("response.output_text.delta") => take(v.get("delta")),
            _ => {
                for c in v
                    .get("choices")
                    .and_then(serde_json::Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    take(c.pointer("/delta/content"));
                    take(c.get("text"));
                }
            }
        }
        Ok(())
    });
    text
}

/// What a stream's client bytes pass after the egress, each read, in
/// order: the tool policy on the tool calls in them, then the output
/// guardrails on their text and calls' arguments; output webhooks then
/// hold them all until the whole answer is judged. Each stage sees what
/// the one before it let through.
struct Stages<'c, 'a> {
    tools: Option<&'c std::cell::RefCell<super::tool_guard::ToolGuard>>,
    /// Boxed, as is `hold`: most streams have neither, and inline they
    /// would size every stream's state (and so every request's) by ~800
    /// bytes.
    rails: Option<Box<GuardedStream<'c, 'a>>>,
    hold: Option<Box<HookHold>>,
}

impl<'a> Stages<'a, 'a> {
    fn new(answer: &Answer<'a>) -> Self {
        let (client, call) = (answer.client, answer.call);
        let checks_text = !call.output_checks.is_empty();
        let checks_args = !call.tool_call_checks.is_empty();
        Stages {
            tools: call.guard.as_deref(),
            rails: (checks_text || checks_args).then(|| {
                Box::new(GuardedStream {
                    guard: checks_text.then(|| {
                        StreamGuard::new(
                            &call.generation.guardrails,
                            call.output_checks.clone(),
                            client,
                            call.api == super::Api::Completions,
                        )
                    }),
                    args: checks_args.then(|| {
                        crate::guardrails::tool_args::ToolArgs::new(
                            call.tool_call_checks.clone(),
                            client,
                        )
                    }),
                    call,
                })
            }),
            hold: (!call.output_hooks.is_empty()).then(|| {
                Box::new(HookHold {
                    held: Vec::new(),
                    egress: egress_for(answer),
                })
            }),
        }
    }

    /// Whether a stage reads the stream: then bytes the stages have not
    /// judged never go out.
    fn judging(&self) -> bool {
        self.tools.is_some() || self.rails.is_some() || self.hold.is_some()
    }

    /// Runs one read's client bytes in `out` through the tool policy and
    /// the guardrails. On a refusal, `out` keeps what passed before the
    /// refused part, and the refusal is returned.
    ///
    /// What the tool policy lets through before a refused call still
    /// passes the guardrails, as the answer's end: text they hold back is
    /// released, judged, before the refusal. Their refusal wins over the
    /// tool policy's.
    fn filter(&mut self, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let tools = match self.tools {
            Some(tools) => tools.borrow_mut().filter_stream(out, 0),
            None => Ok(()),
        };
        if let Some(rails) = &mut self.rails {
            // A refused answer ends here: the guardrails see its end (and
            // release what they hold); the refusal's own last chunk follows.
            let ended = tools.is_err();
            if ended {
                out.extend_from_slice(LAST_CHUNK);
            }
            let judged = rails.filter(out);
            if ended && out.ends_with(LAST_CHUNK) {
                out.truncate(out.len() - LAST_CHUNK.len());
            }
            judged?;
        }
        tools
    }
}

/// An event stream, relayed as it arrives: the pipe (framer, the cache's
/// tee, translators, egress), then the [`Stages`], then the client.
async fn stream(conn: &mut ClientConn, answer: &mut Answer<'_>) -> Outcome {
    let (shard, rid) = (answer.call.shard, answer.call.rid);
    let settings = shard.pool.settings();
    let client_head = respond::stream_head_with(
        answer.head.status,
        rid,
        &answer.call.lines(answer.alias_line, answer.target_lines),
        &answer.call.extra(),
    );
    // Events the upstream sent with its head go out with the client's head,
    // in one write (a paced stream's first token, as nginx relays it);
    // otherwise, or when output webhooks hold the events, the head goes
    // now, before a wait.
    let mut head = None;
    if answer.source.has_buffered() && answer.call.output_hooks.is_empty() {
        head = Some(client_head);
    } else {
        let wrote = conn.write(&client_head).await;
        // Not held for the stream's life.
        drop(client_head);
        if wrote.is_err() {
            return Outcome::CLOSE;
        }
    }
    // Made once the client has the head, or once the first events are
    // read to go with it: a check that never saw the answer leaves no
    // record.
    let mut pipe = Pipe::new(answer, settings.max_event_bytes);
    let mut capture = StreamCapture::new(answer);
    let mut stages = Stages::new(answer);
    let secrets = answer.secrets();
    let Answer {
        source,
        name,
        client,
        call,
        idle,
        ..
    } = answer;
    let client = *client;
    let mut out = Vec::with_capacity(512);
    loop {
        let mut feed_error = None;
        let step = futures_lite::future::or(
            async {
                let mut on_data = |data: &[u8]| {
                    if feed_error.is_none() {
                        if let Err(e) = pipe.feed(data, &mut out, capture.as_deref_mut()) {
                            feed_error = Some(e);
                        }
                    }
                };
                Some(source.step(*idle, &mut on_data).await)
            },
            async {
                conn.closed().await;
                None
            },
        )
        .await;
        let failure = match step {
            // The client left: the upstream is read on to its usage when
            // the shard has room, else dropping `up` closes it.
            None => {
                conn.note_error(CLIENT_LEFT);
                // Boxed: rare (the client left), and its state would size
                // every stream's.
                let mut pipe = match Box::pin(drain(source, pipe, *idle, shard)).await {
                    Ok((usage, cut, events)) => {
                        // Estimated from what came when the provider said
                        // nothing of its usage.
                        meter_stream(call, usage, cut, events);
                        call.mark_drained();
                        return Outcome::CLOSE;
                    }
                    Err(pipe) => pipe,
                };
                let (usage, events) = pipe.abandon();
                meter_stream(call, usage, true, events);
                return Outcome::CLOSE;
            }
            Some(Ok(_)) if feed_error.is_some() => Some(GatewayError::UpstreamProtocol {
                provider: name.to_owned(),
                reason: upstream_reason(&feed_error.unwrap_or_default(), secrets),
            }),
            Some(Ok(BodyStep::Data)) => None,
            Some(Ok(BodyStep::End)) => {
                let events = match &pipe {
                    Pipe::Same(_, tap) => tap.events,
                    Pipe::Translate(_) => 0,
                };
                let (usage, cut, mut response) = pipe.finish(&mut out, capture.as_deref_mut());
                meter_stream(call, usage, cut, events);
                let refusal = stages.filter(&mut out).err();
                if let Some(err) = &refusal {
                    conn.note_error(err.label());
                    StreamEgress::identity(client).fail(err, &mut out);
                    // A refused answer is not a turn to keep.
                    response = None;
                }
                let mut refused = refusal.is_some();
                let assembled = capture
                    .take()
                    .filter(|_| !cut && !refused)
                    .and_then(|c| c.finish(usage));
                if let Some(hold) = stages.hold.take() {
                    if let Some(e) = &refusal {
                        // Nothing the hooks have not judged goes out.
                        out.clear();
                        StreamEgress::identity(client).fail(e, &mut out);
                    } else {
                        let judged = Box::pin(judge_held(
                            call,
                            client,
                            *hold,
                            &mut out,
                            assembled.as_ref(),
                            response.take(),
                        ))
                        .await;
                        match judged {
                            Ok(r) => response = r,
                            Err(e) => {
                                conn.note_error(e.label());
                                refused = true;
                            }
                        }
                    }
                }
                // Kept only when the client gets the whole answer.
                if call.capture_limit.is_some() && !refused {
                    *call.captured.borrow_mut() = assembled.map(Box::new);
                }
                // Stored before `response.completed` leaves: a follow-up
                // sent the moment it arrives finds the turn.
                if let Some(response) = response.filter(|_| call.turn.is_some()) {
                    keep_streamed_turn(call, &stages, response, name).await;
                }
                source.finished(shard);
                return match send(conn, &mut head, &out).await {
                    Ok(()) => Outcome::KEEP,
                    Err(_) => Outcome::CLOSE,
                };
            }
            Some(Err(e)) => Some(read_failed(name, e)),
        };
        match failure.map_or_else(|| stages.filter(&mut out).err().map(Err), |f| Some(Ok(f))) {
            None => {}
            // Refused, not failed: what the upstream used so far is still
            // charged, and the stream ends with the refusal.
            Some(Err(refusal)) => {
                let (usage, events) = pipe.abandon();
                meter_stream(call, usage, true, events);
                if stages.hold.is_some() {
                    // Held text the hooks have not judged never goes out.
                    out.clear();
                }
                StreamEgress::identity(client).fail(&refusal, &mut out);
                conn.note_error(match refusal {
                    GatewayError::Policy(_) => "tool_denied",
                    _ => refusal.label(),
                });
                return match send(conn, &mut head, &out).await {
                    Ok(()) => Outcome::KEEP,
                    Err(_) => Outcome::CLOSE,
                };
            }
            Some(Ok(err)) => {
                log::info!("{rid}: stream from {name} failed: {err}");
                conn.note_error(err.label());
                let (usage, events) = pipe.abandon();
                meter_stream(call, usage, true, events);
                if stages.judging() {
                    // This read's events were not judged: none of them go out.
                    out.clear();
                }
                pipe.fail(&err, &mut out, client);
                return match send(conn, &mut head, &out).await {
                    Ok(()) => Outcome::KEEP,
                    Err(_) => Outcome::CLOSE,
                };
            }
        }
        if let Some(hold) = &mut stages.hold {
            hold.held.append(&mut out);
            if hold.held.len() > settings.max_response_bytes {
                let e = GatewayError::Guardrail {
                    check: String::new(),
                    stage: "answer",
                    found: "too long to hold for its webhook checks",
                };
                conn.note_error(e.label());
                let (usage, events) = pipe.abandon();
                meter_stream(call, usage, true, events);
                StreamEgress::identity(client).fail(&e, &mut out);
                return match send(conn, &mut head, &out).await {
                    Ok(()) => Outcome::KEEP,
                    Err(_) => Outcome::CLOSE,
                };
            }
        }
        if !out.is_empty() || head.is_some() {
            if send(conn, &mut head, &out).await.is_err() {
                let (usage, events) = pipe.abandon();
                meter_stream(call, usage, true, events);
                return Outcome::CLOSE;
            }
            out.clear();
        }
    }
}

/// Writes `out` to a stream's client: after the stream's head while the
/// head waits for the first events, in one write.
async fn send(
    conn: &mut ClientConn,
    head: &mut Option<Vec<u8>>,
    out: &[u8],
) -> std::io::Result<()> {
    match head.take() {
        Some(mut head) => {
            head.extend_from_slice(out);
            conn.write(&head).await
        }
        None => conn.write(out).await,
    }
}

/// Keeps a streamed Responses turn as the client was sent it: its tool
/// calls' arguments as the guardrails left them, redacted, stripped of
/// refused tool calls; not when a check refuses it or it failed.
async fn keep_streamed_turn(
    call: &Call<'_>,
    stages: &Stages<'_, '_>,
    mut response: serde_json::Value,
    name: &str,
) {
    if let Some(args) = stages.rails.as_ref().and_then(|r| r.args.as_ref()) {
        args.patch_response(&mut response);
    }
    let mut keep = true;
    if !call.output_checks.is_empty() {
        keep &= crate::guardrails::check_value(
            &call.generation.guardrails,
            &call.output_checks,
            Stage::Output,
            &mut response,
            &mut Vec::new(),
        )
        .is_ok();
    }
    if let Some(guard) = &call.guard {
        let bytes = serde_json::to_vec(&response).unwrap_or_default();
        match guard.borrow_mut().check_body(&bytes) {
            Ok(Some(stripped)) => {
                response = serde_json::from_slice(&stripped).unwrap_or(response);
            }
            Ok(None) => {}
            Err(_) => keep = false,
        }
    }
    let failed = response.get("status").and_then(serde_json::Value::as_str) == Some("failed");
    if keep && !failed {
        if let Ok(response) = serde_json::value::to_raw_value(&response) {
            super::conversation::commit(call, response, name).await;
        }
    }
}
