//! Model prices and the cost of a call, in integer micro-dollars.
//!
//! Prices are micro-dollars per million tokens (USD × 1_000_000 per 1M
//! tokens), so `$2.50 / 1M` is `2_500_000`. A call's cost is
//!
//! ```text
//! ceil(( (prompt - cached - written) × input + cached × cached_input
//!        + written × cache_write_input + completion × output ) / 1_000_000)
//! ```
//!
//! computed in `u128` and rounded up once, at the end: the result is never
//! below the exact cost and at most 1 micro-dollar above it.
//!
//! Usage follows OpenAI's shape (`shardgate_proto::openai::Usage`):
//! `prompt_tokens` includes `cached_tokens`; `completion_tokens` includes
//! reasoning tokens; `cache_write_tokens` (written to the prompt cache) are
//! part of `prompt_tokens` too, each token counted once. Providers
//! translating from other dialects fill it the same way. Not modelled:
//! Anthropic's 1-hour cache writes (2× input; here at the 5-minute 1.25×),
//! Gemini 2.5 Pro's higher tier for prompts over 200k tokens (here at the
//! ≤200k price), batch discounts.

use shardgate_proto::openai::Usage;

use crate::config::PriceSpec;
use crate::glob::Glob;

/// Micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    /// Tokens written to the prompt cache.
    pub cache_write_input: u64,
}

/// Cache writes at the input price (providers that do not bill them apart).
const fn usd_per_m(input_micros: u64, output_micros: u64, cached_micros: u64) -> Price {
    Price {
        input: input_micros,
        output: output_micros,
        cached_input: cached_micros,
        cache_write_input: input_micros,
    }
}

impl Price {
    const fn writes_at(mut self, micros: u64) -> Price {
        self.cache_write_input = micros;
        self
    }
}

/// Default prices, standard (non-batch) tier, short-prompt tier where
/// prices are tiered. Sources: the providers' pricing pages (OpenAI API
/// pricing, Anthropic "Model pricing", Google Gemini API pricing), as
/// mirrored by third-party tables dated March–June 2026 and looked up on
/// 2026-06 for this table. Config entries override them.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    // OpenAI
    ("gpt-4o", usd_per_m(2_500_000, 10_000_000, 1_250_000)),
    ("gpt-4o-mini", usd_per_m(150_000, 600_000, 75_000)),
    ("gpt-4.1", usd_per_m(2_000_000, 8_000_000, 500_000)),
    ("gpt-4.1-mini", usd_per_m(400_000, 1_600_000, 100_000)),
    ("o3", usd_per_m(2_000_000, 8_000_000, 500_000)),
    ("o4-mini", usd_per_m(1_100_000, 4_400_000, 275_000)),
    // Anthropic (cached = cache hits, 0.1× input; 5-minute cache writes,
    // 1.25× input)
    (
        "claude-sonnet-4",
        usd_per_m(3_000_000, 15_000_000, 300_000).writes_at(3_750_000),
    ),
    (
        "claude-opus-4",
        usd_per_m(15_000_000, 75_000_000, 1_500_000).writes_at(18_750_000),
    ),
    (
        "claude-3-5-haiku",
        usd_per_m(800_000, 4_000_000, 80_000).writes_at(1_000_000),
    ),
    // Google (prompts up to 200k tokens)
    ("gemini-2.5-pro", usd_per_m(1_250_000, 10_000_000, 125_000)),
    ("gemini-2.5-flash", usd_per_m(300_000, 2_500_000, 30_000)),
];

/// Prices by model: config overrides, then defaults, then a fallback.
#[derive(Debug, Clone)]
pub struct PricingTable {
    overrides: Vec<(Glob, Price)>,
    fallback: Price,
}

impl Default for PricingTable {
    fn default() -> Self {
        PricingTable::new(&[])
    }
}

impl PricingTable {
    /// Defaults plus config overrides (first matching override wins). The
    /// fallback for unknown models is the most expensive default (Claude
    /// Opus 4), so an unlisted model cannot slip past a spend budget; list
    /// it in config to price it properly.
    pub fn new(overrides: &[PriceSpec]) -> Self {
        let overrides = overrides
            .iter()
            .map(|s| {
                let input = s.input_per_million_usd.micros();
                (
                    Glob::new(&s.model),
                    Price {
                        input,
                        output: s.output_per_million_usd.micros(),
                        cached_input: s.cached_input_per_million_usd.map_or(input, |u| u.micros()),
                        cache_write_input: s
                            .cache_write_input_per_million_usd
                            .map_or(input, |u| u.micros()),
                    },
                )
            })
            .collect();
        let fallback = DEFAULT_PRICES
            .iter()
            .map(|(_, p)| *p)
            .max_by_key(|p| p.output)
            .unwrap_or(usd_per_m(0, 0, 0));
        PricingTable {
            overrides,
            fallback,
        }
    }

