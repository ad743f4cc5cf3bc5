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

use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
///
/// `best` and `mean` are NaN when no reward could be averaged; serde_json
/// writes NaN as `null`, which reads back as NaN, as does a missing value.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct DepthReward {
    pub depth: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub best: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    pub nodes: usize,
}

impl Default for DepthReward {
    /// No reward known: NaN, which the report does not draw.
    fn default() -> Self {
        DepthReward {
            depth: 0,
            best: f64::NAN,
            mean: f64::NAN,
            nodes: 0,
        }
    }
}

/// Reads a number that serde_json may have written as `null` (it writes
/// NaN and the infinities so) as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One node of the best path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
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

/// The `kind` of an optimize `report.json`: written as `"optimize"`, and
/// read back from that string only, so the `report.json` of another
/// command is not taken for an optimize one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptimizeKind;

impl OptimizeKind {
    /// What `report.json` says in its `kind`.
    pub const NAME: &'static str = "optimize";
}

impl Serialize for OptimizeKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Self::NAME)
    }
}

impl<'de> Deserialize<'de> for OptimizeKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = String::deserialize(d)?;
        if kind == Self::NAME {
            Ok(OptimizeKind)
        } else {
            Err(D::Error::invalid_value(
                Unexpected::Str(&kind),
                &"\"optimize\"",
            ))
        }
    }
}

