//! The upstream keep-alive pool as a provider sees it: connections are
//! reused, and one the provider closed or wrote to while it sat idle is never
//! used again (its stale bytes must not become the next client's answer).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the fake provider does with a connection once it has answered.
#[derive(Clone, Copy)]
enum AfterAnswer {
    Wait,
    /// Writes a complete, unasked-for response 100 ms later.
    SendStale,
    /// Closes the connection 100 ms later.
    Close,
}

/// A provider speaking just enough HTTP/1.1: every answer names the
/// connection it came on. Returns its address and the count of connections.
fn provider(after: AfterAnswer) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let id = count.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || serve(stream.unwrap(), id, after));
        }
    });
    (addr, conns)
}

fn serve(mut s: TcpStream, conn: usize, after: AfterAnswer) {
    let mut buf = Vec::new();
    let mut answered = 0;
    while read_upstream_request(&mut s, &mut buf).is_some() {
        answered += 1;
        let body = format!(
            r#"{{"id":"c{conn}-{answered}","object":"chat.completion","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"conn {conn} answer {answered}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}}}"#
        );
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        match after {
            AfterAnswer::Wait => {}
            AfterAnswer::SendStale => {
                let stale = r#"{"error":{"message":"stale","type":"x"}}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 408 Request Timeout\r\ncontent-length: {}\r\n\r\n{stale}",
                    stale.len()
                );
            }
            AfterAnswer::Close => return,
        }
    }
}

fn gateway_for(upstream: SocketAddr) -> Proc {
    // One shard: both requests meet the same pool.
    let cfg = config(Some(upstream), "").replace("shards: 2", "shards: 1");
    start_gateway(&cfg)
}

const CHAT: &str = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;

fn ask(gw: &Proc) -> String {
    let mut c = connect(gw.addr());
    c.send(&post("/v1/chat/completions", CHAT));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Two requests 300 ms apart to a provider that does `after` once it has
/// answered: the second answer, and how many connections the provider saw.
fn second_answer(after: AfterAnswer) -> (String, usize) {
    let (up, conns) = provider(after);
    let gw = gateway_for(up);
    assert_eq!(ask(&gw), "conn 1 answer 1");
    std::thread::sleep(Duration::from_millis(300));
    let second = ask(&gw);
    (second, conns.load(Ordering::SeqCst))
}

#[test]
fn idle_connection_is_reused() {
    assert_eq!(
        second_answer(AfterAnswer::Wait),
        ("conn 1 answer 2".into(), 1)
    );
}

#[test]
fn connection_that_sent_unasked_bytes_is_not_reused() {
    // Reusing it would hand this client the stale 408.
    assert_eq!(
        second_answer(AfterAnswer::SendStale),
        ("conn 2 answer 1".into(), 2)
    );
}

#[test]
fn connection_the_provider_closed_is_not_reused() {
    assert_eq!(
        second_answer(AfterAnswer::Close),
        ("conn 2 answer 1".into(), 2)
    );
}

/// A provider whose answers end at its FIN (no length, `connection: close`):
/// the last bytes and the FIN often arrive together, and the gateway must
/// see the end of the body without waiting for anything more.
#[test]
fn body_ended_by_the_providers_close_is_seen_at_once() {
    let addr = spawn_provider(|mut s| {
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body = r#"{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"closed"},"finish_reason":"stop"}]}"#;
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{body}"
        );
        let _ = s.shutdown(std::net::Shutdown::Write);
    });
    let gw = gateway_for(addr);
    // Several clients at once: the FIN's readiness event then often lands
    // among others (a lost POLLRDHUP hung one request in a few runs).
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = connect(gw.addr());
                for _ in 0..50 {
                    c.send(&post("/v1/chat/completions", CHAT));
                    let r = c.read_response();
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert_eq!(r.json()["choices"][0]["message"]["content"], "closed");
                }
            });
        }
    });
}
