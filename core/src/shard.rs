//! Everything one shard owns: its config generation, its upstream pools, its
//! listeners' TLS configs and its shutdown signal. Nothing here is shared with
//! another shard, so nothing here is locked.

use crate::admission::Admission;
use crate::client::Pool;
use crate::config::Config;
use crate::generation::Generation;
use crate::mesh::{Mesh, ShardMsg};
use crate::metrics::ShardStats;
use crate::server::{RequestId, RequestIds};
use glommio::channels::local_channel::LocalSender;
use glommio::sync::Semaphore;
use shardgate_proto::json::tape::JsonParser;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// How often a shard may re-read the key log for an unknown key (so keys
/// sprayed by a client cost bounded IO).
pub const KEY_REREAD_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// What an executor in the mesh is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Serves clients on the api and mcp listeners, owns its share of the
    /// buckets.
    Serve,
    /// The ops executor: serves the admin listeners and merges scrapes, so
    /// an operator's request never queues behind client traffic nor adds to
    /// a serving shard's work. It owns no bucket and sends no upstream
    /// request.
    Ops,
}

impl Duty {
    /// The executor's name in logs and errors.
    pub fn name(self, id: usize) -> String {
        match self {
            Duty::Serve => format!("shard {id}"),
            Duty::Ops => "the ops executor".to_owned(),
        }
    }
}

pub struct Shard {
    pub id: usize,
    pub duty: Duty,
    /// Keys, policies and this shard's budget ledgers.
    pub admission: Admission,
    /// The config the shard started with, for what only a restart changes:
    /// listeners, limits, upstream settings, the store. Everything else is
    /// read from the current [`Generation`].
    pub config: Arc<Config>,
    generation: RefCell<Rc<Generation>>,
    pub pool: Pool,
    /// Current TLS config per listener (`None` for plain listeners); replaced
    /// on certificate reload, read at each handshake.
    pub tls: Vec<RefCell<Option<Arc<rustls::ServerConfig>>>>,
    /// Closed at shutdown: every `wait_shutdown` returns at once after that.
    shutdown: Semaphore,
    draining: Cell<bool>,
    /// Connections currently open on this shard.
    pub open_connections: Cell<usize>,
    /// Streams being read on after their client left.
    pub draining_streams: Cell<usize>,
    /// Requests being handled on this shard.
    pub requests_in_flight: Cell<usize>,
    /// Blocks for the request futures the connections box.
    pub futures: crate::boxed::FuturePool,
    request_ids: RequestIds,
    /// simd-json buffers for request facts, warm across requests. Borrowed
    /// only between awaits.
    pub json: RefCell<JsonParser>,
    /// Senders to every shard (set once the mesh is joined).
    pub mesh: RefCell<Option<Rc<Mesh>>>,
    /// What this shard has seen of each target (in flight, latency), for
    /// routes that balance.
    pub balancer: crate::gateway::balance::Balancer,
    /// The MCP servers behind `/mcp`, as this shard knows them.
    pub mcp: crate::mcp::McpShard,
    /// This shard's end of the audit log, when there is one.
    pub audit: Option<Rc<crate::audit::ShardAudit>>,
    /// What this shard's requests came to.
    pub stats: RefCell<ShardStats>,
    /// Scrapes under way on this shard, waiting for other shards' stats.
    scrapes: RefCell<HashMap<u64, LocalSender<Box<ShardStats>>>>,
    /// When this shard last re-read the key log itself (rate limit).
    last_key_read: Cell<Option<std::time::Instant>>,
    /// Key changes under way on this shard, waiting for the others' acks.
    key_acks: RefCell<HashMap<u64, LocalSender<()>>>,
    /// Cache purges under way on this shard, waiting for the others' counts.
    purge_acks: RefCell<HashMap<u64, LocalSender<usize>>>,
    /// Readiness probes under way on the ops executor, waiting for the
    /// shards' answers.
    ready_acks: RefCell<HashMap<u64, LocalSender<bool>>>,
    next_scrape: Cell<u64>,
    /// Asks the process to reload its config file (`POST /admin/reload`).
    reloads: crossbeam::channel::Sender<ReloadAsk>,
    /// This shard's kept answers (the response cache).
    pub cache: RefCell<crate::cache::ShardEntries>,
    /// The response cache's shared tier (with `cluster:`).
    shared_cache: std::cell::OnceCell<crate::cache::shared::SharedCache>,
    /// The stored Responses turns' thread.
    conversations: std::cell::OnceCell<Rc<crate::gateway::conversation::Link>>,
}

