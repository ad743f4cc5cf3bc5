//! Language-model backends behind one trait.
//!
//! A [`Provider`] turns one [`ChatRequest`] (a conversation plus generation
//! parameters) into one [`Reply`]. It makes exactly one attempt: retries, rate
//! limits, the journal and budgets live in [`crate::engine`], so every backend
//! gets them the same way. Errors are typed ([`ProviderError`]) so the engine
//! can decide what to retry without parsing strings.

pub mod anthropic;
pub mod batch;
pub mod build;
pub mod chat_template;
pub mod completions;
pub mod endpoint;
pub mod gemini;
pub mod hf;
pub mod http;
pub mod local;
pub mod model_store;
pub mod openai;
pub mod plain;
pub mod pool;
pub mod prefix_json;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
///
/// The text is shared (`Arc<str>`): the system message, the few-shots and
/// the conversation so far go into every request of a prompt, and a run
/// sends millions, so building a request copies pointers, not text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Arc<str>,
}

/// Rough token count of a text (or its JSON bytes): about four bytes a
/// token. What `--tpm`, budgets, the dry run and Anthropic's breakpoint
/// minimum count before a reply's real `usage` is known.
pub fn estimated_text_tokens(text: impl AsRef<[u8]>) -> u64 {
    (text.as_ref().len() as u64).div_ceil(4)
}

/// The first choice of an OpenAI-style reply, and the others (the `n > 1`
/// samples); a reply without any is malformed.
pub(crate) fn first_choice<C>(
    url: &str,
    choices: Vec<C>,
) -> Result<(C, std::vec::IntoIter<C>), ProviderError> {
    let mut rest = choices.into_iter();
    let first = rest.next().ok_or_else(|| ProviderError::Malformed {
        url: url.to_string(),
        reason: "no choices in the reply".into(),
    })?;
    Ok((first, rest))
}

impl Message {
    /// [`estimated_text_tokens`] of the content, plus a few tokens of chat
    /// framing.
    pub fn estimated_tokens(&self) -> u64 {
        estimated_text_tokens(self.content.as_bytes()) + 4
    }

    pub fn system(content: impl Into<Arc<str>>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<Arc<str>>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<Arc<str>>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Sampling parameters sent with every request of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Sent to endpoints that accept a seed; the local model always uses one.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Ask for the top-k log-probabilities of the first generated token
    /// (judging). Left out of the request (and of journal keys) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u8>,
    /// Completions per request (best-of-N) where the endpoint supports `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            temperature: 0.7,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            top_logprobs: None,
            n: None,
        }
    }
}

/// One candidate token and its log-probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
}

/// A conversation to complete.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub params: GenParams,
    /// Which leading messages other requests share, for the provider's
    /// prompt cache. Not part of the request's identity: never serialized,
    /// never in a journal key.
    #[serde(skip)]
    pub cache: CacheHint,
}

/// Where the part of a request that other requests repeat ends, so a
/// backend can ask the provider's prompt cache for it (Anthropic's
/// `cache_control` breakpoints, OpenAI's `prompt_cache_key`). The default
/// asks for nothing: `--prompt-cache off`, and requests that are not part
/// of a run's stages (serve's approaches, judges, optimize).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheHint {
    /// Leading messages every request of this stage starts with, whatever
    /// the prompt (the system message and the few-shots).
    pub shared: usize,
    /// Leading messages this request has in common with the request sent
    /// just before it for the same prompt (the conversation so far), when
    /// it extends that one; 0 otherwise.
    pub previous: usize,
    /// The next request of this prompt will extend this one (its whole
    /// conversation is the start of the next), so caching all of it pays.
    pub extended: bool,
    /// `stage:digest-of-the-shared-prefix`, for a cache key that keeps
    /// requests of one stage together; `None` asks for no cache.
    pub scope: Option<Arc<str>>,
}

impl CacheHint {
    /// Whether any caching is asked for.
    pub fn wanted(&self) -> bool {
        self.scope.is_some()
    }
}

/// Why generation stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    #[default]
    Stop,
    /// Cut off by the token limit.
    Length,
    /// Blocked by the service's content filter; the string is its reason.
    Filtered(String),
    /// Anything else the service reported.
    Other(String),
}

/// Token counts as reported by the endpoint (or counted locally).
///
/// `prompt_tokens` counts every input token, however billed; the two cache
/// counts are parts of it (Anthropic reports the three apart, and they are
/// added up here so every backend's numbers mean the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Input tokens read from the provider's prompt cache (billed at the
    /// cached-input price).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
    /// Input tokens written to the prompt cache (Anthropic bills them at
    /// the cache-write price; other providers write for free and report 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Input and output counts only, for backends that report no cache.
    pub fn plain(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            ..Self::default()
        }
    }
}

/// Rate-limit state an endpoint advertised in its reply headers
/// (`x-ratelimit-*`). All fields optional: most servers send none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateHints {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

