//! The request pipeline, top to bottom: route → extract facts → admit →
//! [`route`] picks the model's targets → for each, an [`attempt`] runs to
//! the answer's head (an upstream's, or the in-process mock's) → [`relay`]
//! writes it to the client → on a failure before any byte reached the
//! client, the route may try the next target.

mod attempt;
pub mod balance;
mod capture;
mod count;
pub mod dialect;
pub mod egress;
pub mod health;
pub use dialect::ClientDialect;
pub mod conversation;
mod mock;
pub mod models;
mod plan;
mod relay;
mod replay;
mod route;
pub(crate) mod tool_guard;
pub use plan::PassHeads;

use crate::admission::{Refusal, Ticket};
use crate::cache;
use crate::error::GatewayError;
use crate::generation::Generation;
use crate::guardrails::{self, Verdict};
use crate::record::{AttemptOutcome, AttemptRecord, Attempts, Metered, Trail};

use crate::server::{respond, ClientConn, Outcome, Request};
use crate::shard::Shard;
use shardgate_proto::h1::Method;
use shardgate_proto::json::Member;
use shardgate_proto::openai::Usage;
use shardgate_proto::openai::{extract_facts, RequestFacts};
use shardgate_providers::ReplyCtx;
use smallvec::SmallVec;
use std::cell::RefCell;
use std::rc::Rc;

/// The model API endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API (`POST /v1/messages`).
    Messages,
    /// OpenAI's Responses API (`POST /v1/responses`).
    Responses,
}

impl Api {
    pub fn client_path(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
            Api::Embeddings => "/v1/embeddings",
            Api::Messages => "/v1/messages",
            Api::Responses => "/v1/responses",
        }
    }

    pub fn can_stream(self) -> bool {
        !matches!(self, Api::Embeddings)
    }

    pub fn dialect(self) -> ClientDialect {
        match self {
            Api::Messages => ClientDialect::Anthropic,
            Api::Responses => ClientDialect::Responses,
            _ => ClientDialect::OpenAi,
        }
    }
}

/// One API request on its way through the pipeline: what every stage needs
/// to know about it.
pub struct Call<'a> {
    pub shard: &'a Rc<Shard>,
    /// The config generation the request started on.
    pub generation: &'a Generation,
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
    /// Checks tool calls in the answer, for callers whose policy
    /// restricts tools. Boxed: few callers have one, and inline it sized
    /// every request's future (which a stream holds for its life).
    guard: Option<Box<RefCell<tool_guard::ToolGuard>>>,
    /// The current attempt's number (from 1): the answer's
    /// `x-shardgate-attempts`.
    attempt: std::cell::Cell<usize>,
    /// A Responses request: the conversation it continues, and whether
    /// its turn is stored.
    pub turn: Option<Box<conversation::Turn>>,
    /// The guardrails to run on the answer (indexes into the
    /// generation's), and the records of those that ran.
    pub output_checks: Vec<usize>,
    /// The `output` checks that are webhooks: a whole answer is asked
    /// about before it goes out, a stream is held whole until they answer.
    pub output_hooks: Vec<usize>,
    /// The caller, as webhooks are told of it (null without hooks).
    pub hook_actor: serde_json::Value,
    /// The same for tool calls' arguments in the answer (whole answers).
    pub tool_call_checks: Vec<usize>,
    pub guard_records: RefCell<Vec<crate::guardrails::GuardRecord>>,
    /// A miss the cache keeps: the most bytes of answer it may keep, and
    /// the answer once read ([`capture`]).
    capture_limit: Option<usize>,
    captured: RefCell<Option<Box<crate::cache::Captured>>>,
    /// Parallel webhooks' verdict, which the answer waits for before any
    /// byte of it reaches the client.
    pub hold: Option<Rc<guardrails::Hold>>,
}

