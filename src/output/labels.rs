//! The files of a `cai label` run, written append-only under the same
//! crash-safe commit log as `generate` ([`crate::output::AppendFiles`]):
//!
//! | file | content |
//! |---|---|
//! | `labels.csv` | `id,p_a,p_b,p_tie,predicted,judges` — the three-way distribution of [`crate::feedback::judge`] (P(A better) = p_a + p_tie/2), `predicted` `a`/`b`/`tie` by `--tie-margin`, `judges` a JSON list of per-judge values; ties left out with `--ties drop` |
//! | `judgments.jsonl` | every judged pair (also dropped ties): principle, per-judge and per-order probabilities, lengths, models, human label |
//! | `rejects.jsonl` | pairs without a readable verdict, with the reason |

use std::path::Path;

use serde::Serialize;

use crate::feedback::metrics::Judgment;
use crate::input::pairs::{PairRecord, Winner};
use crate::output::{AppendFiles, OutputError};

/// Files of a label run, in commit-log order.
pub const FILES: [&str; 3] = ["labels.csv", "judgments.jsonl", "rejects.jsonl"];
const LABELS: usize = 0;
const JUDGMENTS: usize = 1;
const REJECTS: usize = 2;

#[derive(Serialize)]
struct Reject<'a> {
    id: &'a str,
    prompt: &'a str,
    stage: &'static str,
    reason: &'a str,
}

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
