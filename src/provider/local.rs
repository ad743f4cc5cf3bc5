//! The `local` provider: the embedded GGUF model of the `cai-local` crate
//! behind the [`Provider`] trait.
//!
//! This adapter owns what is about chats rather than tokens: it renders a
//! conversation with the model's own chat template (ChatML when the file has
//! none; the built-in Gemma one for Gemma models, see
//! [`chat_template::source_for`]), maps [`GenParams`] to the engine's
//! sampling settings, and the engine's [`Generation`] and errors back to a
//! [`Completion`] and a [`ProviderError`]. Everything below — tokenizer,
//! kernels, batching, the prefix cache — is in `cai_local`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
pub use cai_local::{EngineStats, LoadOptions, LocalError, Model, DEFAULT_MAX_BATCH};
use cai_local::{Finish, GenRequest, Generation, Sampling};

use super::chat_template::{self, ChatTemplate};
use super::{
    ChatRequest, Completion, FinishReason, GenParams, Message, Provider, ProviderError, RateHints,
    Reply, TokenLogprob, Usage,
};

/// Why the local provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LocalLoadError {
    #[error(transparent)]
    Engine(#[from] LocalError),
    #[error("{}: the chat template does not compile: {source}", path.display())]
    Template {
        path: PathBuf,
        #[source]
        source: minijinja::Error,
    },
}

/// One loaded GGUF model shared by all requests, and its chat template.
#[derive(Debug)]
pub struct LocalProvider {
    engine: Model,
    template: ChatTemplate,
    model_name: String,
}

impl LocalProvider {
    /// Loads the model at `path` (see [`Model::load`]) and compiles its chat
    /// template.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self, LocalLoadError> {
        let engine = Model::load(path, options)?;
        let meta = engine.metadata();
        let source = chat_template::source_for(&meta.family, meta.chat_template.as_deref());
        let template =
            ChatTemplate::new(source, &meta.bos_token, &meta.eos_token).map_err(|source| {
                LocalLoadError::Template {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let model_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self {
            engine,
            template,
            model_name,
        })
    }

    /// The engine, for its tokenizer, metadata and counters.
    pub fn engine(&self) -> &Model {
        &self.engine
    }

    pub fn max_concurrent(&self) -> usize {
        self.engine.max_batch()
    }

    /// The prompt string the model sees for `messages`: its own chat
    /// template with the assistant header appended.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String, ProviderError> {
        self.template.render(messages, true).map_err(|e| {
            ProviderError::Unprocessable(format!(
                "the chat template failed to render the conversation: {e}"
            ))
        })
    }

    fn request(&self, req: &ChatRequest) -> Result<GenRequest, ProviderError> {
        Ok(GenRequest {
            prompt: self.render_prompt(&req.messages)?,
            sampling: sampling(&req.params),
        })
    }

    /// Runs one generation and waits for it (blocking; not for use inside
    /// an async task — [`Provider::complete`] is the async form).
    pub fn generate(&self, req: &ChatRequest) -> Result<Completion, ProviderError> {
        let g = self.engine.generate(self.request(req)?).map_err(classify)?;
        Ok(completion(g))
    }
}

fn sampling(p: &GenParams) -> Sampling {
    Sampling {
        max_tokens: p.max_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        seed: p.seed,
        stop: p.stop.clone(),
        top_logprobs: p.top_logprobs,
    }
}

fn completion(g: Generation) -> Completion {
    Completion {
        text: g.text,
        finish: match g.finish {
            Finish::Stop => FinishReason::Stop,
            Finish::Length => FinishReason::Length,
        },
        usage: Some(Usage {
            prompt_tokens: g.stats.prompt_tokens as u64,
            completion_tokens: g.stats.completion_tokens as u64,
            // KV state reused from the engine's prefix cache: free here,
            // but counted like a provider's cache hits.
            cached_tokens: g.stats.cached_tokens as u64,
            cache_write_tokens: 0,
        }),
        first_token_logprobs: g.first_token_logprobs.map(|tops| {
            tops.into_iter()
                .map(|t| TokenLogprob {
                    token: t.token,
                    logprob: t.logprob,
                })
                .collect()
        }),
        more: Vec::new(),
    }
}

/// A prompt the model cannot take rejects that prompt and keeps the run;
/// anything else about the model stops it.
fn classify(e: LocalError) -> ProviderError {
    if e.is_per_request() {
        ProviderError::Unprocessable(e.to_string())
    } else {
        ProviderError::Fatal(e.to_string())
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn model(&self) -> &str {
        &self.model_name
    }

    fn endpoint(&self) -> String {
        self.engine.path().display().to_string()
    }

    fn key_var(&self) -> Option<&str> {
        None
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let prompt = self.render_prompt(&req.messages)?;
        Ok(serde_json::json!({ "model": self.endpoint(), "prompt": prompt, "params": req.params }))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let prompt = self.render_prompt(&req.messages)?;
        self.complete_text(&prompt, req).await
    }

    async fn complete_text(&self, prompt: &str, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let request = GenRequest {
            prompt: prompt.to_string(),
            sampling: sampling(&req.params),
        };
        // Dropping the pending reply (a cancelled caller) drops the sequence.
        let g = self
            .engine
            .submit(request)
            .map_err(classify)?
            .await
            .map_err(classify)?;
        Ok(Reply {
            completion: completion(g),
            rate: RateHints::default(),
        })
    }
}
