//! How one request goes to one target: which dialect translation applies,
//! and the upstream request bytes (head and body in one buffer).
//!
//! The rule: when the upstream speaks the client's dialect the body passes
//! through with only `model` rewritten, and the answer is relayed as it comes
//! (zero-copy SSE). Otherwise the body is read into the typed OpenAI request,
//! the provider prepares its own request from it, and the answer comes back
//! through the provider's translator and then the client's [`egress`].
//!
//! [`egress`]: super::egress

use super::dialect::ClientDialect;
use super::{Api, Call};
use crate::config::{HttpProvider, Target, Wire};
use crate::error::GatewayError;
use shardgate_proto::h1::{write_content_length, write_header};
use shardgate_proto::json::{patch_object_into, Edit};
use shardgate_providers::openai::Operation;
use shardgate_providers::{gemini, ChatRequest, Dialect, PrepareCtx, TranslateError};

/// How the upstream's answer becomes the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The upstream speaks the client's dialect: relay as is.
    Same,
    /// The upstream speaks OpenAI, the client Anthropic.
    FromOpenAi,
    /// The upstream speaks its own dialect: its provider translates to
    /// OpenAI, then the client's egress.
    FromWire,
    /// Gemini `embedContent`/`batchEmbedContents` to OpenAI embeddings.
    GeminiEmbeddings,
}

/// Request bytes for the upstream: `buf[start..]`. A patched pass-through
/// body is written first, after room for the head, and the head then fills
/// the room's end: the body is copied once, and the head still carries a
/// plain `content-length`.
pub struct UpstreamRequest {
    buf: Vec<u8>,
    start: usize,
}

