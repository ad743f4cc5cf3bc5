//! OpenAI-compatible services as one table: name → base URL, key variable.
//!
//! Every entry is served by the one [`super::openai::OpenAi`] client; only
//! the URL, the key variable and the default model differ. `--provider
//! NAME` picks an entry; `--base-url` overrides its URL (a preset then only
//! names the key variable); `--api-key-env` overrides its key variable.
//! Local servers need no key: one is sent only if the variable is set.
//!
//! | preset | base URL | key variable | notes |
//! |---|---|---|---|
//! | `openai` | `https://api.openai.com/v1` | `OPENAI_API_KEY` | default model `gpt-4o-mini` |
//! | `groq` | `https://api.groq.com/openai/v1` | `GROQ_API_KEY` | e.g. `llama-3.1-8b-instant`; rejects `logprobs` and `n` > 1 |
//! | `mistral` | `https://api.mistral.ai/v1` | `MISTRAL_API_KEY` | e.g. `mistral-small-latest` |
//! | `together` | `https://api.together.xyz/v1` | `TOGETHER_API_KEY` | model ids like `meta-llama/Llama-3.3-70B-Instruct-Turbo` |
//! | `deepseek` | `https://api.deepseek.com/v1` | `DEEPSEEK_API_KEY` | `deepseek-chat`; the `/v1` is not a model version |
//! | `openrouter` | `https://openrouter.ai/api/v1` | `OPENROUTER_API_KEY` | model ids like `openai/gpt-4o-mini` |
//! | `hf-router` | `https://router.huggingface.co/v1` | `HF_TOKEN` | Hugging Face Inference Providers; `model:provider` picks one |
//! | `vllm` | `http://127.0.0.1:8000/v1` | none | `vllm serve MODEL` |
//! | `tgi` | `http://127.0.0.1:8080/v1` | none | TGI's Messages API |
//! | `llamacpp` | `http://127.0.0.1:8080/v1` | none | `llama-server` |
//! | `ollama` | `http://127.0.0.1:11434/v1` | none | `ollama serve`; model e.g. `llama3.2` |
//!
//! Base URLs are those the services document for OpenAI client libraries
//! (checked November 2025).

/// One OpenAI-compatible service.
#[derive(Debug, PartialEq, Eq)]
pub struct Preset {
    /// The `--provider` value.
    pub name: &'static str,
    /// API root; requests go to `{base_url}/chat/completions`.
    pub base_url: &'static str,
    /// Environment variable holding the key; `None` for local servers.
    pub key_var: Option<&'static str>,
    /// Model sent when `--model` is not given; `None` means `--model` is
    /// required (the service has no sensible default).
    pub default_model: Option<&'static str>,
    /// One line for `--help`.
    pub notes: &'static str,
}

impl Preset {
    /// A hosted service (needs a key), as opposed to a server on this machine.
    pub fn is_hosted(&self) -> bool {
        self.key_var.is_some()
    }
}

/// Model sent to a local server when none is named: vLLM, llama.cpp and
/// TGI serve one model and accept any name.
pub const LOCAL_DEFAULT_MODEL: &str = "default";

/// The table.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "openai",
        base_url: "https://api.openai.com/v1",
        key_var: Some("OPENAI_API_KEY"),
        default_model: Some("gpt-4o-mini"),
        notes: "OpenAI, or any OpenAI-compatible server given --base-url",
    },
    Preset {
        name: "groq",
        base_url: "https://api.groq.com/openai/v1",
        key_var: Some("GROQ_API_KEY"),
        default_model: None,
        notes: "Groq",
    },
    Preset {
        name: "mistral",
        base_url: "https://api.mistral.ai/v1",
        key_var: Some("MISTRAL_API_KEY"),
        default_model: None,
        notes: "Mistral AI",
    },
    Preset {
        name: "together",
        base_url: "https://api.together.xyz/v1",
        key_var: Some("TOGETHER_API_KEY"),
        default_model: None,
        notes: "Together AI",
    },
    Preset {
        name: "deepseek",
        base_url: "https://api.deepseek.com/v1",
        key_var: Some("DEEPSEEK_API_KEY"),
        default_model: Some("deepseek-chat"),
        notes: "DeepSeek",
    },
    Preset {
        name: "openrouter",
        base_url: "https://openrouter.ai/api/v1",
        key_var: Some("OPENROUTER_API_KEY"),
        default_model: None,
        notes: "OpenRouter",
    },
    Preset {
        name: "hf-router",
        base_url: "https://router.huggingface.co/v1",
        key_var: Some("HF_TOKEN"),
        default_model: None,
        notes: "Hugging Face Inference Providers (OpenAI-compatible router)",
    },
    Preset {
        name: "vllm",
        base_url: "http://127.0.0.1:8000/v1",
        key_var: None,
        default_model: Some(LOCAL_DEFAULT_MODEL),
        notes: "local vLLM server",
    },
    Preset {
        name: "tgi",
        base_url: "http://127.0.0.1:8080/v1",
        key_var: None,
        default_model: Some(LOCAL_DEFAULT_MODEL),
        notes: "local Text Generation Inference (Messages API)",
    },
    Preset {
        name: "llamacpp",
        base_url: "http://127.0.0.1:8080/v1",
        key_var: None,
        default_model: Some(LOCAL_DEFAULT_MODEL),
        notes: "local llama.cpp server",
    },
    Preset {
        name: "ollama",
        base_url: "http://127.0.0.1:11434/v1",
        key_var: None,
        default_model: None,
        notes: "local Ollama",
    },
];

/// The preset called `name`.
pub fn get(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_urls_wellformed() {
        let mut names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PRESETS.len());
        for p in PRESETS {
            assert!(reqwest::Url::parse(p.base_url).is_ok(), "{}", p.name);
            assert!(!p.base_url.ends_with('/'), "{}", p.name);
            // Hosted services use TLS; keyless ones are on this machine.
            assert_eq!(p.is_hosted(), p.base_url.starts_with("https://"));
        }
    }
}
