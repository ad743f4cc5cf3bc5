//! Integration tests for endpoints and configuration: Anthropic and Gemini
//! wire formats, OpenAI-compatible presets, cai.toml/.env/environment/flag
//! precedence, dry-run and cost cap, and that keys never leak. Every server
//! is a wiremock instance on 127.0.0.1.

mod anthropic;
mod cost;
mod gemini;
mod presets;
mod secrets;
mod settings;
mod support;
