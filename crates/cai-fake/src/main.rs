//! `cai-fake`: runs the fake language-model endpoint of `cai_fake` as a
//! process, for trying `cai` by hand and for benchmarks that want client and
//! server in separate processes. The first line on stdout is
//! `listening on http://127.0.0.1:PORT`; Ctrl-C stops it and prints the
//! counters as JSON.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cai_fake::{FakeConfig, FakeServer};
use clap::Parser;

/// A fast, deterministic fake OpenAI / TGI endpoint on 127.0.0.1.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Time per completion, e.g. `200ms`, `1.5s` (a bare number is ms).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    latency: Duration,
    /// Extra latency drawn uniformly from 0..=JITTER per request.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    jitter: Duration,
    /// Completions processed at once; the rest queue (default: unlimited).
    #[arg(long)]
    capacity: Option<usize>,
    /// Requests-per-minute limit; beyond it, 429 with Retry-After.
    #[arg(long)]
    rpm: Option<u32>,
    /// Burst size of the rpm bucket (default: one second's worth).
    #[arg(long)]
    rpm_burst: Option<u32>,
    /// Probability of an injected 429.
    #[arg(long, default_value_t = 0.0)]
    rate_429: f64,
    /// Probability of a 500.
    #[arg(long, default_value_t = 0.0)]
    rate_500: f64,
    /// Probability of a 503.
    #[arg(long, default_value_t = 0.0)]
    rate_503: f64,
    /// Probability of closing the connection without a response.
    #[arg(long, default_value_t = 0.0)]
    rate_reset: f64,
    /// Probability of a 200 with a malformed body.
    #[arg(long, default_value_t = 0.0)]
    rate_malformed: f64,
    /// Probability of a request that never gets an answer.
    #[arg(long, default_value_t = 0.0)]
    rate_hang: f64,
    /// Probability of a 200 with empty content.
    #[arg(long, default_value_t = 0.0)]
    rate_empty: f64,
    /// Probability of a reply cut short (finish_reason "length").
    #[arg(long, default_value_t = 0.0)]
    rate_length: f64,
    /// Retry-After sent with injected 429s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    fault_retry_after: Duration,
    /// How long a hanging request is held before its connection is dropped.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    hang_for: Duration,
    /// Require `Authorization: Bearer KEY` (else 401).
    #[arg(long, env = "CAI_FAKE_KEY", hide_env_values = true)]
    require_key: Option<String>,
    /// Seed of the fault and jitter RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Answer /generate as `[{"generated_text": …}]` (Inference API style).
    #[arg(long)]
    tgi_list: bool,
    /// Model id listed by /v1/models.
    #[arg(long, default_value = "fake-model")]
    model: String,
    /// Time from a batch's creation until it ends (OpenAI and Anthropic batch APIs).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    batch_delay: Duration,
    /// Batch items whose custom_id hash is a multiple of N come back errored.
    #[arg(long)]
    batch_fail_every: Option<u64>,
    /// Batch items whose custom_id hash is a multiple of N expire.
    #[arg(long)]
    batch_expire_every: Option<u64>,
    /// Submissions of a faulty batch item that fail before it is answered.
    #[arg(long, default_value_t = 1)]
    batch_fault_times: u32,
    /// Behave like a prompt cache: repeated prefixes of at least N tokens
    /// are reported as cached (OpenAI: any message boundary; Anthropic:
    /// only at `cache_control` blocks).
    #[arg(long)]
    cache_min_tokens: Option<u64>,
}

/// Accepts `250ms`, `1.5s`, `2m`, or a bare number of milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 200ms or 1.5s"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cai-fake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(a: Args) -> anyhow::Result<()> {
    let config = FakeConfig {
        port: a.port,
        latency: a.latency,
        jitter: a.jitter,
        capacity: a.capacity,
        rpm_limit: a.rpm,
        rpm_burst: a.rpm_burst,
        rate_429: a.rate_429,
        rate_500: a.rate_500,
        rate_503: a.rate_503,
        rate_reset: a.rate_reset,
        rate_malformed: a.rate_malformed,
        rate_hang: a.rate_hang,
        rate_empty: a.rate_empty,
        rate_length: a.rate_length,
        fault_retry_after: a.fault_retry_after,
        hang_for: a.hang_for,
        require_key: a.require_key,
        seed: a.seed,
        tgi_list: a.tgi_list,
        model: a.model,
        record_last: 0,
        batch_delay: a.batch_delay,
        batch_fail_every: a.batch_fail_every,
        batch_expire_every: a.batch_expire_every,
        batch_fault_times: a.batch_fault_times,
        cache_min_tokens: a.cache_min_tokens,
    };
    let server = FakeServer::start(config).await?;
    // Scripts read the port from this line, so it goes out before anything else.
    println!("listening on {}", server.url());
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    let stats = server.stats();
    server.shutdown().await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
