//! `cai serve`'s search and solver approaches (`mcts`, `pvg`, `rstar`,
//! `z3`, `re2`, `leap`) and the ways of naming and combining approaches (`a|b`,
//! the `<optillm_approach>` tag, `return_full_response`), against a
//! scripted upstream on 127.0.0.1 that answers each kind of request by a
//! script and records when each call arrived. Calls that arrive within
//! half the upstream latency of each other form one wave: the waves show
//! the number, order and concurrency of the calls.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::serve_support::{openai_client, python, Serve};

/// The upstream's latency: long enough that concurrent calls land in one wave.
const LATENCY: Duration = Duration::from_millis(300);

/// Reply text from the kind of request, its conversation's text, and the
/// choice index.
type Script = dyn Fn(&str, &str, usize) -> String + Send + Sync;

struct Call {
    kind: String,
    at: Duration,
    body: Value,
}

struct Up {
    start: Instant,
    script: Box<Script>,
    calls: Mutex<Vec<Call>>,
}

struct Scripted {
    url: String,
    up: Arc<Up>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What kind of request an approach sent, read from its prompt.
fn kind(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let text = |m: &Value| m["content"].as_str().unwrap_or("").to_string();
    let last = messages.last().map(text).unwrap_or_default();
    let system = messages
        .first()
        .filter(|m| m["role"] == "system")
        .map(text)
        .unwrap_or_default();
    let k = if last.contains("Rate from 0 to 10 how likely this partial") {
        "mcts-eval"
    } else if last.contains("Write only the next step of reasoning") {
        "mcts-step"
    } else if last.contains("Now write the complete final answer") {
        "mcts-final"
    } else if last.contains("You are a verifier") {
        "pvg-verify"
    } else if system.contains("helpful prover") {
        "pvg-helpful"
    } else if system.contains("sneaky prover") {
        "pvg-sneaky"
    } else if last.contains("Write only the next single step") {
        "rstar-step"
    } else if last.contains("Write the remaining steps") {
        "rstar-finish"
    } else if last.contains("Rephrase the question") {
        "rstar-rephrase"
    } else if last.contains("Here is the beginning of a solution") {
        "rstar-complete"
    } else if last.contains("SMT-LIB 2 program for the z3 solver") {
        "z3-formalise"
    } else if last.contains("z3 solver") {
        "z3-final"
    } else if last.contains("Read the question again") {
        "re2"
    } else if last.contains("Compare the attempted answers with the reference answer") {
        "leap-low"
    } else if last.contains("Condense the principles below") {
        "leap-high"
    } else if system.contains("Principles learnt from mistakes") {
        "leap-final"
    } else if system.contains("<thinking>") {
        "cot"
    } else {
        "answer"
    };
    k.to_string()
}

async fn complete(State(up): State<Arc<Up>>, Json(body): Json<Value>) -> Json<Value> {
    let k = kind(&body);
    let at = up.start.elapsed();
    // The script reads the whole conversation, the last message at its end.
    let last = body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        })
        .unwrap_or_default();
    up.calls.lock().unwrap().push(Call {
        kind: k.clone(),
        at,
        body: body.clone(),
    });
    tokio::time::sleep(LATENCY).await;
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let choices: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "message": {"role": "assistant", "content": (up.script)(&k, &last, i)}, "finish_reason": "stop"}))
        .collect();
    Json(json!({
        "id": "up", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n}
    }))
}

