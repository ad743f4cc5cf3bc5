//! Google Gemini API: `POST {base}/v1beta/models/{model}:generateContent`.
//!
//! The key goes in the `x-goog-api-key` header, never in the URL (a URL
//! ends up in error messages and logs). Turns become `contents` with roles
//! `user` and `model`; system messages are joined into `systemInstruction`.
//! Sampling goes in `generationConfig` (`maxOutputTokens`, `temperature`,
//! `topP`, `stopSequences`, `seed`, `candidateCount`). The reply's first
//! candidate's text parts are joined (parts marked `thought` are skipped);
//! further candidates (`candidateCount` > 1) go to [`Completion::more`].
//!
//! `finishReason` maps to [`FinishReason`]: `STOP` → stop, `MAX_TOKENS` →
//! length, `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`
//! (and `IMAGE_SAFETY`) → filtered with that reason. A prompt blocked before
//! any candidate (`promptFeedback.blockReason`) is filtered too; the engine
//! turns either into a reject carrying the reason. Usage comes from
//! `usageMetadata`: `promptTokenCount` in, `candidatesTokenCount` plus
//! `thoughtsTokenCount` (billed as output) out, and `cachedContentTokenCount`
//! (the part of the prompt Gemini's implicit cache served) as cached.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::endpoint::{endpoint_accessors, Endpoint, Target, MAX_MODEL_PAGES};
use super::http::check_reply;
use super::{ChatRequest, Completion, FinishReason, Provider, ProviderError, Reply, Role, Usage};

/// A Gemini `generateContent` endpoint.
pub struct Gemini {
    /// API root without `/v1beta`, model (without `models/`), key.
    ep: Endpoint,
    /// `{root}/v1beta/models/{model}:generateContent`.
    url: Target,
}

impl Gemini {
    /// The endpoint's root may end in `/v1beta` or not; a model named
    /// `models/NAME` is used as `NAME`.
    pub fn new(mut ep: Endpoint) -> Self {
        ep.base_url = api_root(&ep.base_url);
        if let Some(m) = ep.model.strip_prefix("models/") {
            ep.model = m.to_string();
        }
        Self {
            url: Target::new(format!(
                "{}/v1beta/models/{}:generateContent",
                ep.base_url, ep.model
            )),
            ep,
        }
    }

    fn body<'a>(&self, req: &'a ChatRequest) -> Body<'a> {
        let p = &req.params;
        let mut system: Vec<Part<'a>> = Vec::new();
        let mut contents: Vec<Content<'a>> = Vec::new();
        for m in &req.messages {
            let role = match m.role {
                Role::System => {
                    system.push(Part { text: &m.content });
                    continue;
                }
                Role::User => "user",
                Role::Assistant => "model",
            };
            match contents.last_mut() {
                // Several parts in one turn rather than two turns in a row.
                Some(last) if last.role == role => last.parts.push(Part { text: &m.content }),
                _ => contents.push(Content {
                    role,
                    parts: vec![Part { text: &m.content }],
                }),
            }
        }
        Body {
            contents,
            system_instruction: (!system.is_empty()).then_some(System { parts: system }),
            generation_config: GenerationConfig {
                max_output_tokens: p.max_tokens,
                temperature: p.temperature,
                top_p: p.top_p,
                stop_sequences: &p.stop,
                seed: p.seed,
                candidate_count: p.n.filter(|&n| n > 1),
            },
        }
    }
}

/// `https://host/` and `https://host/v1beta` both become `https://host`.
pub(crate) fn api_root(base: &str) -> String {
    let b = base.trim_end_matches('/');
    b.strip_suffix("/v1beta").unwrap_or(b).to_string()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<System<'a>>,
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct System<'a> {
    parts: Vec<Part<'a>>,
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    max_output_tokens: u32,
    temperature: f32,
    top_p: f32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<CandidateContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct CandidateContent {
    #[serde(default)]
    parts: Vec<ReplyPart>,
}

#[derive(Deserialize)]
struct ReplyPart {
    #[serde(default)]
    text: String,
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    /// Part of `promptTokenCount` served by implicit or explicit context
    /// caching.
    #[serde(default)]
    cached_content_token_count: u64,
}

fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        None | Some("STOP") | Some("FINISH_REASON_UNSPECIFIED") => FinishReason::Stop,
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(
            r @ ("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII"
            | "IMAGE_SAFETY"),
        ) => FinishReason::Filtered(r.to_string()),
        Some(other) => FinishReason::Other(other.to_string()),
    }
}

