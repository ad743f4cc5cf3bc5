//! Integration tests: the `cai` binary against local fake servers.

mod common;
mod errors;
mod generate;
