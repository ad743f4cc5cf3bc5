//! Integration tests: the `cai` binary against local fake servers.

mod bounds;
mod common;
mod datasets;
mod engine;
mod errors;
mod generate;
mod local;
