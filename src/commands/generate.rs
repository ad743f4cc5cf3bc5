//! `cai generate`: prompts + constitution → SFT and preference rows.
//!
//! Everything is checked before anything is sent ([`GenerateConfig`]); the
//! run directory is locked and its fingerprint guarded ([`RunDir`]); then
//! the one run loop ([`scheduler::run`], once per stage of a batch run:
//! [`batch::run_passes`]) streams prompts through [`GenerateJob`] (the
//! critique→revision chain, then the pair selection) into the [`Writer`],
//! and the manifest records how it went ([`manifest::Manifest::finish`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::config::generate::GenerateConfig;
use crate::engine::batch::{self, BatchMode, BatchProvider, BatchRun};
use crate::engine::ids::IdSet;
use crate::engine::progress::Display;
use crate::engine::rundir::RunDir;
use crate::engine::scheduler::{self, Item, Job, Loop, Sink};
use crate::engine::{Engine, EngineConfig, ItemError, Journal, StatsSnapshot, StopSignal};
use crate::error::RunError;
use crate::feedback::select::Selector;
use crate::input::{InputErrors, PromptReader, PromptRecord};
use crate::output::manifest;
use crate::output::{OutputError, WriteCounts, Writer};
use crate::pipeline::{OnLength, Outcome, Pipeline};
use crate::provider::Provider;

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

    fn last_commit(&self) -> Option<(&std::path::Path, u64)> {
        Some(Writer::last_commit(self))
    }
}

/// The writer, telling the journal which prompts are committed: their
/// entries are dropped by the next compaction (see [`Journal`]).
struct Committing<'a> {
    writer: &'a mut Writer,
    engine: Arc<Engine>,
}

impl Sink<Outcome> for Committing<'_> {
    type Error = OutputError;

    fn write(&mut self, outcome: Outcome) -> Result<Option<String>, OutputError> {
        let id = outcome.id().to_string();
        let note = <Writer as Sink<Outcome>>::write(self.writer, outcome)?;
        self.engine.journal().committed(&id);
        Ok(note)
    }

    fn sync(&mut self) -> Result<(), OutputError> {
        Writer::sync(self.writer)
    }

    fn last_commit(&self) -> Option<(&std::path::Path, u64)> {
        Some(self.writer.last_commit())
    }
}

impl Item for Outcome {
    fn id(&self) -> &str {
        match self {
            Outcome::Done(f) => &f.id,
            Outcome::Rejected(r) => &r.id,
        }
    }
}

