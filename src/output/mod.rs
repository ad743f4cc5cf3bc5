//! The run directory's data files, written append-only, one prompt at a time.
//!
//! | file | one line / row per |
//! |---|---|
//! | `sft.csv`, `sft.jsonl` | finished prompt |
//! | `preference.csv`, `preference.jsonl` | finished prompt with a usable pair |
//! | `trace.jsonl` | finished prompt: every request and reply |
//! | `rejects.jsonl` | prompt that could not be completed, with the reason |
//! | `manifest.json` | the run (rewritten atomically at the end) |
//!
//! Crash safety comes from a commit log, `.cai/progress.jsonl`: after a
//! prompt's lines are written to every file and flushed, one line recording
//! the prompt id and the length of every file is appended. On resume each
//! file is cut back to the lengths of the last commit. A row torn by a crash,
//! or written to some files but not committed, disappears and is written
//! again; a committed row is never written twice.

pub mod labels;
pub mod manifest;
pub mod merge;
pub mod optimize;
pub mod report;
pub mod trace;

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::ids::IdSet;
use crate::pipeline::{Finished, Outcome, Reject};
use crate::provider::Message;
use trace::TraceLine;

/// Output file names, in the order the commit log records their lengths.
pub const FILES: [&str; 6] = [
    "sft.csv",
    "sft.jsonl",
    "preference.csv",
    "preference.jsonl",
    "trace.jsonl",
    "rejects.jsonl",
];

pub use crate::engine::rundir::STATE_DIR;

const SFT_CSV: usize = 0;
const SFT_JSONL: usize = 1;
const PREF_CSV: usize = 2;
const PREF_JSONL: usize = 3;
const TRACE: usize = 4;
const REJECTS: usize = 5;

/// A problem with the run directory.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is shorter than the last committed row ({actual} < {expected} bytes): it was changed outside cai; use a new --out directory")]
    Truncated {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error(transparent)]
    RunDir(#[from] crate::engine::rundir::RunDirError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How chosen/rejected pairs are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceMode {
    /// chosen = final revision, rejected = initial answer.
    Revision,
    /// Picked among the candidates by the AI-feedback judge (or the
    /// `--select heuristic` score): rows carry scores and the principle.
    Judge,
    /// No preference rows.
    None,
}

/// One line of the commit log: the item finished (none for the header
/// commit), the hash of its prompt text (`generate`; see
/// [`crate::input::prompts::text_hash`]) and every file's length after it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Commit {
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h: Option<String>,
    pub len: Vec<u64>,
}

struct Out {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Out {
    fn append(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// A set of append-only files in a run directory with the crash-safe
/// commit log described at the top of this module. `cai generate` and
/// `cai label` each write their own set through it.
pub struct AppendFiles {
    outs: Vec<Out>,
    progress: Out,
    buf: Vec<u8>,
    fresh: bool,
    /// Offset of the last commit line in the commit log.
    last_commit: u64,
}

impl AppendFiles {
    /// Opens `names` in `dir` (creating them), repairs every file to the
    /// last commit and returns the ids already committed.
    pub fn open(dir: &Path, names: &[&str]) -> Result<(Self, IdSet), OutputError> {
        let state = dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(io_err(&state))?;
        let progress_path = state.join("progress.jsonl");
        let (done, last) = read_commits(&progress_path)?;
        if let Some(c) = &last {
            if c.len.len() != names.len() {
                return Err(OutputError::Io {
                    path: progress_path,
                    source: std::io::Error::other(format!(
                        "the commit log records {} files, this command writes {}: the directory holds another kind of run; use a new --out",
                        c.len.len(),
                        names.len()
                    )),
                });
            }
        }
        let mut outs = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let actual = file.metadata().map_err(io_err(&path))?.len();
            let expected = last.as_ref().map_or(0, |c| c.len[i]);
            if actual < expected {
                return Err(OutputError::Truncated {
                    path,
                    actual,
                    expected,
                });
            }
            if actual > expected {
                file.set_len(expected).map_err(io_err(&path))?;
            }
            outs.push(Out {
                path,
                file,
                len: expected,
            });
        }
        let progress_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&progress_path)
            .map_err(io_err(&progress_path))?;
        let progress_len = progress_file
            .metadata()
            .map_err(io_err(&progress_path))?
            .len();
        Ok((
            Self {
                outs,
                progress: Out {
                    path: progress_path,
                    file: progress_file,
                    len: progress_len,
                },
                buf: Vec::new(),
                fresh: last.is_none(),
                last_commit: 0,
            },
            done,
        ))
    }

