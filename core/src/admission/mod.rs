//! Admission: who is calling, may they, and how much is left. Runs before a
//! request is routed and again (settlement) after its answer.
//!
//! Per shard, nothing shared: a snapshot of the key table, the compiled
//! policies, and one ledger slot per budget bucket. A bucket's counters live
//! on its owner shard (`owner_shard(scope_key)`), which admits its own
//! requests directly; other shards admit from a lease of the owner's quota
//! and talk to it only over the [`mesh`] when the lease runs low. The
//! overshoot bound that gives is documented (and tested) in
//! `shardgate_policy::lease`: zero for requests and reserved tokens.

mod prompt;

/// Every prompt string of a request body (for token counts).
pub use prompt::texts as prompt_texts;

use crate::cluster::{ClusterLink, FromNode, ToNode};
use crate::config::cluster::OnUnavailable;
use crate::config::{AuthMode, Config};
use crate::mesh::{Mesh, QuotaMsg, ShardMsg};
use crate::server::Request;
use crate::store::{UsageRecord, UsageSender, UsageState, UsageTotals};
use rustc_hash::{FxHashMap, FxHashSet};
use shardgate_policy::{
    decide, estimate_prompt_tokens, owner_shard, parse_credential, Actor, ActorFields, Counters,
    Decision, DenyReason, KeyStore, LeaseManager, LimitKind, Limits, LocalQuota, PolicySet, Price,
    PricingTable, Quota, RateLimitHeaders, RequestFacts, Reservation, Resolved, Settlement, Take,
    Timestamp, ToOwner,
};
use shardgate_proto::openai::Usage;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// How long a request waits for a lease refill from the owner before it is
/// refused. Refills are one message round trip between cores (microseconds)
/// unless the owner is saturated.
const GRANT_WAIT: Duration = Duration::from_millis(50);
/// The longest a quota wait sleeps without looking again.
const GRANT_RECHECK: Duration = Duration::from_millis(5);

/// The key id usage is recorded under when auth is off.
pub const ANONYMOUS: &str = "anonymous";

/// A request that may go on: what settlement needs afterwards, and the
/// headers every response to it carries.
#[derive(Debug)]
pub struct Ticket {
    /// Who is calling; `None` when admission is open (no keys, no
    /// policies). With `auth: none` and policies, the anonymous actor.
    pub actor: Option<Actor>,
    /// The model alias to serve when the policy substituted its fallback.
    /// A `Box<str>`: a ticket moves a few times per request, and a `String`
    /// would take it past 256 bytes, where each move copies in a loop.
    pub fallback: Option<Box<str>>,
    /// `x-ratelimit-*` headers as they stood after admission.
    pub headers: Vec<(&'static str, String)>,
    /// Some policy of the caller's restricts tools: the answer's tool
    /// calls are checked.
    pub tool_rules: bool,
    /// Some policy of the caller's attaches guardrails.
    pub guardrails: bool,
    /// The caller's policies' word on the response cache.
    pub cache: crate::cache::CallerCache,
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    reservation: Reservation,
    /// Scope key and limits of each bucket the reservation was taken from.
    buckets: Vec<(Rc<str>, Limits)>,
}

impl Ticket {
    fn open() -> Self {
        Ticket {
            actor: None,
            fallback: None,
            headers: Vec::new(),
            tool_rules: false,
            guardrails: false,
            cache: crate::cache::CallerCache::Silent,
            held: None,
        }
    }

    /// Tokens reserved for the prompt (0 when no token limit applies).
    pub fn prompt_estimate(&self) -> u64 {
        self.held
            .as_ref()
            .map_or(0, |h| h.reservation.prompt_tokens)
    }
}

/// Why a limited request got no quota from the cluster store.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum QuotaUnavailable {
    #[error("The shared quota store is unavailable, and this gateway refuses limited requests until it is back (cluster.on_unavailable: deny). Retry shortly.")]
    StoreDown,
    #[error("The shared quota store did not answer within {0} ms. Retry shortly.")]
    StoreLate(u64),
}

