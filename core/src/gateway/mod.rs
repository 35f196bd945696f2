//! The request pipeline, top to bottom: route → extract facts → admit →
//! [`route`] picks the model's targets → for each, an [`attempt`] runs to
//! the answer's head (an upstream's, or the in-process mock's) → [`relay`]
//! writes it to the client → on a failure before any byte reached the
//! client, the route may try the next target.

mod attempt;
pub mod egress;
mod mock;
pub mod models;
mod plan;
mod relay;
mod route;
pub use plan::PassHeads;

use crate::admission::Refusal;
use crate::config::Target;
use crate::error::GatewayError;
use crate::server::{respond, send_error, ClientConn, Outcome, Request};
use crate::shard::Shard;
use egress::ClientDialect;
use shardgate_proto::h1::Method;
use shardgate_proto::json::Member;
use shardgate_proto::openai::Usage;
use shardgate_proto::openai::{extract_facts, RequestFacts};
use shardgate_providers::ReplyCtx;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// The model API endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API (`POST /v1/messages`).
    Messages,
}

impl Api {
    pub fn client_path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
            Api::Messages => "/v1/messages",
        }
    }

    pub fn can_stream(self) -> bool {
        !matches!(self, Api::Embeddings)
    }

    pub fn dialect(self) -> ClientDialect {
        match self {
            Api::Messages => ClientDialect::Anthropic,
            _ => ClientDialect::OpenAi,
        }
    }
}

/// One API request on its way through the pipeline: what every stage needs
/// to know about it.
pub struct Call<'a> {
    pub shard: &'a Rc<Shard>,
    pub req: &'a Request<'a>,
    pub facts: &'a RequestFacts,
    /// The body's top-level members, from the facts' scan.
    pub members: &'a [Member],
    pub api: Api,
    pub client: ClientDialect,
    pub rid: &'a str,
    /// Headers every response to this call carries (rate limits, fallback).
    pub headers: Vec<(&'static str, String)>,
    /// Tokens reserved for the prompt, the estimate for a cut stream.
    pub prompt_estimate: u64,
    /// What the current attempt's answer used, set by whoever read it.
    metered: RefCell<Option<Metered>>,
}

/// A call's attempts, in order: most calls make one.
pub type Attempts<'a> = SmallVec<[AttemptRecord<'a>; 2]>;

/// One attempt at one target, as the route saw it end. Every attempt's
/// usage is settled, not only the last one's: an upstream that answered
/// (and billed) before its answer proved unusable is still paid for.
#[derive(Debug)]
pub struct AttemptRecord<'a> {
    pub target: &'a Target,
    pub outcome: AttemptOutcome,
    /// From the attempt's start to its answer's head.
    pub head_after: Option<Duration>,
    pub elapsed: Duration,
    pub metered: Option<Metered>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Its answer went to the client (whole, or a stream however it ended).
    Answered,
    /// It failed before any byte reached the client (the error's label).
    Failed(&'static str),
    /// The client left before the answer's head.
    ClientLeft,
}

/// What one answered call consumed, for settlement and audit.
#[derive(Debug, Clone)]
pub struct Metered {
    /// The upstream model that served it (what is priced).
    pub model: String,
    pub usage: Option<Usage>,
    /// Not the provider's word (a cut stream, an answer without usage).
    pub estimated: bool,
}

