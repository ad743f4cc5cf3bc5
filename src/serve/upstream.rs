//! The OpenAI-compatible upstream that `cai serve` forwards to.
//!
//! Two kinds of call go out:
//! * **Forwarded**: the pass-through `none` posts the client's own JSON
//!   body (model rewritten, the proxy's own fields removed) and hands the
//!   reply back as JSON, or relays the stream byte for byte — so tools,
//!   `tool_calls`, `response_format`, images and fields no one here knows
//!   about reach both ends unchanged ([`Forward::post`], [`Forward::open`]).
//! * **Typed**: the calls an approach makes (candidates, critiques,
//!   revisions, judge questions) go through the engine as
//!   [`ChatRequest`]s; [`Forward`] implements [`Provider`] for them and
//!   adds what the request being served says ([`Route`]): the client's
//!   model, the client's other fields, the client's key, and only the
//!   sampling parameters the client sent or the approach chose.
//!
//! Several API roots (`--base-url` given more than once, each with an
//! optional `#weight=W`) are one pool: every call, forwarded or typed,
//! goes to the root a [`Balancer`] picks, by the rules of
//! [`crate::provider::pool`] — least expected wait by weight and smoothed
//! latency, a root ejected after repeated failures (connection errors,
//! timeouts, 5xx, 429, malformed replies) and probed back, and a call that
//! failed that way tried once more on another healthy root before its
//! error reaches the client. A 400, 401 or 404 comes back as it was.
//!
//! The request being served is found through a task-local, the way
//! [`super::record`] finds its recorder: a request's calls run as futures
//! of its own task, so every call of it sees its [`Route`].

use std::sync::Arc;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::Sent;
use crate::provider::http::{check_reply, read_limited, Bound, ReplyLimit};
use crate::provider::pool::{Balancer, EndpointStats};
use crate::provider::{
    ChatRequest, Completion, GenParams, Provider, ProviderError, Reply, TokenLogprob, Usage,
};

tokio::task_local! {
    static ROUTE: Arc<Route>;
}

/// What the request being served adds to each of its upstream calls.
#[derive(Debug, Default)]
pub struct Route {
    /// The model the client named (after its approach prefix).
    pub model: String,
    /// Fields of the client's body that every call carries as they came
    /// (penalties, `logit_bias`, `user`, `metadata`, `reasoning_effort`,
    /// fields unknown here).
    pub extras: Map<String, Value>,
    /// The parameters the request started from (the client's, or the
    /// server's defaults where it sent none).
    pub base: GenParams,
    /// Which of them the client sent.
    pub sent: SentParams,
    /// `--forward-client-key`: the client's key, used instead of the server's.
    pub key: Option<SecretString>,
}

/// Which sampling parameters a client sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct SentParams {
    pub temperature: bool,
    pub top_p: bool,
    /// The client called it `max_completion_tokens` (newer OpenAI models
    /// refuse `max_tokens`); the calls use the same name.
    pub max_completion_tokens: bool,
}

impl Route {
    /// Runs `fut` with its upstream calls routed by this request.
    pub async fn scope<F: std::future::Future>(self: Arc<Self>, fut: F) -> F::Output {
        ROUTE.scope(self, fut).await
    }
}

fn current() -> Option<Arc<Route>> {
    ROUTE.try_with(Arc::clone).ok()
}

/// An OpenAI-compatible API root (or a weighted pool of several).
pub struct Forward {
    client: reqwest::Client,
    /// API roots without a trailing slash.
    bases: Vec<String>,
    /// Which root a call goes to, and each root's health.
    balancer: Balancer,
    /// `--model`: the model of a client that names none.
    default_model: String,
    /// The server's own key (`--api-key-env`), unless clients bring theirs.
    key: Option<SecretString>,
    key_var: Option<String>,
    limit: ReplyLimit,
    name: &'static str,
}

impl Forward {
    /// A forwarder to `bases`: API roots with their pool weights.
    pub fn new(
        client: reqwest::Client,
        bases: Vec<(String, f64)>,
        default_model: String,
        key: Option<SecretString>,
        key_var: Option<String>,
        limit: ReplyLimit,
        name: &'static str,
    ) -> Self {
        let balancer = Balancer::new(bases.iter().map(|(_, w)| *w));
        Self {
            client,
            bases: bases
                .into_iter()
                .map(|(b, _)| b.trim_end_matches('/').to_string())
                .collect(),
            balancer,
            default_model,
            key,
            key_var,
            limit,
            name,
        }
    }

