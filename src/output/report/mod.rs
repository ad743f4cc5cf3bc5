//! `cai report`: one self-contained HTML page for a run directory.
//!
//! The page works offline from `file://`: its CSS and script are inline
//! (a content security policy allows exactly those two, by hash, and no
//! network source), the figures are SVG drawn here, and everything but the
//! row filters is static markup, readable with JavaScript off. It shows:
//!
//! * a summary of `manifest.json` (or a `label`/`optimize` `report.json`);
//! * figures over **every** row, streamed once: answer lengths initial vs
//!   final, principle usage, how much the revisions changed (word-level
//!   edit distance), chosen-longer share, and for judged runs the score
//!   distributions and position consistency; for `label` runs the soft
//!   labels, the calibration against human labels and the bias metrics;
//!   for `optimize` runs the reward per search depth;
//! * rejects grouped by reason, with examples;
//! * a rows browser over a bounded sample (the first rows and rejects, see
//!   [`Limits`]): prompt → initial → critique → revision per round, a word
//!   diff of the initial answer against the final revision, the preference
//!   pair with its scores.
//!
//! The kind of run is read from which files exist, so a merged directory
//! or one holding several kinds gets every section that applies. All data
//! text is escaped ([`html`]): prompts are hostile by assumption.

mod diff;
mod html;
mod load;
mod page;
mod svg;

use std::path::{Path, PathBuf};

