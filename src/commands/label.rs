//! `cai label`: AI-feedback preference labels for existing answer pairs
//! ([`crate::input::pairs`]), written by [`crate::output::labels`], with a
//! report of how the judge agrees with human labels
//! ([`crate::feedback::metrics`]). The pairs go through the same run loop
//! as `generate` ([`scheduler::run`]), one [`LabelJob`] per pair.
//!
//! Calibration ([`crate::feedback::calibrate`]) sits at both ends:
//! `--calibration FILE` is applied to each pair as it is judged (the
//! calibrated probabilities go to `labels.csv`); `--calibrate` fits one on
//! every judgment of the run once the run is complete, and writes
//! `calibration.json`. `--format arena` writes `submission.csv` last, from
//! all judgments, in the input's order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::config::label::LabelConfig;
use crate::engine::rundir::RunDir;
use crate::engine::scheduler::{self, Item, Job, Loop, Sink};
use crate::engine::{ItemError, StatsSnapshot, StopSignal};
use crate::error::RunError;
use crate::feedback::calibrate::{self, Calibration, Probs};
use crate::feedback::judge::{Judge, JudgeVerdict};
use crate::feedback::metrics::{JudgeLine, Judgment, Report};
use crate::input::pairs::{read_pairs, PairRecord, Winner};
use crate::input::{InputError, InputErrors, Location};
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
    /// `--calibration FILE`.
    pub calibration: Option<Arc<Calibration>>,
}

#[async_trait]
impl Job for LabelJob {
    type Item = PairRecord;
    type Output = Done;

