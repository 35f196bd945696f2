//! Provider errors rendered as OpenAI error bodies, and the redaction of
//! credentials from anything an upstream says back.
//!
//! Two kinds of redaction, always applied together:
//! - exact: the credentials the gateway itself sent to that upstream
//!   ([`KnownSecrets`]). Every run of text that shares [`MATCH_WINDOW`] or
//!   more consecutive bytes with one of them is replaced, so an echo of the
//!   key, of `Bearer <key>` or of a long enough piece of it is caught
//!   whatever the key's shape (Azure's 32 hex digits, an AWS secret key).
//! - by shape: words that look like credentials the gateway never saw (a
//!   key the client sent to the upstream some other way, another tenant's
//!   key in a message): known prefixes and the word after `Bearer`,
//!   `api-key:`, `key=` and the like ([`redact_secrets`]).
//!
//! Both run only on error paths: a successful answer is never scanned.

use std::borrow::Cow;
use std::sync::Arc;

/// What replaces a credential.
const REDACTED: &str = "[REDACTED]";

/// Shortest piece of a known secret that counts as a leak of it. Upstreams
/// echo keys whole, truncated (`sk-proj-abc...xyz`) or masked in the middle;
/// eight bytes of a random key are already too many to give away, and
/// shorter pieces would match ordinary words.
pub const MATCH_WINDOW: usize = 8;

/// The credentials the gateway holds for one upstream (its API key, AWS
/// access key id, secret key and session token), as sent: what an upstream
/// error can echo back.
///
/// Cheap to clone (one reference count; nothing when empty) so translators
/// of streams can hold it, and one word wide (a thin pointer) so the
/// config's provider records do not grow; its `Debug` shows only how many
/// there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KnownSecrets(Option<Arc<Vec<Box<str>>>>);

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KnownSecrets([{} redacted])", self.values().len())
    }
}

impl KnownSecrets {
    /// No secrets: for answers made in-process (the mock provider).
    pub const fn none() -> Self {
        KnownSecrets(None)
    }

    /// The non-empty values of `secrets`.
    pub fn new<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let values: Vec<Box<str>> = secrets
            .into_iter()
            .filter(|s| !s.as_ref().is_empty())
            .map(|s| s.as_ref().into())
            .collect();
        if values.is_empty() {
            KnownSecrets(None)
        } else {
            KnownSecrets(Some(Arc::new(values)))
        }
    }

    fn values(&self) -> &[Box<str>] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// `text` with every run that shares [`MATCH_WINDOW`] consecutive bytes
    /// with a known secret (the whole secret, when it is shorter) replaced by
    /// `[REDACTED]`; borrowed when nothing matched.
    ///
    /// Cost: one substring search per window of each secret, about
    /// `secret length x text length` byte comparisons. Error bodies are at
    /// most 64 KiB and this runs only on them.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut covered: Vec<(usize, usize)> = Vec::new();
        for secret in self.values() {
            let s = secret.as_bytes();
            let w = MATCH_WINDOW.min(s.len());
            for window in s.windows(w) {
                let Ok(needle) = std::str::from_utf8(window) else {
                    // A window cutting a multi-byte character cannot match
                    // valid text at that offset; its neighbours still do.
                    continue;
                };
                covered.extend(text.match_indices(needle).map(|(i, m)| (i, i + m.len())));
            }
        }
        if covered.is_empty() {
            return Cow::Borrowed(text);
        }
        covered.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        let mut runs = covered.into_iter().peekable();
        while let Some((start, mut end)) = runs.next() {
            while let Some(&(s, e)) = runs.peek() {
                if s > end {
                    break;
                }
                end = end.max(e);
                runs.next();
            }
            out.push_str(&text[at..start]);
            out.push_str(REDACTED);
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }
}

/// OpenAI's error `type` for an upstream HTTP status.
pub fn openai_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// An OpenAI error body for an upstream error, rebuilt from the provider's
/// message and code, both redacted.
pub(crate) fn openai_error(
    status: u16,
    message: &str,
    provider_code: Option<&str>,
    known: &KnownSecrets,
) -> Vec<u8> {
    let message = if message.is_empty() {
        format!("upstream returned HTTP {status}")
    } else {
        redact_secrets(message, known)
    };
    let code = provider_code.map(|c| redact_secrets(c, known));
    shardgate_proto::openai::error_body(&message, openai_error_type(status), None, code.as_deref())
}

/// Prefixes of well-known key formats (OpenAI, Anthropic, Google, AWS
/// access key ids, xAI, Groq...).
const KEY_PREFIXES: &[&str] = &[
    "sk-", "sk_", "AIza", "AKIA", "ASIA", "xai-", "gsk_", "fw_", "pk-", "rk-",
];

