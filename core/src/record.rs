//! What one request came to, built in one place when it ends.
//!
//! The connection loop (`server/conn.rs`) wraps every request, including
//! those refused at admission and those whose head or body could not be
//! read, and builds one [`RequestEnd`] for each: the status and error the
//! client got (taken from the bytes written to it, so no path can answer
//! without being recorded), who called, which alias, every upstream attempt
//! with its usage, the cost, time to first byte and duration. The access
//! log reads only this record; so do the audit and metrics that build on
//! it.

use crate::config::Target;
use shardgate_policy::Actor;
use shardgate_proto::openai::Usage;
use smallvec::SmallVec;
use std::fmt::Write as _;
use std::time::Instant;

/// A call's attempts, in order: most calls make one.
pub type Attempts<'a> = SmallVec<[AttemptRecord<'a>; 1]>;

/// One attempt at one target, as the route saw it end. Every attempt's
/// usage is settled, not only the last one's: an upstream that answered
/// (and billed) before its answer proved unusable is still paid for.
#[derive(Debug)]
pub struct AttemptRecord<'a> {
    pub target: &'a Target,
    pub outcome: AttemptOutcome,
    /// Instants, not durations: a duration is worked out only by whoever
    /// reports it (a subtraction per figure, per request, otherwise).
    pub started: Instant,
    /// When its answer's head came.
    pub head_at: Option<Instant>,
    pub ended: Instant,
    pub metered: Option<Metered>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Its answer went to the client (whole, or a stream however it ended).
    Answered,
    /// It failed before any byte reached the client (the error's label).
    Failed(&'static str),
    /// The client left before the answer's head.
    ClientLeft,
    /// A hedge: the other attempt's answer started first, and this one was
    /// cancelled (its upstream connection closed).
    Cancelled,
}

impl AttemptOutcome {
    pub fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Answered => "answered",
            AttemptOutcome::Failed(label) => label,
            AttemptOutcome::ClientLeft => "client_left",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

/// What one answered call consumed, for settlement and audit.
#[derive(Debug, Clone)]
pub struct Metered {
    pub usage: Option<Usage>,
    /// Not the provider's word (a cut stream, an answer without usage).
    pub estimated: bool,
    /// The client left mid-stream and the upstream was read on to its
    /// final usage (`upstream.drain_after_disconnect`).
    pub drained: bool,
}

/// What the request handler learned, filled as it goes.
#[derive(Default)]
pub struct Trail<'a> {
    /// The endpoint, from a fixed set (bounded cardinality).
    pub endpoint: &'static str,
    /// Who called, once known (admitted or refused by policy).
    pub actor: Option<Actor>,
    /// The model alias served (the policy's fallback when it substituted).
    pub alias: Option<String>,
    pub attempts: Attempts<'a>,
    /// What the caller was charged, in micro-dollars.
    pub cost_micros: u64,
    /// The W3C trace id of the caller's `traceparent` (read when audited).
    pub trace_id: Option<String>,
    /// Each guardrail check's verdict (empty for callers with none).
    pub guardrails: Vec<crate::guardrails::GuardRecord>,
    /// How the response cache served it, on routes with one.
    pub cache: Option<Box<CacheNote>>,
}