    /// The commit log and the offset of the line of the last commit made
    /// through this handle (a batch run adds its id to the done set).
    pub fn last_commit(&self) -> (&Path, u64) {
        (&self.progress.path, self.last_commit)
    }

    /// True when nothing was ever committed (headers still to write).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Records the current length of every file; `id` marks a finished item.
    pub fn commit(&mut self, id: Option<&str>) -> Result<(), OutputError> {
        self.commit_hashed(id, None)
    }

    /// [`Self::commit`], also recording the hash of the item's input text.
    pub fn commit_hashed(
        &mut self,
        id: Option<&str>,
        hash: Option<&str>,
    ) -> Result<(), OutputError> {
        let len: Vec<u64> = self.outs.iter().map(|o| o.len).collect();
        let mut line = serde_json::to_vec(&Commit {
            id: id.map(str::to_string),
            h: hash.map(str::to_string),
            len,
        })
        .map_err(|e| io_err(&self.progress.path)(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.fresh = false;
        self.last_commit = self.progress.len;
        self.progress.append(&line)
    }

    /// Appends raw bytes to file `file` (uncommitted until [`Self::commit`]).
    pub fn append(&mut self, file: usize, bytes: &[u8]) -> Result<(), OutputError> {
        self.outs[file].append(bytes)
    }

    /// Appends one RFC 4180 record.
    pub fn csv(&mut self, file: usize, fields: &[&str]) -> Result<(), OutputError> {
        self.buf.clear();
        {
            // A small staging buffer: the writer's default (8 KiB, zeroed)
            // cost an allocation and a memset per row; it writes through to
            // `buf` when full, so any row size is fine.
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .buffer_capacity(256)
                .from_writer(&mut self.buf);
            w.write_record(fields)
                .and_then(|_| w.flush().map_err(csv::Error::from))
                .map_err(|e| io_err(&self.outs[file].path)(std::io::Error::other(e)))?;
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.outs[file].append(&buf);
        self.buf = buf;
        r
    }

    /// Appends one JSON line.
    pub fn jsonl<T: Serialize>(&mut self, file: usize, value: &T) -> Result<(), OutputError> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, value)
            .map_err(|e| io_err(&self.outs[file].path)(std::io::Error::other(e)))?;
        self.buf.push(b'\n');
        let buf = std::mem::take(&mut self.buf);
        let r = self.outs[file].append(&buf);
        self.buf = buf;
        r
    }

    /// The first line of file `file` (its CSV header), without the newline.
    pub fn first_line(&self, file: usize) -> Result<String, OutputError> {
        let path = &self.outs[file].path;
        let f = File::open(path).map_err(io_err(path))?;
        let mut line = String::new();
        BufReader::new(f)
            .read_line(&mut line)
            .map_err(io_err(path))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Flushes everything to disk.
    pub fn sync(&mut self) -> Result<(), OutputError> {
        for o in self.outs.iter().chain(std::iter::once(&self.progress)) {
            o.file.sync_data().map_err(io_err(&o.path))?;
        }
        Ok(())
    }
}

/// Counts of what a writer wrote in this invocation (read back from a
/// manifest with a count an older run did not write as 0).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WriteCounts {
    pub sft_rows: u64,
    pub preference_rows: u64,
    /// Finished prompts with no preference row because the final revision
    /// equals the initial answer (a pair that teaches nothing).
    pub preference_skipped_identical: u64,
    /// Judged pairs within `--tie-margin` of a draw, dropped by `--ties drop`.
    #[serde(skip_serializing_if = "is_zero")]
    pub preference_skipped_tie: u64,
    pub rejected: u64,
    /// Rows with a reply cut off by the token limit, kept by
    /// `--on-length keep` (marked `"truncated": true` in `trace.jsonl`).
    #[serde(skip_serializing_if = "is_zero")]
    pub truncated_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Header of `preference.csv` for judged or scored pairs.
const PREF_HEADER_SCORED: &str = "id,prompt,chosen,rejected,chosen_score,rejected_score,principle";

/// Appends rows to the run directory.
pub struct Writer {
    files: AppendFiles,
    mode: PreferenceMode,
    pub counts: WriteCounts,
}

impl Writer {
    /// Opens the run directory: fresh when it has no commit log, otherwise
    /// repaired to its last commit. Returns the ids already finished.
    pub fn open(dir: &Path, mode: PreferenceMode) -> Result<(Self, IdSet), OutputError> {
        let (mut files, done) = AppendFiles::open(dir, &FILES)?;
        let scored = mode == PreferenceMode::Judge;
        if files.is_fresh() {
            files.append(SFT_CSV, b"id,prompt,completion\n")?;
            // The header is chosen once, when the file is created: judged
            // runs carry the scores and the comparison principle.
            let header = if scored {
                PREF_HEADER_SCORED
            } else {
                "id,prompt,chosen,rejected"
            };
            files.append(PREF_CSV, format!("{header}\n").as_bytes())?;
            files.commit(None)?;
        } else {
            let header = files.first_line(PREF_CSV)?;
            if (header == PREF_HEADER_SCORED) != scored {
                return Err(OutputError::Io {
                    path: dir.join(FILES[PREF_CSV]),
                    source: std::io::Error::other(format!(
                        "its header `{header}` does not match --preference {}: use a new --out",
                        format!("{mode:?}").to_lowercase()
                    )),
                });
            }
        }
        Ok((
            Writer {
                files,
                mode,
                counts: WriteCounts::default(),
            },
            done,
        ))
    }

    /// Writes one prompt's rows to every file, then commits them.
    pub fn write(&mut self, outcome: &Outcome) -> Result<(), OutputError> {
        match outcome {
            Outcome::Done(f) => self.write_finished(f)?,
            Outcome::Rejected(r) => {
                self.files.jsonl(REJECTS, &RejectLine::of(r))?;
                self.counts.rejected += 1;
            }
        }
        let (id, prompt) = match outcome {
            Outcome::Done(f) => (&f.id, &f.prompt),
            Outcome::Rejected(r) => (&r.id, &r.prompt),
        };
        let hash = crate::input::prompts::text_hash(prompt);
        self.files.commit_hashed(Some(id), Some(&hash))
    }

    fn write_finished(&mut self, f: &Finished) -> Result<(), OutputError> {
        self.files.csv(SFT_CSV, &[&f.id, &f.prompt, &f.sft_text])?;
        let mut prompt_msgs = Vec::with_capacity(2);
        if let Some(s) = &f.system {
            prompt_msgs.push(Message::system(s.clone()));
        }
        prompt_msgs.push(Message::user(f.prompt.clone()));
        let mut messages = prompt_msgs.clone();
        messages.push(Message::assistant(f.sft_text.clone()));
        self.files.jsonl(
            SFT_JSONL,
            &SftLine {
                id: &f.id,
                messages,
            },
        )?;
        self.counts.sft_rows += 1;
        self.counts.truncated_rows += u64::from(f.truncated());

        if self.mode == PreferenceMode::Revision {
            let chosen = f.final_answer();
            if chosen == f.initial {
                self.counts.preference_skipped_identical += 1;
            } else {
                self.files
                    .csv(PREF_CSV, &[&f.id, &f.prompt, chosen, &f.initial])?;
                self.files.jsonl(
                    PREF_JSONL,
                    &PrefLine {
                        id: Cow::Borrowed(&f.id),
                        prompt: prompt_msgs,
                        chosen: vec![Message::assistant(chosen.to_string())],
                        rejected: vec![Message::assistant(f.initial.clone())],
                        scores: None,
                    },
                )?;
                self.counts.preference_rows += 1;
            }
        } else if self.mode == PreferenceMode::Judge {
            self.write_judged(f, prompt_msgs)?;
        }

        self.files.jsonl(TRACE, &TraceLine::of(f))
    }

    /// The preference row of a judged (or heuristically scored) prompt; a
    /// judge that could not decide sends the prompt's pair to `rejects.jsonl`
    /// while its SFT row stays.
    fn write_judged(&mut self, f: &Finished, prompt_msgs: Vec<Message>) -> Result<(), OutputError> {
        match &f.judged {
            None => self.counts.preference_skipped_identical += 1,
            Some(Err(crate::feedback::select::Undecided { reason })) => {
                self.files.jsonl(
                    REJECTS,
                    &RejectLine {
                        id: Cow::Borrowed(&f.id),
                        prompt: Cow::Borrowed(&f.prompt),
                        stage: Cow::Borrowed(crate::input::Stage::Judge.as_str()),
                        round: Some(f.rounds.len() as u32),
                        reason: Cow::Borrowed(reason),
                    },
                )?;
                self.counts.rejected += 1;
            }
            Some(Ok(j)) if j.tie && !j.keep_tie => self.counts.preference_skipped_tie += 1,
            Some(Ok(j)) => {
                let (cs, rs) = (
                    format!("{:.6}", j.chosen_score),
                    format!("{:.6}", j.rejected_score),
                );
                self.files.csv(
                    PREF_CSV,
                    &[
                        &f.id,
                        &f.prompt,
                        &j.chosen,
                        &j.rejected,
                        &cs,
                        &rs,
                        &j.principle,
                    ],
                )?;
                self.files.jsonl(
                    PREF_JSONL,
                    &PrefLine {
                        id: Cow::Borrowed(&f.id),
                        prompt: prompt_msgs,
                        chosen: vec![Message::assistant(j.chosen.clone())],
                        rejected: vec![Message::assistant(j.rejected.clone())],
                        scores: Some(Scores {
                            chosen_score: j.chosen_score,
                            rejected_score: j.rejected_score,
                            principle: Cow::Borrowed(&j.principle),
                            tie: j.tie,
                        }),
                    },
                )?;
                self.counts.preference_rows += 1;
            }
        }
        Ok(())
    }

    /// Flushes everything to disk (end of run).
    pub fn sync(&mut self) -> Result<(), OutputError> {
        self.files.sync()
    }

    /// See [`AppendFiles::last_commit`].
    pub fn last_commit(&self) -> (&Path, u64) {
        self.files.last_commit()
    }
}

/// Every complete commit of a commit log, read-only (a torn last line is
/// ignored, not cut: `cai merge` never changes the directories it reads).
pub(crate) fn read_log(path: &Path) -> Result<Vec<Commit>, OutputError> {
    let mut out = Vec::new();
    each_commit(path, |_, c| out.push(c))?;
    Ok(out)
}

/// Calls `each` with the offset and content of every commit of the log up
/// to the first torn or unreadable line; returns the length in bytes of
/// those commits.
fn each_commit(path: &Path, mut each: impl FnMut(u64, Commit)) -> Result<u64, OutputError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut good = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(good);
        }
        let Ok(c) = serde_json::from_slice::<Commit>(&line) else {
            return Ok(good);
        };
        each(good, c);
        good += n as u64;
    }
}

