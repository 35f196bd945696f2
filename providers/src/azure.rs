//! Azure OpenAI: OpenAI's dialect under
//! `/openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=...`
//! (relative to `https://{resource}.openai.azure.com`), key in `api-key`.
//! The deployment, not the body's `model`, picks the model.

use serde::{Deserialize, Serialize};

use crate::chat::{ChatRequest, ReplyCtx};
use crate::errors::KnownSecrets;
use crate::openai::{body_for, openai_error_passthrough, passthrough_response, Operation};
use crate::{
    Dialect, PrepareCtx, Provider, StreamTranslator, TranslateError, UpstreamRequest, Usage,
};

pub const DEFAULT_API_VERSION: &str = "2024-10-21";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureProvider {
    #[serde(default = "default_api_version")]
    pub api_version: String,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.to_owned()
}

impl Default for AzureProvider {
    fn default() -> Self {
        Self {
            api_version: default_api_version(),
        }
    }
}

fn url_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl AzureProvider {
    /// Path and headers for a pass-through call to `deployment`.
    pub fn endpoint(
        &self,
        op: Operation,
        deployment: &str,
        api_key: Option<&str>,
    ) -> Result<(String, Vec<(String, String)>), TranslateError> {
        if !url_safe(deployment) {
            return Err(TranslateError::Invalid(format!(
                "Azure deployment name {deployment:?} has characters outside [A-Za-z0-9._-]"
            )));
        }
        if !url_safe(&self.api_version) {
            return Err(TranslateError::Invalid("bad api-version".into()));
        }
        let key = api_key.ok_or(TranslateError::MissingCredentials("Azure api-key"))?;
        let path = format!(
            "/openai/deployments/{deployment}{}?api-version={}",
            op.path(),
            self.api_version
        );
        Ok((
            path,
            vec![
                ("api-key".to_owned(), key.to_owned()),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
        ))
    }
}

impl Provider for AzureProvider {
    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }

    fn prepare(
        &self,
        req: &ChatRequest,
        ctx: &PrepareCtx<'_>,
    ) -> Result<UpstreamRequest, TranslateError> {
        let (path, headers) = self.endpoint(Operation::ChatCompletions, ctx.model, ctx.api_key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_path_and_bad_deployment() {
        let p = AzureProvider::default();
        let (path, headers) = p
            .endpoint(Operation::Embeddings, "text-embedding-3-small", Some("k"))
            .unwrap();
        assert_eq!(
            path,
            "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21"
        );
        assert_eq!(headers[0], ("api-key".to_owned(), "k".to_owned()));
        assert!(p
            .endpoint(Operation::Embeddings, "a/../b", Some("k"))
            .is_err());
        assert!(p.endpoint(Operation::Embeddings, "d", None).is_err());
    }
}
