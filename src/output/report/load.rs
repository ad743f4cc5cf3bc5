//! Reading a run directory for the report: every line of the JSONL files is
//! streamed once into the figures' accumulators, and only a bounded sample
//! of rows (the first ones, and rejects) is kept whole.
//!
//! The manifest, trace lines, judgments and `report.json` are read through
//! the writers' own types; every field defaults when missing and unknown
//! fields are ignored, so a report can be drawn for a run of an older or
//! newer `cai`. A line that is not valid JSON is an error naming the file
//! and line, except a last line without its newline: that is a row still
//! being written (or torn by a crash, which a resume cuts), and is skipped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::diff::edit_share;
use super::ReportError;
use crate::feedback::metrics::{Judgment, Report};
use crate::input::pairs::Winner;
use crate::output::manifest::AnyManifest;
use crate::output::optimize::{OptimizeKind, Report as OptimizeReport};
use crate::output::trace::TraceLine;
use crate::output::{PrefLine, RejectLine};
use crate::pipeline::Round;

/// How many rows (and rejects) the page embeds whole.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub rows: usize,
    pub rejects: usize,
    /// Examples shown per reject reason.
    pub examples_per_reason: usize,
    /// Distinct reject reasons kept; the rest are counted together.
    pub reasons: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rows: 500,
            rejects: 200,
            examples_per_reason: 3,
            reasons: 100,
        }
    }
}

// ---------- read-side shapes of the files ----------
//
// Every file is read through its writer's own type (`manifest.json` as
// [`AnyManifest`], `trace.jsonl` as [`TraceLine`], `preference.jsonl` as
// [`PrefLine`], `rejects.jsonl` as [`RejectLine`], `judgments.jsonl` as
// [`Judgment`], `report.json` as label's [`Report`] or as
// [`OptimizeReport`]): one schema, with `#[serde(default)]` for older
// runs. Only [`KindView`] below is the report's own: the one key that
// tells which `report.json` a directory has.

impl Round {
    /// The principle as the page names it.
    pub fn principle(&self) -> String {
        match &self.principle_name {
            Some(n) if !n.trim().is_empty() => n.clone(),
            // Unnamed (most constitutions): the number and the start of
            // its critique request, which is the principle's own text.
            _ => format!(
                "#{} {}",
                self.principle_index + 1,
                super::html::one_line(&self.critique_request, 60)
            ),
        }
    }
}

/// The preference pair of a sampled row.
#[derive(Debug, Clone)]
pub struct PrefView {
    pub chosen: String,
    pub rejected: String,
    pub chosen_score: Option<f64>,
    pub rejected_score: Option<f64>,
    pub principle: Option<String>,
    pub tie: bool,
}

/// The `kind` of a `report.json`: `"optimize"` for `cai optimize`'s
/// (read as [`OptimizeReport`]); `cai label`'s has none.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KindView {
    kind: Option<String>,
}

// ---------- what the report is drawn from ----------

/// A finished prompt kept whole for the rows browser.
#[derive(Debug)]
pub struct GenRow {
    pub trace: TraceLine<'static>,
    pub edit_share: f64,
    pub pref: Option<PrefView>,
}

/// Position consistency of one judge, counted over verdicts.
#[derive(Debug, Default, Clone)]
pub struct JudgeTally {
    /// Verdicts whose two orders both leaned one way (not exactly 0.5).
    pub decided: u64,
    /// ... and leaned the same way.
    pub consistent: u64,
    /// Single-order verdicts not exactly 0.5, and those preferring the
    /// answer shown first.
    pub single: u64,
    pub first_wins: u64,
}

/// Values a figure draws from more rows than it needs to hold.
///
/// 20,000 values are plenty for a histogram and a median (a sampled
/// median is off by about 0.35 % of the rows, one standard error), and
/// keep each figure at 160 KB whatever the run's size: the report is
/// drawn at the end of every run, on top of what the run still holds.
const SAMPLE_CAP: usize = 20_000;

