//! OpenAI-compatible `POST {base}/chat/completions`.
//!
//! One implementation serves OpenAI and every server that speaks its
//! protocol: vLLM, TGI's Messages API, llama.cpp's server, Ollama, Groq,
//! Mistral, Together, DeepSeek and the Hugging Face router. Optional fields
//! (`seed`, `stop`) are sent only when set, since some servers reject
//! unknown or empty ones.
//!
//! Prompt caching is automatic on OpenAI (prompts of 1,024 tokens and
//! more) and on vLLM, SGLang and llama.cpp's prefix caches; `cai` helps by
//! sending every request of a stage with the same leading bytes, and, to
//! OpenAI's own endpoint only, a `prompt_cache_key` (a digest of model,
//! stage and shared prefix) that routes requests sharing a prefix to the
//! same cache. Cached prompt tokens are read from
//! `usage.prompt_tokens_details.cached_tokens`.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::batch::{BatchApi, BatchCodec};
use super::endpoint::{endpoint_accessors, Endpoint, Target};
use super::http::check_completion;
use super::prefix_json::{Messages, PrefixJson};
use super::{
    ChatRequest, Completion, EventStream, FinishReason, GenParams, Provider, ProviderError, Reply,
    StreamEvent, TokenLogprob, Usage,
};

/// An OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAi {
    /// API root (for OpenAI, `https://api.openai.com/v1`), model, key.
    ep: Endpoint,
    /// `{base}/chat/completions`.
    url: Target,
    /// Send `prompt_cache_key` with requests that carry a cache hint: set
    /// where the provider table says the endpoint takes it (OpenAI's own);
    /// other servers may refuse an unknown field.
    prompt_cache_key: bool,
    /// The JSON of each stage's shared messages, serialized once.
    prefix_json: PrefixJson,
}

impl OpenAi {
    pub fn new(ep: Endpoint) -> Self {
        Self {
            url: Target::new(format!("{}/chat/completions", ep.base_url)),
            ep,
            prompt_cache_key: false,
            prefix_json: PrefixJson::default(),
        }
    }

    /// Whether to send `prompt_cache_key` (default: no; the provider table
    /// and `--prompt-cache` decide, see `provider::build`).
    pub fn with_prompt_cache_key(mut self, send: bool) -> Self {
        self.prompt_cache_key = send;
        self
    }

    /// The `prompt_cache_key` for a request: a digest of the model and the
    /// hint's scope (the stage and the digest of its shared prefix, which
    /// stands for the constitution), so requests that share a prefix land
    /// on the same cache and nothing else does.
    fn cache_key(&self, req: &ChatRequest) -> Option<String> {
        use sha2::{Digest, Sha256};
        if !self.prompt_cache_key {
            return None;
        }
        let scope = req.cache.scope.as_deref()?;
        let mut h = Sha256::new();
        h.update(self.ep.model.as_bytes());
        h.update([0]);
        h.update(scope.as_bytes());
        Some(format!("cai-{}", crate::digest::hex(&h.finalize()[..16])))
    }

    fn body<'a>(&'a self, req: &'a ChatRequest) -> Body<'a> {
        let p = &req.params;
        Body {
            model: &self.ep.model,
            messages: self.prefix_json.messages(req),
            sampling: Sampling::of(p),
            logprobs: p.top_logprobs.map(|_| true),
            top_logprobs: p.top_logprobs,
            stream: false,
            stream_options: None,
            prompt_cache_key: self.cache_key(req),
        }
    }
}

impl OpenAi {
    fn completion(&self, resp: Response) -> Result<Completion, ProviderError> {
        let (choice, choices) = super::first_choice(&self.url, resp.choices)?;
        let first_token_logprobs = choice
            .logprobs
            .and_then(|l| l.content)
            .and_then(|c| c.into_iter().next())
            .map(|t| t.top_logprobs);
        Ok(Completion {
            text: choice.message.content.unwrap_or_default(),
            finish: finish_reason(choice.finish_reason.as_deref()),
            usage: resp.usage.map(ApiUsage::usage),
            first_token_logprobs,
            more: choices
                .map(|c| c.message.content.unwrap_or_default())
                .collect(),
        })
    }
}

impl BatchCodec for OpenAi {
    fn batch_body(&self, req: &ChatRequest) -> serde_json::Value {
        serde_json::to_value(self.body(req)).unwrap_or_default()
    }

    fn batch_completion(&self, body: serde_json::Value) -> Result<Completion, ProviderError> {
        let resp: Response =
            serde_json::from_value(body).map_err(|e| ProviderError::Malformed {
                url: self.url.to_string(),
                reason: e.to_string(),
            })?;
        self.completion(resp)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Messages<'a>,
    #[serde(flatten)]
    sampling: Sampling<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_logprobs: Option<u8>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    /// Last, after every field a server's prefix cache could hash, so the
    /// fields before it are the same bytes with or without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_cache_key: Option<String>,
}

/// The sampling fields OpenAI's chat and completions APIs share, sent in
/// this order by both bodies (flattened in place).
#[derive(Serialize)]
pub(crate) struct Sampling<'a> {
    max_tokens: u32,
    temperature: f32,
    top_p: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    /// Only above 1: one completion is every server's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
}