/// Why a request may not go on.
#[derive(Debug)]
pub enum Refusal {
    /// Missing, unknown, revoked or expired key: all look the same.
    Unauthorized,
    Denied {
        reason: DenyReason,
        headers: Vec<(&'static str, String)>,
        /// Who was refused, for the request's record.
        actor: Box<Actor>,
    },
    /// The cluster store could not be asked (503).
    Unavailable {
        why: QuotaUnavailable,
        actor: Box<Actor>,
    },
}

/// Why one bucket could not be taken from.
enum TakeError {
    Denied(DenyReason),
    Unavailable(QuotaUnavailable),
}

/// One bucket's ledger on this shard.
enum Slot {
    Owned(LeaseManager),
    /// The owner with a cluster store: the limit is the store's, and this
    /// shard runs on a node lease from it.
    Clustered(Box<NodeSlot>, Limits),
    /// With the bucket's limits, which travel with messages to the owner.
    Leased(LocalQuota, Limits),
}

/// Where admission persists what it counts: per-request usage to the store
/// writer, and the windows recovered at start.
pub struct Persist {
    pub tx: UsageSender,
    pub restored: Arc<UsageState>,
}

/// An owner's node lease and how fast the node uses it.
struct NodeSlot {
    lm: LeaseManager<LocalQuota>,
    /// The store refused the last `Want` (down, under `deny`).
    refused: bool,
    /// Requests admitted from the node lease in the current second, and
    /// in the last whole one: node leases are sized to that rate.
    second: u64,
    this_second: u64,
    last_second: u64,
    /// Usage beyond reservations and spend settled here, not yet sent to
    /// the store: summed per request, sent with the shard's usage flush.
    pending: (u64, u64),
}

impl NodeSlot {
    /// Moves the usage reports among `out[from..]` into `pending`: they
    /// wait for the next flush, summed.
    fn hold_usage(&mut self, out: &mut Vec<ToOwner>, from: usize) {
        let mut i = from;
        while i < out.len() {
            if let ToOwner::Usage {
                extra_tokens,
                spend_micros,
                ..
            } = out[i]
            {
                self.pending.0 = self.pending.0.saturating_add(extra_tokens);
                self.pending.1 = self.pending.1.saturating_add(spend_micros);
                out.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn count(&mut self, now: Timestamp) {
        let s = now.0 / 1000;
        if s != self.second {
            self.last_second = if s == self.second + 1 {
                self.this_second
            } else {
                0
            };
            (self.second, self.this_second) = (s, 0);
        }
        self.this_second += 1;
    }

    /// A lease of a quarter more than one lease period's requests at the
    /// last second's rate, within the cap (and at least the cap's 1/64,
    /// so a burst after quiet needs few calls).
    fn resize(&mut self, limits: &Limits, live_nodes: u64, ttl_ms: u64) {
        let cap = crate::cluster::lease_cap(limits, live_nodes);
        let rate = self.last_second.max(self.this_second);
        let want = (rate.saturating_mul(ttl_ms) / 1000).saturating_mul(5) / 4;
        let requests = want.clamp((cap.requests / 64).max(1), cap.requests);
        // Tokens in the same share of their cap as requests, so neither
        // runs out long before the other; at least a 64th of the cap (a
        // bucket with no request limit, or far more requests than tokens).
        let share = u128::from(cap.tokens) * u128::from(requests) / u128::from(cap.requests.max(1));
        let tokens = u64::try_from(share)
            .unwrap_or(u64::MAX)
            .max(cap.tokens / 64)
            .clamp(1, cap.tokens.max(1));
        let refill = Quota { requests, tokens };
        let low = Quota {
            requests: requests / 4,
            tokens: tokens / 4,
        };
        self.lm.node_mut().set_refill(refill, low);
    }
}

pub struct Admission {
    persist: Persist,
    /// Rung when there is something to persist or return, so the shard's
    /// persist task sleeps while the shard is idle.
    activity: Activity,
    /// Rung when a grant or a word from the cluster store arrives: requests
    /// waiting for quota sleep on it (and their deadline), not on a timer.
    grants: Bell,
    /// Owned buckets whose counters changed since they were last persisted.
    /// This map and the two below hash with Fx, not SipHash: they are
    /// looked up several times for every admitted request, and their keys
    /// come from key records and policies, never from a client's bytes.
    dirty: RefCell<FxHashSet<String>>,
    /// Usage settled per key since the last [`Admission::persist_usage`].
    pending: RefCell<FxHashMap<String, UsageTotals>>,
    /// These three change with a config reload (the next request uses
    /// them); ledgers, keys and pending usage carry over.
    mode: Cell<AuthMode>,
    policies: RefCell<Rc<PolicySet>>,
    pricing: RefCell<PricingTable>,
    /// The last model priced and its price (at first `""`, as settling an
    /// unanswered call names): a shard serves the same few models over and
    /// over, and a table lookup compares names against every listed model.
    last_price: RefCell<(String, Price)>,
    keys: RefCell<Rc<KeyStore>>,
    /// Keyed by scope key; the same `Rc` is held by tickets in flight, so
    /// admitting a request allocates no key.
    slots: RefCell<FxHashMap<Rc<str>, Slot>>,
    mesh: RefCell<Option<Rc<Mesh>>>,
    /// Scratch for messages produced by the policy state machines.
    outbox: RefCell<Vec<ToOwner>>,
    /// The same, for the cluster store (from owners' node leases).
    node_outbox: RefCell<Vec<ToOwner>>,
    /// The node thread, when a cluster is configured.
    cluster: RefCell<Option<ClusterLink>>,
    /// The store was reachable at the node thread's last word.
    cluster_up: Cell<bool>,
    live_nodes: Cell<u64>,
    /// The actor of every request when auth is off (policies without
    /// keys), made once.
    anonymous: Actor,
}

pub fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

impl Admission {
    /// `policies` are compiled once for all shards before they start, so a
    /// policy that does not compile stops the start instead of leaving a
    /// shard without policies (open to everyone).
    pub fn new(config: &Config, policies: PolicySet, keys: Rc<KeyStore>, persist: Persist) -> Self {
        let pricing = PricingTable::new(&config.pricing);
        Admission {
            persist,
            activity: Activity::default(),
            grants: Bell::default(),
            dirty: RefCell::new(FxHashSet::default()),
            pending: RefCell::new(FxHashMap::default()),
            mode: Cell::new(config.auth),
            policies: RefCell::new(Rc::new(policies)),
            last_price: RefCell::new((String::new(), pricing.price(""))),
            pricing: RefCell::new(pricing),
            keys: RefCell::new(keys),
            slots: RefCell::new(FxHashMap::default()),
            mesh: RefCell::new(None),
            outbox: RefCell::new(Vec::new()),
            node_outbox: RefCell::new(Vec::new()),
            cluster: RefCell::new(None),
            cluster_up: Cell::new(true),
            live_nodes: Cell::new(1),
            anonymous: Actor::new(ActorFields {
                key_id: ANONYMOUS.to_owned(),
                ..ActorFields::default()
            }),
        }
    }

    /// The node thread's link, when a cluster is configured.
    pub fn cluster_link(&self) -> Option<ClusterLink> {
        self.cluster.borrow().clone()
    }

    /// Limits from now on come from the cluster store through `link`.
    pub fn set_cluster(&self, link: ClusterLink) {
        *self.cluster.borrow_mut() = Some(link);
    }

    /// True when admission has nothing to do: no keys, no policies.
    pub fn is_open(&self) -> bool {
        self.mode.get() == AuthMode::None && self.policies.borrow().policies().is_empty()
    }

    pub fn set_mesh(&self, mesh: Rc<Mesh>) {
        *self.mesh.borrow_mut() = Some(mesh);
    }

    pub fn replace_keys(&self, keys: Rc<KeyStore>) {
        *self.keys.borrow_mut() = keys;
    }

    /// A reloaded config's auth mode, policies and pricing. Buckets keep
    /// their counters: a scope still limited counts on from where it was.
    pub fn reload(&self, config: &Config, policies: PolicySet) {
        self.mode.set(config.auth);
        *self.policies.borrow_mut() = Rc::new(policies);
        let pricing = PricingTable::new(&config.pricing);
        *self.last_price.borrow_mut() = (String::new(), pricing.price(""));
        *self.pricing.borrow_mut() = pricing;
    }

    /// `model`'s price, through the one-entry memo.
    /// A request's expected cost at `model`, micro-dollars (for the
    /// `cheapest` routing strategy).
    pub fn estimate_micros(&self, model: &str, prompt: u64, output: u64) -> u64 {
        self.price(model).estimate_micros(prompt, output)
    }

    fn price(&self, model: &str) -> Price {
        let mut last = self.last_price.borrow_mut();
        if last.0 != model {
            last.0.clear();
            last.0.push_str(model);
            last.1 = self.pricing.borrow().price(model);
        }
        last.1
    }

    fn me_and_peers(&self) -> (usize, usize) {
        self.mesh
            .borrow()
            .as_ref()
            .map_or((0, 1), |m| (m.me(), m.shards()))
    }

    fn actor(&self, req: &Request, now: Timestamp) -> Result<Actor, Refusal> {
        match self.mode.get() {
            AuthMode::None => Ok(self.anonymous.clone()),
            AuthMode::Keys => {
                let presented =
                    parse_credential(req.header("authorization"), req.header("x-api-key"))
                        .map_err(|_| Refusal::Unauthorized)?;
                self.keys
                    .borrow()
                    .authenticate(presented, now)
                    .map_err(|_| Refusal::Unauthorized)
            }
        }
    }

    /// The aliases (of `all`) the caller may use: every one when admission
    /// is open, else those every applicable policy allows.
    pub fn visible_models<'m>(
        &self,
        req: &Request<'_>,
        all: impl Iterator<Item = &'m str>,
    ) -> Result<Vec<&'m str>, Refusal> {
        if self.is_open() {
            return Ok(all.collect());
        }
        let actor = self.actor(req, now())?;
        let policies = self.policies.borrow().clone();
        let resolved = policies.resolve(&actor);
        Ok(all.filter(|m| resolved.model_allowed(m)).collect())
    }

    /// Decides a request for model alias `model`. `tokenizer_model` names
    /// the upstream model whose tokenizer estimates the prompt.
    pub async fn admit(
        &self,
        req: &Request<'_>,
        model: &str,
        tokenizer_model: impl Fn(&str) -> String,
        max_output_tokens: Option<u64>,
        tool_names: &[String],
    ) -> Result<Ticket, Refusal> {
        if self.is_open() {
            return Ok(Ticket::open());
        }
        let now = now();
        let actor = self.actor(req, now)?;
        let policies = self.policies.borrow().clone();
        let resolved = policies.resolve(&actor);
        let prompt_tokens = if resolved.needs_token_estimate() {
            let texts = prompt::texts(&req.body);
            let chosen = resolved
                .choose_model(model)
                .map_or(model.to_owned(), |(m, _)| m.to_owned());
            estimate_prompt_tokens(&tokenizer_model(&chosen), texts.iter().map(String::as_str))
        } else {
            0
        };
        let tools: Vec<&str> = tool_names.iter().map(String::as_str).collect();
        let facts = RequestFacts {
            model,
            estimated_prompt_tokens: prompt_tokens,
            max_output_tokens,
            tool_names: &tools,
        };
        let views = self.views(&resolved, now);
        let (fallback, reservation) = match decide(&resolved, &facts, &views, now) {
            Decision::Deny(reason) => {
                let headers = RateLimitHeaders::compute(&resolved, &views, now).pairs();
                return Err(Refusal::Denied {
                    reason,
                    headers,
                    actor: Box::new(actor),
                });
            }
            Decision::Allow {
                model: chosen,
                fell_back,
                reservation,
            } => (fell_back.then(|| chosen.to_owned()), reservation),
        };
        self.hold(&resolved, reservation, actor, fallback, now)
            .await
    }

    /// Takes `reservation` from every bucket of `resolved` (all or none).
    async fn hold(
        &self,
        resolved: &Resolved<'_>,
        reservation: Reservation,
        actor: Actor,
        fallback: Option<String>,
        now: Timestamp,
    ) -> Result<Ticket, Refusal> {
        let buckets: Vec<(Rc<str>, Limits)> = resolved
            .buckets()
            .iter()
            .map(|b| (self.bucket_key(b.scope_key, b.limits, now), b.limits))
            .collect();
        let mut taken: Vec<usize> = Vec::with_capacity(buckets.len());
        for (i, (key, limits)) in buckets.iter().enumerate() {
            if let Err(err) = self.take(key, *limits, &reservation, now).await {
                for &j in &taken {
                    let (k, _) = &buckets[j];
                    self.give_back(k, &reservation);
                }
                let reason = match err {
                    TakeError::Denied(reason) => reason,
                    TakeError::Unavailable(why) => {
                        return Err(Refusal::Unavailable {
                            why,
                            actor: Box::new(actor),
                        })
                    }
                };
                let views = self.views(resolved, now);
                let headers = RateLimitHeaders::compute(resolved, &views, now).pairs();
                return Err(Refusal::Denied {
                    reason,
                    headers,
                    actor: Box::new(actor),
                });
            }
            taken.push(i);
        }
        let views = self.views(resolved, now);
        let headers = RateLimitHeaders::compute(resolved, &views, now).pairs();
        Ok(Ticket {
            tool_rules: resolved.has_tool_rules(),
            guardrails: resolved.has_guardrails(),
            cache: crate::cache::CallerCache::of(resolved.cache()),
            actor: Some(actor),
            fallback: fallback.map(String::into_boxed_str),
            headers,
            held: (!buckets.is_empty()).then_some(Held {
                reservation,
                buckets,
            }),
        })
    }

    /// Whether the request presents a well-formed key this shard does not
    /// know: one made a moment ago, which the keys watcher has not
    /// delivered yet (worth a re-read of the key log before a 401).
    pub fn presents_unknown_key(&self, req: &Request<'_>) -> bool {
        if self.mode.get() != AuthMode::Keys {
            return false;
        }
        match parse_credential(req.header("authorization"), req.header("x-api-key")) {
            Ok(k) if shardgate_policy::is_well_formed(k) => !self
                .keys
                .borrow()
                .contains(&k[..shardgate_policy::KEY_ID_LEN]),
            _ => false,
        }
    }

    /// Who is calling, for requests that are not model calls; `None` when
    /// admission is open (no keys and no policies).
    pub fn identify(&self, req: &Request<'_>) -> Result<Option<Actor>, Refusal> {
        if self.is_open() {
            return Ok(None);
        }
        self.actor(req, now()).map(Some)
    }

    /// The policies current on this shard.
    pub fn policy_set(&self) -> Rc<PolicySet> {
        self.policies.borrow().clone()
    }

    /// Admits one tool call by `actor`: a request from every bucket of its
    /// policies (tool calls count against `requests_per_minute`; they use
    /// no tokens). Settle it with [`Admission::settle_all`] and no
    /// attempts.
    pub async fn admit_tool_call(&self, actor: Option<&Actor>) -> Result<Ticket, Refusal> {
        let Some(actor) = actor else {
            return Ok(Ticket::open());
        };
        let now = now();
        let policies = self.policies.borrow().clone();
        let resolved = policies.resolve(actor);
        self.hold(
            &resolved,
            Reservation::new(0, 0, now),
            actor.clone(),
            None,
            now,
        )
        .await
    }

    /// Counters as this shard sees each bucket: the owner's own; elsewhere
    /// the lease's view ([`LocalQuota::view`]: unknown, so unused, while no
    /// lease of the current window is held).
    fn views(&self, resolved: &Resolved<'_>, now: Timestamp) -> Vec<Counters> {
        let slots = self.slots.borrow();
        resolved
            .buckets()
            .iter()
            .map(|b| match slots.get(b.scope_key) {
                Some(Slot::Owned(lm)) => *lm.counters(),
                Some(Slot::Clustered(n, _)) => n.lm.cluster_view(&b.limits, now),
                Some(Slot::Leased(lq, _)) => lq.view(&b.limits, now),
                None => Counters::new(now),
            })
            .collect()
    }

    /// The shared key of a bucket's slot, opening the slot on first use.
    fn bucket_key(&self, key: &str, limits: Limits, now: Timestamp) -> Rc<str> {
        let mut slots = self.slots.borrow_mut();
        if let Some((k, _)) = slots.get_key_value(key) {
            return k.clone();
        }
        let (me, peers) = self.me_and_peers();
        let k: Rc<str> = Rc::from(key);
        slots.insert(k.clone(), self.open_slot(key, limits, now, me, peers));
        k
    }

    fn slot_for<'s>(
        &self,
        slots: &'s mut FxHashMap<Rc<str>, Slot>,
        key: &str,
        limits: Limits,
        now: Timestamp,
    ) -> &'s mut Slot {
        let (me, peers) = self.me_and_peers();
        if !slots.contains_key(key) {
            // The key is allocated once per bucket, not per request.
            slots.insert(Rc::from(key), self.open_slot(key, limits, now, me, peers));
        }
        match slots.get_mut(key) {
            Some(slot) => slot,
            None => unreachable!("inserted above"),
        }
    }