/// The response cache's part in a request.
#[derive(Debug, Clone)]
pub struct CacheNote {
    /// `hit`, `miss` or `bypass` (its `x-shardgate-cache`).
    pub result: &'static str,
    /// A hit: what the kept answer used when it was made, which this
    /// request did not.
    pub saved: Option<Usage>,
    /// A hit: the target that made the answer.
    pub served_by: Option<String>,
    /// What the shared tier (the cluster's Redis) answered a miss on the
    /// shard: `hit`, `miss` or `unavailable`; `None` when it was not asked.
    pub shared: Option<&'static str>,
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// when it is one (lowercase hex, not all zeros).
pub fn trace_id(traceparent: Option<&[u8]>) -> Option<String> {
    let v = traceparent?;
    let parts: Vec<&[u8]> = v.trim_ascii().split(|&b| b == b'-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |p: &[u8], n: usize| {
        p.len() == n
            && p.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let ok = hex(version, 2)
        && *version != b"ff"
        && hex(trace, 32)
        && trace.iter().any(|&b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    ok.then(|| String::from_utf8_lossy(trace).into_owned())
}

/// One request, as it ended. `'r` is the request's, `'s` the shard's
/// (config) lifetime.
pub struct RequestEnd<'r, 's> {
    pub rid: &'r str,
    /// The status the client got; None when it got nothing (it left, or its
    /// connection broke before an answer).
    pub status: Option<u16>,
    /// Why it failed, as a low-cardinality label: the error answered, or
    /// the one that cut a stream already under way.
    pub error: Option<&'static str>,
    pub trail: &'r Trail<'s>,
    /// When its head was read, its first byte written back, and it ended
    /// (durations are worked out when reported).
    pub started: Instant,
    pub first_byte: Option<Instant>,
    pub ended: Instant,
}

impl RequestEnd<'_, '_> {
    /// The access log line (`RUST_LOG=access=debug`), `key=value` pairs.
    /// Names and labels come from config and fixed sets; nothing a client
    /// sent is written but the alias it asked for, quoted.
    pub fn log(&self) {
        // The global level first: a plain load, where asking the logger
        // matches the target against its filters.
        if log::max_level() < log::Level::Debug
            || !log::log_enabled!(target: "access", log::Level::Debug)
        {
            return;
        }
        let mut line = String::with_capacity(256);
        let t = self.trail;
        let _ = write!(line, "rid={} endpoint={}", self.rid, t.endpoint);
        match self.status {
            Some(s) => {
                let _ = write!(line, " status={s}");
            }
            None => line.push_str(" status=-"),
        }
        if let Some(e) = self.error {
            let _ = write!(line, " error={e}");
        }
        if let Some(a) = &t.actor {
            let _ = write!(line, " key={}", a.key_id);
            for (name, v) in [
                ("team", &a.team),
                ("tenant", &a.tenant),
                ("app", &a.app),
                ("env", &a.environment),
            ] {
                if let Some(v) = v {
                    let _ = write!(line, " {name}={v:?}");
                }
            }
        }
        if let Some(alias) = &t.alias {
            let _ = write!(line, " alias={alias:?}");
        }
        for (i, a) in t.attempts.iter().enumerate() {
            let outcome = a.outcome.label();
            let _ = write!(
                line,
                " attempt{i}={}:{outcome}:{}ms",
                a.target.served_by,
                a.ended.duration_since(a.started).as_millis()
            );
            if let Some(m) = &a.metered {
                let u = m.usage.unwrap_or_default();
                let _ = write!(
                    line,
                    ":in={},out={}{}",
                    u.prompt_tokens.unwrap_or(0),
                    u.completion_tokens.unwrap_or(0),
                    if m.estimated { ",estimated" } else { "" }
                );
            }
        }
        if t.cost_micros > 0 {
            let _ = write!(line, " cost_micros={}", t.cost_micros);
        }
        if let Some(f) = self.first_byte {
            let _ = write!(
                line,
                " ttfb_us={}",
                f.duration_since(self.started).as_micros()
            );
        }
        let duration = self.ended.duration_since(self.started);
        let _ = write!(line, " duration_us={}", duration.as_micros());
        log::debug!(target: "access", "{line}");
    }
}

/// Where a tool call was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolCallSource {
    /// Through the gateway's `/mcp` endpoint, in that protocol era.
    Mcp(shardgate_proto::mcp::Era),
    /// In a model's answer.
    ModelAnswer,
}

/// What became of a tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolDecision {
    Allowed,
    /// Refused by the caller's policy: the policy and rule.
    Refused {
        policy: String,
        rule: String,
    },
    /// Removed from a model's answer (`on_denied_tool_call: strip`).
    Stripped {
        policy: String,
        rule: String,
    },
    /// Refused for the caller's budget (429).
    RateLimited,
}

/// The arguments, as the caller's audit setting lets them be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolArguments {
    None,
    /// SHA-256 of their JSON text, hex.
    Digest(String),
    /// Their JSON with anything that looks like a credential redacted.
    Full(String),
}

/// One tool call: the record every tool call produces, through MCP or in
/// a model's answer, for the audit log (which consumes it through
/// [`ToolCallRecord::emit`]; until it lands, the `tool_call` log target at
/// info level).
#[derive(Debug, Clone)]
pub struct ToolCallRecord<'a> {
    pub rid: &'a str,
    pub actor: Option<&'a Actor>,
    pub source: ToolCallSource,
    /// The server, for MCP calls.
    pub server: Option<&'a str>,
    /// The name the caller used, and the server's own.
    pub exposed: &'a str,
    pub original: &'a str,
    pub scope: Option<shardgate_policy::ToolScope>,
    pub decision: ToolDecision,
    /// From the call to its answer (MCP calls that went upstream).
    pub latency: Option<std::time::Duration>,
    /// The result's `isError`, or true for a JSON-RPC error.
    pub is_error: Option<bool>,
    /// The call's arguments, kept as `log_prompts` says (worked out only
    /// when the record is written).
    pub arguments: Option<&'a serde_json::Value>,
    pub log_prompts: shardgate_policy::PromptLogging,
}

