//! `/mcp`: Streamable HTTP in both protocol eras, decided per request.
//!
//! - `POST` carries one JSON-RPC message. A request with `_meta` (or the
//!   modern `MCP-Protocol-Version`) is 2026-07-28 and must repeat itself
//!   in `Mcp-Method` / `Mcp-Name`; otherwise it is handshake-era, and
//!   everything but `initialize` names its session in `Mcp-Session-Id`.
//! - `DELETE` ends a legacy session (and its upstream sessions).
//! - `GET` (the legacy server-to-client stream) is 405: the gateway sends
//!   no server-initiated messages, and advertises no capability that would.
//!
//! The caller is known by the same virtual keys as model traffic. Replies
//! are JSON, or an event stream when the client accepts one and the
//! upstream streams (progress arrives as it happens). Closing the response
//! cancels the call upstream.

use super::aggregate::{self, codes};
use super::session::{Session, SessionError};
use super::upstream::{Exchange, Outgoing, Via};
use super::McpShard;
use crate::admission::Refusal;
use crate::config::McpConfig;
use crate::generation::Generation;
use crate::record::{ToolCallRecord, ToolCallSource, ToolDecision, Trail};
use crate::server::{respond, ClientConn, Outcome, Request};
use crate::shard::Shard;
use serde_json::{json, Value};
use shardgate_policy::{Actor, PolicySet, PromptLogging, Resolved, ToolScope};
use shardgate_proto::chunked::{encode_chunk_header, CHUNK_END, LAST_CHUNK};
use shardgate_proto::h1::Method;
use shardgate_proto::mcp::{self as wire, code, Era, Inbound, Posted, RpcError};
use std::borrow::Cow;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long the gateway waits on an upstream session's `initialize` or
/// `DELETE`.
const SESSION_WAIT: Duration = Duration::from_secs(10);

/// Answers one request to `/mcp`.
pub async fn handle<'g>(
    shard: &Rc<Shard>,
    generation: &'g Generation,
    conn: &mut ClientConn,
    req: Request<'_>,
    rid: &str,
    trail: &mut Trail<'g>,
) -> Outcome {
    let cfg = &generation.config.mcp;
    let mut identified = shard.admission.identify(&req);
    if identified.is_err()
        && shard.admission.presents_unknown_key(&req)
        && shard.reread_keys().await
    {
        identified = shard.admission.identify(&req);
    }
    let actor = match identified {
        Ok(a) => a,
        Err(Refusal::Unauthorized | Refusal::Denied { .. } | Refusal::Unavailable { .. }) => {
            let e = RpcError::new(
                code::INVALID_REQUEST,
                "missing or unknown API key: send Authorization: Bearer <key> or x-api-key",
            );
            return reply_error_with(conn, 401, &Value::Null, &e, None, rid).await;
        }
    };
    trail.actor = actor.clone();
    let cx = Cx {
        shard,
        mcp: &shard.mcp,
        cfg,
        req: &req,
        rid,
        key_id: actor
            .as_ref()
            .map_or(crate::admission::ANONYMOUS, |a| a.key_id.as_str()),
        actor: actor.as_ref(),
        policies: shard.admission.policy_set(),
        rails: &generation.guardrails,
        guard_records: std::cell::RefCell::new(Vec::new()),
        headers: Headers::of(&req),
    };
    let outcome = match req.head.method {
        Method::Post => post(&cx, conn).await,
        Method::Delete => delete(&cx, conn).await,
        _ => {
            let e = RpcError::new(
                code::INVALID_REQUEST,
                "the gateway offers no server-to-client stream: use POST (and DELETE to end a session)",
            );
            let body =
                serde_json::to_vec(&wire::error_response(&Value::Null, &e)).unwrap_or_default();
            let bytes = respond::full(
                405,
                b"application/json",
                &[("allow", b"POST, DELETE")],
                &body,
                rid,
                false,
            );
            write(conn, &bytes).await
        }
    };
    trail.guardrails.append(&mut cx.guard_records.borrow_mut());
    outcome
}

/// What every step of one request needs.
struct Cx<'a> {
    shard: &'a Rc<Shard>,
    mcp: &'a McpShard,
    cfg: &'a McpConfig,
    req: &'a Request<'a>,
    rid: &'a str,
    key_id: &'a str,
    actor: Option<&'a Actor>,
    policies: Rc<PolicySet>,
    /// This shard's guardrails, and the verdicts of those run on the
    /// call's arguments (they go to the request's record).
    rails: &'a shardgate_policy::guardrails::Guardrails,
    guard_records: std::cell::RefCell<Vec<crate::guardrails::GuardRecord>>,
    headers: Headers<'a>,
}

