//! Everything one shard owns: its copy of the config, its upstream pools, its
//! listeners' TLS configs and its shutdown signal. Nothing here is shared with
//! another shard, so nothing here is locked.

use crate::admission::Admission;
use crate::client::{Endpoint, Pool};
use crate::config::{Config, ProviderKind};
use crate::gateway::PassHeads;
use crate::server::{RequestId, RequestIds};
use glommio::sync::Semaphore;
use shardgate_proto::json::tape::JsonParser;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

pub struct Shard {
    pub id: usize,
    /// Keys, policies and this shard's budget ledgers.
    pub admission: Admission,
    pub config: Arc<Config>,
    pub pool: Pool,
    /// One per provider; `None` for in-process providers.
    pub endpoints: Vec<Option<Endpoint>>,
    /// One per provider: pass-through head prefixes, where they are fixed.
    pub pass_heads: Vec<Option<PassHeads>>,
    /// Current TLS config per listener (`None` for plain listeners); replaced
    /// on certificate reload, read at each handshake.
    pub tls: Vec<RefCell<Option<Arc<rustls::ServerConfig>>>>,
    /// Pre-rendered `/v1/models` body.
    pub models_body: Vec<u8>,
    /// Closed at shutdown: every `wait_shutdown` returns at once after that.
    shutdown: Semaphore,
    draining: Cell<bool>,
    /// Connections currently open on this shard.
    pub open_connections: Cell<usize>,
    request_ids: RequestIds,
    /// simd-json buffers for request facts, warm across requests. Borrowed
    /// only between awaits.
    pub json: RefCell<JsonParser>,
}

impl Shard {
    pub fn new(
        id: usize,
        config: Arc<Config>,
        tls: Vec<Option<Arc<rustls::ServerConfig>>>,
        upstream_tls: &[Option<Arc<rustls::ClientConfig>>],
        policies: shardgate_policy::PolicySet,
        keys: shardgate_policy::KeyStore,
        persist: crate::admission::Persist,
    ) -> Rc<Self> {
        let endpoints = config
            .providers
            .iter()
            .zip(upstream_tls)
            .map(|(p, tls)| match &p.kind {
                ProviderKind::Http(h) => Some(Endpoint {
                    authority: h.base.authority(),
                    base: h.base.clone(),
                    tls: tls.clone(),
                }),
                ProviderKind::Mock(_) => None,
            })
            .collect();
        let pass_heads = config
            .providers
            .iter()
            .map(|p| match &p.kind {
                ProviderKind::Http(h) => PassHeads::new(h, &h.base.authority()),
                ProviderKind::Mock(_) => None,
            })
            .collect();
        let models_body = crate::gateway::models::render(&config);
        Rc::new(Self {
            id,
            admission: Admission::new(&config, policies, Rc::new(keys), persist),
            pool: Pool::new(config.providers.len(), config.upstream.clone()),
            endpoints,
            pass_heads,
            tls: tls.into_iter().map(RefCell::new).collect(),
            models_body,
            config,
            shutdown: Semaphore::new(0),
            draining: Cell::new(false),
            open_connections: Cell::new(0),
            request_ids: RequestIds::new(id),
            json: RefCell::new(JsonParser::default()),
        })
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    pub fn begin_shutdown(&self) {
        self.draining.set(true);
        self.shutdown.close();
    }

    /// Resolves when shutdown begins.
    pub async fn wait_shutdown(&self) {
        // Acquiring from a semaphore with no permits waits until `close`,
        // which fails every waiter at once: a broadcast without allocation.
        let _ = self.shutdown.acquire(1).await;
    }

    pub fn request_id(&self) -> RequestId {
        self.request_ids.next()
    }
}
