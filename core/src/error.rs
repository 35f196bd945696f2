//! The one error type of the gateway's edge. Each variant knows which side
//! failed, its HTTP status, whether another target may be tried, a
//! low-cardinality label for metrics and logs, and how to render itself in
//! the client's dialect. Errors are logged once, where they are rendered.

use shardgate_proto::h1::H1Error;
use shardgate_proto::openai::{error_body, FactsError};

/// Who caused a failure: decides the status class and what is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadHead(H1Error),
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("Unknown request URL: {method} {path}. Please check the URL for typos.")]
    UnknownRoute { method: String, path: String },
    #[error("Method {method} is not allowed on {path}.")]
    MethodNotAllowed { method: String, path: String },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// A resource the client named (a stored response) is not there.
    #[error("{0}")]
    NotFound(String),
    #[error("Request body is larger than the limit of {limit} bytes.")]
    BodyTooLarge { limit: usize },
    #[error("The request was not received in time.")]
    RequestTimeout,
    #[error("The request body is malformed: {0}")]
    BadBody(String),
    #[error("The gateway is shutting down.")]
    Draining,
    /// A readiness probe's answer when a serving shard did not say it is
    /// ready in time (the reason says which part).
    #[error("The gateway is not ready: {0}.")]
    NotReady(String),
    /// A connection the gateway could not take: its per-shard connection
    /// limit, or the process out of file descriptors.
    #[error("The gateway is at its connection limit ({0}); retry shortly.")]
    Overloaded(&'static str),
    /// No valid gateway key. Deliberately one message for missing, unknown,
    /// revoked and expired keys: nothing hints at which keys exist.
    #[error("Incorrect or missing API key. Send a gateway key as `Authorization: Bearer <key>` or `x-api-key: <key>`.")]
    Unauthorized,
    /// Refused by policy: 403 for access rules, 429 for limits and budgets.
    #[error("{0}")]
    Policy(shardgate_policy::DenyReason),
    /// A guardrail with `action: block` matched the prompt or the answer.
    /// The message names the check and what it found, never the text.
    #[error("The {stage} was blocked by guardrail `{check}` ({found}).")]
    Guardrail {
        check: String,
        stage: &'static str,
        found: &'static str,
    },
    /// A remote guardrail (`on_error: fail_closed`) could not be asked.
    #[error("Guardrail `{check}` could not check the prompt: {reason}")]
    GuardrailUnavailable { check: String, reason: String },
    /// A limited request could not get quota from the cluster store (down
    /// under `on_unavailable: deny`, or late past `cluster.deadline`).
    #[error("{0}")]
    QuotaUnavailable(crate::admission::QuotaUnavailable),
    /// The gateway's config cannot serve this request (a provider without
    /// credentials). The message names no secret.
    #[error("Gateway misconfiguration: {0}")]
    Misconfigured(String),
    /// An upstream answer that could not be translated to the client's
    /// dialect.
    #[error("Provider `{provider}` sent a response that could not be translated: {reason}")]
    UpstreamTranslate { provider: String, reason: String },
    #[error("Could not reach provider `{provider}`: {reason}")]
    UpstreamConnect { provider: String, reason: String },
    #[error("Provider `{provider}` did not answer in time.")]
    UpstreamTimeout { provider: String },
    #[error("Provider `{provider}` sent a malformed response: {reason}")]
    UpstreamProtocol { provider: String, reason: String },
    /// An error status from the upstream; its body is passed on when it is
    /// already OpenAI-shaped JSON.
    #[error("Provider `{provider}` answered with status {status}.")]
    UpstreamStatus {
        provider: String,
        status: u16,
        body: Vec<u8>,
        /// The upstream's `Retry-After`, passed on when this error is the
        /// client's answer (SDKs wait that long before retrying).
        retry_after: Option<RetryAfter>,
    },
}

/// A `Retry-After` value as RFC 9110 §10.2.3 allows it: delta-seconds or an
/// HTTP-date. Anything else from an upstream is dropped, never relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryAfter(String);

