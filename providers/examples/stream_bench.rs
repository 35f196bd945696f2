//! Times the stream translators: N Anthropic text-delta events -> OpenAI
//! chunks, N OpenAI chunks -> Anthropic events, N OpenAI chunks ->
//! Responses events, and N Anthropic events -> Responses events (a
//! Responses client on an Anthropic upstream: both translators chained). Throughput: fed in
//! 4 KiB pieces, events/s and ns/event. Added latency: fed one event at a
//! time as a live stream arrives, the time each event spends in the
//! translator (p50/p99/p99.9/max from hdrhistogram). No pass/fail.
//!
//! `cargo run --release -p shardgate-providers --example stream_bench [N]`

// A benchmark measures time; the library it measures reads no clock.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use shardgate_providers::anthropic::{AnthropicToOpenAi, OpenAiToAnthropic};
use shardgate_providers::responses::{echo_fields, ChatToResponses, ResponseCtx};
use shardgate_providers::{ReplyCtx, StreamTranslator};

fn responses() -> StreamTranslator {
    StreamTranslator::ChatToResponses(Box::new(ChatToResponses::new(ResponseCtx {
        id: "resp_bench".into(),
        model: "bench-model".into(),
        created_at: 1_700_000_000,
        echo: echo_fields(&serde_json::Value::Null),
    })))
}

/// Anthropic events through the Anthropic translator, then the Responses
/// one, as the gateway chains them.
struct Chain {
    wire: StreamTranslator,
    client: StreamTranslator,
    mid: Vec<u8>,
}

impl Chain {
    fn new() -> Self {
        Chain {
            wire: StreamTranslator::Anthropic(AnthropicToOpenAi::new(ctx())),
            client: responses(),
            mid: Vec::new(),
        }
    }
    fn on_bytes(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.mid.clear();
        self.wire.on_bytes(input, &mut self.mid).unwrap();
        self.client.on_bytes(&self.mid, out).unwrap();
    }
}

fn chain_latency(input: &[u8]) {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut out = Vec::with_capacity(4096);
    for measured in [false, true] {
        let mut t = Chain::new();
        for event in input
            .split_inclusive(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .chunks(3)
        {
            let bytes: Vec<u8> = event.concat();
            out.clear();
            let start = Instant::now();
            t.on_bytes(&bytes, &mut out);
            let ns = start.elapsed().as_nanos() as u64;
            if measured {
                hist.record(ns.max(1)).unwrap();
            }
        }
    }
    println!(
        "anthropic->responses: per event added latency p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} events)",
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        hist.len()
    );
}

fn ctx() -> ReplyCtx {
    ReplyCtx {
        id: "chatcmpl-bench".into(),
        model: "bench-model".into(),
        created: 1_700_000_000,
        include_usage: true,
    }
}

fn anthropic_stream(n: usize) -> Vec<u8> {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"m\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for _ in 0..n {
        s.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" token\"}}\n\n");
    }
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":99}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn openai_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},\"finish_reason\":null}]}\n\n");
    }
    s.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn time(name: &str, n: usize, input: &[u8], make: impl Fn() -> StreamTranslator) {
    let rounds = 5;
    let mut best = f64::MAX;
    let mut out = Vec::with_capacity(input.len() * 2);
    for _ in 0..rounds {
        out.clear();
        let start = Instant::now();
        let mut t = make();
        for piece in input.chunks(4096) {
            t.on_bytes(piece, &mut out).unwrap();
        }
        let _ = t.finish(&mut out);
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{name}: {n} events, best of {rounds}: {:.0} events/s, {:.0} ns/event ({} bytes out)",
        n as f64 / best,
        best * 1e9 / n as f64,
        out.len()
    );
}

/// The translator's time per event when events arrive one by one.
fn latency(name: &str, input: &[u8], make: impl Fn() -> StreamTranslator) {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut out = Vec::with_capacity(4096);
    // Warm-up pass, then the measured one.
    for measured in [false, true] {
        let mut t = make();
        for event in input
            .split_inclusive(|&b| b == b'\n')
            .collect::<Vec<_>>()
            .chunks(3)
        {
            let bytes: Vec<u8> = event.concat();
            out.clear();
            let start = Instant::now();
            t.on_bytes(&bytes, &mut out).unwrap();
            let ns = start.elapsed().as_nanos() as u64;
            if measured {
                hist.record(ns.max(1)).unwrap();
            }
        }
        let _ = t.finish(&mut out);
    }
    println!(
        "{name}: per event added latency p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns ({} events)",
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        hist.len()
    );
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().unwrap());
    println!(
        "profile: {}, machine: {} cores (std::thread::available_parallelism), unpinned",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    let a = anthropic_stream(n);
    time("anthropic->openai", n, &a, || {
        StreamTranslator::Anthropic(AnthropicToOpenAi::new(ctx()))
    });
    let o = openai_stream(n);
    time("openai->anthropic", n, &o, || {
        StreamTranslator::OpenAiToAnthropic(OpenAiToAnthropic::new(ctx()))
    });
    // Live-stream shape: one event per read. Anthropic events are three
    // lines (event, data, blank); OpenAI's two, so read them in threes too
    // (1.5 events per feed) to keep a partial event in the buffer sometimes.
    latency("anthropic->openai", &a, || {
        StreamTranslator::Anthropic(AnthropicToOpenAi::new(ctx()))
    });
    latency("openai->anthropic", &o, || {
        StreamTranslator::OpenAiToAnthropic(OpenAiToAnthropic::new(ctx()))
    });
    time("openai->responses", n, &o, responses);
    latency("openai->responses", &o, responses);
    chain_latency(&a);
}
