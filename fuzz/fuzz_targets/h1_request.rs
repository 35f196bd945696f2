//! Fuzz target: parse_request on arbitrary bytes; a parsed head's spans lie within the input.
//! The checks live in `shardgate_proto::testing::fuzz` so that
//! `proto/tests/fuzz_corpus.rs` replays the seed corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shardgate_proto::testing::fuzz::h1_request(data);
});
