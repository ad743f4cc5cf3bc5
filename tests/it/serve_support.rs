//! Support for the `cai serve` tests: a scripted OpenAI-compatible upstream
//! on 127.0.0.1 that records every request in order and can stream slowly,
//! fail on cue and honour `n`; a running `cai serve` process; and the
//! `openai` Python client driver.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How the upstream behaves.
#[derive(Clone, Default)]
pub struct UpstreamConfig {
    /// Time before a (non-streamed) reply, or before the first streamed chunk.
    pub latency: Duration,
    /// Pause between streamed words.
    pub chunk_delay: Duration,
    /// Statuses answered, in order, before the first success.
    pub faults: Vec<u16>,
    /// Every request is answered with this status (e.g. 401).
    pub always: Option<u16>,
    /// `GET /v1/models` lists these; `None`: the route does not exist (404).
    pub models: Option<Vec<String>>,
    /// Replies are this many words long and report as many completion
    /// tokens (default: the short scripted replies, 5 tokens a choice).
    pub reply_tokens: Option<usize>,
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `answer`, `critique`, `revision`, `judge`, `moa-critique`,
    /// `moa-final`, `rto-reverse`, `rto-final`, `cot`.
    pub kind: String,
    pub body: Value,
    /// The `Authorization` header as received.
    pub authorization: Option<String>,
}

struct Up {
    cfg: UpstreamConfig,
    seen: Mutex<Vec<Seen>>,
    faults: Mutex<std::collections::VecDeque<u16>>,
}

pub struct Upstream {
    pub url: String,
    state: Arc<Up>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(cfg: UpstreamConfig) -> Upstream {
        let state = Arc::new(Up {
            faults: Mutex::new(cfg.faults.iter().copied().collect()),
            cfg,
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            url: format!("http://{addr}/v1"),
            state,
            task,
        }
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn kinds(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.kind).collect()
    }
}

fn short_hash(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn classify(messages: &[Value]) -> String {
    let text = |m: &Value| m["content"].as_str().unwrap_or("").to_string();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(text)
        .unwrap_or_default();
    let system = messages
        .first()
        .filter(|m| m["role"] == "system")
        .map(text)
        .unwrap_or_default();
    let kind = if last_user.contains("Consider the following principle") {
        "judge"
    } else if last_user.contains("CRITIQUE-REQ") {
        "critique"
    } else if last_user.contains("REVISION-REQ") {
        "revision"
    } else if last_user.contains("Candidate responses") {
        "moa-critique"
    } else if last_user.contains("Using the candidates and the critique") {
        "moa-final"
    } else if last_user.contains("Write the request (instruction or question)") {
        "rto-reverse"
    } else if last_user.contains("Two draft responses") {
        "rto-final"
    } else if system.contains("<thinking>") {
        "cot"
    } else {
        "answer"
    };
    kind.to_string()
}

/// The judge prefers the option whose text sorts last, so the winner of a
/// best-of-N is predictable: the largest candidate.
fn verdict(question: &str) -> &'static str {
    let option = |tag: &str| {
        question
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or("")
            .to_string()
    };
    if option("(A) ") >= option("(B) ") {
        "(A"
    } else {
        "(B"
    }
}

fn reply_text(kind: &str, messages: &[Value], seed: &Value, choice: usize) -> String {
    // The hash names the conversation (and seed), not the choice, so the
    // choices of one request differ only in their last word.
    let h = short_hash(&format!("{messages:?}{seed}"));
    match kind {
        "judge" => {
            let q = messages.last().and_then(|m| m["content"].as_str()).unwrap_or("");
            verdict(q).to_string()
        }
        "critique" => format!("Critique: the answer has a flaw {h}."),
        "revision" => format!("Revision: a better answer {h}."),
        "cot" => format!(
            "<thinking>step one {h}</thinking><reflection>looks right</reflection><output>Reflected answer {h}</output>"
        ),
        other => format!("Reply {other} {h} choice {choice}"),
    }
}

async fn models(State(up): State<Arc<Up>>) -> Response {
    match &up.cfg.models {
        None => error(404),
        Some(list) => {
            let data: Vec<Value> = list
                .iter()
                .map(|m| json!({"id": m, "object": "model", "created": 1, "owned_by": "upstream-org"}))
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
    }
}

/// A tool call the upstream makes when offered tools: the first tool,
/// with the city named in the last user message.
fn tool_call(body: &Value) -> Option<Value> {
    let tool = body["tools"].as_array()?.first()?;
    let messages = body["messages"].as_array()?;
    if messages.last()?["role"] == "tool" {
        return None;
    }
    let name = tool["function"]["name"].as_str()?;
    Some(json!({
        "id": "call_1", "type": "function",
        "function": {"name": name, "arguments": "{\"city\": \"Paris\"}"}
    }))
}

async fn complete(State(up): State<Arc<Up>>, h: HeaderMap, Json(body): Json<Value>) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let kind = classify(&messages);
    up.seen.lock().unwrap().push(Seen {
        kind: kind.clone(),
        body: body.clone(),
        authorization: h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    if let Some(s) = up.cfg.always {
        return error(s);
    }
    let fault = up.faults.lock().unwrap().pop_front();
    if let Some(s) = fault {
        return error(s);
    }
    tokio::time::sleep(up.cfg.latency).await;
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let texts: Vec<String> = (0..n)
        .map(|i| {
            let text = reply_text(&kind, &messages, &body["seed"], i);
            match (up.cfg.reply_tokens, kind.as_str()) {
                (Some(words), k) if k != "judge" => padded(&text, words),
                _ => text,
            }
        })
        .collect();
    let per_choice = up.cfg.reply_tokens.unwrap_or(5);
    let call = tool_call(&body);
    if body["stream"] == true {
        let include_usage = body["stream_options"]["include_usage"] == true;
        return match call {
            Some(c) => stream_tool_call(c, include_usage),
            None => stream(texts[0].clone(), include_usage, up.cfg.chunk_delay),
        };
    }
    let choices: Vec<Value> = match call {
        Some(c) => vec![json!({"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [c]}})],
        None => texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let t = match messages.last() {
                    Some(m) if m["role"] == "tool" => format!("Final answer: {}", m["content"].as_str().unwrap_or("")),
                    _ => t.clone(),
                };
                json!({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"})
            })
            .collect(),
    };
    Json(json!({
        "id": "up", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 10, "completion_tokens": per_choice * n, "total_tokens": 10 + per_choice * n}
    }))
    .into_response()
}

/// `text` made `words` words long (cut, or filled with more words).
fn padded(text: &str, words: usize) -> String {
    let mut out: Vec<&str> = text.split_whitespace().collect();
    out.resize(words, "more");
    out.join(" ")
}

/// A tool call streamed as OpenAI does: the call's id and name first, then
/// its arguments in pieces, then `finish_reason: tool_calls`.
fn stream_tool_call(call: Value, include_usage: bool) -> Response {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "up", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let args = call["function"]["arguments"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (a, b) = args.split_at(args.len() / 2);
    let mut events = vec![
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ];
    if include_usage {
        events.push(format!("data: {}\n\n", json!({"id": "up", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 9, "total_tokens": 19}})));
    }
    events.push("data: [DONE]\n\n".to_string());
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from(events.concat()))
        .unwrap()
}

fn error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    let mut resp = (
        code,
        Json(json!({"error": {"message": format!("scripted {status}"), "type": "test"}})),
    )
        .into_response();
    if status == 429 {
        resp.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("0"));
    }
    resp
}

/// The reply word by word, `delay` apart, as OpenAI streams it.
fn stream(text: String, include_usage: bool, delay: Duration) -> Response {
    let words: Vec<String> = text.split_inclusive(' ').map(str::to_string).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(8);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "up", "object": "chat.completion.chunk", "created": 0, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let _ = tx
            .send(Ok(chunk(json!({"role": "assistant"}), Value::Null)))
            .await;
        for w in words {
            tokio::time::sleep(delay).await;
            if tx
                .send(Ok(chunk(json!({"content": w}), Value::Null)))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Ok(chunk(json!({}), json!("stop")))).await;
        if include_usage {
            let u = json!({"id": "up", "object": "chat.completion.chunk", "created": 0, "model": "m",
                           "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}});
            let _ = tx.send(Ok(format!("data: {u}\n\n"))).await;
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".to_string())).await;
    });
    let body = axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|x| (x, rx))
    }));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

