//! `cai label`: AI-feedback preference labels for existing answer pairs,
//! and a report of how the judge agrees with human labels.
//!
//! **Input** (`--pairs`): CSV with a header row, or JSONL (`.jsonl`/`.json`).
//! Columns `prompt`, `response_a`, `response_b`; optional `id` (else the
//! 0-based row index), `model_a`, `model_b` and the human labels
//! `winner_model_a`, `winner_model_b`, `winner_tie` (0/1, `true`/`false`,
//! `1.0`) — the LMSYS Chatbot Arena preference-prediction format. A cell that
//! holds a JSON list of turns (`["turn 1", "turn 2"]`, as in that data; in
//! JSONL also a real array) is joined into one text with a blank line
//! between turns, `null` turns skipped: the judge sees every prompt turn and
//! each whole answer.
//!
//! **Output** (`--out DIR`), append-only with the same crash-safe commit log
//! as `generate` ([`crate::output::AppendFiles`]), so a resume writes no row
//! twice and the request journal pays for nothing twice:
//!
//! | file | content |
//! |---|---|
//! | `labels.csv` | `id,p_a,p_b,p_tie,predicted,judges` — the three-way distribution of [`crate::judge`] (P(A better) = p_a + p_tie/2), `predicted` `a`/`b`/`tie` by `--tie-margin`, `judges` a JSON list of per-judge values; ties left out with `--ties drop` |
//! | `judgments.jsonl` | every judged pair (also dropped ties): principle, per-judge and per-order probabilities, lengths, models, human label |
//! | `rejects.jsonl` | pairs without a readable verdict, with the reason |
//! | `report.json` | counts, requests and the metrics below (rewritten at the end) |
//!
//! **Metrics** (over `judgments.jsonl`, so a resumed run reports on all of it):
//! * `accuracy`: `predicted` equals the human label (a, b or tie), over pairs
//!   with a human label; `accuracy_decisive`: the same over pairs the human
//!   did not call a tie;
//! * `log_loss`: mean −ln p(human label) of (p_a, p_b, p_tie), p clipped to
//!   [1e-15, 1];
//! * `position_consistency`, per judge and overall: share of (judge, pair)
//!   whose two orders prefer the same answer (both P > 0.5 or both < 0.5);
//!   `first_position_wins`: share of single-order verdicts that chose the
//!   answer shown first;
//! * `verbosity`: among pairs whose answers differ in length (characters),
//!   how often the longer one wins — for the judge over its decisive
//!   predictions, for humans over their decisive labels;
//! * `self_enhancement`, per judge whose model name equals `model_a` or
//!   `model_b` (exactly one of them): win rate of that model's answers (win
//!   1, tie ½, loss 0) by the judge's own P and by the humans.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::cli::{LabelArgs, TiesArg};
use crate::engine::{AbortReason, CallError, EngineConfig, StatsSnapshot, StopSignal};
use crate::input::{Constitution, InputError, InputErrors, Location};
use crate::judge::{is_tie, Judge, JudgeFail, JudgeVerdict};
use crate::output::manifest::{self, Fingerprint};
use crate::output::{AppendFiles, OutputError, STATE_DIR};
use crate::progress::{Display, Reporter, Rows};
use crate::run::{RunError, DEFAULT_SEED};
use crate::template::Templates;

/// Files of a label run, in commit-log order.
pub const FILES: [&str; 3] = ["labels.csv", "judgments.jsonl", "rejects.jsonl"];
const LABELS: usize = 0;
const JUDGMENTS: usize = 1;
const REJECTS: usize = 2;

/// A human preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Winner {
    A,
    B,
    Tie,
}

/// One pair to label.
#[derive(Clone, Debug)]
pub struct PairRecord {
    pub id: String,
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub human: Option<Winner>,
}

/// Text of a cell: a JSON list of turns is joined (see the module docs).
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let t = s.trim_start();
            if t.starts_with('[') {
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(t) {
                    return join_turns(&items);
                }
            }
            s.clone()
        }
        Value::Array(items) => join_turns(items),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn join_turns(items: &[Value]) -> String {
    items
        .iter()
        .filter(|v| !v.is_null())
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "1" | "1.0" | "true" | "yes" => Some(true),
            "0" | "0.0" | "false" | "no" | "" => Some(false),
            _ => None,
        },
        Value::Null => Some(false),
        _ => None,
    }
}