    /// `{root}{path}` for member `i` of the pool.
    fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.bases.get(i).map_or("", String::as_str))
    }

    /// The key a call sends: the client's when forwarded, else the server's.
    fn key_for<'a>(&'a self, route: Option<&'a Route>) -> Option<&'a SecretString> {
        match route {
            Some(r) if r.key.is_some() => r.key.as_ref(),
            _ => self.key.as_ref(),
        }
    }

    /// The byte bound of a reply to `max_tokens × n` tokens.
    pub fn bound(&self, max_tokens: u32, n: u32) -> Bound {
        self.limit.for_request(&GenParams {
            max_tokens,
            n: Some(n),
            ..GenParams::default()
        })
    }

    /// Posts `body` to `{base}/chat/completions` of the root the pool
    /// picks (and of another when that one fails); the reply's JSON, read
    /// under `bound`. `key` is the client's when it is forwarded.
    pub async fn post(
        &self,
        body: &[u8],
        key: Option<&SecretString>,
        bound: &Bound,
    ) -> Result<Sent<Value>, ProviderError> {
        self.balancer
            .run(|i| self.post_to(self.url(i, "/chat/completions"), body, key, bound))
            .await
    }

    /// [`Forward::post`] to one root's `url`.
    async fn post_to(
        &self,
        url: String,
        body: &[u8],
        key: Option<&SecretString>,
        bound: &Bound,
    ) -> Result<Sent<Value>, ProviderError> {
        let secret = key.or(self.key.as_ref());
        let resp = self.send(&url, body, secret).await?;
        let rate = crate::provider::rate_hints(resp.headers());
        let bytes = read_limited(resp, &url, bound).await?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed {
                url: url.clone(),
                reason: format!(
                    "{e}; body starts: {}",
                    crate::provider::snippet(&bytes, secret)
                ),
            })?;
        let usage = value
            .get("usage")
            .and_then(|u| serde_json::from_value::<WireUsage>(u.clone()).ok())
            .map(Usage::from);
        Ok(Sent { value, usage, rate })
    }

    /// Opens a streamed reply to `body` (which asks for `stream: true`):
    /// the response once a root of the pool has answered 2xx (the pool's
    /// health sees the time to that answer, not the stream's).
    pub async fn open(
        &self,
        body: &[u8],
        key: Option<&SecretString>,
    ) -> Result<Sent<reqwest::Response>, ProviderError> {
        let secret = key.or(self.key.as_ref());
        self.balancer
            .run(|i| {
                let url = self.url(i, "/chat/completions");
                async move {
                    let resp = self.send(&url, body, secret).await?;
                    let rate = crate::provider::rate_hints(resp.headers());
                    Ok(Sent {
                        value: resp,
                        usage: None,
                        rate,
                    })
                }
            })
            .await
    }

    /// One POST; a non-2xx answer is a [`ProviderError::Status`] with the
    /// start of its body (any key it echoes masked).
    async fn send(
        &self,
        url: &str,
        body: &[u8],
        key: Option<&SecretString>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut http = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(k) = key {
            http = http.bearer_auth(k.expose_secret());
        }
        crate::provider::send_ok(http, url, key, crate::provider::http::ERROR_BODY_BYTES).await
    }

    /// The upstream's own model list (`GET {base}/models` of a root the
    /// pool picks), or `None` when it has none or it cannot be read. Kept
    /// to this one call so it can become the provider table's model
    /// listing.
    pub async fn list_models(&self, key: Option<&SecretString>) -> Option<Vec<Value>> {
        let secret = key.or(self.key.as_ref());
        self.balancer
            .run(|i| {
                let url = self.url(i, "/models");
                async move {
                    let mut http = self.client.get(&url);
                    if let Some(k) = secret {
                        http = http.bearer_auth(k.expose_secret());
                    }
                    let limit = crate::provider::http::ERROR_BODY_BYTES;
                    let resp = crate::provider::send_ok(http, &url, secret, limit).await?;
                    let bound = Bound::new(8 << 20, "for a model list");
                    let bytes = read_limited(resp, &url, &bound).await?;
                    serde_json::from_slice::<ModelList>(&bytes)
                        .map(|list| list.data)
                        .map_err(|e| ProviderError::Malformed {
                            url: url.clone(),
                            reason: e.to_string(),
                        })
                }
            })
            .await
            .ok()
    }

    /// The body of one typed call: the route's model and extras, the
    /// conversation, and the sampling parameters the client sent or the
    /// approach chose (a value equal to the request's starting point that
    /// the client did not send is the server's default: left out, so the
    /// upstream applies its own). `max_tokens` always goes: every approach
    /// bounds its calls.
    fn body(&self, req: &ChatRequest, route: Option<&Route>) -> Map<String, Value> {
        let p = &req.params;
        let mut body = Map::new();
        let (model, base, sent) = match route {
            Some(r) => (r.model.as_str(), Some(&r.base), r.sent),
            None => (self.default_model.as_str(), None, SentParams::default()),
        };
        body.insert("model".into(), model.into());
        body.insert(
            "messages".into(),
            serde_json::to_value(&req.messages).unwrap_or_default(),
        );
        let tokens_field = if sent.max_completion_tokens {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body.insert(tokens_field.into(), p.max_tokens.into());
        let chosen = |sent: bool, value: f32, start: Option<f32>| {
            sent || start.is_none_or(|s| s.to_bits() != value.to_bits())
        };
        if chosen(sent.temperature, p.temperature, base.map(|b| b.temperature)) {
            body.insert("temperature".into(), p.temperature.into());
        }
        if chosen(sent.top_p, p.top_p, base.map(|b| b.top_p)) {
            body.insert("top_p".into(), p.top_p.into());
        }
        if let Some(s) = p.seed {
            body.insert("seed".into(), s.into());
        }
        if !p.stop.is_empty() {
            body.insert("stop".into(), p.stop.clone().into());
        }
        if let Some(n) = p.n.filter(|&n| n > 1) {
            body.insert("n".into(), n.into());
        }
        if let Some(k) = p.top_logprobs {
            body.insert("logprobs".into(), true.into());
            body.insert("top_logprobs".into(), k.into());
        }
        if let Some(r) = route {
            for (k, v) in &r.extras {
                body.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        body
    }
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<Value>,
}

#[derive(Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    /// OpenAI's prompt-cache hits, summed into serve's own usage.
    #[serde(default)]
    prompt_tokens_details: Option<WireTokenDetails>,
}

#[derive(Deserialize)]
pub struct WireTokenDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            cache_write_tokens: 0,
        }
    }
}

