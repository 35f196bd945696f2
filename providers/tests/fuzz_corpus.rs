//! Replays the fuzz seed corpora of the provider translators
//! (`fuzz/corpus/<target>/`) through the same checks the cargo-fuzz targets
//! run, so `cargo test` on stable covers them, and every crash input added
//! to a corpus stays a regression test.
// Test-only helper code outside #[test] fns: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::PathBuf;

use shardgate_providers::testing::fuzz;

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
fn anthropic_stream_corpus() {
    replay("anthropic_stream", fuzz::anthropic_stream);
}

#[test]
fn gemini_stream_corpus() {
    replay("gemini_stream", fuzz::gemini_stream);
}

#[test]
fn bedrock_stream_corpus() {
    replay("bedrock_stream", fuzz::bedrock_stream);
}

#[test]
fn openai_to_anthropic_stream_corpus() {
    replay(
        "openai_to_anthropic_stream",
        fuzz::openai_to_anthropic_stream,
    );
}

#[test]
fn eventstream_corpus() {
    replay("eventstream", fuzz::eventstream);
}
