//! Memory of a long run stays flat: what `cai generate` holds must not grow
//! with the number of prompts (see docs/engine.md, "Memory and disk").
//!
//! Slow in a debug build (600,000 requests), so ignored by default; run it
//! with a release build:
//!
//! ```text
//! cargo test --release --test it -- --ignored memory_
//! ```

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cai_fake::process::peak_rss_kib;
use cai_fake::{FakeConfig, FakeServer};

use crate::common::*;

fn tiny_prompts(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join(format!("tiny{n}.csv"));
    let mut text = String::with_capacity(n * 16);
    text.push_str("id,prompt\n");
    for i in 0..n {
        text.push_str(&format!("t{i},q{i}?\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `cai generate` over `n` tiny prompts; returns (exit code, peak KiB).
fn peak_of_run(base: &str, dir: &Path, n: usize) -> (i32, u64) {
    let prompts = tiny_prompts(dir, n);
    let out = dir.join(format!("out{n}"));
    // The shipped constitution, as every engine test uses: its few-shots
    // make each request a few kilobytes, like a real run's.
    let mut child = fake_generate(base, &prompts, &out)
        .args(["--concurrency", "256"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cai starts");
    let pid = child.id();
    let mut peak = 0;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        // VmHWM only grows: the last reading before exit is the peak, up
        // to the last 20 ms.
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, peak)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "600,000 requests: run with --release (docs/engine.md)"]
async fn memory_of_a_200k_prompt_run_stays_near_that_of_a_2k_one() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = fake.url();
    let (small_code, small) = {
        let (b, d) = (base.clone(), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || peak_of_run(&b, &d, 2_000))
            .await
            .unwrap()
    };
    let (big_code, big) = {
        let (b, d) = (base.clone(), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || peak_of_run(&b, &d, 200_000))
            .await
            .unwrap()
    };
    assert_eq!((small_code, big_code), (0, 0));
    let committed = std::fs::read_to_string(dir.path().join("out200000/.cai/progress.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(
        committed, 200_001,
        "every prompt committed (and the header)"
    );
    // 100× the prompts: at most 15 % (and 4 MiB of slack for the
    // allocator) above the small run, and under 64 MiB in all. Before the
    // per-prompt structures went, 200,000 prompts held ~30 MiB more.
    // Not the issue's 10 %: the small run ends while its in-flight
    // buffers are still growing to their steady size (2,000 tiny prompts
    // peak at 34-37 MiB, 10,000 at 38-40, 200,000 at 41-43 on a loaded
    // 2-core machine), so 10 % would fail on noise; `bench_engine`
    // scenario 5 compares 10,000 with 1,000,000 prompts instead.
    let bound = (small * 115 / 100 + 4096).min(64 << 10);
    eprintln!("peak RSS: 2,000 prompts {small} KiB, 200,000 prompts {big} KiB (bound {bound} KiB)");
    assert!(
        big <= bound,
        "peak RSS {big} KiB over 200,000 prompts is above {bound} KiB (2,000 prompts: {small} KiB)"
    );
    // A finished run's journal holds nothing: every reply is in the rows.
    let journal = std::fs::metadata(dir.path().join("out200000/.cai/journal.jsonl"))
        .unwrap()
        .len();
    assert_eq!(journal, 0, "the journal of a finished run is compacted");
    fake.shutdown().await;
}
