//! Wire formats for Shardgate: HTTP/1.1 heads (on httparse), chunked transfer
//! coding, Server-Sent Events framing, and the JSON shapes of the APIs the
//! gateway speaks.
//!
//! What it must never do: IO, clocks, async runtimes, or allocation per byte.
//! Every parser here is a sans-IO state machine: it is handed bytes and says
//! "need more" instead of reading, so the same code serves the gateway, the
//! bench tool and the fuzzers, and is tested over every split of its input.
#![forbid(unsafe_code)]

pub mod anthropic;
pub mod bedrock;
pub mod chunked;
pub mod gemini;
pub mod h1;
pub mod json;
pub mod mcp;
pub mod mock;
pub mod openai;
pub mod sse;
mod swar;
pub mod testing;
