//! Shared test support: deterministic fake replies for wiremock servers,
//! fixture paths, and readers for the output files.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn cai() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("cai").expect("binary builds");
    // Tests must not pick a provider from the developer's environment.
    c.env_remove("OPENAI_API_KEY").env_remove("HF_TOKEN");
    c
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The reply a fake model gives to a conversation whose last user turn is
/// `last`: labelled by stage (recognised from the test constitutions'
/// CRITIQUE-REQ / REVISION-REQ markers) and unique per conversation.
pub fn fake_reply(last: &str, whole: &str) -> String {
    let h = short_hash(whole);
    if last.contains("CRITIQUE-REQ") {
        format!("Critique: the answer has a flaw {h}.")
    } else if last.contains("REVISION-REQ") {
        format!("Revision: a better answer {h}.")
    } else {
        format!("An initial answer {h}.")
    }
}

/// The content of the last message of a chat request body (`""` when there
/// is none).
pub fn last_message(body: &Value) -> &str {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
}

/// OpenAI `chat/completions` with deterministic replies.
pub struct ChatReply;

impl Respond for ChatReply {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        assert!(body["messages"].is_array(), "messages");
        let last = last_message(&body);
        let text = fake_reply(last, &body["messages"].to_string());
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
}

/// TGI `generate` with deterministic replies; the last user turn is the
/// text after the last user header of a chatml or zephyr prompt.
pub struct TgiReply;

impl Respond for TgiReply {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let inputs = body["inputs"].as_str().expect("inputs");
        let last = inputs.rsplit("<|im_start|>user").next().unwrap_or(inputs);
        let last = last.rsplit("<|user|>").next().unwrap_or(last);
        let text = fake_reply(last, inputs);
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "generated_text": text,
            "details": {"finish_reason": "eos_token", "generated_tokens": 7}
        }))
    }
}

/// The in-repo fake with every reply delayed by `ms` milliseconds and no
/// other fault.
pub async fn fake_with_latency(ms: u64) -> cai_fake::FakeServer {
    cai_fake::FakeServer::start(cai_fake::FakeConfig {
        latency: std::time::Duration::from_millis(ms),
        ..cai_fake::FakeConfig::default()
    })
    .await
    .expect("fake server starts")
}

pub async fn openai_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ChatReply)
        .mount(&server)
        .await;
    server
}

pub async fn tgi_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/generate"))
        .respond_with(TgiReply)
        .mount(&server)
        .await;
    server
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

pub fn read_csv(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).expect("csv opens");
    r.records()
        .map(|rec| rec.expect("csv row").iter().map(str::to_string).collect())
        .collect()
}

/// Request bodies a wiremock server received, as JSON.
pub async fn bodies(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
        .collect()
}

/// `--prompts PROMPTS --constitution <the shipped harmless.json> --out OUT`:
/// the files of most test runs.
pub fn harmless_files(prompts: &Path, out: &Path) -> [std::ffi::OsString; 6] {
    [
        "--prompts".into(),
        prompts.into(),
        "--constitution".into(),
        repo("principles/harmless.json").into(),
        "--out".into(),
        out.into(),
    ]
}

/// Writes a CSV of `n` prompts with ids `p0..`.
pub fn prompts_csv(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("prompts.csv");
    let mut w = csv::Writer::from_path(&path).expect("create csv");
    w.write_record(["id", "prompt"]).expect("header");
    for i in 0..n {
        w.write_record([
            format!("p{i}"),
            format!("Question number {i}, with a comma and \"quotes\"?"),
        ])
        .expect("row");
    }
    w.flush().expect("flush");
    path
}

/// `cai generate` against an OpenAI-compatible base URL, quiet.
pub fn generate_openai(
    base: &str,
    prompts: &Path,
    constitution: &Path,
    out: &Path,
) -> assert_cmd::Command {
    let mut c = cai();
    c.args([
        "generate",
        "--provider",
        "openai",
        "--quiet",
        "--model",
        "test-model",
    ])
    .arg("--base-url")
    .arg(format!("{base}/v1"))
    .arg("--prompts")
    .arg(prompts)
    .arg("--constitution")
    .arg(constitution)
    .arg("--out")
    .arg(out);
    c
}

/// `cai generate` against the in-repo fake at `base` (model `fake-model`,
/// the shipped harmless constitution), quiet, as a plain process so a test
/// can spawn, signal or kill it; stdout and stderr piped.
pub fn fake_generate(base: &str, prompts: &Path, out: &Path) -> std::process::Command {
    fake_generate_model(base, "fake-model", prompts, out)
}

/// [`fake_generate`] with another model name.
pub fn fake_generate_model(
    base: &str,
    model: &str,
    prompts: &Path,
    out: &Path,
) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("cai"));
    c.env_remove("OPENAI_API_KEY")
        .env_remove("HF_TOKEN")
        .args(["generate", "--provider", "openai", "--quiet"])
        .args(["--model", model])
        .arg("--base-url")
        .arg(format!("{base}/v1"))
        .args(harmless_files(prompts, out))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// `cai generate --provider hf` against a TGI base URL, quiet.
pub fn generate_hf(
    base: &str,
    prompts: &Path,
    constitution: &Path,
    out: &Path,
) -> assert_cmd::Command {
    let mut c = cai();
    c.args(["generate", "--provider", "hf", "--quiet"])
        .arg("--base-url")
        .arg(base)
        .arg("--prompts")
        .arg(prompts)
        .arg("--constitution")
        .arg(constitution)
        .arg("--out")
        .arg(out);
    c
}
