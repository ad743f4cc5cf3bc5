//! OpenAI-compatible `chat/completions`.
