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
use crate::feedback::drpo::{self, Aspect, SearchOptions};
use crate::input::queries::{self, Example};
use crate::input::PromptRecord;
use crate::provider::build::Plan;
use crate::provider::GenParams;
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
    pub k: usize,
    pub templates: Templates,
    pub base: Role,
    pub evaluator: Role,
    pub task: Task,
    pub params: GenParams,
    pub seed: u64,
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
    fn common(c: &OptimizeCommonArgs, dry: bool) -> Result<OptimizeConfig, RunError> {
        let run = RunSettings::from_args(&c.run)?;
        let params = super::gen_params(&c.sampling)?;
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
        if c.examples.is_some() && c.k == 0 {
            return Err(ConfigError::conflict(
                "--k",
                "--examples",
                "--k must be at least 1 with --examples",
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
        let evaluator = role(
            "--evaluator",
            c.evaluator.as_deref(),
            &c.endpoint,
            &base_provider,
            dry,
            run.concurrency,
        )?;
        let base_label = base_provider
            .as_ref()
            .map(|p| format!("{}:{}", p.name(), p.model()))
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
            k: c.k,
            templates,
            base: Role {
                endpoint: c.endpoint.clone(),
                provider: base_provider,
                label: base_label,
            },
            evaluator,
            task: Task::Eval {
                prompts: Vec::new(),
            },
            params,
            seed: c.sampling.seed.unwrap_or(super::generate::DEFAULT_SEED),
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
                depth: args.depth.unwrap_or(cfg.queries.len()),
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
                initial_prompt,
                optimizer,
            } => {
                field(initial_prompt.as_bytes());
                (
                    "optimize",
                    serde_json::json!({"beam": opts.beam, "actions": opts.actions, "optimizer": optimizer.label}),
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
                "params": self.params, "evaluator": self.evaluator.label, "k": self.k,
                "asks": drpo::MAX_ASKS, "search": extra,
            }),
            rounds: 0,
            preference: kind.to_string(),
            seed: self.seed,
        }
    }
}