/// The request headers MCP reads, found in one pass over the head.
struct Headers<'a> {
    content_type: Option<&'a str>,
    accept: Option<&'a str>,
    protocol_version: Option<&'a str>,
    method: Option<&'a str>,
    name: Option<&'a str>,
    session_id: Option<&'a str>,
}

impl<'a> Headers<'a> {
    fn of(req: &'a Request<'a>) -> Self {
        let [content_type, accept, protocol_version, method, name, session_id] = req
            .headers_named([
                "content-type",
                "accept",
                "mcp-protocol-version",
                "mcp-method",
                "mcp-name",
                "mcp-session-id",
            ])
            .map(|v| v.and_then(crate::server::header_text).map(str::trim_ascii));
        Headers {
            content_type,
            accept,
            protocol_version,
            method,
            name,
            session_id,
        }
    }
}

impl Cx<'_> {
    fn accepts_events(&self) -> bool {
        self.headers
            .accept
            .is_some_and(|a| a.contains("text/event-stream") || a.contains("*/*"))
    }

    fn now_secs() -> u64 {
        crate::gateway::unix_now()
    }

    /// The legacy session this request names.
    fn session(&self) -> Result<(String, Session), (u16, RpcError)> {
        let Some(id) = self.headers.session_id else {
            return Err((
                400,
                RpcError::new(
                    code::INVALID_REQUEST,
                    "Mcp-Session-Id is missing: send initialize first",
                ),
            ));
        };
        match self.mcp.hub.key.open(id, self.key_id, Self::now_secs()) {
            Ok(s) => Ok((id.to_owned(), s)),
            Err(SessionError::Expired) => Err((
                404,
                RpcError::new(code::INVALID_REQUEST, "session expired: initialize again"),
            )),
            Err(SessionError::Unknown) => Err((
                404,
                RpcError::new(code::INVALID_REQUEST, "session not found"),
            )),
        }
    }
}

async fn post(cx: &Cx<'_>, conn: &mut ClientConn) -> Outcome {
    let rid = cx.rid;
    let json_body = cx.headers.content_type.is_some_and(|c| {
        c.as_bytes()
            .get(..b"application/json".len())
            .is_some_and(|t| t.eq_ignore_ascii_case(b"application/json"))
    });
    if !json_body {
        let e = RpcError::new(
            code::INVALID_REQUEST,
            "Content-Type must be application/json",
        );
        return reply_error_with(conn, 415, &Value::Null, &e, None, rid).await;
    }
    let accept = cx.headers.accept.unwrap_or("*/*");
    if !(accept.contains("application/json")
        || accept.contains("text/event-stream")
        || accept.contains("*/*"))
    {
        let e = RpcError::new(
            code::INVALID_REQUEST,
            "Accept must allow application/json or text/event-stream",
        );
        return reply_error_with(conn, 406, &Value::Null, &e, None, rid).await;
    }
    let msg = match wire::parse_posted(&cx.req.body) {
        Ok(Posted::Message(m)) => m,
        Ok(Posted::Response) => return accepted(conn, rid).await,
        Err((id, e)) => return reply_error(conn, &id, &e, None, rid).await,
    };
    let era = wire::era_of(&msg, cx.headers.protocol_version);
    let id = msg.id.clone().unwrap_or(Value::Null);
    let session = match era {
        Era::Modern => {
            if let Err(e) = wire::check_modern(
                &msg,
                cx.headers.protocol_version,
                cx.headers.method,
                cx.headers.name,
            ) {
                return reply_error(conn, &id, &e, None, rid).await;
            }
            None
        }
        Era::Handshake if msg.method == "initialize" => None,
        Era::Handshake => match cx.session() {
            Ok(s) => Some(s),
            Err((status, e)) => return reply_error_with(conn, status, &id, &e, None, rid).await,
        },
    };
    let session_header = session.as_ref().map(|(h, _)| h.as_str());
    let Some(req_id) = msg.id.clone() else {
        return notification(cx, conn, &msg, session_header).await;
    };
    let via_session = session.as_ref().map(|(_, s)| s);
    let resolved = cx.actor.map(|a| cx.policies.resolve(a));
    match msg.method.as_str() {
        "initialize" if era == Era::Handshake => initialize(cx, conn, &msg, &req_id).await,
        "server/discover" => {
            let result = aggregate::discover();
            reply(
                conn,
                200,
                &wire::response(&req_id, result),
                session_header,
                rid,
            )
            .await
        }
        "ping" | "logging/setLevel" => {
            let mut result = json!({});
            wire::fit_result(&mut result, era, false);
            reply(
                conn,
                200,
                &wire::response(&req_id, result),
                session_header,
                rid,
            )
            .await
        }
        m if aggregate::list_fields(m).is_some() => {
            let via_of = |server: &str| -> Via<'_> {
                match via_session {
                    Some(s) => Via::Client(s.up.iter().find(|u| u.server == server)),
                    None => Via::Shared,
                }
            };
            let listed =
                aggregate::list(cx.mcp, cx.shard, cx.cfg, m, resolved.as_ref(), &via_of, era).await;
            if listed.hidden > 0 || !listed.failed.is_empty() {
                log::info!(
                    "{rid}: mcp {m} for key {}: {} hidden by policy{}",
                    cx.key_id,
                    listed.hidden,
                    if listed.failed.is_empty() {
                        String::new()
                    } else {
                        format!("; servers not answering: {}", listed.failed.join(", "))
                    }
                );
            }
            reply(
                conn,
                200,
                &wire::response(&req_id, listed.result),
                session_header,
                rid,
            )
            .await
        }
        "tools/call" | "prompts/get" | "resources/read" => {
            // A legacy client cancels by notification, which may arrive on
            // another shard: the call is findable by its session and id.
            let inflight = session_header.map(|s| cx.mcp.register(super::session_hash(s), &req_id));
            let cancel = inflight.as_ref().map(|i| &*i.cancel);
            let call = Call {
                msg,
                era,
                session: via_session,
                session_header,
                resolved: resolved.as_ref(),
                cancel,
            };
            call.serve(cx, conn).await
        }
        other => {
            let e = RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("method `{other}` is not supported"),
            );
            reply_error(conn, &req_id, &e, session_header, rid).await
        }
    }
}

