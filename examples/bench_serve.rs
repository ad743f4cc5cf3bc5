//! `cai serve` benchmark: prints figures, asserts nothing.
//!
//! ```text
//! cargo build --example bench_serve --bin cai && target/debug/examples/bench_serve [--secs 5] [--concurrency 32]
//! ```
//! (the dev profile builds `cai` at opt-level 2; `CAI_BIN` names another binary)
//!
//! 1. Pass-through overhead: requests/s with `--concurrency` clients for
//!    `--secs`, directly against the in-repo fake at latency 0 and through
//!    `cai serve` in front of it; then one client at a time, p50 latency of
//!    both (the difference is what the proxy adds).
//! 2. `bon` with N = 3 at 200 ms upstream latency: wall time per request
//!    against its critical path of 2 × 200 ms (candidates with `n = 3`, then
//!    all six judge calls at once). The upstream here is a small one in this
//!    file that answers judge prompts with a verdict, which the fake does not.
//! 3. The search and solver approaches (`mcts`, `pvg`, `rstar`, `z3`, `re2`)
//!    with their default settings at the same latency: p50 wall time against
//!    the number of calls on each one's critical path × 200 ms (`z3` also
//!    runs the solver, which must be installed).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cai_fake::process::cai_bin;
use cai_fake::{FakeConfig, FakeServer};
use serde_json::{json, Value};

struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(upstream: &str, model: &str) -> Serve {
    let mut child = Command::new(cai_bin())
        .args([
            "serve",
            "--port",
            "0",
            "--provider",
            "openai",
            "--base-url",
            upstream,
        ])
        .args(["--model", model, "--max-inflight", "4096"])
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cai serve starts (build it first: cargo build --bin cai)");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("cai serve listens");
    Serve {
        child,
        url: format!("http://{addr}/v1"),
    }
}

fn body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 32,
           "messages": [{"role": "user", "content": "Benchmark: why is the sky blue?"}]})
}

/// Requests/s of `clients` loops for `secs`.
async fn throughput(url: &str, model: &str, clients: usize, secs: f64) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let url = format!("{url}/chat/completions");
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, done, body) =
                (client.clone(), url.clone(), done.clone(), body(model));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let r = client.post(&url).json(&body).send().await;
                    if let Ok(r) = r {
                        if r.status().is_success() && r.bytes().await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Latencies (ms) of `n` requests one after another.
async fn latencies(url: &str, model: &str, n: usize) -> Vec<f64> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let url = format!("{url}/chat/completions");
    let body = body(model);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.post(&url).json(&body).send().await.expect("reply");
        assert!(r.status().is_success(), "HTTP {}", r.status());
        let _ = r.bytes().await;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A minimal OpenAI-compatible upstream with a fixed latency that honours
/// `n` and answers judge prompts with "(A".
async fn judge_upstream(latency: Duration) -> String {
    use axum::routing::post;
    use axum::Json;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(b): Json<Value>| async move {
            tokio::time::sleep(latency).await;
            let last = b["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_string();
            let n = b["n"].as_u64().unwrap_or(1);
            let text = |i: u64| {
                if last.contains("Consider the following principle") {
                    "(A".to_string()
                } else if last.contains("SMT-LIB 2 program") {
                    "(declare-const x Int)(assert (= (* 6 x) 42))(check-sat)(get-value (x))"
                        .to_string()
                } else if last.contains("Rate from 0 to 10") || last.contains("You are a verifier") {
                    format!("{}", 5 + i)
                } else {
                    format!("Candidate answer number {i}.")
                }
            };
            let choices: Vec<Value> = (0..n)
                .map(|i| json!({"index": i, "message": {"role": "assistant", "content": text(i)}, "finish_reason": "stop"}))
                .collect();
            Json(json!({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                        "choices": choices, "usage": {"prompt_tokens": 20, "completion_tokens": 5 * n, "total_tokens": 20 + 5 * n}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/v1")
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = arg("--secs", 5.0);
    let clients = arg("--concurrency", 32.0) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = FakeServer::start(FakeConfig::default())
            .await
            .expect("fake server");
        let serve = start_serve(&fake.url(), "fake-model");
        // Warm both paths (connections, allocator).
        let _ = throughput(&fake.url(), "fake-model", clients, 0.5).await;
        let _ = throughput(&serve.url, "fake-model", clients, 0.5).await;
        let direct = throughput(&fake.url(), "fake-model", clients, secs).await;
        let proxied = throughput(&serve.url, "fake-model", clients, secs).await;
        println!("pass-through, {clients} clients, {secs} s each, fake at latency 0:");
        println!("  direct to the fake:   {direct:9.0} req/s");
        println!(
            "  through cai serve:    {proxied:9.0} req/s  ({:.2} of direct)",
            proxied / direct
        );
        let d = latencies(&fake.url(), "fake-model", 2000).await;
        let p = latencies(&serve.url, "fake-model", 2000).await;
        println!("  one client, 2000 requests: p50 {:.3} ms direct, {:.3} ms through cai serve (added {:.3} ms); p99 {:.3} / {:.3} ms",
            pct(&d, 0.5), pct(&p, 0.5), pct(&p, 0.5) - pct(&d, 0.5), pct(&d, 0.99), pct(&p, 0.99));
        drop(serve);
        fake.shutdown().await;

        let latency = Duration::from_millis(200);
        let up = judge_upstream(latency).await;
        let serve = start_serve(&up, "m");
        let _ = latencies(&serve.url, "bon3-m", 1).await;
        let walls = latencies(&serve.url, "bon3-m", 20).await;
        println!("bon N=3, upstream latency 200 ms, 20 requests one after another:");
        println!(
            "  wall per request: p50 {:.1} ms, min {:.1} ms, max {:.1} ms; critical path 2 x 200 = 400 ms (sum of its 7 calls: 1400 ms)",
            pct(&walls, 0.5),
            walls[0],
            walls[walls.len() - 1]
        );
        // (slug, calls on the critical path, all calls) with the defaults:
        // mcts expands once (n = 3) and scores 3; pvg plays 2 rounds of both
        // provers then 6 verdicts; rstar's 5 rollouts expand 5 times one
        // after another (3 + 2 + 1 + 2 + 1 actions) before 4 discriminator
        // calls at once; z3 formalises, solves, answers; re2 is one call.
        println!("search and solver approaches, defaults, upstream latency 200 ms, 10 requests one after another:");
        for (slug, path, calls) in [
            ("mcts", 2, 4),
            ("pvg", 4, 16),
            ("rstar", 6, 13),
            ("z3", 2, 2),
            ("re2", 1, 1),
        ] {
            let model = format!("{slug}-m");
            let _ = latencies(&serve.url, &model, 1).await;
            let walls = latencies(&serve.url, &model, 10).await;
            println!(
                "  {slug:<6} p50 {:7.1} ms against a critical path of {path} x 200 = {} ms ({calls} calls in all: {} ms one after another)",
                pct(&walls, 0.5),
                path * 200,
                calls * 200
            );
        }
    });
}
