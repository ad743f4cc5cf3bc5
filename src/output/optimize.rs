//! The files of `cai optimize` and `cai optimize eval`.
//!
//! | file | what |
//! |---|---|
//! | `search.jsonl` | every event of the search: aspect choices, node evaluations (prompt, parent, depth, query, answer, scores with rationales, reward), dropped and duplicate proposals, example rewrites, step summaries |
//! | `system_prompt.txt` | the best prompt |
//! | `examples.json` | the optimised example bank (with `--examples`) |
//! | `report.json` | `"kind": "optimize"`, `reward_per_depth`, `best_path`, counts |
//! | `eval.json`, `eval.jsonl` | `optimize eval`: figures, and one line per (prompt, query) |
//!
//! `search.jsonl` is rewritten from the start by every invocation: a resumed
//! search replays its finished requests from the journal, so it writes the
//! same events again, then goes on.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::OutputError;

/// An append-only JSONL file, truncated when opened.
pub struct Events {
    path: PathBuf,
    file: File,
}

impl Events {
    pub fn create(path: &Path) -> Result<Events, OutputError> {
        let file = File::create(path).map_err(|source| OutputError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Events {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes one line (unbuffered: a killed run keeps every finished line).
    pub fn write(&mut self, v: &Value) -> Result<(), String> {
        let mut line = v.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// One depth of the search tree.
#[derive(Clone, Debug, Serialize)]
pub struct DepthReward {
    pub depth: usize,
    pub best: f64,
    pub mean: f64,
    pub nodes: usize,
}

/// One node of the best path.
#[derive(Clone, Debug, Serialize)]
pub struct PathNode {
    pub depth: usize,
    pub node: usize,
    pub reward: Option<f64>,
    pub prompt: String,
}

/// `report.json` of `cai optimize`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub status: String,
    pub base: String,
    pub evaluator: String,
    pub optimizer: String,
    pub queries: usize,
    pub beam: usize,
    pub actions: usize,
    pub depth: usize,
    pub seed: u64,
    pub examples: usize,
    pub initial_prompt: String,
    pub best_prompt: String,
    pub best_reward: Option<f64>,
    pub reward_per_depth: Vec<DepthReward>,
    pub best_path: Vec<PathNode>,
    pub nodes: usize,
    pub dropped: usize,
    pub requests: crate::engine::StatsSnapshot,
    pub wall_time_s: f64,
}

impl Report {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = String::from("depth  nodes  best   mean\n");
        for d in &self.reward_per_depth {
            s.push_str(&format!(
                "{:>5}  {:>5}  {:.2}   {:.2}\n",
                d.depth, d.nodes, d.best, d.mean
            ));
        }
        s.push_str(&format!(
            "best path: {}\n",
            self.best_path
                .iter()
                .map(|n| match n.reward {
                    Some(r) => format!("#{} ({r:.2})", n.node),
                    None => format!("#{}", n.node),
                })
                .collect::<Vec<_>>()
                .join(" → ")
        ));
        s.push_str(&format!("best prompt:\n{}\n", self.best_prompt));
        s
    }
}

/// Writes `text` through a temporary file and a rename.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<(), OutputError> {
    let tmp = path.with_extension("tmp");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| OutputError::Io { path: p, source }
    };
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), OutputError> {
    crate::engine::rundir::write_atomic(path, value).map_err(OutputError::from)
}