impl RetryAfter {
    pub fn parse(value: &[u8]) -> Option<RetryAfter> {
        let v = std::str::from_utf8(value).ok()?.trim();
        let seconds = !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit());
        // IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
        let date = v.len() == 29
            && v.ends_with(" GMT")
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" ,:".contains(&b));
        (seconds || date).then(|| RetryAfter(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The delay in seconds, when it was given as one (not an HTTP-date).
    pub fn seconds(&self) -> Option<u64> {
        self.0.parse().ok()
    }
}

impl GatewayError {
    /// The `Retry-After` the client should see with this error, if any.
    pub fn retry_after(&self) -> Option<&RetryAfter> {
        match self {
            GatewayError::UpstreamStatus { retry_after, .. } => retry_after.as_ref(),
            _ => None,
        }
    }
}

impl GatewayError {
    pub fn side(&self) -> Side {
        use GatewayError::*;
        match self {
            BadHead(_)
            | BadRequest { .. }
            | UnknownRoute { .. }
            | MethodNotAllowed { .. }
            | ModelNotFound(_)
            | NotFound(_)
            | BodyTooLarge { .. }
            | RequestTimeout
            | Unauthorized
            | Policy(_)
            | Guardrail { .. }
            | BadBody(_) => Side::Client,
            Draining
            | NotReady(_)
            | Overloaded(_)
            | Misconfigured(_)
            | QuotaUnavailable(_)
            | GuardrailUnavailable { .. } => Side::Gateway,
            UpstreamConnect { .. }
            | UpstreamTimeout { .. }
            | UpstreamProtocol { .. }
            | UpstreamTranslate { .. }
            | UpstreamStatus { .. } => Side::Upstream,
        }
    }

    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            BadHead(e) => e.status(),
            BadRequest { .. } | BadBody(_) | Guardrail { .. } => 400,
            Unauthorized => 401,
            Policy(reason) => reason.http_status(),
            UnknownRoute { .. } | ModelNotFound(_) | NotFound(_) => 404,
            MethodNotAllowed { .. } => 405,
            RequestTimeout => 408,
            BodyTooLarge { .. } => 413,
            Draining
            | NotReady(_)
            | Overloaded(_)
            | QuotaUnavailable(_)
            | GuardrailUnavailable { .. } => 503,
            Misconfigured(_) => 500,
            UpstreamConnect { .. } | UpstreamProtocol { .. } | UpstreamTranslate { .. } => 502,
            UpstreamTimeout { .. } => 504,
            UpstreamStatus { status, .. } => *status,
        }
    }

    /// Whether the next target of a model may be tried after this error.
    /// Only failures that happened before the client saw any byte qualify,
    /// which the caller guarantees by asking only then.
    pub fn retryable(&self) -> bool {
        use GatewayError::*;
        match self {
            UpstreamConnect { .. }
            | UpstreamTimeout { .. }
            | UpstreamProtocol { .. }
            | UpstreamTranslate { .. }
            | Misconfigured(_) => true,
            UpstreamStatus { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Low-cardinality label for metrics and logs.
    pub fn label(&self) -> &'static str {
        use GatewayError::*;
        match self {
            BadHead(_) => "bad_head",
            BadRequest { .. } => "bad_request",
            UnknownRoute { .. } => "unknown_route",
            MethodNotAllowed { .. } => "method_not_allowed",
            ModelNotFound(_) => "model_not_found",
            NotFound(_) => "not_found",
            BodyTooLarge { .. } => "body_too_large",
            RequestTimeout => "request_timeout",
            BadBody(_) => "bad_body",
            Draining => "draining",
            NotReady(_) => "not_ready",
            Overloaded(_) => "overloaded",
            QuotaUnavailable(_) => "quota_store_unavailable",
            Unauthorized => "unauthorized",
            Policy(reason) => reason.code(),
            Guardrail { .. } => "guardrail_blocked",
            GuardrailUnavailable { .. } => "guardrail_unavailable",
            Misconfigured(_) => "misconfigured",
            UpstreamTranslate { .. } => "upstream_translate",
            UpstreamConnect { .. } => "upstream_connect",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamProtocol { .. } => "upstream_protocol",
            UpstreamStatus { .. } => "upstream_status",
        }
    }

    fn openai_type(&self) -> &'static str {
        match (self.side(), self.status()) {
            (_, 401) => "invalid_request_error",
            (_, 403) => "permission_error",
            (_, 429)
                if matches!(
                    self,
                    GatewayError::Policy(shardgate_policy::DenyReason::BudgetExhausted { .. })
                ) =>
            {
                "insufficient_quota"
            }
            (_, 404) => "invalid_request_error",
            (Side::Client, _) => "invalid_request_error",
            (_, 429) => "rate_limit_error",
            (Side::Upstream, _) => "upstream_error",
            (Side::Gateway, _) => "server_error",
        }
    }

    fn openai_code(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            ModelNotFound(_) => Some("model_not_found"),
            UnknownRoute { .. } => Some("unknown_url"),
            BodyTooLarge { .. } => Some("request_too_large"),
            UpstreamTimeout { .. } => Some("upstream_timeout"),
            UpstreamConnect { .. } => Some("upstream_unavailable"),
            Unauthorized => Some("invalid_api_key"),
            Policy(reason) => Some(reason.code()),
            QuotaUnavailable(_) => Some("quota_store_unavailable"),
            GuardrailUnavailable { .. } => Some("guardrail_unavailable"),
            _ => None,
        }
    }

    /// The body in OpenAI's error shape. An upstream's own OpenAI-shaped
    /// error body is passed on as it came, so clients see the provider's
    /// message; anything else is wrapped.
    pub fn openai_body(&self) -> Vec<u8> {
        if let GatewayError::UpstreamStatus { body, .. } = self {
            if is_openai_error(body) {
                return body.clone();
            }
        }
        let param = match self {
            GatewayError::BadRequest { param, .. } => *param,
            GatewayError::ModelNotFound(_) => Some("model"),
            _ => None,
        };
        // The code names the check, so a client can tell its guardrails
        // apart: `guardrail:<name>`.
        let code = match self {
            GatewayError::Guardrail { check, .. } => Some(format!("guardrail:{check}")),
            _ => self.openai_code().map(str::to_owned),
        };
        error_body(
            &self.to_string(),
            self.openai_type(),
            param,
            code.as_deref(),
        )
    }
}

