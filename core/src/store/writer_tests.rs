use super::*;
use crate::config::StoreConfig;
use crate::store::frame::{decode, encode};
use crate::store::usage::UsageTotals;
use crate::store::Store;
use std::path::Path;
use std::time::Duration;

/// 2026-11-24T06:00:00Z.
const NOW: u64 = 1_795_500_000_000;

fn cfg(dir: &Path, fsync: StoreFsync) -> StoreConfig {
    StoreConfig {
        dir: dir.to_owned(),
        fsync,
        ..StoreConfig::default()
    }
}

/// A deterministic mix of counters and usage deltas.
fn records(n: u64) -> Vec<UsageRecord> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                UsageRecord::Counter {
                    bucket: format!("team:{}", i % 4),
                    kind: "tokens_per_minute".into(),
                    window_start_ms: NOW + (i / 12) * 60_000,
                    used: i * 10,
                }
            } else {
                UsageRecord::Usage {
                    key_id: format!("sg-key{:05}", i % 7),
                    month_start_ms: 1_793_491_200_000,
                    requests: 1,
                    input_tokens: i,
                    output_tokens: 2 * i,
                    spend_micros: 17 * i,
                }
            }
        })
        .collect()
}

fn fold(records: &[UsageRecord]) -> UsageState {
    let mut s = UsageState::default();
    for r in records {
        s.apply(r);
    }
    s
}

#[test]
fn records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let all = records(50);
    let store = Store::open(&cfg(
        dir.path(),
        StoreFsync::Interval(Duration::from_millis(5)),
    ))
    .unwrap();
    assert_eq!(store.recovered.usage, UsageState::default());
    let tx = store.usage.sender();
    for r in &all {
        assert!(tx.send(r.clone()));
    }
    let stats = store.usage.shutdown().unwrap();
    assert_eq!(stats.records, 50);
    assert_eq!(stats.errors, 0);
    assert!(stats.fsyncs >= 1);
    assert!(!tx.send(all[0].clone()), "writer is gone");

    let store = Store::open(&cfg(dir.path(), StoreFsync::Always)).unwrap();
    assert_eq!(store.recovered.usage, fold(&all));
    assert_eq!(store.recovered.usage_dropped_bytes, 0);
}

