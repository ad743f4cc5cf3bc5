//! An embedded GGUF chat model run in-process on the CPU.
//!
//! [`Model::load`] maps a GGUF file once (llama, Mistral, Qwen2, Qwen3,
//! Gemma 1–3 architectures), builds its tokenizer from the file's own metadata and
//! then serves generation requests from any number of threads or tasks.
//! Each request is a prompt already rendered as text (the caller owns the
//! chat template; [`Metadata::chat_template`] is the model's own) plus its
//! [`Sampling`] settings. All admitted requests run on one generation thread
//! (`batch`), which advances them together — one pass over the weights per
//! step — starting each from the longest prefix already computed (`cache`).
//!
//! Sampling uses the request's temperature, top-p and seed ([`DEFAULT_SEED`]
//! when none is given, so runs are reproducible); a sequence's output does
//! not depend on what it was batched with or whether its prefix came from
//! the cache. When asked ([`Sampling::top_logprobs`]), a [`Generation`]
//! carries the log-probabilities of the first generated token's top
//! candidates, which is what a judge reads.
//!
//! The matrix and attention kernels pick the fastest path the CPU has
//! ([`Isa::detect`]); [`ISA_ENV`] or [`LoadOptions::isa`] force one path, so
//! the paths of other CPUs can be tested on any machine. This crate holds
//! all the `unsafe` code of `cai`: the memory map, the vector kernels and
//! one allocator setting ([`host`]).

mod batch;
mod cache;
pub mod host;
mod kernels;
mod model;
mod sampling;
pub mod tokenizer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use self::batch::{Job, Outcome, Stats};
use self::cache::PrefixCache;
pub use self::kernels::{Isa, IsaError, ISA_ENV};
use self::model::{GgufFile, Transformer};
pub use self::tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};

/// Seed used when a request has none, so a run without a seed is still
/// reproducible.
pub const DEFAULT_SEED: u64 = 0x00C0_FFEE;

/// Sequences generated together by default. Beyond a handful the step time
/// grows about linearly on a small CPU, so more only adds latency.
pub const DEFAULT_MAX_BATCH: usize = 8;

/// Prompt-plus-reply tokens per running sequence that the default prefix
/// cache is sized for (see [`LoadOptions::cache_bytes`]): a chain's
/// critique and revision requests extend a conversation of about this size.
pub const CACHE_TOKENS_PER_SEQUENCE: usize = 1024;

/// Why the model could not be loaded or run. Every variant about the file
/// names it.
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
    #[error("{} is a model of architecture {arch:?}; supported: llama (also Mistral, TinyLlama, SmolLM), qwen2, qwen3, gemma, gemma2, gemma3", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{}: {source}", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: TokenizerError,
    },
    /// [`ISA_ENV`] holds a name that is not a path, or one this CPU lacks.
    #[error("{ISA_ENV}={value:?}: {source}")]
    IsaEnv {
        value: String,
        #[source]
        source: IsaError,
    },
    /// [`LoadOptions::isa`] asks for a path this CPU lacks.
    #[error(transparent)]
    Isa(#[from] IsaError),
    #[error("the prompt has {tokens} tokens; the model's context holds {context}")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("cannot start the local model threads: {0}")]
    Threads(#[source] Arc<rayon::ThreadPoolBuildError>),
    #[error("local inference failed: {0}")]
    Inference(String),
    #[error("the local model thread stopped")]
    Stopped,
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

    /// Whether the error belongs to one request (its prompt) rather than to
    /// the model: other requests can still succeed.
    pub fn is_per_request(&self) -> bool {
        matches!(
            self,
            LocalError::PromptTooLong { .. } | LocalError::Inference(_)
        )
    }
}

/// How [`Model::load`] sets the engine up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Sequences generated together (values below 1 count as 1); further
    /// requests wait their turn.
    pub max_batch: usize,
    /// Bound of the prefix cache in bytes (0 turns it off). `None` sizes it
    /// by what a run can reuse: the KV state of [`CACHE_TOKENS_PER_SEQUENCE`]
    /// tokens (at most the context) for each of `max_batch` sequences, plus
    /// one more for the shared system prompt — not by free memory, which
    /// let a small run grow to gigabytes.
    pub cache_bytes: Option<usize>,
    /// The kernels' ISA path; `None` is [`ISA_ENV`] when set, else the
    /// fastest path the CPU has.
    pub isa: Option<Isa>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            cache_bytes: None,
            isa: None,
        }
    }
}

