//! The router of `admin` listeners: operators' endpoints on a port of their
//! own (usually loopback), apart from client traffic, so that probes and
//! operators never queue behind model calls and client ports expose
//! nothing operational. Health and readiness today; the metrics, key and
//! config endpoints of the observability issue plug in here.

use crate::error::GatewayError;
use crate::gateway::{send_error, ClientDialect};
use crate::generation::Generation;
use crate::record::Trail;
use crate::server::{respond, ClientConn, Outcome, Request, Router};
use crate::shard::Shard;
use shardgate_proto::h1::Method;
use std::rc::Rc;

pub struct AdminRouter;

/// The admin endpoints.
enum Endpoint {
    Health,
    Ready,
}

fn endpoint(path: &[u8]) -> Option<(Endpoint, &'static str)> {
    match path {
        b"/healthz" => Some((Endpoint::Health, "/healthz")),
        b"/readyz" => Some((Endpoint::Ready, "/readyz")),
        _ => None,
    }
}

impl Router for AdminRouter {
    type Dialect = ClientDialect;

    fn classify(&self, path: &[u8]) -> (&'static str, ClientDialect) {
        (
            endpoint(path).map_or("other", |(_, label)| label),
            ClientDialect::OpenAi,
        )
    }

    async fn refuse(
        &self,
        conn: &mut ClientConn,
        dialect: ClientDialect,
        err: &GatewayError,
        rid: &str,
    ) {
        send_error(conn, dialect, err, rid, &[], true).await;
    }

    async fn handle<'g>(
        &self,
        shard: &Rc<Shard>,
        _generation: &'g Generation,
        conn: &mut ClientConn,
        req: Request<'_>,
        rid: &str,
        _trail: &mut Trail<'g>,
    ) -> Outcome {
        let openai = ClientDialect::OpenAi;
        let method = req.head.method;
        let describe = || {
            let line = &req.head_buf[..req.head_buf.iter().position(|&b| b == b' ').unwrap_or(0)];
            (
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(req.path()).into_owned(),
            )
        };
        let Some((which, _)) = endpoint(req.path()) else {
            let (method, path) = describe();
            let e = GatewayError::UnknownRoute { method, path };
            return send_error(conn, openai, &e, rid, &[], false).await;
        };
        if !matches!(method, Method::Get | Method::Head) {
            let (method, path) = describe();
            let e = GatewayError::MethodNotAllowed { method, path };
            return send_error(conn, openai, &e, rid, &[], false).await;
        }
        let body: &[u8] = match which {
            Endpoint::Health => br#"{"status":"ok"}"#,
            Endpoint::Ready if shard.draining() => {
                return send_error(conn, openai, &GatewayError::Draining, rid, &[], true).await;
            }
            Endpoint::Ready => br#"{"status":"ready"}"#,
        };
        let bytes = respond::full(200, b"application/json", &[], body, rid, false);
        match conn.write(&bytes).await {
            Ok(()) => Outcome::KEEP,
            Err(_) => Outcome::CLOSE,
        }
    }
}