/// The values of one figure, at most [`SAMPLE_CAP`] of them: past the cap
/// a seeded reservoir sample (every row equally likely to be kept, the same
/// sample on every run), so the report of a ten-million-row run draws its
/// histograms and medians from bounded memory instead of a vector a row.
/// Counts come from [`Sampled::seen`], never from the sample's length.
#[derive(Debug)]
pub struct Sampled {
    values: Vec<f64>,
    seen: u64,
    rng: rand_chacha::ChaCha8Rng,
}

impl Default for Sampled {
    fn default() -> Self {
        use rand::SeedableRng;
        Sampled {
            values: Vec::new(),
            seen: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed),
        }
    }
}

impl Sampled {
    pub fn push(&mut self, v: f64) {
        use rand::Rng;
        self.seen += 1;
        if self.values.len() < SAMPLE_CAP {
            self.values.push(v);
        } else {
            let j = self.rng.random_range(0..self.seen);
            if let Some(slot) = self.values.get_mut(j as usize) {
                *slot = v;
            }
        }
    }

    /// Values pushed, kept or not.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

impl std::ops::Deref for Sampled {
    type Target = [f64];
    fn deref(&self) -> &[f64] {
        &self.values
    }
}

/// Everything about a `generate` (or merged) run's rows.
#[derive(Debug, Default)]
pub struct GenData {
    pub rows_total: u64,
    pub rows: Vec<GenRow>,
    pub initial_chars: Sampled,
    pub final_chars: Sampled,
    pub edit_shares: Sampled,
    pub unchanged: u64,
    /// Uses per principle, over every round of every row.
    pub principles: BTreeMap<String, u64>,
    pub rounds_max: u32,
    pub judges: BTreeMap<String, JudgeTally>,
    pub comparisons: u64,
    pub pref: PrefData,
}

/// Over all preference rows.
#[derive(Debug, Default)]
pub struct PrefData {
    pub rows: u64,
    pub chosen_scores: Sampled,
    pub rejected_scores: Sampled,
    pub chosen_longer: u64,
    pub same_length: u64,
    pub chosen_shorter: u64,
    pub ties: u64,
}

/// Rejects grouped by reason.
#[derive(Debug, Default)]
pub struct RejectData {
    pub total: u64,
    /// (stage, reason) → count and examples, in first-seen order.
    pub groups: Vec<RejectGroup>,
    /// Rejects whose reason did not fit in [`Limits::reasons`].
    pub other: u64,
    pub sample: Vec<RejectLine<'static>>,
}

#[derive(Debug)]
pub struct RejectGroup {
    pub stage: String,
    pub reason: String,
    pub count: u64,
    pub examples: Vec<RejectLine<'static>>,
}

impl RejectData {
    /// The group index of a reject, if its reason has one.
    pub fn group_of(&self, r: &RejectLine<'static>) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.stage == r.stage && g.reason == r.reason)
    }
}

/// Everything about a `label` run.
#[derive(Debug, Default)]
pub struct LabelData {
    pub report: Option<Report>,
    pub total: u64,
    pub rows: Vec<Judgment>,
    pub p_a: Sampled,
    /// Calibration: per tenth of P(A better), sum of P, sum of the human
    /// outcome (A = 1, tie = ½, B = 0) and count, over human-labelled pairs.
    pub calibration: [(f64, f64, u64); 10],
    pub human: u64,
}

/// Everything about an `optimize` run.
#[derive(Debug, Default)]
pub struct OptimizeData {
    /// Default when the directory has no optimize `report.json` (yet).
    pub report: OptimizeReport,
    pub search_lines: u64,
    pub search_sample: Vec<String>,
}

/// What kind of run a directory holds, by its files.
#[derive(Debug, Default)]
pub struct RunData {
    pub manifest: Option<AnyManifest>,
    pub gen: Option<GenData>,
    pub label: Option<LabelData>,
    pub optimize: Option<OptimizeData>,
    pub rejects: RejectData,
    /// Last lines skipped because they had no newline yet.
    pub torn_lines: u64,
}

impl RunData {
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        if self.gen.is_some() {
            k.push("generate");
        }
        if self.label.is_some() {
            k.push("label");
        }
        if self.optimize.is_some() {
            k.push("optimize");
        }
        k
    }
}

