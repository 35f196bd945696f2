//! Guardrails: named checks on prompts, answers and tool calls, compiled
//! once per config generation and run in process on the request path.
//!
//! A check combines detectors: validated PII and secret shapes
//! ([`pii`]), regular expressions, and deny lists of words or phrases.
//! Each kind is one automaton over the text (regex-automata's multi-pattern
//! meta regex, the engine under the `regex` crate's `RegexSet`, used
//! directly because redaction needs where each pattern matched, which a
//! `RegexSet` does not say), so a check costs one pass per detector kind
//! whatever the number of patterns.
//!
//! Policies attach checks by name to a stage ([`Stage`]); every check any
//! applicable policy attaches runs (like tool denials, no policy can turn
//! off another's check). What a match does is the check's [`GuardAction`].
//! Nothing here keeps the matched text: findings are ranges and kinds, so
//! what reaches an audit record or a metric names the check and the kind,
//! never the secret.

pub mod config;
pub mod pii;

pub use config::{
    FailMode, GuardAction, GuardrailAttach, GuardrailSpec, PiiSelection, WebhookSpec,
};
pub use pii::{PiiDetector, PiiKind};

use regex_automata::meta::Regex;
use regex_automata::util::syntax;
use std::ops::Range;

/// Where a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Input,
    Output,
    ToolCalls,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Input => "input",
            Stage::Output => "output",
            Stage::ToolCalls => "tool_calls",
        }
    }
}

/// Caps on what a config may compile: user patterns run on every
/// request, so an accidental `(a|b)*{1000}` must fail at load, not eat a
/// shard.
const MAX_PATTERNS: usize = 4096;
const NFA_SIZE_LIMIT: usize = 16 << 20;
pub const DEFAULT_STREAM_WINDOW: usize = 64;
/// Held back text delays a stream by that much; past a few KiB a client
/// would see the stream stall.
pub const MAX_STREAM_WINDOW: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardrailError {
    #[error("two guardrails are named `{0}`")]
    Duplicate(String),
    #[error("guardrail `{0}`: a name is letters, digits, `-`, `_` or `.`, at most 64")]
    BadName(String),
    #[error("guardrail `{0}` checks nothing: give it `pii`, `regex`, `deny_words` or a `webhook`")]
    Empty(String),
    #[error("guardrail `{0}`: a `webhook` check is a check of its own (no `pii`, `regex` or `deny_words` beside it)")]
    WebhookAlone(String),
    #[error("{policy}: guardrails.{stage} names `{check}`, a webhook: webhooks check prompts (`input`) and answers (`output`), and only prompts in `parallel`")]
    WebhookOnOutput {
        policy: String,
        stage: &'static str,
        check: String,
    },
    #[error("guardrail `{name}`: stream_window is 1 to {MAX_STREAM_WINDOW} bytes")]
    BadWindow { name: String },
    #[error("guardrail `{name}`: more than {MAX_PATTERNS} patterns")]
    TooMany { name: String },
    #[error("guardrail `{name}`: {what}: {reason}")]
    BadPattern {
        name: String,
        what: &'static str,
        reason: String,
    },
    #[error("{policy}: guardrails.{stage} names `{check}`, which `guardrails:` does not define")]
    Unknown {
        policy: String,
        stage: &'static str,
        check: String,
    },
}

/// One compiled check.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub action: GuardAction,
    /// Bytes of a stream's newest text scanned (and held back) with each
    /// event.
    pub stream_window: usize,
    pii: Option<PiiDetector>,
    rules: Option<Regex>,
    words: Option<Regex>,
    /// A remote check (core calls it; [`Guardrails::scan`] finds nothing
    /// for it).
    pub webhook: Option<WebhookSpec>,
}

/// What matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Pii(PiiKind),
    /// The check's `regex` number `n` (from 0).
    Rule(usize),
    Word,
}

