//! `shardgate-bench mock`: a mock inference server over real TCP speaking
//! four provider dialects on one port, routed by path.
//!
//! | dialect | paths | auth when `--require-key KEY` |
//! |---|---|---|
//! | OpenAI | `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `GET /v1/models` | `Authorization: Bearer KEY` |
//! | Azure OpenAI | `POST /openai/deployments/{deployment}/{chat/completions,completions,embeddings}?api-version=...` | `api-key: KEY` |
//! | OpenAI Responses | `POST /v1/responses` | `Authorization: Bearer KEY` |
//! | Anthropic | `POST /v1/messages` (also needs `anthropic-version`) | `x-api-key: KEY` |
//! | Gemini | `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`, `:embedContent`, `:batchEmbedContents` | `x-goog-api-key: KEY` (or `?key=KEY`) |
//! | Bedrock | `POST /model/{modelId}/converse`, `/converse-stream` | any `Authorization: AWS4-HMAC-SHA256 ...` (not verified) or `Bearer KEY` |
//!
//! | MCP | `POST /mcp`: both protocol eras, `tools/list` and an `echo` `tools/call` | `Authorization: Bearer KEY` |
//!
//! `GET /healthz` never needs a key. The `/v1`/`/v1beta` prefixes are
//! optional (`/chat/completions`, `/messages`, `/models/{m}:generateContent`).
//!
//! Every dialect answers the same deterministic text
//! (`shardgate_proto::mock::text(n)`, one token per stream event) and reads
//! the same behaviour from the model name (`shardgate_proto::mock::behaviour`:
//! `mock-tokens-N`, `-ttft-Xms`, `-tps-N`, `-429`/`-500`/`-503` in the
//! dialect's own error JSON, `-cut-after-N`, `-hang`). Gemini and Bedrock
//! take the model from the path (Bedrock's percent-decoded). Usage: prompt
//! tokens are `ceil(body bytes / 4)`, output tokens the tokens sent.
//!
//! Tool calls: see [`tools`] for the rule (tools offered, choice not "none",
//! last message not a tool result → one call of the first tool with
//! `{"query":" lorem ipsum dolor"}`, streamed in the dialect's native
//! tool-call deltas).
//!
//! It is the upstream for gateway tests and benchmarks, so it must be cheap:
//! per connection one read buffer and two output buffers, reused across
//! requests; bodies rendered straight into them. HTTP/1.1 only: keep-alive,
//! pipelining answered in order, Content-Length request bodies (chunked
//! request bodies get 411), non-streaming answers with Content-Length,
//! streams chunked with one HTTP chunk per event (SSE, or AWS event-stream
//! frames for Bedrock). With `--tls-cert/--tls-key` every port speaks TLS
//! (rustls, ALPN http/1.1; `crate::tls`), so TLS can be benchmarked with no
//! gateway in between.
//!
//! What it must never do: share the gateway's HTTP code. It uses
//! `shardgate_providers::eventstream::encode` only to build Bedrock frames,
//! which the gateway's decoder checks byte for byte (CRCs included).

mod answer;
mod anthropic;
mod bedrock;
mod gemini;
mod head;
pub mod inject;
mod mcp;
mod openai;
mod responses;
mod server;
pub mod tools;
mod wire;

#[cfg(test)]
pub(crate) use server::spawn_for_tests;
pub use server::{serve, MockConfig};
