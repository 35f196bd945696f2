//! Placement as an operator confines the gateway: under `taskset -c N` the
//! shards (and every other thread) stay on CPU N, `shards: auto` counts the
//! allowed set rather than the machine, and a `cpus:` list outside the set
//! is refused at start with the CPU named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use shardgate_tests::{bin, connect, get, spawn};
use std::process::Command;

/// The CPUs this test process may run on (`Cpus_allowed_list`).
fn allowed_cpus(pid: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned();
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

/// One thread of a process, from `/proc/PID/task/TID/stat`.
struct Task {
    tid: String,
    name: String,
    /// Fields 3 onward (after the name).
    fields: Vec<u64>,
}

impl Task {
    /// Field `n` of `stat`, numbered as proc(5) numbers them.
    fn field(&self, n: usize) -> u64 {
        self.fields[n - 3]
    }
}

/// The threads of `pid` (those that end while being read are left out).
fn tasks(pid: u32) -> Vec<Task> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = entry.unwrap().file_name().into_string().unwrap();
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let open = stat.find('(').unwrap();
        let close = stat.rfind(')').unwrap();
        // Field 3, the state, is a letter: read as 0.
        let fields = stat[close + 2..]
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        out.push(Task {
            name: stat[open + 1..close].to_owned(),
            tid,
            fields,
        });
    }
    out
}

/// Per thread of `pid`: its name, the CPUs it may run on, and the CPU it
/// last ran on (field 39, `processor`).
fn threads(pid: u32) -> Vec<(String, Vec<usize>, usize)> {
    tasks(pid)
        .into_iter()
        .map(|t| {
            let cpu = t.field(39) as usize;
            let allowed = allowed_cpus(&format!("{pid}/task/{}", t.tid));
            (t.name, allowed, cpu)
        })
        .collect()
}

/// Per thread of `pid`: its name and its scheduling policy (field 41,
/// `policy`: 0 normal, 3 batch).
fn policies(pid: u32) -> Vec<(String, u64)> {
    tasks(pid)
        .into_iter()
        .map(|t| {
            let policy = t.field(41);
            (t.name, policy)
        })
        .collect()
}

fn taskset_gateway(cpu: usize, config: &str) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shardgate.yaml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpu.to_string())
        .arg(bin("shardgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path());
    (cmd, dir)
}

const CONFIG: &str = "listen: 127.0.0.1:0\nauth: none\nproviders:\n  local: { kind: mock, output_tokens: 5 }\nmodels:\n  local: { targets: [ { provider: local, model: mock-1 } ] }\n";

#[test]
fn under_taskset_every_thread_stays_on_the_cpu_it_was_given() {
    let mine = allowed_cpus("self");
    let Some(&cpu) = mine.last() else { return };
    if mine.len() < 2 {
        // With one CPU there is nowhere to escape to: nothing to tell apart.
        eprintln!("skipped: needs two CPUs, this test may use {mine:?}");
        return;
    }
    let (mut cmd, dir) = taskset_gateway(cpu, CONFIG);
    cmd.env("RUST_LOG", "info");
    let gw = spawn(cmd, "shardgate listening on ", 1, dir);
    let mut c = connect(gw.addr());
    for _ in 0..20 {
        c.send(&get("/healthz"));
        assert_eq!(c.read_response().status, 200);
    }
    let pid = gw.child.id();
    let threads = threads(pid);
    for (name, allowed, last) in &threads {
        assert_eq!(allowed, &[cpu], "thread {name} may leave CPU {cpu}");
        assert_eq!(*last, cpu, "thread {name} ran on CPU {last}, not {cpu}");
    }
    // `shards: auto` is one shard: the allowed set, not the machine.
    let stderr = gw.stderr();
    assert!(
        stderr
            .lines()
            .any(|l| l.ends_with(&format!("placement: shard 0 on CPU {cpu}"))),
        "the start line names one shard and its CPU: {stderr}"
    );
}

#[test]
fn a_cpu_outside_the_allowed_set_is_refused_by_name() {
    let mine = allowed_cpus("self");
    let Some(&cpu) = mine.last() else { return };
    let outside = mine.iter().copied().find(|&c| c != cpu).unwrap_or(cpu + 1);
    let (mut cmd, _dir) = taskset_gateway(cpu, &format!("{CONFIG}cpus: {outside}\n"));
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cpus: CPU {outside} is not in this process's allowed set ({cpu})"
        )),
        "{err}"
    );
}

