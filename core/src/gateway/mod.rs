//! The request pipeline, top to bottom: route → extract facts → pick the
//! model's targets → for each target, send (or answer in-process for the mock)
//! → relay → on a retryable failure before any byte reached the client, try
//! the next target.

pub mod egress;
mod forward;
mod mock;
pub mod models;
mod plan;
mod relay;

use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::server::{respond, send_error, ClientConn, Outcome, Request};
use crate::shard::Shard;
use egress::ClientDialect;
use shardgate_proto::h1::Method;
use shardgate_proto::openai::{extract_facts, RequestFacts};
use shardgate_providers::ReplyCtx;
use std::rc::Rc;

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
    pub req: &'a Request,
    pub facts: &'a RequestFacts,
    pub api: Api,
    pub client: ClientDialect,
    pub rid: &'a str,
    /// Unix seconds at arrival (`created` of translated answers).
    pub now_unix: u64,
}

impl Call<'_> {
    /// What translators need to render answers for this client. Answers
    /// name the model that served them (`target`), as pass-through answers
    /// do: the alias is what the client asked for, not what ran.
    pub fn reply_ctx(&self, served_model: &str) -> ReplyCtx {
        ReplyCtx {
            id: match self.client {
                ClientDialect::OpenAi => format!("chatcmpl-{}", self.rid),
                ClientDialect::Anthropic => format!("msg_{}", self.rid.replace('-', "")),
            },
            model: served_model.to_owned(),
            created: self.now_unix,
            // An Anthropic stream ends with its usage, so always ask for it.
            include_usage: self.facts.include_usage || self.client == ClientDialect::Anthropic,
        }
    }
}

/// An error response in the client's dialect.
pub async fn send_error_in(
    conn: &mut ClientConn,
    client: ClientDialect,
    err: &GatewayError,
    rid: &str,
) -> Outcome {
    match client {
        ClientDialect::OpenAi => send_error(conn, err, rid, false).await,
        ClientDialect::Anthropic => {
            let body = client.error_body(err);
            let bytes = respond::full(err.status(), b"application/json", &[], &body, rid, false);
            match conn.write(&bytes).await {
                Ok(()) => Outcome::KEEP,
                Err(_) => Outcome::CLOSE,
            }
        }
    }
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

/// What one target's attempt came to.
pub enum Attempt {
    /// A response (success or a final error) was written to the client.
    Done(Outcome),
    /// Nothing was written to the client; the caller decides whether to try
    /// the next target or answer with this error.
    Failed(GatewayError),
}

pub async fn handle(shard: &Rc<Shard>, conn: &mut ClientConn, req: Request, rid: &str) -> Outcome {
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
        Route::Models => json_ok(conn, &shard.models_body, rid).await,
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
    req: &Request,
    api: Api,
    rid: &str,
) -> Outcome {
    let client = api.dialect();
    let mut scratch = Vec::new();
    let mut facts: RequestFacts = match extract_facts(&req.body, &mut scratch) {
        Ok(f) => f,
        Err(e) => return send_error_in(conn, client, &e.into(), rid).await,
    };
    if !api.can_stream() {
        facts.stream = false;
    }
    let Some(model) = shard.config.models.get(&facts.model) else {
        let e = GatewayError::ModelNotFound(facts.model.clone());
        return send_error_in(conn, client, &e, rid).await;
    };
    let call = Call {
        shard,
        req,
        facts: &facts,
        api,
        client,
        rid,
        now_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let targets = &model.targets;
    for (i, target) in targets.iter().enumerate() {
        let Some(provider) = shard.config.providers.get(target.provider) else {
            continue;
        };
        let attempt = match &provider.kind {
            ProviderKind::Mock(m) => mock::serve(&call, conn, &provider.name, m, target).await,
            ProviderKind::Http(h) => forward::forward(&call, conn, target, provider, h).await,
        };
        match attempt {
            Attempt::Done(outcome) => return outcome,
            Attempt::Failed(err) if err.retryable() && i + 1 < targets.len() => {
                log::info!(
                    "{rid}: target {}/{} failed ({}), trying the next",
                    provider.name,
                    target.model,
                    err.label()
                );
            }
            Attempt::Failed(err) => {
                log::info!("{rid}: {} {}: {}", provider.name, err.label(), err);
                return send_error_in(conn, client, &err, rid).await;
            }
        }
    }
    let e = GatewayError::ModelNotFound(facts.model.clone());
    send_error_in(conn, client, &e, rid).await
}