/// What the GGUF file says about the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// `general.architecture`: `llama`, `qwen2`, `qwen3`, …
    pub family: String,
    /// `general.name`, when the file has one.
    pub name: Option<String>,
    /// The context window in tokens (prompt plus reply).
    pub context_length: usize,
    /// The Jinja chat template (`tokenizer.chat_template`), when present.
    pub chat_template: Option<String>,
    /// Texts of the beginning- and end-of-sequence tokens (empty when the
    /// vocabulary has none), which chat templates refer to.
    pub bos_token: String,
    pub eos_token: String,
    pub vocab_size: usize,
}

/// How to sample one reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub max_tokens: u32,
    /// 0 is greedy decoding.
    pub temperature: f32,
    pub top_p: f32,
    /// [`DEFAULT_SEED`] when `None`.
    pub seed: Option<u64>,
    /// The reply ends before the first of these strings.
    pub stop: Vec<String>,
    /// Report the `k` most likely first tokens with their log-probabilities.
    pub top_logprobs: Option<u8>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            top_logprobs: None,
        }
    }
}

/// One generation: a prompt rendered with the model's chat template (or
/// plain text), and how to sample its reply.
#[derive(Clone, Debug, PartialEq)]
pub struct GenRequest {
    pub prompt: String,
    pub sampling: Sampling,
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn token or a stop string.
    Stop,
    /// The token limit (or the context) was reached.
    Length,
}

/// One candidate first token and its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
}

/// A finished reply.
#[derive(Clone, Debug)]
pub struct Generation {
    pub text: String,
    /// The generated token ids, an end-of-turn token included; the text
    /// leaves out such control tokens and ends before a stop string.
    pub tokens: Vec<u32>,
    pub finish: Finish,
    /// The top candidates of the first generated token, most likely first,
    /// when [`Sampling::top_logprobs`] asked for them. While the first
    /// tokens carry no letter or digit (`(` before `A`) the candidates of
    /// the next position are reported with them as a prefix.
    pub first_token_logprobs: Option<Vec<TokenLogprob>>,
    pub stats: GenStats,
}

/// Token counts and timings of one generation.
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

/// What the generation thread shares with the handle.
pub(crate) struct Inner {
    model: Transformer,
    tokenizer: Tokenizer,
}

/// A loaded model: its weights, tokenizer and generation thread. Share it
/// by reference or behind an `Arc`; dropping it stops the thread once the
/// sequences it runs are done.
pub struct Model {
    inner: Arc<Inner>,
    metadata: Metadata,
    max_batch: usize,
    cache_bytes: usize,
    stats: Arc<Stats>,
    /// The generation thread's queue, started on first use.
    queue: OnceLock<Result<Sender<Job>, Arc<rayon::ThreadPoolBuildError>>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.inner.model.path())
            .field("family", &self.metadata.family)
            .field("max_batch", &self.max_batch)
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}

/// A submitted generation; await it, or [`Pending::wait`] from a thread
/// that is not running async tasks. Dropping it cancels the sequence.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Outcome>);

impl Pending {
    /// Blocks until the reply is done (not for use inside an async task).
    pub fn wait(self) -> Result<Generation, LocalError> {
        self.0.blocking_recv().map_err(|_| LocalError::Stopped)?
    }
}

impl Future for Pending {
    type Output = Result<Generation, LocalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| LocalError::Stopped).and_then(|g| g))
    }
}

