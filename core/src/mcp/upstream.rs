//! One message to one upstream server, in the server's own era.
//!
//! A server's era is learnt once per shard, the way the SDK's clients do:
//! `server/discover` first; a server that does not answer it as a
//! 2026-07-28 server gets `initialize`. Handshake-era servers need a
//! session: a legacy client's session carries its own with each server
//! (sealed in its session ID); modern clients share the shard's, and their
//! request ids are then renumbered so two clients' ids never meet in one
//! upstream session.

use super::http::{self, Answer, HttpError, Messages, Post};
use super::session::UpstreamSession;
use super::stdio::{modern_meta, set_modern_meta, strip_modern_meta, Reply, StdioServer};
use super::McpShard;
use crate::config::{McpServer, McpTransport};
use crate::runtime::WakingReceiver;
use crate::shard::Shard;
use serde_json::{json, Map, Value};
use shardgate_policy::ToolScope;
use shardgate_proto::json::{self, write_json_string, Edit};
use shardgate_proto::mcp::{self as wire, code, Params, RpcError};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a server that failed its probe is left alone.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a server's tool scopes (from its annotations) are trusted.
const SCOPES_FOR: Duration = Duration::from_secs(30);
/// Pages of one list followed at most.
const MAX_PAGES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpEra {
    Modern,
    /// The version its `initialize` agreed.
    Handshake(Rc<str>),
}

/// Tool scopes by the server's own tool name (`None`: it did not say).
pub type Scopes = HashMap<String, Option<ToolScope>>;

/// What a shard learnt of one server.
#[derive(Default)]
pub struct Known {
    era: Option<UpEra>,
    /// The shard's own session with a handshake-era HTTP server.
    session: Option<Rc<str>>,
    down_until: Option<Instant>,
    /// Tool scopes from its annotations, by its own tool name.
    scopes: Option<(Instant, Rc<Scopes>)>,
}

/// Which session a handshake-era server's message goes in.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// The shard's own.
    Shared,
    /// A legacy client's (`None` for a server the session has none with).
    Client(Option<&'a UpstreamSession>),
}

/// One message for one server.
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// As the client wrote them, with what the gateway set.
    pub params: Params,
    /// The server's own name of what is called (`Mcp-Name`).
    pub name: Option<&'a str>,
    /// `None` for a notification.
    pub client_id: Option<Value>,
    /// The client's `Mcp-Param-*` headers (a tool's `x-mcp-header`
    /// arguments), passed on to a modern server, which checks them.
    pub param_headers: Vec<(String, Vec<u8>)>,
}

/// The answer to one request, message by message: notifications about it,
/// then its response (with the client's id).
pub enum Exchange {
    Http {
        messages: Box<Messages>,
        /// The id the server knows the request by.
        upstream_id: Value,
        client_id: Value,
        /// The server speaks 2026-07-28.
        modern: bool,
        done: bool,
    },
    Stdio {
        rx: WakingReceiver<Reply>,
        server: StdioServer,
        ticket: u64,
        done: bool,
    },
    /// Already answered (a notification's acknowledgement).
    Ready(Option<Value>),
}

fn failed(server: &str, what: impl std::fmt::Display) -> RpcError {
    RpcError::new(
        code::CONNECTION_CLOSED,
        format!("mcp server `{server}`: {what}"),
    )
    .with_data(json!({ "server": server }))
}

fn http_failed(server: &str, e: &HttpError) -> RpcError {
    match e {
        HttpError::Timeout => RpcError::new(
            code::REQUEST_TIMEOUT,
            format!("mcp server `{server}`: no answer in time"),
        )
        .with_data(json!({ "server": server })),
        other => failed(server, other),
    }
}

