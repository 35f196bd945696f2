//! The MCP gateway: one Streamable HTTP endpoint (`/mcp`, both protocol
//! eras) in front of every server in `mcp_servers:`, with the caller's
//! tool policy applied to what is listed and what is called.
//!
//! - `endpoint`: the HTTP side: era, headers, sessions, errors, replies.
//! - `aggregate`: what the methods do across servers: merged lists,
//!   prefixed names, calls routed to their server.
//! - `upstream`: one message to one server in its own era, over `http`
//!   (Streamable HTTP) or `stdio` (a supervised child process).
//! - `session`: legacy session IDs, sealed, so no shard keeps a table.
//!
//! The process holds the [`Hub`] (session key, stdio supervisors); each
//! shard its [`McpShard`] (endpoints in its pool, what it learnt of each
//! server's era, its own sessions with handshake-era servers).

mod aggregate;
pub mod endpoint;
mod http;
pub mod session;
pub mod stdio;
mod upstream;

use crate::client::Pool;
use crate::config::{Config, McpTransport};
use session::SessionKey;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// What every shard shares: made on the main thread before shards start.
pub struct Hub {
    pub key: SessionKey,
    /// One per configured server; `Some` for stdio servers.
    stdio: Vec<Option<stdio::StdioServer>>,
    /// One per configured server; `Some` for https servers.
    tls: Vec<Option<Arc<rustls::ClientConfig>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("mcp session key in {dir}: {source}")]
    Key {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mcp_servers.{server}: TLS: {source}")]
    Tls {
        server: String,
        source: crate::tls::TlsError,
    },
    #[error("mcp_servers.{server}: cannot start its supervisor: {source}")]
    Spawn {
        server: String,
        source: std::io::Error,
    },
}

impl Hub {
    /// Loads (or makes) the session key and starts a supervisor per stdio
    /// server. The join handles are the caller's to wait on after
    /// [`Hub::stop`].
    pub fn start(
        config: &Config,
    ) -> Result<(Arc<Hub>, Vec<std::thread::JoinHandle<()>>), HubError> {
        let key = match &config.mcp.session_key {
            Some(s) => SessionKey::from_secret(s.expose()),
            // Nothing behind `/mcp`: its sessions need not outlive the
            // process, and the store gets no key file nobody uses.
            None if config.mcp.servers.is_empty() => SessionKey::ephemeral(),
            None => {
                SessionKey::load_or_create(&config.store.dir).map_err(|source| HubError::Key {
                    dir: config.store.dir.clone(),
                    source,
                })?
            }
        };
        let mut stdio = Vec::new();
        let mut tls = Vec::new();
        let mut joins = Vec::new();
        for s in &config.mcp.servers {
            match &s.transport {
                McpTransport::Stdio(cfg) => {
                    let (server, join) =
                        stdio::StdioServer::start(&s.name, cfg).map_err(|source| {
                            HubError::Spawn {
                                server: s.name.clone(),
                                source,
                            }
                        })?;
                    stdio.push(Some(server));
                    tls.push(None);
                    joins.push(join);
                }
                McpTransport::Http(h) => {
                    stdio.push(None);
                    tls.push(if h.url.tls {
                        Some(
                            crate::tls::client_config(h.ca_file.as_deref()).map_err(|source| {
                                HubError::Tls {
                                    server: s.name.clone(),
                                    source,
                                }
                            })?,
                        )
                    } else {
                        None
                    });
                }
            }
        }
        Ok((Arc::new(Hub { key, stdio, tls }), joins))
    }

    /// Stops every stdio server's child (stdin closed, SIGTERM, SIGKILL).
    pub fn stop(&self) {
        for s in self.stdio.iter().flatten() {
            s.stop();
        }
    }
}

/// A shard's view of the MCP servers. Shard-local: no locks.
pub struct McpShard {
    hub: Arc<Hub>,
    shard_id: usize,
    /// One per configured server; `Some` for HTTP servers.
    endpoints: Vec<Option<http::Target>>,
    /// One per configured server.
    known: RefCell<Vec<upstream::Known>>,
    /// Numbers this shard's upstream request ids and stdio tickets.
    next: Cell<u64>,
    /// Legacy clients' calls this shard relays, by session (hashed) and
    /// request id: a `notifications/cancelled` arriving on any shard
    /// reaches the call through the mesh.
    inflight: RefCell<HashMap<(u64, String), Rc<Cancel>>>,
}

/// Stops one call when fired (its relay waits on it).
#[derive(Default)]
pub struct Cancel {
    fired: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Cancel {
    fn fire(&self) {
        self.fired.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves once fired.
    pub async fn fired(&self) {
        std::future::poll_fn(|cx| {
            if self.fired.get() {
                std::task::Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// A registered in-flight call; unregistered when dropped.
pub struct Inflight<'a> {
    shard: &'a McpShard,
    key: (u64, String),
    pub cancel: Rc<Cancel>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.shard.inflight.borrow_mut().remove(&self.key);
    }
}

/// The key a legacy session's calls are known by across shards.
pub fn session_hash(session_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session_id.hash(&mut h);
    h.finish()
}

impl McpShard {
    pub fn new(hub: Arc<Hub>, config: &Config, pool: &Pool, shard_id: usize) -> Self {
        let endpoints = config
            .mcp
            .servers
            .iter()
            .zip(&hub.tls)
            .map(|(s, tls)| match &s.transport {
                McpTransport::Http(h) => Some(http::Target::new(
                    pool.endpoint_at(&h.url, h.ca_file.as_ref(), tls.clone()),
                    h,
                )),
                McpTransport::Stdio(_) => None,
            })
            .collect();
        McpShard {
            known: RefCell::new(
                config
                    .mcp
                    .servers
                    .iter()
                    .map(|_| upstream::Known::default())
                    .collect(),
            ),
            hub,
            shard_id,
            endpoints,
            next: Cell::new(1),
            inflight: RefCell::new(HashMap::new()),
        }
    }

    /// Registers a legacy client's call so that its cancellation finds it.
    pub fn register(&self, session: u64, id: &serde_json::Value) -> Inflight<'_> {
        let key = (session, id.to_string());
        let cancel = Rc::new(Cancel::default());
        self.inflight
            .borrow_mut()
            .insert(key.clone(), cancel.clone());
        Inflight {
            shard: self,
            key,
            cancel,
        }
    }

    /// Cancels the call of this shard's that is `session`'s request `id`
    /// (JSON text), if there is one.
    pub fn cancel_local(&self, session: u64, id: &str) {
        let found = self
            .inflight
            .borrow()
            .get(&(session, id.to_owned()))
            .cloned();
        if let Some(c) = found {
            c.fire();
        }
    }

    /// A number no other request on any shard gets.
    fn unique(&self) -> u64 {
        let n = self.next.get();
        self.next.set(n + 1);
        ((self.shard_id as u64) << 48) | n
    }
}

/// Awaits every future, in any order of completion; results in the
/// futures' order. For fanning one request out to every server.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
