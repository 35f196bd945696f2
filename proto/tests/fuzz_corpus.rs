//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) through the same
//! checks the cargo-fuzz targets run, so `cargo test` on stable covers them,
//! and every crash input added to a corpus stays a regression test.
// Test-only helper code outside #[test] fns: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;

use shardgate_proto::testing::fuzz;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    for path in entries {
        let data = fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
}

#[test]
fn h1_request_corpus() {
    replay("h1_request", fuzz::h1_request);
}

#[test]
fn chunked_corpus() {
    replay("chunked", fuzz::chunked);
}

#[test]
fn sse_corpus() {
    replay("sse", fuzz::sse);
}

#[test]
fn json_corpus() {
    replay("json", fuzz::json);
}
