//! The config file as written, and its validation into [`Config`].

use super::{
    field, BaseUrl, ByteSize, Config, ConfigError, Dur, HttpProvider, Limits, Listener,
    ListenerTls, MockProvider, ModelRoute, Provider, ProviderKind, SecretRef, StoreConfig,
    StoreFsync, Target, UpstreamSettings, DEFAULT_STORE_DIR,
};
use serde::Deserialize;
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
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    store: RawStore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    dir: Option<PathBuf>,
    /// `always`, `never`, or a group-commit interval such as `100ms`.
    fsync: Option<String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    tls: Option<RawTls>,
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
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawProvider {
    #[serde(alias = "openai_compatible")]
    Openai {
        base_url: String,
        api_key: Option<SecretRef>,
        ca_file: Option<PathBuf>,
    },
    Mock {
        output_tokens: Option<usize>,
        ttft: Option<Dur>,
        tokens_per_second: Option<u32>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    targets: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: String,
    model: String,
}

fn dur(v: Option<Dur>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

fn size(v: Option<ByteSize>, default: ByteSize) -> usize {
    v.unwrap_or(default).as_usize()
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
        let fsync = match self.store.fsync.as_deref().map(str::trim) {
            None => StoreFsync::Interval(Duration::from_millis(100)),
            Some("always") => StoreFsync::Always,
            Some("never") => StoreFsync::Never,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    return Err(field(
                        "store.fsync",
                        "interval must be more than 0 (or `always`)",
                    ))
                }
                Ok(d) if d > Duration::from_secs(60) => {
                    return Err(field("store.fsync", format!("`{s}` is more than 60s")))
                }
                Ok(d) => StoreFsync::Interval(d),
                Err(_) => {
                    return Err(field(
                        "store.fsync",
                        format!("`{s}`: use `always`, `never` or an interval like 100ms"),
                    ))
                }
            },
        };
        Ok(StoreConfig { dir, fsync })
    }

    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let store = self.store()?;
        let mut listeners = Vec::new();
        if let Some(addr) = &self.listen {
            listeners.push(Listener {
                addr: parse_addr("listen", addr)?,
                tls: None,
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
            listeners.push(Listener { addr, tls });
        }
        if listeners.is_empty() {
            return Err(field("listen", "no listener: set `listen` or `listeners`"));
        }

        let shards = match self.shards {
            RawShards::Unset => available_cores(),
            RawShards::Word(w) if w == "auto" => available_cores(),
            RawShards::Word(w) => {
                return Err(field("shards", format!("`{w}`: use `auto` or a number")))
            }
            RawShards::Count(0) => return Err(field("shards", "must be at least 1")),
            RawShards::Count(n) if n > 1024 => {
                return Err(field("shards", format!("{n} is more than 1024")))
            }
            RawShards::Count(n) => n,
        };

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
        };
        for (name, d) in [
            ("connect_timeout", upstream.connect_timeout),
            ("first_byte_timeout", upstream.first_byte_timeout),
            ("read_timeout", upstream.read_timeout),
        ] {
            if d.is_zero() {
                return Err(field(format!("upstream.{name}"), "must be more than 0"));
            }
        }

        let mut providers = Vec::new();
        let mut index = BTreeMap::new();
        for (name, p) in self.providers {
            let path = format!("providers.{name}");
            let kind = match p {
                RawProvider::Openai {
                    base_url,
                    api_key,
                    ca_file,
                } => {
                    let base = parse_base_url(&format!("{path}.base_url"), &base_url)?;
                    let api_key = api_key
                        .map(|k| k.resolve(env))
                        .transpose()
                        .map_err(|m| field(format!("{path}.api_key"), m))?;
                    ProviderKind::OpenAi(HttpProvider {
                        base,
                        api_key,
                        ca_file,
                    })
                }
                RawProvider::Mock {
                    output_tokens,
                    ttft,
                    tokens_per_second,
                } => ProviderKind::Mock(MockProvider {
                    output_tokens: output_tokens.unwrap_or(16),
                    ttft: dur(ttft, Duration::ZERO),
                    tokens_per_second: tokens_per_second.filter(|&t| t > 0),
                }),
            };
            index.insert(name.clone(), providers.len());
            providers.push(Provider { name, kind });
        }

        let mut models = BTreeMap::new();
        for (alias, m) in self.models {
            let path = format!("models.{alias}");
            if m.targets.is_empty() {
                return Err(field(
                    format!("{path}.targets"),
                    "needs at least one target",
                ));
            }
            let mut targets = Vec::with_capacity(m.targets.len());
            for (i, t) in m.targets.into_iter().enumerate() {
                let Some(&provider) = index.get(&t.provider) else {
                    return Err(field(
                        format!("{path}.targets[{i}].provider"),
                        format!("no provider named `{}`", t.provider),
                    ));
                };
                if t.model.is_empty() {
                    return Err(field(format!("{path}.targets[{i}].model"), "is empty"));
                }
                targets.push(Target {
                    provider,
                    model: t.model,
                });
            }
            models.insert(alias, ModelRoute { targets });
        }
        if models.is_empty() {
            return Err(field("models", "no model configured"));
        }

        Ok(Config {
            listeners,
            shards,
            limits,
            upstream,
            providers,
            models,
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

fn parse_base_url(path: &str, s: &str) -> Result<BaseUrl, ConfigError> {
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
