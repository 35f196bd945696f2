//! `DELETE /admin/cache[?model=M][&scope=S]`: drops kept answers on every
//! shard: all of them, a route's (`model`: its alias, or a target's
//! upstream model or `provider/model`), a scope's (`scope`: `tenant:acme`,
//! `tenant:acme/team:ml`, `key:<id>`, `global`), or those both name. With
//! `cluster:`, every shared entry too (see `cache::shared`).

use super::keys::fail;
use super::reply;
use crate::cache::Purge;
use crate::cli::keys::CliError;
use crate::server::{ClientConn, Outcome, Request};
use crate::shard::Shard;
use serde_json::json;
use std::rc::Rc;
use std::time::Duration;

/// How long a purge waits for the other shards.
const PURGE_WAIT: Duration = Duration::from_secs(1);

fn parse(query: &[u8]) -> Result<Purge, CliError> {
    let mut purge = Purge::default();
    for (k, v) in url::form_urlencoded::parse(query) {
        let v = v.into_owned();
        if v.is_empty() {
            return Err(CliError::BadArgs(format!("`{k}` is empty")));
        }
        match &*k {
            "model" => purge.model = Some(v),
            "scope" => purge.scope = Some(v),
            _ => {
                return Err(CliError::BadArgs(format!(
                    "unknown parameter `{k}`: use model or scope"
                )))
            }
        }
    }
    Ok(purge)
}

pub async fn purge(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    req: &Request<'_>,
    rid: &str,
) -> Outcome {
    let query = req.query();
    let purge = match parse(query) {
        Ok(p) => p,
        Err(e) => return fail(conn, &e, rid).await,
    };
    let (dropped, missing) = shard.purge_cache(purge.clone(), PURGE_WAIT).await;
    // The shared tier is not enumerated: any purge drops all of it.
    let shared = match shard.shared_cache() {
        Some(s) => Some(s.purge().await),
        None => None,
    };
    if let Some(a) = &shard.audit {
        a.admin(
            "cache_purged",
            "admin API",
            json!({"model": purge.model, "scope": purge.scope, "dropped": dropped, "shared": shared}),
        );
    }
    let body = json!({
        "purged": dropped,
        "model": purge.model,
        "scope": purge.scope,
        "shards_missing": missing,
        "shared_purged": shared,
    });
    let ok = missing == 0 && shared != Some(false);
    reply(conn, if ok { 200 } else { 503 }, &body, rid).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_names_a_model_a_scope_or_both() {
        assert_eq!(parse(b"").unwrap(), Purge::default());
        let p = parse(b"model=gpt-4o&scope=tenant%3Aacme").unwrap();
        assert_eq!(p.model.as_deref(), Some("gpt-4o"));
        assert_eq!(p.scope.as_deref(), Some("tenant:acme"));
        assert!(parse(b"tenant=acme").is_err());
        assert!(parse(b"model=").is_err());
    }
}
