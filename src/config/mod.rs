//! From parsed arguments to a checked configuration and a ready provider.
//!
//! Everything here runs before the first request: a bad URL, a missing key
//! or an unreadable chat template is a [`ConfigError`] (exit 2), never a
//! failed request. Keys are read from the environment (never from the
//! command line) and held as [`SecretString`], which does not print.

pub mod generate;
pub mod judge;
pub mod label;
pub mod optimize;
pub mod serve;
pub mod settings;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::cli::{EndpointArgs, ProviderKind, SamplingArgs};
use crate::provider::anthropic::{Anthropic, ANTHROPIC_BASE, ANTHROPIC_DEFAULT_MODEL};
use crate::provider::chat_template::{ChatTemplate, BUILTIN};
use crate::provider::gemini::{Gemini, GEMINI_BASE, GEMINI_DEFAULT_MODEL};
use crate::provider::hf::Hf;
use crate::provider::http::ReplyLimit;
use crate::provider::local::LocalProvider;
use crate::provider::model_store;
use crate::provider::openai::OpenAi;
use crate::provider::pool::{Member, Pool};
use crate::provider::presets::{Preset, LOCAL_DEFAULT_MODEL};
use crate::provider::{GenParams, Provider};

/// Smallest `--max-reply-bytes` accepted: below it no real reply fits.
pub const MIN_REPLY_BYTES: u64 = 1024;

/// OpenAI's API root, used when `--provider openai` has no `--base-url`.
pub const OPENAI_BASE: &str = "https://api.openai.com/v1";
/// Model used with OpenAI's own API when none is named.
pub const OPENAI_DEFAULT_MODEL: &str = "gpt-4o-mini";

pub use crate::error::ConfigError;

/// Which backend, and why (for the one line cai prints when it chose).
pub fn select_provider(args: &EndpointArgs) -> (ProviderKind, Option<String>) {
    if let Some(p) = args.provider {
        return (p, None);
    }
    if args.base_url().is_some() {
        return (
            ProviderKind::Openai,
            Some("--base-url given: using the OpenAI-compatible provider".into()),
        );
    }
    // HF_TOKEN is deliberately not a signal: many users keep it set for
    // downloading models, not for paying for inference. GOOGLE_API_KEY is
    // not one either: it serves many Google APIs besides Gemini.
    for (var, kind) in [
        ("OPENAI_API_KEY", ProviderKind::Openai),
        ("ANTHROPIC_API_KEY", ProviderKind::Anthropic),
        ("GEMINI_API_KEY", ProviderKind::Gemini),
    ] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            return (
                kind,
                Some(format!(
                    "{var} is set: using provider {} (pass --provider local to stay offline)",
                    kind.name()
                )),
            );
        }
    }
    (ProviderKind::Local, None)
}

/// The environment variables a provider's key is read from, in order.
pub fn default_key_vars(kind: ProviderKind) -> &'static [&'static str] {
    match kind {
        ProviderKind::Hf => &["HF_TOKEN"],
        ProviderKind::Anthropic => &["ANTHROPIC_API_KEY"],
        ProviderKind::Gemini => &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        ProviderKind::Local => &[],
        ProviderKind::Openai | ProviderKind::Preset(_) => match kind.preset() {
            Some(Preset {
                key_var: Some(v), ..
            }) => std::slice::from_ref(v),
            _ => &[],
        },
    }
}

