//! The embedded local model: a GGUF chat model run in-process on the CPU.
//!
//! [`LocalProvider::load`] maps a llama-architecture GGUF file once, builds
//! its tokenizer and chat template from the file's own metadata, and then
//! serves [`Provider::complete`] calls from any number of tasks: each call
//! renders the conversation with the model's template, runs on tokio's
//! blocking pool with its own KV cache, and samples with the request's
//! temperature, top-p and seed (a fixed default seed when none is given, so
//! runs are reproducible). A semaphore admits at most one generation per core
//! by default ([`LocalProvider::with_max_concurrent`] changes it); the
//! matrix products inside a generation share rayon's pool.

mod kernels;
mod model;
mod sampling;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use self::model::{GgufFile, Model};
use self::sampling::Sampler;
pub use self::tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};
use super::chat_template::ChatTemplate;
use super::{
    ChatRequest, Completion, FinishReason, Message, Provider, ProviderError, RateHints, Reply,
    Usage,
};

/// Seed used when a request has none, so a run without `--seed` is still
/// reproducible.
pub const DEFAULT_SEED: u64 = 0x00C0_FFEE;

/// Why the local model could not be loaded or run. Every variant about the
/// file names it.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("model file {} not found", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read model file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a usable GGUF model: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} is a model of architecture {arch:?}; only \"llama\" GGUF models are supported", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{}: {source}", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    #[error("{}: the chat template does not compile: {source}", path.display())]
    Template {
        path: PathBuf,
        #[source]
        source: minijinja::Error,
    },
    #[error("the chat template failed to render the conversation: {0}")]
    Render(String),
    #[error("local inference failed: {0}")]
    Inference(String),
}

impl LocalError {
    fn open(path: &Path, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            LocalError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            LocalError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    }
}

/// Timings of one generation, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default)]
pub struct GenStats {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Time spent processing the prompt.
    pub prefill: Duration,
    /// Time spent generating after the prompt.
    pub decode: Duration,
}

struct Inner {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

/// The `local` provider: one loaded GGUF model shared by all requests.
pub struct LocalProvider {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    model_name: String,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("path", &self.inner.model.path())
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// Maps and checks the model at `path`, builds its tokenizer and chat
    /// template. Fails with a [`LocalError`] naming the file when it is
    /// missing, not GGUF, truncated, or not a llama model.
    pub fn load(path: &Path) -> Result<Self, LocalError> {
        let gguf = GgufFile::open(path)?;
        let spec = tokenizer_spec(&gguf);
        let model = Model::load(gguf)?;
        let tokenizer = Tokenizer::from_spec(&spec).map_err(|source| LocalError::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?;
        if tokenizer.vocab_size() != model.cfg.vocab {
            return Err(LocalError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "the tokenizer has {} tokens but the embeddings have {} rows",
                    tokenizer.vocab_size(),
                    model.cfg.vocab
                ),
            });
        }
        let token = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let (bos, eos) = (token(tokenizer.bos_id()), token(tokenizer.eos_id()));
        let template = match model.gguf().meta_str("tokenizer.chat_template") {
            Some(src) => ChatTemplate::new(src, bos, eos),
            // Models without a template are almost always ChatML-trained.
            None => ChatTemplate::new(
                super::chat_template::BUILTIN
                    .iter()
                    .find(|(n, _)| *n == "chatml")
                    .map_or("", |(_, s)| s),
                bos,
                eos,
            ),
        }
        .map_err(|source| LocalError::Template {
            path: path.to_path_buf(),
            source,
        })?;
        let max_concurrent = std::thread::available_parallelism().map_or(1, |n| n.get());
        let model_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                template,
            }),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            model_name,
        })
    }

    /// Sets how many generations may run at once (default: one per core;
    /// values below 1 count as 1).
    pub fn with_max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n.max(1);
        self.permits = Arc::new(Semaphore::new(self.max_concurrent));
        self
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    pub fn path(&self) -> &Path {
        self.inner.model.path()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The model's context window in tokens (prompt plus completion).
    pub fn context_length(&self) -> usize {
        self.inner.model.cfg.context
    }

    /// The prompt string the model sees for `messages`: its own chat
    /// template with the assistant header appended.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<String, LocalError> {
        self.inner.render(messages)
    }

    /// Runs one generation on the calling thread (blocking). The async
    /// [`Provider::complete`] calls this on tokio's blocking pool.
    pub fn generate(&self, req: &ChatRequest) -> Result<(Completion, GenStats), LocalError> {
        self.inner.generate(req)
    }
}

