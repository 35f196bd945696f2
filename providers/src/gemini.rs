//! Google Gemini API (`generativelanguage.googleapis.com/v1beta`):
//! `models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `:embedContent` and `:batchEmbedContents`, key in `x-goog-api-key`.
//!
//! Mapping rules: system and developer messages become
//! `systemInstruction`; assistant turns are role `model`; tool results are
//! `functionResponse` parts in a user turn, named after the call they answer
//! (Gemini matches results by function name); consecutive turns of one role
//! are merged. Gemini sends function calls whole, without ids before the 2.x
//! models: calls without an id get `call_<n>`.
//!
//! Streaming: every SSE `data` is a whole `GenerateContentResponse` holding
//! the new parts; there is no end marker, so `[DONE]` is written when the
//! body ends after a `finishReason`.

use serde_json::Value;
use shardgate_proto::gemini as g;
use shardgate_proto::sse::{SseEvent, SseFramer};

use crate::anthropic::parse_arguments;
use crate::chat::{
    self, ChatRequest, ChatResponse, ChunkWriter, ContentPart, Image, ReplyCtx, Role, ToolMode,
};
use crate::errors::{openai_error, KnownSecrets};
use crate::{
    json_body, upstream_json, Dialect, PrepareCtx, Provider, StreamTranslator, Summary,
    TranslateError, UpstreamRequest, Usage, MAX_EVENT_BYTES,
};

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeminiProvider {}

fn auth_headers(ctx: &PrepareCtx<'_>) -> Result<Vec<(String, String)>, TranslateError> {
    let key = ctx
        .api_key
        .ok_or(TranslateError::MissingCredentials("Gemini API key"))?;
    Ok(vec![
        ("x-goog-api-key".to_owned(), key.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ])
}

impl Provider for GeminiProvider {
    fn dialect(&self) -> Dialect {
        Dialect::Gemini
    }

    fn prepare(
        &self,
        req: &ChatRequest,
        ctx: &PrepareCtx<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let body = from_openai(req)?;
        let path = if req.is_stream() {
            format!("/models/{}:streamGenerateContent?alt=sse", ctx.model)
        } else {
            format!("/models/{}:generateContent", ctx.model)
        };
        Ok(UpstreamRequest {
            path,
            headers: auth_headers(ctx)?,
            body: json_body(&body)?,
        })
    }

    fn response_to_openai(
        &self,
        body: &[u8],
        ctx: &ReplyCtx,
    ) -> Result<(Vec<u8>, Usage), TranslateError> {
        let resp: g::GenerateContentResponse = upstream_json(body)?;
        let (chat, usage) = ChatResponse::from_gemini(&resp, ctx);
        Ok((json_body(&chat)?, usage))
    }

    fn error_to_openai(&self, status: u16, body: &[u8], known: &KnownSecrets) -> Vec<u8> {
        // Streaming endpoints may wrap the error in a one-element array.
        // (Checked first: serde would also read a struct from an array.)
        let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        let parsed = if is_array {
            serde_json::from_slice::<Vec<g::ErrorResponse>>(body)
                .map_err(|_| ())
                .and_then(|v| v.into_iter().next().ok_or(()))
        } else {
            serde_json::from_slice::<g::ErrorResponse>(body).map_err(|_| ())
        };
        match parsed {
            Ok(e) => openai_error(status, &e.error.message, e.error.status.as_deref(), known),
            Err(_) => openai_error(status, "", None, known),
        }
    }

    fn stream_translator(&self, ctx: ReplyCtx, known: &KnownSecrets) -> Option<StreamTranslator> {
        Some(StreamTranslator::Gemini(
            GeminiToOpenAi::new(ctx).redacting(known.clone()),
        ))
    }
}

// ---------------------------------------------------------------------------
// OpenAI request -> Gemini request

pub fn from_openai(req: &ChatRequest) -> Result<g::GenerateContentRequest, TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<g::Part>)> = Vec::new();
    // Tool call id -> function name, for the function responses.
    let mut call_names: Vec<(&str, &str)> = Vec::new();
    for m in &req.messages {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                if let Some(text) = m.text_content() {
                    system.push(text_part(text));
                }
                continue;
            }
            Role::User => {
                let parts = match &m.content {
                    None => Vec::new(),
                    Some(c) => c
                        .parts()
                        .into_iter()
                        .map(user_part)
                        .collect::<Result<_, _>>()?,
                };
                ("user", parts)
            }
            Role::Assistant => {
                let mut parts = Vec::new();
                if let Some(text) = m.text_content().filter(|t| !t.is_empty()) {
                    parts.push(text_part(text));
                }
                for call in m.tool_calls.iter().flatten() {
                    call_names.push((&call.id, &call.function.name));
                    parts.push(g::Part {
                        function_call: Some(g::FunctionCall {
                            id: None,
                            name: call.function.name.clone(),
                            args: parse_arguments(&call.function.arguments)?,
                        }),
                        ..g::Part::default()
                    });
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = call_names
                    .iter()
                    .find(|(call, _)| *call == id)
                    .map(|(_, name)| (*name).to_owned())
                    .ok_or_else(|| {
                        TranslateError::Invalid(format!("tool result for unknown call {id:?}"))
                    })?;
                let text = m.text_content().unwrap_or_default();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => serde_json::json!({ "content": text }),
                };
                let part = g::Part {
                    function_response: Some(g::FunctionResponse {
                        id: None,
                        name,
                        response,
                    }),
                    ..g::Part::default()
                };
                ("user", vec![part])
            }
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    let contents = turns
        .into_iter()
        .filter(|(_, parts)| !parts.is_empty())
        .map(|(role, parts)| g::Content {
            role: Some(role.to_owned()),
            parts,
        })
        .collect();

    let tools = match &req.tools {
        None => None,
        Some(tools) => {
            let declarations = tools
                .iter()
                .map(|t| {
                    let f = t
                        .function
                        .as_ref()
                        .ok_or(TranslateError::Unsupported("non-function tools"))?;
                    Ok(g::FunctionDeclaration {
                        name: f.name.clone(),
                        description: f.description.clone(),
                        parameters: f.parameters.clone().map(clean_schema),
                    })
                })
                .collect::<Result<Vec<_>, TranslateError>>()?;
            Some(vec![g::Tool {
                function_declarations: declarations,
            }])
        }
    };
    let tool_config = match req.tool_choice.as_ref().map(|c| c.mode()).transpose()? {
        None => None,
        Some(mode) => {
            let (mode, allowed) = match mode {
                ToolMode::Auto => ("AUTO", None),
                ToolMode::None => ("NONE", None),
                ToolMode::Required => ("ANY", None),
                ToolMode::Named(name) => ("ANY", Some(vec![name.to_owned()])),
            };
            Some(g::ToolConfig {
                function_calling_config: g::FunctionCallingConfig {
                    mode: mode.to_owned(),
                    allowed_function_names: allowed,
                },
            })
        }
    };
    let json_mode = req
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_object" || t == "json_schema");
    let config = g::GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens(),
        stop_sequences: req.stop_sequences(),
        candidate_count: req.n,
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        response_mime_type: json_mode.then(|| "application/json".to_owned()),
        response_schema: None,
    };
    Ok(g::GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(g::Content {
            role: None,
            parts: system,
        }),
        tools,
        tool_config,
        generation_config: (config != g::GenerationConfig::default()).then_some(config),
    })
}

