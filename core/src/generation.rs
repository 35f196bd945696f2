//! A config generation: one config and every table derived from it, swapped
//! whole when the config is reloaded.
//!
//! Each request takes an `Rc` to the generation current when it started and
//! keeps it to its end, so a reload never changes a request under way: a
//! stream started on the old providers and models finishes on them. Provider
//! indexes are the generation's own; what outlives a generation (idle
//! upstream connections, budget ledgers, keys) is keyed by what it is (an
//! endpoint, a scope), never by an index.

use crate::client::{Endpoint, Pool};
use crate::config::{Config, ProviderKind};
use crate::gateway::PassHeads;
use std::sync::Arc;

pub struct Generation {
    /// 1 for the config the gateway started with, then one more per reload.
    pub number: u64,
    pub config: Arc<Config>,
    /// One per provider; `None` for in-process providers.
    pub endpoints: Vec<Option<Endpoint>>,
    /// One per provider: pass-through head prefixes, where they are fixed.
    pub pass_heads: Vec<Option<PassHeads>>,
    /// Pre-rendered `/v1/models` body.
    pub models_body: Vec<u8>,
    /// This shard's copy of the config's guardrails: a copy's automata
    /// keep their scratch space per copy, so no shard waits on another's.
    pub guardrails: shardgate_policy::guardrails::Guardrails,
    /// Each check's webhook, by check index, with its endpoint in this
    /// shard's pool.
    pub webhooks: Vec<Option<crate::guardrails::webhook::Webhook>>,
}

impl Generation {
    /// `upstream_tls` has one entry per provider of `config` (a client TLS
    /// config for HTTPS upstreams). Each upstream's idle connections are
    /// found in `pool` by its endpoint, so connections made under an older
    /// generation serve this one too.
    pub fn new(
        number: u64,
        config: Arc<Config>,
        upstream_tls: &[Option<Arc<rustls::ClientConfig>>],
        pool: &Pool,
    ) -> Self {
        let endpoints = config
            .providers
            .iter()
            .zip(upstream_tls)
            .map(|(p, tls)| match &p.kind {
                ProviderKind::Http(h) => Some(pool.endpoint(h, tls.clone())),
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
        Generation {
            number,
            models_body: crate::gateway::models::render(&config),
            guardrails: (*config.guardrails).clone(),
            webhooks: config
                .guardrail_webhooks
                .iter()
                .map(|w| {
                    w.as_ref().map(|w| {
                        // A TLS config only for https hooks; one that cannot
                        // be built leaves the hook failing (`on_error`).
                        let tls = w
                            .url
                            .tls
                            .then(|| crate::tls::client_config(None).ok())
                            .flatten();
                        crate::guardrails::webhook::Webhook {
                            ep: pool.endpoint_at(&w.url, None, tls),
                            timeout: w.timeout,
                            on_error: w.on_error,
                            parallel: w.parallel,
                            headers: w.headers.clone(),
                        }
                    })
                })
                .collect(),
            config,
            endpoints,
            pass_heads,
        }
    }
}