/// Reads the key for `kind`. An explicitly named variable must be set; a
/// default one may be absent (local servers need no key), unless the
/// endpoint is the public service that always needs one.
pub(crate) fn read_key(
    args: &EndpointArgs,
    kind: ProviderKind,
    needs_key: bool,
) -> Result<(Option<SecretString>, Option<String>), ConfigError> {
    let (vars, explicit): (Vec<String>, bool) = match &args.api_key_env {
        // A key pasted where its variable's name belongs must not be echoed.
        Some(v) if !is_var_name(v) => return Err(ConfigError::KeyEnvNotAName),
        Some(v) => (vec![v.clone()], true),
        None => (
            default_key_vars(kind)
                .iter()
                .map(|v| v.to_string())
                .collect(),
            false,
        ),
    };
    if vars.is_empty() {
        return Ok((None, None));
    }
    for var in &vars {
        if let Ok(v) = std::env::var(var) {
            if !v.trim().is_empty() {
                return Ok((
                    Some(SecretString::from(v.trim().to_string())),
                    Some(var.clone()),
                ));
            }
        }
    }
    if explicit || needs_key {
        return Err(ConfigError::MissingKey {
            provider: kind.name().to_string(),
            var: vars[0].clone(),
            alternatives: vars[1..].to_vec(),
            named_by_flag: explicit,
        });
    }
    Ok((None, None))
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a shell accepts as a variable name.
pub fn is_var_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn check_url(url: &str) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::flag("--base-url", format!("`{url}` is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::flag(
            "--base-url",
            format!("`{url}` must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(())
}

/// Loads `--chat-template`: a built-in name or a file. A file may hold the
/// template itself or a `tokenizer_config.json` with a `chat_template` key
/// (and `bos_token`/`eos_token`).
pub fn load_chat_template(spec: &str) -> Result<ChatTemplate, ConfigError> {
    if let Some(t) = ChatTemplate::builtin(spec) {
        return Ok(t);
    }
    let path = std::path::Path::new(spec);
    let text = std::fs::read_to_string(path).map_err(|e| {
        let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        ConfigError::flag(
            "--chat-template",
            format!(
                "`{spec}`: not a built-in ({}) and not a readable file: {e}",
                names.join(", ")
            ),
        )
    })?;
    let (source, bos, eos) = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.get("chat_template").is_some() => {
            let token = |k: &str| -> String {
                match v.get(k) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(o) => o
                        .get("content")
                        .and_then(|c| c.as_str())
                        .unwrap_or("")
                        .to_string(),
                    None => String::new(),
                }
            };
            let src = v["chat_template"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| ConfigError::FileKey {
                    path: path.to_path_buf(),
                    key: "chat_template".into(),
                    why: "expected a string".into(),
                })?;
            (src, token("bos_token"), token("eos_token"))
        }
        _ => (text, String::new(), String::new()),
    };
    let t = ChatTemplate::new(&source, bos, eos).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        why: format!("chat template does not compile: {e}"),
    })?;
    // Render a probe conversation so a template that fails on every input
    // (unknown filter, raise_exception on the system role) is caught now.
    let probe = [
        crate::provider::Message::user("probe"),
        crate::provider::Message::assistant("probe"),
        crate::provider::Message::user("probe"),
    ];
    t.render(&probe, true).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        why: format!("chat template fails to render: {e}"),
    })?;
    Ok(t)
}

/// Sampling arguments as request parameters.
pub fn gen_params(s: &SamplingArgs) -> Result<GenParams, ConfigError> {
    if !(0.0..=2.0).contains(&s.temperature) {
        return Err(ConfigError::flag(
            "--temperature",
            format!("{} is outside 0..=2", s.temperature),
        ));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(ConfigError::flag(
            "--top-p",
            format!("{} is outside (0, 1]", s.top_p),
        ));
    }
    if s.max_tokens == 0 {
        return Err(ConfigError::flag("--max-tokens", "must be at least 1"));
    }
    Ok(GenParams {
        max_tokens: s.max_tokens,
        temperature: s.temperature,
        top_p: s.top_p,
        seed: s.seed,
        ..GenParams::default()
    })
}

/// One pooled HTTP client for the run: connections are reused across all
/// requests, and enough idle ones are kept for the configured concurrency.
pub fn http_client(timeout: Duration, concurrency: usize) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .user_agent(concat!("cai/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ConfigError::HttpClient)
}

/// The GGUF file the local provider loads: `--model PATH`, else the
/// default model in the cache.
pub fn local_model_path(args: &EndpointArgs) -> Result<PathBuf, ConfigError> {
    match &args.model {
        Some(m) => Ok(PathBuf::from(m)),
        None => Ok(model_store::default_model_path()?),
    }
}

/// Makes sure the local model is on disk before a run: when the default
/// model is selected and missing, downloads it (saying so) unless
/// `--offline`, which fails naming `cai model fetch` instead.
pub async fn ensure_local_model(
    args: &EndpointArgs,
    show_progress: bool,
    note: impl Fn(&str),
) -> Result<(), ConfigError> {
    if select_provider(args).0 != ProviderKind::Local || args.model.is_some() {
        return Ok(());
    }
    let path = local_model_path(args)?;
    if path.exists() {
        return Ok(());
    }
    if args.offline {
        return Err(ConfigError::OfflineNoModel { path });
    }
    note(&format!(
        "the default model is not in the cache: downloading it to {} (once)",
        path.display()
    ));
    model_store::fetch_default(show_progress)
        .await
        .map(|_| ())
        .map_err(ConfigError::from)
}

/// One `--base-url` of a pool: `URL` or `URL#weight=W` (W > 0).
fn pool_member(spec: &str) -> Result<(String, f64), ConfigError> {
    let (url, weight) = match spec.split_once('#') {
        None => (spec, 1.0),
        Some((url, frag)) => {
            let w = frag
                .strip_prefix("weight=")
                .and_then(|w| w.parse::<f64>().ok())
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| {
                    ConfigError::flag(
                        "--base-url",
                        format!(
                            "`{spec}`: after `#` only `weight=W` (a positive number) is understood"
                        ),
                    )
                })?;
            (url, w)
        }
    };
    check_url(url)?;
    Ok((url.trim().to_string(), weight))
}

