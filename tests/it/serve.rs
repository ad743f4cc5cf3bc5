//! `cai serve` against a scripted upstream on 127.0.0.1, called the way
//! applications call it: with the official `openai` Python client (needs
//! `CAI_PYTHON`, see scripts/test.sh), and with raw HTTP where a client
//! library would hide what is tested (oversized bodies, headers).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::serve_support::*;

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn create(model: &str, extra: Value) -> Value {
    let mut args = json!({"model": model, "messages": user("What is 6 x 7?")});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            args[k] = v;
        }
    }
    json!({"op": "create", "args": args})
}

fn reply(r: &Value) -> &Value {
    assert!(r.get("reply").is_some(), "expected a reply, got {r}");
    &r["reply"]
}

fn content(r: &Value, i: usize) -> String {
    reply(r)["choices"][i]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_through_answers_in_openai_shapes_with_n_and_summed_usage() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(&up.url, &[], &[]);
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([
            create("up-model", json!({})),
            create("up-model", json!({"n": 2, "seed": 5})),
            {"op": "models"}
        ]),
    )
    .await;
    let one = reply(&out[0]);
    assert_eq!(one["object"], "chat.completion");
    assert_eq!(one["model"], "up-model");
    assert_eq!(one["choices"][0]["finish_reason"], "stop");
    assert_eq!(one["choices"][0]["message"]["role"], "assistant");
    assert!(content(&out[0], 0).starts_with("Reply answer "));
    assert_eq!(one["usage"]["prompt_tokens"], 10);
    assert_eq!(one["usage"]["completion_tokens"], 5);
    assert_eq!(one["usage"]["total_tokens"], 15);
    assert_eq!(one["cai"]["upstream_calls"], 1);

    // `n` goes upstream as the client sent it: one call, two choices.
    let two = reply(&out[1]);
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    assert_ne!(content(&out[1], 0), content(&out[1], 1));
    assert_eq!(two["usage"]["prompt_tokens"], 10);
    assert_eq!(two["usage"]["completion_tokens"], 10);
    assert_eq!(two["usage"]["total_tokens"], 20);
    assert_eq!(two["cai"]["upstream_calls"], 1);

    let models: Vec<String> = serde_json::from_value(out[2]["models"].clone()).unwrap();
    assert!(models.contains(&"up-model".to_string()));
    assert!(models.contains(&"bon-up-model".to_string()));
    assert!(models.contains(&"cot_reflection-up-model".to_string()));

    assert_eq!(up.kinds(), ["answer", "answer"]);
    assert_eq!(up.seen()[1].body["n"], 2);
    assert_eq!(up.seen()[1].body["seed"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_relays_each_upstream_chunk_as_it_arrives() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig {
        chunk_delay: Duration::from_millis(300),
        ..UpstreamConfig::default()
    })
    .await;
    let serve = Serve::start(&up.url, &[], &[]);
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([{"op": "stream", "args": {
            "model": "up-model", "messages": user("Hi"),
            "stream_options": {"include_usage": true}
        }}]),
    )
    .await;
    let chunks = out[0]["chunks"].as_array().unwrap();
    let total = out[0]["total"].as_f64().unwrap();
    let first = &chunks[0]["chunk"];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let texts: Vec<(f64, String)> = chunks
        .iter()
        .filter_map(|c| {
            let t = c["chunk"]["choices"][0]["delta"]["content"].as_str()?;
            Some((c["t"].as_f64().unwrap(), t.to_string()))
        })
        .collect();
    let text: String = texts.iter().map(|(_, t)| t.as_str()).collect();
    assert!(text.starts_with("Reply answer "), "{text}");
    assert!(texts.len() >= 5, "one chunk per upstream word: {texts:?}");
    // The upstream takes 300 ms per word; relayed for real, the first word
    // reaches the client long before the last one leaves the upstream.
    let (t_first, t_last) = (texts[0].0, texts[texts.len() - 1].0);
    println!("first content chunk after {t_first:.3}s, last after {t_last:.3}s, stream done after {total:.3}s");
    assert!(
        t_last - t_first >= 0.9,
        "chunks arrived together (replayed at the end?): {texts:?}"
    );
    assert!(
        t_first < total / 2.0,
        "first chunk only at {t_first}s of {total}s"
    );
    let finish = chunks
        .iter()
        .find(|c| c["chunk"]["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some(), "a chunk carries finish_reason");
    let usage = &chunks.last().unwrap()["chunk"];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 10);
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    assert_eq!(usage["usage"]["total_tokens"], 17);
    assert_eq!(up.seen()[0].body["stream"], true);
}