fn text_part(text: String) -> g::Part {
    g::Part {
        text: Some(text),
        ..g::Part::default()
    }
}

fn user_part(part: ContentPart) -> Result<g::Part, TranslateError> {
    match part {
        ContentPart::Text { text, .. } => Ok(text_part(text)),
        ContentPart::ImageUrl { image_url } => Ok(match image_url.parse()? {
            Image::Base64 { media_type, data } => g::Part {
                inline_data: Some(g::Blob {
                    mime_type: media_type.to_owned(),
                    data: data.to_owned(),
                }),
                ..g::Part::default()
            },
            Image::Url(url) => g::Part {
                file_data: Some(g::FileData {
                    mime_type: Some(mime_from_extension(url).to_owned()),
                    file_uri: url.to_owned(),
                }),
                ..g::Part::default()
            },
        }),
        ContentPart::Other => Err(TranslateError::Unsupported(
            "content parts other than text and image_url",
        )),
    }
}

fn mime_from_extension(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

/// Drops the JSON Schema keywords Gemini's OpenAPI-subset schema rejects.
fn clean_schema(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("$schema");
                map.remove("additionalProperties");
                map.remove("strict");
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

// ---------------------------------------------------------------------------
// Gemini response -> OpenAI response

/// Gemini `finishReason` as an OpenAI `finish_reason`.
pub fn finish_reason(reason: &str, has_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if has_calls => "tool_calls",
        _ => "stop",
    }
}

/// The common usage record for `usageMetadata` (prompt count includes the
/// cached part; candidates exclude thoughts). The sum saturates, as in
/// [`crate::anthropic::usage`].
pub fn usage(u: &g::UsageMetadata) -> Usage {
    let output = match (u.candidates_token_count, u.thoughts_token_count) {
        (None, None) => None,
        (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
    };
    Usage {
        input_tokens: u.prompt_token_count,
        output_tokens: output,
        cached_input_tokens: u.cached_content_token_count,
        cache_write_tokens: None,
        reasoning_tokens: u.thoughts_token_count,
        estimated: false,
    }
}

fn call_id(call: &g::FunctionCall, n: usize) -> String {
    call.id.clone().unwrap_or_else(|| format!("call_{n}"))
}

impl ChatResponse {
    pub fn from_gemini(resp: &g::GenerateContentResponse, ctx: &ReplyCtx) -> (ChatResponse, Usage) {
        let mut choices = Vec::new();
        for (i, cand) in resp.candidates.iter().enumerate() {
            let mut text = String::new();
            let mut calls = Vec::new();
            for part in cand.content.iter().flat_map(|c| &c.parts) {
                if part.thought == Some(true) {
                    continue;
                }
                if let Some(t) = &part.text {
                    text.push_str(t);
                }
                if let Some(call) = &part.function_call {
                    let id = call_id(call, calls.len());
                    calls.push(chat::ToolCall::function(id, call.name.clone(), &call.args));
                }
            }
            let reason = finish_reason(
                cand.finish_reason.as_deref().unwrap_or("STOP"),
                !calls.is_empty(),
            );
            let index = cand.index.unwrap_or(i as u32);
            let has_text = !text.is_empty();
            choices.push(chat::Choice::assistant(
                index, text, has_text, calls, reason,
            ));
        }
        let usage = resp.usage_metadata.as_ref().map(usage).unwrap_or_default();
        let chat = ChatResponse::translated(ctx, choices, &usage);
        (chat, usage)
    }
}

// ---------------------------------------------------------------------------
// Gemini stream -> OpenAI stream

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    Failed,
}

/// Gemini SSE in, OpenAI `chat.completion.chunk` SSE out.
#[derive(Debug)]
pub struct GeminiToOpenAi {
    framer: SseFramer,
    state: GeminiState,
}

#[derive(Debug)]
struct GeminiState {
    w: ChunkWriter,
    include_usage: bool,
    started: bool,
    calls: u32,
    usage: Option<g::UsageMetadata>,
    finish_reason: Option<&'static str>,
    phase: Phase,
    unknown: u64,
    sent_bytes: usize,
    known: KnownSecrets,
}

impl GeminiToOpenAi {
    pub fn new(ctx: ReplyCtx) -> Self {
        Self {
            framer: SseFramer::new(MAX_EVENT_BYTES),
            state: GeminiState {
                w: ChunkWriter::new(&ctx),
                include_usage: ctx.include_usage,
                started: false,
                calls: 0,
                usage: None,
                finish_reason: None,
                phase: Phase::Open,
                unknown: 0,
                sent_bytes: 0,
                known: KnownSecrets::default(),
            },
        }
    }

    /// Removes `known` (the upstream's credentials) from the messages of
    /// error events, besides anything shaped like a credential.
    pub fn redacting(mut self, known: KnownSecrets) -> Self {
        self.state.known = known;
        self
    }

    pub fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let state = &mut self.state;
        crate::chat::feed_sse(&mut self.framer, input, out, |ev, out| {
            state.on_event(ev, out)
        })
    }

    pub fn unknown_events(&self) -> u64 {
        self.state.unknown
    }

    pub fn finish(mut self, out: &mut Vec<u8>) -> Summary {
        let _ = self.framer.finish();
        let s = self.state;
        let usage = s.usage.as_ref().map(usage).unwrap_or_default();
        // Gemini has no end marker: a body that ends after a finish reason
        // is complete, and gets its usage chunk and [DONE] here.
        let complete = s.phase == Phase::Open && s.finish_reason.is_some();
        if complete {
            if s.include_usage {
                s.w.usage(out, &usage);
            }
            ChunkWriter::done(out);
        }
        chat::end_stream(
            out,
            chat::StreamEnd {
                usage,
                estimated: !complete,
                cut: s.phase == Phase::Open && !complete,
                sent_bytes: s.sent_bytes,
                finish_reason: s.finish_reason,
                unknown_events: s.unknown,
            },
        )
    }
}

