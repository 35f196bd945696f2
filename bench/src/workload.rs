//! What the load generator sends: the API shape (OpenAI or Anthropic), the
//! prompts (a default one, synthetic prompts of a token-length
//! distribution counted with tiktoken's cl100k_base, or a JSONL dataset),
//! rendered once into the exact request bytes every connection cycles
//! through.

use crate::arrivals::{Arrivals, Rng};
use crate::error::BenchError;
use crate::loadgen::LoadConfig;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Synthetic prompts drawn from a distribution: how many distinct ones.
const SYNTHETIC_POOL: usize = 128;
const DEFAULT_PROMPT: &str = "Say hello in one short sentence.";
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The MCP revision `--api mcp` speaks.
pub const MCP_VERSION: &str = "2026-07-28";

/// The request shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI: chat completions (or legacy completions, embeddings, GETs,
    /// chosen by the URL's path); `Authorization: Bearer`.
    Openai,
    /// Anthropic Messages (`POST /v1/messages`); `x-api-key`,
    /// `anthropic-version`.
    Anthropic,
    /// MCP `tools/call` of the tool named by `--model` (`echo` at the
    /// mock, `mock.echo` through a gateway that names its server `mock`)
    /// with the prompt as its `text`, in the 2026-07-28 era (`_meta`,
    /// `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`); `Authorization:
    /// Bearer`.
    Mcp,
}

impl Api {
    /// `/v1/messages` paths are Anthropic, everything else OpenAI.
    pub fn infer(path: &str) -> Api {
        let path = path.split('?').next().unwrap_or("");
        if path.ends_with("/messages") {
            Api::Anthropic
        } else if path.ends_with("/mcp") {
            Api::Mcp
        } else {
            Api::Openai
        }
    }
}

/// Prompt lengths in tokens: `512`, `normal:512,64`, `uniform:100,1000`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenDist {
    Fixed(usize),
    Normal { mean: f64, sd: f64 },
    Uniform { lo: usize, hi: usize },
}

impl TokenDist {
    fn sample(&self, rng: &mut Rng) -> usize {
        match *self {
            TokenDist::Fixed(n) => n,
            TokenDist::Normal { mean, sd } => (mean + sd * rng.normal()).round().max(1.0) as usize,
            TokenDist::Uniform { lo, hi } => {
                lo + (rng.next_u64() % (hi.saturating_sub(lo) as u64 + 1)) as usize
            }
        }
    }
}

pub fn parse_token_dist(s: &str) -> Result<TokenDist, String> {
    let bad = || format!("{s:?}: expected N, normal:MEAN,SD or uniform:MIN,MAX");
    let pair = |v: &str| -> Result<(f64, f64), String> {
        let (a, b) = v.split_once(',').ok_or_else(bad)?;
        Ok((
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ))
    };
    let d = if let Some(v) = s.strip_prefix("normal:") {
        let (mean, sd) = pair(v)?;
        TokenDist::Normal { mean, sd }
    } else if let Some(v) = s.strip_prefix("uniform:") {
        let (lo, hi) = pair(v)?;
        if lo > hi || lo < 0.0 {
            return Err(bad());
        }
        TokenDist::Uniform {
            lo: lo as usize,
            hi: hi as usize,
        }
    } else {
        TokenDist::Fixed(s.trim().parse().map_err(|_| bad())?)
    };
    match d {
        TokenDist::Fixed(0) => Err(format!("{s:?}: at least 1 token")),
        TokenDist::Normal { mean, sd } if !(mean >= 1.0 && sd >= 0.0) => Err(bad()),
        _ => Ok(d),
    }
}

/// Where prompts come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PromptSource {
    /// One short fixed prompt.
    #[default]
    Default,
    Synthetic(TokenDist),
    /// JSONL: `{"prompt": "...", "max_tokens"?: N}` or
    /// `{"messages": [...], "max_tokens"?: N}` per line.
    Dataset(PathBuf),
}

