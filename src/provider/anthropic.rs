//! Anthropic Messages API: `POST {base}/v1/messages`.
//!
//! The key goes in the `x-api-key` header with `anthropic-version:
//! 2023-06-01`. System messages are not turns here: they are joined into the
//! top-level `system` field. Consecutive turns of the same role are merged
//! (joined by a blank line) so the conversation alternates, which the API
//! has required of older models. `max_tokens` is always sent (the API
//! requires it); `top_p` only when it restricts anything (below 1), because
//! recent models refuse a request that sets both `temperature` and `top_p`.
//! The API has no seed, no `n` and no log-probabilities: those parameters
//! are not sent. The reply's text blocks are joined; `stop_reason` maps to
//! [`FinishReason`] (`end_turn`/`stop_sequence` → stop, `max_tokens` →
//! length, `refusal` → filtered) and `usage.input_tokens`/`output_tokens`
//! to [`Usage`].

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::http::{check_reply, ReplyLimit};
use super::{
    post_json, ChatRequest, Completion, FinishReason, Provider, ProviderError, Reply, Role, Usage,
};

/// Anthropic's API root.
pub const ANTHROPIC_BASE: &str = "https://api.anthropic.com";
/// The API version header value this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// Model used when none is named.
pub const ANTHROPIC_DEFAULT_MODEL: &str = "claude-haiku-4-5";

/// An Anthropic Messages endpoint.
#[derive(Clone)]
pub struct Anthropic {
    client: reqwest::Client,
    url: String,
    base_url: String,
    model: String,
    key: Option<SecretString>,
    key_var: Option<String>,
    limit: ReplyLimit,
}

impl Anthropic {
    /// `base_url` is the API root without `/v1` (default [`ANTHROPIC_BASE`]);
    /// a root that already ends in `/v1` is accepted too.
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        model: impl Into<String>,
        key: Option<SecretString>,
        key_var: Option<String>,
    ) -> Self {
        let base_url = api_root(base_url);
        Self {
            client,
            url: format!("{base_url}/v1/messages"),
            base_url,
            model: model.into(),
            key,
            key_var,
            limit: ReplyLimit::default(),
        }
    }

    /// Bounds reply bodies (`--max-reply-bytes`); default: from each request.
    pub fn with_reply_limit(mut self, limit: ReplyLimit) -> Self {
        self.limit = limit;
        self
    }

    fn body<'a>(&'a self, req: &'a ChatRequest) -> Body<'a> {
        let p = &req.params;
        let mut system: Vec<&str> = Vec::new();
        let mut messages: Vec<Turn> = Vec::new();
        for m in &req.messages {
            let role = match m.role {
                Role::System => {
                    system.push(&m.content);
                    continue;
                }
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            match messages.last_mut() {
                Some(last) if last.role == role => {
                    last.content.push_str("\n\n");
                    last.content.push_str(&m.content);
                }
                _ => messages.push(Turn {
                    role,
                    content: m.content.clone(),
                }),
            }
        }
        Body {
            model: &self.model,
            max_tokens: p.max_tokens,
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages,
            temperature: p.temperature,
            top_p: (p.top_p < 1.0).then_some(p.top_p),
            stop_sequences: &p.stop,
        }
    }
}

/// `https://host/` and `https://host/v1` both become `https://host`.
pub(crate) fn api_root(base: &str) -> String {
    let b = base.trim_end_matches('/');
    b.strip_suffix("/v1").unwrap_or(b).to_string()
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn>,
    temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

#[derive(Serialize)]
struct Turn {
    role: &'static str,
    content: String,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    content: Vec<Block>,
    stop_reason: Option<String>,
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct ApiUsage {
    input_tokens: u64,
    output_tokens: u64,
}

fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        None | Some("end_turn") | Some("stop_sequence") => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("refusal") => FinishReason::Filtered("refusal".into()),
        Some(other) => FinishReason::Other(other.to_string()),
    }
}

