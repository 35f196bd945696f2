//! Cost of guardrails on the request path, on one core:
//! - the built-in set (every PII detector, ten regex rules, a 50-word deny
//!   list) on a 4 KiB prompt, as text and as a chat request body;
//! - output checks on a stream, per event, against the same stream with
//!   none (the relay's loop over the same chunks).
//!
//! `cargo run --release -p shardgate-core --example guardrail_bench`

use shardgate_core::gateway::ClientDialect;
use shardgate_core::guardrails::stream::StreamGuard;
use shardgate_core::guardrails::{check_body, Verdict};
use shardgate_policy::guardrails::{GuardrailSpec, Guardrails, Stage};
use std::hint::black_box;
use std::time::Instant;

const SENTENCE: &str = "The customer wrote in about their renewal and asked whether the plan \
could be moved to the annual tier before the end of the quarter, keeping the same seats. ";

fn prompt() -> String {
    let mut p = String::new();
    // A few items a check finds, then plain text to 4 KiB.
    p.push_str("Reach me at jane.doe@example.com or 415-555-0132. ");
    while p.len() < 4096 {
        p.push_str(SENTENCE);
    }
    p.truncate(4096);
    p
}

fn rails(action: &str) -> Guardrails {
    let rules: Vec<String> = (0..10)
        .map(|i| format!(r"(?i)project\s+codename{i}\b"))
        .collect();
    let words: Vec<String> = (0..50).map(|i| format!("forbiddenword{i}")).collect();
    let yaml = format!(
        "- {{name: pii, pii: all, action: {action}}}\n- {{name: rules, regex: {rules:?}, action: {action}}}\n- {{name: words, deny_words: {words:?}, action: {action}}}"
    );
    let specs: Vec<GuardrailSpec> = serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| fail(&e));
    Guardrails::compile(&specs).unwrap_or_else(|e| fail(&e))
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("guardrail_bench: {e}");
    std::process::exit(1)
}

fn per_iter(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let g = rails("log");
    let text = prompt();
    let mut found = Vec::new();
    for (i, c) in g.checks().iter().enumerate() {
        let ns = per_iter(20_000, || {
            found.clear();
            g.scan(i, black_box(&text), &mut found);
        });
        println!(
            "check {:<6} on 4 KiB: {:>8.2} us ({} found)",
            c.name,
            ns / 1000.0,
            found.len()
        );
    }
    let all = per_iter(20_000, || {
        found.clear();
        for i in 0..g.checks().len() {
            g.scan(i, black_box(&text), &mut found);
        }
    });
    println!("built-in set on 4 KiB prompt: {:.2} us", all / 1000.0);

    let body = serde_json::to_vec(&serde_json::json!({
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
    }))
    .unwrap_or_default();
    let checks: Vec<usize> = (0..g.checks().len()).collect();
    let mut records = Vec::new();
    let ns = per_iter(20_000, || {
        records.clear();
        let v = check_body(&g, &checks, Stage::Input, black_box(&body), &mut records);
        black_box(matches!(v, Verdict::Pass));
    });
    println!(
        "built-in set on a 4 KiB chat request (JSON walk included): {:.2} us",
        ns / 1000.0
    );

    // A stream: 2,000 events of a few characters each.
    let events: Vec<Vec<u8>> = (0..2000)
        .map(|i| {
            let e = format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{}\"}}}}]}}\n\n",
                i % 97
            );
            let mut out = Vec::new();
            shardgate_proto::chunked::encode_chunk_header(e.len(), &mut out);
            out.extend_from_slice(e.as_bytes());
            out.extend_from_slice(b"\r\n");
            out
        })
        .collect();
    let mut out = Vec::with_capacity(512);
    let held = rails("redact");
    let base = per_iter(200, || {
        for e in &events {
            out.clear();
            out.extend_from_slice(e);
            black_box(&out);
        }
    }) / events.len() as f64;
    let guarded = per_iter(200, || {
        let mut guard = StreamGuard::new(&g, checks.clone(), ClientDialect::OpenAi, false);
        for e in &events {
            out.clear();
            out.extend_from_slice(e);
            let _ = black_box(guard.filter(&g, &mut out, 0));
        }
    }) / events.len() as f64;
    let holding = per_iter(200, || {
        let mut guard = StreamGuard::new(&held, checks.clone(), ClientDialect::OpenAi, false);
        for e in &events {
            out.clear();
            out.extend_from_slice(e);
            let _ = black_box(guard.filter(&held, &mut out, 0));
        }
    }) / events.len() as f64;
    println!(
        "stream, per event: {:.0} ns without checks; with the built-in set: {:.0} ns logging ({:.2} us more), {:.0} ns redacting with a 64-byte window held back ({:.2} us more)",
        base,
        guarded,
        (guarded - base) / 1000.0,
        holding,
        (holding - base) / 1000.0
    );
}
