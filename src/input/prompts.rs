//! Prompts, streamed one record at a time from CSV or JSONL.
//!
//! CSV is RFC 4180 with a header row (quoted commas, quotes and newlines;
//! UTF-8 with or without BOM). JSONL is one object per line. The prompt column
//! is `--prompt-column`, else the first of [`DEFAULT_COLUMNS`] present, else
//! the only column besides `id`. The row id is the `id` column when there is
//! one, else the 0-based row index in the file.
//!
//! Reading never holds the whole file: [`PromptReader`] is an iterator, and
//! [`validate`] streams it keeping about 10 bits per row (a Bloom filter of
//! id hashes, see there) to find duplicate ids, so a run over millions of
//! prompts starts in bounded memory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use super::{InputError, InputErrors, Location};

/// Column names tried, in order, when `--prompt-column` is not given.
pub const DEFAULT_COLUMNS: &[&str] = &["prompt", "instruction", "question", "input", "text"];

/// Stop listing problems after this many: the user fixes the pattern, not each row.
const MAX_REPORTED: usize = 50;

/// `--shard K/N`: rows whose index `i` satisfies `i % N == K - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based.
    pub index: u64,
    pub count: u64,
}

/// Why a `K/N` shard does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardSyntaxError {
    #[error("`{0}` is not K/N (for example 1/4)")]
    NotKOverN(String),
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("shard `{0}`: K must be between 1 and N")]
    OutOfRange(String),
}

impl FromStr for Shard {
    type Err = ShardSyntaxError;
    fn from_str(s: &str) -> Result<Self, ShardSyntaxError> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| ShardSyntaxError::NotKOverN(s.to_string()))?;
        let number = |x: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| ShardSyntaxError::NotANumber(x.to_string()))
        };
        let (k, n) = (number(k)?, number(n)?);
        if n == 0 || k == 0 || k > n {
            return Err(ShardSyntaxError::OutOfRange(s.to_string()));
        }
        Ok(Shard {
            index: k - 1,
            count: n,
        })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// `--shard`: a fixed `K/N`, or `auto` (from the array job's environment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardArg {
    Fixed(Shard),
    Auto,
}

impl FromStr for ShardArg {
    type Err = ShardSyntaxError;
    fn from_str(s: &str) -> Result<Self, ShardSyntaxError> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(ShardArg::Auto)
        } else {
            s.parse().map(ShardArg::Fixed)
        }
    }
}

/// Why `--shard auto` cannot tell this task's shard; each variant names
/// the environment variables involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardAutoError {
    #[error("--shard auto: {var}=`{value}` is not a non-negative whole number")]
    NotANumber { var: &'static str, value: String },
    /// `--shards`/`CAI_SHARDS` and the scheduler disagree on the count.
    #[error("--shard auto: --shards/CAI_SHARDS says {given} shards but {what} says {found}")]
    CountDisagrees {
        given: u64,
        what: &'static str,
        found: u64,
    },
    #[error("--shard auto: SLURM_ARRAY_TASK_MAX={max} is below SLURM_ARRAY_TASK_MIN={min}")]
    MaxBelowMin { max: u64, min: u64 },
    #[error("--shard auto: the Slurm array is not one evenly stepped range (SLURM_ARRAY_TASK_COUNT={listed}, but MIN..MAX by STEP spans {spanned} tasks); submit it as --array=A-B or --array=A-B:S")]
    UnevenSlurmArray { listed: u64, spanned: u64 },
    #[error("--shard auto: SLURM_ARRAY_TASK_ID is set but not the array's size: SLURM_ARRAY_TASK_COUNT or SLURM_ARRAY_TASK_MIN/SLURM_ARRAY_TASK_MAX (or give --shards N)")]
    SlurmSizeMissing,
    #[error("--shard auto: SLURM_ARRAY_TASK_ID={id} is not in the array {first}..(step {step})")]
    SlurmIdOutside { id: u64, first: u64, step: u64 },
    #[error("--shard auto: JOB_COMPLETION_INDEX is set but not the number of shards: pass --shards N or set CAI_SHARDS (the Job's spec.completions)")]
    JobCountMissing,
    #[error("--shard auto: neither SLURM_ARRAY_TASK_ID (Slurm --array) nor JOB_COMPLETION_INDEX (Kubernetes Indexed Job) is set; outside an array job use --shard K/N")]
    NotAnArrayJob,
    #[error("--shard auto: the number of shards is 0")]
    ZeroShards,
    #[error(
        "--shard auto: task index {index} (0-based) is not below the number of shards {count}"
    )]
    IndexTooLarge { index: u64, count: u64 },
}