/// A handshake-era `initialize`: a session with every handshake-era HTTP
/// server, sealed into the ID the client keeps.
async fn initialize(cx: &Cx<'_>, conn: &mut ClientConn, msg: &Inbound, id: &Value) -> Outcome {
    let asked = msg.params.get_str("protocolVersion");
    let asked = asked.as_deref();
    let version = wire::negotiate(asked);
    let opens = cx
        .cfg
        .servers
        .iter()
        .enumerate()
        .map(|(idx, s)| {
            cx.mcp
                .open_session(cx.shard, idx, s, s.timeout.min(SESSION_WAIT))
        })
        .collect();
    let opened = super::join_all(opens).await;
    let mut up = Vec::new();
    for o in opened {
        match o {
            Ok(Some(u)) => up.push(u),
            Ok(None) => {}
            Err(e) => log::warn!("{}: mcp initialize: {}", cx.rid, e.message),
        }
    }
    let session = Session {
        exp: Cx::now_secs() + cx.cfg.session_ttl.as_secs(),
        key: cx.key_id.to_owned(),
        pv: version.to_owned(),
        up,
    };
    let sealed = cx.mcp.hub.key.seal(&session);
    let result = aggregate::initialize(version);
    reply(
        conn,
        200,
        &wire::response(id, result),
        Some(&sealed),
        cx.rid,
    )
    .await
}

/// A notification: acknowledged with 202. A legacy client's cancellation
/// reaches its call on whichever shard relays it (the mesh carries it to
/// every shard), which stops it upstream.
async fn notification(
    cx: &Cx<'_>,
    conn: &mut ClientConn,
    msg: &Inbound,
    session: Option<&str>,
) -> Outcome {
    if msg.method == "notifications/cancelled" {
        if let (Some(s), Some(request_id)) = (session, msg.params.get("requestId")) {
            let hash = super::session_hash(s);
            let id = request_id.to_string();
            cx.mcp.cancel_local(hash, &id);
            if let Some(mesh) = cx.shard.mesh.borrow().clone() {
                let me = mesh.me();
                for to in (0..mesh.peers()).filter(|&p| p != me) {
                    mesh.send(
                        to,
                        crate::mesh::ShardMsg::McpCancel {
                            session: hash,
                            id: id.clone(),
                        },
                    );
                }
            }
        }
    }
    accepted(conn, cx.rid).await
}

/// `DELETE`: ends the session and its upstream sessions.
async fn delete(cx: &Cx<'_>, conn: &mut ClientConn) -> Outcome {
    let (_, session) = match cx.session() {
        Ok(s) => s,
        Err((status, e)) => {
            return reply_error_with(conn, status, &Value::Null, &e, None, cx.rid).await
        }
    };
    let closes = cx
        .cfg
        .servers
        .iter()
        .enumerate()
        .filter_map(|(idx, server)| {
            let u = session.up.iter().find(|u| u.server == server.name)?;
            Some(cx.mcp.close_session(cx.shard, idx, server, u, SESSION_WAIT))
        })
        .collect();
    super::join_all(closes).await;
    write(
        conn,
        &respond::full(200, b"application/json", &[], b"", cx.rid, false),
    )
    .await
}

