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
pub mod shared;

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
    /// Answered from this entry (kept under `key`).
    Hit { entry: Rc<Entry>, key: Key },
    /// The route answers; its answer is kept under `key`, unless the
    /// shard's entries were purged since (`epoch`). `refresh`: the client
    /// said `no-cache`, so the entry was not read, only replaced.
    /// `shared`: the shared tier's purge generation its lookup saw (the
    /// answer is shared only under it).
    Fill {
        key: Key,
        refresh: bool,
        epoch: u64,
        shared: Option<u64>,
    },
    /// Neither read nor written: not deterministic, or `no-store`.
    Bypass,
}

impl Decision {
    pub fn header(&self) -> &'static str {
        match self {
            Decision::Hit { .. } => "hit",
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
    match (scope, &a.tenant, &a.team) {
        (CacheScope::Global, ..) => "global".to_owned(),
        (CacheScope::Key, ..) => own(),
        // Team names repeat across tenants: a team is its tenant's.
        (CacheScope::Team, Some(tenant), Some(team)) => format!("tenant:{tenant}/team:{team}"),
        (CacheScope::Team, None, Some(team)) => format!("team:{team}"),
        (CacheScope::Tenant, Some(tenant), _) => format!("tenant:{tenant}"),
        (CacheScope::Team | CacheScope::Tenant, ..) => own(),
    }
}

/// What a caller's policies say of the response cache, as admission
/// found it (owned: it outlives the policies' borrow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CallerCache {
    /// Nothing: the route decides.
    #[default]
    Silent,
    /// Never cached (`cache: false`).
    Out,
    /// Cached on routes without a `cache:` of their own, with the
    /// policy's time and scope.
    In {
        ttl: std::time::Duration,
        scope: CacheScope,
    },
}

impl CallerCache {
    /// The word of the caller's policies (read at compile).
    pub fn of(word: shardgate_policy::CacheWord) -> Self {
        use shardgate_policy::CacheWord;
        match word {
            CacheWord::Silent => CallerCache::Silent,
            CacheWord::Out => CallerCache::Out,
            CacheWord::In { ttl, scope } => CallerCache::In {
                ttl: ttl.unwrap_or(DEFAULT_TTL),
                scope,
            },
        }
    }
}

/// A policy's opt-in keeps answers this long unless it says otherwise.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The cache settings for a call: none when the caller's policies keep
/// it out, the route's own when it has `cache:`, else the policy's
/// opt-in (with the default bounds), else none.
pub fn settings_for(
    caller: CallerCache,
    route: Option<&crate::config::cache::CacheSettings>,
) -> Option<crate::config::cache::CacheSettings> {
    match (caller, route) {
        (CallerCache::Out, _) => None,
        (_, Some(r)) => Some(*r),
        (CallerCache::In { ttl, scope }, None) => Some(crate::config::cache::CacheSettings {
            ttl,
            scope,
            max_entries: 10_000,
            max_bytes: 64 << 20,
            sampled: false,
            shared: None,
        }),
        (CallerCache::Silent, None) => None,
    }
}

/// The set of entries answers of policy opt-ins are kept in, on routes
/// without a `cache:` of their own: one set, one bound, for all of them
/// (keys still name the route, so routes never share an entry).
pub const POLICY_ENTRIES: &str = "";

/// The set of entries a call on route `alias` uses.
pub fn entries_of<'a>(alias: &'a str, route: &crate::config::ModelRoute) -> &'a str {
    if route.cache.is_some() {
        alias
    } else {
        POLICY_ENTRIES
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
    headers: &[(&str, &[u8])],
    directives: key::Directives,
) -> Decision {
    if directives.no_store {
        return Decision::Bypass;
    }
    let Ok(key) = key::key(body, members, sampling, route, scope, headers) else {
        return Decision::Bypass;
    };
    let found = if directives.no_cache {
        None
    } else {
        entries.get(generation, alias, &key, crate::deadline::coarse_now())
    };
    match found {
        Some(entry) => Decision::Hit { entry, key },
        None => Decision::Fill {
            key,
            refresh: directives.no_cache,
            epoch: entries.epoch(generation),
            shared: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(tenant: Option<&str>, team: Option<&str>) -> Actor {
        Actor::new(shardgate_policy::ActorFields {
            key_id: "k1".into(),
            team: team.map(Into::into),
            tenant: tenant.map(Into::into),
            app: None,
            environment: None,
        })
    }

    #[test]
    fn a_scope_never_spans_tenants_unless_global() {
        let acme_ml = actor(Some("acme"), Some("ml"));
        let globex_ml = Actor::new(shardgate_policy::ActorFields {
            key_id: "k2".into(),
            ..(*actor(Some("globex"), Some("ml"))).clone()
        });
        for scope in [CacheScope::Tenant, CacheScope::Team, CacheScope::Key] {
            assert_ne!(
                scope_of(scope, Some(&acme_ml)),
                scope_of(scope, Some(&globex_ml))
            );
        }
        assert_eq!(
            scope_of(CacheScope::Team, Some(&acme_ml)),
            "tenant:acme/team:ml"
        );
        assert_eq!(scope_of(CacheScope::Tenant, Some(&acme_ml)), "tenant:acme");
        // A key without what the scope asks for is its own scope.
        assert_eq!(
            scope_of(CacheScope::Tenant, Some(&actor(None, Some("ml")))),
            "key:k1"
        );
        assert_eq!(
            scope_of(CacheScope::Team, Some(&actor(Some("acme"), None))),
            "key:k1"
        );
        assert_eq!(scope_of(CacheScope::Global, Some(&acme_ml)), "global");
        assert_eq!(scope_of(CacheScope::Tenant, None), "open");
    }
}