impl Inner {
    fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
        self.template
            .render(messages, true)
            .map_err(|e| LocalError::Render(e.to_string()))
    }

    fn generate(&self, req: &ChatRequest) -> Result<(Completion, GenStats), LocalError> {
        let prompt = self.render(&req.messages)?;
        let tok = &self.tokenizer;
        let mut ids = tok.encode(&prompt);
        if tok.add_bos() {
            if let Some(bos) = tok.bos_id() {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        let context = self.model.cfg.context;
        if ids.is_empty() || ids.len() >= context {
            return Err(LocalError::Inference(format!(
                "the prompt has {} tokens; the model's context holds {context}",
                ids.len()
            )));
        }
        let p = &req.params;
        let budget = (p.max_tokens as usize).min(context - ids.len());
        let mut stats = GenStats {
            prompt_tokens: ids.len(),
            ..GenStats::default()
        };
        let stops: Vec<&[u8]> = p
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes())
            .collect();
        let longest_stop = stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut out = Vec::new();
        let mut finish = FinishReason::Length;
        if budget > 0 {
            let mut sampler = Sampler::new(p.temperature, p.top_p, p.seed.unwrap_or(DEFAULT_SEED));
            let mut sess = self.model.session();
            let start = Instant::now();
            let mut next = sampler.sample(self.model.forward(&ids, &mut sess)?);
            stats.prefill = start.elapsed();
            let start = Instant::now();
            loop {
                stats.completion_tokens += 1;
                if tok.is_end(next) {
                    finish = FinishReason::Stop;
                    break;
                }
                let before = out.len();
                if !tok.is_control(next) {
                    out.extend_from_slice(tok.token_bytes(next));
                }
                let from = before.saturating_sub(longest_stop);
                if let Some(cut) = find_stop(&out, &stops, from) {
                    out.truncate(cut);
                    finish = FinishReason::Stop;
                    break;
                }
                if stats.completion_tokens >= budget {
                    break;
                }
                next = sampler.sample(self.model.forward(&[next], &mut sess)?);
            }
            stats.decode = start.elapsed();
        }
        let completion = Completion {
            text: String::from_utf8_lossy(&out).into_owned(),
            finish,
            usage: Some(Usage {
                prompt_tokens: stats.prompt_tokens as u64,
                completion_tokens: stats.completion_tokens as u64,
            }),
            ..Completion::default()
        };
        Ok((completion, stats))
    }
}

/// The earliest start of any stop string in `text[from..]`.
fn find_stop(text: &[u8], stops: &[&[u8]], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            text.get(from..)?
                .windows(s.len())
                .position(|w| w == *s)
                .map(|i| from + i)
        })
        .min()
}

/// The tokenizer fields of the GGUF metadata.
fn tokenizer_spec(g: &GgufFile) -> TokenizerSpec {
    use candle_core::quantized::gguf_file::Value;
    let strings = |key: &str| -> Vec<String> {
        match g.meta(key) {
            Some(Value::Array(vs)) => vs
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    _ => String::new(),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let token_types = match g.meta("tokenizer.ggml.token_type") {
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| match v {
                Value::I32(i) => *i,
                Value::U32(u) => *u as i32,
                _ => 1,
            })
            .collect(),
        _ => Vec::new(),
    };
    let id = |key: &str| g.meta_u64(key).map(|v| v as u32);
    TokenizerSpec {
        model: g.meta_str("tokenizer.ggml.model").unwrap_or("").to_string(),
        pre: g.meta_str("tokenizer.ggml.pre").map(str::to_string),
        tokens: strings("tokenizer.ggml.tokens"),
        merges: strings("tokenizer.ggml.merges"),
        token_types,
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        eot_id: id("tokenizer.ggml.eot_token_id"),
        add_bos: g.meta_bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
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
        self.inner.model.path().display().to_string()
    }

    fn key_var(&self) -> Option<&str> {
        None
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let prompt = self
            .render_prompt(&req.messages)
            .map_err(|e| ProviderError::Unprocessable(e.to_string()))?;
        Ok(serde_json::json!({ "model": self.endpoint(), "prompt": prompt, "params": req.params }))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProviderError::Fatal("the local model was shut down".into()))?;
        let inner = Arc::clone(&self.inner);
        let req = req.clone();
        // The permit moves into the blocking task: a cancelled caller does not
        // free the slot while the model is still busy with its request.
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inner.generate(&req)
        })
        .await
        .map_err(|e| ProviderError::Fatal(format!("local model task failed: {e}")))?;
        let (completion, _) = result.map_err(|e| match e {
            // Specific to this conversation: reject the prompt, keep the run.
            LocalError::Inference(_) | LocalError::Render(_) => {
                ProviderError::Unprocessable(e.to_string())
            }
            _ => ProviderError::Fatal(e.to_string()),
        })?;
        Ok(Reply {
            completion,
            rate: RateHints::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_across_token_boundaries() {
        let stops: Vec<&[u8]> = vec![b"\nUser:", b"END"];
        assert_eq!(find_stop(b"hello\nUser: hi", &stops, 0), Some(5));
        assert_eq!(find_stop(b"xxEND\nUser:", &stops, 0), Some(2));
        assert_eq!(find_stop(b"nothing here", &stops, 3), None);
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = LocalProvider::load(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, LocalError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }
}
