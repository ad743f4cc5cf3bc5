//! `cai label`: AI-feedback preference labels for existing answer pairs
//! ([`crate::input::pairs`]), written by [`crate::output::labels`], with a
//! report of how the judge agrees with human labels
//! ([`crate::feedback::metrics`]). The pairs go through the same run loop
//! as `generate` ([`scheduler::run`]), one [`LabelJob`] per pair.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::config::label::LabelConfig;
use crate::engine::rundir::RunDir;
use crate::engine::scheduler::{self, Item, Job, Loop, Sink};
use crate::engine::{ItemError, StatsSnapshot, StopSignal};
use crate::error::RunError;
use crate::feedback::judge::{Judge, JudgeVerdict};
use crate::feedback::metrics::{JudgeLine, Judgment, Report};
use crate::input::pairs::{read_pairs, PairRecord, Winner};
use crate::output::labels::{self, Done, LabelFiles};
use crate::output::{manifest, OutputError};

impl Item for PairRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

/// One pair: both orders by every judge.
pub struct LabelJob {
    pub judge: Arc<Judge>,
}

#[async_trait]
impl Job for LabelJob {
    type Item = PairRecord;
    type Output = Done;

    async fn run(&self, rec: PairRecord) -> Result<Done, ItemError> {
        label_one(&self.judge, rec).await
    }
}

impl Sink<Done> for LabelFiles {
    type Error = OutputError;

    fn write(&mut self, d: Done) -> Result<Option<String>, OutputError> {
        Ok(LabelFiles::write(self, d)?.map(|(id, why)| format!("rejected {id}: {why}")))
    }

    fn sync(&mut self) -> Result<(), OutputError> {
        LabelFiles::sync(self)
    }
}

/// Labels one pair.
async fn label_one(judge: &Judge, rec: PairRecord) -> Result<Done, ItemError> {
    let c = judge
        .compare(
            &rec.id,
            "",
            &rec.prompt,
            (0, &rec.response_a),
            (1, &rec.response_b),
        )
        .await;
    let c = match c {
        Ok(c) => c,
        Err(ItemError::Reject(why)) => return Ok(Done::Rejected(rec, why)),
        Err(e) => return Err(e),
    };
    let predicted = if judge.is_tie(c.p) {
        Winner::Tie
    } else if c.p > 0.5 {
        Winner::A
    } else {
        Winner::B
    };
    let models: Vec<String> = judge.endpoints.iter().map(|e| e.model.clone()).collect();
    Ok(Done::Judged(Judgment {
        id: rec.id,
        principle: c.principle,
        p: c.p,
        p_a: c.p_x,
        p_b: c.p_y,
        p_tie: c.p_tie,
        predicted,
        written: true,
        len_a: rec.response_a.chars().count(),
        len_b: rec.response_b.chars().count(),
        model_a: rec.model_a,
        model_b: rec.model_b,
        human: rec.human,
        judges: c
            .judges
            .into_iter()
            .zip(models)
            .map(|(j, model): (JudgeVerdict, String)| JudgeLine {
                judge: j.judge,
                model,
                p: j.p,
                p_first: j.p_first,
                p_second: j.p_second,
                method: format!("{:?}", j.method).to_lowercase(),
            })
            .collect(),
    }))
}

/// What a finished `label` did.
#[derive(Debug, Clone)]
pub struct LabelSummary {
    pub out: PathBuf,
    pub report: Report,
    pub stats: StatsSnapshot,
}

/// `cai label`.
pub async fn label(cfg: LabelConfig, argv: Vec<String>) -> Result<LabelSummary, RunError> {
    let started = Instant::now();
    let pairs = read_pairs(&cfg.pairs, cfg.limit)?;
    let fingerprint = cfg.fingerprint()?;
    let dir = RunDir::open(&cfg.out)?;
    dir.guard(&fingerprint, cfg.run.force, "two label sets")?;

    let (mut files, done) = LabelFiles::open(dir.path(), cfg.keep_ties)?;
    let stop = StopSignal::default();
    let stats: Arc<crate::engine::Stats> = Arc::default();
    let setup = crate::config::judge::EngineSetup {
        state_dir: &dir.state_dir(),
        done: &done,
        cfg: cfg.run.engine(None, None),
        stop: stop.clone(),
        stats: stats.clone(),
        concurrency: cfg.run.concurrency,
    };
    let plans = crate::config::judge::plans(&cfg.judges, &cfg.endpoint, false, setup.concurrency)?;
    let progress = cfg.run.display == crate::engine::progress::Display::Bar;
    crate::provider::build::prepare(&plans, progress, |m| eprintln!("cai: {m}"))
        .await
        .map_err(crate::config::ConfigError::from)?;
    let endpoints = crate::config::judge::endpoints(&cfg.judges, &cfg.endpoint, None, &setup)?;
    let judge = Arc::new(Judge::new(
        endpoints,
        cfg.templates,
        cfg.constitution.as_ref(),
        cfg.judge,
    ));

    let total = pairs.len() as u64;
    let already = pairs.iter().filter(|p| done.contains(&p.id)).count();
    let mut notes = Vec::new();
    if already > 0 {
        notes.push(format!(
            "resuming {}: {already} pairs already labelled",
            cfg.out.display()
        ));
    }
    let end = scheduler::run(
        Arc::new(LabelJob {
            judge: judge.clone(),
        }),
        pairs.into_iter().map(Ok),
        &mut files,
        Loop {
            concurrency: cfg.run.concurrency,
            stop,
            display: cfg.run.display,
            stats: stats.clone(),
            total,
            done,
            notes,
            noun: "pair",
            provider: None,
        },
    )
    .await;

    let out = cfg.out;
    let judgments = labels::read_judgments(&out)?;
    let rejects = labels::count_rejects(&out)?;
    let snapshot = stats.snapshot();
    let mut report = Report::compute(&judgments, &judge.opts);
    report.pairs_total = total;
    report.rejected = rejects;
    report.status = end.status(rejects);
    report.cai_version = env!("CARGO_PKG_VERSION").into();
    report.arguments = argv;
    report.judges = judge.endpoints.iter().map(|e| e.label.clone()).collect();
    report.requests = Some(snapshot);
    report.wall_time_s = started.elapsed().as_secs_f64();
    manifest::write_atomic(&out.join("report.json"), &report)?;
    crate::config::write_run_report(&cfg.run, &out);
    crate::error::run_result(end.fatal, end.aborted)?;
    Ok(LabelSummary {
        out,
        report,
        stats: snapshot,
    })
}
