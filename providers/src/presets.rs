//! OpenAI-compatible providers as data: name, default base URL (paths are
//! relative to it, so it includes the API version prefix), how the key is
//! sent, and the environment variable that conventionally holds it.

use serde::{Deserialize, Serialize};

/// How an OpenAI-compatible provider takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKeyHeader,
    /// No key (local servers); a key given anyway is sent as Bearer.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub base_url: &'static str,
    pub auth: AuthStyle,
    /// Environment variable conventionally holding the key.
    pub key_env: Option<&'static str>,
}

const fn preset(
    name: &'static str,
    base_url: &'static str,
    auth: AuthStyle,
    key_env: Option<&'static str>,
) -> Preset {
    Preset {
        name,
        base_url,
        auth,
        key_env,
    }
}

pub const PRESETS: &[Preset] = &[
    preset(
        "openai",
        "https://api.openai.com/v1",
        AuthStyle::Bearer,
        Some("OPENAI_API_KEY"),
    ),
    preset(
        "deepseek",
        "https://api.deepseek.com/v1",
        AuthStyle::Bearer,
        Some("DEEPSEEK_API_KEY"),
    ),
    preset(
        "mistral",
        "https://api.mistral.ai/v1",
        AuthStyle::Bearer,
        Some("MISTRAL_API_KEY"),
    ),
    preset(
        "groq",
        "https://api.groq.com/openai/v1",
        AuthStyle::Bearer,
        Some("GROQ_API_KEY"),
    ),
    preset(
        "together",
        "https://api.together.xyz/v1",
        AuthStyle::Bearer,
        Some("TOGETHER_API_KEY"),
    ),
    preset(
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        AuthStyle::Bearer,
        Some("FIREWORKS_API_KEY"),
    ),
    preset(
        "openrouter",
        "https://openrouter.ai/api/v1",
        AuthStyle::Bearer,
        Some("OPENROUTER_API_KEY"),
    ),
    preset(
        "xai",
        "https://api.x.ai/v1",
        AuthStyle::Bearer,
        Some("XAI_API_KEY"),
    ),
    preset(
        "vllm",
        "http://localhost:8000/v1",
        AuthStyle::None,
        Some("VLLM_API_KEY"),
    ),
    preset("ollama", "http://localhost:11434/v1", AuthStyle::None, None),
];

/// The preset called `name` (case-insensitive).
pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_urls_https_unless_local() {
        for (i, p) in PRESETS.iter().enumerate() {
            assert!(PRESETS[..i].iter().all(|q| q.name != p.name));
            let local = p.base_url.starts_with("http://localhost");
            assert!(local || p.base_url.starts_with("https://"), "{}", p.name);
            assert!(!p.base_url.ends_with('/'));
            assert_eq!(local, p.auth == AuthStyle::None);
        }
        assert_eq!(
            find("Groq").map(|p| p.base_url),
            Some("https://api.groq.com/openai/v1")
        );
        assert!(find("nope").is_none());
    }
}
