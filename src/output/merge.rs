//! One dataset from the run directories of shards, and the current dataset
//! of a run refreshed over an edited prompts file.
//!
//! Nothing is parsed row by row: every run directory's commit log
//! (`.cai/progress.jsonl`) says, for each finished prompt, the id, the hash
//! of the prompt text it was made from and every file's length after its
//! rows. The rows of one prompt in one file are therefore the byte range
//! between its commit and the one before, and [`merge`] copies ranges:
//!
//! - the header commit (no id) of the first directory gives every file's
//!   header once (the CSV headers);
//! - a prompt's rows are kept when its id is in the prompts file and its
//!   hash matches the current text there; rows of a prompt edited since
//!   (`superseded`) or no longer in the file (`removed`) are left out;
//! - an id kept in two directories means the shards overlap: refused;
//! - a prompt of the file with no row anywhere is missing: its shard is
//!   named when no directory was given for it, else its id; refused unless
//!   `--partial`.
//!
//! The shards must share one fingerprint (`.cai/run.json`) and have run on
//! the same prompts file (the manifests' SHA-256, which is also checked
//! against the file read now). The merged directory gets its own commit
//! log, fingerprint and manifest (request counters summed over the shards),
//! so it can be merged again.
//!
//! [`refresh_done`] is the other half of refresh: on a resumed `generate`,
//! a committed prompt whose text has changed is not done any more.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{AnyManifest, MergedFrom, MergedManifest};
use super::{io_err, read_log, Commit, OutputError, FILES, STATE_DIR};
use crate::engine::ids::IdSet;
use crate::engine::rundir::Fingerprint;
use crate::engine::StatsSnapshot;
use crate::error::RunError;
use crate::input::prompts::text_hash;
use crate::input::{InputErrors, PromptReader, PromptSpec, Shard};

/// Problems listed per kind before "and N more".
const LISTED: usize = 10;

/// Why a merge did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The directories do not make one dataset (exit 2; nothing written).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Input(#[from] InputErrors),
}

impl From<MergeError> for RunError {
    fn from(e: MergeError) -> RunError {
        match e {
            MergeError::Refused(m) => RunError::Usage(m),
            MergeError::Output(o) => RunError::Output(o),
            MergeError::Input(i) => RunError::Input(i),
        }
    }
}

/// What `cai merge` was asked to do.
pub struct MergeSpec {
    pub dirs: Vec<PathBuf>,
    pub out: PathBuf,
    pub partial: bool,
    /// The prompts file, when not at the path the manifests record.
    pub prompts: Option<PathBuf>,
}

/// Rows in the merged dataset, and rows left out.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct MergeCounts {
    /// Prompts in the prompts file.
    pub prompts: u64,
    pub sft_rows: u64,
    pub preference_rows: u64,
    pub rejected: u64,
    /// Rows of prompts whose text changed after they were written.
    pub superseded: u64,
    /// Rows of prompts no longer in the prompts file.
    pub removed: u64,
    /// Prompts of the file with no row in any directory (`--partial`).
    pub missing: u64,
}

/// What a merge did.
#[derive(Debug)]
pub struct MergeReport {
    pub out: PathBuf,
    pub counts: MergeCounts,
    /// What `--partial` let through.
    pub gaps: Vec<String>,
}

/// One input directory, read.
struct Part {
    dir: PathBuf,
    manifest: AnyManifest,
    shard: Option<Shard>,
    log: Vec<Commit>,
}

fn refused(m: impl Into<String>) -> MergeError {
    MergeError::Refused(m.into())
}

fn listed(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LISTED {
        s.push_str(&format!(" and {} more", items.len() - LISTED));
    }
    s
}

