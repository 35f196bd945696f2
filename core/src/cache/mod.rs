//! The exact response cache: deterministic answers kept per shard and
//! replayed, opt-in per route (`models.<alias>.cache`).
//!
//! A request is looked up after admission (a hit still counts as a request
//! for request limits) and after input guardrails (the key is over what
//! would go upstream), under a key that names its caller's scope, so two
//! tenants never share an entry unless the route says `scope: global`. A
//! hit costs no upstream call and no tokens; it is relayed like an
//! upstream's answer ([`crate::gateway`]'s replay), so output guardrails
//! and the tool policy judge it for the caller at hand. A miss's answer is
//! kept once the client has it whole, as OpenAI chat JSON, whichever
//! dialect and mode it came in: a streamed answer can be replayed whole
//! and the reverse.
//!
//! Entries live on the shard that made them (nothing is shared or locked
//! on the request path); the route's bounds are split over the shards. A
//! new config generation drops them all; the admin API purges by model or
//! scope on every shard.

pub mod entries;
pub mod key;

pub use entries::{Entry, Purge, ShardEntries};
pub use key::Key;

use crate::config::cache::CacheScope;
use crate::config::ModelRoute;
use shardgate_policy::Actor;
use shardgate_proto::json::Member;
use shardgate_proto::openai::Usage;
use std::rc::Rc;

/// What the cache makes of one call; its `x-shardgate-cache` header.
pub enum Decision {
    /// Answered from this entry.
    Hit(Rc<Entry>),
    /// The route answers; its answer is kept under `key`. `refresh`: the
    /// client said `no-cache`, so the entry was not read, only replaced.
    Fill { key: Key, refresh: bool },
    /// Neither read nor written: not deterministic, or `no-store`.
    Bypass,
}

impl Decision {
    pub fn header(&self) -> &'static str {
        match self {
            Decision::Hit(_) => "hit",
            Decision::Fill { refresh: false, .. } => "miss",
            Decision::Fill { refresh: true, .. } | Decision::Bypass => "bypass",
        }
    }
}

/// An answer read for the cache from a miss's relay: OpenAI chat (or
/// embeddings) JSON, before guardrails, with what it used and the target
/// that made it.
#[derive(Debug)]
pub struct Captured {
    pub answer: Vec<u8>,
    pub usage: Option<Usage>,
    pub served_by: String,
}

/// The scope an entry is stored under for `actor`: its tenant, team or key
/// as the route says (a key without the tenant or team asked for is its
/// own scope), or `global`. Open admission (no keys) is one caller.
pub fn scope_of(scope: CacheScope, actor: Option<&Actor>) -> String {
    let Some(a) = actor else {
        return "open".to_owned();
    };
    let own = || format!("key:{}", a.key_id);
    match scope {
        CacheScope::Global => "global".to_owned(),
        CacheScope::Key => own(),
        CacheScope::Team => a.team.as_ref().map_or_else(own, |t| format!("team:{t}")),
        CacheScope::Tenant => a
            .tenant
            .as_ref()
            .map_or_else(own, |t| format!("tenant:{t}")),
    }
}

/// What names a route's answers: its endpoint, alias and targets (an
/// answer from a route whose targets changed is another answer).
pub fn route_id(endpoint: &str, alias: &str, route: &ModelRoute) -> Vec<u8> {
    let mut id = Vec::with_capacity(64);
    id.extend_from_slice(endpoint.as_bytes());
    id.push(0);
    id.extend_from_slice(alias.as_bytes());
    for t in &route.targets {
        id.push(0);
        id.extend_from_slice(t.served_by.as_bytes());
    }
    id
}

/// Looks the call up: `Bypass` for what may not be cached, else a hit or
/// what to fill.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    entries: &mut ShardEntries,
    generation: u64,
    body: &[u8],
    members: &[Member],
    sampling: key::Sampling,
    route: &[u8],
    alias: &str,
    scope: &str,
    directives: key::Directives,
) -> Decision {
    if directives.no_store {
        return Decision::Bypass;
    }
    let Ok(key) = key::key(body, members, sampling, route, scope) else {
        return Decision::Bypass;
    };
    if directives.no_cache {
        return Decision::Fill { key, refresh: true };
    }
    match entries.get(generation, alias, &key, crate::deadline::coarse_now()) {
        Some(e) => Decision::Hit(e),
        None => Decision::Fill {
            key,
            refresh: false,
        },
    }
}
