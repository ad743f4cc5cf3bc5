//! The subcommands: `generate` (the scheduler), `validate` and `render`.
//!
//! `generate` checks everything it can before sending anything (prompts,
//! constitution, templates, endpoint settings, the run directory), then
//! streams prompts from the file: a reader thread feeds a bounded channel,
//! at most `--concurrency` prompts run at once as tasks (each one's
//! requests back to back, depth-first), and this task writes each prompt's
//! rows the moment it finishes. Memory depends on the concurrency, not on
//! the number of prompts.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::cli::{
    GenerateArgs, InputArgs, PreferenceArg, RenderArgs, SelectArg, TiesArg, ValidateArgs,
};
use crate::config::{self, ConfigError};
use crate::engine::{AbortReason, Engine, EngineConfig, Journal, StatsSnapshot, StopSignal};
use crate::input::{
    prompts, Constitution, InputError, InputErrors, PromptReader, PromptRecord, PromptSpec,
};
use crate::output::manifest::{self, Fingerprint, Manifest};
use crate::output::{OutputError, PreferenceMode, WriteCounts, Writer, STATE_DIR};
use crate::pipeline::{self, Outcome, Pipeline, RunStop};
use crate::progress::{Display, Reporter, Rows};
use crate::select::Selector;
use crate::template::{TemplateError, Templates};

/// Seed of the principle choice when `--seed` is not given.
pub const DEFAULT_SEED: u64 = 0;

/// How long in-flight requests may take to finish after a stop.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// Why a command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Input(#[from] InputErrors),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Template(Vec<TemplateError>),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The endpoint refuses every request.
    #[error("{0}")]
    Endpoint(String),
    #[error("stopped: {reason}; run the same command again to resume")]
    Aborted { reason: AbortReason },
}

impl RunError {
    /// The process exit code for this error (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_)
            | RunError::Config(_)
            | RunError::Input(_)
            | RunError::Template(_)
            | RunError::Endpoint(_) => 2,
            RunError::Output(_) | RunError::Aborted { .. } => 3,
        }
    }
}

/// What a finished `generate` did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub out: PathBuf,
    pub counts: WriteCounts,
    pub stats: StatsSnapshot,
}

/// Everything loaded and checked from the input arguments.
struct Inputs {
    spec: PromptSpec,
    count: u64,
    constitution: Constitution,
    constitution_path: PathBuf,
    templates: Templates,
}

fn spec(input: &InputArgs, prompts: PathBuf) -> PromptSpec {
    PromptSpec {
        path: prompts,
        column: input.prompt_column.clone(),
        limit: input.limit,
        shard: input.shard,
    }
}

