//! `optimize` and `optimize eval` arguments checked once, into an
//! [`OptimizeConfig`]: queries, aspects, examples, templates, the three
//! endpoints (base, evaluator, optimizer), search sizes, limits. Every
//! check happens here, so a bad file or option exits 2 before anything is
//! sent.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{budget_price, ConfigError, RunSettings};
use crate::cli::{EndpointArgs, OptimizeArgs, OptimizeCommonArgs, OptimizeEvalArgs};
use crate::cost::Price;
use crate::engine::rundir::Fingerprint;
use crate::error::RunError;
use crate::feedback::drpo::examples::ExampleOptions;
use crate::feedback::drpo::{self, Aspect, Sampling, SearchOptions};
use crate::input::queries::{self, Example};
use crate::input::PromptRecord;
use crate::provider::build::Plan;
use crate::provider::plain::{self, BaseFormat};
use crate::provider::GenParams;

/// The paper's depth: 20 prompts on a path, the start prompt's included.
pub const PAPER_STEPS: usize = 19;
use crate::template::Templates;

/// One role's endpoint: its arguments and (unless a dry run) its checked
/// provider, opened by the command after the model download step.
pub struct Role {
    pub endpoint: EndpointArgs,
    pub provider: Option<Plan>,
    /// `provider:model` for reports.
    pub label: String,
}

/// What `optimize` or `optimize eval` does.
pub enum Task {
    Search {
        opts: SearchOptions,
        examples: ExampleOptions,
        initial_prompt: String,
        optimizer: Box<Role>,
    },
    Eval {
        /// (file, prompt text), in the order given.
        prompts: Vec<(PathBuf, String)>,
    },
}

/// Everything `optimize` needs, checked.
pub struct OptimizeConfig {
    pub queries: Vec<PromptRecord>,
    pub queries_path: PathBuf,
    pub aspects: Vec<Aspect>,
    pub examples: Vec<Example>,
    /// Examples placed before each query.
    pub k: usize,
    pub templates: Templates,
    pub base: Role,
    /// How the base model is prompted (`--base-format`).
    pub base_format: BaseFormat,
    pub evaluator: Role,
    pub task: Task,
    pub sampling: Sampling,
    pub seed: u64,
    pub retry_dropped: bool,
    pub price: Option<Price>,
    pub max_cost: Option<f64>,
    pub run: RunSettings,
    pub out: PathBuf,
    pub dry_run: bool,
    /// A dry run without the key set says so instead of failing.
    pub missing_key: Option<String>,
}

fn load_aspects(path: Option<&Path>) -> Result<Vec<Aspect>, ConfigError> {
    let Some(path) = path else {
        return Ok(drpo::default_aspects());
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::FlagFile {
        flag: "--aspects",
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let list: Vec<Aspect> = serde_json::from_str(&text).map_err(|e| ConfigError::FileLine {
        path: path.to_path_buf(),
        line: e.line(),
        why: format!("not a JSON array of {{\"name\", \"description\"}}: {e}"),
    })?;
    if list.is_empty() {
        return Err(ConfigError::File {
            path: path.to_path_buf(),
            why: "no aspects".into(),
        });
    }
    for (i, a) in list.iter().enumerate() {
        if a.name.trim().is_empty() {
            return Err(ConfigError::FileKey {
                path: path.to_path_buf(),
                key: format!("[{i}].name"),
                why: "is empty".into(),
            });
        }
    }
    Ok(list)
}

/// The flags of one role's sampling parameters.
struct RoleFlags {
    temperature: &'static str,
    top_p: &'static str,
    max_tokens: &'static str,
}

const BASE_FLAGS: RoleFlags = RoleFlags {
    temperature: "--base-temperature",
    top_p: "--base-top-p",
    max_tokens: "--base-max-tokens",
};
const EVALUATOR_FLAGS: RoleFlags = RoleFlags {
    temperature: "--evaluator-temperature",
    top_p: "--evaluator-top-p",
    max_tokens: "--evaluator-max-tokens",
};
const OPTIMIZER_FLAGS: RoleFlags = RoleFlags {
    temperature: "--optimizer-temperature",
    top_p: "--optimizer-top-p",
    max_tokens: "--optimizer-max-tokens",
};

/// One role's sampling parameters, checked (the seed is set per ask).
fn role_params(
    flags: &RoleFlags,
    temperature: f32,
    top_p: f32,
    max_tokens: u32,
) -> Result<GenParams, ConfigError> {
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ConfigError::flag(
            flags.temperature,
            format!("{temperature} is outside 0..=2"),
        ));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ConfigError::flag(
            flags.top_p,
            format!("{top_p} is outside (0, 1]"),
        ));
    }
    if max_tokens == 0 {
        return Err(ConfigError::flag(flags.max_tokens, "must be at least 1"));
    }
    Ok(GenParams {
        max_tokens,
        temperature,
        top_p,
        ..GenParams::default()
    })
}

