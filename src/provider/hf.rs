//! Hugging Face Inference API and TGI `generate`.
//!
//! These endpoints complete raw text, so the conversation is rendered on the
//! client with a chat template ([`ChatTemplate`]). The body is
//! `{"inputs", "parameters": {max_new_tokens, temperature, top_p, seed,
//! return_full_text: false, stop, details: true}}`; the reply is
//! `{"generated_text"}` (TGI) or `[{"generated_text"}]` (Inference API).
//!
//! TGI rejects `temperature: 0` and `top_p: 1.0` ("must be strictly
//! positive", "must be < 1"), so greedy decoding is sent as
//! `do_sample: false` without a temperature, and `top_p` is left out when it
//! would not restrict anything. `details: true` asks for the finish reason
//! and the generated token count.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::chat_template::ChatTemplate;
use super::http::{check_reply, ReplyLimit};
use super::{post_json, ChatRequest, Completion, Provider, ProviderError, Reply, Usage};

/// Default endpoint when no `--base-url` is given.
pub const INFERENCE_API: &str = "https://router.huggingface.co/hf-inference/models";

/// A `generate` endpoint.
pub struct Hf {
    client: reqwest::Client,
    url: String,
    model: String,
    template: ChatTemplate,
    key: Option<SecretString>,
    key_var: Option<String>,
    limit: ReplyLimit,
}

impl Hf {
    /// `base_url`: a TGI server root (requests go to `{base}/generate`), or a
    /// full URL ending in `/generate` or naming `/models/NAME` (used as is).
    /// Without one, the Inference API URL of `model`.
    pub fn new(
        client: reqwest::Client,
        base_url: Option<&str>,
        model: impl Into<String>,
        template: ChatTemplate,
        key: Option<SecretString>,
        key_var: Option<String>,
    ) -> Self {
        let model = model.into();
        let url = match base_url.map(|b| b.trim_end_matches('/')) {
            Some(b) if b.ends_with("/generate") || b.contains("/models/") => b.to_string(),
            Some(b) => format!("{b}/generate"),
            None => format!("{INFERENCE_API}/{model}"),
        };
        Self {
            client,
            url,
            model,
            template,
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

    /// The prompt string sent for a conversation.
    pub fn render(&self, req: &ChatRequest) -> Result<String, ProviderError> {
        self.template
            .render(&req.messages, true)
            .map_err(|e| ProviderError::Fatal(format!("chat template failed: {e}")))
    }
}

fn body<'a>(inputs: &'a str, req: &'a ChatRequest) -> Body<'a> {
    let p = &req.params;
    let sample = p.temperature > 0.0;
    Body {
        inputs,
        parameters: Parameters {
            max_new_tokens: p.max_tokens,
            temperature: sample.then_some(p.temperature),
            top_p: (sample && p.top_p < 1.0).then_some(p.top_p),
            do_sample: sample,
            seed: p.seed,
            return_full_text: false,
            stop: &p.stop,
            details: true,
        },
    }
}

#[derive(Serialize)]
struct Body<'a> {
    inputs: &'a str,
    parameters: Parameters<'a>,
}

#[derive(Serialize)]
struct Parameters<'a> {
    max_new_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    do_sample: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    return_full_text: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    details: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Response {
    One(Generated),
    Many(Vec<Generated>),
}

#[derive(Deserialize)]
struct Generated {
    generated_text: String,
    details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    finish_reason: Option<String>,
    generated_tokens: Option<u64>,
}

#[async_trait]
impl Provider for Hf {
    fn name(&self) -> &str {
        "hf"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn endpoint(&self) -> String {
        self.url.clone()
    }

    fn key_var(&self) -> Option<&str> {
        self.key_var.as_deref()
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let inputs = self.render(req)?;
        Ok(serde_json::json!({ "method": "POST", "url": self.url, "body": body(&inputs, req) }))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let inputs = self.render(req)?;
        let body = body(&inputs, req);
        let mut http = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.key {
            http = http.bearer_auth(key.expose_secret());
        }
        let bound = self.limit.for_request(&req.params);
        let (resp, rate): (Response, _) =
            post_json(http, &self.url, self.key.as_ref(), &bound).await?;
        let generated = match resp {
            Response::One(g) => g,
            Response::Many(v) => v
                .into_iter()
                .next()
                .ok_or_else(|| ProviderError::Malformed {
                    url: self.url.clone(),
                    reason: "empty list in the reply".into(),
                })?,
        };
        let details = generated.details;
        let finish =
            super::openai::finish_reason(details.as_ref().and_then(|d| d.finish_reason.as_deref()));
        let usage = details
            .and_then(|d| d.generated_tokens)
            // TGI does not report the prompt length without
            // `decoder_input_details`, nor its prefix-cache hits; the
            // prompt is estimated the usual way.
            .map(|completion_tokens| {
                Usage::plain((inputs.len() as u64).div_ceil(4), completion_tokens)
            });
        let mut text = generated.generated_text;
        // A server that ignores return_full_text echoes the prompt first.
        if let Some(rest) = text.strip_prefix(&inputs) {
            text = rest.to_string();
        }
        check_reply(
            &self.url,
            req,
            [text.as_str()],
            usage.map(|u| u.completion_tokens),
        )?;
        Ok(Reply {
            completion: Completion {
                text,
                finish,
                usage,
                ..Completion::default()
            },
            rate,
        })
    }
}
