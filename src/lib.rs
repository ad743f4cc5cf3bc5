//! `cai`: Constitutional AI data generation.
//!
//! Prompts and a constitution go in; a language model is driven through
//! initial answer → critique → revision loops; SFT and preference datasets
//! come out. `main.rs` only calls [`commands::main`], which folds the
//! settings into the arguments, parses them, and maps the command to its
//! module and the result to an exit code.
//!
//! The rooms, from the top down (a module only uses the ones below it):
//!
//! | room | what lives there |
//! |---|---|
//! | [`commands`] | one file per command: generate, label, optimize, merge, report, validate, render, dry run, model(s) |
//! | [`serve`] | `cai serve`: the OpenAI-compatible HTTP layer and the approaches (cai, bon, moa, …) |
//! | [`config`] | files, `.env`, environment and flags → one checked config per command |
//! | [`output`] | the run directory's files: writers, commit log, manifest, merge, the HTML report |
//! | [`pipeline`] | the critique→revision chain of one prompt |
//! | [`feedback`] | AI feedback: the judge, pair selection, label metrics, prompt optimisation (DRPO) |
//! | [`engine`] | the one run loop, requests (limits, retries, journal, budgets), run-directory lock, progress |
//! | [`input`] | prompts, constitution, answer pairs |
//! | [`provider`] | the `Provider` trait and every backend, endpoint pools, the adapter of the embedded model (`cai-local`) |
//! | [`template`], [`cost`], [`error`], [`logging`], `digest`, `date` | templates, prices, error types, the log subscriber, hex of digests, UTC calendar dates |
//!
//! No `unsafe` here: the memory map and the vector kernels of the embedded
//! model are in the `cai-local` crate.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod cost;
pub(crate) mod date;
pub(crate) mod digest;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod input;
pub mod logging;
pub mod output;
pub mod pipeline;
pub mod provider;
pub mod serve;
pub mod template;

/// `--version`: the package version, and the git commit when built from a
/// checkout (see `build.rs`).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("CAI_GIT_SUFFIX"));
