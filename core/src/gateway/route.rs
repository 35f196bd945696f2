//! Which target serves a call, and what happens when one fails.
//!
//! The route's plan lists its targets in its strategy's order, then its
//! fallback routes' ([`plan`]). Each attempt runs to its answer's head
//! apart from the client ([`attempt::send_until_head`]); only an attempt
//! that has a head is relayed, and a relay that fails before any byte
//! reached the client hands its failure back here too. A failure's
//! [`FailureKind`] and the route's `retry.on` say whether the call moves
//! on: to the next target not yet tried (at once), or, once every one was
//! tried and attempts are left, back to one already tried after a backoff
//! with jitter (or as long as it asked, by `Retry-After` or a rate-limit
//! reset). Everything stays within the route's total deadline.
//!
//! A hedged route sends its first attempt, and when no head came within
//! the threshold, the same request to the next target too: the first head
//! wins, the other attempt is dropped, which closes its upstream
//! connection.
//!
//! Every attempt is recorded on the call, with the usage it reported (a
//! hedge's loser with its prompt), so that all of them are settled and
//! audited.

use super::attempt::Waits;
use super::balance::Health;
use super::relay::Answer;
use super::{attempt, relay, send_error, AttemptOutcome, AttemptRecord, Attempts, Call};
use crate::config::route::{Hedge, HedgeAfter, MoveOn, RetryPolicy, MAX_ATTEMPTS};
use crate::config::{ModelRoute, Provider, Strategy, Target};
use crate::error::GatewayError;
use crate::record::Metered;
use crate::server::{ClientConn, Outcome};
use futures_lite::future::or;
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::pin::pin;
use std::time::{Duration, Instant};

/// An attempt that produced no answer for the client, and what it says.
#[derive(Debug)]
pub struct Failure {
    pub error: GatewayError,
    pub kind: FailureKind,
    /// How long the target asked to be left alone (`Retry-After`,
    /// `retry-after-ms`, a rate-limit reset).
    pub wait: Option<Duration>,
}

/// What a failure says, for `retry.on` and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Not reached, or the connection broke before an answer.
    Connect,
    /// No answer's head within the first-token timeout.
    Timeout,
    /// 429.
    RateLimited,
    /// 5xx, or an answer that broke the protocol.
    ServerError,
    /// The prompt does not fit the target's model.
    ContextLength,
    /// The gateway could not use the answer, or has no way to reach the
    /// target: another target may do better; nothing about health.
    Unusable,
    /// The request itself was refused: the client's answer.
    Final,
}

impl FailureKind {
    /// Whether `on` lets a failure of this kind move on.
    pub fn moves_on(self, on: &MoveOn) -> bool {
        match self {
            FailureKind::Connect => on.connect,
            FailureKind::Timeout => on.timeout,
            FailureKind::RateLimited => on.rate_limited,
            FailureKind::ServerError => on.server_error,
            FailureKind::ContextLength => on.context_length,
            FailureKind::Unusable => true,
            FailureKind::Final => false,
        }
    }

