//! Active health checks. A provider with a `health_check` is sent
//! `GET path` on its cadence, from shard 0 only (one probe per gateway, not
//! one per shard), on a fresh connection (the check is about reaching it).
//! A failed check (no connection, no answer in time, a 5xx) feeds the
//! breaker of every target the provider serves as a failed call would: it
//! counts towards opening it, and an opening is told to every other shard.
//! A passed check is not fed: closing is left to a real call's half-open
//! probe, so a health path that answers cannot hide failing calls.
//!
//! The config is read anew at every tick, so a reload adds, changes or
//! removes checks without a restart.

use crate::client::{read_response_head, Endpoint};
use crate::config::{HealthCheck, HttpProvider, ProviderKind, Wire};
use crate::gateway::balance::Health;
use crate::io::write_all_timeout;
use crate::shard::Shard;
use futures_lite::io::AsyncWriteExt;
use rustc_hash::FxHashMap;
use shardgate_proto::h1::{write_header, Method};
use shardgate_providers::openai::Operation;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The shortest and longest the loop sleeps: with no check configured it
/// wakes only to notice a reload that adds one.
const MIN_SLEEP: Duration = Duration::from_millis(50);
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Runs the checks of shard 0 until the process ends.
pub async fn run(shard: Rc<Shard>) {
    if shard.id != 0 {
        return;
    }
    let mut last: FxHashMap<String, Instant> = FxHashMap::default();
    loop {
        let generation = shard.generation();
        let config = &generation.config;
        let mut sleep = MAX_SLEEP;
        for (index, provider) in config.providers.iter().enumerate() {
            let ProviderKind::Http(http) = &provider.kind else {
                continue;
            };
            let Some(check) = &http.health_check else {
                continue;
            };
            let due = last.get(&provider.name).map(|at| *at + check.interval);
            let now = Instant::now();
            if let Some(due) = due.filter(|d| *d > now) {
                sleep = sleep.min(due - now);
                continue;
            }
            last.insert(provider.name.clone(), now);
            sleep = sleep.min(check.interval);
            let Some(Some(ep)) = generation.endpoints.get(index) else {
                continue;
            };
            // A 429 says the provider is busy, not down: like a call's, it
            // counts neither way.
            let failed = match probe(&shard, ep, http, check).await {
                Ok(status) => status >= 500,
                Err(reason) => {
                    log::warn!("health check of {}: {reason}", provider.name);
                    true
                }
            };
            if failed {
                fail(&shard, config, index);
            }
        }
        drop(generation);
        glommio::timer::sleep(sleep.max(MIN_SLEEP)).await;
    }
}

/// The provider's targets hear of a failed check as of a failed call.
/// Passed checks are not fed: a health path that answers says nothing of
/// the calls a target fails, and must not reset their count or close a
/// circuit they opened (the half-open probe of a real call does that).
fn fail(shard: &Shard, config: &crate::config::Config, provider: usize) {
    let health = Health::Unhealthy { open_for: None };
    let breaker = &shard.pool.settings().breaker;
    let now = Instant::now();
    let targets = config.models.values().flat_map(|r| r.targets.iter());
    let mut seen: Vec<&str> = Vec::new();
    for t in targets.filter(|t| t.provider == provider) {
        if seen.contains(&t.served_by.as_str()) {
            continue;
        }
        seen.push(&t.served_by);
        shard.balancer.started(t, now);
        if let Some(until) = shard.balancer.ended(t, None, health, now, breaker) {
            shard.circuit_opened(&t.served_by, until);
        }
    }
}

/// Sends the check and reads the answer's status, all within its timeout.
async fn probe(
    shard: &Shard,
    ep: &Endpoint,
    http: &HttpProvider,
    check: &HealthCheck,
) -> Result<u16, String> {
    let deadline = Instant::now() + check.timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut up = shard
        .pool
        .connect_within(ep, check.timeout)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut req = Vec::with_capacity(256);
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(check.path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\n");
    write_header(&mut req, "host", ep.authority.as_bytes());
    for (name, value) in auth_headers(http) {
        write_header(&mut req, &name, value.as_bytes());
    }
    write_header(&mut req, "user-agent", b"shardgate-health-check");
    write_header(&mut req, "connection", b"close");
    req.extend_from_slice(b"\r\n");
    write_all_timeout(&mut up.stream, &req, left())
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    up.stream
        .flush()
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let head = read_response_head(&mut up, left(), Method::Get)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    Ok(head.status)
}

/// The credentials a request to this provider carries, where a header says
/// them (Bedrock's SigV4 signs a body: its checks go without, to a path
/// that needs none).
fn auth_headers(http: &HttpProvider) -> Vec<(String, String)> {
    let Some(key) = http.api_key.as_ref().map(|k| k.expose()) else {
        return Vec::new();
    };
    let one = |name: &str| vec![(name.to_owned(), key.to_owned())];
    match &http.wire {
        Wire::OpenAi(p) => p
            .endpoint(Operation::ChatCompletions, Some(key))
            .map(|(_, headers)| {
                headers
                    .into_iter()
                    .filter(|(n, _)| !n.eq_ignore_ascii_case("content-type"))
                    .collect()
            })
            .unwrap_or_default(),
        Wire::Azure(_) => one("api-key"),
        Wire::Anthropic(p) => {
            let mut h = one("x-api-key");
            h.push(("anthropic-version".to_owned(), p.version.clone()));
            h
        }
        Wire::Gemini(_) => one("x-goog-api-key"),
        Wire::Bedrock(_) => Vec::new(),
    }
}
