//! Responses conversations the gateway keeps itself: `previous_response_id`
//! continues a stored turn whatever provider serves the next one, and
//! `store` (on unless the request says `false`) keeps each turn for
//! `store.responses_ttl` (see `store::conversations`, whose thread keeps
//! them: this is the shards' end of it). Also `GET` and `DELETE
//! /v1/responses/{id}`.
//!
//! Ids the gateway cannot resolve (unknown, expired, deleted, or another
//! key's) get a 400 naming `previous_response_id`: never silently dropped.

use super::dialect::ClientDialect;
use super::{send_error, Call};
use crate::admission::ANONYMOUS;
use crate::error::GatewayError;
use crate::server::{respond, ClientConn, Outcome, Request};
use crate::shard::Shard;
use crate::store::conversations::{valid_id, Ask, History, Reply, StoredTurn};
use glommio::channels::local_channel::{self, LocalSender};
use serde_json::value::RawValue;
use serde_json::Value;
use shardgate_policy::Actor;
use shardgate_proto::json::{find_top_level, first_member, last_named, Member};
use shardgate_providers::responses::is_claude_reasoning;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::Duration;

/// How long a shard waits for the store thread (it answers from memory:
/// this is only for a thread that has stopped).
const ASK_WAIT: Duration = Duration::from_secs(2);

/// A shard's end of the store thread.
pub struct Link {
    ask: crate::handoff::Sender<Ask>,
    me: usize,
    next: Cell<u64>,
    pending: RefCell<HashMap<u64, LocalSender<Reply>>>,
    ttl: Duration,
    /// `store.responses_max_bytes: 0`: this gateway keeps no turns.
    keeps: bool,
    /// With a cluster: a turn is put and acknowledged (once Redis has it)
    /// before its answer goes out, so any node finds it at once.
    shares: bool,
}

impl Link {
    pub fn new(
        ask: crate::handoff::Sender<Ask>,
        me: usize,
        ttl: Duration,
        keeps: bool,
        shares: bool,
    ) -> Rc<Self> {
        Rc::new(Link {
            ask,
            me,
            next: Cell::new(0),
            pending: RefCell::new(HashMap::new()),
            ttl,
            keeps,
            shares,
        })
    }

    /// A reply from the store thread.
    pub fn on_reply(&self, r: Reply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&r.token()) {
            let _ = tx.try_send(r);
        }
    }

    async fn call(&self, make: impl FnOnce(usize, u64) -> Ask) -> Option<Reply> {
        let token = self.next.get();
        self.next.set(token + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(token, tx);
        if self.ask.send(make(self.me, token)).is_err() {
            self.pending.borrow_mut().remove(&token);
            return None;
        }
        let got = futures_lite::future::or(rx.recv(), async {
            glommio::timer::sleep(ASK_WAIT).await;
            None
        })
        .await;
        self.pending.borrow_mut().remove(&token);
        got
    }

    /// The conversation ending at `id`; Err when the id is another key's.
    async fn history(&self, id: &str, owner: &str) -> Result<Option<History>, ()> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        match self
            .call(|shard, token| Ask::History {
                id,
                owner,
                shard,
                token,
            })
            .await
        {
            Some(Reply::History { foreign: true, .. }) => Err(()),
            Some(Reply::History { found, .. }) => Ok(found),
            _ => Ok(None),
        }
    }
}