/// A `tools/call`, `prompts/get` or `resources/read`, and what it is
/// served under.
struct Call<'a, 'r> {
    msg: Inbound,
    era: Era,
    /// The legacy session it came in.
    session: Option<&'a Session>,
    session_header: Option<&'a str>,
    resolved: Option<&'a Resolved<'r>>,
    /// Fired by the client's `notifications/cancelled` (legacy sessions).
    cancel: Option<&'a super::Cancel>,
}

impl Call<'_, '_> {
    /// Policy, budget, then the server, its answer relayed.
    async fn serve(self, cx: &Cx<'_>, conn: &mut ClientConn) -> Outcome {
        let Call {
            msg,
            era,
            session,
            session_header,
            resolved,
            cancel,
        } = self;
        call(
            cx,
            conn,
            msg,
            era,
            session,
            session_header,
            resolved,
            cancel,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)]
async fn call(
    cx: &Cx<'_>,
    conn: &mut ClientConn,
    mut msg: Inbound,
    era: Era,
    session: Option<&Session>,
    session_header: Option<&str>,
    resolved: Option<&Resolved<'_>>,
    cancel: Option<&super::Cancel>,
) -> Outcome {
    let rid = cx.rid;
    let id = msg.id.clone().unwrap_or(Value::Null);
    let Some(exposed) = msg.target_name().map(Cow::into_owned) else {
        let field = wire::name_param(&msg.method).unwrap_or("name");
        let e = RpcError::new(code::INVALID_PARAMS, format!("params.{field} is missing"));
        return reply_error(conn, &id, &e, session_header, rid).await;
    };
    let (idx, server, own) = match aggregate::route(cx.cfg, &exposed) {
        Ok(r) => r,
        Err(e) => return reply_error(conn, &id, &e, session_header, rid).await,
    };
    let is_tool = msg.method == "tools/call";
    let via = match session {
        Some(s) => Via::Client(s.up.iter().find(|u| u.server == server.name)),
        None => Via::Shared,
    };
    let scope = if is_tool {
        let mut annotated = None;
        if aggregate::needs_scopes(resolved)
            && server.tools.get(own).is_none_or(|o| o.scope.is_none())
        {
            let scopes = cx
                .mcp
                .annotated_scopes(cx.shard, idx, server, via, server.timeout.min(SESSION_WAIT))
                .await;
            annotated = scopes.get(own).copied().flatten();
        }
        aggregate::scope_of(server, own, annotated)
    } else {
        Some(ToolScope::Read)
    };
    let audit = resolved.map(Resolved::audit).unwrap_or_default();
    let logging = resolved.map_or(PromptLogging::MetadataOnly, |r| r.audit().log_prompts);
    // The caller's `tool_calls` guardrails, on the arguments (what is
    // audited and sent is what they leave).
    let checks = match (is_tool, resolved) {
        (true, Some(r)) => crate::guardrails::Plan::new(cx.rails, r)
            .map(|p| p.tool_calls)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // Parsed once, for the guardrails and for a record written somewhere.
    let mut args = if !checks.is_empty() || (is_tool && ToolCallRecord::wanted(audit, cx.shard)) {
        msg.params.get("arguments")
    } else {
        None
    };
    let mut redacted_args = false;
    if let Some(a) = args.as_mut().filter(|_| !checks.is_empty()) {
        let checked = crate::guardrails::check_arguments(
            cx.rails,
            &checks,
            a,
            &mut cx.guard_records.borrow_mut(),
        );
        match checked {
            Ok(changed) => {
                // What goes upstream is what was checked, as the checks
                // read it (one value per name at every depth).
                msg.params.set("arguments", a);
                redacted_args = changed;
            }
            Err(e) => {
                log::info!("{rid}: mcp tools/call `{exposed}` refused: {e}");
                conn.note_error(e.label());
                let e = RpcError::new(code::INVALID_PARAMS, e.to_string());
                return reply_error(conn, &id, &e, session_header, rid).await;
            }
        }
    }
    let record = |decision: ToolDecision, latency: Option<Duration>, is_error: Option<bool>| {
        if !is_tool {
            return;
        }
        ToolCallRecord {
            rid,
            actor: cx.actor,
            source: ToolCallSource::Mcp(era),
            server: Some(&server.name),
            exposed: &exposed,
            original: own,
            scope,
            decision,
            latency,
            is_error,
            arguments: args.as_ref(),
            log_prompts: logging,
        }
        .emit(audit, cx.shard);
    };
    if let Some(r) = resolved {
        let verdict = r.decide_tool(&exposed, scope);
        if let shardgate_policy::ToolVerdict::Refused { policy, rule } = &verdict {
            let what = match msg.method.as_str() {
                "tools/call" => "tool",
                "prompts/get" => "prompt",
                _ => "resource",
            };
            record(
                ToolDecision::Refused {
                    policy: (*policy).to_owned(),
                    rule: rule.describe(),
                },
                None,
                Some(true),
            );
            log::info!(
                "{rid}: mcp {} `{exposed}` refused for key {}: {verdict}",
                msg.method,
                cx.key_id
            );
            let e = aggregate::refused(what, &exposed, &verdict);
            return reply_error(conn, &id, &e, session_header, rid).await;
        }
    }
    let ticket = match cx.shard.admission.admit_tool_call(cx.actor).await {
        Ok(t) => t,
        Err(Refusal::Denied { reason, .. }) => {
            record(ToolDecision::RateLimited, None, Some(true));
            let e = RpcError::new(codes::RATE_LIMITED, reason.to_string());
            let body = serde_json::to_vec(&wire::error_response(&id, &e)).unwrap_or_default();
            let retry = reason.retry_after_secs().unwrap_or(1).to_string();
            let mut extra: Vec<(&str, &[u8])> = vec![("retry-after", retry.as_bytes())];
            if let Some(s) = session_header {
                extra.push(("mcp-session-id", s.as_bytes()));
            }
            return write(
                conn,
                &respond::full(429, b"application/json", &extra, &body, rid, false),
            )
            .await;
        }
        Err(Refusal::Unauthorized) => {
            let e = RpcError::new(code::INVALID_REQUEST, "missing or unknown API key");
            return reply_error_with(conn, 401, &id, &e, None, rid).await;
        }
        Err(Refusal::Unavailable { why, .. }) => {
            record(ToolDecision::RateLimited, None, Some(true));
            let e = RpcError::new(code::INTERNAL_ERROR, why.to_string());
            return reply_error_with(conn, 503, &id, &e, session_header, rid).await;
        }
    };
    // The server's own name goes upstream, in the body and in `Mcp-Name`.
    if let Some(key) = wire::name_param(&msg.method) {
        msg.params.set(key, &Value::from(own));
    }
    let timeout = server.timeout_of(own);
    let started = Instant::now();
    let out = Outgoing {
        method: &msg.method,
        params: std::mem::take(&mut msg.params),
        name: Some(own),
        client_id: Some(id.clone()),
        // The client's `Mcp-Param-*` copies of redacted arguments would
        // carry what was redacted: they are not sent.
        param_headers: if redacted_args {
            Vec::new()
        } else {
            param_headers(cx.req)
        },
    };
    let sent = cx.mcp.send(cx.shard, idx, server, out, via, timeout).await;
    let outcome = match sent {
        Err(e) => {
            record(ToolDecision::Allowed, Some(started.elapsed()), Some(true));
            reply_error(conn, &id, &e, session_header, rid).await
        }
        Ok(ex) => {
            let relayed = relay(
                cx,
                conn,
                ex,
                &id,
                era,
                session_header,
                &server.name,
                idx,
                via,
                started + timeout,
                cancel,
                &checks,
            )
            .await;
            record(
                ToolDecision::Allowed,
                Some(started.elapsed()),
                relayed.is_error,
            );
            relayed.outcome
        }
    };
    cx.shard.admission.settle_all(&ticket, std::iter::empty());
    outcome
}

struct Relayed {
    outcome: Outcome,
    is_error: Option<bool>,
}

/// What one wait on the exchange brought.
enum Step {
    Message(Result<Option<Value>, RpcError>),
    ClientLeft,
    /// The client cancelled it (a legacy `notifications/cancelled`).
    Cancelled,
}

/// What a server answers a request it cancelled with (the SDK's
/// `REQUEST_CANCELLED`).
const REQUEST_CANCELLED: i64 = -32800;

/// Ends a cancelled call's answer with `-32800`, as an event when the
/// client takes events (as the SDK's servers answer it: a client that has
/// moved on drops an event quietly).
async fn answer_cancelled(
    cx: &Cx<'_>,
    conn: &mut ClientConn,
    id: &Value,
    session_header: Option<&str>,
    head_sent: bool,
) -> Outcome {
    let e = RpcError::new(REQUEST_CANCELLED, "request cancelled");
    let body = wire::error_response(id, &e);
    if !head_sent && !cx.accepts_events() {
        return reply(conn, 200, &body, session_header, cx.rid).await;
    }
    if !head_sent {
        let mut extra: Vec<(&str, &[u8])> = Vec::new();
        if let Some(s) = session_header {
            extra.push(("mcp-session-id", s.as_bytes()));
        }
        if !write(conn, &respond::stream_head(200, cx.rid, &extra))
            .await
            .keep_alive
        {
            return Outcome::CLOSE;
        }
    }
    let o = send_event(conn, &body).await;
    finish_stream(conn, o).await
}

/// Whether a tool's answer reports an error (`isError` in its result, or
/// a JSON-RPC error), as compact JSON writes them: the answer is relayed
/// as it came, so it is searched, not parsed.
fn is_error_answer(body: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static IS_ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"isError\":true"));
    static RPC_ERROR: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(b"\"error\":{\"code\""));
    IS_ERROR.find(body).is_some() || RPC_ERROR.find(body).is_some()
}

