//! `cai optimize` and `cai optimize eval` against a scripted evaluator and
//! optimizer (one wiremock server plays base, evaluator and optimizer), and
//! `generate --system-prompt`.
//!
//! The script: the base model's answer quotes its system prompt ("Answer
//! under [line | line]"), so every prompt gets its own answer and the
//! evaluator scores the prompt itself through a per-test rule (by default
//! every aspect `min(5, 2 + KEY bullets)`). The optimizer answers the list
//! ask with per-test proposals (by default: add the first missing KEY
//! bullet, then two useless bullets).

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
/// `--seed` of every test run; a request with exactly this seed is the
/// first ask (re-asks use the next seeds).
const SEED: u64 = 7;
const START: &str = "You are a helpful assistant.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Aspects,
    Score,
    Propose,
    Rewrite,
    Answer,
}

pub(crate) fn last_user(body: &Value) -> String {
    crate::common::last_message(body).to_string()
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

/// The base model's answer under a system prompt.
fn answer_under(system: &str) -> String {
    format!("Answer under [{}]", system.replace('\n', " | "))
}

/// The prompt an answer in a scoring request was written under.
fn prompt_of_score_request(req: &str) -> String {
    let ans = req.split("Answer:\n").nth(1).expect("answer section");
    let start = ans.find("Answer under [").expect("scripted answer") + 14;
    let end = ans[start..].find(']').expect("end of answer") + start;
    ans[start..end].replace(" | ", "\n")
}

/// How many proposals a list ask wants ("Write N better system prompts").
fn wanted(req: &str) -> usize {
    req.split("Write ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse().ok())
        .expect("number of proposals")
}

/// Scores of a prompt: (Helpfulness, Clarity).
type ScoreFn = fn(&str) -> (u8, u8);
/// Proposals for the current prompt.
type ProposeFn = fn(&str) -> Vec<String>;

fn by_keys(prompt: &str) -> (u8, u8) {
    let s = (2 + keys_in(prompt)).min(5) as u8;
    (s, s)
}

fn add_keys(cur: &str) -> Vec<String> {
    let key = KEYS
        .iter()
        .find(|k| !cur.contains(*k))
        .copied()
        .unwrap_or(USELESS[0]);
    vec![
        format!("{cur}\n{key}"),
        format!("{cur}\n{}", USELESS[0]),
        format!("{cur}\n{}", USELESS[1]),
    ]
}

struct Script {
    score: ScoreFn,
    propose: ProposeFn,
    /// Score replies to a first ask are not JSON.
    bad_first_score: bool,
    /// The third item of a proposal list has no `new_system_prompt`.
    bad_third_proposal: bool,
    /// Answers to this query are cut off by the token limit.
    cut_off_query: Option<&'static str>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            score: by_keys,
            propose: add_keys,
            bad_first_score: false,
            bad_third_proposal: false,
            cut_off_query: None,
        }
    }
}

fn reply(text: &str, finish: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
}

fn chat(text: &str) -> ResponseTemplate {
    reply(text, "stop")
}

impl Respond for Script {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = last_user(&body);
        let seed = body["seed"].as_u64();
        match kind(&body) {
            Kind::Aspects => chat(
                &json!({"query_analysis": {"main_topic": "TOPIC", "user_intent": "to know"},
                        "aspects_selection": {"reasoning": "REASONING", "selected_aspects": ["Helpfulness", "Clarity"]}})
                .to_string(),
            ),
            Kind::Score => {
                if self.bad_first_score && seed == Some(SEED) {
                    return chat("The answer looks fine to me.");
                }
                let (h, c) = (self.score)(&prompt_of_score_request(&last));
                chat(
                    &json!({"Helpfulness": {"rationale": format!("scored {h}"), "score": h},
                            "Clarity": {"rationale": "fine", "score": c}})
                    .to_string(),
                )
            }
            Kind::Propose => {
                let cur = current_prompt(&last);
                let mut list: Vec<Value> = (self.propose)(&cur)
                    .into_iter()
                    .take(wanted(&last))
                    .map(|p| json!({"analysis": "a", "thought": "t", "new_system_prompt": p}))
                    .collect();
                if self.bad_third_proposal && list.len() >= 3 {
                    list[2] = json!({"analysis": "missing the prompt"});
                }
                chat(&format!("Here they are:\n{}", Value::Array(list)))
            }
            Kind::Rewrite => chat(
                &json!([
                    {"analysis": "a", "thought": "t", "new_answer": answer_under(&format!("{}\n{}", KEYS[0], KEYS[1]))},
                    {"analysis": "a", "thought": "t", "new_answer": answer_under(&KEYS.join("\n"))}
                ])
                .to_string(),
            ),
            Kind::Answer => {
                let system = body["messages"][0]["content"].as_str().unwrap_or_default();
                let text = answer_under(system);
                match self.cut_off_query {
                    Some(q) if last == q => reply(&text, "length"),
                    _ => chat(&text),
                }
            }
        }
    }
}

