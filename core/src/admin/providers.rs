//! `/admin/providers`: stored provider credentials over HTTP, as
//! `shardgate providers` keeps them (encrypted in the data directory). A
//! change is written on glommio's blocking pool and the config reloaded
//! before the answer goes out, so the next request uses the new key. No
//! answer, log line or audit event carries a credential: only its last
//! four characters.

use super::reply;
use crate::generation::Generation;
use crate::server::{ClientConn, Outcome, Request};
use crate::shard::Shard;
use crate::store::provider_keys::{self, ProviderKeyError, API_KEY};
use serde_json::json;
use std::rc::Rc;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    api_key: String,
}

async fn fail(conn: &mut ClientConn, status: u16, code: &str, message: &str, rid: &str) -> Outcome {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    reply(conn, status, &body, rid).await
}

fn store_failure(e: &ProviderKeyError) -> (u16, &'static str) {
    match e {
        ProviderKeyError::NoKek | ProviderKeyError::Invalid(_) => (400, "bad_request"),
        _ => (500, "store_error"),
    }
}

pub async fn list(generation: &Generation, conn: &mut ClientConn, rid: &str) -> Outcome {
    let dir = generation.config.store.dir.clone();
    let loaded = glommio::executor()
        .spawn_blocking(move || provider_keys::load(&dir))
        .await;
    match loaded {
        Ok(records) => {
            let data: Vec<_> = records.iter().map(provider_keys::listing).collect();
            reply(conn, 200, &json!({ "object": "list", "data": data }), rid).await
        }
        Err(e) => fail(conn, 500, "store_error", &e.to_string(), rid).await,
    }
}

pub async fn set(
    shard: &Rc<Shard>,
    generation: &Generation,
    conn: &mut ClientConn,
    req: &Request<'_>,
    provider: &str,
    rid: &str,
) -> Outcome {
    match generation
        .config
        .providers
        .iter()
        .find(|p| p.name == provider)
    {
        None => {
            let msg = format!("no provider `{provider}` in the config");
            return fail(conn, 404, "provider_not_found", &msg, rid).await;
        }
        Some(p) if !matches!(p.kind, crate::config::ProviderKind::Http(_)) => {
            let msg = format!("provider `{provider}` is in process: it takes no key");
            return fail(conn, 400, "bad_request", &msg, rid).await;
        }
        Some(_) => {}
    }
    let body: NewKey = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        // serde's message could quote the body: say only what is wrong.
        Err(_) => {
            let msg = "the body is `{\"api_key\": \"...\"}`";
            return fail(conn, 400, "bad_request", msg, rid).await;
        }
    };
    let keks = generation.config.provider_keks.clone();
    let dir = generation.config.store.dir.clone();
    let name = provider.to_owned();
    let now = provider_keys::now_ms();
    let stored = glommio::executor()
        .spawn_blocking(move || {
            let record = provider_keys::seal(&keks, &name, API_KEY, &body.api_key, now)?;
            let shown = provider_keys::listing(&record);
            provider_keys::put(&dir, &keks, record)?;
            Ok::<_, ProviderKeyError>(shown)
        })
        .await;
    let shown = match stored {
        Ok(s) => s,
        Err(e) => {
            let (status, code) = store_failure(&e);
            return fail(conn, status, code, &e.to_string(), rid).await;
        }
    };
    if let Some(a) = &shard.audit {
        a.admin(
            "provider_key_set",
            "admin API",
            json!({"provider": provider, "last4": shown["last4"]}),
        );
    }
    match shard.ask_reload("admin API (provider key)").await {
        Ok(generation) => {
            let mut body = shown;
            body["generation"] = json!(generation);
            reply(conn, 200, &body, rid).await
        }
        Err(why) => {
            let msg = format!("the key is stored but the config did not reload: {why}");
            fail(conn, 500, "config_refused", &msg, rid).await
        }
    }
}

pub async fn remove(
    shard: &Rc<Shard>,
    generation: &Generation,
    conn: &mut ClientConn,
    provider: &str,
    rid: &str,
) -> Outcome {
    let dir = generation.config.store.dir.clone();
    let name = provider.to_owned();
    let removed = glommio::executor()
        .spawn_blocking(move || {
            provider_keys::update(&dir, |rs| {
                let before = rs.len();
                rs.retain(|r| r.provider != name);
                Ok(before != rs.len())
            })
        })
        .await;
    match removed {
        Ok(false) => {
            let msg = format!("no stored key for `{provider}`");
            fail(conn, 404, "provider_key_not_found", &msg, rid).await
        }
        Ok(true) => {
            if let Some(a) = &shard.audit {
                a.admin(
                    "provider_key_removed",
                    "admin API",
                    json!({"provider": provider}),
                );
            }
            match shard.ask_reload("admin API (provider key)").await {
                Ok(g) => {
                    reply(
                        conn,
                        200,
                        &json!({"provider": provider, "removed": true, "generation": g}),
                        rid,
                    )
                    .await
                }
                Err(why) => {
                    let msg = format!("the key is removed but the config did not reload: {why}");
                    fail(conn, 500, "config_refused", &msg, rid).await
                }
            }
        }
        Err(e) => fail(conn, 500, "store_error", &e.to_string(), rid).await,
    }
}
