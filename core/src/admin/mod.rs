//! The router of `admin` listeners: operators' endpoints on a port of their
//! own (usually loopback), apart from client traffic, so that probes and
//! operators never queue behind model calls and client ports expose
//! nothing operational: health, readiness, `/metrics` (every shard's
//! counts, merged at the scrape), the status page, keys and reloads.

use crate::error::GatewayError;
use crate::gateway::{probe, route_error, send_error, send_ok, ClientDialect, Probe};
use crate::generation::Generation;
use crate::record::Trail;
use crate::server::{ClientConn, Outcome, Request, Router};
use crate::shard::Shard;
use shardgate_proto::h1::Method;
use std::rc::Rc;
use std::time::Duration;

mod cache;
mod cluster;
mod keys;
mod providers;
mod reload;
mod status;
mod usage;

/// `Authorization: Bearer <admin.token>`, compared in constant time.
fn authorized(req: &Request<'_>, generation: &Generation) -> bool {
    use subtle::ConstantTimeEq;
    let Some(admin) = &generation.config.admin else {
        return false;
    };
    let Some(presented) = req
        .header("authorization")
        .and_then(|v| v.strip_prefix(b"Bearer "))
    else {
        return false;
    };
    presented.ct_eq(admin.token.expose().as_bytes()).into()
}

pub struct AdminRouter;

/// The admin endpoints.
enum Endpoint<'p> {
    Health,
    Ready,
    Metrics,
    /// The status page (`GET /`), and its figures.
    Page,
    Status,
    /// `POST` reloads the config file.
    Reload,
    /// Usage per key, team or tenant in a month.
    Usage,
    /// Each target's health, circuit and latency (the status's part).
    Targets,
    /// `GET` lists keys, `POST` issues one.
    Keys,
    /// `DELETE` revokes it.
    Key(&'p str),
    /// The cluster store, live nodes and each scope's overshoot bound.
    Cluster,
    /// `GET` lists stored provider keys (never the keys).
    Providers,
    /// `PUT` stores a provider's key, `DELETE` removes it.
    ProviderKey(&'p str),
    /// `DELETE` purges the response cache.
    Cache,
}

fn endpoint(path: &[u8]) -> Option<(Endpoint<'_>, &'static str)> {
    match path {
        b"/healthz" => Some((Endpoint::Health, "/healthz")),
        b"/readyz" => Some((Endpoint::Ready, "/readyz")),
        b"/metrics" => Some((Endpoint::Metrics, "/metrics")),
        b"/" => Some((Endpoint::Page, "/")),
        b"/admin/status" => Some((Endpoint::Status, "/admin/status")),
        b"/admin/reload" => Some((Endpoint::Reload, "/admin/reload")),
        b"/admin/usage" => Some((Endpoint::Usage, "/admin/usage")),
        b"/admin/targets" => Some((Endpoint::Targets, "/admin/targets")),
        b"/admin/keys" => Some((Endpoint::Keys, "/admin/keys")),
        b"/admin/cluster" => Some((Endpoint::Cluster, "/admin/cluster")),
        b"/admin/cache" => Some((Endpoint::Cache, "/admin/cache")),
        b"/admin/providers" => Some((Endpoint::Providers, "/admin/providers")),
        _ if path.starts_with(b"/admin/providers/") => {
            let name = path
                .strip_prefix(b"/admin/providers/")?
                .strip_suffix(b"/key")?;
            let name = std::str::from_utf8(name).ok()?;
            let ok = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            ok.then_some((Endpoint::ProviderKey(name), "/admin/providers/{name}/key"))
        }
        _ => {
            let id = path.strip_prefix(b"/admin/keys/")?;
            let id = std::str::from_utf8(id).ok()?;
            let ok = !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            ok.then_some((Endpoint::Key(id), "/admin/keys/{id}"))
        }
    }
}

/// A JSON answer with `headers` besides the usual ones.
async fn send_json(
    conn: &mut ClientConn,
    status: u16,
    headers: &[(&str, &[u8])],
    body: &[u8],
    rid: &str,
) -> Outcome {
    let bytes =
        crate::server::respond::full(status, b"application/json", headers, body, rid, false);
    match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}

/// `body` as a JSON answer.
async fn reply(conn: &mut ClientConn, status: u16, body: &serde_json::Value, rid: &str) -> Outcome {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    send_json(conn, status, &[], &bytes, rid).await
}

/// How long a scrape waits for the other shards' counts.
const SCRAPE_WAIT: Duration = Duration::from_secs(1);

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
        generation: &'g Generation,
        conn: &mut ClientConn,
        req: Request<'_>,
        rid: &str,
        _trail: &mut Trail<'g>,
    ) -> Outcome {
        let openai = ClientDialect::OpenAi;
        let Some((which, _)) = endpoint(req.path()) else {
            let e = route_error(&req, false);
            return send_error(conn, openai, &e, rid, &[], false).await;
        };
        // Probes come from orchestrators that send no credentials; the
        // rest is for operators and needs the admin token.
        // The status page is markup and a script, no figures: its script
        // sends the token with every poll.
        let open = matches!(which, Endpoint::Health | Endpoint::Ready | Endpoint::Page);
        if !open && !authorized(&req, generation) {
            let e = GatewayError::Unauthorized;
            return send_error(conn, openai, &e, rid, &[], false).await;
        }
        let get = matches!(req.head.method, Method::Get | Method::Head);
        match (which, req.head.method) {
            (Endpoint::Health, _) if get => probe(conn, shard, Probe::Health, rid).await,
            (Endpoint::Ready, _) if get => probe(conn, shard, Probe::Ready, rid).await,
            (Endpoint::Metrics, _) if get => {
                let text = shard.scrape(SCRAPE_WAIT).await;
                let content_type = b"text/plain; version=0.0.4; charset=utf-8";
                send_ok(conn, content_type, text.as_bytes(), rid).await
            }
            (Endpoint::Page, _) if get => status::page(conn, rid).await,
            (Endpoint::Reload, Method::Post) => reload::reload(shard, conn, rid).await,
            (Endpoint::Targets, _) if get => status::targets(shard, conn, SCRAPE_WAIT, rid).await,
            (Endpoint::Usage, _) if get => usage::usage(generation, conn, &req, rid).await,
            (Endpoint::Status, _) if get => status::status(shard, conn, SCRAPE_WAIT, rid).await,
            (Endpoint::Keys, _) if get => keys::list(shard, generation, conn, rid).await,
            (Endpoint::Cluster, _) if get => cluster::cluster(shard, conn, rid).await,
            (Endpoint::Keys, Method::Post) => {
                keys::create(shard, generation, conn, &req, rid).await
            }
            (Endpoint::Key(id), Method::Delete) => {
                keys::revoke(shard, generation, conn, id, rid).await
            }
            (Endpoint::Cache, Method::Delete) => cache::purge(shard, conn, &req, rid).await,
            (Endpoint::Providers, _) if get => providers::list(generation, conn, rid).await,
            (Endpoint::ProviderKey(name), Method::Put) => {
                providers::set(shard, generation, conn, &req, name, rid).await
            }
            (Endpoint::ProviderKey(name), Method::Delete) => {
                providers::remove(shard, generation, conn, name, rid).await
            }
            _ => {
                let e = route_error(&req, true);
                send_error(conn, openai, &e, rid, &[], false).await
            }
        }
    }
}
