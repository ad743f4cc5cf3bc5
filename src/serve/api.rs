//! The OpenAI wire shapes `cai serve` reads and writes: typed request and
//! response bodies, streamed chunks, and the error body.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::provider::{FinishReason, Message, Role, TokenLogprob};

use super::error::ApiError;

/// The fields of `POST /v1/chat/completions` the proxy reads. The body
/// itself stays JSON ([`serde_json::Map`]) and is forwarded; this is a
/// typed view of it, read with the fields nobody here knows ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ChatFields {
    pub model: Option<String>,
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
    /// With `top_logprobs` ≥ 1: the first generated token's top candidates.
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u8>,
}

/// The fields only the proxy reads: taken out of the body before it is
/// forwarded, since the upstream would not know them.
#[derive(Debug, Default, Deserialize)]
pub struct ProxyFields {
    /// The approach (or pipeline `a&b`), instead of a model-name prefix.
    pub approach: Option<String>,
    /// optillm's name for the same field.
    pub optillm_approach: Option<String>,
    /// Candidates for `bon`/`moa`, samples for `self_consistency`.
    pub best_of_n: Option<u32>,
    /// Critique→revision rounds of the `cai` approach.
    pub cai_rounds: Option<u32>,
    /// The reasoning in the content instead of the answer alone.
    pub return_full_response: Option<bool>,
    /// Overrides of the search approaches' settings (`--mcts-depth`, …).
    pub mcts_simulations: Option<u32>,
    pub mcts_exploration: Option<f64>,
    pub mcts_depth: Option<u32>,
    pub pvg_rounds: Option<u32>,
    pub pvg_solutions: Option<u32>,
    pub rstar_max_depth: Option<u32>,
    pub rstar_num_rollouts: Option<u32>,
    pub rstar_c: Option<f64>,
}

impl ProxyFields {
    /// Names of the fields [`ProxyFields`] reads.
    pub const NAMES: [&'static str; 13] = [
        "approach",
        "optillm_approach",
        "best_of_n",
        "cai_rounds",
        "return_full_response",
        "mcts_simulations",
        "mcts_exploration",
        "mcts_depth",
        "pvg_rounds",
        "pvg_solutions",
        "rstar_max_depth",
        "rstar_num_rollouts",
        "rstar_c",
    ];

    /// The server's settings with this request's overrides.
    pub fn knobs(&self, server: crate::serve::approach::Knobs) -> crate::serve::approach::Knobs {
        let mut k = server;
        k.mcts_simulations = self.mcts_simulations.unwrap_or(k.mcts_simulations);
        k.mcts_exploration = self.mcts_exploration.unwrap_or(k.mcts_exploration);
        k.mcts_depth = self.mcts_depth.unwrap_or(k.mcts_depth);
        k.pvg_rounds = self.pvg_rounds.unwrap_or(k.pvg_rounds);
        k.pvg_solutions = self.pvg_solutions.unwrap_or(k.pvg_solutions);
        k.rstar_max_depth = self.rstar_max_depth.unwrap_or(k.rstar_max_depth);
        k.rstar_num_rollouts = self.rstar_num_rollouts.unwrap_or(k.rstar_num_rollouts);
        k.rstar_c = self.rstar_c.unwrap_or(k.rstar_c);
        k
    }
}

/// The fields a typed call of an approach sets itself from
/// [`ChatFields`]; every other field of the body goes with each call as
/// it came.
pub const TYPED_FIELDS: [&str; 13] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "n",
    "logprobs",
    "top_logprobs",
];

/// Why a request can only be passed through (`none`): it asks for tool
/// calls or a structured output, or its conversation holds what an
/// approach's rewritten prompts cannot carry (tool results, tool calls,
/// images, audio). `None` when every approach can take it.
pub fn pass_through_only(body: &serde_json::Map<String, Value>) -> Option<String> {
    let present = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    for field in ["tools", "tool_choice", "functions", "function_call"] {
        if present(field) {
            return Some(format!("the request carries `{field}`"));
        }
    }
    if let Some(rf) = body.get("response_format").filter(|v| !v.is_null()) {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Some("the request carries a structured `response_format`".into());
        }
    }
    let messages = body.get("messages").and_then(Value::as_array)?;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if matches!(role, "tool" | "function") {
            return Some(format!("messages[{i}] is a `{role}` message"));
        }
        if m.get("tool_calls").is_some_and(|v| !v.is_null())
            || m.get("function_call").is_some_and(|v| !v.is_null())
        {
            return Some(format!("messages[{i}] holds tool calls"));
        }
        if let Some(parts) = m.get("content").and_then(Value::as_array) {
            if let Some(j) = parts
                .iter()
                .position(|p| p.get("type").and_then(Value::as_str) != Some("text"))
            {
                return Some(format!("messages[{i}].content[{j}] is not text"));
            }
        }
    }
    None
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
                    format!("messages[{i}].role: `{other}` needs an OpenAI-compatible upstream (this one takes system, developer, user, assistant)"),
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
                                format!("messages[{i}].content[{j}]: `{kind}` parts need an OpenAI-compatible upstream (this one takes text)"),
                                Some(format!("messages[{i}].content[{j}]")),
                            ))
                        }
                    }
                }
                out
            }
        };
        Ok(Message {
            role,
            content: content.into(),
        })
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
    /// Why the request was not handled as asked (an approach that fell
    /// back to `none`, fields this upstream cannot take).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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
