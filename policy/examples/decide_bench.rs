//! Cost of one policy decision (no tokenization) and of token estimation.
//!
//! `cargo run --release -p shardgate-policy --example decide_bench`
//!
//! Prints the machine, profile and git revision beside every figure.

// A benchmark measures time; the library it measures reads no clock.
#![allow(clippy::disallowed_methods)]
use std::hint::black_box;
use std::time::Instant;

use shardgate_policy::{
    decide, estimate_prompt_tokens, tokens, Actor, ActorFields, Counters, Decision, LeaseManager,
    PolicyEntry, PolicySet, RateLimitHeaders, RequestFacts, Timestamp,
};

const POLICIES: &str = r#"[
 {"ai_runtime_policy": {"actor_scope": {"tenant": "acme"},
   "model_access": {"allowed_models": ["gpt-4o*", "claude-*"], "fallback_model": "claude-3-5-haiku"},
   "budgets": {"requests_per_minute": 100000000, "monthly_spend_usd": 20000},
   "tools": {"denied": ["*.delete_*"]}}},
 {"ai_runtime_policy": {"actor_scope": {"team": "support-platform", "environment": "production"},
   "model_access": {"allowed_models": ["gpt-4o", "claude-sonnet-4"], "fallback_model": "gpt-4o-mini"},
   "budgets": {"requests_per_minute": 100000000, "tokens_per_day": 100000000000000, "monthly_spend_usd": 5000},
   "tools": {"allowed": ["billing.read_renewal_status", "ticket.create_case"],
             "denied": ["billing.update_payment_method", "account.delete_user"]},
   "audit": {"log_prompts": "metadata_only", "log_tool_calls": true, "log_policy_decisions": true}}},
 {"ai_runtime_policy": {"actor_scope": {"team": "sales"}, "budgets": {"requests_per_minute": 10}}}
]"#;

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

fn prompt_text(bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "customer",
        "asked",
        "about",
        "their",
        "renewal",
        "status",
        "and",
        "whether",
        "billing",
        "was",
        "updated;",
        "please",
        "check",
        "ticket",
        "#4821",
        "for",
        "details.",
        "Thanks!",
        "invoice",
        "2024-06-30",
        "amount:",
        "$1,299.00",
        "plan",
        "enterprise",
    ];
    let mut s = String::with_capacity(bytes + 16);
    let mut i = 7usize;
    while s.len() < bytes {
        i = i.wrapping_mul(2_654_435_761).wrapping_add(12_345) % 1_000_003;
        s.push_str(WORDS[i % WORDS.len()]);
        s.push(if i.is_multiple_of(11) { '\n' } else { ' ' });
    }
    s.truncate(bytes);
    s
}

fn main() {
    println!("machine: {}", machine());
    let entries: Vec<PolicyEntry> = match serde_json::from_str(POLICIES) {
        Ok(e) => e,
        Err(e) => return eprintln!("bad policies: {e}"),
    };
    let set = match PolicySet::compile(&entries) {
        Ok(s) => s,
        Err(e) => return eprintln!("bad policies: {e}"),
    };
    let actor = Actor::new(ActorFields {
        key_id: "sg-AAAAAAAA".into(),
        team: Some("support-platform".into()),
        tenant: Some("acme".into()),
        app: Some("helpdesk".into()),
        environment: Some("production".into()),
    });
    let now = Timestamp(1_704_067_230_000);
    let tools = ["ticket.create_case", "billing.read_renewal_status"];
    let facts = RequestFacts {
        model: "gpt-4o",
        estimated_prompt_tokens: 1200,
        max_output_tokens: Some(800),
        tool_names: &tools,
    };

    // decide() alone, with a resolved policy set cached per key.
    let resolved = set.resolve(&actor);

    // The tool rules on one name (an MCP call, or a tool a model called).
    let names = [
        "billing.read_renewal_status",
        "ticket.create_case",
        "billing.update_payment_method",
        "files.delete_all",
    ];
    let n = 2_000_000usize;
    let mut allowed = 0usize;
    let t = Instant::now();
    for i in 0..n {
        let v = black_box(&resolved).decide_tool(black_box(names[i % 4]), None);
        allowed += usize::from(v.is_allowed());
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "decide_tool (allow and deny globs of 2 policies): {ns:.0} ns per name ({allowed} allowed)"
    );
    let counters: Vec<Counters> = resolved
        .buckets()
        .iter()
        .map(|_| Counters::new(now))
        .collect();
    let n = 2_000_000u32;
    let mut allowed = 0u32;
    let t = Instant::now();
    for i in 0..n {
        let now = Timestamp(now.0 + u64::from(i % 1000));
        if let Decision::Allow { .. } =
            decide(black_box(&resolved), black_box(&facts), &counters, now)
        {
            allowed += 1;
        }
    }
    let per = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!("decide (2 buckets, 3 policies, 2 tools): {per:.0} ns/decision ({allowed} allowed)");

    // resolve + decide + commit on the owner + headers: the whole pure path.
    let mut lms: Vec<_> = resolved
        .buckets()
        .iter()
        .map(|b| LeaseManager::new(b.limits, now))
        .collect();
    let n = 500_000u32;
    let t = Instant::now();
    let mut header_bytes = 0usize;
    for i in 0..n {
        let now = Timestamp(now.0 + u64::from(i % 1000));
        let r = set.resolve(black_box(&actor));
        let snapshot: Vec<Counters> = lms.iter().map(|l| *l.counters()).collect();
        if let Decision::Allow { reservation, .. } = decide(&r, &facts, &snapshot, now) {
            for lm in &mut lms {
                lm.admit(&reservation, now);
            }
        }
        let h = RateLimitHeaders::compute(&r, &snapshot, now);
        header_bytes += h.pairs().iter().map(|(_, v)| v.len()).sum::<usize>();
    }
    let per = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "resolve + decide + admit + rate-limit headers: {per:.0} ns/request ({header_bytes} header bytes)"
    );

    // Tokenization: first use builds the BPE table.
    for (name, enc) in [
        ("o200k_base", tokens::Encoding::O200kBase),
        ("cl100k_base", tokens::Encoding::Cl100kBase),
    ] {
        let t = Instant::now();
        let k = tokens::count_tokens(enc, "warm up");
        println!(
            "first use of {name} (table load): {:.1} ms ({k} tokens)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    for kib in [1usize, 16, 128] {
        let text = prompt_text(kib * 1024);
        for model in ["gpt-4o", "gpt-4", "claude-sonnet-4"] {
            let reps = (512 / kib).max(4) as u32;
            let t = Instant::now();
            let mut tok = 0u64;
            for _ in 0..reps {
                tok = estimate_prompt_tokens(black_box(model), [text.as_str()]);
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(reps) / kib as f64;
            println!("estimate_prompt_tokens {model:>16}, {kib:>3} KiB prompt: {us:.1} µs/KiB ({tok} tokens)");
        }
    }
}