impl Scripted {
    async fn start(script: impl Fn(&str, &str, usize) -> String + Send + Sync + 'static) -> Self {
        let up = Arc::new(Up {
            start: Instant::now(),
            script: Box::new(script),
            calls: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", routing::post(complete))
            .with_state(up.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Scripted {
            url: format!("http://{addr}/v1"),
            up,
            task,
        }
    }

    /// The kinds of the calls, grouped into waves, each wave sorted.
    fn waves(&self) -> Vec<Vec<String>> {
        let calls = self.up.calls.lock().unwrap();
        let mut order: Vec<&Call> = calls.iter().collect();
        order.sort_by_key(|c| c.at);
        let mut waves: Vec<(Duration, Vec<String>)> = Vec::new();
        for c in order {
            match waves.last_mut() {
                Some((start, w)) if c.at - *start < LATENCY / 2 => w.push(c.kind.clone()),
                _ => waves.push((c.at, vec![c.kind.clone()])),
            }
        }
        waves
            .into_iter()
            .map(|(_, mut w)| {
                w.sort();
                w
            })
            .collect()
    }

    fn bodies(&self, kind: &str) -> Vec<Value> {
        let calls = self.up.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| c.body.clone())
            .collect()
    }

    fn clear(&self) {
        self.up.calls.lock().unwrap().clear();
    }
}

fn w(spec: &[(&str, usize)]) -> Vec<String> {
    let mut out: Vec<String> = spec
        .iter()
        .flat_map(|(k, n)| std::iter::repeat_n(k.to_string(), *n))
        .collect();
    out.sort();
    out
}

/// POSTs a chat request; the reply's JSON, or the streamed events' JSON.
async fn post(serve: &Serve, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/chat/completions", serve.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    if body["stream"] == true && status == 200 {
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        return (status, Value::Array(events));
    }
    (status, serde_json::from_str(&text).unwrap())
}

fn ask(model: &str, extra: Value) -> Value {
    let mut b =
        json!({"model": model, "messages": [{"role": "user", "content": "What is 6 x 7?"}]});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            b[k] = v;
        }
    }
    b
}

/// The content streamed for each choice index, and the usage chunk.
fn streamed(events: &Value) -> (Vec<String>, Value) {
    let mut texts: Vec<String> = Vec::new();
    let mut usage = Value::Null;
    for e in events.as_array().unwrap() {
        if !e["usage"].is_null() {
            usage = e.clone();
        }
        for c in e["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            if texts.len() <= i {
                texts.resize(i + 1, String::new());
            }
            if let Some(t) = c["delta"]["content"].as_str() {
                texts[i].push_str(t);
            }
        }
    }
    (texts, usage)
}

