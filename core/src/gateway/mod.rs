//! The request pipeline, top to bottom: route → extract facts → pick the
//! model's targets → for each target, send (or answer in-process for the mock)
//! → relay → on a retryable failure before any byte reached the client, try
//! the next target.

mod forward;
mod mock;
pub mod models;
mod relay;

use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::server::{respond, send_error, ClientConn, Outcome, Request};
use crate::shard::Shard;
use shardgate_proto::h1::Method;
use shardgate_proto::openai::{extract_facts, RequestFacts};
use std::rc::Rc;

/// The OpenAI API endpoints the gateway relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Api {
    /// Path below the provider's base URL.
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Api::ChatCompletions => "/chat/completions",
            Api::Completions => "/completions",
            Api::Embeddings => "/embeddings",
        }
    }

    pub fn can_stream(self) -> bool {
        !matches!(self, Api::Embeddings)
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
    let mut scratch = Vec::new();
    let mut facts: RequestFacts = match extract_facts(&req.body, &mut scratch) {
        Ok(f) => f,
        Err(e) => return send_error(conn, &e.into(), rid, false).await,
    };
    if !api.can_stream() {
        facts.stream = false;
    }
    let Some(model) = shard.config.models.get(&facts.model) else {
        let e = GatewayError::ModelNotFound(facts.model.clone());
        return send_error(conn, &e, rid, false).await;
    };
    let targets = &model.targets;
    for (i, target) in targets.iter().enumerate() {
        let Some(provider) = shard.config.providers.get(target.provider) else {
            continue;
        };
        let attempt = match &provider.kind {
            ProviderKind::Mock(m) => {
                mock::serve(conn, req, &facts, api, &provider.name, m, target, rid).await
            }
            ProviderKind::OpenAi(h) => {
                forward::forward(shard, conn, req, &facts, api, target, provider, h, rid).await
            }
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
                return send_error(conn, &err, rid, false).await;
            }
        }
    }
    send_error(
        conn,
        &GatewayError::ModelNotFound(facts.model.clone()),
        rid,
        false,
    )
    .await
}
