//! One provider as written (`providers:`), and its validation into a
//! [`ProviderKind`]: the fields each kind takes, its credentials, its wire
//! and its health check.

use super::units::dur;
use super::upstream::parse_base_url;
use super::{
    field, ConfigError, Dur, HttpProvider, MockProvider, ProviderKind, Secret, SecretRef, Wire,
};
use serde::Deserialize;
use shardgate_providers::anthropic::{self, AnthropicProvider};
use shardgate_providers::azure::AzureProvider;
use shardgate_providers::bedrock::BedrockProvider;
use shardgate_providers::gemini::{self, GeminiProvider};
use shardgate_providers::openai::OpenAiCompatible;
use shardgate_providers::presets::{self, AuthStyle};
use shardgate_providers::sigv4::Credentials;
use shardgate_providers::KnownSecrets;
use std::path::PathBuf;
use std::time::Duration;

/// One provider as written. Fields are flat so that every kind reads the
/// same way; [`RawProvider::validate`] refuses a field its kind does not use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    kind: String,
    base_url: Option<String>,
    api_key: Option<SecretRef>,
    ca_file: Option<PathBuf>,
    // mock
    output_tokens: Option<usize>,
    ttft: Option<Dur>,
    tokens_per_second: Option<u32>,
    // azure
    api_version: Option<String>,
    // anthropic
    anthropic_version: Option<String>,
    default_max_tokens: Option<u64>,
    // bedrock
    region: Option<String>,
    aws_access_key_id: Option<SecretRef>,
    aws_secret_access_key: Option<SecretRef>,
    aws_session_token: Option<SecretRef>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: String,
    interval: Option<Dur>,
    timeout: Option<Dur>,
}

/// Kinds other than the OpenAI-compatible presets.
const KINDS: &[&str] = &[
    "mock",
    "openai_compatible",
    "azure",
    "anthropic",
    "gemini",
    "bedrock",
];

