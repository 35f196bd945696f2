//! Which requests may be answered from the cache, and under which key.
//!
//! Only deterministic requests are kept: a temperature of 0 or a seed, and
//! one choice. The key is SHA-256 over everything that decides the answer
//! and nothing that does not: the endpoint, the route and its targets
//! (provider and upstream model), the caller's cache scope, and the body's
//! top-level members except those that only shape delivery (`stream`,
//! `stream_options`) or label the caller (`user`, `metadata`...). Members
//! are hashed as sent, sorted by name, so only their order does not
//! matter; a cryptographic hash makes two scopes' keys collide never in
//! practice, which is what keeps tenants apart.

use ring::digest::{Context, SHA256};
use shardgate_proto::json::Member;

/// An entry's name.
pub type Key = [u8; 32];

/// Members that change how an answer is delivered or who is billed, not
/// what it says.
const NOT_SEMANTIC: &[&[u8]] = &[
    b"stream",
    b"stream_options",
    b"user",
    b"metadata",
    b"store",
    b"service_tier",
    b"prompt_cache_key",
    b"safety_identifier",
];

/// Why a request is not looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// Sampling may give another answer (no temperature 0, no seed).
    Sampled,
    /// More than one choice asked for.
    Choices,
    /// A member name is escaped: it is not read as its name, so it is not
    /// trusted to be what it says.
    EscapedName,
    /// A member name twice: parsers disagree on which one counts.
    Duplicate,
}

/// What the request's sampling asks for, read from the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Embeddings (one input, one answer), or a route that keeps sampled
    /// answers.
    None,
    /// `seed` counts (OpenAI chat).
    TemperatureOrSeed,
    /// Only temperature 0 (Anthropic has no seed).
    TemperatureOnly,
}

/// The request's key, or why it has none.
/// `headers`: the request headers that go upstream with the body and
/// change the answer (`anthropic-beta`), as name and value.
pub fn key(
    body: &[u8],
    members: &[Member],
    sampling: Sampling,
    route: &[u8],
    scope: &str,
    headers: &[(&str, &[u8])],
) -> Result<Key, Uncacheable> {
    let value = |m: &Member| &body[m.value.clone()];
    let name = |m: &Member| &body[m.key.clone()];
    if members.iter().any(|m| m.key_escaped) {
        return Err(Uncacheable::EscapedName);
    }
    let mut names: smallvec::SmallVec<[&[u8]; 16]> = members.iter().map(name).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(Uncacheable::Duplicate);
    }
    let find = |n: &[u8]| members.iter().find(|m| name(m) == n).map(value);
    if find(b"n").is_some_and(|v| number(v).is_none_or(|n| n != 1.0)) {
        return Err(Uncacheable::Choices);
    }
    let zero = find(b"temperature").and_then(number) == Some(0.0);
    let seeded = find(b"seed").is_some_and(|v| v != b"null");
    let deterministic = match sampling {
        Sampling::None => true,
        Sampling::TemperatureOrSeed => zero || seeded,
        Sampling::TemperatureOnly => zero,
    };
    if !deterministic {
        return Err(Uncacheable::Sampled);
    }
    let mut semantic: smallvec::SmallVec<[&Member; 16]> = members
        .iter()
        .filter(|m| !NOT_SEMANTIC.contains(&name(m)))
        .collect();
    semantic.sort_unstable_by(|a, b| name(a).cmp(name(b)));
    let mut h = Context::new(&SHA256);
    // Each part is length-prefixed: no two sequences of parts hash alike.
    let mut part = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(b"shardgate-cache-v1");
    part(route);
    part(scope.as_bytes());
    for (n, v) in headers {
        part(n.as_bytes());
        part(v);
    }
    part(b"body");
    for m in semantic {
        part(name(m));
        part(value(m));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(h.finish().as_ref());
    Ok(key)
}

fn number(v: &[u8]) -> Option<f64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// What the request's `Cache-Control` asks of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache`: not answered from the cache; the fresh answer replaces
    /// the entry.
    pub no_cache: bool,
    /// `no-store`: neither read nor written.
    pub no_store: bool,
}

