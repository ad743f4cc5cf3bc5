//! Every `--provider` value as one row of one table.
//!
//! A row says everything the rest of the program needs to know about a
//! provider kind or an OpenAI-compatible preset: the backend that speaks its
//! protocol, its default URL and model, the environment variables its key is
//! read from, how the key is sent, how its models are listed, what its models
//! cost, whether it has a batch API and a prompt cache, and which APIs it
//! speaks. The CLI's value list and help, the construction of providers
//! ([`super::build`]), `cai models` and the price lookup ([`crate::cost`]) are
//! all read from here.
//!
//! Adding an OpenAI-compatible service is one row. Adding a native protocol
//! is one backend file (implementing [`super::Provider`], including
//! `list_models`), one [`Backend`] variant with its constructor in
//! [`super::build`], and one row.
//!
//! | preset | base URL | key variable | notes |
//! |---|---|---|---|
//! | `openai` | `https://api.openai.com/v1` | `OPENAI_API_KEY` | default model `gpt-4o-mini` |
//! | `groq` | `https://api.groq.com/openai/v1` | `GROQ_API_KEY` | e.g. `llama-3.1-8b-instant`; rejects `logprobs` and `n` > 1 |
//! | `mistral` | `https://api.mistral.ai/v1` | `MISTRAL_API_KEY` | e.g. `mistral-small-latest` |
//! | `together` | `https://api.together.xyz/v1` | `TOGETHER_API_KEY` | model ids like `meta-llama/Llama-3.3-70B-Instruct-Turbo`; also `completions` |
//! | `deepseek` | `https://api.deepseek.com/v1` | `DEEPSEEK_API_KEY` | `deepseek-chat`; the `/v1` is not a model version |
//! | `openrouter` | `https://openrouter.ai/api/v1` | `OPENROUTER_API_KEY` | model ids like `openai/gpt-4o-mini` |
//! | `hf-router` | `https://router.huggingface.co/v1` | `HF_TOKEN` | Hugging Face Inference Providers; `model:provider` picks one |
//! | `vllm` | `http://127.0.0.1:8000/v1` | none | `vllm serve MODEL` |
//! | `tgi` | `http://127.0.0.1:8080/v1` | none | TGI's Messages API |
//! | `llamacpp` | `http://127.0.0.1:8080/v1` | none | `llama-server` |
//! | `ollama` | `http://127.0.0.1:11434/v1` | none | `ollama serve`; model e.g. `llama3.2` |
//!
//! `--api completions` (raw text through `{base}/completions`, for base
//! models) is accepted where the `apis` column lists it: `openai`,
//! `together`, `openrouter` and every server on this machine (vLLM, TGI,
//! llama.cpp, Ollama serve `/v1/completions`); `hf` and `local` take raw
//! text natively. Groq, Mistral, DeepSeek and the Hugging Face router
//! serve chat only.
//!
//! Base URLs are those the services document for OpenAI client libraries
//! (checked November 2025). With `--base-url` a row only names the key
//! variable (and the server may be a local one that needs no key).

use std::sync::LazyLock;

/// The code that speaks a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded GGUF model ([`super::local`]).
    Local,
    /// `POST {base}/chat/completions` ([`super::openai`]).
    OpenAi,
    /// Hugging Face Inference API / TGI `generate` ([`super::hf`]).
    Hf,
    /// Anthropic Messages ([`super::anthropic`]).
    Anthropic,
    /// Google `generateContent` ([`super::gemini`]).
    Gemini,
}

/// How a key travels with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No key is ever sent (the embedded model).
    None,
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// The key as the value of this header (`x-api-key`, `x-goog-api-key`).
    Header(&'static str),
}

