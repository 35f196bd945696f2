//! `admin:`: the token every admin endpoint but the probes requires.

use super::{field, AdminConfig, ConfigError, Listener, ListenerRole, SecretRef};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// The bearer token admin endpoints require (a secret reference).
    token: SecretRef,
}

/// An admin listener needs a token of at least 16 characters.
pub(super) fn validate(
    raw: Option<RawAdmin>,
    listeners: &[Listener],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(a) = raw else {
        if let Some(i) = listeners.iter().position(|l| l.role == ListenerRole::Admin) {
            return Err(field(
                format!("listeners[{i}].role"),
                "an admin listener needs `admin.token` (its endpoints other than /healthz and /readyz require it)",
            ));
        }
        return Ok(None);
    };
    let token = a.token.resolve(env).map_err(|m| field("admin.token", m))?;
    if token.expose().len() < 16 {
        return Err(field(
            "admin.token",
            "is shorter than 16 characters: use a random secret",
        ));
    }
    Ok(Some(AdminConfig { token }))
}
