//! The files of a `cai label` run, written append-only under the same
//! crash-safe commit log as `generate` ([`crate::output::AppendFiles`]):
//!
//! | file | content |
//! |---|---|
//! | `labels.csv` | `id,p_a,p_b,p_tie,predicted,judges` — the three-way distribution of [`crate::feedback::judge`] (P(A better) = p_a + p_tie/2), `predicted` `a`/`b`/`tie` by `--tie-margin`, `judges` a JSON list of per-judge values; ties left out with `--ties drop` |
//! | `judgments.jsonl` | every judged pair (also dropped ties): principle, per-judge and per-order probabilities, lengths, models, human label |
//! | `rejects.jsonl` | pairs without a readable verdict, with the reason |
//! | `calibration.json` | `--calibrate`: the fitted calibration ([`crate::feedback::calibrate`]) |
//! | `submission.csv` | `--format arena`: `id,winner_model_a,winner_model_b,winner_tie`, one row per input pair in input order, written at the end of the run |
//!
//! With `--calibration FILE`, `p_a,p_b,p_tie` of `labels.csv` are the
//! calibrated probabilities and `predicted` the likeliest of the three;
//! `judgments.jsonl` keeps the judges' own values beside them.

use std::borrow::Cow;
use std::path::Path;

use crate::feedback::calibrate::Probs;
use crate::feedback::metrics::Judgment;
use crate::input::pairs::{PairRecord, Winner};
use crate::input::Stage;
use crate::output::{AppendFiles, OutputError, RejectLine};

/// Files of a label run, in commit-log order.
pub const FILES: [&str; 3] = ["labels.csv", "judgments.jsonl", "rejects.jsonl"];
const LABELS: usize = 0;
const JUDGMENTS: usize = 1;
const REJECTS: usize = 2;

/// What became of one pair.
pub enum Done {
    Judged(Judgment),
    Rejected(PairRecord, String),
}

/// The open files of a label run.
pub struct LabelFiles {
    files: AppendFiles,
    /// `--ties keep`: ties are written to `labels.csv` too.
    keep_ties: bool,
}

impl LabelFiles {
    /// Opens (or repairs, on resume) the files in `dir`; returns the ids
    /// already committed.
    pub fn open(
        dir: &Path,
        keep_ties: bool,
    ) -> Result<(Self, crate::engine::ids::IdSet), OutputError> {
        let (mut files, done) = AppendFiles::open(dir, &FILES)?;
        if files.is_fresh() {
            files.append(LABELS, b"id,p_a,p_b,p_tie,predicted,judges\n")?;
            files.commit(None)?;
        }
        Ok((Self { files, keep_ties }, done))
    }

    /// See [`AppendFiles::last_commit`].
    pub fn last_commit(&self) -> (&Path, u64) {
        self.files.last_commit()
    }

    /// Writes one judged or rejected pair and commits it; returns the id
    /// and reason of a reject.
    pub fn write(&mut self, d: Done) -> Result<Option<(String, String)>, OutputError> {
        let (files, keep_ties) = (&mut self.files, self.keep_ties);
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
                    let [pa, pb, pt] = j.calibrated.unwrap_or([j.p_a, j.p_b, j.p_tie]);
                    files.csv(
                        LABELS,
                        &[
                            &j.id,
                            &format!("{pa:.6}"),
                            &format!("{pb:.6}"),
                            &format!("{pt:.6}"),
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
                    &RejectLine {
                        id: Cow::Borrowed(&rec.id),
                        prompt: Cow::Borrowed(&rec.prompt),
                        stage: Cow::Borrowed(Stage::Judge.as_str()),
                        round: None,
                        reason: Cow::Borrowed(&why),
                    },
                )?;
                files.commit(Some(&rec.id))?;
                Ok(Some((rec.id, why)))
            }
        }
    }

    pub fn sync(&mut self) -> Result<(), OutputError> {
        self.files.sync()
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Every line of `judgments.jsonl` in the run directory `dir`.
pub fn read_judgments(dir: &Path) -> Result<Vec<Judgment>, OutputError> {
    let path = &dir.join(FILES[JUDGMENTS]);
    let text = std::fs::read_to_string(path).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Lines of `rejects.jsonl` in the run directory `dir`.
pub fn count_rejects(dir: &Path) -> Result<u64, OutputError> {
    let path = &dir.join(FILES[REJECTS]);
    let text = std::fs::read_to_string(path).map_err(|source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().count() as u64)
}

/// The arena submission file of a label run.
pub const SUBMISSION: &str = "submission.csv";

/// Writes `submission.csv` in `dir`: one row per id of `ids` (the input
/// order), with `probs(id)`, or `prior` for a pair without a verdict.
/// Each row is normalised to sum to 1 and printed with 9 decimals. Written
/// whole to a temporary file and renamed, so a reader never sees half of
/// it. Returns the number of rows that got the prior.
pub fn write_submission(
    dir: &Path,
    ids: &[String],
    probs: impl Fn(&str) -> Option<Probs>,
    prior: Probs,
) -> Result<u64, OutputError> {
    let path = dir.join(SUBMISSION);
    let tmp = dir.join(format!("{SUBMISSION}.tmp"));
    let mut out = String::with_capacity(ids.len() * 48 + 64);
    out.push_str("id,winner_model_a,winner_model_b,winner_tie\n");
    let mut filled = 0u64;
    for id in ids {
        let p = probs(id).unwrap_or_else(|| {
            filled += 1;
            prior
        });
        let p = p.map(|x| if x.is_finite() { x.max(0.0) } else { 0.0 });
        let sum: f64 = p.iter().sum();
        let p = if sum > 0.0 {
            p.map(|x| x / sum)
        } else {
            [1.0 / 3.0; 3]
        };
        out.push_str(&csv_field(id));
        out.push_str(&format!(",{:.9},{:.9},{:.9}\n", p[0], p[1], p[2]));
    }
    std::fs::write(&tmp, out).map_err(super::io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(super::io_err(&path))?;
    Ok(filled)
}

/// An RFC 4180 field: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_rows_follow_the_ids_sum_to_one_and_fill_the_prior() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = ["b", "a,1", "c"].iter().map(|s| s.to_string()).collect();
        let filled = write_submission(
            dir.path(),
            &ids,
            |id| match id {
                "b" => Some([0.2, 0.2, 0.2]),
                "a,1" => Some([0.5, 0.25, 0.25]),
                _ => None,
            },
            [0.4, 0.4, 0.2],
        )
        .unwrap();
        assert_eq!(filled, 1);
        let text = std::fs::read_to_string(dir.path().join(SUBMISSION)).unwrap();
        assert_eq!(
            text,
            "id,winner_model_a,winner_model_b,winner_tie\n\
             b,0.333333333,0.333333333,0.333333333\n\
             \"a,1\",0.500000000,0.250000000,0.250000000\n\
             c,0.400000000,0.400000000,0.200000000\n"
        );
    }
}