/// Reads the pairs file into records (rows are small next to the requests
/// they cost; the file is read once up front so every problem is reported
/// before anything is sent).
pub fn read_pairs(path: &Path, limit: Option<u64>) -> Result<Vec<PairRecord>, InputErrors> {
    let err = |at: Location, m: String| InputError::new(path, at, m);
    let jsonl = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json" | "ndjson")
    );
    let mut rows: Vec<(u64, serde_json::Map<String, Value>)> = Vec::new();
    if jsonl {
        let f = std::fs::File::open(path)
            .map_err(|e| err(Location::File, format!("cannot open pairs: {e}")))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| err(Location::Line(i as u64 + 1), e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&line) {
                Ok(Value::Object(o)) => rows.push((i as u64 + 1, o)),
                Ok(_) => {
                    return Err(err(
                        Location::Line(i as u64 + 1),
                        "expected a JSON object".into(),
                    )
                    .into())
                }
                Err(e) => {
                    return Err(
                        err(Location::Line(i as u64 + 1), format!("not valid JSON: {e}")).into(),
                    )
                }
            }
            if limit.is_some_and(|l| rows.len() as u64 >= l) {
                break;
            }
        }
    } else {
        let mut r = csv::ReaderBuilder::new()
            .flexible(false)
            .from_path(path)
            .map_err(|e| err(Location::File, format!("cannot open pairs: {e}")))?;
        let headers: Vec<String> = r
            .headers()
            .map_err(|e| err(Location::Line(1), e.to_string()))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect();
        for rec in r.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                err(Location::Line(line), e.to_string())
            })?;
            let line = rec.position().map_or(0, |p| p.line());
            let o = headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
                .collect();
            rows.push((line, o));
            if limit.is_some_and(|l| rows.len() as u64 >= l) {
                break;
            }
        }
    }
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    let mut out = Vec::with_capacity(rows.len());
    for (index, (line, o)) in rows.into_iter().enumerate() {
        let at = Location::Line(line);
        let text = |k: &str| o.get(k).map(cell_text);
        let (Some(prompt), Some(a), Some(b)) =
            (text("prompt"), text("response_a"), text("response_b"))
        else {
            errors.push(err(
                at,
                "needs the columns prompt, response_a and response_b".into(),
            ));
            if errors.len() >= 20 {
                break;
            }
            continue;
        };
        if prompt.trim().is_empty() || a.trim().is_empty() || b.trim().is_empty() {
            errors.push(err(at.clone(), "blank prompt or response".into()));
        }
        let id = match o.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ => index.to_string(),
        };
        if !ids.insert(id.clone()) {
            errors.push(err(at.clone(), format!("duplicate id `{id}`")));
        }
        let wins: Vec<Option<bool>> = ["winner_model_a", "winner_model_b", "winner_tie"]
            .iter()
            .map(|k| o.get(*k).map_or(Some(false), flag))
            .collect();
        let any_col = ["winner_model_a", "winner_model_b", "winner_tie"]
            .iter()
            .any(|k| {
                o.get(*k)
                    .is_some_and(|v| !matches!(v, Value::Null) && v.as_str() != Some(""))
            });
        let human = match (any_col, wins.as_slice()) {
            (false, _) => None,
            (true, [Some(true), Some(false), Some(false)]) => Some(Winner::A),
            (true, [Some(false), Some(true), Some(false)]) => Some(Winner::B),
            (true, [Some(false), Some(false), Some(true)]) => Some(Winner::Tie),
            _ => {
                errors.push(err(
                    at.clone(),
                    "winner_model_a, winner_model_b and winner_tie must hold exactly one 1".into(),
                ));
                None
            }
        };
        let model = |k: &str| {
            o.get(k)
                .map(cell_text)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        out.push(PairRecord {
            id,
            prompt,
            response_a: a,
            response_b: b,
            model_a: model("model_a"),
            model_b: model("model_b"),
            human,
        });
        if errors.len() >= 20 {
            break;
        }
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(err(Location::File, "no pairs".into()));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(InputErrors(errors))
    }
}

