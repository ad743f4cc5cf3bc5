//! `manifest.json`: what produced a run's data.
//!
//! The manifest says what produced the data: version, arguments, provider,
//! model, input hashes, seed, counts, requests, tokens, retries and wall
//! time. It is rewritten atomically (temporary file, then rename) so a
//! reader never sees half of one.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use super::{io_err, OutputError, WriteCounts};
use crate::engine::batch::Passes;
use crate::engine::StatsSnapshot;

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
    /// `--prompt-column`, `--limit` and the shard (`K/N`) this run read:
    /// what `cai merge` needs to check that shards cover the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
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
    /// Requests, failures and latency per endpoint of a pool.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<crate::provider::pool::EndpointStats>,
    /// Stages, batches and submissions of a batch run (`--batch`, `--batch-export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::engine::batch::BatchSummary>,
}

impl Manifest {
    /// Completes the manifest of a run that started at `started` with how
    /// it went: its passes, the run directory's row `counts`, the request
    /// counters, the pool's endpoints, the batch summary; hashes the prompts
    /// file as it is now.
    pub fn finish<E: std::fmt::Display>(
        &mut self,
        passes: &Passes<E>,
        counts: WriteCounts,
        requests: StatsSnapshot,
        endpoints: Vec<crate::provider::pool::EndpointStats>,
        batch: Option<crate::engine::batch::BatchSummary>,
        started: Instant,
    ) -> Result<(), OutputError> {
        let wall = started.elapsed().as_secs_f64();
        self.status = passes.status(counts.rejected);
        self.prompts_sha256 = file_sha256(Path::new(&self.prompts_file))?;
        self.prompts_already_done = passes.end.already_done;
        self.counts = counts;
        self.requests = requests;
        self.wall_time_s = wall;
        self.first_row_s = passes.end.first_row_s;
        self.requests_per_s = requests.requests as f64 / wall.max(1e-9);
        self.cost_usd = self
            .price
            .as_ref()
            .map(|_| crate::cost::from_micros(requests.cost_micro_usd));
        self.endpoints = endpoints;
        self.batch = batch;
        Ok(())
    }
}

/// Writes `value` as pretty JSON to `path` via a temporary file and rename.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), OutputError> {
    Ok(crate::engine::rundir::write_atomic(path, value)?)
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
    Ok(crate::digest::hex(&h.finalize()))
}