impl Shard {
    /// `--shard auto`: the shard of this array task, from Slurm
    /// (`SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT` or
    /// `SLURM_ARRAY_TASK_MIN`/`MAX`, and `SLURM_ARRAY_TASK_STEP`) or a
    /// Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, 0-based, with the
    /// count from `--shards N` or `CAI_SHARDS`). `var` reads a variable
    /// (the environment, or a table in tests). Anything missing or
    /// inconsistent is an error naming the variables, so a misconfigured
    /// array never silently runs the whole input in every task.
    pub fn auto(
        var: impl Fn(&str) -> Option<String>,
        shards: Option<u64>,
    ) -> Result<Shard, ShardAutoError> {
        let num = |name: &'static str| -> Result<Option<u64>, ShardAutoError> {
            match var(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => {
                    v.trim()
                        .parse::<u64>()
                        .map(Some)
                        .map_err(|_| ShardAutoError::NotANumber {
                            var: name,
                            value: v,
                        })
                }
            }
        };
        let from_flag = |count: Option<u64>, what: &'static str| match (shards, count) {
            (Some(given), Some(found)) if given != found => {
                Err(ShardAutoError::CountDisagrees { given, what, found })
            }
            (Some(s), _) => Ok(Some(s)),
            (None, c) => Ok(c),
        };
        let shard = if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?;
            let max = num("SLURM_ARRAY_TASK_MAX")?;
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let listed = num("SLURM_ARRAY_TASK_COUNT")?;
            let first = min.unwrap_or(0);
            let spanned = match max {
                Some(max) if max < first => {
                    return Err(ShardAutoError::MaxBelowMin { max, min: first })
                }
                Some(max) => Some((max - first) / step + 1),
                None => None,
            };
            let count = match (listed, spanned) {
                (Some(listed), Some(spanned)) if listed != spanned => {
                    return Err(ShardAutoError::UnevenSlurmArray { listed, spanned })
                }
                (Some(c), _) => Some(c),
                (None, s) => s,
            };
            let count =
                from_flag(count, "the Slurm array")?.ok_or(ShardAutoError::SlurmSizeMissing)?;
            if id < first || (id - first) % step != 0 {
                return Err(ShardAutoError::SlurmIdOutside { id, first, step });
            }
            Shard {
                index: (id - first) / step,
                count,
            }
        } else if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let env_count = num("CAI_SHARDS")?;
            let count = match (shards, env_count) {
                (Some(s), _) => s,
                (None, Some(c)) => c,
                (None, None) => return Err(ShardAutoError::JobCountMissing),
            };
            Shard { index, count }
        } else {
            return Err(ShardAutoError::NotAnArrayJob);
        };
        if shard.count == 0 {
            return Err(ShardAutoError::ZeroShards);
        }
        if shard.index >= shard.count {
            return Err(ShardAutoError::IndexTooLarge {
                index: shard.index,
                count: shard.count,
            });
        }
        Ok(shard)
    }
}

/// Which prompts to read.
#[derive(Clone, Debug)]
pub struct PromptSpec {
    pub path: PathBuf,
    pub column: Option<String>,
    /// Take only the first N rows of the file (before sharding).
    pub limit: Option<u64>,
    pub shard: Option<Shard>,
}

impl PromptSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            column: None,
            limit: None,
            shard: None,
        }
    }
}

/// One prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptRecord {
    pub id: String,
    pub text: String,
    /// 1-based line where the record starts.
    pub line: u64,
}

