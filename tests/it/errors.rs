//! Bad input and refused requests: a clear message naming the file and line
//! or JSON path, exit code 2, and (for input problems) no request sent.

use std::path::Path;

use predicates::str::contains;
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;

/// Runs `generate` with the given inputs against a server that counts
/// requests; asserts exit 2, every expected fragment on stderr, and that
/// nothing was sent.
async fn refused(prompts: &Path, constitution: &Path, extra: &[&str], expect: &[&str]) {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = generate_openai(
        &server.uri(),
        prompts,
        constitution,
        &dir.path().join("out"),
    );
    cmd.args(extra);
    let assert = cmd.assert().code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    for e in expect {
        assert!(stderr.contains(e), "stderr lacks {e:?}:\n{stderr}");
    }
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        0,
        "no request may be sent on bad input"
    );
}

fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_are_refused_before_any_request() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let good_p = prompts_csv(dir, 3);
    let good_c = fixture("native.json");
    let cases: Vec<(
        std::path::PathBuf,
        std::path::PathBuf,
        Vec<&str>,
        Vec<String>,
    )> = vec![
        // 1. CSV row with an extra field.
        (
            write(dir, "extra.csv", "id,prompt\na,ok\nb,x,y\n"),
            good_c.clone(),
            vec![],
            vec!["extra.csv:3: expected 2 fields, found 3".into()],
        ),
        // 2. Blank prompt, with its line.
        (
            write(dir, "blank.csv", "id,prompt\na,ok\nb,\"  \"\n"),
            good_c.clone(),
            vec![],
            vec!["blank.csv:3: blank prompt".into()],
        ),
        // 3. Duplicate ids.
        (
            write(dir, "dup.csv", "id,prompt\na,one\na,two\n"),
            good_c.clone(),
            vec![],
            vec!["dup.csv:3: duplicate id `a`".into()],
        ),
        // 4. Missing prompt column named by --prompt-column.
        (
            good_p.clone(),
            good_c.clone(),
            vec!["--prompt-column", "question"],
            vec!["no column `question` (columns: id, prompt)".into()],
        ),
        // 5. Malformed JSONL line.
        (
            write(
                dir,
                "bad.jsonl",
                "{\"prompt\": \"ok\"}\n{\"prompt\": oops}\n",
            ),
            good_c.clone(),
            vec![],
            vec!["bad.jsonl:2: not valid JSON".into()],
        ),
        // 6. Constitution that is not JSON.
        (
            good_p.clone(),
            write(dir, "c1.json", "{\n \"critique_revision_principles\": [\n"),
            vec![],
            vec!["c1.json:3: not valid JSON".into()],
        ),
        // 7. Constitution with a missing field, reported by JSON path.
        (
            good_p.clone(),
            write(
                dir,
                "c2.json",
                r#"{"critique_revision_principles": [{"critique": "a", "revision": "b"}, {"critique": "c"}]}"#,
            ),
            vec![],
            vec!["c2.json: critique_revision_principles[1].revision: missing".into()],
        ),
        // 8. Unknown constitution shape.
        (
            good_p.clone(),
            write(dir, "c3.json", r#"{"rules": ["be nice"]}"#),
            vec![],
            vec!["not a recognised constitution format".into()],
        ),
        // 9. A broken template override.
        (
            good_p.clone(),
            good_c.clone(),
            vec!["--templates", "TEMPLATES"],
            vec!["critique.jinja:1: syntax error".into()],
        ),
        // 11. A key variable named but not set.
        (
            good_p.clone(),
            good_c.clone(),
            vec!["--api-key-env", "CAI_TEST_UNSET_KEY"],
            vec!["set the environment variable CAI_TEST_UNSET_KEY".into()],
        ),
        // 12. Missing prompts file.
        (
            dir.join("nope.csv"),
            good_c.clone(),
            vec![],
            vec!["nope.csv: cannot open prompts".into()],
        ),
        // 13. Best-of-N without a way to pick the pair says what to add.
        (
            good_p.clone(),
            good_c.clone(),
            vec!["--samples", "3"],
            vec!["--samples above 1 needs a way to pick the pair".into()],
        ),
        // 14. Several problems at once are all listed.
        (
            write(dir, "two.csv", "id,prompt\na,\nb,ok\nb,again\n"),
            write(dir, "c4.json", r#"{"critique_revision_principles": []}"#),
            vec![],
            vec![
                "two.csv:2: blank prompt".into(),
                "two.csv:4: duplicate id `b`".into(),
                "c4.json: critique_revision_principles: must not be empty".into(),
            ],
        ),
    ];
    let tdir = dir.join("templates");
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::write(tdir.join("critique.jinja"), "{% if %}").unwrap();
    for (prompts, constitution, extra, expect) in cases {
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("TEMPLATES", &tdir.display().to_string()))
            .collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
        refused(&prompts, &constitution, &extra, &expect).await;
    }
}

