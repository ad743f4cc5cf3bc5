//! Anthropic Messages API: exact request shape, reply and error mapping.

use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::support::*;

/// Deterministic Messages API replies with fixed usage (7 in, 3 out).
pub struct MessagesReply;

impl Respond for MessagesReply {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).expect("JSON body");
        let last = crate::common::last_message(&body);
        let text = fake_reply(last, &body["messages"].to_string());
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 7, "output_tokens": 3}
        }))
    }
}

const KEY: &str = "sk-ant-test-MARKER-0a1b2c";

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_request_shape_and_usage_mapping() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .and(header("content-type", "application/json"))
        .respond_with(MessagesReply)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 2);
    let out = dir.path().join("out");
    cai_in(dir.path())
        .args(generate_args(&prompts, &out))
        .args(["--provider", "anthropic", "--model", "claude-test"])
        .args(["--base-url", &server.uri(), "--rounds", "1"])
        .args(["--max-tokens", "300", "--temperature", "0.5"])
        .env("ANTHROPIC_API_KEY", KEY)
        .assert()
        .code(0);
    let reqs = server.received_requests().await.unwrap();
    assert_eq!(
        reqs.len(),
        2 * 3,
        "every request matched the header matchers"
    );
    for r in &reqs {
        assert!(r.headers.get("authorization").is_none());
        let b: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(b["model"], "claude-test");
        assert_eq!(b["max_tokens"], 300);
        assert_eq!(b["temperature"], 0.5);
        assert!(b.get("top_p").is_none(), "top_p 1.0 is not sent: {b}");
        assert!(b.get("seed").is_none());
        let msgs = b["messages"].as_array().unwrap();
        // The system message is top-level, never a turn; turns alternate.
        assert!(b["system"].as_str().unwrap().starts_with("SYS-"), "{b}");
        assert!(msgs.iter().all(|m| m["role"] != "system"));
        assert_eq!(msgs[0]["role"], "user");
        for pair in msgs.windows(2) {
            assert_ne!(pair[0]["role"], pair[1]["role"], "roles alternate: {b}");
        }
        assert_eq!(msgs.last().unwrap()["role"], "user");
    }
    // The critique request carries the critique system message.
    let critique = reqs
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .find(|b| b["system"] == "SYS-CRITIQUE")
        .expect("a critique request");
    assert!(critique["messages"].as_array().unwrap().len() >= 3);
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 2);
    let m = manifest(&out);
    assert_eq!(m["provider"], "anthropic");
    assert_eq!(m["requests"]["tokens_in"], 7 * 6);
    assert_eq!(m["requests"]["tokens_out"], 3 * 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_refusal_and_max_tokens_become_rejects() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_string_contains("refuse-me"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "content": [], "stop_reason": "refusal",
            "usage": {"input_tokens": 5, "output_tokens": 0}
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::body_string_contains("cut-me"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "content": [{"type": "text", "text": "partial"}], "stop_reason": "max_tokens",
            "usage": {"input_tokens": 5, "output_tokens": 9}
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(MessagesReply)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.csv");
    std::fs::write(&prompts, "id,prompt\na,fine\nb,refuse-me\nc,cut-me\n").unwrap();
    let out = dir.path().join("out");
    cai_in(dir.path())
        .args(generate_args(&prompts, &out))
        .args(["--provider", "anthropic", "--base-url", &server.uri()])
        .assert()
        .code(1);
    let rejects = read_jsonl(&out.join("rejects.jsonl"));
    let reason = |id: &str| {
        rejects
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["reason"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(reason("b").contains("refusal"), "{rejects:?}");
    assert!(reason("c").contains("token limit"), "{rejects:?}");
    assert_eq!(read_csv(&out.join("sft.csv")).len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_unauthorized_names_the_variable_not_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "type": "error",
            "error": {"type": "authentication_error", "message": format!("invalid x-api-key {KEY}")}
        })))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 5);
    let out = dir.path().join("out");
    let a = cai_in(dir.path())
        .args(generate_args(&prompts, &out))
        .args(["--provider", "anthropic", "--base-url", &server.uri()])
        .env("ANTHROPIC_API_KEY", KEY)
        .assert()
        .code(2);
    let err = stderr_of(&a);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(err.contains("$ANTHROPIC_API_KEY was rejected"), "{err}");
    assert!(!err.contains(KEY), "key leaked: {err}");
    assert_not_in_files(&out, KEY);
}

#[test]
fn anthropic_without_key_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = prompts_csv(dir.path(), 1);
    cai_in(dir.path())
        .args(generate_args(&prompts, &dir.path().join("o")))
        .args(["--provider", "anthropic"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "set the environment variable ANTHROPIC_API_KEY",
        ));
}
