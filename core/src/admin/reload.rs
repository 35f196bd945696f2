//! `POST /admin/reload`: what SIGHUP does, with an answer. The config file
//! is read again and checked; a valid one is current on every shard before
//! the answer goes out (requests and streams under way finish on theirs),
//! an invalid one is refused naming its field, and the old one serves on.

use crate::server::{ClientConn, Outcome};
use crate::shard::Shard;
use serde_json::json;

pub async fn reload(shard: &Shard, conn: &mut ClientConn, rid: &str) -> Outcome {
    let (status, body) = match shard.ask_reload("admin API").await {
        Ok(generation) => (200, json!({ "reloaded": true, "generation": generation })),
        Err(why) => (
            422,
            json!({ "error": {
                "message": format!("config not reloaded: {why}"),
                "type": "invalid_request_error",
                "param": null,
                "code": "config_refused",
            }}),
        ),
    };
    super::reply(conn, status, &body, rid).await
}