/// Parses the JSON file at `path` with `parse`; `what` says what its
/// absence means.
fn read_with<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&[u8]) -> serde_json::Result<T>,
) -> Result<T, MergeError> {
    let bytes =
        std::fs::read(path).map_err(|e| refused(format!("{}: {e}: {what}", path.display())))?;
    parse(&bytes).map_err(|e| refused(format!("{}: not a cai file: {e}", path.display())))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T, MergeError> {
    read_with(path, what, |b| serde_json::from_slice(b))
}

fn read_part(dir: &Path) -> Result<Part, MergeError> {
    let manifest = read_with(
        &dir.join("manifest.json"),
        "not the run directory of a cai generate that ran to its end (no manifest)",
        AnyManifest::from_slice,
    )?;
    // Every field reads as empty when missing (older runs); these three a
    // merge cannot do without, and every cai has written them.
    for (field, value) in [
        ("status", manifest.status()),
        ("prompts_file", manifest.prompts_file()),
        ("prompts_sha256", manifest.prompts_sha256()),
    ] {
        if value.is_empty() {
            return Err(refused(format!(
                "{}: manifest.json has no {field}: not the manifest of a cai generate run",
                dir.display()
            )));
        }
    }
    let shard = match manifest.shard() {
        None => None,
        Some(s) => Some(
            s.parse::<Shard>()
                .map_err(|e| refused(format!("{}: manifest.json: shard: {e}", dir.display())))?,
        ),
    };
    let log_path = dir.join(STATE_DIR).join("progress.jsonl");
    let log = read_log(&log_path).map_err(|_| {
        refused(format!(
            "{}: no commit log (.cai/progress.jsonl): not a cai generate run directory",
            dir.display()
        ))
    })?;
    if log.iter().any(|c| c.len.len() != FILES.len()) {
        return Err(refused(format!(
            "{}: its commit log is not a generate run's (a label run?): only generate runs are merged",
            dir.display()
        )));
    }
    Ok(Part {
        dir: dir.to_path_buf(),
        manifest,
        shard,
        log,
    })
}

/// The current prompts: id → (text hash, row index in the file).
fn current_prompts(spec: &PromptSpec) -> Result<HashMap<String, (String, u64)>, MergeError> {
    let mut map = HashMap::new();
    for (row, rec) in PromptReader::open(spec)
        .map_err(InputErrors::from)?
        .enumerate()
    {
        let rec = rec.map_err(InputErrors::from)?;
        map.insert(rec.id, (text_hash(&rec.text), row as u64));
    }
    Ok(map)
}

/// `cai merge`: checks that the directories make one dataset, then writes
/// it with its commit log, manifest and fingerprint.
pub fn merge(spec: &MergeSpec) -> Result<MergeReport, MergeError> {
    let parts = read_parts(spec)?;
    let fingerprint = check_one_run(&parts)?;
    let shards = Shards::of(&parts)?;
    let mut problems = shards.problems(&parts);
    let (prompts_path, current) = current_input(spec, &parts[0].manifest)?;
    let mut counts = MergeCounts {
        prompts: current.len() as u64,
        ..MergeCounts::default()
    };
    let owner = pick_rows(&parts, &current, &mut counts)?;
    problems.extend(unexplained_gaps(
        &current,
        &owner,
        &shards,
        &prompts_path,
        &mut counts,
    ));
    let gaps = accept_gaps(problems, spec.partial)?;
    let keep: HashSet<(usize, usize)> = owner.into_values().collect();
    write_merged(spec, &parts, &keep, &mut counts)?;
    let m = merged_manifest(&parts, &prompts_path, counts, gaps.clone());
    super::manifest::write_atomic(&spec.out.join("manifest.json"), &m)?;
    crate::engine::rundir::write_atomic(&spec.out.join(STATE_DIR).join("run.json"), &fingerprint)
        .map_err(OutputError::from)?;
    Ok(MergeReport {
        out: spec.out.clone(),
        counts,
        gaps,
    })
}

/// Reads every input directory, refusing `--out` among them; at least one.
fn read_parts(spec: &MergeSpec) -> Result<Vec<Part>, MergeError> {
    let mut parts = Vec::with_capacity(spec.dirs.len());
    for dir in &spec.dirs {
        if spec.out.exists() && same_dir(dir, &spec.out) {
            return Err(refused(format!(
                "--out {} is also an input: write the merged dataset to a new directory",
                spec.out.display()
            )));
        }
        parts.push(read_part(dir)?);
    }
    if parts.is_empty() {
        return Err(refused("give at least one run directory to merge"));
    }
    Ok(parts)
}

/// Checks that every directory is a run of the first one's settings on the
/// same prompts (file, column, limit); returns their fingerprint.
fn check_one_run(parts: &[Part]) -> Result<Fingerprint, MergeError> {
    let fp_path = |p: &Part| p.dir.join(STATE_DIR).join("run.json");
    let first = &parts[0];
    let fingerprint: Fingerprint = read_json(&fp_path(first), "no run fingerprint")?;
    for p in &parts[1..] {
        let fp: Fingerprint = read_json(&fp_path(p), "no run fingerprint")?;
        let changes = fp.changes_from(&fingerprint);
        if !changes.is_empty() {
            return Err(refused(format!(
                "{} was made with other settings than {}: {}; shards of one dataset share one fingerprint",
                p.dir.display(),
                first.dir.display(),
                changes.join("; ")
            )));
        }
        let (a, b) = (&first.manifest, &p.manifest);
        if a.prompts_sha256() != b.prompts_sha256() {
            return Err(refused(format!(
                "{} ran on another prompts file than {} ({} sha256:{:.12} vs {} sha256:{:.12}); run every shard on the same file",
                p.dir.display(),
                first.dir.display(),
                b.prompts_file(),
                b.prompts_sha256(),
                a.prompts_file(),
                a.prompts_sha256()
            )));
        }
        if a.prompt_column() != b.prompt_column() || a.limit() != b.limit() {
            return Err(refused(format!(
                "{} read the prompts with another --prompt-column or --limit than {}",
                p.dir.display(),
                first.dir.display()
            )));
        }
    }
    Ok(fingerprint)
}

/// Which shards are here: one directory each, all of one N.
struct Shards {
    /// N, when the directories are shards.
    count: Option<u64>,
    /// Shards of N with no directory.
    missing: Vec<Shard>,
}

impl Shards {
    /// Refuses directories that split the input differently, mix a whole
    /// run with shards, or repeat a shard.
    fn of(parts: &[Part]) -> Result<Shards, MergeError> {
        let count = parts.iter().find_map(|p| p.shard.map(|s| s.count));
        let mut by_index: HashMap<u64, &Path> = HashMap::new();
        for p in parts {
            match (p.shard, count) {
                (Some(s), Some(n)) if s.count != n => {
                    return Err(refused(format!(
                        "{} is shard {s} but another directory is a shard of {n}: all shards must split the input the same way",
                        p.dir.display()
                    )))
                }
                (None, Some(_)) => {
                    return Err(refused(format!(
                        "{} is not a shard but the other directories are: a whole run and shards overlap",
                        p.dir.display()
                    )))
                }
                (Some(s), _) => {
                    if let Some(other) = by_index.insert(s.index, &p.dir) {
                        return Err(refused(format!(
                            "{} and {} are both shard {s}",
                            other.display(),
                            p.dir.display()
                        )));
                    }
                }
                (None, None) => {}
            }
        }
        let missing = match count {
            Some(n) => (0..n)
                .filter(|i| !by_index.contains_key(i))
                .map(|index| Shard { index, count: n })
                .collect(),
            None => Vec::new(),
        };
        Ok(Shards { count, missing })
    }

    /// What keeps the directories from covering the input, before the
    /// rows are looked at: unfinished runs and missing shards.
    fn problems(&self, parts: &[Part]) -> Vec<String> {
        let unfinished = parts
            .iter()
            .filter(|p| !p.manifest.status().starts_with("done"))
            .map(|p| {
                format!(
                    "{} did not finish (status: {}); run its command again to complete it",
                    p.dir.display(),
                    p.manifest.status()
                )
            });
        let missing = self
            .missing
            .iter()
            .map(|s| format!("shard {s} is missing (no directory given for it)"));
        unfinished.chain(missing).collect()
    }

    /// Whether the prompt at `row` of the file belongs to a missing shard.
    fn explains(&self, row: u64) -> bool {
        self.count
            .is_some_and(|n| self.missing.iter().any(|s| s.index == row % n))
    }
}

/// The current prompts: id → (text hash, row index in the file).
type Current = HashMap<String, (String, u64)>;

/// The prompts file the shards ran on (`--prompts`, else the manifests'
/// path), checked to be that file, and its prompts.
fn current_input(spec: &MergeSpec, first: &AnyManifest) -> Result<(PathBuf, Current), MergeError> {
    let prompts_path = spec
        .prompts
        .clone()
        .unwrap_or_else(|| PathBuf::from(first.prompts_file()));
    let sha = super::manifest::file_sha256(&prompts_path).map_err(|e| {
        refused(format!(
            "cannot read the prompts file the shards ran on: {e}; pass --prompts FILE where it is now"
        ))
    })?;
    if sha != first.prompts_sha256() {
        return Err(refused(format!(
            "{} has changed since the shards ran (sha256:{:.12} then, sha256:{sha:.12} now): run the shards again on it (only new and changed prompts are sent), or pass --prompts with the file they ran on",
            prompts_path.display(),
            first.prompts_sha256()
        )));
    }
    let input = PromptSpec {
        path: prompts_path.clone(),
        column: first.prompt_column().map(str::to_string),
        limit: first.limit(),
        shard: None,
    };
    let current = current_prompts(&input)?;
    Ok((prompts_path, current))
}

/// Picks every prompt's rows: those of its current text, from one
/// directory. Returns id → (part, commit) of the rows kept; counts the
/// rows left out; refuses directories that overlap.
fn pick_rows<'a>(
    parts: &'a [Part],
    current: &Current,
    counts: &mut MergeCounts,
) -> Result<HashMap<&'a str, (usize, usize)>, MergeError> {
    let mut owner: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut overlaps: Vec<String> = Vec::new();
    for (pi, p) in parts.iter().enumerate() {
        for (ci, c) in p.log.iter().enumerate() {
            let Some(id) = c.id.as_deref() else { continue };
            let Some((hash, _)) = current.get(id) else {
                counts.removed += 1;
                continue;
            };
            if c.h.as_ref().is_some_and(|h| h != hash) {
                counts.superseded += 1;
                continue;
            }
            match owner.insert(id, (pi, ci)) {
                Some((other, _)) if other != pi => overlaps.push(format!(
                    "`{id}` ({} and {})",
                    parts[other].dir.display(),
                    p.dir.display()
                )),
                // The same prompt twice in one directory (a run resumed
                // with --force): the later rows win.
                Some(_) => counts.superseded += 1,
                None => {}
            }
        }
    }
    if !overlaps.is_empty() {
        return Err(refused(format!(
            "the directories overlap: {} prompts have rows in two of them: {}",
            overlaps.len(),
            listed(&overlaps)
        )));
    }
    Ok(owner)
}