/// Reads the commit log: ids committed (a compact [`IdSet`], not the ids
/// themselves) and the last commit. Cuts a torn last line.
fn read_commits(path: &Path) -> Result<(IdSet, Option<Commit>), OutputError> {
    if !path.exists() {
        return Ok((IdSet::empty(), None));
    }
    let mut done = IdSet::builder();
    let mut last = None;
    let good = each_commit(path, |offset, c| {
        if let Some(id) = &c.id {
            done.push(id, offset);
        }
        last = Some(c);
    })?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    if f.metadata().map_err(io_err(path))?.len() != good {
        f.set_len(good).map_err(io_err(path))?;
    }
    let done = done.finish(path).map_err(io_err(path))?;
    Ok((done, last))
}

#[derive(Serialize)]
struct SftLine<'a> {
    id: &'a str,
    messages: Vec<Message>,
}

/// One line of `preference.jsonl` (TRL's explicit-prompt conversational
/// form), written with the id borrowed and read back by the report; a
/// field an older `cai` did not write reads as its default.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PrefLine<'a> {
    pub id: Cow<'a, str>,
    pub prompt: Vec<Message>,
    pub chosen: Vec<Message>,
    pub rejected: Vec<Message>,
    /// Present on judged (or scored) pairs only; read back when all four
    /// of its columns are there.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores<'a>>,
}

