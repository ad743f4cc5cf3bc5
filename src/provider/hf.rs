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
use serde::{Deserialize, Serialize};

use super::chat_template::ChatTemplate;
use super::endpoint::{endpoint_accessors, Endpoint, Target};
use super::http::check_reply;
use super::{ChatRequest, Completion, Provider, ProviderError, Reply, Usage};

/// A `generate` endpoint.
pub struct Hf {
    /// The full `generate` URL (as `base_url`), model, key.
    ep: Endpoint,
    /// `ep.base_url`, parsed once.
    url: Target,
    template: ChatTemplate,
}

impl Hf {
    /// The endpoint's URL: a TGI server root (requests go to
    /// `{base}/generate`), a full URL ending in `/generate` or naming
    /// `/models/NAME` (used as is), or the Inference API's `.../models`, to
    /// which the model is appended.
    pub fn new(mut ep: Endpoint, template: ChatTemplate) -> Self {
        let b = ep.base_url.trim_end_matches('/');
        ep.base_url = if b.ends_with("/generate") || b.contains("/models/") {
            b.to_string()
        } else if b.ends_with("/models") {
            format!("{b}/{}", ep.model)
        } else {
            format!("{b}/generate")
        };
        let url = Target::new(ep.base_url.clone());
        Self { ep, url, template }
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
    endpoint_accessors!(ep);

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        let inputs = self.render(req)?;
        Ok(
            serde_json::json!({ "method": "POST", "url": self.ep.base_url, "body": body(&inputs, req) }),
        )
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let inputs = self.render(req)?;
        self.complete_text(&inputs, req).await
    }

    async fn complete_text(&self, inputs: &str, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let body = body(inputs, req);
        let url = &self.url;
        let http = self.ep.post(url, &body);
        let (resp, rate): (Response, _) = self.ep.send_json(http, url, req).await?;
        let generated = match resp {
            Response::One(g) => g,
            Response::Many(v) => v
                .into_iter()
                .next()
                .ok_or_else(|| ProviderError::Malformed {
                    url: self.ep.base_url.clone(),
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
                Usage::plain(super::estimated_text_tokens(inputs), completion_tokens)
            });
        let mut text = generated.generated_text;
        // A server that ignores return_full_text echoes the prompt first.
        if let Some(rest) = text.strip_prefix(inputs) {
            text = rest.to_string();
        }
        check_reply(
            &self.ep.base_url,
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