// ---------- reading ----------

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses the file at `path` with `parse`, naming the line of an error.
fn read_with<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> serde_json::Result<T>,
) -> Result<T, ReportError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse(&bytes).map_err(|e| ReportError::Parse {
        path: path.to_path_buf(),
        line: e.line() as u64,
        message: e.to_string(),
    })
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    read_with(path, |b| serde_json::from_slice(b))
}

/// Calls `each` with every complete line of a JSONL file, parsed; returns
/// the number of torn last lines skipped (0 or 1).
fn stream<T: DeserializeOwned>(path: &Path, mut each: impl FnMut(T)) -> Result<u64, ReportError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                ReportError::Parse {
                    path: path.to_path_buf(),
                    line: n + 1,
                    message: "not UTF-8".into(),
                }
            } else {
                ReportError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
        if read == 0 {
            return Ok(0);
        }
        n += 1;
        if !line.ends_with('\n') {
            return Ok(1);
        }
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| ReportError::Parse {
            path: path.to_path_buf(),
            line: n,
            message: e.to_string(),
        })?;
        each(v);
    }
}

/// Reads everything the report shows from `dir`.
pub fn load(dir: &Path, limits: Limits) -> Result<RunData, ReportError> {
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(ReportError::NotARun {
            path: dir.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    let mut data = RunData::default();
    let has = |name: &str| dir.join(name).is_file();
    if has("manifest.json") {
        data.manifest = Some(read_with(
            &dir.join("manifest.json"),
            AnyManifest::from_slice,
        )?);
    }
    if has("trace.jsonl") {
        data.gen = Some(load_gen(dir, limits, &mut data.torn_lines)?);
    }
    let report_kind = if has("report.json") {
        read_json::<KindView>(&dir.join("report.json"))?.kind
    } else {
        None
    };
    if has("judgments.jsonl") || has("labels.csv") {
        data.label = Some(load_label(dir, limits, &mut data.torn_lines)?);
    }
    let optimize_report = report_kind.as_deref() == Some(OptimizeKind::NAME);
    if optimize_report || has("search.jsonl") {
        data.optimize = Some(load_optimize(
            dir,
            optimize_report,
            limits,
            &mut data.torn_lines,
        )?);
    }
    if has("rejects.jsonl") {
        data.rejects = load_rejects(dir, limits, &mut data.torn_lines)?;
    }
    if data.manifest.is_none()
        && data.gen.is_none()
        && data.label.is_none()
        && data.optimize.is_none()
    {
        return Err(ReportError::NotARun {
            path: dir.to_path_buf(),
            why: "none of manifest.json, trace.jsonl, judgments.jsonl, report.json or search.jsonl is there".into(),
        });
    }
    Ok(data)
}

fn chars(s: &str) -> f64 {
    s.chars().count() as f64
}

fn load_gen(dir: &Path, limits: Limits, torn: &mut u64) -> Result<GenData, ReportError> {
    let mut g = GenData::default();
    let path = dir.join("trace.jsonl");
    *torn += stream(&path, |t: TraceLine<'static>| {
        g.rows_total += 1;
        let fin = t.final_answer();
        g.initial_chars.push(chars(&t.init_response));
        g.final_chars.push(chars(fin));
        let share = edit_share(&t.init_response, fin);
        if t.init_response == fin {
            g.unchanged += 1;
        }
        g.edit_shares.push(share);
        g.rounds_max = g.rounds_max.max(t.rounds.len() as u32);
        for r in t.rounds.iter() {
            *g.principles.entry(r.principle()).or_default() += 1;
        }
        for c in t.judgments.iter().flat_map(|j| j.iter()) {
            g.comparisons += 1;
            for v in &c.judges {
                let tally = g.judges.entry(v.judge.clone()).or_default();
                tally_verdict(tally, v.p_first, v.p_second);
            }
        }
        if g.rows.len() < limits.rows {
            g.rows.push(GenRow {
                edit_share: share,
                trace: t,
                pref: None,
            });
        }
    })?;
    let pref_path = dir.join("preference.jsonl");
    if pref_path.is_file() {
        *torn += load_pref(&pref_path, &mut g)?;
    }
    Ok(g)
}

/// How `judgments.jsonl` names a winner.
pub fn winner_name(w: Winner) -> &'static str {
    match w {
        Winner::A => "a",
        Winner::B => "b",
        Winner::Tie => "tie",
    }
}