impl What {
    /// Low-cardinality: a PII kind, `regex` or `deny_word`.
    pub fn label(self) -> &'static str {
        match self {
            What::Pii(k) => k.name(),
            What::Rule(_) => "regex",
            What::Word => "deny_word",
        }
    }
}

/// A match of check `check` at `range` of the text scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: usize,
    pub range: Range<usize>,
    pub what: What,
}

/// Every check of the config.
#[derive(Debug, Clone, Default)]
pub struct Guardrails {
    checks: Vec<Check>,
}

impl Guardrails {
    pub fn compile(specs: &[GuardrailSpec]) -> Result<Self, GuardrailError> {
        let mut checks: Vec<Check> = Vec::with_capacity(specs.len());
        for spec in specs {
            let name = spec.name.clone();
            let good_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !good_name {
                return Err(GuardrailError::BadName(name));
            }
            if checks.iter().any(|c| c.name == name) {
                return Err(GuardrailError::Duplicate(name));
            }
            if spec.regex.len() > MAX_PATTERNS || spec.deny_words.len() > MAX_PATTERNS {
                return Err(GuardrailError::TooMany { name });
            }
            let pii = spec
                .pii
                .as_ref()
                .map(|s| PiiDetector::new(&s.kinds()))
                .filter(|d| !d.kinds().is_empty());
            let rules = (!spec.regex.is_empty())
                .then(|| build(&spec.regex, false))
                .transpose()
                .map_err(|reason| GuardrailError::BadPattern {
                    name: name.clone(),
                    what: "regex",
                    reason,
                })?;
            let words = (!spec.deny_words.is_empty())
                .then(|| {
                    let alternation = spec
                        .deny_words
                        .iter()
                        .map(|w| word_pattern(w))
                        .collect::<Result<Vec<_>, _>>()?
                        .join("|");
                    build(&[format!(r"(?i)(?:{alternation})")], true)
                })
                .transpose()
                .map_err(|reason| GuardrailError::BadPattern {
                    name: name.clone(),
                    what: "deny_words",
                    reason,
                })?;
            if pii.is_none() && rules.is_none() && words.is_none() && spec.webhook.is_none() {
                return Err(GuardrailError::Empty(name));
            }
            if spec.webhook.is_some() && (pii.is_some() || rules.is_some() || words.is_some()) {
                return Err(GuardrailError::WebhookAlone(name));
            }
            let stream_window = spec.stream_window.unwrap_or(DEFAULT_STREAM_WINDOW);
            if !(1..=MAX_STREAM_WINDOW).contains(&stream_window) {
                return Err(GuardrailError::BadWindow { name });
            }
            checks.push(Check {
                name,
                action: spec.action,
                stream_window,
                pii,
                rules,
                words,
                webhook: spec.webhook.clone(),
            });
        }
        Ok(Guardrails { checks })
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.checks.iter().position(|c| c.name == name)
    }

    pub fn check(&self, i: usize) -> &Check {
        &self.checks[i]
    }

    pub fn checks(&self) -> &[Check] {
        &self.checks
    }