/// Splits the upstream's requests by each reply's `upstream_calls`.
fn per_request(kinds: &[String], out: &[Value]) -> Vec<Vec<String>> {
    let mut at = 0;
    out.iter()
        .map(|r| {
            let n = reply(r)["cai"]["upstream_calls"].as_u64().unwrap() as usize;
            let part = kinds[at..at + n].to_vec();
            at += n;
            part
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_approach_makes_exactly_its_calls_in_order() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let constitution = fixture("native.json");
    let serve = Serve::start(
        &up.url,
        &["--constitution", constitution.to_str().unwrap()],
        &[],
    );
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([
            create("none-up-model", json!({})),
            create("cai-up-model", json!({})),
            create(
                "up-model",
                json!({"extra_body": {"approach": "cai", "cai_rounds": 2}})
            ),
            create("bon-up-model", json!({})),
            create("moa-up-model", json!({})),
            create(
                "up-model",
                json!({"extra_body": {"optillm_approach": "self_consistency"}})
            ),
            create("rto-up-model", json!({})),
            create("cot_reflection-up-model", json!({})),
            create("cai&bon-up-model", json!({})),
        ]),
    )
    .await;
    let calls = per_request(&up.kinds(), &out);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let judges = |n: usize| vec!["judge".to_string(); n];

    assert_eq!(calls[0], s(&["answer"]));
    assert_eq!(calls[1], s(&["answer", "critique", "revision"]));
    assert!(
        content(&out[1], 0).starts_with("a better answer"),
        "label stripped: {}",
        content(&out[1], 0)
    );
    assert_eq!(
        calls[2],
        s(&["answer", "critique", "revision", "critique", "revision"])
    );
    // bon: one request with n = 3 (the upstream honours n), then 3 pairs
    // judged in both orders, all at once.
    assert_eq!(calls[3], [s(&["answer"]), judges(6)].concat());
    assert!(
        content(&out[3], 0).ends_with("choice 2"),
        "the judge's favourite wins: {}",
        content(&out[3], 0)
    );
    assert_eq!(calls[4], s(&["answer", "moa-critique", "moa-final"]));
    assert_eq!(calls[5], s(&["answer"]));
    assert!(content(&out[5], 0).ends_with("choice 0"));
    assert_eq!(
        calls[6],
        s(&["answer", "rto-reverse", "answer", "rto-final"])
    );
    assert_eq!(calls[7], s(&["cot"]));
    assert!(
        content(&out[7], 0).starts_with("Reflected answer "),
        "only <output>: {}",
        content(&out[7], 0)
    );
    // cai&bon: the revision competes with two fresh candidates.
    assert_eq!(
        calls[8],
        [s(&["answer", "critique", "revision", "answer"]), judges(6)].concat()
    );

    let seen = up.seen();
    let bodies_of = |k: usize| {
        let start: usize = calls[..k].iter().map(Vec::len).sum();
        seen[start..start + calls[k].len()].to_vec()
    };
    assert_eq!(bodies_of(3)[0].body["n"], 3);
    assert_eq!(bodies_of(8)[3].body["n"], 2);
    // Judge calls ask for a short verdict, whatever the client asked.
    assert_eq!(bodies_of(3)[1].body["max_tokens"], 32);
    // usage is the sum over every call: 10 prompt tokens a call, 5 completion tokens a choice.
    for (r, c) in out.iter().zip(&calls) {
        let usage = &reply(r)["usage"];
        assert_eq!(usage["prompt_tokens"], 10 * c.len() as u64, "{r}");
    }
    assert_eq!(reply(&out[3])["usage"]["completion_tokens"], 15 + 6 * 5);
    assert_eq!(reply(&out[8])["cai"]["approach"], "cai&bon");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_refuses_a_wrong_key_and_accepts_the_right_one() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(
        &up.url,
        &["--auth-key-env", "CAI_TEST_SERVE_KEY"],
        &[("CAI_TEST_SERVE_KEY", "s3cret-serve-key")],
    );
    let wrong = openai_client(
        &py,
        &serve.url,
        "wrong-key",
        json!([create("up-model", json!({}))]),
    )
    .await;
    assert_eq!(wrong[0]["error"], "AuthenticationError");
    assert_eq!(wrong[0]["status"], 401);
    assert_eq!(wrong[0]["body"]["code"], "invalid_api_key");
    assert!(up.seen().is_empty(), "nothing is sent for a refused client");
    let right = openai_client(
        &py,
        &serve.url,
        "s3cret-serve-key",
        json!([create("up-model", json!({}))]),
    )
    .await;
    assert!(content(&right[0], 0).starts_with("Reply answer"));
    let health = reqwest::get(format!("http://127.0.0.1:{}/health", serve.port))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "/health needs no key");
    let logs = serve.stderr.lock().unwrap().join("\n");
    assert!(!logs.contains("s3cret-serve-key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_approach_is_a_400_that_lists_the_known_ones() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(&up.url, &[], &[]);
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([
            create("up-model", json!({"extra_body": {"approach": "bogus"}})),
            create("cai&bogus-up-model", json!({})),
        ]),
    )
    .await;
    for r in &out {
        assert_eq!(r["error"], "BadRequestError", "{r}");
        assert_eq!(r["status"], 400);
        let msg = r["body"]["message"].as_str().unwrap();
        assert!(msg.contains("`bogus`"), "{msg}");
        for known in [
            "none",
            "cai",
            "bon",
            "moa",
            "self_consistency",
            "rto",
            "cot_reflection",
        ] {
            assert!(msg.contains(known), "{msg}");
        }
    }
    assert!(up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_429_and_500_are_retried() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig {
        faults: vec![429, 500],
        ..UpstreamConfig::default()
    })
    .await;
    let serve = Serve::start(&up.url, &[], &[]);
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([create("up-model", json!({}))]),
    )
    .await;
    assert!(content(&out[0], 0).starts_with("Reply answer"));
    assert_eq!(up.seen().len(), 3, "429, 500, then the reply");
    assert_eq!(reply(&out[0])["cai"]["upstream_calls"], 3);
    // Failed attempts report no usage; only the reply is counted.
    assert_eq!(reply(&out[0])["usage"]["total_tokens"], 15);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_401_is_the_clients_401_and_is_not_retried() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig {
        always: Some(401),
        ..UpstreamConfig::default()
    })
    .await;
    let serve = Serve::start(
        &up.url,
        &["--api-key-env", "CAI_TEST_UPSTREAM_KEY"],
        &[("CAI_TEST_UPSTREAM_KEY", "upstream-s3cret")],
    );
    let out = openai_client(
        &py,
        &serve.url,
        "unused",
        json!([
            create("up-model", json!({})),
            {"op": "stream", "args": {"model": "up-model", "messages": user("Hi")}}
        ]),
    )
    .await;
    for r in &out {
        assert_eq!(r["error"], "AuthenticationError", "{r}");
        assert_eq!(r["status"], 401);
        assert!(!r.to_string().contains("upstream-s3cret"));
    }
    assert_eq!(
        up.seen().len(),
        2,
        "one attempt per request: a refused key is not retried"
    );
    let logs = serve.stderr.lock().unwrap().join("\n");
    assert!(!logs.contains("upstream-s3cret"));
}

