//! `manifest.json`: what produced a run's data.
//!
//! The manifest says what produced the data: version, arguments, provider,
//! model, input hashes, seed, counts, requests, tokens, retries and wall
//! time. It is rewritten atomically (temporary file, then rename) so a
//! reader never sees half of one.
//!
//! A run directory holds one of two manifests: a run's ([`Manifest`]) or a
//! merge's ([`MergedManifest`], which says where its rows came from instead
//! of how they were made). Each is one type, written and read back (by
//! `cai merge` and `cai report`) through the same serde derive; a field an
//! older `cai` did not write reads as its default. [`AnyManifest`] reads
//! whichever a directory has.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::merge::MergeCounts;
use super::{io_err, OutputError, WriteCounts};
use crate::engine::batch::Passes;
use crate::engine::StatsSnapshot;

/// Everything the `manifest.json` of a run records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Manifest {
    pub cai_version: String,
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

/// The `manifest.json` of a directory written by `cai merge`: what it was
/// merged from and what it holds, with the request counters and cost
/// summed over its directories.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MergedManifest {
    pub cai_version: String,
    /// `done`, or `partial` when `--partial` let gaps through.
    pub status: String,
    pub merged_from: Vec<MergedFrom>,
    pub prompts_file: String,
    pub prompts_sha256: String,
    pub prompt_column: Option<String>,
    pub limit: Option<u64>,
    pub counts: MergeCounts,
    /// `--partial`: what is not in the dataset.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<String>,
    pub requests: StatsSnapshot,
    pub cost_usd: Option<f64>,
}

/// One directory a merge read.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MergedFrom {
    pub dir: String,
    pub shard: Option<String>,
    /// Its manifest's status when it was merged.
    pub status: String,
}

/// The manifest of a run directory, whichever kind it holds.
#[derive(Clone, Debug)]
pub enum AnyManifest {
    Run(Box<Manifest>),
    Merged(Box<MergedManifest>),
}

/// The same expression over either kind of manifest, for the fields both
/// record under one name.
macro_rules! either {
    ($any:expr, $m:ident => $e:expr) => {
        match $any {
            AnyManifest::Run($m) => $e,
            AnyManifest::Merged($m) => $e,
        }
    };
}

impl AnyManifest {
    /// Parses a `manifest.json`: a merge's when it lists the directories
    /// it was merged from (`merged_from`), else a run's.
    pub fn from_slice(bytes: &[u8]) -> serde_json::Result<AnyManifest> {
        /// Only the key that tells the kinds apart.
        #[derive(Deserialize)]
        struct Kind {
            #[serde(default)]
            merged_from: Option<serde::de::IgnoredAny>,
        }
        let kind: Kind = serde_json::from_slice(bytes)?;
        Ok(match kind.merged_from {
            Some(_) => AnyManifest::Merged(serde_json::from_slice(bytes)?),
            None => AnyManifest::Run(serde_json::from_slice(bytes)?),
        })
    }

    pub fn status(&self) -> &str {
        either!(self, m => &m.status)
    }

    pub fn prompts_file(&self) -> &str {
        either!(self, m => &m.prompts_file)
    }

    pub fn prompts_sha256(&self) -> &str {
        either!(self, m => &m.prompts_sha256)
    }

    pub fn prompt_column(&self) -> Option<&str> {
        either!(self, m => m.prompt_column.as_deref())
    }

    pub fn limit(&self) -> Option<u64> {
        either!(self, m => m.limit)
    }

    /// The shard (`K/N`) a run read; a merge covers its shards together.
    pub fn shard(&self) -> Option<&str> {
        match self {
            AnyManifest::Run(m) => m.shard.as_deref(),
            AnyManifest::Merged(_) => None,
        }
    }

    pub fn requests(&self) -> StatsSnapshot {
        either!(self, m => m.requests)
    }

    pub fn cost_usd(&self) -> Option<f64> {
        either!(self, m => m.cost_usd)
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