async fn script_server(script: Script) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(script)
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

pub(crate) fn report(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

fn stdout_of(a: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&a.get_output().stdout).to_string()
}

/// The dry run's rows for the same command: (step, base, evaluator,
/// optimizer), and its total.
fn dry_run_rows(server: &MockServer, q: &Path, extra: &[&str]) -> (Vec<[u64; 4]>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let done = optimize(server, q, &dir.path().join("dry"))
        .args(extra)
        .arg("--dry-run")
        .assert()
        .code(0);
    let out = stdout_of(&done);
    let rows = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("step"))
        .skip(1)
        .take_while(|l| !l.starts_with("total"))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            // step, beam, base, evaluator, optimizer (the query id is text).
            [f[0], f[2], f[3], f[4]]
        })
        .collect();
    let total = out
        .split("total: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("total");
    (rows, total)
}

fn query_text(id: &str) -> String {
    format!("Question number {}?", &id[1..])
}

#[tokio::test(flavor = "multi_thread")]
async fn each_proposal_is_scored_on_the_next_query_in_the_requests_the_dry_run_counts() {
    let server = script_server(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 4);
    let out = dir.path().join("out");
    let args = ["--depth", "2"];
    optimize(&server, &q, &out).args(args).assert().code(0);
    let sent = bodies(&server).await;

    // Step 0: aspects + the root's answer and score. Step 1: aspects, one
    // optimizer call, 3 answers + 3 scores. Step 2: aspects, 2 optimizer
    // calls (one per beam entry), 6 answers + 6 scores.
    let (rows, total) = dry_run_rows(&server, &q, &args);
    assert_eq!(rows, [[0, 1, 2, 0], [1, 3, 4, 1], [2, 6, 7, 2]]);
    assert_eq!(total, 26);
    assert_eq!(sent.len(), 26, "exactly the dry run's requests");
    let events = read_jsonl(&out.join("search.jsonl"));
    let per_step: Vec<[u64; 4]> = events
        .iter()
        .filter(|e| e["kind"] == "step")
        .map(|e| {
            let s = &e["summary"];
            let r = &s["requests"];
            [
                s["step"].as_u64().unwrap(),
                r["base"].as_u64().unwrap(),
                r["evaluator"].as_u64().unwrap(),
                r["optimizer"].as_u64().unwrap(),
            ]
        })
        .collect();
    assert_eq!(per_step, rows, "per step, as the dry run said");

    // The training order is a seeded mix, and each new prompt is answered
    // on the query after the one its parent was scored on.
    let r = report(&out);
    let order: Vec<String> = r["training_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(order.len(), 3);
    assert_ne!(order, ["q0", "q1", "q2"], "mixed, not in file order");
    let nodes: Vec<&Value> = events.iter().filter(|e| e["kind"] == "node").collect();
    let children: Vec<&&Value> = nodes.iter().filter(|n| n["role"] == "child").collect();
    assert_eq!(children.len(), 9);
    for c in &children {
        let step = c["step"].as_u64().unwrap() as usize;
        assert_eq!(c["query_id"], order[step].as_str());
        let parent = nodes
            .iter()
            .find(|n| n["node"] == c["parent"])
            .expect("parent node");
        assert_eq!(parent["query_id"], order[step - 1].as_str());
        // The base request for this prompt asked the next query.
        let prompt = c["prompt"].as_str().unwrap();
        let answered: Vec<String> = sent
            .iter()
            .filter(|b| kind(b) == Kind::Answer && b["messages"][0]["content"] == prompt)
            .map(last_user)
            .collect();
        assert_eq!(answered, [query_text(&order[step])], "{prompt}");
        // It came from an optimizer call that showed the parent's query.
        assert!(sent.iter().any(|b| kind(b) == Kind::Propose
            && last_user(b).contains(&query_text(&order[step - 1]))
            && current_prompt(&last_user(b)) == parent["prompt"].as_str().unwrap()));
    }

    // One optimizer call per expanded beam entry, for all 3 proposals, at
    // the optimizer's sampling; base and evaluator greedy, 2048 tokens.
    let propose: Vec<&Value> = sent.iter().filter(|b| kind(b) == Kind::Propose).collect();
    assert_eq!(propose.len(), 3);
    for b in &propose {
        assert_eq!(
            (&b["temperature"], &b["top_p"], &b["max_tokens"]),
            (&json!(0.2), &json!(0.95), &json!(2048)),
            "{b}"
        );
        assert!(last_user(b).contains("Write 3 better system prompts"));
    }
    for b in sent
        .iter()
        .filter(|b| matches!(kind(b), Kind::Answer | Kind::Score))
    {
        assert_eq!(
            (&b["temperature"], &b["max_tokens"]),
            (&json!(0.0), &json!(2048))
        );
    }
    // The scoring prompt carries the aspect analysis and reasoning.
    let score = sent.iter().find(|b| kind(b) == Kind::Score).unwrap();
    let text = last_user(score);
    assert!(
        text.contains("main topic: TOPIC") && text.contains("REASONING"),
        "{text}"
    );
    // The second step's optimizer calls show the path so far.
    assert!(
        propose[1..]
            .iter()
            .all(|b| last_user(b)
                .contains(&format!("Earlier versions (oldest first):\n---\n{START}")))
    );

    let best = std::fs::read_to_string(out.join("system_prompt.txt")).unwrap();
    assert_eq!(keys_in(&best), 2, "{best}");
    assert_eq!(r["best_reward"], 4.0);
    assert_eq!(r["best_path_reward"], 3.5);

    // `cai report` reads the report.json the search wrote through its type.
    cai().arg("report").arg(&out).assert().code(0);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for want in [
        "optimize run",
        "status <b>done</b>",
        "<dt>depths</dt><dd>3</dd>",
        "<dt>best reward</dt><dd>4</dd>",
        "<dt>requests</dt><dd>26</dd>",
        "Reward per search depth",
    ] {
        assert!(html.contains(want), "missing {want}");
    }
}

/// Alpha scores 4 then its children 2; Beta scores 2 then its children
/// 3.5: the last step favours Beta's line, the path average Alpha's.
fn alpha_beta(prompt: &str) -> (u8, u8) {
    let late = prompt.contains("Gamma") || prompt.contains("Delta");
    match (prompt.contains("Alpha"), prompt.contains("Beta"), late) {
        (_, true, true) => (3, 4),
        (true, _, true) => (2, 2),
        (true, _, false) => (4, 4),
        (_, true, false) => (2, 2),
        _ => (1, 1),
    }
}

fn alpha_beta_proposals(cur: &str) -> Vec<String> {
    if cur.contains("Alpha") || cur.contains("Beta") {
        vec![format!("{cur}\n- Gamma."), format!("{cur}\n- Delta.")]
    } else {
        vec![format!("{cur}\n- Alpha."), format!("{cur}\n- Beta.")]
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_beam_is_ranked_by_the_path_average_not_the_last_step() {
    let server = script_server(Script {
        score: alpha_beta,
        propose: alpha_beta_proposals,
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 3);
    let out = dir.path().join("out");
    optimize(&server, &q, &out)
        .args(["--depth", "2", "--actions", "2", "--beam", "2"])
        .assert()
        .code(0);
    let events = read_jsonl(&out.join("search.jsonl"));
    let steps: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "step")
        .map(|e| &e["summary"])
        .collect();
    // Step 2's best single reward is Beta's child (3.5) ...
    assert_eq!(steps[2]["best"], 3.5);
    // ... but the beam is Alpha's children: (4 + 2) / 2 = 3 > (2 + 3.5) / 2.
    assert_eq!(steps[2]["best_path"], 3.0);
    let node = |id: &Value| {
        events
            .iter()
            .find(|e| e["kind"] == "node" && &e["node"] == id)
            .unwrap()
    };
    for id in steps[2]["beam"].as_array().unwrap() {
        let n = node(id);
        assert!(n["prompt"].as_str().unwrap().contains("Alpha"), "{n}");
        assert_eq!(n["path_reward"], 3.0);
    }
    let best = std::fs::read_to_string(out.join("system_prompt.txt")).unwrap();
    assert_eq!(
        best.trim_end(),
        format!("{START}\n- Alpha.\n- Gamma."),
        "the earlier of two equal averages"
    );
    let r = report(&out);
    assert_eq!(
        (r["best_reward"].clone(), r["best_path_reward"].clone()),
        (json!(2.0), json!(3.0))
    );
    // Parents were not answered again: 1 root + 2 + 4 children.
    let answers = bodies(&server)
        .await
        .iter()
        .filter(|b| kind(b) == Kind::Answer)
        .count();
    assert_eq!(answers, 7);
}

/// One KEY bullet satisfies every aspect.
fn one_key_satisfies(prompt: &str) -> (u8, u8) {
    if keys_in(prompt) > 0 {
        (5, 5)
    } else {
        (2, 2)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_satisfied_prompt_is_carried_on_and_extends_the_depth_up_to_the_limit() {
    let server = script_server(Script {
        score: one_key_satisfies,
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 12);
    let out = dir.path().join("out");
    let done = optimize(&server, &q, &out)
        .args(["--depth", "2", "--max-depth-increase", "3"])
        .assert()
        .code(0);
    let r = report(&out);
    assert_eq!(
        (r["steps"].clone(), r["extended"].clone()),
        (json!(5), json!(3))
    );
    let events = read_jsonl(&out.join("search.jsonl"));
    let ext: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "depth")
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(ext, [3, 4, 5]);
    // Satisfied entries are re-scored on the next query, not optimised:
    // one optimizer call at step 1 (the root) and one at step 2 (the
    // unsatisfied second entry), none after.
    let sent = bodies(&server).await;
    assert_eq!(sent.iter().filter(|b| kind(b) == Kind::Propose).count(), 2);
    let kept: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "node" && e["role"] == "kept")
        .collect();
    assert!(kept.iter().all(|k| k["satisfied"] == true));
    assert_eq!(kept.len(), 1 + 2 + 2 + 2);
    assert_eq!(r["best_reward"], 5.0);
    assert!(stdout_of(&done).contains("depth extended by 3 step(s)"));

    // Without extension the search stops at --depth.
    let out2 = dir.path().join("out2");
    optimize(&server, &q, &out2)
        .args(["--depth", "2", "--max-depth-increase", "0"])
        .assert()
        .code(0);
    assert_eq!(report(&out2)["steps"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_search_is_final_and_dropped_requests_stay_dropped_unless_retried() {
    let server = script_server(Script {
        cut_off_query: Some("Question number 1?"),
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 3);
    let out = dir.path().join("out");
    let first = optimize(&server, &q, &out)
        .args(["--depth", "2"])
        .assert()
        .code(0);
    let n1 = bodies(&server).await.len();
    let drops = read_jsonl(&out.join(".cai/dropped.jsonl"));
    assert!(!drops.is_empty());
    assert!(drops
        .iter()
        .all(|d| d["kind"] == "cut_off" && d["stage"] == "optimize-answer"));
    assert_eq!(report(&out)["dropped_requests"], drops.len());

    // The same command again: the stored result, nothing sent.
    let again = optimize(&server, &q, &out)
        .args(["--depth", "2"])
        .assert()
        .code(0);
    assert_eq!(bodies(&server).await.len(), n1, "nothing sent");
    assert_eq!(stdout_of(&again), stdout_of(&first));
    let err = String::from_utf8_lossy(&again.get_output().stderr).to_string();
    assert!(err.contains("nothing was sent"), "{err}");

    // --retry-dropped sends exactly the dropped requests again (each
    // twice: the engine widens a cut-off reply's limit once).
    optimize(&server, &q, &out)
        .args(["--depth", "2", "--retry-dropped"])
        .assert()
        .code(0);
    let retried = bodies(&server).await;
    assert_eq!(retried.len(), n1 + 2 * drops.len());
    assert!(retried[n1..]
        .iter()
        .all(|b| kind(b) == Kind::Answer && last_user(b) == "Question number 1?"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_stopped_by_max_requests_resumes_without_sending_anything_twice() {
    let server = script_server(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 4);
    let out = dir.path().join("out");
    let stopped = optimize(&server, &q, &out)
        .args(["--depth", "2", "--max-requests", "10"])
        .assert()
        .code(3);
    let err = String::from_utf8_lossy(&stopped.get_output().stderr).to_string();
    assert!(err.contains("--max-requests"), "{err}");
    assert_eq!(bodies(&server).await.len(), 10);
    assert!(report(&out)["status"]
        .as_str()
        .unwrap()
        .starts_with("stopped"));
    assert!(!out.join("system_prompt.txt").exists());

    optimize(&server, &q, &out)
        .args(["--depth", "2"])
        .assert()
        .code(0);
    assert_eq!(
        bodies(&server).await.len(),
        26,
        "a fresh run's 26, none twice"
    );
    let r = report(&out);
    assert_eq!(
        (
            r["requests"]["requests"].clone(),
            r["requests"]["cached"].clone()
        ),
        (json!(16), json!(10))
    );
    assert_eq!(
        keys_in(&std::fs::read_to_string(out.join("system_prompt.txt")).unwrap()),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_evaluator_and_optimizer_replies_are_asked_again_then_dropped() {
    let server = script_server(Script {
        bad_first_score: true,
        bad_third_proposal: true,
        ..Script::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 2);
    let out = dir.path().join("out");
    optimize(&server, &q, &out)
        .args(["--depth", "1"])
        .assert()
        .code(0);
    // 2 aspects; root: answer + 2 scores (the first not JSON); one
    // optimizer call whose third item is unusable; 2 children: answer + 2
    // scores each.
    let sent = bodies(&server).await;
    let count = |k: Kind| sent.iter().filter(|b| kind(b) == k).count();
    assert_eq!(
        [Kind::Aspects, Kind::Answer, Kind::Score, Kind::Propose].map(count),
        [2, 3, 6, 1]
    );
    let events = read_jsonl(&out.join("search.jsonl"));
    let dropped: Vec<&Value> = events.iter().filter(|e| e["kind"] == "dropped").collect();
    assert_eq!(dropped.len(), 1, "{events:?}");
    assert_eq!(dropped[0]["variant"], 3);
    assert_eq!(dropped[0]["reason"], "no `new_system_prompt` string");
    assert_eq!(report(&out)["dropped"], 1);
    // Every score kept came from a re-ask: the next seed, sampled (the
    // same greedy request would get the same reply).
    let scores: Vec<(u64, f64)> = sent
        .iter()
        .filter(|b| kind(b) == Kind::Score)
        .map(|b| {
            (
                b["seed"].as_u64().unwrap(),
                b["temperature"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(scores, [(SEED, 0.0), (SEED + 1, 0.7)].repeat(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_compares_prompts_and_places_the_best_matching_examples() {
    let server = script_server(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 4);
    let plain = dir.path().join("plain.txt");
    std::fs::write(&plain, format!("{START}\n")).unwrap();
    let tuned = dir.path().join("tuned.txt");
    std::fs::write(&tuned, format!("{START}\n{}\n{}\n", KEYS[0], KEYS[1])).unwrap();
    let ex = dir.path().join("examples.json");
    std::fs::write(
        &ex,
        json!([
            {"query": "How do I bake bread?", "answer": "Knead it."},
            {"query": "Question number 2 about bread?", "answer": "A number."},
            {"query": "Which number is prime?", "answer": "Seven."}
        ])
        .to_string(),
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
        .args(["--base-url", &url, "--seed", "7", "--num-examples", "2"])
        .arg("--queries")
        .arg(&q)
        .arg("--out")
        .arg(&out)
        .arg("--examples")
        .arg(&ex)
        .arg("--prompt")
        .arg(&plain)
        .arg("--prompt")
        .arg(&tuned)
        .assert()
        .code(0);
    let sent = bodies(&server).await;
    // 4 aspect requests + 4 × 2 × (answer + score).
    assert_eq!(sent.len(), 20);
    // The query "Question number 2?" gets the two best BM25 matches, best
    // first, as turns between the system prompt and the query.
    let answer = sent
        .iter()
        .find(|b| kind(b) == Kind::Answer && last_user(b) == "Question number 2?")
        .unwrap();
    let turns: Vec<(&str, &str)> = answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns[1..],
        [
            ("user", "Question number 2 about bread?"),
            ("assistant", "A number."),
            ("user", "Which number is prime?"),
            ("assistant", "Seven."),
            ("user", "Question number 2?")
        ]
    );
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
    let (lo, hi) = (
        p["ci95"][0].as_f64().unwrap(),
        p["ci95"][1].as_f64().unwrap(),
    );
    assert!(
        lo == 0.0 && hi > 0.3 && hi < 0.6,
        "Wilson interval for 0/4: {lo}–{hi}"
    );
    assert!(stdout_of(&done).contains("0 wins, 0 ties, 4 losses of 4"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_example_is_searched_over_k_candidates_and_the_best_is_kept() {
    let server = script_server(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 2);
    let ex = dir.path().join("examples.jsonl");
    let one = answer_under(KEYS[0]);
    let three = answer_under(&KEYS.join("\n"));
    std::fs::write(
        &ex,
        format!(
            "{}\n{}\n",
            json!({"query": "How do I bake bread?", "answer": one}),
            json!({"query": "Question number 5?", "answer": three})
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    optimize(&server, &q, &out)
        .args(["--depth", "1", "--num-examples", "1"])
        .args(["--example-rounds", "3", "--example-candidates", "2"])
        .arg("--examples")
        .arg(&ex)
        .assert()
        .code(0);
    let bank: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("examples.json")).unwrap()).unwrap();
    let events = read_jsonl(&out.join("search.jsonl"));
    let exs: Vec<&Value> = events.iter().filter(|e| e["kind"] == "example").collect();
    // Example 0 scores 3; its 2 candidates score 4 and 5: the 5 is kept,
    // and being satisfied, no second round is asked.
    assert_eq!(exs[0]["reward"], 3.0);
    assert_eq!(exs[0]["status"], "rewritten");
    assert_eq!(exs[0]["rounds"], 1);
    assert_eq!(
        exs[0]["candidates"],
        json!([{"round": 1, "reward": 4.0}, {"round": 1, "reward": 5.0}])
    );
    assert_eq!(exs[0]["new_reward"], 5.0);
    assert_eq!(bank[0]["answer"], three.as_str());
    assert_eq!(exs[1]["status"], "satisfied");
    let sent = bodies(&server).await;
    assert_eq!(sent.iter().filter(|b| kind(b) == Kind::Rewrite).count(), 1);
    // The prompt search places the best BM25 match of the optimised bank.
    let answer = sent
        .iter()
        .find(|b| kind(b) == Kind::Answer && last_user(b) == "Question number 0?")
        .unwrap();
    let m = answer["messages"].as_array().unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m[1]["content"], "Question number 5?");
}

#[tokio::test(flavor = "multi_thread")]
async fn cai_toml_sets_the_optimizer_sampling() {
    let server = script_server(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 2);
    std::fs::write(
        dir.path().join("cai.toml"),
        "optimizer_temperature = 0.5\noptimizer_max_tokens = 1000\nbase_max_tokens = 300\n",
    )
    .unwrap();
    optimize(&server, &q, &dir.path().join("out"))
        .current_dir(dir.path())
        .args(["--depth", "1", "--optimizer-top-p", "0.9"])
        .assert()
        .code(0);
    let sent = bodies(&server).await;
    let p = sent.iter().find(|b| kind(b) == Kind::Propose).unwrap();
    assert_eq!(
        (&p["temperature"], &p["top_p"], &p["max_tokens"]),
        (&json!(0.5), &json!(0.9), &json!(1000))
    );
    let a = sent.iter().find(|b| kind(b) == Kind::Answer).unwrap();
    assert_eq!(a["max_tokens"], 300);
}

#[test]
fn bad_options_and_files_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = queries(dir.path(), 1);
    let bad = dir.path().join("aspects.json");
    std::fs::write(&bad, "[{\"name\": \"x\"}").unwrap();
    let run = |extra: &[&str]| {
        let a = cai()
            .args(["optimize", "--provider", "openai", "--model", "m"])
            .args(["--base-url", "http://127.0.0.1:9/v1", "--out", "o"])
            .arg("--queries")
            .arg(&q)
            .args(extra)
            .assert()
            .code(2);
        String::from_utf8_lossy(&a.get_output().stderr).to_string()
    };
    let e = run(&["--aspects", bad.to_str().unwrap()]);
    assert!(e.contains("aspects.json:1"), "{e}");
    let e = run(&["--evaluator", "nosuch:model"]);
    assert!(e.contains("--evaluator `nosuch:model`"), "{e}");
    let e = run(&["--optimizer-temperature", "3"]);
    assert!(
        e.contains("--optimizer-temperature 3 is outside 0..=2"),
        "{e}"
    );
    let e = run(&["--base-max-tokens", "0"]);
    assert!(e.contains("--base-max-tokens must be at least 1"), "{e}");
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