/// Resolves when `cancel` fires; never without one.
async fn cancelled(cancel: Option<&super::Cancel>) {
    match cancel {
        Some(c) => c.fired().await,
        None => std::future::pending().await,
    }
}

/// The `tool_calls` guardrails on a tool's result message: redacted in
/// place, or replaced by an error response naming the check. True when
/// the message changed.
fn guard_result(cx: &Cx<'_>, checks: &[usize], id: &Value, msg: &mut Value) -> bool {
    let Some(result) = msg.get_mut("result") else {
        return false;
    };
    let checked = crate::guardrails::check_arguments(
        cx.rails,
        checks,
        result,
        &mut cx.guard_records.borrow_mut(),
    );
    match checked {
        Ok(changed) => changed,
        Err(e) => {
            log::info!("{}: an mcp tool result refused: {e}", cx.rid);
            let e = RpcError::new(code::INTERNAL_ERROR, e.to_string());
            *msg = wire::error_response(id, &e);
            true
        }
    }
}

/// [`guard_result`] on a whole JSON answer: `None` when there are no
/// checks or nothing changed (the body goes as it came).
fn result_checked(cx: &Cx<'_>, checks: &[usize], id: &Value, body: &[u8]) -> Option<Vec<u8>> {
    if checks.is_empty() {
        return None;
    }
    let Ok(mut msg) = serde_json::from_slice::<Value>(body) else {
        let e = RpcError::new(
            code::INTERNAL_ERROR,
            "the tool's result could not be checked by the guardrails",
        );
        return serde_json::to_vec(&wire::error_response(id, &e)).ok();
    };
    guard_result(cx, checks, id, &mut msg).then(|| serde_json::to_vec(&msg).unwrap_or_default())
}

