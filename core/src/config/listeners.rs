//! `listen:` and `listeners:`: where the gateway accepts connections, with
//! which role and TLS.

use super::units::Dur;
use super::{field, ConfigError, Listener, ListenerRole, ListenerTls};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
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

/// `listen` (one plain api listener) and then `listeners`, in that order;
/// at least one.
pub(super) fn validate(
    listen: Option<&str>,
    listeners: Vec<RawListener>,
) -> Result<Vec<Listener>, ConfigError> {
    let mut out = Vec::new();
    if let Some(addr) = listen {
        out.push(Listener {
            addr: parse_addr("listen", addr)?,
            tls: None,
            role: ListenerRole::Api,
        });
    }
    for (i, l) in listeners.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let addr = parse_addr(&format!("{path}.address"), &l.address)?;
        let tls = l.tls.map(|t| ListenerTls {
            cert: t.cert,
            key: t.key,
            client_ca: t.client_ca,
            reload_interval: super::units::dur(t.reload_interval, Duration::from_secs(10)),
        });
        out.push(Listener {
            addr,
            tls,
            role: l.role,
        });
    }
    if out.is_empty() {
        return Err(field("listen", "no listener: set `listen` or `listeners`"));
    }
    Ok(out)
}

fn parse_addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.trim().parse().map_err(|_| {
        field(
            path,
            format!("`{s}` is not an address like 0.0.0.0:8080 or [::1]:8080"),
        )
    })
}
