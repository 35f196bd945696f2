use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, &no_env).map_err(|e| e.to_string())
}

const MIN: &str = "listen: 127.0.0.1:0\nmodels: { demo: { targets: [ { provider: local, model: m } ] } }\nproviders: { local: { kind: mock } }\n";

#[test]
fn default_config_is_valid() {
    let c = Config::parse(DEFAULT_CONFIG, &no_env).unwrap();
    assert!(c.models.contains_key("demo"));
    assert!(c.shards >= 1);
}

#[test]
fn minimal_config_and_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.limits.max_head_bytes, 32 * 1024);
    assert_eq!(c.models["demo"].targets[0].model, "m");
}

#[test]
fn unknown_field_is_named() {
    let e = parse(&format!("{MIN}limits: {{ max_body: 1KiB }}\n")).unwrap_err();
    assert!(
        e.starts_with("limits.max_body: unknown field `max_body`"),
        "{e}"
    );
}

#[test]
fn bad_unit_is_named() {
    let e = parse(&format!("{MIN}limits: {{ idle_timeout: 30 }}\n")).unwrap_err();
    assert!(e.starts_with("limits.idle_timeout:"), "{e}");
    let e = parse(&format!("{MIN}limits: {{ max_body_bytes: 3 parsecs }}\n")).unwrap_err();
    assert!(e.starts_with("limits.max_body_bytes:"), "{e}");
}

#[test]
fn missing_provider_is_named() {
    let e = parse("listen: 127.0.0.1:0\nproviders: {}\nmodels: { a: { targets: [ { provider: nope, model: m } ] } }\n")
        .unwrap_err();
    assert_eq!(e, "models.a.targets[0].provider: no provider named `nope`");
}

#[test]
fn missing_env_secret_is_named_without_value() {
    let text = "listen: 127.0.0.1:0\nproviders: { o: { kind: openai, base_url: 'https://api.openai.com/v1', api_key: '${SG_TEST_UNSET}' } }\nmodels: { a: { targets: [ { provider: o, model: gpt-4o } ] } }\n";
    let e = parse(text).unwrap_err();
    assert_eq!(
        e,
        "providers.o.api_key: environment variable SG_TEST_UNSET is not set"
    );
    let env = |k: &str| (k == "SG_TEST_UNSET").then(|| "sk-live-secret".to_owned());
    let c = Config::parse(text, &env).unwrap();
    assert!(!format!("{c:?}").contains("sk-live-secret"));
    let ProviderKind::Http(p) = &c.providers[0].kind else {
        panic!("kind")
    };
    assert_eq!(p.base.path, "/v1");
    assert_eq!(p.base.port, 443);
    assert!(p.base.tls);
    assert_eq!(p.base.authority(), "api.openai.com");
}

#[test]
fn base_url_checks() {
    let t = |u: &str| {
        parse(&format!(
            "listen: 127.0.0.1:0\nproviders: {{ o: {{ kind: openai, base_url: '{u}' }} }}\nmodels: {{ a: {{ targets: [ {{ provider: o, model: m }} ] }} }}\n"
        ))
    };
    assert!(t("ftp://x/v1").unwrap_err().contains("scheme `ftp`"));
    assert!(t("http://u:p@x/v1").unwrap_err().contains("credentials"));
    let c = t("http://127.0.0.1:9000/v1/").unwrap();
    let ProviderKind::Http(p) = &c.providers[0].kind else {
        panic!("kind")
    };
    assert_eq!(p.base.path, "/v1");
    assert_eq!(p.base.authority(), "127.0.0.1:9000");
}

#[test]
fn shards_validation() {
    assert!(parse(&format!("{MIN}shards: 0\n"))
        .unwrap_err()
        .starts_with("shards:"));
    assert!(parse(&format!("{MIN}shards: many\n"))
        .unwrap_err()
        .starts_with("shards:"));
    assert_eq!(parse(&format!("{MIN}shards: 3\n")).unwrap().shards, 3);
    assert!(parse(&format!("{MIN}shards: auto\n")).unwrap().shards >= 1);
}