/// One line of `rejects.jsonl`, of `generate` (a prompt, with the stage
/// and round it failed in) and of `label` (a pair: stage `judge`, no
/// round); read back by the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RejectLine<'a> {
    #[serde(deserialize_with = "id_string")]
    pub id: Cow<'a, str>,
    pub prompt: Cow<'a, str>,
    pub stage: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    pub reason: Cow<'a, str>,
}

impl<'a> RejectLine<'a> {
    /// The line of a prompt `generate` could not complete.
    pub fn of(r: &'a Reject) -> Self {
        RejectLine {
            id: Cow::Borrowed(&r.id),
            prompt: Cow::Borrowed(&r.prompt),
            stage: Cow::Borrowed(r.stage.as_str()),
            round: Some(r.round),
            reason: Cow::Borrowed(&r.reason),
        }
    }
}

/// Ids are strings in cai's files; a number from a hand-made file is read
/// as its text.
fn id_string<'de, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Cow<'a, str>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(serde_json::Number),
    }
    Ok(Cow::Owned(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
    }))
}

/// Extra scalar columns of a judged preference line (datasets loads them
/// as plain columns; TRL ignores them).
#[derive(Debug, Serialize, Deserialize)]
pub struct Scores<'a> {
    pub chosen_score: f64,
    pub rejected_score: f64,
    pub principle: Cow<'a, str>,
    pub tie: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Stage;
    use crate::pipeline::{Reject, Round};

    fn finished(id: &str) -> Outcome {
        Outcome::Done(Box::new(Finished {
            id: id.into(),
            prompt: "p, \"q\"\nr".into(),
            system: None,
            user_message: "p".into(),
            initial: "bad".into(),
            rounds: vec![Round {
                round: 1,
                principle_index: 0,
                principle_name: None,
                critique_request: "cr".into(),
                critique: "c".into(),
                revision_request: "rr".into(),
                revision: "good".into(),
            }],
            steps: vec![],
            sft_text: "good".into(),
            samples: vec![],
            judged: None,
        }))
    }

    #[test]
    fn resume_cuts_uncommitted_and_torn_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, done) = Writer::open(dir.path(), PreferenceMode::Revision).unwrap();
            assert!(done.is_empty());
            w.write(&finished("a")).unwrap();
            w.write(&Outcome::Rejected(Reject {
                id: "b".into(),
                prompt: "x".into(),
                stage: Stage::Initial,
                round: 0,
                reason: "r".into(),
            }))
            .unwrap();
        }
        let committed = std::fs::read(dir.path().join("sft.csv")).unwrap();
        // A crash after writing part of a row, before its commit.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("sft.csv"))
            .unwrap();
        f.write_all(b"c,\"half a ro").unwrap();
        let mut p = OpenOptions::new()
            .append(true)
            .open(dir.path().join(".cai/progress.jsonl"))
            .unwrap();
        p.write_all(b"{\"id\":\"c\",\"le").unwrap();

        let (mut w, done) = Writer::open(dir.path(), PreferenceMode::Revision).unwrap();
        assert_eq!(done.len(), 2);
        assert!(done.contains("a") && done.contains("b") && !done.contains("c"));
        assert_eq!(
            std::fs::read(dir.path().join("sft.csv")).unwrap(),
            committed
        );
        w.write(&finished("c")).unwrap();
        let mut rdr = csv::Reader::from_path(dir.path().join("sft.csv")).unwrap();
        let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[1][1], "p, \"q\"\nr");
    }

    #[test]
    fn a_reject_line_keeps_generate_s_shape_and_reads_label_s_and_hand_made_ones() {
        let r = Reject {
            id: "b".into(),
            prompt: "x".into(),
            stage: Stage::Critique,
            round: 2,
            reason: "empty critique".into(),
        };
        let line = serde_json::to_string(&RejectLine::of(&r)).unwrap();
        assert_eq!(line, serde_json::to_string(&r).unwrap());
        let back: RejectLine = serde_json::from_str(&line).unwrap();
        assert_eq!((back.stage.as_ref(), back.round), ("critique", Some(2)));
        // label's: no round; a hand-made file's number id.
        let label: RejectLine =
            serde_json::from_str(r#"{"id":7,"prompt":"p","stage":"judge","reason":"no verdict"}"#)
                .unwrap();
        assert_eq!((label.id.as_ref(), label.round), ("7", None));
    }

    #[test]
    fn identical_pairs_are_not_preference_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = Writer::open(dir.path(), PreferenceMode::Revision).unwrap();
        let Outcome::Done(mut f) = finished("a") else {
            unreachable!()
        };
        f.rounds[0].revision = "bad".into();
        w.write(&Outcome::Done(f)).unwrap();
        assert_eq!(w.counts.preference_skipped_identical, 1);
        let pref = std::fs::read_to_string(dir.path().join("preference.jsonl")).unwrap();
        assert!(pref.is_empty());
    }
}