/// A running `cai serve`, stopped with SIGTERM when dropped.
pub struct Serve {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `cai serve --port 0` in front of `upstream` with `extra`
    /// arguments and waits for it to listen.
    pub fn start(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("cai"));
        cmd.args([
            "serve",
            "--port",
            "0",
            "--provider",
            "openai",
            "--base-url",
            upstream,
        ])
        .args(["--model", "up-model", "--max-retries", "3"])
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cai serve starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split('/').next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                keep.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("cai serve did not start: {:?}", lines.lock().unwrap());
            }
        };
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Serve {
            child,
            url: format!("http://{addr}/v1"),
            port,
            stderr: lines,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cai generate` through a running `cai serve` at `url` (the `openai`
/// provider, quiet) as `model` with `extra` arguments, run off the async
/// runtime that serves the upstream.
pub async fn generate_through(
    url: &str,
    model: &str,
    extra: &[&str],
    prompts: &Path,
    constitution: &Path,
    out: &Path,
) -> std::process::Output {
    let mut cmd = crate::common::cai();
    cmd.args(["generate", "--provider", "openai", "--quiet"])
        .args(["--base-url", url, "--model", model])
        .args(extra)
        .arg("--prompts")
        .arg(prompts)
        .arg("--constitution")
        .arg(constitution)
        .arg("--out")
        .arg(out);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// The Python that has the `openai` package, or `None` to skip (CI must
/// have one).
pub fn python() -> Option<std::ffi::OsString> {
    match std::env::var_os("CAI_PYTHON") {
        Some(p) => Some(p),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must set CAI_PYTHON to a Python with `openai` installed"
            );
            eprintln!("skipped: set CAI_PYTHON to a Python with `openai` to run this test");
            None
        }
    }
}

/// Runs `ops` through the official `openai` client (tests/python/serve_client.py)
/// and returns one result per op.
pub async fn openai_client(
    python: &std::ffi::OsStr,
    base_url: &str,
    key: &str,
    ops: Value,
) -> Vec<Value> {
    let python = python.to_os_string();
    let base_url = base_url.to_string();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(python)
            .arg(crate::common::repo("tests/python/serve_client.py"))
            .arg(&base_url)
            .arg(ops.to_string())
            .env("OPENAI_API_KEY", &key)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "serve_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("JSON results")
    })
    .await
    .unwrap()
}