/// A reload asked for on a shard, answered by the process's main thread
/// (which reloads every shard): the generation now serving, or why the
/// file was refused.
pub struct ReloadAsk {
    pub by: &'static str,
    pub reply: crossbeam::channel::Sender<Result<u64, String>>,
}

/// What every executor's [`Shard`] is made from: the process's config,
/// keys, policies and writers, each executor with its own handles.
pub struct Seed {
    pub config: Arc<Config>,
    /// Each listener's TLS config (`None`: plain), by listener index.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Each provider's client TLS config, by provider index.
    pub upstream_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    pub policies: shardgate_policy::PolicySet,
    pub keys: shardgate_policy::KeyStore,
    pub persist: crate::admission::Persist,
    pub mcp: Arc<crate::mcp::Hub>,
    pub audit: Option<crate::audit::ShardAudit>,
    /// Where `POST /admin/reload` asks the main thread.
    pub reloads: crossbeam::channel::Sender<ReloadAsk>,
}

impl Shard {
    pub fn new(id: usize, duty: Duty, seed: Seed) -> Rc<Self> {
        let Seed {
            config,
            tls,
            upstream_tls,
            policies,
            keys,
            persist,
            mcp,
            audit,
            reloads,
        } = seed;
        let pool = Pool::new(config.upstream.clone());
        let generation = Generation::new(1, config.clone(), &upstream_tls, &pool);
        let mcp = crate::mcp::McpShard::new(mcp, &config, &pool, id);
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        Rc::new(Self {
            balancer: crate::gateway::balance::Balancer::new(u64::from_le_bytes(seed) ^ id as u64),
            audit: audit.map(Rc::new),
            mcp,
            id,
            duty,
            admission: Admission::new(&config, policies, Rc::new(keys), persist),
            pool,
            generation: RefCell::new(Rc::new(generation)),
            tls: tls.into_iter().map(RefCell::new).collect(),
            config,
            shutdown: Semaphore::new(0),
            draining: Cell::new(false),
            open_connections: Cell::new(0),
            draining_streams: Cell::new(0),
            requests_in_flight: Cell::new(0),
            futures: crate::boxed::FuturePool::default(),
            request_ids: RequestIds::new(id),
            json: RefCell::new(JsonParser::default()),
            mesh: RefCell::new(None),
            stats: RefCell::new(ShardStats::default()),
            scrapes: RefCell::new(HashMap::new()),
            key_acks: RefCell::new(HashMap::new()),
            purge_acks: RefCell::new(HashMap::new()),
            ready_acks: RefCell::new(HashMap::new()),
            last_key_read: Cell::new(None),
            next_scrape: Cell::new(0),
            reloads,
            cache: RefCell::new(crate::cache::ShardEntries::default()),
            shared_cache: std::cell::OnceCell::new(),
            conversations: std::cell::OnceCell::new(),
        })
    }

    pub fn set_shared_cache(&self, shared: crate::cache::shared::SharedCache) {
        let _ = self.shared_cache.set(shared);
    }

    /// The response cache's shared tier, with `cluster:`.
    pub fn shared_cache(&self) -> Option<&crate::cache::shared::SharedCache> {
        self.shared_cache.get()
    }

    pub fn set_conversations(&self, link: Rc<crate::gateway::conversation::Link>) {
        let _ = self.conversations.set(link);
    }

    /// The stored Responses turns, when their thread runs.
    pub fn conversations(&self) -> Option<&Rc<crate::gateway::conversation::Link>> {
        self.conversations.get()
    }

