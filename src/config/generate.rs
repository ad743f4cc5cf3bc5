//! `generate`'s arguments checked once, into a [`GenerateConfig`] the rest
//! of the program reads instead of raw arguments. Every check that can fail
//! before a request is sent (inputs, templates, concurrency, selection,
//! judge options, budgets, prices, the endpoint) lives here or in what it
//! calls, so `generate`, its dry run and `render` agree on what is valid.

use std::path::PathBuf;

use super::{budget_price, ConfigError, RunSettings};
use crate::cli::{
    EndpointArgs, GenerateArgs, InputArgs, OnLengthArg, PreferenceArg, SelectArg, TiesArg,
};
use crate::cost::Price;
use crate::engine::rundir::Fingerprint;
use crate::error::RunError;
use crate::feedback::judge::JudgeOptions;
use crate::input::{prompts, Constitution, InputError, PromptSpec, Shard, ShardArg};
use crate::output::manifest;
use crate::output::PreferenceMode;
use crate::pipeline::OnLength;
use crate::provider::build::Plan;
use crate::provider::GenParams;
use crate::template::Templates;

/// Seed of the principle choice when `--seed` is not given.
pub const DEFAULT_SEED: u64 = 0;

/// Prompts, constitution and templates, loaded and checked.
pub struct Inputs {
    pub spec: PromptSpec,
    /// Prompts in the (limited, sharded) input.
    pub count: u64,
    pub constitution: Constitution,
    pub constitution_path: PathBuf,
    pub templates: Templates,
}

impl Inputs {
    /// Loads prompts, constitution and templates, reporting every problem
    /// at once.
    pub fn load(input: &InputArgs) -> Result<Inputs, RunError> {
        let (Some(prompts_path), Some(constitution_path)) = (&input.prompts, &input.constitution)
        else {
            return Err(RunError::Usage(
                "--prompts FILE and --constitution FILE are both required".into(),
            ));
        };
        let spec = prompt_spec(input, prompts_path.clone())?;
        let mut errors: Vec<InputError> = Vec::new();
        let constitution = Constitution::load(constitution_path)
            .map_err(|e| errors.extend(e.0))
            .ok();
        let count = prompts::validate(&spec)
            .map_err(|e| errors.extend(e.0))
            .ok();
        let templates = Templates::load(input.templates.as_deref());
        match (constitution, count, templates) {
            (Some(constitution), Some(count), Ok(templates)) if errors.is_empty() => Ok(Inputs {
                spec,
                count,
                constitution,
                constitution_path: constitution_path.clone(),
                templates,
            }),
            (_, _, Err(t)) if errors.is_empty() => Err(RunError::Template(t)),
            (_, _, t) => {
                let mut all: Vec<String> = errors.iter().map(ToString::to_string).collect();
                if let Err(t) = t {
                    all.extend(t.iter().map(ToString::to_string));
                }
                Err(RunError::Usage(all.join("\n")))
            }
        }
    }
}

/// The prompt file as `--prompts`, `--prompt-column`, `--limit`, `--shard`
/// say; `--shard auto` is resolved from the environment here.
pub fn prompt_spec(input: &InputArgs, prompts: PathBuf) -> Result<PromptSpec, ConfigError> {
    let shard = match input.shard {
        None => {
            if input.shards.is_some() {
                return Err(ConfigError::conflict(
                    "--shards",
                    "--shard",
                    "--shards N goes with --shard auto",
                ));
            }
            None
        }
        Some(ShardArg::Fixed(s)) => {
            if input.shards.is_some_and(|n| n != s.count) {
                return Err(ConfigError::conflict(
                    "--shard",
                    "--shards",
                    format!(
                        "--shard {s} and --shards {} disagree on the number of shards",
                        input.shards.unwrap_or_default()
                    ),
                ));
            }
            Some(s)
        }
        Some(ShardArg::Auto) => Some(Shard::auto(|name| std::env::var(name).ok(), input.shards)?),
    };
    Ok(PromptSpec {
        path: prompts,
        column: input.prompt_column.clone(),
        limit: input.limit,
        shard,
    })
}

