//! `GET /v1/models`: the gateway's own model names (aliases), never the
//! providers' names behind them; with keys required, only the models the
//! caller's policies allow.

use crate::config::Config;
use shardgate_proto::json::write_json_string;

/// Every alias (pre-rendered once per shard, for open gateways).
pub fn render(config: &Config) -> Vec<u8> {
    render_list(config.models.keys().map(String::as_str))
}

pub fn render_list<'a>(aliases: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (i, alias) in aliases.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"id":"#);
        write_json_string(&mut out, alias);
        out.extend_from_slice(br#","object":"model","created":0,"owned_by":"shardgate"}"#);
    }
    out.extend_from_slice(b"]}");
    out
}
