//! The judge's settings from the command line: options, `--judge` specs,
//! and one engine (with its own journal) per judge.

use std::sync::Arc;

use super::ConfigError;
use crate::engine::Engine;
use crate::feedback::judge::{Judge, JudgeEndpoint, JudgeOptions};
use crate::feedback::select::Selector;

/// Where and how judge engines are opened.
pub struct EngineSetup<'a> {
    /// The run's `.cai` directory (journals live there).
    pub state_dir: &'a std::path::Path,
    /// Items already written (their journal entries are not loaded).
    pub done: &'a crate::engine::ids::IdSet,
    pub cfg: crate::engine::EngineConfig,
    pub stop: crate::engine::StopSignal,
    /// Shared counters: progress, manifest and `--max-requests` cover all judges.
    pub stats: Arc<crate::engine::Stats>,
    pub concurrency: usize,
}

/// Checks the judge options.
pub fn options(
    args: &crate::cli::JudgeArgs,
    seed: u64,
    cot_max_tokens: u32,
) -> Result<JudgeOptions, ConfigError> {
    if args.judge_samples == 0 {
        return Err(ConfigError::flag("--judge-samples", "must be at least 1"));
    }
    if !(0.0..0.5).contains(&args.tie_margin) {
        return Err(ConfigError::flag(
            "--tie-margin",
            format!("{} is outside [0, 0.5)", args.tie_margin),
        ));
    }
    Ok(JudgeOptions {
        samples: args.judge_samples,
        cot: args.judge_cot,
        tie_margin: args.tie_margin,
        seed,
        cot_max_tokens,
    })
}

/// Endpoint arguments for one `--judge provider:model[@base_url]`: the
/// provider name is any `--provider` value, the model is everything up to
/// the first `@` (so `ollama`-style `llama3:8b` works), the base URL the
/// rest. Timeout and chat template come from the main endpoint arguments;
/// the key from the provider's default variable.
pub fn parse_spec(
    spec: &str,
    base: &crate::cli::EndpointArgs,
) -> Result<crate::cli::EndpointArgs, ConfigError> {
    use clap::ValueEnum;
    let bad = |why: &str| {
        ConfigError::flag(
            "--judge",
            format!("`{spec}`: {why} (expected provider:model[@base_url])"),
        )
    };
    let (provider, rest) = spec.split_once(':').ok_or_else(|| bad("no provider"))?;
    let kind = crate::cli::ProviderKind::from_str(provider.trim(), true)
        .map_err(|_| bad(&format!("unknown provider `{provider}`")))?;
    let (model, url) = match rest.split_once('@') {
        Some((m, u)) => (m, Some(u.trim().to_string())),
        None => (rest, None),
    };
    if model.trim().is_empty() {
        return Err(bad("no model"));
    }
    let mut e = base.clone();
    e.provider = Some(kind);
    e.model = Some(model.trim().to_string());
    e.base_urls = url.into_iter().collect();
    e.api_key_env = None;
    // A judge, evaluator or optimizer reads and writes JSON or verdicts:
    // it is a chat model, whatever API the base endpoint is reached by.
    e.api = crate::provider::registry::Api::Chat;
    Ok(e)
}

/// Opens an engine for `provider` with its own journal file in the state dir.
pub fn open_engine(
    provider: Arc<dyn crate::provider::Provider>,
    journal_file: &str,
    setup: &EngineSetup,
) -> Result<Arc<Engine>, ConfigError> {
    let path = setup.state_dir.join(journal_file);
    let journal =
        crate::engine::Journal::open(&path, setup.done).map_err(|source| ConfigError::Journal {
            path: path.clone(),
            source,
        })?;
    Ok(Arc::new(
        Engine::new(provider, journal, setup.cfg.clone(), setup.stop.clone())
            .with_stats(setup.stats.clone()),
    ))
}

/// The judges' endpoints, checked (nothing opened): one per `--judge`, or
/// the main endpoint when there is none and `default` is not used. A command
/// passes them to [`crate::provider::build::prepare`] before [`endpoints`].
pub fn plans(
    judges: &[String],
    base: &crate::cli::EndpointArgs,
    uses_default: bool,
    concurrency: usize,
) -> Result<Vec<crate::provider::build::Plan>, ConfigError> {
    if judges.is_empty() {
        return match uses_default {
            true => Ok(Vec::new()),
            false => Ok(vec![super::plan(base, concurrency)?]),
        };
    }
    judges
        .iter()
        .map(|spec| super::plan(&parse_spec(spec, base)?, concurrency))
        .collect()
}

/// The judges of a run: one per `--judge` (journal `journal-judge{i}.jsonl`),
/// or else `default` (the run's own engine), or else the main endpoint.
pub fn endpoints(
    judges: &[String],
    base: &crate::cli::EndpointArgs,
    default: Option<Arc<Engine>>,
    setup: &EngineSetup,
) -> Result<Vec<JudgeEndpoint>, ConfigError> {
    let label = |p: &dyn crate::provider::Provider| format!("{}:{}", p.name(), p.model());
    if judges.is_empty() {
        let engine = match default {
            Some(e) => e,
            None => {
                let p = super::plan(base, setup.concurrency)?.build()?;
                open_engine(p, "journal.jsonl", setup)?
            }
        };
        return Ok(vec![JudgeEndpoint {
            label: label(engine.provider()),
            model: engine.provider().model().to_string(),
            engine,
        }]);
    }
    let mut out = Vec::with_capacity(judges.len());
    for (i, spec) in judges.iter().enumerate() {
        let e = parse_spec(spec, base)?;
        let p = super::plan(&e, setup.concurrency)?.build()?;
        let engine = open_engine(p, &format!("journal-judge{i}.jsonl"), setup)?;
        out.push(JudgeEndpoint {
            label: label(engine.provider()),
            model: engine.provider().model().to_string(),
            engine,
        });
    }
    Ok(out)
}

/// How pairs are picked among a prompt's candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The AI-feedback judge (round robin over the candidates).
    Judge { keep_ties: bool },
    /// The heuristic score; no requests.
    Heuristic,
}

/// `generate`'s pair picking, as configured.
pub struct Picking<'a> {
    /// `None`: the plain revision/none modes.
    pub selection: Option<Selection>,
    /// `--judge` specs (empty: the run's own endpoint judges).
    pub judges: &'a [String],
    pub options: &'a JudgeOptions,
    /// The run's endpoint (the base of every `--judge` spec).
    pub endpoint: &'a crate::cli::EndpointArgs,
    pub templates: &'a crate::template::Templates,
    pub constitution: &'a crate::input::Constitution,
}

/// How `generate` picks its pairs: `None` for the plain revision/none
/// modes, the heuristic, or the judge over the `--judge` endpoints (else
/// the run's own `engine`).
pub fn selector(
    picking: Picking,
    engine: Arc<Engine>,
    setup: &EngineSetup,
) -> Result<Option<Selector>, ConfigError> {
    Ok(match picking.selection {
        None => None,
        Some(Selection::Heuristic) => Some(Selector::Heuristic),
        Some(Selection::Judge { keep_ties }) => {
            let endpoints = endpoints(picking.judges, picking.endpoint, Some(engine), setup)?;
            Some(Selector::Judge {
                judge: Arc::new(Judge::new(
                    endpoints,
                    picking.templates.clone(),
                    Some(picking.constitution),
                    picking.options.clone(),
                )),
                keep_ties,
            })
        }
    })
}