    /// Whether it says the target is unhealthy (for its breaker), not that
    /// this one request was unwelcome.
    pub fn unhealthy(self) -> bool {
        matches!(
            self,
            FailureKind::Connect | FailureKind::Timeout | FailureKind::ServerError
        )
    }
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
        let kind = match &error {
            UpstreamConnect { .. } => FailureKind::Connect,
            UpstreamTimeout { .. } => FailureKind::Timeout,
            UpstreamProtocol { .. } => FailureKind::ServerError,
            UpstreamTranslate { .. } | Misconfigured(_) => FailureKind::Unusable,
            UpstreamStatus { status: 429, .. } => FailureKind::RateLimited,
            UpstreamStatus { status, .. } if *status >= 500 => FailureKind::ServerError,
            UpstreamStatus { status, body, .. }
                if shardgate_providers::is_context_length_error(*status, body) =>
            {
                FailureKind::ContextLength
            }
            _ => FailureKind::Final,
        };
        let wait = match &error {
            UpstreamStatus {
                status: 429 | 503,
                retry_after: Some(r),
                ..
            } => r.seconds().map(Duration::from_secs),
            _ => None,
        };
        // Longer is not believed (a century in `Retry-After` would keep a
        // circuit open for good): the route's own backoff applies.
        let wait = wait.filter(|w| *w <= MAX_ASKED_WAIT);
        Failure { error, kind, wait }
    }

    /// The wait the upstream's headers asked for, when they said more than
    /// `Retry-After`'s whole seconds.
    pub fn asked_to_wait(mut self, wait: Option<Duration>) -> Self {
        if wait.is_some()
            && matches!(
                self.kind,
                FailureKind::RateLimited | FailureKind::ServerError
            )
        {
            self.wait = wait;
        }
        self
    }

    fn health(&self) -> Health {
        if self.kind.unhealthy() {
            Health::Unhealthy {
                open_for: self.wait,
            }
        } else {
            Health::Neutral
        }
    }
}

/// The longest wait a target may ask for and be believed.
pub const MAX_ASKED_WAIT: Duration = Duration::from_secs(3600);

/// Fallback routes followed at most, past the first.
const MAX_FALLBACK_ROUTES: usize = 4;

/// With no total deadline, the longest a retry waits (for a target's
/// `Retry-After`); a longer one rules that target out.
const MAX_WAIT_WITHOUT_DEADLINE: Duration = Duration::from_secs(30);

/// One entry of the plan: a target and the route it belongs to.
#[derive(Clone, Copy)]
pub struct Step<'a> {
    pub route: &'a ModelRoute,
    pub target: &'a Target,
}

/// What the call has learned of one plan entry.
#[derive(Debug, Default, Clone, Copy)]
struct Tried {
    times: u32,
    /// It asked not to be tried again before then.
    not_before: Option<Instant>,
}

