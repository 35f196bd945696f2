//! The built-in mock provider holds no more of an answer than a relayed
//! stream would: clients that never read a huge streamed answer cost the
//! gateway a bounded write batch each, not the answer; a whole answer over
//! `upstream.max_response_bytes` is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Tokens per answer: about 70 MiB of stream events, 3.6 MB of text.
const TOKENS: usize = 500_000;

fn gateway() -> Proc {
    start_gateway(&format!(
        "listen: 127.0.0.1:0\nshards: 1\nauth: none\n\
         upstream: {{ max_response_bytes: 1MiB }}\n\
         providers:\n  big: {{ kind: mock, output_tokens: {TOKENS} }}\n\
         models:\n  big: {{ targets: [ {{ provider: big, model: mock-1 }} ] }}\n"
    ))
}

/// The gateway's resident memory, from /proc.
fn rss_kib(gw: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Bytes received on `s` and not yet read.
fn unread(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through a valid pointer.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n as usize
}

#[test]
fn clients_that_do_not_read_a_huge_mock_stream_cost_little_memory() {
    let gw = gateway();
    // Warm up (allocator arenas, the shard's buffers) before the baseline.
    let mut c = connect(gw.addr());
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"big","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    ));
    assert_eq!(c.read_response().status, 200);
    let before = rss_kib(&gw);

    let body = r#"{"model":"big","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = connect(gw.addr());
            c.send(&post("/v1/chat/completions", body));
            c.stream
        })
        .collect();
    // Synchronise on what the gateway wrote: once a client has this much
    // waiting, the gateway is writing its answer (the old mock wrote only
    // after building all of it).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut peak = before;
    while clients.iter().any(|c| unread(c) < 32 * 1024) {
        assert!(Instant::now() < deadline, "the answers never started");
        peak = peak.max(rss_kib(&gw));
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..25 {
        peak = peak.max(rss_kib(&gw));
        std::thread::sleep(Duration::from_millis(20));
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 32,
        "4 clients that do not read grew the gateway by {grown_mib} MiB"
    );
    drop(clients);
}

#[test]
fn a_whole_mock_answer_over_the_response_limit_is_refused() {
    let gw = gateway();
    let mut c = connect(gw.addr());
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"big","messages":[{"role":"user","content":"hi"}]}"#,
    ));
    let r = c.read_response();
    let text = r.text();
    let head: String = text.chars().take(300).collect();
    assert_eq!(r.status, 502, "{head}");
    assert!(text.contains("larger than"), "{head}");
    // Under the limit it is answered whole.
    c.send(&post(
        "/v1/chat/completions",
        r#"{"model":"big","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#,
    ));
    assert_eq!(c.read_response().status, 200);
}
