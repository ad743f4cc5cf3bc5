//! Integration tests: the `cai` binary against local fake servers.

mod common;
mod datasets;
mod endpoints;
mod engine;
mod errors;
mod generate;
mod label;
mod local;
mod optimize;
mod rundir;
