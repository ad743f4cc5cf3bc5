//! Pool benchmark: the release `cai` binary against 1 and then 4 fake
//! endpoints of capacity 64 each at 200 ms (ideal: 320 vs 1,280 requests
//! per second), 6,000 prompts × 3 requests by default. Prints figures;
//! asserts nothing. With few prompts the serial start and tail of each
//! prompt's chain weigh more, and the ratio drops (2,000 prompts: 2.5×).
//!
//! ```text
//! cargo build --release && cargo run --release --example bench_pool [-- PROMPTS]
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cai_fake::process::cai_bin;
use cai_fake::{FakeConfig, FakeServer};

fn write_prompts(path: &Path, n: usize) {
    let mut w = csv::Writer::from_path(path).expect("prompts file");
    w.write_record(["id", "prompt"]).expect("header");
    for i in 0..n {
        w.write_record([format!("b{i}"), format!("Pool benchmark question {i}?")])
            .expect("row");
    }
    w.flush().expect("flush");
}

/// Requests per second of one run over `servers`.
fn run(servers: &[FakeServer], prompts: &Path, out: &Path) -> (f64, u64) {
    let mut c = Command::new(cai_bin());
    c.env_remove("OPENAI_API_KEY")
        .args([
            "generate",
            "--provider",
            "openai",
            "--quiet",
            "--model",
            "fake-model",
        ])
        .args(["--concurrency", &(64 * servers.len()).to_string()])
        .arg("--prompts")
        .arg(prompts)
        .arg("--constitution")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/principles/harmless.json"
        ))
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for s in servers {
        c.arg("--base-url").arg(format!("{}/v1", s.url()));
    }
    let started = Instant::now();
    let status = c.status().expect("cai runs");
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "cai failed: {status}");
    let requests: u64 = servers.iter().map(|s| s.stats().chat_requests).sum();
    (requests as f64 / wall, requests)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(6000);
    let dir = tempfile::tempdir().expect("temp dir");
    let prompts = dir.path().join("prompts.csv");
    write_prompts(&prompts, n);
    let fake = || FakeConfig {
        latency: Duration::from_millis(200),
        capacity: Some(64),
        ..FakeConfig::default()
    };
    let mut rates = Vec::new();
    for (k, pool) in [1usize, 4].into_iter().enumerate() {
        let mut servers = Vec::new();
        for _ in 0..pool {
            servers.push(FakeServer::start(fake()).await.expect("fake starts"));
        }
        let out = dir.path().join(format!("run{k}"));
        let (rate, requests) = tokio::task::block_in_place(|| run(&servers, &prompts, &out));
        println!(
            "{pool} endpoint(s) × capacity 64 at 200 ms: {requests} requests, {rate:.0} req/s (ideal {})",
            pool * 320
        );
        rates.push(rate);
    }
    println!("speed-up 4 vs 1: {:.2}× (goal ≥ 3.8×)", rates[1] / rates[0]);
}