/// Relays an exchange's messages to the client: as events when it
/// streams and the client takes events, else its response alone. The
/// client leaving, or the deadline passing, cancels it upstream.
#[allow(clippy::too_many_arguments)]
async fn relay(
    cx: &Cx<'_>,
    conn: &mut ClientConn,
    mut ex: Exchange,
    id: &Value,
    era: Era,
    session_header: Option<&str>,
    server: &str,
    idx: usize,
    via: Via<'_>,
    deadline: Instant,
    cancel: Option<&super::Cancel>,
    checks: &[usize],
) -> Relayed {
    let rid = cx.rid;
    let stream = ex.is_stream() && cx.accepts_events();
    if !stream {
        let wait = deadline.saturating_duration_since(Instant::now());
        let step = futures_lite::future::or(
            async { Some(Ok(ex.verbatim(cx.shard, server, era, wait).await)) },
            async {
                conn.closed().await;
                None
            },
        );
        let step = futures_lite::future::or(step, async {
            cancelled(cancel).await;
            Some(Err(()))
        })
        .await;
        match step {
            Some(Err(())) => {
                cancel_upstream(cx, &ex, idx, via).await;
                return Relayed {
                    outcome: answer_cancelled(cx, conn, id, session_header, false).await,
                    is_error: Some(true),
                };
            }
            None => {
                cancel_upstream(cx, &ex, idx, via).await;
                return Relayed {
                    outcome: Outcome::CLOSE,
                    is_error: None,
                };
            }
            Some(Ok(Ok(Some(body)))) => {
                // The caller's `tool_calls` guardrails on what the tool
                // returned: the answer is read only for them.
                let body = match result_checked(cx, checks, id, &body) {
                    Some(changed) => changed,
                    None => body,
                };
                let is_error = is_error_answer(&body);
                let extra: &[(&str, &[u8])] = match session_header {
                    Some(s) => &[("mcp-session-id", s.as_bytes())],
                    None => &[],
                };
                let bytes = respond::full(200, b"application/json", extra, &body, rid, false);
                return Relayed {
                    outcome: write(conn, &bytes).await,
                    is_error: Some(is_error),
                };
            }
            Some(Ok(Ok(None))) => {}
            Some(Ok(Err(e))) => {
                return Relayed {
                    outcome: reply_error(conn, id, &e, session_header, rid).await,
                    is_error: Some(true),
                };
            }
        }
    }
    let mut head_sent = false;
    let mut is_error = None;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let step = futures_lite::future::or(
            async { Step::Message(ex.next(cx.shard, server, wait).await) },
            async {
                conn.closed().await;
                Step::ClientLeft
            },
        );
        let step = futures_lite::future::or(step, async {
            cancelled(cancel).await;
            Step::Cancelled
        })
        .await;
        let msg = match step {
            Step::Cancelled => {
                cancel_upstream(cx, &ex, idx, via).await;
                return Relayed {
                    outcome: answer_cancelled(cx, conn, id, session_header, head_sent).await,
                    is_error: Some(true),
                };
            }
            Step::ClientLeft => {
                cancel_upstream(cx, &ex, idx, via).await;
                return Relayed {
                    outcome: Outcome::CLOSE,
                    is_error: None,
                };
            }
            Step::Message(Ok(Some(m))) => m,
            Step::Message(Ok(None)) => break,
            Step::Message(Err(e)) => {
                if e.code == code::REQUEST_TIMEOUT {
                    cancel_upstream(cx, &ex, idx, via).await;
                }
                let body = wire::error_response(id, &e);
                is_error = Some(true);
                if head_sent {
                    let o = send_event(conn, &body).await;
                    return Relayed {
                        outcome: finish_stream(conn, o).await,
                        is_error,
                    };
                }
                return Relayed {
                    outcome: reply(conn, e.http_status(), &body, session_header, rid).await,
                    is_error,
                };
            }
        };
        let is_response = msg.get("method").is_none();
        let mut msg = msg;
        if is_response && !checks.is_empty() {
            guard_result(cx, checks, id, &mut msg);
        }
        if is_response {
            if let Some(r) = msg.get_mut("result") {
                wire::fit_result(r, era, false);
                is_error = Some(r.get("isError").and_then(Value::as_bool).unwrap_or(false));
            } else {
                is_error = Some(true);
            }
        }
        if stream {
            if !head_sent {
                let mut extra: Vec<(&str, &[u8])> = Vec::new();
                if let Some(s) = session_header {
                    extra.push(("mcp-session-id", s.as_bytes()));
                }
                if write(conn, &respond::stream_head(200, rid, &extra))
                    .await
                    .keep_alive
                {
                    head_sent = true;
                } else {
                    return Relayed {
                        outcome: Outcome::CLOSE,
                        is_error,
                    };
                }
            }
            let o = send_event(conn, &msg).await;
            if !o.keep_alive {
                cancel_upstream(cx, &ex, idx, via).await;
                return Relayed {
                    outcome: o,
                    is_error,
                };
            }
            if is_response {
                return Relayed {
                    outcome: finish_stream(conn, o).await,
                    is_error,
                };
            }
        } else if is_response {
            return Relayed {
                outcome: reply(conn, 200, &msg, session_header, rid).await,
                is_error,
            };
        }
    }
    let e = RpcError::new(
        code::INTERNAL_ERROR,
        format!("mcp server `{server}` ended without a response"),
    );
    let body = wire::error_response(id, &e);
    let outcome = if head_sent {
        let o = send_event(conn, &body).await;
        finish_stream(conn, o).await
    } else {
        reply(conn, 200, &body, session_header, rid).await
    };
    Relayed {
        outcome,
        is_error: Some(true),
    }
}

