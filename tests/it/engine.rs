//! The engine under faults, limits, budgets and crashes, against the
//! in-repo fake endpoint (`cai_fake`) on 127.0.0.1.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::common::*;

fn run(c: &mut std::process::Command) -> (i32, String) {
    let out = c.output().expect("cai runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// Sorted (id, prompt, completion) rows of `sft.csv`, asserting unique ids.
fn sft_rows(out: &Path) -> BTreeSet<Vec<String>> {
    let rows = read_csv(&out.join("sft.csv"));
    let ids: HashSet<&String> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(ids.len(), rows.len(), "duplicate ids in sft.csv");
    rows.into_iter().collect()
}

fn committed(out: &Path) -> usize {
    std::fs::read_to_string(out.join(".cai/progress.jsonl"))
        .map(|s| s.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// Waits until at least `rows` prompts are committed, then returns.
fn wait_rows(child: &mut Child, out: &Path, rows: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(out) < rows {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill point"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_prompt_ends_as_a_row_or_a_reject_under_faults() {
    let fake = FakeServer::start(FakeConfig {
        rate_429: 0.10,
        rate_500: 0.02,
        rate_reset: 0.01,
        rate_malformed: 0.01,
        rate_hang: 0.003,
        fault_retry_after: Duration::ZERO,
        hang_for: Duration::from_secs(20),
        seed: 11,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 300);
    let out = dir.path().join("out");
    let (code, stderr) = run(fake_generate(&fake.url(), &prompts, &out).args([
        "--timeout",
        "1",
        "--concurrency",
        "32",
    ]));
    assert!(code == 0 || code == 1, "exit {code}: {stderr}");
    let done: Vec<String> = read_csv(&out.join("sft.csv"))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let rejected: Vec<String> = read_jsonl(&out.join("rejects.jsonl"))
        .iter()
        .map(|r| {
            assert!(!r["reason"].as_str().unwrap().is_empty());
            r["id"].as_str().unwrap().to_string()
        })
        .collect();
    let all: HashSet<&String> = done.iter().chain(&rejected).collect();
    assert_eq!(
        all.len(),
        done.len() + rejected.len(),
        "an id appears twice"
    );
    assert_eq!(all.len(), 300, "every prompt is a row or a reject");
    let s = fake.stats();
    let sent = s.chat_requests as f64;
    assert!(sent <= 1.3 * 900.0, "{sent} requests for 900 fault-free");
    assert!(
        s.injected_429 > 0 && s.resets > 0 && s.malformed > 0,
        "{s:?}"
    );
    let m = manifest(&out);
    assert!(m["requests"]["retries"].as_u64().unwrap() > 0);
    assert!(m["requests"]["throttled_429"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_several_points_then_resume_gives_the_same_rows() {
    let fake = fake_with_latency(3).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 200);

    let reference = dir.path().join("reference");
    let (code, err) =
        run(fake_generate(&fake.url(), &prompts, &reference).args(["--concurrency", "8"]));
    assert_eq!(code, 0, "{err}");
    let want = sft_rows(&reference);
    let reference_requests = fake.stats().chat_requests;
    assert_eq!(reference_requests, 600);

    let out = dir.path().join("out");
    for kill_at in [10, 70, 150] {
        let mut child = fake_generate(&fake.url(), &prompts, &out)
            .args(["--concurrency", "8"])
            .spawn()
            .unwrap();
        wait_rows(&mut child, &out, kill_at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args(["--concurrency", "8"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sft_rows(&out), want);
    assert_eq!(read_jsonl(&out.join("sft.jsonl")).len(), 200);
    assert_eq!(read_jsonl(&out.join("trace.jsonl")).len(), 200);
    let resent = fake.stats().chat_requests - 2 * reference_requests;
    // Only requests in flight at each kill (at most 8) can be sent again.
    assert!(resent <= 3 * 8, "{resent} requests sent again");
    assert!(manifest(&out)["prompts_already_done"].as_u64().unwrap() >= 150);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_cleanly_with_exit_3_and_resumes() {
    let fake = fake_with_latency(20).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 150);
    let reference = dir.path().join("reference");
    assert_eq!(
        run(fake_generate(&fake.url(), &prompts, &reference).args(["--concurrency", "4"])).0,
        0
    );
    let out = dir.path().join("out");
    let mut child = fake_generate(&fake.url(), &prompts, &out)
        .args(["--concurrency", "4"])
        .spawn()
        .unwrap();
    wait_rows(&mut child, &out, 20);
    let sent_at_signal = Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        sent_at_signal.elapsed() < Duration::from_secs(5),
        "stopped within seconds"
    );
    assert_eq!(status.code(), Some(3));
    let m = manifest(&out);
    assert!(
        m["status"]
            .as_str()
            .unwrap()
            .starts_with("aborted: interrupted"),
        "{m}"
    );
    let partial = sft_rows(&out).len();
    assert!(partial < 150);
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args(["--concurrency", "4"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(sft_rows(&out), sft_rows(&reference));
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_settings_are_refused_unless_forced() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 5);
    let out = dir.path().join("out");
    assert_eq!(run(&mut fake_generate(&fake.url(), &prompts, &out)).0, 0);
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args([
        "--temperature",
        "0.2",
        "--rounds",
        "2",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("Changed: parameters"), "{err}");
    assert!(err.contains("rounds: 1 → 2"), "{err}");
    assert!(err.contains("--force"), "{err}");
    let before = fake.stats().chat_requests;
    assert_eq!(before, 15, "the refused run sent nothing");
    let (code, err) =
        run(fake_generate(&fake.url(), &prompts, &out).args(["--temperature", "0.2", "--force"]));
    assert_eq!(code, 0, "{err}");
    // Every prompt was already done: nothing to send.
    assert_eq!(fake.stats().chat_requests, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_budget_stops_and_the_resume_pays_nothing_twice() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 30);
    let out = dir.path().join("out");
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args([
        "--max-requests",
        "25",
        "--concurrency",
        "4",
    ]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--max-requests"), "{err}");
    assert_eq!(fake.stats().chat_requests, 25);
    let (code, err) = run(&mut fake_generate(&fake.url(), &prompts, &out));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        fake.stats().chat_requests,
        90,
        "journaled requests are not sent again"
    );
    assert_eq!(sft_rows(&out).len(), 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_rate_breaker_stops_a_broken_endpoint() {
    let fake = FakeServer::start(FakeConfig {
        rate_500: 1.0,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 500);
    let out = dir.path().join("out");
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args([
        "--max-retries",
        "0",
        "--concurrency",
        "4",
    ]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("error-rate breaker"), "{err}");
    let sent = fake.stats().chat_requests;
    assert!(
        (26..=60).contains(&sent),
        "{sent} requests before the breaker tripped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_rpm_keeps_a_rate_limited_server_free_of_429s() {
    let fake = FakeServer::start(FakeConfig {
        rpm_limit: Some(600),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 14);
    let out = dir.path().join("out");
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args([
        "--rpm",
        "600",
        "--concurrency",
        "16",
    ]));
    assert_eq!(code, 0, "{err}");
    let s = fake.stats();
    assert_eq!(s.chat_requests, 42);
    assert_eq!(s.rate_limited, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn advertised_limits_and_429s_slow_the_whole_client() {
    let fake = FakeServer::start(FakeConfig {
        rpm_limit: Some(1200),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 40);
    let out = dir.path().join("out");
    // No --rpm: the client learns the limit (20/s) from the x-ratelimit-*
    // headers of the first replies. The first 8 requests fit the server's
    // one-second burst; after that the learned limit keeps the client
    // under it. Without learning, 8 in flight at latency 0 would far
    // exceed 20/s and most requests would get 429s.
    let start = Instant::now();
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args(["--concurrency", "8"]));
    assert_eq!(code, 0, "{err}");
    let s = fake.stats();
    let ok = 120;
    assert_eq!(s.ok, ok);
    assert!(s.rate_limited * 20 <= ok, "too many 429s: {s:?}");
    // 120 requests at a learned 20/s take at least ~5 s.
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_cut_off_are_widened_once_then_rejected() {
    let fake = FakeServer::start(FakeConfig {
        rate_length: 1.0,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 5);
    let out = dir.path().join("out");
    let (code, err) = run(fake_generate(&fake.url(), &prompts, &out).args(["--max-tokens", "100"]));
    assert_eq!(code, 1, "{err}");
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    assert_eq!(rejects.len(), 5);
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_tokens 200"),
        "{}",
        rejects[0]
    );
    assert_eq!(
        fake.stats().chat_requests,
        10,
        "one widened retry per prompt"
    );
}
