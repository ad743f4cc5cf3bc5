//! Engine benchmark: the release `cai` binary against the in-repo fake
//! endpoint on 127.0.0.1. Prints figures; asserts nothing.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench_engine [-- --quick] [--only 1,2,4,5] [--sizes 10000,100000,1000000]
//! ```
//!
//! The headline is scenario 2's CPU time of the `cai` process per request:
//! it does not depend on how fast the machine's other tenants let the fake
//! answer, so it is the figure to compare between commits.
//!
//! Scenarios (each a fresh run directory and a fresh fake server):
//! 1. throughput ratio: 10,000 prompts × 1 round (30,000 requests) at 200 ms
//!    latency and capacity 256, `--concurrency 256`; ideal = capacity ÷ latency;
//! 2. overhead: 10,000 prompts (30,000 requests) at latency 0: CPU seconds of
//!    `cai` per request (the headline) and requests per second, then the
//!    same prompts through `scripts/bench_peer.py`, a hand-written asyncio
//!    client sending the same three chained requests per prompt, so the
//!    figure has a peer measured on the same machine in the same minute;
//! 3. time to the first finished row (from scenario 1), against 3 × latency;
//! 4. `--rpm 600` against a server enforcing 600 rpm, for two minutes: share
//!    of the limit achieved and share of 429s;
//! 5. at latency 0, concurrency 256, for 10,000, 100,000
//!    and 1,000,000 prompts (`--sizes`): peak RSS, CPU per request, and the
//!    disk a finished prompt costs in each file of the run directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cai_fake::process::{cai_bin, peak_rss_kib};
use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

struct Outcome {
    wall: f64,
    manifest: Value,
    peak_rss_kb: u64,
    /// User + system CPU seconds of the cai process (last sample before exit).
    cpu_s: f64,
    code: i32,
}

fn write_prompts(path: &Path, n: usize) {
    let mut w = csv::Writer::from_path(path).expect("prompts file");
    w.write_record(["id", "prompt"]).expect("header");
    for i in 0..n {
        w.write_record([
            format!("b{i}"),
            format!("Benchmark question {i}: explain, briefly, why the sky looks blue at noon."),
        ])
        .expect("row");
    }
    w.flush().expect("flush");
}

/// utime + stime of a live process, in seconds (clock ticks of 1/100 s,
/// the Linux default for USER_HZ).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// What `scripts/bench_peer.py` prints.
#[derive(serde::Deserialize)]
struct Peer {
    requests: f64,
    cpu_s: f64,
    wall_s: f64,
    mean_body_bytes: f64,
}

