//! Provider errors rendered as OpenAI error bodies.
//!
//! Only the provider's message (and its error type, as `code`) is kept:
//! nothing else of the upstream body or headers is copied, and anything in
//! the message that looks like a credential is replaced by `[REDACTED]`.

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

/// An OpenAI error body for an upstream error.
pub(crate) fn openai_error(status: u16, message: &str, provider_code: Option<&str>) -> Vec<u8> {
    let message = if message.is_empty() {
        format!("upstream returned HTTP {status}")
    } else {
        redact_secrets(message)
    };
    let code = provider_code.map(redact_secrets);
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

/// Replaces words that look like credentials: known key prefixes, the word
/// after `Bearer` / `api-key:` / `key=` and similar, and `key=...` query
/// parameters.
pub fn redact_secrets(message: &str) -> String {
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

/// An OpenAI-shaped error body with [`redact_secrets`] applied to its
/// `error.message`; returned unchanged (not re-serialized) when there is
/// nothing to redact or it is not that shape.
pub fn redact_json_secrets(body: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    let Some(serde_json::Value::String(m)) = v.pointer_mut("/error/message") else {
        return body.to_vec();
    };
    let redacted = redact_secrets(m);
    if redacted == *m {
        return body.to_vec();
    }
    *m = redacted;
    serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_message_redacted_only_when_needed() {
        let clean = br#"{"error":{"message":"model not found","code":"x"}}"#;
        assert_eq!(redact_json_secrets(clean), clean.to_vec());
        let leaky = br#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnop1234","code":"invalid_api_key"}}"#;
        let out = String::from_utf8(redact_json_secrets(leaky)).unwrap();
        assert!(!out.contains("abcdefghijklmnop1234"), "{out}");
        assert!(out.contains("[REDACTED]") && out.contains("invalid_api_key"));
        assert_eq!(redact_json_secrets(b"<html>"), b"<html>".to_vec());
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
            let r = redact_secrets(case);
            assert!(!r.contains(secret), "{r}");
            assert!(r.contains("[REDACTED]"), "{r}");
        }
    }

    #[test]
    fn ordinary_messages_are_kept() {
        let m = "max_tokens: 9999999 > 8192, which is the maximum allowed number of output tokens";
        assert_eq!(redact_secrets(m), m);
        let m = "Overloaded";
        assert_eq!(redact_secrets(m), m);
    }

    #[test]
    fn status_types() {
        assert_eq!(openai_error_type(400), "invalid_request_error");
        assert_eq!(openai_error_type(401), "authentication_error");
        assert_eq!(openai_error_type(429), "rate_limit_error");
        assert_eq!(openai_error_type(529), "server_error");
    }
}