impl Exchange {
    /// The next message; `None` after the response. `wait` bounds the wait
    /// for each.
    pub async fn next(
        &mut self,
        shard: &Shard,
        server: &str,
        wait: Duration,
    ) -> Result<Option<Value>, RpcError> {
        match self {
            Exchange::Ready(v) => Ok(v.take()),
            Exchange::Http {
                messages,
                upstream_id,
                client_id,
                done,
                ..
            } => loop {
                if *done {
                    return Ok(None);
                }
                let Some(mut m) = messages
                    .next(shard, wait)
                    .await
                    .map_err(|e| http_failed(server, &e))?
                else {
                    *done = true;
                    return Err(failed(server, "the answer ended without a response"));
                };
                let is_response = m.get("method").is_none();
                if is_response {
                    if m.get("id") != Some(upstream_id) && m.get("id") != Some(&Value::Null) {
                        continue;
                    }
                    m["id"] = client_id.clone();
                    *done = true;
                    return Ok(Some(m));
                }
                // Server-to-client requests are not relayed (the gateway
                // advertises no client capabilities); notifications are.
                if m.get("id").is_none() {
                    return Ok(Some(m));
                }
            },
            Exchange::Stdio { rx, done, .. } => {
                if *done {
                    return Ok(None);
                }
                let got = crate::io::with_timeout(wait, async { Ok(rx.recv().await) })
                    .await
                    .map_err(|_| {
                        RpcError::new(
                            code::REQUEST_TIMEOUT,
                            format!("mcp server `{server}`: no answer in time"),
                        )
                        .with_data(json!({ "server": server }))
                    })?;
                match got {
                    Some(Reply::Message(m)) => {
                        if m.get("method").is_none() {
                            *done = true;
                        }
                        Ok(Some(m))
                    }
                    Some(Reply::Failed(e)) => {
                        *done = true;
                        Err(failed(server, e.message))
                    }
                    None => {
                        *done = true;
                        Err(failed(server, "the server stopped"))
                    }
                }
            }
        }
    }

    /// The response as the server sent it, when it can go to a client of
    /// `era` unchanged: one JSON answer, the request's own id, the same
    /// protocol era. Same format, no re-serializing.
    pub async fn verbatim(
        &mut self,
        shard: &Shard,
        server: &str,
        era: wire::Era,
        wait: Duration,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        let Exchange::Http {
            messages,
            upstream_id,
            client_id,
            modern,
            done,
        } = self
        else {
            return Ok(None);
        };
        if *done
            || upstream_id != client_id
            || *modern != (era == wire::Era::Modern)
            || messages.is_stream()
        {
            return Ok(None);
        }
        let raw = messages
            .raw_json(shard, wait)
            .await
            .map_err(|e| http_failed(server, &e))?;
        if raw.is_some() {
            *done = true;
        }
        Ok(raw)
    }

    /// Whether more than one message may come (an event stream).
    pub fn is_stream(&self) -> bool {
        match self {
            Exchange::Http { messages, .. } => messages.is_stream(),
            Exchange::Stdio { .. } => true,
            Exchange::Ready(_) => false,
        }
    }

    /// The server's id of the request, for a `notifications/cancelled`.
    pub fn upstream_id(&self) -> Option<&Value> {
        match self {
            Exchange::Http {
                upstream_id,
                done: false,
                ..
            } => Some(upstream_id),
            _ => None,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // A stdio call abandoned before its response is cancelled in the
        // child; an HTTP one ends with its connection (closed, not pooled).
        if let Exchange::Stdio {
            server,
            ticket,
            done: false,
            ..
        } = self
        {
            server.cancel(*ticket);
        }
    }
}

impl McpShard {
    /// Sends `out` to server `idx`.
    pub async fn send(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        out: Outgoing<'_>,
        via: Via<'_>,
        wait: Duration,
    ) -> Result<Exchange, RpcError> {
        match &cfg.transport {
            McpTransport::Stdio(_) => {
                let Some(Some(server)) = self.hub.stdio.get(idx) else {
                    return Err(failed(&cfg.name, "not started"));
                };
                let Some(client_id) = out.client_id else {
                    return Ok(Exchange::Ready(None));
                };
                let mut msg = Map::new();
                msg.insert("method".into(), out.method.into());
                msg.insert("params".into(), Value::Object(out.params.to_map()));
                let ticket = self.unique();
                let rx = server.call(msg, client_id, ticket);
                Ok(Exchange::Stdio {
                    rx,
                    server: server.clone(),
                    ticket,
                    done: false,
                })
            }
            McpTransport::Http(_) => self.send_http(shard, idx, cfg, out, via, wait).await,
        }
    }

