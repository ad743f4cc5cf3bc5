//! OpenAI-compatible presets: the table, `--provider NAME` end to end,
//! and what the user is told when something is missing or wrong.

use cai::cli::{EndpointArgs, ProviderKind};
use cai::provider::registry::{Backend, ENTRIES};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::support::*;

fn endpoint(kind: ProviderKind) -> EndpointArgs {
    EndpointArgs {
        provider: Some(kind),
        base_urls: Vec::new(),
        model: Some("m".into()),
        api_key_env: None,
        chat_template: "chatml".into(),
        timeout: 5.0,
        max_reply_bytes: None,
        offline: false,
        local_parallel: None,
        local_cache_mb: None,
        prompt_cache: cai::cli::PromptCacheArg::Auto,
        api: Default::default(),
    }
}

/// The documented URL and key variable of every preset, and that each one
/// builds a provider pointed there with the key from that variable.
#[test]
fn each_preset_resolves_to_its_url_and_key_variable() {
    let expected = [
        (
            "openai",
            "https://api.openai.com/v1",
            Some("OPENAI_API_KEY"),
        ),
        (
            "groq",
            "https://api.groq.com/openai/v1",
            Some("GROQ_API_KEY"),
        ),
        (
            "mistral",
            "https://api.mistral.ai/v1",
            Some("MISTRAL_API_KEY"),
        ),
        (
            "together",
            "https://api.together.xyz/v1",
            Some("TOGETHER_API_KEY"),
        ),
        (
            "deepseek",
            "https://api.deepseek.com/v1",
            Some("DEEPSEEK_API_KEY"),
        ),
        (
            "openrouter",
            "https://openrouter.ai/api/v1",
            Some("OPENROUTER_API_KEY"),
        ),
        (
            "hf-router",
            "https://router.huggingface.co/v1",
            Some("HF_TOKEN"),
        ),
        ("vllm", "http://127.0.0.1:8000/v1", None),
        ("tgi", "http://127.0.0.1:8080/v1", None),
        ("llamacpp", "http://127.0.0.1:8080/v1", None),
        ("ollama", "http://127.0.0.1:11434/v1", None),
    ];
    let presets = ENTRIES.iter().filter(|e| e.backend == Backend::OpenAi);
    assert_eq!(presets.count(), expected.len());
    for (name, url, var) in expected {
        let kind = <ProviderKind as clap::ValueEnum>::from_str(name, false)
            .unwrap_or_else(|e| panic!("--provider {name}: {e}"));
        assert_eq!(kind.name(), name);
        let p = kind.entry();
        assert_eq!(p.backend, Backend::OpenAi, "{name}");
        assert_eq!(
            (p.base_url, p.key_vars.first().copied()),
            (Some(url), var),
            "{name}"
        );
        assert_eq!(
            cai::config::default_key_vars(kind),
            var.as_slice(),
            "{name}"
        );
        if let Some(var) = var {
            // This test process owns these variables: the binary tests
            // pass their environment explicitly.
            std::env::set_var(var, format!("key-for-{name}"));
        }
        let provider = cai::config::plan(&endpoint(kind), 1)
            .and_then(|p| Ok(p.build()?))
            .expect(name);
        assert_eq!(provider.endpoint(), url, "{name}");
        assert_eq!(provider.key_var(), var, "{name}");
        assert_eq!(provider.name(), name);
    }
    // The native providers are listed too, and old names keep working.
    for name in ["local", "openai", "hf", "anthropic", "gemini"] {
        assert!(ProviderKind::all().iter().any(|k| k.name() == name));
    }
    assert_eq!(ProviderKind::all().len(), ENTRIES.len());
}

struct ChatReply;

impl Respond for ChatReply {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = crate::common::last_message(&body);
        let text = fake_reply(last, &body["messages"].to_string());
        ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
}