impl Model {
    /// Maps and checks the model at `path` and builds its tokenizer. Fails
    /// with a [`LocalError`] naming the file when it is missing, not GGUF,
    /// truncated, or of an unsupported architecture, and when the ISA path
    /// asked for cannot run here.
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self, LocalError> {
        let isa = match options.isa {
            Some(isa) => isa.check()?,
            None => {
                Isa::from_env().map_err(|(value, source)| LocalError::IsaEnv { value, source })?
            }
        };
        let gguf = GgufFile::open(path)?;
        let spec = tokenizer_spec(&gguf);
        let model = Transformer::load(gguf, isa)?;
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
        let g = model.gguf();
        let metadata = Metadata {
            family: g.meta_str("general.architecture").unwrap_or("").to_string(),
            name: g.meta_str("general.name").map(str::to_string),
            context_length: model.cfg.context,
            chat_template: g.meta_str("tokenizer.chat_template").map(str::to_string),
            bos_token: token(tokenizer.bos_id()),
            eos_token: token(tokenizer.eos_id()),
            vocab_size: model.cfg.vocab,
        };
        let max_batch = options.max_batch.max(1);
        let cache_bytes = options.cache_bytes.unwrap_or_else(|| {
            model.cfg.kv_bytes_per_token()
                * CACHE_TOKENS_PER_SEQUENCE.min(model.cfg.context)
                * (max_batch + 1)
        });
        Ok(Self {
            inner: Arc::new(Inner { model, tokenizer }),
            metadata,
            max_batch,
            cache_bytes,
            stats: Arc::new(Stats::default()),
            queue: OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        self.inner.model.path()
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The kernels' ISA path.
    pub fn isa(&self) -> Isa {
        self.inner.model.isa()
    }

    /// Sequences generated together.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Counters of the generation thread (cache use, tokens reused).
    pub fn stats(&self) -> EngineStats {
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

    /// The prompt's token ids as the model reads them (with the
    /// beginning-of-sequence token when the vocabulary asks for one).
    pub fn prompt_ids(&self, prompt: &str) -> Vec<u32> {
        let tok = &self.inner.tokenizer;
        let mut ids = tok.encode(prompt);
        if tok.add_bos() {
            if let Some(bos) = tok.bos_id() {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        ids
    }

    /// Queues a request on the generation thread (started on first use).
    /// A prompt that does not fit the context fails here.
    pub fn submit(&self, req: GenRequest) -> Result<Pending, LocalError> {
        let ids = self.prompt_ids(&req.prompt);
        let context = self.metadata.context_length;
        if ids.is_empty() || ids.len() >= context {
            return Err(LocalError::PromptTooLong {
                tokens: ids.len(),
                context,
            });
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            ids,
            params: req.sampling,
            reply,
        };
        let queue = self.queue.get_or_init(|| self.start()).as_ref();
        queue
            .map_err(|e| LocalError::Threads(Arc::clone(e)))?
            .send(job)
            .map_err(|_| LocalError::Stopped)?;
        Ok(Pending(rx))
    }

    /// Runs one generation and waits for it (blocking; in async code,
    /// await [`Model::submit`]'s [`Pending`] instead).
    pub fn generate(&self, req: GenRequest) -> Result<Generation, LocalError> {
        self.submit(req)?.wait()
    }

    /// Starts the generation loop on a pool of its own.
    fn start(&self) -> Result<Sender<Job>, Arc<rayon::ThreadPoolBuildError>> {
        let (tx, jobs) = std::sync::mpsc::channel();
        let inner = Arc::clone(&self.inner);
        let (max_batch, cache) = (self.max_batch, PrefixCache::new(self.cache_bytes));
        let stats = Arc::clone(&self.stats);
        // The loop runs on one of the model's own pool threads, so each
        // step's parallel products are forked from inside the pool (the
        // loop's thread works on them too) rather than handed over and
        // waited for from outside, a sleep and a wake-up each, hundreds of
        // times per step. Detached: it ends when the model (the only
        // sender) is dropped and its last sequence is done.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("cai-local-{i}"))
            .build()
            .map_err(Arc::new)?;
        // The loop keeps its pool: dropping the last handle lets the idle
        // threads exit.
        let pool = Arc::new(pool);
        let keep = Arc::clone(&pool);
        pool.spawn(move || {
            batch::run(inner, jobs, max_batch, cache, stats);
            drop(keep);
        });
        Ok(tx)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named() {
        let err =
            Model::load(Path::new("/nonexistent/model.gguf"), LoadOptions::default()).unwrap_err();
        assert!(matches!(err, LocalError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }

    #[test]
    fn isa_names_parse_and_unknown_ones_are_errors() {
        for isa in Isa::available() {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
            assert_eq!(isa.check(), Ok(isa));
        }
        let err = "sse9".parse::<Isa>().unwrap_err();
        assert!(matches!(err, IsaError::Unknown { .. }), "{err:?}");
        assert!(err.to_string().contains("scalar"), "{err}");
    }
}
