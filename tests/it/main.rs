//! Integration tests: the `cai` binary against local fake servers.

mod batch;
mod bounds;
mod code_shape;
mod common;
mod datasets;
mod docs;
mod endpoints;
mod engine;
mod errors;
mod generate;
mod label;
mod local;
mod local_engine;
mod logging;
mod optimize;
mod optimize_fallback;
mod pool;
mod prompt_cache;
mod refresh;
mod report;
mod rundir;
mod serve;
mod serve_for_optimize;
mod serve_support;
mod shards;
