//! The config is reloaded on SIGHUP without a restart: new requests use the
//! new providers, models and policies at once on every shard, a stream
//! under way finishes on the config it started with, and a reload that is
//! invalid or changes what only a restart can (listeners, shards, limits,
//! upstream settings, the store) is refused, leaving the running config
//! serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::*;
use std::time::{Duration, Instant};

const BEFORE: &str = "listen: 127.0.0.1:0\nshards: 2\nauth: none\n\
    providers:\n  local: { kind: mock, output_tokens: 5 }\n\
    models:\n  one: { targets: [ { provider: local, model: mock-1 } ] }\n  \
    slow: { targets: [ { provider: local, model: mock-tokens-30-tps-30 } ] }\n";

/// `slow` is gone, `two` is new, and the mock answers with 7 tokens.
const AFTER: &str = "listen: 127.0.0.1:0\nshards: 2\nauth: none\n\
    providers:\n  local: { kind: mock, output_tokens: 7 }\n\
    models:\n  one: { targets: [ { provider: local, model: mock-1 } ] }\n  \
    two: { targets: [ { provider: local, model: mock-1 } ] }\n";

fn chat(model: &str, stream: bool) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &format!(
            r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        ),
    )
}

fn hangup(gw: &Proc) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(gw.child.id() as i32, libc::SIGHUP) };
}

/// Waits until the gateway's log has `n` lines containing `needle`.
fn wait_log(gw: &Proc, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.stderr();
        if log.lines().filter(|l| l.contains(needle)).count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} ({n}) in:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Completion tokens of a whole answer for `model`, or the status.
fn completion_tokens(gw: &Proc, model: &str) -> Result<u64, u16> {
    let mut c = connect(gw.addr());
    c.send(&chat(model, false));
    let r = c.read_response();
    if r.status != 200 {
        return Err(r.status);
    }
    Ok(r.json()["usage"]["completion_tokens"].as_u64().unwrap())
}

#[test]
fn sighup_reloads_the_config_and_a_stream_under_way_finishes_on_its_own() {
    let gw = start_gateway_in(tempfile::tempdir().unwrap(), BEFORE, 1, &[]);
    let path = gw.dir.path().join("shardgate.yaml");
    assert_eq!(completion_tokens(&gw, "one"), Ok(5));

    // A second-long stream, started before the reload.
    let addr = gw.addr();
    let stream = std::thread::spawn(move || {
        let mut c = connect(addr);
        c.send(&chat("slow", true));
        c.read_response()
    });
    std::thread::sleep(Duration::from_millis(200));

    std::fs::write(&path, AFTER).unwrap();
    hangup(&gw);
    wait_log(&gw, "generation 2 on all 2 shards", 1);
    // Every shard serves the new generation: each request may land on
    // either.
    for _ in 0..8 {
        assert_eq!(completion_tokens(&gw, "two"), Ok(7));
        assert_eq!(completion_tokens(&gw, "one"), Ok(7));
        assert_eq!(completion_tokens(&gw, "slow"), Err(404));
    }

    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    let events = sse_data(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let tokens = events
        .iter()
        .filter(|e| e.contains("\"content\":\" "))
        .count();
    assert_eq!(tokens, 30, "the stream finished on the old generation");

    // A restart-only change is refused and the running config serves on.
    std::fs::write(&path, AFTER.replace("shards: 2", "shards: 1")).unwrap();
    hangup(&gw);
    let log = wait_log(&gw, "refused, generation 2 stays", 1);
    assert!(
        log.contains("shards / cpus can only change with a restart"),
        "{log}"
    );
    assert_eq!(completion_tokens(&gw, "two"), Ok(7));

    // So is a config that does not parse.
    std::fs::write(&path, "providers: [ oops").unwrap();
    hangup(&gw);
    wait_log(&gw, "refused, generation 2 stays", 2);
    assert_eq!(completion_tokens(&gw, "two"), Ok(7));

    // And a valid one after that is generation 3.
    std::fs::write(&path, BEFORE).unwrap();
    hangup(&gw);
    wait_log(&gw, "generation 3 on all 2 shards", 1);
    assert_eq!(completion_tokens(&gw, "slow"), Ok(30));
    assert_eq!(completion_tokens(&gw, "two"), Err(404));
}