fn candidate_text(c: &Candidate) -> String {
    c.content
        .as_ref()
        .map(|c| {
            c.parts
                .iter()
                .filter(|p| !p.thought)
                .map(|p| p.text.as_str())
                .collect()
        })
        .unwrap_or_default()
}

#[async_trait]
impl Provider for Gemini {
    endpoint_accessors!(ep);

    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        let url = format!("{}/v1beta/models", self.ep.base_url);
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_MODEL_PAGES {
            let mut req = self
                .ep
                .request(reqwest::Method::GET, &url)
                .query(&[("pageSize", "1000")]);
            if let Some(t) = &token {
                req = req.query(&[("pageToken", t.as_str())]);
            }
            let page: ModelPage = self.ep.get_list(req, &url).await?;
            ids.extend(page.models.into_iter().map(|m| {
                m.name
                    .strip_prefix("models/")
                    .map(str::to_string)
                    .unwrap_or(m.name)
            }));
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(ids)
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({ "method": "POST", "url": self.url, "body": self.body(req) }))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let body = self.body(req);
        let http = self.ep.post(&self.url, &body);
        let (resp, rate): (Response, _) = self.ep.send_json(http, &self.url, req).await?;
        // Only the visible candidates are held against maxOutputTokens:
        // whether thinking counts toward it has varied between models.
        let visible = resp
            .usage_metadata
            .as_ref()
            .map(|u| u.candidates_token_count);
        let usage = resp.usage_metadata.map(|u| Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_tokens: u.cached_content_token_count.min(u.prompt_token_count),
            cache_write_tokens: 0,
        });
        let mut candidates = resp.candidates.into_iter();
        let Some(first) = candidates.next() else {
            let reason = resp
                .prompt_feedback
                .and_then(|f| f.block_reason)
                .ok_or_else(|| ProviderError::Malformed {
                    url: self.url.to_string(),
                    reason: "no candidates and no promptFeedback.blockReason in the reply".into(),
                })?;
            return Ok(Reply {
                completion: Completion {
                    finish: FinishReason::Filtered(format!("prompt blocked: {reason}")),
                    usage,
                    ..Completion::default()
                },
                rate,
            });
        };
        let completion = Completion {
            text: candidate_text(&first),
            finish: finish_reason(first.finish_reason.as_deref()),
            usage,
            first_token_logprobs: None,
            more: candidates.map(|c| candidate_text(&c)).collect(),
        };
        check_reply(
            &self.url,
            req,
            std::iter::once(completion.text.as_str())
                .chain(completion.more.iter().map(String::as_str)),
            visible,
        )?;
        Ok(Reply { completion, rate })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelPage {
    #[serde(default)]
    models: Vec<ModelName>,
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct ModelName {
    name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{GenParams, Message};

    #[test]
    fn body_uses_model_role_and_system_instruction() {
        let entry = crate::provider::registry::get("gemini").unwrap();
        let p = Gemini::new(Endpoint::new(
            entry,
            reqwest::Client::new(),
            "http://127.0.0.1:9/v1beta/",
            "models/gemini-x",
            None,
            None,
        ));
        assert_eq!(
            p.url.as_str(),
            "http://127.0.0.1:9/v1beta/models/gemini-x:generateContent"
        );
        let req = ChatRequest {
            cache: Default::default(),
            messages: vec![
                Message::system("S"),
                Message::user("a"),
                Message::assistant("b"),
                Message::user("c"),
            ],
            params: GenParams {
                seed: Some(3),
                ..GenParams::default()
            },
        };
        let v = serde_json::to_value(p.body(&req)).unwrap();
        assert_eq!(v["systemInstruction"]["parts"][0]["text"], "S");
        assert_eq!(v["contents"][1]["role"], "model");
        assert_eq!(v["contents"].as_array().unwrap().len(), 3);
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 512);
        assert_eq!(v["generationConfig"]["seed"], 3);
        assert!(v["generationConfig"].get("candidateCount").is_none());
    }

    #[test]
    fn finish_reasons_map() {
        assert_eq!(finish_reason(Some("STOP")), FinishReason::Stop);
        assert_eq!(finish_reason(Some("MAX_TOKENS")), FinishReason::Length);
        for r in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish_reason(Some(r)), FinishReason::Filtered(r.into()));
        }
    }
}
