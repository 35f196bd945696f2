//! Cost of one PII scan of a 4 KiB prompt: each detector alone, then all
//! kinds together, on a support ticket (plain English, seven PII items);
//! then all kinds on plain prose and on digit-heavy text (log lines, CSV,
//! source code); then all kinds on adversarial inputs where every few bytes
//! start a candidate that validation rejects. Figures are the median of 15
//! batches of ~20 ms after a warm-up, ns per `find` call.
//!
//! `cargo run --release -p shardgate-policy --example pii_bench`
//!
//! Prints the machine, profile and git revision beside the figures.

// A benchmark measures time; the library it measures reads no clock.
#![allow(clippy::disallowed_methods)]
use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use shardgate_policy::guardrails::{PiiDetector, PiiKind};

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!("{cpu}, {cores} cores, not pinned, {profile}, git {rev}")
}

/// A support ticket: plain English with numbers, dates and amounts that
/// are not PII, and seven PII items (email, phone, card, IP, key, IBAN,
/// SSN), each once.
const TICKET: &[&str] = &[
    "Hello, I am writing about my account renewal. The invoice dated 2024-06-30 shows an amount of $1,299.00 for the enterprise plan, but we agreed on the team plan during the call last week. Could you check ticket #4821 and tell me whether the billing was updated?",
    "You can reach me at jane.doe@example.com or on my cell, +1 415 555 0132, any time before 6pm Pacific. If I do not answer, please leave a message with the case number so I can call back.",
    "For the refund, the card ending in 1111 was charged twice. The full number is 4111 1111 1111 1111, expiry 12/26; please reverse the second charge and confirm by email. Our accounting team would also like a corrected PDF for the records.",
    "Some background on how we use the product. We are a team of about forty people spread over three offices, and most of us use the assistant every day for drafting replies to customers, summarizing long threads, and cleaning up meeting notes. The team plan was chosen because it gives every seat the same limits, which keeps the budgeting simple for our finance department.",
    "We also noticed that requests from our office proxy at 203.0.113.7 are being rate limited since version 2.14.1 of the client was deployed. The logs show HTTP 429 responses roughly every 30 seconds during business hours, and retries with exponential backoff only make the queue longer.",
    "Our developer pasted the configuration by mistake: OPENAI_API_KEY=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 and the model was set to gpt-4o with a temperature of 0.2. Please rotate it if it reached your systems.",
    "To be clear about the timeline: the upgrade happened on a Tuesday, the first failures appeared the following morning, and by Thursday afternoon most of the support team had switched back to writing answers by hand. Nobody changed the network configuration in that period, and the same laptops work fine from home.",
    "Wire transfers should go to DE89 3704 0044 0532 0130 00, reference INV-2024-0630. The payroll contact's SSN 123-45-6789 appears in an attachment we sent earlier; please delete that file and confirm when it is gone.",
    "We would appreciate a short written explanation of what went wrong, what you changed, and what we should watch for in the future. If a call is easier, any afternoon next week works for us, and we can share our screen to walk through the logs together.",
    "In summary: fix the plan, reverse the duplicate charge, lift the rate limit, and confirm in writing. We have been customers for six years and would like to keep it that way. Thanks for your help, and have a good weekend.",
];

/// The ticket, then plain prose (no digits, no PII) up to `bytes`.
fn prompt(bytes: usize) -> String {
    let mut s = TICKET.join("\n\n");
    let filler = [TICKET[3], TICKET[6], TICKET[8]];
    let mut i = 0;
    while s.len() < bytes {
        s.push_str("\n\n");
        s.push_str(filler[i % filler.len()]);
        i += 1;
    }
    // The text is ASCII: any cut is a char boundary.
    s.truncate(bytes);
    s
}

/// Plain prose only.
fn plain(bytes: usize) -> String {
    let filler = [TICKET[3], TICKET[6], TICKET[8]];
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(filler[i % filler.len()]);
        s.push_str("\n\n");
        i += 1;
    }
    s.truncate(bytes);
    s
}

/// Median ns per scan over 15 timed batches, and the number of items found.
fn bench(det: &PiiDetector, text: &str) -> (f64, usize) {
    let mut out: Vec<(PiiKind, Range<usize>)> = Vec::with_capacity(64);
    // Warm up: builds the lazy DFA states this text needs.
    for _ in 0..200 {
        out.clear();
        det.find(black_box(text), &mut out);
    }
    let found = out.len();
    // Size batches to about 20 ms.
    let start = Instant::now();
    let mut calib = 0u32;
    while start.elapsed() < Duration::from_millis(20) {
        out.clear();
        det.find(black_box(text), &mut out);
        calib += 1;
    }
    let iters = calib.max(1);
    let mut samples = Vec::with_capacity(15);
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..iters {
            out.clear();
            det.find(black_box(text), &mut out);
            black_box(&out);
        }
        samples.push(t.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], found)
}

