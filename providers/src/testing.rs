//! Test helpers shared by this crate's tests, the fuzz targets in `fuzz/`
//! and `tests/fuzz_corpus.rs`. Not part of the gateway's API: nothing in
//! `core` calls it.
//!
//! The [`fuzz`] module holds the properties the fuzz targets check; for the
//! splits an incremental translator is fed in, see
//! [`shardgate_proto::testing::for_each_split`].

pub mod fuzz;