/// Runs the hand-written asyncio peer on the same prompts and fake as
/// scenario 2 (`$CAI_PYTHON`, else `python3`); `None` when no Python runs.
fn run_peer(base: &str, prompts: &Path) -> Option<Peer> {
    let python = std::env::var("CAI_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(python)
        .arg(format!("{root}/scripts/bench_peer.py"))
        .arg("--url")
        .arg(format!("{base}/v1"))
        .arg("--prompts")
        .arg(prompts)
        .arg("--constitution")
        .arg(format!("{root}/principles/harmless.json"))
        .args(["--concurrency", "256"])
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn run_cai(base: &str, prompts: &Path, out: &Path, extra: &[&str]) -> Outcome {
    let _ = std::fs::remove_dir_all(out);
    let start = Instant::now();
    let mut child = Command::new(cai_bin())
        .env_remove("OPENAI_API_KEY")
        .args([
            "generate",
            "--provider",
            "openai",
            "--quiet",
            "--model",
            "fake-model",
        ])
        .arg("--base-url")
        .arg(format!("{base}/v1"))
        .arg("--prompts")
        .arg(prompts)
        .arg("--constitution")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/principles/harmless.json"
        ))
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cai starts (build it with cargo build --release)");
    let pid = child.id();
    let mut peak = 0;
    let mut cpu_s = 0.0;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if let Some(kb) = peak_rss_kib(pid) {
            peak = peak.max(kb);
        }
        if let Some(c) = cpu_seconds(pid) {
            cpu_s = c;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = start.elapsed().as_secs_f64();
    let manifest = std::fs::read(out.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Outcome {
        wall,
        manifest,
        peak_rss_kb: peak,
        cpu_s,
        code,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only 2,5` runs just those scenarios (3 comes with 1).
    let args: Vec<String> = std::env::args().collect();
    let only: Option<Vec<u32>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let want = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    println!(
        "cai engine benchmark ({}; binary {})",
        if quick { "quick" } else { "full" },
        cai_bin().display()
    );

    // 1 + 3: throughput ratio and time to first row.
    if want(1) {
        let n = 10_000 / scale;
        let prompts = d.join("p10k.csv");
        write_prompts(&prompts, n);
        let latency = Duration::from_millis(200);
        let capacity = 256;
        let fake = rt
            .block_on(FakeServer::start(FakeConfig {
                latency,
                capacity: Some(capacity),
                ..FakeConfig::default()
            }))
            .expect("fake server");
        let o = run_cai(
            &fake.url(),
            &prompts,
            &d.join("o1"),
            &["--concurrency", "256"],
        );
        let requests = o.manifest["requests"]["requests"].as_f64().unwrap_or(0.0);
        let run_wall = o.manifest["wall_time_s"].as_f64().unwrap_or(o.wall);
        let ideal = capacity as f64 / latency.as_secs_f64();
        let achieved = requests / run_wall;
        println!(
        "1. throughput: {n} prompts x 1 round = {requests} requests in {run_wall:.2} s (process {:.2} s, exit {}): {achieved:.0} req/s vs ideal {ideal:.0} req/s -> ratio {:.3} (goal >= 0.95)",
        o.wall, o.code, achieved / ideal
    );
        let first = o.manifest["first_row_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "3. time to first row: {first:.3} s vs 3 x latency = {:.3} s -> {:.2}x (goal < 2x)",
            3.0 * latency.as_secs_f64(),
            first / (3.0 * latency.as_secs_f64())
        );
        rt.block_on(fake.shutdown());
    }

    // 2: overhead at latency 0; the headline.
    if want(2) {
        let n2 = 10_000 / scale;
        let prompts2 = d.join("p10k_0.csv");
        write_prompts(&prompts2, n2);
        let fake = rt
            .block_on(FakeServer::start(FakeConfig::default()))
            .expect("fake");
        let o = run_cai(
            &fake.url(),
            &prompts2,
            &d.join("o2"),
            &["--concurrency", "256"],
        );
        let requests = o.manifest["requests"]["requests"].as_f64().unwrap_or(0.0);
        let run_wall = o.manifest["wall_time_s"].as_f64().unwrap_or(o.wall);
        println!(
            "2. HEADLINE: {:.1} us of cai CPU per request at latency 0 (goal <= 45) -- {requests} requests, {:.2} CPU-s, {run_wall:.2} s wall = {:.0} req/s (client and fake share the machine), peak RSS {:.1} MB, exit {}",
            1e6 * o.cpu_s / requests.max(1.0),
            o.cpu_s,
            requests / run_wall,
            o.peak_rss_kb as f64 / 1024.0,
            o.code
        );
        match run_peer(&fake.url(), &prompts2) {
            Some(p) => println!(
                "2. peer: the asyncio client of scripts/bench_peer.py on the same fake: {:.1} us CPU per request ({} requests, {:.2} CPU-s, {:.2} s wall, mean body {:.0} B) -- cai / peer = {:.2}",
                1e6 * p.cpu_s / p.requests.max(1.0),
                p.requests,
                p.cpu_s,
                p.wall_s,
                p.mean_body_bytes,
                (o.cpu_s / requests.max(1.0)) / (p.cpu_s / p.requests.max(1.0))
            ),
            None => println!("2. peer: not run (set CAI_PYTHON to a Python 3 to run scripts/bench_peer.py)"),
        }
        rt.block_on(fake.shutdown());
    }

    // 4: rpm limit for two minutes.
    if want(4) {
        let secs = if quick { 20.0 } else { 120.0 };
        let n4 = (secs * 10.0 / 3.0) as usize;
        let prompts4 = d.join("p_rpm.csv");
        write_prompts(&prompts4, n4);
        let fake = rt
            .block_on(FakeServer::start(FakeConfig {
                rpm_limit: Some(600),
                ..FakeConfig::default()
            }))
            .expect("fake");
        let o = run_cai(
            &fake.url(),
            &prompts4,
            &d.join("o4"),
            &["--concurrency", "64", "--rpm", "600"],
        );
        let s = fake.stats();
        let run_wall = o.manifest["wall_time_s"].as_f64().unwrap_or(o.wall);
        let rate = s.ok as f64 / run_wall;
        println!(
        "4. --rpm 600 against a 600 rpm server: {} answered in {run_wall:.1} s = {:.1}% of the limit (goal >= 97%); 429s {} of {} requests = {:.2}% (goal < 1%)",
        s.ok,
        100.0 * rate / 10.0,
        s.rate_limited,
        s.chat_requests,
        100.0 * s.rate_limited as f64 / s.chat_requests.max(1) as f64
    );
        rt.block_on(fake.shutdown());
    }

    // 5: memory, CPU and disk per prompt as the run grows.
    if want(5) {
        let fake = rt
            .block_on(FakeServer::start(FakeConfig::default()))
            .expect("fake");
        let sizes: Vec<usize> = args
            .iter()
            .position(|a| a == "--sizes")
            .and_then(|i| args.get(i + 1))
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10_000 / scale, 100_000 / scale, 1_000_000 / scale]);
        let mut first: Option<f64> = None;
        for n in sizes {
            let p = d.join(format!("mem{n}.csv"));
            write_prompts(&p, n);
            let out = d.join(format!("o5_{n}"));
            let o = run_cai(&fake.url(), &p, &out, &["--concurrency", "256"]);
            let requests = o.manifest["requests"]["requests"].as_f64().unwrap_or(0.0);
            let mb = o.peak_rss_kb as f64 / 1024.0;
            let base = *first.get_or_insert(mb);
            let disk: Vec<String> = [
                "sft.csv",
                "sft.jsonl",
                "preference.csv",
                "preference.jsonl",
                "trace.jsonl",
                "rejects.jsonl",
                ".cai/progress.jsonl",
                ".cai/journal.jsonl",
            ]
            .iter()
            .map(|f| {
                let len = std::fs::metadata(out.join(f)).map_or(0, |m| m.len());
                format!("{f} {:.0}", len as f64 / n as f64)
            })
            .collect();
            println!(
                "5. {n} prompts: peak RSS {mb:.1} MB ({:+.1} % vs the first size; goal <= 64 MB and within 10 %), {:.1} us CPU per request ({requests} requests, {:.1} CPU-s, {:.1} s wall, exit {}); bytes per finished prompt: {}",
                100.0 * (mb / base - 1.0),
                1e6 * o.cpu_s / requests.max(1.0),
                o.cpu_s,
                o.wall,
                o.code,
                disk.join(", ")
            );
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_file(&p);
        }
        rt.block_on(fake.shutdown());
    }
}
