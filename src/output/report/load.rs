//! Reading a run directory for the report: every line of the JSONL files is
//! streamed once into the figures' accumulators, and only a bounded sample
//! of rows (the first ones, and rejects) is kept whole.
//!
//! The read-side structs below name only the fields the report shows and
//! default the rest, so a report can be drawn for a run of an older or
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
use crate::engine::StatsSnapshot;
use crate::feedback::judge::Comparison;
use crate::feedback::metrics::{Judgment, Report};
use crate::input::pairs::Winner;
use crate::pipeline::Round;
use crate::provider::pool::EndpointStats;

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
// Where the writer's own type can be read back, it is (the manifest's
// `requests` and `endpoints`, a trace line's rounds, `judgments.jsonl`):
// one schema, with `#[serde(default)]` for older runs. The shapes below
// stand for lines the writers build from borrowed rows (`TraceLine`,
// `PrefLine`) or reports with a `&'static` version, and name only what
// the report shows.

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ManifestView {
    pub cai_version: Option<String>,
    pub status: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub endpoint: Option<String>,
    pub prompts_file: Option<String>,
    pub constitution_file: Option<String>,
    pub constitution_format: Option<String>,
    pub seed: Option<u64>,
    pub rounds: Option<u32>,
    pub preference: Option<String>,
    pub prompts_total: Option<u64>,
    pub prompts_already_done: Option<u64>,
    pub counts: CountsView,
    pub requests: Option<StatsSnapshot>,
    pub started_at_unix: Option<u64>,
    pub wall_time_s: Option<f64>,
    pub first_row_s: Option<f64>,
    pub requests_per_s: Option<f64>,
    pub cost_usd: Option<f64>,
    pub max_cost: Option<f64>,
    /// Per endpoint of a pool (absent for one endpoint).
    pub endpoints: Vec<EndpointStats>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CountsView {
    pub sft_rows: Option<u64>,
    pub preference_rows: Option<u64>,
    pub preference_skipped_identical: Option<u64>,
    pub preference_skipped_tie: Option<u64>,
    pub rejected: Option<u64>,
}

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

/// One line of `trace.jsonl`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TraceView {
    pub id: String,
    pub prompt: String,
    pub system: Option<String>,
    pub init_response: String,
    pub rounds: Vec<Round>,
    pub samples: Vec<String>,
    pub judgments: Option<Vec<Comparison>>,
}

impl TraceView {
    pub fn final_answer(&self) -> &str {
        self.rounds
            .last()
            .map_or(self.init_response.as_str(), |r| r.revision.as_str())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MessageView {
    content: String,
}

/// One line of `preference.jsonl`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PrefLineView {
    id: String,
    chosen: Vec<MessageView>,
    rejected: Vec<MessageView>,
    chosen_score: Option<f64>,
    rejected_score: Option<f64>,
    principle: Option<String>,
    tie: Option<bool>,
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

/// One line of `rejects.jsonl` (generate and label).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(default)]
pub struct RejectView {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
    pub prompt: Option<String>,
    pub stage: Option<String>,
    pub round: Option<u32>,
    pub reason: String,
}

/// Ids are strings in cai's files; accept a number from a hand-made file.
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(serde_json::Number),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    })
}

/// `report.json` of `cai optimize`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct OptimizeReportView {
    pub status: Option<String>,
    pub reward_per_depth: Vec<DepthPoint>,
    pub best_reward: Option<f64>,
    pub wall_time_s: Option<f64>,
    pub requests: Option<StatsSnapshot>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(default)]
pub struct DepthPoint {
    pub depth: f64,
    pub best: Option<f64>,
    pub mean: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KindView {
    kind: Option<String>,
}

// ---------- what the report is drawn from ----------

/// A finished prompt kept whole for the rows browser.
#[derive(Debug)]
pub struct GenRow {
    pub trace: TraceView,
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
    pub sample: Vec<RejectView>,
}

#[derive(Debug)]
pub struct RejectGroup {
    pub stage: String,
    pub reason: String,
    pub count: u64,
    pub examples: Vec<RejectView>,
}

impl RejectData {
    /// The group index of a reject, if its reason has one.
    pub fn group_of(&self, r: &RejectView) -> Option<usize> {
        let stage = r.stage.as_deref().unwrap_or("");
        self.groups
            .iter()
            .position(|g| g.stage == stage && g.reason == r.reason)
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
    pub report: OptimizeReportView,
    pub search_lines: u64,
    pub search_sample: Vec<String>,
}

/// What kind of run a directory holds, by its files.
#[derive(Debug, Default)]
pub struct RunData {
    pub manifest: Option<ManifestView>,
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

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| ReportError::Parse {
        path: path.to_path_buf(),
        line: e.line() as u64,
        message: e.to_string(),
    })
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
        data.manifest = Some(read_json(&dir.join("manifest.json"))?);
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
    if report_kind.as_deref() == Some("optimize") || has("search.jsonl") {
        data.optimize = Some(load_optimize(dir, limits, &mut data.torn_lines)?);
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
    *torn += stream(&path, |t: TraceView| {
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
        for r in &t.rounds {
            *g.principles.entry(r.principle()).or_default() += 1;
        }
        for c in t.judgments.iter().flatten() {
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
        .map(|(i, r)| (r.trace.id.clone(), i))
        .collect();
    let mut found: Vec<(usize, PrefView)> = Vec::new();
    let p = &mut g.pref;
    let torn = stream(path, |l: PrefLineView| {
        p.rows += 1;
        let chosen = l.chosen.into_iter().map(|m| m.content).collect::<String>();
        let rejected = l
            .rejected
            .into_iter()
            .map(|m| m.content)
            .collect::<String>();
        let (lc, lr) = (chosen.chars().count(), rejected.chars().count());
        match lc.cmp(&lr) {
            std::cmp::Ordering::Greater => p.chosen_longer += 1,
            std::cmp::Ordering::Equal => p.same_length += 1,
            std::cmp::Ordering::Less => p.chosen_shorter += 1,
        }
        if let Some(s) = l.chosen_score {
            p.chosen_scores.push(s);
        }
        if let Some(s) = l.rejected_score {
            p.rejected_scores.push(s);
        }
        if l.tie == Some(true) {
            p.ties += 1;
        }
        if let Some(&i) = wanted.get(&l.id) {
            found.push((
                i,
                PrefView {
                    chosen,
                    rejected,
                    chosen_score: l.chosen_score,
                    rejected_score: l.rejected_score,
                    principle: l.principle,
                    tie: l.tie.unwrap_or(false),
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

fn load_optimize(dir: &Path, limits: Limits, torn: &mut u64) -> Result<OptimizeData, ReportError> {
    let mut o = OptimizeData::default();
    if dir.join("report.json").is_file() {
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
    *torn += stream(&dir.join("rejects.jsonl"), |r: RejectView| {
        d.total += 1;
        let key = (r.stage.clone().unwrap_or_default(), r.reason.clone());
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
        let m = data.manifest.unwrap();
        let r = m.requests.unwrap();
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
        let torn = stream(&p, |r: RejectView| seen.push(r.reason)).unwrap();
        assert_eq!((torn, seen.len()), (1, 2));
        std::fs::write(&p, "{\"reason\":\"a\"}\nnot json\n").unwrap();
        let e = stream(&p, |_: RejectView| {}).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:2:"), "{e}");
    }
}