    fn open_slot(
        &self,
        key: &str,
        limits: Limits,
        now: Timestamp,
        me: usize,
        peers: usize,
    ) -> Slot {
        if owner_shard(key, peers) == me {
            // The owner picks up where the last run left off: windows still
            // current at `now` keep their counts.
            let counters = self.persist.restored.restore_counters(key, now);
            if let Some(link) = self.cluster.borrow().as_ref() {
                let ttl = link.lease_ttl.as_millis() as u64;
                let cap = crate::cluster::lease_cap(&limits, self.live_nodes.get());
                // Renewed a fifth of its life early, so a steady stream of
                // requests never waits on the store.
                let node = LocalQuota::new(me, cap, Quota::ZERO).renew_before(ttl / 5);
                let mut lm = LeaseManager::with_upstream(limits, now, node);
                *lm.counters_mut() = counters;
                let mut slot = NodeSlot {
                    lm,
                    refused: false,
                    second: 0,
                    this_second: 0,
                    last_second: 0,
                    pending: (0, 0),
                };
                slot.resize(&limits, self.live_nodes.get(), ttl);
                return Slot::Clustered(Box::new(slot), limits);
            }
            let mut lm = LeaseManager::new(limits, now);
            *lm.counters_mut() = counters;
            Slot::Owned(lm)
        } else {
            let (refill, low) = LocalQuota::suggested_refill(&limits, peers);
            Slot::Leased(LocalQuota::new(me, refill, low), limits)
        }
    }

