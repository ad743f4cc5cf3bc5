//! `cai serve` as a drop-in proxy, seen from both ends: the official
//! `openai` Python client in front (needs `CAI_PYTHON`), the scripted
//! upstream behind, which records every body and header it receives.
//! What the client sends reaches the upstream as sent (tools, structured
//! output, penalties, unknown fields, its model, its key), nothing is
//! added, and what the upstream answers (tool calls, streamed or not)
//! reaches the client.

use serde_json::{json, Value};

use crate::common::*;
use crate::serve_support::*;

fn create(args: Value) -> Value {
    json!({"op": "create", "args": args})
}

fn reply(r: &Value) -> &Value {
    assert!(r.get("reply").is_some(), "expected a reply, got {r}");
    &r["reply"]
}

fn weather_tool() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }
    }])
}

/// The body the upstream received, without `model` (which the proxy
/// rewrites) — for comparing with what the client sent.
fn without_model(body: &Value) -> Value {
    let mut b = body.clone();
    b.as_object_mut().unwrap().remove("model");
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_calling_round_trip_passes_through_both_ways() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(&up.url, &[], &[]);
    let ask = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let first = openai_client(
        &py,
        &serve.url,
        "k",
        json!([create(json!({"model": "up-model", "messages": ask, "tools": weather_tool(), "tool_choice": "auto", "parallel_tool_calls": false}))]),
    )
    .await;
    let r = reply(&first[0]);
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
    let call = &r["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\": \"Paris\"}");
    let seen = up.seen();
    assert_eq!(seen[0].body["tools"], weather_tool());
    assert_eq!(seen[0].body["tool_choice"], "auto");
    assert_eq!(seen[0].body["parallel_tool_calls"], false);

    // The client runs the tool and sends its result back.
    let convo = json!([
        ask[0],
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny"}
    ]);
    let second = openai_client(
        &py,
        &serve.url,
        "k",
        json!([
            create(json!({"model": "up-model", "messages": convo, "tools": weather_tool()})),
            // Another approach cannot rewrite a tool conversation: it is
            // passed through, and says so.
            create(json!({"model": "bon-up-model", "messages": convo, "tools": weather_tool()}))
        ]),
    )
    .await;
    let r = reply(&second[0]);
    assert_eq!(
        r["choices"][0]["message"]["content"],
        "Final answer: 18 C and sunny"
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 3, "one upstream call per request");
    assert_eq!(seen[1].body["messages"][2]["role"], "tool");
    assert_eq!(
        seen[1].body["messages"][1]["tool_calls"][0]["id"],
        call["id"]
    );
    let fallback = reply(&second[1]);
    assert_eq!(fallback["cai"]["approach"], "none");
    let note = fallback["cai"]["note"].as_str().unwrap();
    assert!(note.contains("approach bon answered as none"), "{note}");
    assert_eq!(without_model(&seen[2].body), without_model(&seen[1].body));
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_tool_call_deltas_are_reassembled_by_the_client() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(&up.url, &[], &[]);
    let out = openai_client(
        &py,
        &serve.url,
        "k",
        json!([{"op": "stream_final", "args": {
            "model": "up-model",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": weather_tool()
        }}]),
    )
    .await;
    let fin = &out[0]["final"];
    assert!(fin.is_object(), "{out:?}");
    let choice = &fin["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_1");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        call["function"]["arguments"], "{\"city\": \"Paris\"}",
        "the argument pieces of two deltas, joined by the client"
    );
    assert_eq!(up.seen()[0].body["stream"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_reaches_the_upstream_as_sent_and_nothing_is_added() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let serve = Serve::start(&up.url, &[], &[]);
    let schema = json!({
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": true, "schema": {
            "type": "object",
            "properties": {"value": {"type": "integer"}, "unit": {"type": "string"}},
            "required": ["value", "unit"], "additionalProperties": false
        }}
    });
    let full = json!({
        "model": "up-model",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]}],
        "response_format": schema,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
        "logit_bias": {"1734": -100},
        "user": "user-1234",
        "metadata": {"team": "a"},
        "reasoning_effort": "low",
        "extra_body": {"top_k": 20, "repetition_penalty": 1.1}
    });
    let bare = json!({"model": "up-model", "messages": [{"role": "user", "content": "Hi"}]});
    let out = openai_client(
        &py,
        &serve.url,
        "k",
        json!([create(full.clone()), create(bare)]),
    )
    .await;
    reply(&out[0]);
    reply(&out[1]);
    let seen = up.seen();
    let got = &seen[0].body;
    assert_eq!(
        serde_json::to_string(&got["response_format"]).unwrap(),
        serde_json::to_string(&schema).unwrap(),
        "the schema, key order included"
    );
    for field in [
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "user",
        "metadata",
        "reasoning_effort",
        "messages",
    ] {
        assert_eq!(got[field], full[field], "{field}");
    }
    assert_eq!(got["top_k"], 20, "a field unknown to the proxy");
    assert_eq!(got["repetition_penalty"], 1.1);

    let plain = seen[1].body.as_object().unwrap();
    let mut keys: Vec<&str> = plain.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["messages", "model"],
        "no max_tokens, temperature, top_p or seed added: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_models_reach_the_upstream_and_models_mirrors_its_list() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig {
        models: Some(vec![
            "up-model".into(),
            "other-model".into(),
            "third".into(),
        ]),
        ..UpstreamConfig::default()
    })
    .await;
    let serve = Serve::start(&up.url, &["--models", "other-model,third"], &[]);
    let ask = |model: &str| {
        create(json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}))
    };
    let out = openai_client(
        &py,
        &serve.url,
        "k",
        json!([
            ask("up-model"),
            ask("other-model"),
            ask("bon-third"),
            ask("not-listed"),
            {"op": "models"}
        ]),
    )
    .await;
    reply(&out[0]);
    reply(&out[1]);
    reply(&out[2]);
    assert_eq!(out[3]["status"], 404, "{}", out[3]);
    assert_eq!(out[3]["body"]["code"], "model_not_found");
    let models: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.body["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&models[..2], ["up-model", "other-model"]);
    assert!(
        models[2..].iter().all(|m| m == "third"),
        "every call of bon-third, judge included, goes to third: {models:?}"
    );
    let listed: Vec<String> = serde_json::from_value(out[4]["models"].clone()).unwrap();
    for id in [
        "up-model",
        "other-model",
        "third",
        "bon-third",
        "cai-up-model",
    ] {
        assert!(listed.contains(&id.to_string()), "{id} in {listed:?}");
    }

    // With every model accepted the list is the upstream's own.
    let any = Serve::start(&up.url, &["--allow-any-model"], &[]);
    let out = openai_client(&py, &any.url, "k", json!([{"op": "models"}])).await;
    let listed: Vec<String> = serde_json::from_value(out[0]["models"].clone()).unwrap();
    assert_eq!(
        listed.len(),
        3 * 14,
        "3 models, each bare and behind 13 slugs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_client_key_sends_the_clients_key_upstream_and_never_logs_it() {
    let Some(py) = python() else { return };
    let up = Upstream::start(UpstreamConfig::default()).await;
    let logs = tempfile::tempdir().unwrap();
    let secret = "sk-client-3e1f9a7c5b";
    let serve = Serve::start(
        &up.url,
        &[
            "--forward-client-key",
            "--log-requests",
            logs.path().to_str().unwrap(),
        ],
        &[("OPENAI_API_KEY", "sk-server-key")],
    );
    let out = openai_client(
        &py,
        &serve.url,
        secret,
        json!([
            create(json!({"model": "up-model", "messages": [{"role": "user", "content": "Hi"}]})),
            create(
                json!({"model": "cai-up-model", "messages": [{"role": "user", "content": "Hi"}]})
            )
        ]),
    )
    .await;
    reply(&out[0]);
    reply(&out[1]);
    let seen = up.seen();
    assert!(seen.len() >= 4);
    for s in &seen {
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {secret}").as_str())
        );
    }
    let log = std::fs::read_to_string(logs.path().join("requests.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    assert!(!log.contains(secret), "the key is in the request log");
    let stderr = serve.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains(secret), "the key is on stderr");
}

#[test]
fn forward_client_key_and_auth_key_env_together_exit_2_naming_both() {
    let out = cai()
        .args([
            "serve",
            "--provider",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ])
        .args(["--forward-client-key", "--auth-key-env", "CAI_TEST_KEY"])
        .env("CAI_TEST_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--forward-client-key") && err.contains("--auth-key-env"),
        "{err}"
    );
}