impl Call<'_> {
    /// Ends the current attempt: what it used moves into its record.
    fn take_metered(&self) -> Option<Metered> {
        self.metered.borrow_mut().take()
    }

    /// The headers of every response to this call, plus the served target.
    /// Inline: a call rarely carries more than a few.
    pub fn extra(&self) -> SmallVec<[(&str, &[u8]); 6]> {
        self.headers
            .iter()
            .map(|(k, v)| (*k, v.as_bytes()))
            .collect()
    }

    /// The pre-rendered lines naming what serves this answer: its route,
    /// its target, and the attempt's number.
    pub fn lines<'b>(&self, alias_line: &'b [u8], target_lines: &'b [u8]) -> [&'b [u8]; 3] {
        // Every count a route allows (`config::route::MAX_ATTEMPTS`).
        const ATTEMPTS: [&[u8]; 11] = [
            b"x-shardgate-attempts: 0\r\n",
            b"x-shardgate-attempts: 1\r\n",
            b"x-shardgate-attempts: 2\r\n",
            b"x-shardgate-attempts: 3\r\n",
            b"x-shardgate-attempts: 4\r\n",
            b"x-shardgate-attempts: 5\r\n",
            b"x-shardgate-attempts: 6\r\n",
            b"x-shardgate-attempts: 7\r\n",
            b"x-shardgate-attempts: 8\r\n",
            b"x-shardgate-attempts: 9\r\n",
            b"x-shardgate-attempts: 10\r\n",
        ];
        let n = ATTEMPTS
            .get(self.attempt.get())
            .copied()
            .unwrap_or(b"x-shardgate-attempts: 10\r\n");
        [alias_line, target_lines, n]
    }

    /// Records what the current attempt's answer used (its target's
    /// model is what is priced).
    pub fn meter(&self, usage: Option<Usage>, estimated: bool) {
        *self.metered.borrow_mut() = Some(Metered {
            usage,
            estimated,
            drained: false,
        });
    }

    /// Keeps `entry` in this shard's set `entries` under the call's config
    /// generation (see [`cache::ShardEntries::put`]).
    fn keep(
        &self,
        epoch: u64,
        entries: &str,
        settings: &crate::config::cache::CacheSettings,
        key: cache::Key,
        entry: cache::Entry,
    ) -> (Rc<cache::Entry>, bool) {
        let (number, shards) = (self.generation.number, self.shard.config.shards);
        self.shard
            .cache
            .borrow_mut()
            .put(number, epoch, entries, settings, shards, key, entry)
    }

    /// Marks what was metered as read after the client left.
    pub fn mark_drained(&self) {
        if let Some(m) = self.metered.borrow_mut().as_mut() {
            m.drained = true;
        }
    }

    /// What translators need to render answers for this client. Answers
    /// name the model that served them (`target`), as pass-through answers
    /// do: the alias is what the client asked for, not what ran. Built only
    /// for answers that are rendered, not for those relayed as they came.
    pub fn reply_ctx(&self, served_model: &str) -> ReplyCtx {
        self.render(served_model).reply_ctx(self.client)
    }

    /// What rendering an answer served by `served_model` knows of this
    /// call.
    pub fn render<'s>(&'s self, served_model: &'s str) -> dialect::Render<'s> {
        dialect::Render {
            rid: self.rid,
            request: &self.req.body,
            model: served_model,
            include_usage: self.facts.include_usage,
        }
    }
}

/// Unix seconds now (`created` of rendered answers).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers with `err` in `dialect`'s shape, with `headers`: every error
/// response to a request is written here, and noted for its record.
/// `close` ends the connection after it (the request stream is in an
/// unknown state).
pub async fn send_error(
    conn: &mut ClientConn,
    dialect: ClientDialect,
    err: &GatewayError,
    rid: &str,
    headers: &[(&'static str, String)],
    close: bool,
) -> Outcome {
    conn.note_error(err.label());
    let extra: SmallVec<[(&str, &[u8]); 4]> =
        headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    match conn
        .write(&error_response(dialect, err, rid, &extra, close))
        .await
    {
        Ok(()) if !close => Outcome::KEEP,
        _ => Outcome::CLOSE,
    }
}

/// The endpoint label of `path` for records and metrics (one of a fixed
/// set, never the client's text), and the dialect of errors about a request
/// to it that is refused before it is routed (a body too large, late or
/// malformed): an Anthropic SDK calling `/v1/messages` reads Anthropic's
/// error shape.
pub fn endpoint_of_path(path: &[u8]) -> (&'static str, ClientDialect) {
    match route(Method::Post, path) {
        Route::Api(api) => (api.client_path(), api.dialect()),
        Route::Mcp => ("/mcp", ClientDialect::OpenAi),
        Route::CountTokens(ClientDialect::Anthropic) => {
            ("/v1/messages/count_tokens", ClientDialect::Anthropic)
        }
        Route::CountTokens(ClientDialect::OpenAi) => {
            ("/v1/responses/input_tokens", ClientDialect::OpenAi)
        }
        Route::WrongMethod => match route(Method::Get, path) {
            Route::Health => ("/healthz", ClientDialect::OpenAi),
            Route::Ready => ("/readyz", ClientDialect::OpenAi),
            Route::Models => ("/v1/models", ClientDialect::OpenAi),
            Route::StoredResponse { .. } => ("/v1/responses/{id}", ClientDialect::OpenAi),
            _ => ("other", ClientDialect::OpenAi),
        },
        _ => ("other", ClientDialect::OpenAi),
    }
}

/// A whole error response in `dialect`'s shape, with `extra` headers: the
/// one place an error becomes response bytes.
fn error_response(
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
    /// The MCP endpoint, every method (it answers those it does not serve).
    Mcp,
    /// Token counting in a dialect's shape.
    CountTokens(ClientDialect),
    /// `GET` or `DELETE /v1/responses/{id}`.
    StoredResponse {
        delete: bool,
    },
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
        b"/v1/responses" => (Method::Post, Route::Api(Api::Responses)),
        b"/v1/messages/count_tokens" => {
            (Method::Post, Route::CountTokens(ClientDialect::Anthropic))
        }
        b"/v1/responses/input_tokens" => (Method::Post, Route::CountTokens(ClientDialect::OpenAi)),
        b"/mcp" => return Route::Mcp,
        _ => {
            return match path.strip_prefix(b"/v1/responses/") {
                Some(id) if !id.is_empty() && !id.contains(&b'/') => match method {
                    Method::Get | Method::Head => Route::StoredResponse { delete: false },
                    Method::Delete => Route::StoredResponse { delete: true },
                    _ => Route::WrongMethod,
                },
                _ => Route::Unknown,
            }
        }
    };
    if method == want || (want == Method::Get && method == Method::Head) {
        route
    } else {
        Route::WrongMethod
    }
}

/// The router of `api` listeners: the model APIs, health and readiness.
pub struct ApiRouter;

/// The shape of errors about a request to an `api` listener: a model
/// API's dialect, or JSON-RPC for `/mcp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ApiDialect {
    #[default]
    OpenAi,
    Anthropic,
    Mcp,
}