impl RawProvider {
    /// `stored` is the provider's credential from the encrypted store,
    /// which wins over `api_key`.
    pub(super) fn validate(
        self,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
        stored: Option<&Secret>,
    ) -> Result<ProviderKind, ConfigError> {
        let kind = self.kind.to_ascii_lowercase();
        let set: [(&str, bool); 14] = [
            ("base_url", self.base_url.is_some()),
            ("api_key", self.api_key.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("output_tokens", self.output_tokens.is_some()),
            ("ttft", self.ttft.is_some()),
            ("tokens_per_second", self.tokens_per_second.is_some()),
            ("api_version", self.api_version.is_some()),
            ("anthropic_version", self.anthropic_version.is_some()),
            ("default_max_tokens", self.default_max_tokens.is_some()),
            ("region", self.region.is_some()),
            ("aws_access_key_id", self.aws_access_key_id.is_some()),
            (
                "aws_secret_access_key",
                self.aws_secret_access_key.is_some(),
            ),
            ("aws_session_token", self.aws_session_token.is_some()),
            ("health_check", self.health_check.is_some()),
        ];
        let http = ["base_url", "api_key", "ca_file", "health_check"];
        let allowed: Vec<&str> = match kind.as_str() {
            "mock" => vec!["output_tokens", "ttft", "tokens_per_second"],
            "azure" => [&http[..], &["api_version"]].concat(),
            "anthropic" => [&http[..], &["anthropic_version", "default_max_tokens"]].concat(),
            "bedrock" => [
                &http[..],
                &[
                    "region",
                    "aws_access_key_id",
                    "aws_secret_access_key",
                    "aws_session_token",
                ],
            ]
            .concat(),
            _ => http.to_vec(),
        };
        if let Some((name, _)) = set.iter().find(|(n, s)| *s && !allowed.contains(n)) {
            return Err(field(
                format!("{path}.{name}"),
                format!("does not apply to providers of kind `{kind}`"),
            ));
        }
        if kind == "mock" {
            return Ok(ProviderKind::Mock(MockProvider {
                output_tokens: self.output_tokens.unwrap_or(16),
                ttft: dur(self.ttft, Duration::ZERO),
                tokens_per_second: self.tokens_per_second.filter(|&t| t > 0),
            }));
        }
        let secret = |name: &str, v: Option<SecretRef>| {
            v.map(|k| k.resolve(env))
                .transpose()
                .map_err(|m| field(format!("{path}.{name}"), m))
        };
        let mut api_key = match stored {
            Some(k) => Some(k.clone()),
            None => secret("api_key", self.api_key)?,
        };
        let mut aws_secrets: Vec<Secret> = Vec::new();
        let required = |name: &str, v: Option<String>| {
            v.ok_or_else(|| {
                field(
                    format!("{path}.{name}"),
                    format!("is required for kind `{kind}`"),
                )
            })
        };
        let (default_base, wire) = match kind.as_str() {
            "openai_compatible" => (
                None,
                Wire::OpenAi(OpenAiCompatible {
                    auth: AuthStyle::Bearer,
                    responses_api: false,
                }),
            ),
            "azure" => {
                let mut p = AzureProvider::default();
                if let Some(v) = self.api_version {
                    p.api_version = v;
                }
                (None, Wire::Azure(p))
            }
            "anthropic" => {
                let mut p = AnthropicProvider::default();
                if let Some(v) = self.anthropic_version {
                    p.version = v;
                }
                if let Some(n) = self.default_max_tokens {
                    p.default_max_tokens = n;
                }
                (
                    Some(anthropic::DEFAULT_BASE_URL.to_owned()),
                    Wire::Anthropic(p),
                )
            }
            "gemini" => (
                Some(gemini::DEFAULT_BASE_URL.to_owned()),
                Wire::Gemini(GeminiProvider::default()),
            ),
            "bedrock" => {
                let region = required("region", self.region)?;
                let id = secret("aws_access_key_id", self.aws_access_key_id)?;
                let key = secret("aws_secret_access_key", self.aws_secret_access_key)?;
                let token = secret("aws_session_token", self.aws_session_token)?;
                aws_secrets.extend(id.iter().chain(&key).chain(&token).cloned());
                let credentials = match (id, key) {
                    (Some(id), Some(key)) => Some(Credentials {
                        access_key_id: id.expose().to_owned(),
                        secret_access_key: key.expose().to_owned(),
                        session_token: token.map(|t| t.expose().to_owned()),
                    }),
                    (None, None) if api_key.is_some() => None,
                    (None, None) => return Err(field(
                        path,
                        "bedrock needs aws_access_key_id and aws_secret_access_key, or an api_key",
                    )),
                    (Some(_), None) => {
                        return Err(field(
                            format!("{path}.aws_secret_access_key"),
                            "is required with aws_access_key_id",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(field(
                            format!("{path}.aws_access_key_id"),
                            "is required with aws_secret_access_key",
                        ))
                    }
                };
                let default = format!("https://{}", BedrockProvider::default_host(&region));
                let p = BedrockProvider {
                    region,
                    credentials,
                    endpoint_host: None,
                };
                (Some(default), Wire::Bedrock(p))
            }
            name => match presets::find(name) {
                Some(preset) => {
                    // A preset reads its conventional variable when no key is
                    // written (`kind: groq` just works with GROQ_API_KEY set).
                    if api_key.is_none() {
                        if let Some(var) = preset.key_env {
                            api_key = SecretRef::env(var).resolve(env).ok();
                        }
                    }
                    (
                        Some(preset.base_url.to_owned()),
                        Wire::OpenAi(OpenAiCompatible {
                            auth: preset.auth,
                            responses_api: name == "openai",
                        }),
                    )
                }
                None => {
                    let presets: Vec<&str> = presets::PRESETS.iter().map(|p| p.name).collect();
                    return Err(field(
                        format!("{path}.kind"),
                        format!(
                            "unknown kind `{}`: use one of {}, {}",
                            self.kind,
                            KINDS.join(", "),
                            presets.join(", ")
                        ),
                    ));
                }
            },
        };
        let base_url = match (self.base_url, default_base) {
            (Some(u), _) | (None, Some(u)) => u,
            (None, None) => {
                return Err(field(
                    format!("{path}.base_url"),
                    format!("is required for kind `{kind}`"),
                ))
            }
        };
        let base = parse_base_url(&format!("{path}.base_url"), &base_url)?;
        let mut wire = wire;
        if let Wire::OpenAi(p) = &mut wire {
            if api_key.is_none() {
                // Keyless OpenAI-compatible servers (vLLM, Ollama, test
                // mocks): send no credentials; a server that wants one
                // answers 401, which the client sees.
                p.auth = AuthStyle::None;
            }
        }
        if let Wire::Bedrock(p) = &mut wire {
            if base.authority() != BedrockProvider::default_host(&p.region) {
                p.endpoint_host = Some(base.authority());
            }
        }
        let secrets = KnownSecrets::new(
            api_key
                .iter()
                .chain(&aws_secrets)
                .map(|s| s.expose().to_owned()),
        );
        let health_check = match self.health_check {
            None => None,
            Some(h) => {
                let at = format!("{path}.health_check");
                if !h.path.starts_with('/')
                    || h.path
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    return Err(field(
                        format!("{at}.path"),
                        "must start with `/` and hold no spaces (it is appended to base_url's path)",
                    ));
                }
                let check = super::HealthCheck {
                    path: format!("{}{}", base.path, h.path),
                    interval: dur(h.interval, Duration::from_secs(10)),
                    timeout: dur(h.timeout, Duration::from_secs(2)),
                };
                if check.interval < Duration::from_millis(100) {
                    return Err(field(format!("{at}.interval"), "must be 100ms or more"));
                }
                if check.timeout.is_zero() || check.timeout > check.interval {
                    return Err(field(
                        format!("{at}.timeout"),
                        "must be more than 0 and no more than `interval`",
                    ));
                }
                Some(check)
            }
        };
        Ok(ProviderKind::Http(HttpProvider {
            base,
            api_key,
            secrets,
            ca_file: self.ca_file,
            wire,
            health_check,
        }))
    }
}