/// `cai generate` through `cai serve`'s `cai` approach: each reply's usage
/// sums 3 (or 5) upstream calls of ~20 tokens against `--max-tokens 32`,
/// and every row is still written, the usage priced as reported.
#[tokio::test(flavor = "multi_thread")]
async fn generate_through_cai_serve_writes_every_row_and_prices_the_summed_usage() {
    let up = Upstream::start(UpstreamConfig {
        reply_tokens: Some(20),
        ..UpstreamConfig::default()
    })
    .await;
    let constitution = fixture("native.json");
    let serve = Serve::start(
        &up.url,
        &["--constitution", constitution.to_str().unwrap()],
        &[],
    );
    for (model, rounds, calls_per_request) in [("cai-up-model", "1", 3), ("cai2-up-model", "2", 5)]
    {
        let before = up.seen().len();
        let dir = tempfile::tempdir().unwrap();
        let prompts = prompts_csv(dir.path(), 6);
        let out = dir.path().join("out");
        let extra = [
            "--rounds",
            rounds,
            "--max-tokens",
            "32",
            "--price-in",
            "1",
            "--price-out",
            "2",
        ];
        let status =
            generate_through(&serve.url, model, &extra, &prompts, &constitution, &out).await;
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert_eq!(status.status.code(), Some(0), "{model}: {stderr}");
        let sft = std::fs::read_to_string(dir.path().join("out/sft.jsonl")).unwrap();
        assert_eq!(sft.lines().count(), 6, "{model}: every row");
        let rejects =
            std::fs::read_to_string(dir.path().join("out/rejects.jsonl")).unwrap_or_default();
        assert_eq!(rejects.lines().count(), 0, "{model}: {rejects}");
        assert!(
            stderr.matches("kept and priced as reported").count() == 1,
            "{model}: one warning per run: {stderr}"
        );
        let calls = (up.seen().len() - before) as u64;
        let r: u64 = rounds.parse().unwrap();
        assert_eq!(calls, 6 * (1 + 2 * r) * calls_per_request, "{model}");
        let m: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("out/manifest.json")).unwrap())
                .unwrap();
        let (tin, tout) = (
            m["requests"]["tokens_in"].as_u64().unwrap(),
            m["requests"]["tokens_out"].as_u64().unwrap(),
        );
        assert_eq!(tout, 20 * calls, "{model}: the summed completion tokens");
        assert_eq!(tin, 10 * calls, "{model}: the summed prompt tokens");
        let cost = m["cost_usd"].as_f64().unwrap();
        let want = (tin as f64 * 1.0 + tout as f64 * 2.0) / 1e6;
        assert!((cost - want).abs() < 1e-9, "{model}: {cost} vs {want}");
    }
}