impl crate::server::Router for ApiRouter {
    type Dialect = ApiDialect;

    fn classify(&self, path: &[u8]) -> (&'static str, ApiDialect) {
        if path == b"/mcp" {
            return ("/mcp", ApiDialect::Mcp);
        }
        match endpoint_of_path(path) {
            (label, ClientDialect::Anthropic) => (label, ApiDialect::Anthropic),
            (label, ClientDialect::OpenAi | ClientDialect::Responses) => {
                (label, ApiDialect::OpenAi)
            }
        }
    }

    async fn refuse(
        &self,
        conn: &mut ClientConn,
        dialect: ApiDialect,
        err: &GatewayError,
        rid: &str,
    ) {
        let model = match dialect {
            ApiDialect::OpenAi => ClientDialect::OpenAi,
            ApiDialect::Anthropic => ClientDialect::Anthropic,
            ApiDialect::Mcp => return crate::mcp::endpoint::refuse(conn, err, rid).await,
        };
        send_error(conn, model, err, rid, &[], true).await;
    }

    /// The gateway's own future, not one wrapping it: each layer of
    /// `async` around it would copy its whole state once more per request.
    #[allow(clippy::manual_async_fn)]
    fn handle<'g>(
        &self,
        shard: &Rc<Shard>,
        generation: &'g Generation,
        conn: &mut ClientConn,
        req: Request<'_>,
        rid: &str,
        trail: &mut Trail<'g>,
    ) -> impl std::future::Future<Output = Outcome> {
        // An async block, not an async fn: a function's arguments are kept
        // twice in its future (as captured and as moved into its locals),
        // and this future is held for a stream's whole life.
        async move {
            let openai = ClientDialect::OpenAi;
            let route = route(req.head.method, req.path());
            if matches!(route, Route::Api(_) | Route::Mcp)
                && shard.audit.as_ref().is_some_and(|a| a.refusing())
            {
                // `audit.on_backpressure: block`: no request the log cannot record.
                let e = GatewayError::Overloaded("the audit log is behind");
                return send_error(conn, openai, &e, rid, &[], false).await;
            }
            match route {
                Route::Health => probe(conn, shard, Probe::Health, rid).await,
                Route::Ready => probe(conn, shard, Probe::Ready, rid).await,
                Route::Models if shard.admission.is_open() => {
                    json_ok(conn, &generation.models_body, rid).await
                }
                Route::Models => {
                    let all = generation.config.models.keys().map(String::as_str);
                    match shard.admission.visible_models(&req, all) {
                        Ok(list) => {
                            json_ok(conn, &models::render_list(list.into_iter()), rid).await
                        }
                        Err(_) => {
                            let e = GatewayError::Unauthorized;
                            send_error(conn, openai, &e, rid, &[], false).await
                        }
                    }
                }
                Route::Api(api) => handle_api(shard, generation, conn, &req, api, rid, trail).await,
                Route::CountTokens(dialect) => {
                    count::count(shard, generation, conn, &req, dialect, rid).await
                }
                Route::StoredResponse { delete } => {
                    let path = req.path();
                    let id = std::str::from_utf8(&path[b"/v1/responses/".len()..]).unwrap_or("");
                    let id = id.to_owned();
                    conversation::by_id(shard, conn, &req, &id, delete, rid).await
                }
                // Boxed: an MCP call's state (sessions, upstream calls) is larger
                // than a model call's, and inline it would size every request's
                // future, each stream's included. In a block the shard reuses.
                Route::Mcp => {
                    crate::boxed::pin_pooled!(
                        shard.futures,
                        crate::mcp::endpoint::handle(shard, generation, conn, req, rid, trail)
                    )
                    .await
                }
                Route::WrongMethod => {
                    let e = route_error(&req, true);
                    send_error(conn, openai, &e, rid, &[], false).await
                }
                Route::Unknown => {
                    let e = route_error(&req, false);
                    send_error(conn, openai, &e, rid, &[], false).await
                }
            }
        }
    }
}