async fn cancel_upstream(cx: &Cx<'_>, ex: &Exchange, idx: usize, via: Via<'_>) {
    if let Some(up_id) = ex.upstream_id() {
        let server = &cx.cfg.servers[idx];
        cx.mcp
            .cancel(cx.shard, idx, server, up_id, via, SESSION_WAIT)
            .await;
    }
}

/// One message as one event, in one chunk.
async fn send_event(conn: &mut ClientConn, msg: &Value) -> Outcome {
    let data = serde_json::to_vec(msg).unwrap_or_default();
    let mut event = Vec::with_capacity(data.len() + 32);
    event.extend_from_slice(b"event: message\ndata: ");
    event.extend_from_slice(&data);
    event.extend_from_slice(b"\n\n");
    let mut out = Vec::with_capacity(event.len() + 16);
    encode_chunk_header(event.len(), &mut out);
    out.extend_from_slice(&event);
    out.extend_from_slice(CHUNK_END);
    write(conn, &out).await
}

async fn finish_stream(conn: &mut ClientConn, o: Outcome) -> Outcome {
    if !o.keep_alive {
        return o;
    }
    write(conn, LAST_CHUNK).await
}

async fn accepted(conn: &mut ClientConn, rid: &str) -> Outcome {
    write(
        conn,
        &respond::full(202, b"application/json", &[], b"", rid, false),
    )
    .await
}

