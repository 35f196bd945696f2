//! `/admin/keys`: the CLI's key commands over HTTP. The key log is written
//! on glommio's blocking pool (its lock and fsync never stall the shard),
//! and a change is current on every shard before the answer goes out.

use super::reply;
use crate::cli::keys::{issue, now, parse_expires, revoke_key, rfc3339, status, CliError};
use crate::generation::Generation;
use crate::server::{ClientConn, Outcome, Request};
use crate::shard::Shard;
use crate::store::DataDir;
use serde_json::json;
use shardgate_policy::{KeyOwner, KeyRecord, KeyStore};
use std::rc::Rc;
use std::time::Duration;

/// How long a change waits for every shard to take it.
const SPREAD_WAIT: Duration = Duration::from_secs(2);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    team: Option<String>,
    tenant: Option<String>,
    app: Option<String>,
    environment: Option<String>,
    /// `30d`, or an RFC 3339 time or date.
    expires: Option<String>,
}

/// A refused key change, in OpenAI's error shape: 404 for an unknown
/// key, 400 for a bad request, 500 for the store.
pub(super) async fn fail(conn: &mut ClientConn, e: &CliError, rid: &str) -> Outcome {
    let (status, kind, code) = match e {
        CliError::NotFound(_) => (404, "invalid_request_error", "key_not_found"),
        CliError::BadArgs(_) | CliError::Config(_) => (400, "invalid_request_error", "bad_request"),
        CliError::Store(_) | CliError::Random(_) => (500, "server_error", "store_error"),
    };
    let body =
        json!({"error": {"message": e.to_string(), "type": kind, "param": null, "code": code}});
    reply(conn, status, &body, rid).await
}

pub(super) fn dir(generation: &Generation) -> DataDir {
    DataDir::new(generation.config.store.dir.clone())
}

/// Makes `records` current everywhere; logs shards that did not confirm.
async fn spread(shard: &Rc<Shard>, records: Vec<KeyRecord>) {
    match KeyStore::from_records(records) {
        Ok(keys) => {
            let missing = shard.spread_keys(keys, SPREAD_WAIT).await;
            if missing > 0 {
                log::warn!("admin keys: {missing} shards did not confirm the change within {SPREAD_WAIT:?}");
            }
        }
        Err(e) => log::error!("admin keys: {e}"),
    }
}

pub async fn create(
    shard: &Rc<Shard>,
    generation: &Generation,
    conn: &mut ClientConn,
    req: &Request<'_>,
    rid: &str,
) -> Outcome {
    let body: NewKey = match serde_json::from_slice(if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    }) {
        Ok(b) => b,
        Err(e) => return fail(conn, &CliError::BadArgs(format!("body: {e}")), rid).await,
    };
    let now = now();
    let expires = match body
        .expires
        .as_deref()
        .map(|e| parse_expires(e, now))
        .transpose()
    {
        Ok(e) => e,
        Err(e) => return fail(conn, &e, rid).await,
    };
    let nonempty = |name: &str, v: Option<String>| match v {
        Some(s) if s.trim().is_empty() => Err(CliError::BadArgs(format!("{name} is empty"))),
        other => Ok(other),
    };
    let owner = match (|| {
        Ok::<_, CliError>(KeyOwner {
            team: nonempty("team", body.team)?,
            tenant: nonempty("tenant", body.tenant)?,
            app: nonempty("app", body.app)?,
            environment: nonempty("environment", body.environment)?,
        })
    })() {
        Ok(o) => o,
        Err(e) => return fail(conn, &e, rid).await,
    };
    let d = dir(generation);
    let issued = glommio::executor()
        .spawn_blocking(move || issue(&d, owner, now, expires))
        .await;
    let (key, records) = match issued {
        Ok(k) => k,
        Err(e) => return fail(conn, &e, rid).await,
    };
    spread(shard, records).await;
    let r = &key.record;
    if let Some(a) = &shard.audit {
        a.admin(
            "key_created",
            "admin API",
            json!({"key_id": r.key_id, "team": r.team, "tenant": r.tenant}),
        );
    }
    let body = json!({
        "key_id": r.key_id,
        "secret": key.secret,
        "team": r.team,
        "tenant": r.tenant,
        "app": r.app,
        "environment": r.environment,
        "created": rfc3339(r.created_ms),
        "expires": r.expires_ms.map(rfc3339),
    });
    reply(conn, 201, &body, rid).await
}

pub async fn revoke(
    shard: &Rc<Shard>,
    generation: &Generation,
    conn: &mut ClientConn,
    key_id: &str,
    rid: &str,
) -> Outcome {
    let d = dir(generation);
    let id = key_id.to_owned();
    let now = now();
    let done = glommio::executor()
        .spawn_blocking(move || revoke_key(&d, &id, now))
        .await;
    let (already, records) = match done {
        Ok(r) => r,
        Err(e) => return fail(conn, &e, rid).await,
    };
    spread(shard, records).await;
    if let Some(a) = &shard.audit {
        a.admin(
            "key_revoked",
            "admin API",
            json!({"key_id": key_id, "already_revoked": already}),
        );
    }
    reply(
        conn,
        200,
        &json!({"key_id": key_id, "revoked": true, "already_revoked": already}),
        rid,
    )
    .await
}

pub async fn list(
    shard: &Rc<Shard>,
    generation: &Generation,
    conn: &mut ClientConn,
    rid: &str,
) -> Outcome {
    let d = dir(generation);
    let read = glommio::executor()
        .spawn_blocking(move || crate::store::read_keys(&d))
        .await;
    let keys = match read {
        Ok(k) => k,
        Err(e) => return fail(conn, &CliError::Store(e), rid).await,
    };
    let _ = shard;
    let now = now();
    let rows: Vec<serde_json::Value> = keys
        .records()
        .iter()
        .map(|k| {
            json!({
                "key_id": k.key_id,
                "team": k.team,
                "tenant": k.tenant,
                "app": k.app,
                "environment": k.environment,
                "created": rfc3339(k.created_ms),
                "expires": k.expires_ms.map(rfc3339),
                "status": status(k, now),
            })
        })
        .collect();
    reply(conn, 200, &json!({"keys": rows}), rid).await
}
