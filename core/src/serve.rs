//! Starting and stopping the gateway: bind every client listener once per
//! shard and each admin listener once, start the shards and (with an admin
//! listener) the ops executor, then wait on the main thread for signals
//! (shutdown) and certificate changes (reload), which reach every executor
//! as control messages.

use crate::admission::Persist;
use crate::config::{Config, ListenerRole};
use crate::mesh;
use crate::runtime::{self, Control, ExecutorSettings, ShardHandle};
use crate::server::accept_loop;
use crate::shard::{Duty, Shard};
use crate::store::{Store, KEYS_FALLBACK_POLL, KEYS_POLL_INTERVAL};
use crate::tls::{self, CertWatch, TlsError};
use glommio::sync::Gate;
use shardgate_policy::KeyStore;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS for listener {addr}: {source}")]
    Tls { addr: SocketAddr, source: TlsError },
    #[error("TLS for provider {provider}: {source}")]
    UpstreamTls { provider: String, source: TlsError },
    #[error("cannot start shard {id}: {source}")]
    Shard { id: usize, source: std::io::Error },
    #[error("cannot start the ops executor: {0}")]
    Ops(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("key store: {0}")]
    Keys(#[from] shardgate_policy::KeyStoreError),
    #[error("{who} stopped: {reason}")]
    Stopped { who: String, reason: String },
    #[error("policies: {0}")]
    Policies(#[from] shardgate_policy::PolicyError),
    #[error("{0}")]
    Mcp(#[from] crate::mcp::HubError),
    #[error("{0}")]
    Audit(#[from] crate::audit::writer::AuditError),
    #[error("cannot start the cluster node thread: {0}")]
    Cluster(std::io::Error),
    #[error("cannot open the stored responses (responses.log): {0}")]
    Conversations(std::io::Error),
}

pub struct Options {
    pub executor: ExecutorSettings,
    /// The file the config came from, read again on SIGHUP (None: the
    /// bundled default, which does not change).
    pub config_path: Option<std::path::PathBuf>,
    /// The open store: keys and usage at start, the usage writer, the key
    /// log watcher.
    pub store: Store,
}

/// Runs the gateway until SIGTERM or SIGINT, then drains and returns.
/// `on_listening` is told every bound address (port 0 resolved) once all
/// sockets listen.
pub fn run(
    config: Config,
    opts: Options,
    on_listening: impl FnOnce(&[SocketAddr]),
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let shards = config.shards;

    let mut tls_configs = Vec::new();
    let mut watches = Vec::new();
    for l in &config.listeners {
        match &l.tls {
            None => tls_configs.push(None),
            Some(t) => {
                let cfg = tls::server_config(t).map_err(|source| ServeError::Tls {
                    addr: l.addr,
                    source,
                })?;
                tls_configs.push(Some(cfg));
                watches.push((tls_configs.len() - 1, t.clone(), CertWatch::new(t)));
            }
        }
    }
    let upstream_tls = upstream_tls(&config)?;

    // Admin listeners are served by the ops executor alone: one socket
    // each. Every other listener has a socket per shard (SO_REUSEPORT).
    let ops = config
        .listeners
        .iter()
        .any(|l| l.role == ListenerRole::Admin);
    // sockets[listener]: (listener index, its sockets)
    let mut sockets = Vec::new();
    let mut ops_sockets = Vec::new();
    let mut bound = Vec::new();
    for (index, l) in config.listeners.iter().enumerate() {
        let copies = if l.role == ListenerRole::Admin {
            1
        } else {
            shards
        };
        let socks =
            runtime::bind_listeners(l.addr, copies, 4096).map_err(|source| ServeError::Bind {
                addr: l.addr,
                source,
            })?;
        let addr = socks
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(l.addr);
        bound.push(addr);
        if l.role == ListenerRole::Admin {
            ops_sockets.extend(socks.into_iter().map(|s| (index, s)));
        } else {
            sockets.push((index, socks.into_iter()));
        }
    }

    let mesh = mesh::builder(shards, ops);
    let mut store = opts.store;
    let keys = KeyStore::from_records(store.recovered.keys.iter().cloned())?;
    let mut known_keys = known_keys(store.recovered.keys.iter());
    let policies = shardgate_policy::PolicySet::compile(&config.policies)?;
    if policies.policies().iter().any(|p| p.limits.limits_tokens()) {
        // The tokenizers' tables take tens of milliseconds to build (more in
        // a debug build). Built by a shard's first token-limited request,
        // they stall that shard, and a bucket owner stalled past a lease
        // request's wait answers 429 within the limit.
        shardgate_policy::warm_up();
    }
    if store.recovered.keys_dropped_bytes + store.recovered.usage_dropped_bytes > 0 {
        log::warn!(
            "store: cut {} damaged bytes from keys.log and {} from usage.log (saved beside them)",
            store.recovered.keys_dropped_bytes,
            store.recovered.usage_dropped_bytes
        );
    }
    let restored = Arc::new(std::mem::take(&mut store.recovered.usage));
    let (mcp_hub, mcp_threads) = crate::mcp::Hub::start(&config)?;
    let auditor = match &config.audit {
        Some(a) => Some(crate::audit::writer::AuditWriter::start(a)?),
        None => None,
    };
    // With a cluster, the node thread and one channel from it into each
    // shard.
    let mut cluster_ends: Vec<Option<runtime::WakingReceiver<crate::cluster::FromNode>>> =
        (0..shards).map(|_| None).collect();
    let cluster = match &config.cluster {
        Some(c) => {
            let mut senders = Vec::with_capacity(shards);
            for end in cluster_ends.iter_mut() {
                let (tx, rx) = runtime::waking_channel();
                senders.push(tx);
                *end = Some(rx);
            }
            let dir = crate::store::DataDir::new(&config.store.dir);
            let link = crate::cluster::start(c, dir, store.recovered.keys.clone(), senders)
                .map_err(ServeError::Cluster)?;
            Some(link)
        }
        None => None,
    };
    // The response cache's shared tier: a few threads on the cluster's
    // Redis (connected on first use).
    let mut purge_ends: Vec<Option<runtime::WakingReceiver<u64>>> =
        (0..shards).map(|_| None).collect();
    let shared_cache = match &config.cluster {
        Some(c) => {
            let mut senders = Vec::with_capacity(shards);
            for end in purge_ends.iter_mut() {
                let (tx, rx) = runtime::waking_channel();
                senders.push(tx);
                *end = Some(rx);
            }
            Some(
                crate::cache::shared::SharedCache::start(&c.redis, shards.min(4), senders)
                    .map_err(ServeError::Cluster)?,
            )
        }
        None => None,
    };
    // The stored Responses turns: one thread, a reply channel per shard.
    let mut conversation_ends = Vec::with_capacity(shards);
    let mut conversation_senders = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = runtime::waking_channel();
        conversation_senders.push(tx);
        conversation_ends.push(Some(rx));
    }
    let conversations = crate::store::conversations::start(
        &config.store.dir,
        crate::store::conversations::Limits {
            max_bytes: config.store.responses_max_bytes,
        },
        conversation_senders,
        config.cluster.as_ref().map(|c| c.redis.clone()),
    )
    .map_err(ServeError::Conversations)?;
    let (signals, hangups) = signal_channel()?;
    let mut handles: Vec<ShardHandle> = Vec::with_capacity(shards);
    let (exits_tx, exits) = crossbeam::channel::unbounded::<ShardExit>();
    let (reload_tx, reload_asks) = crossbeam::channel::unbounded::<crate::shard::ReloadAsk>();
    log_placement(&config.placement, opts.executor.pin, ops);
    // Each executor's own handles on what the process shares.
    let seed = || crate::shard::Seed {
        config: config.clone(),
        tls: tls_configs.clone(),
        upstream_tls: upstream_tls.clone(),
        policies: policies.clone(),
        keys: keys.clone(),
        persist: Persist {
            tx: store.usage.sender(),
            restored: restored.clone(),
        },
        mcp: mcp_hub.clone(),
        audit: auditor.as_ref().zip(config.audit.as_ref()).map(|(w, a)| {
            crate::audit::ShardAudit::new(w.sender(), w.stats.clone(), a.on_backpressure)
        }),
        reloads: reload_tx.clone(),
    };
    for id in 0..shards {
        let mine: Vec<_> = sockets
            .iter_mut()
            .filter_map(|(index, socks)| Some((*index, socks.next()?)))
            .collect();
        let seed = seed();
        let mesh = mesh.clone();
        let exit = ExitNotice {
            who: Duty::Serve.name(id),
            tx: exits_tx.clone(),
        };
        let cluster = cluster
            .clone()
            .zip(cluster_ends.get_mut(id).and_then(Option::take));
        let conversations = (
            conversations.ask.clone(),
            conversation_ends.get_mut(id).and_then(Option::take),
        );
        let shared_cache = shared_cache
            .clone()
            .zip(purge_ends.get_mut(id).and_then(Option::take));
        let responses_ttl = config.store.responses_ttl;
        let keeps_responses = config.store.responses_max_bytes > 0;
        let shares_responses = config.cluster.is_some();
        let cpu = config.placement.cpu_of(id);
        let handle = runtime::spawn_shard(
            id,
            opts.executor.pin.then_some(cpu),
            opts.executor,
            move |control| async move {
                let shard = Shard::new(id, Duty::Serve, seed);
                if let Some((shared, purges)) = shared_cache {
                    shard.set_shared_cache(shared);
                    let s = shard.clone();
                    glommio::spawn_local(async move {
                        while purges.recv().await.is_some() {
                            s.cache.borrow_mut().drop_all();
                        }
                    })
                    .detach();
                }
                if let (ask, Some(replies)) = conversations {
                    let link = crate::gateway::conversation::Link::new(
                        ask,
                        id,
                        responses_ttl,
                        keeps_responses,
                        shares_responses,
                    );
                    shard.set_conversations(link.clone());
                    glommio::spawn_local(async move {
                        while let Some(r) = replies.recv().await {
                            link.on_reply(r);
                        }
                    })
                    .detach();
                }
                if let Some((link, from_node)) = cluster {
                    shard.admission.set_cluster(link);
                    let s = shard.clone();
                    glommio::spawn_local(async move {
                        while let Some(msg) = from_node.recv().await {
                            s.admission.on_cluster(msg);
                        }
                    })
                    .detach();
                }
                shard_main(shard, mine, control, mesh, &exit).await;
                drop(exit);
            },
        )
        .map_err(|source| ServeError::Shard { id, source })?;
        handles.push(handle);
    }
    if ops {
        // Made after every shard, so it is the mesh's last peer.
        let seed = seed();
        let mesh = mesh.clone();
        let exit = ExitNotice {
            who: Duty::Ops.name(shards),
            tx: exits_tx.clone(),
        };
        let cluster = cluster.clone();
        let shared_cache = shared_cache.clone();
        let listeners = std::mem::take(&mut ops_sockets);
        let handle = runtime::spawn_ops(move |control| async move {
            let shard = Shard::new(shards, Duty::Ops, seed);
            if let Some(shared) = shared_cache {
                shard.set_shared_cache(shared);
            }
            if let Some(link) = cluster {
                shard.admission.set_cluster(link);
            }
            shard_main(shard, listeners, control, mesh, &exit).await;
            drop(exit);
        })
        .map_err(ServeError::Ops)?;
        handles.push(handle);
    }
    drop(exits_tx);
    on_listening(&bound);

    let reload_every = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| t.reload_interval))
        .min()
        .unwrap_or(Duration::from_secs(3600));
    let (key_changes, keys_poll) = match store.keys.changes() {
        Ok(rx) => (rx, KEYS_FALLBACK_POLL),
        Err(e) => {
            log::warn!(
                "keys.log: no change notices ({e}); looking for changes every {KEYS_POLL_INTERVAL:?}"
            );
            (crossbeam::channel::never(), KEYS_POLL_INTERVAL)
        }
    };
    // Stored provider keys changed by `shardgate providers` reload the
    // config (a stat a second; a reload of any cause takes the file as it
    // is then).
    let tick = reload_every.min(keys_poll).min(PROVIDER_KEYS_POLL);
    let provider_keys = config.store.dir.join(crate::store::provider_keys::FILE);
    let mut provider_keys_seen = file_signature(&provider_keys);
    // Fail fast: a shard that stops on its own (a failed start, a panic)
    // stops the process, rather than leaving its share of connections and
    // buckets unserved.
    let mut failure = None;
    let mut generation = 1;
    loop {
        crossbeam::channel::select! {
            recv(signals) -> sig => {
                if let Ok(sig) = sig {
                    log::info!(
                        "signal {sig}: draining (up to {:?})",
                        config.limits.drain_timeout
                    );
                }
                break;
            }
            recv(exits) -> exit => {
                let (who, reason) = match exit {
                    Ok(ShardExit { who, reason }) => (who, reason),
                    Err(_) => ("every shard".to_owned(), "gone".to_owned()),
                };
                log::error!("{who} stopped: {reason}; stopping the gateway");
                failure = Some(ServeError::Stopped { who, reason });
                break;
            }
            recv(key_changes) -> _ => reload_keys(&mut store, &handles, &mut known_keys, auditor.as_ref(), cluster.as_ref()),
            recv(hangups) -> _ => {
                provider_keys_seen = file_signature(&provider_keys);
                let _ = reload(&config, opts.config_path.as_deref(), &mut generation, &handles, auditor.as_ref(), "SIGHUP");
            }
            recv(reload_asks) -> ask => {
                if let Ok(ask) = ask {
                    provider_keys_seen = file_signature(&provider_keys);
                    let done = reload(&config, opts.config_path.as_deref(), &mut generation, &handles, auditor.as_ref(), ask.by);
                    let _ = ask.reply.send(done);
                }
            }
            default(tick) => {
                reload_certs(&mut watches, &handles);
                reload_keys(&mut store, &handles, &mut known_keys, auditor.as_ref(), cluster.as_ref());
                let now = file_signature(&provider_keys);
                if now != provider_keys_seen {
                    provider_keys_seen = now;
                    let _ = reload(&config, opts.config_path.as_deref(), &mut generation, &handles, auditor.as_ref(), "shardgate providers");
                }
            }
        }
    }
    for h in &handles {
        let _ = h.control.send(Control::Shutdown);
    }
    // Shards stop waiting for their connections after the drain timeout.
    // Past that and a margin, or at a second signal, the stop is forced:
    // exit at once, and not with success.
    let (drained_tx, drained) = crossbeam::channel::bounded::<()>(1);
    let deadline = config.limits.drain_timeout + DRAIN_MARGIN;
    std::thread::spawn(move || {
        crossbeam::channel::select! {
            recv(signals) -> _ => log::warn!("second signal: exiting without waiting for the drain"),
            recv(drained) -> _ => return,
            default(deadline) => log::error!("shards did not stop within the drain timeout: exiting"),
        }
        std::process::exit(FORCED_EXIT);
    });
    for h in handles {
        if let Err(e) = h.join() {
            log::error!("shard ended with an error: {e}");
        }
    }
    let _ = drained_tx.send(());
    // Shards are done with them: stdio MCP servers stop in order (stdin
    // closed, SIGTERM, SIGKILL), so none outlives the gateway.
    mcp_hub.stop();
    drop(mcp_hub);
    for t in mcp_threads {
        let _ = t.join();
    }
    // Shards handed over their last events while draining.
    if let Some(a) = auditor {
        a.shutdown();
    }
    // Shards flushed their counters while draining; now everything queued
    // is written and synced.
    match store.usage.shutdown() {
        Ok(stats) => log::info!("store: closed ({stats:?})"),
        Err(e) => log::error!("store: final flush failed: {e}"),
    }
    log::info!("stopped");
    failure.map_or(Ok(()), Err)
}