/// A short hash of a prompt's text, recorded with each committed row so a
/// later run can tell that the prompt under an id has changed (refresh).
pub fn text_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::digest::hex(&Sha256::digest(text.as_bytes())[..8])
}

enum Source {
    Csv {
        reader: csv::Reader<BufReader<File>>,
        column: usize,
        id_column: Option<usize>,
    },
    Jsonl {
        lines: std::io::Lines<BufReader<File>>,
        column: Option<String>,
        line: u64,
    },
}

/// Streams [`PromptRecord`]s from a file, applying limit and shard.
pub struct PromptReader {
    path: PathBuf,
    source: Source,
    row: u64,
    limit: Option<u64>,
    shard: Option<Shard>,
}

fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jsonl" | "ndjson" | "json")
    )
}

/// Why no prompt column could be picked.
#[derive(Debug, thiserror::Error)]
enum ColumnError {
    #[error("no column `{want}` (columns: {})", columns.join(", "))]
    Missing { want: String, columns: Vec<String> },
    #[error("cannot tell which column holds the prompt (columns: {}); name it with --prompt-column", columns.join(", "))]
    Ambiguous { columns: Vec<String> },
}

/// Picks the prompt column from the header names.
fn choose_column(names: &[&str], requested: Option<&str>) -> Result<usize, ColumnError> {
    let columns = || -> Vec<String> { names.iter().map(|n| n.to_string()).collect() };
    if let Some(want) = requested {
        return names
            .iter()
            .position(|n| *n == want)
            .ok_or_else(|| ColumnError::Missing {
                want: want.to_string(),
                columns: columns(),
            });
    }
    for want in DEFAULT_COLUMNS {
        if let Some(i) = names.iter().position(|n| n == want) {
            return Ok(i);
        }
    }
    let others: Vec<usize> = (0..names.len()).filter(|&i| names[i] != "id").collect();
    match others.as_slice() {
        [only] => Ok(*only),
        _ => Err(ColumnError::Ambiguous { columns: columns() }),
    }
}

impl PromptReader {
    pub fn open(spec: &PromptSpec) -> Result<Self, InputError> {
        let path = spec.path.clone();
        let file = File::open(&path).map_err(|e| {
            InputError::new(&path, Location::File, format!("cannot open prompts: {e}"))
        })?;
        let source = if is_jsonl(&path) {
            tracing::debug!(file = %path.display(), "reading prompts as JSONL");
            Source::Jsonl {
                lines: BufReader::new(file).lines(),
                column: spec.column.clone(),
                line: 0,
            }
        } else {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .from_reader(BufReader::new(file));
            let headers = reader.headers().map_err(|e| csv_error(&path, e))?.clone();
            let names: Vec<&str> = headers
                .iter()
                .map(|h| h.trim_start_matches('\u{feff}'))
                .collect();
            if names.iter().all(|n| n.is_empty()) {
                return Err(InputError::new(
                    &path,
                    Location::Line(1),
                    "empty file: expected a header row",
                ));
            }
            let column = choose_column(&names, spec.column.as_deref())
                .map_err(|e| InputError::new(&path, Location::Line(1), e.to_string()))?;
            let id_column = names.iter().position(|n| *n == "id");
            tracing::debug!(
                file = %path.display(),
                column = names[column],
                id_column = id_column.map(|i| names[i]),
                "reading prompts as CSV"
            );
            Source::Csv {
                reader,
                column,
                id_column,
            }
        };
        Ok(Self {
            path,
            source,
            row: 0,
            limit: spec.limit,
            shard: spec.shard,
        })
    }