/// The parts of a chat completion a typed call reads.
#[derive(Deserialize)]
struct WireReply {
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    finish_reason: Option<String>,
    logprobs: Option<WireLogprobs>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireLogprobs {
    content: Option<Vec<WireTokenLogprobs>>,
}

#[derive(Deserialize)]
struct WireTokenLogprobs {
    #[serde(default)]
    top_logprobs: Vec<TokenLogprob>,
}

#[async_trait]
impl Provider for Forward {
    fn name(&self) -> &str {
        self.name
    }
    fn model(&self) -> &str {
        &self.default_model
    }
    fn endpoint(&self) -> String {
        self.bases.join(",")
    }
    fn key_var(&self) -> Option<&str> {
        self.key_var.as_deref()
    }

    /// Per-root counters, for a pool of several roots.
    fn endpoint_stats(&self) -> Vec<EndpointStats> {
        if self.bases.len() < 2 {
            return Vec::new();
        }
        (0..self.bases.len())
            .map(|i| self.balancer.stats(i, &self.bases[i]))
            .collect()
    }

    async fn complete(&self, req: &ChatRequest) -> Result<Reply, ProviderError> {
        let route = current();
        let body = serde_json::to_vec(&self.body(req, route.as_deref())).unwrap_or_default();
        let key = self.key_for(route.as_deref()).cloned();
        let bound = self.limit.for_request(&req.params);
        let sent = self.post(&body, key.as_ref(), &bound).await?;
        let url = format!("{}/chat/completions", self.bases.join(","));
        let wire: WireReply =
            serde_json::from_value(sent.value).map_err(|e| ProviderError::Malformed {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let mut choices = wire.choices.into_iter();
        let first = choices.next().ok_or_else(|| ProviderError::Malformed {
            url: url.clone(),
            reason: "no choices in the reply".into(),
        })?;
        let completion = Completion {
            text: first.message.content.unwrap_or_default(),
            finish: crate::provider::openai::finish_reason(first.finish_reason.as_deref()),
            usage: wire.usage.map(Usage::from),
            first_token_logprobs: first
                .logprobs
                .and_then(|l| l.content)
                .and_then(|c| c.into_iter().next())
                .map(|t| t.top_logprobs),
            more: choices
                .map(|c| c.message.content.unwrap_or_default())
                .collect(),
        };
        check_reply(
            &url,
            req,
            std::iter::once(completion.text.as_str())
                .chain(completion.more.iter().map(String::as_str)),
            completion.usage.map(|u| u.completion_tokens),
        )?;
        Ok(Reply {
            completion,
            rate: sent.rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward() -> Forward {
        Forward::new(
            reqwest::Client::new(),
            vec![("http://127.0.0.1:1/v1/".into(), 1.0)],
            "m".into(),
            None,
            None,
            ReplyLimit::default(),
            "openai",
        )
    }

    #[test]
    fn typed_calls_send_only_what_the_client_sent_or_the_approach_chose() {
        let base = GenParams::default();
        let mut extras = Map::new();
        extras.insert("frequency_penalty".into(), 0.5.into());
        let route = Route {
            model: "client-model".into(),
            extras,
            base: base.clone(),
            sent: SentParams::default(),
            key: None,
        };
        let req = ChatRequest {
            messages: vec![crate::provider::Message::user("hi")],
            params: base.clone(),
            cache: Default::default(),
        };
        let body = forward().body(&req, Some(&route));
        assert_eq!(body["model"], "client-model");
        assert_eq!(body["frequency_penalty"], 0.5);
        assert_eq!(body["max_tokens"], 512);
        assert!(!body.contains_key("temperature"), "{body:?}");
        assert!(!body.contains_key("top_p"), "{body:?}");
        assert!(!body.contains_key("seed"), "{body:?}");

        // The judge's own temperature is the approach's choice: it goes.
        let judge = ChatRequest {
            messages: req.messages.clone(),
            params: GenParams {
                temperature: 0.0,
                ..base
            },
            cache: Default::default(),
        };
        let body = forward().body(&judge, Some(&route));
        assert_eq!(body["temperature"], 0.0);
    }
}
