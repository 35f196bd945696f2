//! Scale-out: nodes sharing limits, budgets and keys through Redis.
//!
//! One thread per process, the node thread, owns the connection to the
//! store; shards never touch it. A bucket's owner shard runs on a node
//! lease (see `shardgate_policy::lease` and its `node` part): when the
//! lease runs low or nears its end, the owner's `Want` comes here over a
//! crossbeam channel, one atomic script call turns it into a grant carved
//! from the store's window, and the grant goes back to that shard over its
//! waking channel. So the store sees a few calls per second per scope and
//! node, never one per request, and a request waits on the store only when
//! its node's lease is empty, and then at most `cluster.deadline`.
//!
//! Why a blocking client on a thread: the `redis` crate's async client
//! needs tokio, which cannot run on a glommio shard, and the node thread's
//! work is a few calls per second; one thread with a timeout on each call
//! is the simplest thing whose worst case is bounded.
//!
//! # Overshoot bound
//! The store grants a window's quota at most once, so the requests and
//! reserved tokens granted for one window never exceed its limit. A lease
//! is valid only inside the store window it came from (translated to the
//! node's clock) and for at most `lease_ttl`; what remains of it when the
//! window ends is the only quota that can still be spent while the store
//! already grants the next window. So in any window, admitted requests
//! (and reserved tokens) exceed a limit by at most the node leases
//! outstanding at once: `live nodes × lease cap`, where the cap is the
//! limit / (8 × live nodes), at least 1: **one eighth of each limit**,
//! plus, for tokens, one request's reservation per node. `GET
//! /admin/cluster` prints it per scope.
//!
//! # When the store is gone
//! `deny`: limited requests get 503 until it is back. `local`: this thread
//! answers from each scope's share (limit / live nodes last seen) and
//! keeps what it grants in the ledger, which it adds to the store once it
//! is back; a store that lost its state (its restart without persistence:
//! this node's marker key is gone) gets the node's whole share of the
//! current windows again.

mod keys;
mod ledger;
mod scripts;
pub(crate) mod store;

use crate::config::cluster::{ClusterConfig, OnUnavailable};
use crate::handoff::{Receiver, Sender};
use crate::runtime::WakingSender;
use crate::store::DataDir;
use crossbeam::channel::RecvTimeoutError;
use ledger::Ledger;
use serde::Serialize;
use shardgate_policy::{KeyRecord, Lease, Limits, Period, Quota, Timestamp, ToOwner};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;

/// What reaches the node thread.
pub enum ToNode {
    /// A bucket owner's message for the store.
    Quota {
        shard: usize,
        bucket: String,
        limits: Limits,
        msg: ToOwner,
    },
    /// This node's key table changed (`keys.log`).
    Keys(Vec<KeyRecord>),
    /// Another node changed a key.
    KeyNotice(String),
    /// Key notices may have been missed: read the store's table again.
    Resync,
    /// `GET /admin/cluster`.
    Status(crossbeam::channel::Sender<NodeStatus>),
}

/// What the node thread tells a shard.
#[derive(Debug)]
pub enum FromNode {
    /// The store's grant for a bucket's node lease.
    Grant { bucket: String, lease: Lease },
    /// No grant: the store is unreachable and `on_unavailable` is `deny`.
    Refused { bucket: String },
    /// The store became reachable or not; the live nodes it last counted.
    State { up: bool, live_nodes: u64 },
}

/// Figures for `/metrics`, written by the node thread only.
#[derive(Debug, Default)]
pub struct Gauges {
    pub up: AtomicBool,
    pub live_nodes: AtomicU64,
    pub store_calls: AtomicU64,
    pub local_grants: AtomicU64,
    pub refused: AtomicU64,
}

/// `GET /admin/cluster`.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub store_up: bool,
    pub on_unavailable: OnUnavailable,
    pub live_nodes: u64,
    pub store_calls: u64,
    pub lease_ttl_ms: u64,
    /// A monthly budget is exceeded by at most what the cluster spends in
    /// this long (how stale a shard's view of the cluster's spend can be:
    /// a node lease's life, a shard lease's life, a usage flush), plus the
    /// cost of the requests in flight when it is crossed.
    pub spend_stale_ms: u64,
    pub scopes: Vec<ScopeBound>,
}

