use super::*;
use crate::config::StoreFsync;
use shardgate_policy::{issue_key, KeyOwner, LimitKind, Period, Timestamp};

/// 2026-11-24T06:00:00Z.
const NOW: Timestamp = Timestamp(1_795_500_000_000);

fn cfg(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_owned(),
        fsync: StoreFsync::Always,
        ..StoreConfig::default()
    }
}

fn key(seed: u8) -> shardgate_policy::KeyRecord {
    let owner = KeyOwner {
        team: Some("ml".into()),
        tenant: Some("acme".into()),
        ..KeyOwner::default()
    };
    issue_key(&[seed; 32], owner, NOW, None).record
}

#[test]
fn one_gateway_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&cfg(dir.path())).unwrap();
    let e = Store::open(&cfg(dir.path())).unwrap_err();
    assert!(matches!(e, StoreError::InUse(_)), "{e}");
    a.usage.shutdown().unwrap();
    Store::open(&cfg(dir.path())).unwrap();
}

#[test]
fn opens_a_missing_nested_dir() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/data");
    let s = Store::open(&cfg(&nested)).unwrap();
    assert!(s.recovered.keys.is_empty());
    assert!(nested.join("usage.log").exists());
}

#[test]
fn keys_written_by_the_cli_are_seen_at_start_and_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let (k1, k2) = (key(1), key(2));
    {
        let mut ed = KeysEditor::open(data.clone()).unwrap();
        ed.append(&KeyLogRecord::KeyPut { key: k1.clone() })
            .unwrap();
    }
    let mut store = Store::open(&cfg(dir.path())).unwrap();
    assert_eq!(store.recovered.keys, vec![k1.clone()]);
    assert_eq!(store.keys.poll().unwrap(), None, "nothing changed yet");

    // The CLI runs while the gateway does.
    let mut ed = KeysEditor::open(data.clone()).unwrap();
    assert_eq!(ed.table().get(&k1.key_id), Some(&k1));
    ed.append(&KeyLogRecord::KeyPut { key: k2.clone() })
        .unwrap();
    ed.append(&KeyLogRecord::KeyRevoked {
        key_id: k1.key_id.clone(),
        at_ms: NOW.0 + 5,
    })
    .unwrap();
    drop(ed);

    let table = store.keys.poll().unwrap().expect("changed");
    let mut revoked = k1.clone();
    revoked.revoked = true;
    let mut expect = vec![revoked, k2.clone()];
    expect.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    assert_eq!(table, expect);
    assert_eq!(store.keys.poll().unwrap(), None);
    assert_eq!(read_keys(&data).unwrap().records(), expect);

    // The key store the gateway builds from it refuses the revoked key.
    let ks = shardgate_policy::KeyStore::from_records(table).unwrap();
    let secret1 = issue_key(&[1; 32], KeyOwner::default(), NOW, None).secret;
    let secret2 = issue_key(&[2; 32], KeyOwner::default(), NOW, None).secret;
    assert!(ks.authenticate(&secret1, NOW).is_err());
    assert!(ks.authenticate(&secret2, NOW).is_ok());
}

#[test]
fn torn_keys_log_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let k1 = key(1);
    KeysEditor::open(data.clone())
        .unwrap()
        .append(&KeyLogRecord::KeyPut { key: k1.clone() })
        .unwrap();
    // A CLI killed half way through its write.
    let mut half = Vec::new();
    frame::encode(&KeyLogRecord::KeyPut { key: key(2) }, &mut half).unwrap();
    half.truncate(half.len() / 2);
    let mut f = frame::open_append(&data.keys_log()).unwrap();
    std::io::Write::write_all(&mut f, &half).unwrap();

    // Readers leave it alone and see the intact prefix.
    assert_eq!(read_keys(&data).unwrap().records(), vec![k1.clone()]);
    let store = Store::open(&cfg(dir.path())).unwrap();
    assert_eq!(store.recovered.keys, vec![k1.clone()]);
    assert_eq!(store.recovered.keys_dropped_bytes, half.len() as u64);

    let k3 = key(3);
    KeysEditor::open(data.clone())
        .unwrap()
        .append(&KeyLogRecord::KeyPut { key: k3.clone() })
        .unwrap();
    assert_eq!(read_keys(&data).unwrap().len(), 2);
}

#[test]
fn counters_are_restored_only_for_current_windows() {
    let mut s = UsageState::default();
    let minute = Period::Minute.start(NOW).0;
    let day = Period::Day.start(NOW).0;
    let month = Period::Month.start(NOW).0;
    for r in [
        ("tokens_per_minute", minute - 60_000, 999), // older window first...
        ("tokens_per_minute", minute, 40),
        ("tokens_per_minute", minute - 60_000, 7), // ...and a late old one loses
        ("requests_per_minute", minute - 60_000, 3), // ended
        ("tokens_per_day", day, 1234),
        ("monthly_spend", month, 5_000_000),
        ("some_future_kind", minute, 1),
    ] {
        s.apply(&UsageRecord::Counter {
            bucket: "team:ml".into(),
            kind: r.0.into(),
            window_start_ms: r.1,
            used: r.2,
        });
    }
    let c = s.restore_counters("team:ml", NOW);
    assert_eq!(c.used(LimitKind::TokensPerMinute, NOW), 40);
    assert_eq!(c.used(LimitKind::RequestsPerMinute, NOW), 0);
    assert_eq!(c.used(LimitKind::TokensPerDay, NOW), 1234);
    assert_eq!(c.used(LimitKind::MonthlySpend, NOW), 5_000_000);
    let none = s.restore_counters("team:other", NOW);
    assert_eq!(none.used(LimitKind::TokensPerDay, NOW), 0);
    // Unknown kinds are kept for compaction.
    assert_eq!(s.snapshot().count(), 5);

    // The record a shard sends from its counters round-trips.
    let r = UsageRecord::counter("team:x", LimitKind::TokensPerDay, &c, NOW);
    let mut t = UsageState::default();
    t.apply(&r);
    assert_eq!(
        t.restore_counters("team:x", NOW)
            .used(LimitKind::TokensPerDay, NOW),
        1234
    );
}

#[test]
fn month_to_date_is_per_calendar_month() {
    let mut s = UsageState::default();
    let add = |spend| UsageTotals {
        requests: 1,
        input_tokens: 10,
        output_tokens: 20,
        spend_micros: spend,
    };
    let last_month = Timestamp(Period::Month.start(NOW).0 - 1);
    s.apply(&UsageRecord::usage("sg-aaaaaaaa", last_month, add(1_000)));
    s.apply(&UsageRecord::usage("sg-aaaaaaaa", NOW, add(250)));
    s.apply(&UsageRecord::usage("sg-aaaaaaaa", NOW, add(250)));
    let m = s.month_to_date("sg-aaaaaaaa", NOW);
    assert_eq!(
        m,
        UsageTotals {
            requests: 2,
            input_tokens: 20,
            output_tokens: 40,
            spend_micros: 500
        }
    );
    assert_eq!(m.tokens(), 60);
    assert_eq!(
        s.month_to_date("sg-aaaaaaaa", last_month).spend_micros,
        1_000
    );
    assert_eq!(s.month_to_date("sg-bbbbbbbb", NOW), UsageTotals::default());
}
