//! The config file as written, and its validation into [`Config`].

use super::{
    field, AdminConfig, AuthMode, BaseUrl, ByteSize, Config, ConfigError, Dur, Limits, Listener,
    ListenerRole, ListenerTls, Provider, SecretRef, StoreConfig, StoreFsync, UpstreamSettings,
    DEFAULT_STORE_DIR,
};
use crate::placement::{self, parse_cpu_list, Machine, ShardCount};
use serde::Deserialize;
use shardgate_policy::{PolicyEntry, PolicySet, PriceSpec};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// The bearer token admin endpoints require (a secret reference).
    token: SecretRef,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    dir: Option<PathBuf>,
    /// `always`, `never`, or a group-commit interval such as `100ms`.
    fsync: Option<String>,
    responses_ttl: Option<Dur>,
    responses_max_bytes: Option<ByteSize>,
    /// The key-encryption key of stored provider credentials (a secret
    /// reference), and earlier ones still accepted while rotating.
    kek: Option<SecretRef>,
    #[serde(default)]
    kek_previous: Vec<SecretRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum RawShards {
    #[default]
    #[serde(skip)]
    Unset,
    Count(usize),
    Word(String),
}

/// `cpus: 3` is read by YAML as a number, `cpus: 2-5,8` as a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCpus {
    One(usize),
    List(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    tls: Option<RawTls>,
    #[serde(default)]
    role: ListenerRole,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    reload_interval: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_head_bytes: Option<ByteSize>,
    max_headers: Option<usize>,
    max_body_bytes: Option<ByteSize>,
    head_timeout: Option<Dur>,
    body_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    write_timeout: Option<Dur>,
    drain_timeout: Option<Dur>,
    max_connections_per_shard: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connect_timeout: Option<Dur>,
    first_byte_timeout: Option<Dur>,
    read_timeout: Option<Dur>,
    pool_idle_timeout: Option<Dur>,
    pool_max_idle_per_upstream: Option<usize>,
    max_response_bytes: Option<ByteSize>,
    max_event_bytes: Option<ByteSize>,
    dns_ttl: Option<Dur>,
    breaker_failures: Option<u32>,
    breaker_open_for: Option<Dur>,
    breaker_error_percent: Option<u8>,
    breaker_window: Option<Dur>,
    breaker_min_calls: Option<u32>,
    drain_after_disconnect: Option<Dur>,
    max_drains: Option<usize>,
}

