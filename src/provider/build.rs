//! From the endpoint flags to a provider, in three separate steps.
//!
//! 1. [`plan`] checks the flags against the [`registry`] row of the chosen
//!    provider and reads its key from the environment. It touches neither the
//!    network nor the model cache (beyond reading a `--chat-template` file),
//!    so every command can check all its endpoints before it starts. An HTTP
//!    backend is built here already, since building one sends nothing; the
//!    embedded model is only located.
//! 2. [`prepare`] downloads the default model once, when a plan selects it
//!    and it is not in the cache (unless `--offline`). It is the only place a
//!    command downloads, and it runs before anything opens a model.
//! 3. [`Plan::build`] opens the provider; for the embedded model it loads the
//!    GGUF file, which [`prepare`] has put in place.
//!
//! [`open`] runs steps 2 and 3 for one plan. Nothing here reads command-line
//! types: the CLI lends its flags as [`Flags`], so `provider/` depends on no
//! room above it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::chat_template::{ChatTemplate, BUILTIN};
use super::endpoint::Endpoint;
use super::http::ReplyLimit;
use super::local::LocalProvider;
use super::model_store::{self, ModelError};
use super::pool::{Member, Pool};
use super::registry::{Api, Backend, Entry, PromptCache, ProviderKind, LOCAL_DEFAULT_MODEL};
use super::{anthropic, completions, gemini, hf, openai, Provider};

/// Smallest `--max-reply-bytes` accepted: below it no real reply fits.
pub const MIN_REPLY_BYTES: u64 = 1024;

/// The endpoint flags (`--provider`, `--base-url`, `--model`, ...).
#[derive(Clone, Debug)]
pub struct Flags<'a> {
    pub provider: Option<ProviderKind>,
    /// Several make a pool; each may carry `#weight=W`.
    pub base_urls: &'a [String],
    pub model: Option<&'a str>,
    pub api_key_env: Option<&'a str>,
    pub chat_template: &'a str,
    pub timeout: f64,
    pub max_reply_bytes: Option<u64>,
    pub offline: bool,
    pub local_parallel: Option<usize>,
    pub local_cache_mb: Option<usize>,
    /// `--prompt-cache auto` (true) or `off`.
    pub prompt_cache: bool,
    /// `--api`: chat turns, or raw text through `completions`.
    pub api: Api,
}

impl Flags<'_> {
    /// The first `--base-url` (the only one, unless a pool is given).
    pub fn base_url(&self) -> Option<&str> {
        self.base_urls.first().map(String::as_str)
    }
}