impl UpstreamRequest {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// What goes after the head.
enum UpBody<'t> {
    Bytes(Vec<u8>),
    /// The client's body with these edits (see [`patch_model`]).
    Patched(ModelPatch<'t>),
}

/// The upstream request for `call` to `target`, and how to read its answer.
pub fn build(
    call: &Call<'_>,
    target: &Target,
    http: &HttpProvider,
    authority: &str,
) -> Result<(UpstreamRequest, Reply), GatewayError> {
    let key = http.api_key.as_ref().map(|k| k.expose());
    let wire = http.wire.dialect();
    let unsupported = || {
        GatewayError::BadRequest {
        message: format!(
            "{} is not available for model `{}`: its provider speaks the {wire:?} API, which has no equivalent.",
            call.api.client_path(),
            call.facts.model
        ),
        param: Some("model"),
    }
    };
    let translate = |e: TranslateError| translate_error(e, &call.facts.model);
    let (path, headers, body, reply): (String, Vec<(String, String)>, UpBody, Reply) = match (
        call.client,
        wire,
        call.api,
    ) {
        (ClientDialect::OpenAi, Dialect::OpenAi, api) => {
            let op = match api {
                Api::ChatCompletions => Operation::ChatCompletions,
                Api::Completions => Operation::Completions,
                Api::Embeddings => Operation::Embeddings,
                Api::Messages | Api::Responses => return Err(unsupported()),
            };
            let cached = call.generation.pass_heads.get(target.provider);
            if let Some(Some(heads)) = cached {
                let prefix = heads.get(op, call.facts.stream);
                let body = patch_model(call, target);
                return Ok((assemble(call, prefix, body), Reply::Same));
            }
            let (path, headers) = match &http.wire {
                Wire::Azure(p) => p.endpoint(op, &target.model, key),
                Wire::OpenAi(p) => p.endpoint(op, key),
                _ => return Err(unsupported()),
            }
            .map_err(translate)?;
            (path, headers, patch_model(call, target), Reply::Same)
        }
        (ClientDialect::Anthropic, Dialect::Anthropic, Api::Messages) => {
            let Wire::Anthropic(p) = &http.wire else {
                return Err(unsupported());
            };
            let key = key.ok_or_else(|| {
                translate(TranslateError::MissingCredentials("Anthropic API key"))
            })?;
            let mut headers = vec![
                ("x-api-key".to_owned(), key.to_owned()),
                ("anthropic-version".to_owned(), p.version.clone()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ];
            // Beta features the client opted into travel with its body.
            if let Some(beta) = call.req.end_to_end_header("anthropic-beta") {
                headers.push((
                    "anthropic-beta".to_owned(),
                    String::from_utf8_lossy(beta).into_owned(),
                ));
            }
            (
                "/messages".to_owned(),
                headers,
                patch_model(call, target),
                Reply::Same,
            )
        }
        (ClientDialect::OpenAi, Dialect::Gemini, Api::Embeddings) => {
            let req: gemini::EmbeddingsRequest = client_json(&call.req.body)?;
            let up =
                gemini::embeddings_request(&req, &prepare_ctx(target, key)).map_err(translate)?;
            (
                up.path,
                up.headers,
                UpBody::Bytes(up.body),
                Reply::GeminiEmbeddings,
            )
        }
        (ClientDialect::Responses, Dialect::OpenAi, Api::Responses) if matches!(&http.wire, Wire::OpenAi(p) if p.responses_api) =>
        {
            // OpenAI's own API: the body passes through, with only
            // `model` patched, unless it continues a turn this upstream
            // did not serve (then the gateway's copy of the conversation
            // goes along instead of the id).
            let provider = call
                .generation
                .config
                .providers
                .get(target.provider)
                .map_or("", |p| p.name.as_str());
            let body = match call
                .turn
                .as_ref()
                .and_then(|t| t.expand_for(provider, &call.req.body))
            {
                Some(body) => UpBody::Bytes(body),
                None => patch_model(call, target),
            };
            if let (Some(Some(heads)), UpBody::Patched(_)) =
                (call.generation.pass_heads.get(target.provider), &body)
            {
                let prefix = heads.get(Operation::Responses, call.facts.stream);
                return Ok((assemble(call, prefix, body), Reply::Same));
            }
            let Wire::OpenAi(p) = &http.wire else {
                return Err(unsupported());
            };
            let (path, headers) = p.endpoint(Operation::Responses, key).map_err(translate)?;
            let body = match body {
                UpBody::Bytes(mut b) => {
                    set_model(&mut b, &target.model);
                    UpBody::Bytes(b)
                }
                patched => patched,
            };
            (path, headers, body, Reply::Same)
        }
        // Anything else goes through chat: the client's dialect reads it
        // into the chat request the provider prepares its own from.
        (client, _, _) => {
            let chat = client
                .rules()
                .chat_request(call)
                .ok_or_else(unsupported)??;
            let up = via_chat(http, target, key, &chat).map_err(translate)?;
            (
                up.path,
                up.headers,
                UpBody::Bytes(up.body),
                from_chat_reply(wire),
            )
        }
    };
    Ok((
        head_and_body(call, http, authority, &path, &headers, body),
        reply,
    ))
}

/// The provider's request for a chat request translated from the client's
/// dialect.
fn via_chat(
    http: &HttpProvider,
    target: &Target,
    key: Option<&str>,
    chat: &ChatRequest,
) -> Result<shardgate_providers::UpstreamRequest, TranslateError> {
    let provider = http.wire.provider();
    // Prompt-cache breakpoints and extended thinking go to providers that
    // have them (Anthropic, Bedrock); an OpenAI-dialect upstream would
    // refuse the unknown members, so they are dropped there.
    if provider.dialect() == Dialect::OpenAi
        && (chat.has_cache_markers() || chat.thinking.is_some() || chat.has_thinking_blocks())
    {
        log::debug!(
            "prompt-cache markers and extended thinking dropped: an OpenAI-dialect upstream has neither"
        );
        let mut stripped = chat.clone();
        stripped.strip_cache_markers();
        stripped.thinking = None;
        stripped.strip_thinking_blocks();
        return provider.prepare(&stripped, &prepare_ctx(target, key));
    }
    provider.prepare(chat, &prepare_ctx(target, key))
}

/// How an answer to a request translated through chat comes back: an
/// OpenAI upstream's already is chat.
fn from_chat_reply(wire: Dialect) -> Reply {
    if wire == Dialect::OpenAi {
        Reply::FromOpenAi
    } else {
        Reply::FromWire
    }
}

fn prepare_ctx<'a>(target: &'a Target, key: Option<&'a str>) -> PrepareCtx<'a> {
    PrepareCtx {
        model: &target.model,
        api_key: key,
        now_unix: super::unix_now(),
    }
}

/// `model` of a JSON body the gateway wrote set to `model`.
fn set_model(body: &mut Vec<u8>, model: &str) {
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) {
        v["model"] = model.into();
        if let Ok(b) = serde_json::to_vec(&v) {
            *body = b;
        }
    }
}

/// The client's body with `model` set to the upstream's name; nothing else
/// is touched or re-serialized. An OpenAI stream is also asked for its usage
/// chunk (`stream_options.include_usage`), which accounting needs; the relay
/// withholds that chunk from a client that did not ask for it.
fn patch_model<'t>(call: &Call<'_>, target: &'t Target) -> UpBody<'t> {
    let model = &target.model_json;
    let ask_usage = call.client == ClientDialect::OpenAi
        && call.facts.stream
        && !call.facts.include_usage
        && matches!(call.api, Api::ChatCompletions | Api::Completions);
    UpBody::Patched(ModelPatch { model, ask_usage })
}

struct ModelPatch<'t> {
    /// The upstream model name as a JSON string.
    model: &'t [u8],
    ask_usage: bool,
}