    async fn send_http(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        out: Outgoing<'_>,
        via: Via<'_>,
        wait: Duration,
    ) -> Result<Exchange, RpcError> {
        let (Some(Some(target)), McpTransport::Http(_)) = (self.endpoints.get(idx), &cfg.transport)
        else {
            return Err(failed(&cfg.name, "not an HTTP server"));
        };
        let era = self.era(shard, idx, cfg, wait).await?;
        let client_session = match via {
            Via::Client(s) => s,
            Via::Shared => None,
        };
        // The shard's own session is shared by many clients: their ids are
        // renumbered so they never meet in it.
        let renumber = matches!(era, UpEra::Handshake(_)) && client_session.is_none();
        let Outgoing {
            method,
            params,
            name,
            client_id,
            param_headers,
        } = out;
        let upstream_id = match &client_id {
            Some(_) if renumber => Some(Value::from(format!("sg-{}", self.unique()))),
            other => other.clone(),
        };
        let body = message_body(method, upstream_id.as_ref(), &params, era == UpEra::Modern);
        let mut retried = false;
        loop {
            let (session, version): (Option<Rc<str>>, &str) = match (&era, client_session) {
                (UpEra::Modern, _) => (None, wire::MODERN_VERSION),
                (UpEra::Handshake(_), Some(s)) => (s.id.as_deref().map(Rc::from), &s.pv),
                (UpEra::Handshake(v), None) => {
                    (self.shared_session(shard, idx, cfg, wait).await?, v)
                }
            };
            let post = Post {
                body: &body,
                method,
                name,
                version: Some(version),
                session: session.as_deref(),
                param_headers: &param_headers,
            };
            match http::post(shard, target, &post, wait).await {
                Ok(Answer::Accepted) => return Ok(Exchange::Ready(None)),
                Ok(Answer::Messages(messages)) => {
                    let (Some(upstream_id), Some(client_id)) = (upstream_id, client_id) else {
                        return Ok(Exchange::Ready(None));
                    };
                    return Ok(Exchange::Http {
                        messages,
                        upstream_id,
                        client_id,
                        modern: era == UpEra::Modern,
                        done: false,
                    });
                }
                Err(HttpError::SessionGone) if renumber && !retried => {
                    // The server restarted or dropped the shard's session:
                    // open a new one, once.
                    self.known.borrow_mut()[idx].session = None;
                    retried = true;
                }
                Err(e) => {
                    if matches!(e, HttpError::Connect(_)) {
                        self.known.borrow_mut()[idx].down_until = Some(Instant::now() + DOWN_FOR);
                    }
                    return Err(http_failed(&cfg.name, &e));
                }
            }
        }
    }

    /// The server's era, probed once per shard.
    async fn era(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        wait: Duration,
    ) -> Result<UpEra, RpcError> {
        {
            let known = self.known.borrow();
            let k = &known[idx];
            if let Some(e) = &k.era {
                return Ok(e.clone());
            }
            if k.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(failed(&cfg.name, "unreachable (retrying shortly)"));
            }
        }
        let mut params = Value::Object(Map::new());
        set_modern_meta(&mut params);
        let probe = json!({"jsonrpc":"2.0","id":0,"method":"server/discover","params":params});
        let answer = self
            .ask(
                shard,
                idx,
                cfg,
                &probe,
                "server/discover",
                Some(wire::MODERN_VERSION),
                None,
                wait,
            )
            .await;
        let era = match answer {
            Ok((m, _)) => {
                let modern = m
                    .pointer("/result/supportedVersions")
                    .and_then(Value::as_array)
                    .is_some_and(|v| v.iter().any(|v| v == wire::MODERN_VERSION));
                if modern {
                    UpEra::Modern
                } else {
                    UpEra::Handshake(wire::HANDSHAKE_VERSIONS[0].into())
                }
            }
            Err(HttpError::Status(_) | HttpError::Protocol(_)) => {
                UpEra::Handshake(wire::HANDSHAKE_VERSIONS[0].into())
            }
            Err(e) => {
                self.known.borrow_mut()[idx].down_until = Some(Instant::now() + DOWN_FOR);
                return Err(http_failed(&cfg.name, &e));
            }
        };
        self.known.borrow_mut()[idx].era = Some(era.clone());
        Ok(era)
    }

