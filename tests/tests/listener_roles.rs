//! Each listener has a role and serves only its role's routes: an `admin`
//! listener answers probes and operators, never model calls; `api`
//! listeners (the default) serve the model APIs. A role the gateway does
//! not know is a config error that names it. Admin endpoints other than the
//! probes need the admin token, and an admin listener without one is a
//! config error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;

const CONFIG: &str = "shards: 2\nauth: none\nadmin: { token: s3cret-admin-token-0123 }\n\
    listeners:\n  - { address: 127.0.0.1:0 }\n  - { address: 127.0.0.1:0, role: admin }\n\
    providers:\n  local: { kind: mock, output_tokens: 3 }\n\
    models:\n  local: { targets: [ { provider: local, model: mock-1 } ] }\n";

const CHAT: &str = r#"{"model":"local","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn an_admin_listener_serves_probes_and_no_model_calls() {
    let gw = start_gateway_in(tempfile::tempdir().unwrap(), CONFIG, 2, &[]);
    let (api, admin) = (gw.addrs[0], gw.addrs[1]);

    let mut c = connect(admin);
    c.send(&get("/healthz"));
    let r = c.read_response();
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    c.send(&get("/readyz"));
    assert_eq!(c.read_response().status, 200);
    c.send(&post("/v1/chat/completions", CHAT));
    let r = c.read_response();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unknown_url");
    c.send(&get("/v1/models"));
    assert_eq!(c.read_response().status, 404);
    c.send(&post("/healthz", "{}"));
    assert_eq!(c.read_response().status, 405);

    let mut c = connect(api);
    c.send(&post("/v1/chat/completions", CHAT));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn admin_endpoints_but_the_probes_need_the_admin_token() {
    let gw = start_gateway_in(tempfile::tempdir().unwrap(), CONFIG, 2, &[]);
    let mut c = connect(gw.addrs[1]);
    for auth in ["", "authorization: Bearer wrong-token-0000000000\r\n"] {
        c.send(format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{auth}\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert!(!r.text().contains("s3cret"));
    }
    c.send(b"GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret-admin-token-0123\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn an_admin_listener_without_a_token_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.yaml");
    std::fs::write(
        &path,
        CONFIG.replace("admin: { token: s3cret-admin-token-0123 }\n", ""),
    )
    .unwrap();
    let (code, err) = check_config(&path);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("listeners[1].role") && err.contains("admin.token"),
        "{err}"
    );
}

#[test]
fn an_unknown_role_is_a_config_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.yaml");
    std::fs::write(&path, CONFIG.replace("role: admin", "role: metrics")).unwrap();
    let (code, err) = check_config(&path);
    assert_eq!(code, Some(2));
    assert!(err.contains("metrics") && err.contains("admin"), "{err}");
}

#[test]
fn an_mcp_listener_serves_mcp_and_probes_only() {
    let config = CONFIG.replace("role: admin }", "role: mcp }");
    let gw = start_gateway_in(tempfile::tempdir().unwrap(), &config, 2, &[]);
    let (api, mcp) = (gw.addrs[0], gw.addrs[1]);
    let discover = r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let modern = |body: &str| {
        with_header(
            post("/mcp", body),
            "mcp-protocol-version: 2026-07-28\r\nmcp-method: server/discover\r\n",
        )
    };

    let mut c = connect(mcp);
    c.send(&modern(discover));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&"2026-07-28".into()));
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);
    // No model calls here, answered in JSON-RPC's shape.
    c.send(&post("/v1/chat/completions", CHAT));
    let r = c.read_response();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["jsonrpc"], "2.0");

    // The api listener serves both.
    let mut c = connect(api);
    c.send(&post("/v1/chat/completions", CHAT));
    assert_eq!(c.read_response().status, 200);
    c.send(&modern(discover));
    assert_eq!(c.read_response().status, 200);
}
