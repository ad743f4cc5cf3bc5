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
use crate::engine::rundir::RunDir;
use crate::engine::scheduler::{self, Item, Job, Loop, Sink};
use crate::engine::{Engine, ItemError, Journal, StatsSnapshot, StopSignal};
use crate::error::RunError;
use crate::feedback::judge::Judge;
use crate::feedback::select::Selector;
use crate::input::{InputErrors, PromptReader, PromptRecord};
use crate::output::manifest::{self, Manifest};
use crate::output::{OutputError, WriteCounts, Writer};
use crate::pipeline::{Outcome, Pipeline};

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
    let stop = StopSignal::default();
    let engine_cfg = cfg.run.engine(cfg.price.clone(), cfg.max_cost);
    let engine = Arc::new(Engine::new(
        cfg.provider.clone(),
        journal,
        engine_cfg.clone(),
        stop.clone(),
    ));
    let stats = engine.stats();
    let selector = match cfg.selection {
        None => None,
        Some(Selection::Heuristic) => Some(Selector::Heuristic),
        Some(Selection::Judge { keep_ties }) => {
            let setup = crate::config::judge::EngineSetup {
                state_dir: &dir.state_dir(),
                done: &done,
                cfg: engine_cfg,
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
    let reader = PromptReader::open(&cfg.inputs.spec).map_err(InputErrors::from)?;
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
        },
        selector,
    });
    let end = scheduler::run(
        job,
        reader,
        &mut writer,
        Loop {
            concurrency: run.concurrency,
            stop,
            display: run.display,
            stats: stats.clone(),
            total,
            done,
            notes,
            noun: "prompt",
            provider: Some(provider.clone()),
        },
    )
    .await;

    let snapshot = stats.snapshot();
    let counts = writer.counts;
    let wall = started.elapsed().as_secs_f64();
    let m = Manifest {
        cai_version: env!("CARGO_PKG_VERSION"),
        status: end.status(counts.rejected),
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
