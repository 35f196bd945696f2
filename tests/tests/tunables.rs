//! `shardgate serve` on an AMD CPU runs with glibc's `rep movsb` threshold
//! out of reach (glibc bug 30994: copies of 2 KiB and more 17 times slower):
//! it re-executes itself with `GLIBC_TUNABLES` set, keeping the operator's
//! own tunables and setting, and `SHARDGATE_NO_REEXEC=1` turns it off.
//! Read back from `/proc/PID/environ`, the running image's environment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::{config, connect, get, start_gateway_in};

/// `GLIBC_TUNABLES` and `SHARDGATE_NO_REEXEC` as the running image got
/// them. glibc's loader splits the tunables in place (each `:` becomes a
/// NUL), so the pieces after `GLIBC_TUNABLES=` that name a `glibc.`
/// tunable are joined again.
fn env_of(pid: u32) -> (Option<String>, Option<String>) {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let entries: Vec<String> = env
        .split(|&b| b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    let tunables = entries
        .iter()
        .position(|e| e.starts_with("GLIBC_TUNABLES="))
        .map(|at| {
            let mut t = entries[at]["GLIBC_TUNABLES=".len()..].to_owned();
            for piece in entries[at + 1..]
                .iter()
                .take_while(|e| e.starts_with("glibc."))
            {
                t.push(':');
                t.push_str(piece);
            }
            t
        });
    let marker = entries
        .iter()
        .find_map(|e| e.strip_prefix("SHARDGATE_NO_REEXEC="))
        .map(str::to_owned);
    (tunables, marker)
}

fn amd() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .is_some_and(|v| v.contains("AuthenticAMD") || v.contains("HygonGenuine"))
}

fn started_with(env: &[(&str, &str)]) -> (Option<String>, Option<String>) {
    let mut gw = start_gateway_in(tempfile::tempdir().unwrap(), &config(None, ""), 1, env);
    // It serves after the re-execution, on the same pid.
    let mut c = connect(gw.addr());
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);
    let pid = gw.child.id();
    let t = env_of(pid);
    // Re-executed by its path: `ps` still names it.
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(name.trim(), "shardgate");
    gw.terminate();
    t
}

#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
#[test]
fn on_amd_the_gateway_runs_without_rep_movsb_and_keeps_an_operators_tunables() {
    let threshold = "glibc.cpu.x86_rep_movsb_threshold=1099511627776".to_owned();
    let once = Some("1".to_owned());
    if amd() {
        assert_eq!(started_with(&[]), (Some(threshold.clone()), once.clone()));
        assert_eq!(
            started_with(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]),
            (Some(format!("glibc.malloc.arena_max=2:{threshold}")), once)
        );
    } else {
        assert_eq!(started_with(&[]), (None, None));
    }
    let own = "glibc.cpu.x86_rep_movsb_threshold=4096";
    assert_eq!(
        started_with(&[("GLIBC_TUNABLES", own)]),
        (Some(own.to_owned()), None)
    );
    assert_eq!(
        started_with(&[("SHARDGATE_NO_REEXEC", "1")]),
        (None, Some("1".to_owned()))
    );
}
