//! The mock's MCP endpoint: enough of both protocol eras for the gateway's
//! MCP path to be measured without a Python server in the way.
//!
//! `initialize` opens a (fixed) session; `server/discover` names both eras;
//! `tools/list` lists one read-only tool, `echo`; `tools/call` of `echo`
//! answers its `text` argument; notifications get 202. Answers are JSON,
//! never a stream. It checks nothing it need not: no session is enforced.

use serde_json::{json, Value};

const SESSION: &str = "mock-mcp-session";
const MODERN: &str = "2026-07-28";

/// Renders the answer to one POSTed message into `out`: its status, and
/// the session id to send back (for `initialize`).
pub fn answer(body: &[u8], out: &mut Vec<u8>) -> (u16, Option<&'static str>) {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        write(out, &error(&Value::Null, -32700, "parse error"));
        return (400, None);
    };
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        return (202, None);
    };
    let Some(id) = msg.get("id") else {
        return (202, None);
    };
    let modern = msg
        .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
        .is_some();
    let mut result = match method {
        "initialize" => {
            let v = msg
                .pointer("/params/protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("2025-11-25");
            let r = json!({
                "protocolVersion": v,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "shardgate-bench-mock", "version": env!("CARGO_PKG_VERSION")},
            });
            write(out, &json!({"jsonrpc": "2.0", "id": id, "result": r}));
            return (200, Some(SESSION));
        }
        "server/discover" => json!({
            "supportedVersions": ["2025-11-25", MODERN],
            "capabilities": {"tools": {"listChanged": false}},
            "cacheScope": "public",
            "ttlMs": 0,
        }),
        "ping" => json!({}),
        "tools/list" => json!({"tools": [{
            "name": "echo",
            "description": "Echoes its text.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "annotations": {"readOnlyHint": true},
        }]}),
        "tools/call" if msg.pointer("/params/name").and_then(Value::as_str) == Some("echo") => {
            let text = msg
                .pointer("/params/arguments/text")
                .and_then(Value::as_str)
                .unwrap_or("");
            json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        "tools/call" => {
            write(out, &error(id, -32602, "unknown tool"));
            return (200, None);
        }
        _ => {
            write(out, &error(id, -32601, "method not found"));
            return (404, None);
        }
    };
    if modern {
        result["resultType"] = "complete".into();
    }
    write(out, &json!({"jsonrpc": "2.0", "id": id, "result": result}));
    (200, None)
}

fn error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn write(out: &mut Vec<u8>, v: &Value) {
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(body: &str) -> (u16, Value) {
        let mut out = Vec::new();
        let (status, _) = answer(body.as_bytes(), &mut out);
        (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
    }

    #[test]
    fn echoes_and_lists_in_both_eras() {
        let (s, v) = ask(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
        );
        assert_eq!(
            (s, v["result"]["content"][0]["text"].as_str()),
            (200, Some("hi"))
        );
        let (_, v) = ask(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        assert_eq!(v["result"]["tools"][0]["name"], "echo");
        assert_eq!(v["result"]["resultType"], "complete");
        let (s, _) = ask(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(s, 202);
        let (s, v) = ask(r#"{"jsonrpc":"2.0","id":3,"method":"nope"}"#);
        assert_eq!((s, v["error"]["code"].as_i64()), (404, Some(-32601)));
    }
}