/// Sends raw bytes and returns the status line and headers, read within 10 s.
fn status_of(stream: &mut std::net::TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!(
                "no response head: {other:?} after {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_post_gets_413_at_once_and_the_server_keeps_serving() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(&up.url, &["--max-messages", "3"], &[]);
    let port = serve.port;
    let head_413 = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let size = 100u64 << 20;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut writer = s.try_clone().unwrap();
        let started = Instant::now();
        // The client keeps sending; the server must answer without reading it all.
        let sender = std::thread::spawn(move || {
            let block = vec![b' '; 1 << 20];
            let mut sent = 0u64;
            while sent < size {
                if writer.write_all(&block).is_err() {
                    break;
                }
                sent += block.len() as u64;
            }
            sent
        });
        let head = status_of(&mut s);
        let took = started.elapsed();
        drop(s);
        let sent = sender.join().unwrap();
        println!("413 after {took:?}; the client had sent {} MB of 100", sent >> 20);
        head
    })
    .await
    .unwrap();
    assert!(head_413.starts_with("HTTP/1.1 413"), "{head_413}");

    // A chunked body (no length) is cut at the bound too.
    let chunked = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .unwrap();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let chunk = format!("100000\r\n{}\r\n", " ".repeat(1 << 20));
            for _ in 0..100 {
                if writer.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
            }
        });
        let head = status_of(&mut s);
        drop(s);
        let _ = sender.join();
        head
    })
    .await
    .unwrap();
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");

    let client = reqwest::Client::new();
    let too_many = client
        .post(format!("{}/chat/completions", serve.url))
        .json(&json!({"model": "up-model", "messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 413);
    let body: Value = too_many.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_messages");

    let big_header = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .header("x-padding", "p".repeat(70 << 10))
        .send()
        .await
        .unwrap();
    assert!(
        big_header.status() == 431 || big_header.status() == 400,
        "{}",
        big_header.status()
    );

    let ok = client
        .post(format!("{}/chat/completions", serve.url))
        .json(&json!({"model": "up-model", "messages": user("still there?")}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "the server keeps serving");
    assert_eq!(up.seen().len(), 1, "only the good request went upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_max_inflight_get_429_with_retry_after() {
    let up = Upstream::start(UpstreamConfig {
        latency: Duration::from_millis(800),
        ..UpstreamConfig::default()
    })
    .await;
    let serve = Serve::start(&up.url, &["--max-inflight", "1"], &[]);
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!("{}/chat/completions", serve.url))
            .json(&json!({"model": "up-model", "messages": user("hi")}))
            .send()
    };
    let first = tokio::spawn(send());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_requests_writes_one_line_per_request_with_every_upstream_call() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let constitution = fixture("native.json");
    let serve = Serve::start(
        &up.url,
        &[
            "--constitution",
            constitution.to_str().unwrap(),
            "--log-requests",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", serve.url))
        .header("x-request-id", "req-test-1")
        .json(&json!({"model": "cai-up-model", "messages": user("Log me")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-test-1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-req-test-1");
    let text = std::fs::read_to_string(dir.path().join("requests.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["request_id"], "req-test-1");
    assert_eq!(line["approach"], "cai");
    assert_eq!(line["status"], 200);
    let calls = line["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    assert!(calls[1]["messages"].to_string().contains("CRITIQUE-REQ"));
    assert!(calls[2]["reply"].as_str().unwrap().starts_with("Revision:"));
    assert_eq!(calls[0]["usage"]["prompt_tokens"], 10);
    assert!(calls[0]["latency_ms"].as_f64().is_some());
    assert_eq!(line["usage"]["total_tokens"], 45);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let up = Upstream::start(UpstreamConfig {
        latency: Duration::from_millis(1000),
        ..UpstreamConfig::default()
    })
    .await;
    let mut serve = Serve::start(&up.url, &[], &[]);
    let url = serve.url.clone();
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/chat/completions"))
            .json(&json!({"model": "up-model", "messages": user("slow")}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let code = tokio::task::spawn_blocking(move || {
        let code = serve.terminate();
        (code, serve)
    })
    .await
    .unwrap();
    let resp = pending
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(code.0, Some(0));
    let logs = code.1.stderr.lock().unwrap().join("\n");
    assert!(logs.contains("stopping"), "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_runs_against_cai_serve() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let constitution = fixture("native.json");
    let serve = Serve::start(
        &up.url,
        &["--constitution", constitution.to_str().unwrap()],
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let out = dir.path().join("out");
    let status = generate_through(
        &serve.url,
        "cai-up-model",
        &[],
        &prompts,
        &constitution,
        &out,
    )
    .await;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let sft = std::fs::read_to_string(dir.path().join("out/sft.jsonl")).unwrap();
    assert_eq!(sft.lines().count(), 2);
    // Each of generate's 6 requests (2 prompts × initial, critique,
    // revision) became a `cai` request of 3 upstream calls.
    assert_eq!(up.seen().len(), 18);
}