/// How long past the drain timeout shards may take to hand over their last
/// counters before the stop is forced.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// The exit status of a forced stop (a second signal, or shards that did
/// not stop): not success, since in-flight work and the last usage may be
/// lost.
const FORCED_EXIT: i32 = 130;

/// A shard (or the ops executor) stopped while the gateway was serving.
struct ShardExit {
    who: String,
    reason: String,
}

/// Held by an executor for its whole life: dropping it (a return, or a
/// panic unwinding) tells the main thread it has stopped.
struct ExitNotice {
    who: String,
    tx: crossbeam::channel::Sender<ShardExit>,
}

impl ExitNotice {
    fn fail(&self, reason: String) {
        let _ = self.tx.send(ShardExit {
            who: self.who.clone(),
            reason,
        });
    }
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        self.fail("it exited".to_owned());
    }
}

/// One start line says where every shard runs, so an operator can check it
/// against the CPU set they gave the process.
fn log_placement(placement: &crate::placement::Placement, pin: bool, ops: bool) {
    use crate::placement::CpuList;
    use std::fmt::Write;
    if ops {
        log::info!(
            "admin listeners: the ops executor, unpinned on CPUs {}",
            CpuList(placement.cpus.clone())
        );
    }
    if !pin {
        log::info!(
            "{} shards, not pinned (--no-pin), on CPUs {}",
            placement.shards,
            CpuList(placement.cpus.clone())
        );
        return;
    }
    let mut line = String::new();
    for id in 0..placement.shards {
        let sep = if id == 0 { "" } else { ", " };
        let _ = write!(line, "{sep}shard {id} on CPU {}", placement.cpu_of(id));
    }
    log::info!("placement: {line}");
    if placement.shards > placement.cpus.len() {
        log::warn!(
            "{} shards on {} CPUs: some shards share a CPU",
            placement.shards,
            placement.cpus.len()
        );
    }
}

