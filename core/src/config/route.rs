//! Routes: what a model alias maps to. Its targets and the strategy that
//! orders them, the routes to fall back on, which failures move on and how
//! often (retries with backoff), its timeouts and its hedge, all validated
//! here so that the request path only reads them.

use super::{field, ConfigError, Dur, UpstreamSettings};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Attempts one request may make, whatever a route says: each is an
/// upstream request the caller pays for.
pub const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug, Clone)]
pub struct ModelRoute {
    /// The strategy picks the first target; the others follow in config
    /// order when one fails before any byte of its answer reached the
    /// client.
    pub targets: Vec<Target>,
    pub strategy: Strategy,
    /// Other aliases tried, in order, when every target failed (each with
    /// its own strategy; checked free of cycles at load).
    pub fallback: Vec<String>,
    /// `x-shardgate-model: <alias>\r\n`, rendered once.
    pub alias_line: Vec<u8>,
    pub retry: RetryPolicy,
    pub timeouts: RouteTimeouts,
    /// Set only on a route with two targets or more.
    pub hedge: Option<Hedge>,
    /// Deterministic answers are kept and replayed (opt-in).
    pub cache: Option<super::cache::CacheSettings>,
}

/// How a route picks the target that is tried first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first target, in config order.
    #[default]
    Priority,
    /// At random, by `weight`.
    Weighted,
    /// The better of two picked at random, by requests in flight.
    LeastInflight,
    /// The better of two picked at random, by a latency score (an EWMA of
    /// time to the answer's head, scaled by requests in flight); one pick
    /// in 50 goes to a random target, so a recovered one is seen.
    LowestLatency,
    /// The one whose price for the request's expected tokens is lowest.
    Cheapest,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub provider: usize,
    pub model: String,
    /// `provider/model`, the `x-shardgate-target` value (rendered once).
    pub served_by: String,
    /// `model` as a JSON string, what pass-through bodies get (rendered once).
    pub model_json: Vec<u8>,
    /// Its share under `weighted` (default 1).
    pub weight: u32,
    /// Its model's context window in tokens, when known: a context-length
    /// error moves only to a target whose window is larger.
    pub context_window: Option<u64>,
    /// The response headers naming it (`x-shardgate-target`, `-provider`,
    /// `-upstream-model`), rendered once: every answer carries them.
    pub head_lines: Vec<u8>,
}

/// Which failures may move a request on (to the next target, or to the
/// same one again later). A failure not listed is the client's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOn {
    /// The target could not be reached, or broke the connection before
    /// answering.
    pub connect: bool,
    /// No answer's head within the first-token timeout.
    pub timeout: bool,
    /// 429.
    pub rate_limited: bool,
    /// 5xx, or an answer that broke the protocol.
    pub server_error: bool,
    /// The prompt does not fit the model: moves only to a target with a
    /// larger `context_window`.
    pub context_length: bool,
}

impl Default for MoveOn {
    fn default() -> Self {
        MoveOn {
            connect: true,
            timeout: true,
            rate_limited: true,
            server_error: true,
            context_length: true,
        }
    }
}

/// How often a request is tried, and how long it waits before trying a
/// target it already tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 to [`MAX_ATTEMPTS`]); `None`:
    /// each target of the plan once.
    pub attempts: Option<u32>,
    /// The wait before the first retry of a target, doubling with each
    /// later one up to `max_backoff`, each drawn with jitter between half
    /// and all of it. A target's `Retry-After` (or rate-limit reset) is
    /// waited for instead when it is longer.
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub on: MoveOn,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: None,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            on: MoveOn::default(),
        }
    }
}

/// A route's waits; unset ones are `upstream:`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Duration,
    /// From the request sent to the answer's head, per attempt. It ends the
    /// attempt before the client has seen a byte, so the next target may
    /// still serve.
    pub first_token: Duration,
    /// The longest gap between two reads of an answer (between stream
    /// events).
    pub idle: Duration,
    /// From the request's start to its answer's head, every attempt and
    /// wait included. Unset: only the per-attempt limits.
    pub total: Option<Duration>,
}

impl RouteTimeouts {
    pub fn from_upstream(u: &UpstreamSettings) -> Self {
        RouteTimeouts {
            connect: u.connect_timeout,
            first_token: u.first_byte_timeout,
            idle: u.read_timeout,
            total: None,
        }
    }
}

