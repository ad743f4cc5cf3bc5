//! Reading what the user gives: prompts (CSV or JSONL), the constitution
//! (three JSON formats normalised into one [`Constitution`]) and answer
//! pairs to label.
//!
//! Every problem is an [`InputError`] that names the file and the line or the
//! JSON path, so the user can fix it without guessing; the CLI turns these
//! into exit code 2 before any request is sent.

pub mod constitution;
pub mod pairs;
pub mod prompts;
pub mod queries;
pub mod walk;

use std::fmt;
use std::path::{Path, PathBuf};

pub use constitution::{
    pick_principle, ComparisonFewShot, Constitution, ConstitutionFormat, Principle, Stage,
};
pub use prompts::{PromptReader, PromptRecord, PromptSpec, Shard, ShardArg};

/// Where in a file a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// 1-based line number.
    Line(u64),
    /// JSON path such as `critique_revision_principles[3].revision`.
    Path(String),
    /// The file as a whole.
    File,
}

/// One problem with one input file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    pub file: PathBuf,
    pub at: Location,
    pub message: String,
}

impl InputError {
    pub fn new(file: &Path, at: Location, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            at,
            message: message.into(),
        }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.at {
            Location::Line(n) => write!(f, "{file}:{n}: {}", self.message),
            Location::Path(p) if p.is_empty() => write!(f, "{file}: {}", self.message),
            Location::Path(p) => write!(f, "{file}: {p}: {}", self.message),
            Location::File => write!(f, "{file}: {}", self.message),
        }
    }
}

/// Several input problems, reported together so one run shows all of them.
#[derive(Debug, thiserror::Error)]
pub struct InputErrors(pub Vec<InputError>);

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<InputError> for InputErrors {
    fn from(e: InputError) -> Self {
        InputErrors(vec![e])
    }
}

/// What a JSON value is, for messages such as "expected an object, got a
/// string".
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a whole JSON file's `text`; a syntax error names the file and
/// its line.
pub fn parse_json(path: &Path, text: &str) -> Result<serde_json::Value, InputError> {
    serde_json::from_str(text).map_err(|e| {
        InputError::new(
            path,
            Location::Line(e.line() as u64),
            format!("not valid JSON: {e}"),
        )
    })
}
