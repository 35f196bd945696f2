//! Which target serves a call, and what happens when one fails.
//!
//! An alias's targets are tried in order (the `priority` strategy). Each
//! attempt runs to its answer's head apart from the client
//! ([`attempt::send_until_head`]); only an attempt that has a head is relayed,
//! and a relay that fails before any byte reached the client hands its
//! failure back here too. A failure's [`Retry`] class says whether the next
//! target may serve. Every attempt is recorded on the call, with the usage
//! it reported, so that all of them are settled and audited.

use super::balance::Health;
use super::{attempt, relay, send_error, AttemptOutcome, AttemptRecord, Attempts, Call};
use crate::config::{ModelRoute, Strategy, Target};
use crate::error::GatewayError;
use crate::server::{ClientConn, Outcome};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// An attempt that produced no answer for the client, and how the route
/// may go on from it.
#[derive(Debug)]
pub struct Failure {
    pub error: GatewayError,
    pub retry: Retry,
}

/// What a failure allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The client gets this error: trying elsewhere would not change it
    /// (the request itself was refused).
    Final,
    /// Another target may serve. `breaker`: the failure says the target is
    /// unhealthy (it could not be reached, broke the protocol, or failed
    /// with a 5xx), not that this one request was unwelcome.
    NextTarget { breaker: bool },
    /// The target asked to be tried again after `after` (`Retry-After` on
    /// a 429 or 503); another target may serve meanwhile.
    SameTargetAfter { after: Duration, breaker: bool },
}

/// Classifies, so `?` works in an attempt: its error converts where it
/// arises, and a successful answer is never converted on the way out.
impl From<GatewayError> for Failure {
    fn from(error: GatewayError) -> Self {
        Failure::classify(error)
    }
}

impl Failure {
    pub fn classify(error: GatewayError) -> Self {
        use GatewayError::*;
        let retry = match &error {
            UpstreamConnect { .. } | UpstreamTimeout { .. } | UpstreamProtocol { .. } => {
                Retry::NextTarget { breaker: true }
            }
            // The upstream answered; the gateway could not use the answer
            // or has no way to reach it: another target may do better.
            UpstreamTranslate { .. } | Misconfigured(_) => Retry::NextTarget { breaker: false },
            UpstreamStatus {
                status,
                retry_after,
                ..
            } if *status == 429 || *status >= 500 => {
                let breaker = *status >= 500;
                match retry_after.as_ref().and_then(|r| r.seconds()) {
                    Some(secs) if matches!(status, 429 | 503) => Retry::SameTargetAfter {
                        after: Duration::from_secs(secs),
                        breaker,
                    },
                    _ => Retry::NextTarget { breaker },
                }
            }
            _ => Retry::Final,
        };
        Failure { error, retry }
    }

    /// Whether another target may serve the call after this.
    pub fn moves_on(&self) -> bool {
        self.retry != Retry::Final
    }
}

/// Fallback routes followed at most, past the first.
const MAX_FALLBACK_ROUTES: usize = 4;

/// Serves `call` on route `alias`: its targets in its strategy's order,
/// then its fallback routes' (each in its own strategy's order), until one
/// answers. Each attempt is added to `attempts` as it ends.
pub async fn serve<'a>(
    call: &Call<'_>,
    conn: &mut ClientConn,
    alias: &'a str,
    model: &'a ModelRoute,
    models: &'a BTreeMap<String, ModelRoute>,
    attempts: &mut Attempts<'a>,
) -> Outcome {
    let (rid, client) = (call.rid, call.client);
    let plan = plan(call, alias, model, models);
    let balancer = &call.shard.balancer;
    // A breaker, like a strategy, only matters where there is another
    // target to go to: a lone target's calls are not tracked.
    let tracked = plan.len() > 1 || model.strategy != Strategy::Priority;
    for (n, &(route_line, target)) in plan.iter().enumerate() {
        let Some(provider) = call.generation.config.providers.get(target.provider) else {
            continue;
        };
        call.attempt.set(n + 1);
        let started = Instant::now();
        if tracked {
            balancer.started(target, started);
        }
        // The client may leave while the upstream thinks: racing the attempt
        // with the client's close drops the upstream connection, which
        // cancels it.
        let mut head = futures_lite::future::or(
            async { Some(attempt::send_until_head(call, target, provider).await) },
            async {
                conn.closed().await;
                None
            },
        )
        .await;
        let mut head_at = None;
        let end = |outcome, head_at: Option<Instant>, health| {
            let ended = Instant::now();
            if tracked {
                let settings = call.shard.pool.settings();
                let opened = balancer.ended(
                    target,
                    head_at.map(|h| h.saturating_duration_since(started)),
                    health,
                    ended,
                    settings.breaker_failures,
                    settings.breaker_open_for,
                );
                if let Some(until) = opened {
                    call.shard.circuit_opened(&target.served_by, until);
                }
            }
            AttemptRecord {
                target,
                outcome,
                started,
                head_at,
                ended,
                metered: call.take_metered(),
            }
        };
        let failure = match head {
            None => {
                conn.note_error(relay::CLIENT_LEFT);
                attempts.push(end(AttemptOutcome::ClientLeft, head_at, Health::Neutral));
                return Outcome::CLOSE;
            }
            // Borrowed, not moved: an answer is a few hundred bytes, and
            // each move into a future is a copy.
            Some(Ok(ref mut answer)) => {
                head_at = Some(Instant::now());
                answer.alias_line = route_line;
                match relay::deliver(conn, answer).await {
                    Ok(outcome) => {
                        attempts.push(end(AttemptOutcome::Answered, head_at, Health::Answered));
                        return outcome;
                    }
                    Err(failure) => failure,
                }
            }
            Some(Err(failure)) => failure,
        };
        let health = match failure.retry {
            Retry::NextTarget { breaker: true } => Health::Unhealthy { open_for: None },
            Retry::SameTargetAfter {
                after,
                breaker: true,
            } => Health::Unhealthy {
                open_for: Some(after),
            },
            // The answer's head came: the target is up, whatever became
            // of the answer.
            _ if head_at.is_some() => Health::Answered,
            _ => Health::Neutral,
        };
        attempts.push(end(
            AttemptOutcome::Failed(failure.error.label()),
            head_at,
            health,
        ));
        if failure.moves_on() && n + 1 < plan.len() {
            log::info!(
                "{rid}: target {}/{} failed ({}), trying the next",
                provider.name,
                target.model,
                failure.error.label()
            );
            continue;
        }
        let err = failure.error;
        log::info!("{rid}: {} {}: {}", provider.name, err.label(), err);
        let Some(retry_after) = err.retry_after() else {
            return send_error(conn, client, &err, rid, &call.headers, false).await;
        };
        let mut headers = call.headers.clone();
        headers.push(("retry-after", retry_after.as_str().to_owned()));
        return send_error(conn, client, &err, rid, &headers, false).await;
    }
    let e = GatewayError::ModelNotFound(call.facts.model.clone());
    send_error(conn, client, &e, rid, &call.headers, false).await
}