/// Serves `call` on route `alias`: the plan's targets in order, retries of
/// those already tried when the route allows more attempts, until one
/// answers or nothing may move on. Each attempt is added to `attempts` as
/// it ends.
pub async fn serve<'a>(
    call: &Call<'_>,
    conn: &mut ClientConn,
    alias: &'a str,
    model: &'a ModelRoute,
    models: &'a BTreeMap<String, ModelRoute>,
    attempts: &mut Attempts<'a>,
) -> Outcome {
    let plan = plan(call, alias, model, models);
    // A breaker, like a strategy, only matters where there is another
    // target to go to: a lone target's calls are not tracked.
    let tracked = plan.len() > 1 || model.strategy != Strategy::Priority;
    let retry = &model.retry;
    let budget = retry
        .attempts
        .map_or(plan.len(), |n| n as usize)
        .min(MAX_ATTEMPTS as usize);
    let deadline = model.timeouts.total.map(|t| Instant::now() + t);
    let mut tried: SmallVec<[Tried; 4]> = SmallVec::from_elem(Tried::default(), plan.len());
    // After a context-length failure: only targets whose window is larger
    // than this may serve.
    let mut window_over: Option<u64> = None;
    let mut last: Option<Failure> = None;
    let mut made = 0;
    while made < budget {
        // Past the deadline nothing more is sent: the last failure (a
        // first-token timeout cut to the deadline) is the answer.
        if made > 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        // The first attempt goes to the plan's first target, at once.
        let next = if made == 0 && !plan.is_empty() {
            Some((0, Duration::ZERO))
        } else {
            choose(call, &plan, &tried, window_over, retry, deadline, tracked)
        };
        let Some((i, wait)) = next else {
            break;
        };
        if !wait.is_zero() {
            let waited = or(
                async {
                    glommio::timer::sleep(wait).await;
                    true
                },
                async {
                    conn.closed().await;
                    false
                },
            )
            .await;
            if !waited {
                conn.note_error(relay::CLIENT_LEFT);
                return Outcome::CLOSE;
            }
        }
        tried[i].times += 1;
        let providers = &call.generation.config.providers;
        let Some(provider) = providers.get(plan[i].target.provider) else {
            continue;
        };
        made += 1;
        call.attempt.set(made);
        // The hedge goes to the next target not yet tried (and not avoided),
        // on the first attempt only.
        let now = Instant::now();
        let hedge = match model.hedge {
            Some(h) if made == 1 && made < budget && hedge_allowed(call, &h) => {
                plan.iter().enumerate().find_map(|(j, s)| {
                    let ok = j != i
                        && tried[j].times == 0
                        && fits(s.target, window_over)
                        && !(tracked && call.shard.balancer.avoided(s.target, now));
                    let pb = providers.get(s.target.provider).filter(|_| ok)?;
                    Some((j, pb, hedge_after(call, alias, &h)))
                })
            }
            _ => None,
        };
        // The attempt (or, hedged, the one whose head came first): its plan
        // entry, its start, and its head (`None`: the client left). Each
        // is assigned where it is made: an answer is a few hundred bytes,
        // and each move through a future, a tuple or a binding is a copy.
        let mut cut_by_deadline = false;
        let mut head = None;
        let (i, started) = match hedge {
            None => {
                let step = plan[i];
                let started = now;
                if tracked {
                    call.shard.balancer.started(step.target, started);
                }
                // The client may leave while the upstream thinks: racing the
                // attempt with the client's close drops the upstream
                // connection, which cancels it.
                let w = waits(step, deadline);
                cut_by_deadline = w.first_token < step.route.timeouts.first_token;
                match deadline {
                    None => {
                        // Pinned in place: the race holds a reference, so
                        // the attempt's state is not moved into it.
                        let mut send =
                            pin!(attempt::send_until_head(call, step.target, provider, w));
                        or(async { head = Some(send.as_mut().await) }, conn.closed()).await;
                    }
                    // Boxed: rare, and its timer would size every request.
                    Some(d) => {
                        let send = attempt::send_until_head(call, step.target, provider, w);
                        head = Box::pin(or(
                            async { Some(within(d, &provider.name, send).await) },
                            async {
                                conn.closed().await;
                                None
                            },
                        ))
                        .await;
                    }
                }
                (i, started)
            }
            Some((j, pb, after)) => {
                // Boxed: two attempts' state would otherwise size every
                // request's future, unhedged ones included.
                let h = Box::pin(hedged(
                    call,
                    conn,
                    (plan[i], i, provider),
                    (plan[j], j, pb),
                    after,
                    deadline,
                    tracked,
                    attempts,
                ))
                .await;
                if h.hedged {
                    tried[j].times += 1;
                    made += 1;
                    call.attempt.set(made);
                }
                if let Some((k, lost)) = &h.lost {
                    learn(&plan, &mut tried, &mut window_over, *k, lost);
                }
                if let (Some(took), Some(HedgeAfter::P95 { .. })) =
                    (h.first_took, model.hedge.map(|h| h.after))
                {
                    call.shard.balancer.note_ttft(alias, took);
                }
                let (k, started, answered) = h.head;
                head = answered;
                (k, started)
            }
        };
        let step = plan[i];
        let failure = match head {
            None => {
                let left = AttemptOutcome::ClientLeft;
                attempts.push(end(
                    call,
                    step.target,
                    started,
                    None,
                    left,
                    Health::Neutral,
                    tracked,
                ));
                conn.note_error(relay::CLIENT_LEFT);
                return Outcome::CLOSE;
            }
            // Borrowed, not moved: an answer is a few hundred bytes, and
            // each move into a future is a copy.
            Some(Ok(ref mut answer)) => {
                let head_at = Some(Instant::now());
                answer.alias_line = step.route.alias_line.as_slice();
                match relay::deliver(conn, answer).await {
                    Ok(outcome) => {
                        let ok = AttemptOutcome::Answered;
                        attempts.push(end(
                            call,
                            step.target,
                            started,
                            head_at,
                            ok,
                            Health::Answered,
                            tracked,
                        ));
                        return outcome;
                    }
                    Err(failure) => {
                        // The answer's head came: the target is up,
                        // whatever became of the answer.
                        let health = if failure.kind.unhealthy() {
                            failure.health()
                        } else {
                            Health::Answered
                        };
                        let outcome = AttemptOutcome::Failed(failure.error.label());
                        attempts.push(end(
                            call,
                            step.target,
                            started,
                            head_at,
                            outcome,
                            health,
                            tracked,
                        ));
                        failure
                    }
                }
            }
            Some(Err(failure)) => {
                let outcome = AttemptOutcome::Failed(failure.error.label());
                // A timeout the request's own deadline caused says nothing
                // of the target.
                let deadline_hit = cut_by_deadline || deadline.is_some_and(|d| Instant::now() >= d);
                let health = if deadline_hit && failure.kind == FailureKind::Timeout {
                    Health::Neutral
                } else {
                    failure.health()
                };
                attempts.push(end(
                    call,
                    step.target,
                    started,
                    None,
                    outcome,
                    health,
                    tracked,
                ));
                failure
            }
        };
        learn(&plan, &mut tried, &mut window_over, i, &failure);
        let moves = failure.kind.moves_on(&retry.on);
        if moves && made < budget {
            log::info!(
                "{}: target {} failed ({}), moving on",
                call.rid,
                plan[i].target.served_by,
                failure.error.label()
            );
        }
        last = Some(failure);
        if !moves {
            break;
        }
    }
    let Some(failure) = last else {
        let e = GatewayError::ModelNotFound(call.facts.model.clone());
        return send_error(conn, call.client, &e, call.rid, &call.headers, false).await;
    };
    let err = failure.error;
    log::info!("{}: {}: {}", call.rid, err.label(), err);
    // The error says how many attempts it took, as an answer would.
    let mut headers = call.headers.clone();
    headers.push(("x-shardgate-attempts", made.to_string()));
    if let Some(retry_after) = err.retry_after() {
        headers.push(("retry-after", retry_after.as_str().to_owned()));
    }
    send_error(conn, call.client, &err, call.rid, &headers, false).await
}

