//! The gateway out of file descriptors: a client past the limit reads a
//! clear 503 at once (not a hang in the accept backlog), the clients
//! already connected keep being served, and new clients are served again
//! as soon as descriptors free up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::{bin, connect, get, spawn};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: u64 = 64;

#[test]
fn past_the_descriptor_limit_clients_get_a_503_and_service_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.yaml");
    std::fs::write(
        &path,
        "listen: 127.0.0.1:0\nshards: 1\nauth: none\nproviders:\n  local: { kind: mock, output_tokens: 5 }\nmodels:\n  local: { targets: [ { provider: local, model: mock-1 } ] }\n",
    )
    .unwrap();
    let mut cmd = Command::new(bin("shardgate"));
    cmd.args(["serve", "--no-pin", "--config"])
        .arg(&path)
        .current_dir(dir.path());
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let gw = spawn(cmd, "shardgate listening on ", 1, dir);

    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..LIMIT + 16 {
        let mut c = connect(gw.addr());
        c.send(&get("/healthz"));
        let r = c.read_response();
        match r.status {
            200 => held.push(c),
            503 => {
                refused = Some(r);
                break;
            }
            s => panic!("status {s}: {}", r.text()),
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "{} connections under a limit of {LIMIT} descriptors and no 503",
            held.len()
        )
    });
    assert_eq!(refused.header("connection"), Some("close"));
    let err = refused.json();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of file descriptors"),
        "{err}"
    );
    assert!(
        gw.stderr().contains("open files limit is 64"),
        "the start warns: {}",
        gw.stderr()
    );

    // Those already connected are still served.
    for c in held.iter_mut().take(3) {
        c.send(&get("/healthz"));
        assert_eq!(c.read_response().status, 200);
    }

    drop(held);
    let start = Instant::now();
    loop {
        let mut c = connect(gw.addr());
        c.send(&get("/healthz"));
        let status = c.read_response().status;
        if status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still {status} 10 s after the connections closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
