//! `shardgate-bench run` against the mock and against a test server with a
//! planted stall. Timings are asserted only within generous bounds (the CI
//! machine is noisy); counts are asserted exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Mock, BIN};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("run")
        .args(args)
        .arg("--json")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap() / 1000.0
}

#[test]
fn ttft_itl_and_token_counts_against_the_mock() {
    let mock = Mock::start(&[]);
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let url = format!("http://127.0.0.1:{}{path}", mock.port);
        let v = run(&[
            "--url",
            &url,
            "--model",
            "mock-ttft-50ms-tps-200-tokens-8",
            "--stream",
            "--connections",
            "4",
            "--shards",
            "1",
            "--duration",
            "1.5s",
            "--warmup",
            "0.3s",
        ]);
        let n = v["requests"].as_u64().unwrap();
        assert!(n > 0, "{v}");
        assert_eq!(v["errors_total"], 0, "{v}");
        // Exact: every request streamed 8 tokens and reported them.
        assert_eq!(v["output_tokens_total"].as_u64(), Some(8 * n), "{v}");
        assert_eq!(v["token_events_total"].as_u64(), Some(8 * n), "{v}");
        assert!(v["input_tokens_total"].as_u64().unwrap() >= n, "{v}");
        // Generous: TTFT 50ms, 5ms between tokens.
        let ttft = ms(&v["ttft_us"]["p50"]);
        assert!((45.0..150.0).contains(&ttft), "ttft p50 {ttft}ms: {v}");
        let itl = ms(&v["itl_us"]["p50"]);
        assert!((2.0..40.0).contains(&itl), "itl p50 {itl}ms: {v}");
        let tpot = ms(&v["tpot_us"]["p50"]);
        assert!((2.0..40.0).contains(&tpot), "tpot p50 {tpot}ms: {v}");
        let e2e = ms(&v["latency_us"]["p50"]);
        assert!(e2e >= ttft, "{v}");
        assert!(v["request_tokens_per_s"]["p50"].as_u64().unwrap() > 0);
        assert_eq!(v["mode"], "closed");
        assert!(v["machine"]["git_rev"].is_string());
    }
}

#[test]
fn open_loop_counts_at_the_rate() {
    let mock = Mock::start(&[]);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", mock.port);
    let v = run(&[
        "--url",
        &url,
        "--model",
        "mock-tokens-3",
        "--rate",
        "200",
        "--arrivals",
        "constant",
        "--connections",
        "8",
        "--shards",
        "1",
        "--duration",
        "1s",
        "--warmup",
        "0",
    ]);
    assert_eq!(v["mode"], "open");
    assert_eq!(v["latency_from"], "intended send time");
    let n = v["requests"].as_u64().unwrap();
    // 200 req/s for 1s; the last arrivals may still be in flight at the end.
    assert!((180..=201).contains(&n), "{v}");
    assert!(v["service_us"]["p50"].as_u64().unwrap() > 0);
}

/// A one-connection-at-a-time server answering `{}` that stalls once for
/// 500ms, 700ms after its first request: a GC pause, say.
fn stalling_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut first: Option<Instant> = None;
        let mut stalled = false;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            serve(&mut conn, &mut first, &mut stalled);
        }
    });
    port
}

// A test server thread, not a shard: blocking is what it is for.
#[allow(clippy::disallowed_methods)]
fn serve(conn: &mut TcpStream, first: &mut Option<Instant>, stalled: &mut bool) {
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        // One request: head, then content-length bytes.
        let (head_len, body_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0usize);
                break (n, len);
            }
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        let t0 = *first.get_or_insert_with(Instant::now);
        if !*stalled && t0.elapsed() >= Duration::from_millis(700) {
            *stalled = true;
            std::thread::sleep(Duration::from_millis(500));
        }
        if conn
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            )
            .is_err()
        {
            return;
        }
    }
}

#[test]
fn open_loop_shows_a_stall_that_closed_loop_hides() {
    let common = |port: u16| {
        vec![
            "--url".to_owned(),
            format!("http://127.0.0.1:{port}/v1/chat/completions"),
            "--connections".to_owned(),
            "1".to_owned(),
            "--shards".to_owned(),
            "1".to_owned(),
            "--duration".to_owned(),
            "2s".to_owned(),
            "--warmup".to_owned(),
            "0".to_owned(),
        ]
    };
    let port = stalling_server();
    let args = common(port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let closed = run(&args);
    // The stall happened (max) but is one request among thousands.
    assert!(ms(&closed["latency_us"]["max"]) >= 400.0, "{closed}");
    assert!(ms(&closed["latency_us"]["p99"]) < 100.0, "{closed}");

    let port = stalling_server();
    let mut args = common(port);
    args.extend(["--rate", "200", "--arrivals", "constant"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let open = run(&args);
    // Every request due during the 500ms stall waited: a quarter of them.
    assert!(ms(&open["latency_us"]["p99"]) >= 250.0, "{open}");
    assert!(ms(&open["latency_us"]["p90"]) >= 50.0, "{open}");
    // The server's own service time still shows only the one slow answer.
    assert!(ms(&open["service_us"]["p90"]) < 100.0, "{open}");
}

/// `--watch-pid` charges the watched processes' CPU to the requests: the
/// mock that serves them has some; two pids are summed, and one that has
/// exited gives no figure rather than a wrong one.
#[test]
fn watch_pid_measures_the_server_cpu() {
    let mock = Mock::start(&[]);
    let idle = Mock::start(&[]);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", mock.port);
    let load = |pids: &str| {
        run(&[
            "--url",
            &url,
            "--model",
            "mock-tokens-64",
            "--connections",
            "4",
            "--shards",
            "1",
            "--duration",
            "1s",
            "--warmup",
            "0.2s",
            "--watch-pid",
            pids,
        ])
    };
    let both = format!("{},{}", mock.child.id(), idle.child.id());
    let v = load(&both);
    let n = v["requests"].as_u64().unwrap();
    let cpu = v["watched_cpu_us"].as_u64().unwrap();
    assert!(n > 0 && cpu > 0, "{v}");
    let per = v["watched_cpu_us_per_request"].as_f64().unwrap();
    assert!((per * n as f64 - cpu as f64).abs() < 1.0, "{v}");

    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let v = load(&format!("{},{}", mock.child.id(), gone.id()));
    assert!(v["watched_cpu_us"].is_null(), "{v}");
}

/// `--ramp-up` opens connection i of N at i/N of it: with 8 connections
/// over 2s and a 1s window from the start, only the first 4 open.
#[test]
fn ramp_up_spreads_connection_starts() {
    let mock = Mock::start(&[]);
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", mock.port);
    let load = |ramp: &str| {
        run(&[
            "--url",
            &url,
            "--model",
            "mock-tokens-1",
            "--connections",
            "8",
            "--shards",
            "1",
            "--duration",
            "1s",
            "--warmup",
            "0",
            "--ramp-up",
            ramp,
        ])
    };
    let v = load("2s");
    assert_eq!(v["connections_opened"].as_u64(), Some(4), "{v}");
    let v = load("0s");
    assert_eq!(v["connections_opened"].as_u64(), Some(8), "{v}");
}