/// One line of `judgments.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Judgment {
    pub id: String,
    pub principle: String,
    /// P(A better), mean over orders and judges.
    pub p: f64,
    pub p_a: f64,
    pub p_b: f64,
    pub p_tie: f64,
    pub predicted: Winner,
    /// Written to `labels.csv` (false for a tie under `--ties drop`).
    pub written: bool,
    pub len_a: usize,
    pub len_b: usize,
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub human: Option<Winner>,
    pub judges: Vec<JudgeLine>,
}

/// One judge's values in `judgments.jsonl` and `labels.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JudgeLine {
    pub judge: String,
    /// The judge's model name (for self-enhancement).
    pub model: String,
    /// P(A better), mean of the orders.
    pub p: f64,
    /// P(A better) when A was shown first / second.
    pub p_first: f64,
    pub p_second: f64,
    pub method: String,
}

#[derive(Serialize)]
struct Reject<'a> {
    id: &'a str,
    prompt: &'a str,
    stage: &'static str,
    reason: &'a str,
}

enum Done {
    Judged(Judgment),
    Rejected(PairRecord, String),
}

/// Labels one pair.
async fn label_one(judge: &Judge, rec: PairRecord) -> Result<Done, CallError> {
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
        Err(JudgeFail::Reject(why)) | Err(JudgeFail::Call(CallError::Reject(why))) => {
            return Ok(Done::Rejected(rec, why))
        }
        Err(JudgeFail::Call(e)) => return Err(e),
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
pub async fn label(args: &LabelArgs, argv: Vec<String>) -> Result<LabelSummary, RunError> {
    let started = Instant::now();
    if args.run.concurrency == 0 {
        return Err(RunError::Usage("--concurrency must be at least 1".into()));
    }
    let seed = args.sampling.seed.unwrap_or(DEFAULT_SEED);
    let opts = crate::judge::options(&args.judge, seed, args.sampling.max_tokens)?;
    let pairs = read_pairs(&args.pairs, args.limit)?;
    let constitution = match &args.constitution {
        Some(p) => Some(Constitution::load(p)?),
        None => None,
    };
    let templates = Templates::load(args.templates.as_deref()).map_err(RunError::Template)?;
    let out = args.out.clone();
    std::fs::create_dir_all(out.join(STATE_DIR)).map_err(|e| OutputError::Io {
        path: out.clone(),
        source: e,
    })?;

    let fingerprint = Fingerprint {
        provider: if args.judge.judges.is_empty() {
            format!(
                "{:?}:{}",
                crate::config::select_provider(&args.endpoint).0,
                args.endpoint.model.clone().unwrap_or_default()
            )
            .to_lowercase()
        } else {
            args.judge.judges.join(",")
        },
        model: String::new(),
        constitution_sha256: match &args.constitution {
            Some(p) => manifest::file_sha256(p)?,
            None => String::new(),
        },
        templates_sha256: templates.digest().to_string(),
        params: serde_json::json!({
            "judge_samples": opts.samples, "cot": opts.cot, "tie_margin": opts.tie_margin,
            "ties": format!("{:?}", args.judge.ties).to_lowercase(), "max_tokens": opts.cot_max_tokens,
        }),
        rounds: 0,
        preference: "label".into(),
        seed,
    };
    if let Some(old) = manifest::read_fingerprint(&out)? {
        let changes = fingerprint.changes_from(&old);
        if !changes.is_empty() && !args.run.force {
            return Err(RunError::Usage(format!(
                "{} holds a run with different settings; resuming would mix two label sets. Changed: {}. Use a new --out, or pass --force to resume anyway",
                out.display(),
                changes.join("; ")
            )));
        }
    }
    manifest::write_fingerprint(&out, &fingerprint)?;

    let (mut files, done) = AppendFiles::open(&out, &FILES)?;
    if files.is_fresh() {
        files.append(LABELS, b"id,p_a,p_b,p_tie,predicted,judges\n")?;
        files.commit(None)?;
    }
    let stop = StopSignal::default();
    let stats: Arc<crate::engine::Stats> = Arc::default();
    let setup = crate::judge::EngineSetup {
        state_dir: &out.join(STATE_DIR),
        done: &done,
        cfg: EngineConfig {
            rpm: args.run.rpm,
            tpm: args.run.tpm,
            max_retries: args.run.max_retries,
            max_requests: args.run.max_requests,
            ..EngineConfig::default()
        },
        stop: stop.clone(),
        stats: stats.clone(),
        concurrency: args.run.concurrency,
    };
    let endpoints = crate::judge::endpoints(&args.judge, &args.endpoint, None, &setup)?;
    let judge = Arc::new(Judge::new(
        endpoints,
        templates,
        constitution.as_ref(),
        opts,
    ));
    let keep_ties = args.judge.ties == TiesArg::Keep;

    let total = pairs.len() as u64;
    let already = pairs.iter().filter(|p| done.contains(&p.id)).count() as u64;
    let rows = Arc::new(Rows::default());
    rows.done.store(already, Ordering::Relaxed);
    let display = Display::choose(args.run.quiet, args.run.log_format);
    let reporter = Reporter::start(display, stats.clone(), rows.clone(), total);
    if already > 0 {
        reporter.note(&format!(
            "resuming {}: {already} pairs already labelled",
            out.display()
        ));
    }
    {
        let display = reporter.display();
        crate::run::watch_signals(stop.clone(), move |m| {
            if display == Display::Json {
                eprintln!("{}", serde_json::json!({ "event": "signal", "message": m }));
            } else {
                eprintln!("\ncai: {m}");
            }
        });
    }

    // Same scheduling as `generate`: at most --concurrency pairs in flight,
    // each pair's rows written and committed the moment it is judged.
    let mut todo = pairs.into_iter().filter(|p| !done.contains(&p.id));
    let mut tasks: JoinSet<Result<Done, CallError>> = JoinSet::new();
    let mut fatal: Option<RunError> = None;
    let mut input_open = true;
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut grace_spent = false;
    loop {
        if grace.is_none() && stop.reason().is_some() {
            grace = Some(Box::pin(tokio::time::sleep(crate::run::GRACE)));
        }
        while input_open
            && stop.reason().is_none()
            && fatal.is_none()
            && tasks.len() < args.run.concurrency
        {
            match todo.next() {
                Some(rec) => {
                    let j = judge.clone();
                    tasks.spawn(async move { label_one(&j, rec).await });
                }
                None => input_open = false,
            }
        }
        if tasks.is_empty() {
            break;
        }
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { continue };
                match joined {
                    Ok(Ok(d)) => {
                        let written = match write_done(&mut files, d, keep_ties) {
                            Ok(w) => w,
                            Err(e) => {
                                fatal = Some(e.into());
                                stop.stop(AbortReason::Signal);
                                tasks.abort_all();
                                continue;
                            }
                        };
                        if let Some((id, why)) = written {
                            rows.rejected.fetch_add(1, Ordering::Relaxed);
                            reporter.note(&format!("rejected {id}: {why}"));
                        }
                        rows.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(CallError::Stop(msg))) => {
                        fatal.get_or_insert(RunError::Endpoint(msg));
                        tasks.abort_all();
                    }
                    Ok(Err(_)) => {}
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => {
                        fatal = Some(RunError::Endpoint(format!("internal error: a pair task failed: {e}")));
                        tasks.abort_all();
                    }
                }
            },
            _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() && !grace_spent => {
                tasks.abort_all();
                grace_spent = true;
            }
        }
    }
    files.sync()?;
    reporter.finish();

    let judgments = read_judgments(&out.join(FILES[JUDGMENTS]))?;
    let rejects = count_lines(&out.join(FILES[REJECTS]))?;
    let snapshot = stats.snapshot();
    let aborted = stop.reason();
    let mut report = Report::compute(&judgments, &judge.opts);
    report.pairs_total = total;
    report.rejected = rejects;
    report.status = match (&fatal, aborted) {
        (Some(e), _) => format!("failed: {e}"),
        (None, Some(r)) => format!("aborted: {r}"),
        (None, None) if rejects > 0 => "done with rejects".into(),
        (None, None) => "done".into(),
    };
    report.cai_version = env!("CARGO_PKG_VERSION").into();
    report.arguments = argv;
    report.judges = judge.endpoints.iter().map(|e| e.label.clone()).collect();
    report.requests = Some(snapshot);
    report.wall_time_s = started.elapsed().as_secs_f64();
    manifest::write_atomic(&out.join("report.json"), &report)?;
    if let Some(e) = fatal {
        return Err(e);
    }
    if let Some(reason) = aborted {
        return Err(RunError::Aborted { reason });
    }
    Ok(LabelSummary {
        out,
        report,
        stats: snapshot,
    })
}

