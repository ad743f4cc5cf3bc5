//! OpenAI-compatible `POST {base}/completions` (`--api completions`).
//!
//! The text-completion API of OpenAI's protocol, which vLLM, TGI,
//! llama.cpp's server, Ollama, Together and OpenRouter also serve: the body
//! carries one `prompt` string instead of chat turns, so a base model (one
//! never tuned on a chat template) can be prompted with plain text. A
//! conversation is rendered on the client: with `--chat-template` by
//! [`Provider::complete`], or in the plain format of
//! [`super::plain`] through [`Provider::complete_text`].
//!
//! Sent: `model`, `prompt`, `max_tokens`, `temperature`, `top_p`, and only
//! when set `seed`, `stop`, `n` and `logprobs` (the number of alternatives
//! per token, as this API counts them). Read: `choices[0].text`, its
//! `finish_reason`, `logprobs.top_logprobs[0]` (a map from token to
//! log-probability) and `usage`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::chat_template::ChatTemplate;
use super::endpoint::{endpoint_accessors, Endpoint, Target};
use super::http::check_completion;
use super::openai::{finish_reason, Sampling};
use super::{ChatRequest, Completion, Provider, ProviderError, Reply, TokenLogprob, Usage};

/// A text-completion endpoint and the chat template conversations are
/// rendered with.
pub struct Completions {
    ep: Endpoint,
    /// `{base}/completions`.
    url: Target,
    template: ChatTemplate,
}

impl Completions {
    pub fn new(ep: Endpoint, template: ChatTemplate) -> Self {
        Self {
            url: Target::new(format!("{}/completions", ep.base_url)),
            ep,
            template,
        }
    }

    /// The prompt sent for a conversation under the chat template.
    pub fn render(&self, req: &ChatRequest) -> Result<String, ProviderError> {
        self.template
            .render(&req.messages, true)
            .map_err(|e| ProviderError::Fatal(format!("chat template failed: {e}")))
    }

    fn body<'a>(&'a self, prompt: &'a str, req: &'a ChatRequest) -> Body<'a> {
        let p = &req.params;
        Body {
            model: &self.ep.model,
            prompt,
            sampling: Sampling::of(p),
            logprobs: p.top_logprobs,
        }
    }

    fn completion(&self, resp: Response) -> Result<Completion, ProviderError> {
        let (choice, choices) = super::first_choice(&self.url, resp.choices)?;
        let first_token_logprobs = choice
            .logprobs
            .and_then(|l| l.top_logprobs)
            .and_then(|tops| tops.into_iter().next())
            .map(|top| {
                let mut v: Vec<TokenLogprob> = top
                    .into_iter()
                    .map(|(token, logprob)| TokenLogprob { token, logprob })
                    .collect();
                // A JSON object has no order: most likely first, as the
                // chat API lists them.
                v.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                v
            });
        Ok(Completion {
            text: choice.text,
            finish: finish_reason(choice.finish_reason.as_deref()),
            usage: resp
                .usage
                .map(|u| Usage::plain(u.prompt_tokens, u.completion_tokens)),
            first_token_logprobs,
            more: choices.map(|c| c.text).collect(),
        })
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    prompt: &'a str,
    #[serde(flatten)]
    sampling: Sampling<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<u8>,
}

#[derive(Deserialize)]
struct Response {
    choices: Vec<Choice>,
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    text: String,
    finish_reason: Option<String>,
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Deserialize)]
struct ChoiceLogprobs {
    /// Per generated token, its alternatives and their log-probabilities.
    top_logprobs: Option<Vec<std::collections::HashMap<String, f64>>>,
}

#[derive(Deserialize)]
struct ApiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[async_trait]
impl Provider for Completions {
    endpoint_accessors!(ep);

    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        self.ep.openai_models().await
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let prompt = self.render(req)?;
        Ok(
            serde_json::json!({ "method": "POST", "url": self.url, "body": self.body(&prompt, req) }),
        )
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let prompt = self.render(req)?;
        self.complete_text(&prompt, req).await
    }

    async fn complete_text(&self, prompt: &str, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let body = self.body(prompt, req);
        let http = self.ep.post(&self.url, &body);
        let (resp, rate): (Response, _) = self.ep.send_json(http, &self.url, req).await?;
        let completion = self.completion(resp)?;
        check_completion(&self.url, req, &completion)?;
        Ok(Reply { completion, rate })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::registry::ProviderKind;
    use crate::provider::{FinishReason, GenParams, Message};

    fn backend() -> Completions {
        let entry = ProviderKind::named("vllm").map(|k| k.entry());
        let ep = Endpoint::new(
            entry.expect("vllm row"),
            reqwest::Client::new(),
            "http://127.0.0.1:9/v1",
            "base",
            None,
            None,
        );
        let template = ChatTemplate::builtin("chatml").expect("chatml");
        Completions::new(ep, template)
    }

    #[test]
    fn the_body_carries_prompt_stop_and_the_alternatives_count() {
        let c = backend();
        let req = ChatRequest {
            messages: vec![Message::user("Hi")],
            params: GenParams {
                stop: vec!["\n# Query:".into()],
                top_logprobs: Some(5),
                ..GenParams::default()
            },
            ..ChatRequest::default()
        };
        let body = serde_json::to_value(c.body("PROMPT", &req)).unwrap();
        assert_eq!(body["prompt"], "PROMPT");
        assert_eq!(body["stop"], serde_json::json!(["\n# Query:"]));
        assert_eq!(body["logprobs"], 5);
        assert!(body.get("messages").is_none() && body.get("seed").is_none());
        assert_eq!(c.url.as_str(), "http://127.0.0.1:9/v1/completions");
    }

    #[test]
    fn a_reply_gives_its_text_finish_usage_and_first_token_alternatives_best_first() {
        let resp: Response = serde_json::from_value(serde_json::json!({
            "choices": [{"text": " (A)", "finish_reason": "length",
                         "logprobs": {"tokens": [" (A"], "token_logprobs": [-0.1],
                                      "top_logprobs": [{" (B": -2.5, " (A": -0.1}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
        }))
        .unwrap();
        let got = backend().completion(resp).unwrap();
        assert_eq!(got.text, " (A)");
        assert_eq!(got.finish, FinishReason::Length);
        assert_eq!(got.usage.map(|u| u.prompt_tokens), Some(12));
        let tops = got.first_token_logprobs.unwrap();
        assert_eq!(tops[0].token, " (A");
        assert_eq!(tops[1].token, " (B");
    }
}