/// `lines`, cycled, up to `bytes`.
fn fill(lines: &[&str], bytes: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(lines[i % lines.len()]);
        s.push('\n');
        i += 1;
    }
    s.truncate(bytes);
    s
}

/// Digit-heavy prompts people paste: logs (timestamps, an IP per line),
/// CSV (ids, amounts, dates), source code (calls, paths, numbers).
const LOG: &[&str] = &[
    "2024-06-30T10:31:07.123Z INFO  req=7f3a9c2e41 client=10.20.30.41 status=200 latency_ms=12 bytes=5321 path=/v1/chat/completions",
    "2024-06-30T10:31:07.377Z WARN  req=7f3a9c2e42 client=10.20.30.42 status=429 latency_ms=3 bytes=118 retry_after=30 path=/v1/chat/completions",
    "2024-06-30T10:31:08.001Z INFO  req=7f3a9c2e43 client=10.20.30.43 status=200 latency_ms=845 bytes=12044 model=gpt-4o tokens=1532",
];
const CSV: &[&str] = &[
    "order_id,customer_id,amount,currency,created_at,status,sku",
    "1000234567,88123,129.99,USD,2024-06-30 10:31:07,paid,SKU-00042-B",
    "1000234568,88124,1299.00,EUR,2024-06-30 10:32:44,refunded,SKU-00017-A",
    "1000234569,88125,15.50,USD,2024-07-01 08:01:12,paid,SKU-00099-C",
    "1700000000123,88126,2.75,GBP,2024-07-01 08:05:59,pending,SKU-00003-X",
];
const CODE: &[&str] = &[
    "fn percentile(values: &mut Vec<f64>, p: f64) -> Option<f64> {",
    "    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));",
    "    let idx = ((values.len() as f64 - 1.0) * p / 100.0).round() as usize;",
    "    values.get(idx).copied() // e.g. p99 over 1_000_000 samples, see #4821",
    "}",
    "let cfg = Config { port: 8080, workers: 16, timeout: Duration::from_millis(2500), retries: 3 };",
];

fn main() {
    println!("machine: {}", machine());
    let text = prompt(4096);
    println!(
        "prompt: {} bytes, mostly English, 7 PII items\n",
        text.len()
    );
    println!(
        "{:<26} {:>10} {:>8} {:>6}",
        "detector (4 KiB)", "ns/scan", "MB/s", "found"
    );
    let t = Instant::now();
    let all = PiiDetector::new(&PiiKind::ALL);
    let build = t.elapsed();
    let mut rows: Vec<(String, PiiDetector, String)> = PiiKind::ALL
        .iter()
        .map(|&k| (k.name().to_owned(), PiiDetector::new(&[k]), text.clone()))
        .collect();
    rows.push(("all kinds".into(), all.clone(), text.clone()));
    rows.push(("all kinds, plain prose".into(), all.clone(), plain(4096)));
    rows.push(("all kinds, log lines".into(), all.clone(), fill(LOG, 4096)));
    rows.push(("all kinds, CSV".into(), all.clone(), fill(CSV, 4096)));
    rows.push((
        "all kinds, source code".into(),
        all.clone(),
        fill(CODE, 4096),
    ));
    for (name, det, text) in &rows {
        report(name, det, text);
    }

    println!("\nPiiDetector::new(all kinds): {build:.2?} (once, at config load)");
    println!("\nadversarial 4 KiB inputs, all kinds (a rejected candidate every few bytes):");
    for unit in [
        "sk-",
        "1.1.",
        "a.",
        "1:",
        "eyJa-",
        "4111 ",
        "+1 ",
        "AB12 ",
        "1-2-",
        "0123456789",
        "-----BEGIN PRIVATE KEY-----\n",
        "10:31:07 ",
        "std::io::",
    ] {
        let text = unit.repeat(4096 / unit.len());
        report(&format!("{unit:?} x N"), &all, &text);
    }
}

fn report(name: &str, det: &PiiDetector, text: &str) {
    let (ns, found) = bench(det, text);
    let mbs = text.len() as f64 / ns * 1e3;
    println!("{name:<26} {ns:>10.0} {mbs:>8.0} {found:>6}");
}
