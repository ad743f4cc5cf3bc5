//! One run per run directory, input findings refused before any request,
//! and a dry run that counts what a real run sends.

use std::path::Path;
use std::time::{Duration, Instant};

use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::common::*;

fn output(c: &mut std::process::Command) -> (i32, String, String) {
    let o = c.output().expect("cai runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn committed(out: &Path) -> usize {
    std::fs::read_to_string(out.join(".cai/progress.jsonl"))
        .map(|s| s.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_same_directory_is_refused_and_the_first_finishes_alone() {
    let fake = fake_with_latency(20).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 120);
    let out = dir.path().join("out");
    let mut first = fake_generate(&fake.url(), &prompts, &out)
        .args(["--concurrency", "4"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&out) < 1 {
        assert!(Instant::now() < deadline, "the first run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent_before = fake.stats().chat_requests;
    let (code, _, err) =
        output(fake_generate(&fake.url(), &prompts, &out).args(["--concurrency", "4"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&out.display().to_string()), "{err}");
    assert!(err.contains("in use by another cai run"), "{err}");
    assert!(err.contains(&format!("process {}", first.id())), "{err}");
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rows = read_csv(&out.join("sft.csv"));
    let ids: std::collections::HashSet<&String> = rows.iter().map(|r| &r[0]).collect();
    assert_eq!(rows.len(), 120);
    assert_eq!(ids.len(), 120, "duplicate rows");
    // Only the first run's requests: 3 per prompt.
    assert_eq!(fake.stats().chat_requests, 360);
    assert!(sent_before <= 360);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_with_sigkill_leaves_no_lock_behind() {
    let fake = fake_with_latency(10).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 60);
    let out = dir.path().join("out");
    let mut child = fake_generate(&fake.url(), &prompts, &out)
        .args(["--concurrency", "2"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&out) < 5 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no chance to unlock
    child.wait().unwrap();
    let (code, _, err) = output(&mut fake_generate(&fake.url(), &prompts, &out));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("in use"), "{err}");
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 60);
}

#[test]
fn out_naming_a_file_is_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let file = dir.path().join("taken.txt");
    std::fs::write(&file, "keep me").unwrap();
    // No server listens here: a request would fail differently.
    let (code, _, err) = output(&mut fake_generate("http://127.0.0.1:9", &prompts, &file));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a file, not a directory"), "{err}");
    assert!(err.contains("taken.txt"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn an_unterminated_quote_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "id,prompt\n1,fine\n2,\"never closed\n3,lost\n").unwrap();
    let out = dir.path().join("out");
    let (code, _, err) = output(&mut fake_generate("http://127.0.0.1:9", &prompts, &out));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p.csv:3"), "{err}");
    assert!(err.contains("never closed"), "{err}");
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn negative_counts_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    for (flag, value) in [
        ("--rounds", "-1"),
        ("--samples", "-3"),
        ("--concurrency", "-2"),
        ("--limit", "-5"),
    ] {
        let out = dir.path().join("out");
        let (code, _, err) =
            output(fake_generate("http://127.0.0.1:9", &prompts, &out).args([flag, value]));
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(err.contains(value), "{flag}: {err}");
        assert!(!err.contains("unexpected argument"), "{flag}: {err}");
    }
}

fn dry_run_requests(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total line:\n{stdout}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The dry run's request count equals what a real run sends, for the
/// judge tournament with sampled answers and for several rounds.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_counts_exactly_what_a_run_sends() {
    let cases: [&[&str]; 3] = [
        &["--preference", "judge", "--samples", "4"],
        &["--rounds", "2"],
        &[
            "--preference",
            "judge",
            "--rounds",
            "2",
            "--judge-samples",
            "3",
        ],
    ];
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 6);
    for (i, extra) in cases.iter().enumerate() {
        let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
        let out = dir.path().join(format!("out{i}"));
        let (code, stdout, err) = output(
            fake_generate(&fake.url(), &prompts, &out)
                .args(*extra)
                .arg("--dry-run"),
        );
        assert_eq!(code, 0, "{extra:?}: {err}");
        assert!(!out.exists(), "a dry run writes nothing");
        assert_eq!(fake.stats().chat_requests, 0, "a dry run sends nothing");
        let predicted = dry_run_requests(&stdout);
        let (code, _, err) = output(fake_generate(&fake.url(), &prompts, &out).args(*extra));
        assert!(code == 0 || code == 1, "{extra:?}: {err}");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(
            manifest["requests"]["failed"].as_u64(),
            Some(0),
            "{extra:?}"
        );
        assert_eq!(
            fake.stats().chat_requests,
            predicted,
            "{extra:?}: dry run said {predicted}\n{stdout}"
        );
    }
}

#[test]
fn dry_run_needs_no_key_and_says_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    let out = dir.path().join("out");
    let o = cai()
        .env_remove("MY_SECRET_KEY")
        .args(["generate", "--provider", "openai", "--model", "gpt-4o-mini"])
        .args(["--api-key-env", "MY_SECRET_KEY", "--dry-run"])
        .args(harmless_files(&prompts, &out))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("MY_SECRET_KEY"), "{stdout}");
    assert!(stdout.contains("note:"), "{stdout}");
    assert_eq!(dry_run_requests(&stdout), 9);
    assert!(!out.exists());
}
