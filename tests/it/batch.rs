//! Batch APIs: `--batch` stages a run through the OpenAI Batches and the
//! Anthropic Message Batches APIs of the in-repo fake, and
//! `--batch-export`/`--batch-import` hand stages over as files. The rows
//! are those of a normal run; a killed run resumes its batches without
//! submitting anything twice; failed and expired items are retried.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cai_fake::{FakeConfig, FakeServer};
use serde_json::Value;

use crate::common::*;

/// `cai generate` against the fake's OpenAI routes, with the price-table
/// model `gpt-4o-mini` (so costs are known) and a fixed seed.
fn cmd(base: &str, prompts: &Path, out: &Path) -> Command {
    let mut c = fake_generate_model(base, "gpt-4o-mini", prompts, out);
    c.env_remove("ANTHROPIC_API_KEY")
        .args(["--seed", "7"])
        .stdout(Stdio::null());
    c
}

fn run(c: &mut Command) -> (i32, String) {
    let out = c.output().expect("cai runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// Every line of an output file, sorted: the rows, whatever their order.
fn lines(out: &Path, file: &str) -> BTreeSet<String> {
    std::fs::read_to_string(out.join(file))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn fake(cfg: FakeConfig) -> FakeServer {
    FakeServer::start(cfg).await.expect("fake starts")
}

fn same_rows(a: &Path, b: &Path) {
    for file in [
        "sft.csv",
        "sft.jsonl",
        "preference.csv",
        "preference.jsonl",
        "trace.jsonl",
    ] {
        assert_eq!(lines(a, file), lines(b, file), "{file} differs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_run_writes_exactly_the_rows_of_a_normal_run() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 12);
    for rounds in [1u64, 2] {
        let live = fake(FakeConfig::default()).await;
        let normal = dir.path().join(format!("normal-{rounds}"));
        let (code, err) =
            run(cmd(&live.url(), &prompts, &normal).args(["--rounds", &rounds.to_string()]));
        assert_eq!(code, 0, "{err}");

        let batches = fake(FakeConfig {
            batch_delay: Duration::from_millis(150),
            ..FakeConfig::default()
        })
        .await;
        let batched = dir.path().join(format!("batch-{rounds}"));
        let (code, err) = run(cmd(&batches.url(), &prompts, &batched)
            .args(["--rounds", &rounds.to_string()])
            .args(["--batch", "--batch-poll", "0.05"]));
        assert_eq!(code, 0, "{err}");
        same_rows(&normal, &batched);
        assert_eq!(read_csv(&batched.join("sft.csv")).len(), 12);

        // Staged: initial, then critique and revision per round, each one batch.
        let stages = 1 + 2 * rounds;
        let s = batches.stats();
        assert_eq!(s.chat_requests, 0, "nothing is sent outside the batches");
        assert_eq!(s.batches_created, stages);
        assert_eq!(s.batch_files, stages);
        assert_eq!(s.batch_items, 12 * stages, "each request submitted once");
        assert_eq!(live.stats().chat_requests, 12 * stages);

        let (m, n) = (manifest(&batched), manifest(&normal));
        assert_eq!(m["status"], "done");
        assert_eq!(m["batch"]["api"], "openai");
        assert_eq!(m["batch"]["stages"], stages);
        assert_eq!(m["batch"]["requests_submitted"], 12 * stages);
        assert_eq!(m["batch"]["price_factor"], 0.5);
        assert_eq!(m["price"]["input_per_m"], 0.075);
        assert_eq!(m["price"]["output_per_m"], 0.3);
        assert_eq!(m["requests"]["tokens_out"], n["requests"]["tokens_out"]);
        let (cb, cn) = (
            m["cost_usd"].as_f64().unwrap(),
            n["cost_usd"].as_f64().unwrap(),
        );
        // Each request's cost is rounded to a micro-dollar.
        let slack = 1e-6 * (12 * stages) as f64;
        assert!(
            cn > 0.0 && (cb - cn / 2.0).abs() <= slack,
            "batch {cb} vs normal {cn}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_message_batches_complete_a_run_at_the_batch_price() {
    let batches = fake(FakeConfig {
        batch_delay: Duration::from_millis(100),
        require_key: Some("sk-ant-test".into()),
        ..FakeConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 6);
    let out = dir.path().join("out");
    let o = cai()
        .env("ANTHROPIC_API_KEY", "sk-ant-test")
        .args(["generate", "--provider", "anthropic", "--quiet"])
        .args(["--model", "claude-haiku-4-5", "--base-url", &batches.url()])
        .args(["--batch", "--batch-poll", "0.05"])
        .args(harmless_files(&prompts, &out))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(!err.contains("sk-ant-test"));
    let rows = read_csv(&out.join("sft.csv"));
    assert_eq!(rows.len(), 6);
    assert!(rows
        .iter()
        .all(|r| r[2].starts_with("Revision") || !r[2].is_empty()));
    let s = batches.stats();
    assert_eq!(
        (s.batches_created, s.batch_items, s.unauthorized),
        (3, 18, 0)
    );
    let m = manifest(&out);
    assert_eq!(m["batch"]["api"], "anthropic");
    assert_eq!(m["price"]["input_per_m"], 0.5);
    assert_eq!(m["price"]["output_per_m"], 2.5);
}

/// Waits until the run directory records `n` submitted batches.
fn wait_batches(child: &mut std::process::Child, out: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = std::fs::read(out.join(".cai/batch/state.json")).ok();
        let count = state
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["batches"].as_array().map(Vec::len))
            .unwrap_or(0);
        if count >= n {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("cai exited ({status}) before submitting {n} batches");
        }
        assert!(Instant::now() < deadline, "no batch submitted within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_while_polling_resumes_the_same_batches_and_submits_nothing_twice() {
    let batches = fake(FakeConfig {
        batch_delay: Duration::from_millis(1500),
        ..FakeConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 10);
    let out = dir.path().join("out");
    // Killed while polling the first stage, then while polling the second.
    for (submitted, created) in [(1, 1), (2, 2)] {
        let mut child = cmd(&batches.url(), &prompts, &out)
            .args(["--batch", "--batch-poll", "0.05"])
            .spawn()
            .unwrap();
        wait_batches(&mut child, &out, submitted);
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(batches.stats().batches_created, created);
    }
    let (code, err) =
        run(cmd(&batches.url(), &prompts, &out).args(["--batch", "--batch-poll", "0.05"]));
    assert_eq!(code, 0, "{err}");
    let s = batches.stats();
    assert_eq!(s.batches_created, 3, "one batch per stage, none twice");
    assert_eq!(s.batch_items, 30, "no request submitted twice");
    assert_eq!(s.chat_requests, 0);

    let live = fake(FakeConfig::default()).await;
    let normal = dir.path().join("normal");
    assert_eq!(run(&mut cmd(&live.url(), &prompts, &normal)).0, 0);
    same_rows(&normal, &out);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_expired_items_are_resubmitted_and_a_hopeless_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 20);
    let live = fake(FakeConfig::default()).await;
    let normal = dir.path().join("normal");
    assert_eq!(run(&mut cmd(&live.url(), &prompts, &normal)).0, 0);

    // Each faulty item fails (or expires) once, then is answered.
    let flaky = fake(FakeConfig {
        batch_fail_every: Some(3),
        batch_expire_every: Some(4),
        ..FakeConfig::default()
    })
    .await;
    let out = dir.path().join("flaky");
    let (code, err) =
        run(cmd(&flaky.url(), &prompts, &out).args(["--batch", "--batch-poll", "0.02"]));
    assert_eq!(code, 0, "{err}");
    same_rows(&normal, &out);
    let s = flaky.stats();
    let m = manifest(&out);
    let failed = m["batch"]["results_failed"].as_u64().unwrap();
    assert!(failed > 0, "the fake injected no fault: {s:?}");
    assert_eq!(s.batch_items, 60 + failed, "each failure resubmitted once");
    assert!(s.batches_created > 3, "resubmissions go in extra batches");

    // Items that fail every time are given up after 3 submissions.
    let broken = fake(FakeConfig {
        batch_fail_every: Some(3),
        batch_fault_times: 100,
        ..FakeConfig::default()
    })
    .await;
    let out = dir.path().join("broken");
    let (code, err) =
        run(cmd(&broken.url(), &prompts, &out).args(["--batch", "--batch-poll", "0.02"]));
    assert_eq!(code, 1, "done with rejects: {err}");
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    assert!(!rejects.is_empty());
    for r in &rejects {
        let why = r["reason"].as_str().unwrap();
        assert!(why.contains("failed this request 3 times"), "{why}");
    }
    assert_eq!(read_csv(&out.join("sft.csv")).len() + rejects.len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batch_combinations_exit_2_before_any_request() {
    let server = fake(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    let url = format!("{}/v1", server.url());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--provider".into(),
                "hf".into(),
                "--base-url".into(),
                server.url(),
                "--batch".into(),
            ],
            "provider `hf` has no batch API",
        ),
        (
            vec![
                "--provider".into(),
                "openai".into(),
                "--base-url".into(),
                url.clone(),
                "--base-url".into(),
                url.clone(),
                "--batch".into(),
            ],
            "not a pool",
        ),
        (
            vec![
                "--provider".into(),
                "openai".into(),
                "--base-url".into(),
                url.clone(),
                "--batch".into(),
                "--batch-export".into(),
                "x.jsonl".into(),
            ],
            "use one or the other",
        ),
        (
            vec![
                "--provider".into(),
                "anthropic".into(),
                "--base-url".into(),
                server.url(),
                "--batch-export".into(),
                "x.jsonl".into(),
            ],
            "OpenAI batch format",
        ),
        (
            vec![
                "--provider".into(),
                "openai".into(),
                "--base-url".into(),
                url.clone(),
                "--batch".into(),
                "--batch-poll".into(),
                "0".into(),
            ],
            "--batch-poll must be a positive",
        ),
        (
            vec![
                "--provider".into(),
                "openai".into(),
                "--base-url".into(),
                url.clone(),
                "--batch-import".into(),
                "missing.jsonl".into(),
            ],
            "--batch-import missing.jsonl: no such file",
        ),
    ];
    for (args, want) in cases {
        let out = dir.path().join("out");
        let o = cai()
            .env("ANTHROPIC_API_KEY", "k")
            .current_dir(dir.path())
            .args(["generate", "--quiet", "--model", "m"])
            .args(&args)
            .args(harmless_files(&prompts, &out))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(server.stats().requests, 0, "nothing sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_and_max_cost_use_the_batch_price() {
    let server = fake(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 4);
    let out = dir.path().join("out");
    let o = cmd(&server.url(), &prompts, &out)
        .args(["--batch", "--dry-run"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("$0.075 in / $0.3 out"), "{text}");
    assert!(text.contains("batch price"), "{text}");

    // A cap below the first stage's worst case: nothing is submitted.
    let (code, err) =
        run(cmd(&server.url(), &prompts, &out).args(["--batch", "--max-cost", "0.00001"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--max-cost"), "{err}");
    assert_eq!(server.stats().requests, 0);
}

/// Runs an exported stage the way `vllm run_batch` would: each line's body
/// posted to the endpoint, written back in the OpenAI batch output format.
async fn run_stage(base: &str, input: &Path, output: &Path) -> usize {
    let client = reqwest::Client::new();
    let mut out = String::new();
    let text = std::fs::read_to_string(input).unwrap();
    for line in text.lines() {
        let req: Value = serde_json::from_str(line).unwrap();
        assert_eq!(req["method"], "POST");
        assert_eq!(req["url"], "/v1/chat/completions");
        let body: Value = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&req["body"])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let result = serde_json::json!({
            "id": "vllm-x", "custom_id": req["custom_id"],
            "response": {"status_code": 200, "request_id": "r", "body": body}, "error": null,
        });
        out.push_str(&result.to_string());
        out.push('\n');
    }
    std::fs::write(output, out).unwrap();
    text.lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_and_import_carry_a_run_through_files_like_vllm_run_batch() {
    let server = fake(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 5);
    let normal = dir.path().join("normal");
    assert_eq!(run(&mut cmd(&server.url(), &prompts, &normal)).0, 0);

    let out = dir.path().join("out");
    let stage = dir.path().join("stage.jsonl");
    let results = dir.path().join("results.jsonl");
    let (code, err) = run(cmd(&server.url(), &prompts, &out)
        .arg("--batch-export")
        .arg(&stage));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("waiting for batch results"), "{err}");
    let mut sizes = Vec::new();
    for _ in 0..5 {
        let n = run_stage(&server.url(), &stage, &results).await;
        if n == 0 {
            break;
        }
        sizes.push(n);
        let (code, err) = run(cmd(&server.url(), &prompts, &out)
            .arg("--batch-import")
            .arg(&results)
            .arg("--batch-export")
            .arg(&stage));
        assert_eq!(code, 0, "{err}");
        if manifest(&out)["status"] == "done" {
            break;
        }
    }
    assert_eq!(sizes, [5, 5, 5], "initial, critique, revision");
    assert_eq!(manifest(&out)["status"], "done");
    assert_eq!(
        std::fs::read(&stage).unwrap(),
        b"",
        "an empty export ends a loop"
    );
    same_rows(&normal, &out);
}