pub use super::judge::Selection;

/// Everything `generate` needs, checked.
pub struct GenerateConfig {
    pub inputs: Inputs,
    pub endpoint: EndpointArgs,
    /// The endpoint, checked but not opened: `generate` downloads the
    /// default model if needed ([`crate::provider::build::prepare`]) and
    /// then builds it.
    pub provider: Plan,
    /// Why this provider was chosen, when it was not named.
    pub provider_note: Option<String>,
    /// A dry run without the key set says so instead of failing.
    pub missing_key: Option<String>,
    pub params: GenParams,
    pub rounds: u32,
    pub samples: u32,
    pub mode: PreferenceMode,
    pub selection: Option<Selection>,
    pub judge: JudgeOptions,
    /// `--judge` specs (empty: the run's own endpoint judges).
    pub judges: Vec<String>,
    /// Recorded in the fingerprint and the manifest.
    pub preference_desc: String,
    pub seed: u64,
    pub price: Option<Price>,
    pub max_cost: Option<f64>,
    pub run: RunSettings,
    pub out: PathBuf,
    /// `--system-prompt FILE`: replaces the constitution's system message.
    pub system_prompt: Option<String>,
    /// `--batch`, `--batch-export`, `--batch-import`: staged through a batch.
    pub batch: Option<crate::engine::batch::BatchMode>,
    /// `--on-length`, or its default (see [`on_length`]).
    pub on_length: OnLength,
    /// `--base-format`, `--examples`, `--num-examples`.
    pub inference: super::inference::Inference,
}

/// `--on-length`, else `retry` for every provider.
///
/// The contract (DESIGN.md, "Pipeline") is that a reply cut off by the
/// token limit is retried or rejected, never written as a row, so that is
/// the default whatever the endpoint. `keep` is there for a run that knows
/// its model rambles, such as the README's first command on the 135M
/// embedded model, which asks for it on its command line: there the rows
/// are marked `"truncated": true` in `trace.jsonl`, counted in the
/// manifest, and the run ends with a note. (Until 2026-12 the embedded
/// model kept by default.)
pub fn on_length(arg: Option<OnLengthArg>) -> OnLength {
    match arg {
        Some(OnLengthArg::Keep) => OnLength::Keep,
        Some(OnLengthArg::Reject) => OnLength::Reject,
        Some(OnLengthArg::Retry) | None => OnLength::Retry,
    }
}