/// The error for a request to a path that is not served (or not with its
/// method), quoting both.
pub fn route_error(req: &Request<'_>, wrong_method: bool) -> GatewayError {
    let head = &req.head_buf;
    let method = &head[..head.iter().position(|&b| b == b' ').unwrap_or(0)];
    let method = String::from_utf8_lossy(method).into_owned();
    let path = String::from_utf8_lossy(req.path()).into_owned();
    if wrong_method {
        GatewayError::MethodNotAllowed { method, path }
    } else {
        GatewayError::UnknownRoute { method, path }
    }
}

/// The probes every listener role answers.
pub enum Probe {
    /// The process serves.
    Health,
    /// It takes new work: 503 once draining. On the ops executor (an admin
    /// listener), 503 unless every serving shard answers that it does.
    Ready,
}

/// How long a readiness probe on the ops executor waits for the shards.
const READY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

pub async fn probe(conn: &mut ClientConn, shard: &Shard, which: Probe, rid: &str) -> Outcome {
    match which {
        Probe::Health => json_ok(conn, br#"{"status":"ok"}"#, rid).await,
        Probe::Ready if shard.draining() => {
            let e = GatewayError::Draining;
            send_error(conn, ClientDialect::OpenAi, &e, rid, &[], true).await
        }
        Probe::Ready if shard.duty == crate::shard::Duty::Ops => {
            match shard.peers_ready(READY_WAIT).await {
                Ok(()) => json_ok(conn, br#"{"status":"ready"}"#, rid).await,
                Err(why) => {
                    let e = GatewayError::NotReady(why);
                    send_error(conn, ClientDialect::OpenAi, &e, rid, &[], true).await
                }
            }
        }
        Probe::Ready => json_ok(conn, br#"{"status":"ready"}"#, rid).await,
    }
}

async fn json_ok(conn: &mut ClientConn, body: &[u8], rid: &str) -> Outcome {
    send_ok(conn, b"application/json", body, rid).await
}

/// A whole 200 answer.
pub async fn send_ok(
    conn: &mut ClientConn,
    content_type: &[u8],
    body: &[u8],
    rid: &str,
) -> Outcome {
    let bytes = respond::full(200, content_type, &[], body, rid, false);
    match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}

/// An async block, not an async fn, as [`ApiRouter`]'s handler: a
/// function's arguments are kept twice in its future.
#[allow(clippy::manual_async_fn)]
fn handle_api<'a, 'g, 'r>(
    shard: &'a Rc<Shard>,
    generation: &'g Generation,
    conn: &'a mut ClientConn,
    req: &'a Request<'r>,
    api: Api,
    rid: &'a str,
    trail: &'a mut Trail<'g>,
) -> impl std::future::Future<Output = Outcome> + use<'a, 'g, 'r> {
    async move {
        let client = api.dialect();
        // Locals are scoped so that none the answer does not need stays in the
        // request's future while it is awaited (a moved-from local keeps its
        // room to the end of its scope), since that future is held for a
        // stream's whole life.
        let (mut facts, mut members): (RequestFacts, _) = {
            // The shard's parser is borrowed for this statement only.
            let read = extract_facts(&req.body, &mut shard.json.borrow_mut());
            match read {
                Ok(f) => f,
                Err(e) => return send_error(conn, client, &e.into(), rid, &[], false).await,
            }
        };
        if !api.can_stream() {
            facts.stream = false;
        }
        let config = &generation.config;
        let upstream_model = |alias: &str| {
            config
                .models
                .get(alias)
                .and_then(|m| m.targets.first())
                .map_or_else(|| alias.to_owned(), |t| t.model.clone())
        };
        let mut admitted = shard
            .admission
            .admit(
                req,
                &facts.model,
                &upstream_model,
                facts.max_tokens,
                &facts.tool_names,
            )
            .await;
        if matches!(admitted, Err(Refusal::Unauthorized))
            && shard.admission.presents_unknown_key(req)
        {
            // Boxed: a second admission inline would size every request's
            // future for a path a few requests take.
            admitted = Box::pin(admit_after_reread(shard, req, &facts, &upstream_model))
                .await
                .unwrap_or(Err(Refusal::Unauthorized));
        }
        // Taken apart without an await, so that no part of the admission is
        // kept in the request's future past this point.
        let mut ticket = match admitted {
            Ok(t) => t,
            Err(r) => {
                let (e, headers) = refused(r, trail, &mut facts, rid);
                return send_error(conn, client, &e, rid, &headers, false).await;
            }
        };
        let mut headers = std::mem::take(&mut ticket.headers);
        // Resolved again only for callers admission found guardrails for.
        let plan = match ticket.actor.as_ref() {
            Some(a) if ticket.guardrails && !generation.guardrails.is_empty() => {
                let policies = shard.admission.policy_set();
                let resolved = policies.resolve(a);
                // Boxed, as only callers with guardrails have one.
                guardrails::Plan::new(&generation.guardrails, &resolved).map(Box::new)
            }
            _ => None,
        };
        let redacted;
        let req = {
            let verdict = match &plan {
                // Boxed: a webhook's exchange inline would size every request's
                // future for the few callers with input checks.
                Some(p) if !p.input.is_empty() => Some(
                    Box::pin(guardrails::check_input(
                        shard,
                        generation,
                        &p.input,
                        &req.body,
                        ticket.actor.as_ref(),
                        rid,
                        &mut trail.guardrails,
                    ))
                    .await,
                ),
                _ => None,
            };
            match verdict {
                None | Some(Verdict::Pass) => req,
                Some(Verdict::Blocked(e)) => {
                    log::info!("{rid}: refused: {e}");
                    trail.alias = Some(facts.model);
                    settle(shard, &mut ticket, trail);
                    return send_error(conn, client, &e, rid, &headers, false).await;
                }
                Some(Verdict::Redacted(body)) => {
                    // Only strings changed: the facts stand, the members moved.
                    let reread = extract_facts(&body, &mut shard.json.borrow_mut());
                    match reread {
                        Ok((_, m)) => {
                            members = m;
                            // Boxed: few requests are redacted, and inline
                            // it sized every request's future.
                            redacted = Box::new(req.with_body(body));
                            &*redacted
                        }
                        Err(e) => {
                            // Never the unredacted body instead.
                            log::error!("{rid}: a redacted body did not read back: {e}");
                            let e = GatewayError::Misconfigured(
                                "a guardrail's redaction failed".into(),
                            );
                            trail.alias = Some(facts.model);
                            settle(shard, &mut ticket, trail);
                            return send_error(conn, client, &e, rid, &headers, false).await;
                        }
                    }
                }
            }
        };
        // Log probabilities repeat the answer token by token, beyond what
        // output checks that block or redact can follow.
        if plan
            .as_ref()
            .is_some_and(|p| guardrails::changes_text(&generation.guardrails, &p.output))
            && guardrails::asks_logprobs(&req.body)
        {
            let e = GatewayError::BadRequest {
                message: "Log probabilities are not returned to callers whose answers pass guardrails that block or redact.".into(),
                param: Some("logprobs"),
            };
            trail.alias = Some(facts.model);
            settle(shard, &mut ticket, trail);
            return send_error(conn, client, &e, rid, &headers, false).await;
        }
        let alias: &str = match &ticket.fallback {
            Some(fallback) => {
                headers.push(("x-shardgate-fallback-model", fallback.to_string()));
                headers.push(("x-shardgate-requested-model", facts.model.clone()));
                fallback
            }
            None => &facts.model,
        };
        let Some((alias, model)) = config.models.get_key_value(alias) else {
            let e = GatewayError::ModelNotFound(alias.to_owned());
            trail.alias = Some(alias.to_owned());
            settle(shard, &mut ticket, trail);
            return send_error(conn, client, &e, rid, &headers, false).await;
        };
        let turn = if api == Api::Responses {
            let opened =
                conversation::open(shard, &req.body, &members, ticket.actor.as_ref()).await;
            match opened {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    trail.alias = Some(alias.to_owned());
                    settle(shard, &mut ticket, trail);
                    return send_error(conn, client, &e, rid, &headers, false).await;
                }
            }
        } else {
            None
        };
        let (output_checks, output_hooks) = plan
            .as_ref()
            .map(|p| guardrails::split_hooks(generation, &p.output))
            .unwrap_or_default();
        let hook_actor = if output_hooks.is_empty() {
            serde_json::Value::Null
        } else {
            guardrails::actor_json(ticket.actor.as_ref())
        };
        // Parallel webhooks run beside the model call; the answer waits for
        // their verdict (`Call::hold`).
        let parallel = plan
            .as_ref()
            .map(|p| guardrails::parallel_checks(generation, &p.input))
            .unwrap_or_default();
        // The call is dropped in place, where this block ends, before
        // `facts` is taken apart: dropping it by value would copy it (~400
        // bytes) out of the future first.
        let outcome = {
            let mut call = Call {
                shard,
                generation,
                req,
                facts: &facts,
                members: &members,
                api,
                client,
                rid,
                headers,
                prompt_estimate: ticket.prompt_estimate(),
                metered: RefCell::new(None),
                guard: ticket
                    .actor
                    .as_ref()
                    .filter(|_| ticket.tool_rules)
                    .and_then(|a| {
                        let policies = shard.admission.policy_set();
                        tool_guard::ToolGuard::new(policies, a, client, rid, Some(shard.clone()))
                    })
                    .map(|g| Box::new(RefCell::new(g))),
                attempt: std::cell::Cell::new(0),
                turn,
                output_checks,
                output_hooks,
                hook_actor,
                tool_call_checks: plan.map(|p| p.tool_calls).unwrap_or_default(),
                guard_records: RefCell::new(Vec::new()),
                capture_limit: None,
                captured: RefCell::new(None),
                hold: None,
            };
            let hold = (!parallel.is_empty()).then(|| Rc::new(guardrails::Hold::default()));
            call.hold.clone_from(&hold);
            let parallel_records = RefCell::new(Vec::new());
            let actor = ticket.actor.as_ref();
            let settings = cache::settings_for(ticket.cache, model.cache.as_ref());
            if settings.is_none() && model.cache.is_some() {
                // The caller's policy keeps it out of the route's cache.
                call.headers
                    .push(("x-shardgate-cache", "bypass".to_owned()));
            }
            // The answer's future is made where it is awaited: one kept in a
            // local was copied whole (~2.6 KiB) into the slot it is awaited in.
            macro_rules! served {
                () => {
                    answer(
                        &mut call,
                        conn,
                        (alias, model, settings),
                        &config.models,
                        &mut trail.attempts,
                        actor,
                    )
                };
            }
            let (outcome, cached, shared_result) = match &hold {
                None => served!().await,
                Some(h) => {
                    let served = served!();
                    let body: &[u8] = &req.body;
                    let check = Box::pin(async {
                        let v = guardrails::check_parallel(
                            shard,
                            generation,
                            &parallel,
                            body,
                            actor,
                            rid,
                            &parallel_records,
                        )
                        .await;
                        h.decide(v);
                        futures_lite::future::pending().await
                    });
                    futures_lite::future::or(served, check).await
                }
            };
            trail.guardrails.append(&mut parallel_records.borrow_mut());
            if let (Some((decision, scope)), Some(settings)) = (cached, settings) {
                let whole = outcome.keep_alive;
                let mut note = keep_or_note(
                    &call,
                    decision,
                    scope,
                    (cache::entries_of(alias, model), &settings),
                    &trail.attempts,
                    whole,
                );
                note.shared = shared_result;
                trail.cache = Some(Box::new(note));
            }
            trail
                .guardrails
                .append(&mut call.guard_records.borrow_mut());
            outcome
        };
        trail.alias = Some(match ticket.fallback.take() {
            Some(fallback) => fallback.into(),
            None => facts.model,
        });
        settle(shard, &mut ticket, trail);
        outcome
    }
}