impl Auth {
    /// The header that carries `key`, marked sensitive (never shown by
    /// `Debug`), made once per endpoint rather than per request; `None`
    /// with no key, or a key no header can hold (sending then fails with
    /// reqwest's own error, as before).
    pub fn header(
        self,
        key: Option<&secrecy::SecretString>,
    ) -> Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)> {
        use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
        use secrecy::ExposeSecret;
        let k = key?.expose_secret();
        let (name, mut value) = match self {
            Auth::None => return None,
            Auth::Bearer => (
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {k}")).ok()?,
            ),
            Auth::Header(name) => (
                HeaderName::from_static(name),
                HeaderValue::from_str(k).ok()?,
            ),
        };
        value.set_sensitive(true);
        Some((name, value))
    }

    /// Adds the key (when there is one) reqwest's own way: for a key
    /// [`Self::header`] could not hold, so the request fails as reqwest
    /// reports it.
    pub fn apply(
        self,
        req: reqwest::RequestBuilder,
        key: Option<&secrecy::SecretString>,
    ) -> reqwest::RequestBuilder {
        use secrecy::ExposeSecret;
        match (self, key) {
            (Auth::Bearer, Some(k)) => req.bearer_auth(k.expose_secret()),
            (Auth::Header(name), Some(k)) => req.header(name, k.expose_secret()),
            _ => req,
        }
    }
}

/// The model-list call a provider answers (`cai models`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelList {
    /// No list: the model is named with `--model`.
    None,
    /// `GET {base}/models`, one page, ids in `data[].id`.
    OpenAi,
    /// `GET {root}/v1/models?limit=1000`, paged by `after_id` while
    /// `has_more`, ids in `data[].id`.
    Anthropic,
    /// `GET {root}/v1beta/models?pageSize=1000`, paged by `pageToken`, ids in
    /// `models[].name` without the `models/` prefix.
    Gemini,
}

/// One row of a provider's price list.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriceRow {
    /// Model name (or prefix) as sent to the service.
    pub model: &'static str,
    /// USD per million input tokens.
    pub input_per_m: f64,
    /// USD per million output tokens.
    pub output_per_m: f64,
    /// When the price was read.
    pub as_of: &'static str,
    /// USD per million input tokens read from the prompt cache (the input
    /// price where the table knows no discount).
    pub cached_in_per_m: f64,
    /// USD per million input tokens written to the prompt cache (Anthropic
    /// 1.25x; the input price elsewhere).
    pub cache_write_per_m: f64,
    /// When the cache prices were read (`as_of` when there are none).
    pub cache_as_of: &'static str,
}

impl PriceRow {
    pub const fn new(
        model: &'static str,
        input_per_m: f64,
        output_per_m: f64,
        as_of: &'static str,
    ) -> Self {
        Self {
            model,
            input_per_m,
            output_per_m,
            as_of,
            cached_in_per_m: input_per_m,
            cache_write_per_m: input_per_m,
            cache_as_of: as_of,
        }
    }

    /// The row with its prompt-cache prices (USD per million tokens).
    pub const fn cache(mut self, read_per_m: f64, write_per_m: f64, as_of: &'static str) -> Self {
        self.cached_in_per_m = read_per_m;
        self.cache_write_per_m = write_per_m;
        self.cache_as_of = as_of;
        self
    }
}

/// What the provider's models cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prices {
    /// Runs on this machine: nothing to pay unless `--price-in/--price-out`.
    Free,
    /// Hosted, but its prices are not in the table: `--max-cost` needs
    /// `--price-in/--price-out`.
    Unlisted,
    /// USD per million tokens of its common models.
    Table(&'static [PriceRow]),
}

/// The batch API a provider offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSupport {
    /// None: `--batch` and `--batch-export` are refused.
    None,
    /// The OpenAI batch file format, handed over as files
    /// (`--batch-export`/`--batch-import`, e.g. `vllm run_batch`).
    Files,
    /// A batch API cai drives itself (`--batch`), and the file format when it
    /// is OpenAI's.
    Api,
}

/// How a provider reuses a shared prompt prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptCache {
    /// No cache cai knows of.
    None,
    /// The server caches prefixes by itself; nothing is sent (vLLM, llama.cpp,
    /// the embedded model, Gemini's implicit caching, DeepSeek).
    Automatic,
    /// Anthropic: blocks marked with `cache_control`.
    CacheControl,
    /// OpenAI: automatic, steered by a `prompt_cache_key`.
    CacheKey,
}

/// An API a provider speaks (`--api`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Chat turns (`chat/completions`, Messages, `generateContent`, or a chat
    /// template rendered on the client).
    #[default]
    Chat,
    /// Raw text in, raw text out: an OpenAI-compatible server's
    /// `completions` ([`super::completions`]), TGI `generate`, the embedded
    /// model. Conversations are rendered on the client (the chat template,
    /// or `--base-format plain`), so base models can be prompted.
    Completions,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

