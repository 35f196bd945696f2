//! The config file as written, and its validation into [`Config`]. Each
//! section is read and checked in its own module; this one holds the file's
//! shape and the checks that span sections.

use super::admin::RawAdmin;
use super::limits::RawLimits;
use super::listeners::RawListener;
use super::shards::{RawCpus, RawShards};
use super::store::RawStore;
use super::upstream::RawUpstream;
use super::{field, AuthMode, Config, ConfigError, Provider, StoreConfig};
use crate::placement::Machine;
use shardgate_policy::{PolicyEntry, PriceSpec};
use std::collections::BTreeMap;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    listen: Option<String>,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    shards: RawShards,
    /// The CPUs shards are pinned to, like `2-5,8`: each must be in the
    /// process's allowed set.
    cpus: Option<RawCpus>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    providers: BTreeMap<String, super::provider::RawProvider>,
    #[serde(default)]
    models: BTreeMap<String, super::route::RawModel>,
    auth: Option<AuthMode>,
    #[serde(default)]
    policies: Vec<PolicyEntry>,
    #[serde(default)]
    guardrails: Vec<shardgate_policy::guardrails::GuardrailSpec>,
    #[serde(default)]
    pricing: Vec<PriceSpec>,
    #[serde(default)]
    store: RawStore,
    admin: Option<RawAdmin>,
    mcp: Option<super::mcp::RawMcp>,
    audit: Option<super::audit::RawAudit>,
    cluster: Option<super::cluster::RawCluster>,
    #[serde(default)]
    mcp_servers: BTreeMap<String, super::mcp::RawMcpServer>,
}

impl RawConfig {
    /// The `store` section alone, validated (for `shardgate keys`, which must
    /// not need the providers' secrets).
    pub(super) fn store(&self) -> Result<StoreConfig, ConfigError> {
        self.store.validate()
    }

    /// The configured KEKs (for stored provider credentials).
    pub(super) fn keks(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::store::provider_keys::Keks, ConfigError> {
        self.store.keks(env)
    }

    /// The names of the configured providers.
    pub(super) fn provider_names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    pub(super) fn audit(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<super::audit::AuditConfig>, ConfigError> {
        let store = self.store()?;
        super::audit::validate(self.audit, &store.dir, env)
    }

    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        machine: &Machine,
    ) -> Result<Config, ConfigError> {
        let store = self.store()?;
        let keks = self.keks(env)?;
        let listeners = super::listeners::validate(self.listen.as_deref(), self.listeners)?;
        let placement = super::shards::validate(self.shards, self.cpus.as_ref(), machine)?;
        let limits = super::limits::validate(self.limits)?;
        let upstream = super::upstream::validate(self.upstream)?;

        // Credentials set through the admin API or `shardgate providers`
        // win over the file's: a record that does not open stops the load
        // (naming it), and the store is left as it is.
        let stored = crate::store::provider_keys::open_all(&store.dir, &keks)
            .map_err(|e| field("store.kek", e.to_string()))?;
        let mut providers = Vec::new();
        let mut index = BTreeMap::new();
        for (name, p) in self.providers {
            let path = format!("providers.{name}");
            let stored_key = stored.iter().find(|(n, _)| *n == name).map(|(_, s)| s);
            let kind = p.validate(&path, env, stored_key)?;
            index.insert(name.clone(), providers.len());
            providers.push(Provider { name, kind });
        }

        let models = super::route::build(self.models, &index, &upstream)?;
        let (guardrails, guardrail_webhooks) =
            super::policies::validate(&self.policies, &self.guardrails, env)?;
        let admin = super::admin::validate(self.admin, &listeners, env)?;
        let mcp = super::mcp::validate(self.mcp, self.mcp_servers, env)?;
        let audit = super::audit::validate(self.audit, &store.dir, env)?;
        let cluster = super::cluster::validate(self.cluster, env)?;
        if cluster.is_none() {
            let shared = models
                .iter()
                .find(|(_, m)| m.cache.is_some_and(|c| c.shared == Some(true)));
            if let Some((alias, _)) = shared {
                return Err(field(
                    format!("models.{alias}.cache.shared"),
                    "needs `cluster:` (entries are shared through its Redis)",
                ));
            }
        }

        Ok(Config {
            audit,
            cluster,
            mcp,
            admin,
            listeners,
            shards: placement.shards,
            placement,
            limits,
            upstream,
            providers,
            models,
            auth: self.auth.unwrap_or(AuthMode::Keys),
            policies: self.policies,
            provider_keks: std::sync::Arc::new(keks),
            guardrails: std::sync::Arc::new(guardrails),
            guardrail_webhooks,
            pricing: self.pricing,
            store,
        })
    }
}