/// Counts the prompts of the file with no row; those not explained by a
/// missing shard are a problem, named by id in file order.
fn unexplained_gaps(
    current: &Current,
    owner: &HashMap<&str, (usize, usize)>,
    shards: &Shards,
    prompts_path: &Path,
    counts: &mut MergeCounts,
) -> Option<String> {
    let mut missing_ids: Vec<(u64, &str)> = current
        .iter()
        .filter(|(id, _)| !owner.contains_key(id.as_str()))
        .map(|(id, (_, row))| (*row, id.as_str()))
        .collect();
    counts.missing = missing_ids.len() as u64;
    missing_ids.sort();
    let unexplained: Vec<String> = missing_ids
        .into_iter()
        .filter(|(row, _)| !shards.explains(*row))
        .map(|(_, id)| format!("`{id}`"))
        .collect();
    (!unexplained.is_empty()).then(|| {
        format!(
            "{} prompts of {} have no row: {}",
            unexplained.len(),
            prompts_path.display(),
            listed(&unexplained)
        )
    })
}

/// The gaps `--partial` lets through, or a refusal listing them.
fn accept_gaps(problems: Vec<String>, partial: bool) -> Result<Vec<String>, MergeError> {
    if problems.is_empty() || partial {
        return Ok(problems);
    }
    Err(refused(format!(
        "the directories do not cover the input:\n  {}\nnothing written; pass --partial to merge what is there",
        problems.join("\n  ")
    )))
}

