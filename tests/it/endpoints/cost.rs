//! `--dry-run` estimates and sends nothing; `--max-cost` stops before the
//! cap and resumes.

use super::presets::chat_server;
use super::support::*;
use crate::common::harmless_files;

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_on_the_shipped_samples_estimates_and_sends_nothing() {
    let server = chat_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let a = cai_in(dir.path())
        .args(["generate", "--provider", "openai", "--model", "gpt-4o-mini"])
        .arg("--base-url")
        .arg(format!("{}/v1", server.uri()))
        .args(harmless_files(&repo("prompts/harmless_sample.csv"), &out))
        .args(["--rounds", "2", "--dry-run", "--max-cost", "1"])
        .assert()
        .code(0);
    let text = stdout_of(&a);
    let n = cai::input::prompts::validate(&cai::input::PromptSpec::new(repo(
        "prompts/harmless_sample.csv",
    )))
    .unwrap();
    let row = |stage: &str| -> Vec<u64> {
        text.lines()
            .find(|l| l.starts_with(stage))
            .unwrap_or_else(|| panic!("no {stage} row:\n{text}"))
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect()
    };
    assert_eq!(row("initial")[0], n);
    assert_eq!(row("critique")[0], 2 * n);
    assert_eq!(row("revision")[0], 2 * n);
    assert_eq!(row("total")[0], 5 * n);
    // Later stages carry the conversation so far: more input per request.
    assert!(row("revision")[1] > row("critique")[1]);
    assert!(row("critique")[1] / (2 * n) > row("initial")[1] / n);
    assert!(text.contains("price table: gpt-4o-mini as of"), "{text}");
    assert!(text.contains("estimated cost: $"), "{text}");
    assert!(text.contains("--max-cost $1: the whole run fits"), "{text}");
    assert!(text.contains("4 characters a token"), "{text}");
    assert_eq!(server.received_requests().await.unwrap().len(), 0);
    assert!(!out.exists(), "a dry run writes nothing");

    // An unknown model says how to give a price.
    let a = cai_in(dir.path())
        .args(["generate", "--provider", "vllm", "--model", "local-model"])
        .arg("--base-url")
        .arg(format!("{}/v1", server.uri()))
        .arg("--prompts")
        .arg(repo("prompts/harmless_sample.csv"))
        .arg("--constitution")
        .arg(repo("principles/harmless.json"))
        .args(["--out", "o", "--dry-run"])
        .assert()
        .code(0);
    assert!(stdout_of(&a).contains("pass --price-in and --price-out"));
    assert_eq!(server.received_requests().await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_cost_stops_before_the_cap_and_resumes() {
    // Every reply reports 5 output tokens; at $1000 per million output
    // tokens (and nothing for input) a reply costs $0.005, and a request
    // reserves its worst case, 100 tokens = $0.10, before it is sent.
    let server = chat_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 10);
    let out = dir.path().join("out");
    let base = format!("{}/v1", server.uri());
    let cmd = |cap: &str| {
        let mut c = cai_in(dir.path());
        c.args(generate_args(&prompts, &out))
            .args(["--provider", "vllm", "--model", "m", "--base-url", &base])
            .args(["--concurrency", "1", "--max-tokens", "100"])
            .args(["--price-in", "0", "--price-out", "1000", "--max-cost", cap]);
        c
    };
    let a = cmd("0.12").assert().code(3);
    let err = stderr_of(&a);
    assert!(err.contains("--max-cost"), "{err}");
    // $0.02 spent + $0.10 reserved = the cap: the fifth request still fits,
    // the sixth would not.
    assert_eq!(server.received_requests().await.unwrap().len(), 5);
    let m = manifest(&out);
    assert!(m["status"].as_str().unwrap().starts_with("aborted"), "{m}");
    assert_eq!(m["cost_usd"], 0.025);
    assert!(m["cost_usd"].as_f64().unwrap() <= 0.12);
    assert_eq!(m["max_cost"], 0.12);
    assert_eq!(m["requests"]["cost_micro_usd"], 25_000);

    // A larger cap resumes without paying twice for what is done.
    let a = cmd("1").assert().code(0);
    assert!(
        stderr_of(&a).contains("cai: cost $0.1250"),
        "{}",
        stderr_of(&a)
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 30);
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 10);
    assert_eq!(manifest(&out)["cost_usd"], 0.125);

    // A cap needs a price.
    cai_in(dir.path())
        .args(generate_args(&prompts, &dir.path().join("o2")))
        .args(["--provider", "vllm", "--model", "m", "--base-url", &base])
        .args(["--max-cost", "1"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--max-cost needs a price"));
}
