//! Base models through `/v1/completions` (`--api completions`) prompted in
//! DRPO's plain format (`--base-format plain`), and optimized examples
//! placed before each query (`--examples`, `--num-examples`), checked in
//! the requests the in-repo fake records: `cai optimize` with the base model
//! on the fake, `generate`, and `serve` in front of a base model. llama.cpp's
//! server is not run here (it is not installed in the test environment).

use std::path::{Path, PathBuf};

use cai_fake::{FakeConfig, FakeServer};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::*;

/// What the fake's base model writes after its answer when nothing stops
/// it (see cai-fake's `completions` module).
const RUN_ON: &str = "And what would you ask next?";

async fn fake() -> FakeServer {
    FakeServer::start(FakeConfig {
        record_last: 1000,
        model: "base".into(),
        ..FakeConfig::default()
    })
    .await
    .expect("fake starts")
}

/// The recorded `/v1/completions` bodies, oldest first.
fn completion_bodies(fake: &FakeServer) -> Vec<Value> {
    fake.recent_requests()
        .into_iter()
        .filter(|r| r.path == "/v1/completions")
        .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
        .collect()
}

fn chat(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

/// An evaluator and optimizer that answer every ask the same way: two
/// aspects, 3 and 4 points, and `n` proposals.
struct Judge;

impl Respond for Judge {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = crate::common::last_message(&body);
        if last.starts_with("# Task: choose evaluation aspects") {
            chat(&json!({"query_analysis": {"main_topic": "t", "user_intent": "u"},
                        "aspects_selection": {"reasoning": "r", "selected_aspects": ["Helpfulness", "Clarity"]}})
            .to_string())
        } else if last.starts_with("# Task: score an answer") {
            chat(
                &json!({"Helpfulness": {"rationale": "ok", "score": 3},
                        "Clarity": {"rationale": "ok", "score": 4}})
                .to_string(),
            )
        } else {
            let list: Vec<Value> = (0..3)
                .map(|i| json!({"analysis": "a", "thought": "t", "new_system_prompt": format!("Be precise, version {i}.")}))
                .collect();
            chat(&Value::Array(list).to_string())
        }
    }
}

async fn judge_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Judge)
        .mount(&server)
        .await;
    server
}