/// What a Responses request carries beyond its body.
#[derive(Debug)]
pub struct Turn {
    /// The `previous_response_id` it names.
    previous: Option<String>,
    /// The items of the turns it continues, when the gateway has them
    /// (an id it does not know may be an OpenAI provider's own).
    prior: Option<Vec<Value>>,
    /// The provider that served the turn it continues.
    prior_provider: Option<String>,
    /// Its own input items, a JSON array as the request gave them (a
    /// string `input` is one user message); None when the body was not
    /// read (nothing to keep or continue).
    input: Option<Box<RawValue>>,
    pub store: bool,
    owner: String,
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
            (Some(id), None) => Some(not_found(id)),
            _ => None,
        }
    }

    /// For an OpenAI provider: the body to send instead of the client's
    /// `body`, or None when it goes as it is. Instead when the turn it
    /// continues was served elsewhere (that provider does not know the
    /// id): the conversation so far in `input`, no `previous_response_id`.
    /// And without the reasoning items that carry Claude's thinking (from
    /// the stored turns, or the client's own input), which OpenAI cannot
    /// open and refuses.
    pub fn expand_for(&self, provider: &str, body: &[u8]) -> Option<Vec<u8>> {
        let expand = self.previous.is_some()
            && self.prior.is_some()
            && self.prior_provider.as_deref() != Some(provider);
        let claude_reasoning = CLAUDE_REASONING.find(body).is_some();
        if !expand && !claude_reasoning {
            return None;
        }
        let mut v: Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object_mut()?;
        let mut items = if expand {
            obj.remove("previous_response_id");
            let mut items = self.prior.clone().unwrap_or_default();
            if let Some(input) = &self.input {
                items.extend(serde_json::from_str::<Vec<Value>>(input.get()).ok()?);
            }
            items
        } else {
            match obj.get_mut("input") {
                Some(Value::Array(items)) => std::mem::take(items),
                _ => return None,
            }
        };
        let before = items.len();
        items.retain(|i| !is_claude_reasoning(i));
        if !expand && items.len() == before {
            return None;
        }
        obj.insert("input".into(), Value::Array(items));
        serde_json::to_vec(&v).ok()
    }
}

/// What marks a body that may hold Claude's reasoning items, built once.
static CLAUDE_REASONING: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"anthropic."));

