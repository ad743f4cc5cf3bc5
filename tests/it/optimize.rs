//! `cai optimize` and `cai optimize eval` against a scripted evaluator and
//! optimizer (one wiremock server plays base, evaluator and optimizer), and
//! `generate --system-prompt`.
//!
//! The script: the base model's answer says how many of three KEY bullets
//! its system prompt holds; the evaluator scores every aspect
//! `min(5, 2 + keys)`; the optimizer's proposal 1 adds the first missing
//! key bullet, proposals 2 and 3 add useless bullets. So the best prompt
//! holds all three keys and scores 5, reached at depth 3.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::*;

const KEYS: [&str; 3] = [
    "- Cite your sources.",
    "- State your limitations.",
    "- Be concise.",
];
const USELESS: [&str; 2] = ["- Mention the weather.", "- Write in capital letters."];
/// `--seed` of every test run; a score request with exactly this seed is
/// the first ask (re-asks use the next seeds).
const SEED: u64 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Aspects,
    Score,
    Propose,
    Rewrite,
    Answer,
}

pub(crate) fn last_user(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn kind(body: &Value) -> Kind {
    let last = last_user(body);
    if last.starts_with("# Task: choose evaluation aspects") {
        Kind::Aspects
    } else if last.starts_with("# Task: score an answer") {
        Kind::Score
    } else if last.starts_with("# Task: improve a system prompt") {
        Kind::Propose
    } else if last.starts_with("# Task: improve an answer") {
        Kind::Rewrite
    } else {
        Kind::Answer
    }
}

fn keys_in(text: &str) -> usize {
    KEYS.iter().filter(|k| text.contains(*k)).count()
}

/// The current prompt quoted in a proposal request (shared with
/// `optimize_fallback`).
pub(crate) fn current_prompt(req: &str) -> String {
    let start = req
        .find("Current system prompt:\n")
        .expect("prompt section")
        + 23;
    let rest = &req[start..];
    let end = ["\n\nEarlier versions", "\n\nQuery:"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .expect("end of prompt");
    rest[..end].to_string()
}

struct Script {
    /// Score replies to a first ask are not JSON.
    bad_first_score: bool,
    /// Proposal 3 never carries `new_system_prompt`.
    bad_third_proposal: bool,
}

fn chat(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

impl Respond for Script {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = last_user(&body);
        let seed = body["seed"].as_u64();
        match kind(&body) {
            Kind::Aspects => chat(r#"{"aspects": ["Helpfulness", "Clarity"]}"#),
            Kind::Score => {
                if self.bad_first_score && seed == Some(SEED) {
                    return chat("The answer looks fine to me.");
                }
                let ans = last
                    .split("Answer:\n")
                    .nth(1)
                    .and_then(|a| a.split("\n\nReply with JSON").next())
                    .unwrap_or_default();
                let n: usize = ans
                    .trim()
                    .strip_prefix("Answer with ")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|d| d.parse().ok())
                    .expect("scripted answer");
                let s = (2 + n).min(5);
                chat(
                    &json!({"Helpfulness": {"rationale": format!("{n} keys"), "score": s},
                            "Clarity": {"rationale": "fine", "score": s}})
                    .to_string(),
                )
            }
            Kind::Propose => {
                let cur = current_prompt(&last);
                let variant: usize = last
                    .split("This is proposal ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|d| d.parse().ok())
                    .expect("variant");
                if self.bad_third_proposal && variant == 3 {
                    return chat(r#"{"analysis": "missing the prompt"}"#);
                }
                let bullet = match variant {
                    1 => KEYS
                        .iter()
                        .find(|k| !cur.contains(*k))
                        .copied()
                        .unwrap_or(USELESS[0]),
                    2 => USELESS[0],
                    _ => USELESS[1],
                };
                let new = format!("{cur}\n{bullet}");
                chat(
                    &json!({"analysis": "a", "thought": "t", "new_system_prompt": new})
                        .to_string(),
                )
            }
            Kind::Rewrite => chat(
                &json!({"analysis": "a", "thought": "t", "new_answer": "Answer with 3 good bullets."})
                    .to_string(),
            ),
            Kind::Answer => {
                let system = body["messages"][0]["content"].as_str().unwrap_or_default();
                chat(&format!("Answer with {} good bullets.", keys_in(system)))
            }
        }
    }
}

async fn script_server(bad_first_score: bool, bad_third_proposal: bool) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Script {
            bad_first_score,
            bad_third_proposal,
        })
        .mount(&server)
        .await;
    server
}

pub(crate) fn queries(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("queries.csv");
    let mut s = String::from("id,query\n");
    for i in 0..n {
        s.push_str(&format!("q{i},Question number {i}?\n"));
    }
    std::fs::write(&p, s).unwrap();
    p
}

/// `cai optimize` with base, evaluator and optimizer on `server`.
pub(crate) fn optimize(server: &MockServer, queries: &Path, out: &Path) -> assert_cmd::Command {
    let url = format!("{}/v1", server.uri());
    let mut c = cai();
    c.args([
        "optimize",
        "--provider",
        "openai",
        "--model",
        "base",
        "--quiet",
    ])
    .args(["--base-url", &url, "--seed", &SEED.to_string()])
    .arg("--evaluator")
    .arg(format!("openai:evaluator@{url}"))
    .arg("--optimizer")
    .arg(format!("openai:optimizer@{url}"))
    .arg("--queries")
    .arg(queries)
    .arg("--out")
    .arg(out);
    c
}

async fn counts(server: &MockServer) -> [usize; 4] {
    let mut c = [0; 4];
    for b in bodies(server).await {
        c[match kind(&b) {
            Kind::Aspects => 0,
            Kind::Answer => 1,
            Kind::Score => 2,
            Kind::Propose | Kind::Rewrite => 3,
        }] += 1;
    }
    c
}

pub(crate) fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_search_finds_the_prompt_with_every_key_bullet_in_exactly_the_designed_requests() {
    let server = script_server(false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 3);
    let out = dir.path().join("out");
    let done = optimize(&server, &q, &out)
        .args(["--depth", "4"])
        .assert()
        .code(0);
    let stdout = String::from_utf8_lossy(&done.get_output().stdout).to_string();

    // Per step (module docs of feedback::drpo): step 1 = 1 aspects + root 2
    // + 3×3 = 12; step 2 = 1 + (2+9) + (2+3+2×2, one duplicate) = 21;
    // step 3 = 21 likewise; step 4 reuses query 0's aspects, its first node
    // is satisfied (2), the other has one duplicate (2+3+4) = 11. Total 65.
    let [aspects, answers, scores, proposals] = counts(&server).await;
    assert_eq!(
        (aspects, answers, scores, proposals),
        (3, 22, 22, 18),
        "requests by kind"
    );

    let best = std::fs::read_to_string(out.join("system_prompt.txt")).unwrap();
    assert!(best.starts_with("You are a helpful assistant."), "{best}");
    for k in KEYS {
        assert!(best.contains(k), "{best}");
    }
    for u in USELESS {
        assert!(!best.contains(u), "{best}");
    }

    let r = report(&out);
    assert_eq!(r["kind"], "optimize");
    assert_eq!(r["status"], "done");
    assert_eq!(r["best_reward"], 5.0);
    assert_eq!(
        r["reward_per_depth"],
        json!([
            {"depth": 0, "best": 2.0, "mean": 2.0, "nodes": 1},
            {"depth": 1, "best": 3.0, "mean": 2.2, "nodes": 5},
            {"depth": 2, "best": 4.0, "mean": 3.2, "nodes": 5},
            {"depth": 3, "best": 5.0, "mean": 4.2, "nodes": 5}
        ])
    );
    let path: Vec<u64> = r["best_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_u64().unwrap())
        .collect();
    assert_eq!(path, [0, 1, 4, 9]);
    assert_eq!(r["requests"]["requests"], 65);

    let events = read_jsonl(&out.join("search.jsonl"));
    let of = |k: &str| events.iter().filter(|e| e["kind"] == k).count();
    assert_eq!(of("duplicate"), 3);
    assert_eq!(of("step"), 4);
    // The satisfied node was evaluated at the last step and not expanded.
    let last = events
        .iter()
        .find(|e| e["kind"] == "node" && e["step"] == 3 && e["node"] == 9)
        .expect("node 9 at step 4");
    assert_eq!(last["satisfied"], true);
    assert_eq!(last["scores"][0]["rationale"], "3 keys");
    assert!(!events
        .iter()
        .any(|e| e["kind"] == "node" && e["step"] == 3 && e["parent"] == 9));
    let child = events
        .iter()
        .find(|e| e["kind"] == "node" && e["node"] == 9 && e["role"] == "child")
        .unwrap();
    assert_eq!(child["parent"], 4);
    assert_eq!(child["depth"], 3);
    assert_eq!(child["query_id"], "q2");
    assert_eq!(child["answer"], "Answer with 3 good bullets.");
    assert_eq!(child["reward"], 5.0);
    assert!(
        stdout.contains("best path: #0 (2.00) → #1 (3.00) → #4 (4.00) → #9 (5.00)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_stopped_by_max_requests_resumes_without_sending_anything_twice() {
    let server = script_server(false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 3);
    let out = dir.path().join("out");
    let stopped = optimize(&server, &q, &out)
        .args(["--depth", "4", "--max-requests", "30"])
        .assert()
        .code(3);
    let err = String::from_utf8_lossy(&stopped.get_output().stderr).to_string();
    assert!(err.contains("--max-requests"), "{err}");
    assert_eq!(bodies(&server).await.len(), 30);
    let r = report(&out);
    assert!(r["status"].as_str().unwrap().starts_with("stopped"), "{r}");
    assert!(!out.join("system_prompt.txt").exists());

    let done = optimize(&server, &q, &out)
        .args(["--depth", "4"])
        .assert()
        .code(0);
    let err = String::from_utf8_lossy(&done.get_output().stderr).to_string();
    assert!(
        err.contains("34 requests sent, 31 from the journal"),
        "{err}"
    );
    // 30 + 34 = 64 < 65: nothing finished was sent again, and one score
    // request that a fresh run sends twice (two prompts gave the same
    // answer) was answered from the journal the second time.
    assert_eq!(bodies(&server).await.len(), 64, "nothing was sent twice");
    let best = std::fs::read_to_string(out.join("system_prompt.txt")).unwrap();
    assert_eq!(keys_in(&best), 3);

    // A third run replays everything.
    optimize(&server, &q, &out)
        .args(["--depth", "4"])
        .assert()
        .code(0);
    assert_eq!(bodies(&server).await.len(), 64);
    assert_eq!(report(&out)["requests"]["cached"], 65);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_evaluator_and_optimizer_replies_are_asked_again_then_dropped() {
    let server = script_server(true, true).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 1);
    let out = dir.path().join("out");
    optimize(&server, &q, &out)
        .args(["--depth", "1"])
        .assert()
        .code(0);
    // 1 aspects; root: answer + 2 scores (the first not JSON); proposals 1
    // and 2: 1 + answer + 2 scores each; proposal 3: 3 JSON asks and 3
    // plain-text asks (no `<prompt>` markers either), then dropped.
    let [aspects, answers, scores, proposals] = counts(&server).await;
    assert_eq!((aspects, answers, scores, proposals), (1, 3, 6, 8));
    let events = read_jsonl(&out.join("search.jsonl"));
    let dropped: Vec<&Value> = events.iter().filter(|e| e["kind"] == "dropped").collect();
    assert_eq!(dropped.len(), 1, "{events:?}");
    assert_eq!(dropped[0]["variant"], 3);
    let why = dropped[0]["reason"].as_str().unwrap();
    assert!(
        why.contains("3 replies unusable")
            && why.contains("no `new_system_prompt` string")
            && why.contains(
                "plain-text fallback: 3 replies unusable; last: no line starting with `<prompt>`"
            ),
        "{why}"
    );
    let r = report(&out);
    assert_eq!(r["dropped"], 1);
    assert_eq!(r["best_reward"], 3.0);
    // Every score that was kept came from a re-ask (seed + 1).
    let seeds: Vec<u64> = bodies(&server)
        .await
        .iter()
        .filter(|b| kind(b) == Kind::Score)
        .map(|b| b["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [SEED, SEED + 1, SEED, SEED + 1, SEED, SEED + 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_compares_prompts_with_aspect_means_and_a_win_rate_interval() {
    let server = script_server(false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 4);
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, "You are a helpful assistant.\n").unwrap();
    let tuned = dir.path().join("tuned.txt");
    std::fs::write(
        &tuned,
        format!("You are a helpful assistant.\n{}\n{}\n", KEYS[0], KEYS[1]),
    )
    .unwrap();
    let out = dir.path().join("eval");
    let url = format!("{}/v1", server.uri());
    let done = cai()
        .args([
            "optimize",
            "eval",
            "--provider",
            "openai",
            "--model",
            "base",
            "--quiet",
        ])
        .args(["--base-url", &url, "--seed", "7"])
        .arg("--queries")
        .arg(&q)
        .arg("--out")
        .arg(&out)
        .arg("--prompt")
        .arg(&plain)
        .arg("--prompt")
        .arg(&tuned)
        .assert()
        .code(0);
    // 4 aspect requests + 4 × 2 × (answer + score).
    assert_eq!(bodies(&server).await.len(), 20);
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(e["kind"], "optimize-eval");
    assert_eq!(e["prompts"][0]["mean"], 2.0);
    assert_eq!(e["prompts"][1]["mean"], 4.0);
    assert_eq!(e["prompts"][1]["aspects"]["Clarity"], 4.0);
    let p = &e["pairwise"][0];
    assert_eq!(
        (p["wins"].as_u64(), p["losses"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(p["win_rate"], 0.0);
    let (lo, hi) = (
        p["ci95"][0].as_f64().unwrap(),
        p["ci95"][1].as_f64().unwrap(),
    );
    assert!(
        lo == 0.0 && hi > 0.3 && hi < 0.6,
        "Wilson interval for 0/4: {lo}–{hi}"
    );
    let stdout = String::from_utf8_lossy(&done.get_output().stdout).to_string();
    assert!(stdout.contains("0 wins, 0 ties, 4 losses of 4"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_are_optimised_offline_and_the_most_similar_are_shown() {
    let server = script_server(false, false).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 1);
    let ex = dir.path().join("examples.jsonl");
    std::fs::write(
        &ex,
        "{\"query\": \"How do I bake bread?\", \"answer\": \"Answer with 1 good bullets.\"}\n{\"query\": \"Question number 5?\", \"answer\": \"Answer with 3 good bullets.\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    optimize(&server, &q, &out)
        .args(["--depth", "1", "--k", "1"])
        .arg("--examples")
        .arg(&ex)
        .assert()
        .code(0);
    let bank: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("examples.json")).unwrap()).unwrap();
    assert_eq!(bank.as_array().unwrap().len(), 2);
    let events = read_jsonl(&out.join("search.jsonl"));
    let exs: Vec<&Value> = events.iter().filter(|e| e["kind"] == "example").collect();
    assert_eq!(exs[1]["status"], "satisfied");
    assert_eq!(exs[0]["reward"], 3.0);
    assert_eq!(exs[0]["status"], "rewritten");
    assert_eq!(exs[0]["new_reward"], 5.0);
    assert_eq!(bank[0]["answer"], "Answer with 3 good bullets.");
    // The base request carries the one most similar example before the query.
    let answer = bodies(&server)
        .await
        .into_iter()
        .find(|b| kind(b) == Kind::Answer)
        .unwrap();
    let m = answer["messages"].as_array().unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m[1]["content"], "Question number 5?");
    assert_eq!(m[3]["content"], "Question number 0?");
}

#[test]
fn dry_run_counts_the_designed_requests_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 3);
    let out = dir.path().join("out");
    let done = cai()
        .args([
            "optimize",
            "--provider",
            "openai",
            "--model",
            "m",
            "--dry-run",
        ])
        .args(["--base-url", "http://127.0.0.1:9/v1", "--depth", "4"])
        .arg("--queries")
        .arg(&q)
        .arg("--out")
        .arg(&out)
        .assert()
        .code(0);
    let stdout = String::from_utf8_lossy(&done.get_output().stdout).to_string();
    assert!(
        stdout.contains("total: 80 requests (28 base, 31 evaluator, 21 optimizer)"),
        "{stdout}"
    );
    assert!(!out.exists());
}

#[test]
fn bad_options_and_files_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 1);
    let bad = dir.path().join("aspects.json");
    std::fs::write(&bad, "[{\"name\": \"x\"}").unwrap();
    let err = cai()
        .args(["optimize", "--provider", "openai", "--model", "m"])
        .args(["--base-url", "http://127.0.0.1:9/v1", "--out", "o"])
        .arg("--queries")
        .arg(&q)
        .arg("--aspects")
        .arg(&bad)
        .assert()
        .code(2);
    let e = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(e.contains("aspects.json:1"), "{e}");
    let err = cai()
        .args(["optimize", "--provider", "openai", "--model", "m"])
        .args(["--base-url", "http://127.0.0.1:9/v1", "--out", "o"])
        .arg("--queries")
        .arg(&q)
        .args(["--evaluator", "nosuch:model"])
        .assert()
        .code(2);
    let e = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(e.contains("--evaluator `nosuch:model`"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_system_prompt_replaces_the_system_message_and_enters_the_fingerprint() {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "id,prompt\nq1,What is 2+2?\n").unwrap();
    let sys = dir.path().join("sys.txt");
    std::fs::write(&sys, "OPTIMISED PROMPT\n- Be concise.\n").unwrap();
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .arg("--system-prompt")
        .arg(&sys)
        .assert()
        .code(0);
    let b = bodies(&server).await;
    assert_eq!(
        b[0]["messages"][0],
        json!({"role": "system", "content": "OPTIMISED PROMPT\n- Be concise."})
    );
    // Stage-specific system messages of the constitution still apply.
    assert_eq!(b[1]["messages"][0]["content"], "SYS-CRITIQUE");

    std::fs::write(&sys, "ANOTHER PROMPT\n").unwrap();
    let err = generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .arg("--system-prompt")
        .arg(&sys)
        .assert()
        .code(2);
    let e = String::from_utf8_lossy(&err.get_output().stderr).to_string();
    assert!(e.contains("parameters"), "{e}");
}
