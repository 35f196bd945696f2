use super::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Rec {
    A { n: u64 },
    B { s: String },
}

fn sample() -> Vec<Rec> {
    vec![
        Rec::A { n: 1 },
        Rec::B { s: "hello".into() },
        Rec::A { n: u64::MAX },
        Rec::B {
            s: "last one, a little longer".into(),
        },
    ]
}

/// The encoded log and the end offset of each frame.
fn encoded(records: &[Rec]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut ends = Vec::new();
    for r in records {
        encode(r, &mut out).unwrap();
        ends.push(out.len());
    }
    (out, ends)
}

#[test]
fn round_trip() {
    let (bytes, _) = encoded(&sample());
    let r = decode::<Rec>(&bytes);
    assert_eq!(r.records, sample());
    assert_eq!(r.valid_len, bytes.len() as u64);
    assert_eq!(r.dropped_bytes, 0);
    assert_eq!(r.damage, None);
    assert!(decode::<Rec>(&[]).records.is_empty());
}

#[test]
fn truncated_at_every_offset_keeps_the_intact_prefix() {
    let records = sample();
    let (bytes, ends) = encoded(&records);
    for cut in 0..=bytes.len() {
        let r = decode::<Rec>(&bytes[..cut]);
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(r.records, records[..whole], "cut at {cut}");
        let valid = if whole == 0 { 0 } else { ends[whole - 1] };
        assert_eq!(r.valid_len, valid as u64, "cut at {cut}");
        assert_eq!(r.dropped_bytes, (cut - valid) as u64, "cut at {cut}");
        assert_eq!(r.damage.is_some(), cut != valid, "cut at {cut}");
    }
}

#[test]
fn flipped_byte_in_last_record_drops_only_it() {
    let records = sample();
    let (bytes, ends) = encoded(&records);
    let last_start = ends[ends.len() - 2];
    for at in last_start..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[at] ^= mask;
            let r = decode::<Rec>(&b);
            assert_eq!(r.records, records[..records.len() - 1], "flip at {at}");
            assert_eq!(r.valid_len, last_start as u64);
            assert_eq!(r.dropped_bytes, (bytes.len() - last_start) as u64);
            assert!(r.damage.is_some());
        }
    }
}

#[test]
fn corrupt_record_in_the_middle_stops_replay_there() {
    let records = sample();
    let (mut bytes, ends) = encoded(&records);
    // Payload byte of the second record.
    bytes[ends[0] + HEADER_LEN + 2] ^= 0x20;
    let r = decode::<Rec>(&bytes);
    assert_eq!(r.records, records[..1]);
    assert_eq!(r.valid_len, ends[0] as u64);
    assert_eq!(r.damage, Some(Damage::BadCrc));
    // A length claiming more than the limit.
    let (mut bytes, _) = encoded(&records);
    bytes[3] = 0x7f;
    let r = decode::<Rec>(&bytes);
    assert!(r.records.is_empty());
    assert_eq!(r.damage, Some(Damage::BadLength));
    // Zeros where a frame should be (a file extended but never written).
    let (mut bytes, _) = encoded(&records[..2]);
    bytes.extend_from_slice(&[0u8; 64]);
    let r = decode::<Rec>(&bytes);
    assert_eq!(r.records, records[..2]);
    assert_eq!(r.dropped_bytes, 64);
}

#[test]
fn unknown_record_kind_is_skipped_not_fatal() {
    let mut bytes = Vec::new();
    encode(&Rec::A { n: 7 }, &mut bytes).unwrap();
    encode(
        &serde_json::json!({"t": "from_the_future", "x": 1}),
        &mut bytes,
    )
    .unwrap();
    encode(&Rec::A { n: 8 }, &mut bytes).unwrap();
    let r = decode::<Rec>(&bytes);
    assert_eq!(r.records, vec![Rec::A { n: 7 }, Rec::A { n: 8 }]);
    assert_eq!(r.skipped, 1);
    assert_eq!(r.dropped_bytes, 0);
}

#[test]
fn replay_file_truncates_and_saves_the_dropped_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.log");
    // Missing file: empty log.
    let r = replay_file::<Rec>(&path, Repair::Truncate).unwrap();
    assert!(r.records.is_empty());

    let records = sample();
    let (bytes, ends) = encoded(&records);
    let cut = ends[2] + 5;
    std::fs::write(&path, &bytes[..cut]).unwrap();

    let r = replay_file::<Rec>(&path, Repair::ReadOnly).unwrap();
    assert_eq!(r.records, records[..3]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), cut as u64);

    let r = replay_file::<Rec>(&path, Repair::Truncate).unwrap();
    assert_eq!(r.records, records[..3]);
    assert_eq!(r.dropped_bytes, 5);
    assert_eq!(std::fs::read(&path).unwrap(), &bytes[..ends[2]]);
    let aside = std::fs::read(dropped_path(&path, ends[2] as u64)).unwrap();
    assert_eq!(aside, &bytes[ends[2]..cut]);

    // Appending after the repair continues the log cleanly.
    let mut f = open_append(&path).unwrap();
    let mut more = Vec::new();
    encode(&records[3], &mut more).unwrap();
    f.write_all(&more).unwrap();
    let r = replay_file::<Rec>(&path, Repair::Truncate).unwrap();
    assert_eq!(r.records, records);
    assert_eq!(r.dropped_bytes, 0);
}

#[test]
fn failed_encode_leaves_the_buffer_as_it_was() {
    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("a", &1)?;
            Err(serde::ser::Error::custom("no"))
        }
    }
    let mut out = Vec::new();
    encode(&Rec::A { n: 1 }, &mut out).unwrap();
    let before = out.clone();
    assert!(encode(&Fails, &mut out).is_err());
    assert_eq!(out, before);
    let big = Rec::B {
        s: "x".repeat(MAX_PAYLOAD as usize),
    };
    assert!(encode(&big, &mut out).is_err());
    assert_eq!(out, before);
}
