//! The embedded local model: a GGUF chat model run in-process on the CPU.
//!
//! [`LocalProvider::load`] maps a GGUF file once (llama, Mistral, Qwen2,
//! Qwen3 architectures), builds its tokenizer and chat template from the
//! file's own metadata, and then serves [`Provider::complete`] calls from
//! any number of tasks. Each call renders the conversation with the model's
//! template and hands the tokens to one generation thread
//! ([`batch`]), which runs all admitted sequences together — one pass over
//! the weights per step for all of them — starting each from the longest
//! prefix already computed ([`cache`]). Sampling uses the request's
//! temperature, top-p and seed (a fixed default seed when none is given, so
//! runs are reproducible); a sequence's output does not depend on what it
//! was batched with or whether its prefix came from the cache. When asked
//! (`top_logprobs`), the reply carries the log-probabilities of the first
//! generated token's top candidates, as OpenAI's API does.

mod batch;
mod cache;
mod kernels;
mod model;
mod sampling;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use self::batch::{Job, Outcome, Stats};
use self::cache::PrefixCache;
use self::model::{GgufFile, Model};
pub use self::tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};
use super::chat_template::ChatTemplate;
use super::{ChatRequest, Completion, Message, Provider, ProviderError, RateHints, Reply};

/// Seed used when a request has none, so a run without `--seed` is still
/// reproducible.
pub const DEFAULT_SEED: u64 = 0x00C0_FFEE;

/// Sequences generated together by default. Beyond a handful the step time
/// grows about linearly on a small CPU, so more only adds latency.
pub const DEFAULT_MAX_BATCH: usize = 8;

/// The default prefix-cache size: an eighth of the memory available when
/// the model loads, between 256 MiB and 2 GiB (512 MiB when unknown).
pub fn default_cache_mb() -> usize {
    let available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<usize>().ok())
    });
    available_kib.map_or(512, |kib| (kib / 1024 / 8).clamp(256, 2048))
}

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
    #[error("{} is a model of architecture {arch:?}; supported: llama (also Mistral, TinyLlama, SmolLM), qwen2, qwen3", path.display())]
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
    /// Prompt tokens whose KV state came from the prefix cache or a
    /// running sequence instead of being computed.
    pub cached_tokens: usize,
    /// From submission to the first generated token (prompt processing,
    /// shared with the other sequences of each step).
    pub prefill: Duration,
    /// From the first generated token to the last.
    pub decode: Duration,
}

/// Counters of the generation thread since the model was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Bytes in the prefix cache now, the most it held, and its bound.
    pub cache_bytes: usize,
    pub cache_peak: usize,
    pub cache_limit: usize,
    /// Prompt tokens reused from earlier sequences, and computed.
    pub reused_tokens: u64,
    pub prefilled_tokens: u64,
    /// Replies cut off by their token limit that a retry with a larger
    /// limit continued instead of starting again.
    pub resumed: u64,
    /// Forward passes, and token rows processed in them.
    pub steps: u64,
    pub rows: u64,
}

