//! Prompt token estimation with tiktoken, for token reservations.
//!
//! Core calls [`estimate_prompt_tokens`] only when
//! [`crate::Resolved::needs_token_estimate`] is true: tokenizing costs far
//! more than the rest of the decision (see `examples/decide_bench.rs`).
//!
//! Encodings by model family:
//! - `o200k_base`: `gpt-4o*`, `chatgpt-4o*`, `gpt-4.1*`, `gpt-4.5*`,
//!   `gpt-5*`, `o1*`, `o3*`, `o4*` (and `ft:` fine-tunes of them).
//! - `cl100k_base`: `gpt-4*` (other), `gpt-3.5*`, `text-embedding-*`.
//! - Anything else (Claude, Gemini, open models): **cl100k_base as a proxy,
//!   plus 1/8 rounded up**. Those tokenizers are not public or not in
//!   tiktoken; for English prose and code they produce roughly 0–20% more
//!   tokens than cl100k, so the margin errs towards reserving too much,
//!   which settlement gives back.
//!
//! Per-message overhead follows OpenAI's counting for chat models: 3 tokens
//! per message (the role and delimiters) and 3 to prime the reply. Text is
//! encoded as ordinary text: special-token strings in user content count as
//! the text they are, not as one token.
//!
//! Cost (release, AMD EPYC, see `examples/decide_bench.rs`): the first use
//! of each encoding builds its BPE table, ~120 ms for o200k and ~50 ms for
//! cl100k, once per process, so core should call [`warm_up`] at startup
//! before shards take traffic. After that, ~23 µs per KiB of prompt (o200k)
//! and ~40 µs per KiB (cl100k): a 100 KiB prompt blocks its shard for 2–4 ms.
//! The tables are process-wide statics (`LazyLock`), read-only after load.

use tiktoken_rs::CoreBPE;

/// Which BPE encoding a model is counted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

/// How a model's tokens are counted: its encoding, and whether that is the
/// model's own tokenizer (`exact`) or a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokenizer {
    pub encoding: Encoding,
    pub exact: bool,
}

pub const TOKENS_PER_MESSAGE: u64 = 3;
pub const TOKENS_REPLY_PRIMING: u64 = 3;

pub fn tokenizer_for_model(model: &str) -> Tokenizer {
    let m = model.strip_prefix("ft:").unwrap_or(model);
    let m = m.strip_prefix("openai/").unwrap_or(m);
    const O200K: [&str; 8] = [
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
    ];
    const CL100K: [&str; 3] = ["gpt-4", "gpt-3.5", "text-embedding-"];
    if O200K.iter().any(|p| m.starts_with(p)) {
        Tokenizer {
            encoding: Encoding::O200kBase,
            exact: true,
        }
    } else if CL100K.iter().any(|p| m.starts_with(p)) {
        Tokenizer {
            encoding: Encoding::Cl100kBase,
            exact: true,
        }
    } else {
        Tokenizer {
            encoding: Encoding::Cl100kBase,
            exact: false,
        }
    }
}

fn bpe(encoding: Encoding) -> &'static CoreBPE {
    match encoding {
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// Builds both BPE tables now rather than on the first request.
pub fn warm_up() {
    bpe(Encoding::O200kBase);
    bpe(Encoding::Cl100kBase);
}

/// Tokens of one text in an encoding, no overhead.
pub fn count_tokens(encoding: Encoding, text: &str) -> u64 {
    bpe(encoding).encode_ordinary(text).len() as u64
}

/// Estimated prompt tokens of a chat request: the text of each message
/// (content, plus tool definitions or names if the caller includes them),
/// plus the per-message and reply overhead.
pub fn estimate_prompt_tokens<'a>(model: &str, messages: impl IntoIterator<Item = &'a str>) -> u64 {
    let t = tokenizer_for_model(model);
    let bpe = bpe(t.encoding);
    let mut total = TOKENS_REPLY_PRIMING;
    for text in messages {
        total += TOKENS_PER_MESSAGE + bpe.encode_ordinary(text).len() as u64;
    }
    if t.exact {
        total
    } else {
        total + total.div_ceil(8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1-mini",
            "o3",
            "o4-mini",
            "gpt-5",
            "o1-preview",
        ] {
            assert_eq!(tokenizer_for_model(m).encoding, Encoding::O200kBase, "{m}");
            assert!(tokenizer_for_model(m).exact);
        }
        for m in ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"] {
            assert_eq!(tokenizer_for_model(m).encoding, Encoding::Cl100kBase, "{m}");
            assert!(tokenizer_for_model(m).exact);
        }
        for m in ["claude-sonnet-4", "gemini-2.5-pro", "llama-3"] {
            assert_eq!(
                tokenizer_for_model(m),
                Tokenizer {
                    encoding: Encoding::Cl100kBase,
                    exact: false
                }
            );
        }
    }

    #[test]
    fn counts_like_openai() {
        // "hello world" is 2 tokens in both encodings.
        assert_eq!(count_tokens(Encoding::O200kBase, "hello world"), 2);
        assert_eq!(count_tokens(Encoding::Cl100kBase, "hello world"), 2);
        // 2 messages: 3 + (3 + 2) + (3 + 2).
        assert_eq!(
            estimate_prompt_tokens("gpt-4o", ["hello world", "hello world"]),
            13
        );
        // Proxy: 13 + ceil(13 / 8) = 15.
        assert_eq!(
            estimate_prompt_tokens("claude-sonnet-4", ["hello world", "hello world"]),
            15
        );
        assert_eq!(estimate_prompt_tokens("gpt-4o", std::iter::empty()), 3);
        // Special tokens in user text are ordinary text.
        assert!(count_tokens(Encoding::Cl100kBase, "<|endoftext|>") > 1);
    }
}