    /// The shard's session with a handshake-era server, opened once.
    async fn shared_session(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        wait: Duration,
    ) -> Result<Option<Rc<str>>, RpcError> {
        if let Some(s) = &self.known.borrow()[idx].session {
            return Ok(Some(s.clone()));
        }
        let opened = self.initialize(shard, idx, cfg, wait).await?;
        let id: Option<Rc<str>> = opened.id.as_deref().map(Rc::from);
        let mut known = self.known.borrow_mut();
        known[idx].era = Some(UpEra::Handshake(opened.pv.as_str().into()));
        known[idx].session = id.clone();
        Ok(id)
    }

    /// A new session for a legacy client with every handshake-era HTTP
    /// server (modern and stdio servers need none).
    pub async fn open_session(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        wait: Duration,
    ) -> Result<Option<UpstreamSession>, RpcError> {
        if !matches!(cfg.transport, McpTransport::Http(_)) {
            return Ok(None);
        }
        match self.era(shard, idx, cfg, wait).await? {
            UpEra::Modern => Ok(None),
            UpEra::Handshake(_) => self.initialize(shard, idx, cfg, wait).await.map(Some),
        }
    }

    /// `initialize`, then `notifications/initialized` in the new session.
    async fn initialize(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        wait: Duration,
    ) -> Result<UpstreamSession, RpcError> {
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": wire::HANDSHAKE_VERSIONS[0],
            "capabilities": {},
            "clientInfo": super::stdio::gateway_info(),
        }});
        let (answer, session) = self
            .ask(shard, idx, cfg, &init, "initialize", None, None, wait)
            .await
            .map_err(|e| http_failed(&cfg.name, &e))?;
        let Some(pv) = answer
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        else {
            let why = answer
                .get("error")
                .map_or_else(|| "no result".to_owned(), Value::to_string);
            return Err(failed(&cfg.name, format!("initialize failed: {why}")));
        };
        let pv = pv.to_owned();
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let _ = self
            .ask(
                shard,
                idx,
                cfg,
                &note,
                "notifications/initialized",
                Some(&pv),
                session.as_deref(),
                wait,
            )
            .await;
        Ok(UpstreamSession {
            server: cfg.name.clone(),
            id: session,
            pv,
        })
    }

    /// Ends a legacy client's session with a server (best effort).
    pub async fn close_session(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        s: &UpstreamSession,
        wait: Duration,
    ) {
        let (Some(Some(target)), McpTransport::Http(h), Some(id)) =
            (self.endpoints.get(idx), &cfg.transport, &s.id)
        else {
            return;
        };
        let _ = http::delete(shard, &target.ep, h, id, &s.pv, wait).await;
    }

    /// Tells a handshake-era server its request is cancelled.
    pub async fn cancel(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        upstream_id: &Value,
        via: Via<'_>,
        wait: Duration,
    ) {
        let era = self.known.borrow()[idx].era.clone();
        let Some(UpEra::Handshake(v)) = era else {
            return;
        };
        let (session, pv) = match via {
            Via::Client(Some(s)) => (s.id.clone(), s.pv.clone()),
            Via::Client(None) => return,
            Via::Shared => (
                self.known.borrow()[idx]
                    .session
                    .as_deref()
                    .map(str::to_owned),
                v.to_string(),
            ),
        };
        let note = json!({"jsonrpc":"2.0","method":"notifications/cancelled",
            "params":{"requestId": upstream_id, "reason": "the client cancelled"}});
        let _ = self
            .ask(
                shard,
                idx,
                cfg,
                &note,
                "notifications/cancelled",
                Some(&pv),
                session.as_deref(),
                wait,
            )
            .await;
    }

    /// One request (or notification) of the gateway's own, its answer read
    /// whole.
    #[allow(clippy::too_many_arguments)]
    async fn ask(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        msg: &Value,
        method: &str,
        version: Option<&str>,
        session: Option<&str>,
        wait: Duration,
    ) -> Result<(Value, Option<String>), HttpError> {
        let (Some(Some(target)), McpTransport::Http(_)) = (self.endpoints.get(idx), &cfg.transport)
        else {
            return Err(HttpError::Protocol("not an HTTP server".into()));
        };
        let body = serde_json::to_vec(msg).unwrap_or_default();
        let post = Post {
            body: &body,
            method,
            name: None,
            version,
            session,
            param_headers: &[],
        };
        match http::post(shard, target, &post, wait).await? {
            Answer::Accepted => Ok((Value::Null, None)),
            Answer::Messages(mut m) => {
                let session = m.session.take();
                while let Some(v) = m.next(shard, wait).await? {
                    if v.get("method").is_none() {
                        return Ok((v, session));
                    }
                }
                Err(HttpError::Protocol("no response".into()))
            }
        }
    }

    /// Scopes of server `idx`'s tools from their annotations (cached a
    /// while per shard), listing its tools when not known.
    pub async fn annotated_scopes(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        via: Via<'_>,
        wait: Duration,
    ) -> Rc<HashMap<String, Option<ToolScope>>> {
        if let Some((at, s)) = &self.known.borrow()[idx].scopes {
            if at.elapsed() < SCOPES_FOR {
                return s.clone();
            }
        }
        let tools = self
            .list_all(shard, idx, cfg, "tools/list", "tools", via, wait)
            .await
            .unwrap_or_default();
        let scopes: HashMap<String, Option<ToolScope>> = tools
            .iter()
            .filter_map(|t| Some((t.get("name")?.as_str()?.to_owned(), annotated_scope(t))))
            .collect();
        let scopes = Rc::new(scopes);
        self.known.borrow_mut()[idx].scopes = Some((Instant::now(), scopes.clone()));
        scopes
    }

    /// Every item of one list method on one server, its pages followed.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_all(
        &self,
        shard: &Shard,
        idx: usize,
        cfg: &McpServer,
        method: &str,
        field: &str,
        via: Via<'_>,
        wait: Duration,
    ) -> Result<Vec<Value>, RpcError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut params = Map::new();
            if let Some(c) = cursor.take() {
                params.insert("cursor".into(), c.into());
            }
            let out = Outgoing {
                method,
                params: Params::from_map(params),
                name: None,
                client_id: Some(Value::from(format!("sg-list-{}", self.unique()))),
                param_headers: Vec::new(),
            };
            let mut ex = self.send(shard, idx, cfg, out, via, wait).await?;
            let mut answer = None;
            while let Some(m) = ex.next(shard, &cfg.name, wait).await? {
                if m.get("method").is_none() {
                    answer = Some(m);
                }
            }
            let Some(mut answer) = answer else {
                return Err(failed(&cfg.name, "no answer"));
            };
            if let Some(e) = answer.get("error") {
                // A server without this capability lists nothing.
                if e.get("code").and_then(Value::as_i64) == Some(code::METHOD_NOT_FOUND) {
                    return Ok(items);
                }
                return Err(failed(&cfg.name, format!("{method} failed: {e}")));
            }
            let result = answer
                .get_mut("result")
                .map(Value::take)
                .unwrap_or_default();
            if let Some(Value::Array(page)) = result.get(field) {
                items.extend(page.iter().cloned());
            }
            match result.get("nextCursor").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
                _ => return Ok(items),
            }
        }
        Ok(items)
    }
}

