//! Fuzz target: OpenAI chunks to Responses events; whole, split and byte-by-byte feeding agree.
//! The checks live in `shardgate_providers::testing::fuzz` so that
//! `providers/tests/fuzz_corpus.rs` replays the seed corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardgate_providers::testing::fuzz::chat_to_responses_stream(data);
});