pub(super) fn dur(v: Option<Dur>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

fn size(v: Option<ByteSize>, default: ByteSize) -> usize {
    v.unwrap_or(default).as_usize()
}

impl RawConfig {
    /// The `store` section alone, validated (for `shardgate keys`, which must
    /// not need the providers' secrets).
    pub(super) fn store(&self) -> Result<StoreConfig, ConfigError> {
        let dir = self
            .store
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_DIR));
        if dir.as_os_str().is_empty() {
            return Err(field("store.dir", "is empty"));
        }
        let fsync = parse_fsync("store.fsync", self.store.fsync.as_deref())?;
        let responses_ttl = self
            .store
            .responses_ttl
            .map_or(super::DEFAULT_RESPONSES_TTL, |d| d.0);
        if responses_ttl.is_zero() {
            return Err(field("store.responses_ttl", "must be more than 0"));
        }
        Ok(StoreConfig {
            dir,
            fsync,
            responses_ttl,
            responses_max_bytes: self.store.responses_max_bytes.map_or(256 << 20, |b| b.0),
        })
    }

    /// The configured KEKs (for stored provider credentials).
    pub(super) fn keks(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::store::provider_keys::Keks, ConfigError> {
        use crate::store::provider_keys::{Kek, Keks};
        let derive = |path: String, r: &SecretRef| {
            let secret = r.resolve(env).map_err(|m| field(path.clone(), m))?;
            Kek::derive(secret.expose()).map_err(|e| field(path, e.to_string()))
        };
        Ok(Keks {
            current: match &self.store.kek {
                Some(r) => Some(derive("store.kek".into(), r)?),
                None => None,
            },
            previous: self
                .store
                .kek_previous
                .iter()
                .enumerate()
                .map(|(i, r)| derive(format!("store.kek_previous[{i}]"), r))
                .collect::<Result<_, _>>()?,
        })
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
        let mut listeners = Vec::new();
        if let Some(addr) = &self.listen {
            listeners.push(Listener {
                addr: parse_addr("listen", addr)?,
                tls: None,
                role: ListenerRole::Api,
            });
        }
        for (i, l) in self.listeners.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            let addr = parse_addr(&format!("{path}.address"), &l.address)?;
            let tls = l.tls.map(|t| ListenerTls {
                cert: t.cert,
                key: t.key,
                client_ca: t.client_ca,
                reload_interval: dur(t.reload_interval, Duration::from_secs(10)),
            });
            listeners.push(Listener {
                addr,
                tls,
                role: l.role,
            });
        }
        if listeners.is_empty() {
            return Err(field("listen", "no listener: set `listen` or `listeners`"));
        }

        let count = match self.shards {
            RawShards::Unset => ShardCount::Auto,
            RawShards::Word(w) if w == "auto" => ShardCount::Auto,
            RawShards::Word(w) => {
                return Err(field("shards", format!("`{w}`: use `auto` or a number")))
            }
            RawShards::Count(0) => return Err(field("shards", "must be at least 1")),
            RawShards::Count(n) if n > 1024 => {
                return Err(field("shards", format!("{n} is more than 1024")))
            }
            RawShards::Count(n) => ShardCount::Fixed(n),
        };
        let cpus = match &self.cpus {
            None => None,
            Some(RawCpus::One(cpu)) => Some(vec![*cpu]),
            Some(RawCpus::List(list)) => {
                Some(parse_cpu_list(list).map_err(|e| field("cpus", e.to_string()))?)
            }
        };
        let placement = placement::resolve(count, cpus.as_deref(), machine)
            .map_err(|e| field("cpus", e.to_string()))?;

        let l = self.limits;
        let limits = Limits {
            max_head_bytes: size(l.max_head_bytes, ByteSize::kib(32)),
            max_headers: l.max_headers.unwrap_or(100),
            max_body_bytes: size(l.max_body_bytes, ByteSize::mib(16)),
            head_timeout: dur(l.head_timeout, Duration::from_secs(10)),
            body_timeout: dur(l.body_timeout, Duration::from_secs(60)),
            idle_timeout: dur(l.idle_timeout, Duration::from_secs(75)),
            write_timeout: dur(l.write_timeout, Duration::from_secs(30)),
            drain_timeout: dur(l.drain_timeout, Duration::from_secs(30)),
            max_connections_per_shard: l.max_connections_per_shard.unwrap_or(100_000),
        };
        if limits.max_head_bytes < 1024 {
            return Err(field("limits.max_head_bytes", "must be at least 1KiB"));
        }
        if !(1..=1000).contains(&limits.max_headers) {
            return Err(field("limits.max_headers", "must be between 1 and 1000"));
        }
        for (name, d) in [
            ("head_timeout", limits.head_timeout),
            ("body_timeout", limits.body_timeout),
            ("idle_timeout", limits.idle_timeout),
            ("write_timeout", limits.write_timeout),
        ] {
            if d.is_zero() {
                return Err(field(format!("limits.{name}"), "must be more than 0"));
            }
        }

        let u = self.upstream;
        let upstream = UpstreamSettings {
            connect_timeout: dur(u.connect_timeout, Duration::from_secs(5)),
            first_byte_timeout: dur(u.first_byte_timeout, Duration::from_secs(300)),
            read_timeout: dur(u.read_timeout, Duration::from_secs(300)),
            pool_idle_timeout: dur(u.pool_idle_timeout, Duration::from_secs(55)),
            pool_max_idle_per_upstream: u.pool_max_idle_per_upstream.unwrap_or(256),
            max_response_bytes: size(u.max_response_bytes, ByteSize::mib(64)),
            max_event_bytes: size(u.max_event_bytes, ByteSize::mib(4)),
            dns_ttl: dur(u.dns_ttl, Duration::from_secs(30)),
            breaker: super::BreakerSettings {
                failures: u.breaker_failures.unwrap_or(5),
                error_percent: u.breaker_error_percent,
                window: dur(u.breaker_window, Duration::from_secs(10)),
                min_calls: u.breaker_min_calls.unwrap_or(20),
                open_for: dur(u.breaker_open_for, Duration::from_secs(30)),
            },
            drain_after_disconnect: dur(u.drain_after_disconnect, Duration::from_secs(30)),
            max_drains: u.max_drains.unwrap_or(64),
        };
        if upstream.breaker.failures == 0 {
            return Err(field("upstream.breaker_failures", "must be at least 1"));
        }
        if upstream
            .breaker
            .error_percent
            .is_some_and(|p| p == 0 || p > 100)
        {
            return Err(field(
                "upstream.breaker_error_percent",
                "must be from 1 to 100",
            ));
        }
        if upstream.breaker.window.is_zero() || upstream.breaker.min_calls == 0 {
            return Err(field(
                "upstream.breaker_window",
                "the window and `breaker_min_calls` must be more than 0",
            ));
        }
        for (name, d) in [
            ("connect_timeout", upstream.connect_timeout),
            ("first_byte_timeout", upstream.first_byte_timeout),
            ("read_timeout", upstream.read_timeout),
        ] {
            if d.is_zero() {
                return Err(field(format!("upstream.{name}"), "must be more than 0"));
            }
        }

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
        let policy_set = match PolicySet::compile(&self.policies) {
            Ok(p) => p,
            Err(e) => return Err(field("policies", e.to_string())),
        };
        let guardrails = shardgate_policy::guardrails::Guardrails::compile(&self.guardrails)
            .map_err(|e| field("guardrails", e.to_string()))?;
        guardrails
            .verify(&policy_set)
            .map_err(|e| field("policies", e.to_string()))?;
        let guardrail_webhooks = super::guardrails::webhooks(&guardrails, env)?;
        let admin = match self.admin {
            Some(a) => {
                let token = a.token.resolve(env).map_err(|m| field("admin.token", m))?;
                if token.expose().len() < 16 {
                    return Err(field(
                        "admin.token",
                        "is shorter than 16 characters: use a random secret",
                    ));
                }
                Some(AdminConfig { token })
            }
            None => None,
        };
        if admin.is_none() {
            if let Some(i) = listeners.iter().position(|l| l.role == ListenerRole::Admin) {
                return Err(field(
                    format!("listeners[{i}].role"),
                    "an admin listener needs `admin.token` (its endpoints other than /healthz and /readyz require it)",
                ));
            }
        }

        let mcp = super::mcp::validate(self.mcp, self.mcp_servers, env)?;
        let audit = super::audit::validate(self.audit, &store.dir, env)?;
        let cluster = super::cluster::validate(self.cluster, env)?;
        if cluster.is_none() {
            let shared = models
                .iter()
                .find(|(_, m)| m.cache.is_some_and(|c| c.shared == Some(true)));
            if let Some((alias, _)) = shared {
                return Err(super::field(
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

fn parse_addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| {
        field(
            path,
            format!("`{s}` is not an address like 0.0.0.0:8080 or [::1]:8080"),
        )
    })
}

pub(crate) fn parse_base_url(path: &str, s: &str) -> Result<BaseUrl, ConfigError> {
    let url = url::Url::parse(s).map_err(|e| field(path, format!("`{s}`: {e}")))?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(field(
                path,
                format!("scheme `{other}` is not supported (use http or https)"),
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err(field(
            path,
            "credentials in the URL are not allowed; use api_key",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(field(path, "must not have a query or fragment"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(field(path, "has no host")),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let path_prefix = url.path().trim_end_matches('/').to_owned();
    Ok(BaseUrl {
        tls,
        host,
        port,
        path: path_prefix,
    })
}

/// `always`, `never`, or a group-commit interval (100ms when unset).
pub(crate) fn parse_fsync(path: &str, v: Option<&str>) -> Result<StoreFsync, ConfigError> {
    Ok(match v.map(str::trim) {
        None => StoreFsync::Interval(Duration::from_millis(100)),
        Some("always") => StoreFsync::Always,
        Some("never") => StoreFsync::Never,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => {
                return Err(field(path, "interval must be more than 0 (or `always`)"))
            }
            Ok(d) if d > Duration::from_secs(60) => {
                return Err(field(path, format!("`{s}` is more than 60s")))
            }
            Ok(d) => StoreFsync::Interval(d),
            Err(_) => {
                return Err(field(
                    path,
                    format!("`{s}`: use `always`, `never` or an interval like 100ms"),
                ))
            }
        },
    })
}
