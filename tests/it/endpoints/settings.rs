//! Precedence: cai.toml < .env < environment < flags, each overriding the
//! one before; the user config directory; named endpoints; `config show`.

use std::path::Path;

use serde_json::Value;
use wiremock::MockServer;

use super::presets::chat_server;
use super::support::*;

/// The model and bearer key of the first request a server received.
async fn first_request(server: &MockServer) -> (String, String) {
    let reqs = server.received_requests().await.unwrap();
    let r = reqs.first().expect("a request was sent");
    let b: Value = serde_json::from_slice(&r.body).unwrap();
    let auth = r
        .headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (b["model"].as_str().unwrap_or("").to_string(), auth)
}

fn run(dir: &Path, prompts: &Path, out: &str, env: &[(&str, &str)], flags: &[&str]) {
    let mut c = cai_in(dir);
    c.args(generate_args(prompts, &dir.join(out))).args(flags);
    for (k, v) in env {
        c.env(k, v);
    }
    c.assert().code(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn file_then_dotenv_then_environment_then_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prompts = prompts_csv(d, 1);

    // 1. cai.toml sets the endpoint and model; .env supplies the key.
    let s1 = chat_server().await;
    std::fs::write(
        d.join("cai.toml"),
        format!(
            "provider = \"groq\"\nbase_url = \"{}/v1\"\nmodel = \"model-from-file\"\nmax_tokens = 77\n",
            s1.uri()
        ),
    )
    .unwrap();
    std::fs::write(d.join(".env"), "# keys\nGROQ_API_KEY=\"key-from-dotenv\"\n").unwrap();
    run(d, &prompts, "o1", &[], &[]);
    let (model, auth) = first_request(&s1).await;
    assert_eq!(model, "model-from-file");
    assert_eq!(auth, "Bearer key-from-dotenv");
    let body: Value =
        serde_json::from_slice(&s1.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(body["max_tokens"], 77);

    // 2. The environment beats both: CAI_MODEL over the file, the real
    //    variable over .env.
    let s2 = chat_server().await;
    let base2 = format!("{}/v1", s2.uri());
    run(
        d,
        &prompts,
        "o2",
        &[
            ("CAI_MODEL", "model-from-env"),
            ("CAI_BASE_URL", &base2),
            ("GROQ_API_KEY", "key-from-env"),
        ],
        &[],
    );
    let (model, auth) = first_request(&s2).await;
    assert_eq!(model, "model-from-env");
    assert_eq!(auth, "Bearer key-from-env");

    // 3. A flag beats everything.
    let s3 = chat_server().await;
    let base3 = format!("{}/v1", s3.uri());
    run(
        d,
        &prompts,
        "o3",
        &[("CAI_MODEL", "model-from-env"), ("CAI_BASE_URL", &base2)],
        &["--model", "model-from-flag", "--base-url", &base3],
    );
    let (model, auth) = first_request(&s3).await;
    assert_eq!(model, "model-from-flag");
    assert_eq!(auth, "Bearer key-from-dotenv");
    assert!(s2.received_requests().await.unwrap().len() == 3);

    // `config show` says where each value came from.
    let a = cai_in(d)
        .args(["config", "show", "--temperature", "0.2"])
        .env("CAI_MODEL", "model-from-env")
        .assert()
        .code(0);
    let out = stdout_of(&a);
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
            .to_string()
    };
    assert!(
        line("provider").contains("groq") && line("provider").contains("cai.toml"),
        "{out}"
    );
    assert!(
        line("model").contains("model-from-env") && line("model").contains("$CAI_MODEL"),
        "{out}"
    );
    assert!(
        line("temperature").contains("0.2") && line("temperature").contains("flag"),
        "{out}"
    );
    assert!(line("max_tokens").contains("77"), "{out}");
    assert!(line("top_p").contains("default"), "{out}");
    assert!(
        out.contains("key GROQ_API_KEY = *** (from .env GROQ_API_KEY)"),
        "{out}"
    );
    assert!(!out.contains("key-from-dotenv"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_config_dir_and_named_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prompts = prompts_csv(d, 1);
    let main = chat_server().await;
    let judge = chat_server().await;
    // No ./cai.toml: the user's $XDG_CONFIG_HOME/cai/cai.toml is read.
    let cfg = d.join("xdg").join("cai");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("cai.toml"),
        format!(
            "provider = \"vllm\"\nbase_url = \"{}/v1\"\nmodel = \"file-model\"\n\n[endpoints.judge]\nprovider = \"openai\"\nbase_url = \"{}/v1\"\nmodel = \"judge-model\"\napi_key_env = \"JUDGE_KEY\"\n",
            main.uri(),
            judge.uri()
        ),
    )
    .unwrap();
    run(d, &prompts, "o1", &[], &[]);
    assert_eq!(first_request(&main).await.0, "file-model");

    // --provider NAME uses the endpoint's values over the file's defaults.
    run(
        d,
        &prompts,
        "o2",
        &[("JUDGE_KEY", "jk")],
        &["--provider", "judge"],
    );
    let (model, auth) = first_request(&judge).await;
    assert_eq!(model, "judge-model");
    assert_eq!(auth, "Bearer jk");
    // …and a flag still wins over the endpoint.
    run(
        d,
        &prompts,
        "o3",
        &[("JUDGE_KEY", "jk")],
        &["--provider=judge", "--model", "flag-model"],
    );
    let models: Vec<String> = judge
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(models.contains(&"flag-model".to_string()), "{models:?}");

    let a = cai_in(d)
        .args(["config", "show", "--provider", "judge"])
        .assert()
        .code(0);
    let out = stdout_of(&a);
    assert!(out.contains("endpoint: judge"), "{out}");
    assert!(out.contains("# endpoint judge"), "{out}");
    assert!(
        out.contains(&cfg.join("cai.toml").display().to_string()),
        "{out}"
    );
}

#[test]
fn bad_config_is_refused_with_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("cai.toml"), "modle = \"x\"\n").unwrap();
    cai_in(d)
        .args(["config", "show"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("cai.toml: modle: unknown key"));
    // Help and version still work, so the user can find out what is wrong.
    cai_in(d).arg("--version").assert().code(0);
    cai_in(d)
        .args(["config", "show", "--help"])
        .assert()
        .code(0);
    std::fs::write(d.join("cai.toml"), "max_tokens = \"lots\"\n").unwrap();
    cai_in(d)
        .args(["config", "show"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("max_tokens = \"lots\""))
        .stderr(predicates::str::contains("cai.toml"));
    std::fs::remove_file(d.join("cai.toml")).unwrap();
    std::fs::write(
        d.join(".env"),
        "A=1\nthis line has no equals sign sk-SECRET\n",
    )
    .unwrap();
    let a = cai_in(d).args(["config", "show"]).assert().code(2);
    let err = stderr_of(&a);
    assert!(err.contains(".env:2: expected KEY=VALUE"), "{err}");
    assert!(!err.contains("sk-SECRET"), "{err}");
}

#[test]
fn version_completions_and_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let a = cai_in(dir.path()).arg("--version").assert().code(0);
    let v = stdout_of(&a);
    assert!(
        v.starts_with(&format!("cai {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(commit) = head {
        assert!(v.contains(&format!("({commit})")), "{v} lacks {commit}");
    }
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let a = cai_in(dir.path())
            .args(["completions", shell])
            .assert()
            .code(0);
        let script = stdout_of(&a);
        assert!(script.contains("generate"), "{shell}");
        if shell != "powershell" {
            // clap's PowerShell script completes flags, not their values.
            assert!(script.contains("groq"), "{shell}: presets complete");
        }
    }
    let a = cai_in(dir.path()).arg("man").assert().code(0);
    let man = stdout_of(&a);
    assert!(man.contains(".TH cai 1"), "{man}");
    assert!(man.contains("generate"));
    // Every subcommand's help has an example.
    for sub in [
        "generate",
        "validate",
        "render",
        "config",
        "models",
        "completions",
        "man",
    ] {
        let a = cai_in(dir.path()).args([sub, "--help"]).assert().code(0);
        assert!(
            stdout_of(&a).contains("Example"),
            "{sub} --help has no example"
        );
    }
}