/// One scope's limits and the most they can be exceeded by in a window.
#[derive(Debug, Serialize)]
pub struct ScopeBound {
    pub scope: String,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// The largest node lease of each, per node.
    pub lease_cap_requests: Option<u64>,
    pub lease_cap_tokens: Option<u64>,
    /// Requests (and reserved tokens, plus one reservation per node) over
    /// the limit in one window, at most.
    pub bound_requests: Option<u64>,
    pub bound_tokens: Option<u64>,
}

/// The largest lease a node holds for `limits`: each limit / (8 × live
/// nodes), at least 1 (`u64::MAX / 4` for no limit).
pub fn lease_cap(limits: &Limits, live_nodes: u64) -> Quota {
    let div = 8 * live_nodes.max(1);
    let part = |l: Option<u64>| l.map_or(u64::MAX / 4, |l| (l / div).max(1));
    Quota {
        requests: part(limits.requests_per_minute),
        tokens: part(limits.tokens_per_minute).min(part(limits.tokens_per_day)),
    }
}

/// The shards' end: where to send, and what the process shares.
#[derive(Clone)]
pub struct ClusterLink {
    pub tx: Sender<ToNode>,
    pub gauges: Arc<Gauges>,
    pub on_unavailable: OnUnavailable,
    pub deadline: Duration,
    pub lease_ttl: Duration,
}

/// Starts the node thread (and the key notice listener). `shards` are the
/// channels into each shard, by shard id.
pub fn start(
    cfg: &ClusterConfig,
    dir: DataDir,
    keys: Vec<KeyRecord>,
    shards: Vec<WakingSender<FromNode>>,
) -> std::io::Result<ClusterLink> {
    let (tx, rx) = crate::handoff::unbounded();
    let gauges = Arc::new(Gauges::default());
    let name = cfg.node.clone().unwrap_or_else(default_name);
    log::info!(
        "cluster: node {name}, store {}, on_unavailable {:?}",
        redacted(cfg.redis.url.expose()),
        cfg.on_unavailable
    );
    let node = Node {
        cfg: cfg.clone(),
        name,
        store: None,
        ledger: Ledger::default(),
        windows: HashMap::new(),
        limits: HashMap::new(),
        offset_ms: 0,
        live: 1,
        shards,
        gauges: gauges.clone(),
        keys: keys::KeySync::new(dir, keys),
        next_try: Instant::now(),
        backoff: MIN_BACKOFF,
        next_beat: Instant::now(),
        down_since: None,
        last_alarm: None,
        calls_before: 0,
        usage: HashMap::new(),
        to_restore: Vec::new(),
        next_usage: Instant::now(),
    };
    std::thread::Builder::new()
        .name("sg-cluster".into())
        .spawn(move || node.run(rx))?;
    keys::spawn_listener(cfg.redis.clone(), tx.clone())?;
    Ok(ClusterLink {
        tx,
        gauges,
        on_unavailable: cfg.on_unavailable,
        deadline: cfg.deadline,
        lease_ttl: cfg.lease_ttl,
    })
}

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable)".to_owned(),
    }
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const BEAT: Duration = Duration::from_secs(1);
/// Usage reports are summed per scope and sent this often: one store call
/// per scope per period, not one per request.
const USAGE_EVERY: Duration = Duration::from_millis(100);
const ALARM_EVERY: Duration = Duration::from_secs(5);

struct Node {
    cfg: ClusterConfig,
    name: String,
    store: Option<Store>,
    ledger: Ledger,
    /// Per scope: the store minute current grants come from, and the local
    /// start shards were told for it (fixed once per window, so leases of
    /// one window always merge and returns always find it).
    windows: HashMap<String, (u64, u64)>,
    /// Each scope's limits as last asked, for the status.
    limits: HashMap<String, Limits>,
    /// Store clock minus this node's, from the last heartbeat.
    offset_ms: i64,
    live: u64,
    shards: Vec<WakingSender<FromNode>>,
    gauges: Arc<Gauges>,
    keys: keys::KeySync,
    next_try: Instant,
    backoff: Duration,
    next_beat: Instant,
    down_since: Option<Instant>,
    last_alarm: Option<Instant>,
    /// Store calls on connections since dropped.
    calls_before: u64,
    /// Scopes the store lost (it restarted empty) not yet given back.
    to_restore: Vec<(String, ledger::Share)>,
    /// Usage (extra tokens, spend) per scope not yet sent.
    usage: HashMap<String, (u64, u64)>,
    next_usage: Instant,
}

fn local_now() -> Timestamp {
    crate::admission::now()
}