/// Open-loop pacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoop {
    /// Requests per second over all connections.
    pub rate: f64,
    pub arrivals: Arrivals,
}

/// How requests look and when they go, beyond URL and model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    /// `None`: inferred from the URL path.
    pub api: Option<Api>,
    pub prompts: PromptSource,
    /// `None`: closed loop.
    pub open_loop: Option<OpenLoop>,
    pub seed: u64,
}

/// One prompt before rendering.
#[derive(Debug, Clone, PartialEq)]
struct Prompt {
    /// OpenAI-style messages.
    messages: Vec<Value>,
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct DatasetLine {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<Value>>,
    #[serde(default)]
    max_tokens: Option<u64>,
}

/// The requests to cycle through, and the prompts' token counts when known.
#[derive(Debug, Clone)]
pub struct Workload {
    pub api: Api,
    pub requests: Vec<Vec<u8>>,
    /// Synthetic prompts: their exact cl100k_base token counts.
    pub prompt_tokens: Vec<usize>,
}

pub fn build(cfg: &LoadConfig) -> Result<Workload, BenchError> {
    let api = cfg.shape.api.unwrap_or_else(|| Api::infer(&cfg.url.path));
    let mut prompt_tokens = Vec::new();
    let prompts = match &cfg.shape.prompts {
        PromptSource::Default => vec![user_prompt(DEFAULT_PROMPT.to_owned())],
        PromptSource::Synthetic(dist) => {
            let mut rng = Rng::new(cfg.shape.seed);
            let count = if matches!(dist, TokenDist::Fixed(_)) {
                1
            } else {
                SYNTHETIC_POOL
            };
            let bpe = tiktoken_rs::cl100k_base()
                .map_err(|e| BenchError::Runtime(format!("tiktoken: {e}")))?;
            (0..count)
                .map(|_| {
                    let n = dist.sample(&mut rng);
                    let text = synthetic_text(&bpe, n, &mut rng);
                    prompt_tokens.push(bpe.encode_ordinary(&text).len());
                    user_prompt(text)
                })
                .collect()
        }
        PromptSource::Dataset(path) => read_dataset(path)?,
    };
    let requests = prompts.iter().map(|p| render(cfg, api, p)).collect();
    Ok(Workload {
        api,
        requests,
        prompt_tokens,
    })
}

fn user_prompt(text: String) -> Prompt {
    Prompt {
        messages: vec![json!({"role": "user", "content": text})],
        max_tokens: None,
    }
}

fn read_dataset(path: &PathBuf) -> Result<Vec<Prompt>, BenchError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::io(format!("reading {}", path.display()), e))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| BenchError::Usage(format!("{}:{}: {why}", path.display(), i + 1));
        let l: DatasetLine = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let messages = match (l.prompt, l.messages) {
            (Some(p), None) => vec![json!({"role": "user", "content": p})],
            (None, Some(m)) if !m.is_empty() => m,
            _ => return Err(bad("expected one of \"prompt\" or \"messages\"")),
        };
        prompts.push(Prompt {
            messages,
            max_tokens: l.max_tokens,
        });
    }
    if prompts.is_empty() {
        return Err(BenchError::Usage(format!("{}: no prompts", path.display())));
    }
    Ok(prompts)
}

/// Random words cut to exactly `n` cl100k_base tokens.
fn synthetic_text(bpe: &tiktoken_rs::CoreBPE, n: usize, rng: &mut Rng) -> String {
    let mut text = String::with_capacity(n * 8);
    // Words of the mock text are one token each with their leading space;
    // a margin covers the odd merge.
    while text.len() < n * 8 + 16 {
        text.push_str(shardgate_proto::mock::token(rng.next_u64() as usize));
    }
    let tokens = bpe.encode_ordinary(&text);
    let mut take = n.min(tokens.len());
    loop {
        let cut = bpe.decode(&tokens[..take]).unwrap_or_default();
        let count = bpe.encode_ordinary(&cut).len();
        if count == n || take == 0 {
            return cut;
        }
        // Re-encoding merged or split at the cut: adjust and retry.
        if count > n {
            take -= 1;
        } else if take < tokens.len() {
            take += 1;
        } else {
            return cut;
        }
    }
}