/// Keys created or revoked by `shardgate keys` while serving: every shard
/// gets the new table within a poll interval.
/// Key ids known to the running gateway, and whether each is revoked: what
/// a change of `keys.log` created or revoked, for the audit log.
type KnownKeys = std::collections::HashMap<String, bool>;

fn known_keys<'a>(records: impl Iterator<Item = &'a shardgate_policy::KeyRecord>) -> KnownKeys {
    records.map(|r| (r.key_id.clone(), r.revoked)).collect()
}

fn reload_keys(
    store: &mut Store,
    handles: &[ShardHandle],
    known: &mut KnownKeys,
    auditor: Option<&crate::audit::writer::AuditWriter>,
    cluster: Option<&crate::cluster::ClusterLink>,
) {
    let records = match store.keys.poll() {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            log::error!("keys.log: {e}; keeping the current keys");
            return;
        }
    };
    let now = known_keys(records.iter());
    if let Some(a) = auditor {
        let created: Vec<&String> = now.keys().filter(|k| !known.contains_key(*k)).collect();
        let revoked: Vec<&String> = now
            .iter()
            .filter(|(k, r)| **r && known.get(*k).is_some_and(|was| !was))
            .map(|(k, _)| k)
            .collect();
        if !created.is_empty() || !revoked.is_empty() {
            let detail = serde_json::json!({"created": created, "revoked": revoked});
            a.send_line(crate::audit::admin_event(
                "keys_changed",
                "shardgate keys (keys.log)",
                detail,
            ));
        }
    }
    *known = now;
    if let Some(c) = cluster {
        let _ = c.tx.send(crate::cluster::ToNode::Keys(records.clone()));
    }
    match KeyStore::from_records(records) {
        Ok(keys) => {
            log::info!("keys reloaded: {} keys", keys.len());
            for h in handles {
                let _ = h.control.send(Control::Keys(Box::new(keys.clone())));
            }
        }
        Err(e) => log::error!("keys.log: {e}; keeping the current keys"),
    }
}