/// `cai generate`: opens the run directory and the engine, builds the job,
/// runs it (one pass, or one per batch stage) and records the manifest.
pub async fn generate(cfg: GenerateConfig, argv: Vec<String>) -> Result<RunSummary, RunError> {
    let (started, started_unix) = (Instant::now(), scheduler::now_unix());
    let provider = open_provider(&cfg).await?;
    let fingerprint = cfg.fingerprint()?;
    let dir = RunDir::open(&cfg.out)?;
    dir.guard(&fingerprint, cfg.run.force, "two datasets")?;
    let (mut writer, done) = Writer::open(dir.path(), cfg.mode)?;
    // Refresh: a prompt edited since its row was written is not done.
    let (done, changed) = crate::output::merge::refresh_done(dir.path(), &cfg.inputs.spec, done)?;
    let (journal, cached) = open_journal(&dir, &done, cfg.batch.is_some())?;
    let notes = resume_notes(&cfg, changed, done.len(), cached);

    let stop = StopSignal::default();
    let (engine, engine_cfg, batch_provider) = open_engine(&cfg, &provider, journal, &stop);
    let stats = engine.stats();
    let mut batch = open_batch(&cfg, &dir, batch_provider, stats.clone())?;
    let judges = crate::config::judge::EngineSetup {
        state_dir: &dir.state_dir(),
        done: &done,
        cfg: engine_cfg,
        stop: stop.clone(),
        stats: stats.clone(),
        concurrency: cfg.run.concurrency,
    };
    let selector = crate::config::judge::selector(cfg.picking(), engine.clone(), &judges)?;

    let mut manifest = cfg.manifest(argv, &fingerprint, started_unix);
    let price_factor = cfg.batch_price_factor();
    let (run, out, spec) = (cfg.run.clone(), cfg.out.clone(), cfg.inputs.spec.clone());
    let lp = run_loop(&cfg, &provider, stop, stats.clone(), done, notes);
    let journal_of = engine.clone();
    let job = Arc::new(job(cfg, engine, selector));
    let mut sink = Committing {
        writer: &mut writer,
        engine: journal_of.clone(),
    };
    let passes = batch::run_passes(
        job,
        || Ok(PromptReader::open(&spec).map_err(InputErrors::from)?),
        &mut sink,
        lp,
        batch.as_mut(),
    )
    .await?;
    // The rows are on disk (the loop synced them): keep only the replies
    // of prompts still to finish.
    let journal = journal_of.journal();
    journal.compact().map_err(|source| OutputError::Io {
        path: journal.path().to_path_buf(),
        source,
    })?;

    let (counts, requests) = (writer.counts, stats.snapshot());
    let batch = batch.as_ref().map(|b| b.summary(price_factor));
    let endpoints = provider.endpoint_stats();
    manifest.finish(&passes, counts, requests, endpoints, batch, started)?;
    manifest::write_atomic(&out.join("manifest.json"), &manifest)?;
    crate::config::write_run_report(&run, &out);
    crate::error::run_result(passes.end.fatal, passes.end.aborted)?;
    Ok(RunSummary {
        out,
        counts,
        stats: requests,
    })
}

/// The run's provider, opened: the default model is downloaded first when
/// it (for the run or a judge) is selected and missing, in one place.
async fn open_provider(cfg: &GenerateConfig) -> Result<Arc<dyn Provider>, RunError> {
    let judges = match cfg.selection {
        Some(crate::config::judge::Selection::Judge { .. }) => {
            crate::config::judge::plans(&cfg.judges, &cfg.endpoint, true, cfg.run.concurrency)?
        }
        _ => Vec::new(),
    };
    let progress = cfg.run.display == Display::Bar;
    crate::provider::build::prepare(judges.iter().chain([&cfg.provider]), progress, |m| {
        eprintln!("cai: {m}")
    })
    .await
    .map_err(crate::config::ConfigError::from)?;
    let provider = cfg
        .provider
        .build()
        .map_err(crate::config::ConfigError::from)?;
    Ok(crate::provider::plain::with_format(
        provider,
        cfg.inference.format,
    ))
}

/// The run's engine, sending through the batch provider when `--batch`
/// stages the run; also the engine settings for `--judge` engines and that
/// batch provider. Only the run's engine hands over replies cut off by the
/// token limit (`--on-length keep|reject`); `--judge` engines keep the
/// retry-then-reject rule (a cut-off verdict is no verdict), and when the
/// run's own engine judges, the judge reads a cut-off verdict or samples
/// afresh as for any unreadable one.
fn open_engine(
    cfg: &GenerateConfig,
    provider: &Arc<dyn Provider>,
    journal: Journal,
    stop: &StopSignal,
) -> (Arc<Engine>, EngineConfig, Option<Arc<BatchProvider>>) {
    // A batch run checks --max-cost per stage, before it submits; the
    // engine must not refuse results that are already paid for.
    let max_cost = cfg.max_cost.filter(|_| cfg.batch.is_none());
    let engine_cfg = cfg.run.engine(cfg.price.clone(), max_cost);
    let batch_provider = batch_provider(cfg, provider);
    let sends_to = match &batch_provider {
        Some(b) => b.clone(),
        None => provider.clone(),
    };
    let mut own_cfg = engine_cfg.clone();
    own_cfg.keep_truncated = cfg.on_length != OnLength::Retry;
    let engine = Engine::new(sends_to, journal, own_cfg, stop.clone());
    (Arc::new(engine), engine_cfg, batch_provider)
}