/// The call's answer: from the cache (the shard's, then the shared tier)
/// or from the route, whose answer a miss keeps. Also the cache's decision
/// and scope, and what the shared tier answered.
async fn answer<'a>(
    call: &mut Call<'_>,
    conn: &mut ClientConn,
    (alias, model, settings): (
        &'a str,
        &'a crate::config::ModelRoute,
        Option<crate::config::cache::CacheSettings>,
    ),
    models: &'a std::collections::BTreeMap<String, crate::config::ModelRoute>,
    attempts: &mut Attempts<'a>,
    actor: Option<&shardgate_policy::Actor>,
) -> (
    Outcome,
    Option<(cache::Decision, String)>,
    Option<&'static str>,
) {
    let mut cached = settings
        .as_ref()
        .map(|settings| look_up(call, settings, alias, model, actor));
    let mut shared_result = None;
    if let (
        Some((decision @ cache::Decision::Fill { refresh: false, .. }, scope)),
        Some(settings),
    ) = (&mut cached, &settings)
    {
        if let Some(shared) = call.shard.shared_cache().filter(|_| settings.shares()) {
            // Boxed: a wait on the shared tier inline would size every
            // request's future.
            let entries = cache::entries_of(alias, model);
            let (found, result) = Box::pin(look_up_shared(
                call, shared, decision, scope, entries, settings,
            ))
            .await;
            shared_result = Some(result);
            if let Some(hit) = found {
                *decision = hit;
                set_cache_header(call, "hit");
                call.capture_limit = None;
            }
        }
    }
    let hit = match &cached {
        Some((cache::Decision::Hit { entry, .. }, _)) => {
            // Boxed: a replay's state inline would size every request's
            // future for the calls a cache answers.
            Box::pin(serve_hit(call, conn, entry, model)).await
        }
        _ => None,
    };
    if let (None, Some((decision @ cache::Decision::Hit { .. }, _))) = (&hit, &mut cached) {
        // Kept in a form this client cannot be given (a stream of an answer
        // with log probabilities): the route answers, and its answer
        // replaces the entry.
        if let Some(settings) = &settings {
            *decision = unreplayable(call, decision, settings);
        }
    }
    let outcome = match hit {
        Some(outcome) => outcome,
        None => route::serve(call, conn, alias, model, models, attempts).await,
    };
    (outcome, cached, shared_result)
}

