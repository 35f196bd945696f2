//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) through the same
//! checks the cargo-fuzz targets run, so `cargo test` on stable covers them,
//! and every crash input added to a corpus stays a regression test.

use shardgate_proto::testing::fuzz;

use shardgate_proto::testing::replay_corpus as replay;

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

#[test]
fn mcp_envelope_corpus() {
    replay("mcp_envelope", fuzz::mcp_envelope);
}