async fn reply_error(
    conn: &mut ClientConn,
    id: &Value,
    e: &RpcError,
    session: Option<&str>,
    rid: &str,
) -> Outcome {
    reply_error_with(conn, e.http_status(), id, e, session, rid).await
}

/// A JSON-RPC error with an HTTP status of the endpoint's choosing (401,
/// 404 for sessions, 406, 415).
async fn reply_error_with(
    conn: &mut ClientConn,
    status: u16,
    id: &Value,
    e: &RpcError,
    session: Option<&str>,
    rid: &str,
) -> Outcome {
    reply(conn, status, &wire::error_response(id, e), session, rid).await
}

/// A whole JSON answer.
async fn reply(
    conn: &mut ClientConn,
    status: u16,
    body: &Value,
    session: Option<&str>,
    rid: &str,
) -> Outcome {
    if status >= 400 {
        conn.note_error("mcp_error");
    }
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let extra: &[(&str, &[u8])] = match session {
        Some(s) => &[("mcp-session-id", s.as_bytes())],
        None => &[],
    };
    write(
        conn,
        &respond::full(status, b"application/json", extra, &bytes, rid, false),
    )
    .await
}

async fn write(conn: &mut ClientConn, bytes: &[u8]) -> Outcome {
    match conn.write(bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}

/// The client's `Mcp-Param-*` headers: names checked to be tokens, values
/// free of line breaks (the parser guarantees both; checked again since
/// they are written into another request).
fn param_headers(req: &Request<'_>) -> Vec<(String, Vec<u8>)> {
    const PREFIX: &[u8] = b"mcp-param-";
    let buf = &req.head_buf;
    req.head
        .headers
        .iter()
        .filter_map(|h| {
            let name = h.name.of(buf);
            let value = h.value.of(buf);
            let ok = name.len() > PREFIX.len()
                && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                && !value.iter().any(|b| *b == b'\r' || *b == b'\n');
            ok.then(|| (String::from_utf8_lossy(name).into_owned(), value.to_vec()))
        })
        .collect()
}

/// A request to `/mcp` refused before it was read whole (its head or body
/// too large, late or malformed): a JSON-RPC error with the HTTP status,
/// and the connection closed (its stream is in an unknown state).
pub async fn refuse(conn: &mut ClientConn, err: &crate::error::GatewayError, rid: &str) {
    conn.note_error(err.label());
    let code = if err.status() == 400 {
        code::PARSE_ERROR
    } else {
        code::INVALID_REQUEST
    };
    let e = RpcError::new(code, err.to_string());
    let body = serde_json::to_vec(&wire::error_response(&Value::Null, &e)).unwrap_or_default();
    let bytes = respond::full(err.status(), b"application/json", &[], &body, rid, true);
    let _ = conn.write(&bytes).await;
}

/// The router of `mcp` listeners: `/mcp`, health and readiness, nothing
/// else (the model APIs stay on `api` listeners).
pub struct McpRouter;

impl crate::server::Router for McpRouter {
    type Dialect = crate::gateway::ApiDialect;

    fn classify(&self, path: &[u8]) -> (&'static str, Self::Dialect) {
        use crate::gateway::ApiDialect;
        match path {
            b"/healthz" => ("/healthz", ApiDialect::OpenAi),
            b"/readyz" => ("/readyz", ApiDialect::OpenAi),
            b"/mcp" => ("/mcp", ApiDialect::Mcp),
            _ => ("other", ApiDialect::Mcp),
        }
    }

    async fn refuse(
        &self,
        conn: &mut ClientConn,
        _dialect: Self::Dialect,
        err: &crate::error::GatewayError,
        rid: &str,
    ) {
        refuse(conn, err, rid).await;
    }

    async fn handle<'g>(
        &self,
        shard: &Rc<Shard>,
        generation: &'g Generation,
        conn: &mut ClientConn,
        req: Request<'_>,
        rid: &str,
        trail: &mut Trail<'g>,
    ) -> Outcome {
        use crate::gateway::{probe, Probe};
        let get = matches!(req.head.method, Method::Get | Method::Head);
        match req.path() {
            b"/mcp" => handle(shard, generation, conn, req, rid, trail).await,
            b"/healthz" if get => probe(conn, shard, Probe::Health, rid).await,
            b"/readyz" if get => probe(conn, shard, Probe::Ready, rid).await,
            _ => {
                let e = RpcError::new(
                    code::INVALID_REQUEST,
                    "this listener serves MCP at /mcp (and /healthz, /readyz)",
                );
                let body =
                    serde_json::to_vec(&wire::error_response(&Value::Null, &e)).unwrap_or_default();
                write(
                    conn,
                    &respond::full(404, b"application/json", &[], &body, rid, false),
                )
                .await
            }
        }
    }
}
