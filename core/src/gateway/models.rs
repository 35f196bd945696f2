//! `GET /v1/models`: the gateway's own model names (aliases), never the
//! providers' names behind them.

use crate::config::Config;
use shardgate_proto::json::write_json_string;

pub fn render(config: &Config) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 80 * config.models.len());
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for (i, alias) in config.models.keys().enumerate() {
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
