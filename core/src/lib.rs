//! The Shardgate gateway: everything that does IO. One glommio executor per
//! core; each shard accepts on its own SO_REUSEPORT socket, keeps a
//! connection for its whole life, and owns its upstream pools. Nothing on the
//! request path is shared between shards.
//!
//! Where a request goes, by folder: `server/` reads it, `admission/` decides
//! whether it may go on (keys, policies, budgets), `gateway/` routes it, `client/` sends it upstream, `gateway/relay.rs` relays the
//! answer. `serve.rs` starts and stops shards; `runtime.rs` is the only
//! place that sets up glommio executors. `store/` is the embedded
//! crash-safe store (keys, usage, spend) and `cli/` the offline subcommands.

pub mod admin;
pub mod admission;
pub mod allocator;
pub mod audit;
pub mod boxed;
pub mod cache;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod error;
pub mod gateway;
pub mod generation;
pub mod guardrails;
pub mod handoff;
pub mod io;
pub mod mcp;
pub mod mesh;
pub mod metrics;
pub mod placement;
pub mod record;
pub mod runtime;
pub mod serve;
pub mod server;
pub mod shard;
pub mod store;
pub mod tls;
pub mod tunables;