impl ToolCallRecord<'_> {
    /// The metric labels: where it was seen, and the decision.
    fn labels(&self) -> (&'static str, &'static str) {
        let source = match self.source {
            ToolCallSource::Mcp(_) => "mcp",
            ToolCallSource::ModelAnswer => "model_answer",
        };
        let decision = match self.decision {
            ToolDecision::Allowed => "allowed",
            ToolDecision::Refused { .. } => "refused",
            ToolDecision::Stripped { .. } => "stripped",
            ToolDecision::RateLimited => "rate_limited",
        };
        (source, decision)
    }

    /// One JSON object: the audit line's fields.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let (decision, policy, rule) = match &self.decision {
            ToolDecision::Allowed => ("allowed", None, None),
            ToolDecision::Refused { policy, rule } => ("refused", Some(policy), Some(rule)),
            ToolDecision::Stripped { policy, rule } => ("stripped", Some(policy), Some(rule)),
            ToolDecision::RateLimited => ("rate_limited", None, None),
        };
        let (source, era) = match self.source {
            ToolCallSource::Mcp(e) => ("mcp", Some(e.label())),
            ToolCallSource::ModelAnswer => ("model_answer", None),
        };
        let actor = self.actor.map(|a| {
            json!({"key_id": a.key_id, "team": a.team, "tenant": a.tenant,
                   "app": a.app, "environment": a.environment})
        });
        let arguments = match &ToolArguments::keep(self.arguments, self.log_prompts) {
            ToolArguments::None => serde_json::Value::Null,
            ToolArguments::Digest(d) => json!({ "sha256": d }),
            ToolArguments::Full(t) => json!({ "json": t }),
        };
        json!({
            "request_id": self.rid,
            "actor": actor,
            "source": source,
            "era": era,
            "server": self.server,
            "tool": self.exposed,
            "original_name": self.original,
            "scope": self.scope.map(shardgate_policy::ToolScope::as_str),
            "decision": decision,
            "policy": policy,
            "rule": rule,
            "latency_ms": self.latency.map(|d| d.as_secs_f64() * 1000.0),
            "is_error": self.is_error,
            "arguments": arguments,
        })
    }

    /// Whether a record would be written anywhere: the audit log, or the
    /// `tool_call` log at the level [`ToolCallRecord::emit`] may use. When
    /// neither, a call's arguments are not even parsed for it.
    pub fn wanted(audit: shardgate_policy::EffectiveAudit, shard: &crate::shard::Shard) -> bool {
        let level = if audit.log_tool_calls || audit.log_policy_decisions {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        shard.audit.is_some() || log::log_enabled!(target: "tool_call", level)
    }

    /// Hands the record on: the `tool_call` log target, at info level
    /// when the caller's audit settings ask for it (`log_tool_calls`, or
    /// `log_policy_decisions` for a refusal), else at debug (on with
    /// `RUST_LOG=tool_call=debug`). Nothing is built when neither is on.
    pub fn emit(&self, audit: shardgate_policy::EffectiveAudit, shard: &crate::shard::Shard) {
        if let Some(sink) = &shard.audit {
            sink.tool_call(self);
        }
        let (source, decision) = self.labels();
        shard
            .stats
            .borrow_mut()
            .tool_call(self.server.unwrap_or("-"), source, decision);
        let refusal = !matches!(self.decision, ToolDecision::Allowed);
        let level = if audit.log_tool_calls || (refusal && audit.log_policy_decisions) {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        if log::log_enabled!(target: "tool_call", level) {
            log::log!(target: "tool_call", level, "{}", self.to_json());
        }
    }
}

impl ToolArguments {
    /// `args` as `setting` allows: nothing, a digest, or the whole with
    /// credential-like values redacted.
    pub fn keep(
        args: Option<&serde_json::Value>,
        setting: shardgate_policy::PromptLogging,
    ) -> Self {
        use shardgate_policy::PromptLogging;
        let Some(args) = args else {
            return ToolArguments::None;
        };
        match setting {
            PromptLogging::None => ToolArguments::None,
            PromptLogging::MetadataOnly => {
                let text = serde_json::to_vec(args).unwrap_or_default();
                let digest = ring::digest::digest(&ring::digest::SHA256, &text);
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(digest.as_ref());
                let hex = crate::audit::chain::hex(&bytes);
                ToolArguments::Digest(String::from_utf8_lossy(&hex).into_owned())
            }
            PromptLogging::Full => {
                let mut v = args.clone();
                redact_credentials(&mut v);
                ToolArguments::Full(v.to_string())
            }
        }
    }
}

/// Replaces values under credential-like keys, and strings shaped like
/// provider keys, with `[redacted]`.
fn redact_credentials(v: &mut serde_json::Value) {
    use serde_json::Value;
    const KEYS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "access_key",
        "private_key",
        "credential",
    ];
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if KEYS.iter().any(|s| lower.contains(s)) {
                    *val = Value::from("[redacted]");
                } else {
                    redact_credentials(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_credentials),
        Value::String(s) => {
            let looks_like_key = ["sk-", "sk_live_", "AKIA", "ghp_", "xoxb-", "sg-"]
                .iter()
                .any(|p| s.starts_with(p) && s.len() >= 20 && !s.contains(' '));
            if looks_like_key {
                *s = "[redacted]".to_owned();
            }
        }
        _ => {}
    }
}
