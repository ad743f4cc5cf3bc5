//! Shared support: a wiremock judge whose verdicts and log-probabilities
//! follow `score=N` markers in the answers, so every probability a test
//! expects can be worked out by hand.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub use crate::common::{bodies, cai, read_jsonl, repo};

/// How the fake judge answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// "(A)"/"(B)" plus first-token log-probabilities of P(A).
    Logprobs,
    /// Verdict text only; with `n` choices, round(n·P(A)) of them say (A).
    Text,
    /// Reasoning, then "Therefore, the answer is: (X)".
    Cot,
    /// Never a readable verdict.
    Garbage,
    /// Unreadable at temperature 0, a text verdict on fresh samples.
    GarbageFirst,
}

/// A fake OpenAI-compatible endpoint: judge questions are answered as
/// `mode` says, with P(A) = bias·s_A / (bias·s_A + s_B) where s is the
/// `score=N` marker of an answer (1 without one); other requests get
/// generation replies whose candidates carry scores (see `gen_reply`).
/// More generally logit P(A) = ln(bias) +
/// sharpen·(ln(s_A/s_B) + length_bias·ln(len_A/len_B) + error): `bias` > 1
/// favours the option shown first, `length_bias` > 0 the longer answer,
/// `sharpen` > 1 makes the judge over-confident, `noise` sizes the error.
pub struct Fake {
    pub mode: Mode,
    pub bias: f64,
    pub sharpen: f64,
    pub length_bias: f64,
    /// Half-width of the judge's own error on ln(s_A/s_B): uniform, fixed
    /// per unordered pair and `salt`, sign-flipped with the order, so both
    /// orders see the same opinion.
    pub noise: f64,
    pub salt: u64,
    /// Honour `n` (else one choice per request).
    pub honour_n: bool,
    pub judge_requests: Arc<AtomicU64>,
}

pub fn score(text: &str) -> f64 {
    text.split("score=")
        .nth(1)
        .and_then(|t| {
            let n: String = t
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            n.trim_end_matches('.').parse().ok()
        })
        .unwrap_or(1.0)
}

/// The two options of a judge question, if it is one.
pub fn options(q: &str) -> Option<(String, String)> {
    let i = q.rfind("Options:\n(A) ")?;
    let rest = &q[i + "Options:\n(A) ".len()..];
    let (a, rest) = rest.split_once("\n(B) ")?;
    let end = rest
        .rfind("\nThe answer is:")
        .or_else(|| rest.rfind("\nLet's think step by step"))?;
    Some((a.to_string(), rest[..end].to_string()))
}

fn choice(content: &str, extra: Value) -> Value {
    let mut c = json!({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"});
    if let (Some(o), Value::Object(e)) = (c.as_object_mut(), extra) {
        o.extend(e);
    }
    c
}

/// Generation replies: initial answers `Answer <h> choice k score=k+1.`
/// (k = 0..n), critiques, and revisions `Revision: better <h> score=10.`
pub fn gen_reply(last: &str, whole: &str, k: usize) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(whole.as_bytes());
    let h: String = d[..4].iter().map(|b| format!("{b:02x}")).collect();
    if last.contains("CRITIQUE-REQ") {
        format!("Critique: it could be better {h}.")
    } else if last.contains("REVISION-REQ") {
        format!("Revision: better {h} score=10.")
    } else {
        format!("Answer {h} choice {k} score={}.", k + 1)
    }
}

/// A judge's fixed error on a pair, in [−1, 1]: the same for (a, b) and
/// (b, a) up to its sign.
fn opinion(a: &str, b: &str, salt: u64) -> f64 {
    use sha2::{Digest, Sha256};
    let (lo, hi, sign) = if a <= b { (a, b, 1.0) } else { (b, a, -1.0) };
    let d = Sha256::digest(format!("{salt}\u{1f}{lo}\u{1f}{hi}").as_bytes());
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    sign * ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
}

impl Respond for Fake {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let msgs = body["messages"].as_array().expect("messages");
        let last = msgs
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let n = if self.honour_n {
            body["n"].as_u64().unwrap_or(1) as usize
        } else {
            1
        };
        let choices: Vec<Value> = match options(last) {
            None => (0..n)
                .map(|k| {
                    // The seed is part of a reply's identity, as on a real
                    // sampling server.
                    let whole = format!("{}{}", body["messages"], body["seed"]);
                    choice(&gen_reply(last, &whole, k), json!({}))
                })
                .collect(),
            Some((a, b)) => {
                self.judge_requests.fetch_add(1, Ordering::SeqCst);
                let (sa, sb) = (self.bias * score(&a), score(&b));
                let lengths = (a.chars().count() as f64 / b.chars().count() as f64).ln();
                let z = self.sharpen
                    * ((score(&a) / sb).ln()
                        + self.length_bias * lengths
                        + self.noise * opinion(&a, &b, self.salt))
                    + self.bias.ln();
                let pa = 1.0 / (1.0 + (-z).exp());
                let letter = |i: usize| {
                    // round(n·P) of the n choices say (A).
                    if (i as f64) < (n as f64 * pa).round() {
                        "A"
                    } else {
                        "B"
                    }
                };
                let fresh = body["temperature"].as_f64().unwrap_or(0.0) > 0.0;
                (0..n)
                    .map(|i| match self.mode {
                        Mode::Logprobs => choice(
                            &format!("({})", if pa >= 0.5 { "A" } else { "B" }),
                            json!({"logprobs": {"content": [{"token": "(", "logprob": -0.01,
                                "top_logprobs": [
                                    {"token": " (A", "logprob": pa.ln()},
                                    {"token": "B", "logprob": (1.0 - pa).ln()},
                                    {"token": "(", "logprob": -9.0}
                                ]}]}}),
                        ),
                        Mode::Text => choice(&format!("The answer is: ({})", letter(i)), json!({})),
                        Mode::Cot => choice(
                            &format!(
                                "Option (A) and option (B) differ. Weighing them, (A) scores {sa} and (B) {sb}. Therefore, the answer is: ({})",
                                letter(i)
                            ),
                            json!({}),
                        ),
                        Mode::GarbageFirst if fresh => {
                            choice(&format!("({})", letter(i)), json!({}))
                        }
                        Mode::Garbage | Mode::GarbageFirst => {
                            choice("Both answers have merit; I cannot choose.", json!({}))
                        }
                    })
                    .collect()
            }
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        }))
    }
}