    /// Marks an owned bucket's counters as changed (allocating only the
    /// first time per persist period).
    fn mark_dirty(&self, key: &str) {
        self.activity.notify();
        let mut dirty = self.dirty.borrow_mut();
        if !dirty.contains(key) {
            dirty.insert(key.to_owned());
        }
    }

    /// Takes `r` from one bucket, waiting (bounded) for a lease refill.
    /// `now` is the admission's clock reading; the clock is read again only
    /// while waiting for a grant.
    async fn take(
        &self,
        key: &str,
        limits: Limits,
        r: &Reservation,
        mut now: Timestamp,
    ) -> Result<(), TakeError> {
        let mut deadline = None;
        // With a cluster, every wait is for the store (directly on the
        // owner, through it elsewhere): bounded by `cluster.deadline`.
        let (wait, deny_when_down) = match self.cluster.borrow().as_ref() {
            Some(c) => (c.deadline, c.on_unavailable == OnUnavailable::Deny),
            None => (GRANT_WAIT, false),
        };
        loop {
            if deny_when_down && !self.cluster_up.get() {
                return Err(TakeError::Unavailable(QuotaUnavailable::StoreDown));
            }
            let step = {
                let mut slots = self.slots.borrow_mut();
                match self.slot_for(&mut slots, key, limits, now) {
                    Slot::Owned(lm) => {
                        self.mark_dirty(key);
                        if lm.admit(r, now) {
                            Take::Admitted
                        } else {
                            Take::Exhausted {
                                until: Timestamp(
                                    now.0
                                        + lm.counters()
                                            .reset_in_ms(LimitKind::RequestsPerMinute, now),
                                ),
                            }
                        }
                    }
                    Slot::Clustered(n, _) => {
                        if n.refused && deny_when_down {
                            n.refused = false;
                            drop(slots);
                            return Err(TakeError::Unavailable(QuotaUnavailable::StoreDown));
                        }
                        // Checked again here: `decide` saw the spend before
                        // any wait for the store's first word of it.
                        if let Some(reason) =
                            spent(&limits, || n.lm.cluster_view(&limits, now), now)
                        {
                            return Err(TakeError::Denied(reason));
                        }
                        self.mark_dirty(key);
                        let mut out = self.node_outbox.borrow_mut();
                        let t = n.lm.admit_on_lease(r, now, &mut out);
                        if t == Take::Admitted {
                            n.count(now);
                        }
                        t
                    }
                    Slot::Leased(lq, _) => {
                        // The spend as of the last grant or the owner's
                        // announcement: a shard without a lease has none,
                        // waits for a grant, and checks it here.
                        if let Some(reason) = spent(&limits, || lq.view(&limits, now), now) {
                            return Err(TakeError::Denied(reason));
                        }
                        let mut out = self.outbox.borrow_mut();
                        let t = lq.try_take(Quota::of(r), now, &mut out);
                        drop(out);
                        t
                    }
                }
            };
            self.flush(key, limits);
            match step {
                Take::Admitted => return Ok(()),
                Take::WaitForGrant => {
                    let until = *deadline.get_or_insert(now.0 + wait.as_millis() as u64);
                    if now.0 >= until {
                        if self.cluster.borrow().is_some() {
                            return Err(TakeError::Unavailable(QuotaUnavailable::StoreLate(
                                wait.as_millis() as u64,
                            )));
                        }
                        return Err(TakeError::Denied(limit_reason(
                            &limits,
                            r,
                            now,
                            now.0 + 1000,
                        )));
                    }
                    // Woken by the bell; the cap only bounds a wait whose
                    // word went astray (a slot rebuilt by a reload).
                    let left = Duration::from_millis(until - now.0).min(GRANT_RECHECK);
                    futures_lite::future::or(self.grants.next_ring(), async {
                        glommio::timer::sleep(left).await;
                    })
                    .await;
                    now = self::now();
                }
                Take::Exhausted { until } => {
                    return Err(TakeError::Denied(limit_reason(&limits, r, now, until.0)))
                }
            }
        }
    }