/// A `--system-prompt` file: readable, UTF-8, not blank; trimmed.
pub fn read_system_prompt(path: &std::path::Path) -> Result<String, ConfigError> {
    let bad = |why: String| ConfigError::FlagFile {
        flag: "--system-prompt",
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    Ok(text.to_string())
}

impl GenerateConfig {
    /// Checks `args`; `dry` builds the provider without requiring its key.
    ///
    /// Long because it is a sequence of independent flag checks, each with its
    /// own error, before anything is built.
    pub fn from_args(args: &GenerateArgs, dry: bool) -> Result<GenerateConfig, RunError> {
        let run = RunSettings::from_args(&args.run)?;
        let selection = selection(args)?;
        let params = super::gen_params(&args.sampling)?;
        let mut inputs = Inputs::load(&args.input)?;
        let system_prompt = match &args.system_prompt {
            Some(path) => Some(read_system_prompt(path)?),
            None => None,
        };
        if let Some(s) = &system_prompt {
            inputs.constitution.set_system_message(s.clone());
        }
        let seed = args.sampling.seed.unwrap_or(DEFAULT_SEED);
        let judge = super::judge::options(&args.judge, seed, args.sampling.max_tokens)?;
        for spec in &args.judge.judges {
            super::judge::parse_spec(spec, &args.endpoint)?;
        }
        let provider = if dry {
            super::plan_for_dry_run(&args.endpoint)?
        } else {
            super::plan(&args.endpoint, run.concurrency)?
        };
        let inference = super::inference::Inference::from_args(&args.inference, &args.endpoint)?;
        let raw_text = inference.format == crate::provider::plain::BaseFormat::Plain
            || args.endpoint.api == crate::provider::registry::Api::Completions;
        let batching = args.batch.batch
            || args.batch.batch_export.is_some()
            || args.batch.batch_import.is_some();
        if raw_text && batching {
            return Err(ConfigError::conflict(
                "--batch",
                "--api",
                "batch files hold chat requests: --batch, --batch-export and --batch-import cannot be used with --api completions or --base-format plain",
            )
            .into());
        }
        let (provider_note, missing_key) = (provider.note.clone(), provider.missing_key.clone());
        let batch = batch_mode(&args.batch, &args.endpoint, &provider)?;
        let mut price = budget_price(
            args.price_in,
            args.price_out,
            args.max_cost,
            &provider.model(),
        )?;
        if matches!(batch, Some(crate::engine::batch::BatchMode::Submit { .. })) {
            price = price.map(|p| {
                p.scaled(
                    BATCH_PRICE_FACTOR,
                    &format!("at the batch price (x{BATCH_PRICE_FACTOR})"),
                )
            });
        }
        let mode = match (args.preference, selection) {
            (_, Some(_)) | (PreferenceArg::Judge, None) => PreferenceMode::Judge,
            (PreferenceArg::Revision, None) => PreferenceMode::Revision,
            (PreferenceArg::None, None) => PreferenceMode::None,
        };
        let preference_desc = preference_desc(args, selection, mode);
        let on_length = on_length(args.on_length);
        Ok(GenerateConfig {
            on_length,
            inputs,
            endpoint: args.endpoint.clone(),
            provider,
            provider_note,
            missing_key,
            params,
            rounds: args.rounds,
            samples: args.samples,
            mode,
            selection,
            judge,
            judges: args.judge.judges.clone(),
            preference_desc,
            seed,
            price,
            max_cost: args.max_cost,
            run,
            out: args.out.clone(),
            system_prompt,
            batch,
            inference,
        })
    }

    /// What must match between this run and one it resumes.
    pub fn fingerprint(&self) -> Result<Fingerprint, RunError> {
        Ok(Fingerprint {
            provider: self.provider.name().to_string(),
            model: self.provider.model().to_string(),
            constitution_sha256: manifest::file_sha256(&self.inputs.constitution_path)?,
            templates_sha256: self.inputs.templates.digest().to_string(),
            params: {
                let mut p = serde_json::to_value(&self.params).unwrap_or_default();
                if let (Some(s), Some(obj)) = (&self.system_prompt, p.as_object_mut()) {
                    use sha2::Digest;
                    let h = crate::digest::hex(&sha2::Sha256::digest(s.as_bytes()));
                    obj.insert("system_prompt_sha256".into(), h.into());
                }
                if let Some(obj) = p.as_object_mut() {
                    let i = &self.inference;
                    if i.format != crate::provider::plain::BaseFormat::Chat {
                        obj.insert("base_format".into(), serde_json::json!(i.format));
                    }
                    if let (Some(h), Some((_, k))) = (&i.examples_sha256, &i.examples) {
                        obj.insert("examples_sha256".into(), h.clone().into());
                        obj.insert("num_examples".into(), (*k).into());
                    }
                }
                p
            },
            rounds: self.rounds,
            preference: self.preference_desc.clone(),
            seed: self.seed,
        })
    }
}

impl GenerateConfig {
    /// The manifest of this run as it starts: what it was asked to do
    /// ([`manifest::Manifest::finish`] adds how it went).
    pub fn manifest(
        &self,
        arguments: Vec<String>,
        fingerprint: &Fingerprint,
        started_at_unix: u64,
    ) -> manifest::Manifest {
        let (inputs, p) = (&self.inputs, &self.provider);
        manifest::Manifest {
            cai_version: env!("CARGO_PKG_VERSION").into(),
            status: "running".into(),
            arguments,
            provider: p.name().to_string(),
            model: p.model().to_string(),
            endpoint: p.endpoint(),
            prompts_file: inputs.spec.path.display().to_string(),
            prompts_sha256: String::new(),
            prompt_column: inputs.spec.column.clone(),
            limit: inputs.spec.limit,
            shard: inputs.spec.shard.map(|s| s.to_string()),
            constitution_file: inputs.constitution_path.display().to_string(),
            constitution_sha256: fingerprint.constitution_sha256.clone(),
            constitution_format: format!("{:?}", inputs.constitution.format).to_lowercase(),
            templates_sha256: inputs.templates.digest().to_string(),
            seed: self.seed,
            rounds: self.rounds,
            preference: self.preference_desc.clone(),
            params: serde_json::to_value(&self.params).unwrap_or_default(),
            prompts_total: inputs.count,
            prompts_already_done: 0,
            counts: Default::default(),
            requests: Default::default(),
            started_at_unix,
            wall_time_s: 0.0,
            first_row_s: None,
            requests_per_s: 0.0,
            cost_usd: None,
            price: self.price.clone(),
            max_cost: self.max_cost,
            endpoints: Vec::new(),
            batch: None,
        }
    }

    /// How the run picks its pairs, for [`super::judge::selector`].
    pub fn picking(&self) -> super::judge::Picking<'_> {
        super::judge::Picking {
            selection: self.selection,
            judges: &self.judges,
            options: &self.judge,
            endpoint: &self.endpoint,
            templates: &self.inputs.templates,
            constitution: &self.inputs.constitution,
        }
    }

    /// The share of the standard price the run's batches are billed at.
    pub fn batch_price_factor(&self) -> f64 {
        match self.batch {
            Some(crate::engine::batch::BatchMode::Submit { .. }) => BATCH_PRICE_FACTOR,
            _ => 1.0,
        }
    }
}