impl Call<'_> {
    /// Ends the current attempt: what it used moves into its record.
    fn take_metered(&self) -> Option<Metered> {
        self.metered.borrow_mut().take()
    }

    /// The headers of every response to this call, plus the served target.
    /// Inline: a call rarely carries more than a few.
    pub fn extra<'b>(&'b self, served_by: &'b str) -> SmallVec<[(&'b str, &'b [u8]); 6]> {
        let mut v = SmallVec::with_capacity(self.headers.len() + 1);
        v.push(("x-shardgate-target", served_by.as_bytes()));
        v.extend(self.headers.iter().map(|(k, val)| (*k, val.as_bytes())));
        v
    }

    pub fn meter(&self, model: &str, usage: Option<Usage>, estimated: bool) {
        *self.metered.borrow_mut() = Some(Metered {
            model: model.to_owned(),
            usage,
            estimated,
        });
    }

    /// What translators need to render answers for this client. Answers
    /// name the model that served them (`target`), as pass-through answers
    /// do: the alias is what the client asked for, not what ran. Built only
    /// for answers that are rendered, not for those relayed as they came.
    pub fn reply_ctx(&self, served_model: &str) -> ReplyCtx {
        ReplyCtx {
            id: match self.client {
                ClientDialect::OpenAi => format!("chatcmpl-{}", self.rid),
                ClientDialect::Anthropic => format!("msg_{}", self.rid.replace('-', "_")),
            },
            model: served_model.to_owned(),
            created: unix_now(),
            // An Anthropic stream ends with its usage, so always ask for it.
            include_usage: self.facts.include_usage || self.client == ClientDialect::Anthropic,
        }
    }
}

