//! Integration tests for endpoints and configuration: Anthropic and Gemini
//! wire formats, OpenAI-compatible presets, cai.toml/.env/environment/flag
//! precedence, dry-run and cost cap, that keys never leak, the provider
//! table, and the first run on an empty model cache. Every server is a
//! wiremock instance or the in-repo fake on 127.0.0.1.

mod anthropic;
mod cost;
mod first_run;
mod gemini;
mod presets;
mod registry;
mod secrets;
mod settings;
mod support;