/// Why the flags do not make a provider. All are usage errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("--api-key-env takes the NAME of an environment variable (e.g. MY_KEY), not a key; the value given is not a variable name and is not shown")]
    KeyEnvNotAName,
    #[error("no API key for provider {provider}: set the environment variable {var}{alternatives}{named_by}")]
    NoKey {
        provider: &'static str,
        var: String,
        /// ` (or VAR)` for each further variable tried.
        alternatives: String,
        /// ` (named by --api-key-env)` when the flag named it.
        named_by: &'static str,
    },
    #[error("--base-url `{url}` is not a valid URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--base-url `{0}` must be an http:// or https:// URL with a host")]
    NotHttp(String),
    #[error("--base-url `{0}`: after `#` only `weight=W` (a positive number) is understood")]
    PoolWeight(String),
    #[error("several --base-url (an endpoint pool) work with OpenAI-compatible and hf (TGI) servers, not --provider {0}")]
    PoolUnsupported(&'static str),
    #[error("--api {api} is not served by --provider {provider} (it serves: {served})")]
    ApiUnsupported {
        api: &'static str,
        provider: &'static str,
        served: String,
    },
    #[error("--provider {0} needs --model NAME (list them with `cai models --provider {0}`)")]
    NeedsModel(&'static str),
    #[error("--provider hf without --base-url needs --model (the Inference API model id)")]
    HfNeedsModel,
    #[error("--timeout {0} must be positive")]
    Timeout(f64),
    #[error(
        "--max-reply-bytes must be at least {MIN_REPLY_BYTES} (room for one small JSON reply)"
    )]
    ReplyBytes,
    #[error(
        "--chat-template `{spec}`: not a built-in ({builtins}) and not a readable file: {source}"
    )]
    ChatTemplateFile {
        spec: String,
        builtins: String,
        source: std::io::Error,
    },
    #[error("{spec}: {reason}")]
    ChatTemplate { spec: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Cache(#[from] ModelError),
    #[error("model file {} not found{hint}", .path.display())]
    ModelMissing {
        path: PathBuf,
        /// How to get the default model, when it is the one missing.
        hint: &'static str,
    },
    #[error("the default model is not in the cache ({}) and --offline forbids downloading it; run `cai model fetch` first", .0.display())]
    Offline(PathBuf),
    #[error("cannot load the model {}: {reason}", .path.display())]
    LocalLoad { path: PathBuf, reason: String },
}

impl BuildError {
    /// A missing key, which a dry run reports instead of failing on.
    pub fn is_missing_key(&self) -> bool {
        matches!(self, BuildError::NoKey { .. })
    }
}

/// Which backend, and why (for the one line cai prints when it chose).
pub fn select_provider(flags: &Flags) -> (ProviderKind, Option<String>) {
    if let Some(p) = flags.provider {
        return (p, None);
    }
    let openai = ProviderKind::named("openai");
    if let (Some(_), Some(kind)) = (flags.base_url(), openai) {
        return (
            kind,
            Some("--base-url given: using the OpenAI-compatible provider".into()),
        );
    }
    // HF_TOKEN is deliberately not a signal: many users keep it set for
    // downloading models, not for paying for inference. GOOGLE_API_KEY is
    // not one either: it serves many Google APIs besides Gemini.
    for (var, name) in [
        ("OPENAI_API_KEY", "openai"),
        ("ANTHROPIC_API_KEY", "anthropic"),
        ("GEMINI_API_KEY", "gemini"),
    ] {
        let set = std::env::var_os(var).is_some_and(|v| !v.is_empty());
        if let (true, Some(kind)) = (set, ProviderKind::named(name)) {
            return (
                kind,
                Some(format!(
                    "{var} is set: using provider {name} (pass --provider local to stay offline)"
                )),
            );
        }
    }
    (ProviderKind::local(), None)
}

/// The environment variables a provider's key is read from, in order.
pub fn default_key_vars(kind: ProviderKind) -> &'static [&'static str] {
    kind.entry().key_vars
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell accepts as a variable name.
pub fn is_var_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A key and the variable it came from.
pub type Key = (Option<SecretString>, Option<String>);

/// Reads the key for `kind`. An explicitly named variable must be set; a
/// default one may be absent (local servers need no key), unless `needed`
/// (the public service, which always needs one).
pub fn read_key(flags: &Flags, kind: ProviderKind, needed: bool) -> Result<Key, BuildError> {
    let (vars, named): (Vec<&str>, bool) = match flags.api_key_env {
        // A key pasted where its variable's name belongs must not be echoed.
        Some(v) if !is_var_name(v) => return Err(BuildError::KeyEnvNotAName),
        Some(v) => (vec![v], true),
        None => (default_key_vars(kind).to_vec(), false),
    };
    for var in &vars {
        if let Some(v) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            return Ok((
                Some(SecretString::from(v.trim().to_string())),
                Some(var.to_string()),
            ));
        }
    }
    match vars.split_first() {
        Some((first, rest)) if named || needed => Err(BuildError::NoKey {
            provider: kind.name(),
            var: first.to_string(),
            alternatives: rest.iter().map(|v| format!(" (or {v})")).collect(),
            named_by: if named {
                " (named by --api-key-env)"
            } else {
                ""
            },
        }),
        _ => Ok((None, None)),
    }
}

pub fn check_url(url: &str) -> Result<(), BuildError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| BuildError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(BuildError::NotHttp(url.to_string()));
    }
    Ok(())
}

/// One `--base-url` of a pool: `URL` or `URL#weight=W` (W > 0).
pub fn pool_member(spec: &str) -> Result<(String, f64), BuildError> {
    let (url, weight) = match spec.split_once('#') {
        None => (spec, 1.0),
        Some((url, frag)) => {
            let w = frag
                .strip_prefix("weight=")
                .and_then(|w| w.parse::<f64>().ok())
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| BuildError::PoolWeight(spec.to_string()))?;
            (url, w)
        }
    };
    check_url(url)?;
    Ok((url.trim().to_string(), weight))
}