/// How pairs are picked, as the fingerprint and the manifest record it.
fn preference_desc(
    args: &GenerateArgs,
    selection: Option<Selection>,
    mode: PreferenceMode,
) -> String {
    match selection {
        None => format!("{mode:?}").to_lowercase(),
        Some(Selection::Heuristic) => format!("heuristic(samples={})", args.samples),
        Some(Selection::Judge { .. }) => {
            let j = &args.judge;
            format!(
                "judge(samples={}, judges=[{}], judge_samples={}, cot={}, tie_margin={}, ties={:?})",
                args.samples,
                j.judges.join(", "),
                j.judge_samples,
                j.judge_cot,
                j.tie_margin,
                j.ties
            )
            .to_lowercase()
        }
    }
}

/// What the batch APIs charge, as a fraction of the standard price (both
/// OpenAI and Anthropic bill batches at half price).
pub const BATCH_PRICE_FACTOR: f64 = 0.5;

/// `--batch`, `--batch-poll`, `--batch-export`, `--batch-import`, checked
/// against each other and the provider before anything is sent.
fn batch_mode(
    args: &crate::cli::BatchArgs,
    endpoint: &EndpointArgs,
    provider: &Plan,
) -> Result<Option<crate::engine::batch::BatchMode>, ConfigError> {
    use crate::engine::batch::BatchMode;
    use crate::provider::registry::BatchSupport;
    let files = args.batch_export.is_some() || args.batch_import.is_some();
    if !(args.batch_poll.is_finite() && args.batch_poll > 0.0) {
        return Err(ConfigError::flag(
            "--batch-poll",
            "must be a positive number of seconds",
        ));
    }
    if args.batch && files {
        return Err(ConfigError::conflict(
            "--batch",
            if args.batch_export.is_some() {
                "--batch-export"
            } else {
                "--batch-import"
            },
            "--batch submits to the provider's batch API; --batch-export/--batch-import hand a stage to you as files: use one or the other",
        ));
    }
    if !args.batch && !files {
        return Ok(None);
    }
    let flag = if args.batch {
        "--batch"
    } else if args.batch_export.is_some() {
        "--batch-export"
    } else {
        "--batch-import"
    };
    if endpoint.base_urls.len() > 1 {
        return Err(ConfigError::conflict(
            flag,
            "--base-url",
            format!("{flag} sends a stage to one service: give one --base-url, not a pool"),
        ));
    }
    let batch = provider.entry().batch;
    if args.batch {
        if batch != BatchSupport::Api {
            return Err(ConfigError::conflict(
                "--batch",
                "--provider",
                format!(
                    "--batch: provider `{}` has no batch API that cai can use (it drives the OpenAI and Anthropic ones: --provider openai or anthropic); for a vLLM server, use --batch-export FILE and `vllm run_batch`",
                    provider.name()
                ),
            ));
        }
        return Ok(Some(BatchMode::Submit {
            poll: std::time::Duration::from_secs_f64(args.batch_poll),
        }));
    }
    let openai_format = provider.entry().backend == crate::provider::registry::Backend::OpenAi;
    if batch == BatchSupport::None || !openai_format {
        return Err(ConfigError::conflict(
            flag,
            "--provider",
            format!(
                "{flag} reads and writes the OpenAI batch format, which provider `{}` does not speak: use an OpenAI-compatible provider (openai, vllm, ...)",
                provider.name()
            ),
        ));
    }
    if let Some(p) = &args.batch_import {
        if !p.is_file() {
            return Err(ConfigError::FlagFile {
                flag: "--batch-import",
                path: p.clone(),
                why: "no such file".into(),
            });
        }
    }
    Ok(Some(BatchMode::Files {
        import: args.batch_import.clone(),
        export: args.batch_export.clone(),
    }))
}