/// A successful reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub finish: FinishReason,
    /// `None` when the endpoint did not report usage.
    pub usage: Option<Usage>,
    /// Top log-probabilities of the first generated token, when asked for
    /// with [`GenParams::top_logprobs`] and returned by the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_logprobs: Option<Vec<TokenLogprob>>,
    /// Texts of further choices when [`GenParams::n`] asked for several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
}

/// What one attempt returned.
#[derive(Clone, Debug)]
pub struct Reply {
    pub completion: Completion,
    pub rate: RateHints,
}

/// One event of a streamed reply.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// More text of the reply.
    Delta(String),
    /// Token counts, when the endpoint reports them.
    Usage(Usage),
    /// The reply is complete.
    Finish(FinishReason),
}

/// The events of one streamed reply, in order. An error ends it.
pub type EventStream = futures::stream::BoxStream<'static, Result<StreamEvent, ProviderError>>;

/// One failed attempt, classified so the engine can decide to retry.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The endpoint answered with a non-success status.
    #[error("HTTP {status} from {url}: {body}")]
    Status {
        status: u16,
        url: String,
        /// The start of the response body, for the error message.
        body: String,
        /// Parsed `Retry-After` (seconds or HTTP date), when sent.
        retry_after: Option<Duration>,
        /// Boxed: most errors carry none, and it would bloat every `Result`.
        rate: Box<RateHints>,
    },
    /// The connection failed or was reset before a full reply arrived.
    #[error("connection to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    /// No reply within the request timeout.
    #[error("no reply from {url} within the timeout")]
    Timeout { url: String },
    /// The reply arrived but is not the shape the protocol promises.
    #[error("malformed reply from {url}: {reason}")]
    Malformed { url: String, reason: String },
    /// The reply is larger than the request could produce: its body passed
    /// the byte bound (reading stopped there), or its text or token count
    /// is over what `max_tokens` allows. See [`http`].
    #[error("oversized reply from {url}: {reason}")]
    Oversized { url: String, reason: String },
    /// This request cannot be completed, but others may (a prompt longer
    /// than the model's context): the prompt is rejected, the run goes on.
    #[error("{0}")]
    Unprocessable(String),
    /// A failure that no retry can fix (bad local model, unsupported request).
    #[error("{0}")]
    Fatal(String),
    /// Not sent now: queued for the next batch of a batch API
    /// ([`crate::engine::batch`]); the prompt continues in the next stage.
    #[error("queued for the next batch")]
    Queued,
}

impl ProviderError {
    pub(crate) fn from_reqwest(url: &str, err: reqwest::Error) -> Self {
        if err.is_timeout() {
            ProviderError::Timeout {
                url: url.to_string(),
            }
        } else if err.is_decode() {
            ProviderError::Malformed {
                url: url.to_string(),
                reason: error_chain(&err),
            }
        } else {
            ProviderError::Transport {
                url: url.to_string(),
                reason: error_chain(&err),
            }
        }
    }
}

/// The full `source()` chain of an error, joined with `: `. Reqwest's top-level
/// message alone ("error sending request") hides the cause users need.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// A language-model backend.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Short name used in the journal key and the manifest (`openai`, `hf`, `local`, ...).
    fn name(&self) -> &str;
    /// The model identifier (as sent to the endpoint, or the GGUF file name).
    fn model(&self) -> &str;
    /// Where requests go, for error messages (never contains a key).
    fn endpoint(&self) -> String;
    /// The environment variable the key came from, for error messages.
    fn key_var(&self) -> Option<&str>;
    /// The model ids the endpoint serves, from its model-list API
    /// ([`registry::ModelList`]), all pages followed.
    async fn list_models(&self) -> Result<Vec<String>, ProviderError> {
        Err(ProviderError::Fatal(format!(
            "provider {} has no model list; name the model with --model",
            self.name()
        )))
    }
    /// One attempt at a completion.
    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError>;
    /// One attempt at completing `prompt`, raw text exactly as the model
    /// reads it, for the backends that take raw text
    /// ([`registry::Api::Completions`]: `/v1/completions`, TGI `generate`,
    /// the embedded model). `req` gives the parameters sent; its messages
    /// are what `prompt` was rendered from. The default refuses: a chat API
    /// cannot be handed a prompt format of the client's.
    async fn complete_text(&self, prompt: &str, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let _ = (prompt, req);
        Err(ProviderError::Fatal(format!(
            "provider {} takes chat turns, not raw text (use --api completions with an OpenAI-compatible server, --provider hf or local)",
            self.name()
        )))
    }
    /// One attempt at a completion whose text arrives in pieces as the model
    /// writes it. An error before the stream is returned can be retried; one
    /// inside the stream ends it. The default waits for [`Provider::complete`]
    /// and yields the whole reply at once, so every backend can be streamed.
    async fn stream(&self, req: &ChatRequest) -> Result<EventStream, ProviderError> {
        let c = self.complete(req).await?.completion;
        let mut events = vec![Ok(StreamEvent::Delta(c.text))];
        if let Some(u) = c.usage {
            events.push(Ok(StreamEvent::Usage(u)));
        }
        events.push(Ok(StreamEvent::Finish(c.finish)));
        Ok(Box::pin(futures::stream::iter(events)))
    }
    /// Requests, failures and latency per endpoint, for a pool of several
    /// (empty for one endpoint).
    fn endpoint_stats(&self) -> Vec<pool::EndpointStats> {
        Vec::new()
    }
    /// This backend's batch API (`--batch`, `--batch-export`), when it has one.
    fn batch_api(&self) -> Option<std::sync::Arc<dyn batch::BatchApi>> {
        None
    }
    /// The request as it would be sent, for `cai render`.
    fn preview(&self, req: &ChatRequest) -> Result<serde_json::Value, ProviderError> {
        Ok(serde_json::json!({
            "endpoint": self.endpoint(),
            "messages": req.messages,
            "params": req.params,
        }))
    }
}