    /// Releases a reservation taken from one bucket (another bucket refused).
    fn give_back(&self, key: &str, r: &Reservation) {
        let now = now();
        let mut slots = self.slots.borrow_mut();
        match slots.get_mut(key) {
            Some(Slot::Owned(lm)) => {
                use shardgate_policy::QuotaSource;
                lm.release(Quota::of(r), r.minute_start, r.day_start, now);
            }
            Some(Slot::Clustered(n, limits)) => {
                let limits = *limits;
                {
                    let mut out = self.node_outbox.borrow_mut();
                    n.lm.give_back(Quota::of(r), r.minute_start, r.day_start, now, &mut out);
                }
                drop(slots);
                self.flush(key, limits);
            }
            Some(Slot::Leased(lq, _)) => {
                use shardgate_policy::QuotaSource;
                lq.release(Quota::of(r), r.minute_start, r.day_start, now);
            }
            None => {}
        }
    }

    /// Settles a finished request: real usage replaces the reservation and
    /// its cost is charged. Each of `attempts` is one upstream attempt that
    /// reported (or was estimated to have used) something: the upstream
    /// model (what is priced), its usage (None: unknown, estimated from the
    /// reservation) and whether it is an estimate. All of them are charged,
    /// each at its own model's price; with none, the reservation goes back
    /// and the request still counts. Returns the cost in micro-dollars.
    pub fn settle_all<'m>(
        &self,
        ticket: &Ticket,
        attempts: impl IntoIterator<Item = (&'m str, Option<&'m Usage>, bool)>,
    ) -> u64 {
        let reservation = ticket.held.as_ref().map(|h| &h.reservation);
        let mut total: Option<Usage> = None;
        let (mut cost, mut estimated, mut any) = (0u64, false, false);
        for (model, usage, est) in attempts {
            any = true;
            let price = self.price(model);
            cost = cost.saturating_add(match (usage, reservation) {
                (Some(u), _) => price.cost_micros(u),
                (None, Some(r)) => price.estimate_micros(r.prompt_tokens, r.output_tokens),
                (None, None) => 0,
            });
            estimated |= est || usage.is_none();
            if let Some(u) = usage {
                total.get_or_insert_with(Usage::default).add(u);
            }
        }
        if !any {
            // Nothing was used: zero tokens, reported, so the reservation
            // goes back (a usage without figures would be settled as
            // unknown, keeping the whole reservation charged).
            total = Some(Usage {
                prompt_tokens: Some(0),
                completion_tokens: Some(0),
                total_tokens: Some(0),
                ..Usage::default()
            });
        }
        let usage = total.as_ref();
        self.settle_buckets(ticket, usage, cost, estimated);
        let key_id = ticket.actor.as_ref().map_or(ANONYMOUS, |a| &a.key_id);
        let added = UsageTotals {
            requests: 1,
            input_tokens: usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
            output_tokens: usage.and_then(|u| u.completion_tokens).unwrap_or(0),
            spend_micros: cost,
        };
        self.activity.notify();
        let mut pending = self.pending.borrow_mut();
        match pending.get_mut(key_id) {
            Some(t) => t.add(&added),
            None => {
                pending.insert(key_id.to_owned(), added);
            }
        }
        cost
    }

    /// Hands the usage settled since the last call to the store writer, one
    /// record per key: the request path only adds to a local table, and
    /// the writer thread is woken once per flush, not once per request.
    pub fn persist_usage(&self) {
        let now = now();
        for (key_id, totals) in self.pending.borrow_mut().drain() {
            if !self
                .persist
                .tx
                .send(UsageRecord::usage(&key_id, now, totals))
            {
                log::error!("usage of {key_id} not recorded: the store writer has stopped");
            }
        }
    }

    /// Sends the store the usage settled on owned buckets since the last
    /// call: one message per bucket, not one per request.
    pub fn send_cluster_usage(&self) {
        let Some(link) = self.cluster.borrow().clone() else {
            return;
        };
        let (me, _) = self.me_and_peers();
        for (key, slot) in self.slots.borrow_mut().iter_mut() {
            if let Slot::Clustered(n, limits) = slot {
                if n.pending != (0, 0) {
                    let (extra_tokens, spend_micros) = std::mem::take(&mut n.pending);
                    let _ = link.tx.send(ToNode::Quota {
                        shard: me,
                        bucket: key.to_string(),
                        limits: *limits,
                        msg: ToOwner::Usage {
                            shard: me,
                            extra_tokens,
                            spend_micros,
                        },
                    });
                }
            }
        }
    }

    /// Writes the counters of owned buckets that changed since last time.
    pub fn persist_counters(&self) {
        let dirty: Vec<String> = self.dirty.borrow_mut().drain().collect();
        if dirty.is_empty() {
            return;
        }
        let now = now();
        let slots = self.slots.borrow();
        for key in dirty {
            let counters = match slots.get(key.as_str()) {
                Some(Slot::Owned(lm)) => Some(lm.counters()),
                Some(Slot::Clustered(n, _)) => Some(n.lm.counters()),
                _ => None,
            };
            if let Some(counters) = counters {
                for kind in LimitKind::ALL {
                    if !self
                        .persist
                        .tx
                        .send(UsageRecord::counter(&key, kind, counters, now))
                    {
                        log::error!(
                            "window counters of {key} not recorded: the store writer has stopped"
                        );
                        break;
                    }
                }
            }
        }
    }

    fn settle_buckets(&self, ticket: &Ticket, usage: Option<&Usage>, cost: u64, estimated: bool) {
        let Some(held) = &ticket.held else {
            return;
        };
        let r = &held.reservation;
        let s = Settlement::from_usage(r, usage, cost, estimated);
        let now = now();
        for (key, limits) in &held.buckets {
            let spent = {
                let mut slots = self.slots.borrow_mut();
                match self.slot_for(&mut slots, key, *limits, now) {
                    Slot::Owned(lm) => {
                        lm.counters_mut().settle(r, &s, now);
                        self.mark_dirty(key);
                        lm.newly_spent(now)
                    }
                    Slot::Clustered(n, _) => {
                        n.lm.counters_mut().settle(r, &s, now);
                        let mut out = self.node_outbox.borrow_mut();
                        let before = out.len();
                        n.lm.node_mut()
                            .settle(r, s.tokens, s.spend_micros, now, &mut out);
                        n.hold_usage(&mut out, before);
                        self.mark_dirty(key);
                        n.lm.newly_spent(now)
                    }
                    Slot::Leased(lq, _) => {
                        let mut out = self.outbox.borrow_mut();
                        lq.settle(r, s.tokens, s.spend_micros, now, &mut out);
                        None
                    }
                }
            };
            self.flush(key, *limits);
            self.announce_spent(key, spent);
        }
    }

    /// True while something waits to be persisted or returned: settled
    /// usage, changed counters, or a lease that will end and must go back.
    pub fn has_background_work(&self) -> bool {
        !self.pending.borrow().is_empty()
            || !self.dirty.borrow().is_empty()
            || self.slots.borrow().values().any(|s| match s {
                Slot::Leased(lq, _) => lq.holds_lease(),
                Slot::Clustered(n, _) => n.lm.node().holds_lease() || n.pending != (0, 0),
                Slot::Owned(_) => false,
            })
    }

    /// Resolves once [`Admission::has_background_work`] may have become
    /// true since the last call.
    pub async fn activity(&self) {
        self.activity.wait().await
    }

    /// Returns ended leases' unused quota to the buckets' owners. A lease
    /// also ends lazily at the shard's next request for its bucket, but a
    /// shard that stops seeing a bucket would hold the quota, which the
    /// owner's day counts as used, until then.
    pub fn return_ended_leases(&self) {
        let now = now();
        let mut returns = Vec::new();
        let mut node_returns = Vec::new();
        for (key, slot) in self.slots.borrow_mut().iter_mut() {
            let mut out = Vec::new();
            match slot {
                Slot::Leased(lq, limits) => {
                    lq.expire(now, &mut out);
                    if !out.is_empty() {
                        returns.push((Rc::clone(key), *limits, out));
                    }
                }
                Slot::Clustered(n, limits) => {
                    n.lm.node_mut().expire(now, &mut out);
                    if !out.is_empty() {
                        node_returns.push((Rc::clone(key), *limits, out));
                    }
                }
                Slot::Owned(_) => {}
            }
        }
        for (key, limits, out) in returns {
            self.outbox.borrow_mut().extend(out);
            self.flush(&key, limits);
        }
        for (key, limits, out) in node_returns {
            self.node_outbox.borrow_mut().extend(out);
            self.flush(&key, limits);
        }
    }

    /// Sends what the state machines queued to the bucket's owner (and,
    /// from an owner on a node lease, to the cluster store).
    fn flush(&self, key: &str, limits: Limits) {
        if !self.node_outbox.borrow().is_empty() {
            let msgs: Vec<ToOwner> = self.node_outbox.borrow_mut().drain(..).collect();
            if let Some(link) = self.cluster.borrow().as_ref() {
                let (me, _) = self.me_and_peers();
                for msg in msgs {
                    let _ = link.tx.send(ToNode::Quota {
                        shard: me,
                        bucket: key.to_owned(),
                        limits,
                        msg,
                    });
                }
            }
        }
        let msgs: Vec<ToOwner> = self.outbox.borrow_mut().drain(..).collect();
        if msgs.is_empty() {
            return;
        }
        let Some(mesh) = self.mesh.borrow().clone() else {
            return;
        };
        let owner = owner_shard(key, mesh.shards());
        for msg in msgs {
            mesh.send(
                owner,
                ShardMsg::Quota(QuotaMsg::ToOwner {
                    bucket: key.to_owned(),
                    limits,
                    msg,
                }),
            );
        }
    }

    /// A quota message from another shard.
    pub fn on_message(&self, msg: QuotaMsg) {
        let now = now();
        match msg {
            QuotaMsg::ToOwner {
                bucket,
                limits,
                msg,
            } => {
                let (reply, spent) = {
                    let mut slots = self.slots.borrow_mut();
                    match self.slot_for(&mut slots, &bucket, limits, now) {
                        Slot::Owned(lm) => {
                            self.mark_dirty(&bucket);
                            let reply = lm.on_message(msg, now);
                            (reply, lm.newly_spent(now))
                        }
                        Slot::Clustered(n, _) => {
                            self.mark_dirty(&bucket);
                            let mut out = self.node_outbox.borrow_mut();
                            let before = out.len();
                            let reply = n.lm.on_message_on_lease(msg, now, &mut out);
                            n.hold_usage(&mut out, before);
                            (reply, n.lm.newly_spent(now))
                        }
                        Slot::Leased(..) => {
                            log::warn!("quota message for bucket {bucket} reached a non-owner");
                            (None, None)
                        }
                    }
                };
                self.flush(&bucket, limits);
                self.announce_spent(&bucket, spent);
                if let (Some((to, lease)), Some(mesh)) = (reply, self.mesh.borrow().clone()) {
                    mesh.send(to, ShardMsg::Quota(QuotaMsg::Grant { bucket, lease }));
                }
            }
            QuotaMsg::Grant { bucket, lease } => {
                let limits = {
                    let mut slots = self.slots.borrow_mut();
                    match slots.get_mut(bucket.as_str()) {
                        Some(Slot::Leased(lq, limits)) => {
                            self.activity.notify();
                            let mut out = self.outbox.borrow_mut();
                            lq.on_grant(lease, now, &mut out);
                            Some(*limits)
                        }
                        _ => None,
                    }
                };
                if let Some(limits) = limits {
                    self.flush(&bucket, limits);
                }
            }
            QuotaMsg::Spent {
                bucket,
                month,
                used,
            } => {
                if let Some(Slot::Leased(lq, _)) = self.slots.borrow_mut().get_mut(bucket.as_str())
                {
                    lq.note_spend(month, used);
                }
            }
        }
        // Any word between shards can end a wait (a grant, a spent month);
        // a waiter that finds nothing new for it waits again.
        self.grants.ring();
    }

    /// Tells every other shard that `key`'s month is spent (the owner's
    /// [`LeaseManager::newly_spent`]), so none admits on an older word.
    fn announce_spent(&self, key: &str, spent: Option<(Timestamp, u64)>) {
        let (Some((month, used)), Some(mesh)) = (spent, self.mesh.borrow().clone()) else {
            return;
        };
        for to in (0..mesh.shards()).filter(|&to| to != mesh.me()) {
            mesh.send(
                to,
                ShardMsg::Quota(QuotaMsg::Spent {
                    bucket: key.to_owned(),
                    month,
                    used,
                }),
            );
        }
    }
}

