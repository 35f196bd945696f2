//! HTTP/1.1 as a client sees it through the real gateway: keep-alive,
//! pipelining, body framings, Expect: 100-continue, limits, and refusal of
//! ambiguous framing (request smuggling).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;

const CHAT: &str = r#"{"model":"local","messages":[{"role":"user","content":"hi"}]}"#;

fn gateway() -> Proc {
    start_gateway(&config(
        None,
        "limits: { max_body_bytes: 4KiB, max_head_bytes: 2KiB, head_timeout: 500ms, body_timeout: 500ms }\n",
    ))
}

#[test]
fn keep_alive_and_pipelined_requests_answered_in_order() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    let mut burst = get("/healthz");
    burst.extend(post("/v1/chat/completions", CHAT));
    burst.extend(get("/v1/models"));
    c.send(&burst);
    let a = c.read_response();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "ok");
    let b = c.read_response();
    assert_eq!(b.status, 200);
    assert_eq!(b.json()["object"], "chat.completion");
    let m = c.read_response();
    assert_eq!(m.json()["data"][0]["id"], "local");
    // Still open for more.
    c.send(&get("/readyz"));
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn a_request_sent_while_the_previous_one_is_in_flight_is_answered_next() {
    let mock = start_mock(Some("upstream-key"));
    let gw = start_gateway(&config(
        Some(mock.addr()),
        "  slow: { targets: [ { provider: up, model: mock-ttft-300ms } ] }\n",
    ));
    let mut c = connect(gw.addr());
    c.send(&post(
        "/v1/chat/completions",
        &CHAT.replace(r#""local""#, r#""slow""#),
    ));
    // The first request now waits on its upstream; the gateway reads what
    // the client sends meanwhile and must keep it for later.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut second = post("/v1/chat/completions", CHAT);
    second.extend(get("/healthz"));
    c.send(&second);
    let a = c.read_response();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-shardgate-target"), Some("up/mock-ttft-300ms"));
    let b = c.read_response();
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(b.header("x-shardgate-target"), Some("local/mock-1"));
    assert_eq!(c.read_response().json()["status"], "ok");
}

#[test]
fn chunked_request_body() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    let (a, b) = CHAT.split_at(10);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\ntrailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    c.send(req.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["role"], "assistant");
}

#[test]
fn expect_100_continue() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        CHAT.len()
    );
    c.send(head.as_bytes());
    let interim = c.read_response_inner(true);
    assert_eq!(interim.status, 100);
    c.send(CHAT.as_bytes());
    assert_eq!(c.read_response().status, 200);

    // Too large a body is refused before it is sent.
    let mut c = connect(gw.addr());
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 999999\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "request_too_large");

    // The same on Anthropic's endpoint reads as Anthropic's error.
    let mut c = connect(gw.addr());
    c.send(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 999999\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 413);
    let err = r.json();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["error"]["type"], "request_too_large", "{err}");
}

fn assert_refused(gw: &Proc, raw: &[u8], status: u16) {
    let mut c = connect(gw.addr());
    c.send(raw);
    let r = c.read_response();
    assert_eq!(
        r.status,
        status,
        "for {:?}: {}",
        String::from_utf8_lossy(raw),
        r.text()
    );
    assert!(r.json()["error"]["message"].is_string());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.is_closed(),
        "connection must close after {:?}",
        String::from_utf8_lossy(raw)
    );
}

#[test]
fn ambiguous_framing_is_refused_and_closed() {
    let gw = gateway();
    for raw in [
        &b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: +5\r\n\r\nhello",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5,5\r\n\r\nhello",
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n  folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\nhost: x\n\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
    ] {
        assert_refused(&gw, raw, 400);
    }
    assert_refused(
        &gw,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        501,
    );
}

#[test]
fn limits_have_their_statuses() {
    let gw = gateway();
    // Header bytes over the limit: 431.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    assert_refused(&gw, big.as_bytes(), 431);
    // Body over the limit: 413.
    let body = format!(r#"{{"model":"local","pad":"{}"}}"#, "b".repeat(5000));
    let mut c = connect(gw.addr());
    c.send(&post("/v1/chat/completions", &body));
    let r = c.read_response();
    assert_eq!(r.status, 413);
    // A head that never finishes: 408, then close.
    let mut c = connect(gw.addr());
    c.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 408);
    assert!(c.is_closed());
    // A body that never finishes: 408.
    let mut c = connect(gw.addr());
    c.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"model\"",
    );
    assert_eq!(c.read_response().status, 408);
}

