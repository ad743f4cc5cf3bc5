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

impl ReportError {
    /// 2 for a directory that cannot be read as a run, 3 when the page
    /// cannot be written.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Write { .. } => 3,
            _ => 2,
        }
    }
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
