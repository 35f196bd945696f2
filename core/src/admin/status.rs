//! The status page: `GET /` on an admin listener is a page a person can
//! read, refreshing live from `GET /admin/status` (every shard's counts,
//! merged as for a scrape). The page itself holds no figures and needs no
//! token; the script asks for the token (or reads it from the URL's
//! fragment, which never reaches a server) and sends it with each poll.

use crate::server::{respond, ClientConn, Outcome};
use crate::shard::Shard;
use std::time::Duration;

/// One file, no build step: markup, style and a small script.
const PAGE: &[u8] = include_bytes!("status.html");

/// The page may run its own inline script and style and talk to this
/// origin, nothing else.
const CSP: &[u8] = b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; frame-ancestors 'none'";

pub async fn page(conn: &mut ClientConn, rid: &str) -> Outcome {
    let headers: [(&str, &[u8]); 3] = [
        ("content-security-policy", CSP),
        ("cache-control", b"no-store"),
        ("x-content-type-options", b"nosniff"),
    ];
    let bytes = respond::full(200, b"text/html; charset=utf-8", &headers, PAGE, rid, false);
    match conn.write(&bytes).await {
        Ok(()) => Outcome::KEEP,
        Err(_) => Outcome::CLOSE,
    }
}

/// The page's figures as JSON.
pub async fn status(shard: &Shard, conn: &mut ClientConn, wait: Duration, rid: &str) -> Outcome {
    let body = serde_json::to_vec(&shard.status(wait).await).unwrap_or_default();
    let headers: [(&str, &[u8]); 1] = [("cache-control", b"no-store")];
    super::send_json(conn, 200, &headers, &body, rid).await
}

/// The targets' part: answers, failures, circuit and latency of each.
pub async fn targets(shard: &Shard, conn: &mut ClientConn, wait: Duration, rid: &str) -> Outcome {
    let status = shard.status(wait).await;
    let targets = serde_json::json!({ "targets": status["targets"] });
    let body = serde_json::to_vec(&targets).unwrap_or_default();
    let headers: [(&str, &[u8]); 1] = [("cache-control", b"no-store")];
    super::send_json(conn, 200, &headers, &body, rid).await
}