/// The merged directory's manifest: where it came from, what it holds,
/// and the request counters and cost summed over the directories.
fn merged_manifest(
    parts: &[Part],
    prompts_path: &Path,
    counts: MergeCounts,
    gaps: Vec<String>,
) -> MergedManifest {
    let first = &parts[0].manifest;
    let requests = parts.iter().fold(StatsSnapshot::default(), |sum, p| {
        sum.plus(&p.manifest.requests())
    });
    let cost_usd = parts
        .iter()
        .filter_map(|p| p.manifest.cost_usd())
        .reduce(|a, b| a + b);
    MergedManifest {
        cai_version: env!("CARGO_PKG_VERSION").into(),
        status: if gaps.is_empty() { "done" } else { "partial" }.into(),
        merged_from: parts
            .iter()
            .map(|p| MergedFrom {
                dir: p.dir.display().to_string(),
                shard: p.manifest.shard().map(str::to_string),
                status: p.manifest.status().to_string(),
            })
            .collect(),
        prompts_file: prompts_path.display().to_string(),
        prompts_sha256: first.prompts_sha256().to_string(),
        prompt_column: first.prompt_column().map(str::to_string),
        limit: first.limit(),
        counts,
        gaps,
        requests,
        cost_usd,
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Refuses an `--out` holding anything but an earlier merge (which is
/// replaced: a scheduled refresh merges into the same directory each time).
fn prepare_out(out: &Path) -> Result<(), MergeError> {
    if out.exists() {
        if !out.is_dir() {
            return Err(refused(format!(
                "--out {} is a file, not a directory",
                out.display()
            )));
        }
        let entries = std::fs::read_dir(out).map_err(io_err(out))?.count();
        if entries > 0 {
            let earlier = std::fs::read(out.join("manifest.json"))
                .ok()
                .and_then(|b| AnyManifest::from_slice(&b).ok());
            if !matches!(earlier, Some(AnyManifest::Merged(_))) {
                return Err(refused(format!(
                    "--out {} is not empty and does not hold an earlier merge: give a new directory",
                    out.display()
                )));
            }
        }
    }
    let state = out.join(STATE_DIR);
    std::fs::create_dir_all(&state).map_err(io_err(&state))?;
    Ok(())
}

/// Copies the kept byte ranges of every file, writing the merged commit log
/// as it goes.
fn write_merged(
    spec: &MergeSpec,
    parts: &[Part],
    keep: &HashSet<(usize, usize)>,
    counts: &mut MergeCounts,
) -> Result<(), MergeError> {
    prepare_out(&spec.out)?;
    let mut outs = Vec::with_capacity(FILES.len());
    for name in FILES {
        let path = spec.out.join(name);
        let f = File::create(&path).map_err(io_err(&path))?;
        outs.push((path, BufWriter::new(f), 0u64));
    }
    let log_path = spec.out.join(STATE_DIR).join("progress.jsonl");
    let mut log = BufWriter::new(File::create(&log_path).map_err(io_err(&log_path))?);
    for (pi, p) in parts.iter().enumerate() {
        let mut ins = Vec::with_capacity(FILES.len());
        for (fi, name) in FILES.iter().enumerate() {
            let path = p.dir.join(name);
            let f = File::open(&path).map_err(io_err(&path))?;
            let actual = f.metadata().map_err(io_err(&path))?.len();
            let expected = p.log.last().map_or(0, |c| c.len[fi]);
            if actual < expected {
                return Err(OutputError::Truncated {
                    path,
                    actual,
                    expected,
                }
                .into());
            }
            ins.push((path, f));
        }
        let mut prev = vec![0u64; FILES.len()];
        for (ci, c) in p.log.iter().enumerate() {
            // The header commit of the first directory carries the headers.
            let take = keep.contains(&(pi, ci)) || (pi == 0 && c.id.is_none());
            if take {
                for fi in 0..FILES.len() {
                    let (from, to) = (prev[fi], c.len[fi]);
                    if to > from {
                        let (path, f) = &mut ins[fi];
                        f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
                        let (opath, o, olen) = &mut outs[fi];
                        let n = std::io::copy(&mut (&mut *f).take(to - from), o)
                            .map_err(io_err(opath))?;
                        *olen += n;
                    }
                }
                if c.id.is_some() {
                    let has = |fi: usize| u64::from(c.len[fi] > prev[fi]);
                    counts.sft_rows += has(0);
                    counts.preference_rows += has(2);
                    counts.rejected += has(5);
                }
                let line = Commit {
                    id: c.id.clone(),
                    h: c.h.clone(),
                    len: outs.iter().map(|o| o.2).collect(),
                };
                let mut bytes = serde_json::to_vec(&line)
                    .map_err(|e| io_err(&log_path)(std::io::Error::other(e)))?;
                bytes.push(b'\n');
                log.write_all(&bytes).map_err(io_err(&log_path))?;
            }
            prev.clone_from(&c.len);
        }
    }
    for (path, o, _) in &mut outs {
        o.flush().map_err(io_err(path))?;
    }
    log.flush().map_err(io_err(&log_path))?;
    Ok(())
}

/// Refresh on resume: of the ids committed in `dir`, those still to skip —
/// in the (limited, sharded) prompts of `spec`, with the same text as when
/// their rows were written. An edited prompt is generated again; a removed
/// one is no longer counted as done. Returns the ids and how many prompts
/// changed. Each prompt's latest commit line is read back through `done`
/// (no map of every id is built).
pub fn refresh_done(
    _dir: &Path,
    spec: &PromptSpec,
    mut done: IdSet,
) -> Result<(IdSet, u64), MergeError> {
    if done.is_empty() {
        return Ok((done, 0));
    }
    let input = PromptReader::open(spec)
        .map_err(InputErrors::from)?
        .map(|rec| rec.map(|r| (r.id, r.text)).map_err(InputErrors::from));
    let changed = done.retain_input(input, |text, c| {
        c.h.as_ref().is_some_and(|h| *h != text_hash(text))
    })?;
    Ok((done, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_of_an_older_run_reads_with_zero_counters() {
        // Written before `in_flight`, `cost_micro_usd` and `cost_usd` existed.
        let old = r#"{"status":"done","prompts_file":"p.csv","prompts_sha256":"ab",
            "requests":{"requests":3,"cached":1,"retries":0,"throttled_429":0,"failed":0,
            "tokens_in":10,"tokens_out":5}}"#;
        let m = AnyManifest::from_slice(old.as_bytes()).unwrap();
        assert!(matches!(m, AnyManifest::Run(_)));
        let r = m.requests();
        assert_eq!((r.requests, r.cost_micro_usd), (3, 0));
        assert_eq!(m.cost_usd(), None);
        let sum = r.plus(&r);
        assert_eq!((sum.requests, sum.cached, sum.tokens_in), (6, 2, 20));
    }

    #[test]
    fn a_manifest_without_the_prompts_hash_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"{"status":"done","prompts_file":"p.csv"}"#,
        )
        .unwrap();
        let e = read_part(dir.path()).err().unwrap().to_string();
        assert!(e.contains("manifest.json has no prompts_sha256"), "{e}");
    }
}
