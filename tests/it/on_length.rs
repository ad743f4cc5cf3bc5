//! `generate --on-length keep|retry|reject`: what becomes of a reply cut
//! off by the token limit, against a fake whose initial answers stop with
//! `finish_reason: length` while `max_tokens` is below a threshold.

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::{fake_reply, generate_openai, prompts_csv, read_jsonl, repo};

/// Initial answers are cut off (`length`) when `max_tokens` < `below`;
/// critiques and revisions always finish.
struct CutOff {
    below: u64,
}

impl Respond for CutOff {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = crate::common::last_message(&body);
        let initial = !last.contains("CRITIQUE-REQ") && !last.contains("REVISION-REQ");
        let cut = initial && body["max_tokens"].as_u64().unwrap_or(0) < self.below;
        let text = fake_reply(last, &body["messages"].to_string());
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": if cut { "length" } else { "stop" }}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
}

async fn server(below: u64) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(CutOff { below })
        .mount(&s)
        .await;
    s
}

/// Runs 3 prompts with `--max-tokens 50` and `extra`; returns the exit
/// code, the run directory's manifest and the requests sent.
async fn run(below: u64, extra: &[&str]) -> (i32, Value, tempfile::TempDir, usize) {
    let s = server(below).await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 3);
    let out = dir.path().join("out");
    let code = generate_openai(
        &s.uri(),
        &prompts,
        &repo("tests/fixtures/native.json"),
        &out,
    )
    .args(["--max-tokens", "50"])
    .args(extra)
    .output()
    .unwrap()
    .status
    .code()
    .unwrap_or(-1);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let sent = s.received_requests().await.unwrap_or_default().len();
    (code, manifest, dir, sent)
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_writes_the_rows_marked_and_counted() {
    let (code, manifest, dir, sent) = run(1000, &["--on-length", "keep"]).await;
    assert_eq!(code, 0);
    assert_eq!(sent, 9, "one request per stage, no retry");
    assert_eq!(manifest["counts"]["sft_rows"], 3);
    assert_eq!(manifest["counts"]["truncated_rows"], 3);
    for t in read_jsonl(&dir.path().join("out/trace.jsonl")) {
        let steps = t["steps"].as_array().unwrap();
        assert_eq!(steps[0]["truncated"], true, "{t}");
        // Steps that finished carry no flag.
        assert!(steps[1].get("truncated").is_none(), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_is_the_default_for_endpoints_and_rejects_what_stays_cut() {
    let (code, manifest, dir, sent) = run(1000, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(
        sent, 6,
        "each initial request once more with twice the limit"
    );
    assert_eq!(manifest["counts"]["rejected"], 3);
    assert!(manifest["counts"].get("truncated_rows").is_none());
    for r in read_jsonl(&dir.path().join("out/rejects.jsonl")) {
        assert_eq!(
            r["reason"], "reply cut off by the token limit (max_tokens 100)",
            "{r}"
        );
    }
    // With room to finish at twice the limit, the retry succeeds.
    let (code, manifest, _dir, sent) = run(80, &["--on-length", "retry"]).await;
    assert_eq!((code, sent), (0, 12));
    assert_eq!(manifest["counts"]["sft_rows"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_sends_nothing_more_for_the_prompt() {
    let (code, manifest, dir, sent) = run(80, &["--on-length", "reject"]).await;
    assert_eq!(code, 1);
    assert_eq!(sent, 3);
    assert_eq!(manifest["counts"]["rejected"], 3);
    for r in read_jsonl(&dir.path().join("out/rejects.jsonl")) {
        assert_eq!(
            r["reason"],
            "reply cut off by the token limit (max_tokens 50; --on-length reject)"
        );
        assert_eq!(r["stage"], "initial");
    }
}