/// One `--provider` value.
#[derive(Debug, PartialEq)]
pub struct Entry {
    /// The `--provider` value; also the provider's name in journal keys and
    /// manifests.
    pub name: &'static str,
    pub backend: Backend,
    /// API root used without `--base-url`; `None` for the embedded model.
    pub base_url: Option<&'static str>,
    /// Environment variables the key is read from, in order; empty for a
    /// provider that needs no key.
    pub key_vars: &'static [&'static str],
    /// Model used without `--model`; `None` means `--model` is required.
    pub default_model: Option<&'static str>,
    pub auth: Auth,
    pub models: ModelList,
    pub prices: Prices,
    pub batch: BatchSupport,
    pub prompt_cache: PromptCache,
    pub apis: &'static [Api],
    /// One line for `--help`.
    pub help: &'static str,
}

impl Entry {
    /// A hosted service (needs a key), as opposed to a server on this machine.
    pub fn is_hosted(&self) -> bool {
        !self.key_vars.is_empty()
    }
}

/// Model sent to a local server when none is named: vLLM, llama.cpp and
/// TGI serve one model and accept any name.
pub const LOCAL_DEFAULT_MODEL: &str = "default";

const CHAT: &[Api] = &[Api::Chat];
/// Chat, and raw text through `completions` (or natively: hf, local).
const CHAT_AND_TEXT: &[Api] = &[Api::Chat, Api::Completions];

/// A hosted OpenAI-compatible service: bearer key, OpenAI's model list.
const fn hosted(
    name: &'static str,
    base_url: &'static str,
    key_var: &'static [&'static str],
    default_model: Option<&'static str>,
    prompt_cache: PromptCache,
    help: &'static str,
) -> Entry {
    Entry {
        name,
        backend: Backend::OpenAi,
        base_url: Some(base_url),
        key_vars: key_var,
        default_model,
        auth: Auth::Bearer,
        models: ModelList::OpenAi,
        prices: Prices::Unlisted,
        batch: BatchSupport::Files,
        prompt_cache,
        apis: CHAT,
        help,
    }
}

/// An OpenAI-compatible server on this machine: no key, free.
const fn on_this_machine(
    name: &'static str,
    base_url: &'static str,
    default_model: Option<&'static str>,
    help: &'static str,
) -> Entry {
    Entry {
        name,
        backend: Backend::OpenAi,
        base_url: Some(base_url),
        key_vars: &[],
        default_model,
        auth: Auth::Bearer,
        models: ModelList::OpenAi,
        prices: Prices::Free,
        batch: BatchSupport::Files,
        prompt_cache: PromptCache::Automatic,
        apis: CHAT_AND_TEXT,
        help,
    }
}

/// Prices of OpenAI's common models, USD per million tokens (standard
/// tier, no batch discount), from openai.com/api/pricing as of 2026-05-07;
/// cached input (OpenAI's "cached input" column: 0.5x for the 4o family,
/// 0.25x for 4.1; writes cost nothing extra) as of 2026-12-02. Longer
/// names come before their prefixes.
const OPENAI_PRICES: &[PriceRow] = &[
    PriceRow::new("gpt-4o-mini", 0.15, 0.60, "2026-05-07").cache(0.075, 0.15, "2026-12-02"),
    PriceRow::new("gpt-4o", 2.50, 10.00, "2026-05-07").cache(1.25, 2.50, "2026-12-02"),
    PriceRow::new("gpt-4.1-nano", 0.10, 0.40, "2026-05-07").cache(0.025, 0.10, "2026-12-02"),
    PriceRow::new("gpt-4.1-mini", 0.40, 1.60, "2026-05-07").cache(0.10, 0.40, "2026-12-02"),
    PriceRow::new("gpt-4.1", 2.00, 8.00, "2026-05-07").cache(0.50, 2.00, "2026-12-02"),
];

/// Anthropic (platform.claude.com pricing), as of 2025-11-25; prompt
/// caching (a read 0.1x the input price, a five-minute write 1.25x) as of
/// 2026-12-02.
const ANTHROPIC_PRICES: &[PriceRow] = &[
    PriceRow::new("claude-haiku-4-5", 1.00, 5.00, "2025-11-25").cache(0.10, 1.25, "2026-12-02"),
    PriceRow::new("claude-sonnet-4-5", 3.00, 15.00, "2025-11-25").cache(0.30, 3.75, "2026-12-02"),
    PriceRow::new("claude-sonnet-4", 3.00, 15.00, "2025-11-25").cache(0.30, 3.75, "2026-12-02"),
    PriceRow::new("claude-opus-4-1", 15.00, 75.00, "2025-11-25").cache(1.50, 18.75, "2026-12-02"),
];