pub async fn server(mode: Mode, bias: f64) -> (MockServer, Arc<AtomicU64>) {
    server_with(mode, bias, true).await
}

pub async fn server_with(mode: Mode, bias: f64, honour_n: bool) -> (MockServer, Arc<AtomicU64>) {
    biased_server(Fake {
        mode,
        bias,
        sharpen: 1.0,
        length_bias: 0.0,
        noise: 0.0,
        salt: 0,
        honour_n,
        judge_requests: Arc::default(),
    })
    .await
}

/// A fake judge set up as `fake` says (its request counter is returned).
pub async fn biased_server(fake: Fake) -> (MockServer, Arc<AtomicU64>) {
    let s = MockServer::start().await;
    let count = fake.judge_requests.clone();
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(fake)
        .mount(&s)
        .await;
    (s, count)
}

/// A row of a pairs file.
pub struct Row<'a> {
    pub id: &'a str,
    pub a: &'a str,
    pub b: &'a str,
    pub model_a: &'a str,
    pub model_b: &'a str,
    /// "a", "b", "tie" or "" (no human label).
    pub human: &'a str,
}

/// Writes an arena-format CSV (prompt and responses as JSON turn lists).
pub fn pairs_csv(dir: &Path, rows: &[Row]) -> PathBuf {
    let path = dir.join("pairs.csv");
    let mut w = csv::Writer::from_path(&path).expect("create csv");
    w.write_record([
        "id",
        "model_a",
        "model_b",
        "prompt",
        "response_a",
        "response_b",
        "winner_model_a",
        "winner_model_b",
        "winner_tie",
    ])
    .expect("header");
    for r in rows {
        let flag = |x: &str| if r.human == x { "1" } else { "0" }.to_string();
        let (wa, wb, wt) = if r.human.is_empty() {
            (String::new(), String::new(), String::new())
        } else {
            (flag("a"), flag("b"), flag("tie"))
        };
        w.write_record([
            r.id.to_string(),
            r.model_a.to_string(),
            r.model_b.to_string(),
            json!([format!("Question {}?", r.id)]).to_string(),
            json!([r.a]).to_string(),
            json!([r.b]).to_string(),
            wa,
            wb,
            wt,
        ])
        .expect("row");
    }
    w.flush().expect("flush");
    path
}

/// `cai label` against `base` (a wiremock URI), quiet.
pub fn label(base: &str, pairs: &Path, out: &Path) -> assert_cmd::Command {
    let mut c = cai();
    c.args([
        "label",
        "--quiet",
        "--provider",
        "openai",
        "--model",
        "judge-m",
    ])
    .arg("--base-url")
    .arg(format!("{base}/v1"))
    .arg("--pairs")
    .arg(pairs)
    .arg("--out")
    .arg(out);
    c
}

pub fn read_records(path: &Path) -> Vec<csv::StringRecord> {
    let mut r = csv::Reader::from_path(path).expect("csv opens");
    r.records().map(|x| x.expect("csv row")).collect()
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
}

pub fn f(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

pub fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-6, "{what}: {a} != {b}");
}
