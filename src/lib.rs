//! `cai`: Constitutional AI data generation.
//!
//! Prompts and a constitution go in; a language model is driven through
//! initial answer → critique → revision loops; SFT and preference datasets
//! come out. `main.rs` only parses arguments and maps the result to an exit
//! code; everything else lives in the modules below.

pub mod model_store;
pub mod provider;
