//! Fuzz target: the MCP JSON-RPC envelope and the modern era's header
//! checks. The checks live in `shardgate_proto::testing::fuzz` so that
//! `proto/tests/fuzz_corpus.rs` replays the seed corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardgate_proto::testing::fuzz::mcp_envelope(data);
});