/// The scope a server claims for a tool: read-only, or (destructive or
/// not read-only) write; unknown without annotations.
pub fn annotated_scope(tool: &Value) -> Option<ToolScope> {
    let a = tool.get("annotations")?;
    match a.get("readOnlyHint").and_then(Value::as_bool) {
        Some(true) => Some(ToolScope::Read),
        Some(false) => Some(ToolScope::Write),
        None if a.get("destructiveHint").and_then(Value::as_bool) == Some(true) => {
            Some(ToolScope::Write)
        }
        None => None,
    }
}

impl McpShard {
    /// Keeps the scopes a fresh `tools/list` of server `idx` gave.
    pub fn remember_scopes(&self, idx: usize, scopes: HashMap<String, Option<ToolScope>>) {
        if let Some(k) = self.known.borrow_mut().get_mut(idx) {
            k.scopes = Some((Instant::now(), Rc::new(scopes)));
        }
    }
}

/// The JSON-RPC message for an HTTP server: the client's params as they
/// came (with what the gateway set), and `_meta` in the server's era
/// ([`meta_edit`]). Params left empty are left out.
fn message_body(method: &str, id: Option<&Value>, params: &Params, modern: bool) -> Vec<u8> {
    let mut meta = Vec::new();
    let edit = meta_edit(params.raw_value("_meta"), modern, &mut meta);
    let mut body = Vec::with_capacity(320 + method.len() + params.len());
    body.extend_from_slice(br#"{"jsonrpc":"2.0""#);
    if let Some(id) = id {
        body.extend_from_slice(br#","id":"#);
        let _ = serde_json::to_writer(&mut body, id);
    }
    body.extend_from_slice(br#","method":"#);
    write_json_string(&mut body, method);
    let empty = match edit {
        Some(Edit::Set { .. }) => false,
        Some(Edit::Remove { key }) => params.is_empty_without(key),
        None => params.is_empty(),
    };
    if !empty {
        body.extend_from_slice(br#","params":"#);
        params.write_into(&mut body, edit.as_slice());
    }
    body.push(b'}');
    body
}

/// The change a request's `_meta` (`raw`, as the client sent it) needs on
/// its way to a server: for a 2026-07-28 server, the modern envelope's
/// keys set to the gateway's ([`modern_meta`]) and the client's others
/// kept; for a handshake-era server, none of the `io.modelcontextprotocol/`
/// keys, and no `_meta` when nothing else is left in it. The common shapes
/// (only the envelope's keys, as modern clients send; only other keys)
/// take no parse: the modern `_meta` is then a constant. `buf` holds a
/// value written for the edit.
fn meta_edit<'b>(raw: Option<&[u8]>, modern: bool, buf: &'b mut Vec<u8>) -> Option<Edit<'b>> {
    static MODERN: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        serde_json::to_vec(&modern_meta(None)).unwrap_or_else(|_| b"{}".to_vec())
    });
    let modern_set = || Edit::Set {
        key: "_meta",
        value: &MODERN,
    };
    let Some(raw) = raw else {
        return modern.then(modern_set);
    };
    let keys = json::top_level_members(raw)
        .ok()
        .map(|members| MetaKeys::of(raw, &members));
    match (modern, keys) {
        // Not an object: replaced by the envelope, or left as it is.
        (true, None) => return Some(modern_set()),
        (false, None) => return None,
        (true, Some(Some(k))) if !k.other && !k.plain => return Some(modern_set()),
        (false, Some(Some(k))) if !k.plain => return Some(Edit::Remove { key: "_meta" }),
        (false, Some(Some(k))) if !k.envelope && !k.other => return None,
        _ => {}
    }
    // Mixed or escaped keys: edited as a tree.
    let Ok(Value::Object(mut m)) = serde_json::from_slice(raw) else {
        return modern.then(modern_set);
    };
    let meta = if modern {
        modern_meta(Some(Value::Object(m)))
    } else {
        strip_modern_meta(&mut m);
        if m.is_empty() {
            return Some(Edit::Remove { key: "_meta" });
        }
        Value::Object(m)
    };
    *buf = serde_json::to_vec(&meta).unwrap_or_else(|_| b"{}".to_vec());
    Some(Edit::Set {
        key: "_meta",
        value: buf,
    })
}