impl Node {
    fn run(mut self, rx: Receiver<ToNode>) {
        self.ensure_store();
        loop {
            let next = if self.usage.is_empty() {
                self.next_beat
            } else {
                self.next_beat.min(self.next_usage)
            };
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.send_usage();
                    return;
                }
            }
            if !self.usage.is_empty() && Instant::now() >= self.next_usage {
                self.send_usage();
            }
            if Instant::now() >= self.next_beat {
                self.next_beat = Instant::now() + BEAT;
                self.beat();
            }
        }
    }

    /// The store's clock, as this node estimates it.
    fn store_now(&self) -> Timestamp {
        Timestamp(local_now().0.saturating_add_signed(self.offset_ms))
    }

    fn broadcast(&self, up: bool) {
        for s in &self.shards {
            let _ = s.send(FromNode::State {
                up,
                live_nodes: self.live,
            });
        }
    }

    fn reply(&self, shard: usize, msg: FromNode) {
        if let Some(s) = self.shards.get(shard) {
            let _ = s.send(msg);
        }
    }

    /// The store call failed: drop the connection, tell the shards.
    fn lost(&mut self, e: &redis::RedisError) {
        if let Some(s) = self.store.take() {
            self.calls_before += s.calls;
        }
        log::error!(
            "cluster: store unavailable ({e}); {}",
            match self.cfg.on_unavailable {
                OnUnavailable::Deny => "limited requests are refused (503) until it is back",
                OnUnavailable::Local => "each limit is enforced on this node's share",
            }
        );
        self.down_since = Some(Instant::now());
        self.last_alarm = Some(Instant::now());
        self.gauges.up.store(false, Ordering::Relaxed);
        self.next_try = Instant::now() + self.backoff;
        self.broadcast(false);
    }

    /// Connects when down and the backoff has passed; on success, brings
    /// the store up to date with what this node did meanwhile.
    fn ensure_store(&mut self) {
        if self.store.is_some() || Instant::now() < self.next_try {
            return;
        }
        let mut s = match Store::connect(&self.cfg.redis, &self.name) {
            Ok(s) => s,
            Err(e) => {
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                if self.down_since.is_none() {
                    self.down_since = Some(Instant::now());
                    self.broadcast(false);
                }
                log::debug!("cluster: connect: {e}");
                return;
            }
        };
        let up = s.heartbeat().and_then(|beat| {
            self.heard(&beat);
            let now = self.store_now();
            if !beat.kept_state {
                // Everything this node counted, unreachable time included.
                self.to_restore = self.ledger.all(now);
                let _ = self.ledger.take_unsynced(now);
            }
            // Each scope leaves its list only once the store has it: a
            // call that fails leaves the rest for the next connection.
            let owed = self.ledger.unsynced(now);
            for (scope, share) in &owed {
                s.restore(scope, share)?;
                self.ledger.forget_unsynced(scope);
            }
            let lost = self.to_restore.len();
            while let Some((scope, share)) = self.to_restore.last() {
                s.restore(scope, share)?;
                self.to_restore.pop();
            }
            if owed.len() + lost > 0 {
                log::info!(
                    "cluster: told the store this node's use of {} scopes while it was unreachable, {} it lost",
                    owed.len(),
                    lost
                );
            }
            self.keys.resync(&mut s)
        });
        match up {
            Ok(()) => {
                if let Some(since) = self.down_since.take() {
                    log::info!(
                        "cluster: store available again after {:.1}s",
                        since.elapsed().as_secs_f64()
                    );
                }
                self.backoff = MIN_BACKOFF;
                self.gauges.up.store(true, Ordering::Relaxed);
                self.store = Some(s);
                self.publish_calls();
                self.broadcast(true);
            }
            Err(e) => {
                self.store = Some(s);
                self.lost(&e);
            }
        }
    }

    fn heard(&mut self, beat: &store::Beat) {
        self.offset_ms = beat.now_ms as i64 - local_now().0 as i64;
        if beat.live_nodes != self.live {
            self.live = beat.live_nodes;
            self.gauges.live_nodes.store(self.live, Ordering::Relaxed);
            self.broadcast(true);
        }
        self.gauges.live_nodes.store(self.live, Ordering::Relaxed);
    }

    fn beat(&mut self) {
        if self.store.is_none() {
            self.ensure_store();
            if self.store.is_none() {
                self.alarm();
            }
            return;
        }
        let beat = self.store.as_mut().map(Store::heartbeat);
        match beat {
            Some(Ok(b)) => {
                self.heard(&b);
                if !b.kept_state {
                    // The store restarted empty between two beats: give it
                    // back this node's share of the current windows.
                    let now = self.store_now();
                    self.to_restore = self.ledger.all(now);
                    log::warn!(
                        "cluster: the store lost its state; restoring this node's use of {} scopes",
                        self.to_restore.len()
                    );
                    let mut failed = None;
                    if let Some(s) = self.store.as_mut() {
                        while let Some((scope, share)) = self.to_restore.last() {
                            if let Err(e) = s.restore(scope, share) {
                                failed = Some(e);
                                break;
                            }
                            self.to_restore.pop();
                        }
                    }
                    // What is left goes on the next connection.
                    if let Some(e) = failed {
                        self.lost(&e);
                    }
                }
            }
            Some(Err(e)) => self.lost(&e),
            None => {}
        }
        self.publish_calls();
    }

    fn calls(&self) -> u64 {
        self.calls_before + self.store.as_ref().map_or(0, |s| s.calls)
    }

    fn publish_calls(&self) {
        self.gauges
            .store_calls
            .store(self.calls(), Ordering::Relaxed);
    }

    fn alarm(&mut self) {
        let due = self.last_alarm.is_none_or(|t| t.elapsed() >= ALARM_EVERY);
        if !due {
            return;
        }
        self.last_alarm = Some(Instant::now());
        let secs = self.down_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        match self.cfg.on_unavailable {
            OnUnavailable::Deny => log::error!(
                "cluster: store unreachable for {secs:.0}s: limited requests are refused (503)"
            ),
            OnUnavailable::Local => log::error!(
                "cluster: store unreachable for {secs:.0}s: enforcing 1/{} of each limit on this node",
                self.live
            ),
        }
    }

    fn handle(&mut self, msg: ToNode) {
        match msg {
            ToNode::Quota {
                shard,
                bucket,
                limits,
                msg,
            } => {
                if !self.limits.contains_key(&bucket) {
                    self.limits.insert(bucket.clone(), limits);
                }
                self.ensure_store();
                match msg {
                    ToOwner::Want { want, .. } => self.want(shard, bucket, &limits, want),
                    ToOwner::Return {
                        unused,
                        window_start,
                        day_start,
                        ..
                    } => self.give_back(&bucket, unused, window_start, day_start),
                    ToOwner::Usage {
                        extra_tokens,
                        spend_micros,
                        ..
                    } => {
                        if self.usage.is_empty() {
                            self.next_usage = Instant::now() + USAGE_EVERY;
                        }
                        let u = self.usage.entry(bucket).or_default();
                        u.0 = u.0.saturating_add(extra_tokens);
                        u.1 = u.1.saturating_add(spend_micros);
                    }
                }
            }
            ToNode::Keys(records) => {
                let r = self.keys.local_changed(self.store.as_mut(), records);
                if let Err(e) = r {
                    self.lost(&e);
                }
            }
            ToNode::KeyNotice(id) => {
                if let Some(s) = self.store.as_mut() {
                    if let Err(e) = self.keys.notice(s, &id) {
                        self.lost(&e);
                    }
                }
            }
            ToNode::Resync => {
                self.ensure_store();
                if let Some(s) = self.store.as_mut() {
                    if let Err(e) = self.keys.resync(s) {
                        self.lost(&e);
                    }
                }
            }
            ToNode::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
        self.publish_calls();
    }

    fn want(&mut self, shard: usize, bucket: String, limits: &Limits, want: Quota) {
        let ttl = self.cfg.lease_ttl.as_millis() as u64;
        if let Some(s) = self.store.as_mut() {
            match s.grant(&bucket, limits, want) {
                Ok(g) => {
                    let local = local_now();
                    self.offset_ms = g.now_ms as i64 - local.0 as i64;
                    let store_now = Timestamp(g.now_ms);
                    self.ledger.took(&bucket, g.got, true, store_now);
                    let local_start = match self.windows.get(&bucket) {
                        Some(&(m, l)) if m == g.minute_start => l,
                        _ => {
                            let l = g.minute_start.saturating_add_signed(-self.offset_ms);
                            self.windows.insert(bucket.clone(), (g.minute_start, l));
                            l
                        }
                    };
                    let window_end = local_start + 60_000;
                    let lease = Lease {
                        requests: g.got.requests,
                        tokens: g.got.tokens,
                        window_start: Timestamp(local_start),
                        day_start: Period::Day.start(local),
                        expires_at: Timestamp(window_end.min(local.0 + ttl)),
                        spend_used_micros: g.month_spend,
                        owner_left: g.left,
                        exhausted: (g.got.requests < want.requests && g.left.requests == 0)
                            || (g.got.tokens < want.tokens && g.left.tokens == 0),
                    };
                    self.reply(shard, FromNode::Grant { bucket, lease });
                    return;
                }
                Err(e) => self.lost(&e),
            }
        }
        match self.cfg.on_unavailable {
            OnUnavailable::Deny => {
                self.gauges.refused.fetch_add(1, Ordering::Relaxed);
                self.reply(shard, FromNode::Refused { bucket });
            }
            OnUnavailable::Local => {
                self.alarm();
                let now = local_now();
                let lease = self
                    .ledger
                    .fallback_grant(&bucket, limits, self.live, want, now, ttl);
                self.ledger
                    .took(&bucket, lease.quota(), false, self.store_now());
                self.gauges.local_grants.fetch_add(1, Ordering::Relaxed);
                self.reply(shard, FromNode::Grant { bucket, lease });
            }
        }
    }

    fn give_back(
        &mut self,
        bucket: &str,
        unused: Quota,
        window_start: Timestamp,
        day_start: Timestamp,
    ) {
        let store_minute = match self.windows.get(bucket) {
            Some(&(m, l)) if shardgate_policy::same_window(Timestamp(l), window_start) => Some(m),
            _ => None,
        };
        let now = self.store_now();
        if let (Some(minute), Some(s)) = (store_minute, self.store.as_mut()) {
            let day = minute - minute % 86_400_000;
            match s.release(bucket, minute, day, unused) {
                Ok(()) => {
                    self.ledger.gave_back(bucket, unused, minute, true, now);
                    return;
                }
                Err(e) => self.lost(&e),
            }
        }
        // A fallback lease, or the store is down: the store keeps counting
        // it (it will never see this return), which errs on refusing.
        self.ledger
            .fallback_release(bucket, unused, window_start, day_start, local_now());
    }

    /// Sends the usage summed since the last time, a call per scope.
    fn send_usage(&mut self) {
        self.ensure_store();
        let now = self.store_now();
        for (bucket, (extra_tokens, spend)) in std::mem::take(&mut self.usage) {
            let sent = match self.store.as_mut() {
                Some(s) => s.usage(&bucket, extra_tokens, spend).map(drop),
                None => Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "store unavailable",
                ))),
            };
            if let Err(e) = &sent {
                if self.store.is_some() {
                    self.lost(e);
                }
            }
            self.ledger
                .used(&bucket, extra_tokens, spend, sent.is_ok(), now);
        }
    }

    fn status(&self) -> NodeStatus {
        let mut scopes: Vec<ScopeBound> = self
            .limits
            .iter()
            .map(|(scope, l)| {
                let cap = lease_cap(l, self.live);
                let limited = |x: Option<u64>, c: u64| x.map(|_| c);
                let bound = |x: Option<u64>, c: u64| x.map(|_| c.saturating_mul(self.live));
                let token_limit = l.tokens_per_minute.or(l.tokens_per_day);
                ScopeBound {
                    scope: scope.clone(),
                    requests_per_minute: l.requests_per_minute,
                    tokens_per_minute: l.tokens_per_minute,
                    tokens_per_day: l.tokens_per_day,
                    lease_cap_requests: limited(l.requests_per_minute, cap.requests),
                    lease_cap_tokens: limited(token_limit, cap.tokens),
                    bound_requests: bound(l.requests_per_minute, cap.requests),
                    bound_tokens: bound(token_limit, cap.tokens),
                }
            })
            .collect();
        scopes.sort_by(|a, b| a.scope.cmp(&b.scope));
        NodeStatus {
            node: self.name.clone(),
            store_up: self.store.is_some(),
            on_unavailable: self.cfg.on_unavailable,
            live_nodes: self.live,
            store_calls: self.calls(),
            lease_ttl_ms: self.cfg.lease_ttl.as_millis() as u64,
            spend_stale_ms: 2 * self.cfg.lease_ttl.as_millis() as u64
                + USAGE_EVERY.as_millis() as u64,
            scopes,
        }
    }
}