    /// The listed price: an override matching the name, else a default
    /// whose name equals the model or is its prefix followed by `-` and a
    /// digit (a dated or versioned snapshot: `gpt-4o-2024-08-06`,
    /// `claude-sonnet-4-20250514`), the longest such name winning. A
    /// provider prefix (`openai/`) is ignored for defaults.
    pub fn listed(&self, model: &str) -> Option<Price> {
        if let Some((_, p)) = self.overrides.iter().find(|(g, _)| g.matches(model)) {
            return Some(*p);
        }
        let m = model.rsplit_once('/').map_or(model, |(_, m)| m);
        let mut best: Option<(&str, Price)> = None;
        for (name, price) in DEFAULT_PRICES {
            let hit = m == *name
                || m.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
            if hit && best.is_none_or(|(b, _)| name.len() > b.len()) {
                best = Some((name, *price));
            }
        }
        best.map(|(_, p)| p)
    }

    /// The listed price, or the fallback.
    pub fn price(&self, model: &str) -> Price {
        self.listed(model).unwrap_or(self.fallback)
    }

    /// Cost of `usage` on `model` in micro-dollars, rounded up (see the
    /// module docs). Missing numbers are derived from `total_tokens` where
    /// possible, else taken as 0.
    pub fn cost_micros(&self, model: &str, usage: &Usage) -> u64 {
        self.price(model).cost_micros(usage)
    }

    /// Cost of a reservation-sized call (`prompt` and `output` tokens, none
    /// cached), e.g. to settle a request whose usage never arrived.
    pub fn estimate_micros(&self, model: &str, prompt: u64, output: u64) -> u64 {
        self.price(model).estimate_micros(prompt, output)
    }
}

impl Price {
    /// [`PricingTable::cost_micros`] at this price.
    pub fn cost_micros(&self, usage: &Usage) -> u64 {
        let prompt = usage.prompt_tokens.or_else(|| {
            usage
                .total_tokens
                .map(|t| t.saturating_sub(usage.completion_tokens.unwrap_or(0)))
        });
        let prompt = prompt.unwrap_or(0);
        let completion = usage
            .completion_tokens
            .or_else(|| usage.total_tokens.map(|t| t.saturating_sub(prompt)))
            .unwrap_or(0);
        let cached = usage.cached_tokens.unwrap_or(0).min(prompt);
        let written = usage.cache_write_tokens.unwrap_or(0).min(prompt - cached);
        let prompt = Prompt {
            uncached: prompt - cached - written,
            cached,
            written,
        };
        cost_of(self, prompt, completion)
    }

    /// [`PricingTable::estimate_micros`] at this price.
    pub fn estimate_micros(&self, prompt: u64, output: u64) -> u64 {
        let prompt = Prompt {
            uncached: prompt,
            cached: 0,
            written: 0,
        };
        cost_of(self, prompt, output)
    }
}

/// A prompt's tokens by price: each counted once.
struct Prompt {
    uncached: u64,
    cached: u64,
    written: u64,
}