/// A second attempt sent while the first is slow to start; the first head
/// wins and the other is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedge {
    pub after: HedgeAfter,
    /// Hedge requests that offer tools too (a tool call could then be
    /// started twice upstream).
    pub with_tools: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeAfter {
    Fixed(Duration),
    /// The route's time to first token at the 95th percentile, as this
    /// shard has seen it; `initial` until it has seen enough.
    P95 {
        initial: Duration,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    targets: Vec<RawTarget>,
    #[serde(default)]
    strategy: Strategy,
    #[serde(default)]
    fallback: Vec<String>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    timeouts: RawTimeouts,
    hedge: Option<RawHedge>,
    cache: Option<super::cache::RawCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: String,
    model: String,
    weight: Option<u32>,
    context_window: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    backoff: Option<Dur>,
    max_backoff: Option<Dur>,
    on: Option<Vec<RawMoveOn>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
enum RawMoveOn {
    #[serde(rename = "connect")]
    Connect,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "429")]
    RateLimited,
    #[serde(rename = "5xx")]
    ServerError,
    #[serde(rename = "context_length")]
    ContextLength,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<Dur>,
    first_token: Option<Dur>,
    idle: Option<Dur>,
    total: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHedge {
    /// A duration (`300ms`) or `p95`.
    after: String,
    /// With `after: p95`, the threshold until the shard has seen enough.
    initial: Option<Dur>,
    #[serde(default)]
    tools: bool,
}

/// Validates `models:` against the providers (`index`: name to position).
pub(super) fn build(
    raw: BTreeMap<String, RawModel>,
    index: &BTreeMap<String, usize>,
    upstream: &UpstreamSettings,
) -> Result<BTreeMap<String, ModelRoute>, ConfigError> {
    let mut models = BTreeMap::new();
    for (alias, m) in raw {
        let path = format!("models.{alias}");
        let route = build_route(&path, &alias, m, index, upstream)?;
        models.insert(alias, route);
    }
    if models.is_empty() {
        return Err(field("models", "no model configured"));
    }
    check_fallbacks(&models)?;
    Ok(models)
}

fn build_route(
    path: &str,
    alias: &str,
    m: RawModel,
    index: &BTreeMap<String, usize>,
    upstream: &UpstreamSettings,
) -> Result<ModelRoute, ConfigError> {
    if m.targets.is_empty() {
        return Err(field(
            format!("{path}.targets"),
            "needs at least one target",
        ));
    }
    let mut targets = Vec::with_capacity(m.targets.len());
    for (i, t) in m.targets.into_iter().enumerate() {
        let at = format!("{path}.targets[{i}]");
        targets.push(build_target(&at, t, index)?);
    }
    if m.strategy == Strategy::Weighted && targets.iter().all(|t| t.weight == 0) {
        return Err(field(
            format!("{path}.targets"),
            "every weight is 0: a weighted route needs one above 0",
        ));
    }
    let mut alias_line = Vec::new();
    shardgate_proto::h1::write_header(&mut alias_line, "x-shardgate-model", alias.as_bytes());
    let hedge = match m.hedge {
        None => None,
        Some(_) if targets.len() < 2 => {
            return Err(field(
                format!("{path}.hedge"),
                "needs a route with two targets or more: a hedge goes to another target",
            ));
        }
        Some(h) => Some(build_hedge(&format!("{path}.hedge"), h)?),
    };
    Ok(ModelRoute {
        targets,
        strategy: m.strategy,
        fallback: m.fallback,
        alias_line,
        retry: build_retry(&format!("{path}.retry"), m.retry)?,
        timeouts: build_timeouts(&format!("{path}.timeouts"), m.timeouts, upstream)?,
        hedge,
        cache: match m.cache {
            Some(c) => Some(super::cache::build(&format!("{path}.cache"), c)?),
            None => None,
        },
    })
}

fn build_target(
    path: &str,
    t: RawTarget,
    index: &BTreeMap<String, usize>,
) -> Result<Target, ConfigError> {
    let Some(&provider) = index.get(&t.provider) else {
        return Err(field(
            format!("{path}.provider"),
            format!("no provider named `{}`", t.provider),
        ));
    };
    if t.model.is_empty() {
        return Err(field(format!("{path}.model"), "is empty"));
    }
    if t.context_window == Some(0) {
        return Err(field(
            format!("{path}.context_window"),
            "must be more than 0",
        ));
    }
    let mut model_json = Vec::new();
    shardgate_proto::json::write_json_string(&mut model_json, &t.model);
    let mut head_lines = Vec::new();
    let served_by = format!("{}/{}", t.provider, t.model);
    for (name, value) in [
        ("x-shardgate-target", served_by.as_str()),
        ("x-shardgate-provider", t.provider.as_str()),
        ("x-shardgate-upstream-model", t.model.as_str()),
    ] {
        shardgate_proto::h1::write_header(&mut head_lines, name, value.as_bytes());
    }
    Ok(Target {
        provider,
        served_by,
        model_json,
        model: t.model,
        weight: t.weight.unwrap_or(1),
        context_window: t.context_window,
        head_lines,
    })
}

fn build_retry(path: &str, r: RawRetry) -> Result<RetryPolicy, ConfigError> {
    let d = RetryPolicy::default();
    if let Some(n) = r.attempts {
        if !(1..=MAX_ATTEMPTS).contains(&n) {
            return Err(field(
                format!("{path}.attempts"),
                format!("must be from 1 to {MAX_ATTEMPTS}"),
            ));
        }
    }
    let backoff = r.backoff.map_or(d.backoff, |v| v.0);
    let max_backoff = r.max_backoff.map_or(d.max_backoff.max(backoff), |v| v.0);
    if max_backoff < backoff {
        return Err(field(
            format!("{path}.max_backoff"),
            "is less than `backoff`",
        ));
    }
    let on = match r.on {
        None => MoveOn::default(),
        Some(list) => {
            let mut on = MoveOn {
                connect: false,
                timeout: false,
                rate_limited: false,
                server_error: false,
                context_length: false,
            };
            for k in list {
                match k {
                    RawMoveOn::Connect => on.connect = true,
                    RawMoveOn::Timeout => on.timeout = true,
                    RawMoveOn::RateLimited => on.rate_limited = true,
                    RawMoveOn::ServerError => on.server_error = true,
                    RawMoveOn::ContextLength => on.context_length = true,
                }
            }
            on
        }
    };
    Ok(RetryPolicy {
        attempts: r.attempts,
        backoff,
        max_backoff,
        on,
    })
}

fn build_timeouts(
    path: &str,
    t: RawTimeouts,
    upstream: &UpstreamSettings,
) -> Result<RouteTimeouts, ConfigError> {
    let d = RouteTimeouts::from_upstream(upstream);
    let out = RouteTimeouts {
        connect: t.connect.map_or(d.connect, |v| v.0),
        first_token: t.first_token.map_or(d.first_token, |v| v.0),
        idle: t.idle.map_or(d.idle, |v| v.0),
        total: t.total.map(|v| v.0),
    };
    for (name, v) in [
        ("connect", Some(out.connect)),
        ("first_token", Some(out.first_token)),
        ("idle", Some(out.idle)),
        ("total", out.total),
    ] {
        if v.is_some_and(|v| v.is_zero()) {
            return Err(field(format!("{path}.{name}"), "must be more than 0"));
        }
    }
    Ok(out)
}

fn build_hedge(path: &str, h: RawHedge) -> Result<Hedge, ConfigError> {
    let after = if h.after.trim() == "p95" {
        HedgeAfter::P95 {
            initial: h.initial.map_or(Duration::from_secs(1), |v| v.0),
        }
    } else {
        if h.initial.is_some() {
            return Err(field(
                format!("{path}.initial"),
                "only goes with `after: p95`",
            ));
        }
        match humantime::parse_duration(h.after.trim()) {
            Ok(d) if !d.is_zero() => HedgeAfter::Fixed(d),
            _ => {
                return Err(field(
                    format!("{path}.after"),
                    format!(
                        "`{}`: use a duration above 0 (like 300ms) or `p95`",
                        h.after
                    ),
                ))
            }
        }
    };
    Ok(Hedge {
        after,
        with_tools: h.tools,
    })
}

/// Every `fallback` names a route, and following them never comes back to
/// where it started.
fn check_fallbacks(models: &BTreeMap<String, ModelRoute>) -> Result<(), ConfigError> {
    for (alias, route) in models {
        for (i, f) in route.fallback.iter().enumerate() {
            if !models.contains_key(f) {
                return Err(field(
                    format!("models.{alias}.fallback[{i}]"),
                    format!("no model named `{f}`"),
                ));
            }
        }
        // Depth-first from `alias`: a path back to it is a cycle.
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(alias.as_str(), vec![alias.as_str()])];
        while let Some((at, path)) = stack.pop() {
            for next in models.get(at).map_or(&[][..], |r| &r.fallback[..]) {
                if next == alias {
                    let mut cycle = path.clone();
                    cycle.push(next);
                    return Err(field(
                        format!("models.{alias}.fallback"),
                        format!("a cycle: {}", cycle.join(" -> ")),
                    ));
                }
                if !path.contains(&next.as_str()) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    Ok(())
}
