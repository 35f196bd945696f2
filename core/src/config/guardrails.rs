//! The `webhook:` of `guardrails:` checks: resolved here (its URL, timeout
//! and header secrets) so a bad one stops the config, naming the field.
//! The checks themselves compile in `shardgate_policy::guardrails`.

use super::secret::{Secret, SecretRef};
use super::upstream::parse_base_url;
use super::{field, BaseUrl, ConfigError};
use shardgate_policy::guardrails::{FailMode, Guardrails};
use std::time::Duration;

/// A webhook's longest `timeout`: a prompt waits for it.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: BaseUrl,
    pub timeout: Duration,
    pub on_error: FailMode,
    /// Runs while the model answers (see `WebhookSpec::parallel`).
    pub parallel: bool,
    pub headers: Vec<(String, Secret)>,
}

/// Each check's webhook, by check index (`None` for in-process checks).
pub fn webhooks(
    rails: &Guardrails,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Option<WebhookConfig>>, ConfigError> {
    let mut out = Vec::with_capacity(rails.checks().len());
    for (i, check) in rails.checks().iter().enumerate() {
        let Some(w) = &check.webhook else {
            out.push(None);
            continue;
        };
        let path = format!("guardrails[{i}].webhook");
        let url = parse_base_url(&format!("{path}.url"), &w.url)?;
        let timeout = match &w.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(t.trim())
                .map_err(|e| field(format!("{path}.timeout"), format!("`{t}`: {e}")))?,
        };
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(field(
                format!("{path}.timeout"),
                format!("must be more than 0 and at most {MAX_TIMEOUT:?}"),
            ));
        }
        let mut headers = Vec::with_capacity(w.headers.len());
        for (h, v) in &w.headers {
            let hpath = format!("{path}.headers.{h}");
            let reserved = [
                "host",
                "content-length",
                "content-type",
                "transfer-encoding",
                "connection",
            ];
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(field(hpath, "is not a header name"));
            }
            if reserved.contains(&h.to_ascii_lowercase().as_str()) {
                return Err(field(hpath, "is set by the gateway"));
            }
            let v = SecretRef::from_config(v)
                .resolve(env)
                .map_err(|m| field(hpath.clone(), m))?;
            if v.expose().bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(field(hpath, "has a line break"));
            }
            headers.push((h.clone(), v));
        }
        out.push(Some(WebhookConfig {
            url,
            timeout,
            on_error: w.on_error,
            parallel: w.parallel,
            headers,
        }));
    }
    Ok(out)
}