/// Loads prompts, constitution and templates, reporting every problem at once.
fn load_inputs(input: &InputArgs) -> Result<Inputs, RunError> {
    let (Some(prompts_path), Some(constitution_path)) = (&input.prompts, &input.constitution)
    else {
        return Err(RunError::Usage(
            "--prompts FILE and --constitution FILE are both required".into(),
        ));
    };
    let spec = spec(input, prompts_path.clone());
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

/// `cai validate`: reports every problem, sends nothing.
pub fn validate(args: &ValidateArgs) -> Result<String, RunError> {
    let mut problems: Vec<String> = Vec::new();
    let mut report = Vec::new();
    if let Some(p) = &args.input.constitution {
        match Constitution::load(p) {
            Ok(c) => report.push(format!(
                "{}: {:?} format, {} principles, {} few-shot messages, {} comparison principles",
                p.display(),
                c.format,
                c.principles.len(),
                c.few_shots.len(),
                c.comparison_principles.len()
            )),
            Err(e) => problems.extend(e.0.iter().map(ToString::to_string)),
        }
    }
    if let Some(p) = &args.input.prompts {
        match prompts::validate(&spec(&args.input, p.clone())) {
            Ok(n) => report.push(format!("{}: {n} prompts", p.display())),
            Err(e) => problems.extend(e.0.iter().map(ToString::to_string)),
        }
    }
    match Templates::load(args.input.templates.as_deref()) {
        Ok(_) => report.push(match &args.input.templates {
            Some(d) => format!("templates: ok (overrides from {})", d.display()),
            None => "templates: ok (embedded)".to_string(),
        }),
        Err(e) => problems.extend(e.iter().map(ToString::to_string)),
    }
    if let Some(t) = &args.chat_template {
        match config::load_chat_template(t) {
            Ok(_) => report.push(format!("chat template {t}: ok")),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(report.join("\n"))
    } else {
        Err(RunError::Usage(problems.join("\n")))
    }
}

/// `cai render`: the exact first-stage request of each prompt, as JSON lines.
pub fn render(args: &RenderArgs) -> Result<String, RunError> {
    let inputs = load_inputs(&args.input)?;
    let params = config::gen_params(&args.sampling)?;
    let (provider, _) = config::build_provider(&args.endpoint, 1)?;
    let mut out = String::new();
    for rec in PromptReader::open(&inputs.spec).map_err(InputErrors::from)? {
        let rec = rec.map_err(InputErrors::from)?;
        let (_, req) =
            pipeline::initial_request(&inputs.constitution, &inputs.templates, &params, &rec.text)
                .map_err(RunError::Usage)?;
        let preview = provider
            .preview(&req)
            .map_err(|e| RunError::Usage(e.to_string()))?;
        let line = serde_json::json!({ "id": rec.id, "request": preview });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Installs Ctrl-C / SIGTERM handling: the first stops taking new work,
/// the second exits at once (the run stays resumable either way).
pub(crate) fn watch_signals(stop: StopSignal, notify: impl Fn(&str) + Send + 'static) {
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            #[cfg(unix)]
            {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = term.recv() => {},
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            count += 1;
            if count == 1 {
                notify("stopping: no new prompts; finishing requests in flight (press Ctrl-C again to quit at once)");
                stop.stop(AbortReason::Signal);
            } else {
                notify("quitting now; run the same command again to resume");
                std::process::exit(3);
            }
        }
    });
}

/// How `generate` picks pairs among candidates, from `--preference`,
/// `--samples` and `--select`; `None` = the plain revision/none modes.
fn selection(args: &GenerateArgs) -> Result<Option<SelectArg>, RunError> {
    if args.samples == 0 {
        return Err(RunError::Usage("--samples must be at least 1".into()));
    }
    match (args.preference, args.select) {
        (PreferenceArg::Judge, s) => Ok(Some(s.unwrap_or(SelectArg::Judge))),
        (PreferenceArg::Revision, Some(SelectArg::Heuristic)) => Ok(Some(SelectArg::Heuristic)),
        (PreferenceArg::Revision, Some(SelectArg::Judge)) => Err(RunError::Usage(
            "--select judge needs --preference judge".into(),
        )),
        (PreferenceArg::Revision, None) if args.samples > 1 => Err(RunError::Usage(
            "--samples above 1 needs a way to pick the pair: --preference judge (AI-feedback tournament) or --select heuristic".into(),
        )),
        (PreferenceArg::None, _) if args.samples > 1 || args.select.is_some() => Err(RunError::Usage(
            "--samples and --select pick preference pairs; they do nothing with --preference none".into(),
        )),
        _ => Ok(None),
    }
}

/// The preference settings as recorded in the fingerprint and manifest:
/// everything that changes which pair a prompt gets.
fn preference_desc(
    args: &GenerateArgs,
    mode: PreferenceMode,
    selection: Option<SelectArg>,
) -> String {
    match selection {
        None => format!("{mode:?}").to_lowercase(),
        Some(SelectArg::Heuristic) => format!("heuristic(samples={})", args.samples),
        Some(SelectArg::Judge) => {
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

/// `cai generate`.
pub async fn generate(args: &GenerateArgs, argv: Vec<String>) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let started_unix = now_unix();
    let selection = selection(args)?;
    if args.run.concurrency == 0 {
        return Err(RunError::Usage("--concurrency must be at least 1".into()));
    }
    let params = config::gen_params(&args.sampling)?;
    let inputs = load_inputs(&args.input)?;
    let display = Display::choose(args.run.quiet, args.run.log_format);
    config::ensure_local_model(&args.endpoint, display == Display::Bar, |m| {
        eprintln!("cai: {m}")
    })
    .await?;
    let (provider, note) = config::build_provider(&args.endpoint, args.run.concurrency)?;
    let price = budget_price(args, provider.model())?;
    let mode = match (args.preference, selection) {
        (_, Some(_)) => PreferenceMode::Judge,
        (PreferenceArg::Revision, None) => PreferenceMode::Revision,
        (PreferenceArg::Judge, None) => PreferenceMode::Judge,
        (PreferenceArg::None, None) => PreferenceMode::None,
    };
    let seed = args.sampling.seed.unwrap_or(DEFAULT_SEED);
    let judge_opts = crate::judge::options(&args.judge, seed, args.sampling.max_tokens)?;
    let out = args.out.clone();

    let constitution_sha256 = manifest::file_sha256(&inputs.constitution_path)?;
    let prompts_sha256 = manifest::file_sha256(&inputs.spec.path)?;
    let params_json = serde_json::to_value(&params).unwrap_or_default();
    let fingerprint = Fingerprint {
        provider: provider.name().to_string(),
        model: provider.model().to_string(),
        constitution_sha256: constitution_sha256.clone(),
        templates_sha256: inputs.templates.digest().to_string(),
        params: params_json.clone(),
        rounds: args.rounds,
        preference: preference_desc(args, mode, selection),
        seed,
    };
    std::fs::create_dir_all(&out).map_err(|e| OutputError::Io {
        path: out.clone(),
        source: e,
    })?;
    if let Some(old) = manifest::read_fingerprint(&out)? {
        let changes = fingerprint.changes_from(&old);
        if !changes.is_empty() && !args.run.force {
            return Err(RunError::Usage(format!(
                "{} holds a run with different settings; resuming would mix two datasets. Changed: {}. Use a new --out, or pass --force to resume anyway",
                out.display(),
                changes.join("; ")
            )));
        }
    }
    manifest::write_fingerprint(&out, &fingerprint)?;

    let (mut writer, done) = Writer::open(&out, mode)?;
    let journal =
        Journal::open(&out.join(STATE_DIR).join("journal.jsonl"), &done).map_err(|e| {
            OutputError::Io {
                path: out.join(STATE_DIR).join("journal.jsonl"),
                source: e,
            }
        })?;
    let already_done = done.len() as u64;
    let cached = journal.cached_len();

    let stop = StopSignal::default();
    let engine_cfg = EngineConfig {
        rpm: args.run.rpm,
        tpm: args.run.tpm,
        max_retries: args.run.max_retries,
        max_requests: args.run.max_requests,
        price: price.clone(),
        max_cost: args.max_cost,
        ..EngineConfig::default()
    };
    let spec = inputs.spec.clone();
    let total = inputs.count;
    let engine = Arc::new(Engine::new(
        provider.clone(),
        journal,
        engine_cfg.clone(),
        stop.clone(),
    ));
    let stats = engine.stats();
    let selector = match selection {
        None => None,
        Some(SelectArg::Heuristic) => Some(Arc::new(Selector::Heuristic)),
        Some(SelectArg::Judge) => {
            let setup = crate::judge::EngineSetup {
                state_dir: &out.join(STATE_DIR),
                done: &done,
                cfg: engine_cfg,
                stop: stop.clone(),
                stats: stats.clone(),
                concurrency: args.run.concurrency,
            };
            let endpoints =
                crate::judge::endpoints(&args.judge, &args.endpoint, Some(engine.clone()), &setup)?;
            let templates =
                Templates::load(args.input.templates.as_deref()).map_err(RunError::Template)?;
            Some(Arc::new(Selector::Judge {
                judge: Arc::new(crate::judge::Judge::new(
                    endpoints,
                    templates,
                    Some(&inputs.constitution),
                    judge_opts,
                )),
                keep_ties: args.judge.ties == TiesArg::Keep,
            }))
        }
    };
    let pipeline = Arc::new(Pipeline {
        engine,
        constitution: inputs.constitution,
        templates: inputs.templates,
        params,
        rounds: args.rounds,
        seed,
        samples: args.samples,
    });
    let rows = Arc::new(Rows::default());
    rows.done.store(already_done.min(total), Ordering::Relaxed);
    let reporter = Reporter::start(display, stats.clone(), rows.clone(), total);
    if let Some(n) = &note {
        reporter.note(n);
    }
    if already_done > 0 {
        reporter.note(&format!(
            "resuming {}: {already_done} prompts already done, {cached} replies reusable from the journal",
            out.display()
        ));
    }
    {
        let display = reporter.display();
        watch_signals(stop.clone(), move |m| {
            if display == Display::Json {
                eprintln!("{}", serde_json::json!({ "event": "signal", "message": m }));
            } else {
                eprintln!("\ncai: {m}");
            }
        });
    }

    // Reader thread: streams records not yet done into a bounded channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<PromptRecord, InputError>>(
        args.run.concurrency.saturating_mul(2).max(16),
    );
    let reader = PromptReader::open(&spec).map_err(InputErrors::from)?;
    std::thread::spawn(move || {
        for item in reader {
            if let Ok(rec) = &item {
                if done.contains(&rec.id) {
                    continue;
                }
            }
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });

    let mut tasks: JoinSet<Result<Outcome, RunStop>> = JoinSet::new();
    let mut input_open = true;
    let mut fatal: Option<RunError> = None;
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut grace_spent = false;
    let mut first_row: Option<f64> = None;
    loop {
        if grace.is_none() && stop.reason().is_some() {
            grace = Some(Box::pin(tokio::time::sleep(GRACE)));
        }
        let can_take = input_open
            && stop.reason().is_none()
            && fatal.is_none()
            && tasks.len() < args.run.concurrency;
        if !can_take && tasks.is_empty() {
            break;
        }
        tokio::select! {
            item = rx.recv(), if can_take => match item {
                Some(Ok(rec)) => {
                    let p = pipeline.clone();
                    let sel = selector.clone();
                    tasks.spawn(async move {
                        let outcome = p.run(rec).await?;
                        match sel {
                            Some(sel) => sel.apply(outcome).await,
                            None => Ok(outcome),
                        }
                    });
                }
                Some(Err(e)) => {
                    fatal = Some(RunError::Input(e.into()));
                    tasks.abort_all();
                }
                None => input_open = false,
            },
            joined = tasks.join_next(), if !tasks.is_empty() => {
                let Some(joined) = joined else { continue };
                match joined {
                    Ok(Ok(outcome)) => {
                        if let Outcome::Rejected(r) = &outcome {
                            rows.rejected.fetch_add(1, Ordering::Relaxed);
                            reporter.note(&format!("rejected {}: {}", r.id, r.reason));
                        }
                        if let Err(e) = writer.write(&outcome) {
                            fatal = Some(e.into());
                            stop.stop(AbortReason::Signal);
                            tasks.abort_all();
                            continue;
                        }
                        rows.done.fetch_add(1, Ordering::Relaxed);
                        first_row.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    }
                    Ok(Err(RunStop::Fatal(msg))) => {
                        if fatal.is_none() {
                            fatal = Some(RunError::Endpoint(msg));
                        }
                        tasks.abort_all();
                    }
                    Ok(Err(RunStop::Aborted(_))) => {}
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => {
                        fatal = Some(RunError::Endpoint(format!("internal error: a prompt task failed: {e}")));
                        tasks.abort_all();
                    }
                }
            },
            _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() && !grace_spent && !tasks.is_empty() => {
                // In-flight requests had their chance; what is unfinished
                // is resumed next time (its finished requests are journaled).
                tasks.abort_all();
                grace_spent = true;
            }
        }
    }
    drop(rx);
    writer.sync()?;
    reporter.finish();

    let snapshot = stats.snapshot();
    let counts = writer.counts;
    let aborted = stop.reason();
    let status = match (&fatal, aborted) {
        (Some(e), _) => format!("failed: {e}"),
        (None, Some(r)) => format!("aborted: {r}"),
        (None, None) if counts.rejected > 0 => "done with rejects".into(),
        (None, None) => "done".into(),
    };
    let wall = started.elapsed().as_secs_f64();
    let m = Manifest {
        cai_version: env!("CARGO_PKG_VERSION"),
        status,
        arguments: argv,
        provider: provider.name().to_string(),
        model: provider.model().to_string(),
        endpoint: provider.endpoint(),
        prompts_file: spec.path.display().to_string(),
        prompts_sha256,
        constitution_file: args
            .input
            .constitution
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        constitution_sha256,
        constitution_format: format!("{:?}", pipeline.constitution.format).to_lowercase(),
        templates_sha256: pipeline.templates.digest().to_string(),
        seed,
        rounds: args.rounds,
        preference: fingerprint.preference.clone(),
        params: params_json,
        prompts_total: total,
        prompts_already_done: already_done,
        counts,
        requests: snapshot,
        started_at_unix: started_unix,
        wall_time_s: wall,
        first_row_s: first_row,
        requests_per_s: snapshot.requests as f64 / wall.max(1e-9),
        cost_usd: price
            .as_ref()
            .map(|_| crate::cost::from_micros(snapshot.cost_micro_usd)),
        price,
        max_cost: args.max_cost,
    };
    manifest::write_atomic(&out.join("manifest.json"), &m)?;
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(reason) = aborted {
        return Err(RunError::Aborted { reason });
    }
    Ok(RunSummary {
        out,
        counts,
        stats: snapshot,
    })
}

/// The price of `model` for this run, checking `--max-cost` and the
/// `--price-*` overrides: a cap needs a known price.
fn budget_price(args: &GenerateArgs, model: &str) -> Result<Option<crate::cost::Price>, RunError> {
    for (flag, v) in [
        ("--price-in", args.price_in),
        ("--price-out", args.price_out),
    ] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(RunError::Usage(format!(
                "{flag} must be a non-negative number of USD per million tokens"
            )));
        }
    }
    let price = crate::cost::resolve(model, args.price_in, args.price_out);
    if let Some(cap) = args.max_cost {
        if !(cap.is_finite() && cap > 0.0) {
            return Err(RunError::Usage(
                "--max-cost must be a positive amount of USD".into(),
            ));
        }
        if price.is_none() {
            return Err(RunError::Usage(format!(
                "--max-cost needs a price and model `{model}` is not in the price table: pass --price-in and --price-out (USD per million tokens)"
            )));
        }
    }
    Ok(price)
}

/// `cai generate --dry-run`: checks what `generate` checks before sending,
/// then prints requests per stage and estimated tokens and cost. Sends
/// nothing and writes nothing in `--out`.
pub fn dry_run(args: &GenerateArgs) -> Result<String, RunError> {
    if args.run.concurrency == 0 {
        return Err(RunError::Usage("--concurrency must be at least 1".into()));
    }
    let params = config::gen_params(&args.sampling)?;
    let inputs = load_inputs(&args.input)?;
    let (provider, _) = config::build_provider(&args.endpoint, 1)?;
    let price = budget_price(args, provider.model())?;
    let run = crate::dryrun::Run {
        provider: provider.as_ref(),
        constitution: &inputs.constitution,
        templates: &inputs.templates,
        params: &params,
        rounds: args.rounds,
    };
    let mut estimate = crate::dryrun::estimate(&run, &inputs.spec)?;
    estimate.price = price;
    estimate.max_cost = args.max_cost;
    Ok(estimate.render())
}
