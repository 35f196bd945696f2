//! What sealing one audit line costs the writer thread: HMAC-SHA256 over a
//! request event of the usual size (about 600 bytes) chained to the
//! previous MAC, and the sealed line appended to the batch.
//!
//!   cargo run --release -p shardgate-core --example seal_bench
use shardgate_core::audit::chain::{Chain, GENESIS};
use std::time::Instant;

fn main() {
    let line = br#"{"v":1,"time":"2026-12-05T21:28:16.192Z","kind":"request","request_id":"mxaxcenw-0-0","trace_id":null,"endpoint":"/v1/chat/completions","actor":{"key_id":"k_0123456789abcdef","team":"bench","tenant":"bench","app":null,"environment":null},"model":"demo","provider":"up","upstream_model":"mock-1","status":200,"error":null,"decision":"allow","attempts":[{"target":"up/mock-1","outcome":"answered","ms":0.255,"first_byte_ms":0.027,"input_tokens":19,"output_tokens":16,"cached_tokens":null,"estimated":false}],"tokens":{"input":19,"output":16,"cached":0},"cost_micros":1485,"latency_ms":{"total":0.3,"first_byte":0.087,"upstream":0.255,"overhead":0.044}}"#;
    let mut chain = Chain::new(&[7u8; 32], GENESIS);
    let mut out = Vec::with_capacity(1 << 20);
    let n = 2_000_000u32;
    let t = Instant::now();
    for _ in 0..n {
        chain.seal(line, &mut out);
        if out.len() > (1 << 20) - 1024 {
            out.clear();
        }
    }
    let per = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "{} bytes: {per:.0} ns a line ({:.2} ns a byte)",
        line.len(),
        per / line.len() as f64
    );
}
