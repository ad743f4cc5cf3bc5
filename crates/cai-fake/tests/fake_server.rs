//! The fake endpoint in `cai_fake` does what each knob says: shapes,
//! determinism, stages, latency, capacity, rpm limit, faults and auth. Every
//! test talks to 127.0.0.1 only and is bounded in time.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cai_fake::{FakeConfig, FakeServer, Stats};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn start(config: FakeConfig) -> FakeServer {
    FakeServer::start(config).await.expect("fake server starts")
}

fn chat(user: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": user}],
           "max_tokens": 256, "temperature": 0.7, "top_p": 1.0})
}

async fn post(c: &reqwest::Client, url: String, body: &Value) -> reqwest::Response {
    c.post(url).json(body).send().await.expect("response")
}

async fn content(c: &reqwest::Client, s: &FakeServer, body: &Value) -> String {
    let v: Value = post(c, format!("{}/v1/chat/completions", s.url()), body)
        .await
        .json()
        .await
        .expect("json");
    v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned()
}

#[tokio::test]
async fn chat_reply_has_openai_shape_and_is_deterministic() {
    let s = start(FakeConfig::default()).await;
    let c = client();
    let r = post(&c, format!("{}/v1/chat/completions", s.url()), &chat("Hi")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    let a = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(a.split(' ').count() >= 6, "a few words: {a:?}");

    // Same request, same text, on either path; another request, other text.
    let v2: Value = post(&c, format!("{}/chat/completions", s.url()), &chat("Hi"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v2["choices"][0]["message"]["content"], a);
    assert_ne!(content(&c, &s, &chat("Hello")).await, a);
    let st = s.stats();
    assert_eq!((st.chat_requests, st.ok), (3, 3));
    assert!(st.prompt_tokens > 0 && st.completion_tokens > 0);
}

#[tokio::test]
async fn stage_is_recognisable_from_words_or_history() {
    let s = start(FakeConfig::default()).await;
    let c = client();
    let initial = content(&c, &s, &chat("How do I bake bread?")).await;
    assert!(!initial.starts_with("Critique: ") && !initial.starts_with("Revision: "));
    let crit = content(&c, &s, &chat("Please CRITIQUE your answer")).await;
    assert!(crit.starts_with("Critique: "), "{crit}");
    let rev = content(&c, &s, &chat("Revise it in light of the critique")).await;
    assert!(rev.starts_with("Revision: "), "{rev}");

    // Constitutions need not say "critique": the conversation tells.
    let mut convo = vec![
        json!({"role": "user", "content": "How do I bake bread?"}),
        json!({"role": "assistant", "content": initial}),
        json!({"role": "user", "content": "Point out anything harmful."}),
    ];
    let body = |m: &Vec<Value>| json!({"model": "m", "messages": m});
    let crit = content(&c, &s, &body(&convo)).await;
    assert!(crit.starts_with("Critique: "), "{crit}");
    convo.push(json!({"role": "assistant", "content": crit}));
    convo.push(json!({"role": "user", "content": "Now rewrite your answer."}));
    let rev = content(&c, &s, &body(&convo)).await;
    assert!(rev.starts_with("Revision: "), "{rev}");
}

#[tokio::test]
async fn n_choices_logprobs_and_seed() {
    let s = start(FakeConfig::default()).await;
    let c = client();
    let mut body = chat("Hi");
    body["n"] = json!(3);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let v: Value = post(&c, format!("{}/v1/chat/completions", s.url()), &body)
        .await
        .json()
        .await
        .unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    assert_ne!(choices[0]["message"], choices[1]["message"]);
    let lp = &choices[0]["logprobs"]["content"];
    assert!(lp[0]["logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);

    let mut seeded = chat("Hi");
    seeded["seed"] = json!(7);
    assert_ne!(
        content(&c, &s, &seeded).await,
        content(&c, &s, &chat("Hi")).await
    );
}

#[tokio::test]
async fn max_tokens_and_rate_length_cut_replies() {
    let s = start(FakeConfig::default()).await;
    let c = client();
    let mut body = chat("Hi");
    body["max_tokens"] = json!(3);
    let v: Value = post(&c, format!("{}/v1/chat/completions", s.url()), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 3);

    let s = start(FakeConfig {
        rate_length: 1.0,
        ..Default::default()
    })
    .await;
    let full = {
        let plain = start(FakeConfig::default()).await;
        content(&c, &plain, &chat("Hi")).await
    };
    let v: Value = post(&c, format!("{}/v1/chat/completions", s.url()), &chat("Hi"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let cut = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        full.starts_with(cut) && cut.len() < full.len(),
        "{cut:?} vs {full:?}"
    );
    assert_eq!(s.stats().length, 1);
}

#[tokio::test]
async fn tgi_generate_shapes() {
    let s = start(FakeConfig::default()).await;
    let c = client();
    let body = json!({"inputs": "<|user|>\nPlease critique this\n<|assistant|>\n",
                      "parameters": {"max_new_tokens": 200, "temperature": 0.5, "top_p": 0.9,
                                     "seed": 1, "return_full_text": false, "stop": [], "details": true}});
    let v: Value = post(&c, format!("{}/generate", s.url()), &body)
        .await
        .json()
        .await
        .unwrap();
    let text = v["generated_text"].as_str().unwrap();
    assert!(text.starts_with("Critique: "), "{text}");
    assert_eq!(v["details"]["finish_reason"], "eos_token");
    let again: Value = post(&c, format!("{}/generate", s.url()), &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["generated_text"], text);

    // Flat history: a critique by us, then an unlabelled request → revision.
    let convo = format!("user: hi\nassistant: {text}\nuser: rewrite it\nassistant: ");
    let v: Value = post(
        &c,
        format!("{}/generate", s.url()),
        &json!({"inputs": convo, "parameters": {"return_full_text": true}}),
    )
    .await
    .json()
    .await
    .unwrap();
    let full = v["generated_text"].as_str().unwrap();
    assert!(full.starts_with(&convo) && full[convo.len()..].starts_with("Revision: "));

    // Inference-API style: a list, by knob or on the model URL.
    let listed: Value = post(
        &c,
        format!("{}/models/some/model", s.url()),
        &json!({"inputs": "hi"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(listed[0]["generated_text"].is_string());
    let s2 = start(FakeConfig {
        tgi_list: true,
        ..Default::default()
    })
    .await;
    let listed2: Value = post(
        &c,
        format!("{}/generate", s2.url()),
        &json!({"inputs": "hi"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed2[0]["generated_text"], listed[0]["generated_text"]);
}

#[tokio::test]
async fn models_and_stats_routes() {
    let s = start(FakeConfig::default()).await;
    let c = client();
    let m: Value = c
        .get(format!("{}/v1/models", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["data"][0]["id"], "fake-model");
    let st: Stats = c
        .get(format!("{}/stats", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((st.models_requests, st.stats_requests), (1, 1));
    let r = c.get(format!("{}/nope", s.url())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{}/v1/chat/completions", s.url()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = post(
        &c,
        format!("{}/v1/chat/completions", s.url()),
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 5}),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(s.stats().bad_request, 2);
}

#[tokio::test]
async fn rpm_limit_answers_429_with_retry_after_and_headers() {
    let s = start(FakeConfig {
        rpm_limit: Some(60),
        rpm_burst: Some(2),
        ..Default::default()
    })
    .await;
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url());
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = post(&c, url.clone(), &chat("Hi")).await;
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert!(h.contains_key("x-ratelimit-remaining-requests"));
        assert!(h.contains_key("x-ratelimit-reset-requests"));
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(h["retry-after"], "1");
            assert_eq!(h["x-ratelimit-remaining-requests"], "0");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(s.stats().rate_limited, 1);
    // One token comes back per second at 60 rpm.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(post(&c, url, &chat("Hi")).await.status(), 200);
}

#[tokio::test]
async fn injected_status_faults() {
    let c = client();
    for (config, status) in [
        (
            FakeConfig {
                rate_429: 1.0,
                fault_retry_after: Duration::from_secs(3),
                ..Default::default()
            },
            429,
        ),
        (
            FakeConfig {
                rate_500: 1.0,
                ..Default::default()
            },
            500,
        ),
        (
            FakeConfig {
                rate_503: 1.0,
                ..Default::default()
            },
            503,
        ),
    ] {
        let s = start(config).await;
        let r = post(&c, format!("{}/v1/chat/completions", s.url()), &chat("Hi")).await;
        assert_eq!(r.status(), status);
        if status == 429 {
            assert_eq!(r.headers()["retry-after"], "3");
        }
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string());
        let st = s.stats();
        assert_eq!(
            [st.injected_429, st.status_500, st.status_503],
            [
                u64::from(status == 429),
                u64::from(status == 500),
                u64::from(status == 503)
            ]
        );
    }
}

#[tokio::test]
async fn reset_closes_connection_without_response() {
    let s = start(FakeConfig {
        rate_reset: 1.0,
        ..Default::default()
    })
    .await;
    let c = client();
    let err = c
        .post(format!("{}/v1/chat/completions", s.url()))
        .json(&chat("Hi"))
        .send()
        .await
        .expect_err("no response");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(s.stats().resets, 1);
}

#[tokio::test]
async fn malformed_and_empty_bodies() {
    let c = client();
    let s = start(FakeConfig {
        rate_malformed: 1.0,
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        let r = post(&c, format!("{}/v1/chat/completions", s.url()), &chat("Hi")).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let shape_ok = serde_json::from_str::<Value>(&text)
            .is_ok_and(|v| v["choices"][0]["message"]["content"].is_string());
        assert!(!shape_ok, "{text}");
    }
    assert_eq!(s.stats().malformed, 2);

    let s = start(FakeConfig {
        rate_empty: 1.0,
        ..Default::default()
    })
    .await;
    assert_eq!(content(&c, &s, &chat("Hi")).await, "");
    assert_eq!(s.stats().empty, 1);
}

#[tokio::test]
async fn hang_ends_at_client_timeout_hang_for_or_shutdown() {
    let s = start(FakeConfig {
        rate_hang: 1.0,
        ..Default::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", s.url());
    let c = client();
    let err = c
        .post(url.clone())
        .json(&chat("Hi"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .expect_err("hangs");
    assert!(err.is_timeout(), "{err:?}");

    // Shutdown releases a hanging request at once instead of in ten minutes.
    let pending = tokio::spawn(async move { c.post(url).json(&chat("Hi")).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.stats().hangs, 2);
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), s.shutdown())
        .await
        .expect("shutdown is prompt");
    let res = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("hang released")
        .unwrap();
    assert!(res.is_err() && t.elapsed() < Duration::from_secs(2));

    let s = start(FakeConfig {
        rate_hang: 1.0,
        hang_for: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let r = client()
        .post(format!("{}/v1/chat/completions", s.url()))
        .json(&chat("Hi"))
        .send()
        .await;
    assert!(r.is_err_and(|e| !e.is_timeout()));
}

#[tokio::test]
async fn wrong_or_missing_key_gets_401() {
    let s = start(FakeConfig {
        require_key: Some("sk-test".into()),
        ..Default::default()
    })
    .await;
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url());
    let r = post(&c, url.clone(), &chat("Hi")).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = c
        .post(url.clone())
        .bearer_auth("sk-wrong")
        .json(&chat("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(url)
        .bearer_auth("sk-test")
        .json(&chat("Hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!((s.stats().unauthorized, s.stats().ok), (2, 1));
}

async fn burst(s: &FakeServer, n: usize) -> Duration {
    let c = client();
    let url = format!("{}/v1/chat/completions", s.url());
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { c.post(url).json(&chat(&i.to_string())).send().await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().expect("response").status(), 200);
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_bounds_concurrency_and_latency_is_applied() {
    let s = start(FakeConfig {
        latency: Duration::from_millis(50),
        capacity: Some(4),
        ..Default::default()
    })
    .await;
    let took = burst(&s, 32).await;
    let st = s.stats();
    assert_eq!(st.max_active, 4, "{st:?}");
    assert!(st.max_in_flight > 4, "{st:?}");
    // 32 requests, 4 at a time, 50 ms each: at least 8 rounds.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    let s = start(FakeConfig {
        latency: Duration::from_millis(100),
        jitter: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let took = burst(&s, 16).await;
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2));
    assert_eq!(s.stats().max_active, 16);
}

async fn outcomes(seed: u64) -> Vec<u16> {
    let s = start(FakeConfig {
        rate_500: 0.3,
        rate_503: 0.3,
        seed,
        ..Default::default()
    })
    .await;
    let c = client();
    let mut out = Vec::new();
    for _ in 0..40 {
        let r = post(&c, format!("{}/v1/chat/completions", s.url()), &chat("Hi")).await;
        out.push(r.status().as_u16());
    }
    out
}

#[tokio::test]
async fn faults_follow_the_seed() {
    let a = outcomes(1).await;
    assert_eq!(a, outcomes(1).await);
    assert_ne!(a, outcomes(2).await);
    assert!(
        a.contains(&200) && a.contains(&500) && a.contains(&503),
        "{a:?}"
    );
}

#[tokio::test]
async fn recent_requests_are_bounded() {
    let s = start(FakeConfig {
        record_last: 2,
        ..Default::default()
    })
    .await;
    let c = client();
    for q in ["a", "b", "c"] {
        content(&c, &s, &chat(q)).await;
    }
    let recent = s.recent_requests();
    assert_eq!(recent.len(), 2);
    let last: Value = serde_json::from_slice(&recent[1].body).unwrap();
    assert_eq!(last["messages"][0]["content"], "c");
    assert_eq!(recent[1].path, "/v1/chat/completions");
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let bad = FakeServer::start(FakeConfig {
        rate_500: 0.7,
        rate_503: 0.7,
        ..Default::default()
    })
    .await;
    assert!(bad.is_err());
    assert!(FakeServer::start(FakeConfig {
        capacity: Some(0),
        ..Default::default()
    })
    .await
    .is_err());
}

#[test]
fn dev_binary_prints_its_address_first() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cai-fake"))
        .args(["--latency", "1ms", "--model", "bin-model"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cai-fake runs");
    let mut line = String::new();
    let read = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("first line");
    let url = line
        .trim()
        .strip_prefix("listening on http://127.0.0.1:")
        .expect("address line");
    assert!(url.parse::<u16>().is_ok(), "{line:?}");
}

/// Load figure for the README: `cargo test --release --test fake_server --
/// --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load measurement, run by hand in release mode"]
async fn throughput_at_latency_zero() {
    let s = start(FakeConfig::default()).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = Arc::new(format!("{}/v1/chat/completions", s.url()));
    let body = Arc::new(serde_json::to_vec(&chat("Say something short.")).unwrap());
    let total = 200_000usize;
    let workers = 64;
    let t = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (c, url, body) = (c.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..total / workers {
                    let r = c
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .body(body.as_ref().clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let st = s.stats();
    println!(
        "{} requests in {secs:.2}s = {:.0} req/s over {} connections",
        st.ok,
        st.ok as f64 / secs,
        st.connections
    );
}
