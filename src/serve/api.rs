//! The OpenAI wire shapes `cai serve` reads and writes: typed request and
//! response bodies, streamed chunks, and the error body.

use serde::{Deserialize, Serialize};

use crate::provider::{FinishReason, Message, Role, TokenLogprob};

use super::error::ApiError;

/// `POST /v1/chat/completions`. Fields the server does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub n: Option<u32>,
    /// With `top_logprobs` ≥ 1: return the first generated token's top
    /// candidates (only for the pass-through `none`, not streamed).
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u8>,
    /// The approach (or pipeline `a&b`), instead of a model-name prefix.
    pub approach: Option<String>,
    /// optillm's name for the same field.
    pub optillm_approach: Option<String>,
    /// Candidates for `bon`/`moa`, samples for `self_consistency`.
    pub best_of_n: Option<u32>,
    /// Critique→revision rounds of the `cai` approach.
    pub cai_rounds: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// A message as clients send it: content is a string or a list of parts.
#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl InMessage {
    /// The message as the providers take it; `messages[i]` names it in errors.
    pub fn into_message(self, i: usize) -> Result<Message, ApiError> {
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role: `{other}` is not supported (system, developer, user, assistant)"),
                    Some(format!("messages[{i}].role")),
                ))
            }
        };
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => out.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content[{j}]: only text parts are supported, not `{kind}`"),
                                Some(format!("messages[{i}].content[{j}]")),
                            ))
                        }
                    }
                }
                out
            }
        };
        Ok(Message { role, content })
    }
}

/// Token counts: the sum over every upstream call a request made.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ApiUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Prompt tokens the upstreams served from their prompt caches, in
    /// OpenAI's shape; left out when none were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

/// `cai`'s extension of a reply: what the answer cost.
#[derive(Clone, Debug, Serialize)]
pub struct CaiInfo {
    pub approach: String,
    pub upstream_calls: u64,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: ApiUsage,
    pub cai: CaiInfo,
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: OutMessage,
    pub finish_reason: &'static str,
    pub logprobs: Option<ChoiceLogprobs>,
}

/// `choices[i].logprobs`: OpenAI's shape, holding the first token only
/// (what the providers report).
#[derive(Debug, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<ContentLogprob>,
}

#[derive(Debug, Serialize)]
pub struct ContentLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

impl ChoiceLogprobs {
    /// The first token's candidates; the most likely stands for the token.
    pub fn first_token(tops: Vec<TokenLogprob>) -> Option<Self> {
        let head = tops.iter().max_by(|a, b| a.logprob.total_cmp(&b.logprob))?;
        let (token, logprob) = (head.token.clone(), head.logprob);
        Some(Self {
            content: vec![ContentLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob,
                top_logprobs: tops
                    .into_iter()
                    .map(|t| TopLogprob {
                        bytes: t.token.as_bytes().to_vec(),
                        token: t.token,
                        logprob: t.logprob,
                    })
                    .collect(),
            }],
        })
    }
}

#[derive(Debug, Serialize)]
pub struct OutMessage {
    pub role: &'static str,
    pub content: String,
}

/// One `data:` event of a streamed reply.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<ApiUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cai: Option<CaiInfo>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
    pub logprobs: Option<()>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Serialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

/// OpenAI's `finish_reason` for one of ours.
pub fn finish_str(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Other(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::Filtered(_) => "content_filter",
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
