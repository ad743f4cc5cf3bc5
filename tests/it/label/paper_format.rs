//! A constitution in the Anthropic paper's format whose requests keep the
//! completion-model scaffolding (`CritiqueRequest:` … `\n\nCritique:`):
//! `cai validate` says what it normalised, and `generate` sends chat models
//! the requests without it.

use crate::common::{cai, generate_openai, openai_server, prompts_csv, read_jsonl};

const PAPER: &str = r#"{
  "harmful0": {
    "prompt": ["\n\nCritiqueRequest: CRITIQUE-REQ-P: identify specific ways in which the last response is harmful.\n\nCritique:"],
    "edit_request": "\n\nRevisionRequest: REVISION-REQ-P: rewrite the response to remove all harmful content.\n\nRevision:"
  }
}"#;

#[test]
fn validate_reports_the_markers_it_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("paper.json");
    std::fs::write(&path, PAPER).unwrap();
    let out = cai()
        .arg("validate")
        .arg("--constitution")
        .arg(&path)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("Anthropic format, 1 principles"), "{out}");
    assert!(
        out.contains("normalised for chat models: completion-style markers removed from 2 requests:\n  harmful0.edit_request: removed `RevisionRequest:`, `Revision:`\n  harmful0.prompt[0]: removed `CritiqueRequest:`, `Critique:`"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_models_get_the_requests_without_the_scaffolding() {
    let server = openai_server().await;
    let dir = tempfile::tempdir().unwrap();
    let constitution = dir.path().join("paper.json");
    std::fs::write(&constitution, PAPER).unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let out = dir.path().join("out");
    generate_openai(&server.uri(), &prompts, &constitution, &out)
        .assert()
        .code(0);
    for t in read_jsonl(&out.join("trace.jsonl")) {
        assert_eq!(
            t["critic_prompt"],
            "CRITIQUE-REQ-P: identify specific ways in which the last response is harmful."
        );
        assert_eq!(
            t["revision_prompt"],
            "REVISION-REQ-P: rewrite the response to remove all harmful content."
        );
    }
}