#[test]
fn listener_required() {
    let e = parse("providers: { local: { kind: mock } }\nmodels: { demo: { targets: [ { provider: local, model: m } ] } }\n").unwrap_err();
    assert!(e.starts_with("listen:"), "{e}");
}

fn one_provider(p: &str) -> String {
    format!("listen: 127.0.0.1:0\nproviders: {{ p: {p} }}\nmodels: {{ a: {{ targets: [ {{ provider: p, model: m }} ] }} }}\n")
}

#[test]
fn provider_kinds_and_their_fields() {
    let env = |k: &str| (k == "GROQ_API_KEY").then(|| "gsk-from-env".to_owned());
    // A preset takes its default base URL and its conventional key variable.
    let c = Config::parse(&one_provider("{ kind: groq }"), &env).unwrap();
    let ProviderKind::Http(h) = &c.providers[0].kind else {
        panic!("kind")
    };
    assert_eq!(h.base.authority(), "api.groq.com");
    assert_eq!(h.base.path, "/openai/v1");
    assert_eq!(h.api_key.as_ref().map(|k| k.expose()), Some("gsk-from-env"));
    // Dialect providers get their documented base URLs.
    let c = parse(&one_provider("{ kind: anthropic, api_key: k }")).unwrap();
    let ProviderKind::Http(h) = &c.providers[0].kind else {
        panic!("kind")
    };
    assert!(matches!(h.wire, Wire::Anthropic(_)));
    assert_eq!(h.base.authority(), "api.anthropic.com");
    // Bedrock: region required, credentials in pairs, host signed as sent.
    assert_eq!(
        parse(&one_provider("{ kind: bedrock, api_key: k }")).unwrap_err(),
        "providers.p.region: is required for kind `bedrock`"
    );
    assert!(parse(&one_provider(
        "{ kind: bedrock, region: us-east-1, aws_access_key_id: AKID }"
    ))
    .unwrap_err()
    .starts_with("providers.p.aws_secret_access_key"));
    let c = parse(&one_provider(
        "{ kind: bedrock, region: eu-west-1, base_url: 'http://127.0.0.1:9000', aws_access_key_id: AKID, aws_secret_access_key: s3cr3t }",
    ))
    .unwrap();
    let ProviderKind::Http(h) = &c.providers[0].kind else {
        panic!("kind")
    };
    let Wire::Bedrock(b) = &h.wire else {
        panic!("wire")
    };
    assert_eq!(b.host(), "127.0.0.1:9000");
    assert!(!format!("{c:?}").contains("s3cr3t"));
    // Fields of another kind, and unknown kinds, are named.
    assert_eq!(
        parse(&one_provider("{ kind: gemini, api_key: k, region: x }")).unwrap_err(),
        "providers.p.region: does not apply to providers of kind `gemini`"
    );
    let e = parse(&one_provider("{ kind: nope }")).unwrap_err();
    assert!(
        e.starts_with("providers.p.kind: unknown kind `nope`"),
        "{e}"
    );
    assert!(e.contains("deepseek") && e.contains("bedrock"), "{e}");
    assert_eq!(
        parse(&one_provider("{ kind: openai_compatible }")).unwrap_err(),
        "providers.p.base_url: is required for kind `openai_compatible`"
    );
}

#[test]
fn store_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.store, StoreConfig::default());
    assert_eq!(c.store.dir, std::path::Path::new("shardgate-data"));
    assert_eq!(
        c.store.fsync,
        StoreFsync::Interval(std::time::Duration::from_millis(100))
    );
}

#[test]
fn store_fsync_forms() {
    let fsync = |v: &str| parse(&format!("{MIN}store: {{ dir: /var/lib/sg, fsync: {v} }}\n"));
    assert_eq!(fsync("always").unwrap().store.fsync, StoreFsync::Always);
    assert_eq!(fsync("never").unwrap().store.fsync, StoreFsync::Never);
    assert_eq!(
        fsync("250ms").unwrap().store.fsync,
        StoreFsync::Interval(std::time::Duration::from_millis(250))
    );
    assert_eq!(
        fsync("always").unwrap().store.dir,
        std::path::Path::new("/var/lib/sg")
    );
    for bad in ["sometimes", "0s", "5m"] {
        let e = fsync(bad).unwrap_err();
        assert!(e.starts_with("store.fsync: "), "{bad}: {e}");
    }
}