pub async fn chat_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ChatReply)
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn groq_preset_with_base_url_works_end_to_end() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/openai/v1/chat/completions"))
        .and(header("authorization", "Bearer gsk-test-key"))
        .respond_with(ChatReply)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    let out = dir.path().join("out");
    cai_in(dir.path())
        .args(generate_args(&prompts, &out))
        .args(["--provider", "groq", "--model", "llama-3.1-8b-instant"])
        .arg("--base-url")
        .arg(format!("{}/openai/v1", server.uri()))
        .env("GROQ_API_KEY", "gsk-test-key")
        .assert()
        .code(0);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 9);
    let b: Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(b["model"], "llama-3.1-8b-instant");
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 3);
    let m = manifest(&out);
    assert_eq!(m["provider"], "groq");
    // llama-3.1-8b-instant has no row in the table: no cost claimed.
    assert!(m["cost_usd"].is_null());
}

#[test]
fn hosted_preset_without_key_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    for (preset, var) in [
        ("groq", "GROQ_API_KEY"),
        ("hf-router", "HF_TOKEN"),
        ("openrouter", "OPENROUTER_API_KEY"),
    ] {
        cai_in(dir.path())
            .args(generate_args(&prompts, &dir.path().join("o")))
            .args(["--provider", preset, "--model", "x"])
            .assert()
            .code(2)
            .stderr(predicates::str::contains(format!(
                "no API key for provider {preset}: set the environment variable {var}"
            )));
    }
    // A hosted preset without a default model asks for one.
    cai_in(dir.path())
        .args(generate_args(&prompts, &dir.path().join("o")))
        .args(["--provider", "groq"])
        .env("GROQ_API_KEY", "k")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--provider groq needs --model"))
        .stderr(predicates::str::contains("cai models --provider groq"));
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_names_the_model_and_suggests_listing_models() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_string("model not found"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let base = format!("{}/v1", server.uri());
    let a = cai_in(dir.path())
        .args(generate_args(&prompts, &dir.path().join("o")))
        .args([
            "--provider",
            "vllm",
            "--model",
            "no-such-model",
            "--base-url",
            &base,
        ])
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(err.contains("HTTP 404"), "{err}");
    assert!(err.contains("model `no-such-model`"), "{err}");
    assert!(
        err.contains(&format!("cai models --provider vllm --base-url {base}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn models_lists_ids_for_each_protocol() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer or-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "list", "data": [{"id": "model-a", "object": "model"}, {"id": "model-b", "object": "model"}]
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("x-api-key", "ant-key"))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{"id": "claude-x", "type": "model"}], "has_more": false, "last_id": "claude-x"
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1beta/models"))
        .and(header("x-goog-api-key", "g-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "models": [{"name": "models/gemini-x"}, {"name": "models/gemini-y"}]
        })))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let uri = server.uri();
    let run = |args: &[&str], env: (&str, &str)| {
        let a = cai_in(dir.path())
            .arg("models")
            .args(args)
            .env(env.0, env.1)
            .assert()
            .code(0);
        stdout_of(&a)
    };
    assert_eq!(
        run(
            &[
                "--provider",
                "openrouter",
                "--base-url",
                &format!("{uri}/v1")
            ],
            ("OPENROUTER_API_KEY", "or-key")
        ),
        "model-a\nmodel-b\n"
    );
    assert_eq!(
        run(
            &["--provider", "anthropic", "--base-url", &uri],
            ("ANTHROPIC_API_KEY", "ant-key")
        ),
        "claude-x\n"
    );
    assert_eq!(
        run(
            &["--provider", "gemini", "--base-url", &uri],
            ("GEMINI_API_KEY", "g-key")
        ),
        "gemini-x\ngemini-y\n"
    );
    // A rejected key is named, not printed.
    let a = cai_in(dir.path())
        .args(["models", "--provider", "anthropic", "--base-url", &uri])
        .env("ANTHROPIC_API_KEY", "wrong-key-MARKER")
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(!err.contains("wrong-key-MARKER"), "{err}");
}