/// How much of an error body goes into a message: enough to see the cause.
const BODY_SNIPPET: usize = 400;

/// Sends one JSON POST and decodes a typed reply, mapping every failure to
/// a [`ProviderError`]. The body is read under `bound` (an error body under
/// [`http::ERROR_BODY_BYTES`]); `secret` is scrubbed from any echoed body.
pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    url: &str,
    secret: Option<&secrecy::SecretString>,
    bound: &http::Bound,
) -> Result<(T, RateHints), ProviderError> {
    let resp = send_ok(req, url, secret, http::ERROR_BODY_BYTES.min(bound.bytes)).await?;
    let rate = rate_hints(resp.headers());
    let bytes = http::read_limited(resp, url, bound).await?;
    let value = serde_json::from_slice::<T>(&bytes).map_err(|e| ProviderError::Malformed {
        url: url.to_string(),
        reason: format!("{e}; body starts: {}", snippet(&bytes, secret)),
    })?;
    Ok((value, rate))
}

/// Sends `req`; a reply whose status is not a success becomes
/// [`ProviderError::Status`] with the start of its body (at most `limit`
/// bytes, `secret` masked) and its rate and Retry-After hints.
pub(crate) async fn send_ok(
    req: reqwest::RequestBuilder,
    url: &str,
    secret: Option<&secrecy::SecretString>,
    limit: u64,
) -> Result<reqwest::Response, ProviderError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::from_reqwest(url, e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let rate = rate_hints(resp.headers());
    let retry_after = retry_after(resp.headers());
    let bytes = http::read_prefix(resp, limit).await;
    Err(ProviderError::Status {
        status: status.as_u16(),
        url: url.to_string(),
        body: snippet(&bytes, secret),
        retry_after,
        rate: Box::new(rate),
    })
}

/// The start of a body as text, with the key (if echoed) masked.
pub(crate) fn snippet(bytes: &[u8], secret: Option<&secrecy::SecretString>) -> String {
    use secrecy::ExposeSecret;
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(BODY_SNIPPET).collect();
    if let Some(key) = secret {
        let key = key.expose_secret();
        if !key.is_empty() {
            s = s.replace(key, "***");
        }
    }
    s.trim().to_string()
}

/// Reads `x-ratelimit-*` headers as OpenAI, Groq and others send them.
pub(crate) fn rate_hints(headers: &reqwest::header::HeaderMap) -> RateHints {
    let num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let dur = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_reset)
    };
    RateHints {
        limit_requests: num("x-ratelimit-limit-requests"),
        remaining_requests: num("x-ratelimit-remaining-requests"),
        reset_requests: dur("x-ratelimit-reset-requests"),
        limit_tokens: num("x-ratelimit-limit-tokens"),
        remaining_tokens: num("x-ratelimit-remaining-tokens"),
        reset_tokens: dur("x-ratelimit-reset-tokens"),
    }
}

/// Parses a reset interval: plain seconds (`"2"`, `"0.5"`) or OpenAI's
/// compound form (`"1m30s"`, `"6ms"`, `"1h2m"`).
pub(crate) fn parse_reset(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let value: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += value * unit;
        any = true;
    }
    (any && num.is_empty()).then(|| Duration::from_secs_f64(total))
}

/// Parses `Retry-After`: delay seconds, or an HTTP date.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = v.trim().parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    // All three HTTP date forms (IMF-fixdate, RFC 850, asctime), as RFC 9110
    // asks of recipients.
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_intervals_parse_in_both_forms() {
        assert_eq!(parse_reset("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_reset("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_reset("6ms"), Some(Duration::from_millis(6)));
        assert_eq!(parse_reset("1h2m"), Some(Duration::from_secs(3720)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("12x"), None);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let header = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(header("2"), Some(Duration::from_secs(2)));
        assert_eq!(header("0.5"), Some(Duration::from_millis(500)));
        // A date in the past: retry now.
        assert_eq!(
            header("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            header("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = header(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(header("tomorrow"), None);
        assert_eq!(header("-3"), None);
    }
}