fn cost_of(p: &Price, prompt: Prompt, completion: u64) -> u64 {
    let n = u128::from(prompt.uncached) * u128::from(p.input)
        + u128::from(prompt.cached) * u128::from(p.cached_input)
        + u128::from(prompt.written) * u128::from(p.cache_write_input)
        + u128::from(completion) * u128::from(p.output);
    u64::try_from(n.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Usd;

    fn usage(prompt: u64, cached: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: Some(prompt + completion),
            cached_tokens: Some(cached),
            reasoning_tokens: None,
            cache_write_tokens: None,
        }
    }

    #[test]
    fn cache_writes_are_priced_apart_and_every_prompt_token_once() {
        let t = PricingTable::default();
        // claude-sonnet-4: 1000 prompt tokens of which 200 read from the
        // cache and 300 written to it: 500 × 3 + 200 × 0.3 + 300 × 3.75 +
        // 100 × 15 = 1500 + 60 + 1125 + 1500 = 4185 micro-dollars.
        let u = Usage {
            cache_write_tokens: Some(300),
            ..usage(1000, 200, 100)
        };
        assert_eq!(t.cost_micros("claude-sonnet-4", &u), 4185);
        // More reads and writes than prompt tokens never count twice.
        let odd = Usage {
            cache_write_tokens: Some(5000),
            ..usage(1000, 800, 0)
        };
        assert_eq!(
            t.cost_micros("claude-sonnet-4", &odd),
            800 * 3 / 10 + 200 * 375 / 100
        );
        // OpenAI bills no writes: they cost the input price.
        let openai = Usage {
            cache_write_tokens: Some(300),
            ..usage(1000, 0, 0)
        };
        assert_eq!(t.cost_micros("gpt-4o", &openai), 2500);
        let custom = PricingTable::new(&[PriceSpec {
            model: "house-*".into(),
            input_per_million_usd: Usd::parse("1").unwrap(),
            output_per_million_usd: Usd::parse("2").unwrap(),
            cached_input_per_million_usd: Some(Usd::parse("0.1").unwrap()),
            cache_write_input_per_million_usd: Some(Usd::parse("1.25").unwrap()),
        }]);
        assert_eq!(custom.price("house-7").cache_write_input, 1_250_000);
    }

    #[test]
    fn exact_costs() {
        let t = PricingTable::default();
        // gpt-4o: 800 × 2.5 + 200 × 1.25 + 500 × 10 = 7250 micro-dollars.
        assert_eq!(t.cost_micros("gpt-4o", &usage(1000, 200, 500)), 7250);
        // claude-sonnet-4: 10k × 3 + 2k × 15 = 60_000.
        assert_eq!(
            t.cost_micros("claude-sonnet-4", &usage(10_000, 0, 2_000)),
            60_000
        );
        // 1M in + 1M out on gpt-4.1-mini = $2.00.
        assert_eq!(
            t.cost_micros("gpt-4.1-mini", &usage(1_000_000, 0, 1_000_000)),
            2_000_000
        );
        // o4-mini cached: 1000 cached × 0.275 = 275.
        assert_eq!(t.cost_micros("o4-mini", &usage(1000, 1000, 0)), 275);
        assert_eq!(
            t.cost_micros("gemini-2.5-flash", &usage(1_000, 0, 1_000)),
            2_800
        );
    }

    #[test]
    fn rounds_up_once() {
        let t = PricingTable::default();
        // 1 token of gpt-4o-mini input = 0.15 micro-dollars -> 1.
        assert_eq!(t.cost_micros("gpt-4o-mini", &usage(1, 0, 0)), 1);
        // 3 tokens = 0.45 -> 1 (not 3 × ceil(0.15)).
        assert_eq!(t.cost_micros("gpt-4o-mini", &usage(3, 0, 0)), 1);
        // 7 tokens = 1.05 -> 2.
        assert_eq!(t.cost_micros("gpt-4o-mini", &usage(7, 0, 0)), 2);
        assert_eq!(t.cost_micros("gpt-4o", &Usage::default()), 0);
    }

    #[test]
    fn derives_missing_numbers() {
        let t = PricingTable::default();
        let u = Usage {
            total_tokens: Some(1500),
            completion_tokens: Some(500),
            ..Usage::default()
        };
        assert_eq!(t.cost_micros("gpt-4o", &u), 1000 * 25 / 10 + 500 * 10);
        // Cached beyond prompt is clamped.
        assert_eq!(t.cost_micros("gpt-4o", &usage(10, 50, 0)), 13);
    }

    #[test]
    fn lookup_snapshots_and_fallback() {
        let t = PricingTable::default();
        assert_eq!(t.listed("gpt-4o-2024-08-06"), t.listed("gpt-4o"));
        assert_eq!(t.listed("gpt-4o-mini-2024-07-18"), t.listed("gpt-4o-mini"));
        assert_ne!(t.listed("gpt-4o-mini"), t.listed("gpt-4o"));
        assert_eq!(
            t.listed("gpt-4.1-mini-2025-04-14").map(|p| p.input),
            Some(400_000)
        );
        assert_eq!(
            t.listed("claude-sonnet-4-20250514"),
            t.listed("claude-sonnet-4")
        );
        assert_eq!(t.listed("openai/gpt-4o"), t.listed("gpt-4o"));
        assert_eq!(t.listed("gpt-4o-audio"), None);
        assert_eq!(t.listed("mystery-model"), None);
        assert_eq!(t.price("mystery-model").output, 75_000_000);
    }

    #[test]
    fn overrides_win() {
        let t = PricingTable::new(&[PriceSpec {
            model: "gpt-4o*".into(),
            input_per_million_usd: Usd::parse("1").unwrap(),
            output_per_million_usd: Usd::parse("2.5").unwrap(),
            cached_input_per_million_usd: None,
            cache_write_input_per_million_usd: None,
        }]);
        assert_eq!(
            t.price("gpt-4o-mini"),
            Price {
                input: 1_000_000,
                output: 2_500_000,
                cached_input: 1_000_000,
                cache_write_input: 1_000_000,
            }
        );
        assert_eq!(t.price("o3").input, 2_000_000);
    }
}