/// Words after which the next word is a secret.
const SECRET_INTRODUCERS: &[&str] = &[
    "bearer",
    "api_key",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "authorization",
    "key",
    "token",
    "apikey",
];

/// `message` without credentials: the known secrets' values
/// ([`KnownSecrets::scrub`]), then words that look like credentials (known
/// key prefixes, the word after `Bearer` / `api-key:` / `key=` and similar,
/// and `key=...` query parameters).
pub fn redact_secrets(message: &str, known: &KnownSecrets) -> String {
    redact_by_shape(&known.scrub(message))
}

fn redact_by_shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut redact_next = false;
    let mut rest = message;
    while !rest.is_empty() {
        let word_end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        if word.is_empty() {
            let mut chars = after.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
            continue;
        }
        let (lead, value) = match word.split_once(['=', ':']) {
            Some((name, value)) if !value.is_empty() => (Some(name), value),
            _ => (None, word),
        };
        let introducer = |w: &str| {
            let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
            SECRET_INTRODUCERS.iter().any(|s| w.eq_ignore_ascii_case(s))
        };
        let looks_secret = |v: &str| {
            KEY_PREFIXES
                .iter()
                .any(|p| v.starts_with(p) && v.len() > p.len() + 7)
        };
        if redact_next && value.len() >= 12 && value.chars().any(|c| c.is_ascii_digit())
            || looks_secret(value)
        {
            if let Some(name) = lead {
                out.push_str(name);
                out.push_str(&word[name.len()..=name.len()]);
            }
            out.push_str("[REDACTED]");
            redact_next = false;
        } else if let Some(name) = lead.filter(|n| introducer(n)) {
            out.push_str(name);
            out.push_str(&word[name.len()..=name.len()]);
            out.push_str("[REDACTED]");
            redact_next = false;
        } else {
            out.push_str(word);
            redact_next = introducer(word);
        }
        rest = after;
    }
    out
}

