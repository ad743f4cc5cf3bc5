//! Integration tests: the `cai` binary against local fake servers.

mod common;
mod datasets;
mod errors;
mod generate;
mod engine;