impl Admission {
    /// A word from the node thread (cluster store grants and state).
    pub fn on_cluster(&self, msg: FromNode) {
        let now = now();
        match msg {
            FromNode::State { up, live_nodes } => {
                self.cluster_up.set(up);
                self.live_nodes.set(live_nodes.max(1));
                if up {
                    for slot in self.slots.borrow_mut().values_mut() {
                        if let Slot::Clustered(n, _) = slot {
                            n.refused = false;
                        }
                    }
                }
            }
            FromNode::Grant { bucket, lease } => {
                let ttl = self
                    .cluster
                    .borrow()
                    .as_ref()
                    .map_or(1000, |c| c.lease_ttl.as_millis() as u64);
                let limits = {
                    let mut slots = self.slots.borrow_mut();
                    match slots.get_mut(bucket.as_str()) {
                        Some(Slot::Clustered(n, limits)) => {
                            self.activity.notify();
                            n.refused = false;
                            let mut out = self.node_outbox.borrow_mut();
                            n.lm.on_node_grant(lease, now, &mut out);
                            n.resize(limits, self.live_nodes.get(), ttl);
                            Some((*limits, n.lm.newly_spent(now)))
                        }
                        _ => None,
                    }
                };
                if let Some((limits, spent)) = limits {
                    self.flush(&bucket, limits);
                    self.announce_spent(&bucket, spent);
                }
            }
            FromNode::Refused { bucket } => {
                if let Some(Slot::Clustered(n, _)) =
                    self.slots.borrow_mut().get_mut(bucket.as_str())
                {
                    n.refused = true;
                    n.lm.node_mut().want_failed();
                }
            }
        }
        // Every word from the store can end a wait: a grant, a refusal, the
        // store going down (refused at once under `on_unavailable: deny`).
        self.grants.ring();
    }
}