/// Reads `preference.jsonl` into the pair figures of `g`, and the pairs of
/// its sampled rows; returns the torn lines skipped.
fn load_pref(path: &Path, g: &mut GenData) -> Result<u64, ReportError> {
    let wanted: HashMap<String, usize> = g
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.trace.id.to_string(), i))
        .collect();
    let mut found: Vec<(usize, PrefView)> = Vec::new();
    let p = &mut g.pref;
    let torn = stream(path, |l: PrefLine<'static>| {
        p.rows += 1;
        let chosen = l.chosen.iter().map(|m| &*m.content).collect::<String>();
        let rejected = l.rejected.iter().map(|m| &*m.content).collect::<String>();
        let (lc, lr) = (chosen.chars().count(), rejected.chars().count());
        match lc.cmp(&lr) {
            std::cmp::Ordering::Greater => p.chosen_longer += 1,
            std::cmp::Ordering::Equal => p.same_length += 1,
            std::cmp::Ordering::Less => p.chosen_shorter += 1,
        }
        if let Some(s) = &l.scores {
            p.chosen_scores.push(s.chosen_score);
            p.rejected_scores.push(s.rejected_score);
            p.ties += u64::from(s.tie);
        }
        if let Some(&i) = wanted.get(l.id.as_ref()) {
            let scores = l.scores.as_ref();
            found.push((
                i,
                PrefView {
                    chosen,
                    rejected,
                    chosen_score: scores.map(|s| s.chosen_score),
                    rejected_score: scores.map(|s| s.rejected_score),
                    tie: scores.is_some_and(|s| s.tie),
                    principle: l.scores.map(|s| s.principle.into_owned()),
                },
            ));
        }
    })?;
    for (i, pv) in found {
        g.rows[i].pref = Some(pv);
    }
    Ok(torn)
}

/// Counts one judge verdict (P of x better in each order) for position
/// consistency: both orders decisive and on one side is consistent.
pub fn tally_verdict(t: &mut JudgeTally, p_first: f64, p_second: f64) {
    let side = |p: f64| (p > 0.5) as i8 - (p < 0.5) as i8;
    let (a, b) = (side(p_first), side(p_second));
    if a != 0 && b != 0 {
        t.decided += 1;
        if a == b {
            t.consistent += 1;
        }
    }
    // x shown first in the first order, second in the other.
    if a != 0 {
        t.single += 1;
        if a > 0 {
            t.first_wins += 1;
        }
    }
    if b != 0 {
        t.single += 1;
        if b < 0 {
            t.first_wins += 1;
        }
    }
}

fn load_label(dir: &Path, limits: Limits, torn: &mut u64) -> Result<LabelData, ReportError> {
    let mut l = LabelData::default();
    if dir.join("report.json").is_file() {
        l.report = Some(read_json(&dir.join("report.json"))?);
    }
    let path = dir.join("judgments.jsonl");
    if path.is_file() {
        *torn += stream(&path, |j: Judgment| {
            l.total += 1;
            let p = j.p_a + j.p_tie / 2.0;
            l.p_a.push(p);
            let outcome = j.human.map(|h| match h {
                Winner::A => 1.0,
                Winner::B => 0.0,
                Winner::Tie => 0.5,
            });
            if let Some(y) = outcome {
                l.human += 1;
                let k = ((p * 10.0).floor() as usize).min(9);
                let bin = &mut l.calibration[k];
                bin.0 += p;
                bin.1 += y;
                bin.2 += 1;
            }
            if l.rows.len() < limits.rows {
                l.rows.push(j);
            }
        })?;
    }
    Ok(l)
}