/// The run loop's settings: skip the `done` prompts, say the `notes` first.
fn run_loop(
    cfg: &GenerateConfig,
    provider: &Arc<dyn Provider>,
    stop: StopSignal,
    stats: Arc<crate::engine::Stats>,
    done: IdSet,
    notes: Vec<String>,
) -> Loop {
    Loop {
        concurrency: cfg.run.concurrency,
        stop,
        display: cfg.run.display,
        stats,
        total: cfg.inputs.count,
        done: Arc::new(done),
        notes,
        noun: "prompt",
        provider: Some(provider.clone()),
    }
}

/// The run's journal (`.cai/journal.jsonl`) without the replies of `done`
/// prompts, and how many replies it holds for the others. A batch run keeps
/// the replies it records in memory, for the next stage's pass.
fn open_journal(dir: &RunDir, done: &IdSet, batch: bool) -> Result<(Journal, usize), OutputError> {
    let path = dir.state_dir().join("journal.jsonl");
    let journal = Journal::open(&path, done)
        .map_err(|source| OutputError::Io { path, source })?
        .compacting();
    let cached = journal.cached_len();
    Ok((
        if batch {
            journal.keep_recorded()
        } else {
            journal
        },
        cached,
    ))
}

/// What the run says when it starts: why this provider, which prompts are
/// generated again, what a resume reuses.
fn resume_notes(cfg: &GenerateConfig, changed: u64, done: usize, cached: usize) -> Vec<String> {
    let mut notes: Vec<String> = cfg.provider_note.iter().cloned().collect();
    if changed > 0 {
        notes.push(format!(
            "{changed} prompts changed since their rows were written: generating them again (`cai merge {} --out DIR` writes the current dataset)",
            cfg.out.display()
        ));
    }
    if done > 0 {
        notes.push(format!(
            "resuming {}: {done} prompts already done, {cached} replies reusable from the journal",
            cfg.out.display(),
        ));
    }
    notes
}

/// With `--batch` and a provider that has a batch API: the provider the
/// engine sends through, queueing requests for the stage's batch.
fn batch_provider(
    cfg: &GenerateConfig,
    provider: &Arc<dyn Provider>,
) -> Option<Arc<BatchProvider>> {
    let api = provider.batch_api().filter(|_| cfg.batch.is_some())?;
    Some(Arc::new(BatchProvider::new(
        provider.clone(),
        api,
        cfg.price.clone(),
    )))
}

/// The batch state of the run directory, with `--batch-import`'s results
/// read in.
fn open_batch(
    cfg: &GenerateConfig,
    dir: &RunDir,
    provider: Option<Arc<BatchProvider>>,
    stats: Arc<crate::engine::Stats>,
) -> Result<Option<BatchRun>, RunError> {
    let (Some(mode), Some(provider)) = (&cfg.batch, provider) else {
        return Ok(None);
    };
    let mut run = BatchRun::open(
        &dir.state_dir(),
        provider,
        mode.clone(),
        cfg.max_cost,
        stats,
    )?;
    if let BatchMode::Files {
        import: Some(path), ..
    } = mode
    {
        let n = run.import(path)?;
        batch::tell(
            cfg.run.display,
            &format!("imported {n} batch results from {}", path.display()),
            false,
        );
    }
    Ok(Some(run))
}

/// The work on one prompt: the chain over the engine, then the selection.
fn job(cfg: GenerateConfig, engine: Arc<Engine>, selector: Option<Selector>) -> GenerateJob {
    let inputs = cfg.inputs;
    GenerateJob {
        pipeline: Pipeline {
            engine,
            constitution: inputs.constitution,
            templates: inputs.templates,
            params: cfg.params,
            rounds: cfg.rounds,
            seed: cfg.seed,
            samples: cfg.samples,
            on_length: cfg.on_length,
            examples: cfg.inference.examples,
        },
        selector,
    }
}