/// Unix seconds now (`created` of rendered answers).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An error response in the client's dialect, with `headers`.
pub async fn send_error_in(
    conn: &mut ClientConn,
    client: ClientDialect,
    err: &GatewayError,
    rid: &str,
    headers: &[(&'static str, String)],
) -> Outcome {
    let extra: SmallVec<[(&str, &[u8]); 4]> =
        headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    match conn
        .write(&error_response(client, err, rid, &extra, false))
        .await
    {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}

/// The dialect of errors about a request to `path` that is refused before
/// it is routed (a body too large, late or malformed): an Anthropic SDK
/// calling `/v1/messages` reads Anthropic's error shape.
pub fn dialect_of_path(path: &[u8]) -> ClientDialect {
    match route(Method::Post, path) {
        Route::Api(api) => api.dialect(),
        _ => ClientDialect::OpenAi,
    }
}

/// A whole error response in `dialect`'s shape, with `extra` headers: the
/// one place an error becomes response bytes once its dialect is known.
pub fn error_response(
    dialect: ClientDialect,
    err: &GatewayError,
    rid: &str,
    extra: &[(&str, &[u8])],
    close: bool,
) -> Vec<u8> {
    if dialect == ClientDialect::OpenAi && extra.is_empty() {
        return respond::error(err, rid, close);
    }
    let body = dialect.error_body(err);
    respond::full(err.status(), b"application/json", extra, &body, rid, close)
}

enum Route {
    Health,
    Ready,
    Models,
    Api(Api),
    WrongMethod,
    Unknown,
}

fn route(method: Method, path: &[u8]) -> Route {
    let (want, route) = match path {
        b"/healthz" => (Method::Get, Route::Health),
        b"/readyz" => (Method::Get, Route::Ready),
        b"/v1/models" => (Method::Get, Route::Models),
        b"/v1/chat/completions" => (Method::Post, Route::Api(Api::ChatCompletions)),
        b"/v1/completions" => (Method::Post, Route::Api(Api::Completions)),
        b"/v1/embeddings" => (Method::Post, Route::Api(Api::Embeddings)),
        b"/v1/messages" => (Method::Post, Route::Api(Api::Messages)),
        _ => return Route::Unknown,
    };
    if method == want || (want == Method::Get && method == Method::Head) {
        route
    } else {
        Route::WrongMethod
    }
}

pub async fn handle(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    req: Request<'_>,
    rid: &str,
) -> Outcome {
    let method_name = || {
        String::from_utf8_lossy(
            &req.head_buf[..req.head_buf.iter().position(|&b| b == b' ').unwrap_or(0)],
        )
        .into_owned()
    };
    match route(req.head.method, req.path()) {
        Route::Health => json_ok(conn, br#"{"status":"ok"}"#, rid).await,
        Route::Ready if shard.draining() => {
            send_error(conn, &GatewayError::Draining, rid, true).await
        }
        Route::Ready => json_ok(conn, br#"{"status":"ready"}"#, rid).await,
        Route::Models if shard.admission.is_open() => json_ok(conn, &shard.models_body, rid).await,
        Route::Models => {
            let all = shard.config.models.keys().map(String::as_str);
            match shard.admission.visible_models(&req, all) {
                Ok(list) => json_ok(conn, &models::render_list(list.into_iter()), rid).await,
                Err(_) => send_error(conn, &GatewayError::Unauthorized, rid, false).await,
            }
        }
        Route::Api(api) => handle_api(shard, conn, &req, api, rid).await,
        Route::WrongMethod => {
            let e = GatewayError::MethodNotAllowed {
                method: method_name(),
                path: String::from_utf8_lossy(req.path()).into_owned(),
            };
            send_error(conn, &e, rid, false).await
        }
        Route::Unknown => {
            let e = GatewayError::UnknownRoute {
                method: method_name(),
                path: String::from_utf8_lossy(req.path()).into_owned(),
            };
            send_error(conn, &e, rid, false).await
        }
    }
}

async fn json_ok(conn: &mut ClientConn, body: &[u8], rid: &str) -> Outcome {
    let bytes = respond::full(200, b"application/json", &[], body, rid, false);
    match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}

async fn handle_api(
    shard: &Rc<Shard>,
    conn: &mut ClientConn,
    req: &Request<'_>,
    api: Api,
    rid: &str,
) -> Outcome {
    let client = api.dialect();
    let facts = extract_facts(&req.body, &mut shard.json.borrow_mut());
    let (mut facts, members): (RequestFacts, _) = match facts {
        Ok(f) => f,
        Err(e) => return send_error_in(conn, client, &e.into(), rid, &[]).await,
    };
    if !api.can_stream() {
        facts.stream = false;
    }
    let config = &shard.config;
    let upstream_model = |alias: &str| {
        config
            .models
            .get(alias)
            .and_then(|m| m.targets.first())
            .map_or_else(|| alias.to_owned(), |t| t.model.clone())
    };
    let mut ticket = match shard
        .admission
        .admit(
            req,
            &facts.model,
            upstream_model,
            facts.max_tokens,
            &facts.tool_names,
        )
        .await
    {
        Ok(t) => t,
        Err(Refusal::Unauthorized) => {
            return send_error_in(conn, client, &GatewayError::Unauthorized, rid, &[]).await
        }
        Err(Refusal::Denied {
            reason,
            mut headers,
        }) => {
            if let Some(secs) = reason.retry_after_secs() {
                headers.push(("retry-after", secs.to_string()));
            }
            let err = GatewayError::Policy(reason);
            log::info!("{rid}: refused: {err}");
            return send_error_in(conn, client, &err, rid, &headers).await;
        }
    };
    let mut headers = std::mem::take(&mut ticket.headers);
    let alias: &str = match &ticket.fallback {
        Some(fallback) => {
            headers.push(("x-shardgate-fallback-model", fallback.clone()));
            headers.push(("x-shardgate-requested-model", facts.model.clone()));
            fallback
        }
        None => &facts.model,
    };
    let Some(model) = config.models.get(alias) else {
        let e = GatewayError::ModelNotFound(alias.to_owned());
        shard.admission.settle_all(&ticket, []);
        return send_error_in(conn, client, &e, rid, &headers).await;
    };
    let call = Call {
        shard,
        req,
        facts: &facts,
        members: &members,
        api,
        client,
        rid,
        headers,
        prompt_estimate: ticket.prompt_estimate(),
        metered: RefCell::new(None),
    };
    let mut attempts = Attempts::new();
    let outcome = route::serve(&call, conn, model, &mut attempts).await;
    // Every attempt that reported usage is settled; with none, the
    // reservation goes back and the request still counts.
    let metered = attempts.iter().filter_map(|a| a.metered.as_ref());
    shard.admission.settle_all(
        &ticket,
        metered.map(|m| (m.model.as_str(), m.usage.as_ref(), m.estimated)),
    );
    outcome
}
