//! Serde shapes of the `guardrails:` config section and of a policy's
//! `guardrails:` attachment.
//!
//! ```yaml
//! guardrails:
//!   - name: no-pii
//!     pii: [email, credit_card, iban, us_ssn]   # or `pii: all`
//!     action: redact
//!   - name: codenames
//!     regex: ['(?i)project\s+falcon', 'ACME-\d{4}']
//!     action: block
//!   - name: banned
//!     deny_words: [darkweb, exploit kit]
//!     action: log
//! policies:
//!   - ai_runtime_policy:
//!       actor_scope: {team: support}
//!       guardrails:
//!         input: [no-pii, codenames]
//!         output: [no-pii]
//! ```

use super::pii::PiiKind;
use serde::{Deserialize, Serialize};

/// One named check. It may combine detectors (`pii`, `regex`,
/// `deny_words`); a match of any of them is the check's match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSpec {
    pub name: String,
    #[serde(default)]
    pub pii: Option<PiiSelection>,
    /// Regular expressions (the `regex` crate's syntax), matched anywhere.
    #[serde(default)]
    pub regex: Vec<String>,
    /// Words or phrases, matched whole and case-insensitively.
    #[serde(default)]
    pub deny_words: Vec<String>,
    /// A remote check: the texts are POSTed to it and its reply decides.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    #[serde(default)]
    pub action: GuardAction,
    /// On streams: how much of the newest text (bytes) is scanned with each
    /// event, and held back from the client by `block` and `redact`
    /// checks, so a match up to this long is caught before any of it is
    /// sent. Default 64, at most 4096.
    #[serde(default)]
    pub stream_window: Option<usize>,
}

/// `pii: all` or a list of kinds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PiiSelection {
    All(AllKinds),
    Kinds(Vec<PiiKind>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllKinds {
    All,
}

impl PiiSelection {
    pub fn kinds(&self) -> Vec<PiiKind> {
        match self {
            PiiSelection::All(_) => PiiKind::ALL.to_vec(),
            PiiSelection::Kinds(k) => k.clone(),
        }
    }
}

/// What a match does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// The request (or answer) is refused: a 400 in the client's dialect,
    /// or an error event ending a stream.
    #[default]
    Block,
    /// Each match is replaced by `[REDACTED:<what>]`.
    Redact,
    /// Only the audit record and metrics say it matched.
    Log,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Block => "block",
            GuardAction::Redact => "redact",
            GuardAction::Log => "log",
        }
    }
}

/// Which checks a policy runs, by name, on each stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailAttach {
    /// The prompt: every text of the request's messages, system prompt and
    /// tool results.
    #[serde(default)]
    pub input: Vec<String>,
    /// The answer's text, streamed or not.
    #[serde(default)]
    pub output: Vec<String>,
    /// The arguments of tool calls in the model's answer.
    #[serde(default)]
    pub tool_calls: Vec<String>,
}

/// A remote check. The gateway POSTs
/// `{"check", "stage", "request_id", "actor": {...}, "texts": [...]}` and
/// reads `{"action": "allow" | "deny" | "redact", "reason"?, "texts"?}`:
/// `deny` refuses as the check's `block` would, `redact` replaces the texts
/// (one for each sent, in order).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://`.
    pub url: String,
    /// The most it may take (a duration such as `250ms`); default 1s.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub on_error: FailMode,
    /// Called while the model answers, not before: the prompt goes upstream
    /// at once and the answer is held until the verdict (`allow` releases
    /// it; `deny`, or `redact`, which comes too late to change what was
    /// sent, replace it with the refusal). Saves the hook's latency on
    /// every allowed prompt, at the price of a model call for each refused
    /// one.
    #[serde(default)]
    pub parallel: bool,
    /// Headers to send, such as `authorization: "Bearer ${MOD_TOKEN}"`
    /// (values may name secrets as other config values do).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// What a webhook that fails (times out, cannot be reached, answers
/// nonsense) means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The request goes on as if the check allowed it (the record says
    /// `error`).
    FailOpen,
    /// The request is refused (503).
    #[default]
    FailClosed,
}