/// What a failure at plan entry `i` teaches the rest of the call: a
/// context-length failure rules out windows no larger than its target's,
/// and a wait the target asked for holds until it is over.
fn learn(
    plan: &[Step<'_>],
    tried: &mut [Tried],
    window_over: &mut Option<u64>,
    i: usize,
    failure: &Failure,
) {
    if failure.kind == FailureKind::ContextLength {
        let w = plan[i].target.context_window.unwrap_or(0);
        *window_over = Some(window_over.map_or(w, |o| o.max(w)));
    }
    if let Some(w) = failure.wait {
        tried[i].not_before = Some(Instant::now() + w);
    }
}

/// Whether `t` may serve after a context-length failure on a window of
/// `window_over` tokens (any, when there was none).
fn fits(t: &Target, window_over: Option<u64>) -> bool {
    window_over.is_none_or(|w| t.context_window.is_some_and(|c| c > w))
}

/// The next plan entry to try and how long to wait first: a target not yet
/// tried, in plan order, at once; else the one already tried that may go
/// soonest (its backoff, or its own `Retry-After`), if that is within the
/// deadline. `None`: nothing may serve.
fn choose(
    call: &Call<'_>,
    plan: &[Step<'_>],
    tried: &[Tried],
    window_over: Option<u64>,
    retry: &RetryPolicy,
    deadline: Option<Instant>,
    tracked: bool,
) -> Option<(usize, Duration)> {
    if let Some(i) =
        (0..plan.len()).find(|&i| tried[i].times == 0 && fits(plan[i].target, window_over))
    {
        return Some((i, Duration::ZERO));
    }
    let now = Instant::now();
    let balancer = &call.shard.balancer;
    let mut best: Option<(usize, Duration)> = None;
    for (i, step) in plan.iter().enumerate() {
        if !fits(step.target, window_over) || (tracked && balancer.avoided(step.target, now)) {
            continue;
        }
        let asked = tried[i]
            .not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
        let wait = backoff(retry, tried[i].times, balancer.random()).max(asked);
        let in_time = match deadline {
            Some(d) => now + wait < d,
            None => wait <= MAX_WAIT_WITHOUT_DEADLINE,
        };
        if in_time && best.is_none_or(|(_, b)| wait < b) {
            best = Some((i, wait));
        }
    }
    best
}

/// The wait before trying a target for the `times + 1`-th time: `backoff`
/// doubling per earlier retry up to `max_backoff`, then a draw between half
/// of it and all of it (so that callers failed together do not come back
/// together).
pub fn backoff(retry: &RetryPolicy, times: u32, random: u64) -> Duration {
    let doublings = times.saturating_sub(1).min(20);
    let full = retry
        .backoff
        .saturating_mul(1 << doublings)
        .min(retry.max_backoff);
    let half = full / 2;
    let spread = (full - half).as_nanos() as u64;
    half + Duration::from_nanos(if spread == 0 {
        0
    } else {
        random % (spread + 1)
    })
}

/// Whether this call may be hedged: requests that offer tools only when
/// the route allows it (a tool call could start twice upstream).
fn hedge_allowed(call: &Call<'_>, hedge: &Hedge) -> bool {
    hedge.with_tools || call.facts.tool_names.is_empty()
}

/// The hedge's threshold: fixed, or the route's observed p95.
fn hedge_after(call: &Call<'_>, alias: &str, hedge: &Hedge) -> Duration {
    match hedge.after {
        HedgeAfter::Fixed(d) => d,
        HedgeAfter::P95 { initial } => call.shard.balancer.ttft_p95(alias).unwrap_or(initial),
    }
}

/// `attempt`, cut at the request's deadline `d`: a connect or
/// a write still under way when it passes ends the attempt as a timeout,
/// so the total is a hard limit (the per-step waits are each cut to what
/// is left, but they run one after another).
async fn within<'c>(
    d: Instant,
    provider: &str,
    attempt: impl std::future::Future<Output = Result<Answer<'c>, Failure>>,
) -> Result<Answer<'c>, Failure> {
    or(attempt, async {
        glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await;
        Err(Failure::classify(GatewayError::UpstreamTimeout {
            provider: provider.to_owned(),
        }))
    })
    .await
}

