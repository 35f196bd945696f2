//! Responses conversations the gateway keeps itself: `previous_response_id`
//! continues a stored turn whatever provider serves the next one, and
//! `store` (on unless the request says `false`) keeps each turn for
//! `store.responses_ttl` (see `store::responses`). Also `GET` and `DELETE
//! /v1/responses/{id}`.
//!
//! Ids the gateway cannot resolve (unknown, expired, deleted, or another
//! key's) get a 400 naming `previous_response_id`: never silently dropped.

use super::egress::ClientDialect;
use super::{send_error, Call};
use crate::admission::ANONYMOUS;
use crate::error::GatewayError;
use crate::server::{respond, ClientConn, Outcome, Request};
use crate::shard::Shard;
use crate::store::responses::{self as stored, StoredTurn};
use serde_json::Value;
use shardgate_policy::Actor;
use shardgate_providers::responses::input_items;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

/// What a Responses request carries beyond its body.
#[derive(Debug)]
pub struct Turn {
    /// The request.
    request: Value,
    /// The `previous_response_id` it names.
    previous: Option<String>,
    /// The items of the turns it continues, when the gateway has them
    /// (an id it does not know may be an OpenAI provider's own).
    prior: Option<Vec<Value>>,
    /// The provider that served the turn it continues.
    prior_provider: Option<String>,
    /// Its own input items.
    pub input: Vec<Value>,
    pub store: bool,
    owner: String,
    dir: PathBuf,
    ttl: Duration,
}

impl Turn {
    /// The items of the turns before this one (none when unknown).
    pub fn prior(&self) -> &[Value] {
        self.prior.as_deref().unwrap_or_default()
    }

    /// The 400 for a `previous_response_id` only an upstream could resolve,
    /// for an upstream that cannot: never silently dropped.
    pub fn unresolved(&self) -> Option<GatewayError> {
        match (&self.previous, &self.prior) {
            (Some(id), None) => Some(bad(
                format!("Previous response with id '{id}' not found: it does not exist, expired, was deleted, or belongs to another key."),
                "previous_response_id",
            )),
            _ => None,
        }
    }

    /// For an OpenAI provider: the body to send instead of the client's
    /// when the turn it continues was served elsewhere (that provider does
    /// not know the id): the conversation so far in `input`, no
    /// `previous_response_id`. None: the client's body goes as it is.
    pub fn expand_for(&self, provider: &str) -> Option<Vec<u8>> {
        let prior = self.prior.as_ref()?;
        if self.prior_provider.as_deref() == Some(provider) {
            return None;
        }
        let mut v = self.request.clone();
        let obj = v.as_object_mut()?;
        obj.remove("previous_response_id");
        let mut items = prior.clone();
        items.extend(self.input.iter().cloned());
        obj.insert("input".into(), Value::Array(items));
        serde_json::to_vec(&v).ok()
    }
}

fn now_ms() -> u64 {
    crate::admission::now().0
}

fn owner_of(actor: Option<&Actor>) -> String {
    actor.map_or(ANONYMOUS, |a| a.key_id.as_str()).to_owned()
}

fn bad(message: String, param: &'static str) -> GatewayError {
    GatewayError::BadRequest {
        message,
        param: Some(param),
    }
}