/// Builds the provider the arguments describe.
pub fn build_provider(
    args: &EndpointArgs,
    concurrency: usize,
) -> Result<(Arc<dyn Provider>, Option<String>), ConfigError> {
    build(args, concurrency, None)
}

/// A dry run's provider, the note on how it was chosen, and the missing
/// key's message.
pub type DryRunProvider = (Arc<dyn Provider>, Option<String>, Option<String>);

/// Builds the provider for a dry run, which sends nothing: a missing API
/// key is not an error but a note (returned as the third value).
pub fn build_provider_for_dry_run(args: &EndpointArgs) -> Result<DryRunProvider, ConfigError> {
    let mut missing = None;
    let (p, note) = build(args, 1, Some(&mut missing))?;
    Ok((p, note, missing))
}

fn build(
    args: &EndpointArgs,
    concurrency: usize,
    mut missing_key: Option<&mut Option<String>>,
) -> Result<(Arc<dyn Provider>, Option<String>), ConfigError> {
    if args.base_urls.len() > 1 {
        let (kind, _) = select_provider(args);
        if !matches!(
            kind,
            ProviderKind::Openai | ProviderKind::Preset(_) | ProviderKind::Hf
        ) {
            return Err(ConfigError::conflict(
                "--base-url",
                "--provider",
                format!(
                    "several --base-url (an endpoint pool) work with OpenAI-compatible and hf (TGI) servers, not --provider {}",
                    kind.name()
                ),
            ));
        }
        let mut members = Vec::with_capacity(args.base_urls.len());
        for spec in &args.base_urls {
            let (url, weight) = pool_member(spec)?;
            let mut one = args.clone();
            one.base_urls = vec![url];
            let (provider, _) = build(&one, concurrency, missing_key.as_deref_mut())?;
            members.push(Member { provider, weight });
        }
        let note = format!(
            "a pool of {} {} endpoints: requests go to the least loaded, failing ones are ejected",
            members.len(),
            kind.name()
        );
        return Ok((Arc::new(Pool::new(members)), Some(note)));
    }
    let mut read_key = |args: &EndpointArgs, kind: ProviderKind, needs_key: bool| match (
        read_key(args, kind, needs_key),
        missing_key.as_deref_mut(),
    ) {
        (Err(e @ ConfigError::MissingKey { .. }), Some(slot)) => {
            *slot = Some(e.to_string());
            Ok((None, None))
        }
        (r, _) => r,
    };
    let (kind, note) = select_provider(args);
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(ConfigError::flag(
            "--timeout",
            format!("{} must be positive", args.timeout),
        ));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    if args.max_reply_bytes.is_some_and(|b| b < MIN_REPLY_BYTES) {
        return Err(ConfigError::flag(
            "--max-reply-bytes",
            format!("must be at least {MIN_REPLY_BYTES} (room for one small JSON reply)"),
        ));
    }
    let limit = ReplyLimit::fixed(args.max_reply_bytes);
    if let Some(url) = args.base_url() {
        check_url(url)?;
    }
    let provider: Arc<dyn Provider> = match kind {
        ProviderKind::Openai | ProviderKind::Preset(_) => {
            let Some(preset) = kind.preset() else {
                return Err(ConfigError::UnknownProvider(kind.name().to_string()));
            };
            // With --base-url the preset only names the key variable, and
            // the server may be a local one that needs no key.
            let public = args.base_url().is_none() && preset.is_hosted();
            let (key, key_var) = read_key(args, kind, public)?;
            let model = match (&args.model, args.base_url(), preset.default_model) {
                (Some(m), _, _) => m.clone(),
                (None, Some(_), _) => LOCAL_DEFAULT_MODEL.to_string(),
                (None, None, Some(m)) => m.to_string(),
                (None, None, None) => {
                    return Err(ConfigError::conflict(
                        "--provider",
                        "--model",
                        format!(
                            "--provider {} needs --model NAME (list them with `cai models --provider {}`)",
                            preset.name, preset.name
                        ),
                    ))
                }
            };
            Arc::new(
                OpenAi::new(
                    http_client(timeout, concurrency)?,
                    args.base_url().unwrap_or(preset.base_url),
                    model,
                    key,
                    key_var,
                )
                .named(preset.name)
                .with_reply_limit(limit),
            )
        }
        ProviderKind::Anthropic => {
            let (key, key_var) = read_key(args, kind, args.base_url().is_none())?;
            Arc::new(
                Anthropic::new(
                    http_client(timeout, concurrency)?,
                    args.base_url().unwrap_or(ANTHROPIC_BASE),
                    args.model.as_deref().unwrap_or(ANTHROPIC_DEFAULT_MODEL),
                    key,
                    key_var,
                )
                .with_reply_limit(limit),
            )
        }
        ProviderKind::Gemini => {
            let (key, key_var) = read_key(args, kind, args.base_url().is_none())?;
            Arc::new(
                Gemini::new(
                    http_client(timeout, concurrency)?,
                    args.base_url().unwrap_or(GEMINI_BASE),
                    args.model.as_deref().unwrap_or(GEMINI_DEFAULT_MODEL),
                    key,
                    key_var,
                )
                .with_reply_limit(limit),
            )
        }
        ProviderKind::Hf => {
            let public = args.base_url().is_none();
            let model = match (&args.model, public) {
                (Some(m), _) => m.clone(),
                (None, true) => return Err(ConfigError::conflict(
                    "--provider",
                    "--model",
                    "--provider hf without --base-url needs --model (the Inference API model id)",
                )),
                (None, false) => "tgi".to_string(),
            };
            let (key, key_var) = read_key(args, kind, public)?;
            let template = load_chat_template(&args.chat_template)?;
            Arc::new(
                Hf::new(
                    http_client(timeout, concurrency)?,
                    args.base_url(),
                    model,
                    template,
                    key,
                    key_var,
                )
                .with_reply_limit(limit),
            )
        }
        ProviderKind::Local => {
            let path = local_model_path(args)?;
            if !path.exists() {
                return Err(ConfigError::ModelNotFound {
                    path,
                    default: args.model.is_none(),
                });
            }
            let parallel = args
                .local_parallel
                .unwrap_or(crate::provider::local::DEFAULT_MAX_BATCH);
            let local = LocalProvider::load(&path).map_err(|e| ConfigError::LocalModel {
                path: path.clone(),
                why: e.to_string(),
            })?;
            let mb = args
                .local_cache_mb
                .unwrap_or_else(crate::provider::local::default_cache_mb);
            Arc::new(local.with_max_concurrent(parallel.max(1)).with_cache_mb(mb))
        }
    };
    Ok((provider, note))
}

