//! Integration tests: the `cai` binary against local fake servers.

mod common;
mod datasets;
mod engine;
mod errors;
mod generate;
mod local;
mod serve;
mod serve_support;
