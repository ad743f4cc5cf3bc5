//! The files of `cai optimize` and `cai optimize eval`.
//!
//! | file | what |
//! |---|---|
//! | `search.jsonl` | every event of the search: aspect choices (with the evaluator's reasoning), node evaluations (prompt, parent, step, query, answer, scores with rationales, reward, path average), dropped and duplicate proposals, depth extensions, example searches, step summaries (with the requests asked per role) |
//! | `system_prompt.txt` | the best prompt |
//! | `examples.json` | the optimised example bank (with `--examples`) |
//! | `report.json` | `"kind": "optimize"`, the options, `training_order`, `reward_per_depth`, `best_path` (with path averages), counts |
//! | `.cai/dropped.jsonl`, `.cai/finished.json` | what a re-run needs ([`crate::feedback::drpo::state`]) |
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
    pub fn write(&mut self, v: &Value) -> Result<(), OutputError> {
        let mut line = v.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| OutputError::Io {
                path: self.path.clone(),
                source,
            })
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
    pub query_id: String,
    pub reward: Option<f64>,
    /// Mean reward along the path up to this node.
    pub path_reward: Option<f64>,
    /// The parent's prompt carried on (the parent was satisfied).
    pub kept: bool,
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
    /// Steps asked for (`--depth`).
    pub depth: usize,
    pub max_depth_increase: usize,
    /// Steps added because a beam prompt was satisfied.
    pub extended: usize,
    /// Steps run after the start prompt's.
    pub steps: usize,
    pub seed: u64,
    /// Query ids in the order the search read them.
    pub training_order: Vec<String>,
    pub examples: usize,
    pub sampling: crate::feedback::drpo::Sampling,
    pub initial_prompt: String,
    pub best_prompt: String,
    /// The best prompt's reward on its last query.
    pub best_reward: Option<f64>,
    /// The best prompt's path average (what ranks the beam).
    pub best_path_reward: Option<f64>,
    pub reward_per_depth: Vec<DepthReward>,
    pub best_path: Vec<PathNode>,
    pub nodes: usize,
    /// Proposals and scorings that could not be used.
    pub dropped: usize,
    /// Requests recorded in `.cai/dropped.jsonl`.
    pub dropped_requests: usize,
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
        if let Some(p) = self.best_path_reward {
            s.push_str(&format!("best path average: {p:.2}\n"));
        }
        if self.extended > 0 {
            s.push_str(&format!(
                "depth extended by {} step(s): a beam prompt was satisfied\n",
                self.extended
            ));
        }
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