impl Directives {
    pub fn parse(header: Option<&[u8]>) -> Self {
        let mut d = Directives::default();
        for token in header.unwrap_or_default().split(|&b| b == b',') {
            let t = token.trim_ascii();
            if t.eq_ignore_ascii_case(b"no-cache") {
                d.no_cache = true;
            } else if t.eq_ignore_ascii_case(b"no-store") {
                d.no_store = true;
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_proto::json::top_level_members;

    fn key_of(body: &str, sampling: Sampling, scope: &str) -> Result<Key, Uncacheable> {
        let members = top_level_members(body.as_bytes()).unwrap();
        key(body.as_bytes(), &members, sampling, b"route", scope, &[])
    }

    const CHAT: Sampling = Sampling::TemperatureOrSeed;

    #[test]
    fn only_deterministic_single_choice_requests_have_a_key() {
        let ok = |b: &str| key_of(b, CHAT, "t").is_ok();
        assert!(ok(r#"{"model":"m","messages":[],"temperature":0}"#));
        assert!(ok(r#"{"model":"m","messages":[],"temperature":0.0,"n":1}"#));
        assert!(ok(
            r#"{"model":"m","messages":[],"seed":7,"temperature":1}"#
        ));
        assert_eq!(
            key_of(r#"{"model":"m","messages":[]}"#, CHAT, "t"),
            Err(Uncacheable::Sampled)
        );
        assert_eq!(
            key_of(r#"{"model":"m","temperature":0,"n":2}"#, CHAT, "t"),
            Err(Uncacheable::Choices)
        );
        assert_eq!(
            key_of(r#"{"model":"m","seed":null}"#, CHAT, "t"),
            Err(Uncacheable::Sampled)
        );
        let anthropic = Sampling::TemperatureOnly;
        assert!(key_of(r#"{"model":"m","seed":1}"#, anthropic, "t").is_err());
        assert!(key_of(r#"{"input":"x"}"#, Sampling::None, "t").is_ok());
        assert_eq!(
            key_of(r#"{"temperature":0,"temperature":1}"#, CHAT, "t"),
            Err(Uncacheable::Duplicate)
        );
        // An escaped `n` is not trusted to be something else.
        assert_eq!(
            key_of(r#"{"\u006e":2,"temperature":0}"#, CHAT, "t"),
            Err(Uncacheable::EscapedName)
        );
    }

    #[test]
    fn delivery_and_order_do_not_change_the_key_and_content_and_scope_do() {
        let a = key_of(
            r#"{"model":"m","temperature":0,"messages":[1],"stream":true,"user":"u"}"#,
            CHAT,
            "tenant:a",
        );
        let b = key_of(
            r#"{"messages":[1],"model":"m","temperature":0,"stream_options":{"include_usage":true}}"#,
            CHAT,
            "tenant:a",
        );
        assert_eq!(a, b);
        let other_tenant = key_of(
            r#"{"model":"m","temperature":0,"messages":[1]}"#,
            CHAT,
            "tenant:b",
        );
        assert_ne!(a, other_tenant);
        let other_prompt = key_of(
            r#"{"model":"m","temperature":0,"messages":[2]}"#,
            CHAT,
            "tenant:a",
        );
        assert_ne!(a, other_prompt);
        let other_sampling = key_of(
            r#"{"model":"m","temperature":0,"messages":[1],"max_tokens":5}"#,
            CHAT,
            "tenant:a",
        );
        assert_ne!(a, other_sampling);
        let body = r#"{"model":"m","temperature":0}"#;
        let members = top_level_members(body.as_bytes()).unwrap();
        let with = |h: &[(&str, &[u8])]| key(body.as_bytes(), &members, CHAT, b"r", "s", h);
        assert_ne!(with(&[]), with(&[("anthropic-beta", b"x")]));
        assert_ne!(
            with(&[("anthropic-beta", b"x")]),
            with(&[("anthropic-beta", b"y")])
        );
    }

    #[test]
    fn cache_control_directives_are_read_case_insensitively() {
        let d = Directives::parse(Some(b"max-age=0, No-Cache"));
        assert!(d.no_cache && !d.no_store);
        let d = Directives::parse(Some(b"no-store"));
        assert!(d.no_store && !d.no_cache);
        assert_eq!(Directives::parse(None), Directives::default());
    }
}