/// The waits of an attempt at `step` starting now.
fn waits(step: Step<'_>, deadline: Option<Instant>) -> Waits {
    let t = &step.route.timeouts;
    let first_token = match deadline {
        Some(d) => t
            .first_token
            .min(d.saturating_duration_since(Instant::now())),
        None => t.first_token,
    };
    Waits {
        connect: t.connect.min(first_token),
        first_token,
        idle: t.idle,
    }
}

/// What a hedged first attempt came to.
struct HedgedHead<'c> {
    /// The attempt whose head came first (or the last to fail): its plan
    /// entry, its start, its head (`None`: the client left).
    head: (usize, Instant, Option<Result<Answer<'c>, Failure>>),
    /// A second attempt was sent.
    hedged: bool,
    /// How long the first attempt took to its head, or ran before it was
    /// cancelled (for the route's p95).
    first_took: Option<Duration>,
    /// The other attempt's failure, when it failed first (recorded here;
    /// what it teaches is for the caller).
    lost: Option<(usize, Failure)>,
}

/// Ends an attempt: the balancer hears of it, and its record is made.
fn end<'a>(
    call: &Call<'_>,
    target: &'a Target,
    started: Instant,
    head_at: Option<Instant>,
    outcome: AttemptOutcome,
    health: Health,
    tracked: bool,
) -> AttemptRecord<'a> {
    let ended = Instant::now();
    if tracked {
        let breaker = &call.shard.pool.settings().breaker;
        let head = head_at.map(|h| h.saturating_duration_since(started));
        let opened = call
            .shard
            .balancer
            .ended(target, head, health, ended, breaker);
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
}