/// An OpenAI-dialect upstream's error body with every credential removed
/// from every string in it (values and member names, at any depth), by
/// [`redact_secrets`]. The body is returned as it came, byte for byte, when
/// nothing had to change or it is not JSON (a body that is not an OpenAI
/// error object is never shown to the client: the gateway wraps it).
///
/// Why walk the whole body rather than rebuild it from `message`, `type`
/// and `code` as the other dialects' errors are: OpenAI-compatible
/// upstreams put useful things in `param`, `code` and members of their own,
/// and clients of a pass-through dialect expect the provider's body. But a
/// key can be echoed in any of those places (`param`, `code`, a
/// `request.headers.authorization` member), so every string is scrubbed,
/// not only `error.message`.
pub fn redact_json_secrets(body: &[u8], known: &KnownSecrets) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    if !redact_value(&mut v, known) {
        return body.to_vec();
    }
    // Never the raw body: an empty one is wrapped by the gateway.
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Redacts every string in `v` in place; true when something changed.
fn redact_value(v: &mut serde_json::Value, known: &KnownSecrets) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            let r = redact_secrets(s, known);
            let changed = r != *s;
            if changed {
                *s = r;
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |acc, i| redact_value(i, known) | acc),
        Value::Object(map) => {
            let mut changed = false;
            let renamed: Vec<(String, String)> = map
                .keys()
                .filter_map(|k| {
                    let r = redact_secrets(k, known);
                    (r != *k).then(|| (k.clone(), r))
                })
                .collect();
            for (old, new) in renamed {
                if let Some(mut value) = map.remove(&old) {
                    redact_value(&mut value, known);
                    map.insert(new, value);
                    changed = true;
                }
            }
            map.values_mut()
                .fold(changed, |acc, i| redact_value(i, known) | acc)
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> KnownSecrets {
        KnownSecrets::default()
    }

    /// No piece of `secret` of [`MATCH_WINDOW`] bytes is in `out`.
    fn assert_no_piece(out: &str, secret: &str) {
        for w in secret.as_bytes().windows(MATCH_WINDOW) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!out.contains(w), "`{w}` of the secret leaked: {out}");
        }
    }

    #[test]
    fn json_error_message_redacted_only_when_needed() {
        let clean = br#"{"error":{"message":"model not found","code":"x"}}"#;
        assert_eq!(redact_json_secrets(clean, &none()), clean.to_vec());
        let leaky = br#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop1234","code":"invalid_api_key"}}"#;
        let out = String::from_utf8(redact_json_secrets(leaky, &none())).unwrap();
        assert!(!out.contains("abcdefghijklmnop1234"), "{out}");
        assert!(out.contains("[REDACTED]") && out.contains("invalid_api_key"));
        assert_eq!(redact_json_secrets(b"<html>", &none()), b"<html>".to_vec());
    }

    /// The issue's case: an Azure-style key (32 hex digits, no known
    /// prefix) echoed in `param`, `code`, the message and a member of the
    /// upstream's own.
    #[test]
    fn known_secret_scrubbed_from_every_string() {
        let key = "5f0c2a9be13d47a8b6c0de21f9a3b774";
        let known = KnownSecrets::new([key]);
        let body = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {key}","type":"invalid_request_error","param":"{key}","code":"bad key {k8}"}},"request":{{"headers":{{"authorization":"Bearer {key}"}},"echo":["{key}"],"{key}":1}}}}"#,
            k8 = &key[3..14],
        );
        let out = String::from_utf8(redact_json_secrets(body.as_bytes(), &known)).unwrap();
        assert_no_piece(&out, key);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["error"]["message"],
            "Incorrect API key provided: [REDACTED]"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "bad key [REDACTED]");
        assert_eq!(
            v["request"]["headers"]["authorization"],
            "Bearer [REDACTED]"
        );
        // The same body without the key stays byte-identical.
        let clean = body.replace(key, "x").replace(&key[3..14], "y");
        assert_eq!(
            redact_json_secrets(clean.as_bytes(), &known),
            clean.into_bytes()
        );
    }

    #[test]
    fn shape_redaction_reaches_every_string() {
        let body = br#"{"error":{"message":"bad","param":"sk-proj-abcdefghijklmnop1234","code":null},"request":{"headers":{"authorization":"Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig"}}}"#;
        let out = String::from_utf8(redact_json_secrets(body, &none())).unwrap();
        assert!(!out.contains("abcdefghijklmnop1234"), "{out}");
        assert!(!out.contains("eyJhbGciOiJIUzI1NiJ9"), "{out}");
    }

    #[test]
    fn scrub_catches_pieces_and_every_kind_of_secret() {
        let aws_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let aws_id = "AKIAIOSFODNN7EXAMPLE";
        let gemini = "AIzaSyA1234567890abcdefghij";
        let known = KnownSecrets::new([aws_id, aws_secret, gemini, ""]);
        let m = format!(
            "signature for {aws_id} with {aws_secret} (key {g}...) failed; first half {half}",
            g = &gemini[..12],
            half = &aws_secret[..20],
        );
        let out = redact_secrets(&m, &known);
        for s in [aws_id, aws_secret, gemini] {
            assert_no_piece(&out, s);
        }
        assert!(
            out.starts_with("signature for [REDACTED] with [REDACTED]"),
            "{out}"
        );
        // Pieces shorter than the window are not a match.
        let m = format!("key ending {}", &aws_secret[aws_secret.len() - 4..]);
        assert_eq!(redact_secrets(&m, &known), m);
        assert!(matches!(known.scrub("nothing here"), Cow::Borrowed(_)));
        assert!(!format!("{known:?}").contains("EXAMPLE"));
    }

    #[test]
    fn short_secret_matched_whole() {
        let known = KnownSecrets::new(["abc123"]);
        assert_eq!(
            redact_secrets("key abc123 bad", &known),
            "key [REDACTED] bad"
        );
        assert_eq!(redact_secrets("abc12", &known), "abc12");
    }

    #[test]
    fn keys_are_redacted() {
        let cases = [
            "Incorrect API key provided: sk-proj-abcdefghijklmnop1234.",
            "invalid x-api-key: sk-ant-api03-abcdefghijklmnop",
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
            "GET /v1beta/models?key=AIzaSyA1234567890abcdefghij failed",
            "api-key: 0123456789abcdef0123456789abcdef rejected",
            "The security token AKIAIOSFODNN7EXAMPLE is invalid",
        ];
        let secrets = [
            "sk-proj-abcdefghijklmnop1234",
            "sk-ant-api03-abcdefghijklmnop",
            "eyJhbGciOiJIUzI1NiJ9.payload.sig",
            "AIzaSyA1234567890abcdefghij",
            "0123456789abcdef0123456789abcdef",
            "AKIAIOSFODNN7EXAMPLE",
        ];
        for (case, secret) in cases.iter().zip(secrets) {
            let r = redact_secrets(case, &none());
            assert!(!r.contains(secret), "{r}");
            assert!(r.contains("[REDACTED]"), "{r}");
        }
    }

    #[test]
    fn ordinary_messages_are_kept() {
        let m = "max_tokens: 9999999 > 8192, which is the maximum allowed number of output tokens";
        assert_eq!(redact_secrets(m, &none()), m);
        let m = "Overloaded";
        assert_eq!(redact_secrets(m, &none()), m);
    }

    /// Every dialect's error translation (whole bodies and stream error
    /// events) drops the exact key, even one with no recognisable shape.
    #[test]
    fn every_dialect_drops_the_known_key() {
        use crate::{anthropic, bedrock, gemini, Provider, ReplyCtx, StreamTranslator};
        let key = "5f0c2a9be13d47a8b6c0de21f9a3b774";
        let known = KnownSecrets::new([key]);
        let bedrock = bedrock::BedrockProvider {
            region: "us-east-1".into(),
            credentials: None,
            endpoint_host: None,
        };
        let cases: [(&dyn Provider, String); 3] = [
            (
                &anthropic::AnthropicProvider::default(),
                format!(
                    r#"{{"type":"error","error":{{"type":"{key}","message":"invalid x-api-key {key}"}}}}"#
                ),
            ),
            (
                &gemini::GeminiProvider::default(),
                format!(
                    r#"{{"error":{{"code":400,"message":"API key not valid: {key}","status":"{key}"}}}}"#
                ),
            ),
            (
                &bedrock,
                format!(r#"{{"message":"The key {key} is invalid"}}"#),
            ),
        ];
        for (p, body) in cases {
            let out = String::from_utf8(p.error_to_openai(401, body.as_bytes(), &known)).unwrap();
            assert_no_piece(&out, key);
            assert!(out.contains("[REDACTED]"), "{out}");
        }
        let ctx = ReplyCtx {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 1,
            include_usage: false,
        };
        let streams: [(StreamTranslator, String); 3] = [
            (
                anthropic::AnthropicProvider::default()
                    .stream_translator(ctx.clone(), &known)
                    .unwrap(),
                format!("event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"key {key}\"}}}}\n\n"),
            ),
            (
                gemini::GeminiProvider::default()
                    .stream_translator(ctx.clone(), &known)
                    .unwrap(),
                format!("data: {{\"error\":{{\"code\":401,\"message\":\"key {key}\",\"status\":\"UNAUTHENTICATED\"}}}}\n\n"),
            ),
            (
                StreamTranslator::OpenAiToAnthropic(
                    anthropic::OpenAiToAnthropic::new(ctx).redacting(known.clone()),
                ),
                format!("data: {{\"error\":{{\"message\":\"key {key}\"}}}}\n\n"),
            ),
        ];
        for (mut t, input) in streams {
            let mut out = Vec::new();
            t.on_bytes(input.as_bytes(), &mut out).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert_no_piece(&out, key);
            assert!(out.contains("[REDACTED]"), "{out}");
        }
    }

    #[test]
    fn status_types() {
        assert_eq!(openai_error_type(400), "invalid_request_error");
        assert_eq!(openai_error_type(401), "authentication_error");
        assert_eq!(openai_error_type(429), "rate_limit_error");
        assert_eq!(openai_error_type(529), "server_error");
    }
}

