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
//! to [`Usage`], with `cache_read_input_tokens` and
//! `cache_creation_input_tokens` added to the input as its cached and
//! cache-write parts.
//!
//! **Prompt caching**: when the request carries a [`CacheHint`] (a run's
//! stages under `--prompt-cache auto`), the system prompt and every turn
//! are sent as arrays of text blocks, one per message, and
//! `cache_control: {"type": "ephemeral"}` marks the last block of the
//! stage's shared prefix (system message and few-shots), the last block
//! this request shares with the previous request of the same prompt (the
//! conversation it extends), and its own last block when the next request
//! will extend it: at most [`MAX_BREAKPOINTS`], each only where the prefix
//! reaches the model's minimum cacheable length. Without a hint the body is
//! the plain-string form, byte for byte what it was before caching.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::batch::{BatchApi, BatchCodec};
use super::endpoint::{endpoint_accessors, Endpoint, Target, MAX_MODEL_PAGES};
use super::http::check_completion;
#[cfg(doc)]
use super::CacheHint;
use super::{ChatRequest, Completion, FinishReason, Provider, ProviderError, Reply, Role, Usage};

/// The API version header value this client speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An Anthropic Messages endpoint.
#[derive(Clone)]
pub struct Anthropic {
    /// API root without `/v1`, model, key.
    ep: Endpoint,
    /// `{root}/v1/messages`.
    url: Target,
    /// `--prompt-cache auto`: mark breakpoints where a request's hint asks.
    prompt_cache: bool,
}

impl Anthropic {
    /// The endpoint's root may end in `/v1` or not.
    pub fn new(mut ep: Endpoint) -> Self {
        ep.base_url = api_root(&ep.base_url);
        Self {
            url: Target::new(format!("{}/v1/messages", ep.base_url)),
            ep,
            prompt_cache: true,
        }
    }

    /// `--prompt-cache off` (false): no `cache_control`, plain-string turns.
    pub fn with_prompt_cache(mut self, on: bool) -> Self {
        self.prompt_cache = on;
        self
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.ep
            .request(reqwest::Method::GET, url)
            .header("anthropic-version", ANTHROPIC_VERSION)
    }

