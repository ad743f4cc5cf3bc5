//! From parsed arguments to a checked configuration and a ready provider.
//!
//! Everything here runs before the first request: a bad URL, a missing key
//! or an unreadable chat template is a [`ConfigError`] (exit 2), never a
//! failed request. Keys are read from the environment (never from the
//! command line) and held as [`SecretString`], which does not print.

pub mod generate;
pub mod inference;
pub mod judge;
pub mod label;
pub mod optimize;
pub mod serve;
pub mod settings;

use crate::cli::{EndpointArgs, SamplingArgs};
use crate::provider::build::{self, Keys, Plan};
use crate::provider::chat_template::ChatTemplate;
use crate::provider::registry::ProviderKind;
use crate::provider::GenParams;

pub use crate::error::ConfigError;
pub use crate::provider::build::{default_key_vars, is_var_name, MIN_REPLY_BYTES};

/// Which backend, and why (for the one line cai prints when it chose).
pub fn select_provider(args: &EndpointArgs) -> (ProviderKind, Option<String>) {
    build::select_provider(&args.flags())
}

/// Loads `--chat-template` (see [`build::load_chat_template`]).
pub fn load_chat_template(spec: &str) -> Result<ChatTemplate, ConfigError> {
    Ok(build::load_chat_template(spec)?)
}

/// Checks the endpoint the arguments describe into a [`Plan`]: keys read,
/// nothing opened or downloaded (that is [`build::prepare`]'s step).
pub fn plan(args: &EndpointArgs, concurrency: usize) -> Result<Plan, ConfigError> {
    Ok(build::plan(&args.flags(), concurrency, Keys::Required)?)
}

/// [`plan`] for a dry run, which sends nothing: a missing API key is not an
/// error but a note ([`Plan::missing_key`]).
pub fn plan_for_dry_run(args: &EndpointArgs) -> Result<Plan, ConfigError> {
    Ok(build::plan(&args.flags(), 1, Keys::Optional)?)
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