/// The full request bytes for one prompt.
fn render(cfg: &LoadConfig, api: Api, p: &Prompt) -> Vec<u8> {
    let path = cfg.url.path.split('?').next().unwrap_or("");
    let max_tokens = p.max_tokens.unwrap_or(u64::from(cfg.max_tokens));
    let (get, body) = match api {
        Api::Mcp => {
            let text = p.messages.last().and_then(|m| m["content"].as_str());
            (
                false,
                Some(json!({
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {
                        "name": cfg.model,
                        "arguments": {"text": text.unwrap_or(DEFAULT_PROMPT)},
                        "_meta": {"io.modelcontextprotocol/protocolVersion": MCP_VERSION},
                    },
                })),
            )
        }
        Api::Anthropic => {
            let mut system = Vec::new();
            let mut messages = Vec::new();
            for m in &p.messages {
                if m["role"] == "system" || m["role"] == "developer" {
                    if let Some(s) = m["content"].as_str() {
                        system.push(s.to_owned());
                    }
                } else {
                    messages.push(m.clone());
                }
            }
            let mut body = json!({
                "model": cfg.model,
                "max_tokens": max_tokens,
                "messages": messages,
            });
            if !system.is_empty() {
                body["system"] = system.join("\n").into();
            }
            if cfg.stream {
                body["stream"] = true.into();
            }
            (false, Some(body))
        }
        Api::Openai => {
            let get = path.ends_with("/models") || path.ends_with("/healthz") || path == "/";
            let body = if get {
                None
            } else if path.ends_with("/embeddings") {
                let text = p.messages.last().and_then(|m| m["content"].as_str());
                Some(json!({"model": cfg.model, "input": text.unwrap_or(DEFAULT_PROMPT)}))
            } else {
                let mut body = if path.ends_with("/responses") {
                    json!({"model": cfg.model, "input": p.messages, "max_output_tokens": max_tokens})
                } else if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
                    let text: Vec<&str> = p
                        .messages
                        .iter()
                        .filter_map(|m| m["content"].as_str())
                        .collect();
                    json!({"model": cfg.model, "prompt": text.join("\n"), "max_tokens": max_tokens})
                } else {
                    json!({"model": cfg.model, "messages": p.messages, "max_tokens": max_tokens})
                };
                if cfg.stream {
                    body["stream"] = true.into();
                    // Responses streams always end with their usage.
                    if !path.ends_with("/responses") {
                        body["stream_options"] = json!({"include_usage": true});
                    }
                }
                Some(body)
            };
            (get, body)
        }
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{} {} HTTP/1.1\r\nhost: {}\r\nuser-agent: shardgate-bench\r\n",
        if get { "GET" } else { "POST" },
        cfg.url.path,
        cfg.url.host
    );
    if let Some(key) = &cfg.api_key {
        match api {
            Api::Openai | Api::Mcp => req.push_str(&format!("authorization: Bearer {key}\r\n")),
            Api::Anthropic => req.push_str(&format!("x-api-key: {key}\r\n")),
        }
    }
    if api == Api::Anthropic {
        req.push_str(&format!("anthropic-version: {ANTHROPIC_VERSION}\r\n"));
    }
    if api == Api::Mcp {
        req.push_str(&format!(
            "accept: application/json, text/event-stream\r\nmcp-protocol-version: {MCP_VERSION}\r\nmcp-method: tools/call\r\nmcp-name: {}\r\n",
            cfg.model
        ));
    }
    if !get {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    if cfg.stream {
        req.push_str("accept: text/event-stream\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