#[test]
fn bad_urls_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = prompts_csv(d.path(), 1);
    for (url, msg) in [
        ("not a url", "--base-url `not a url` is not a valid URL"),
        ("ftp://127.0.0.1/v1", "must be an http:// or https:// URL"),
    ] {
        cai()
            .args([
                "generate",
                "--provider",
                "openai",
                "--base-url",
                url,
                "--prompts",
            ])
            .arg(&p)
            .arg("--constitution")
            .arg(fixture("native.json"))
            .arg("--out")
            .arg(d.path().join("o"))
            .assert()
            .code(2)
            .stderr(contains(msg));
    }
}

#[test]
fn missing_openai_key_names_the_variable() {
    let d = tempfile::tempdir().unwrap();
    let p = prompts_csv(d.path(), 1);
    cai()
        .args(["generate", "--provider", "openai", "--prompts"])
        .arg(&p)
        .arg("--constitution")
        .arg(fixture("native.json"))
        .arg("--out")
        .arg(d.path().join("o"))
        .assert()
        .code(2)
        .stderr(contains("set the environment variable OPENAI_API_KEY"));
}

#[test]
fn validate_lists_all_problems_and_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "p.csv", "id,prompt\na,\na,x\n");
    let c = write(d.path(), "c.json", r#"{"constitutions": [{"critic": 3}]}"#);
    cai()
        .args(["validate", "--prompts"])
        .arg(&p)
        .arg("--constitution")
        .arg(&c)
        .assert()
        .code(2)
        .stderr(contains("p.csv:2: blank prompt"))
        .stderr(contains("p.csv:3: duplicate id `a`"))
        .stderr(contains(
            "constitutions[0].critic: expected a string, found a number",
        ))
        .stderr(contains("constitutions[0].revision: missing"));
}

#[test]
fn shipped_data_is_valid() {
    for c in ["principles/harmless.json", "principles/helpful_tutor.json"] {
        cai()
            .args(["validate", "--constitution"])
            .arg(repo(c))
            .assert()
            .code(0);
    }
    for p in ["prompts/harmless_sample.csv", "prompts/stem_sample.csv"] {
        cai()
            .args(["validate", "--prompts"])
            .arg(repo(p))
            .assert()
            .code(0);
    }
    let c = cai::input::Constitution::load(&repo("principles/harmless.json")).unwrap();
    assert!(c.principles.len() >= 12);
    assert!(c.few_shots.len() >= 2 * 6);
    assert!(c.comparison_principles.len() >= 6);
    let n = cai::input::prompts::validate(&cai::input::PromptSpec::new(repo(
        "prompts/harmless_sample.csv",
    )))
    .unwrap();
    assert!(n >= 24);
    let n = cai::input::prompts::validate(&cai::input::PromptSpec::new(repo(
        "prompts/stem_sample.csv",
    )))
    .unwrap();
    assert!(n >= 24);
}

const SECRET: &str = "sk-test-MARKER-5f2d0c9a";

#[tokio::test(flavor = "multi_thread")]
async fn unauthorized_stops_at_once_naming_the_variable_without_the_key() {
    let server = MockServer::start().await;
    // A server that echoes the key back, as some do in their error text.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": {"message": format!("Incorrect API key provided: {SECRET}"), "type": "invalid_request_error"}
        })))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 50);
    let out = dir.path().join("out");
    let assert = generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .env("MY_KEY", SECRET)
        .args(["--api-key-env", "MY_KEY", "--concurrency", "4"])
        .assert()
        .code(2);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(stderr.contains("$MY_KEY"), "{stderr}");
    assert!(!stderr.contains(SECRET), "key leaked to stderr: {stderr}");
    let sent = server.received_requests().await.unwrap().len();
    assert!(sent <= 4, "stopped at once, not after {sent} requests");
    // The key was sent as a bearer token…
    let req = &server.received_requests().await.unwrap()[0];
    assert_eq!(
        req.headers.get("authorization").unwrap().to_str().unwrap(),
        format!("Bearer {SECRET}")
    );
    // …and appears in no file of the run directory.
    for entry in walk(&out) {
        let text = String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).to_string();
        assert!(
            !text.contains(SECRET),
            "key leaked into {}",
            entry.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_names_the_url_and_model() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_string("model not found"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    generate_openai(
        &server.uri(),
        &prompts,
        &fixture("native.json"),
        &dir.path().join("o"),
    )
    .assert()
    .code(2)
    .stderr(contains("/v1/chat/completions answered HTTP 404"))
    .stderr(contains("model `test-model`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_rows_exit_1_with_reasons() {
    let server = MockServer::start().await;
    // 400 is never retried: the prompt becomes a reject, the run goes on.
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_string_contains("poison"))
        .respond_with(ResponseTemplate::new(400).set_body_string("context too long"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ChatReply)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = write(
        dir.path(),
        "p.csv",
        "id,prompt\na,fine\nb,poison pill\nc,also fine\n",
    );
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &fixture("native.json"), &out)
        .assert()
        .code(1);
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["id"], "b");
    assert_eq!(rejects[0]["stage"], "initial");
    assert!(rejects[0]["reason"].as_str().unwrap().contains("HTTP 400"));
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 2);
    assert_eq!(server.received_requests().await.unwrap().len(), 1 + 2 * 3);
}

pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