    /// The next record of the file, before limit and shard.
    fn next_raw(&mut self) -> Option<Result<PromptRecord, InputError>> {
        let row = self.row;
        match &mut self.source {
            Source::Csv {
                reader,
                column,
                id_column,
            } => {
                let mut rec = csv::StringRecord::new();
                match reader.read_record(&mut rec) {
                    Ok(false) => None,
                    Err(e) => Some(Err(csv_error(&self.path, e))),
                    Ok(true) => {
                        self.row += 1;
                        let line = rec.position().map_or(0, |p| p.line());
                        let text = rec.get(*column).unwrap_or_default().to_string();
                        let id = match id_column.and_then(|c| rec.get(c)) {
                            Some(id) => id.to_string(),
                            None => row.to_string(),
                        };
                        Some(Ok(PromptRecord { id, text, line }))
                    }
                }
            }
            Source::Jsonl {
                lines,
                column,
                line,
            } => loop {
                let text = match lines.next()? {
                    Ok(t) => t,
                    Err(e) => {
                        return Some(Err(InputError::new(
                            &self.path,
                            Location::Line(*line + 1),
                            format!("cannot read: {e}"),
                        )))
                    }
                };
                *line += 1;
                let text = if *line == 1 {
                    text.trim_start_matches('\u{feff}').to_string()
                } else {
                    text
                };
                if text.trim().is_empty() {
                    continue;
                }
                self.row += 1;
                return Some(jsonl_record(&self.path, *line, row, &text, column));
            },
        }
    }
}

fn jsonl_record(
    path: &Path,
    line: u64,
    row: u64,
    text: &str,
    column: &mut Option<String>,
) -> Result<PromptRecord, InputError> {
    let at = Location::Line(line);
    let value: Value = serde_json::from_str(text)
        .map_err(|e| InputError::new(path, at.clone(), format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(InputError::new(path, at, "expected a JSON object"));
    };
    if column.is_none() {
        let names: Vec<&str> = obj.keys().map(String::as_str).collect();
        let i = choose_column(&names, None)
            .map_err(|e| InputError::new(path, at.clone(), e.to_string()))?;
        *column = Some(names[i].to_string());
    }
    let col = column.as_deref().unwrap_or("prompt");
    let text = match obj.get(col) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => {
            return Err(InputError::new(path, at, format!("no `{col}` field")))
        }
        Some(other) => {
            return Err(InputError::new(
                path,
                at,
                format!("`{col}` must be a string, found {other}"),
            ))
        }
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Null) | None => row.to_string(),
        Some(other) => {
            return Err(InputError::new(
                path,
                at,
                format!("`id` must be a string or a number, found {other}"),
            ))
        }
    };
    Ok(PromptRecord { id, text, line })
}

fn csv_error(path: &Path, e: csv::Error) -> InputError {
    let line = e.position().map(|p| p.line());
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => format!("malformed CSV: {e}"),
    };
    match line {
        Some(l) => InputError::new(path, Location::Line(l), msg),
        None => InputError::new(path, Location::File, msg),
    }
}

impl Iterator for PromptReader {
    type Item = Result<PromptRecord, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.limit.is_some_and(|l| self.row >= l) {
                return None;
            }
            let index = self.row;
            let item = self.next_raw()?;
            // A parse error ends the stream: later rows can't be trusted.
            if item.is_err() {
                self.limit = Some(0);
                return Some(item);
            }
            if let Some(s) = self.shard {
                if index % s.count != s.index {
                    continue;
                }
            }
            return Some(item);
        }
    }
}