/// A doorbell for any number of tasks: a wait made now is ready once it
/// rings again. Ringing with nobody waiting is a
/// counter increment; a waiter that gives up takes its waker back out.
#[derive(Default)]
struct Bell {
    rings: Cell<u64>,
    next_id: Cell<u64>,
    waiters: RefCell<Vec<(u64, Waker)>>,
}

impl Bell {
    fn ring(&self) {
        self.rings.set(self.rings.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// Ready once the bell rings after this call.
    fn next_ring(&self) -> Rung<'_> {
        Rung {
            bell: self,
            heard: self.rings.get(),
            id: None,
        }
    }
}

/// A wait on a [`Bell`]; dropped before the ring (its deadline won), it
/// takes its waker back out.
struct Rung<'b> {
    bell: &'b Bell,
    heard: u64,
    id: Option<u64>,
}

impl std::future::Future for Rung<'_> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let bell = self.bell;
        if bell.rings.get() != self.heard {
            self.id = None;
            return Poll::Ready(());
        }
        let mut waiters = bell.waiters.borrow_mut();
        match self.id {
            Some(id) if waiters.iter().any(|(w, _)| *w == id) => {}
            _ => {
                let id = bell.next_id.get();
                bell.next_id.set(id.wrapping_add(1));
                waiters.push((id, cx.waker().clone()));
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Rung<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.bell.waiters.borrow_mut().retain(|(w, _)| *w != id);
        }
    }
}

