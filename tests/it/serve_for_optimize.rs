//! What `cai optimize` needs from `cai serve`: `--system-prompt FILE` puts
//! the optimised prompt first (at inference), and the pass-through returns
//! first-token `top_logprobs` (the evaluator's log-probability scores
//! against a served small model).

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::serve_support::*;

async fn ask(url: &str, model: &str, messages: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}/chat/completions"))
        .json(&json!({"model": model, "messages": messages}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_puts_the_system_prompt_file_first_in_every_upstream_call() {
    let up = Upstream::start(UpstreamConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("system_prompt.txt");
    std::fs::write(&sys, "OPTIMISED PROMPT\n- Be concise.\n").unwrap();
    let constitution = crate::common::fixture("native.json");
    let serve = Serve::start(
        &up.url,
        &[
            "--system-prompt",
            sys.to_str().unwrap(),
            "--constitution",
            constitution.to_str().unwrap(),
        ],
        &[],
    );

    ask(
        &serve.url,
        "up-model",
        json!([{"role": "user", "content": "What is 6 x 7?"}]),
    )
    .await;
    // A client's own system message follows the file's text in one message.
    ask(
        &serve.url,
        "up-model",
        json!([{"role": "system", "content": "Answer in French."},
               {"role": "user", "content": "What is 6 x 7?"}]),
    )
    .await;
    // The `cai` approach: the answer call starts with it; critique and
    // revision keep the constitution's own system messages (as `generate`).
    ask(
        &serve.url,
        "cai-up-model",
        json!([{"role": "user", "content": "What is 6 x 7?"}]),
    )
    .await;

    let seen = up.seen();
    assert_eq!(seen.len(), 5, "1 + 1 + answer, critique, revision");
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "system", "content": "OPTIMISED PROMPT\n- Be concise."},
               {"role": "user", "content": "What is 6 x 7?"}])
    );
    assert_eq!(
        seen[1].body["messages"][0],
        json!({"role": "system", "content": "OPTIMISED PROMPT\n- Be concise.\n\nAnswer in French."})
    );
    assert_eq!(seen[1].body["messages"].as_array().unwrap().len(), 2);
    let firsts: Vec<(&str, &Value)> = seen[2..]
        .iter()
        .map(|s| (s.kind.as_str(), &s.body["messages"][0]["content"]))
        .collect();
    assert_eq!(
        firsts[0],
        ("answer", &json!("OPTIMISED PROMPT\n- Be concise."))
    );
    assert_eq!(firsts[1].0, "critique");
    assert_eq!(firsts[1].1, "SYS-CRITIQUE");
    assert_eq!(firsts[2].0, "revision");
    assert_eq!(firsts[2].1, "SYS-REVISION");
}

#[test]
fn serve_refuses_an_empty_or_missing_system_prompt_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    for (file, says) in [
        (empty, "the file is empty"),
        (dir.path().join("missing.txt"), "cannot read it"),
    ] {
        let out = crate::common::cai()
            .args(["serve", "--port", "0", "--provider", "openai"])
            .args(["--base-url", "http://127.0.0.1:9/v1", "--model", "m"])
            .arg("--system-prompt")
            .arg(&file)
            .timeout(std::time::Duration::from_secs(30))
            .assert()
            .code(2);
        let e = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(e.contains("--system-prompt") && e.contains(says), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pass_through_returns_the_first_tokens_top_logprobs_when_asked() {
    let up = MockServer::start().await;
    let tops = json!([{"token": "4", "logprob": -0.5, "bytes": [52]},
                      {"token": "3", "logprob": -1.5, "bytes": [51]}]);
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "u", "object": "chat.completion", "created": 0, "model": "up-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                         "finish_reason": "length",
                         "logprobs": {"content": [{"token": "4", "logprob": -0.5, "bytes": [52], "top_logprobs": tops}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        })))
        .mount(&up)
        .await;
    let serve = Serve::start(&format!("{}/v1", up.uri()), &[], &[]);
    let client = reqwest::Client::new();
    let post = |body: Value| {
        client
            .post(format!("{}/chat/completions", serve.url))
            .json(&body)
            .send()
    };
    let q = json!([{"role": "user", "content": "Rate it 1-5."}]);

    let r: Value = post(json!({"model": "up-model", "messages": q, "max_tokens": 1,
                               "logprobs": true, "top_logprobs": 5}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        r["choices"][0]["logprobs"],
        json!({"content": [{"token": "4", "logprob": -0.5, "bytes": [52], "top_logprobs": tops}]})
    );
    // A reply cut off by max_tokens is passed on as it is.
    assert_eq!(r["choices"][0]["finish_reason"], "length");

    // Not asked: none asked upstream (the reply is the upstream's, passed
    // on as it wrote it).
    let r: Value = post(json!({"model": "up-model", "messages": q}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["choices"][0]["message"]["content"], "4");
    let bad =
        post(json!({"model": "up-model", "messages": q, "logprobs": true, "top_logprobs": 21}))
            .await
            .unwrap();
    assert_eq!(bad.status(), 400);
    let sent = crate::common::bodies(&up).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(
        (&sent[0]["logprobs"], &sent[0]["top_logprobs"]),
        (&json!(true), &json!(5))
    );
    assert_eq!(sent[1].get("top_logprobs"), None);
}