fn usage(r: &Value) -> (u64, u64) {
    (
        r["usage"]["prompt_tokens"].as_u64().unwrap(),
        r["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

/// The proposal a self-evaluation request rates: its last line.
fn rated(last: &str) -> String {
    let body = last
        .split("Proposed answer so far:\n\n")
        .nth(1)
        .unwrap_or("")
        .split("\n\nRate")
        .next()
        .unwrap_or("");
    body.lines().last().unwrap_or("").to_string()
}

fn mcts_script(k: &str, last: &str, i: usize) -> String {
    match k {
        "answer" => format!("cand {i}"),
        "mcts-step" => format!("step {i}"),
        "mcts-final" => format!("final {i}"),
        "mcts-eval" => {
            // Choice 1 is the good one at every level.
            if rated(last).ends_with(" 1") {
                "9".into()
            } else {
                "Score: 3 out of 10".into()
            }
        }
        other => format!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mcts_expands_together_scores_together_and_answers_by_the_best_child() {
    let up = Scripted::start(mcts_script).await;
    let serve = Serve::start(&up.url, &[], &[]);
    // Defaults: 2 simulations, depth 1, 3 children (--best-of-n). The first
    // simulation expands the root (one call with n = 3) and scores the three
    // answers at once; the second selects a complete answer and costs nothing.
    let (status, r) = post(&serve, ask("mcts-up-model", json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        up.waves(),
        vec![w(&[("answer", 1)]), w(&[("mcts-eval", 3)])]
    );
    assert_eq!(up.bodies("answer")[0]["n"], 3);
    assert_eq!(r["choices"][0]["message"]["content"], "cand 1");
    assert_eq!(r["cai"]["upstream_calls"], 4);
    assert_eq!(r["cai"]["approach"], "mcts");
    assert_eq!(usage(&r), (40, 15 + 15));

    // Overrides in the body: depth 2, streamed, two choices. Each choice:
    // steps (n = 3), their scores, the best step's complete answers (n = 3),
    // their scores — four waves, both choices side by side.
    up.clear();
    let body = ask(
        "up-model",
        json!({"approach": "mcts", "mcts_depth": 2, "mcts_simulations": 2, "mcts_exploration": 0.5,
               "n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, events) = post(&serve, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.waves(),
        vec![
            w(&[("mcts-step", 2)]),
            w(&[("mcts-eval", 6)]),
            w(&[("mcts-final", 2)]),
            w(&[("mcts-eval", 6)])
        ]
    );
    // The complete answers were asked for after the best step.
    for b in up.bodies("mcts-final") {
        let last = b["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(last.contains("1. step 1"), "{last}");
    }
    let (texts, usage_chunk) = streamed(&events);
    assert_eq!(texts, vec!["final 1", "final 1"]);
    assert_eq!(usage_chunk["cai"]["upstream_calls"], 16);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 160);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4 * 15 + 12 * 5);

    // Out-of-range overrides are refused, naming the field.
    let (status, r) = post(&serve, ask("mcts-up-model", json!({"mcts_depth": 0}))).await;
    assert_eq!(status, 400);
    assert_eq!(r["error"]["param"], "mcts_depth");
}

fn pvg_script(k: &str, last: &str, i: usize) -> String {
    match k {
        "pvg-helpful" if last.contains("A verifier scored this earlier solution") => {
            format!("better c{i}")
        }
        "pvg-helpful" => format!("helpful c{i}"),
        "pvg-sneaky" => format!("sneaky c{i}"),
        "pvg-verify" => {
            let solution = last.rsplit("Solution:\n\n").next().unwrap_or("");
            // The verifier is fooled by the sneaky prover's first solution:
            // the rule still takes a helpful one.
            match solution {
                "sneaky c0" => "Looks right.\n10".into(),
                "better c2" => "Checked.\n9".into(),
                "helpful c0" => "7".into(),
                _ => "2".into(),
            }
        }
        other => format!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pvg_plays_its_rounds_and_keeps_the_best_helpful_solution() {
    let up = Scripted::start(pvg_script).await;
    let serve = Serve::start(&up.url, &[], &[]);
    // Defaults: 2 rounds of 3 + 3 solutions. Each round: both provers at
    // once, then six verdicts at once.
    let (status, r) = post(&serve, ask("up-model", json!({"approach": "pvg"}))).await;
    assert_eq!(status, 200, "{r}");
    let round = vec![
        w(&[("pvg-helpful", 1), ("pvg-sneaky", 1)]),
        w(&[("pvg-verify", 6)]),
    ];
    assert_eq!(up.waves(), [round.clone(), round].concat());
    assert_eq!(r["choices"][0]["message"]["content"], "better c2");
    assert_eq!(r["cai"]["upstream_calls"], 16);
    assert_eq!(usage(&r), (160, 4 * 15 + 12 * 5));
    // The second round's helpful prover saw the first round's best (7/10).
    let second = &up.bodies("pvg-helpful")[1];
    let last = second["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last.contains("scored this earlier solution 7/10") && last.contains("helpful c0"));

    // One round of 2 + 2, two choices, streamed.
    up.clear();
    let body = ask(
        "pvg-up-model",
        json!({"pvg_rounds": 1, "pvg_solutions": 2, "n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, events) = post(&serve, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.waves(),
        vec![
            w(&[("pvg-helpful", 2), ("pvg-sneaky", 2)]),
            w(&[("pvg-verify", 8)])
        ]
    );
    assert!(up.bodies("pvg-sneaky").iter().all(|b| b["n"] == 2));
    let (texts, usage_chunk) = streamed(&events);
    assert_eq!(texts, vec!["helpful c0", "helpful c0"]);
    assert_eq!(usage_chunk["cai"]["upstream_calls"], 12);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4 * 10 + 8 * 5);
}

fn rstar_script(k: &str, last: &str, _i: usize) -> String {
    match k {
        "rstar-step" => "First, 6 times 7.".into(),
        "rstar-finish" if last.contains("Solution so far") => {
            "So the product follows.\nThe answer is: 42".into()
        }
        "rstar-finish" => "The answer is: 41".into(),
        "rstar-rephrase" => "What is the product of 6 and 7?".into(),
        // The discriminator always reaches 41: only that trajectory is
        // mutually consistent, though 42 was found first and rewarded more.
        "rstar-complete" => "Continuing.\nThe answer is: 41".into(),
        other => format!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rstar_searches_then_keeps_the_trajectory_the_discriminator_confirms() {
    let up = Scripted::start(rstar_script).await;
    let serve = Serve::start(&up.url, &[], &[]);
    // Depth 2, 2 rollouts. Rollout 1 expands the root (one step, finish,
    // rephrase: at once), then the step (finish only: the last level).
    // Rollout 2 takes the root's unvisited finish: no call. Then the
    // discriminator completes both trajectories at once.
    let body = ask(
        "rstar-up-model",
        json!({"rstar_max_depth": 2, "rstar_num_rollouts": 2, "rstar_c": 1.0}),
    );
    let (status, r) = post(&serve, body.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        up.waves(),
        vec![
            w(&[
                ("rstar-step", 1),
                ("rstar-finish", 1),
                ("rstar-rephrase", 1)
            ]),
            w(&[("rstar-finish", 1)]),
            w(&[("rstar-complete", 2)])
        ]
    );
    assert_eq!(r["choices"][0]["message"]["content"], "The answer is: 41");
    assert_eq!(r["cai"]["upstream_calls"], 6);
    assert_eq!(usage(&r), (60, 30));
    // The discriminator got the first half of the longer trajectory.
    let halves: Vec<String> = up
        .bodies("rstar-complete")
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    assert!(halves
        .iter()
        .any(|h| h.ends_with("Beginning of the solution:\nFirst, 6 times 7.")));

    // Streamed, two choices.
    up.clear();
    let mut body = body;
    body["n"] = json!(2);
    body["stream"] = json!(true);
    let (status, events) = post(&serve, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.waves().iter().map(Vec::len).collect::<Vec<_>>(),
        [6, 2, 4]
    );
    let (texts, _) = streamed(&events);
    assert_eq!(texts, vec!["The answer is: 41", "The answer is: 41"]);

    // The defaults (depth 3, 5 rollouts) end in an answer too.
    up.clear();
    let (status, r) = post(&serve, ask("rstar-up-model", json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert!(r["cai"]["upstream_calls"].as_u64().unwrap() >= 6);
}

const SAT: &str =
    "```smt2\n(declare-const x Int)\n(assert (= (* 6 7) x))\n(check-sat)\n(get-value (x))\n```";
const UNSAT: &str = "(declare-const x Int)(assert (> x 2))(assert (< x 2))(check-sat)";
const MALFORMED: &str = "```smt2\n(declare-const x Int)\n(assert (> x 2)\n(check-sat)\n```";
/// Fermat's last theorem for cubes: z3's nonlinear integer search never ends.
const LOOPS: &str = "(declare-const x Int)(declare-const y Int)(declare-const z Int)(assert (> x 0))(assert (> y 0))(assert (> z 0))(assert (= (+ (* x x x) (* y y y)) (* z z z)))(check-sat)";

fn z3_script(k: &str, last: &str, _i: usize) -> String {
    match k {
        "z3-formalise" => {
            let q = last;
            if q.contains("WRITES") {
                format!(
                    "(set-option :regular-output-channel \"{}\")(check-sat)",
                    q.rsplit("WRITES ")
                        .next()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                )
            } else {
                // The question is in the conversation, not the formalisation ask.
                "SCRIPTED".into()
            }
        }
        "z3-final" => "The answer is 42.".into(),
        other => format!("unexpected {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn z3_runs_the_solver_on_the_models_program_and_answers_from_its_verdict() {
    if z3_missing() {
        return;
    }
    let programs: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let p = programs.clone();
    let up = Scripted::start(move |k, last, i| {
        if k == "z3-formalise" && !last.contains("WRITES") {
            return p.lock().unwrap().clone();
        }
        z3_script(k, last, i)
    })
    .await;
    let serve = Serve::start(&up.url, &["--z3-timeout", "1"], &[]);
    let final_prompt = |up: &Scripted| {
        let b = up.bodies("z3-final");
        b.last().unwrap()["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let cases = [
        (SAT, "((x 42))", None),
        (UNSAT, "unsat", None),
        (
            MALFORMED,
            "solver error: (error",
            Some("z3: the solver failed"),
        ),
    ];
    for (program, verdict, note) in cases {
        up.clear();
        *programs.lock().unwrap() = program.to_string();
        let (status, r) = post(&serve, ask("z3-up-model", json!({}))).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            up.waves(),
            vec![w(&[("z3-formalise", 1)]), w(&[("z3-final", 1)])]
        );
        let fp = final_prompt(&up);
        assert!(fp.contains(verdict), "{verdict} not in {fp}");
        assert_eq!(r["choices"][0]["message"]["content"], "The answer is 42.");
        assert_eq!(
            r["cai"]["note"]
                .as_str()
                .map(|n| n.starts_with(note.unwrap_or("-"))),
            note.map(|_| true)
        );
        assert_eq!(usage(&r), (20, 10));
    }
    assert!(final_prompt(&up).contains("Answer my last message by your own reasoning"));

    // A program that never ends is cut at the time limit; the model answers
    // without the solver, and the note says so.
    up.clear();
    *programs.lock().unwrap() = LOOPS.to_string();
    let started = Instant::now();
    let (status, r) = post(
        &serve,
        ask("up-model", json!({"approach": "z3", "n": 2, "stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    let (texts, usage_chunk) = streamed(&r);
    assert_eq!(texts, vec!["The answer is 42.", "The answer is 42."]);
    let note = usage_chunk["cai"]["note"].as_str().unwrap();
    assert!(note.contains("time limit"), "{note}");
    assert!(final_prompt(&up).contains("ran out of its 1 s time limit"));
    assert_eq!(up.waves().iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);

    // A program that would make the solver write a file is refused.
    up.clear();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("written.txt");
    let mut body = ask("z3-up-model", json!({}));
    body["messages"][0]["content"] = json!(format!("WRITES {}", target.display()));
    let (status, r) = post(&serve, body).await;
    assert_eq!(status, 200, "{r}");
    assert!(!target.exists());
    assert!(r["cai"]["note"]
        .as_str()
        .unwrap()
        .contains("output channel"));
}

/// Whether Debian's `z3` is missing (then the z3 tests say so and pass,
/// except on CI, where scripts/test.sh installs it).
pub fn z3_missing() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("z3").is_file()));
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have z3 (apt-get install z3)"
        );
        eprintln!("skipped: install z3 (apt-get install z3) to run this test");
    }
    !found
}

#[tokio::test(flavor = "multi_thread")]
async fn z3_without_the_solver_is_refused_naming_the_package() {
    let up = Scripted::start(z3_script).await;
    let serve = Serve::start(&up.url, &[], &[("PATH", "/nonexistent")]);
    let (status, r) = post(&serve, ask("z3-up-model", json!({}))).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["error"]["code"], "solver_missing");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("apt-get install z3"));
    assert!(up.waves().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn re2_asks_once_with_the_question_read_twice() {
    let up = Scripted::start(|k, _, i| format!("{k} {i}")).await;
    let serve = Serve::start(&up.url, &[], &[]);
    let (status, r) = post(&serve, ask("re2-up-model", json!({"n": 2}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(up.waves(), vec![w(&[("re2", 2)])]);
    let body = &up.bodies("re2")[0];
    assert_eq!(
        body["messages"][0]["content"],
        "What is 6 x 7?\nRead the question again: What is 6 x 7?"
    );
    assert_eq!(r["choices"][1]["message"]["content"], "re2 0");
    assert_eq!(usage(&r), (20, 10));
}

fn create(args: Value) -> Value {
    json!({"op": "create", "args": args})
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_joined_by_a_bar_run_at_once_tags_pick_and_full_responses_show_reasoning() {
    let Some(py) = python() else { return };
    let up = Scripted::start(|k, last, i| match k {
        "cot" => {
            "<thinking>6 sevens</thinking><reflection>fine</reflection><output>42</output>".into()
        }
        "re2" => format!("re2 {i}"),
        _ => mcts_script(k, last, i),
    })
    .await;
    let serve = Serve::start(&up.url, &[], &[]);
    let q = json!([{"role": "user", "content": "What is 6 x 7?"}]);
    let tagged = json!([
        {"role": "system", "content": "Be brief. <optillm_approach>cot_reflection</optillm_approach>"},
        {"role": "user", "content": "What is 6 x 7?"}
    ]);
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([create(
            json!({"model": "mcts|cot_reflection-up-model", "messages": q})
        ),]),
    )
    .await;
    let r = &out[0]["reply"];
    assert_eq!(r["cai"]["approach"], "mcts|cot_reflection", "{r}");
    let contents: Vec<&str> = r["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["cand 1", "42"]);
    assert_eq!(r["choices"][1]["index"], 1);
    // Both pipelines' first calls went out together.
    assert_eq!(
        up.waves(),
        vec![w(&[("answer", 1), ("cot", 1)]), w(&[("mcts-eval", 3)])]
    );

    up.clear();
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([
            create(json!({"model": "up-model", "messages": tagged})),
            create(json!({"model": "up-model", "messages": tagged, "extra_body": {"return_full_response": true}})),
            create(json!({"model": "mcts-up-model", "messages": q, "extra_body": {"return_full_response": true}})),
            {"op": "stream", "args": {"model": "up-model", "messages": q, "extra_body": {"optillm_approach": "re2|cot_reflection"}}}
        ]),
    )
    .await;
    let r = &out[0]["reply"];
    assert_eq!(r["cai"]["approach"], "cot_reflection", "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], "42");
    // The tag never reached the upstream; the rest of its message did.
    let systems: Vec<String> = up
        .bodies("cot")
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    assert!(systems.iter().all(|s| !s.contains("optillm_approach")));
    assert_eq!(
        systems
            .iter()
            .filter(|s| s.starts_with("Be brief.\n\n"))
            .count(),
        2
    );
    let full = out[1]["reply"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(full.starts_with("<thinking>6 sevens</thinking>"), "{full}");
    let tree = out[2]["reply"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        tree.contains("Step 1 (visits 2, mean score 0.90):\ncand 1"),
        "{tree}"
    );
    let chunks = out[3]["chunks"].as_array().unwrap();
    let mut texts = [String::new(), String::new()];
    for c in chunks {
        for ch in c["chunk"]["choices"].as_array().unwrap() {
            if let Some(t) = ch["delta"]["content"].as_str() {
                texts[ch["index"].as_u64().unwrap() as usize].push_str(t);
            }
        }
    }
    assert_eq!(texts, ["re2 0".to_string(), "42".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn leap_learns_principles_from_mistakes_on_the_conversations_examples() {
    let up = Scripted::start(|k, text, i| match k {
        "answer" if text.starts_with("2 + 2") => format!("5 (try {i})"),
        "answer" => format!("answer {i}"),
        "leap-low" => "Add carefully.".into(),
        "leap-high" => "- Check sums twice.".into(),
        "leap-final" => "42".into(),
        other => format!("unexpected {other}"),
    })
    .await;
    let serve = Serve::start(&up.url, &[], &[]);
    let convo = json!([
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3 + 3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "What is 6 x 7?"}
    ]);
    // Each example answered afresh (n = 3, both at once), each compared with
    // its reference (at once), the principles condensed, the final answer.
    let (status, r) = post(&serve, json!({"model": "leap-up-model", "messages": convo})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        up.waves(),
        vec![
            w(&[("answer", 2)]),
            w(&[("leap-low", 2)]),
            w(&[("leap-high", 1)]),
            w(&[("leap-final", 1)])
        ]
    );
    assert_eq!(r["choices"][0]["message"]["content"], "42");
    assert_eq!(usage(&r), (60, 2 * 15 + 4 * 5));
    // The first example's comparison (the two arrive in either order).
    let lows: Vec<String> = up
        .bodies("leap-low")
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    let low = lows
        .iter()
        .find(|l| l.contains("Question:\n2 + 2?"))
        .unwrap();
    assert!(
        low.contains("Reference answer:\n4") && low.contains("Attempt 3:\n5 (try 2)"),
        "{low}"
    );
    let fin = &up.bodies("leap-final")[0]["messages"];
    assert!(fin[0]["content"]
        .as_str()
        .unwrap()
        .ends_with("- Check sums twice."));
    assert_eq!(fin.as_array().unwrap().len(), 6);

    // Two samples per example (the request's best_of_n), two choices, streamed.
    up.clear();
    let body = json!({"model": "leap-up-model", "messages": convo, "best_of_n": 2, "n": 2, "stream": true});
    let (status, events) = post(&serve, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.waves().iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 4, 2, 2]
    );
    assert!(up.bodies("answer").iter().all(|b| b["n"] == 2));
    assert_eq!(streamed(&events).0, vec!["42", "42"]);

    // Without examples: answered directly, and said so.
    up.clear();
    let (status, r) = post(&serve, ask("leap-up-model", json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(up.waves(), vec![w(&[("answer", 1)])]);
    assert!(r["cai"]["note"]
        .as_str()
        .unwrap()
        .starts_with("leap: the conversation holds no example turns"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_full_response_flag_shows_reasoning_unless_the_request_says_otherwise() {
    let up = Scripted::start(|k, _, _| match k {
        "cot" => "<thinking>6 sevens</thinking><output>42</output>".into(),
        other => format!("unexpected {other}"),
    })
    .await;
    let serve = Serve::start(&up.url, &["--return-full-response"], &[]);
    let (_, full) = post(&serve, ask("cot_reflection-up-model", json!({}))).await;
    assert_eq!(
        full["choices"][0]["message"]["content"],
        "<thinking>6 sevens</thinking><output>42</output>"
    );
    let (_, short) = post(
        &serve,
        ask(
            "cot_reflection-up-model",
            json!({"return_full_response": false}),
        ),
    )
    .await;
    assert_eq!(short["choices"][0]["message"]["content"], "42");
    // The field is the proxy's own: it never reaches the upstream.
    assert!(up
        .bodies("cot")
        .iter()
        .all(|b| b.get("return_full_response").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_pipeline_the_previous_answer_competes_inside_the_search() {
    let up = Scripted::start(|k, text, i| match k {
        "cot" => "<thinking>t</thinking><output>42</output>".into(),
        "mcts-eval" if rated(text).ends_with("42") => "9".into(),
        "pvg-verify" if text.ends_with("Solution:\n\n42") => "9".into(),
        "mcts-eval" | "pvg-verify" => "2".into(),
        "pvg-helpful" => format!("helpful c{i}"),
        "pvg-sneaky" => format!("sneaky c{i}"),
        _ => mcts_script(k, text, i),
    })
    .await;
    let serve = Serve::start(&up.url, &[], &[]);
    // mcts: the reflected answer and two fresh ones are the root's children.
    let (status, r) = post(&serve, ask("cot_reflection&mcts-up-model", json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        up.waves(),
        vec![
            w(&[("cot", 1)]),
            w(&[("answer", 1)]),
            w(&[("mcts-eval", 3)])
        ]
    );
    assert_eq!(up.bodies("answer")[0]["n"], 2);
    assert_eq!(r["choices"][0]["message"]["content"], "42");

    // pvg: the reflected answer takes a helpful seat in the first round.
    up.clear();
    let body = ask(
        "up-model",
        json!({"approach": "cot_reflection&pvg", "pvg_rounds": 1, "pvg_solutions": 2}),
    );
    let (status, r) = post(&serve, body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        up.waves(),
        vec![
            w(&[("cot", 1)]),
            w(&[("pvg-helpful", 1), ("pvg-sneaky", 1)]),
            w(&[("pvg-verify", 4)])
        ]
    );
    assert_eq!(r["choices"][0]["message"]["content"], "42");
    assert_eq!(r["cai"]["approach"], "cot_reflection&pvg");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_rstar_the_previous_answer_is_a_finished_trajectory_the_rollouts_reach() {
    let up = Scripted::start(|k, text, i| match k {
        "cot" => "<thinking>t</thinking><output>42</output>".into(),
        _ => rstar_script(k, text, i),
    })
    .await;
    let serve = Serve::start(&up.url, &[], &[]);
    // Rollouts: the step then its finish; the root's finish; the rephrasing
    // then its finish; the previous answer (no call). Four trajectories
    // for the discriminator; it confirms the two reaching 41, and of those
    // the rephrased branch has the higher reward (2/3 against 1/2).
    let body = ask(
        "cot_reflection&rstar-up-model",
        json!({"rstar_max_depth": 2, "rstar_num_rollouts": 4, "return_full_response": true}),
    );
    let (status, r) = post(&serve, body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        up.waves(),
        vec![
            w(&[("cot", 1)]),
            w(&[
                ("rstar-step", 1),
                ("rstar-finish", 1),
                ("rstar-rephrase", 1)
            ]),
            w(&[("rstar-finish", 1)]),
            w(&[("rstar-finish", 1)]),
            w(&[("rstar-complete", 4)])
        ]
    );
    let full = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        full.contains("Trajectory (reward 0.50, not confirmed):\n42"),
        "{full}"
    );
    assert!(
        full.contains(
            "Trajectory (reward 0.67, confirmed by the discriminator):\nThe answer is: 41"
        ),
        "{full}"
    );
}