fn reload_certs(
    watches: &mut [(usize, crate::config::ListenerTls, CertWatch)],
    handles: &[ShardHandle],
) {
    for (listener, tls_cfg, watch) in watches.iter_mut() {
        if !watch.changed() {
            continue;
        }
        match tls::server_config(tls_cfg) {
            Ok(config) => {
                log::info!("listener {listener}: TLS certificates reloaded");
                for h in handles {
                    let _ = h.control.send(Control::TlsReload {
                        listener: *listener,
                        config: config.clone(),
                    });
                }
            }
            Err(e) => log::error!(
                "listener {listener}: TLS reload failed, keeping the old certificates: {e}"
            ),
        }
    }
}

/// SIGTERM and SIGINT (stop), and SIGHUP (reload the config), delivered
/// on two channels by a watcher thread.
fn signal_channel() -> Result<
    (
        crossbeam::channel::Receiver<i32>,
        crossbeam::channel::Receiver<()>,
    ),
    ServeError,
> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServeError::Signals)?;
    let (tx, rx) = crossbeam::channel::unbounded();
    let (hup_tx, hup_rx) = crossbeam::channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let sent = if sig == SIGHUP {
                    hup_tx.send(()).is_ok()
                } else {
                    tx.send(sig).is_ok()
                };
                if !sent {
                    break;
                }
            }
        })
        .map_err(ServeError::Signals)?;
    Ok((rx, hup_rx))
}