/// How the first attempt of a hedged round stood when the hedge was due.
enum Alone<T> {
    Done(T),
    HedgeDue,
    ClientLeft,
}

/// What one of the two hedged attempts came to.
enum Race<T> {
    First(T),
    Second(T),
    ClientLeft,
}

/// The attempt at `a`; when it has no head within `after`, the same request
/// at `b` too: the first head wins and the other attempt is dropped, which
/// closes its upstream connection. A failure waits for the other attempt.
/// Both are charged: the loser with its prompt, which the upstream may have
/// read. The attempts that do not end the round are recorded here.
#[allow(clippy::too_many_arguments)]
async fn hedged<'a, 'c>(
    call: &'c Call<'c>,
    conn: &mut ClientConn,
    (sa, ia, pa): (Step<'a>, usize, &'c Provider),
    (sb, ib, pb): (Step<'a>, usize, &'c Provider),
    after: Duration,
    deadline: Option<Instant>,
    tracked: bool,
    attempts: &mut Attempts<'a>,
) -> HedgedHead<'c>
where
    'a: 'c,
{
    let started_a = Instant::now();
    let mut out = HedgedHead {
        head: (ia, started_a, None),
        hedged: false,
        first_took: None,
        lost: None,
    };
    let balancer = &call.shard.balancer;
    if tracked {
        balancer.started(sa.target, started_a);
    }
    let mut fa = pin!(attempt::send_until_head(
        call,
        sa.target,
        pa,
        waits(sa, deadline)
    ));
    let alone = or(
        async { Alone::Done(fa.as_mut().await) },
        or(
            async {
                glommio::timer::sleep(after).await;
                Alone::HedgeDue
            },
            async {
                conn.closed().await;
                Alone::ClientLeft
            },
        ),
    );
    match alone.await {
        Alone::Done(result) => {
            if result.is_ok() {
                out.first_took = Some(started_a.elapsed());
            }
            out.head.2 = Some(result);
            return out;
        }
        Alone::ClientLeft => return out,
        Alone::HedgeDue => {}
    }
    out.hedged = true;
    let started_b = Instant::now();
    if tracked {
        balancer.started(sb.target, started_b);
    }
    log::debug!(
        "{}: no head from {} after {after:?}: hedging to {}",
        call.rid,
        sa.target.served_by,
        sb.target.served_by
    );
    let mut fb = pin!(attempt::send_until_head(
        call,
        sb.target,
        pb,
        waits(sb, deadline)
    ));
    let race = or(
        async { Race::First(fa.as_mut().await) },
        or(async { Race::Second(fb.as_mut().await) }, async {
            conn.closed().await;
            Race::ClientLeft
        }),
    )
    .await;
    let cancelled = |step: Step<'a>, started| {
        let outcome = AttemptOutcome::Cancelled;
        let mut r = end(
            call,
            step.target,
            started,
            None,
            outcome,
            Health::Neutral,
            tracked,
        );
        r.metered = Some(Metered {
            usage: Some(shardgate_proto::openai::Usage {
                prompt_tokens: Some(call.prompt_estimate),
                completion_tokens: Some(0),
                total_tokens: Some(call.prompt_estimate),
                ..Default::default()
            }),
            estimated: true,
            drained: false,
        });
        r
    };
    let failed = |step: Step<'a>, started, failure: &Failure| {
        let outcome = AttemptOutcome::Failed(failure.error.label());
        end(
            call,
            step.target,
            started,
            None,
            outcome,
            failure.health(),
            tracked,
        )
    };
    // The first attempt ran at least this long: when the hedge wins, a
    // bound from below keeps the tail it cut off in the route's figure.
    out.first_took = Some(started_a.elapsed());
    match race {
        Race::ClientLeft => {
            let left = AttemptOutcome::ClientLeft;
            attempts.push(end(
                call,
                sb.target,
                started_b,
                None,
                left,
                Health::Neutral,
                tracked,
            ));
            out.first_took = None;
        }
        Race::First(Ok(answer)) => {
            attempts.push(cancelled(sb, started_b));
            out.head.2 = Some(Ok(answer));
        }
        Race::Second(Ok(answer)) => {
            attempts.push(cancelled(sa, started_a));
            out.head = (ib, started_b, Some(Ok(answer)));
        }
        Race::First(Err(failure)) => {
            attempts.push(failed(sa, started_a, &failure));
            out.first_took = None;
            out.lost = Some((ia, failure));
            let rest = or(async { Some(fb.as_mut().await) }, async {
                conn.closed().await;
                None
            });
            out.head = (ib, started_b, rest.await);
        }
        Race::Second(Err(failure)) => {
            attempts.push(failed(sb, started_b, &failure));
            out.lost = Some((ib, failure));
            let rest = or(async { Some(fa.as_mut().await) }, async {
                conn.closed().await;
                None
            });
            let head = rest.await;
            out.first_took = matches!(head, Some(Ok(_))).then(|| started_a.elapsed());
            out.head.2 = head;
        }
    }
    out
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
) -> SmallVec<[Step<'a>; 4]> {
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
        if route.strategy == Strategy::Priority {
            plan.extend(route.targets.iter().map(|target| Step { route, target }));
        } else {
            for i in shard.balancer.order(route, price) {
                plan.push(Step {
                    route,
                    target: &route.targets[i],
                });
            }
        }
    };
    add(model);
    if model.fallback.is_empty() {
        return healthy_first(&shard.balancer, plan);
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
    healthy_first(&shard.balancer, plan)
}

