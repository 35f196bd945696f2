//! Every request ends in one record, whichever way it ended: answered,
//! failed over, refused, or broken before it was routed. The access log
//! (`RUST_LOG=access=debug`) is written from that record alone, so each
//! line shows what the client got and how the gateway got there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::time::{Duration, Instant};

/// The access line of request `rid`, once it is written.
fn access_line(gw: &Proc, rid: &str) -> String {
    access_line_with(gw, &format!("rid={rid} "))
}

/// The first access line containing `needle`, once it is written (by
/// status for a request whose id the client never saw: its head could not
/// be read).
fn access_line_with(gw: &Proc, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.stderr();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains(" access]") && l.contains(needle))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no access line with {needle}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chat(model: &str) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#),
    )
}

#[test]
fn every_request_ends_in_one_record() {
    let gw = start_gateway(&config(
        None,
        "  failover: { targets: [ { provider: local, model: mock-503 }, { provider: local, model: mock-1 } ] }\n\
         limits: { max_body_bytes: 2048 }\n",
    ));
    let mut c = connect(gw.addr());

    c.send(&chat("local"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    for part in [
        "endpoint=/v1/chat/completions",
        "status=200",
        "alias=\"local\"",
        "attempt0=local/mock-1:answered:",
        ",out=5",
        "ttfb_us=",
        "duration_us=",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(!line.contains("error="), "{line}");
    assert!(!line.contains("attempt1="), "{line}");

    c.send(&chat("failover"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(
        line.contains("attempt0=local/mock-503:upstream_status:")
            && line.contains("attempt1=local/mock-1:answered:"),
        "{line}"
    );

    c.send(&chat("no-such-model"));
    let r = c.read_response();
    assert_eq!(r.status, 404);
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(
        line.contains("status=404 error=model_not_found")
            && line.contains("alias=\"no-such-model\""),
        "{line}"
    );

    c.send(&get("/nowhere"));
    let r = c.read_response();
    assert_eq!(r.status, 404);
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(
        line.contains("endpoint=other status=404 error=unknown_route"),
        "{line}"
    );

    // A body over the limit: refused before it is routed, still recorded.
    let mut c = connect(gw.addr());
    c.send(&post("/v1/messages", &"x".repeat(4096)));
    let r = c.read_response();
    assert_eq!(r.status, 413);
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(
        line.contains("endpoint=/v1/messages status=413 error=body_too_large"),
        "{line}"
    );

    // A head that cannot be parsed: no request id reached the client.
    let mut c = connect(gw.addr());
    c.send(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 400);
    access_line_with(&gw, "status=400 error=bad_head");
}

#[test]
fn a_refusal_is_recorded_with_who_was_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let created = keys_json(
        &data,
        &["create", "--team", "ml", "--tenant", "acme", "--json"],
    );
    let secret = created["secret"].as_str().unwrap();
    let key_id = created["key_id"].as_str().unwrap();
    let config = format!(
        "listen: 127.0.0.1:0\nshards: 1\nstore: {{ dir: {} }}\n\
         providers:\n  local: {{ kind: mock, output_tokens: 5 }}\n\
         models:\n  local: {{ targets: [ {{ provider: local, model: mock-1 }} ] }}\n  \
         other: {{ targets: [ {{ provider: local, model: mock-1 }} ] }}\n\
         policies:\n  - ai_runtime_policy: {{ actor_scope: {{ team: ml }}, model_access: {{ allowed_models: [local] }} }}\n",
        data.display()
    );
    let gw = start_gateway_in(tmp, &config, 1, &[]);
    let mut c = connect(gw.addr());
    let auth = format!("authorization: Bearer {secret}\r\n");
    c.send(&with_header(chat("other"), &auth));
    let r = c.read_response();
    assert_eq!(r.status, 403, "{}", r.text());
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(
        line.contains("status=403 error=")
            && line.contains(&format!("key={key_id} team=\"ml\" tenant=\"acme\""))
            && line.contains("alias=\"other\""),
        "{line}"
    );
    assert!(!line.contains(secret), "{line}");

    // Admitted: the record names the caller, and its usage is the key's.
    let mut c = connect(gw.addr());
    c.send(&with_header(chat("local"), &auth));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(
        line.contains(&format!("status=200 key={key_id} team=\"ml\"")),
        "{line}"
    );

    let mut c = connect(gw.addr());
    c.send(&chat("local"));
    let r = c.read_response();
    assert_eq!(r.status, 401);
    let line = access_line(&gw, r.header("x-request-id").unwrap());
    assert!(line.contains("status=401 error=unauthorized"), "{line}");
    assert!(!line.contains("key="), "{line}");
}
