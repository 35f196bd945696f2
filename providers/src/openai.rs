//! OpenAI and OpenAI-compatible providers (the [`crate::presets`]).
//!
//! The gateway relays OpenAI-dialect traffic byte for byte; this provider
//! only says where it goes and how it authenticates ([`OpenAiCompatible::endpoint`]).
//! [`Provider::prepare`] re-serializes the typed request for callers that
//! hold one (the inbound Anthropic dialect).

use serde::{Deserialize, Serialize};

use crate::chat::{ChatRequest, ChatResponse, ReplyCtx};
use crate::errors::{openai_error, KnownSecrets};
use crate::presets::{self, AuthStyle};
use crate::{
    json_body, upstream_json, Dialect, PrepareCtx, Provider, StreamTranslator, TranslateError,
    UpstreamRequest, Usage,
};

/// What an OpenAI-dialect call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ChatCompletions,
    /// The legacy `/completions`.
    Completions,
    Embeddings,
    /// The Responses API, `/responses`.
    Responses,
}

impl Operation {
    pub fn path(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "/chat/completions",
            Operation::Completions => "/completions",
            Operation::Embeddings => "/embeddings",
            Operation::Responses => "/responses",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAiCompatible {
    pub auth: AuthStyle,
    /// The provider serves OpenAI's Responses API (`kind: openai`): a
    /// Responses request passes through. Other OpenAI-compatible servers
    /// get it translated to chat.
    #[serde(default)]
    pub responses_api: bool,
}

impl OpenAiCompatible {
    pub fn from_preset(name: &str) -> Option<Self> {
        presets::find(name).map(|p| Self {
            auth: p.auth,
            responses_api: name == "openai",
        })
    }

    /// Path and headers for a pass-through call.
    pub fn endpoint(
        &self,
        op: Operation,
        api_key: Option<&str>,
    ) -> Result<(String, Vec<(String, String)>), TranslateError> {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        match (self.auth, api_key) {
            (AuthStyle::Bearer, None) => {
                return Err(TranslateError::MissingCredentials("API key"));
            }
            (AuthStyle::ApiKeyHeader, None) => {
                return Err(TranslateError::MissingCredentials("api-key"));
            }
            (AuthStyle::None, None) => {}
            (AuthStyle::Bearer | AuthStyle::None, Some(key)) => {
                headers.push(("authorization".to_owned(), format!("Bearer {key}")));
            }
            (AuthStyle::ApiKeyHeader, Some(key)) => {
                headers.push(("api-key".to_owned(), key.to_owned()));
            }
        }
        Ok((op.path().to_owned(), headers))
    }
}

/// The typed request as an upstream body, sent as `model`.
pub(crate) fn body_for(req: &ChatRequest, model: &str) -> Result<Vec<u8>, TranslateError> {
    let mut req = req.clone();
    model.clone_into(&mut req.model);
    json_body(&req)
}

/// An OpenAI body is already OpenAI: returned as is, with its usage.
pub(crate) fn passthrough_response(body: &[u8]) -> Result<(Vec<u8>, Usage), TranslateError> {
    let resp: ChatResponse = upstream_json(body)?;
    let usage = resp.usage.map(|u| u.to_usage()).unwrap_or_default();
    Ok((body.to_vec(), usage))
}

/// OpenAI error bodies keep their message and code (redacted); the gateway
/// relays OpenAI-dialect errors through [`crate::redact_json_secrets`]
/// instead, this is the trait's answer for other callers.
pub(crate) fn openai_error_passthrough(status: u16, body: &[u8], known: &KnownSecrets) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = v
        .pointer("/error/message")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    let code = v.pointer("/error/code").and_then(|m| m.as_str());
    openai_error(status, message, code, known)
}

impl Provider for OpenAiCompatible {
    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }

    fn prepare(
        &self,
        req: &ChatRequest,
        ctx: &PrepareCtx<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let (path, headers) = self.endpoint(Operation::ChatCompletions, ctx.api_key)?;
        Ok(UpstreamRequest {
            path,
            headers,
            body: body_for(req, ctx.model)?,
        })
    }

    fn response_to_openai(
        &self,
        body: &[u8],
        _ctx: &ReplyCtx,
    ) -> Result<(Vec<u8>, Usage), TranslateError> {
        passthrough_response(body)
    }

    fn error_to_openai(&self, status: u16, body: &[u8], known: &KnownSecrets) -> Vec<u8> {
        openai_error_passthrough(status, body, known)
    }

    fn stream_translator(&self, _ctx: ReplyCtx, _known: &KnownSecrets) -> Option<StreamTranslator> {
        None
    }
}