/// Loads `--chat-template`: a built-in name or a file. A file may hold the
/// template itself or a `tokenizer_config.json` with a `chat_template` key
/// (and `bos_token`/`eos_token`). A probe conversation is rendered, so a
/// template that fails on every input is caught now.
pub fn load_chat_template(spec: &str) -> Result<ChatTemplate, BuildError> {
    if let Some(t) = ChatTemplate::builtin(spec) {
        return Ok(t);
    }
    let text = std::fs::read_to_string(Path::new(spec)).map_err(|source| {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        BuildError::ChatTemplateFile {
            spec: spec.to_string(),
            builtins: names.join(", "),
            source,
        }
    })?;
    let bad = |reason: String| BuildError::ChatTemplate {
        spec: spec.to_string(),
        reason,
    };
    let (source, bos, eos) = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.get("chat_template").is_some() => {
            let src = v["chat_template"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("chat_template: expected a string".into()))?;
            (
                src,
                special_token(&v, "bos_token"),
                special_token(&v, "eos_token"),
            )
        }
        _ => (text, String::new(), String::new()),
    };
    let t = ChatTemplate::new(&source, bos, eos)
        .map_err(|e| bad(format!("chat template does not compile: {e}")))?;
    let probe = [
        super::Message::user("probe"),
        super::Message::assistant("probe"),
        super::Message::user("probe"),
    ];
    t.render(&probe, true)
        .map_err(|e| bad(format!("chat template fails to render: {e}")))?;
    Ok(t)
}

/// A special token of a tokenizer config: a string, or `{content}`.
fn special_token(config: &serde_json::Value, key: &str) -> String {
    match config.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    }
}

/// One pooled HTTP client for the run: connections are reused across all
/// requests, and enough idle ones are kept for the configured concurrency.
pub fn http_client(timeout: Duration, concurrency: usize) -> Result<reqwest::Client, BuildError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .user_agent(concat!("cai/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BuildError::HttpClient(e.to_string()))
}

/// Whether a missing key fails the plan or is set aside (a dry run sends
/// nothing, so it only says the key is missing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    Required,
    Optional,
}

/// The embedded model a plan will open.
#[derive(Clone, Debug)]
pub struct LocalModel {
    pub path: PathBuf,
    /// The default model of the cache (which [`prepare`] may download).
    pub is_default: bool,
    pub offline: bool,
    parallel: usize,
    cache_mb: Option<usize>,
}

#[derive(Clone)]
enum Target {
    /// An HTTP backend or a pool of them (built: building sends nothing).
    Remote(Arc<dyn Provider>),
    Local(LocalModel),
}

/// A checked provider, not yet opened.
#[derive(Clone)]
pub struct Plan {
    pub kind: ProviderKind,
    /// Why this provider was chosen, when it was not named.
    pub note: Option<String>,
    /// With [`Keys::Optional`]: the missing key's message.
    pub missing_key: Option<String>,
    target: Target,
    /// The provider once built, shared by every clone of the plan, so roles
    /// that use the same endpoint (optimize's base and evaluator) load one
    /// model, not two.
    opened: Arc<std::sync::Mutex<Option<Arc<dyn Provider>>>>,
}