/// A client TLS config per provider of `config` (None for plain-HTTP and
/// in-process ones).
fn upstream_tls(config: &Config) -> Result<Vec<Option<Arc<rustls::ClientConfig>>>, ServeError> {
    let mut out = Vec::with_capacity(config.providers.len());
    for p in &config.providers {
        out.push(match &p.kind {
            crate::config::ProviderKind::Http(h) if h.base.tls => {
                Some(tls::client_config(h.ca_file.as_deref()).map_err(|source| {
                    ServeError::UpstreamTls {
                        provider: p.name.clone(),
                        source,
                    }
                })?)
            }
            _ => None,
        });
    }
    Ok(out)
}

/// How often the main thread looks at the stored provider keys' file.
const PROVIDER_KEYS_POLL: Duration = Duration::from_secs(1);

/// What tells one version of a file from another without reading it.
fn file_signature(path: &std::path::Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// How long the main thread waits for every shard to take a new generation
/// before it reports the reload as partly applied.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// Reloads the config file for `by` (SIGHUP, the admin API), audits it,
/// and says the generation now serving, or why the file was refused (or
/// did not reach every shard in time).
fn reload(
    running: &Config,
    path: Option<&std::path::Path>,
    generation: &mut u64,
    handles: &[ShardHandle],
    auditor: Option<&crate::audit::writer::AuditWriter>,
    by: &'static str,
) -> Result<u64, String> {
    let Some(path) = path else {
        let why = "no config file to reload (started with the bundled config)".to_owned();
        log::warn!("{by}: {why}");
        return Err(why);
    };
    let done = match reload_config(running, path, *generation, handles) {
        Ok((number, reached)) => {
            *generation = number;
            if reached == handles.len() {
                Ok(number)
            } else {
                Err(format!(
                    "generation {number} reached {reached} of {} executors within {RELOAD_WAIT:?}",
                    handles.len()
                ))
            }
        }
        Err(why) => Err(why),
    };
    if let Some(a) = auditor {
        let mut detail = serde_json::json!({
            "path": path.display().to_string(),
            "generation": *generation,
            "applied": done.is_ok(),
        });
        if let Err(why) = &done {
            detail["refused"] = serde_json::Value::String(why.clone());
        }
        a.send_line(crate::audit::admin_event("config_reload", by, detail));
    }
    done
}

/// Reads the config file again and, when it is valid and changes nothing
/// that needs a restart, makes it every shard's current generation: the
/// new generation's number and how many shards took it in time. A refused
/// reload changes nothing and says why.
fn reload_config(
    running: &Config,
    path: &std::path::Path,
    current: u64,
    handles: &[ShardHandle],
) -> Result<(u64, usize), String> {
    let refuse = |why: String| {
        log::error!(
            "config reload from {} refused, generation {current} stays: {why}",
            path.display()
        );
        Err(why)
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return refuse(e.to_string()),
    };
    let changed = running.restart_only_changes(&config);
    if !changed.is_empty() {
        return refuse(format!(
            "{} can only change with a restart",
            changed.join(", ")
        ));
    }
    let policies = match shardgate_policy::PolicySet::compile(&config.policies) {
        Ok(p) => p,
        Err(e) => return refuse(format!("policies: {e}")),
    };
    if policies.policies().iter().any(|p| p.limits.limits_tokens()) {
        shardgate_policy::warm_up();
    }
    let upstream_tls = match upstream_tls(&config) {
        Ok(t) => t,
        Err(e) => return refuse(e.to_string()),
    };
    let number = current + 1;
    let (applied, acks) = crossbeam::channel::unbounded();
    let reload = crate::runtime::Reload {
        number,
        config: Arc::new(config),
        policies,
        upstream_tls,
        applied,
    };
    for h in handles {
        let _ = h.control.send(Control::Reload(Box::new(reload.clone())));
    }
    drop(reload);
    let deadline = std::time::Instant::now() + RELOAD_WAIT;
    let mut done = 0;
    while done < handles.len() {
        match acks.recv_deadline(deadline) {
            Ok(_) => done += 1,
            Err(_) => break,
        }
    }
    if done < handles.len() {
        log::error!(
            "config reload from {}: generation {number} on {done} of {} executors after {RELOAD_WAIT:?}",
            path.display(),
            handles.len()
        );
    } else {
        let ops = if done > running.shards {
            " and the ops executor"
        } else {
            ""
        };
        log::info!(
            "config reloaded from {}: generation {number} on all {} shards{ops}",
            path.display(),
            running.shards
        );
    }
    Ok((number, done))
}

/// An executor's life (a shard's, or the ops executor's): accept on its
/// listeners, apply control messages, and on shutdown stop accepting and
/// wait (up to the drain timeout) for its connections to finish.
async fn shard_main(
    shard: Rc<Shard>,
    listeners: Vec<(usize, std::net::TcpListener)>,
    control: runtime::ControlReceiver,
    mesh: mesh::Builder,
    exit: &ExitNotice,
) {
    // Every executor joins the mesh before serving, so no request can find
    // a peer missing.
    match mesh.join().await {
        Ok((senders, mut receivers)) => {
            let mesh = mesh::Mesh::new(senders, shard.config.shards);
            // Peers are ordered as the executors were made: shard i is
            // peer i (the first `shards` own the buckets, and the cluster's
            // node answers a shard by its id), the ops executor comes last
            // (its id is `shards`).
            if mesh.me() != shard.id {
                exit.fail(format!(
                    "took peer {} of the mesh instead of {}",
                    mesh.me(),
                    shard.id
                ));
                return;
            }
            shard.admission.set_mesh(mesh.clone());
            *shard.mesh.borrow_mut() = Some(mesh);
            for (_, rx) in receivers.streams() {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    while let Some(msg) = rx.recv().await {
                        shard.on_message(msg);
                    }
                })
                .detach();
            }
        }
        Err(e) => {
            // Without the mesh every shard would own every bucket, each
            // limit multiplied by the shard count: refuse to serve.
            exit.fail(format!("cannot join the quota mesh: {e}"));
            return;
        }
    }
    if shard.duty == Duty::Serve {
        glommio::spawn_local(persist(shard.clone())).detach();
        glommio::spawn_local(crate::gateway::health::run(shard.clone())).detach();
    }
    if let Some(audit) = shard.audit.clone() {
        let s = shard.clone();
        glommio::spawn_local(async move { audit.run(&s).await }).detach();
    }
    let gate = Rc::new(Gate::new());
    for (index, l) in listeners {
        let listener = runtime::adopt_listener(l);
        let (shard, gate) = (shard.clone(), gate.clone());
        let role = shard.config.listeners.get(index).map(|l| l.role);
        match role.unwrap_or_default() {
            ListenerRole::Api => glommio::spawn_local(accept_loop(
                shard,
                index,
                listener,
                gate,
                Rc::new(crate::gateway::ApiRouter),
            )),
            ListenerRole::Admin => glommio::spawn_local(accept_loop(
                shard,
                index,
                listener,
                gate,
                Rc::new(crate::admin::AdminRouter),
            )),
            ListenerRole::Mcp => glommio::spawn_local(accept_loop(
                shard,
                index,
                listener,
                gate,
                Rc::new(crate::mcp::endpoint::McpRouter),
            )),
        }
        .detach();
    }
    while let Some(msg) = control.recv().await {
        match msg {
            Control::TlsReload { listener, config } => {
                if let Some(slot) = shard.tls.get(listener) {
                    *slot.borrow_mut() = Some(config);
                }
            }
            Control::Keys(keys) => shard.admission.replace_keys(Rc::new(*keys)),
            Control::Reload(reload) => shard.reload(*reload),
            Control::Shutdown => break,
        }
    }
    shard.begin_shutdown();
    let drained = futures_lite::future::or(
        async {
            let _ = gate.close().await;
            true
        },
        async {
            glommio::timer::sleep(shard.config.limits.drain_timeout).await;
            false
        },
    )
    .await;
    if !drained {
        log::warn!(
            "{}: drain timeout with {} connections open; closing them",
            shard.duty.name(shard.id),
            shard.open_connections.get()
        );
    }
    shard.admission.persist_usage();
    shard.admission.persist_counters();
    if let Some(audit) = &shard.audit {
        // The events of requests that finished while draining.
        audit.drain().await;
    }
}