/// Writes one judged or rejected pair and commits it; returns the id and
/// reason of a reject.
fn write_done(
    files: &mut AppendFiles,
    d: Done,
    keep_ties: bool,
) -> Result<Option<(String, String)>, OutputError> {
    match d {
        Done::Judged(mut j) => {
            j.written = keep_ties || j.predicted != Winner::Tie;
            if j.written {
                let judges = serde_json::to_string(
                    &j.judges
                        .iter()
                        .map(|l| {
                            serde_json::json!({"judge": l.judge, "p_a": round6(l.p), "p_a_first": round6(l.p_first), "p_a_second": round6(l.p_second), "method": l.method})
                        })
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default();
                let predicted = match j.predicted {
                    Winner::A => "a",
                    Winner::B => "b",
                    Winner::Tie => "tie",
                };
                files.csv(
                    LABELS,
                    &[
                        &j.id,
                        &format!("{:.6}", j.p_a),
                        &format!("{:.6}", j.p_b),
                        &format!("{:.6}", j.p_tie),
                        predicted,
                        &judges,
                    ],
                )?;
            }
            files.jsonl(JUDGMENTS, &j)?;
            files.commit(Some(&j.id))?;
            Ok(None)
        }
        Done::Rejected(rec, why) => {
            files.jsonl(
                REJECTS,
                &Reject {
                    id: &rec.id,
                    prompt: &rec.prompt,
                    stage: "judge",
                    reason: &why,
                },
            )?;
            files.commit(Some(&rec.id))?;
            Ok(Some((rec.id, why)))
        }
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn read_judgments(path: &Path) -> Result<Vec<Judgment>, OutputError> {
    let text = std::fs::read_to_string(path).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn count_lines(path: &Path) -> Result<u64, OutputError> {
    let text = std::fs::read_to_string(path).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().count() as u64)
}

/// Position consistency of one judge.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Consistency {
    pub judge: String,
    pub pairs: u64,
    /// Share of pairs whose two orders prefer the same answer.
    pub position_consistency: Option<f64>,
    /// Share of single-order verdicts (P ≠ 0.5) that chose the answer shown first.
    pub first_position_wins: Option<f64>,
}

/// How often the longer answer wins.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Verbosity {
    /// Pairs (decisive judge verdict, lengths differ) behind `judge_longer_wins`.
    pub judge_pairs: u64,
    pub judge_longer_wins: Option<f64>,
    /// Pairs (decisive human label, lengths differ) behind `human_longer_wins`.
    pub human_pairs: u64,
    pub human_longer_wins: Option<f64>,
}

/// A judge model rating its own answers.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SelfEnhancement {
    pub judge: String,
    pub pairs: u64,
    /// Win rate of the judge model's own answers by its own verdicts.
    pub judge_win_rate: Option<f64>,
    /// The same answers' win rate by human labels (pairs with one).
    pub human_pairs: u64,
    pub human_win_rate: Option<f64>,
}

