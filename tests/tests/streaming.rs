//! Streams and failures through the gateway in front of the mock upstream
//! over real TCP: event-by-event relay, an upstream dying mid-stream, a
//! client leaving mid-request, and failover between a model's targets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::time::{Duration, Instant};

fn chat(model: &str, stream: bool) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
    )
}

#[test]
fn stream_relayed_with_model_rewritten_and_key_injected() {
    let mock = start_mock(Some("upstream-key"));
    let gw = start_gateway(&config(Some(mock.addr()), ""));
    let mut c = connect(gw.addr());
    // The client's own key must not reach the upstream (which would refuse it).
    let body =
        r#"{"model":"demo","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-client\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send(req.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("x-shardgate-target"), Some("up/mock-1"));
    let events = sse_data(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.iter().all(|c| c["model"] == "mock-1"),
        "upstream saw the upstream model name"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    assert!(
        chunks.last().unwrap()["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Same connection, non-streaming.
    c.send(&chat("demo", false));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
        text
    );
}

#[test]
fn upstream_dying_mid_stream_ends_with_an_error_event() {
    let mock = start_mock(Some("upstream-key"));
    let gw = start_gateway(&config(Some(mock.addr()), ""));
    let mut c = connect(gw.addr());
    c.send(&chat("cut", true));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    let events = sse_data(&r.body);
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"].as_str().unwrap().contains("up"),
        "{last}"
    );
    let content = events
        .iter()
        .filter(|e| e.contains("\"content\":\" "))
        .count();
    assert_eq!(
        content, 3,
        "the three chunks sent before the cut were relayed"
    );
    // The client's response was terminated properly: the connection serves on.
    c.send(&chat("local", false));
    assert_eq!(c.read_response().status, 200);
}

/// Established TCP connections whose remote port is `port`, from
/// /proc/net/tcp (IPv4, loopback tests only).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && f[3] == "01"
        })
        .count()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_leaving_cancels_the_upstream_request() {
    let mock = start_mock(Some("upstream-key"));
    let port = mock.addr().port();
    let gw = start_gateway(&config(Some(mock.addr()), ""));
    for stream in [false, true] {
        let mut c = connect(gw.addr());
        c.send(&chat("hang", stream));
        wait_until("the gateway to call the upstream", || {
            established_to(port) == 1
        });
        drop(c);
        wait_until("the upstream connection to close", || {
            established_to(port) == 0
        });
    }
}

#[test]
fn failover_to_the_next_target_and_final_errors_passed_on() {
    let mock = start_mock(Some("upstream-key"));
    let extra = "  failover: { targets: [ { provider: up, model: mock-503 }, { provider: local, model: mock-1 } ] }\n\
                 \x20 limited: { targets: [ { provider: up, model: mock-429 } ] }\n\
                 \x20 dead: { targets: [ { provider: gone, model: m } ] }\n\
                 \x20 dead-then-up: { targets: [ { provider: gone, model: m }, { provider: up, model: mock-1 } ] }\n";
    let cfg = config(Some(mock.addr()), extra).replace(
        "models:\n",
        "  gone: { kind: openai, base_url: \"http://127.0.0.1:1/v1\" }\nmodels:\n",
    );
    let gw = start_gateway(&cfg);
    let mut c = connect(gw.addr());
    for stream in [false, true] {
        c.send(&chat("failover", stream));
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-shardgate-target"), Some("local/mock-1"));
    }
    // The last target's error reaches the client with the upstream's status
    // and message.
    c.send(&chat("limited", false));
    let r = c.read_response();
    assert_eq!(r.status, 429);
    assert!(r.json()["error"]["message"].is_string());
    // An unreachable provider is a 502 in OpenAI's shape, or skipped when
    // another target follows.
    c.send(&chat("dead", false));
    let r = c.read_response();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    c.send(&chat("dead-then-up", true));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-shardgate-target"), Some("up/mock-1"));
}

/// Sixty-four connections streaming answer after answer at once, straight to
/// the mock upstream and through the gateway: every stream completes. A shard
/// whose ring loop kept entering the kernel while it flagged pending task
/// work (IORING_SQ_TASKRUN) stopped running its tasks under this load.
#[test]
fn sixty_four_connections_streaming_at_once_all_finish() {
    let mock = start_mock(Some("upstream-key"));
    let gw = start_gateway(&config(Some(mock.addr()), ""));
    for (addr, model) in [(mock.addr(), "mock-1"), (gw.addr(), "demo")] {
        let body = format!(
            r#"{{"model":"{model}","stream":true,"max_tokens":32,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer upstream-key\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let req = req.clone();
                std::thread::spawn(move || {
                    let mut c = connect(addr);
                    for _ in 0..100 {
                        c.send(req.as_bytes());
                        let r = c.read_response();
                        assert_eq!(r.status, 200, "{}", r.text());
                        let events = sse_data(&r.body);
                        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("every stream finishes");
        }
    }
}

/// A provider that streams one answer per connection: its head, with the
/// first event in the same write when `first_with_head`, then after
/// `pause` the rest. Returns its address.
fn paced_provider(first_with_head: bool, pause: Duration) -> std::net::SocketAddr {
    use std::io::Write;
    spawn_provider(move |mut s| {
        let mut buf = Vec::new();
        if read_upstream_request(&mut s, &mut buf).is_none() {
            return;
        }
        let chunk = |data: &str| {
            let event = format!("data: {data}\n\n");
            format!("{:x}\r\n{event}\r\n", event.len())
        };
        let delta = |text: &str| {
            chunk(&format!(
                r#"{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":null}}]}}"#
            ))
        };
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        let first = if first_with_head {
            format!("{head}{}", delta("first"))
        } else {
            head.to_owned()
        };
        s.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(pause);
        let mut rest = String::new();
        if !first_with_head {
            rest.push_str(&delta("first"));
        }
        rest.push_str(&delta("second"));
        rest.push_str(&chunk("[DONE]"));
        rest.push_str("0\r\n\r\n");
        let _ = s.write_all(rest.as_bytes());
    })
}

/// Asks for a stream on a fresh connection; returns the client's first
/// read (whatever the gateway had sent by then) and when it came.
fn first_read(gw: &Proc) -> (String, Duration) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let asked = Instant::now();
    s.write_all(&chat("demo", true)).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    (
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        asked.elapsed(),
    )
}

#[test]
fn events_the_upstream_sent_with_its_head_reach_the_client_with_the_head() {
    let up = paced_provider(true, Duration::from_millis(300));
    let gw = start_gateway(&config(Some(up), ""));
    let (first, _) = first_read(&gw);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // One write: the first token does not trail its head.
    assert!(first.contains(r#""content":"first""#), "{first}");
    assert!(!first.contains("second"), "{first}");
}

#[test]
fn a_head_without_events_reaches_the_client_before_the_first_event() {
    let pause = Duration::from_millis(1500);
    let up = paced_provider(false, pause);
    let gw = start_gateway(&config(Some(up), ""));
    let (first, took) = first_read(&gw);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(!first.contains("first"), "{first}");
    assert!(
        took < pause,
        "the head waited for the first event: {took:?}"
    );
}