/// The cache's decision on `call` (a route with `cache:`), its header on
/// the answer, and the scope it is kept under; a miss captures its answer.
fn look_up(
    call: &mut Call<'_>,
    settings: &crate::config::cache::CacheSettings,
    alias: &str,
    model: &crate::config::ModelRoute,
    actor: Option<&shardgate_policy::Actor>,
) -> (cache::Decision, String) {
    use cache::key::{Directives, Sampling};
    let scope = cache::scope_of(settings.scope, actor);
    let sampling = match call.api {
        _ if settings.sampled => Sampling::None,
        Api::ChatCompletions => Sampling::TemperatureOrSeed,
        Api::Messages => Sampling::TemperatureOnly,
        Api::Embeddings => Sampling::None,
        // Legacy completions and the stateful Responses API are not kept.
        Api::Completions | Api::Responses => {
            call.headers
                .push(("x-shardgate-cache", "bypass".to_owned()));
            return (cache::Decision::Bypass, scope);
        }
    };
    let route = cache::route_id(call.api.client_path(), alias, model);
    // Beta features go upstream with the body (Anthropic to Anthropic).
    let beta = call.req.end_to_end_header("anthropic-beta");
    let headers: &[(&str, &[u8])] = match beta {
        Some(v) => &[("anthropic-beta", v)],
        None => &[],
    };
    let decision = cache::decide(
        &mut call.shard.cache.borrow_mut(),
        call.generation.number,
        &call.req.body,
        call.members,
        sampling,
        &route,
        cache::entries_of(alias, model),
        &scope,
        headers,
        Directives::parse(call.req.header("cache-control")),
    );
    if let cache::Decision::Fill { .. } = decision {
        let shards = call.shard.config.shards;
        call.capture_limit = Some(settings.per_shard(shards).1);
    }
    call.headers
        .push(("x-shardgate-cache", decision.header().to_owned()));
    (decision, scope)
}