/// `report.json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub cai_version: String,
    pub status: String,
    pub judges: Vec<String>,
    pub pairs_total: u64,
    pub judged: u64,
    pub written: u64,
    pub ties: u64,
    pub rejected: u64,
    pub human_labelled: u64,
    pub accuracy: Option<f64>,
    pub accuracy_decisive: Option<f64>,
    pub log_loss: Option<f64>,
    pub position_consistency: Option<f64>,
    pub per_judge: Vec<Consistency>,
    pub verbosity: Verbosity,
    pub self_enhancement: Vec<SelfEnhancement>,
    pub requests: Option<StatsSnapshot>,
    pub wall_time_s: f64,
    pub arguments: Vec<String>,
}

fn ratio(num: f64, den: u64) -> Option<f64> {
    (den > 0).then(|| num / den as f64)
}

fn side(p: f64) -> i8 {
    if p > 0.5 {
        1
    } else if p < 0.5 {
        -1
    } else {
        0
    }
}

impl Report {
    /// The metrics of the module docs over `judgments`.
    pub fn compute(judgments: &[Judgment], opts: &crate::judge::JudgeOptions) -> Report {
        let mut r = Report {
            judged: judgments.len() as u64,
            written: judgments.iter().filter(|j| j.written).count() as u64,
            ties: judgments
                .iter()
                .filter(|j| is_tie(j.p, opts.tie_margin))
                .count() as u64,
            ..Report::default()
        };
        let labelled: Vec<(&Judgment, Winner)> = judgments
            .iter()
            .filter_map(|j| j.human.map(|h| (j, h)))
            .collect();
        r.human_labelled = labelled.len() as u64;
        let correct = labelled.iter().filter(|(j, h)| j.predicted == *h).count();
        r.accuracy = ratio(correct as f64, labelled.len() as u64);
        let decisive: Vec<_> = labelled.iter().filter(|(_, h)| *h != Winner::Tie).collect();
        let dc = decisive.iter().filter(|(j, h)| j.predicted == *h).count();
        r.accuracy_decisive = ratio(dc as f64, decisive.len() as u64);
        let ll: f64 = labelled
            .iter()
            .map(|(j, h)| {
                let p = match h {
                    Winner::A => j.p_a,
                    Winner::B => j.p_b,
                    Winner::Tie => j.p_tie,
                };
                -p.clamp(1e-15, 1.0).ln()
            })
            .sum();
        r.log_loss = ratio(ll, labelled.len() as u64);

        let mut names: Vec<String> = Vec::new();
        for j in judgments {
            for l in &j.judges {
                if !names.contains(&l.judge) {
                    names.push(l.judge.clone());
                }
            }
        }
        let (mut all_pairs, mut all_consistent) = (0u64, 0u64);
        for name in &names {
            let lines: Vec<&JudgeLine> = judgments
                .iter()
                .flat_map(|j| j.judges.iter().filter(|l| &l.judge == name))
                .collect();
            let consistent = lines
                .iter()
                .filter(|l| side(l.p_first) != 0 && side(l.p_first) == side(l.p_second))
                .count() as u64;
            // Shown first: A in the first order (P(A) > 0.5), B in the
            // second (P(A) < 0.5 there means B, shown first, won).
            let (mut first, mut decided) = (0u64, 0u64);
            for l in &lines {
                for (p, a_first) in [(l.p_first, true), (l.p_second, false)] {
                    if side(p) != 0 {
                        decided += 1;
                        if (side(p) > 0) == a_first {
                            first += 1;
                        }
                    }
                }
            }
            all_pairs += lines.len() as u64;
            all_consistent += consistent;
            r.per_judge.push(Consistency {
                judge: name.clone(),
                pairs: lines.len() as u64,
                position_consistency: ratio(consistent as f64, lines.len() as u64),
                first_position_wins: ratio(first as f64, decided),
            });
        }
        r.position_consistency = ratio(all_consistent as f64, all_pairs);

        let longer = |j: &Judgment| -> Option<Winner> {
            match j.len_a.cmp(&j.len_b) {
                std::cmp::Ordering::Greater => Some(Winner::A),
                std::cmp::Ordering::Less => Some(Winner::B),
                std::cmp::Ordering::Equal => None,
            }
        };
        let (mut jn, mut jw, mut hn, mut hw) = (0u64, 0u64, 0u64, 0u64);
        for j in judgments {
            let Some(l) = longer(j) else { continue };
            if j.predicted != Winner::Tie {
                jn += 1;
                jw += u64::from(j.predicted == l);
            }
            if let Some(h) = j.human.filter(|h| *h != Winner::Tie) {
                hn += 1;
                hw += u64::from(h == l);
            }
        }
        r.verbosity = Verbosity {
            judge_pairs: jn,
            judge_longer_wins: ratio(jw as f64, jn),
            human_pairs: hn,
            human_longer_wins: ratio(hw as f64, hn),
        };

        for name in &names {
            let mut s = SelfEnhancement {
                judge: name.clone(),
                ..SelfEnhancement::default()
            };
            let (mut jsum, mut hsum) = (0.0, 0.0);
            for j in judgments {
                let Some(l) = j.judges.iter().find(|l| &l.judge == name) else {
                    continue;
                };
                let own_a = j.model_a.as_deref() == Some(l.model.as_str());
                let own_b = j.model_b.as_deref() == Some(l.model.as_str());
                if own_a == own_b {
                    continue;
                }
                s.pairs += 1;
                let p_own = if own_a { l.p } else { 1.0 - l.p };
                jsum += if is_tie(p_own, opts.tie_margin) {
                    0.5
                } else if p_own > 0.5 {
                    1.0
                } else {
                    0.0
                };
                if let Some(h) = j.human {
                    s.human_pairs += 1;
                    hsum += match (h, own_a) {
                        (Winner::Tie, _) => 0.5,
                        (Winner::A, true) | (Winner::B, false) => 1.0,
                        _ => 0.0,
                    };
                }
            }
            if s.pairs > 0 {
                s.judge_win_rate = ratio(jsum, s.pairs);
                s.human_win_rate = ratio(hsum, s.human_pairs);
                r.self_enhancement.push(s);
            }
        }
        r
    }