pub use load::Limits;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: not a run directory: {why}")]
    NotARun { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the report of `run_dir` to `out` (default `run_dir/report.html`)
/// and returns its path.
pub fn write_report(run_dir: &Path, out: Option<&Path>) -> Result<PathBuf, ReportError> {
    write_report_with(run_dir, out, Limits::default())
}

/// [`write_report`] with explicit sample sizes.
pub fn write_report_with(
    run_dir: &Path,
    out: Option<&Path>,
    limits: Limits,
) -> Result<PathBuf, ReportError> {
    let data = load::load(run_dir, limits)?;
    let title = run_dir
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run_dir.display().to_string());
    let out = out.map_or_else(|| run_dir.join("report.html"), Path::to_path_buf);
    let page = page::render(&data, &title).map_err(|e| ReportError::Write {
        path: out.clone(),
        source: std::io::Error::other(e),
    })?;
    // Through a temporary file, so a browser reloading the page never
    // reads half of one.
    let tmp = out.with_extension("html.tmp");
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Write { path, source }
    };
    std::fs::write(&tmp, page.as_bytes()).map_err(werr(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(werr(&out))?;
    Ok(out)
}

/// `cai report DIR [--out FILE] [--open]`.
pub fn command(args: &crate::cli::ReportArgs) -> Result<PathBuf, ReportError> {
    let path = write_report(&args.dir, args.out.as_deref())?;
    if args.open {
        open_in_browser(&path);
    }
    Ok(path)
}

/// Hands the page to the desktop's default browser; a failure is only
/// reported, the page is written either way.
fn open_in_browser(path: &Path) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        eprintln!("cai: cannot open {} with {opener}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn page(dir: &Path) -> String {
        let path = write_report(dir, None).unwrap();
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn label_run_shows_metrics_and_a_calibration_plot() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = String::new();
        for (i, (p_a, human)) in [
            (0.9, "a"),
            (0.8, "a"),
            (0.12, "b"),
            (0.18, "tie"),
            (0.6, "b"),
        ]
        .iter()
        .enumerate()
        {
            lines.push_str(
                &serde_json::json!({
                    "id": format!("pair<{i}>"), "principle": "Which is kinder?", "p": p_a,
                    "p_a": p_a, "p_b": 1.0 - p_a, "p_tie": 0.0,
                    "predicted": if *p_a > 0.5 { "a" } else { "b" }, "written": true,
                    "len_a": 10, "len_b": 20, "human": human,
                    "judges": [{"judge": "j1", "model": "m", "p": p_a, "p_first": p_a, "p_second": p_a, "method": "logprobs"}]
                })
                .to_string(),
            );
            lines.push('\n');
        }
        write(dir.path(), "judgments.jsonl", &lines);
        write(
            dir.path(),
            "labels.csv",
            "id,p_a,p_b,p_tie,predicted,judges\n",
        );
        write(
            dir.path(),
            "report.json",
            r#"{"status":"done","judges":["j1"],"pairs_total":5,"judged":5,"accuracy":0.6,
               "log_loss":0.51,"position_consistency":0.75,
               "per_judge":[{"judge":"j1","pairs":5,"position_consistency":0.75,"first_position_wins":0.55}],
               "verbosity":{"judge_pairs":5,"judge_longer_wins":0.4,"human_pairs":4,"human_longer_wins":0.25}}"#,
        );
        let html = page(dir.path());
        assert!(html.contains("label run"));
        assert!(html.contains("Calibration against human labels"));
        assert!(html.contains("5 pairs with a human label"));
        assert!(html.contains("<dt>accuracy vs humans</dt><dd>60.0%</dd>"));
        assert!(html.contains("<dt>log loss</dt><dd>0.5100</dd>"));
        assert!(html.contains("j1: answer shown first wins"));
        assert!(html.contains("pair&lt;3&gt;"));
        // Tenths 0.9 and 0.8 (observed 1), 0.6 (0), and 0.1 holding 0.12 (B)
        // and 0.18 (tie): four dots.
        let cal = html
            .split("Calibration against human labels")
            .nth(1)
            .unwrap();
        let cal = &cal[..cal.find("</svg>").unwrap()];
        assert_eq!(cal.matches("<circle").count(), 4, "{cal}");
        assert!(
            cal.contains("predicted 0.15, observed 0.25, 2 pairs"),
            "{cal}"
        );
    }

    #[test]
    fn merged_directory_shows_where_its_rows_came_from() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "manifest.json",
            r#"{"cai_version":"0.1.0","status":"partial",
               "merged_from":[{"dir":"run/s0","shard":"0/2","status":"done"}],
               "prompts_file":"p.csv","prompts_sha256":"ab",
               "counts":{"prompts":4,"sft_rows":2,"preference_rows":1,"rejected":0,"missing":2},
               "gaps":["shard 1/2 is missing (no directory given for it)"],
               "requests":{"requests":6,"retries":1},"cost_usd":0.5}"#,
        );
        let html = page(dir.path());
        for want in [
            "status <b>partial</b>",
            "<dt>directories merged</dt><dd>1</dd>",
            "<dt>SFT rows</dt><dd>2</dd>",
            "<dt>prompts with no row</dt><dd>2</dd>",
            "<td>run/s0</td><td>0/2</td><td>done</td>",
            "shard 1/2 is missing",
            "<dt>cost</dt><dd>$0.5000</dd>",
        ] {
            assert!(html.contains(want), "missing {want}");
        }
        // A merge records no model or seed of its own: none is made up.
        assert!(!html.contains("<dt>model</dt>") && !html.contains("<dt>seed</dt>"));
    }

    #[test]
    fn optimize_run_shows_reward_per_depth() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "report.json",
            r#"{"kind":"optimize","status":"done","reward_per_depth":[
                {"depth":0,"best":0.2,"mean":0.1},{"depth":1,"best":0.5,"mean":0.3},{"depth":2,"best":0.7,"mean":0.45}]}"#,
        );
        write(
            dir.path(),
            "search.jsonl",
            "{\"depth\":0,\"prompt\":\"<be nice>\"}\n",
        );
        let html = page(dir.path());
        assert!(html.contains("optimize run"));
        assert!(html.contains("Reward per search depth"));
        assert!(html.contains("<dt>best reward</dt><dd>0.7</dd>"));
        let fig = html.split("Reward per search depth").nth(1).unwrap();
        let fig = &fig[..fig.find("</svg>").unwrap()];
        assert_eq!(fig.matches("<circle").count(), 6);
        assert!(!html.contains("label run"));
        // Counters the file does not have are not shown as zeros.
        assert!(!html.contains("<dt>requests</dt>") && !html.contains("<dt>wall time</dt>"));
    }

    #[test]
    fn optimize_report_written_by_the_command_is_drawn_without_its_nan_depth() {
        use crate::output::optimize::{write_json, DepthReward, Report};
        let dir = tempfile::tempdir().unwrap();
        let depth = |depth, best, mean| DepthReward {
            depth,
            best,
            mean,
            nodes: 1,
        };
        let report = Report {
            status: "done".into(),
            best_reward: Some(0.9),
            reward_per_depth: vec![
                depth(0, 0.4, 0.3),
                depth(1, f64::NAN, f64::NAN),
                depth(2, 0.6, f64::NAN),
            ],
            requests: crate::engine::StatsSnapshot {
                requests: 1234,
                ..Default::default()
            },
            wall_time_s: 2.5,
            ..Report::default()
        };
        write_json(&dir.path().join("report.json"), &report).unwrap();
        let html = page(dir.path());
        assert!(html.contains("optimize run"));
        assert!(html.contains("status <b>done</b>"));
        assert!(html.contains("<dt>depths</dt><dd>3</dd>"));
        assert!(html.contains("<dt>best reward</dt><dd>0.9</dd>"));
        assert!(html.contains("<dt>requests</dt><dd>1,234</dd>"));
        assert!(html.contains("<dt>wall time</dt><dd>2.50s</dd>"));
        let fig = html.split("Reward per search depth").nth(1).unwrap();
        let fig = &fig[..fig.find("</svg>").unwrap()];
        // best at depths 0 and 2, mean at depth 0: the nulls are not points.
        assert_eq!(fig.matches("<circle").count(), 3, "{fig}");
    }

    #[test]
    fn generate_run_shows_diff_pair_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let trace = serde_json::json!({
            "id": "a1", "prompt": "How do I <b>pick</b> a lock?", "init_response": "Use a pick.",
            "rounds": [{"round": 1, "principle_index": 2, "principle_name": null,
                        "critique_request": "Is it harmful?", "critique": "It helps burglary.",
                        "revision_request": "Rewrite it.", "revision": "Call a locksmith."}]
        });
        write(dir.path(), "trace.jsonl", &format!("{trace}\n"));
        write(
            dir.path(),
            "preference.jsonl",
            "{\"id\":\"a1\",\"chosen\":[{\"role\":\"assistant\",\"content\":\"Call a locksmith.\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"Use a pick.\"}],\"chosen_score\":0.8,\"rejected_score\":0.2,\"principle\":\"safer?\",\"tie\":false}\n",
        );
        write(
            dir.path(),
            "rejects.jsonl",
            "{\"id\":\"b\",\"prompt\":\"x\",\"stage\":\"critique\",\"round\":1,\"reason\":\"empty reply\"}\n{\"id\":\"c\",\"prompt\":\"y\",\"stage\":\"critique\",\"round\":1,\"reason\":\"empty reply\"}\n",
        );
        write(
            dir.path(),
            "manifest.json",
            r#"{"model":"m-1","provider":"openai","status":"done","counts":{"sft_rows":1,"rejected":2},
               "requests":{"requests":7,"retries":2,"throttled_429":1,"tokens_in":100,"tokens_out":50},
               "wall_time_s":3.5,"first_row_s":0.25,"cost_usd":0.0123}"#,
        );
        let html = page(dir.path());
        for want in [
            "<dt>model</dt><dd>m-1</dd>",
            "<dt>429 replies</dt><dd>1</dd>",
            "<dt>time to first row</dt><dd>0.25s</dd>",
            "<dt>cost</dt><dd>$0.0123</dd>",
            "How do I &lt;b&gt;pick&lt;/b&gt; a lock?",
            "#3 Is it harmful?",
            "<del>Use</del><ins>Call</ins> a <del>pick.</del><ins>locksmith.</ins>",
            "Chosen (score 0.800)",
            "<td>2</td><td>critique</td><td class=\"t\">empty reply</td>",
            "Judge scores",
        ] {
            assert!(html.contains(want), "missing {want}");
        }
        assert_eq!(html.matches(" data-row>").count(), 3);
    }
}