/// Reads what `body` continues; refuses an id it cannot resolve.
pub async fn open(
    body: &[u8],
    actor: Option<&Actor>,
    dir: PathBuf,
    ttl: Duration,
) -> Result<Turn, GatewayError> {
    let v: Value = super::plan::client_json(body)?;
    let input = input_items(&v).map_err(|e| bad(e.to_string(), "input"))?;
    let store = v.get("store").and_then(Value::as_bool).unwrap_or(true);
    let owner = owner_of(actor);
    let mut previous = None;
    let mut prior_provider = None;
    let prior = match v.get("previous_response_id") {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(id)) => {
            previous = Some(id.clone());
            let (d, id2, o) = (dir.clone(), id.clone(), owner.clone());
            let found = glommio::executor()
                .spawn_blocking(move || stored::load(&d, &id2, &o, now_ms()))
                .await;
            match found {
                Ok(Some(turn)) => {
                    prior_provider = turn.provider;
                    Some(turn.items)
                }
                // Maybe an OpenAI provider's own: decided by the target.
                Ok(None) => None,
                Err(e) => {
                    log::error!("stored response {id}: {e}");
                    return Err(bad(
                        format!("Previous response with id '{id}' could not be read."),
                        "previous_response_id",
                    ));
                }
            }
        }
        Some(_) => {
            return Err(bad(
                "`previous_response_id` must be a string".to_owned(),
                "previous_response_id",
            ))
        }
    };
    Ok(Turn {
        request: v,
        previous,
        prior,
        prior_provider,
        input,
        store,
        owner,
        dir,
        ttl,
    })
}

/// Stores the turn `response` ends (when asked to), before the client gets
/// it: the conversation so far, this turn's input, and its output.
/// `provider` served it.
pub async fn commit(call: &Call<'_>, response: &Value, provider: &str) {
    let Some(turn) = &call.turn else {
        return;
    };
    if !turn.store || call.client != ClientDialect::Responses {
        return;
    }
    let Some(id) = response.get("id").and_then(Value::as_str) else {
        return;
    };
    let mut items = Vec::with_capacity(turn.prior().len() + turn.input.len() + 2);
    items.extend(turn.prior().iter().cloned());
    items.extend(turn.input.iter().cloned());
    if let Some(Value::Array(out)) = response.get("output") {
        items.extend(out.iter().cloned());
    }
    let record = StoredTurn {
        id: id.to_owned(),
        owner: turn.owner.clone(),
        expires_at_ms: now_ms().saturating_add(turn.ttl.as_millis() as u64),
        items,
        response: response.clone(),
        provider: Some(provider.to_owned()),
    };
    let dir = turn.dir.clone();
    let saved = glommio::executor()
        .spawn_blocking(move || stored::save(&dir, &record))
        .await;
    if let Err(e) = saved {
        log::error!("{}: response {id} not stored: {e}", call.rid);
    }
}

/// `GET` or `DELETE /v1/responses/{id}`.
pub async fn by_id(
    shard: &Rc<Shard>,
    generation: &crate::generation::Generation,
    conn: &mut ClientConn,
    req: &Request<'_>,
    id: &str,
    delete: bool,
    rid: &str,
) -> Outcome {
    let openai = ClientDialect::OpenAi;
    let actor = match shard.admission.identify(req) {
        Ok(a) => a,
        Err(_) => {
            return send_error(conn, openai, &GatewayError::Unauthorized, rid, &[], false).await
        }
    };
    let (dir, owner, id2) = (
        generation.config.store.dir.clone(),
        owner_of(actor.as_ref()),
        id.to_owned(),
    );
    let done = glommio::executor()
        .spawn_blocking(move || {
            if delete {
                stored::delete(&dir, &id2, &owner, now_ms()).map(|d| d.then_some(Value::Null))
            } else {
                stored::load(&dir, &id2, &owner, now_ms()).map(|t| t.map(|t| t.response))
            }
        })
        .await;
    let body = match done {
        Ok(Some(_)) if delete => {
            serde_json::json!({"id": id, "object": "response.deleted", "deleted": true})
        }
        Ok(Some(response)) => response,
        Ok(None) => {
            let e = GatewayError::NotFound(format!("Response with id '{id}' not found."));
            return send_error(conn, openai, &e, rid, &[], false).await;
        }
        Err(e) => {
            log::error!("{rid}: stored response {id}: {e}");
            let e = GatewayError::Misconfigured("the stored response could not be read".into());
            return send_error(conn, openai, &e, rid, &[], false).await;
        }
    };
    let bytes = respond::full(
        200,
        b"application/json",
        &[],
        &serde_json::to_vec(&body).unwrap_or_default(),
        rid,
        false,
    );
    match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}
