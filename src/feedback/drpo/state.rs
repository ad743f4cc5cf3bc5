//! What a re-run of a search needs beyond the engines' journals.
//!
//! The engines journal every reply they return, so a re-run replays each
//! finished request. Two things are not replies and are kept here, in the
//! run directory's `.cai/`:
//!
//! - `dropped.jsonl`: every request the engine gave up on — a reply cut
//!   off by the token limit even with the doubled limit (`"kind":
//!   "cut_off"`), blocked by a content filter, or failed after its retries
//!   (`"dropped"`) — with the reason. A re-run gives the same reason
//!   without sending it; `--retry-dropped` sends these again (a reply that
//!   then arrives is journaled as usual and wins from then on).
//! - `finished.json`: the printed result of a finished search and the
//!   options it ran with. A re-run with the same options prints it and
//!   sends nothing, not even replays; other options (a larger `--depth`)
//!   run the search again from the journals.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of `dropped.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct Drop {
    k: String,
    kind: String,
    stage: String,
    id: String,
    reason: String,
}

/// The dropped requests of this run directory.
pub struct RunState {
    path: PathBuf,
    retry: bool,
    dropped: Mutex<HashMap<String, String>>,
    file: Mutex<Option<File>>,
}

impl RunState {
    /// Reads `dir/dropped.jsonl` (a torn last line, from a killed run, is
    /// skipped). With `retry`, recorded drops are sent again.
    pub fn open(dir: &Path, retry: bool) -> std::io::Result<RunState> {
        let path = dir.join("dropped.jsonl");
        let mut dropped = HashMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for d in text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Drop>(l).ok())
                {
                    dropped.insert(d.k, d.reason);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(RunState {
            path,
            retry,
            dropped: Mutex::new(dropped),
            file: Mutex::new(None),
        })
    }

    /// Why the request `key` was dropped by an earlier run, unless
    /// `--retry-dropped` asks to send it again.
    pub fn dropped(&self, key: &str) -> Option<String> {
        if self.retry {
            return None;
        }
        let d = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        d.get(key)
            .map(|why| format!("{why} (dropped by an earlier run; --retry-dropped sends it again)"))
    }

    /// Forgets a drop whose request has a reply now (sent with
    /// `--retry-dropped`); the file keeps the line, the journal wins.
    pub fn clear(&self, key: &str) {
        let mut d = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
        d.remove(key);
    }

    /// How many requests are recorded as dropped.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dropped_count(&self) -> usize {
        self.dropped.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Appends a drop (flushed at once: a killed run keeps it).
    pub fn record_drop(&self, key: &str, stage: &str, id: &str, why: &str) -> std::io::Result<()> {
        let kind = if why.contains("cut off by the token limit") {
            "cut_off"
        } else {
            "dropped"
        };
        let line = Drop {
            k: key.to_string(),
            kind: kind.to_string(),
            stage: stage.to_string(),
            id: id.to_string(),
            reason: why.to_string(),
        };
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        if let Some(file) = f.as_mut() {
            file.write_all(text.as_bytes())?;
        }
        self.dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), why.to_string());
        Ok(())
    }
}

/// `.cai/finished.json`: a finished search's output and the options it
/// ran with.
#[derive(Debug, Serialize, Deserialize)]
pub struct Finished {
    pub options: Value,
    pub table: String,
    pub summary: String,
}

impl Finished {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("finished.json")
    }

    /// The finished result in `state_dir` if it ran with `options`.
    pub fn read(state_dir: &Path, options: &Value) -> Option<Finished> {
        let text = std::fs::read_to_string(Self::path(state_dir)).ok()?;
        let f: Finished = serde_json::from_str(&text).ok()?;
        (f.options == *options).then_some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_survive_a_reopen_and_retry_ignores_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = RunState::open(dir.path(), false).unwrap();
        s.record_drop(
            "k1",
            "optimize-answer",
            "q1",
            "reply cut off by the token limit (max_tokens 8)",
        )
        .unwrap();
        assert!(s.dropped("k1").unwrap().starts_with("reply cut off"));
        let text = std::fs::read_to_string(dir.path().join("dropped.jsonl")).unwrap();
        assert!(text.contains("\"kind\":\"cut_off\""), "{text}");
        let again = RunState::open(dir.path(), false).unwrap();
        assert_eq!(again.dropped_count(), 1);
        assert!(again.dropped("k1").is_some());
        assert!(again.dropped("k2").is_none());
        let retry = RunState::open(dir.path(), true).unwrap();
        assert!(retry.dropped("k1").is_none());
    }
}