/// Every target to try, in order, with its route's alias and whether that
/// route balances (so the balancer tracks it): the route's own targets in
/// its strategy's order, then each fallback route's, breadth first, each
/// route once.
fn plan<'a>(
    call: &Call<'_>,
    alias: &'a str,
    model: &'a ModelRoute,
    models: &'a BTreeMap<String, ModelRoute>,
) -> SmallVec<[(&'a [u8], &'a Target); 4]> {
    let shard = call.shard;
    let output = call
        .facts
        .max_tokens
        .unwrap_or(shardgate_policy::DEFAULT_OUTPUT_RESERVATION);
    let price = |t: &Target| {
        shard
            .admission
            .estimate_micros(&t.model, call.prompt_estimate, output)
    };
    let mut plan = SmallVec::new();
    let mut add = |route: &'a ModelRoute| {
        let line = route.alias_line.as_slice();
        if route.strategy == Strategy::Priority {
            plan.extend(route.targets.iter().map(|t| (line, t)));
        } else {
            for i in shard.balancer.order(route, price) {
                plan.push((line, &route.targets[i]));
            }
        }
    };
    add(model);
    if model.fallback.is_empty() {
        return healthy_first(shard, plan);
    }
    let mut seen: SmallVec<[&str; 4]> = SmallVec::new();
    seen.push(alias);
    let mut queue: SmallVec<[&'a str; 4]> = model.fallback.iter().map(String::as_str).collect();
    let mut followed = 0;
    while !queue.is_empty() && followed < MAX_FALLBACK_ROUTES {
        let next = queue.remove(0);
        if seen.contains(&next) {
            continue;
        }
        seen.push(next);
        let Some(route) = models.get(next) else {
            continue;
        };
        followed += 1;
        add(route);
        queue.extend(route.fallback.iter().map(String::as_str));
    }
    healthy_first(shard, plan)
}

/// Targets whose circuit is open (or half-open with its probe out) go
/// last: tried only once nothing healthy is left.
fn healthy_first<'a>(
    shard: &crate::shard::Shard,
    plan: SmallVec<[(&'a [u8], &'a Target); 4]>,
) -> SmallVec<[(&'a [u8], &'a Target); 4]> {
    let b = &shard.balancer;
    if !b.any_not_closed() {
        return plan;
    }
    let now = Instant::now();
    let (mut ok, avoided): (SmallVec<[_; 4]>, SmallVec<[_; 4]>) =
        plan.into_iter().partition(|(_, t)| !b.avoided(t, now));
    ok.extend(avoided);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RetryAfter;

    fn status(status: u16, retry_after: Option<&str>) -> GatewayError {
        GatewayError::UpstreamStatus {
            provider: "p".into(),
            status,
            body: Vec::new(),
            retry_after: retry_after.and_then(|v| RetryAfter::parse(v.as_bytes())),
        }
    }

    #[test]
    fn failures_are_classed_by_what_they_say_about_the_target() {
        let class = |e| Failure::classify(e).retry;
        assert_eq!(
            class(GatewayError::UpstreamTimeout {
                provider: "p".into()
            }),
            Retry::NextTarget { breaker: true }
        );
        assert_eq!(
            class(status(500, None)),
            Retry::NextTarget { breaker: true }
        );
        assert_eq!(
            class(status(429, None)),
            Retry::NextTarget { breaker: false }
        );
        assert_eq!(
            class(status(429, Some("2"))),
            Retry::SameTargetAfter {
                after: Duration::from_secs(2),
                breaker: false
            }
        );
        assert_eq!(
            class(status(503, Some("1"))),
            Retry::SameTargetAfter {
                after: Duration::from_secs(1),
                breaker: true
            }
        );
        // Only delta-seconds become a delay.
        assert_eq!(
            class(status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Retry::NextTarget { breaker: false }
        );
        for refused in [
            status(400, None),
            status(404, None),
            GatewayError::Unauthorized,
        ] {
            assert!(!Failure::classify(refused).moves_on());
        }
    }
}