/// The run-loop settings shared by every command that works through items
/// (`--concurrency`, limits, budgets, display), checked.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub concurrency: usize,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_retries: u32,
    pub max_requests: Option<u64>,
    pub force: bool,
    /// Write `report.html` at the end (`--no-report` turns it off).
    pub report: bool,
    pub display: crate::engine::progress::Display,
    pub json: bool,
}

impl RunSettings {
    pub fn from_args(a: &crate::cli::RunArgs) -> Result<RunSettings, ConfigError> {
        if a.concurrency == 0 {
            return Err(ConfigError::flag("--concurrency", "must be at least 1"));
        }
        let json = a.log_format == crate::cli::LogFormat::Json;
        Ok(RunSettings {
            concurrency: a.concurrency,
            rpm: a.rpm,
            tpm: a.tpm,
            max_retries: a.max_retries,
            max_requests: a.max_requests,
            force: a.force,
            report: !a.no_report,
            display: crate::engine::progress::Display::choose(a.quiet, json),
            json,
        })
    }

    /// The engine settings of a run with these limits.
    pub fn engine(
        &self,
        price: Option<crate::cost::Price>,
        max_cost: Option<f64>,
    ) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            rpm: self.rpm,
            tpm: self.tpm,
            max_retries: self.max_retries,
            max_requests: self.max_requests,
            price,
            max_cost,
            ..crate::engine::EngineConfig::default()
        }
    }
}

/// Writes the run's HTML report at the end of a run; a failure is a
/// warning, never the run's failure (the data is already safe on disk).
pub fn write_run_report(settings: &RunSettings, out: &std::path::Path) {
    if !settings.report {
        return;
    }
    if let Err(e) = crate::output::report::write_report(out, None) {
        eprintln!("cai: warning: report.html not written: {e}");
    }
}

/// The price of `model` with the `--price-in`/`--price-out` overrides; a
/// `--max-cost` cap needs a known price.
pub(crate) fn budget_price(
    price_in: Option<f64>,
    price_out: Option<f64>,
    max_cost: Option<f64>,
    model: &str,
) -> Result<Option<crate::cost::Price>, ConfigError> {
    for (flag, v) in [("--price-in", price_in), ("--price-out", price_out)] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(ConfigError::flag(
                flag,
                "must be a non-negative number of USD per million tokens",
            ));
        }
    }
    let price = crate::cost::resolve(model, price_in, price_out);
    if let Some(cap) = max_cost {
        if !(cap.is_finite() && cap > 0.0) {
            return Err(ConfigError::flag(
                "--max-cost",
                "must be a positive amount of USD",
            ));
        }
        if price.is_none() {
            return Err(ConfigError::flag(
                "--max-cost",
                format!("needs a price and model `{model}` is not in the price table: pass --price-in and --price-out (USD per million tokens)"),
            ));
        }
    }
    Ok(price)
}
