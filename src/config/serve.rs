//! `cai serve`'s arguments → one checked [`ServeConfig`].
//!
//! Everything that can be wrong with the arguments is found here, before a
//! port is opened or a model loaded: ranges, the approach, keys held in
//! the environment, the files named (constitution, templates, system
//! prompt). Nothing is sent and no model is opened; [`crate::serve`] does
//! that from the config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::cli::{EndpointArgs, ServeArgs};
use crate::engine::EngineConfig;
use crate::error::{ConfigError, RunError};
use crate::input::Constitution;
use crate::provider::http::ReplyLimit;
use crate::provider::GenParams;
use crate::serve::approach::{self, Plan};
use crate::template::Templates;

/// The default constitution when `--constitution` is not given.
const DEFAULT_CONSTITUTION: &str = include_str!("../../principles/harmless.json");

/// `cai serve`, checked.
pub struct ServeConfig {
    /// `host:port` to listen on.
    pub addr: String,
    /// Time in-flight requests get after Ctrl-C or SIGTERM.
    pub grace: Duration,
    pub default_plan: Plan,
    pub best_of_n: u32,
    /// The search approaches' settings (`--mcts-depth`, `--z3-timeout`, …).
    pub knobs: approach::Knobs,
    /// `--return-full-response`.
    pub return_full_response: bool,
    /// SHA-256 of the key clients must send (`--auth-key-env`).
    pub auth: Option<[u8; 32]>,
    /// `--max-tokens`, `--temperature`, `--top-p`: what an approach uses
    /// where the client sent none and it needs one.
    pub defaults: GenParams,
    /// Seed of principle and comparison choices (`--seed`, else 0).
    pub seed: u64,
    pub constitution: Constitution,
    pub templates: Templates,
    pub judge_templates: Templates,
    pub system_prompt: Option<String>,
    /// `--log-requests DIR`: the file `DIR/requests.jsonl`.
    pub log_requests: Option<PathBuf>,
    pub engine: EngineConfig,
    pub max_inflight: usize,
    pub max_body: usize,
    pub max_messages: usize,
    pub upstream: UpstreamConfig,
    /// `--base-format` (applied to a typed upstream) and `--examples`
    /// (placed before the last user turn of every request).
    pub inference: crate::config::inference::Inference,
}

/// Where upstream calls go.
pub enum UpstreamConfig {
    /// An OpenAI-compatible server: bodies forwarded, models routed.
    Forward(ForwardConfig),
    /// Any other backend (the embedded model, Anthropic, Gemini, TGI's
    /// `generate`): typed calls to its one model, as built by
    /// [`crate::config::build_provider`].
    Typed(Box<EndpointArgs>),
}

/// An OpenAI-compatible upstream.
pub struct ForwardConfig {
    /// `openai` or the preset's name.
    pub name: &'static str,
    /// API roots with their weights (`URL#weight=W`, default 1); several
    /// are one pool, balanced as [`crate::provider::pool`] describes.
    pub bases: Vec<(String, f64)>,
    pub key: Option<SecretString>,
    pub key_var: Option<String>,
    pub timeout: Duration,
    pub limit: ReplyLimit,
    pub models: ModelPolicy,
    /// `--forward-client-key`.
    pub forward_client_key: bool,
}

/// Which models clients may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    /// The model of a client that names none (`--model`, else the
    /// preset's, else the first of `--models`).
    pub default: Option<String>,
    /// `None`: any (`--allow-any-model`, or nothing named to check against).
    pub accepted: Option<Vec<String>>,
}

impl ModelPolicy {
    pub fn accepts(&self, model: &str) -> bool {
        self.accepted
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == model))
    }
}