/// Google Gemini API, paid tier, prompts up to 200k tokens
/// (ai.google.dev/gemini-api/docs/pricing), as of 2025-11-25; implicit
/// caching's cached input (0.1x for 2.5, 0.25x for 2.0; no write charge,
/// no storage for implicit hits) as of 2026-12-02.
const GEMINI_PRICES: &[PriceRow] = &[
    PriceRow::new("gemini-2.5-flash-lite", 0.10, 0.40, "2025-11-25").cache(
        0.01,
        0.10,
        "2026-12-02",
    ),
    PriceRow::new("gemini-2.5-flash", 0.30, 2.50, "2025-11-25").cache(0.03, 0.30, "2026-12-02"),
    PriceRow::new("gemini-2.5-pro", 1.25, 10.00, "2025-11-25").cache(0.125, 1.25, "2026-12-02"),
    PriceRow::new("gemini-2.0-flash", 0.10, 0.40, "2025-11-25").cache(0.025, 0.10, "2026-12-02"),
];

/// The table, in the order `--help` lists it.
pub const ENTRIES: &[Entry] = &[
    Entry {
        name: "local",
        backend: Backend::Local,
        base_url: None,
        key_vars: &[],
        default_model: None,
        auth: Auth::None,
        models: ModelList::None,
        prices: Prices::Free,
        batch: BatchSupport::None,
        prompt_cache: PromptCache::Automatic,
        apis: CHAT_AND_TEXT,
        help: "embedded GGUF model on CPU",
    },
    Entry {
        prices: Prices::Table(OPENAI_PRICES),
        batch: BatchSupport::Api,
        apis: CHAT_AND_TEXT,
        ..hosted(
            "openai",
            "https://api.openai.com/v1",
            &["OPENAI_API_KEY"],
            Some("gpt-4o-mini"),
            PromptCache::CacheKey,
            "OpenAI, or any OpenAI-compatible server given --base-url",
        )
    },
    Entry {
        name: "hf",
        backend: Backend::Hf,
        base_url: Some("https://router.huggingface.co/hf-inference/models"),
        key_vars: &["HF_TOKEN"],
        default_model: None,
        auth: Auth::Bearer,
        models: ModelList::None,
        prices: Prices::Unlisted,
        batch: BatchSupport::None,
        prompt_cache: PromptCache::Automatic,
        apis: CHAT_AND_TEXT,
        help: "Hugging Face Inference API / TGI generate",
    },
    Entry {
        name: "anthropic",
        backend: Backend::Anthropic,
        base_url: Some("https://api.anthropic.com"),
        key_vars: &["ANTHROPIC_API_KEY"],
        default_model: Some("claude-haiku-4-5"),
        auth: Auth::Header("x-api-key"),
        models: ModelList::Anthropic,
        prices: Prices::Table(ANTHROPIC_PRICES),
        batch: BatchSupport::Api,
        prompt_cache: PromptCache::CacheControl,
        apis: CHAT,
        help: "Anthropic Messages API",
    },
    Entry {
        name: "gemini",
        backend: Backend::Gemini,
        base_url: Some("https://generativelanguage.googleapis.com"),
        key_vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        default_model: Some("gemini-2.5-flash"),
        auth: Auth::Header("x-goog-api-key"),
        models: ModelList::Gemini,
        prices: Prices::Table(GEMINI_PRICES),
        batch: BatchSupport::None,
        prompt_cache: PromptCache::Automatic,
        apis: CHAT,
        help: "Google Gemini",
    },
    hosted(
        "groq",
        "https://api.groq.com/openai/v1",
        &["GROQ_API_KEY"],
        None,
        PromptCache::None,
        "Groq",
    ),
    hosted(
        "mistral",
        "https://api.mistral.ai/v1",
        &["MISTRAL_API_KEY"],
        None,
        PromptCache::None,
        "Mistral AI",
    ),
    Entry {
        apis: CHAT_AND_TEXT,
        ..hosted(
            "together",
            "https://api.together.xyz/v1",
            &["TOGETHER_API_KEY"],
            None,
            PromptCache::None,
            "Together AI",
        )
    },
    hosted(
        "deepseek",
        "https://api.deepseek.com/v1",
        &["DEEPSEEK_API_KEY"],
        Some("deepseek-chat"),
        PromptCache::Automatic,
        "DeepSeek",
    ),
    Entry {
        apis: CHAT_AND_TEXT,
        ..hosted(
            "openrouter",
            "https://openrouter.ai/api/v1",
            &["OPENROUTER_API_KEY"],
            None,
            PromptCache::None,
            "OpenRouter",
        )
    },
    hosted(
        "hf-router",
        "https://router.huggingface.co/v1",
        &["HF_TOKEN"],
        None,
        PromptCache::None,
        "Hugging Face Inference Providers (OpenAI-compatible router)",
    ),
    on_this_machine(
        "vllm",
        "http://127.0.0.1:8000/v1",
        Some(LOCAL_DEFAULT_MODEL),
        "local vLLM server",
    ),
    on_this_machine(
        "tgi",
        "http://127.0.0.1:8080/v1",
        Some(LOCAL_DEFAULT_MODEL),
        "local Text Generation Inference (Messages API)",
    ),
    on_this_machine(
        "llamacpp",
        "http://127.0.0.1:8080/v1",
        Some(LOCAL_DEFAULT_MODEL),
        "local llama.cpp server",
    ),
    on_this_machine("ollama", "http://127.0.0.1:11434/v1", None, "local Ollama"),
];