    fn body<'a>(&'a self, req: &'a ChatRequest) -> Body<'a> {
        let p = &req.params;
        let marks = if self.prompt_cache {
            breakpoints(&self.ep.model, req)
        } else {
            Vec::new()
        };
        let blocks = !marks.is_empty();
        let mut system: Vec<Block<'a>> = Vec::new();
        let mut messages: Vec<Turn<'a>> = Vec::new();
        for (i, m) in req.messages.iter().enumerate() {
            let block = Block {
                kind: "text",
                text: &m.content,
                cache_control: marks.contains(&i).then_some(Ephemeral::EPHEMERAL),
            };
            let role = match m.role {
                Role::System => {
                    system.push(block);
                    continue;
                }
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            match messages.last_mut() {
                Some(last) if last.role == role => last.content.push(block),
                _ => messages.push(Turn {
                    role,
                    content: vec![block],
                }),
            }
        }
        Body {
            model: &self.ep.model,
            max_tokens: p.max_tokens,
            system: (!system.is_empty()).then_some(Content {
                blocks,
                parts: system,
            }),
            messages: messages
                .into_iter()
                .map(|t| Message {
                    role: t.role,
                    content: Content {
                        blocks,
                        parts: t.content,
                    },
                })
                .collect(),
            temperature: p.temperature,
            top_p: (p.top_p < 1.0).then_some(p.top_p),
            stop_sequences: &p.stop,
        }
    }
}

/// Anthropic's limit of `cache_control` breakpoints in one request.
pub const MAX_BREAKPOINTS: usize = 4;

/// The shortest prefix (in tokens) each model caches, by name prefix
/// (docs.claude.com, prompt caching, read 2026-12-02); a shorter marked
/// prefix is processed without caching, so marking it only wastes one of
/// the four breakpoints. Unknown models get the most common minimum.
const MIN_CACHEABLE: &[(&str, u64)] = &[
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-sonnet-4-6", 2048),
    ("claude-3-5-haiku", 2048),
    ("claude-3-haiku", 2048),
    ("claude-haiku-3", 2048),
];

/// The minimum cacheable prefix of `model`, in tokens.
pub fn min_cacheable_tokens(model: &str) -> u64 {
    MIN_CACHEABLE
        .iter()
        .filter(|(name, _)| model.starts_with(name))
        .max_by_key(|(name, _)| name.len())
        .map_or(1024, |&(_, n)| n)
}

/// Indices of the messages whose block carries `cache_control`: the last
/// message of the stage's shared prefix, the last message this request
/// shares with the previous request of its prompt, and its own last
/// message when the next request will extend it — each only when the
/// prefix up to it reaches the model's minimum, at most
/// [`MAX_BREAKPOINTS`]. A skipped one is logged at debug level with why.
fn breakpoints(model: &str, req: &ChatRequest) -> Vec<usize> {
    let hint = &req.cache;
    if !hint.wanted() {
        return Vec::new();
    }
    let min = min_cacheable_tokens(model);
    // Tokens up to and including each message, as the engine estimates.
    let mut upto = Vec::with_capacity(req.messages.len());
    let mut sum = 0u64;
    for m in &req.messages {
        sum += m.estimated_tokens();
        upto.push(sum);
    }
    let n = req.messages.len();
    let wanted = [
        ("shared prefix", hint.shared),
        (
            "conversation shared with the previous request",
            hint.previous,
        ),
        (
            "conversation the next request extends",
            if hint.extended { n } else { 0 },
        ),
    ];
    let mut marks: Vec<usize> = Vec::new();
    for (what, count) in wanted {
        let Some(at) = count.checked_sub(1).filter(|&i| i < n) else {
            continue;
        };
        if marks.contains(&at) {
            continue;
        }
        if upto[at] < min {
            tracing::debug!(
                model,
                scope = hint.scope.as_deref().unwrap_or_default(),
                breakpoint = what,
                tokens = upto[at],
                minimum = min,
                "no cache_control: the prefix is below the model's minimum cacheable length"
            );
            continue;
        }
        if marks.len() == MAX_BREAKPOINTS {
            tracing::debug!(
                model,
                breakpoint = what,
                "no cache_control: four breakpoints already"
            );
            continue;
        }
        marks.push(at);
    }
    marks
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
    system: Option<Content<'a>>,
    messages: Vec<Message<'a>>,
    temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
}

/// A turn while the body is built: its messages' blocks in order.
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Content<'a>,
}

/// A system prompt or turn: one string (the parts joined by a blank line)
/// when no cache is asked for, else one text block per message, so a
/// breakpoint can sit on any message and the prefix before it is the same
/// bytes in every request of the stage.
struct Content<'a> {
    blocks: bool,
    parts: Vec<Block<'a>>,
}

impl Serialize for Content<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.blocks {
            self.parts.serialize(s)
        } else {
            let texts: Vec<&str> = self.parts.iter().map(|b| b.text).collect();
            s.serialize_str(&texts.join("\n\n"))
        }
    }
}

#[derive(Serialize)]
struct Block<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<Ephemeral>,
}

/// `{"type": "ephemeral"}`: the default five-minute cache, refreshed by
/// every hit, which a run's requests of one stage keep alive.
#[derive(Clone, Copy, Serialize)]
struct Ephemeral {
    #[serde(rename = "type")]
    kind: &'static str,
}

impl Ephemeral {
    const EPHEMERAL: Ephemeral = Ephemeral { kind: "ephemeral" };
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    content: Vec<ReplyBlock>,
    stop_reason: Option<String>,
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct ReplyBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

/// Anthropic counts the three kinds of input apart: `input_tokens` is
/// only what came after the last cache breakpoint.
#[derive(Deserialize)]
struct ApiUsage {
    input_tokens: u64,
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
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
        let (resp, rate): (Response, _) = self.ep.send_json(http, &self.url, req).await?;
        let completion = completion(resp);
        check_completion(&self.url, req, &completion)?;
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
        usage: resp.usage.map(|u| {
            let write = u.cache_creation_input_tokens.unwrap_or(0);
            let read = u.cache_read_input_tokens.unwrap_or(0);
            Usage {
                prompt_tokens: u.input_tokens + write + read,
                completion_tokens: u.output_tokens,
                cached_tokens: read,
                cache_write_tokens: write,
            }
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
                url: self.url.to_string(),
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
        assert_eq!(p.url.as_str(), "http://127.0.0.1:9/v1/messages");
        let req = ChatRequest {
            cache: Default::default(),
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