/// A request's own input items as one JSON array. `input` is raw JSON
/// from a body the facts' scan checked.
fn input_array(input: Option<&[u8]>) -> Result<Box<RawValue>, GatewayError> {
    let raw = input
        .map_or(Ok("null"), std::str::from_utf8)
        .map_err(|e| bad(e.to_string(), "input"))?;
    let array = match raw.as_bytes().first() {
        Some(b'[') => raw.to_owned(),
        Some(b'"') => format!(r#"[{{"type":"message","role":"user","content":{raw}}}]"#),
        Some(b'n') => "[]".to_owned(),
        _ => {
            return Err(bad(
                "`input` must be a string or an array of items".to_owned(),
                "input",
            ))
        }
    };
    RawValue::from_string(array).map_err(|e| bad(e.to_string(), "input"))
}

/// A response's `id`, when it is one the store can key.
fn response_id(response: &RawValue) -> Option<String> {
    let json = response.get().as_bytes();
    let at = first_member(json, "id").or_else(|| find_top_level(json, "id"))?;
    let id: String = serde_json::from_slice(&json[at]).ok()?;
    valid_id(&id).then_some(id)
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

fn not_found(id: &str) -> GatewayError {
    bad(
        format!("Previous response with id '{id}' not found: it does not exist, expired, was deleted, or belongs to another key."),
        "previous_response_id",
    )
}

/// Reads what `body` continues, from its top-level `members` (the facts'
/// scan checked it as JSON; only the members read here are parsed). An id
/// the gateway does not know is left for the target to judge (an OpenAI
/// provider may know it).
pub async fn open(
    shard: &Shard,
    body: &[u8],
    members: &[Member],
    actor: Option<&Actor>,
) -> Result<Turn, GatewayError> {
    let keeps = shard.conversations().is_some_and(|l| l.keeps);
    let member = |name| last_named(body, members, name).filter(|v| *v != b"null");
    if !keeps && member("previous_response_id").is_none() {
        // Nothing to keep and nothing to continue: the body is not read.
        return Ok(Turn {
            previous: None,
            prior: Some(Vec::new()),
            prior_provider: None,
            input: None,
            store: false,
            owner: String::new(),
        });
    }
    let input = Some(input_array(member("input"))?);
    // Only `false` opts out, as the API reads it.
    let store = keeps && member("store") != Some(b"false");
    let owner = owner_of(actor);
    let mut previous = None;
    let mut prior_provider = None;
    let previous_id = member("previous_response_id")
        .map(|v| {
            serde_json::from_slice::<String>(v).map_err(|_| {
                bad(
                    "`previous_response_id` must be a string".to_owned(),
                    "previous_response_id",
                )
            })
        })
        .transpose()?;
    let prior = match &previous_id {
        None => Some(Vec::new()),
        Some(id) if !valid_id(id) => return Err(not_found(id)),
        Some(id) => {
            previous = Some(id.clone());
            match shard.conversations() {
                Some(link) => match link.history(id, &owner).await {
                    Err(()) => return Err(not_found(id)),
                    Ok(found) => found.map(|h| {
                        prior_provider = h.provider;
                        h.items
                    }),
                },
                None => None,
            }
        }
    };
    Ok(Turn {
        previous,
        prior,
        prior_provider,
        input,
        store,
        owner,
    })
}

/// Stores the turn `response` ends (when asked to) before the client gets
/// it: its input and output, linked to the turn it continued. `provider`
/// served it. Without a cluster it never waits (the store thread takes
/// turns in order, before any later ask); with one, it waits until the
/// cluster's Redis has the turn (at most the ask's bound).
pub async fn commit(call: &Call<'_>, response: Box<RawValue>, provider: &str) {
    let (Some(turn), Some(link)) = (&call.turn, call.shard.conversations()) else {
        return;
    };
    if !turn.store || call.client != ClientDialect::Responses {
        return;
    }
    let (Some(input), Some(id)) = (&turn.input, response_id(&response)) else {
        return;
    };
    // A turn continuing one the gateway does not have starts its chain.
    let prev = turn.previous.clone().filter(|_| turn.prior.is_some());
    let record = StoredTurn {
        id: id.clone(),
        owner: turn.owner.clone(),
        expires_at_ms: now_ms().saturating_add(link.ttl.as_millis() as u64),
        prev,
        input: input.clone(),
        response,
        provider: Some(provider.to_owned()),
    };
    if link.shares {
        let turn = Box::new(record);
        let stored = link
            .call(|shard, token| Ask::PutAcked { turn, shard, token })
            .await;
        match stored {
            Some(Reply::Stored { shared: true, .. }) => {}
            Some(_) => log::warn!(
                "{}: response {id} stored on this node only: the cluster's Redis did not take it",
                call.rid
            ),
            None => log::error!(
                "{}: response {id} not stored: the store thread did not answer",
                call.rid
            ),
        }
        return;
    }
    if link.ask.send(Ask::Put(Box::new(record))).is_err() {
        log::error!(
            "{}: response {id} not stored: the store thread has stopped",
            call.rid
        );
    }
}

/// `GET` or `DELETE /v1/responses/{id}`.
pub async fn by_id(
    shard: &Rc<Shard>,
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
    let missing = GatewayError::NotFound(format!("Response with id '{id}' not found."));
    let Some(link) = shard.conversations().filter(|_| valid_id(id)) else {
        return send_error(conn, openai, &missing, rid, &[], false).await;
    };
    let (owner, id2) = (owner_of(actor.as_ref()), id.to_owned());
    let reply = if delete {
        link.call(|shard, token| Ask::Delete {
            id: id2,
            owner,
            shard,
            token,
        })
        .await
    } else {
        link.call(|shard, token| Ask::Get {
            id: id2,
            owner,
            shard,
            token,
        })
        .await
    };
    let body = match reply {
        Some(Reply::Deleted { found: true, .. }) => {
            serde_json::json!({"id": id, "object": "response.deleted", "deleted": true}).to_string()
        }
        Some(Reply::Get {
            response: Some(r), ..
        }) => Box::<str>::from(r).into_string(),
        _ => return send_error(conn, openai, &missing, rid, &[], false).await,
    };
    let bytes = respond::full(200, b"application/json", &[], body.as_bytes(), rid, false);
    match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}