fn set_cache_header(call: &mut Call<'_>, value: &str) {
    if let Some(h) = call
        .headers
        .iter_mut()
        .find(|(name, _)| *name == "x-shardgate-cache")
    {
        value.clone_into(&mut h.1);
    }
}

/// A miss on the shard asks the shared tier: an entry found there is kept
/// on the shard too and served. Also says what the shared tier answered
/// (`hit`, `miss`, `unavailable`: a slow or lost Redis is a miss).
async fn look_up_shared(
    call: &Call<'_>,
    shared: &cache::shared::SharedCache,
    fill: &mut cache::Decision,
    scope: &str,
    alias: &str,
    settings: &crate::config::cache::CacheSettings,
) -> (Option<cache::Decision>, &'static str) {
    use cache::shared::Found;
    let cache::Decision::Fill {
        key,
        epoch,
        shared: seen,
        ..
    } = fill
    else {
        return (None, "miss");
    };
    match shared.get(*key, scope).await {
        Found::Entry(entry) => {
            let (entry, _) = call.keep(*epoch, alias, settings, *key, entry);
            (Some(cache::Decision::Hit { entry, key: *key }), "hit")
        }
        Found::Missing(generation) => {
            *seen = Some(generation);
            (None, "miss")
        }
        Found::Unavailable => (None, "unavailable"),
    }
}

/// A hit that cannot be replayed becomes a miss that refreshes its entry.
fn unreplayable(
    call: &mut Call<'_>,
    hit: &cache::Decision,
    settings: &crate::config::cache::CacheSettings,
) -> cache::Decision {
    let cache::Decision::Hit { key, .. } = hit else {
        return cache::Decision::Bypass;
    };
    let shards = call.shard.config.shards;
    call.capture_limit = Some(settings.per_shard(shards).1);
    set_cache_header(call, "miss");
    let number = call.generation.number;
    cache::Decision::Fill {
        key: *key,
        refresh: false,
        epoch: call.shard.cache.borrow_mut().epoch(number),
        shared: None,
    }
}

