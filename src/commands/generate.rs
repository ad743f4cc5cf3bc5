//! `cai generate`: prompts + constitution → SFT and preference rows.
//!
//! Everything is checked before anything is sent ([`GenerateConfig`]); the
//! run directory is locked and its fingerprint guarded ([`RunDir`]); then
//! the one run loop ([`scheduler::run`]) streams prompts through
//! [`GenerateJob`] (the critique→revision chain, then the pair selection)
//! into the [`Writer`], and the manifest records how it went.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::config::generate::{GenerateConfig, Selection};
use crate::engine::batch::{BatchMode, BatchProvider, BatchRun, Next};
use crate::engine::rundir::RunDir;
use crate::engine::scheduler::{self, Item, Job, Loop, Sink};
use crate::engine::{Engine, ItemError, Journal, StatsSnapshot, StopSignal};
use crate::error::RunError;
use crate::feedback::judge::Judge;
use crate::feedback::select::Selector;
use crate::input::{InputErrors, PromptReader, PromptRecord};
use crate::output::manifest::{self, Manifest};
use crate::output::{OutputError, WriteCounts, Writer};
use crate::pipeline::{OnLength, Outcome, Pipeline};

/// What a finished `generate` did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub out: PathBuf,
    pub counts: WriteCounts,
    pub stats: StatsSnapshot,
}

impl Item for PromptRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

/// One prompt: the chain, then (when pairs are picked) the selection.
pub struct GenerateJob {
    pub pipeline: Pipeline,
    pub selector: Option<Selector>,
}

#[async_trait]
impl Job for GenerateJob {
    type Item = PromptRecord;
    type Output = Outcome;

    async fn run(&self, rec: PromptRecord) -> Result<Outcome, ItemError> {
        let mut outcome = self.pipeline.run(rec).await?;
        if let (Some(sel), Outcome::Done(f)) = (&self.selector, &mut outcome) {
            f.judged = sel.pick(&f.id, &f.prompt, &f.candidates()).await?;
        }
        Ok(outcome)
    }
}

impl Sink<Outcome> for Writer {
    type Error = OutputError;

    fn write(&mut self, outcome: Outcome) -> Result<Option<String>, OutputError> {
        Writer::write(self, &outcome)?;
        Ok(match &outcome {
            Outcome::Rejected(r) => Some(format!("rejected {}: {}", r.id, r.reason)),
            Outcome::Done(_) => None,
        })
    }

    fn sync(&mut self) -> Result<(), OutputError> {
        Writer::sync(self)
    }
}

/// The writer, noting which ids a pass wrote (a batch run skips them in
/// the next pass).
struct Tracked<'a> {
    writer: &'a mut Writer,
    ids: Vec<String>,
}

impl Sink<Outcome> for Tracked<'_> {
    type Error = OutputError;

    fn write(&mut self, outcome: Outcome) -> Result<Option<String>, OutputError> {
        let id = match &outcome {
            Outcome::Done(f) => f.id.clone(),
            Outcome::Rejected(r) => r.id.clone(),
        };
        let note = <Writer as Sink<Outcome>>::write(self.writer, outcome)?;
        self.ids.push(id);
        Ok(note)
    }

    fn sync(&mut self) -> Result<(), OutputError> {
        <Writer as Sink<Outcome>>::sync(self.writer)
    }
}