/// One streaming pass over the prompts: malformed rows, blank prompts and
/// duplicate ids are all reported (up to a cap). Returns the number of
/// prompts the run will process.
///
/// Duplicates are found without holding the ids: the pass puts a 64-bit
/// hash of each id into a Bloom filter ([`IdFilter`], about 10 bits per line
/// of the file, so 1.2 MB for a million prompts) and notes the hashes it has
/// probably seen before. Only when there are such candidates does a second
/// pass compare the full ids that carry them, so a file with a million
/// unique ids holds a few thousand strings at most, never a million.
pub fn validate(spec: &PromptSpec) -> Result<u64, InputErrors> {
    let reader = PromptReader::open(spec)?;
    let path = spec.path.clone();
    let mut errors = Vec::new();
    if !is_jsonl(&path) {
        match unterminated_quote(&path) {
            Ok(Some(line)) => errors.push(InputError::new(
                &path,
                Location::Line(line),
                "a quoted field opened here is never closed (a missing `\"`): the rest of the file would become one prompt",
            )),
            Ok(None) => {}
            Err(e) => errors.push(InputError::new(&path, Location::File, e.to_string())),
        }
    }
    let lines = count_lines(&path)
        .map_err(|e| InputError::new(&path, Location::File, format!("cannot read: {e}")))?;
    let mut filter = IdFilter::new(lines);
    let mut candidates: HashSet<u64> = HashSet::new();
    let mut count = 0;
    // Rows read by the first pass (it stops at the cap): the second looks
    // no further.
    let mut rows_read = 0u64;
    let mut capped = false;
    for item in reader {
        rows_read += 1;
        match item {
            Err(e) => errors.push(e),
            Ok(rec) => {
                count += 1;
                if rec.text.trim().is_empty() {
                    errors.push(InputError::new(
                        &path,
                        Location::Line(rec.line),
                        format!("blank prompt (id {})", rec.id),
                    ));
                }
                if rec.id.trim().is_empty() {
                    errors.push(InputError::new(&path, Location::Line(rec.line), "blank id"));
                } else {
                    let h = crate::engine::ids::id_hash(&rec.id);
                    if !filter.insert(h) {
                        candidates.insert(h);
                    }
                }
            }
        }
        if errors.len() >= MAX_REPORTED {
            capped = true;
            break;
        }
    }
    drop(filter);
    if !candidates.is_empty() {
        errors.extend(duplicates(spec, &candidates, rows_read)?);
        // Report in file order, as one pass would have.
        errors.sort_by_key(|e| match e.at {
            Location::Line(n) => n,
            _ => 0,
        });
    }
    if capped || errors.len() > MAX_REPORTED {
        errors.truncate(MAX_REPORTED);
        errors.push(InputError::new(
            &path,
            Location::File,
            "too many problems; stopped listing",
        ));
    }
    if count == 0 && errors.is_empty() {
        errors.push(InputError::new(&path, Location::File, "no prompts"));
    }
    if errors.is_empty() {
        Ok(count)
    } else {
        Err(InputErrors(errors))
    }
}

/// The second pass of [`validate`]: of the first `rows` rows, those whose
/// id hash is a candidate are compared by their full id; every repeat is an
/// error at its line.
fn duplicates(
    spec: &PromptSpec,
    candidates: &HashSet<u64>,
    rows: u64,
) -> Result<Vec<InputError>, InputErrors> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for item in PromptReader::open(spec)?.take(rows as usize) {
        let Ok(rec) = item else { continue };
        if rec.id.trim().is_empty() || !candidates.contains(&crate::engine::ids::id_hash(&rec.id)) {
            continue;
        }
        if seen.contains(&rec.id) {
            out.push(InputError::new(
                &spec.path,
                Location::Line(rec.line),
                format!("duplicate id `{}`", rec.id),
            ));
        } else {
            seen.insert(rec.id);
        }
    }
    Ok(out)
}