#[test]
fn store_errors_are_named() {
    let e = parse(&format!("{MIN}store: {{ path: x }}\n")).unwrap_err();
    assert!(e.starts_with("store.path: unknown field `path`"), "{e}");
    let e = parse(&format!("{MIN}store: {{ dir: '' }}\n")).unwrap_err();
    assert_eq!(e, "store.dir: is empty");
}

#[test]
fn store_section_alone_needs_no_secrets() {
    let text = "listen: 127.0.0.1:0\nproviders: { o: { kind: openai, base_url: 'https://x/v1', api_key: '${SG_TEST_UNSET}' } }\nmodels: { a: { targets: [ { provider: o, model: m } ] } }\nstore: { dir: d, fsync: never }\n";
    assert!(parse(text).is_err());
    let s = Config::parse_store(text).unwrap();
    assert_eq!(s.dir, std::path::Path::new("d"));
    assert_eq!(s.fsync, StoreFsync::Never);
    let e = Config::parse_store("store: { fsync: often }\n").unwrap_err();
    assert!(e.to_string().starts_with("store.fsync: "), "{e}");
}

#[test]
fn shards_and_cpus_follow_the_allowed_set() {
    use crate::placement::Machine;
    let two_of_eight = Machine {
        allowed: vec![4, 5],
        quota_cpus: None,
    };
    let on = |text: &str| {
        Config::parse_on(&format!("{MIN}{text}"), &no_env, &two_of_eight).map_err(|e| e.to_string())
    };
    let c = on("").unwrap();
    assert_eq!((c.shards, c.placement.cpus.clone()), (2, vec![4, 5]));
    let c = on("cpus: 5\n").unwrap();
    assert_eq!((c.shards, c.placement.cpu_of(0)), (1, 5));
    assert_eq!(
        on("cpus: 3-5\n").unwrap_err(),
        "cpus: CPU 3 is not in this process's allowed set (4-5)"
    );
    assert!(on("cpus: five\n").unwrap_err().starts_with("cpus: `five`"));
}

/// Every credential a provider sends is one its errors are scrubbed of,
/// including a preset's key read from its conventional variable.
#[test]
fn provider_secrets_are_known_for_redaction() {
    let c = parse(&one_provider(
        "{ kind: bedrock, region: us-east-1, aws_access_key_id: AKIDEXAMPLE0, aws_secret_access_key: s3cr3tAccessKey, aws_session_token: SessionToken123 }",
    ))
    .unwrap();
    let ProviderKind::Http(h) = &c.providers[0].kind else {
        panic!("http provider")
    };
    let scrubbed = h
        .secrets
        .scrub("id AKIDEXAMPLE0 key s3cr3tAccessKey token SessionToken123");
    assert_eq!(scrubbed, "id [REDACTED] key [REDACTED] token [REDACTED]");
    let env = |k: &str| (k == "GROQ_API_KEY").then(|| "0123456789abcdef".to_owned());
    let c = Config::parse(&one_provider("{ kind: groq }"), &env).unwrap();
    let ProviderKind::Http(h) = &c.providers[0].kind else {
        panic!("http provider")
    };
    assert_eq!(h.secrets.scrub("key 0123456789abcdef"), "key [REDACTED]");
}

fn two_targets(extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nproviders: {{ p: {{ kind: mock }} }}\nmodels:\n  r:\n    targets: [ {{ provider: p, model: a, context_window: 8000 }}, {{ provider: p, model: b }} ]\n{extra}"
    )
}

