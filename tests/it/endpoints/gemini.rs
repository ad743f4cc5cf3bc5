//! Gemini generateContent: exact request shape, usage, safety blocks.

use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::support::*;

/// Deterministic generateContent replies (usage 11 in, 4 + 2 thinking out).
pub struct GenerateReply;

impl Respond for GenerateReply {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = body["contents"]
            .as_array()
            .and_then(|c| c.last())
            .and_then(|c| c["parts"].as_array())
            .and_then(|p| p.last())
            .and_then(|p| p["text"].as_str())
            .unwrap_or("");
        let text = fake_reply(last, &body["contents"].to_string());
        ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "thinking...", "thought": true},
                    {"text": text}
                ]},
                "finishReason": "STOP", "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 4,
                              "thoughtsTokenCount": 2, "totalTokenCount": 17}
        }))
    }
}

const KEY: &str = "AIza-test-MARKER-9z8y7x";

#[tokio::test(flavor = "multi_thread")]
async fn gemini_request_shape_and_usage_mapping() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1beta/models/gemini-test:generateContent"))
        .and(header("x-goog-api-key", KEY))
        .respond_with(GenerateReply)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let out = dir.path().join("out");
    cai_in(dir.path())
        .args(generate_args(&prompts, &out))
        .args(["--provider", "gemini", "--model", "gemini-test"])
        .args(["--base-url", &server.uri(), "--seed", "5", "--top-p", "0.9"])
        .env("GEMINI_API_KEY", KEY)
        .assert()
        .code(0);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(reqs.len(), 6);
    for r in &reqs {
        assert!(
            r.url.query().is_none(),
            "the key never goes in the URL: {}",
            r.url
        );
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        let sys = b["systemInstruction"]["parts"][0]["text"].as_str().unwrap();
        assert!(sys.starts_with("SYS-"), "{b}");
        let contents = b["contents"].as_array().unwrap();
        assert!(contents
            .iter()
            .all(|c| c["role"] == "user" || c["role"] == "model"));
        assert_eq!(contents[0]["role"], "user");
        assert_eq!(contents.last().unwrap()["role"], "user");
        let g = &b["generationConfig"];
        assert_eq!(g["maxOutputTokens"], 512);
        assert_eq!(g["temperature"], 0.7);
        assert_eq!(g["topP"], 0.9);
        assert_eq!(g["seed"], 5);
        assert!(g.get("candidateCount").is_none());
    }
    // Thought parts are not part of the answer.
    let sft = read_csv(&out.join("sft.csv"));
    assert_eq!(sft.len(), 2);
    assert!(sft.iter().all(|r| !r[2].contains("thinking...")));
    let m = manifest(&out);
    assert_eq!(m["provider"], "gemini");
    assert_eq!(m["requests"]["tokens_in"], 11 * 6);
    assert_eq!(m["requests"]["tokens_out"], (4 + 2) * 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn safety_blocked_gemini_replies_become_rejects_with_the_reason() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_string_contains("unsafe-answer"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "candidates": [{"finishReason": "SAFETY", "index": 0,
                            "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]}],
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_string_contains("unsafe-prompt"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(GenerateReply)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(
        &prompts,
        "id,prompt\nok,fine\ns1,unsafe-answer\ns2,unsafe-prompt\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    cai_in(dir.path())
        .args(generate_args(&prompts, &out))
        .args(["--provider", "gemini", "--base-url", &server.uri()])
        // The fallback variable works too.
        .env("GOOGLE_API_KEY", KEY)
        .assert()
        .code(1);
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    let reason = |id: &str| {
        rejects
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(reason("s1").contains("content filter"), "{rejects:?}");
    assert!(reason("s1").contains("SAFETY"), "{rejects:?}");
    assert!(reason("s2").contains("PROHIBITED_CONTENT"), "{rejects:?}");
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 1);
    // Blocked replies are not retried: one request each.
    let sent = server.received_requests().await.unwrap();
    let blocked = sent
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("unsafe-"))
        .count();
    assert_eq!(blocked, 2);
}

#[test]
fn gemini_without_key_names_both_variables() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    cai_in(dir.path())
        .args(generate_args(&prompts, &dir.path().join("o")))
        .args(["--provider", "gemini"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "set the environment variable GEMINI_API_KEY (or GOOGLE_API_KEY)",
        ));
}