impl<'a> Sampling<'a> {
    pub(crate) fn of(p: &'a GenParams) -> Self {
        Sampling {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed,
            stop: &p.stop,
            n: p.n.filter(|&n| n > 1),
        }
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One `data:` event of a streamed reply.
#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<StreamChoice>,
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: StreamDelta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct StreamDelta {
    content: Option<String>,
}

/// An SSE event larger than this is not a token delta: the stream is broken.
const MAX_EVENT: usize = 1 << 20;

/// Splits a byte stream into server-sent events and reads their `data:`
/// fields as chat-completion chunks.
struct SseReader {
    resp: reqwest::Response,
    url: String,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<StreamEvent>,
    done: bool,
}

impl SseReader {
    /// Parses every complete event in the buffer into `pending`.
    fn drain_events(&mut self) -> Result<(), ProviderError> {
        loop {
            let Some((end, sep)) = find_event_end(&self.buf) else {
                if self.buf.len() > MAX_EVENT {
                    return Err(
                        self.malformed(format!("a stream event longer than {MAX_EVENT} bytes"))
                    );
                }
                return Ok(());
            };
            let event: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue; // a comment or keep-alive
            }
            let data = data.join("\n");
            if data.trim() == "[DONE]" {
                self.done = true;
                return Ok(());
            }
            let chunk: StreamChunk = serde_json::from_str(&data)
                .map_err(|e| self.malformed(format!("{e} in stream event: {}", snip(&data))))?;
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(t) = choice.delta.content.filter(|t| !t.is_empty()) {
                    self.pending.push_back(StreamEvent::Delta(t));
                }
                if let Some(f) = choice.finish_reason {
                    self.pending
                        .push_back(StreamEvent::Finish(finish_reason(Some(&f))));
                }
            }
            if let Some(u) = chunk.usage {
                self.pending.push_back(StreamEvent::Usage(u.usage()));
            }
        }
    }

    fn malformed(&self, reason: String) -> ProviderError {
        ProviderError::Malformed {
            url: self.url.clone(),
            reason,
        }
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => {
                    self.buf.extend_from_slice(&bytes);
                    if let Err(e) = self.drain_events() {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    if !self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Some(Err(
                            self.malformed("the stream ended inside an event".into())
                        ));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(ProviderError::from_reqwest(&self.url, e)));
                }
            }
        }
    }
}

/// The end of the first event in `buf` and the length of its separator
/// (a blank line, `\n\n` or `\r\n\r\n`).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn snip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[derive(Deserialize)]
struct Response {
    choices: Vec<Choice>,
    usage: Option<ApiUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    finish_reason: Option<String>,
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Deserialize)]
struct ChoiceLogprobs {
    content: Option<Vec<ContentLogprob>>,
}

#[derive(Deserialize)]
struct ContentLogprob {
    #[serde(default)]
    top_logprobs: Vec<TokenLogprob>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ApiUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    /// OpenAI, vLLM (with `--enable-prompt-tokens-details`), DeepSeek's
    /// compatible shape and others: how much of the prompt the cache served.
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl ApiUsage {
    fn usage(self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            // A server that reports more cached than sent is wrong about
            // one of them; the bill cannot have cached more than the prompt.
            cached_tokens: cached.min(self.prompt_tokens),
            cache_write_tokens: 0,
        }
    }
}

pub(crate) fn finish_reason(s: Option<&str>) -> FinishReason {
    match s {
        None
        | Some("stop")
        | Some("eos")
        | Some("eos_token")
        | Some("stop_sequence")
        | Some("end_turn") => FinishReason::Stop,
        Some("length") | Some("max_tokens") => FinishReason::Length,
        Some("content_filter") => FinishReason::Filtered("content_filter".into()),
        Some(other) => FinishReason::Other(other.to_string()),
    }
}

#[async_trait]
impl Provider for OpenAi {
    endpoint_accessors!(ep);

    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        self.ep.openai_models().await
    }

    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({ "method": "POST", "url": self.url, "body": self.body(req) }))
    }

    fn batch_api(&self) -> Option<Arc<dyn BatchApi>> {
        Some(Arc::new(super::batch::openai::OpenAiBatch::new(
            self.ep.clone(),
            Arc::new(self.clone()),
        )))
    }

    async fn stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let mut body = self.body(req);
        body.sampling.n = None;
        body.logprobs = None;
        body.top_logprobs = None;
        body.stream = true;
        body.stream_options = Some(StreamOptions {
            include_usage: true,
        });
        let resp = super::send_ok(
            self.ep.post(&self.url, &body),
            &self.url,
            self.ep.key.as_ref(),
            super::http::ERROR_BODY_BYTES,
        )
        .await?;
        let reader = SseReader {
            resp,
            url: self.url.to_string(),
            buf: Vec::new(),
            pending: Default::default(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            reader,
            |mut r| async move { r.next_event().await.map(|e| (e, r)) },
        )))
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let body = self.body(req);
        let http = self.ep.post(&self.url, &body);
        let (resp, rate): (Response, _) = self.ep.send_json(http, &self.url, req).await?;
        let completion = self.completion(resp)?;
        check_completion(&self.url, req, &completion)?;
        Ok(Reply { completion, rate })
    }
}