/// Answers `call` from `entry`; `None` when the entry cannot be replayed
/// in the way asked (the route answers instead).
async fn serve_hit(
    call: &Call<'_>,
    conn: &mut ClientConn,
    entry: &cache::Entry,
    model: &crate::config::ModelRoute,
) -> Option<Outcome> {
    let mut answer = replay::answer(call, entry, model)?;
    Some(match relay::deliver(conn, &mut answer).await {
        Ok(outcome) => outcome,
        Err(failure) => {
            let e = &failure.error;
            send_error(conn, call.client, e, call.rid, &call.headers, false).await
        }
    })
}

/// A miss's answer is kept when the client got it `whole` from the
/// target that made it; the call's record says how the cache served it.
fn keep_or_note(
    call: &Call<'_>,
    decision: cache::Decision,
    scope: String,
    (alias, settings): (&str, &crate::config::cache::CacheSettings),
    attempts: &Attempts<'_>,
    whole: bool,
) -> crate::record::CacheNote {
    let result = decision.header();
    let mut note = crate::record::CacheNote {
        result,
        saved: None,
        served_by: None,
        shared: None,
    };
    match decision {
        cache::Decision::Hit { entry, .. } => {
            note.saved = entry.usage;
            note.served_by = Some(entry.served_by.clone());
        }
        cache::Decision::Fill {
            key, epoch, shared, ..
        } => {
            let captured = call.captured.borrow_mut().take();
            let answered = |c: &cache::Captured| {
                whole
                    && attempts.last().is_some_and(|a| {
                        a.outcome == AttemptOutcome::Answered && a.target.served_by == c.served_by
                    })
            };
            if let Some(c) = captured.filter(|c| answered(c)) {
                let entry = cache::Entry {
                    answer: c.answer,
                    usage: c.usage,
                    served_by: c.served_by,
                    scope,
                    expires: crate::deadline::coarse_now() + settings.ttl,
                };
                let (entry, kept) = call.keep(epoch, alias, settings, key, entry);
                // Shared only what the shard kept (not looked up before a
                // purge or a reload), under the generation its lookup saw.
                let tier = call.shard.shared_cache().filter(|_| settings.shares());
                if let (true, Some(tier), Some(generation)) = (kept, tier, shared) {
                    tier.put(key, &entry, settings.ttl, generation);
                }
            }
        }
        cache::Decision::Bypass => {}
    }
    note
}

/// A key made a moment ago: admitted once this shard has re-read the key
/// log (`None` when it did not re-read it).
async fn admit_after_reread(
    shard: &Rc<Shard>,
    req: &Request<'_>,
    facts: &RequestFacts,
    upstream_model: &impl Fn(&str) -> String,
) -> Option<Result<Ticket, Refusal>> {
    if !shard.reread_keys().await {
        return None;
    }
    Some(
        shard
            .admission
            .admit(
                req,
                &facts.model,
                upstream_model,
                facts.max_tokens,
                &facts.tool_names,
            )
            .await,
    )
}

/// A refused request's error and the headers to answer it with.
type Refused = (GatewayError, Vec<(&'static str, String)>);

/// A refusal's error and the headers to answer it with (the refused caller
/// and alias go to the record). The ticket itself is never passed through
/// here: moving it in and out copied all of it twice per request.
fn refused(
    refusal: Refusal,
    trail: &mut Trail<'_>,
    facts: &mut RequestFacts,
    rid: &str,
) -> Refused {
    match refusal {
        Refusal::Unauthorized => (GatewayError::Unauthorized, Vec::new()),
        Refusal::Denied {
            reason,
            mut headers,
            actor,
        } => {
            trail.actor = Some(*actor);
            trail.alias = Some(std::mem::take(&mut facts.model));
            if let Some(secs) = reason.retry_after_secs() {
                headers.push(("retry-after", secs.to_string()));
            }
            let err = GatewayError::Policy(reason);
            log::info!("{rid}: refused: {err}");
            (err, headers)
        }
        Refusal::Unavailable { why, actor } => {
            trail.actor = Some(*actor);
            trail.alias = Some(std::mem::take(&mut facts.model));
            let err = GatewayError::QuotaUnavailable(why);
            log::warn!("{rid}: refused: {err}");
            (err, vec![("retry-after", "1".to_owned())])
        }
    }
}

/// Every attempt that reported usage is charged; with none, the
/// reservation goes back and the request still counts.
/// The ticket's actor then moves to the request's record.
fn settle(shard: &Shard, ticket: &mut Ticket, trail: &mut Trail<'_>) {
    let metered = trail
        .attempts
        .iter()
        .filter_map(|a| Some((a.target.model.as_str(), a.metered.as_ref()?)));
    trail.cost_micros = shard.admission.settle_all(
        ticket,
        metered.map(|(model, m)| (model, m.usage.as_ref(), m.estimated)),
    );
    trail.actor = ticket.actor.take();
}