/// Whether `kind` serves `api` (the table's `apis` column).
pub fn check_api(kind: ProviderKind, api: Api) -> Result<(), BuildError> {
    let apis = kind.entry().apis;
    if apis.contains(&api) {
        return Ok(());
    }
    Err(BuildError::ApiUnsupported {
        api: api.as_str(),
        provider: kind.name(),
        served: apis
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Checks `flags` into a [`Plan`]; reads keys but opens nothing.
pub fn plan(flags: &Flags, concurrency: usize, keys: Keys) -> Result<Plan, BuildError> {
    let (kind, mut note) = select_provider(flags);
    check_api(kind, flags.api)?;
    if !(flags.timeout.is_finite() && flags.timeout > 0.0) {
        return Err(BuildError::Timeout(flags.timeout));
    }
    if flags.max_reply_bytes.is_some_and(|b| b < MIN_REPLY_BYTES) {
        return Err(BuildError::ReplyBytes);
    }
    let mut missing_key = None;
    let target = if flags.base_urls.len() > 1 {
        note = Some(format!(
            "a pool of {} {} endpoints: requests go to the least loaded, failing ones are ejected",
            flags.base_urls.len(),
            kind.name()
        ));
        pool(flags, kind, concurrency, keys, &mut missing_key)?
    } else if kind.backend() == Backend::Local {
        Target::Local(local_model(flags)?)
    } else {
        Target::Remote(remote(flags, kind, concurrency, keys, &mut missing_key)?)
    };
    Ok(Plan {
        kind,
        note,
        missing_key,
        target,
        opened: Arc::default(),
    })
}

fn pool(
    flags: &Flags,
    kind: ProviderKind,
    concurrency: usize,
    keys: Keys,
    missing_key: &mut Option<String>,
) -> Result<Target, BuildError> {
    if !matches!(kind.backend(), Backend::OpenAi | Backend::Hf) {
        return Err(BuildError::PoolUnsupported(kind.name()));
    }
    let mut members = Vec::with_capacity(flags.base_urls.len());
    for spec in flags.base_urls {
        let (url, weight) = pool_member(spec)?;
        let one = [url];
        let flags = Flags {
            provider: Some(kind),
            base_urls: &one,
            ..flags.clone()
        };
        let provider = remote(&flags, kind, concurrency, keys, missing_key)?;
        members.push(Member { provider, weight });
    }
    Ok(Target::Remote(Arc::new(Pool::new(members))))
}

/// The GGUF file the embedded model loads: `--model PATH`, else the
/// default model in the cache.
fn local_model(flags: &Flags) -> Result<LocalModel, BuildError> {
    let (path, is_default) = match flags.model {
        Some(m) => (PathBuf::from(m), false),
        None => (model_store::default_model_path()?, true),
    };
    Ok(LocalModel {
        path,
        is_default,
        offline: flags.offline,
        parallel: flags
            .local_parallel
            .unwrap_or(super::local::DEFAULT_MAX_BATCH)
            .max(1),
        cache_mb: flags.local_cache_mb,
    })
}

/// One HTTP endpoint of `kind`, as its registry row and the flags say.
fn remote(
    flags: &Flags,
    kind: ProviderKind,
    concurrency: usize,
    keys: Keys,
    missing_key: &mut Option<String>,
) -> Result<Arc<dyn Provider>, BuildError> {
    let entry = kind.entry();
    if let Some(url) = flags.base_url() {
        check_url(url)?;
    }
    let model = model_of(flags, entry)?;
    // With --base-url the row only names the key variable, and the server
    // may be a local one that needs no key.
    let needed = flags.base_url().is_none() && entry.is_hosted();
    let (key, key_var) = match (read_key(flags, kind, needed), keys) {
        (Err(e), Keys::Optional) if e.is_missing_key() => {
            *missing_key = Some(e.to_string());
            (None, None)
        }
        (r, _) => r?,
    };
    // Backends that complete raw text render conversations on the client.
    let template = match (entry.backend, flags.api) {
        (Backend::Hf, _) | (Backend::OpenAi, Api::Completions) => {
            Some(load_chat_template(flags.chat_template)?)
        }
        _ => None,
    };
    let client = http_client(Duration::from_secs_f64(flags.timeout), concurrency)?;
    let base = flags.base_url().or(entry.base_url).unwrap_or_default();
    let ep = Endpoint::new(entry, client, base, model, key, key_var)
        .with_reply_limit(ReplyLimit::fixed(flags.max_reply_bytes));
    // `prompt_cache_key` only where the table says the provider takes it
    // and the requests go to that provider's own host, not to a server
    // given with --base-url that may refuse unknown fields.
    let own_host = |url: &str| {
        reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    };
    let cache_key = flags.prompt_cache
        && entry.prompt_cache == PromptCache::CacheKey
        && entry
            .base_url
            .and_then(own_host)
            .is_some_and(|h| own_host(base) == Some(h));
    Ok(match (entry.backend, template) {
        (Backend::Anthropic, _) => {
            Arc::new(anthropic::Anthropic::new(ep).with_prompt_cache(flags.prompt_cache))
        }
        (Backend::Gemini, _) => Arc::new(gemini::Gemini::new(ep)),
        (Backend::Hf, Some(t)) => Arc::new(hf::Hf::new(ep, t)),
        (Backend::OpenAi, Some(t)) => Arc::new(completions::Completions::new(ep, t)),
        _ => Arc::new(openai::OpenAi::new(ep).with_prompt_cache_key(cache_key)),
    })
}

/// `--model`, else the row's default; a server of our own (`--base-url`)
/// serves whatever it has.
fn model_of(flags: &Flags, entry: &Entry) -> Result<String, BuildError> {
    if let Some(m) = flags.model {
        return Ok(m.to_string());
    }
    match (flags.base_url(), entry.backend, entry.default_model) {
        (Some(_), Backend::Hf, _) => Ok("tgi".into()),
        (Some(_), Backend::OpenAi, _) => Ok(LOCAL_DEFAULT_MODEL.into()),
        (_, _, Some(m)) => Ok(m.into()),
        (_, Backend::Hf, None) => Err(BuildError::HfNeedsModel),
        (_, _, None) => Err(BuildError::NeedsModel(entry.name)),
    }
}

impl Plan {
    /// The provider's name (journal keys, manifest).
    pub fn name(&self) -> &str {
        match &self.target {
            Target::Remote(p) => p.name(),
            Target::Local(_) => self.kind.name(),
        }
    }

    /// The model as sent, or the GGUF file name.
    pub fn model(&self) -> String {
        match &self.target {
            Target::Remote(p) => p.model().to_string(),
            Target::Local(m) => m
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| m.path.display().to_string()),
        }
    }

    /// Where requests go (never contains a key).
    pub fn endpoint(&self) -> String {
        match &self.target {
            Target::Remote(p) => p.endpoint(),
            Target::Local(m) => m.path.display().to_string(),
        }
    }

    /// The registry row.
    pub fn entry(&self) -> &'static Entry {
        self.kind.entry()
    }

    /// The embedded model this plan opens, if it is one.
    pub fn local_model(&self) -> Option<&LocalModel> {
        match &self.target {
            Target::Local(m) => Some(m),
            Target::Remote(_) => None,
        }
    }

    /// Opens the provider (once: later calls, also on clones, return the
    /// same one). The embedded model must be on disk already ([`prepare`]
    /// puts the default one there).
    pub fn build(&self) -> Result<Arc<dyn Provider>, BuildError> {
        let m = match &self.target {
            Target::Remote(p) => return Ok(p.clone()),
            Target::Local(m) => m,
        };
        // A poisoned lock only means another build panicked; the slot is
        // still either empty or a whole provider.
        let mut slot = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        if !m.path.exists() {
            return Err(BuildError::ModelMissing {
                path: m.path.clone(),
                hint: if m.is_default {
                    "; run `cai model fetch` to download the default model"
                } else {
                    ""
                },
            });
        }
        let options = super::local::LoadOptions {
            max_batch: m.parallel,
            cache_bytes: m.cache_mb.map(|mb| mb << 20),
            isa: None,
        };
        let local = LocalProvider::load(&m.path, options).map_err(|e| BuildError::LocalLoad {
            path: m.path.clone(),
            reason: e.to_string(),
        })?;
        let p: Arc<dyn Provider> = Arc::new(local);
        *slot = Some(p.clone());
        Ok(p)
    }
}

/// Downloads the default model once when one of `plans` uses it and it is
/// not in the cache, saying so through `note`; with `--offline` that is an
/// error naming `cai model fetch`. Runs before any plan is built.
pub async fn prepare<'a>(
    plans: impl IntoIterator<Item = &'a Plan>,
    show_progress: bool,
    note: impl Fn(&str),
) -> Result<(), BuildError> {
    let wanted = plans
        .into_iter()
        .filter_map(Plan::local_model)
        .filter(|m| m.is_default && !m.path.exists());
    let mut offline = None;
    let mut missing = None;
    for m in wanted {
        if m.offline {
            offline = Some(m.path.clone());
        }
        missing = Some(m.path.clone());
    }
    if let Some(path) = offline {
        return Err(BuildError::Offline(path));
    }
    let Some(path) = missing else {
        return Ok(());
    };
    note(&format!(
        "the default model is not in the cache: downloading it to {} (once)",
        path.display()
    ));
    model_store::fetch_default(show_progress).await?;
    Ok(())
}

/// [`prepare`] then [`Plan::build`], for a command with one endpoint.
pub async fn open(
    plan: &Plan,
    show_progress: bool,
    note: impl Fn(&str),
) -> Result<Arc<dyn Provider>, BuildError> {
    prepare([plan], show_progress, note).await?;
    plan.build()
}

/// [`open`] for a command without an async runtime of its own (`render`):
/// a runtime is started only when a download is due.
pub fn open_blocking(plan: &Plan, note: impl Fn(&str)) -> Result<Arc<dyn Provider>, BuildError> {
    let due = plan
        .local_model()
        .is_some_and(|m| m.is_default && !m.path.exists());
    if due {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BuildError::Runtime(e.to_string()))?;
        rt.block_on(prepare([plan], false, note))?;
    }
    plan.build()
}
