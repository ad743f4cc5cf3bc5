//! `manifest.json` and the run fingerprint that guards a resume.
//!
//! The manifest says what produced the data: version, arguments, provider,
//! model, input hashes, seed, counts, requests, tokens, retries and wall
//! time. It is rewritten atomically (temporary file, then rename) so a
//! reader never sees half of one.
//!
//! The fingerprint (`.cai/run.json`) holds everything that changes what a
//! request or a row would be. Resuming with a different one would mix two
//! datasets in one directory, so it is refused, naming what changed, unless
//! the user passes `--force`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{io_err, OutputError, WriteCounts, STATE_DIR};
use crate::engine::StatsSnapshot;

/// What must match between a run and its resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub provider: String,
    pub model: String,
    pub constitution_sha256: String,
    pub templates_sha256: String,
    pub params: Value,
    pub rounds: u32,
    pub preference: String,
    pub seed: u64,
}

impl Fingerprint {
    /// Names of the fields that differ from `old`.
    pub fn changes_from(&self, old: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {b} → {a}"));
            }
        };
        check("provider", self.provider.clone(), old.provider.clone());
        check("model", self.model.clone(), old.model.clone());
        check(
            "constitution",
            short(&self.constitution_sha256),
            short(&old.constitution_sha256),
        );
        check(
            "templates",
            short(&self.templates_sha256),
            short(&old.templates_sha256),
        );
        check(
            "parameters",
            self.params.to_string(),
            old.params.to_string(),
        );
        check("rounds", self.rounds.to_string(), old.rounds.to_string());
        check(
            "preference",
            self.preference.clone(),
            old.preference.clone(),
        );
        check("seed", self.seed.to_string(), old.seed.to_string());
        out
    }
}

fn short(h: &str) -> String {
    format!("sha256:{}", &h[..h.len().min(12)])
}

/// Reads the fingerprint of an earlier run, if any.
pub fn read_fingerprint(dir: &Path) -> Result<Option<Fingerprint>, OutputError> {
    let path = dir.join(STATE_DIR).join("run.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub fn write_fingerprint(dir: &Path, fp: &Fingerprint) -> Result<(), OutputError> {
    let state = dir.join(STATE_DIR);
    std::fs::create_dir_all(&state).map_err(io_err(&state))?;
    write_atomic(&state.join("run.json"), fp)
}

/// Everything `manifest.json` records.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub cai_version: &'static str,
    pub status: String,
    pub arguments: Vec<String>,
    pub provider: String,
    pub model: String,
    pub endpoint: String,
    pub prompts_file: String,
    pub prompts_sha256: String,
    pub constitution_file: String,
    pub constitution_sha256: String,
    pub constitution_format: String,
    pub templates_sha256: String,
    pub seed: u64,
    pub rounds: u32,
    pub preference: String,
    pub params: Value,
    pub prompts_total: u64,
    pub prompts_already_done: u64,
    pub counts: WriteCounts,
    pub requests: StatsSnapshot,
    pub started_at_unix: u64,
    pub wall_time_s: f64,
    /// Seconds from start to the first row written in this invocation.
    pub first_row_s: Option<f64>,
    pub requests_per_s: f64,
    /// Spend of this invocation in USD from the replies' usage (`None`
    /// when the model's price is unknown).
    pub cost_usd: Option<f64>,
    /// The price used, and where it came from.
    pub price: Option<crate::cost::Price>,
    /// `--max-cost`, if set.
    pub max_cost: Option<f64>,
}

/// Writes `value` as pretty JSON to `path` via a temporary file and rename.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), OutputError> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    std::fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// SHA-256 of a file's bytes, streamed.
pub fn file_sha256(path: &Path) -> Result<String, OutputError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::engine::journal::hex(&h.finalize()))
}