    /// The report as a small text table.
    pub fn table(&self) -> String {
        let f = |x: Option<f64>| x.map_or_else(|| "—".to_string(), |v| format!("{v:.3}"));
        let mut rows: Vec<(String, String)> = vec![
            (
                "pairs judged".into(),
                format!("{} of {}", self.judged, self.pairs_total),
            ),
            ("rows in labels.csv".into(), self.written.to_string()),
            ("ties".into(), self.ties.to_string()),
            ("rejected".into(), self.rejected.to_string()),
            ("with human labels".into(), self.human_labelled.to_string()),
            ("accuracy (a/b/tie)".into(), f(self.accuracy)),
            (
                "accuracy (human a/b only)".into(),
                f(self.accuracy_decisive),
            ),
            ("log-loss".into(), f(self.log_loss)),
            ("position consistency".into(), f(self.position_consistency)),
            (
                "longer answer wins: judge / humans".into(),
                format!(
                    "{} / {}",
                    f(self.verbosity.judge_longer_wins),
                    f(self.verbosity.human_longer_wins)
                ),
            ),
        ];
        for c in &self.per_judge {
            rows.push((
                format!("{}: consistency / first wins", c.judge),
                format!(
                    "{} / {}",
                    f(c.position_consistency),
                    f(c.first_position_wins)
                ),
            ));
        }
        for s in &self.self_enhancement {
            rows.push((
                format!("{}: own answers win, judge / humans", s.judge),
                format!(
                    "{} / {} ({} pairs)",
                    f(s.judge_win_rate),
                    f(s.human_win_rate),
                    s.pairs
                ),
            ));
        }
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<w$}  {v}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_lists_are_joined_and_plain_text_kept() {
        assert_eq!(
            cell_text(&Value::String(r#"["Hi", null, "More"]"#.into())),
            "Hi\n\nMore"
        );
        assert_eq!(cell_text(&Value::String("[not json".into())), "[not json");
        assert_eq!(cell_text(&serde_json::json!(["x", "y"])), "x\n\ny");
    }

    #[test]
    fn pairs_read_from_jsonl_and_csv_with_every_problem_reported() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("p.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"id": 7, "prompt": ["Hi", "And?"], "response_a": ["a1", "a2"], "response_b": "b", "model_a": "m", "winner_model_a": 0, "winner_model_b": 1, "winner_tie": 0}"#,
                "\n\n",
                r#"{"prompt": "p", "response_a": "a", "response_b": "b"}"#,
                "\n"
            ),
        )
        .unwrap();
        let rows = read_pairs(&jsonl, None).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "7");
        assert_eq!(rows[0].prompt, "Hi\n\nAnd?");
        assert_eq!(rows[0].response_a, "a1\n\na2");
        assert_eq!(rows[0].model_a.as_deref(), Some("m"));
        assert_eq!(rows[0].model_b, None);
        assert_eq!(rows[0].human, Some(Winner::B));
        assert_eq!(rows[1].id, "1");
        assert_eq!(rows[1].human, None);

        let csv = dir.path().join("p.csv");
        std::fs::write(
            &csv,
            "id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\nx,p,a,b,1,1,0\nx,p,,b,0,0,1\n",
        )
        .unwrap();
        let errs = read_pairs(&csv, None).unwrap_err().to_string();
        assert!(
            errs.contains(
                "p.csv:2: winner_model_a, winner_model_b and winner_tie must hold exactly one 1"
            ),
            "{errs}"
        );
        assert!(errs.contains("p.csv:3: blank prompt or response"), "{errs}");
        assert!(errs.contains("p.csv:3: duplicate id `x`"), "{errs}");
    }
}
