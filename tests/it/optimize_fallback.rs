//! `cai optimize` with models that never write JSON (as the embedded 135M
//! model does): scores from first-token log-probabilities, proposals from
//! plain text between `<prompt>` markers, and what is dropped when neither
//! is usable. One wiremock server plays base, evaluator and optimizer.
//!
//! The script: the base model's answer says how many of the KEY bullets its
//! system prompt holds (n) and quotes the prompt (so no two prompts share
//! an answer); every JSON request gets prose back; a digit request's first
//! token puts 0.6 on `2+n`, 0.2 on `1+n` and 0.2 on "The", so its expected
//! score is `2+n − 0.25`; a plain-text proposal list repeats the current
//! prompt between markers once per proposal and adds, for proposal 1, the
//! first missing KEY bullet, else a useless one.

use serde_json::{json, Value};
use std::path::Path;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::*;
use crate::optimize::{current_prompt, last_user, queries, report};

const KEYS: [&str; 2] = ["- Cite your sources.", "- State your limitations."];
const USELESS: [&str; 2] = ["- Mention the weather.", "- Write in capital letters."];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Aspects,
    Score,
    Digit,
    Propose,
    ProposeText,
    Answer,
}

fn kind(body: &Value) -> Kind {
    let last = last_user(body);
    if last.starts_with("# Task: choose evaluation aspects") {
        Kind::Aspects
    } else if last.starts_with("# Task: score an answer") {
        Kind::Score
    } else if last.starts_with("# Task: rate one aspect") {
        Kind::Digit
    } else if last.starts_with("# Task: improve a system prompt") {
        if last.contains("starting with a line <prompt>") {
            Kind::ProposeText
        } else {
            Kind::Propose
        }
    } else {
        Kind::Answer
    }
}

fn keys_in(text: &str) -> usize {
    KEYS.iter().filter(|k| text.contains(*k)).count()
}

/// The `n` of "Answer with n good bullets." in a scoring request.
fn keys_of_answer(req: &str) -> usize {
    req.split("Answer:\n")
        .nth(1)
        .and_then(|a| a.trim_start().strip_prefix("Answer with "))
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse().ok())
        .expect("scripted answer")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Logprobs {
    /// Digits hold 0.8 of the first token.
    Digits,
    /// No `logprobs` in the reply (an endpoint that does not support them).
    Absent,
    /// Digits hold 0.02 of the first token.
    Faint,
}

struct Script {
    logprobs: Logprobs,
    /// Plain-text proposals carry the markers.
    markers: bool,
}

fn chat(text: &str, logprobs: Option<Value>) -> ResponseTemplate {
    let mut choice = json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"});
    if let Some(l) = logprobs {
        choice["logprobs"] = l;
    }
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [choice],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

fn first_token(tops: &[(&str, f64)]) -> Value {
    let top: Vec<Value> = tops
        .iter()
        .map(|(t, p)| json!({"token": t, "logprob": p.ln(), "bytes": t.as_bytes()}))
        .collect();
    json!({"content": [{"token": tops[0].0, "logprob": tops[0].1.ln(), "bytes": [], "top_logprobs": top}]})
}

impl Respond for Script {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = last_user(&body);
        match kind(&body) {
            Kind::Aspects | Kind::Score | Kind::Propose => {
                chat("I think this is a good answer overall.", None)
            }
            Kind::Digit => {
                let n = keys_of_answer(&last);
                let (hi, lo) = ((2 + n).to_string(), (1 + n).to_string());
                match self.logprobs {
                    Logprobs::Absent => chat(&hi, None),
                    Logprobs::Digits => chat(
                        &hi,
                        Some(first_token(&[(&hi, 0.6), (&lo, 0.2), ("The", 0.2)])),
                    ),
                    Logprobs::Faint => chat(
                        "The",
                        Some(first_token(&[("The", 0.9), ("I", 0.08), (&hi, 0.02)])),
                    ),
                }
            }
            Kind::ProposeText => {
                if !self.markers {
                    return chat("You should be more helpful and clear.", None);
                }
                let cur = current_prompt(&last);
                let n: usize = last
                    .split("Write ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|d| d.parse().ok())
                    .expect("number of proposals");
                let blocks: Vec<String> = (1..=n)
                    .map(|variant| {
                        let bullet = match variant {
                            1 => KEYS
                                .iter()
                                .find(|k| !cur.contains(*k))
                                .copied()
                                .unwrap_or(USELESS[0]),
                            2 => USELESS[0],
                            _ => USELESS[1],
                        };
                        format!("<prompt>\n{cur}\n{bullet}\n</prompt>")
                    })
                    .collect();
                chat(&format!("Here they are.\n{}", blocks.join("\n")), None)
            }
            Kind::Answer => {
                let system = body["messages"][0]["content"].as_str().unwrap_or_default();
                chat(
                    &format!(
                        "Answer with {} good bullets under [{}].",
                        keys_in(system),
                        system.replace('\n', " | ")
                    ),
                    None,
                )
            }
        }
    }
}

async fn server(logprobs: Logprobs, markers: bool) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Script { logprobs, markers })
        .mount(&server)
        .await;
    server
}