#[test]
fn route_retry_timeouts_and_hedge_defaults_and_values() {
    let c = parse(&two_targets("")).unwrap();
    let r = &c.models["r"];
    assert_eq!(r.retry, route::RetryPolicy::default());
    assert_eq!(r.timeouts, route::RouteTimeouts::from_upstream(&c.upstream));
    assert_eq!(r.hedge, None);
    assert_eq!(r.targets[0].context_window, Some(8000));
    let c = parse(&two_targets(
        "    retry: { attempts: 4, backoff: 20ms, max_backoff: 1s, on: [connect, '429'] }\n    timeouts: { first_token: 2s, total: 10s }\n    hedge: { after: p95, initial: 300ms }\n",
    ))
    .unwrap();
    let r = &c.models["r"];
    assert_eq!(r.retry.attempts, Some(4));
    assert_eq!(r.retry.backoff, Duration::from_millis(20));
    assert!(r.retry.on.connect && r.retry.on.rate_limited && !r.retry.on.server_error);
    assert_eq!(r.timeouts.first_token, Duration::from_secs(2));
    assert_eq!(r.timeouts.total, Some(Duration::from_secs(10)));
    assert_eq!(r.timeouts.idle, c.upstream.read_timeout);
    assert_eq!(
        r.hedge,
        Some(route::Hedge {
            after: route::HedgeAfter::P95 {
                initial: Duration::from_millis(300)
            },
            with_tools: false
        })
    );
}

#[test]
fn bad_route_settings_are_named() {
    let one = "listen: 127.0.0.1:0\nproviders: { p: { kind: mock } }\nmodels: { r: { targets: [ { provider: p, model: a } ], hedge: { after: 200ms } } }\n";
    let e = parse(one).unwrap_err();
    assert!(
        e.starts_with("models.r.hedge: needs a route with two targets"),
        "{e}"
    );
    for (extra, starts) in [
        (
            "    retry: { attempts: 0 }\n",
            "models.r.retry.attempts: must be from 1 to 10",
        ),
        ("    retry: { attempts: 11 }\n", "models.r.retry.attempts:"),
        (
            "    retry: { backoff: 2s, max_backoff: 1s }\n",
            "models.r.retry.max_backoff: is less",
        ),
        ("    retry: { on: [teapot] }\n", "models.r.retry.on"),
        (
            "    timeouts: { total: 0s }\n",
            "models.r.timeouts.total: must be more than 0",
        ),
        (
            "    hedge: { after: soon }\n",
            "models.r.hedge.after: `soon`",
        ),
        ("    hedge: { after: 0ms }\n", "models.r.hedge.after:"),
        (
            "    hedge: { after: 1s, initial: 1s }\n",
            "models.r.hedge.initial:",
        ),
        ("    strategy: fastest\n", "models.r.strategy"),
    ] {
        let e = parse(&two_targets(extra)).unwrap_err();
        assert!(e.starts_with(starts), "{extra}: {e}");
    }
    let e = parse(&two_targets("").replace("8000", "0")).unwrap_err();
    assert_eq!(e, "models.r.targets[0].context_window: must be more than 0");
}

#[test]
fn health_checks_are_validated() {
    let with = |check: &str| {
        parse(&format!(
            "listen: 127.0.0.1:0\nproviders: {{ o: {{ kind: openai, base_url: 'http://127.0.0.1:9/v1', health_check: {check} }} }}\nmodels: {{ a: {{ targets: [ {{ provider: o, model: m }} ] }} }}\n"
        ))
    };
    let c = with("{ path: /models }").unwrap();
    let ProviderKind::Http(h) = &c.providers[0].kind else {
        panic!("not http")
    };
    assert_eq!(
        h.health_check,
        Some(HealthCheck {
            path: "/v1/models".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        })
    );
    for (check, starts) in [
        ("{ path: models }", "providers.o.health_check.path:"),
        ("{ path: '/a b' }", "providers.o.health_check.path:"),
        (
            "{ path: /m, interval: 1s, timeout: 2s }",
            "providers.o.health_check.timeout:",
        ),
        (
            "{ path: /m, interval: 10ms }",
            "providers.o.health_check.interval:",
        ),
    ] {
        let e = with(check).unwrap_err();
        assert!(e.starts_with(starts), "{check}: {e}");
    }
    let e = parse("listen: 127.0.0.1:0\nproviders: { l: { kind: mock, health_check: { path: /x } } }\nmodels: { a: { targets: [ { provider: l, model: m } ] } }\n").unwrap_err();
    assert!(
        e.starts_with("providers.l.health_check: does not apply"),
        "{e}"
    );
}

