//! Subcommands that work on the data directory without starting the
//! gateway (`shardgate keys ...`). `main.rs` only parses and maps their
//! errors to exit codes.

pub mod audit;
pub mod keys;
pub mod providers;