impl GeminiState {
    fn on_event(&mut self, ev: SseEvent<'_>, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.phase != Phase::Open || ev.is_comment_only() {
            return Ok(());
        }
        let data = ev.data();
        if data.is_empty() {
            return Ok(());
        }
        let value: Value = upstream_json(&data)?;
        if let Some(error) = value.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("upstream error");
            let status = error.get("status").and_then(Value::as_str);
            let code = error.get("code").and_then(Value::as_u64).unwrap_or(500);
            let kind = crate::openai_error_type(u16::try_from(code).unwrap_or(500));
            ChunkWriter::error(
                out,
                &crate::redact_secrets(message, &self.known),
                kind,
                status,
            );
            self.phase = Phase::Failed;
            return Ok(());
        }
        let record: g::GenerateContentResponse = serde_json::from_value(value)
            .map_err(|e| TranslateError::UpstreamJson(e.to_string()))?;
        if record.usage_metadata.is_some() {
            self.usage = record.usage_metadata;
        }
        if record.candidates.is_empty() && record.usage_metadata.is_none() {
            self.unknown += 1;
            return Ok(());
        }
        if !self.started {
            self.started = true;
            self.w.role(out);
        }
        let Some(cand) = record.candidates.first() else {
            return Ok(());
        };
        for part in cand.content.iter().flat_map(|c| &c.parts) {
            if part.thought == Some(true) {
                continue;
            }
            if let Some(text) = part.text.as_deref().filter(|t| !t.is_empty()) {
                self.sent_bytes += text.len();
                self.w.content(out, text);
            } else if let Some(call) = &part.function_call {
                let args = call.args.to_string();
                self.sent_bytes += args.len() + call.name.len();
                let id = call_id(call, self.calls as usize);
                self.w
                    .tool_call(out, self.calls, Some((&id, &call.name)), &args);
                self.calls += 1;
            } else if part.text.is_none() {
                self.unknown += 1;
            }
        }
        if let (Some(reason), None) = (&cand.finish_reason, self.finish_reason) {
            let reason = finish_reason(reason, self.calls > 0);
            self.finish_reason = Some(reason);
            self.w.finish(out, reason);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Embeddings

/// The OpenAI embeddings request (`POST /v1/embeddings`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

/// `embedContent` for one input, `batchEmbedContents` for a list.
pub fn embeddings_request(
    req: &EmbeddingsRequest,
    ctx: &PrepareCtx<'_>,
) -> Result<UpstreamRequest, TranslateError> {
    if req
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float" && f != "base64")
    {
        return Err(TranslateError::Unsupported(
            "encoding_format other than float or base64",
        ));
    }
    let content = |text: &str| g::Content {
        role: None,
        parts: vec![text_part(text.to_owned())],
    };
    let (path, body) = match &req.input {
        EmbeddingInput::One(text) => (
            format!("/models/{}:embedContent", ctx.model),
            json_body(&g::EmbedContentRequest {
                model: None,
                content: content(text),
                output_dimensionality: req.dimensions,
            })?,
        ),
        EmbeddingInput::Many(texts) => (
            format!("/models/{}:batchEmbedContents", ctx.model),
            json_body(&g::BatchEmbedContentsRequest {
                requests: texts
                    .iter()
                    .map(|t| g::EmbedContentRequest {
                        model: Some(format!("models/{}", ctx.model)),
                        content: content(t),
                        output_dimensionality: req.dimensions,
                    })
                    .collect(),
            })?,
        ),
    };
    Ok(UpstreamRequest {
        path,
        headers: auth_headers(ctx)?,
        body,
    })
}

/// An `embedContent` or `batchEmbedContents` response as an OpenAI
/// embeddings list. Gemini reports no token counts, so `usage` is left out
/// rather than made up. With `base64` (what OpenAI SDKs ask for by default)
/// each vector is its little-endian f32 bytes in base64, as OpenAI sends it.
pub fn embeddings_response(
    body: &[u8],
    model: &str,
    base64: bool,
) -> Result<Vec<u8>, TranslateError> {
    let value: Value = upstream_json(body)?;
    let vectors: Vec<g::ContentEmbedding> = if value.get("embedding").is_some() {
        let one: g::EmbedContentResponse = serde_json::from_value(value)
            .map_err(|e| TranslateError::UpstreamJson(e.to_string()))?;
        vec![one.embedding]
    } else {
        let many: g::BatchEmbedContentsResponse = serde_json::from_value(value)
            .map_err(|e| TranslateError::UpstreamJson(e.to_string()))?;
        many.embeddings
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let embedding = if base64 {
                use base64::Engine;
                let bytes: Vec<u8> = e
                    .values
                    .iter()
                    .flat_map(|v| (*v as f32).to_le_bytes())
                    .collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::json!(e.values)
            };
            serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json_body(&serde_json::json!({"object": "list", "data": data, "model": model}))
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