impl ModelPatch<'_> {
    fn write(&self, out: &mut Vec<u8>, call: &Call<'_>) {
        let model = Edit::Set {
            key: "model",
            value: self.model,
        };
        let usage = Edit::Set {
            key: "stream_options",
            value: br#"{"include_usage":true}"#,
        };
        let edits = [model, usage];
        let edits = if self.ask_usage {
            &edits[..]
        } else {
            &edits[..1]
        };
        patch_object_into(out, &call.req.body, call.members, edits);
    }
}

pub(super) fn client_json<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
) -> Result<T, GatewayError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        GatewayError::BadRequest {
            message: format!("Invalid request body at `{path}`: {}", e.inner()),
            param: None,
        }
    })
}

/// A translation failure before anything was sent: the client's request
/// cannot be expressed for this provider (400) or the provider is
/// misconfigured (500).
pub fn translate_error(e: TranslateError, model: &str) -> GatewayError {
    match e {
        TranslateError::MissingCredentials(what) => GatewayError::Misconfigured(format!(
            "the provider of model `{model}` has no {what} configured"
        )),
        TranslateError::Unsupported(what) => GatewayError::BadRequest {
            message: format!("Not supported by the provider of model `{model}`: {what}."),
            param: None,
        },
        other => GatewayError::BadRequest {
            message: other.to_string(),
            param: None,
        },
    }
}

/// `path` is relative to the provider's base URL; `headers` carry auth and
/// content type (and, for Bedrock, the signature, which covers `host` and
/// the path, so neither may change after this).
fn head_and_body(
    call: &Call<'_>,
    http: &HttpProvider,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    body: UpBody,
) -> UpstreamRequest {
    let prefix = head_prefix(http, authority, path, headers, call.facts.stream);
    assemble(call, &prefix, body)
}