    /// Has the config file reloaded on every shard: the generation now
    /// serving, or why it was refused. The main thread does the work; this
    /// shard checks for its answer every few milliseconds meanwhile.
    pub async fn ask_reload(&self, by: &'static str) -> Result<u64, String> {
        let (reply, answer) = crossbeam::channel::bounded(1);
        self.reloads
            .send(ReloadAsk { by, reply })
            .map_err(|_| "the gateway is stopping".to_owned())?;
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match answer.try_recv() {
                Ok(done) => return done,
                Err(crossbeam::channel::TryRecvError::Disconnected) => {
                    return Err("the gateway is stopping".into())
                }
                Err(crossbeam::channel::TryRecvError::Empty) => {}
            }
            if std::time::Instant::now() > give_up {
                return Err("no answer from the reload within 30s".into());
            }
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The current config generation: a request holds the one it started
    /// on to its end.
    pub fn generation(&self) -> Rc<Generation> {
        self.generation.borrow().clone()
    }

    /// Makes `config` the current generation (requests under way keep
    /// theirs): its policies and pricing apply to the next admission.
    pub fn reload(&self, reload: crate::runtime::Reload) {
        let crate::runtime::Reload {
            number,
            config,
            policies,
            upstream_tls,
            applied,
        } = reload;
        self.admission.reload(&config, policies);
        // Kept answers were made under the old config.
        self.cache.borrow_mut().clear(number);
        // Figures of targets no route names any more would linger (an open
        // circuit would be reported, and checked for, for good).
        let served: std::collections::HashSet<&str> = config
            .models
            .values()
            .flat_map(|r| r.targets.iter().map(|t| t.served_by.as_str()))
            .collect();
        self.balancer.retain(|target| served.contains(target));
        drop(served);
        let next = Generation::new(number, config, &upstream_tls, &self.pool);
        *self.generation.borrow_mut() = Rc::new(next);
        let _ = applied.send(self.id);
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Shutdown begins: idle connections close now (their wait for a next
    /// request ends, see [`crate::deadline::with_idle_timeout`]), and
    /// every [`Shard::wait_shutdown`] returns.
    pub fn begin_shutdown(&self) {
        self.draining.set(true);
        crate::deadline::end_idle_waits();
        self.shutdown.close();
    }

    /// Resolves when shutdown begins.
    pub async fn wait_shutdown(&self) {
        // Acquiring from a semaphore with no permits waits until `close`,
        // which fails every waiter at once: a broadcast without allocation.
        let _ = self.shutdown.acquire(1).await;
    }

    /// A request presented a key this shard does not know: re-read the key
    /// log now (on the blocking pool; at most once per
    /// [`KEY_REREAD_EVERY`]) rather than refuse a key made a moment ago
    /// that the watcher has not delivered yet. True when the keys were
    /// re-read.
    pub async fn reread_keys(&self) -> bool {
        let now = crate::deadline::coarse_now();
        if self
            .last_key_read
            .get()
            .is_some_and(|t| now.saturating_duration_since(t) < KEY_REREAD_EVERY)
        {
            return false;
        }
        self.last_key_read.set(Some(now));
        let dir = crate::store::DataDir::new(self.config.store.dir.clone());
        let read = glommio::executor()
            .spawn_blocking(move || crate::store::read_keys(&dir))
            .await;
        match read.map(|t| shardgate_policy::KeyStore::from_records(t.records())) {
            Ok(Ok(keys)) => {
                self.admission.replace_keys(Rc::new(keys));
                true
            }
            Ok(Err(e)) => {
                log::warn!("shard {}: keys.log: {e}", self.id);
                false
            }
            Err(e) => {
                log::warn!("shard {}: keys.log: {e}", self.id);
                false
            }
        }
    }

    /// This shard opened `target`'s circuit: every other shard hears of it.
    pub fn circuit_opened(&self, target: &str, until: std::time::Instant) {
        if let Some(mesh) = self.mesh.borrow().clone() {
            let me = mesh.me();
            for to in (0..mesh.peers()).filter(|&p| p != me) {
                mesh.send(
                    to,
                    ShardMsg::CircuitOpen {
                        target: target.to_owned(),
                        until,
                    },
                );
            }
        }
    }

    /// Makes `keys` current on this shard and every other, and waits (at
    /// most `wait`) for each to say so: a key the admin API creates works
    /// on the very next request, whichever shard it lands on. Returns the
    /// shards that did not confirm in time.
    pub async fn spread_keys(
        &self,
        keys: shardgate_policy::KeyStore,
        wait: std::time::Duration,
    ) -> usize {
        let Some(mesh) = self.mesh.borrow().clone() else {
            self.admission.replace_keys(Rc::new(keys));
            return 0;
        };
        let ask = |from, seq| ShardMsg::Keys {
            keys: Box::new(keys.clone()),
            from,
            seq,
        };
        self.admission.replace_keys(Rc::new(keys.clone()));
        self.ask_peers(&mesh, &self.key_acks, ask, wait, |()| {})
            .await
    }

    /// Drops what `purge` names from every shard's response cache, waiting
    /// at most `wait` for the others: the entries dropped, and the shards
    /// that did not answer in time.
    pub async fn purge_cache(
        &self,
        purge: crate::cache::Purge,
        wait: std::time::Duration,
    ) -> (usize, usize) {
        let mut dropped = self.cache.borrow_mut().purge(&purge);
        let Some(mesh) = self.mesh.borrow().clone() else {
            return (dropped, 0);
        };
        let ask = |from, seq| ShardMsg::CachePurge {
            purge: purge.clone(),
            from,
            seq,
        };
        let missing = self
            .ask_peers(&mesh, &self.purge_acks, ask, wait, |n| dropped += n)
            .await;
        (dropped, missing)
    }

    /// Whether every other executor in the mesh answers, within `wait`,
    /// that it takes new work: what a readiness probe on the ops executor
    /// reports, since the ops executor's own state says nothing of the
    /// shards that serve. The error says what was missing.
    pub async fn peers_ready(&self, wait: std::time::Duration) -> Result<(), String> {
        let Some(mesh) = self.mesh.borrow().clone() else {
            return Ok(());
        };
        let ask = |from, seq| ShardMsg::ReadyAsk { from, seq };
        let mut draining = 0usize;
        let missing = self
            .ask_peers(&mesh, &self.ready_acks, ask, wait, |ready| {
                draining += usize::from(!ready);
            })
            .await;
        match (missing, draining) {
            (0, 0) => Ok(()),
            (0, n) => Err(format!("{n} shards are draining")),
            (m, _) => Err(format!("{m} shards did not answer within {wait:?}")),
        }
    }

    /// Every shard's metrics merged, rendered for Prometheus. Other shards
    /// answer over the mesh; one that does not within `wait` is counted
    /// as missing, not waited for.
    pub async fn scrape(&self, wait: std::time::Duration) -> String {
        let (merged, missing) = self.gather_stats(wait).await;
        let mut text = merged.render(missing);
        if let Some(link) = self.admission.cluster_link() {
            crate::metrics::render_cluster(&mut text, &link.gauges);
        }
        text
    }

    /// The status page's figures, from every shard.
    pub async fn status(&self, wait: std::time::Duration) -> serde_json::Value {
        let (merged, missing) = self.gather_stats(wait).await;
        merged.status_json(missing)
    }

    /// Every shard's counts merged, and how many shards did not answer
    /// within `wait`.
    async fn gather_stats(&self, wait: std::time::Duration) -> (ShardStats, usize) {
        let mut merged = self.stats_snapshot();
        let Some(mesh) = self.mesh.borrow().clone() else {
            return (merged, 0);
        };
        let ask = |from, seq| ShardMsg::MetricsAsk { from, seq };
        let missing = self
            .ask_peers(&mesh, &self.scrapes, ask, wait, |stats| {
                merged.merge(&stats)
            })
            .await;
        if missing > 0 {
            log::warn!("metrics scrape: {missing} shards did not answer within {wait:?}");
        }
        (merged, missing)
    }

    /// Sends `ask(me, seq)` to every other shard and hands each reply
    /// (which comes back through `replies` under `seq`) to `on_reply`,
    /// waiting at most `wait`: how many shards did not answer in time.
    async fn ask_peers<T>(
        &self,
        mesh: &Rc<Mesh>,
        replies: &RefCell<HashMap<u64, LocalSender<T>>>,
        ask: impl Fn(usize, u64) -> ShardMsg,
        wait: std::time::Duration,
        on_reply: impl FnMut(T),
    ) -> usize {
        let seq = self.next_scrape.get();
        self.next_scrape.set(seq + 1);
        let (tx, rx) = glommio::channels::local_channel::new_unbounded();
        replies.borrow_mut().insert(seq, tx);
        let me = mesh.me();
        let peers = mesh.peers();
        for to in (0..peers).filter(|&p| p != me) {
            mesh.send(to, ask(me, seq));
        }
        let missing = gather(&rx, peers - 1, wait, on_reply).await;
        replies.borrow_mut().remove(&seq);
        missing
    }

    fn stats_snapshot(&self) -> ShardStats {
        let mut s = match self.duty {
            Duty::Serve => {
                let open = self.open_connections.get();
                let in_flight = self.requests_in_flight.get();
                let mut s = self.stats.borrow().snapshot(self.id, open, in_flight);
                s.set_cache_kept(self.cache.borrow().totals());
                s.set_circuits(self.balancer.circuits(std::time::Instant::now()));
                s.set_latency(self.balancer.figures());
                s
            }
            // Operators' requests only: no connection or in-flight gauge of
            // a shard, and no view of targets (a merge takes the circuits
            // and latency figures from a serving shard's snapshot).
            Duty::Ops => self.stats.borrow().clone(),
        };
        if let Some(a) = &self.audit {
            s.set_audit(a.dropped_events.get(), Some(a.writer_totals()));
        }
        s
    }

    /// A message from another shard: the one dispatcher, which hands each
    /// kind to the part of the shard it is for.
    pub fn on_message(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Quota(q) => self.admission.on_message(q),
            ShardMsg::MetricsAsk { from, seq } => {
                let stats = self.stats_snapshot();
                if let Some(mesh) = self.mesh.borrow().clone() {
                    mesh.send(
                        from,
                        ShardMsg::MetricsReply {
                            seq,
                            stats: Box::new(stats),
                        },
                    );
                }
            }
            ShardMsg::McpCancel { session, id } => self.mcp.cancel_local(session, &id),
            ShardMsg::Keys { keys, from, seq } => {
                self.admission.replace_keys(Rc::new(*keys));
                if let Some(mesh) = self.mesh.borrow().clone() {
                    mesh.send(from, ShardMsg::KeysApplied { seq });
                }
            }
            ShardMsg::CachePurge { purge, from, seq } => {
                let dropped = self.cache.borrow_mut().purge(&purge);
                if let Some(mesh) = self.mesh.borrow().clone() {
                    mesh.send(from, ShardMsg::CachePurged { seq, dropped });
                }
            }
            ShardMsg::CachePurged { seq, dropped } => {
                if let Some(tx) = self.purge_acks.borrow().get(&seq) {
                    let _ = tx.try_send(dropped);
                }
            }
            ShardMsg::ReadyAsk { from, seq } => {
                if let Some(mesh) = self.mesh.borrow().clone() {
                    let ready = !self.draining();
                    mesh.send(from, ShardMsg::ReadyReply { seq, ready });
                }
            }
            ShardMsg::ReadyReply { seq, ready } => {
                if let Some(tx) = self.ready_acks.borrow().get(&seq) {
                    let _ = tx.try_send(ready);
                }
            }
            ShardMsg::CircuitOpen { target, until } => {
                self.balancer.open_from_peer(&target, until);
            }
            ShardMsg::KeysApplied { seq } => {
                if let Some(tx) = self.key_acks.borrow().get(&seq) {
                    let _ = tx.try_send(());
                }
            }
            ShardMsg::MetricsReply { seq, stats } => {
                // A reply after its scrape gave up finds no one: dropped.
                if let Some(tx) = self.scrapes.borrow().get(&seq) {
                    let _ = tx.try_send(stats);
                }
            }
        }
    }

    pub fn request_id(&self) -> RequestId {
        self.request_ids.next()
    }
}

/// Takes up to `expected` replies from `rx` within `wait`, handing each to
/// `on_reply`; returns how many did not come (a shard that does not answer
/// in time is counted, not waited for).
async fn gather<T>(
    rx: &glommio::channels::local_channel::LocalReceiver<T>,
    expected: usize,
    wait: std::time::Duration,
    mut on_reply: impl FnMut(T),
) -> usize {
    let mut missing = expected;
    let deadline = glommio::timer::sleep(wait);
    futures_lite::pin!(deadline);
    while missing > 0 {
        let next = futures_lite::future::or(async { rx.recv().await }, async {
            (&mut deadline).await;
            None
        })
        .await;
        match next {
            Some(reply) => {
                on_reply(reply);
                missing -= 1;
            }
            None => break,
        }
    }
    missing
}
