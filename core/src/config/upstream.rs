//! `upstream:`: how the gateway talks to providers (timeouts, pools, size
//! bounds, circuit breakers), and provider addresses.

use super::units::{dur, positive, size, ByteSize, Dur};
use super::{field, BaseUrl, BreakerSettings, ConfigError, UpstreamSettings};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
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

pub(super) fn validate(u: RawUpstream) -> Result<UpstreamSettings, ConfigError> {
    let upstream = UpstreamSettings {
        connect_timeout: dur(u.connect_timeout, Duration::from_secs(5)),
        first_byte_timeout: dur(u.first_byte_timeout, Duration::from_secs(300)),
        read_timeout: dur(u.read_timeout, Duration::from_secs(300)),
        pool_idle_timeout: dur(u.pool_idle_timeout, Duration::from_secs(55)),
        pool_max_idle_per_upstream: u.pool_max_idle_per_upstream.unwrap_or(256),
        max_response_bytes: size(u.max_response_bytes, ByteSize::mib(64)),
        max_event_bytes: size(u.max_event_bytes, ByteSize::mib(4)),
        dns_ttl: dur(u.dns_ttl, Duration::from_secs(30)),
        breaker: BreakerSettings {
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
    positive(
        "upstream",
        &[
            ("connect_timeout", upstream.connect_timeout),
            ("first_byte_timeout", upstream.first_byte_timeout),
            ("read_timeout", upstream.read_timeout),
        ],
    )?;
    Ok(upstream)
}

/// A provider's (or MCP server's, or webhook's) base URL: http or https,
/// no credentials, query or fragment; the port defaults by scheme.
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