fn queries(dir: &Path) -> PathBuf {
    let p = dir.join("queries.csv");
    std::fs::write(
        &p,
        "id,query\nq0,How do I keep bread fresh?\nq1,Why is the sky blue?\n",
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn optimize_aligns_a_base_model_through_completions_in_the_plain_format() {
    let fake = fake().await;
    let judge = judge_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let judge_url = format!("{}/v1", judge.uri());
    cai()
        .args(["optimize", "--quiet", "--seed", "7", "--depth", "1"])
        .args([
            "--provider",
            "vllm",
            "--model",
            "base",
            "--api",
            "completions",
        ])
        .args(["--base-format", "plain", "--base-url"])
        .arg(format!("{}/v1", fake.url()))
        .arg("--evaluator")
        .arg(format!("openai:evaluator@{judge_url}"))
        .arg("--optimizer")
        .arg(format!("openai:optimizer@{judge_url}"))
        .arg("--queries")
        .arg(queries(dir.path()))
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0);

    // Every base request went to /v1/completions as a plain document: the
    // prompt under `# Instructions`, the query, an open answer; with the
    // headings as stop sequences, greedy, at the paper's 2048 tokens.
    let sent = completion_bodies(&fake);
    assert_eq!(fake.stats().chat_requests, 0, "the base model got no chat");
    assert_eq!(sent.len(), 4, "root + 3 proposals, one answer each");
    for b in &sent {
        let prompt = b["prompt"].as_str().unwrap();
        assert!(prompt.starts_with("# Instructions\n\n"), "{prompt}");
        assert!(prompt.ends_with("?\n\n# Answer:\n"), "{prompt}");
        assert!(prompt.contains("\n\n# Query:\n"), "{prompt}");
        assert_eq!(b["model"], "base");
        assert_eq!(
            (&b["temperature"], &b["max_tokens"]),
            (&json!(0.0), &json!(2048))
        );
        let stop: Vec<&str> = b["stop"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(stop, ["\n# Query:", "\n# Answer:", "\n# Instructions"]);
    }
    assert!(sent.iter().any(|b| b["prompt"]
        .as_str()
        .unwrap()
        .starts_with("# Instructions\n\nYou are a helpful assistant.\n\n# Query:\n")));
    assert!(sent.iter().any(|b| b["prompt"]
        .as_str()
        .unwrap()
        .contains("Be precise, version 0.")));

    // The evaluator scored the answers alone: the fake's run-on into a
    // next query was stopped, never scored.
    let scored: Vec<String> = judge
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).to_string())
        .filter(|b| b.contains("# Task: score an answer"))
        .collect();
    assert_eq!(scored.len(), 4);
    for s in &scored {
        assert!(s.contains("(ref "), "the fake's answer is scored: {s}");
        assert!(!s.contains(RUN_ON), "{s}");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["best_reward"], 3.5);
    assert_eq!(report["base"], "vllm+plain:base");
    assert_eq!(report["evaluator"], "openai:evaluator");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_stop_sequences_honoured_the_answer_is_still_cut_at_the_next_heading() {
    // A server that ignores `stop` (the wiremock one below) runs on into a
    // made-up query; the client cuts the reply there.
    struct RunsOn;
    impl Respond for RunsOn {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            ResponseTemplate::new(200).set_body_json(json!({
                "id": "c", "object": "text_completion", "created": 0, "model": "base",
                "choices": [{"index": 0, "text": format!(" Keep it in a cloth bag.\n\n# Query:\n{RUN_ON}\n# Answer:\nNo."), "finish_reason": "length"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
            }))
        }
    }
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/completions"))
        .respond_with(RunsOn)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "prompt\nHow do I keep bread fresh?\n").unwrap();
    let out = dir.path().join("out");
    cai()
        .args([
            "generate",
            "--quiet",
            "--provider",
            "vllm",
            "--api",
            "completions",
        ])
        .args(["--base-format", "plain", "--rounds", "0", "--base-url"])
        .arg(format!("{}/v1", server.uri()))
        .args(harmless_files(&prompts, &out))
        .assert()
        .code(0);
    let rows = read_jsonl(&out.join("sft.jsonl"));
    assert_eq!(rows.len(), 1);
    let messages = rows[0]["messages"].as_array().unwrap();
    assert_eq!(
        messages.last().unwrap()["content"],
        "Keep it in a cloth bag."
    );
}

/// A bank whose best matches are known: for the bread query, A (three
/// shared words) then B (two); for the engine query, C then A (no other
/// shares a word; ties keep the bank's order).
fn bank(dir: &Path) -> PathBuf {
    let p = dir.join("examples.csv");
    std::fs::write(
        &p,
        "query,answer\n\
         sourdough bread recipe,ANSWER-A\n\
         bread recipe ideas,ANSWER-B\n\
         car engine repair,ANSWER-C\n\
         garden tomato care,ANSWER-D\n",
    )
    .unwrap();
    p
}

const BREAD: &str = "Which sourdough bread recipe works?";
const ENGINE: &str = "How do I repair a car engine?";

/// Where each of `needles` is in `hay`, in order; panics if one is missing.
fn positions(hay: &str, needles: &[&str]) -> Vec<usize> {
    needles
        .iter()
        .map(|n| hay.find(n).unwrap_or_else(|| panic!("{n} not in {hay}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_places_the_k_best_examples_before_each_prompt() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, format!("prompt\n{BREAD}\n{ENGINE}\n")).unwrap();
    let out = dir.path().join("out");
    cai()
        .args([
            "generate",
            "--quiet",
            "--provider",
            "vllm",
            "--model",
            "base",
        ])
        .args(["--api", "completions", "--base-format", "plain"])
        .args(["--num-examples", "2", "--examples"])
        .arg(bank(dir.path()))
        .arg("--base-url")
        .arg(format!("{}/v1", fake.url()))
        .args(harmless_files(&prompts, &out))
        .assert()
        .code(0);
    let sent = completion_bodies(&fake);
    // Initial answer, critique, revision for each prompt.
    assert_eq!(sent.len(), 6);
    for b in &sent {
        let prompt = b["prompt"].as_str().unwrap();
        let (first, second, query, absent) = if prompt.contains(BREAD) {
            ("ANSWER-A", "ANSWER-B", BREAD, ["ANSWER-C", "ANSWER-D"])
        } else {
            ("ANSWER-C", "ANSWER-A", ENGINE, ["ANSWER-B", "ANSWER-D"])
        };
        let at = positions(prompt, &[first, second, query]);
        assert!(
            at[0] < at[1] && at[1] < at[2],
            "best first, then the query: {prompt}"
        );
        for a in absent {
            assert!(!prompt.contains(a), "only k = 2 examples: {prompt}");
        }
        // Examples are earlier sections of the plain document.
        assert!(
            prompt.contains(&format!("# Answer:\n{first}\n\n# Query:\n")),
            "{prompt}"
        );
    }
    // The rows hold the answers alone.
    for row in read_jsonl(&out.join("sft.jsonl")) {
        let c = row["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap();
        assert!(!c.contains(RUN_ON) && !c.contains("# Query"), "{c}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_in_front_of_a_base_model_places_the_examples_and_answers_in_the_plain_format() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let examples = bank(dir.path());
    let upstream = format!("{}/v1", fake.url());
    let serve = crate::serve_support::Serve::start(
        &upstream,
        &[
            "--api",
            "completions",
            "--base-format",
            "plain",
            "--examples",
            examples.to_str().unwrap(),
            "--num-examples",
            "2",
        ],
        &[],
    );
    let client = reqwest::Client::new();
    let reply: Value = client
        .post(format!("{}/chat/completions", serve.url))
        .json(&json!({"model": "up-model", "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": ENGINE}
        ]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("(ref ") && !text.contains(RUN_ON), "{reply}");
    let sent = completion_bodies(&fake);
    assert_eq!(sent.len(), 1);
    let prompt = sent[0]["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("# Instructions\n\nAnswer briefly.\n\n# Query:\ncar engine repair\n\n# Answer:\nANSWER-C\n\n# Query:\nsourdough bread recipe\n\n# Answer:\nANSWER-A\n\n# Query:\n"),
        "{prompt}"
    );
    assert!(
        prompt.ends_with(&format!("{ENGINE}\n\n# Answer:\n")),
        "{prompt}"
    );
    assert_eq!(sent[0]["model"], "up-model");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_places_the_examples_in_forwarded_chat_requests_too() {
    let fake = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let examples = bank(dir.path());
    let upstream = format!("{}/v1", fake.url());
    let serve = crate::serve_support::Serve::start(
        &upstream,
        &[
            "--examples",
            examples.to_str().unwrap(),
            "--num-examples",
            "2",
        ],
        &[],
    );
    let status = reqwest::Client::new()
        .post(format!("{}/chat/completions", serve.url))
        .json(&json!({"model": "up-model", "messages": [{"role": "user", "content": BREAD}]}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let sent: Vec<Value> = fake
        .recent_requests()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["messages"],
        json!([
            {"role": "user", "content": "sourdough bread recipe"},
            {"role": "assistant", "content": "ANSWER-A"},
            {"role": "user", "content": "bread recipe ideas"},
            {"role": "assistant", "content": "ANSWER-B"},
            {"role": "user", "content": BREAD}
        ])
    );
}

#[test]
fn an_api_or_format_the_endpoint_does_not_serve_is_refused_before_sending() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--provider", "groq", "--api", "completions"],
            "--api completions is not served by --provider groq",
        ),
        (
            &["--provider", "vllm", "--base-format", "plain"],
            "add --api completions",
        ),
        (
            &["--provider", "anthropic", "--base-format", "plain"],
            "provider anthropic speaks chat turns only",
        ),
        (
            &["--provider", "gemini", "--api", "completions"],
            "(it serves: chat)",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "prompt\nhi\n").unwrap();
    for (args, says) in cases {
        let a = cai()
            .env("GROQ_API_KEY", "k")
            .env("ANTHROPIC_API_KEY", "k")
            .env("GEMINI_API_KEY", "k")
            .args([
                "generate",
                "--quiet",
                "--model",
                "m",
                "--base-url",
                "http://127.0.0.1:9/v1",
            ])
            .args(args)
            .args(harmless_files(&prompts, &dir.path().join("out")))
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn optimize_eval_places_the_examples_as_earlier_sections_of_the_plain_document() {
    let fake = fake().await;
    let judge = judge_server().await;
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("held_out.csv");
    std::fs::write(&q, format!("id,query\nb,{BREAD}\ne,{ENGINE}\n")).unwrap();
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, "Answer like a careful expert.\n").unwrap();
    let judge_url = format!("{}/v1", judge.uri());
    cai()
        .args(["optimize", "eval", "--quiet", "--seed", "7"])
        .args([
            "--provider",
            "vllm",
            "--model",
            "base",
            "--api",
            "completions",
        ])
        .args([
            "--base-format",
            "plain",
            "--num-examples",
            "2",
            "--examples",
        ])
        .arg(bank(dir.path()))
        .arg("--base-url")
        .arg(format!("{}/v1", fake.url()))
        .arg("--evaluator")
        .arg(format!("openai:evaluator@{judge_url}"))
        .arg("--prompt")
        .arg(&prompt)
        .arg("--queries")
        .arg(&q)
        .arg("--out")
        .arg(dir.path().join("eval"))
        .assert()
        .code(0);
    let sent = completion_bodies(&fake);
    assert_eq!(sent.len(), 2, "one answer per held-out query");
    for b in &sent {
        let p = b["prompt"].as_str().unwrap();
        let expected = if p.contains(BREAD) {
            format!("# Instructions\n\nAnswer like a careful expert.\n\n# Query:\nsourdough bread recipe\n\n# Answer:\nANSWER-A\n\n# Query:\nbread recipe ideas\n\n# Answer:\nANSWER-B\n\n# Query:\n{BREAD}\n\n# Answer:\n")
        } else {
            format!("# Instructions\n\nAnswer like a careful expert.\n\n# Query:\ncar engine repair\n\n# Answer:\nANSWER-C\n\n# Query:\nsourdough bread recipe\n\n# Answer:\nANSWER-A\n\n# Query:\n{ENGINE}\n\n# Answer:\n")
        };
        assert_eq!(p, expected);
    }
}
