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

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::batch::{BatchApi, BatchCodec};
use super::endpoint::{endpoint_accessors, Endpoint, MAX_MODEL_PAGES};
use super::http::check_reply;
use super::{
    post_json, ChatRequest, Completion, FinishReason, Provider, ProviderError, Reply, Role, Usage,
};

/// The API version header value this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An Anthropic Messages endpoint.
#[derive(Clone)]
pub struct Anthropic {
    /// API root without `/v1`, model, key.
    ep: Endpoint,
    /// `{root}/v1/messages`.
    url: String,
}

impl Anthropic {
    /// The endpoint's root may end in `/v1` or not.
    pub fn new(mut ep: Endpoint) -> Self {
        ep.base_url = api_root(&ep.base_url);
        Self {
            url: format!("{}/v1/messages", ep.base_url),
            ep,
        }
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.ep
            .request(reqwest::Method::GET, url)
            .header("anthropic-version", ANTHROPIC_VERSION)
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
            model: &self.ep.model,
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
    endpoint_accessors!(ep);

    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        let url = format!("{}/v1/models", self.ep.base_url);
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_MODEL_PAGES {
            let mut req = self.get(&url).query(&[("limit", "1000")]);
            if let Some(a) = &after {
                req = req.query(&[("after_id", a.as_str())]);
            }
            let page: ModelPage = self.ep.get_list(req, &url).await?;
            ids.extend(page.data.into_iter().map(|m| m.id));
            match (page.has_more, page.last_id) {
                (true, Some(last)) => after = Some(last),
                _ => break,
            }
        }
        Ok(ids)
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({ "method": "POST", "url": self.url, "body": self.body(req) }))
    }

    fn batch_api(&self) -> Option<Arc<dyn BatchApi>> {
        Some(Arc::new(super::batch::anthropic::AnthropicBatch::new(
            self.ep.clone(),
            ANTHROPIC_VERSION,
            Arc::new(self.clone()),
        )))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let body = self.body(req);
        let http = self
            .ep
            .post(&self.url, &body)
            .header("anthropic-version", ANTHROPIC_VERSION);
        let bound = self.ep.limit.for_request(&req.params);
        let (resp, rate): (Response, _) =
            post_json(http, &self.url, self.ep.key.as_ref(), &bound).await?;
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

impl BatchCodec for Anthropic {
    fn batch_body(&self, req: &ChatRequest) -> serde_json::Value {
        serde_json::to_value(self.body(req)).unwrap_or_default()
    }

    fn batch_completion(&self, message: serde_json::Value) -> Result<Completion, ProviderError> {
        let resp: Response =
            serde_json::from_value(message).map_err(|e| ProviderError::Malformed {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(completion(resp))
    }
}

#[derive(Deserialize)]
struct ModelPage {
    #[serde(default)]
    data: Vec<ModelId>,
    #[serde(default)]
    has_more: bool,
    last_id: Option<String>,
}

#[derive(Deserialize)]
struct ModelId {
    id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{GenParams, Message};

    fn provider() -> Anthropic {
        let entry = crate::provider::registry::get("anthropic").unwrap();
        Anthropic::new(Endpoint::new(
            entry,
            reqwest::Client::new(),
            "http://127.0.0.1:9/v1/",
            "m",
            None,
            None,
        ))
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