    /// Refuses a policy that attaches a check the config does not define,
    /// a webhook to tool calls, or a `parallel` webhook to answers.
    pub fn verify(&self, policies: &crate::PolicySet) -> Result<(), GuardrailError> {
        for p in policies.policies() {
            for (stage, list) in [
                (Stage::Input, &p.guardrails.input),
                (Stage::Output, &p.guardrails.output),
                (Stage::ToolCalls, &p.guardrails.tool_calls),
            ] {
                if let Some(check) = list.iter().find(|n| self.index(n).is_none()) {
                    return Err(GuardrailError::Unknown {
                        policy: p.name.clone(),
                        stage: stage.as_str(),
                        check: check.clone(),
                    });
                }
                let misplaced = |n: &&String| {
                    self.index(n)
                        .is_some_and(|i| match &self.checks[i].webhook {
                            None => false,
                            Some(w) => match stage {
                                Stage::Input => false,
                                Stage::Output => w.parallel,
                                Stage::ToolCalls => true,
                            },
                        })
                };
                if let Some(check) = list.iter().find(misplaced) {
                    return Err(GuardrailError::WebhookOnOutput {
                        policy: p.name.clone(),
                        stage: stage.as_str(),
                        check: check.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Appends check `i`'s matches in `text` (per detector in text order;
    /// the detectors' matches may overlap each other).
    pub fn scan(&self, i: usize, text: &str, out: &mut Vec<Finding>) {
        let Some(c) = self.checks.get(i) else {
            return;
        };
        if let Some(d) = &c.pii {
            let mut found = Vec::new();
            d.find(text, &mut found);
            out.extend(found.into_iter().map(|(kind, range)| Finding {
                check: i,
                range,
                what: What::Pii(kind),
            }));
        }
        if let Some(r) = &c.rules {
            for m in r.find_iter(text) {
                out.push(Finding {
                    check: i,
                    range: m.range(),
                    what: What::Rule(m.pattern().as_usize()),
                });
            }
        }
        if let Some(r) = &c.words {
            for m in r.find_iter(text) {
                out.push(Finding {
                    check: i,
                    range: m.range(),
                    what: What::Word,
                });
            }
        }
    }
}

/// `word` as a pattern: escaped, its spaces any run of whitespace, and a
/// word boundary on each side that begins or ends with an ASCII word
/// character (`c++`, `café` or `日本` match where they stand; a boundary
/// there would need a word character beside it). ASCII boundaries: the
/// lazy DFA handles them on any text, where Unicode ones send non-ASCII
/// text to a slower engine.
fn word_pattern(word: &str) -> Result<String, String> {
    let parts: Vec<String> = word.split_whitespace().map(regex::escape).collect();
    if parts.is_empty() {
        return Err("an empty word".into());
    }
    let wordy = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let trimmed = word.trim();
    let lead = if wordy(trimmed.chars().next()) {
        r"(?-u:\b)"
    } else {
        ""
    };
    let tail = if wordy(trimmed.chars().last()) {
        r"(?-u:\b)"
    } else {
        ""
    };
    Ok(format!("{lead}{}{tail}", parts.join(r"\s+")))
}

fn build(patterns: &[impl AsRef<str>], case_insensitive: bool) -> Result<Regex, String> {
    Regex::builder()
        .syntax(syntax::Config::new().case_insensitive(case_insensitive))
        .configure(
            Regex::config()
                .nfa_size_limit(Some(NFA_SIZE_LIMIT))
                .hybrid_cache_capacity(2 << 20),
        )
        .build_many(patterns)
        .map_err(|e| e.to_string())
}

/// `text` with each of `findings`' ranges replaced by
/// `[REDACTED:<label>]`; overlapping ranges become one, labelled by the
/// first. `findings` may come in any order.
pub fn redact(text: &str, findings: &[&Finding], label: impl Fn(&Finding) -> String) -> String {
    let mut sorted: Vec<&Finding> = findings.to_vec();
    sorted.sort_by_key(|f| (f.range.start, std::cmp::Reverse(f.range.end)));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut i = 0;
    while i < sorted.len() {
        let f = sorted[i];
        let mut end = f.range.end;
        let mut j = i + 1;
        while j < sorted.len() && sorted[j].range.start < end {
            end = end.max(sorted[j].range.end);
            j += 1;
        }
        let (start, end) = (f.range.start.max(at), end.min(text.len()));
        if start < end && text.is_char_boundary(start) && text.is_char_boundary(end) {
            out.push_str(&text[at..start]);
            out.push_str("[REDACTED:");
            out.push_str(&label(f));
            out.push(']');
            at = end;
        }
        i = j;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
#[path = "guardrails_tests.rs"]
mod tests;