    async fn run(&self, rec: PairRecord) -> Result<Done, ItemError> {
        label_one(&self.judge, self.calibration.as_deref(), rec).await
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

    fn last_commit(&self) -> Option<(&std::path::Path, u64)> {
        Some(LabelFiles::last_commit(self))
    }
}

/// Labels one pair.
async fn label_one(
    judge: &Judge,
    calibration: Option<&Calibration>,
    rec: PairRecord,
) -> Result<Done, ItemError> {
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
    let mut j = Judgment {
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
            .map(|(v, model): (JudgeVerdict, String)| JudgeLine {
                judge: v.judge,
                model,
                p: v.p,
                p_first: v.p_first,
                p_second: v.p_second,
                method: format!("{:?}", v.method).to_lowercase(),
            })
            .collect(),
        calibrated: None,
    };
    if let Some(c) = calibration {
        j.calibrated = c.predict_judgment(&j);
        if let Some(p) = &j.calibrated {
            j.predicted = calibrate::argmax(p);
        }
    }
    Ok(Done::Judged(j))
}

/// Checks that a saved calibration was fitted for exactly this run's
/// judges (matched by `provider:model`, in any order).
fn check_judges(path: &std::path::Path, c: &Calibration, run: &[String]) -> Result<(), RunError> {
    let mut want = c.judge_names();
    let mut have = run.to_vec();
    want.sort();
    have.sort();
    if want == have {
        return Ok(());
    }
    Err(InputErrors(vec![InputError::new(
        path,
        Location::Path("judges".into()),
        format!(
            "fitted for the judges {}, but this run's judges are {} (a calibration holds only for the judges it was fitted on)",
            want.join(", "),
            have.join(", ")
        ),
    )])
    .into())
}

/// What a finished `label` did.
#[derive(Debug, Clone)]
pub struct LabelSummary {
    pub out: PathBuf,
    pub report: Report,
    pub stats: StatsSnapshot,
}

/// `--calibrate` refuses, before anything is sent, a pairs file with too
/// few human labels for its folds.
fn check_calibration_pairs(cfg: &LabelConfig, pairs: &[PairRecord]) -> Result<(), RunError> {
    let Some(folds) = cfg.calibrate else {
        return Ok(());
    };
    let labelled = pairs.iter().filter(|p| p.human.is_some()).count();
    if labelled < calibrate::min_pairs(folds) {
        return Err(RunError::Usage(format!(
            "{}: --calibrate needs at least {} pairs with human labels (winner_model_a, winner_model_b, winner_tie) for {folds} folds; found {labelled}",
            cfg.pairs.display(),
            calibrate::min_pairs(folds)
        )));
    }
    Ok(())
}

/// A note on stderr in the run's display mode.
fn say(display: crate::engine::progress::Display, m: &str) {
    match display {
        crate::engine::progress::Display::Quiet => {}
        crate::engine::progress::Display::Json => {
            eprintln!("{}", serde_json::json!({ "event": "note", "message": m }))
        }
        _ => eprintln!("cai: {m}"),
    }
}

/// `--calibrate`: fits the calibration on the judgments and writes
/// `calibration.json` — only on a complete run, since a calibration of
/// part of the labels would be replaced by the resume anyway. Returns what
/// the file says (a float can read back one ulp off), so `--calibration`
/// on the same pairs later gives exactly these probabilities.
fn fit_calibration(
    folds: Option<u32>,
    seed: u64,
    out: &std::path::Path,
    judgments: &[Judgment],
    complete: bool,
    report: &mut Report,
    display: crate::engine::progress::Display,
) -> Result<Option<Calibration>, RunError> {
    let (Some(folds), true) = (folds, complete) else {
        return Ok(None);
    };
    let c = calibrate::calibrate(judgments, folds, seed)
        .map_err(|e| RunError::Usage(format!("{e} (the labels are written; see rejects.jsonl)")))?;
    let path = out.join("calibration.json");
    manifest::write_atomic(&path, &c)?;
    report.calibration = c.held_out.clone();
    say(
        display,
        &format!("calibration written to {}", path.display()),
    );
    Ok(Some(calibrate::load(&path)?))
}

/// `--format arena`: the submission file, one row per pair id in input
/// order, each pair's (calibrated) probabilities, `prior` for a pair that
/// was rejected.
fn write_arena_submission(
    out: &std::path::Path,
    ids: &[String],
    judgments: &[Judgment],
    fitted: Option<&Calibration>,
    prior: Probs,
    report: &mut Report,
    display: crate::engine::progress::Display,
) -> Result<(), RunError> {
    let by_id: std::collections::HashMap<&str, Probs> = judgments
        .iter()
        .map(|j| {
            let p = j
                .calibrated
                .or_else(|| fitted.and_then(|c| c.predict_judgment(j)))
                .unwrap_or([j.p_a, j.p_b, j.p_tie]);
            (j.id.as_str(), p)
        })
        .collect();
    let filled = labels::write_submission(out, ids, |id| by_id.get(id).copied(), prior)?;
    report.submission_prior_rows = Some(filled);
    let mut m = format!(
        "arena submission written to {} ({} rows",
        out.join(labels::SUBMISSION).display(),
        ids.len()
    );
    if filled > 0 {
        m.push_str(&format!(
            "; {filled} rejected pairs have the prior {:.3}/{:.3}/{:.3}",
            prior[0], prior[1], prior[2]
        ));
    }
    m.push(')');
    say(display, &m);
    Ok(())
}

/// `cai label`: reads the pairs, opens the run directory and the judges,
/// runs the engine over the pairs, then writes the report (with the
/// calibration and arena submission when asked).
pub async fn label(cfg: LabelConfig, argv: Vec<String>) -> Result<LabelSummary, RunError> {
    let started = Instant::now();
    let pairs = read_pairs(&cfg.pairs, cfg.limit)?;
    check_calibration_pairs(&cfg, &pairs)?;
    let ids: Vec<String> = if cfg.arena {
        pairs.iter().map(|p| p.id.clone()).collect()
    } else {
        Vec::new()
    };
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
    let labels: Vec<String> = endpoints.iter().map(|e| e.label.clone()).collect();
    if let Some((path, c)) = &cfg.calibration {
        check_judges(path, c, &labels)?;
    }
    let judge = Arc::new(Judge::new(
        endpoints,
        cfg.templates,
        cfg.constitution.as_ref(),
        cfg.judge,
    ));
    let calibration = cfg.calibration.map(|(_, c)| Arc::new(c));

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
            calibration: calibration.clone(),
        }),
        pairs.into_iter().map(Ok),
        &mut files,
        Loop {
            concurrency: cfg.run.concurrency,
            stop,
            display: cfg.run.display,
            stats: stats.clone(),
            total,
            done: Arc::new(done),
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
    let complete = end.fatal.is_none() && end.aborted.is_none();
    let display = cfg.run.display;
    let fitted = fit_calibration(
        cfg.calibrate,
        cfg.seed,
        &out,
        &judgments,
        complete,
        &mut report,
        display,
    )?;
    if cfg.arena && complete {
        let prior = calibration
            .as_deref()
            .or(fitted.as_ref())
            .map_or([1.0 / 3.0; 3], |c| c.prior);
        write_arena_submission(
            &out,
            &ids,
            &judgments,
            fitted.as_ref(),
            prior,
            &mut report,
            display,
        )?;
    }
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