/// Builds a role's provider; `spec` (`provider:model[@url]`) or the base.
fn role(
    flag: &'static str,
    spec: Option<&str>,
    base: &EndpointArgs,
    base_provider: &Option<Plan>,
    dry: bool,
    concurrency: usize,
) -> Result<Role, ConfigError> {
    let label = |p: &Plan| format!("{}:{}", p.name(), p.model());
    let Some(spec) = spec else {
        return Ok(Role {
            endpoint: base.clone(),
            provider: base_provider.clone(),
            label: base_provider
                .as_ref()
                .map(label)
                .unwrap_or_else(|| "base".into()),
        });
    };
    let e = super::judge::parse_spec(spec, base).map_err(|e| e.under_flag(flag))?;
    let provider = if dry {
        None
    } else {
        Some(super::plan(&e, concurrency)?)
    };
    Ok(Role {
        label: provider
            .as_ref()
            .map(label)
            .unwrap_or_else(|| spec.to_string()),
        endpoint: e,
        provider,
    })
}

impl OptimizeConfig {
    /// The checks `optimize` and `optimize eval` share. Long because it is a
    /// sequence of independent flag checks, each with its own error.
    fn common(c: &OptimizeCommonArgs, dry: bool) -> Result<OptimizeConfig, RunError> {
        let run = RunSettings::from_args(&c.run)?;
        let base_params = role_params(&BASE_FLAGS, c.base_temperature, 1.0, c.base_max_tokens)?;
        let evaluator_params = role_params(
            &EVALUATOR_FLAGS,
            c.evaluator_temperature,
            1.0,
            c.evaluator_max_tokens,
        )?;
        let (Some(qpath), Some(out)) = (&c.queries, &c.out) else {
            return Err(RunError::Usage(
                "--queries FILE and --out DIR are both required".into(),
            ));
        };
        let queries = queries::read_queries(qpath)?;
        let aspects = load_aspects(c.aspects.as_deref())?;
        let examples = match &c.examples {
            Some(p) => queries::read_examples(p)?,
            None => Vec::new(),
        };
        if c.examples.is_some() && c.num_examples == 0 {
            return Err(ConfigError::conflict(
                "--num-examples",
                "--examples",
                "--num-examples must be at least 1 with --examples",
            )
            .into());
        }
        let templates = Templates::load(c.templates.as_deref()).map_err(RunError::Template)?;
        let (base_provider, missing_key) = if dry {
            let p = super::plan_for_dry_run(&c.endpoint)?;
            let m = p.missing_key.clone();
            (Some(p), m)
        } else {
            (Some(super::plan(&c.endpoint, run.concurrency)?), None)
        };
        if let Some(p) = &base_provider {
            plain::check(c.base_format, p.entry(), c.endpoint.api)
                .map_err(|e| ConfigError::flag("--base-format", e.to_string()))?;
        }
        let evaluator = role(
            "--evaluator",
            c.evaluator.as_deref(),
            &c.endpoint,
            &base_provider,
            dry,
            run.concurrency,
        )?;
        // The label names the plain format, as the base model's journal
        // keys do (`NAME+plain`), so a report says how it was prompted.
        let plain_suffix = match c.base_format {
            BaseFormat::Plain => "+plain",
            BaseFormat::Chat => "",
        };
        let base_label = base_provider
            .as_ref()
            .map(|p| format!("{}{plain_suffix}:{}", p.name(), p.model()))
            .unwrap_or_default();
        let price = match &base_provider {
            Some(p) => budget_price(c.price_in, c.price_out, c.max_cost, &p.model())?,
            None => None,
        };
        Ok(OptimizeConfig {
            queries,
            queries_path: qpath.clone(),
            aspects,
            examples,
            k: c.num_examples,
            templates,
            base: Role {
                endpoint: c.endpoint.clone(),
                provider: base_provider,
                label: base_label,
            },
            base_format: c.base_format,
            evaluator,
            task: Task::Eval {
                prompts: Vec::new(),
            },
            sampling: Sampling {
                optimizer: evaluator_params.clone(),
                base: base_params,
                evaluator: evaluator_params,
            },
            seed: c.seed.unwrap_or(super::generate::DEFAULT_SEED),
            retry_dropped: c.retry_dropped,
            price,
            max_cost: c.max_cost,
            run,
            out: out.clone(),
            dry_run: dry,
            missing_key,
        })
    }