/// `optimize`'s command with the search depth.
fn optimize(server: &MockServer, queries: &Path, out: &Path, depth: u32) -> assert_cmd::Command {
    let mut c = crate::optimize::optimize(server, queries, out);
    c.args(["--depth", &depth.to_string()]);
    c
}

async fn kinds(server: &MockServer) -> Vec<Kind> {
    bodies(server).await.iter().map(kind).collect()
}

fn count(k: &[Kind], which: Kind) -> usize {
    k.iter().filter(|x| **x == which).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_never_writes_json_is_scored_by_logprobs_and_proposes_between_markers() {
    let server = server(Logprobs::Digits, true).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 3);
    let out = dir.path().join("out");
    optimize(&server, &q, &out, 2).assert().code(0);

    // Step 0: 3 aspect asks, then the fallback set of 3 aspects; the root:
    // answer + 3 JSON score asks + 3 digit requests = 7. Step 1: 3 aspect
    // asks; the root's proposals: 3 JSON list asks + 1 plain-text list ask
    // holding all 3; 3 children × 7. Step 2: 3 aspect asks; 2 beam entries
    // × (3 + 1) optimizer asks; 6 children × 7. Total 10 + 28 + 53 = 91.
    let k = kinds(&server).await;
    assert_eq!(
        [
            Kind::Aspects,
            Kind::Answer,
            Kind::Score,
            Kind::Digit,
            Kind::Propose,
            Kind::ProposeText
        ]
        .map(|w| count(&k, w)),
        [9, 10, 30, 30, 9, 3],
        "requests by kind"
    );
    assert_eq!(k.len(), 91);

    // Digit requests ask for the first token's top 20, greedily, briefly.
    let digit = bodies(&server)
        .await
        .into_iter()
        .find(|b| kind(b) == Kind::Digit)
        .unwrap();
    assert_eq!(
        (
            &digit["logprobs"],
            &digit["top_logprobs"],
            &digit["max_tokens"],
            &digit["temperature"]
        ),
        (&json!(true), &json!(20), &json!(4), &json!(0.0))
    );
    assert!(
        last_user(&digit).contains("on one aspect only: Helpfulness"),
        "{digit}"
    );

    let best = std::fs::read_to_string(out.join("system_prompt.txt")).unwrap();
    assert_eq!(
        best.trim_end(),
        format!("You are a helpful assistant.\n{}\n{}", KEYS[0], KEYS[1])
    );
    let r = report(&out);
    assert_eq!(r["status"], "done");
    // Every aspect: (0.6·(2+n) + 0.2·(1+n)) / 0.8 = 1.75 + n; the path
    // averages 2.75 and 3.75.
    assert_eq!(r["best_reward"], 3.75);
    assert_eq!(r["best_path_reward"], 3.25);
    assert_eq!(r["dropped"], 0);

    let events = read_jsonl(&out.join("search.jsonl"));
    let aspects = events.iter().find(|e| e["kind"] == "aspects").unwrap();
    assert_eq!(
        aspects["aspects"],
        json!(["Helpfulness", "Clarity", "Factuality"])
    );
    assert!(aspects["fallback"]
        .as_str()
        .unwrap()
        .contains("3 replies unusable"));
    let root = events
        .iter()
        .find(|e| e["kind"] == "node" && e["node"] == 0)
        .unwrap();
    assert_eq!(root["reward"], 1.75);
    assert_eq!(
        root["scores"][0],
        json!({"aspect": "Helpfulness", "score": 1.75, "rationale": "", "method": "logprobs", "p_digits": 0.8})
    );
    let child = events
        .iter()
        .find(|e| e["kind"] == "node" && e["role"] == "child")
        .unwrap();
    assert_eq!(child["proposal_format"], "markers");
    assert_eq!(child["analysis"], "");
    assert_eq!(child["reward"], 2.75);
}