/// Newlines in a file: an upper bound on its rows, to size [`IdFilter`].
fn count_lines(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            return Ok(n + 1);
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// A Bloom filter of id hashes, sized for `rows` ids at about 10 bits each
/// with 7 probes: under 1 % of unique ids look like repeats (and are then
/// checked exactly by [`duplicates`]).
struct IdFilter {
    bits: Vec<u64>,
    nbits: u64,
}

impl IdFilter {
    const BITS_PER_ID: u64 = 10;
    const PROBES: u64 = 7;

    fn new(rows: u64) -> Self {
        let nbits = rows.saturating_mul(Self::BITS_PER_ID).max(1024);
        Self {
            bits: vec![0; nbits.div_ceil(64) as usize],
            nbits,
        }
    }

    /// Sets the bits of `h`; false when all of them were set already (`h`
    /// was probably inserted before).
    fn insert(&mut self, h: u64) -> bool {
        // Double hashing: probe i at h1 + i·h2, mapped onto the bit range
        // by a multiply-shift instead of a division.
        let (h1, h2) = (h, h.rotate_left(32) | 1);
        let mut fresh = false;
        for i in 0..Self::PROBES {
            let x = h1.wrapping_add(i.wrapping_mul(h2));
            let bit = ((u128::from(x) * u128::from(self.nbits)) >> 64) as u64;
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            if self.bits[word] & mask == 0 {
                fresh = true;
                self.bits[word] |= mask;
            }
        }
        fresh
    }
}

/// The line where a quoted CSV field opens that never closes, if any.
///
/// The csv crate ends such a field at the end of the file without a word,
/// silently merging every following row into one prompt. RFC 4180 quoting
/// is simple enough to follow in one streamed pass: a field is quoted when
/// its first byte is `"`; inside, `""` is a literal quote and a lone `"`
/// closes it.
pub fn unterminated_quote(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let mut f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut buf = [0u8; 1 << 16];
    let (mut line, mut opened_at) = (1u64, 0u64);
    let (mut in_quotes, mut field_start, mut quote_pending) = (false, true, false);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if in_quotes {
                if quote_pending {
                    quote_pending = false;
                    if b == b'"' {
                        continue; // `""`: a literal quote
                    }
                    in_quotes = false; // the quote closed the field
                } else if b == b'"' {
                    quote_pending = true;
                    continue;
                }
            }
            if b == b'\n' {
                line += 1;
            }
            if in_quotes {
                continue;
            }
            match b {
                b'"' if field_start => {
                    in_quotes = true;
                    opened_at = line;
                    field_start = false;
                }
                b',' | b'\n' => field_start = true,
                // A BOM or a CR before the newline keeps the field's start.
                b'\r' | 0xEF | 0xBB | 0xBF if field_start => {}
                _ => field_start = false,
            }
        }
    }
    Ok((in_quotes && !quote_pending).then_some(opened_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_unclosed_quote_is_found_and_closed_ones_are_not() {
        let cases: [(&[u8], Option<u64>); 6] = [
            (b"prompt\n\"never closed\nmore\n", Some(2)),
            (b"id,prompt\n1,ok\n2,\"a \"\"b\"\"\n", Some(3)),
            (b"prompt\n\"multi\nline, \"\"q\"\"\"\nnext\n", None),
            (b"\xEF\xBB\xBFprompt\r\n\"x\"\r\n", None),
            (b"prompt\nhe said \"hi\"\n", None),
            (b"id,prompt\n1,\"ends at eof\"", None),
        ];
        for (content, want) in cases {
            let f = file(".csv", content);
            assert_eq!(
                unterminated_quote(f.path()).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(content)
            );
        }
        let f = file(".csv", b"prompt\nfine\n\"never closed\n");
        let spec = PromptSpec {
            path: f.path().to_path_buf(),
            column: None,
            limit: None,
            shard: None,
        };
        let err = validate(&spec).unwrap_err().to_string();
        assert!(
            err.contains(":3: a quoted field opened here is never closed"),
            "{err}"
        );
    }

    fn file(ext: &str, content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(content).unwrap();
        f
    }

    fn read(spec: &PromptSpec) -> Vec<PromptRecord> {
        PromptReader::open(spec)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn csv_with_bom_quotes_and_newlines() {
        let f = file(
            ".csv",
            "\u{feff}id,prompt\na,\"one, two\"\nb,\"say \"\"hi\"\"\nthen {{ x }}\"\n".as_bytes(),
        );
        let recs = read(&PromptSpec::new(f.path()));
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].id, "a");
        assert_eq!(recs[0].text, "one, two");
        assert_eq!(recs[1].text, "say \"hi\"\nthen {{ x }}");
        assert_eq!(recs[1].line, 3);
    }

    #[test]
    fn default_column_and_row_index_ids() {
        let f = file(".csv", b"source,question\nx,Q0\ny,Q1\n");
        let recs = read(&PromptSpec::new(f.path()));
        assert_eq!(recs[0].text, "Q0");
        assert_eq!(recs[1].id, "1");
    }

    #[test]
    fn limit_and_shards_are_disjoint_and_covering() {
        let f = file(".csv", b"prompt\na\nb\nc\nd\ne\n");
        let mut all = Vec::new();
        for k in 1..=3 {
            let mut spec = PromptSpec::new(f.path());
            spec.shard = Some(format!("{k}/3").parse().unwrap());
            all.extend(read(&spec).into_iter().map(|r| r.text));
        }
        all.sort();
        assert_eq!(all, ["a", "b", "c", "d", "e"]);
        let mut spec = PromptSpec::new(f.path());
        spec.limit = Some(2);
        assert_eq!(read(&spec).len(), 2);
    }

    #[test]
    fn jsonl_with_numeric_ids_and_blank_lines() {
        let f = file(".jsonl", b"{\"id\": 7, \"instruction\": \"do it\"}\n\n{\"id\": \"x\", \"instruction\": \"again\"}\n");
        let recs = read(&PromptSpec::new(f.path()));
        assert_eq!(recs[0].id, "7");
        assert_eq!(recs[1].line, 3);
    }

    #[test]
    fn validation_lists_every_problem() {
        let f = file(".csv", b"id,prompt\na,ok\na,dup\nb,   \nc,x,extra\n");
        let errs = validate(&PromptSpec::new(f.path())).unwrap_err();
        let msgs: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        assert!(msgs[0].ends_with(":3: duplicate id `a`"), "{msgs:?}");
        assert!(msgs[1].ends_with(":4: blank prompt (id b)"), "{msgs:?}");
        assert!(
            msgs[2].ends_with(":5: expected 2 fields, found 3"),
            "{msgs:?}"
        );
    }

    fn vars<'a>(table: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            table
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_shard_from_slurm_and_kubernetes() {
        let s = |k, n| Shard { index: k, count: n };
        // --array=0-3: COUNT, MIN, MAX all set.
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
        ];
        assert_eq!(Shard::auto(vars(&slurm), None), Ok(s(2, 4)));
        // --array=1-8:2 → tasks 1,3,5,7; task 5 is the third.
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        assert_eq!(Shard::auto(vars(&stepped), None), Ok(s(2, 4)));
        assert_eq!(
            Shard::auto(
                vars(&[
                    ("SLURM_ARRAY_TASK_ID", "0"),
                    ("SLURM_ARRAY_TASK_COUNT", "3")
                ]),
                None
            ),
            Ok(s(0, 3))
        );
        let k8s = [("JOB_COMPLETION_INDEX", "3"), ("CAI_SHARDS", "5")];
        assert_eq!(Shard::auto(vars(&k8s), None), Ok(s(3, 5)));
        assert_eq!(Shard::auto(vars(&k8s), Some(4)), Ok(s(3, 4)));
    }

    #[test]
    fn auto_shard_refuses_missing_or_inconsistent_variables() {
        let err = |table: &[(&str, &str)], shards| {
            Shard::auto(vars(table), shards).unwrap_err().to_string()
        };
        assert!(err(&[], None).contains("neither SLURM_ARRAY_TASK_ID"));
        assert!(err(&[("SLURM_ARRAY_TASK_ID", "1")], None).contains("SLURM_ARRAY_TASK_COUNT"));
        assert!(err(&[("JOB_COMPLETION_INDEX", "1")], None).contains("--shards N"));
        assert!(
            err(&[("JOB_COMPLETION_INDEX", "4"), ("CAI_SHARDS", "4")], None)
                .contains("not below the number of shards 4")
        );
        // --array=1,3,9: three tasks, not one stepped range.
        let listed = [
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "9"),
        ];
        assert!(err(&listed, None).contains("not one evenly stepped range"));
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert!(err(&slurm, Some(3)).contains("says 3 shards but the Slurm array says 4"));
        assert!(err(&[("SLURM_ARRAY_TASK_ID", "x")], None).contains("SLURM_ARRAY_TASK_ID=`x`"));
    }

    #[test]
    fn shard_syntax() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert!("0/4".parse::<Shard>().is_err());
        assert!("5/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