/// A one-task doorbell: `notify` (on the request path: a flag and, only
/// while the task sleeps, a wake) and `wait`.
#[derive(Default)]
struct Activity {
    rung: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl Activity {
    fn notify(&self) {
        self.rung.set(true);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.rung.replace(false) {
                Poll::Ready(())
            } else {
                self.waiter.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// The 429 reason for a bucket that could not cover `r` until `until_ms`.
/// The budget's refusal when the month's spend, as `view` tells it, has
/// reached the bucket's monthly limit (`view` is only read when there is
/// one).
fn spent(limits: &Limits, view: impl FnOnce() -> Counters, now: Timestamp) -> Option<DenyReason> {
    let limit = limits.monthly_spend_micros?;
    let c = view();
    let kind = LimitKind::MonthlySpend;
    let used = c.used(kind, now);
    (used >= limit).then(|| DenyReason::BudgetExhausted {
        kind,
        limit,
        used,
        retry_after_ms: c.reset_in_ms(kind, now),
    })
}

fn limit_reason(limits: &Limits, r: &Reservation, now: Timestamp, until_ms: u64) -> DenyReason {
    let retry_after_ms = until_ms.saturating_sub(now.0).max(1);
    let (kind, limit) = match (limits.requests_per_minute, limits.tokens_per_minute) {
        (Some(l), _) if r.requests > 0 => (LimitKind::RequestsPerMinute, l),
        (_, Some(l)) => (LimitKind::TokensPerMinute, l),
        _ => (
            LimitKind::TokensPerDay,
            limits.tokens_per_day.unwrap_or_default(),
        ),
    };
    DenyReason::RateLimited {
        kind,
        limit,
        retry_after_ms,
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