/// The row called `name`.
pub fn get(name: &str) -> Option<&'static Entry> {
    ENTRIES.iter().find(|e| e.name == name)
}

/// One `--provider` value: a row of [`ENTRIES`].
#[derive(Clone, Copy, PartialEq)]
pub struct ProviderKind(&'static Entry);

impl std::fmt::Debug for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl ProviderKind {
    /// The kind called `name` (a `--provider` value).
    pub fn named(name: &str) -> Option<ProviderKind> {
        get(name).map(ProviderKind)
    }

    /// The embedded model: what runs when nothing else is selected.
    pub fn local() -> ProviderKind {
        ProviderKind(&ENTRIES[0])
    }

    /// Its row.
    pub fn entry(self) -> &'static Entry {
        self.0
    }

    /// The `--provider` value.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn backend(self) -> Backend {
        self.0.backend
    }

    /// Every kind, as `--help` lists them.
    pub fn all() -> &'static [ProviderKind] {
        &KINDS
    }
}

/// [`ENTRIES`] as kinds, for clap's value list.
static KINDS: LazyLock<Vec<ProviderKind>> =
    LazyLock::new(|| ENTRIES.iter().map(ProviderKind).collect());

impl clap::ValueEnum for ProviderKind {
    fn value_variants<'a>() -> &'a [Self] {
        &KINDS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let e = self.0;
        let url = e.base_url.map(|u| format!(": {u}")).unwrap_or_default();
        let keys = if e.key_vars.is_empty() {
            "no key".to_string()
        } else {
            e.key_vars.join(" or ")
        };
        let help = format!("{}{url} ({keys})", e.help);
        Some(clap::builder::PossibleValue::new(e.name).help(help))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_urls_wellformed() {
        let mut names: Vec<&str> = ENTRIES.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ENTRIES.len());
        for e in ENTRIES {
            if let Some(url) = e.base_url {
                assert!(reqwest::Url::parse(url).is_ok(), "{}", e.name);
                assert!(!url.ends_with('/'), "{}", e.name);
                // Hosted services use TLS; keyless ones are on this machine.
                assert_eq!(e.is_hosted(), url.starts_with("https://"), "{}", e.name);
            }
            // A service on this machine costs nothing; a hosted one never
            // claims to be free.
            assert_eq!(e.prices == Prices::Free, !e.is_hosted(), "{}", e.name);
            assert_eq!(e.auth == Auth::None, e.backend == Backend::Local);
        }
        assert_eq!(ProviderKind::local().backend(), Backend::Local);
    }

    #[test]
    fn every_row_is_a_kind_clap_accepts() {
        use clap::ValueEnum;
        for e in ENTRIES {
            let k = ProviderKind::from_str(e.name, false).expect(e.name);
            assert_eq!(k.entry(), e);
        }
    }
}