/// `search.jsonl`, and `report.json` when it is an optimize one (`report`).
fn load_optimize(
    dir: &Path,
    report: bool,
    limits: Limits,
    torn: &mut u64,
) -> Result<OptimizeData, ReportError> {
    let mut o = OptimizeData::default();
    if report {
        o.report = read_json(&dir.join("report.json"))?;
    }
    let path = dir.join("search.jsonl");
    if path.is_file() {
        *torn += stream(&path, |v: serde_json::Value| {
            o.search_lines += 1;
            if o.search_sample.len() < limits.rows.min(100) {
                o.search_sample
                    .push(serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        })?;
    }
    Ok(o)
}

fn load_rejects(dir: &Path, limits: Limits, torn: &mut u64) -> Result<RejectData, ReportError> {
    let mut d = RejectData::default();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    *torn += stream(&dir.join("rejects.jsonl"), |r: RejectLine<'static>| {
        d.total += 1;
        let key = (r.stage.to_string(), r.reason.to_string());
        let slot = match index.get(&key) {
            Some(&i) => Some(i),
            None if d.groups.len() < limits.reasons => {
                index.insert(key.clone(), d.groups.len());
                d.groups.push(RejectGroup {
                    stage: key.0,
                    reason: key.1,
                    count: 0,
                    examples: Vec::new(),
                });
                Some(d.groups.len() - 1)
            }
            None => None,
        };
        match slot {
            Some(i) => {
                let g = &mut d.groups[i];
                g.count += 1;
                if g.examples.len() < limits.examples_per_reason {
                    g.examples.push(r.clone());
                }
            }
            None => d.other += 1,
        }
        if d.sample.len() < limits.rejects {
            d.sample.push(r);
        }
    })?;
    d.groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StatsSnapshot;
    use crate::provider::pool::EndpointStats;

    #[test]
    fn a_figure_keeps_a_bounded_sample_that_still_finds_the_median() {
        let mut s = Sampled::default();
        let n = SAMPLE_CAP as u64 * 3;
        for i in 0..n {
            s.push(i as f64);
        }
        assert_eq!(s.len(), SAMPLE_CAP);
        assert_eq!(s.seen(), n);
        let mut v = s.to_vec();
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let truth = (n / 2) as f64;
        assert!(
            (median - truth).abs() < 0.01 * n as f64,
            "{median} vs {truth}"
        );
    }

    #[test]
    fn consistency_counts_both_orders_on_one_side() {
        let mut t = JudgeTally::default();
        tally_verdict(&mut t, 0.9, 0.8); // consistent: x both times
        tally_verdict(&mut t, 0.9, 0.2); // first position wins twice
        tally_verdict(&mut t, 0.5, 0.7); // undecided first order
        assert_eq!((t.decided, t.consistent), (2, 1));
        // singles: 0.9 (first wins), 0.8 (x second → first lost), 0.9 (first
        // wins), 0.2 (x second, y first wins), 0.7 (x second, lost).
        assert_eq!((t.single, t.first_wins), (5, 3));
    }

    #[test]
    fn a_run_of_an_older_cai_loads_with_defaults_for_what_it_lacks() {
        // Shapes from before pools (`endpoints`), cost counters, principle
        // names, label's model columns and per-judge lines.
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write(
            "manifest.json",
            r#"{"status":"done","model":"m","requests":{"requests":4,"retries":1}}"#,
        );
        write(
            "trace.jsonl",
            "{\"id\":\"1\",\"prompt\":\"p\",\"init_response\":\"a\",\"rounds\":[{\"round\":1,\"critique_request\":\"Be kind.\",\"revision\":\"b\"}]}\n",
        );
        write(
            "judgments.jsonl",
            "{\"id\":\"1\",\"p\":0.7,\"p_a\":0.7,\"p_b\":0.3,\"predicted\":\"a\",\"human\":\"b\"}\n",
        );
        write("report.json", r#"{"judges":["x:y"],"pairs_total":2}"#);
        let data = load(dir.path(), Limits::default()).unwrap();
        let Some(AnyManifest::Run(m)) = data.manifest else {
            panic!("a run's manifest")
        };
        let r = m.requests;
        assert_eq!((r.requests, r.retries, r.cost_micro_usd), (4, 1, 0));
        assert!(m.endpoints.is_empty());
        let g = data.gen.unwrap();
        let round = &g.rows[0].trace.rounds[0];
        assert_eq!(
            (round.principle_index, round.principle_name.as_deref()),
            (0, None)
        );
        assert_eq!(g.rows[0].trace.final_answer(), "b");
        assert_eq!(round.principle(), "#1 Be kind.");
        let l = data.label.unwrap();
        let j = &l.rows[0];
        assert_eq!((j.predicted, j.human), (Winner::A, Some(Winner::B)));
        assert!(j.judges.is_empty() && j.model_a.is_none() && !j.written);
        assert_eq!(l.human, 1);
        let r = l.report.unwrap();
        assert_eq!((r.pairs_total, r.judged, r.requests), (2, 0, None));
        assert!(r.per_judge.is_empty() && r.verbosity.judge_longer_wins.is_none());
    }

    /// A finished prompt with every part of a trace line filled in.
    fn finished() -> crate::pipeline::Finished {
        use crate::feedback::judge::{Comparison, JudgeVerdict};
        use crate::feedback::select::JudgedPair;
        use crate::input::Stage;
        use crate::pipeline::{Finished, TraceStep};
        let round = Round {
            round: 1,
            principle_index: 2,
            principle_name: Some("harm".into()),
            critique_request: "Is it \"harmful\"?".into(),
            critique: "Yes,\nit is.".into(),
            revision_request: "Rewrite it.".into(),
            revision: "Call a locksmith.".into(),
        };
        let step = |stage, request: &str, response: &str| TraceStep {
            stage,
            round: u32::from(stage != Stage::Initial),
            request: request.into(),
            response: response.into(),
            raw_response: format!("Reply: {response}"),
            usage: Some(crate::provider::Usage {
                prompt_tokens: 12,
                completion_tokens: 4,
                cached_tokens: 8,
                cache_write_tokens: 0,
            }),
            truncated: stage == Stage::Revision,
        };
        Finished {
            id: "a1".into(),
            prompt: "How do I pick a lock?".into(),
            system: Some("Be brief.".into()),
            user_message: "Q: How do I pick a lock?".into(),
            initial: "Use a pick.".into(),
            steps: vec![
                step(Stage::Initial, "Q: How do I pick a lock?", "Use a pick."),
                step(Stage::Critique, "Is it harmful?", "Yes,\nit is."),
                step(Stage::Revision, "Rewrite it.", "Call a locksmith."),
            ],
            rounds: vec![round],
            sft_text: "Call a locksmith.".into(),
            samples: vec!["Ask the owner.".into()],
            judged: Some(Ok(JudgedPair {
                chosen: "Call a locksmith.".into(),
                rejected: "Use a pick.".into(),
                chosen_score: 0.8,
                rejected_score: 0.2,
                principle: "safer?".into(),
                tie: false,
                keep_tie: false,
                comparisons: vec![Comparison {
                    x: 1,
                    y: 0,
                    principle: "safer?".into(),
                    p: 0.8,
                    p_x: 0.7,
                    p_y: 0.2,
                    p_tie: 0.1,
                    judges: vec![JudgeVerdict {
                        judge: "m:1".into(),
                        p: 0.8,
                        p_first: 0.9,
                        p_second: 0.7,
                        method: Default::default(),
                    }],
                }],
            })),
        }
    }

    #[test]
    fn a_trace_line_the_writer_wrote_reads_back_whole_through_the_same_type() {
        let dir = tempfile::tempdir().unwrap();
        let f = finished();
        let (mut w, _) =
            crate::output::Writer::open(dir.path(), crate::output::PreferenceMode::Revision)
                .unwrap();
        w.write(&crate::pipeline::Outcome::Done(Box::new(f.clone())))
            .unwrap();
        drop(w);
        let data = load(dir.path(), Limits::default()).unwrap();
        let g = data.gen.unwrap();
        let back = &g.rows[0].trace;
        let wrote = TraceLine::of(&f);
        assert_eq!(
            serde_json::to_value(back).unwrap(),
            serde_json::to_value(&wrote).unwrap()
        );
        assert_eq!(back.steps.len(), 3);
        assert_eq!(back.critic_response.as_deref(), Some("Yes,\nit is."));
        assert_eq!(back.final_answer(), "Call a locksmith.");
        assert_eq!(g.comparisons, 1);
        assert_eq!(g.rows[0].pref.as_ref().unwrap().rejected, "Use a pick.");
    }

    #[test]
    fn a_judged_preference_line_reads_back_with_its_scores_through_the_same_type() {
        let dir = tempfile::tempdir().unwrap();
        let f = finished();
        let (mut w, _) =
            crate::output::Writer::open(dir.path(), crate::output::PreferenceMode::Judge).unwrap();
        w.write(&crate::pipeline::Outcome::Done(Box::new(f)))
            .unwrap();
        drop(w);
        let text = std::fs::read_to_string(dir.path().join("preference.jsonl")).unwrap();
        let line: PrefLine = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            serde_json::to_value(&line).unwrap(),
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        );
        let data = load(dir.path(), Limits::default()).unwrap();
        let g = data.gen.unwrap();
        assert_eq!((g.pref.rows, g.pref.chosen_scores.seen()), (1, 1));
        let pair = g.rows[0].pref.as_ref().unwrap();
        assert_eq!(
            (pair.chosen_score, pair.rejected_score),
            (Some(0.8), Some(0.2))
        );
        assert_eq!(pair.principle.as_deref(), Some("safer?"));
        assert_eq!(pair.chosen, "Call a locksmith.");
    }

    #[test]
    fn a_manifest_the_run_wrote_reads_back_whole_through_the_same_type() {
        use crate::output::manifest::{write_atomic, Manifest};
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest {
            cai_version: "9.9.9".into(),
            status: "done".into(),
            arguments: vec!["generate".into(), "--rounds".into(), "2".into()],
            provider: "openai".into(),
            model: "m-1".into(),
            endpoint: "http://127.0.0.1:1/v1".into(),
            prompts_file: "p.csv".into(),
            prompts_sha256: "ab".into(),
            prompt_column: Some("question".into()),
            limit: Some(10),
            shard: Some("1/2".into()),
            constitution_file: "c.json".into(),
            constitution_sha256: "cd".into(),
            constitution_format: "native".into(),
            templates_sha256: "ef".into(),
            seed: 7,
            rounds: 2,
            preference: "revision".into(),
            params: serde_json::json!({"temperature": 0.5}),
            prompts_total: 10,
            prompts_already_done: 3,
            counts: crate::output::WriteCounts {
                sft_rows: 6,
                preference_rows: 5,
                preference_skipped_identical: 1,
                preference_skipped_tie: 0,
                rejected: 1,
                truncated_rows: 2,
            },
            requests: StatsSnapshot {
                requests: 20,
                retries: 2,
                cost_micro_usd: 1500,
                ..StatsSnapshot::default()
            },
            started_at_unix: 1_764_000_000,
            wall_time_s: 12.5,
            first_row_s: Some(0.5),
            requests_per_s: 1.6,
            cost_usd: Some(0.0015),
            price: Some(crate::cost::Price {
                input_per_m: 1.0,
                output_per_m: 2.0,
                cached_in_per_m: 0.5,
                cache_write_per_m: 1.25,
                source: "--price-in/--price-out".into(),
            }),
            max_cost: Some(5.0),
            endpoints: vec![EndpointStats {
                url: "http://127.0.0.1:1".into(),
                requests: 20,
                ..EndpointStats::default()
            }],
            batch: Some(crate::engine::batch::BatchSummary {
                api: "files".into(),
                stages: 3,
                batches: 3,
                requests_submitted: 20,
                results_failed: 0,
                price_factor: 1.0,
            }),
        };
        write_atomic(&dir.path().join("manifest.json"), &m).unwrap();
        let data = load(dir.path(), Limits::default()).unwrap();
        let Some(AnyManifest::Run(back)) = data.manifest else {
            panic!("a run's manifest")
        };
        assert_eq!(
            serde_json::to_value(&*back).unwrap(),
            serde_json::to_value(&m).unwrap()
        );
    }

    #[test]
    fn a_manifest_of_the_first_cai_loads_with_its_newer_fields_empty() {
        // The fields the first version wrote, and none added since (the
        // shard and limit, first row, cost, price, budget, pool, batch).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"cai_version":"0.1.0","status":"done","arguments":[],"provider":"openai",
               "model":"m","endpoint":"http://127.0.0.1:1/v1","prompts_file":"p.csv",
               "prompts_sha256":"ab","constitution_file":"c.json","constitution_sha256":"cd",
               "constitution_format":"native","templates_sha256":"ef","seed":3,"rounds":2,
               "preference":"revision","params":{},"prompts_total":4,"prompts_already_done":0,
               "counts":{"sft_rows":4,"preference_rows":4,"preference_skipped_identical":0,"rejected":0},
               "requests":{"requests":12,"cached":0,"retries":0,"throttled_429":0,"failed":0,
                           "tokens_in":100,"tokens_out":40},
               "started_at_unix":1764000000,"wall_time_s":2.0,"requests_per_s":6.0}"#,
        )
        .unwrap();
        let data = load(dir.path(), Limits::default()).unwrap();
        let Some(AnyManifest::Run(m)) = data.manifest else {
            panic!("a run's manifest")
        };
        assert_eq!((m.seed, m.rounds, m.counts.sft_rows), (3, 2, 4));
        assert_eq!((m.requests.requests, m.requests.cost_micro_usd), (12, 0));
        assert!(m.shard.is_none() && m.limit.is_none() && m.first_row_s.is_none());
        assert!(m.cost_usd.is_none() && m.price.is_none() && m.batch.is_none());
        assert!(m.endpoints.is_empty() && m.counts.truncated_rows == 0);
    }

    #[test]
    fn a_merged_directory_s_manifest_reads_as_a_merge() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"cai_version":"0.1.0","status":"partial",
               "merged_from":[{"dir":"s0","shard":"0/2","status":"done"}],
               "prompts_file":"p.csv","prompts_sha256":"ab","prompt_column":null,"limit":null,
               "counts":{"prompts":4,"sft_rows":2,"preference_rows":2,"rejected":0,
                         "superseded":0,"removed":0,"missing":2},
               "gaps":["shard 1/2 is missing (no directory given for it)"],
               "requests":{"requests":6},"cost_usd":null}"#,
        )
        .unwrap();
        let data = load(dir.path(), Limits::default()).unwrap();
        let Some(AnyManifest::Merged(m)) = data.manifest else {
            panic!("a merge's manifest")
        };
        assert_eq!((m.counts.missing, m.requests.requests), (2, 6));
        assert_eq!(m.merged_from[0].shard.as_deref(), Some("0/2"));
        assert_eq!(m.gaps.len(), 1);
    }

    #[test]
    fn a_pool_endpoint_in_a_manifest_reads_back_as_written() {
        let e = EndpointStats {
            url: "http://127.0.0.1:1".into(),
            weight: 2.0,
            requests: 5,
            failures: 1,
            ejections: 0,
            mean_latency_ms: 12.5,
            state: "ejected".into(),
        };
        let json = serde_json::to_value(&e).unwrap();
        let back: EndpointStats = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_bad_line_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"reason\":\"a\"}\n{\"reason\":\"b\"}\n{\"reas").unwrap();
        let mut seen = Vec::new();
        let torn = stream(&p, |r: RejectLine<'static>| seen.push(r.reason)).unwrap();
        assert_eq!((torn, seen.len()), (1, 2));
        std::fs::write(&p, "{\"reason\":\"a\"}\nnot json\n").unwrap();
        let e = stream(&p, |_: RejectLine<'static>| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.jsonl:2:"), "{e}");
    }
}