#[async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &str {
        "anthropic"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn endpoint(&self) -> String {
        self.base_url.clone()
    }

    fn key_var(&self) -> Option<&str> {
        self.key_var.as_deref()
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({ "method": "POST", "url": self.url, "body": self.body(req) }))
    }

    fn batch_api(&self) -> Option<std::sync::Arc<dyn super::batch::BatchApi>> {
        Some(std::sync::Arc::new(
            super::batch::anthropic::AnthropicBatch::new(self.clone()),
        ))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let body = self.body(req);
        let mut http = self
            .client
            .post(&self.url)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body);
        if let Some(key) = &self.key {
            http = http.header("x-api-key", key.expose_secret());
        }
        let bound = self.limit.for_request(&req.params);
        let (resp, rate): (Response, _) =
            post_json(http, &self.url, self.key.as_ref(), &bound).await?;
        let completion = completion(resp);
        check_reply(
            &self.url,
            req,
            [completion.text.as_str()],
            completion.usage.map(|u| u.completion_tokens),
        )?;
        Ok(Reply { completion, rate })
    }
}

fn completion(resp: Response) -> Completion {
    let text: String = resp
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .map(|b| b.text.as_str())
        .collect();
    Completion {
        text,
        finish: finish_reason(resp.stop_reason.as_deref()),
        usage: resp.usage.map(|u| Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
        }),
        ..Completion::default()
    }
}

impl Anthropic {
    /// The body `complete` would post for `req`: a batch request's `params`.
    pub(crate) fn batch_body(&self, req: &ChatRequest) -> serde_json::Value {
        serde_json::to_value(self.body(req)).unwrap_or_default()
    }

    /// Reads a Message from a batch result.
    pub(crate) fn batch_completion(
        &self,
        message: serde_json::Value,
    ) -> Result<Completion, String> {
        let resp: Response = serde_json::from_value(message).map_err(|e| e.to_string())?;
        Ok(completion(resp))
    }

    /// Client, API root (without `/v1`) and key, for the batch endpoints.
    pub(crate) fn http_parts(&self) -> (&reqwest::Client, &str, Option<&SecretString>) {
        (&self.client, &self.base_url, self.key.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{GenParams, Message};

    fn provider() -> Anthropic {
        Anthropic::new(
            reqwest::Client::new(),
            "http://127.0.0.1:9/v1/",
            "m",
            None,
            None,
        )
    }

    #[test]
    fn system_goes_top_level_and_same_role_turns_merge() {
        let p = provider();
        assert_eq!(p.url, "http://127.0.0.1:9/v1/messages");
        let req = ChatRequest {
            messages: vec![
                Message::system("S1"),
                Message::user("a"),
                Message::user("b"),
                Message::assistant("c"),
                Message::system("S2"),
                Message::user("d"),
            ],
            params: GenParams {
                stop: vec!["END".into()],
                ..GenParams::default()
            },
        };
        let v = serde_json::to_value(p.body(&req)).unwrap();
        assert_eq!(v["system"], "S1\n\nS2");
        assert_eq!(
            v["messages"],
            serde_json::json!([
                {"role": "user", "content": "a\n\nb"},
                {"role": "assistant", "content": "c"},
                {"role": "user", "content": "d"}
            ])
        );
        assert_eq!(v["max_tokens"], 512);
        assert_eq!(v["stop_sequences"], serde_json::json!(["END"]));
        assert!(v.get("top_p").is_none(), "top_p 1.0 restricts nothing");
    }

    #[test]
    fn stop_reasons_map() {
        assert_eq!(finish_reason(Some("end_turn")), FinishReason::Stop);
        assert_eq!(finish_reason(Some("stop_sequence")), FinishReason::Stop);
        assert_eq!(finish_reason(Some("max_tokens")), FinishReason::Length);
        assert_eq!(
            finish_reason(Some("refusal")),
            FinishReason::Filtered("refusal".into())
        );
    }
}