/// The request line and the headers that do not change between requests to
/// one endpoint (everything but the request id and the length).
fn head_prefix(
    http: &HttpProvider,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    stream: bool,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(384);
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(http.base.path.as_bytes());
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    write_header(&mut head, "host", authority.as_bytes());
    let mut has_accept = false;
    for (k, v) in headers {
        has_accept |= k.eq_ignore_ascii_case("accept");
        write_header(&mut head, k, v.as_bytes());
    }
    if !has_accept {
        let accept: &[u8] = if stream {
            b"text/event-stream"
        } else {
            b"application/json"
        };
        write_header(&mut head, "accept", accept);
    }
    write_header(
        &mut head,
        "user-agent",
        concat!("shardgate/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    head
}

/// `prefix`, the request id and length, and the body, in one buffer with the
/// body copied once: it is written first, after room for the head, and the
/// head then fills the room's end.
fn assemble(call: &Call<'_>, prefix: &[u8], body: UpBody) -> UpstreamRequest {
    const ID: &[u8] = b"x-request-id: ";
    const LENGTH: &[u8] = b"content-length: ";
    // W3C trace context travels on: a valid `traceparent` (and its
    // `tracestate`, bounded) as the client sent them.
    let traceparent = call
        .req
        .end_to_end_header("traceparent")
        .filter(|v| crate::record::trace_id(Some(v)).is_some());
    let tracestate = traceparent
        .and_then(|_| call.req.end_to_end_header("tracestate"))
        .filter(|v| v.len() <= 512);
    let trace_len =
        traceparent.map_or(0, |v| v.len() + 15) + tracestate.map_or(0, |v| v.len() + 14);
    // At most 20 digits of length, and the id's line.
    let room = prefix.len() + ID.len() + call.rid.len() + 2 + LENGTH.len() + 20 + 4 + trace_len;
    let mut buf = Vec::with_capacity(room + call.req.body.len() + 64);
    buf.resize(room, 0);
    match &body {
        UpBody::Bytes(b) => buf.extend_from_slice(b),
        UpBody::Patched(p) => p.write(&mut buf, call),
    }
    let body_len = buf.len() - room;
    let mut tail = Vec::with_capacity(ID.len() + call.rid.len() + LENGTH.len() + 26 + trace_len);
    write_header(&mut tail, "x-request-id", call.rid.as_bytes());
    if let Some(v) = traceparent {
        write_header(&mut tail, "traceparent", v);
    }
    if let Some(v) = tracestate {
        write_header(&mut tail, "tracestate", v);
    }
    write_content_length(&mut tail, body_len);
    tail.extend_from_slice(b"\r\n");
    let start = room - prefix.len() - tail.len();
    buf[start..start + prefix.len()].copy_from_slice(prefix);
    buf[start + prefix.len()..room].copy_from_slice(&tail);
    UpstreamRequest { buf, start }
}

/// Head prefixes of pass-through requests to one OpenAI-wire provider, by
/// operation and by whether the answer streams: rendered once per config
/// generation, where each request used to render the path, auth and
/// accept headers again.
pub struct PassHeads([[Vec<u8>; 2]; 4]);

impl PassHeads {
    /// None for providers whose heads vary per request (Azure puts the
    /// model in the path) or cannot be made (a missing key: the request path
    /// reports that).
    pub fn new(http: &HttpProvider, authority: &str) -> Option<PassHeads> {
        let Wire::OpenAi(p) = &http.wire else {
            return None;
        };
        let key = http.api_key.as_ref().map(|k| k.expose());
        let render = |op: Operation, stream: bool| {
            let (path, headers) = p.endpoint(op, key).ok()?;
            Some(head_prefix(http, authority, &path, &headers, stream))
        };
        let pair = |op| Some([render(op, false)?, render(op, true)?]);
        Some(PassHeads([
            pair(Operation::ChatCompletions)?,
            pair(Operation::Completions)?,
            pair(Operation::Embeddings)?,
            pair(Operation::Responses)?,
        ]))
    }

    fn get(&self, op: Operation, stream: bool) -> &[u8] {
        let i = match op {
            Operation::ChatCompletions => 0,
            Operation::Completions => 1,
            Operation::Embeddings => 2,
            Operation::Responses => 3,
        };
        &self.0[i][usize::from(stream)]
    }
}