/// Targets whose circuit is open (or half-open with its probe out) go
/// last: tried only once nothing healthy is left.
fn healthy_first<'a>(
    b: &super::balance::Balancer,
    plan: SmallVec<[Step<'a>; 4]>,
) -> SmallVec<[Step<'a>; 4]> {
    if !b.any_not_closed() {
        return plan;
    }
    let now = Instant::now();
    let (mut ok, avoided): (SmallVec<[_; 4]>, SmallVec<[_; 4]>) =
        plan.into_iter().partition(|s| !b.avoided(s.target, now));
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
        let kind = |e| Failure::classify(e).kind;
        let timeout = GatewayError::UpstreamTimeout {
            provider: "p".into(),
        };
        assert_eq!(kind(timeout), FailureKind::Timeout);
        assert_eq!(kind(status(500, None)), FailureKind::ServerError);
        assert_eq!(kind(status(429, None)), FailureKind::RateLimited);
        assert!(FailureKind::ServerError.unhealthy() && !FailureKind::RateLimited.unhealthy());
        let f = Failure::classify(status(429, Some("2")));
        assert_eq!(f.wait, Some(Duration::from_secs(2)));
        let f = Failure::classify(status(503, Some("1")));
        assert_eq!(
            (f.kind, f.wait),
            (FailureKind::ServerError, Some(Duration::from_secs(1)))
        );
        // Only delta-seconds become a delay; headers may say more.
        let f = Failure::classify(status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")));
        assert_eq!(f.wait, None);
        let f = f.asked_to_wait(Some(Duration::from_millis(300)));
        assert_eq!(f.wait, Some(Duration::from_millis(300)));
        // A century is not believed: it would keep a circuit open for good.
        let f = Failure::classify(status(503, Some("9999999999")));
        assert_eq!(f.wait, None);
        let ctx = GatewayError::UpstreamStatus {
            provider: "p".into(),
            status: 400,
            body: br#"{"error":{"message":"This model's maximum context length is 10 tokens.","code":"context_length_exceeded"}}"#.to_vec(),
            retry_after: None,
        };
        assert_eq!(kind(ctx), FailureKind::ContextLength);
        let all = MoveOn::default();
        for refused in [
            status(400, None),
            status(404, None),
            GatewayError::Unauthorized,
        ] {
            assert!(!Failure::classify(refused).kind.moves_on(&all));
        }
        let only_connect = MoveOn {
            connect: true,
            timeout: false,
            rate_limited: false,
            server_error: false,
            context_length: false,
        };
        assert!(!FailureKind::ServerError.moves_on(&only_connect));
        assert!(FailureKind::Connect.moves_on(&only_connect));
        assert!(FailureKind::Unusable.moves_on(&only_connect));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_ceiling() {
        let retry = RetryPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        let ms = Duration::from_millis;
        for (times, lo, hi) in [
            (1, 50, 100),
            (2, 100, 200),
            (3, 200, 400),
            (5, 500, 1000),
            (30, 500, 1000),
        ] {
            let mut seen = (Duration::MAX, Duration::ZERO);
            for r in 0..2000u64 {
                let d = backoff(&retry, times, r.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                assert!(d >= ms(lo) && d <= ms(hi), "{times}: {d:?}");
                seen = (seen.0.min(d), seen.1.max(d));
            }
            // The jitter spreads over the range.
            assert!(seen.1 - seen.0 > ms(hi - lo) / 2, "{times}: {seen:?}");
        }
    }

    #[test]
    fn after_a_context_length_error_only_larger_windows_fit() {
        let t = |w: Option<u64>| Target {
            provider: 0,
            model: "m".into(),
            served_by: "p/m".into(),
            model_json: Vec::new(),
            weight: 1,
            context_window: w,
            head_lines: Vec::new(),
        };
        assert!(fits(&t(None), None));
        assert!(!fits(&t(None), Some(0)));
        assert!(fits(&t(Some(9000)), Some(8000)));
        assert!(!fits(&t(Some(8000)), Some(8000)));
    }

    #[test]
    fn no_strategy_tries_an_open_target_while_a_healthy_one_exists() {
        use super::super::balance::Balancer;
        use crate::config::route::{RetryPolicy, RouteTimeouts};
        let secs = Duration::from_secs;
        let targets: Vec<Target> = (0..4)
            .map(|i| Target {
                provider: i,
                model: format!("m{i}"),
                served_by: format!("p/m{i}"),
                model_json: Vec::new(),
                weight: 1 + i as u32,
                context_window: None,
                head_lines: Vec::new(),
            })
            .collect();
        let now = Instant::now();
        for strategy in [
            Strategy::Priority,
            Strategy::Weighted,
            Strategy::LeastInflight,
            Strategy::LowestLatency,
            Strategy::Cheapest,
        ] {
            let route = ModelRoute {
                targets: targets.clone(),
                strategy,
                fallback: Vec::new(),
                alias_line: Vec::new(),
                retry: RetryPolicy::default(),
                timeouts: RouteTimeouts {
                    connect: secs(1),
                    first_token: secs(1),
                    idle: secs(1),
                    total: None,
                },
                hedge: None,
                cache: None,
            };
            // Every subset of open circuits but the one where all are open.
            for open in 0u32..15 {
                let b = Balancer::new(u64::from(open) + 1);
                for (i, t) in targets.iter().enumerate() {
                    if open & (1 << i) != 0 {
                        b.open_from_peer(&t.served_by, now + secs(60));
                    }
                }
                for _ in 0..50 {
                    let plan: SmallVec<[Step<'_>; 4]> = b
                        .order(&route, |t| t.provider as u64)
                        .into_iter()
                        .map(|i| Step {
                            route: &route,
                            target: &route.targets[i],
                        })
                        .collect();
                    let plan = healthy_first(&b, plan);
                    assert_eq!(plan.len(), 4);
                    assert!(!b.avoided(plan[0].target, now), "{strategy:?} {open:04b}");
                    // Every healthy one before every open one.
                    let healthy = plan
                        .iter()
                        .take_while(|s| !b.avoided(s.target, now))
                        .count();
                    assert_eq!(healthy, 4 - open.count_ones() as usize);
                }
            }
        }
    }
}