    /// `cai optimize`.
    pub fn search(args: &OptimizeArgs) -> Result<OptimizeConfig, RunError> {
        let c = &args.common;
        for (flag, v) in [
            ("--beam", Some(args.beam)),
            ("--actions", Some(args.actions)),
            ("--depth", args.depth),
        ] {
            if v == Some(0) {
                return Err(ConfigError::flag(flag, "must be at least 1").into());
            }
        }
        let mut cfg = Self::common(c, c.dry_run)?;
        cfg.sampling.optimizer = role_params(
            &OPTIMIZER_FLAGS,
            args.optimizer_temperature,
            args.optimizer_top_p,
            args.optimizer_max_tokens,
        )?;
        if c.examples.is_some() && (args.example_rounds == 0 || args.example_candidates == 0) {
            return Err(ConfigError::conflict(
                "--example-rounds",
                "--examples",
                "--example-rounds and --example-candidates must be at least 1 with --examples",
            )
            .into());
        }
        let initial_prompt = match &args.initial_prompt {
            Some(p) => super::generate::read_system_prompt(p)
                .map_err(|e| e.under_flag("--initial-prompt"))?,
            None => drpo::INITIAL_PROMPT.to_string(),
        };
        let optimizer = role(
            "--optimizer",
            args.optimizer.as_deref(),
            &c.endpoint,
            &cfg.base.provider,
            c.dry_run,
            cfg.run.concurrency,
        )?;
        cfg.task = Task::Search {
            opts: SearchOptions {
                beam: args.beam,
                actions: args.actions,
                depth: args
                    .depth
                    .unwrap_or_else(|| cfg.queries.len().saturating_sub(1).clamp(1, PAPER_STEPS)),
                max_depth_increase: args.max_depth_increase,
            },
            examples: ExampleOptions {
                rounds: args.example_rounds,
                candidates: args.example_candidates,
            },
            initial_prompt,
            optimizer: Box::new(optimizer),
        };
        Ok(cfg)
    }

    /// `cai optimize eval`.
    pub fn eval(args: &OptimizeEvalArgs) -> Result<OptimizeConfig, RunError> {
        if args.prompts.is_empty() {
            return Err(RunError::Usage(
                "give at least one --prompt FILE to score".into(),
            ));
        }
        let mut prompts = Vec::new();
        for p in &args.prompts {
            let text =
                super::generate::read_system_prompt(p).map_err(|e| e.under_flag("--prompt"))?;
            prompts.push((p.clone(), text));
        }
        let mut cfg = Self::common(&args.common, args.common.dry_run)?;
        cfg.task = Task::Eval { prompts };
        Ok(cfg)
    }

    /// What must match between this run and one it resumes. The depth is
    /// left out: re-running with a larger `--depth` extends the search.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for q in &self.queries {
            field(q.id.as_bytes());
            field(q.text.as_bytes());
        }
        for a in &self.aspects {
            field(a.name.as_bytes());
            field(a.description.as_bytes());
        }
        for e in &self.examples {
            field(e.query.as_bytes());
            field(e.answer.as_bytes());
        }
        let (kind, extra) = match &self.task {
            Task::Search {
                opts,
                examples,
                initial_prompt,
                optimizer,
            } => {
                field(initial_prompt.as_bytes());
                (
                    "optimize",
                    serde_json::json!({"beam": opts.beam, "actions": opts.actions, "optimizer": optimizer.label,
                                       "examples": examples}),
                )
            }
            Task::Eval { prompts } => {
                for (_, p) in prompts {
                    field(p.as_bytes());
                }
                ("optimize-eval", serde_json::json!({}))
            }
        };
        let inputs = crate::digest::hex(&h.finalize());
        Fingerprint {
            provider: self
                .base
                .provider
                .as_ref()
                .map(|p| p.name().to_string())
                .unwrap_or_default(),
            model: self
                .base
                .provider
                .as_ref()
                .map(|p| p.model())
                .unwrap_or_default(),
            constitution_sha256: inputs,
            templates_sha256: self.templates.digest().to_string(),
            params: serde_json::json!({
                "params": self.sampling, "evaluator": self.evaluator.label, "k": self.k,
                "base_format": self.base_format,
                "asks": drpo::MAX_ASKS, "search": extra,
            }),
            rounds: 0,
            preference: kind.to_string(),
            seed: self.seed,
        }
    }
}