/// `cai generate`.
pub async fn generate(cfg: GenerateConfig, argv: Vec<String>) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let started_unix = scheduler::now_unix();
    crate::config::ensure_local_model(
        &cfg.endpoint,
        cfg.run.display == crate::engine::progress::Display::Bar,
        |m| eprintln!("cai: {m}"),
    )
    .await?;
    let fingerprint = cfg.fingerprint()?;
    let dir = RunDir::open(&cfg.out)?;
    dir.guard(&fingerprint, cfg.run.force, "two datasets")?;

    let (mut writer, done) = Writer::open(dir.path(), cfg.mode)?;
    // Refresh: a prompt edited since its row was written is not done.
    let (done, changed) = crate::output::merge::refresh_done(dir.path(), &cfg.inputs.spec, done)?;
    let journal_path = dir.state_dir().join("journal.jsonl");
    let journal = Journal::open(&journal_path, &done).map_err(|source| OutputError::Io {
        path: journal_path,
        source,
    })?;
    let cached = journal.cached_len();
    let journal = if cfg.batch.is_some() {
        journal.keep_recorded()
    } else {
        journal
    };
    let stop = StopSignal::default();
    // A batch run checks --max-cost per stage, before it submits; the
    // engine must not refuse results that are already paid for.
    let engine_max_cost = if cfg.batch.is_some() {
        None
    } else {
        cfg.max_cost
    };
    let mut engine_cfg = cfg.run.engine(cfg.price.clone(), engine_max_cost);
    // `--judge` engines keep the retry-then-reject rule whatever
    // --on-length says (a cut-off verdict is no verdict); the run's own
    // engine, when it judges too, hands a cut-off verdict over, and the
    // judge reads it or samples afresh as for any unreadable one.
    let judge_engine_cfg = engine_cfg.clone();
    engine_cfg.keep_truncated = cfg.on_length != OnLength::Retry;
    let batch_provider = match (&cfg.batch, cfg.provider.batch_api()) {
        (Some(_), Some(api)) => Some(Arc::new(BatchProvider::new(
            cfg.provider.clone(),
            api,
            cfg.price.clone(),
        ))),
        _ => None,
    };
    let engine = Arc::new(Engine::new(
        match &batch_provider {
            Some(b) => b.clone(),
            None => cfg.provider.clone(),
        },
        journal,
        engine_cfg.clone(),
        stop.clone(),
    ));
    let stats = engine.stats();
    let display = cfg.run.display;
    let say = move |m: &str| {
        if display == crate::engine::progress::Display::Json {
            eprintln!("{}", serde_json::json!({ "event": "batch", "message": m }));
        } else if display != crate::engine::progress::Display::Quiet {
            eprintln!("cai: {m}");
        }
    };
    let mut batch = match (&cfg.batch, batch_provider) {
        (Some(mode), Some(p)) => {
            let mut b = BatchRun::open(
                &dir.state_dir(),
                p,
                mode.clone(),
                cfg.max_cost,
                stats.clone(),
            )?;
            if let BatchMode::Files {
                import: Some(path), ..
            } = mode
            {
                let n = b.import(path)?;
                say(&format!(
                    "imported {n} batch results from {}",
                    path.display()
                ));
            }
            Some(b)
        }
        _ => None,
    };
    let selector = match cfg.selection {
        None => None,
        Some(Selection::Heuristic) => Some(Selector::Heuristic),
        Some(Selection::Judge { keep_ties }) => {
            let setup = crate::config::judge::EngineSetup {
                state_dir: &dir.state_dir(),
                done: &done,
                cfg: judge_engine_cfg,
                stop: stop.clone(),
                stats: stats.clone(),
                concurrency: cfg.run.concurrency,
            };
            let endpoints = crate::config::judge::endpoints(
                &cfg.judges,
                &cfg.endpoint,
                Some(engine.clone()),
                &setup,
            )?;
            Some(Selector::Judge {
                judge: Arc::new(Judge::new(
                    endpoints,
                    cfg.inputs.templates.clone(),
                    Some(&cfg.inputs.constitution),
                    cfg.judge.clone(),
                )),
                keep_ties,
            })
        }
    };

    let mut notes: Vec<String> = cfg.provider_note.iter().cloned().collect();
    if changed > 0 {
        notes.push(format!(
            "{changed} prompts changed since their rows were written: generating them again (`cai merge {} --out DIR` writes the current dataset)",
            cfg.out.display()
        ));
    }
    if !done.is_empty() {
        notes.push(format!(
            "resuming {}: {} prompts already done, {cached} replies reusable from the journal",
            cfg.out.display(),
            done.len()
        ));
    }
    let total = cfg.inputs.count;
    let spec = cfg.inputs.spec.clone();
    let cfg_batch_submit = matches!(cfg.batch, Some(BatchMode::Submit { .. }));
    let GenerateConfig {
        inputs,
        params,
        rounds,
        seed,
        samples,
        run,
        provider,
        price,
        max_cost,
        preference_desc,
        out,
        on_length,
        ..
    } = cfg;
    let spec_path = inputs.spec.path.clone();
    let (spec_column, spec_limit) = (inputs.spec.column.clone(), inputs.spec.limit);
    let spec_shard = inputs.spec.shard.map(|s| s.to_string());
    let constitution_path = inputs.constitution_path.clone();
    let constitution_format = format!("{:?}", inputs.constitution.format).to_lowercase();
    let templates_sha256 = inputs.templates.digest().to_string();
    let params_json = serde_json::to_value(&params).unwrap_or_default();
    let job = Arc::new(GenerateJob {
        pipeline: Pipeline {
            engine,
            constitution: inputs.constitution,
            templates: inputs.templates,
            params,
            rounds,
            seed,
            samples,
            on_length,
        },
        selector,
    });
    // One pass of the run loop; a batch run makes one per stage.
    let mut done = done;
    let mut end: Option<scheduler::RunEnd<OutputError>> = None;
    let mut batch_note: Option<String> = None;
    let end = loop {
        if let Some(b) = &mut batch {
            b.collect(&say).await?;
            b.begin_pass()?;
        }
        let reader = PromptReader::open(&spec).map_err(InputErrors::from)?;
        let mut sink = Tracked {
            writer: &mut writer,
            ids: Vec::new(),
        };
        let pass = scheduler::run(
            job.clone(),
            reader,
            &mut sink,
            Loop {
                concurrency: run.concurrency,
                stop: stop.clone(),
                display: run.display,
                stats: stats.clone(),
                total,
                done: done.clone(),
                notes: std::mem::take(&mut notes),
                noun: "prompt",
                provider: Some(provider.clone()),
            },
        )
        .await;
        done.extend(sink.ids);
        let pass = match end.take() {
            None => pass,
            Some(mut acc) => {
                acc.first_row_s = acc.first_row_s.or(pass.first_row_s);
                acc.written += pass.written;
                acc.rejected += pass.rejected;
                acc.fatal = pass.fatal;
                acc.aborted = pass.aborted;
                acc
            }
        };
        let Some(b) = &mut batch else { break pass };
        if pass.fatal.is_some() || pass.aborted.is_some() {
            break pass;
        }
        match b.after_pass().await? {
            Next::Submitted => end = Some(pass),
            Next::Finished => break pass,
            Next::Exported { requests, path } => {
                batch_note = Some(format!(
                    "waiting for batch results: {requests} requests written to {}; run them (e.g. `vllm run_batch -i {} -o results.jsonl --model MODEL`), then run this command again with --batch-import results.jsonl",
                    path.display(),
                    path.display()
                ));
                break pass;
            }
            Next::Waiting { requests } => {
                batch_note = Some(format!(
                    "waiting for batch results: {requests} requests are pending; write them with --batch-export FILE"
                ));
                break pass;
            }
            Next::OverBudget => {
                let mut pass = pass;
                pass.aborted = Some(crate::engine::AbortReason::MaxCost);
                break pass;
            }
        }
    };
    // The run's outcome, so shown even with --quiet.
    if let Some(n) = &batch_note {
        if display == crate::engine::progress::Display::Json {
            eprintln!("{}", serde_json::json!({ "event": "batch", "message": n }));
        } else {
            eprintln!("cai: {n}");
        }
    }

    let snapshot = stats.snapshot();
    let counts = writer.counts;
    let wall = started.elapsed().as_secs_f64();
    let m = Manifest {
        cai_version: env!("CARGO_PKG_VERSION"),
        status: match &batch_note {
            Some(n) if end.fatal.is_none() && end.aborted.is_none() => n.clone(),
            _ => end.status(counts.rejected),
        },
        arguments: argv,
        provider: provider.name().to_string(),
        model: provider.model().to_string(),
        endpoint: provider.endpoint(),
        prompts_file: spec_path.display().to_string(),
        prompts_sha256: manifest::file_sha256(&spec_path)?,
        prompt_column: spec_column,
        limit: spec_limit,
        shard: spec_shard,
        constitution_file: constitution_path.display().to_string(),
        constitution_sha256: fingerprint.constitution_sha256.clone(),
        constitution_format,
        templates_sha256,
        seed,
        rounds,
        preference: preference_desc,
        params: params_json,
        prompts_total: total,
        prompts_already_done: end.already_done,
        counts,
        requests: snapshot,
        started_at_unix: started_unix,
        wall_time_s: wall,
        first_row_s: end.first_row_s,
        requests_per_s: snapshot.requests as f64 / wall.max(1e-9),
        cost_usd: price
            .as_ref()
            .map(|_| crate::cost::from_micros(snapshot.cost_micro_usd)),
        price,
        max_cost,
        endpoints: provider.endpoint_stats(),
        batch: batch.as_ref().map(|b| {
            b.summary(match cfg_batch_submit {
                true => crate::config::generate::BATCH_PRICE_FACTOR,
                false => 1.0,
            })
        }),
    };
    manifest::write_atomic(&out.join("manifest.json"), &m)?;
    crate::config::write_run_report(&run, &out);
    crate::error::run_result(end.fatal, end.aborted)?;
    Ok(RunSummary {
        out,
        counts,
        stats: snapshot,
    })
}