#[test]
fn cluster_section() {
    use super::cluster::OnUnavailable;
    assert!(parse(MIN).unwrap().cluster.is_none());
    let c = parse(&format!(
        "{MIN}cluster: {{ redis: {{ url: 'rediss://:pw@redis.internal:6380/2', prefix: 'sg:' }}, on_unavailable: local, deadline: 5ms }}\n"
    ))
    .unwrap();
    let cl = c.cluster.unwrap();
    assert_eq!(cl.on_unavailable, OnUnavailable::Local);
    assert_eq!(cl.deadline, std::time::Duration::from_millis(5));
    assert_eq!(cl.lease_ttl, std::time::Duration::from_secs(1));
    assert_eq!(cl.redis.prefix, "sg:");
    // The URL is a secret: its password never shows in Debug.
    assert!(!format!("{cl:?}").contains("pw@"));
    let defaults = parse(&format!(
        "{MIN}cluster: {{ redis: {{ url: 'redis://127.0.0.1' }} }}\n"
    ))
    .unwrap();
    assert_eq!(
        defaults.cluster.unwrap().on_unavailable,
        OnUnavailable::Deny
    );
    for (bad, field) in [
        ("{ redis: { url: 'http://x' } }", "cluster.redis.url"),
        (
            "{ redis: { url: 'redis://x', prefix: 'a{b' } }",
            "cluster.redis.prefix",
        ),
        (
            "{ redis: { url: 'redis://x' }, deadline: 0ms }",
            "cluster.deadline",
        ),
        (
            "{ redis: { url: 'redis://x' }, lease_ttl: 2m }",
            "cluster.lease_ttl",
        ),
        (
            "{ redis: { url: 'redis://x' }, on_unavailable: open }",
            "cluster.on_unavailable",
        ),
    ] {
        let e = parse(&format!("{MIN}cluster: {bad}\n")).unwrap_err();
        assert!(e.starts_with(field), "{bad}: {e}");
    }
}

#[test]
fn a_route_cache_has_defaults_and_its_bad_values_are_named() {
    use super::cache::{CacheScope, CacheSettings};
    let c = parse(&two_targets("    cache: {}\n")).unwrap();
    assert_eq!(
        c.models["r"].cache,
        Some(CacheSettings {
            ttl: Duration::from_secs(600),
            scope: CacheScope::Tenant,
            max_entries: 10_000,
            max_bytes: 64 << 20,
            sampled: false,
            shared: None,
        })
    );
    assert_eq!(parse(&two_targets("")).unwrap().models["r"].cache, None);
    let c = parse(&two_targets(
        "    cache: { ttl: 30s, scope: global, max_entries: 10, max_bytes: 1MiB, sampled: true }\n",
    ))
    .unwrap();
    let s = c.models["r"].cache.unwrap();
    assert_eq!(
        (s.ttl, s.scope, s.sampled),
        (Duration::from_secs(30), CacheScope::Global, true)
    );
    assert_eq!(s.per_shard(4), (2, 256 * 1024));
    for (extra, starts) in [
        (
            "    cache: { ttl: 0s }\n",
            "models.r.cache.ttl: must be more than 0",
        ),
        (
            "    cache: { max_entries: 0 }\n",
            "models.r.cache.max_entries:",
        ),
        (
            "    cache: { max_bytes: 1KiB }\n",
            "models.r.cache.max_bytes: must be at least",
        ),
        ("    cache: { scope: tenants }\n", "models.r.cache.scope"),
        ("    cache: { size: 1 }\n", "models.r.cache"),
    ] {
        let e = parse(&two_targets(extra)).unwrap_err();
        assert!(e.starts_with(starts), "{extra}: {e}");
    }
}