/// Settled usage goes to the store writer this often (so `kill -9` can lose
/// at most this much of it), and owned buckets' changed windows every
/// `COUNTER_EVERY` flushes; both once more at drain. Ended leases go back to
/// their owners every `LEASE_SWEEP_EVERY` flushes. The task ticks only
/// while there is something to do (`has_background_work`), so an idle
/// shard does not wake.
const USAGE_PERSIST_EVERY: Duration = Duration::from_millis(10);
const COUNTER_EVERY: u32 = 20;
const LEASE_SWEEP_EVERY: u32 = 100;

async fn persist(shard: Rc<Shard>) {
    let mut n = 0u32;
    while !shard.draining() {
        if !shard.admission.has_background_work() {
            // An idle shard sleeps here: nothing to write, nothing to return.
            futures_lite::future::or(shard.admission.activity(), shard.wait_shutdown()).await;
            continue;
        }
        glommio::timer::sleep(USAGE_PERSIST_EVERY).await;
        shard.admission.persist_usage();
        shard.admission.send_cluster_usage();
        n = n.wrapping_add(1);
        if n.is_multiple_of(COUNTER_EVERY) {
            shard.admission.persist_counters();
        }
        if n.is_multiple_of(LEASE_SWEEP_EVERY) {
            shard.admission.return_ended_leases();
        }
    }
}