#[tokio::test(flavor = "multi_thread")]
async fn proposals_without_markers_are_dropped_with_all_three_reasons() {
    let server = server(Logprobs::Digits, false).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 1);
    let out = dir.path().join("out");
    optimize(&server, &q, &out, 1).assert().code(0);
    // 3 aspect asks + the root's 7; then 3 JSON list asks, 3 plain-text
    // list asks and 3 proposals × 3 one-per-call asks.
    let k = kinds(&server).await;
    assert_eq!(k.len(), 25);
    assert_eq!(count(&k, Kind::ProposeText), 12);
    let events = read_jsonl(&out.join("search.jsonl"));
    let dropped: Vec<&Value> = events.iter().filter(|e| e["kind"] == "dropped").collect();
    assert_eq!(dropped.len(), 3);
    let why = dropped[0]["reason"].as_str().unwrap();
    assert!(
        why.contains("optimizer: 3 replies unusable; last: not JSON")
            && why.contains(
                "plain-text fallback: 3 replies unusable; last: no line starting with `<prompt>`"
            )
            && why.contains("one per call: 3 replies unusable"),
        "{why}"
    );
    let r = report(&out);
    assert_eq!(r["dropped"], 3);
    assert_eq!(r["best_reward"], 1.75);
    assert_eq!(
        std::fs::read_to_string(out.join("system_prompt.txt")).unwrap(),
        "You are a helpful assistant.\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_usable_logprobs_a_scoring_is_dropped_and_the_search_still_finishes() {
    for (lp, reason) in [
        (
            Logprobs::Absent,
            "log-probability fallback: the endpoint returned no log-probabilities",
        ),
        (
            Logprobs::Faint,
            "log-probability fallback: `Helpfulness`: the digits 1–5 hold 0.020 of the first-token probability (at least 0.05)",
        ),
    ] {
        let server = server(lp, true).await;
        let dir = tempfile::tempdir().unwrap();
        let q = queries(dir.path(), 1);
        let out = dir.path().join("out");
        optimize(&server, &q, &out, 1).assert().code(0);
        // 3 aspect asks + answer + 3 JSON score asks + the first aspect's
        // digit request (one unusable aspect ends the scoring). The root,
        // unscored, is carried on to step 1 on the same (only) query: the
        // same requests, all answered from the journal.
        assert_eq!(kinds(&server).await.len(), 8);
        let events = read_jsonl(&out.join("search.jsonl"));
        let root = events
            .iter()
            .find(|e| e["kind"] == "node" && e["node"] == 0)
            .unwrap();
        let why = root["dropped"].as_str().unwrap();
        assert!(
            why.starts_with("evaluator: 3 replies unusable; last: not JSON") && why.contains(reason),
            "{why}"
        );
        let r = report(&out);
        assert_eq!(r["status"], "done");
        assert_eq!(r["best_reward"], Value::Null);
        assert_eq!(r["dropped"], 2);
    }
}