impl ServeConfig {
    pub fn from_args(args: &ServeArgs) -> Result<ServeConfig, RunError> {
        if args.max_inflight == 0 {
            return Err(ConfigError::flag("--max-inflight", "must be at least 1").into());
        }
        if args.best_of_n == 0 || args.best_of_n > 16 {
            let why = format!("{} must be within 1..=16", args.best_of_n);
            return Err(ConfigError::flag("--best-of-n", why).into());
        }
        if !(args.grace.is_finite() && args.grace >= 0.0) {
            let why = format!("{} must be a number of seconds", args.grace);
            return Err(ConfigError::flag("--grace", why).into());
        }
        if args.forward_client_key && args.auth_key_env.is_some() {
            return Err(ConfigError::conflict(
                "--forward-client-key",
                "--auth-key-env",
                "--forward-client-key and --auth-key-env cannot be used together: one passes the client's key upstream, the other checks it against the server's own",
            )
            .into());
        }
        let default_plan = Plan::parse(&args.approach)
            .map_err(|bad| ConfigError::flag("--approach", approach::unknown(&bad.0)))?;
        let defaults = crate::config::gen_params(&args.sampling)?;
        let constitution = match &args.constitution {
            Some(p) => Constitution::load(p)?,
            None => {
                Constitution::parse(Path::new("principles/harmless.json"), DEFAULT_CONSTITUTION)?
            }
        };
        let templates = Templates::load(args.templates.as_deref()).map_err(RunError::Template)?;
        let judge_templates =
            Templates::load(args.templates.as_deref()).map_err(RunError::Template)?;
        Ok(ServeConfig {
            addr: format!("{}:{}", args.host, args.port),
            grace: Duration::from_secs_f64(args.grace),
            default_plan,
            best_of_n: args.best_of_n,
            knobs: knobs(args)?,
            return_full_response: args.return_full_response,
            auth: auth_digest(args.auth_key_env.as_deref())?,
            defaults,
            seed: args.sampling.seed.unwrap_or(0),
            constitution,
            templates,
            judge_templates,
            system_prompt: system_prompt(args.system_prompt.as_deref())?,
            log_requests: args.log_requests.as_ref().map(|d| d.join("requests.jsonl")),
            engine: EngineConfig {
                rpm: args.rpm,
                tpm: args.tpm,
                max_retries: args.max_retries,
                keep_truncated: true,
                ..EngineConfig::default()
            },
            max_inflight: args.max_inflight,
            max_body: args.max_body_bytes,
            max_messages: args.max_messages,
            upstream: upstream(args)?,
            inference: crate::config::inference::Inference::from_args(
                &args.inference,
                &args.endpoint,
            )?,
        })
    }
}

/// The search approaches' settings from their flags, checked.
fn knobs(args: &ServeArgs) -> Result<approach::Knobs, ConfigError> {
    if !(args.z3_timeout.is_finite() && args.z3_timeout > 0.0) {
        let why = format!("{} must be a positive number of seconds", args.z3_timeout);
        return Err(ConfigError::flag("--z3-timeout", why));
    }
    let k = approach::Knobs {
        mcts_simulations: args.mcts_simulations,
        mcts_exploration: args.mcts_exploration,
        mcts_depth: args.mcts_depth,
        pvg_rounds: args.pvg_rounds,
        pvg_solutions: args.pvg_solutions,
        rstar_max_depth: args.rstar_max_depth,
        rstar_num_rollouts: args.rstar_num_rollouts,
        rstar_c: args.rstar_c,
        z3_timeout: Duration::from_secs_f64(args.z3_timeout),
        z3_memory_mb: args.z3_memory,
    };
    k.check().map_err(|bad| {
        let flag = match bad.field {
            "mcts_simulations" => "--mcts-simulations",
            "mcts_exploration" => "--mcts-exploration",
            "mcts_depth" => "--mcts-depth",
            "pvg_rounds" => "--pvg-rounds",
            "pvg_solutions" => "--pvg-solutions",
            "rstar_max_depth" => "--rstar-max-depth",
            "rstar_num_rollouts" => "--rstar-num-rollouts",
            "rstar_c" => "--rstar-c",
            "z3_memory_mb" => "--z3-memory",
            _ => "--z3-timeout",
        };
        ConfigError::flag(flag, bad.why)
    })?;
    Ok(k)
}

/// The digest of the key clients must send, read from `var`.
fn auth_digest(var: Option<&str>) -> Result<Option<[u8; 32]>, ConfigError> {
    let Some(var) = var else { return Ok(None) };
    let flag = |why: String| ConfigError::flag("--auth-key-env", why);
    if !crate::config::is_var_name(var) {
        return Err(flag(format!(
            "`{var}` is not an environment variable name (the key itself never goes on the command line)"
        )));
    }
    let key =
        std::env::var(var).map_err(|_| flag(format!("{var}: ${var} is not set (or not UTF-8)")))?;
    if key.is_empty() {
        return Err(flag(format!("{var}: ${var} is empty")));
    }
    Ok(Some(Sha256::digest(key.as_bytes()).into()))
}