pub(crate) struct Inner {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

/// The `local` provider: one loaded GGUF model shared by all requests.
pub struct LocalProvider {
    inner: Arc<Inner>,
    max_batch: usize,
    cache_bytes: usize,
    stats: Arc<Stats>,
    /// The generation thread's queue, started on first use.
    queue: OnceLock<Sender<Job>>,
    model_name: String,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("path", &self.inner.model.path())
            .field("max_batch", &self.max_batch)
            .field("cache_bytes", &self.cache_bytes)
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
            max_batch: DEFAULT_MAX_BATCH,
            cache_bytes: default_cache_mb() << 20,
            stats: Arc::new(Stats::default()),
            queue: OnceLock::new(),
            model_name,
        })
    }

    /// Sets how many sequences are generated together (default
    /// [`DEFAULT_MAX_BATCH`]; values below 1 count as 1); further requests
    /// wait their turn. Takes effect before the first request.
    pub fn with_max_concurrent(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_batch
    }

    /// Bounds the prefix cache to `mb` MiB (0 turns it off). Takes effect
    /// before the first request.
    pub fn with_cache_mb(mut self, mb: usize) -> Self {
        self.cache_bytes = mb << 20;
        self
    }

    /// Counters of the generation thread (cache use, tokens reused).
    pub fn engine_stats(&self) -> EngineStats {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        EngineStats {
            cache_bytes: s.cache_bytes.load(Relaxed),
            cache_peak: s.cache_peak.load(Relaxed),
            cache_limit: self.cache_bytes,
            reused_tokens: s.reused_tokens.load(Relaxed),
            prefilled_tokens: s.prefilled_tokens.load(Relaxed),
            resumed: s.resumed.load(Relaxed),
            steps: s.steps.load(Relaxed),
            rows: s.rows.load(Relaxed),
        }
    }

    /// Queues a request on the generation thread (started on first use).
    fn submit(&self, req: &ChatRequest) -> Result<oneshot::Receiver<Outcome>, LocalError> {
        let ids = self.inner.prompt_ids(req)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            ids,
            params: req.params.clone(),
            reply,
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, jobs) = std::sync::mpsc::channel();
            let inner = Arc::clone(&self.inner);
            let (max_batch, cache) = (self.max_batch, PrefixCache::new(self.cache_bytes));
            let stats = Arc::clone(&self.stats);
            // The loop runs on one of the model's own pool threads, so each
            // step's parallel products are forked from inside the pool (the
            // loop's thread works on them too) rather than handed over and
            // waited for from outside, a sleep and a wake-up each, hundreds
            // of times per step. Detached: it ends when the provider (the
            // only sender) is dropped and its last sequence is done.
            let pool = rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("cai-local-{i}"))
                .build();
            match pool {
                Ok(pool) => {
                    // The loop keeps its pool: dropping the last handle lets
                    // the idle threads exit.
                    let pool = Arc::new(pool);
                    let keep = Arc::clone(&pool);
                    pool.spawn(move || {
                        batch::run(inner, jobs, max_batch, cache, stats);
                        drop(keep);
                    });
                }
                Err(e) => tracing::error!("cannot start the local model threads: {e}"),
            }
            tx
        });
        queue
            .send(job)
            .map_err(|_| LocalError::Inference("the local model thread is not running".into()))?;
        Ok(rx)
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

    /// The logits after each position of `ids` (from an empty context),
    /// computed on the calling thread one position at a time; for checking
    /// the model against other implementations.
    pub fn position_logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, LocalError> {
        let model = &self.inner.model;
        let mut sess = model.session();
        let mut scratch = model::Scratch::default();
        ids.iter()
            .map(|&id| {
                model
                    .forward(&[id], &mut sess, &mut scratch)
                    .map(<[f32]>::to_vec)
            })
            .collect()
    }

    /// Runs one generation and waits for it (blocking; not for use inside
    /// an async task — [`Provider::complete`] is the async form).
    pub fn generate(&self, req: &ChatRequest) -> Result<(Completion, GenStats), LocalError> {
        self.submit(req)?
            .blocking_recv()
            .map_err(|_| LocalError::Inference("the local model thread stopped".into()))?
    }
}

impl Inner {
    fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
        self.template
            .render(messages, true)
            .map_err(|e| LocalError::Render(e.to_string()))
    }

    /// The prompt's token ids, checked against the context window.
    fn prompt_ids(&self, req: &ChatRequest) -> Result<Vec<u32>, LocalError> {
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
        Ok(ids)
    }
}

/// The earliest start of any stop string in `text[from..]`.
fn find_stop<S: AsRef<[u8]>>(text: &[u8], stops: &[S], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter_map(|s| {
            let s = s.as_ref();
            text.get(from..)?
                .windows(s.len())
                .position(|w| w == s)
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
    let scores = match g.meta("tokenizer.ggml.scores") {
        Some(Value::Array(vs)) => vs
            .iter()
            .map(|v| match v {
                Value::F32(f) => *f,
                Value::F64(f) => *f as f32,
                _ => 0.0,
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
        scores,
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        add_space_prefix: g.meta_bool("tokenizer.ggml.add_space_prefix"),
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
        let classify = |e: LocalError| match e {
            // Specific to this conversation: reject the prompt, keep the run.
            LocalError::Inference(_) | LocalError::Render(_) => {
                ProviderError::Unprocessable(e.to_string())
            }
            _ => ProviderError::Fatal(e.to_string()),
        };
        // Dropping the receiver (a cancelled caller) drops the sequence.
        let rx = self.submit(req).map_err(classify)?;
        let (completion, _) = rx
            .await
            .map_err(|_| ProviderError::Fatal("the local model thread stopped".into()))?
            .map_err(classify)?;
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
