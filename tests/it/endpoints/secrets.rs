//! A key set to a unique marker never shows up in output files, log lines
//! (text or JSON), error messages or `config show`.

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::presets::chat_server;
use super::support::*;

const MARKER: &str = "sk-MARKER-7c3e9f41d2-never-print";

#[tokio::test(flavor = "multi_thread")]
async fn the_key_never_appears_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prompts = prompts_csv(d, 3);
    let server = chat_server().await;
    let base = format!("{}/v1", server.uri());
    let mut seen = String::new();

    // Successful runs, text and JSON logs, key from the environment.
    for (fmt, out) in [("text", "o-text"), ("json", "o-json")] {
        let a = cai_in(d)
            .args(generate_args(&prompts, &d.join(out)))
            .args(["--provider", "groq", "--model", "m", "--base-url", &base])
            .args(["--log-format", fmt])
            .env("GROQ_API_KEY", MARKER)
            .assert()
            .code(0);
        seen.push_str(&stderr_of(&a));
        seen.push_str(&stdout_of(&a));
        assert_not_in_files(&d.join(out), MARKER);
    }
    // The key was sent, so the marker is really in play.
    let auth = server.received_requests().await.unwrap()[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(auth, format!("Bearer {MARKER}"));

    // Refused requests whose error bodies echo the key, in both formats.
    let echo = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "error": {"message": format!("key {MARKER} is not allowed")}
        })))
        .mount(&echo)
        .await;
    for (provider, fmt) in [
        ("anthropic", "text"),
        ("gemini", "json"),
        ("openai", "json"),
    ] {
        let base = if provider == "openai" {
            format!("{}/v1", echo.uri())
        } else {
            echo.uri()
        };
        let out = d.join(format!("o-{provider}"));
        let var = match provider {
            "anthropic" => "ANTHROPIC_API_KEY",
            "gemini" => "GEMINI_API_KEY",
            _ => "OPENAI_API_KEY",
        };
        let a = cai_in(d)
            .args(generate_args(&prompts, &out))
            .args(["--provider", provider, "--base-url", &base])
            .args(["--log-format", fmt])
            .env(var, MARKER)
            .assert()
            .code(2);
        let err = stderr_of(&a);
        assert!(err.contains("HTTP 403"), "{err}");
        assert!(err.contains(&format!("${var}")), "{err}");
        seen.push_str(&err);
        assert_not_in_files(&out, MARKER);
    }

    // config show, with the key from .env and from the environment.
    std::fs::write(d.join(".env"), format!("OPENAI_API_KEY={MARKER}\n")).unwrap();
    for env in [None, Some(("GEMINI_API_KEY", MARKER))] {
        let mut c = cai_in(d);
        c.args(["config", "show"]);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let a = c.assert().code(0);
        let out = stdout_of(&a);
        assert!(out.contains("key OPENAI_API_KEY = ***"), "{out}");
        seen.push_str(&out);
    }
    // A key pasted where a variable name belongs is not echoed either.
    let a = cai_in(d)
        .args(generate_args(&prompts, &d.join("o-pasted")))
        .args([
            "--provider",
            "groq",
            "--model",
            "m",
            "--api-key-env",
            MARKER,
        ])
        .assert()
        .code(2);
    seen.push_str(&stderr_of(&a));
    let a = cai_in(d)
        .args(["config", "show", "--api-key-env", MARKER])
        .assert()
        .code(0);
    seen.push_str(&stdout_of(&a));
    assert!(!seen.contains(MARKER), "key leaked:\n{seen}");
}