#[test]
fn many_shards_send_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&cfg(dir.path(), StoreFsync::Never)).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let tx = store.usage.sender();
            std::thread::spawn(move || {
                for i in 0..500u64 {
                    tx.send(UsageRecord::usage(
                        &format!("sg-shard{t:03}"),
                        shardgate_policy::Timestamp(NOW + i),
                        UsageTotals {
                            requests: 1,
                            input_tokens: 3,
                            output_tokens: 4,
                            spend_micros: 5,
                        },
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    store.usage.sync().unwrap();
    let stats = store.usage.shutdown().unwrap();
    assert_eq!(stats.records, 2000);
    let store = Store::open(&cfg(dir.path(), StoreFsync::Never)).unwrap();
    for t in 0..4 {
        let u = store
            .recovered
            .usage
            .month_to_date(&format!("sg-shard{t:03}"), shardgate_policy::Timestamp(NOW));
        assert_eq!(
            u,
            UsageTotals {
                requests: 500,
                input_tokens: 1500,
                output_tokens: 2000,
                spend_micros: 2500
            }
        );
    }
}

#[test]
fn fsync_policies() {
    for (fsync, check) in [
        (
            StoreFsync::Always,
            (|s: &WriterStats| s.fsyncs >= s.batches) as fn(&WriterStats) -> bool,
        ),
        (StoreFsync::Never, |s: &WriterStats| s.fsyncs <= 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&cfg(dir.path(), fsync)).unwrap();
        let tx = store.usage.sender();
        for r in records(30) {
            tx.send(r);
            // Separate batches, most of the time.
            std::thread::yield_now();
        }
        store.usage.sync().unwrap();
        let stats = store.usage.shutdown().unwrap();
        assert!(check(&stats), "{fsync:?}: {stats:?}");
    }
}

#[test]
fn compaction_keeps_the_state_identical() {
    let dir = tempfile::tempdir().unwrap();
    let all = records(3000);
    let store = Store::open_with(&cfg(dir.path(), StoreFsync::Never), 16 * 1024).unwrap();
    let tx = store.usage.sender();
    for chunk in all.chunks(100) {
        for r in chunk {
            tx.send(r.clone());
        }
        store.usage.sync().unwrap();
    }
    let stats = store.usage.shutdown().unwrap();
    assert!(stats.compactions >= 2, "{stats:?}");
    assert_eq!(stats.errors, 0);
    let log_len = std::fs::metadata(dir.path().join("usage.log"))
        .unwrap()
        .len();
    let mut uncompacted = Vec::new();
    for r in &all {
        encode(r, &mut uncompacted).unwrap();
    }
    assert!(log_len < uncompacted.len() as u64 / 4, "{log_len}");
    assert!(!dir.path().join("usage.log.tmp").exists());

    let store = Store::open(&cfg(dir.path(), StoreFsync::Never)).unwrap();
    assert_eq!(store.recovered.usage, fold(&all));
    assert_eq!(store.recovered.usage_dropped_bytes, 0);
}

#[test]
fn snapshot_replays_to_the_same_state() {
    let state = fold(&records(500));
    let mut bytes = Vec::new();
    for r in state.snapshot() {
        encode(&r, &mut bytes).unwrap();
    }
    assert_eq!(fold(&decode::<UsageRecord>(&bytes).records), state);
}

/// A crash can leave the log cut anywhere. Write through the writer, then
/// cut the file at many offsets: recovery gives exactly the records whose
/// frames are whole, and the gateway appends cleanly after it.
#[test]
fn crash_at_any_offset_recovers_the_whole_records() {
    let src = tempfile::tempdir().unwrap();
    let all = records(40);
    let store = Store::open(&cfg(src.path(), StoreFsync::Never)).unwrap();
    let tx = store.usage.sender();
    for r in &all {
        tx.send(r.clone());
    }
    store.usage.shutdown().unwrap();
    let bytes = std::fs::read(src.path().join("usage.log")).unwrap();
    let mut ends = Vec::new();
    let mut enc = Vec::new();
    for r in &all {
        encode(r, &mut enc).unwrap();
        ends.push(enc.len());
    }
    assert_eq!(enc, bytes, "the writer writes exactly the frames");

    // Every frame boundary, one byte either side, and pseudo-random offsets.
    let mut cuts: Vec<usize> = ends.iter().flat_map(|&e| [e - 1, e, e + 1]).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        cuts.push((x % bytes.len() as u64) as usize);
    }
    cuts.push(0);
    cuts.retain(|&c| c <= bytes.len());
    for cut in cuts {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("usage.log"), &bytes[..cut]).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let valid = if whole == 0 { 0 } else { ends[whole - 1] };
        let store = Store::open(&cfg(dir.path(), StoreFsync::Always)).unwrap();
        assert_eq!(store.recovered.usage, fold(&all[..whole]), "cut at {cut}");
        assert_eq!(
            store.recovered.usage_dropped_bytes,
            (cut - valid) as u64,
            "cut at {cut}"
        );
        // Writing on after recovery: nothing is lost behind the old tear.
        store.usage.sender().send(all[whole % all.len()].clone());
        store.usage.shutdown().unwrap();
        let store = Store::open(&cfg(dir.path(), StoreFsync::Always)).unwrap();
        let mut expect = all[..whole].to_vec();
        expect.push(all[whole % all.len()].clone());
        assert_eq!(store.recovered.usage, fold(&expect), "cut at {cut}");
        assert_eq!(store.recovered.usage_dropped_bytes, 0);
    }
}

#[test]
fn leftover_compaction_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let all = records(10);
    let store = Store::open(&cfg(dir.path(), StoreFsync::Always)).unwrap();
    let tx = store.usage.sender();
    for r in &all {
        tx.send(r.clone());
    }
    store.usage.shutdown().unwrap();
    std::fs::write(dir.path().join("usage.log.tmp"), b"half a snapshot").unwrap();
    let store = Store::open(&cfg(dir.path(), StoreFsync::Always)).unwrap();
    assert_eq!(store.recovered.usage, fold(&all));
    assert!(!dir.path().join("usage.log.tmp").exists());
}

/// The child half of [`kill_9_loses_nothing_acknowledged`]: writes numbered
/// records through a real writer until killed, printing `acked N` after
/// each sync.
#[test]
#[ignore = "run as a child process by kill_9_loses_nothing_acknowledged"]
fn kill_9_child() {
    let Some(dir) = std::env::var_os("SG_KILL9_DIR") else {
        return;
    };
    let store = Store::open(&cfg(Path::new(&dir), StoreFsync::Never)).unwrap();
    let tx = store.usage.sender();
    for i in 1u64.. {
        tx.send(UsageRecord::Counter {
            bucket: "b".into(),
            kind: "tokens_per_day".into(),
            window_start_ms: NOW,
            used: i,
        });
        tx.send(UsageRecord::usage(
            "sg-kill9kil",
            shardgate_policy::Timestamp(NOW),
            UsageTotals {
                requests: 1,
                ..UsageTotals::default()
            },
        ));
        if i % 50 == 0 {
            store.usage.sync().unwrap();
            println!("acked {i}");
        }
    }
}

/// A real `kill -9` of a process writing through the writer: everything it
/// acknowledged is recovered, and what is recovered is a whole prefix of
/// what it sent (counter and usage agree).
#[test]
fn kill_9_loses_nothing_acknowledged() {
    use std::io::BufRead;
    let exe = std::env::current_exe().unwrap();
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "store::writer::tests::kill_9_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SG_KILL9_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                acked = n.trim().parse().unwrap();
                if acked >= 500 * (round + 1) {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(acked > 0, "the child never acknowledged");

        let store = Store::open(&cfg(dir.path(), StoreFsync::Always)).unwrap();
        let u = &store.recovered.usage;
        let requests = u
            .month_to_date("sg-kill9kil", shardgate_policy::Timestamp(NOW))
            .requests;
        let counter = u
            .counter("b", shardgate_policy::LimitKind::TokensPerDay)
            .unwrap()
            .used;
        assert!(requests >= acked, "{requests} < acked {acked}");
        // Record pairs are written in order: the usage count is the
        // counter's value, or one behind it if the kill fell between them.
        assert!(
            counter == requests || counter == requests + 1,
            "counter {counter}, requests {requests}"
        );
    }
}

#[test]
fn interval_fsync_happens_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let every = Duration::from_millis(2);
    let store = Store::open(&cfg(dir.path(), StoreFsync::Interval(every))).unwrap();
    let tx = store.usage.sender();
    // Bursts with pauses longer than the interval: however slow the
    // machine, each pause leaves the writer a due fsync, and the volume
    // (about 15 MiB) crosses the compaction threshold.
    let mut sent = 0u64;
    for _ in 0..40 {
        for _ in 0..150 {
            for r in records(20) {
                tx.send(r);
            }
            sent += 20;
        }
        #[allow(clippy::disallowed_methods)] // a plain test thread, not a shard
        std::thread::sleep(every + Duration::from_millis(1));
    }
    let stats = store.usage.shutdown().unwrap();
    assert_eq!(stats.records, sent);
    assert!(stats.fsyncs >= 5, "{stats:?}");
    assert!(stats.compactions >= 1, "{stats:?}");
    // Everything sent before shutdown is there, flood or not.
    let store = Store::open(&cfg(dir.path(), StoreFsync::Never)).unwrap();
    let mut expect = UsageState::default();
    for _ in 0..sent / 20 {
        for r in records(20) {
            expect.apply(&r);
        }
    }
    assert_eq!(store.recovered.usage, expect);
}