/// `report.json` of `cai optimize`, written by the command and read back
/// by `cai report`; a field an older run did not write reads as its
/// default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub kind: OptimizeKind,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StatsSnapshot;
    use crate::feedback::drpo::Sampling;
    use crate::provider::GenParams;

    /// A report with every field set, and a depth whose rewards are NaN.
    fn full_report() -> Report {
        let params = |max_tokens, temperature| GenParams {
            max_tokens,
            temperature,
            top_p: 0.95,
            seed: Some(7),
            stop: vec!["</s>".into()],
            top_logprobs: None,
            n: None,
        };
        Report {
            kind: OptimizeKind,
            status: "done".into(),
            base: "fake:base".into(),
            evaluator: "fake:eval".into(),
            optimizer: "fake:opt".into(),
            queries: 3,
            beam: 2,
            actions: 3,
            depth: 2,
            max_depth_increase: 1,
            extended: 1,
            steps: 3,
            seed: 42,
            training_order: vec!["q1".into(), "q3".into(), "q2".into(), "q1".into()],
            examples: 1,
            sampling: Sampling {
                base: params(256, 0.0),
                evaluator: params(512, 0.5),
                optimizer: GenParams {
                    top_logprobs: Some(5),
                    ..params(1024, 1.0)
                },
            },
            initial_prompt: "Be helpful.".into(),
            best_prompt: "Be helpful and kind.".into(),
            best_reward: Some(4.5),
            best_path_reward: Some(4.25),
            reward_per_depth: vec![
                DepthReward {
                    depth: 0,
                    best: 3.0,
                    mean: 3.0,
                    nodes: 1,
                },
                DepthReward {
                    depth: 1,
                    best: f64::NAN,
                    mean: f64::NAN,
                    nodes: 0,
                },
                DepthReward {
                    depth: 2,
                    best: 4.5,
                    mean: 3.75,
                    nodes: 2,
                },
            ],
            best_path: vec![
                PathNode {
                    depth: 0,
                    node: 0,
                    query_id: "q1".into(),
                    reward: Some(3.0),
                    path_reward: Some(3.0),
                    kept: false,
                    prompt: "Be helpful.".into(),
                },
                PathNode {
                    depth: 2,
                    node: 4,
                    query_id: "q2".into(),
                    reward: None,
                    path_reward: None,
                    kept: true,
                    prompt: "Be helpful and kind.".into(),
                },
            ],
            nodes: 5,
            dropped: 1,
            dropped_requests: 2,
            requests: StatsSnapshot {
                requests: 20,
                cached: 4,
                retries: 1,
                tokens_in: 900,
                tokens_out: 300,
                ..StatsSnapshot::default()
            },
            wall_time_s: 2.5,
        }
    }

    #[test]
    fn report_json_keeps_its_bytes() {
        // The shape `cai optimize` wrote before the report read it back:
        // `kind` first, NaN as `null`, unset options left out.
        let want = concat!(
            r#"{"kind":"optimize","status":"done","base":"fake:base","evaluator":"fake:eval","#,
            r#""optimizer":"fake:opt","queries":3,"beam":2,"actions":3,"depth":2,"#,
            r#""max_depth_increase":1,"extended":1,"steps":3,"seed":42,"#,
            r#""training_order":["q1","q3","q2","q1"],"examples":1,"sampling":{"#,
            r#""base":{"max_tokens":256,"temperature":0.0,"top_p":0.95,"seed":7,"stop":["</s>"]},"#,
            r#""evaluator":{"max_tokens":512,"temperature":0.5,"top_p":0.95,"seed":7,"stop":["</s>"]},"#,
            r#""optimizer":{"max_tokens":1024,"temperature":1.0,"top_p":0.95,"seed":7,"stop":["</s>"],"top_logprobs":5}},"#,
            r#""initial_prompt":"Be helpful.","best_prompt":"Be helpful and kind.","#,
            r#""best_reward":4.5,"best_path_reward":4.25,"reward_per_depth":["#,
            r#"{"depth":0,"best":3.0,"mean":3.0,"nodes":1},"#,
            r#"{"depth":1,"best":null,"mean":null,"nodes":0},"#,
            r#"{"depth":2,"best":4.5,"mean":3.75,"nodes":2}],"#,
            r#""best_path":[{"depth":0,"node":0,"query_id":"q1","reward":3.0,"path_reward":3.0,"kept":false,"prompt":"Be helpful."},"#,
            r#"{"depth":2,"node":4,"query_id":"q2","reward":null,"path_reward":null,"kept":true,"prompt":"Be helpful and kind."}],"#,
            r#""nodes":5,"dropped":1,"dropped_requests":2,"#,
            r#""requests":{"requests":20,"cached":4,"retries":1,"throttled_429":0,"failed":0,"tokens_in":900,"#,
            r#""tokens_out":300,"tokens_cached":0,"tokens_cache_write":0,"in_flight":0,"cost_micro_usd":0},"#,
            r#""wall_time_s":2.5}"#
        );
        assert_eq!(serde_json::to_string(&full_report()).unwrap(), want);
    }

    #[test]
    fn a_written_report_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let report = full_report();
        write_json(&path, &report).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let back: Report = serde_json::from_slice(&bytes).unwrap();
        // NaN reads back as NaN, so the report it draws is the run's.
        let depth1 = &back.reward_per_depth[1];
        assert!(depth1.best.is_nan() && depth1.mean.is_nan());
        assert_eq!(back.reward_per_depth[2].mean, 3.75);
        assert_eq!(back.sampling.optimizer.top_logprobs, Some(5));
        assert_eq!(back.best_path[1].reward, None);
        assert_eq!(back.requests, report.requests);
        // Written again, it is the same file.
        let mut again = serde_json::to_vec_pretty(&back).unwrap();
        again.push(b'\n');
        assert_eq!(String::from_utf8(again), String::from_utf8(bytes));
    }

    #[test]
    fn an_older_partial_report_reads_with_defaults() {
        let r: Report = serde_json::from_str(
            r#"{"kind":"optimize","status":"stopped: budget","best_reward":0.7,
                "reward_per_depth":[{"depth":0,"best":0.2,"mean":0.1},{"depth":1}]}"#,
        )
        .unwrap();
        assert_eq!(r.status, "stopped: budget");
        assert_eq!(r.best_reward, Some(0.7));
        assert_eq!(r.reward_per_depth[0].best, 0.2);
        // A depth without rewards has none, not a reward of 0.
        let d1 = &r.reward_per_depth[1];
        assert_eq!((d1.depth, d1.nodes), (1, 0));
        assert!(d1.best.is_nan() && d1.mean.is_nan());
        assert_eq!(r.requests, StatsSnapshot::default());
        assert_eq!(r.sampling.base, GenParams::default());
        assert!(r.best_path.is_empty() && r.best_path_reward.is_none());
    }

    #[test]
    fn another_commands_report_is_not_read_as_optimize() {
        let err = serde_json::from_str::<Report>(r#"{"kind":"label","status":"done"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"optimize\""), "{err}");
        // No kind at all: a report too old or too partial to say.
        assert!(serde_json::from_str::<Report>(r#"{"status":"done"}"#).is_ok());
    }
}