/// How `generate` picks pairs among candidates, from `--preference`,
/// `--samples` and `--select`; `None` = the plain revision/none modes.
fn selection(args: &GenerateArgs) -> Result<Option<Selection>, ConfigError> {
    if args.samples == 0 {
        return Err(ConfigError::flag("--samples", "must be at least 1"));
    }
    let judge = Selection::Judge {
        keep_ties: args.judge.ties == TiesArg::Keep,
    };
    match (args.preference, args.select) {
        (PreferenceArg::Judge, None | Some(SelectArg::Judge)) => Ok(Some(judge)),
        (PreferenceArg::Judge | PreferenceArg::Revision, Some(SelectArg::Heuristic)) => {
            Ok(Some(Selection::Heuristic))
        }
        (PreferenceArg::Revision, Some(SelectArg::Judge)) => Err(ConfigError::conflict(
            "--select",
            "--preference",
            "--select judge needs --preference judge",
        )),
        (PreferenceArg::Revision, None) if args.samples > 1 => Err(ConfigError::conflict(
            "--samples",
            "--preference",
            "--samples above 1 needs a way to pick the pair: --preference judge (AI-feedback tournament) or --select heuristic",
        )),
        (PreferenceArg::None, _) if args.samples > 1 || args.select.is_some() => {
            Err(ConfigError::conflict(
                if args.samples > 1 { "--samples" } else { "--select" },
                "--preference",
                "--samples and --select pick preference pairs; they do nothing with --preference none",
            ))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_off_replies_are_retried_by_default_with_every_provider() {
        assert_eq!(on_length(None), OnLength::Retry);
        assert_eq!(on_length(Some(OnLengthArg::Reject)), OnLength::Reject);
        assert_eq!(on_length(Some(OnLengthArg::Keep)), OnLength::Keep);
    }
}