/// The text of `--system-prompt FILE`, which must say something.
fn system_prompt(path: Option<&Path>) -> Result<Option<String>, ConfigError> {
    let Some(p) = path else { return Ok(None) };
    let file = |why: String| ConfigError::FlagFile {
        flag: "--system-prompt",
        path: p.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(p).map_err(|e| file(format!("cannot read it: {e}")))?;
    if text.trim().is_empty() {
        return Err(file("the file is empty".into()));
    }
    Ok(Some(text.trim_end().to_string()))
}

/// Forwarding for OpenAI-compatible endpoints, typed calls for the rest.
///
/// Long because each endpoint flag is checked in turn with its own error.
fn upstream(args: &ServeArgs) -> Result<UpstreamConfig, ConfigError> {
    let e = &args.endpoint;
    let (kind, _) = crate::config::select_provider(e);
    let preset = kind.entry();
    // Raw text (a base model) cannot take forwarded chat bodies: such an
    // upstream gets typed calls, rendered by its provider.
    let raw_text = e.api == crate::provider::registry::Api::Completions
        || args.inference.base_format == crate::provider::plain::BaseFormat::Plain;
    if kind.backend() != crate::provider::registry::Backend::OpenAi || raw_text {
        if !args.models.is_empty() || args.allow_any_model || args.forward_client_key {
            return Err(ConfigError::conflict(
                "--models",
                "--provider",
                format!(
                    "--models, --allow-any-model and --forward-client-key need an OpenAI-compatible chat upstream, not --provider {}{}",
                    kind.name(),
                    if raw_text { " with --api completions or --base-format plain" } else { "" }
                ),
            ));
        }
        return Ok(UpstreamConfig::Typed(Box::new(e.clone())));
    }
    if !(e.timeout.is_finite() && e.timeout > 0.0) {
        let why = format!("{} must be positive", e.timeout);
        return Err(ConfigError::flag("--timeout", why));
    }
    if e.max_reply_bytes
        .is_some_and(|b| b < crate::config::MIN_REPLY_BYTES)
    {
        let why = format!(
            "must be at least {} (room for one small JSON reply)",
            crate::config::MIN_REPLY_BYTES
        );
        return Err(ConfigError::flag("--max-reply-bytes", why));
    }
    let mut bases = Vec::with_capacity(e.base_urls.len().max(1));
    for spec in &e.base_urls {
        bases.push(crate::provider::build::pool_member(spec)?);
    }
    if bases.is_empty() {
        let Some(url) = preset.base_url else {
            let why = format!(
                "provider {} has no default URL: name its server",
                kind.name()
            );
            return Err(ConfigError::flag("--base-url", why));
        };
        bases.push((url.to_string(), 1.0));
    }
    // A hosted service needs the server's key, unless clients bring theirs.
    let hosted = e.base_urls.is_empty() && preset.is_hosted() && !args.forward_client_key;
    let (key, key_var) = crate::provider::build::read_key(&e.flags(), kind, hosted)?;
    let mut listed: Vec<String> = args
        .models
        .iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let default = e
        .model
        .clone()
        .or_else(|| {
            e.base_urls
                .is_empty()
                .then_some(preset.default_model)
                .flatten()
                .map(str::to_string)
        })
        .or_else(|| listed.first().cloned());
    if let Some(d) = &default {
        if !listed.contains(d) {
            listed.insert(0, d.clone());
        }
    }
    let accepted = (!args.allow_any_model && !listed.is_empty()).then_some(listed);
    Ok(UpstreamConfig::Forward(ForwardConfig {
        name: preset.name,
        bases,
        key,
        key_var,
        timeout: Duration::from_secs_f64(e.timeout),
        limit: ReplyLimit::fixed(e.max_reply_bytes),
        models: ModelPolicy { default, accepted },
        forward_client_key: args.forward_client_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<ServeConfig, RunError> {
        let cli =
            crate::cli::Cli::try_parse_from(["cai", "serve"].iter().chain(args.iter()).copied())
                .expect("arguments parse");
        let crate::cli::Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        ServeConfig::from_args(&a)
    }

    fn forward(args: &[&str]) -> ForwardConfig {
        match config(args).map(|c| c.upstream) {
            Ok(UpstreamConfig::Forward(f)) => f,
            Ok(UpstreamConfig::Typed(_)) => panic!("typed"),
            Err(e) => panic!("{e}"),
        }
    }

    const UP: [&str; 4] = [
        "--provider",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ];

    #[test]
    fn models_default_to_model_and_accept_the_listed_ones() {
        let f = forward(&[&UP[..], &["--model", "a", "--models", "b,c"]].concat());
        assert_eq!(f.models.default.as_deref(), Some("a"));
        assert!(f.models.accepts("a") && f.models.accepts("c"));
        assert!(!f.models.accepts("d"));
        let f = forward(&[&UP[..], &["--model", "a", "--allow-any-model"]].concat());
        assert!(f.models.accepts("anything"));
        let f = forward(&[&UP[..], &["--models", "x,y"]].concat());
        assert_eq!(f.models.default.as_deref(), Some("x"));
    }

    #[test]
    fn forwarding_the_clients_key_excludes_checking_it() {
        std::env::set_var("CAI_TEST_SERVE_AUTH", "k");
        let err = config(
            &[
                &UP[..],
                &[
                    "--forward-client-key",
                    "--auth-key-env",
                    "CAI_TEST_SERVE_AUTH",
                ],
            ]
            .concat(),
        )
        .err()
        .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("--forward-client-key") && msg.contains("--auth-key-env"),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}
