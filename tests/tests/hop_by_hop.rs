//! Hop-by-hop fields (RFC 9110 §7.6.1): a field the client names in
//! `Connection` is meant for the gateway alone and is not forwarded
//! upstream; one the provider names in its `Connection` is not relayed to
//! the client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;

/// An Anthropic provider that sends every request head it receives (lower
/// case) down the channel. Its answers carry a `content-type` of its own,
/// named in its `Connection` when the model is `claude-nominates`.
fn recording_provider() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream.unwrap(), tx));
        }
    });
    (addr, rx)
}

fn serve(mut s: TcpStream, heads: mpsc::Sender<String>) {
    let mut buf = Vec::new();
    while let Some(req) = read_upstream_request(&mut s, &mut buf) {
        let body = String::from_utf8_lossy(&req.body).into_owned();
        let _ = heads.send(req.head.to_ascii_lowercase());
        let nominates = body.contains(r#""model":"claude-nominates""#);
        let answer = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}"#;
        let connection = if nominates {
            "connection: content-type\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\n{connection}content-type: application/json; x-upstream=1\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn gateway_for(upstream: SocketAddr) -> Proc {
    start_gateway(&format!(
        "listen: 127.0.0.1:0\nshards: 1\nauth: none\nproviders:\n  claude: {{ kind: anthropic, base_url: \"http://{upstream}/v1\", api_key: upstream-key }}\nmodels:\n  sonnet: {{ targets: [ {{ provider: claude, model: claude-x }} ] }}\n  nominates: {{ targets: [ {{ provider: claude, model: claude-nominates }} ] }}\n"
    ))
}

fn messages(model: &str, extra_headers: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\n{extra_headers}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn beta_lines(head: &str) -> Vec<&str> {
    head.lines()
        .filter(|l| l.starts_with("anthropic-beta:"))
        .collect()
}

#[test]
fn fields_named_in_connection_are_not_forwarded_upstream() {
    let (up, heads) = recording_provider();
    let gw = gateway_for(up);
    let mut c = connect(gw.addr());
    let cases = [
        ("anthropic-beta: tools-1\r\n", true),
        (
            "connection: keep-alive\r\nanthropic-beta: tools-1\r\n",
            true,
        ),
        (
            "connection: anthropic-beta\r\nanthropic-beta: tools-1\r\n",
            false,
        ),
        (
            "anthropic-beta: tools-1\r\nconnection: x-other, Anthropic-Beta\r\n",
            false,
        ),
        (
            "connection: x-other\r\nconnection: anthropic-beta\r\nanthropic-beta: tools-1\r\n",
            false,
        ),
        (
            "connection: anthropic-betas\r\nanthropic-beta: tools-1\r\n",
            true,
        ),
    ];
    for (headers, forwarded) in cases {
        c.send(&messages("sonnet", headers));
        let r = c.read_response();
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        let head = heads.recv().unwrap();
        let want: &[&str] = if forwarded {
            &["anthropic-beta: tools-1"]
        } else {
            &[]
        };
        assert_eq!(beta_lines(&head), want, "{headers:?}:\n{head}");
        assert!(!head.contains("connection: anthropic-beta"), "{head}");
    }
}

#[test]
fn fields_named_in_the_providers_connection_are_not_relayed() {
    let (up, _heads) = recording_provider();
    let gw = gateway_for(up);
    let mut c = connect(gw.addr());
    c.send(&messages("sonnet", ""));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; x-upstream=1")
    );
    c.send(&messages("nominates", ""));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["type"], "message");
}

/// W3C trace context reaches the provider as the client sent it; a
/// malformed `traceparent` (and then its `tracestate`) does not.
#[test]
fn trace_context_is_propagated_upstream() {
    let (up, heads) = recording_provider();
    let gw = gateway_for(up);
    let mut c = connect(gw.addr());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.send(&messages(
        "sonnet",
        &format!("traceparent: {tp}\r\ntracestate: vendor=abc\r\n"),
    ));
    assert_eq!(c.read_response().status, 200);
    let head = heads.recv().unwrap();
    assert!(head.contains(&format!("traceparent: {tp}\r\n")), "{head}");
    assert!(head.contains("tracestate: vendor=abc\r\n"), "{head}");
    c.send(&messages(
        "sonnet",
        "traceparent: 00-zz-nope-01\r\ntracestate: vendor=abc\r\n",
    ));
    assert_eq!(c.read_response().status, 200);
    let head = heads.recv().unwrap();
    assert!(
        !head.contains("traceparent") && !head.contains("tracestate"),
        "{head}"
    );
}