/// Which kinds of key a `_meta` object holds, read from its text.
struct MetaKeys {
    /// One the modern envelope sets.
    envelope: bool,
    /// Another of the `io.modelcontextprotocol/` namespace.
    other: bool,
    /// Any other.
    plain: bool,
}

impl MetaKeys {
    /// None when a key is escaped (only a parse can tell what it is).
    fn of(raw: &[u8], members: &[json::Member]) -> Option<MetaKeys> {
        const ENVELOPE: [&str; 3] = [
            wire::META_VERSION,
            wire::META_CLIENT_INFO,
            wire::META_CLIENT_CAPABILITIES,
        ];
        let mut k = MetaKeys {
            envelope: false,
            other: false,
            plain: false,
        };
        for m in members {
            if m.key_escaped {
                return None;
            }
            let key = &raw[m.key.clone()];
            if ENVELOPE.iter().any(|e| key == e.as_bytes()) {
                k.envelope = true;
            } else if key.starts_with(b"io.modelcontextprotocol/") {
                k.other = true;
            } else {
                k.plain = true;
            }
        }
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the message was when it was built as a tree: the reference
    /// the written message must parse to.
    fn by_tree(method: &str, id: Option<&Value>, params: &Params, modern: bool) -> Value {
        let mut params = Value::Object(params.to_map());
        if modern {
            set_modern_meta(&mut params);
        } else if let Some(p) = params.as_object_mut() {
            if let Some(m) = p.get_mut("_meta").and_then(Value::as_object_mut) {
                strip_modern_meta(m);
                if m.is_empty() {
                    p.remove("_meta");
                }
            }
        }
        let mut msg = Map::new();
        msg.insert("jsonrpc".into(), "2.0".into());
        if let Some(id) = id {
            msg.insert("id".into(), id.clone());
        }
        msg.insert("method".into(), method.into());
        if !params.as_object().is_some_and(Map::is_empty) {
            msg.insert("params".into(), params);
        }
        Value::Object(msg)
    }

    #[test]
    fn a_message_is_the_clients_params_with_meta_in_the_servers_era() {
        let v = wire::META_VERSION;
        let cases = [
            json!({}),
            json!({"name": "echo", "arguments": {"text": "hi"}}),
            json!({"name": "echo", "_meta": {v: "2026-07-28"}}),
            json!({"_meta": {v: "2026-07-28"}}),
            json!({"_meta": {}}),
            json!({"name": "echo", "_meta": {"progressToken": 7, v: "2026-07-28"}}),
            json!({"name": "echo", "_meta": {"progressToken": "p"}}),
            json!({"name": "echo", "_meta": "odd"}),
            json!({"_meta": {v: "2026-07-28", "io.modelcontextprotocol/related-task": {"taskId": "t"}}}),
        ];
        for params in cases {
            let mut p = Params::from_map(params.as_object().unwrap().clone());
            p.set("name", &json!("own"));
            for modern in [true, false] {
                for id in [None, Some(json!(3)), Some(json!("sg-1"))] {
                    let written = message_body("tools/call", id.as_ref(), &p, modern);
                    let written: Value = serde_json::from_slice(&written).unwrap();
                    assert_eq!(
                        written,
                        by_tree("tools/call", id.as_ref(), &p, modern),
                        "{params} modern={modern}"
                    );
                }
            }
        }
        // Nothing at all: no params member for a handshake-era server.
        let body = message_body("tools/list", Some(&json!(1)), &Params::default(), false);
        assert_eq!(body, br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        // What the client wrote is kept as written.
        let p = Params::from_raw(br#"{"arguments": {"n": 1.50}, "name": "echo"}"#).unwrap();
        let body = String::from_utf8(message_body("tools/call", None, &p, false)).unwrap();
        assert!(body.contains(r#""arguments": {"n": 1.50}"#), "{body}");
    }
}
