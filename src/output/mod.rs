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

pub mod manifest;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::{Finished, Outcome, Round, TraceStep};
use crate::provider::Message;

/// Output file names, in the order the commit log records their lengths.
pub const FILES: [&str; 6] = [
    "sft.csv",
    "sft.jsonl",
    "preference.csv",
    "preference.jsonl",
    "trace.jsonl",
    "rejects.jsonl",
];

/// Where cai keeps its own state inside the run directory.
pub const STATE_DIR: &str = ".cai";

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
    /// AI-feedback judge (not built yet).
    Judge,
    /// No preference rows.
    None,
}

#[derive(Serialize, Deserialize)]
struct Commit {
    id: Option<String>,
    len: [u64; 6],
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

/// Counts of what a writer wrote in this invocation.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WriteCounts {
    pub sft_rows: u64,
    pub preference_rows: u64,
    /// Finished prompts with no preference row because the final revision
    /// equals the initial answer (a pair that teaches nothing).
    pub preference_skipped_identical: u64,
    pub rejected: u64,
}

/// Appends rows to the run directory.
pub struct Writer {
    outs: Vec<Out>,
    progress: Out,
    mode: PreferenceMode,
    pub counts: WriteCounts,
    buf: Vec<u8>,
}

impl Writer {
    /// Opens the run directory: fresh when it has no commit log, otherwise
    /// repaired to its last commit. Returns the ids already finished.
    pub fn open(dir: &Path, mode: PreferenceMode) -> Result<(Self, HashSet<String>), OutputError> {
        let state = dir.join(STATE_DIR);
        std::fs::create_dir_all(&state).map_err(io_err(&state))?;
        let progress_path = state.join("progress.jsonl");
        let (done, last) = read_commits(&progress_path)?;
        let mut outs = Vec::with_capacity(FILES.len());
        for (i, name) in FILES.iter().enumerate() {
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
        let mut w = Writer {
            outs,
            progress: Out {
                path: progress_path,
                file: progress_file,
                len: progress_len,
            },
            mode,
            counts: WriteCounts::default(),
            buf: Vec::new(),
        };
        if last.is_none() {
            w.outs[SFT_CSV].append(b"id,prompt,completion\n")?;
            w.outs[PREF_CSV].append(b"id,prompt,chosen,rejected\n")?;
            w.commit(None)?;
        }
        Ok((w, done))
    }

    fn commit(&mut self, id: Option<&str>) -> Result<(), OutputError> {
        let mut len = [0u64; 6];
        for (l, o) in len.iter_mut().zip(&self.outs) {
            *l = o.len;
        }
        let mut line = serde_json::to_vec(&Commit {
            id: id.map(str::to_string),
            len,
        })
        .map_err(|e| io_err(&self.progress.path)(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.progress.append(&line)
    }

    /// Writes one prompt's rows to every file, then commits them.
    pub fn write(&mut self, outcome: &Outcome) -> Result<(), OutputError> {
        match outcome {
            Outcome::Done(f) => self.write_finished(f)?,
            Outcome::Rejected(r) => {
                self.jsonl(REJECTS, r)?;
                self.counts.rejected += 1;
            }
        }
        let id = match outcome {
            Outcome::Done(f) => &f.id,
            Outcome::Rejected(r) => &r.id,
        };
        self.commit(Some(id))
    }

    fn write_finished(&mut self, f: &Finished) -> Result<(), OutputError> {
        self.csv(SFT_CSV, &[&f.id, &f.prompt, &f.sft_text])?;
        let mut prompt_msgs = Vec::with_capacity(2);
        if let Some(s) = &f.system {
            prompt_msgs.push(Message::system(s.clone()));
        }
        prompt_msgs.push(Message::user(f.prompt.clone()));
        let mut messages = prompt_msgs.clone();
        messages.push(Message::assistant(f.sft_text.clone()));
        self.jsonl(
            SFT_JSONL,
            &SftLine {
                id: &f.id,
                messages,
            },
        )?;
        self.counts.sft_rows += 1;

        if self.mode == PreferenceMode::Revision {
            let chosen = f.final_answer();
            if chosen == f.initial {
                self.counts.preference_skipped_identical += 1;
            } else {
                self.csv(PREF_CSV, &[&f.id, &f.prompt, chosen, &f.initial])?;
                self.jsonl(
                    PREF_JSONL,
                    &PrefLine {
                        id: &f.id,
                        prompt: prompt_msgs,
                        chosen: vec![Message::assistant(chosen.to_string())],
                        rejected: vec![Message::assistant(f.initial.clone())],
                    },
                )?;
                self.counts.preference_rows += 1;
            }
        }

        let last = f.rounds.last();
        self.jsonl(
            TRACE,
            &TraceLine {
                id: &f.id,
                prompt: &f.prompt,
                system: f.system.as_deref(),
                init_prompt: &f.user_message,
                init_response: &f.initial,
                critic_prompt: last.map(|r| r.critique_request.as_str()),
                critic_response: last.map(|r| r.critique.as_str()),
                revision_prompt: last.map(|r| r.revision_request.as_str()),
                revision_response: last.map(|r| r.revision.as_str()),
                rounds: &f.rounds,
                steps: &f.steps,
            },
        )
    }

    fn csv(&mut self, file: usize, fields: &[&str]) -> Result<(), OutputError> {
        self.buf.clear();
        {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
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

    fn jsonl<T: Serialize>(&mut self, file: usize, value: &T) -> Result<(), OutputError> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, value)
            .map_err(|e| io_err(&self.outs[file].path)(std::io::Error::other(e)))?;
        self.buf.push(b'\n');
        let buf = std::mem::take(&mut self.buf);
        let r = self.outs[file].append(&buf);
        self.buf = buf;
        r
    }

    /// Flushes everything to disk (end of run).
    pub fn sync(&mut self) -> Result<(), OutputError> {
        for o in self.outs.iter().chain(std::iter::once(&self.progress)) {
            o.file.sync_data().map_err(io_err(&o.path))?;
        }
        Ok(())
    }
}

/// Reads the commit log: ids committed and the last commit. Cuts a torn
/// last line.
fn read_commits(path: &Path) -> Result<(HashSet<String>, Option<Commit>), OutputError> {
    let mut done = HashSet::new();
    if !path.exists() {
        return Ok((done, None));
    }
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut last = None;
    let mut good = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let Ok(c) = serde_json::from_slice::<Commit>(&line) else {
            break;
        };
        good += n as u64;
        if let Some(id) = &c.id {
            done.insert(id.clone());
        }
        last = Some(c);
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    if f.metadata().map_err(io_err(path))?.len() != good {
        f.set_len(good).map_err(io_err(path))?;
    }
    Ok((done, last))
}

#[derive(Serialize)]
struct SftLine<'a> {
    id: &'a str,
    messages: Vec<Message>,
}

#[derive(Serialize)]
struct PrefLine<'a> {
    id: &'a str,
    prompt: Vec<Message>,
    chosen: Vec<Message>,
    rejected: Vec<Message>,
}

#[derive(Serialize)]
struct TraceLine<'a> {
    id: &'a str,
    prompt: &'a str,
    system: Option<&'a str>,
    init_prompt: &'a str,
    init_response: &'a str,
    critic_prompt: Option<&'a str>,
    critic_response: Option<&'a str>,
    revision_prompt: Option<&'a str>,
    revision_response: Option<&'a str>,
    rounds: &'a [Round],
    steps: &'a [TraceStep],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Reject, Stage};

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
        assert_eq!(done, ["a".to_string(), "b".to_string()].into());
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