impl From<H1Error> for GatewayError {
    fn from(e: H1Error) -> Self {
        GatewayError::BadHead(e)
    }
}

impl From<FactsError> for GatewayError {
    fn from(e: FactsError) -> Self {
        let param = match &e {
            FactsError::MissingModel => Some("model"),
            FactsError::WrongType(f) | FactsError::DuplicateKey(f) => Some(*f),
            _ => None,
        };
        let message = match &e {
            FactsError::MissingModel => "you must provide a model parameter".to_owned(),
            FactsError::InvalidJson(m) => {
                format!("We could not parse the JSON body of your request. ({m})")
            }
            FactsError::NotAnObject => "The request body must be a JSON object.".to_owned(),
            FactsError::WrongType(f) => format!("Invalid type for '{f}'."),
            FactsError::DuplicateKey(f) => format!("'{f}' appears more than once."),
        };
        GatewayError::BadRequest { message, param }
    }
}

/// True when `body` is a JSON object with an `error` object: the shape
/// OpenAI-compatible upstreams use, safe to forward as is.
fn is_openai_error(body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v.get("error").is_some_and(|e| e.is_object()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let e = GatewayError::ModelNotFound("nope".into());
        let v: serde_json::Value = serde_json::from_slice(&e.openai_body()).unwrap();
        assert_eq!(e.status(), 404);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("`nope`"));
    }

    #[test]
    fn upstream_error_body_passed_on_or_wrapped() {
        let body =
            br#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"x"}}"#;
        let e = GatewayError::UpstreamStatus {
            provider: "p".into(),
            status: 429,
            body: body.to_vec(),
            retry_after: None,
        };
        assert_eq!(e.openai_body(), body.to_vec());
        assert!(e.retryable());
        let e = GatewayError::UpstreamStatus {
            provider: "p".into(),
            status: 502,
            body: b"<html>bad gateway</html>".to_vec(),
            retry_after: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&e.openai_body()).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_nothing_else() {
        let ok = |v: &str| RetryAfter::parse(v.as_bytes()).map(|r| r.as_str().to_owned());
        assert_eq!(ok(" 7 "), Some("7".into()));
        assert_eq!(
            ok("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some("Wed, 21 Oct 2015 07:28:00 GMT".into())
        );
        for bad in ["", "-1", "1.5", "7\r\nx-evil: 1", "soon", "12345678901"] {
            assert_eq!(ok(bad), None, "{bad:?}");
        }
    }
}