/// An admin listener is served by the ops executor, not by a shard: one
/// thread of its own, confined to the CPUs the process was given like
/// every other, whose scrape finds no request in flight on a serving shard
/// (the scrape itself runs on the ops executor).
#[test]
fn the_admin_listener_is_served_by_the_ops_executor_inside_the_allowed_set() {
    let mine = allowed_cpus("self");
    let Some(&cpu) = mine.last() else { return };
    let config = "listeners:\n  - { address: 127.0.0.1:0 }\n  - { address: 127.0.0.1:0, role: admin }\nadmin: { token: placement-admin-token-0123 }\nauth: none\nproviders:\n  local: { kind: mock, output_tokens: 5 }\nmodels:\n  local: { targets: [ { provider: local, model: mock-1 } ] }\n";
    let (cmd, dir) = taskset_gateway(cpu, config);
    let gw = spawn(cmd, "shardgate listening on ", 2, dir);
    let mut admin = connect(gw.addrs[1]);
    admin.send(&shardgate_tests::with_header(
        get("/metrics"),
        "authorization: Bearer placement-admin-token-0123\r\n",
    ));
    let metrics = admin.read_response();
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let in_flight: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("shardgate_requests_in_flight{"))
        .collect();
    assert_eq!(
        in_flight,
        ["shardgate_requests_in_flight{shard=\"0\"} 0"],
        "one serving shard, with nothing in flight during the scrape"
    );
    // Each executor is a thread and its blocking pool's, both with its name.
    let threads = threads(gw.child.id());
    let names = |prefix: &str| {
        let mut n: Vec<&str> = threads
            .iter()
            .filter(|t| t.0.starts_with(prefix))
            .map(|t| t.0.as_str())
            .collect();
        n.sort_unstable();
        n.dedup();
        n.len()
    };
    assert_eq!(names("ops-"), 1, "one ops executor: {threads:?}");
    assert_eq!(names("shard-"), 1, "one shard: {threads:?}");
    for (name, allowed, _) in threads.iter().filter(|t| t.0.starts_with("ops-")) {
        assert_eq!(allowed, &[cpu], "thread {name} may leave CPU {cpu}");
    }
}

/// The threads that only record (usage, audit) share the shards' CPUs but
/// never preempt a shard when they wake: a record waits for the shard to
/// sleep, a request in flight does not wait for a record. Shards keep the
/// normal policy.
#[test]
fn recording_threads_give_way_to_shards() {
    let mine = allowed_cpus("self");
    let Some(&cpu) = mine.last() else { return };
    let (cmd, dir) = taskset_gateway(cpu, &format!("{CONFIG}audit: {{ dir: audit }}\n"));
    let gw = spawn(cmd, "shardgate listening on ", 1, dir);
    let mut c = connect(gw.addr());
    c.send(&get("/healthz"));
    assert_eq!(c.read_response().status, 200);
    let threads = policies(gw.child.id());
    let policy_of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, p)| p)
            .unwrap_or_else(|| panic!("no thread {name} among {threads:?}"))
    };
    const BATCH: u64 = 3;
    assert_eq!(policy_of("sg-usage-writer"), BATCH, "{threads:?}");
    assert_eq!(policy_of("audit-writer"), BATCH, "{threads:?}");
    let shards: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("shard-"))
        .collect();
    assert!(!shards.is_empty(), "{threads:?}");
    assert!(shards.iter().all(|&&(_, p)| p == 0), "{threads:?}");
}