/// Whether an upstream's refusal says the prompt does not fit the model's
/// context window, in any provider's words (the body as the upstream sent
/// it, or as rendered OpenAI-shaped): such a request can only succeed on a
/// model with a larger window.
pub fn is_context_length_error(status: u16, body: &[u8]) -> bool {
    /// Lowercase; each is what one provider (or server) says.
    const PHRASES: [&[u8]; 6] = [
        b"context_length_exceeded",              // OpenAI, Azure (code)
        b"maximum context length",               // OpenAI, vLLM, TGI
        b"prompt is too long",                   // Anthropic
        b"exceeds the maximum number of tokens", // Gemini
        b"input is too long",                    // Bedrock
        b"too many input tokens",                // Bedrock
    ];
    if !matches!(status, 400 | 413 | 422) {
        return false;
    }
    let lower = body.to_ascii_lowercase();
    PHRASES
        .iter()
        .any(|p| lower.windows(p.len()).any(|w| w == *p))
}

#[cfg(test)]
mod context_length_tests {
    use super::is_context_length_error;

    #[test]
    fn each_providers_words() {
        for body in [
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
            r#"{"error":{"code":400,"message":"The input token count (1500000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
            r#"{"message":"Input is too long for requested model."}"#,
        ] {
            assert!(is_context_length_error(400, body.as_bytes()), "{body}");
        }
        let other =
            r#"{"error":{"message":"max_tokens must be positive","type":"invalid_request_error"}}"#;
        assert!(!is_context_length_error(400, other.as_bytes()));
        let wrong_status = r#"{"error":{"code":"context_length_exceeded"}}"#;
        assert!(!is_context_length_error(500, wrong_status.as_bytes()));
    }
}