#[test]
fn errors_are_openai_json() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    c.send(&get("/v2/nothing"));
    let r = c.read_response();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    c.send(&get("/v1/chat/completions"));
    assert_eq!(c.read_response().status, 405);
    c.send(&post("/v1/chat/completions", "{not json"));
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    c.send(&post("/v1/chat/completions", r#"{"messages":[]}"#));
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "model");
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"nope","messages":[]}"#,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // After all those, the connection still serves.
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn check_command_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, config(None, "limits: { idle_timeout: forever }\n")).unwrap();
    let (code, err) = check_config(&path);
    assert_eq!(code, Some(2));
    assert!(err.contains("limits.idle_timeout"), "{err}");
}

/// RFC 9112 §3.2: a missing (HTTP/1.1), repeated or invalid Host is a 400,
/// and the connection closes.
#[test]
fn invalid_host_is_refused_and_closed() {
    let gw = gateway();
    for raw in [
        &b"GET /healthz HTTP/1.1\r\nhost: user@evil.example/x\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nhost: user@evil.example\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: evil.example/x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: evil example\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nhost: x\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\nhost: user@x\r\n\r\n",
    ] {
        assert_refused(&gw, raw, 400);
    }
    // HTTP/1.0 needs no Host.
    let mut c = connect(gw.addr());
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().json()["status"], "ok");
}

/// RFC 9112 §3.2.2: the absolute-form is served by the URI's path and
/// query; its authority must be the Host's.
#[test]
fn absolute_form_target_is_served_by_its_path() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    let authority = gw.addr().to_string();
    c.send(
        format!("GET http://{authority}/healthz HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
    c.send(
        format!(
            "POST http://{authority}/v1/chat/completions?x=1 HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\n\r\n{CHAT}",
            CHAT.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    let mut c = connect(gw.addr());
    c.send(b"GET http://x/v1/models HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().json()["data"][0]["id"], "local");
    assert_refused(
        &gw,
        b"GET http://elsewhere.example/healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        400,
    );
}

/// RFC 9110 §9.3.2: a HEAD response is the GET's head (its
/// `content-length` included) and no body. A body would be read as the
/// next response by a keep-alive client, so each HEAD is followed by a GET
/// on the same connection.
#[test]
fn head_responses_carry_no_body_and_keep_the_connection() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    for (path, status) in [
        ("/healthz", 200),
        ("/v1/models", 200),
        ("/v2/nothing", 404),
        ("/v1/chat/completions", 405),
    ] {
        c.send(format!("HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes());
        let head = c.read_head_response();
        assert_eq!(head.status, status, "HEAD {path}");
        let length: usize = head.header("content-length").unwrap().parse().unwrap();
        assert!(length > 0, "HEAD {path}");
        c.send(&get(path));
        let r = c.read_response();
        assert_eq!(r.status, status, "GET {path} after HEAD: {}", r.text());
        assert!(r.json().is_object(), "GET {path} after HEAD");
        if status == 200 {
            assert_eq!(r.body.len(), length, "HEAD {path} has the GET's length");
        }
        assert!(
            c.unread().is_empty(),
            "{:?}",
            String::from_utf8_lossy(c.unread())
        );
    }
    // Pipelined: the GET right behind the HEAD is answered as itself.
    let mut burst = b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
    burst.extend(get("/readyz"));
    c.send(&burst);
    assert_eq!(c.read_head_response().status, 200);
    assert_eq!(c.read_response().json()["status"], "ready");
    // An interim response is not the HEAD's head: the final one still comes.
    c.send(
        b"HEAD /healthz HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n",
    );
    assert_eq!(c.read_response_inner(true).status, 100);
    c.send(b"{}");
    assert_eq!(c.read_head_response().status, 200);
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().json()["status"], "ok");
}
