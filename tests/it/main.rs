//! Integration tests: the `cai` binary against local fake servers.

mod common;
mod datasets;
mod engine;
mod errors;
mod generate;
mod local;
mod local_engine;
mod local_families;
