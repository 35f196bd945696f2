//! Replays the fuzz seed corpora of the provider translators
//! (`fuzz/corpus/<target>/`) through the same checks the cargo-fuzz targets
//! run, so `cargo test` on stable covers them, and every crash input added
//! to a corpus stays a regression test.

use shardgate_providers::testing::fuzz;

use shardgate_proto::testing::replay_corpus as replay;

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
fn chat_to_responses_stream_corpus() {
    replay("chat_to_responses_stream", fuzz::chat_to_responses_stream);
}

#[test]
fn eventstream_corpus() {
    replay("eventstream", fuzz::eventstream);
}
